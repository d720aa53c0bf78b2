//! # entitlement-sync
//!
//! Keeps an application's access rights in exact step with Dodo Payments webhooks, and
//! answers "does customer X have access to entitlement Y?" in microseconds.
//!
//! ## The loop
//!
//! Every delivery goes through the same five steps:
//!
//! 1. **verify** the Standard Webhooks signature over the raw body ([`verify`]);
//! 2. **parse** the body into a typed snapshot ([`event::parse`]), tolerating unknown
//!    types, fields and enum values;
//! 3. **fold** the object's snapshots, sorted by version, through its pure state machine
//!    ([`fold`], [`grant`], [`subscription`]): each snapshot is applied or rejected;
//! 4. **persist** the raw delivery, the folded state and the outcome in one SQLite
//!    transaction ([`store`]), and only then acknowledge;
//! 5. **answer** access questions from the folded state with the pure decision
//!    ([`access`]), with `now` as a parameter.
//!
//! Steps 1–3 and 5 are pure functions of (state, input, config, now): no IO, no clock.
//! Only [`store`] touches SQLite; only the `entsync` binary reads the clock, the
//! environment and sockets.

pub mod access;
pub mod change;
pub mod delivery;
pub mod engine;
pub mod event;
pub mod fold;
pub mod grant;
#[cfg(feature = "http")]
pub mod http;
pub mod index;
mod par;
pub mod plan;
pub mod reconcile;
pub mod store;
pub mod subscription;
#[doc(hidden)]
pub mod synth;
pub mod verify;
pub mod wire;

pub use access::{Access, DisputePolicy, Policy};
pub use delivery::{Delivery, Outcome};
pub use engine::{Engine, EngineError, IndexState, Lease};
