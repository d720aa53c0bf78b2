//! `POST /webhooks/dodo`: the size limit (checked before anything else is read), the
//! body timeout, Standard Webhooks verification over the raw bytes, a place in the
//! writer's queue, [`Engine::ingest_then`](crate::Engine::ingest_then), and the status
//! of the answer (200 for every verified delivery once committed; 503 when the store
//! failed transiently, so that Dodo retries).

use super::server;
use super::{error, json, store_unavailable, ErrorBody, Shared, QUEUE_FULL_RETRY_AFTER};
use crate::delivery::{Delivery, Outcome};
use crate::verify::RawWebhookHeaders;
use crate::EngineError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Why the body was not read in full.
enum BodyError {
    TooLarge,
    Incomplete,
    TimedOut,
}

async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Incomplete),
    }
}

/// The envelope's `type` and `timestamp` (Unix seconds), read without building the
/// event: for the metrics of deliveries the engine did not parse (duplicates by id).
fn envelope_head(body: &[u8]) -> (Option<String>, Option<i64>) {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow, rename = "type")]
        event_type: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        timestamp: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Head<'_>>(body) {
        Ok(h) => (
            h.event_type.map(|t| t.into_owned()),
            h.timestamp
                .as_deref()
                .and_then(crate::wire::parse_timestamp)
                .map(|t| t.timestamp()),
        ),
        Err(_) => (None, None),
    }
}

/// What became of a verified delivery, once durably committed.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ack<'a> {
    /// `applied`, `duplicate`, `stale`, `rejected` (quarantined), `unhandled` or
    /// `malformed`.
    #[schema(example = "applied")]
    outcome: &'static str,
    /// The delivery's `webhook-id`.
    delivery_id: &'a str,
    /// The event type, when the body parsed far enough to tell.
    #[serde(rename = "type")]
    #[schema(required = true)]
    event_type: Option<&'a str>,
    /// Why it was rejected, malformed or unhandled, for people.
    #[schema(required = true)]
    detail: Option<&'a str>,
}

/// An answer given before the request body was read in full: the connection closes
/// after it, and when served by [`serve`](super::serve) it closes lingering (the rest
/// of the body is read and discarded for a while), so that the client reads this answer
/// rather than a reset.
fn early_answer(conn: Option<&server::ConnHandle>, mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if let Some(conn) = conn {
        conn.0.linger();
    }
    resp
}

/// `POST /webhooks/dodo`.
#[utoipa::path(
    post,
    path = "/webhooks/dodo",
    tag = "webhooks",
    operation_id = "webhook",
    summary = "Receive one Dodo Payments webhook delivery",
    description = "Standard Webhooks: the signature covers `webhook-id`, `webhook-timestamp` and the \
        raw body, which is read as bytes (at most the configured limit, 256 KiB by default) and \
        stored exactly as signed. Every verified delivery is answered 200 once it is durably \
        committed, duplicates, stale, quarantined and unhandled ones included; 5xx only when \
        it could not be stored, so that Dodo retries. Never asks for the API token: the \
        signature is the authentication.",
    params(
        ("webhook-id" = String, Header, description = "The delivery's id (the idempotency key)."),
        ("webhook-timestamp" = String, Header, description = "Unix seconds; more than 5 minutes off the server's clock is refused."),
        ("webhook-signature" = String, Header, description = "Space-separated `v1,<base64 HMAC-SHA256>` signatures."),
    ),
    request_body(
        content = inline(serde_json::Value),
        content_type = "application/json",
        description = "The event envelope `{business_id, type, timestamp, data}` exactly as \
            signed: verified over its raw bytes before it is parsed.",
        example = json!({
            "business_id": "bus_demo",
            "type": "entitlement_grant.delivered",
            "timestamp": "2026-05-01T10:02:00Z",
            "data": {
                "payload_type": "EntitlementGrant",
                "id": "grant_example",
                "business_id": "bus_demo",
                "entitlement_id": "ent_pro",
                "customer_id": "cus_example",
                "status": "Delivered",
                "created_at": "2026-05-01T10:00:00Z",
                "updated_at": "2026-05-01T10:02:00Z"
            }
        }),
    ),
    responses(
        (status = 200, description = "Verified and durably stored, whatever its outcome.", body = Ack),
        (status = 400, description = "The body was cut off (`incomplete_body`).", body = ErrorBody),
        (status = 401, description = "Verification failed (`missing_header`, `invalid_header`, `invalid_timestamp`, \
            `timestamp_too_old`, `timestamp_too_new`, `invalid_signature`); nothing stored.", body = ErrorBody),
        (status = 408, description = "The body arrived slower than the body timeout (`body_timeout`); \
            the connection closes.", body = ErrorBody),
        (status = 413, description = "The body is over the limit (`body_too_large`), checked before \
            it is read; the connection closes.", body = ErrorBody),
        (status = 500, description = "The store failed in a way retrying may not fix (`store_error`); \
            nothing acknowledged.", body = ErrorBody),
        (status = 503, description = "The writer queue is full (`queue_full`, `Retry-After: 1`) or the \
            store failed transiently (`store_unavailable`, `Retry-After: 5`); nothing acknowledged.",
            body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
)]
pub(super) async fn webhook(State(s): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let conn = parts.extensions.get::<server::ConnHandle>();
    // 1. The size, before anything else is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.max_body as u64) {
        s.metrics.too_large();
        return early_answer(conn, error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    }
    let body = match read_body(body, s.max_body, s.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            s.metrics.too_large();
            return early_answer(conn, error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
        }
        Err(BodyError::Incomplete) => return error(StatusCode::BAD_REQUEST, "incomplete_body"),
        Err(BodyError::TimedOut) => {
            s.metrics.body_timeout();
            return early_answer(conn, error(StatusCode::REQUEST_TIMEOUT, "body_timeout"));
        }
    };

    // 2. The signature, over the raw bytes, with the clock read here.
    let raw = RawWebhookHeaders {
        id: headers.get("webhook-id").map(HeaderValue::as_bytes),
        timestamp: headers.get("webhook-timestamp").map(HeaderValue::as_bytes),
        signature: headers.get("webhook-signature").map(HeaderValue::as_bytes),
    };
    let now = chrono::Utc::now();
    if let Err(e) = s.verifier.verify_raw(&raw, &body, now.timestamp()) {
        s.metrics.signature_failure(e.kind());
        tracing::warn!(
            kind = e.kind(),
            // Unverified input: at most 100 bytes of it in the log.
            webhook_id = raw
                .id
                .map(|id| String::from_utf8_lossy(&id[..id.len().min(100)]))
                .as_deref(),
            "webhook refused: {e}"
        );
        return error(StatusCode::UNAUTHORIZED, e.kind());
    }
    // Verified: the three headers are present and visible ASCII.
    let text = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
    let delivery = Delivery {
        id: text(raw.id).unwrap_or_default(),
        webhook_timestamp: text(raw.timestamp),
        webhook_signature: text(raw.signature),
        body: body.to_vec(),
        received_at: now,
    };

    // 3. A place in the writer's queue, or 503 + Retry-After: the sender retries, and
    //    nothing was stored or acknowledged.
    let Ok(permit) = Arc::clone(&s.pending).try_acquire_owned() else {
        s.metrics.queue_full();
        tracing::debug!(webhook_id = %delivery.id, max_pending = s.max_pending, "writer queue full; answering 503");
        let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "queue_full");
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(QUEUE_FULL_RETRY_AFTER),
        );
        return resp;
    };

    // 4. Store and apply on the engine's writer thread, never on this async worker:
    //    concurrent deliveries share one transaction and its fsync, and we are woken
    //    once ours committed (no thread parked per delivery). The queue place is given
    //    back when the commit is done, even if this request was abandoned meanwhile.
    let id = delivery.id.clone();
    let (done, committed) = tokio::sync::oneshot::channel();
    s.engine.ingest_then(delivery, move |result| {
        drop(permit);
        let _ = done.send(result);
    });
    let result = committed
        .await
        .unwrap_or_else(|_| Err(EngineError::WriterStopped));
    if result.is_ok() {
        s.catch_up();
    }
    match result {
        Ok(applied) => {
            let (head_type, event_at) =
                if applied.outcome == Outcome::Applied || applied.event_type.is_none() {
                    envelope_head(&body)
                } else {
                    (None, None)
                };
            s.metrics.delivery(
                applied.outcome,
                applied.event_type.as_deref().or(head_type.as_deref()),
            );
            if applied.outcome == Outcome::Applied {
                if let Some(t) = event_at {
                    s.metrics.applied_event_at(t);
                }
            }
            match applied.outcome {
                Outcome::Rejected | Outcome::Malformed => tracing::warn!(
                    webhook_id = %id,
                    event_type = applied.event_type.as_deref(),
                    outcome = applied.outcome.as_str(),
                    detail = applied.detail.as_deref(),
                    "delivery stored"
                ),
                _ => tracing::debug!(
                    webhook_id = %id,
                    event_type = applied.event_type.as_deref(),
                    outcome = applied.outcome.as_str(),
                    "delivery stored"
                ),
            }
            json(
                StatusCode::OK,
                &Ack {
                    outcome: applied.outcome.as_str(),
                    delivery_id: &id,
                    event_type: applied.event_type.as_deref(),
                    detail: applied.detail.as_deref(),
                },
            )
        }
        Err(e) => {
            s.metrics.store_failure();
            let retryable = e.is_retryable();
            tracing::error!(
                webhook_id = %id,
                retryable,
                error = %e,
                "delivery not stored; answering 5xx so that the sender retries"
            );
            if retryable {
                // Busy, I/O, full disk, a restarting writer: it may pass in a moment.
                store_unavailable()
            } else {
                // Corruption or a bug: Dodo still retries any 5xx, but no Retry-After
                // promise, and operators see a 500 rather than a transient 503.
                error(StatusCode::INTERNAL_SERVER_ERROR, "store_error")
            }
        }
    }
}
