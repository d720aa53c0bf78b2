//! A fake Dodo Payments REST API on 127.0.0.1, built from the shapes in
//! `reference/dodo-api.md`: bearer auth (401 for a wrong key, 403 for a key without
//! read access), `page_number`/`page_size` pagination with a bare `{"items": [...]}`
//! body, the list endpoints reconcile sweeps (with their `customer_id` filters) and the
//! GETs by id, list items lighter than the full objects, injected 429s (with
//! `Retry-After` or `X-RateLimit-Reset`) and 5xx, and a log of every request.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The key the fake accepts.
pub const KEY: &str = "sk_test_fake_reconcile_key";
/// A key the fake knows but that may not read (403).
pub const READ_FORBIDDEN_KEY: &str = "sk_test_no_read_access";

/// The fake's data and behaviour; tests change it between runs.
#[derive(Debug, Default)]
pub struct Data {
    /// `/entitlements` items.
    pub entitlements: Vec<Value>,
    /// Entitlement ids that exist (their grants list answers) but `/entitlements` leaves
    /// out: soft-deleted.
    pub soft_deleted: BTreeSet<String>,
    /// Grants (full shape).
    pub grants: Vec<Value>,
    /// Subscriptions (full shape; the list answers the lighter list item).
    pub subscriptions: Vec<Value>,
    /// License keys.
    pub license_keys: Vec<Value>,
    /// Payments (full shape; the list answers the list item).
    pub payments: Vec<Value>,
    /// Refunds (full shape; the list answers the list item).
    pub refunds: Vec<Value>,
    /// Disputes (full shape; the list answers the list item).
    pub disputes: Vec<Value>,
    /// The next this many requests answer 429: `(Retry-After, X-RateLimit-Reset)`.
    pub rate_limited: Vec<(Option<String>, Option<String>)>,
    /// The next this many requests answer 503.
    pub unavailable: u32,
    /// Requests whose path starts with this always answer 500.
    pub broken_path: Option<String>,
    /// The request with exactly this `path?query` (as logged) always answers 500.
    pub broken_request: Option<String>,
    /// The `Date` of every response (an IMF-fixdate); `None`: the server's clock.
    pub date: Option<String>,
    /// Requests whose path starts with this answer 403 (a key whose access was cut
    /// mid-run).
    pub forbidden_path: Option<String>,
    /// Lists answer their first page whatever `page_number` asks.
    pub ignore_page_number: bool,
    /// Lists whose path starts with this answer `{}` (no `items`).
    pub no_items_path: Option<String>,
    /// Every request: `path?query` (sorted query).
    pub log: Vec<String>,
}

/// A running fake; stops when dropped.
pub struct FakeDodo {
    /// Where it listens.
    pub addr: SocketAddr,
    data: Arc<Mutex<Data>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDodo {
    /// Starts a fake serving `data`.
    pub fn start(data: Data) -> FakeDodo {
        let data = Arc::new(Mutex::new(data));
        let shared = Arc::clone(&data);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake dodo runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the fake dodo");
                addr_tx
                    .send(listener.local_addr().expect("fake dodo address"))
                    .expect("send the address");
                let app = Router::new().fallback(handle).with_state(shared);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the fake dodo started");
        FakeDodo {
            addr,
            data,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data, to read or change.
    pub fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request log so far, emptied.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.data().log)
    }
}

impl Drop for FakeDodo {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

/// The list item of a full subscription, payment, refund or dispute: the fields the
/// reference says the list leaves out are removed.
fn list_item(kind: &str, full: &Value) -> Value {
    let drop: &[&str] = match kind {
        "subscriptions" => &[
            "brand_id",
            "addons",
            "meters",
            "credit_entitlement_cart",
            "meter_credit_entitlement_cart",
            "expires_at",
            "cancellation_reason",
            "cancellation_comment",
            "custom_field_responses",
            "payload_type",
        ],
        "payments" => &[
            "business_id",
            "refunds",
            "disputes",
            "settlement_amount",
            "settlement_currency",
            "retry_attempt",
            "updated_at",
            "payload_type",
        ],
        "refunds" => &["brand_id", "customer", "metadata", "payload_type"],
        "disputes" => &["brand_id", "customer", "reason", "remarks", "payload_type"],
        _ => &[],
    };
    let mut item = full.clone();
    if let Some(map) = item.as_object_mut() {
        for k in drop {
            map.remove(*k);
        }
    }
    item
}

fn customer_of(v: &Value) -> Option<&str> {
    v.get("customer_id")
        .and_then(Value::as_str)
        .or_else(|| v.pointer("/customer/customer_id").and_then(Value::as_str))
}

async fn handle(State(data): State<Arc<Mutex<Data>>>, req: Request) -> Response {
    let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
    let mut resp = respond(&mut d, &req);
    if let Some(date) = d
        .date
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert("date", date);
    }
    resp
}

fn respond(d: &mut Data, req: &Request) -> Response {
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let line = if q.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", q.join("&"))
    };
    let broken_request = d.broken_request.as_deref() == Some(line.as_str());
    d.log.push(line);
    if auth == format!("Bearer {READ_FORBIDDEN_KEY}") {
        return error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "insufficient permissions",
        );
    }
    if auth != format!("Bearer {KEY}") {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "Invalid API key");
    }
    if !d.rate_limited.is_empty() {
        let (retry_after, reset) = d.rate_limited.remove(0);
        // Some of Dodo's 429s come with an empty body.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("240"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert("retry-after", v);
        }
        if let Some(v) = reset.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert("x-ratelimit-reset", v);
        }
        return resp;
    }
    if d.unavailable > 0 {
        d.unavailable -= 1;
        return error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "try again");
    }
    if d.forbidden_path
        .as_deref()
        .is_some_and(|p| path.starts_with(p))
    {
        return error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "insufficient permissions",
        );
    }
    if broken_request
        || d.broken_path
            .as_deref()
            .is_some_and(|p| path.starts_with(p))
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "broken");
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let customer = query.get("customer_id").cloned();
    let for_customer = |v: &&Value| {
        customer
            .as_deref()
            .is_none_or(|c| customer_of(v) == Some(c))
    };
    let listed: Vec<Value> = match segments.as_slice() {
        ["entitlements"] => d
            .entitlements
            .iter()
            .filter(|e| {
                e.get("id")
                    .and_then(Value::as_str)
                    .is_none_or(|id| !d.soft_deleted.contains(id))
            })
            .cloned()
            .collect(),
        ["entitlements", id, "grants"] => {
            let known =
                d.soft_deleted.contains(*id) || d.entitlements.iter().any(|e| e["id"] == *id);
            if !known {
                return error(StatusCode::NOT_FOUND, "NOT_FOUND", "entitlement not found");
            }
            d.grants
                .iter()
                .filter(|g| g["entitlement_id"] == *id)
                .filter(for_customer)
                .cloned()
                .collect()
        }
        ["customers", c, "entitlement-grants"] => d
            .grants
            .iter()
            .filter(|g| g["customer_id"] == *c)
            .cloned()
            .collect(),
        ["license_keys"] => d
            .license_keys
            .iter()
            .filter(for_customer)
            .cloned()
            .collect(),
        [kind @ ("subscriptions" | "payments" | "refunds" | "disputes")] => {
            let all = match *kind {
                "subscriptions" => &d.subscriptions,
                "payments" => &d.payments,
                "refunds" => &d.refunds,
                _ => &d.disputes,
            };
            // A refund or dispute list item has no customer: filter by its payment's.
            let payments = &d.payments;
            all.iter()
                .filter(|v| {
                    customer.as_deref().is_none_or(|c| {
                        customer_of(v) == Some(c)
                            || v.get("payment_id").is_some_and(|p| {
                                payments.iter().any(|pay| {
                                    &pay["payment_id"] == p && customer_of(pay) == Some(c)
                                })
                            })
                    })
                })
                .map(|v| list_item(kind, v))
                .collect()
        }
        [kind @ ("subscriptions" | "payments" | "refunds" | "disputes"), id] => {
            let (all, field) = match *kind {
                "subscriptions" => (&d.subscriptions, "subscription_id"),
                "payments" => (&d.payments, "payment_id"),
                "refunds" => (&d.refunds, "refund_id"),
                _ => (&d.disputes, "dispute_id"),
            };
            return match all.iter().find(|v| v[field] == *id) {
                Some(v) => axum::Json(v.clone()).into_response(),
                None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found"),
            };
        }
        ["license_keys", id] => {
            return match d.license_keys.iter().find(|v| v["id"] == *id) {
                Some(v) => axum::Json(v.clone()).into_response(),
                None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found"),
            };
        }
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route"),
    };
    if d.no_items_path
        .as_ref()
        .is_some_and(|p| path.starts_with(p))
    {
        return axum::Json(json!({})).into_response();
    }
    let page: usize = query
        .get("page_number")
        .and_then(|v| v.parse().ok())
        .filter(|_| !d.ignore_page_number)
        .unwrap_or(0);
    let size: usize = query
        .get("page_size")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if size > 100 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID",
            "page_size must be at most 100",
        );
    }
    let items: Vec<Value> = listed.into_iter().skip(page * size).take(size).collect();
    axum::Json(json!({ "items": items })).into_response()
}

// ---------------------------------------------------------------------------------------
// Objects in the reference's shapes

/// The business of every object.
pub const BUSINESS: &str = "bus_H4ekzPSlcg";

/// An Entitlement (`feature_flag`).
pub fn entitlement(id: &str) -> Value {
    json!({"id": id, "business_id": BUSINESS, "name": "Pro features", "integration_type": "feature_flag",
        "integration_config": {"feature_id": "pro", "feature_type": "boolean"}, "is_active": true,
        "metadata": {}, "description": null, "created_at": "2026-03-01T09:00:00Z", "updated_at": "2026-03-01T09:00:00Z"})
}

/// An EntitlementGrant, as the API lists it (no `payload_type`).
pub fn grant(id: &str, customer: &str, entitlement: &str, status: &str, updated_at: &str) -> Value {
    json!({"id": id, "brand_id": "brd_123", "business_id": BUSINESS, "customer_id": customer,
        "entitlement_id": entitlement, "integration_type": "feature_flag", "metadata": {},
        "status": status, "payment_id": null, "subscription_id": null,
        "delivered_at": "2026-03-01T09:05:00Z", "revoked_at": null, "revocation_reason": null,
        "error_code": null, "oauth_url": null, "license_key": null,
        "feature": {"feature_id": "pro", "feature_type": "boolean"},
        "created_at": "2026-03-01T09:05:00Z", "updated_at": updated_at})
}

/// A revoked grant.
pub fn revoked(id: &str, customer: &str, entitlement: &str, reason: &str, at: &str) -> Value {
    let mut g = grant(id, customer, entitlement, "Revoked", at);
    g["revoked_at"] = json!(at);
    g["revocation_reason"] = json!(reason);
    g
}

/// A Subscription (the full shape, as `GET /subscriptions/{id}` and webhooks carry it).
pub fn subscription(id: &str, customer: &str, status: &str) -> Value {
    json!({"subscription_id": id, "status": status,
        "customer": {"customer_id": customer, "email": "ana@example.com", "name": "Ana"},
        "brand_id": "brd_123", "product_id": "pdt_RUST4raxbl0Rfe4VQi1z", "product_name": "Pro",
        "quantity": 1, "billing": {"country": "US"}, "currency": "USD", "metadata": {},
        "created_at": "2026-03-01T09:00:00Z", "previous_billing_date": "2026-03-01T09:00:00Z",
        "next_billing_date": "2026-04-01T09:00:00Z", "cancel_at_next_billing_date": false,
        "on_demand": false, "payment_frequency_count": 1, "payment_frequency_interval": "Month",
        "subscription_period_count": 1, "subscription_period_interval": "Year",
        "recurring_pre_tax_amount": 1500, "tax_inclusive": false, "trial_period_days": 0,
        "discounts": [], "cancelled_at": null, "paused_at": null, "scheduled_change": null,
        "addons": [], "meters": [], "expires_at": "2027-03-01T09:00:00Z"})
}

/// A LicenseKey.
pub fn license_key(id: &str, customer: &str, status: &str) -> Value {
    json!({"id": id, "key": "PRO-AAAA-BBBB-CCCC", "status": status, "customer_id": customer,
        "product_id": "pdt_64iOqOi80QypjfohmrwAH", "brand_id": "brd_123", "business_id": BUSINESS,
        "instances_count": 1, "source": "auto", "activations_limit": 5, "expires_at": null,
        "payment_id": null, "subscription_id": null, "created_at": "2026-03-01T09:05:00Z"})
}

/// A Payment (full shape).
pub fn payment(id: &str, customer: &str) -> Value {
    json!({"payment_id": id, "business_id": BUSINESS, "brand_id": "brd_123",
        "created_at": "2026-03-01T09:04:10Z", "currency": "USD",
        "customer": {"customer_id": customer, "email": "ana@example.com", "name": "Ana"},
        "digital_products_delivered": true, "has_license_key": false, "metadata": {},
        "payment_provider": "dodo", "total_amount": 4900, "status": "succeeded",
        "subscription_id": null, "refund_status": null, "dispute_status": null,
        "refunds": [], "disputes": []})
}

/// A Refund (full shape).
pub fn refund(id: &str, payment: &str, customer: &str) -> Value {
    json!({"refund_id": id, "payment_id": payment, "business_id": BUSINESS, "brand_id": "brd_123",
        "created_at": "2026-04-10T12:00:00Z", "is_partial": false, "status": "succeeded",
        "amount": 4900, "currency": "USD", "reason": null, "metadata": {},
        "customer": {"customer_id": customer, "email": "ana@example.com", "name": "Ana"}})
}

/// A Dispute (full shape).
pub fn dispute(id: &str, payment: &str, customer: &str) -> Value {
    json!({"dispute_id": id, "payment_id": payment, "business_id": BUSINESS, "brand_id": "brd_123",
        "amount": "49.00", "currency": "USD", "dispute_stage": "dispute",
        "dispute_status": "dispute_lost", "payment_provider": "dodo",
        "created_at": "2026-04-12T08:00:00Z", "is_resolved_by_rdr": null,
        "customer": {"customer_id": customer, "email": "ana@example.com", "name": "Ana"}})
}

/// `n` delivered grants of `ent_pro`, one customer each (`entg_0000`, `cus_0000`, ...).
pub fn delivered_grants(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            grant(
                &format!("entg_{i:04}"),
                &format!("cus_{i:04}"),
                "ent_pro",
                "Delivered",
                "2026-03-01T09:05:00Z",
            )
        })
        .collect()
}

/// The `page_number`s the requests in `log` asked of exactly `path`, in order.
pub fn pages_asked(log: &[String], path: &str) -> Vec<u32> {
    log.iter()
        .filter_map(|l| l.strip_prefix(path)?.strip_prefix('?'))
        .filter_map(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("page_number="))?
                .parse()
                .ok()
        })
        .collect()
}
