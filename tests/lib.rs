//! The integration tests, one binary with a module per concern.

#[path = "../examples/support/case.rs"]
#[allow(dead_code)]
mod case;

mod alloc;
mod checkpoint;
mod common;
mod errors;
mod hand;
mod kernels;
mod layouts;
mod reference;
