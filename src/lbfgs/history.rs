//! The curvature pairs of L-BFGS: PyTorch's `old_dirs` (`$y$`), `old_stps` (`$s$`) and `ro`
//! (`$1 / y^\top s$`), oldest first, in a ring so that a full history replaces its oldest
//! pair in place instead of PyTorch's `pop(0)` and `append`.

use core::mem;

use crate::element::Element;

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct History<A> {
    dirs: Vec<Vec<A>>,
    stps: Vec<Vec<A>>,
    ro: Vec<A>,
    /// Where the oldest pair is.
    start: usize,
}

impl<A: Element> History<A> {
    pub(crate) fn len(&self) -> usize {
        self.ro.len()
    }

    pub(crate) fn clear(&mut self) {
        *self = History { dirs: Vec::new(), stps: Vec::new(), ro: Vec::new(), start: 0 };
    }

    fn slot(&self, i: usize) -> usize {
        (self.start + i) % self.ro.len()
    }

    /// The `i`-th pair, oldest first: `(y, s, ro)`.
    pub(crate) fn get(&self, i: usize) -> (&[A], &[A], A) {
        let slot = self.slot(i);
        (&self.dirs[slot], &self.stps[slot], self.ro[slot])
    }

    /// Appends a pair, dropping the oldest if there are `capacity` already. `y` and `s` are
    /// taken by swapping: they come back holding the dropped pair's buffers, or new ones of
    /// their capacity while the history fills.
    pub(crate) fn push(&mut self, capacity: usize, y: &mut Vec<A>, s: &mut Vec<A>, ro: A) {
        if self.len() < capacity {
            let at = self.start + self.len();
            self.dirs.insert(at, mem::replace(y, Vec::with_capacity(y.len())));
            self.stps.insert(at, mem::replace(s, Vec::with_capacity(s.len())));
            self.ro.insert(at, ro);
        } else {
            let slot = self.start;
            mem::swap(&mut self.dirs[slot], y);
            mem::swap(&mut self.stps[slot], s);
            self.ro[slot] = ro;
            self.start = (self.start + 1) % self.len();
        }
    }

    /// Every buffer has `numel` values (checked when a state is deserialized).
    #[cfg(feature = "serde")]
    pub(crate) fn fits(&self, numel: usize) -> bool {
        self.dirs.iter().chain(&self.stps).all(|v| v.len() == numel)
    }
}

#[cfg(feature = "serde")]
mod form {
    use serde::ser::SerializeStruct;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::History;

    /// One list of the history, oldest first.
    struct Oldest<'a, T>(&'a [T], usize);

    impl<T: Serialize> Serialize for Oldest<'_, T> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let (newer, older) = self.0.split_at(self.1);
            serializer.collect_seq(older.iter().chain(newer))
        }
    }

    /// PyTorch's three lists, oldest first.
    impl<A: Serialize> Serialize for History<A> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut state = serializer.serialize_struct("History", 3)?;
            state.serialize_field("old_dirs", &Oldest(&self.dirs, self.start))?;
            state.serialize_field("old_stps", &Oldest(&self.stps, self.start))?;
            state.serialize_field("ro", &Oldest(&self.ro, self.start))?;
            state.end()
        }
    }

    #[derive(Deserialize)]
    #[serde(rename = "History", deny_unknown_fields)]
    struct Lists<A> {
        old_dirs: Vec<Vec<A>>,
        old_stps: Vec<Vec<A>>,
        ro: Vec<A>,
    }

    impl<'de, A: Deserialize<'de>> Deserialize<'de> for History<A> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let Lists { old_dirs, old_stps, ro } = Lists::deserialize(deserializer)?;
            if old_dirs.len() != ro.len() || old_stps.len() != ro.len() {
                return Err(serde::de::Error::custom(format!(
                    "L-BFGS history has {} old_dirs, {} old_stps and {} ro",
                    old_dirs.len(),
                    old_stps.len(),
                    ro.len()
                )));
            }
            Ok(History { dirs: old_dirs, stps: old_stps, ro, start: 0 })
        }
    }
}
