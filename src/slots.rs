//! [`Slots`]: the registry's table of named tensors, each at a position that a batch step
//! finds once by name and then uses for every later pass.

use core::hash::BuildHasher;
use core::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::registry::Slot;

/// The slots of the named tensors, in a list, with a hash table from names to positions.
///
/// A position stays valid while no name is removed (inserting only appends), so a batch step
/// looks each name up once, in its first pass, and reaches the slot by its position in the
/// passes that lend, step and give back the state: one hash of the name per tensor and step
/// instead of one per pass. The order of the list is bookkeeping: two tables are equal when
/// they hold equal slots under the same names, in whatever order.
///
/// A training loop steps its tensors in the same order every step, which is the order they
/// were added in: a lookup first tries the position after the one the last lookup found, so
/// that it usually costs one comparison of the name and no hash.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slots<A> {
    entries: Vec<(String, Slot<A>)>,
    /// The position in `entries` of each name, hashed by name.
    positions: HashTable<usize>,
    hasher: DefaultHashBuilder,
    /// Where the next lookup looks first.
    next: NextGuess,
}

/// A position to try first, which lookups through `&Slots` update. Atomic so that the table
/// stays `Sync`; relaxed loads and stores are plain moves on the usual targets, and any
/// value is only a guess that the name confirms.
#[derive(Debug, Default)]
struct NextGuess(AtomicUsize);

impl Clone for NextGuess {
    fn clone(&self) -> Self {
        NextGuess(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

impl<A> Slots<A> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Slots {
            entries: Vec::with_capacity(capacity),
            positions: HashTable::with_capacity(capacity),
            hasher: DefaultHashBuilder::default(),
            next: NextGuess::default(),
        }
    }

    /// The position of the slot named `name`.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        let guess = self.next.0.load(Ordering::Relaxed);
        let position = match self.entries.get(guess) {
            Some((found, _)) if found == name => Some(guess),
            _ => {
                let entries = &self.entries;
                let hash = self.hasher.hash_one(name);
                self.positions.find(hash, |&at| entries[at].0 == name).copied()
            }
        };
        if let Some(position) = position {
            self.next.0.store(position + 1, Ordering::Relaxed);
        }
        position
    }

    /// The slot at `position`, which [`position`](Self::position) or
    /// [`position_or_insert`](Self::position_or_insert) gave since the last removal.
    pub(crate) fn at(&self, position: usize) -> &Slot<A> {
        &self.entries[position].1
    }

    /// The name and slot at `position`, as [`at`](Self::at) finds it, the slot to change.
    pub(crate) fn entry_at(&mut self, position: usize) -> (&str, &mut Slot<A>) {
        let (name, slot) = &mut self.entries[position];
        (name, slot)
    }

    /// The slot at `position`, as [`at`](Self::at) finds it, to change.
    pub(crate) fn at_mut(&mut self, position: usize) -> &mut Slot<A> {
        &mut self.entries[position].1
    }

    /// The position of the slot named `name`, inserting `slot()` under it if there is none
    /// (the name is copied only then).
    pub(crate) fn position_or_insert(
        &mut self,
        name: &str,
        slot: impl FnOnce() -> Slot<A>,
    ) -> usize {
        if let Some(position) = self.position(name) {
            return position;
        }
        self.push(name.to_owned(), slot())
    }

    fn push(&mut self, name: String, slot: Slot<A>) -> usize {
        let position = self.entries.len();
        let (entries, hasher) = (&self.entries, &self.hasher);
        let hash = hasher.hash_one(name.as_str());
        self.positions.insert_unique(hash, position, |&at| hasher.hash_one(entries[at].0.as_str()));
        self.entries.push((name, slot));
        position
    }

    /// Puts `slot` under `name`, replacing the slot of that name if there is one.
    pub(crate) fn insert(&mut self, name: String, slot: Slot<A>) {
        match self.position(&name) {
            Some(position) => self.entries[position].1 = slot,
            None => {
                self.push(name, slot);
            }
        }
    }

    /// Takes the slot named `name` out. The last slot moves to its position.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Slot<A>> {
        let position = self.position(name)?;
        let hash = self.hasher.hash_one(name);
        let found = self.positions.find_entry(hash, |&at| at == position);
        found.expect("every position is in the table").remove();
        let last = self.entries.len() - 1;
        if position != last {
            let hash = self.hasher.hash_one(self.entries[last].0.as_str());
            let moved = self.positions.find_mut(hash, |&at| at == last);
            *moved.expect("every position is in the table") = position;
        }
        Some(self.entries.swap_remove(position).1)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Slot<A>> {
        self.position(name).map(|position| self.at(position))
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Slot<A>> {
        self.position(name).map(|position| self.at_mut(position))
    }

    pub(crate) fn get_key_value(&self, name: &str) -> Option<(&String, &Slot<A>)> {
        let (name, slot) = &self.entries[self.position(name)?];
        Some((name, slot))
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Slot<A>)> {
        self.entries.iter().map(|(name, slot)| (name, slot))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(name, _)| name)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Slot<A>> {
        self.entries.iter().map(|(_, slot)| slot)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Slot<A>)> {
        self.entries.iter_mut().map(|(name, slot)| (&*name, slot))
    }
}

/// Equal tables hold equal slots under the same names, in any order.
impl<A: PartialEq> PartialEq for Slots<A> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.iter().all(|(name, slot)| other.get(name).is_some_and(|theirs| theirs == slot))
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;
    use crate::registry::Slot;

    #[test]
    fn positions_follow_removals_and_equality_ignores_order() {
        let mut slots = Slots::<f32>::default();
        for (group, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(slots.position_or_insert(name, || Slot::new(group, None)), group);
        }
        assert_eq!(slots.remove("b").map(|slot| slot.group), Some(1));
        assert_eq!(slots.position("d"), Some(1));
        assert_eq!(slots.get("d").map(|slot| slot.group), Some(3));
        assert_eq!(slots.get("b"), None);
        assert_eq!(slots.remove("d").map(|slot| slot.group), Some(3));
        assert_eq!((slots.position("a"), slots.position("c")), (Some(0), Some(1)));

        let mut reversed = Slots::default();
        reversed.insert("c".to_owned(), Slot::new(2, None));
        reversed.insert("a".to_owned(), Slot::new(0, None));
        assert_eq!(slots, reversed);
        reversed.insert("a".to_owned(), Slot::new(1, None));
        assert_ne!(slots, reversed);
        assert_eq!(reversed.len(), 2);
    }

    /// The guess of the next position never changes what a lookup finds, whatever the order
    /// of the lookups: in order (where it hits), backwards, by strides, the same name twice,
    /// unknown names, and after removals have moved names.
    #[test]
    fn lookups_in_any_order_find_the_named_position() {
        let mut slots = Slots::<f32>::default();
        let names: Vec<String> = (0..40).map(|i| format!("layer.{i}.weight")).collect();
        for name in &names {
            slots.position_or_insert(name, || Slot::new(0, None));
        }
        let check = |slots: &Slots<f32>, order: &mut dyn Iterator<Item = usize>| {
            for i in order {
                let name = names[i].as_str();
                let expected = slots.iter().position(|(found, _)| found == name);
                assert_eq!(slots.position(name), expected, "{name}");
            }
            assert_eq!(slots.position("unknown"), None);
        };
        check(&slots, &mut (0..40));
        check(&slots, &mut (0..40).rev());
        check(&slots, &mut (0..40).map(|i| i * 7 % 40));
        check(&slots, &mut [3, 3, 4, 4, 39, 0].into_iter());
        for removed in [0, 17, 39, 5] {
            slots.remove(&names[removed]);
        }
        check(&slots, &mut (0..40));
        check(&slots, &mut (0..40).rev());
    }
}
