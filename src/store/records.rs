//! Read-side records: what the CLI and the HTTP API list.

use super::sql::{args, Arg, Row};
use super::{Reader, Result, StoreError};
use crate::event::{
    CreditBalanceLow, CreditEntry, Grant, LicenseKey, Payment, ScheduledChange, Subscription,
};
use crate::wire::Timestamp;
use rust_decimal::Decimal;
use serde::{de::DeserializeOwned, Serialize};

/// A changed object row, for the in-memory index.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    /// `grant`, `subscription`, ...
    pub kind: String,
    /// Object id.
    pub id: String,
    /// Version instant of the state (RFC 3339).
    pub as_of: String,
    /// When the current status began (RFC 3339).
    pub since: String,
    /// The state snapshot as JSON.
    pub body: String,
}

impl ObjectRow {
    /// Reads `kind, id, as_of, since, body` (in that order) from a result row.
    pub(crate) fn from_row(mut r: Row) -> Result<ObjectRow> {
        Ok(ObjectRow {
            kind: r.string(0)?,
            id: r.string(1)?,
            as_of: r.string(2)?,
            since: r.string(3)?,
            body: r.string(4)?,
        })
    }
}

/// One stored delivery (`entsync deliveries --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    /// The webhook id.
    pub delivery_id: String,
    /// The event type (null when the body is not an event envelope; a known type whose
    /// `data` does not fit its family keeps its type).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// What became of it on arrival.
    pub outcome: String,
    /// When it was received.
    pub received_at: String,
    /// The envelope timestamp.
    pub event_at: Option<String>,
    /// Object kind.
    pub object_kind: Option<String>,
    /// Object id.
    pub object_id: Option<String>,
    /// Parse error or rejection message.
    pub detail: Option<String>,
}

/// One quarantined snapshot (`entsync rejected --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineRecord {
    /// The delivery that carried it (the smallest id, if several did).
    pub delivery_id: String,
    /// Object kind.
    pub object_kind: String,
    /// Object id.
    pub object_id: String,
    /// One line for operators.
    pub reason: String,
    /// Machine-readable code: `illegal_transition`, `forbidden_restoration`, ...
    pub code: String,
    /// The state it met.
    pub from: String,
    /// The snapshot that arrived.
    pub to: String,
    /// Its event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// When it was received.
    pub received_at: Option<String>,
}

/// One grant (`entsync grants --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantRecord {
    /// Grant id.
    pub grant_id: String,
    /// Customer.
    pub customer_id: String,
    /// Entitlement.
    pub entitlement_id: String,
    /// Status.
    pub status: String,
    /// Revocation reason.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub revocation_reason: Option<String>,
    /// Subscription.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub subscription_id: Option<String>,
    /// Payment.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub payment_id: Option<String>,
    /// Version (`updated_at`).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub updated_at: String,
    /// License key expiry.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub license_key_expires_at: Option<Timestamp>,
    /// OAuth URL of a pending grant.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub oauth_url: Option<String>,
    /// Error code of a failed grant.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error_code: Option<String>,
    /// The delivery whose snapshot is the state.
    pub delivery_id: String,
}

/// A subscription in a customer view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriptionRecord {
    /// Subscription id.
    pub subscription_id: String,
    /// Status.
    pub status: String,
    /// Since when it has this status.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub since: String,
    /// Version (envelope timestamp).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub as_of: String,
    /// Product (after a plan change, the new one).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub product_id: Option<String>,
    /// Quantity.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub quantity: Option<i64>,
    /// Recurring amount before tax, minor units, exact.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, example = "1250.5"))]
    pub recurring_pre_tax_amount: Option<Decimal>,
    /// Currency.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub currency: Option<String>,
    /// Start of the current period.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub previous_billing_date: Option<Timestamp>,
    /// End of the current period.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub next_billing_date: Option<Timestamp>,
    /// Cancels at period end.
    pub cancel_at_next_billing_date: bool,
    /// When the past_due grace ends.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub past_due_ends_at: Option<Timestamp>,
    /// When it was paused.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub paused_at: Option<Timestamp>,
    /// When it was cancelled.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub cancelled_at: Option<Timestamp>,
    /// When its term ends, if it does.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
    /// A plan change scheduled for later.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub scheduled_change: Option<ScheduledChange>,
}

/// A payment in a customer view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentRecord {
    /// Payment id.
    pub payment_id: String,
    /// Status.
    pub status: String,
    /// Total, minor units, exact.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, example = "1250.5"))]
    pub total_amount: Option<Decimal>,
    /// Currency.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub currency: Option<String>,
    /// Subscription, for renewals.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub subscription_id: Option<String>,
    /// Refunds of it: from `refund.*` events and from the payment's own `refunds[]`
    /// (the newer word on each wins), by id.
    pub refunds: Vec<LinkedRecord>,
    /// Disputes of it, likewise.
    pub disputes: Vec<LinkedRecord>,
    /// Version.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub as_of: String,
}

/// A refund or dispute linked to a payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkedRecord {
    /// Refund or dispute id.
    pub id: String,
    /// Status.
    pub status: String,
    /// Version.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub as_of: String,
}

/// A license key in a customer view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LicenseKeyRecord {
    /// Key id.
    pub id: String,
    /// Status.
    pub status: String,
    /// Expiry.
    #[cfg_attr(feature = "openapi", schema(required = true, value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Timestamp>,
    /// Product.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub product_id: Option<String>,
    /// Activations used.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub instances_count: Option<i64>,
    /// Activation limit.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub activations_limit: Option<i64>,
}

/// A credit balance (`entsync balance --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    /// Customer.
    pub customer_id: String,
    /// Credit entitlement.
    pub credit_entitlement_id: String,
    /// `balance_after` of the newest ledger entry, exact.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1250.5"))]
    pub balance: Decimal,
    /// `overage_after` of the newest ledger entry, exact (0 when absent).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "1250.5"))]
    pub overage: Decimal,
    /// The newest entry's id.
    pub entry_id: String,
    /// The newest entry's `created_at`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub as_of: Timestamp,
    /// Ledger entries seen.
    pub entries: u64,
    /// The last `credit.balance_low` notice, if any.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub balance_low: Option<CreditBalanceLow>,
}

/// Everything known about one customer (`entsync customer --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerView {
    /// Customer.
    pub customer_id: String,
    /// Grants.
    pub grants: Vec<GrantRecord>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Payments with their refunds and disputes.
    pub payments: Vec<PaymentRecord>,
    /// Credit balances.
    pub credits: Vec<Balance>,
    /// License keys.
    pub license_keys: Vec<LicenseKeyRecord>,
}

impl CustomerView {
    /// A customer of whom nothing is known.
    pub(crate) fn unknown(customer: &str) -> CustomerView {
        CustomerView {
            customer_id: customer.to_string(),
            grants: Vec::new(),
            subscriptions: Vec::new(),
            payments: Vec::new(),
            credits: Vec::new(),
            license_keys: Vec::new(),
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RebuildStats {
    /// Deliveries read.
    pub deliveries: u64,
    /// Objects folded.
    pub objects: u64,
    /// Ranges of objects folded one after another: 1 when the parsed deliveries fitted
    /// in the rebuild's memory budget at once; more when each range's deliveries were
    /// read and parsed a second time.
    pub ranges: u64,
    /// Objects whose stored rows (state or history) differed from what the deliveries
    /// give, and were written or deleted: 0 when the projections were intact.
    pub rewritten: u64,
    /// Deliveries that still do not parse.
    pub malformed: u64,
    /// Deliveries stored as malformed that parse now.
    pub reparsed: u64,
    /// Snapshots in the quarantine afterwards.
    pub quarantined: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Stored deliveries by arrival outcome.
    pub outcomes: Vec<(String, u64)>,
    /// Stored deliveries by event type.
    pub types: Vec<(String, u64)>,
    /// Snapshots in the quarantine.
    pub quarantined: u64,
    /// Envelope timestamp of the newest applied delivery.
    pub newest_applied_event_at: Option<String>,
}

fn decode<T: DeserializeOwned>(kind: &str, body: &str) -> Result<T> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("{kind} row: {e}")))
}

/// Refunds (or disputes) of a payment from their own events and from the payment
/// snapshot: one per id, the newer word winning (the event's on a tie), by id.
/// `as_of` values are all `format_timestamp` text, which sorts like the instants.
fn merge_linked(
    objects: Vec<LinkedRecord>,
    embedded: impl Iterator<Item = LinkedRecord>,
) -> Vec<LinkedRecord> {
    let mut by_id: std::collections::BTreeMap<String, LinkedRecord> =
        objects.into_iter().map(|r| (r.id.clone(), r)).collect();
    for r in embedded {
        match by_id.get(&r.id) {
            Some(known) if known.as_of >= r.as_of => {}
            _ => {
                by_id.insert(r.id.clone(), r);
            }
        }
    }
    by_id.into_values().collect()
}

fn three(mut row: Row) -> Result<(String, String, String)> {
    Ok((row.string(0)?, row.string(1)?, row.string(2)?))
}

impl GrantRecord {
    fn from_parts(body: &str, as_of: String, delivery_id: String) -> Result<GrantRecord> {
        let g: Grant = decode("grant", body)?;
        Ok(GrantRecord {
            grant_id: g.id,
            customer_id: g.customer_id,
            entitlement_id: g.entitlement_id,
            status: g.status.to_string(),
            revocation_reason: g.revocation_reason.map(|r| r.to_string()),
            subscription_id: g.subscription_id,
            payment_id: g.payment_id,
            updated_at: as_of,
            license_key_expires_at: g.license_key.and_then(|k| k.expires_at),
            oauth_url: g.oauth_url,
            error_code: g.error_code,
            delivery_id,
        })
    }
}

impl Reader {
    /// Stored deliveries in arrival order, optionally only one outcome; `limit` newest
    /// when given.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn deliveries(
        &self,
        outcome: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<DeliveryRecord>> {
        let limit = limit.map_or(i64::MAX, |l| l.min(i64::MAX as u64) as i64);
        self.db()
            .rows(
                "SELECT * FROM (
                   SELECT delivery_id, event_type, outcome, received_at, event_at, object_kind,
                          object_id, detail, seq
                     FROM deliveries WHERE CAST(?1 AS TEXT) IS NULL OR outcome = ?1
                    ORDER BY seq DESC LIMIT ?2) AS newest ORDER BY seq",
                args![outcome, limit],
            )?
            .into_iter()
            .map(|mut r| {
                Ok(DeliveryRecord {
                    delivery_id: r.string(0)?,
                    event_type: r.opt_string(1)?,
                    outcome: r.string(2)?,
                    received_at: r.string(3)?,
                    event_at: r.opt_string(4)?,
                    object_kind: r.opt_string(5)?,
                    object_id: r.opt_string(6)?,
                    detail: r.opt_string(7)?,
                })
            })
            .collect()
    }

    /// The quarantine.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn rejected(&self) -> Result<Vec<QuarantineRecord>> {
        self.db()
            .rows(
                "SELECT h.delivery_id, h.kind, h.object_id, h.reason, h.code, h.from_state,
                        h.to_state, d.event_type, d.received_at
                   FROM history h INDEXED BY history_rejected
                   LEFT JOIN deliveries d ON d.seq = h.delivery_seq
                  WHERE h.code IS NOT NULL
                  ORDER BY h.delivery_seq, h.version_key",
                args![],
            )?
            .into_iter()
            .map(|mut r| {
                Ok(QuarantineRecord {
                    delivery_id: r.string(0)?,
                    object_kind: r.string(1)?,
                    object_id: r.string(2)?,
                    reason: r.string(3)?,
                    code: r.string(4)?,
                    from: r.string(5)?,
                    to: r.string(6)?,
                    event_type: r.opt_string(7)?,
                    received_at: r.opt_string(8)?,
                })
            })
            .collect()
    }

    /// Grants, all or one customer's, ordered by customer, entitlement, id.
    ///
    /// # Errors
    ///
    /// SQLite errors, or a row that does not decode.
    pub fn grants(&self, customer: Option<&str>) -> Result<Vec<GrantRecord>> {
        // Planner note: without ANALYZE, SQLite prefers the primary key (kind, id) for
        // `kind = ?`; name the index for customer lookups.
        let sql = match customer {
            Some(_) => {
                "SELECT body, as_of, delivery_id FROM objects INDEXED BY objects_customer
                  WHERE customer_id = ?1 AND kind = 'grant' ORDER BY ref_id, id"
            }
            None => {
                "SELECT body, as_of, delivery_id FROM objects
                  WHERE kind = 'grant' AND CAST(?1 AS TEXT) IS NULL ORDER BY customer_id, ref_id, id"
            }
        };
        let mut out = Vec::new();
        self.db().for_each(sql, args![customer], &mut |r| {
            let (body, as_of, delivery_id) = three(r)?;
            out.push(GrantRecord::from_parts(&body, as_of, delivery_id)?);
            Ok(())
        })?;
        Ok(out)
    }

    fn bodies(&self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<(String, String, String)>> {
        self.db().rows(sql, args)?.into_iter().map(three).collect()
    }

    /// The credit balance of one (customer, credit entitlement): the newest ledger entry.
    ///
    /// # Errors
    ///
    /// SQLite errors, or a row that does not decode.
    pub fn balance(&self, customer: &str, credit_entitlement: &str) -> Result<Option<Balance>> {
        // Every entry of the newest instant and of the one before it, where the newest
        // instant's chain starts (several may share an instant: the chain orders them).
        // A state key begins with its instant, then `/` (fixed width, so text order is
        // time order): the keys below `<newest instant>` are of earlier instants, and the
        // keys from `<instant before>` on are of the two instants wanted.
        let pair = "FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'credit_entry' AND ref_id = ?2";
        let newest_key = |below: Option<&str>| -> Result<Option<String>> {
            let row = match below {
                None => self.db().row(
                    &format!("SELECT MAX(state_key) {pair}"),
                    args![customer, credit_entitlement],
                )?,
                Some(below) => self.db().row(
                    &format!("SELECT MAX(state_key) {pair} AND state_key < ?3"),
                    args![customer, credit_entitlement, below],
                )?,
            };
            row.map_or(Ok(None), |mut r| r.opt_string(0))
        };
        let instant = |key: &str| key.split('/').next().unwrap_or(key).to_string();
        let Some(newest) = newest_key(None)?.map(|k| instant(&k)) else {
            return Ok(None);
        };
        let from = newest_key(Some(&newest))?.map_or_else(|| newest.clone(), |k| instant(&k));
        let newest: Vec<(String, u64)> = self
            .db()
            .rows(
                &format!(
                    "SELECT body, (SELECT COUNT(*) {pair}) {pair} AND state_key >= ?3 ORDER BY state_key DESC"
                ),
                args![customer, credit_entitlement, &from],
            )?
            .into_iter()
            .map(|mut r| Ok((r.string(0)?, r.i64(1)? as u64)))
            .collect::<Result<_>>()?;
        let Some(entries) = newest.first().map(|(_, n)| *n) else {
            return Ok(None);
        };
        // The entries of the newest instant and of the one before it (where the newest
        // instant's chain starts), each in ledger order.
        let mut instants: [Vec<CreditEntry>; 2] = [Vec::new(), Vec::new()];
        let mut i = 0;
        for (body, _) in &newest {
            let entry: CreditEntry = decode("credit_entry", body)?;
            if instants[i]
                .first()
                .is_some_and(|first| first.created_at != entry.created_at)
            {
                i += 1;
                if i == instants.len() {
                    break;
                }
            }
            instants[i].push(entry);
        }
        // Rows came newest first; the chain rule wants ledger order.
        let [mut tied, mut earlier] = instants;
        tied.reverse();
        earlier.reverse();
        let before = crate::subscription::newest_entry(None, &earlier);
        let Some(entry) = crate::subscription::newest_entry(before, &tied).cloned() else {
            return Ok(None);
        };
        let low = self
            .db()
            .row(
                "SELECT body FROM objects WHERE kind = 'credit_balance_low' AND id = ?1",
                args![&format!("{customer}:{credit_entitlement}")],
            )?
            .map(|mut r| r.string(0))
            .transpose()?;
        Ok(Some(Balance {
            customer_id: entry.customer_id,
            credit_entitlement_id: entry.credit_entitlement_id,
            balance: entry.balance_after,
            overage: entry.overage_after.unwrap_or_default(),
            entry_id: entry.id,
            as_of: entry.created_at,
            entries,
            balance_low: low.map(|b| decode("credit_balance_low", &b)).transpose()?,
        }))
    }

    /// Everything known about one customer.
    ///
    /// # Errors
    ///
    /// SQLite errors, or a row that does not decode.
    pub fn customer(&self, customer: &str) -> Result<CustomerView> {
        let grants = self.grants(Some(customer))?;
        let mut subscriptions = Vec::new();
        for (body, as_of, since) in self.bodies(
            "SELECT body, as_of, since FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'subscription' ORDER BY id",
            args![customer],
        )? {
            let s: Subscription = decode("subscription", &body)?;
            subscriptions.push(SubscriptionRecord {
                subscription_id: s.subscription_id,
                status: s.status.to_string(),
                since,
                as_of,
                product_id: s.product_id,
                quantity: s.quantity,
                recurring_pre_tax_amount: s.recurring_pre_tax_amount,
                currency: s.currency,
                previous_billing_date: s.previous_billing_date,
                next_billing_date: s.next_billing_date,
                cancel_at_next_billing_date: s.cancel_at_next_billing_date,
                past_due_ends_at: s.past_due_ends_at,
                paused_at: s.paused_at,
                cancelled_at: s.cancelled_at,
                expires_at: s.expires_at,
                scheduled_change: s.scheduled_change,
            });
        }
        let mut payments = Vec::new();
        for (body, as_of, _) in self.bodies(
            "SELECT body, as_of, '' FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'payment' ORDER BY id",
            args![customer],
        )? {
            let p: Payment = decode("payment", &body)?;
            let linked = |kind: &str| -> Result<Vec<LinkedRecord>> {
                Ok(self
                    .bodies(
                        "SELECT id, status, as_of FROM objects INDEXED BY objects_ref
                          WHERE kind = ?1 AND ref_id = ?2 AND kind <> 'grant' ORDER BY id",
                        args![kind, &p.payment_id],
                    )?
                    .into_iter()
                    .map(|(id, status, as_of)| LinkedRecord { id, status, as_of })
                    .collect())
            };
            let embedded_refunds = p.refunds.iter().map(|r| LinkedRecord {
                id: r.refund_id.clone(),
                status: r.status.to_string(),
                as_of: as_of.clone(),
            });
            let embedded_disputes = p.disputes.iter().map(|d| LinkedRecord {
                id: d.dispute_id.clone(),
                status: d.dispute_status.to_string(),
                as_of: as_of.clone(),
            });
            payments.push(PaymentRecord {
                refunds: merge_linked(linked("refund")?, embedded_refunds),
                disputes: merge_linked(linked("dispute")?, embedded_disputes),
                status: p.status.as_ref().map_or_else(|| "unknown".into(), |s| s.to_string()),
                payment_id: p.payment_id,
                total_amount: p.total_amount,
                currency: p.currency,
                subscription_id: p.subscription_id,
                as_of,
            });
        }
        let mut credits = Vec::new();
        for (credit_entitlement, _, _) in self.bodies(
            "SELECT DISTINCT ref_id, '', '' FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'credit_entry' ORDER BY ref_id",
            args![customer],
        )? {
            if let Some(b) = self.balance(customer, &credit_entitlement)? {
                credits.push(b);
            }
        }
        let mut license_keys = Vec::new();
        for (body, _, _) in self.bodies(
            "SELECT body, '', '' FROM objects INDEXED BY objects_customer WHERE customer_id = ?1 AND kind = 'license_key' ORDER BY id",
            args![customer],
        )? {
            let k: LicenseKey = decode("license_key", &body)?;
            license_keys.push(LicenseKeyRecord {
                id: k.id,
                status: k.status.to_string(),
                expires_at: k.expires_at,
                product_id: k.product_id,
                instances_count: k.instances_count,
                activations_limit: k.activations_limit,
            });
        }
        Ok(CustomerView {
            customer_id: customer.to_string(),
            grants,
            subscriptions,
            payments,
            credits,
            license_keys,
        })
    }

    /// How many snapshots the quarantine holds.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn quarantine_size(&self) -> Result<u64> {
        Ok(self
            .db()
            .one(
                "SELECT COUNT(*) FROM history INDEXED BY history_rejected WHERE code IS NOT NULL",
                args![],
            )?
            .i64(0)? as u64)
    }

    /// Counters for `/metrics`.
    ///
    /// # Errors
    ///
    /// SQLite errors.
    pub fn stats(&self) -> Result<StoreStats> {
        let count = |sql: &str| -> Result<Vec<(String, u64)>> {
            self.db()
                .rows(sql, args![])?
                .into_iter()
                .map(|mut r| Ok((r.string(0)?, r.i64(1)? as u64)))
                .collect()
        };
        Ok(StoreStats {
            outcomes: count("SELECT outcome, COUNT(*) FROM deliveries GROUP BY outcome ORDER BY outcome")?,
            types: count(
                "SELECT COALESCE(event_type, '(malformed)'), COUNT(*) FROM deliveries GROUP BY 1 ORDER BY 1",
            )?,
            quarantined: self.quarantine_size()?,
            newest_applied_event_at: self
                .db()
                .one(
                    "SELECT MAX(event_at) FROM deliveries WHERE outcome = 'applied'",
                    args![],
                )?
                .opt_string(0)?,
        })
    }
}
