//! Assigning tensors to groups by glob patterns over their names.
//!
//! A hand-written matcher: the patterns need only `*` and `?` over plain names, which is a
//! dozen lines without allocation, where a glob crate brings path semantics (`/`
//! separators, `**`, character classes) that tensor names do not have.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::optimizer::Optimizer;
use crate::rule::UpdateRule;

/// Whether `name` matches `pattern`, where `*` matches any run of characters (also empty,
/// also across dots) and `?` exactly one character.
///
/// ```
/// use ndarray_optim::pattern::glob_match;
///
/// assert!(glob_match("*.bias", "encoder.layer0.bias"));
/// assert!(glob_match("*norm*", "encoder.layernorm.weight"));
/// assert!(glob_match("layer?.w", "layer7.w") && !glob_match("layer?.w", "layer10.w"));
/// ```
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let first = |s: &str, at: usize| s[at..].chars().next();
    // Byte offsets into both; on a mismatch, back up to the last `*` and let it take one
    // more character. No recursion, no allocation.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = first(name, n) {
        match first(pattern, p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(expected) if expected == '?' || expected == c => {
                p += expected.len_utf8();
                n += c.len_utf8();
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    let taken = star_n + first(name, star_n).map_or(0, char::len_utf8);
                    (p, n, star) = (star_p + 1, taken, Some((star_p, taken)));
                }
                None => return false,
            },
        }
    }
    pattern[p..].chars().all(|c| c == '*')
}

/// Rules that put named tensors into groups: `(pattern, group)` pairs tried in order, the
/// first match wins, and an optional group for names no pattern matches.
///
/// [`Optimizer::assign_by_patterns`] applies them to a model's list of tensor names, and
/// checks that every name lands in exactly one group: a name that no rule matches (and no
/// fallback takes) is an error, and so, with [`strict`](Self::strict), is a name that rules
/// of two different groups match.
///
/// ```
/// use ndarray_optim::pattern::GroupPatterns;
/// use ndarray_optim::{Adam, DEFAULT_GROUP, Optimizer};
///
/// let mut opt = Optimizer::<_, f32>::new(Adam { lr: 1e-3, ..Adam::default() })?;
/// opt.add_group("no_decay", Adam::default())?;
/// opt.add_group("head", Adam { lr: 1e-2, ..Adam::default() })?;
/// let rules = GroupPatterns::new()
///     .rule("*.bias", "no_decay")
///     .rule("*norm*", "no_decay")
///     .rule("head.*", "head")
///     .otherwise(DEFAULT_GROUP);
/// let names = ["body.w", "body.bias", "body.norm.w", "head.w", "head.bias"];
/// opt.assign_by_patterns(&names, &rules)?;
/// assert_eq!(opt.group_of("head.bias"), Some("no_decay")); // the first match wins
/// assert_eq!(opt.group_of("head.w"), Some("head"));
/// assert_eq!(opt.group_of("body.w"), Some(DEFAULT_GROUP));
/// # Ok::<(), ndarray_optim::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPatterns {
    rules: Vec<(String, String)>,
    otherwise: Option<String>,
    strict: bool,
}

impl GroupPatterns {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the rule: names matching `pattern` ([`glob_match`]) go to `group`.
    pub fn rule(mut self, pattern: &str, group: &str) -> Self {
        self.rules.push((pattern.to_owned(), group.to_owned()));
        self
    }

    /// Names that no rule matches go to `group` instead of being an error.
    pub fn otherwise(mut self, group: &str) -> Self {
        self.otherwise = Some(group.to_owned());
        self
    }

    /// Makes a name that rules of two different groups match an error rather than the first
    /// match's.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// The group of `name`: `Ok(Some)`, `Ok(None)` if nothing takes it, `Err(())` if it is
    /// ambiguous under strict matching.
    fn group_of(&self, name: &str) -> core::result::Result<Option<&str>, ()> {
        let mut matches = self.rules.iter().filter(|(pattern, _)| glob_match(pattern, name));
        match matches.next() {
            Some((_, first)) if self.strict && matches.any(|(_, group)| group != first) => Err(()),
            Some((_, first)) => Ok(Some(first)),
            None => Ok(self.otherwise.as_deref()),
        }
    }
}

impl<R: UpdateRule, A: Element> Optimizer<R, A> {
    /// [Assigns](Self::assign) every tensor of `names` to the group that `patterns` give it,
    /// after checking that each lands in exactly one existing group; on an error nothing is
    /// assigned.
    ///
    /// # Errors
    /// [`Error::GroupPatterns`] listing the names no rule matches and the names rules of
    /// different groups match (strict only); [`Error::UnknownGroup`] for a rule's group that
    /// does not exist; [`Error::StateBuffersChange`] if a stepped tensor would move to a
    /// group whose settings need other state buffers.
    pub fn assign_by_patterns<S: AsRef<str>>(
        &mut self,
        names: &[S],
        patterns: &GroupPatterns,
    ) -> Result<()> {
        for group in patterns.rules.iter().map(|(_, g)| g).chain(&patterns.otherwise) {
            self.registry.group_index(group)?;
        }
        let (mut unmatched, mut ambiguous) = (Vec::new(), Vec::new());
        for name in names.iter().map(AsRef::as_ref) {
            match patterns.group_of(name) {
                Ok(Some(_)) => {}
                Ok(None) => unmatched.push(name.to_owned()),
                Err(()) => ambiguous.push(name.to_owned()),
            }
        }
        if !unmatched.is_empty() || !ambiguous.is_empty() {
            return Err(Error::GroupPatterns { unmatched, ambiguous });
        }
        // The one way `assign` can still fail, checked first so that nothing moves on error.
        let groups = &self.registry.groups;
        for name in names.iter().map(AsRef::as_ref) {
            let Some(slot) = self.registry.slots.get(name).filter(|slot| slot.tensor.is_some())
            else {
                continue;
            };
            let target = patterns.group_of(name).ok().flatten().expect("checked above");
            let current = groups[slot.group].hyper.state_names();
            let requested = groups[self.registry.group_index(target)?].hyper.state_names();
            if current != requested {
                return Err(Error::StateBuffersChange {
                    param: name.to_owned(),
                    current,
                    requested,
                });
            }
        }
        for name in names.iter().map(AsRef::as_ref) {
            let group = patterns.group_of(name).ok().flatten().expect("checked above");
            self.assign(name, group)?;
        }
        Ok(())
    }
}
