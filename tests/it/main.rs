//! The integration-test crate: one binary, one module per area.

mod families;
mod verify;
