//! A delivery as it arrived, and what became of it.

use crate::event::{self, Envelope, ParseError};
use crate::wire::hex;
use crate::wire::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One verified webhook delivery, raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id` header (stable across retries). With the body's hash it is the
    /// idempotency key: a retry may carry a newer payload under the same id. For a bare
    /// envelope without headers, `sha256:` + hex of its bytes.
    pub id: String,
    /// The `webhook-timestamp` header, as received.
    pub webhook_timestamp: Option<String>,
    /// The `webhook-signature` header, as received.
    pub webhook_signature: Option<String>,
    /// The raw body bytes (not necessarily UTF-8 or JSON).
    pub body: Vec<u8>,
    /// When the engine received it.
    pub received_at: Timestamp,
}

impl Delivery {
    /// A delivery from a captured webhook: its headers and raw body.
    pub fn new(id: impl Into<String>, body: impl Into<Vec<u8>>, received_at: Timestamp) -> Self {
        Delivery {
            id: id.into(),
            webhook_timestamp: None,
            webhook_signature: None,
            body: body.into(),
            received_at,
        }
    }

    /// A bare event envelope with no headers: its id is `sha256:` + hex of the bytes, so
    /// the same line ingested twice is one delivery.
    pub fn from_bare(body: impl Into<Vec<u8>>, received_at: Timestamp) -> Self {
        let body = body.into();
        let id = format!("sha256:{}", hex(&Sha256::digest(&body)));
        Delivery::new(id, body, received_at)
    }
}

/// A delivery with the work that needs no store done ahead of the writer: the hash of
/// its body (half of the idempotency key), its parse, and the JSON its snapshot is
/// stored as. All are pure functions of the bytes, so they run on the caller's thread,
/// in parallel, and the single writer thread only reads and writes the store.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The delivery as it arrived.
    pub delivery: Delivery,
    /// Lower-case hex SHA-256 of `delivery.body`.
    pub body_sha256: String,
    /// `event::parse(&delivery.body)`; `None` once taken (the store re-parses if it has
    /// to apply the delivery again, as when a batch is retried one by one). Set it to
    /// `None`, never to another parse, after changing `delivery.body`.
    pub parsed: Option<Result<Envelope, ParseError>>,
    /// The parsed snapshot as the store writes it ([`event::Event::state_json`]): the
    /// writer takes it when the snapshot becomes the object's state as it is, instead
    /// of serialising it on its own thread. `None`: the writer serialises.
    pub(crate) state_json: Option<String>,
}

/// What [`Prepared::ahead`] computes from a delivery's bytes.
pub(crate) struct Ahead {
    body_sha256: String,
    parsed: Result<Envelope, ParseError>,
    state_json: Option<String>,
}

impl Prepared {
    /// Hashes and parses `delivery`.
    pub fn new(delivery: Delivery) -> Prepared {
        let ahead = Prepared::ahead(&delivery);
        Prepared::with(delivery, ahead)
    }

    /// The work [`Prepared::new`] does: the body's hash, its parse and its snapshot's
    /// JSON.
    pub(crate) fn ahead(delivery: &Delivery) -> Ahead {
        let parsed = event::parse(&delivery.body);
        let state_json = parsed.as_ref().ok().and_then(|e| e.event.state_json());
        Ahead {
            body_sha256: hex(&Sha256::digest(&delivery.body)),
            parsed,
            state_json,
        }
    }

    /// `delivery` with the work [`Prepared::ahead`] did on it.
    pub(crate) fn with(delivery: Delivery, ahead: Ahead) -> Prepared {
        Prepared {
            delivery,
            body_sha256: ahead.body_sha256,
            parsed: Some(ahead.parsed),
            state_json: ahead.state_json,
        }
    }

    /// The parse: the one made ahead if it is still here, else a new one. A new parse
    /// also drops the JSON made ahead, which belongs to the parse made ahead: the body
    /// may have been replaced since.
    pub fn take_parsed(&mut self) -> Result<Envelope, ParseError> {
        match self.parsed.take() {
            Some(parsed) => parsed,
            None => {
                self.state_json = None;
                event::parse(&self.delivery.body)
            }
        }
    }
}

/// What became of a delivery when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It changed the object's state (or which of its snapshots are rejected).
    Applied,
    /// Seen before: the same webhook id, or the same snapshot under another id.
    Duplicate,
    /// Legal, but older than what the object already reflects: nothing changed.
    Stale,
    /// An illegal transition: kept in the quarantine, state unchanged.
    Rejected,
    /// An event type the engine stores but does not fold (payouts, unknown types, ...).
    Unhandled,
    /// Verified, but the body does not parse; kept for a later rebuild.
    Malformed,
}

impl Outcome {
    /// All outcomes, in reporting order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Stale,
        Outcome::Rejected,
        Outcome::Unhandled,
        Outcome::Malformed,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Rejected => "rejected",
            Outcome::Unhandled => "unhandled",
            Outcome::Malformed => "malformed",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
