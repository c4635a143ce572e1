//! Finds a float that JSON cannot hold anywhere in a serializable value.
//!
//! JSON writes NaN and the infinities as `null`. Where a plain float field reads that back,
//! decoding fails, but inside an `Option` the `null` reads back as `None`: the value changes
//! and nothing says so. Rather than read the encoded text back and compare (which `null`
//! passes, and which unordered maps would fail for no reason), every float the value
//! serializes is looked at on the way, and the first that is not finite is reported with
//! where it sits.

use core::fmt;

use serde::Serialize;
use serde::ser;

/// A float that JSON cannot store: where it sits in the value (`field.list[2].key`, empty
/// for the value itself) and what it is.
#[derive(Debug, PartialEq)]
pub(crate) struct NonFinite {
    pub(crate) path: String,
    pub(crate) value: f64,
}

/// The first NaN or infinity that `value` serializes, if any. A value whose own `Serialize`
/// fails has none reported here; encoding it reports its error.
pub(crate) fn first_non_finite<T: Serialize + ?Sized>(value: &T) -> Option<NonFinite> {
    let mut walker = Walker { path: Vec::new() };
    match value.serialize(&mut walker) {
        Err(Stop::Found(found)) => Some(found),
        Ok(()) | Err(Stop::Failed) => None,
    }
}

/// Why a walk stopped early.
#[derive(Debug)]
enum Stop {
    Found(NonFinite),
    /// The value's own `Serialize` failed.
    Failed,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Found(found) => write!(f, "`{}` is {}", found.path, found.value),
            Stop::Failed => f.write_str("the value failed to serialize"),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop::Failed
    }
}

/// One step on the way from the value to a float.
enum Step {
    Field(&'static str),
    Index(usize),
    Key(String),
}

struct Walker {
    path: Vec<Step>,
}

impl Walker {
    fn check(&self, value: f64) -> Result<(), Stop> {
        if value.is_finite() {
            return Ok(());
        }
        let mut path = String::new();
        for step in &self.path {
            match step {
                Step::Field(name) if path.is_empty() => path.push_str(name),
                Step::Field(name) => path.extend([".", name]),
                Step::Index(index) => path.push_str(&format!("[{index}]")),
                Step::Key(key) => path.push_str(&format!("[{key}]")),
            }
        }
        Err(Stop::Found(NonFinite { path, value }))
    }

    /// Serializes `value` one step further down.
    fn visit<T: Serialize + ?Sized>(&mut self, step: Step, value: &T) -> Result<(), Stop> {
        self.path.push(step);
        let result = value.serialize(&mut *self);
        self.path.pop();
        result
    }
}

/// The elements, fields or entries of one sequence, struct or map.
struct Compound<'a> {
    walker: &'a mut Walker,
    next: usize,
    key: String,
}

impl<'a> Compound<'a> {
    fn new(walker: &'a mut Walker) -> Self {
        Compound { walker, next: 0, key: String::new() }
    }

    /// The parts of enum variant `name`, which goes on the path until [`finish`](Self::finish).
    fn of_variant(walker: &'a mut Walker, name: &'static str) -> Self {
        walker.path.push(Step::Field(name));
        Compound::new(walker)
    }

    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        self.next += 1;
        self.walker.visit(Step::Index(self.next - 1), value)
    }

    /// Ends the compound: an enum variant takes its name off the path.
    fn finish(self, variant: bool) -> Result<(), Stop> {
        if variant {
            self.walker.path.pop();
        }
        Ok(())
    }
}

/// The serializer's methods for values that hold no float, which have nothing to check.
macro_rules! no_floats {
    ($($method:ident($($kind:ty),*);)*) => {$(
        fn $method(self, $(_: $kind),*) -> Result<(), Stop> {
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &'a mut Walker {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_f32(self, v: f32) -> Result<(), Stop> {
        self.check(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Stop> {
        self.check(v)
    }
    no_floats! {
        serialize_bool(bool); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
        serialize_i128(i128); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_u128(u128); serialize_none(); serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        self.visit(Step::Field(variant), value)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        Ok(Compound::new(self))
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound::new(self))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound::new(self))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Stop> {
        Ok(Compound::of_variant(self, variant))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Stop> {
        Ok(Compound::new(self))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Stop> {
        Ok(Compound::new(self))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Stop> {
        Ok(Compound::of_variant(self, variant))
    }
}

/// The compounds whose parts are numbered, and whether each is an enum variant, whose name
/// the walker pushed onto the path when it began.
macro_rules! numbered {
    ($($kind:ident::$part:ident, $variant:literal;)*) => {$(
        impl ser::$kind for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn $part<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
                self.element(value)
            }
            fn end(self) -> Result<(), Stop> {
                self.finish($variant)
            }
        }
    )*};
}

numbered! {
    SerializeSeq::serialize_element, false;
    SerializeTuple::serialize_element, false;
    SerializeTupleStruct::serialize_field, false;
    SerializeTupleVariant::serialize_field, true;
}

/// The compounds whose parts are named fields, as [`numbered`].
macro_rules! named {
    ($($kind:ident, $variant:literal;)*) => {$(
        impl ser::$kind for Compound<'_> {
            type Ok = ();
            type Error = Stop;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                name: &'static str,
                value: &T,
            ) -> Result<(), Stop> {
                self.walker.visit(Step::Field(name), value)
            }
            fn end(self) -> Result<(), Stop> {
                self.finish($variant)
            }
        }
    )*};
}

named! {
    SerializeStruct, false;
    SerializeStructVariant, true;
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        // Only the value is walked: JSON writes a key as a string, or refuses it. Shown as
        // JSON shows it.
        self.key = serde_json::to_string(key).unwrap_or_else(|_| "…".to_owned());
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        let key = core::mem::take(&mut self.key);
        self.walker.visit(Step::Key(key), value)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Serialize)]
    struct Run {
        best: Option<f64>,
        history: Vec<(u32, f32)>,
        by_name: BTreeMap<String, Option<f64>>,
        phase: Phase,
    }

    #[derive(Serialize)]
    enum Phase {
        Warmup { until: f64 },
        Decay(f64, f64),
    }

    fn run() -> Run {
        Run {
            best: Some(0.5),
            history: vec![(1, 2.0), (2, 1.5)],
            by_name: BTreeMap::from([("a".to_owned(), None), ("b".to_owned(), Some(1.0))]),
            phase: Phase::Warmup { until: 10.0 },
        }
    }

    fn found(path: &str, value: f64) -> Option<NonFinite> {
        Some(NonFinite { path: path.to_owned(), value })
    }

    #[test]
    fn finite_values_have_nothing_to_report() {
        assert_eq!(first_non_finite(&run()), None);
        assert_eq!(first_non_finite(&(1.0_f32, [2.0_f64], "text", None::<f64>)), None);
    }

    #[test]
    fn each_non_finite_float_is_found_where_it_sits() {
        assert_eq!(first_non_finite(&f64::NAN).map(|f| f.path), Some(String::new()));
        assert_eq!(first_non_finite(&Some(f32::INFINITY)), found("", f64::INFINITY));
        let mut case = run();
        case.best = Some(f64::NEG_INFINITY);
        assert_eq!(first_non_finite(&case), found("best", f64::NEG_INFINITY));
        let mut case = run();
        case.history[1].1 = f32::INFINITY;
        assert_eq!(first_non_finite(&case), found("history[1][1]", f64::INFINITY));
        let mut case = run();
        case.by_name.insert("b".to_owned(), Some(f64::INFINITY));
        assert_eq!(first_non_finite(&case), found("by_name[\"b\"]", f64::INFINITY));
        let mut case = run();
        case.phase = Phase::Warmup { until: f64::INFINITY };
        assert_eq!(first_non_finite(&case), found("phase.Warmup.until", f64::INFINITY));
        let mut case = run();
        case.phase = Phase::Decay(1.0, -f64::INFINITY);
        assert_eq!(first_non_finite(&case), found("phase.Decay[1]", f64::NEG_INFINITY));
    }

    #[test]
    fn a_nan_is_reported_as_nan() {
        let nan = first_non_finite(&vec![1.0, f64::NAN]).expect("a NaN");
        assert_eq!(nan.path, "[1]");
        assert!(nan.value.is_nan());
    }

    #[test]
    fn a_failing_serialize_reports_nothing() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: ser::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("no"))
            }
        }
        assert_eq!(first_non_finite(&(Fails, f64::NAN)), None);
    }
}
