//! Access changes: what the app hears when an answer changes.
//!
//! An access change is recorded whenever the answer for a (customer, entitlement) pair
//! changes its `allowed`, `status` or `reason`, in the same transaction as whatever
//! caused it. This module is the pure part: the [`Change`] record, its [`Cause`], the
//! triple it compares ([`Answer`]), and [`diff`], which decides whether a new answer is
//! a change at all. The store records what `diff` says; [`crate::access::next_change`]
//! says when time alone may change an answer next.

use crate::access::Access;
use crate::wire::Timestamp;
use serde::{Deserialize, Serialize};

/// The part of an access answer a change compares: `allowed`, `status`, `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Answer {
    /// The decision.
    pub allowed: bool,
    /// `delivered`, `pending`, `failed`, `revoked` or `none`.
    pub status: String,
    /// Why not (null when allowed or pending).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
}

impl Answer {
    /// The answer of a pair nothing is known about: what a pair's first change has as
    /// its `previous`.
    pub fn none() -> Answer {
        Answer {
            allowed: false,
            status: "none".into(),
            reason: Some("no_grant".into()),
        }
    }

    /// The triple of a full answer.
    pub fn of(access: &Access) -> Answer {
        Answer {
            allowed: access.allowed,
            status: access.status.clone(),
            reason: access.reason.clone(),
        }
    }
}

/// What caused a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Cause {
    /// A webhook delivery.
    Delivery {
        /// Its `webhook-id`.
        delivery_id: String,
        /// Its event type.
        #[serde(rename = "type")]
        event_type: String,
    },
    /// Time alone: a license key expired, an on-hold grace ended.
    Time {
        /// `license_key_expired`, `grace_ended`, ...
        detail: String,
    },
    /// An operator: `entsync accept` of a quarantined delivery, or a new access policy.
    Operator {
        /// The accepted delivery, if that is what it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivery_id: Option<String>,
        /// `accept` or `policy_changed`.
        detail: String,
    },
    /// `entsync rebuild` (or the first evaluation of a store that had no feed yet).
    Rebuild,
    /// `entsync reconcile`: a snapshot fetched from Dodo's API.
    Reconcile {
        /// Its `api:` delivery id.
        delivery_id: String,
        /// The event type it was stored as.
        #[serde(rename = "type")]
        event_type: String,
    },
}

impl Cause {
    /// The cause of a change made by a stored delivery: `reconcile` for the `api:`
    /// snapshots `entsync reconcile` stores, `delivery` for everything else.
    pub fn of_delivery(delivery_id: &str, event_type: &str) -> Cause {
        let (delivery_id, event_type) = (delivery_id.to_string(), event_type.to_string());
        if delivery_id.starts_with("api:") {
            Cause::Reconcile {
                delivery_id,
                event_type,
            }
        } else {
            Cause::Delivery {
                delivery_id,
                event_type,
            }
        }
    }

    /// The cause's `kind`, as stored and printed.
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Delivery { .. } => "delivery",
            Cause::Time { .. } => "time",
            Cause::Operator { .. } => "operator",
            Cause::Rebuild => "rebuild",
            Cause::Reconcile { .. } => "reconcile",
        }
    }

    /// `(delivery_id, type, detail)`, the columns a cause is stored in.
    pub fn columns(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match self {
            Cause::Delivery {
                delivery_id,
                event_type,
            }
            | Cause::Reconcile {
                delivery_id,
                event_type,
            } => (Some(delivery_id), Some(event_type), None),
            Cause::Time { detail } => (None, None, Some(detail)),
            Cause::Operator {
                delivery_id,
                detail,
            } => (delivery_id.as_deref(), None, Some(detail)),
            Cause::Rebuild => (None, None, None),
        }
    }

    /// The inverse of [`Cause::kind`] + [`Cause::columns`]; `None` for an unknown kind.
    pub fn from_columns(
        kind: &str,
        delivery_id: Option<String>,
        event_type: Option<String>,
        detail: Option<String>,
    ) -> Option<Cause> {
        Some(match kind {
            "delivery" => Cause::Delivery {
                delivery_id: delivery_id?,
                event_type: event_type?,
            },
            "reconcile" => Cause::Reconcile {
                delivery_id: delivery_id?,
                event_type: event_type?,
            },
            "time" => Cause::Time { detail: detail? },
            "operator" => Cause::Operator {
                delivery_id,
                detail: detail?,
            },
            "rebuild" => Cause::Rebuild,
            _ => return None,
        })
    }

    /// The cause of a change by time alone, named after what the new answer says.
    pub fn of_time(previous: &Answer, now: &Answer) -> Cause {
        let detail = match now.reason.as_deref() {
            Some("license_key_expired") => "license_key_expired",
            _ if previous.allowed && !now.allowed => "grace_ended",
            _ => "time",
        };
        Cause::Time {
            detail: detail.into(),
        }
    }
}

/// One access change, as the feed, the stream and the forwarder carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    /// Strictly increasing in commit order (it may have holes).
    pub seq: i64,
    /// The customer.
    pub customer_id: String,
    /// The entitlement.
    pub entitlement_id: String,
    /// The new decision.
    pub allowed: bool,
    /// The new status.
    pub status: String,
    /// The new reason.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub reason: Option<String>,
    /// The most relevant grant of the new answer.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub grant_id: Option<String>,
    /// The answer before: the previous change's, or [`Answer::none`] for a pair's first.
    pub previous: Answer,
    /// The instant the answer changed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    /// What caused it.
    pub cause: Cause,
}

impl Change {
    /// The new answer's triple.
    pub fn answer(&self) -> Answer {
        Answer {
            allowed: self.allowed,
            status: self.status.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// What a pair's newly computed answer means for the feed, given the answer it last
/// recorded (`None`: nothing recorded, i.e. [`Answer::none`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diff {
    /// The triple changed: record a change with this `previous`.
    Changed {
        /// The answer before.
        previous: Answer,
    },
    /// Same triple: nothing to record.
    Same,
}

/// Compares a pair's new answer with the one it last recorded.
///
/// # Example
///
/// ```
/// use entitlement_sync::change::{diff, Answer, Diff};
/// let allowed = Answer { allowed: true, status: "delivered".into(), reason: None };
/// assert_eq!(diff(None, &allowed), Diff::Changed { previous: Answer::none() });
/// assert_eq!(diff(Some(&allowed), &allowed), Diff::Same);
/// assert_eq!(diff(None, &Answer::none()), Diff::Same);
/// ```
pub fn diff(recorded: Option<&Answer>, new: &Answer) -> Diff {
    let none = Answer::none();
    let previous = recorded.unwrap_or(&none);
    if previous == new {
        Diff::Same
    } else {
        Diff::Changed {
            previous: previous.clone(),
        }
    }
}
