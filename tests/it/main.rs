//! The integration-test crate: one binary, one module per subject.
//!
//! Run one module with e.g. `cargo test --release --test it core`.

mod changes;
mod cli;
mod core;
mod families;
mod fixtures;
mod fuzz_regressions;
mod hardening;
mod http;
mod openapi;
mod store;
mod support;
mod verify;
