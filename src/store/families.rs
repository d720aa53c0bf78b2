//! The families as stored objects: from a [`Kind`] to its snapshot type, and the lookup
//! columns each family's object row gets.

use crate::event::{
    CreditBalanceLow, CreditEntry, Dispute, Event, Grant, Kind, LicenseKey, Payment, Refund,
    Subscription,
};
use crate::fold::{Machine, Snap};
use crate::index::Decoded;
use crate::wire::Timestamp;
use serde::{de::DeserializeOwned, Serialize};

/// A family the store folds: how to find its snapshots in a parsed event and which
/// lookup columns its object row gets.
pub(super) trait Stored: Machine + Serialize + DeserializeOwned + PartialEq {
    const KIND: Kind;
    fn from_event(event: Event) -> Option<Snap<Self>>;
    fn customer_id(&self) -> Option<&str>;
    fn ref_id(&self) -> Option<&str>;
    /// A grant's `(subscription_id, payment_id)`; `(None, None)` for other kinds.
    fn grant_links(&self) -> (Option<&str>, Option<&str>) {
        (None, None)
    }
    /// The access index's row of this state ([`Decoded::other`] for the families the
    /// index does not hold): what [`crate::index::Index::decode`] makes of the stored
    /// row, without the JSON.
    fn decoded(self, _as_of: Timestamp, _since: Timestamp) -> Decoded {
        Decoded::other()
    }
}

macro_rules! stored {
    ($ty:ident, |$s:ident| customer: $cust:expr, ref: $refid:expr $(, links: $links:expr)? $(, index: $index:path)?) => {
        impl Stored for $ty {
            const KIND: Kind = Kind::$ty;
            fn from_event(event: Event) -> Option<Snap<Self>> {
                match event {
                    Event::$ty(snap) => Some(snap),
                    _ => None,
                }
            }
            fn customer_id(&self) -> Option<&str> {
                let $s = self;
                $cust
            }
            fn ref_id(&self) -> Option<&str> {
                let $s = self;
                $refid
            }
            $(
                fn grant_links(&self) -> (Option<&str>, Option<&str>) {
                    let $s = self;
                    $links
                }
            )?
            $(
                fn decoded(self, as_of: Timestamp, since: Timestamp) -> Decoded {
                    $index(self, as_of, since)
                }
            )?
        }
    };
}

stored!(Grant, |g| customer: Some(&g.customer_id), ref: Some(&g.entitlement_id),
    links: (g.subscription_id.as_deref(), g.payment_id.as_deref()), index: Decoded::grant);
stored!(Subscription, |s| customer: s.customer_id(), ref: s.product_id.as_deref(),
    index: Decoded::subscription);
stored!(Payment, |p| customer: p.customer_id(), ref: p.subscription_id.as_deref(),
    index: Decoded::payment);
stored!(Refund, |r| customer: r.customer.as_ref().map(|c| c.customer_id.as_str()), ref: Some(&r.payment_id),
    index: Decoded::refund);
stored!(Dispute, |d| customer: d.customer.as_ref().map(|c| c.customer_id.as_str()), ref: Some(&d.payment_id),
    index: Decoded::dispute);
stored!(LicenseKey, |k| customer: Some(&k.customer_id), ref: k.product_id.as_deref());
stored!(CreditEntry, |e| customer: Some(&e.customer_id), ref: Some(&e.credit_entitlement_id));
stored!(CreditBalanceLow, |b| customer: Some(&b.customer_id), ref: Some(&b.credit_entitlement_id));

/// Calls `$f::<T>(args)` with `T` the snapshot type of `kind`.
macro_rules! with_family {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            $crate::event::Kind::Grant => $f::<$crate::event::Grant>($($arg),*),
            $crate::event::Kind::Subscription => $f::<$crate::event::Subscription>($($arg),*),
            $crate::event::Kind::Payment => $f::<$crate::event::Payment>($($arg),*),
            $crate::event::Kind::Refund => $f::<$crate::event::Refund>($($arg),*),
            $crate::event::Kind::Dispute => $f::<$crate::event::Dispute>($($arg),*),
            $crate::event::Kind::LicenseKey => $f::<$crate::event::LicenseKey>($($arg),*),
            $crate::event::Kind::CreditEntry => $f::<$crate::event::CreditEntry>($($arg),*),
            $crate::event::Kind::CreditBalanceLow => $f::<$crate::event::CreditBalanceLow>($($arg),*),
        }
    };
}
pub(super) use with_family;

/// A kind as stored in a row.
pub(super) fn kind_of(s: &str) -> super::Result<Kind> {
    Kind::parse(s).ok_or_else(|| super::StoreError::Corrupt(format!("unknown object kind {s:?}")))
}
