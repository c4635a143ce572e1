//! [`Parameters`] for arrays and the standard containers.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};

use ndarray::{Array, Dimension};

use super::{Parameters, Prefix, Visit, VisitMut, VisitPair};
use crate::element::Element;
use crate::error::{Error, Result};

/// One tensor, named by the path that leads to it.
impl<A: Element, D: Dimension> Parameters for Array<A, D> {
    type Elem = A;

    fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, A>) {
        f(prefix.as_str(), self.view().into_dyn());
    }

    fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, A>) {
        f(prefix.as_str(), self.view_mut().into_dyn());
    }

    fn zip_mut(
        &mut self,
        grads: &Self,
        prefix: &mut Prefix,
        f: &mut VisitPair<'_, A>,
    ) -> Result<()> {
        // A gradient of another shape is the optimizer's to refuse, naming both shapes.
        f(prefix.as_str(), self.view_mut().into_dyn(), grads.view().into_dyn())
    }
}

impl<P: Parameters + ?Sized> Parameters for Box<P> {
    type Elem = P::Elem;

    fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, P::Elem>) {
        (**self).visit(prefix, f);
    }

    fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, P::Elem>) {
        (**self).visit_mut(prefix, f);
    }

    fn zip_mut(
        &mut self,
        grads: &Self,
        prefix: &mut Prefix,
        f: &mut VisitPair<'_, P::Elem>,
    ) -> Result<()> {
        (**self).zip_mut(grads, prefix, f)
    }
}

/// Members indexed from 0, as PyTorch names a `ModuleList`'s: `layers.0.weight`.
impl<P: Parameters> Parameters for [P] {
    type Elem = P::Elem;

    fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, P::Elem>) {
        for (index, member) in self.iter().enumerate() {
            prefix.with_index(index, |prefix| member.visit(prefix, f));
        }
    }

    fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, P::Elem>) {
        for (index, member) in self.iter_mut().enumerate() {
            prefix.with_index(index, |prefix| member.visit_mut(prefix, f));
        }
    }

    fn zip_mut(
        &mut self,
        grads: &Self,
        prefix: &mut Prefix,
        f: &mut VisitPair<'_, P::Elem>,
    ) -> Result<()> {
        if grads.len() < self.len() {
            return Err(prefix.with_index(grads.len(), missing));
        }
        if grads.len() > self.len() {
            return Err(prefix.with_index(self.len(), unexpected));
        }
        for (index, (member, grad)) in self.iter_mut().zip(grads).enumerate() {
            prefix.with_index(index, |prefix| member.zip_mut(grad, prefix, f))?;
        }
        Ok(())
    }
}

/// Forwards a container that derefs to a slice to the slice's implementation.
macro_rules! as_slice {
    ($([$($generics:tt)*] $container:ty),* $(,)?) => {$(
        impl<$($generics)*> Parameters for $container
        where
            [T]: Parameters,
        {
            type Elem = <[T] as Parameters>::Elem;

            fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, Self::Elem>) {
                self[..].visit(prefix, f);
            }

            fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, Self::Elem>) {
                self[..].visit_mut(prefix, f);
            }

            fn zip_mut(
                &mut self,
                grads: &Self,
                prefix: &mut Prefix,
                f: &mut VisitPair<'_, Self::Elem>,
            ) -> Result<()> {
                self[..].zip_mut(&grads[..], prefix, f)
            }
        }
    )*};
}

as_slice!([T] Vec<T>, [T, const N: usize] [T; N]);

/// Lists of `(name, set)` pairs: each set's names start with its name.
macro_rules! named_list {
    ($($name:ty),* $(,)?) => {$(
        impl<P: Parameters> Parameters for [($name, P)] {
            type Elem = P::Elem;

            fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, P::Elem>) {
                for (name, member) in self {
                    prefix.with(name, |prefix| member.visit(prefix, f));
                }
            }

            fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, P::Elem>) {
                for (name, member) in self {
                    prefix.with(name, |prefix| member.visit_mut(prefix, f));
                }
            }

            fn zip_mut(
                &mut self,
                grads: &Self,
                prefix: &mut Prefix,
                f: &mut VisitPair<'_, P::Elem>,
            ) -> Result<()> {
                // Lists built alike hold each name at the same position: look there first.
                let mut position = 0;
                let mut get = |name: &str| {
                    let at = grads.get(position).filter(|(at, _)| *at == name);
                    position += 1;
                    at.or_else(|| grads.iter().find(|(other, _)| *other == name))
                        .map(|(_, grad)| grad)
                };
                let members = self.iter_mut().map(|(name, member)| (&**name, member));
                zip_members(members, &mut get, prefix, f)?;
                let names = grads.iter().map(|(name, _)| &**name);
                let is_param = |name: &str| self.iter().any(|(other, _)| *other == name);
                check_extra(names, is_param, grads.len() != self.len(), prefix)
            }
        }
    )*};
}

named_list!(String, &str);

/// Maps from names to sets: each set's names start with its key.
macro_rules! map {
    ($([$($generics:tt)*] $map:ty where [$($key:tt)*]),* $(,)?) => {$(
        impl<$($generics)*> Parameters for $map
        where
            K: Borrow<str> + $($key)*,
            P: Parameters,
        {
            type Elem = P::Elem;

            fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, P::Elem>) {
                for (key, member) in self {
                    prefix.with(key.borrow(), |prefix| member.visit(prefix, f));
                }
            }

            fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, P::Elem>) {
                for (key, member) in self {
                    prefix.with(key.borrow(), |prefix| member.visit_mut(prefix, f));
                }
            }

            fn zip_mut(
                &mut self,
                grads: &Self,
                prefix: &mut Prefix,
                f: &mut VisitPair<'_, P::Elem>,
            ) -> Result<()> {
                let members = self.iter_mut().map(|(key, member)| (key.borrow(), member));
                zip_members(members, &mut |key| grads.get(key), prefix, f)?;
                let keys = grads.keys().map(Borrow::borrow);
                let is_param = |key: &str| self.contains_key(key);
                check_extra(keys, is_param, grads.len() != self.len(), prefix)
            }
        }
    )*};
}

map!(
    [K, P] BTreeMap<K, P> where [Ord],
    [K, P, S: BuildHasher] HashMap<K, P, S> where [Hash + Eq],
);

/// Tuples of sets: their union, each element's names as they are.
macro_rules! tuple {
    ($first:ident $(, $rest:ident)*; $($index:tt),+) => {
        impl<$first: Parameters $(, $rest: Parameters<Elem = $first::Elem>)*> Parameters
            for ($first, $($rest,)*)
        {
            type Elem = $first::Elem;

            fn visit(&self, prefix: &mut Prefix, f: &mut Visit<'_, Self::Elem>) {
                $(self.$index.visit(prefix, f);)+
            }

            fn visit_mut(&mut self, prefix: &mut Prefix, f: &mut VisitMut<'_, Self::Elem>) {
                $(self.$index.visit_mut(prefix, f);)+
            }

            fn zip_mut(
                &mut self,
                grads: &Self,
                prefix: &mut Prefix,
                f: &mut VisitPair<'_, Self::Elem>,
            ) -> Result<()> {
                $(self.$index.zip_mut(&grads.$index, prefix, f)?;)+
                Ok(())
            }
        }
    };
}

tuple!(P0; 0);
tuple!(P0, P1; 0, 1);
tuple!(P0, P1, P2; 0, 1, 2);
tuple!(P0, P1, P2, P3; 0, 1, 2, 3);

/// Pairs each named member with the gradient that `get` finds under its name.
fn zip_members<'p, 'g, P: Parameters + 'p + 'g>(
    members: impl Iterator<Item = (&'p str, &'p mut P)>,
    get: &mut dyn FnMut(&str) -> Option<&'g P>,
    prefix: &mut Prefix,
    f: &mut VisitPair<'_, P::Elem>,
) -> Result<()> {
    for (name, member) in members {
        let grad = get(name);
        prefix.with(name, |prefix| match grad {
            Some(grad) => member.zip_mut(grad, prefix, f),
            None => Err(missing(prefix)),
        })?;
    }
    Ok(())
}

/// Fails if the gradients, each of whose names was found among the members, hold a gradient
/// of a name no member has, or (in a list) one name twice. Only when the counts differ can
/// either be, so only then are the names searched.
fn check_extra<'g>(
    names: impl Iterator<Item = &'g str> + Clone,
    is_param: impl Fn(&str) -> bool,
    counts_differ: bool,
    prefix: &mut Prefix,
) -> Result<()> {
    if !counts_differ {
        return Ok(());
    }
    if let Some(name) = names.clone().find(|name| !is_param(name)) {
        return Err(prefix.with(name, unexpected));
    }
    let twice = names.clone().enumerate().find_map(|(index, name)| {
        names.clone().take(index).any(|other| other == name).then_some(name)
    });
    match twice {
        Some(name) => Err(Error::DuplicateParam {
            param: prefix.with(name, |prefix| prefix.as_str().to_owned()),
            in_what: "gradients",
        }),
        // The members name a tensor twice, which the optimizer refuses.
        None => Ok(()),
    }
}

fn missing(prefix: &mut Prefix) -> Error {
    Error::MissingGradient { param: prefix.as_str().to_owned() }
}

fn unexpected(prefix: &mut Prefix) -> Error {
    Error::UnexpectedGradient { param: prefix.as_str().to_owned() }
}
