//! The integration-test crate: one binary, one module per subject.
//!
//! Run one module with e.g. `cargo test --release --test it core`.

mod access_rules;
mod changes;
mod cli;
mod core;
mod fake_dodo;
mod families;
mod fixtures;
mod fuzz_regressions;
mod hardening;
mod http;
mod openapi;
mod pg;
mod postgres;
mod reconcile;
mod store;
mod support;
mod verify;
