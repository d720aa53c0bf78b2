//! The pure grant state machine: which snapshot may follow which.
//!
//! The whole policy is the table in [`transition`] plus the list of recoverable
//! revocation reasons in [`RECOVERABLE`]. Read them as data:
//!
//! | from \ to  | pending | delivered            | failed | revoked                         | unknown |
//! |------------|---------|----------------------|--------|---------------------------------|---------|
//! | pending    | yes     | yes                  | yes    | yes                             | yes     |
//! | delivered  | no      | yes                  | no     | yes                             | yes     |
//! | failed     | no      | no                   | yes    | yes                             | no      |
//! | revoked    | no      | if reason recoverable| no     | reason may change only from a recoverable one | if reason recoverable |
//! | unknown    | yes     | yes                  | yes    | yes                             | yes     |
//!
//! An unknown status (a value Dodo adds later) never grants access, and anything may
//! follow it. So it may not follow a final state (`failed`, or `revoked` for a reason that
//! is not recoverable): `revoked(manual) -> unknown -> delivered` would otherwise restore
//! a manual revocation, and `failed -> unknown -> delivered` deliver a failed grant. A
//! change of customer, entitlement or business is always refused. The first snapshot of a
//! grant may have any status (that is the fold's rule, see [`crate::fold::step`]).

use crate::event::{Grant, GrantStatus, RevocationReason};
use crate::fold::{Machine, RejectReason};
use crate::wire::Timestamp;

/// Revocation reasons after which Dodo restores the same grant id (`revoked ->
/// delivered`), and from which the reason may still change.
///
/// `manual`, `subscription_cancelled`, `subscription_expired`, `refund`, `plan_changed`,
/// a missing reason and any reason this version does not know are final.
pub const RECOVERABLE: &[RevocationReason] = &[
    RevocationReason::SubscriptionOnHold,
    RevocationReason::SubscriptionPaused,
    RevocationReason::LicenseKeyDisabled,
    RevocationReason::PlatformExternal,
];

/// Is a grant revoked for `reason` allowed to come back?
pub fn is_recoverable(reason: Option<&RevocationReason>) -> bool {
    reason.is_some_and(|r| RECOVERABLE.contains(r))
}

/// The rule for one status edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Always legal.
    Allow,
    /// Never legal.
    Deny,
    /// `revoked -> delivered` (or an unknown status): legal only after a recoverable
    /// reason.
    Restore,
    /// `revoked -> revoked`: the reason may change only from a recoverable one.
    Rerevoke,
}

/// The transition table.
pub fn transition(from: &GrantStatus, to: &GrantStatus) -> Rule {
    use GrantStatus::*;
    match (from, to) {
        (Pending, Pending | Delivered | Failed | Revoked) => Rule::Allow,
        (Delivered, Delivered | Revoked) => Rule::Allow,
        (Failed, Failed | Revoked) => Rule::Allow,
        (Revoked, Delivered | Other(_)) => Rule::Restore,
        (Revoked, Revoked) => Rule::Rerevoke,
        (Failed, Other(_)) => Rule::Deny,
        (Other(_), _) | (_, Other(_)) => Rule::Allow,
        (Delivered, Pending | Failed) => Rule::Deny,
        (Failed, Pending | Delivered) => Rule::Deny,
        (Revoked, Pending | Failed) => Rule::Deny,
    }
}

fn reason_name(reason: Option<&RevocationReason>) -> String {
    reason.map_or_else(|| "no reason".to_string(), |r| r.as_str().to_string())
}

/// Lifecycle rank, to order two snapshots of the same instant.
pub fn rank(status: &GrantStatus) -> u8 {
    match status {
        GrantStatus::Pending => 0,
        GrantStatus::Delivered => 1,
        GrantStatus::Failed => 2,
        GrantStatus::Revoked => 3,
        GrantStatus::Other(_) => 4,
    }
}

impl Machine for Grant {
    fn object_id(&self) -> &str {
        &self.id
    }

    fn version_at(&self, envelope_ts: Timestamp) -> Timestamp {
        self.updated_at.unwrap_or(envelope_ts)
    }

    fn rank(&self) -> u8 {
        rank(&self.status)
    }

    fn status_name(&self) -> &str {
        self.status.as_str()
    }

    fn describe(&self) -> String {
        match (&self.status, &self.revocation_reason) {
            (GrantStatus::Revoked, reason) => format!("revoked({})", reason_name(reason.as_ref())),
            (status, _) => status.to_string(),
        }
    }

    fn check(prev: &Grant, next: &Grant) -> Result<(), RejectReason> {
        if prev.customer_id != next.customer_id {
            return Err(RejectReason::IdentityChanged {
                field: "customer_id".into(),
            });
        }
        if prev.entitlement_id != next.entitlement_id {
            return Err(RejectReason::IdentityChanged {
                field: "entitlement_id".into(),
            });
        }
        // Once a snapshot names the business, every later one must name the same: were a
        // snapshot without it allowed to follow, `A -> absent -> B` would move the grant.
        if prev.business_id.is_some() && prev.business_id != next.business_id {
            return Err(RejectReason::IdentityChanged {
                field: "business_id".into(),
            });
        }
        let was = prev.revocation_reason.as_ref();
        match transition(&prev.status, &next.status) {
            Rule::Allow => Ok(()),
            Rule::Deny => Err(RejectReason::IllegalTransition),
            Rule::Restore if is_recoverable(was) => Ok(()),
            Rule::Restore => Err(RejectReason::ForbiddenRestoration {
                reason: reason_name(was),
            }),
            Rule::Rerevoke => {
                let now = next.revocation_reason.as_ref();
                if was == now || is_recoverable(was) {
                    Ok(())
                } else {
                    Err(RejectReason::ReasonChange {
                        from: reason_name(was),
                        to: reason_name(now),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(status: &str, reason: Option<&str>) -> Grant {
        Grant {
            id: "g".into(),
            business_id: Some("b".into()),
            customer_id: "c".into(),
            entitlement_id: "e".into(),
            status: GrantStatus::parse(status),
            revocation_reason: reason.map(RevocationReason::parse),
            created_at: None,
            updated_at: None,
            delivered_at: None,
            revoked_at: None,
            error_code: None,
            error_message: None,
            payment_id: None,
            subscription_id: None,
            oauth_url: None,
            oauth_expires_at: None,
            license_key: None,
        }
    }

    #[test]
    fn table() {
        // (from, from reason, to, to reason, legal?)
        type Case = (
            &'static str,
            Option<&'static str>,
            &'static str,
            Option<&'static str>,
            bool,
        );
        let cases: &[Case] = &[
            ("Pending", None, "Delivered", None, true),
            ("Pending", None, "Failed", None, true),
            ("Pending", None, "Revoked", Some("manual"), true),
            ("Delivered", None, "Revoked", Some("refund"), true),
            ("Failed", None, "Revoked", Some("manual"), true),
            ("Delivered", None, "Pending", None, false),
            ("Delivered", None, "Failed", None, false),
            ("Failed", None, "Delivered", None, false),
            ("Revoked", Some("manual"), "Pending", None, false),
            (
                "Revoked",
                Some("subscription_on_hold"),
                "Delivered",
                None,
                true,
            ),
            (
                "Revoked",
                Some("SubscriptionPaused"),
                "Delivered",
                None,
                true,
            ),
            (
                "Revoked",
                Some("license_key_disabled"),
                "Delivered",
                None,
                true,
            ),
            (
                "Revoked",
                Some("platform_external"),
                "Delivered",
                None,
                true,
            ),
            ("Revoked", Some("manual"), "Delivered", None, false),
            (
                "Revoked",
                Some("subscription_cancelled"),
                "Delivered",
                None,
                false,
            ),
            (
                "Revoked",
                Some("subscription_expired"),
                "Delivered",
                None,
                false,
            ),
            ("Revoked", Some("refund"), "Delivered", None, false),
            ("Revoked", Some("plan_changed"), "Delivered", None, false),
            (
                "Revoked",
                Some("brand_new_reason"),
                "Delivered",
                None,
                false,
            ),
            ("Revoked", None, "Delivered", None, false),
            (
                "Revoked",
                Some("subscription_on_hold"),
                "Revoked",
                Some("subscription_cancelled"),
                true,
            ),
            (
                "Revoked",
                Some("manual"),
                "Revoked",
                Some("subscription_cancelled"),
                false,
            ),
            ("Revoked", Some("manual"), "Revoked", Some("manual"), true),
            ("Delivered", None, "Suspended", None, true),
            ("Pending", None, "Suspended", None, true),
            ("Suspended", None, "Delivered", None, true),
            ("Failed", None, "Suspended", None, false),
            ("Revoked", Some("manual"), "Suspended", None, false),
            (
                "Revoked",
                Some("brand_new_reason"),
                "Suspended",
                None,
                false,
            ),
            (
                "Revoked",
                Some("subscription_on_hold"),
                "Suspended",
                None,
                true,
            ),
        ];
        for (from, fr, to, tr, legal) in cases {
            let got = Grant::check(&grant(from, *fr), &grant(to, *tr));
            assert_eq!(
                got.is_ok(),
                *legal,
                "{from}({fr:?}) -> {to}({tr:?}): {got:?}"
            );
        }
    }

    #[test]
    fn identity_changes_are_refused() {
        let a = grant("Delivered", None);
        let mut b = a.clone();
        b.customer_id = "other".into();
        assert_eq!(
            Grant::check(&a, &b),
            Err(RejectReason::IdentityChanged {
                field: "customer_id".into()
            })
        );
        let mut b = a.clone();
        b.entitlement_id = "other".into();
        assert!(Grant::check(&a, &b).is_err());
        let mut b = a.clone();
        b.business_id = Some("other".into());
        assert!(Grant::check(&a, &b).is_err());
    }

    #[test]
    fn a_known_business_may_not_be_dropped_but_an_unknown_one_may_be_learnt() {
        let with = grant("Delivered", None);
        let mut without = with.clone();
        without.business_id = None;
        let refused = Err(RejectReason::IdentityChanged {
            field: "business_id".into(),
        });
        // `b -> absent` is refused, so `b -> absent -> other` cannot move the grant.
        assert_eq!(Grant::check(&with, &without), refused);
        assert_eq!(Grant::check(&without, &with), Ok(()));
        assert_eq!(Grant::check(&without, &without), Ok(()));
    }
}
