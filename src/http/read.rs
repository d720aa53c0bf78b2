//! The read API: `GET /v1/access/...`, `/v1/customers/...` and `/v1/credits/...`, and
//! the async helpers for embedding apps ([`access_answer`], [`has_access`]).

use super::{bad_path, json, not_found, store_unavailable, ErrorBody, ErrorMessage, Shared};
use crate::{Engine, EngineError};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use std::sync::Arc;

/// [`Engine::access`] for async code: answered on the spot from the in-memory index
/// when it is current (microseconds); when it must first be refreshed from SQLite
/// (after a commit), on tokio's blocking pool, so that no async worker waits on IO.
///
/// # Errors
///
/// [`EngineError`] when the index could not be refreshed.
pub async fn access_answer(
    engine: &Engine,
    customer: String,
    entitlement: String,
    now: crate::wire::Timestamp,
) -> Result<crate::Access, EngineError> {
    if let Some(answer) = engine.access_if_current(&customer, &entitlement, now) {
        return Ok(answer);
    }
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.access(&customer, &entitlement, now))
        .await
        .unwrap_or_else(|_| Err(EngineError::WriterStopped))
}

/// [`Engine::has_access`] for async handlers, the way [`access_answer`] is: gate a
/// route with it. Fails closed (`false`) when the store cannot be read.
///
/// # Example
///
/// ```no_run
/// # async fn handler(engine: entitlement_sync::Engine, customer: String) {
/// let now = chrono::Utc::now();
/// if entitlement_sync::http::has_access(&engine, &customer, "ent_reports", now).await {
///     // serve the report
/// }
/// # }
/// ```
pub async fn has_access(
    engine: &Engine,
    customer: &str,
    entitlement: &str,
    now: crate::wire::Timestamp,
) -> bool {
    access_answer(engine, customer.to_string(), entitlement.to_string(), now)
        .await
        .is_ok_and(|a| a.allowed)
}

/// `GET /v1/access/{customer_id}/{entitlement_id}`.
#[utoipa::path(
    get,
    path = "/v1/access/{customer_id}/{entitlement_id}",
    tag = "read",
    operation_id = "access",
    summary = "Whether a customer has an entitlement now",
    description = "The access answer at the server's current time, allowed or not: 200 either way.",
    params(
        ("customer_id" = String, Path, description = "The customer."),
        ("entitlement_id" = String, Path, description = "The entitlement."),
    ),
    responses(
        (status = 200, description = "The answer.", body = crate::access::Access),
        (status = 400, description = "A path parameter that does not decode (a percent-encoding \
            that is not UTF-8).", body = ErrorMessage),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
        (status = 404, description = "No such route, e.g. an empty path segment (`not_found`).", body = ErrorBody),
        (status = 503, description = "The store could not be read (`store_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
    security(("api_token" = [])),
)]
pub(super) async fn access(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    // An empty segment matches no route (axum's router lets one through): as unmatched.
    if path
        .as_ref()
        .is_ok_and(|Path((c, e))| c.is_empty() || e.is_empty())
    {
        return not_found();
    }
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let Path((customer, entitlement)) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    match access_answer(&s.engine, customer, entitlement, chrono::Utc::now()).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => {
            tracing::error!(error = %e, "access index refresh failed");
            store_unavailable()
        }
    }
}

/// `GET /v1/customers/{customer_id}`.
#[utoipa::path(
    get,
    path = "/v1/customers/{customer_id}",
    tag = "read",
    operation_id = "customer",
    summary = "Everything known about one customer",
    description = "Grants, subscriptions, payments (with refunds and disputes), credit balances and \
        license keys; empty arrays for a customer nothing is known about.",
    params(("customer_id" = String, Path, description = "The customer.")),
    responses(
        (status = 200, description = "The customer view.", body = crate::store::CustomerView),
        (status = 400, description = "A path parameter that does not decode (a percent-encoding \
            that is not UTF-8).", body = ErrorMessage),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
        (status = 404, description = "No such route, e.g. an empty path segment (`not_found`).", body = ErrorBody),
        (status = 503, description = "The store could not be read (`store_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
    security(("api_token" = [])),
)]
pub(super) async fn customer(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    if path.as_ref().is_ok_and(|Path(c)| c.is_empty()) {
        return not_found();
    }
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let Path(customer) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    match s.read(move |e| e.customer(&customer)).await {
        Some(view) => json(StatusCode::OK, &view),
        None => store_unavailable(),
    }
}

/// What `GET /v1/credits/...` answers: the [`crate::store::Balance`] when a ledger
/// entry is known, else zero with `entry_id`, `as_of` and `balance_low` null.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreditAnswer {
    /// Customer.
    customer_id: String,
    /// Credit entitlement.
    credit_entitlement_id: String,
    /// `balance_after` of the newest ledger entry, exact (`"0"` when none is known).
    #[schema(value_type = String, example = "1000.500")]
    balance: rust_decimal::Decimal,
    /// `overage_after` of the newest ledger entry, exact (`"0"` when absent).
    #[schema(value_type = String, example = "0")]
    overage: rust_decimal::Decimal,
    /// Ledger entries seen.
    entries: u64,
    /// The newest entry's id (null when none is known).
    #[schema(required = true)]
    entry_id: Option<String>,
    /// The newest entry's `created_at` (null when none is known).
    #[schema(required = true, value_type = Option<String>, format = DateTime)]
    as_of: Option<crate::wire::Timestamp>,
    /// The last `credit.balance_low` notice, if any.
    #[schema(required = true)]
    balance_low: Option<crate::event::CreditBalanceLow>,
}

impl CreditAnswer {
    fn new(
        customer_id: String,
        credit_entitlement_id: String,
        balance: Option<crate::store::Balance>,
    ) -> Self {
        match balance {
            Some(b) => CreditAnswer {
                customer_id: b.customer_id,
                credit_entitlement_id: b.credit_entitlement_id,
                balance: b.balance,
                overage: b.overage,
                entries: b.entries,
                entry_id: Some(b.entry_id),
                as_of: Some(b.as_of),
                balance_low: b.balance_low,
            },
            None => CreditAnswer {
                customer_id,
                credit_entitlement_id,
                balance: rust_decimal::Decimal::ZERO,
                overage: rust_decimal::Decimal::ZERO,
                entries: 0,
                entry_id: None,
                as_of: None,
                balance_low: None,
            },
        }
    }
}

/// `GET /v1/credits/{customer_id}/{credit_entitlement_id}`.
#[utoipa::path(
    get,
    path = "/v1/credits/{customer_id}/{credit_entitlement_id}",
    tag = "read",
    operation_id = "credits",
    summary = "A customer's balance of one credit entitlement",
    description = "Amounts are exact decimal strings; zero with nulls when no ledger entry is known.",
    params(
        ("customer_id" = String, Path, description = "The customer."),
        ("credit_entitlement_id" = String, Path, description = "The credit entitlement."),
    ),
    responses(
        (status = 200, description = "The balance.", body = CreditAnswer),
        (status = 400, description = "A path parameter that does not decode (a percent-encoding \
            that is not UTF-8).", body = ErrorMessage),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
        (status = 404, description = "No such route, e.g. an empty path segment (`not_found`).", body = ErrorBody),
        (status = 503, description = "The store could not be read (`store_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
    security(("api_token" = [])),
)]
pub(super) async fn credits(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    if path
        .as_ref()
        .is_ok_and(|Path((c, e))| c.is_empty() || e.is_empty())
    {
        return not_found();
    }
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let Path((customer, credit_entitlement)) = match path {
        Ok(path) => path,
        Err(rejection) => return bad_path(&rejection),
    };
    let (c, ce) = (customer.clone(), credit_entitlement.clone());
    match s.read(move |e| e.credit_balance(&c, &ce)).await {
        Some(balance) => json(
            StatusCode::OK,
            &CreditAnswer::new(customer, credit_entitlement, balance),
        ),
        None => store_unavailable(),
    }
}
