//! The serde form of the enums that configuration files and checkpoints both hold
//! ([`Rule`](crate::Rule), [`Schedule`](crate::schedule::Schedule)).

/// Implements `Serialize` and `Deserialize` for the enum `$type` through two remote
/// derivations in scope, `Tagged` and `Indexed`: tagged by its kind where the format is
/// human-readable (JSON, configuration files), by the variant's index elsewhere (postcard,
/// which cannot read a tag among the fields).
macro_rules! dual_form {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    Tagged::serialize(self, serializer)
                } else {
                    Indexed::serialize(self, serializer)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    Tagged::deserialize(deserializer)
                } else {
                    Indexed::deserialize(deserializer)
                }
            }
        }
    };
}

pub(crate) use dual_form;
