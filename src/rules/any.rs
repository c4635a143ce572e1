//! [`Rule`]: any of the crate's rules as one value, chosen at run time.

use crate::element::Element;
use crate::error::Result;
use crate::kernel::TensorStep;
use crate::rule::{Options, Reduction, ReductionSums, UpdateRule};
use crate::rules::{
    Adadelta, Adafactor, Adagrad, Adam, AdamW, Adamax, Asgd, Lamb, Lion, Momentum, Muon, NAdam,
    Nesterov, Prodigy, RAdam, RmsProp, Rprop, ScheduleFreeAdamW, ScheduleFreeSgd, Sgd,
};

macro_rules! rules {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Any of the crate's rules, with its hyperparameters: the rule of an optimizer or of a
        /// group chosen at run time, from a configuration file or per group.
        ///
        /// `Optimizer<Rule, A>` takes a different rule in every group (Muon for the hidden
        /// matrices, AdamW for the rest, say), and its checkpoints hold each group's rule.
        /// Every rule converts into a `Rule` with `From`, so [`add_group`] and [`set_hyper`]
        /// take the rule types themselves. In serde's human-readable formats a rule is its
        /// hyperparameters tagged with its name, `{"rule": "adamw", "lr": 3e-4}`, keys left
        /// out taking their defaults; in compact formats (postcard) it is the variant index
        /// followed by the hyperparameters.
        ///
        /// The element loops of every rule are compiled once per element type inside this
        /// crate, so a program stepping `Rule`s builds no rule code of its own.
        ///
        /// ```
        /// use ndarray::array;
        /// use ndarray_optim::{AdamW, Optimizer, Rule, Sgd};
        ///
        /// let config = r#"{"rule": "adamw", "lr": 0.001, "weight_decay": 0.05}"#;
        /// let rule: Rule = serde_json::from_str(config).unwrap();
        /// assert_eq!(rule, Rule::AdamW(AdamW { weight_decay: 0.05, ..AdamW::default() }));
        ///
        /// let mut opt = Optimizer::<Rule, f64>::new(rule)?;
        /// opt.add_group("bias", Sgd { lr: 0.1, ..Sgd::default() })?;
        /// opt.assign("b", "bias")?;
        /// let (mut w, mut b) = (array![1.0, 2.0], array![0.5]);
        /// opt.step("w", &mut w, &array![0.1, 0.1])?;
        /// opt.step("b", &mut b, &array![1.0])?;
        /// assert_eq!(b, array![0.4]);
        /// # Ok::<(), ndarray_optim::Error>(())
        /// ```
        ///
        /// [`add_group`]: crate::Optimizer::add_group
        /// [`set_hyper`]: crate::Optimizer::set_hyper
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum Rule {
            $(
                #[doc = concat!("[`", stringify!($variant), "`], `\"", $name, "\"`.")]
                $variant($variant),
            )*
        }

        $(
            impl From<$variant> for Rule {
                fn from(rule: $variant) -> Self {
                    Rule::$variant(rule)
                }
            }
        )*

        impl Rule {
            /// The names of every rule, as [`UpdateRule::NAME`] gives them.
            pub const NAMES: &[&str] = &[$($name),*];

            /// The rule named `name` with its default hyperparameters, or `None` if no rule
            /// has that name.
            pub fn with_defaults(name: &str) -> Option<Rule> {
                match name {
                    $($name => Some(Rule::$variant($variant::default())),)*
                    _ => None,
                }
            }

            /// Steps with the rule this value holds; compiled here for both element types.
            pub(crate) fn step_as_held<A: Element>(&self, tensor: TensorStep<'_, A>) {
                match self {
                    $(Rule::$variant(rule) => rule.step(tensor),)*
                }
            }
        }

        impl UpdateRule for Rule {
            /// A checkpoint of an `Optimizer<Rule, A>` names this, and each group its rule.
            const NAME: &'static str = "any";

            fn name(&self) -> &'static str {
                match self {
                    $(Rule::$variant(_) => $name,)*
                }
            }

            fn options(&self) -> Options {
                match self {
                    $(Rule::$variant(rule) => rule.options(),)*
                }
            }

            fn lr_mut(&mut self) -> &mut f64 {
                match self {
                    $(Rule::$variant(rule) => rule.lr_mut(),)*
                }
            }

            fn cycled_momentum_mut(&mut self) -> Option<&mut f64> {
                match self {
                    $(Rule::$variant(rule) => rule.cycled_momentum_mut(),)*
                }
            }

            fn validate(&self) -> Result<()> {
                match self {
                    $(Rule::$variant(rule) => rule.validate(),)*
                }
            }

            fn elementwise(&self) -> bool {
                match self {
                    $(Rule::$variant(rule) => rule.elementwise(),)*
                }
            }

            fn check_shape(&self, shape: &[usize]) -> Result<(), &'static str> {
                match self {
                    $(Rule::$variant(rule) => rule.check_shape(shape),)*
                }
            }

            fn state_names(&self) -> &'static [&'static str] {
                match self {
                    $(Rule::$variant(rule) => rule.state_names(),)*
                }
            }

            fn shaped_state(&self, shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
                match self {
                    $(Rule::$variant(rule) => rule.shaped_state(shape),)*
                }
            }

            fn scratch_len(&self, shape: &[usize]) -> usize {
                match self {
                    $(Rule::$variant(rule) => rule.scratch_len(shape),)*
                }
            }

            fn scalar_names(&self) -> &'static [&'static str] {
                match self {
                    $(Rule::$variant(rule) => rule.scalar_names(),)*
                }
            }

            fn initial_value(&self, name: &str) -> f64 {
                match self {
                    $(Rule::$variant(rule) => rule.initial_value(name),)*
                }
            }

            fn non_negative_state(&self) -> &'static [&'static str] {
                match self {
                    $(Rule::$variant(rule) => rule.non_negative_state(),)*
                }
            }

            fn check_scalar(&self, name: &str, value: f64) -> Result<(), &'static str> {
                match self {
                    $(Rule::$variant(rule) => rule.check_scalar(name, value),)*
                }
            }

            fn in_eval_mode(&self, scalars: &[f64]) -> bool {
                match self {
                    $(Rule::$variant(rule) => rule.in_eval_mode(scalars),)*
                }
            }

            fn reduction(&self) -> Option<Reduction> {
                match self {
                    $(Rule::$variant(rule) => rule.reduction(),)*
                }
            }

            fn reduce<A: Element>(&self, tensor: TensorStep<'_, A>, sums: &mut ReductionSums) {
                match self {
                    $(Rule::$variant(rule) => rule.reduce(tensor, sums),)*
                }
            }

            fn combine(&self, shared: &mut [f64], totals: &[f64], lr: f64) -> bool {
                match self {
                    $(Rule::$variant(rule) => rule.combine(shared, totals, lr),)*
                }
            }

            fn check_shared(&self, name: &str, value: f64) -> Result<(), &'static str> {
                match self {
                    $(Rule::$variant(rule) => rule.check_shared(name, value),)*
                }
            }

            fn reduction_mismatch(&self, first: &Self) -> Option<&'static str> {
                match (self, first) {
                    $((Rule::$variant(rule), Rule::$variant(first)) => {
                        rule.reduction_mismatch(first)
                    })*
                    // Groups of different rules share no reduction.
                    _ => None,
                }
            }

            fn step<A: Element>(&self, tensor: TensorStep<'_, A>) {
                // Through the element type, whose two implementations are compiled here.
                A::step_rule(self, tensor);
            }
        }

        #[cfg(feature = "serde")]
        mod serde_impl {
            use serde::{Deserialize, Serialize};

            use super::*;

            crate::serde_form::dual_form!(Rule);

            #[derive(Serialize, Deserialize)]
            #[serde(remote = "Rule", tag = "rule")]
            enum Tagged {
                $(#[serde(rename = $name)] $variant($variant),)*
            }

            #[derive(Serialize, Deserialize)]
            #[serde(remote = "Rule")]
            enum Indexed {
                $(#[serde(rename = $name)] $variant($variant),)*
            }
        }
    };
}

rules! {
    Sgd => "sgd",
    Momentum => "momentum",
    Nesterov => "nesterov",
    Adagrad => "adagrad",
    Adadelta => "adadelta",
    RmsProp => "rmsprop",
    Adam => "adam",
    AdamW => "adamw",
    Adamax => "adamax",
    NAdam => "nadam",
    RAdam => "radam",
    Lamb => "lamb",
    Adafactor => "adafactor",
    Muon => "muon",
    Lion => "lion",
    Asgd => "asgd",
    Rprop => "rprop",
    ScheduleFreeAdamW => "schedule_free_adamw",
    ScheduleFreeSgd => "schedule_free_sgd",
    Prodigy => "prodigy",
}
