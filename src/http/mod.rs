//! The HTTP shell (feature `http`): Dodo's webhook route, the read API, health and
//! metrics, as [axum] routers over an [`Engine`]. `entsync serve` is this module plus
//! a listener; an axum application mounts the same routes in a few lines.
//!
//! This is a shell, not the core: it reads the clock (to verify timestamps and to answer
//! "now"), runs SQLite work on tokio's blocking pool, and maps results to status codes:
//!
//! | Route | Answers |
//! |---|---|
//! | `POST /webhooks/dodo` | 413 body over the limit (checked before anything else is read); 400 body cut off; 408 body slower than [`Options::body_timeout`]; 401 `{"error": kind}` when verification fails (nothing stored); 503 `{"error": "queue_full"}` + `Retry-After: 1` when [`Options::max_pending`] deliveries already wait for their commit (nothing stored); 200 `{"outcome": ...}` for every verified delivery once it is durably committed: `applied`, `duplicate`, `stale`, `rejected` (quarantined), `unhandled`, `malformed`; 503 `store_unavailable` when the store failed, so that Dodo retries. 413 and 408 carry `Connection: close` (and, under [`serve`], a lingering close) |
//! | `GET /v1/access/{customer_id}/{entitlement_id}` | 200 with the [`crate::Access`] answer, allowed or not |
//! | `GET /v1/customers/{customer_id}` | 200 with the [`crate::store::CustomerView`] |
//! | `GET /v1/credits/{customer_id}/{credit_entitlement_id}` | 200 with the balance, amounts as decimal strings |
//! | `GET /v1/changes?after=&limit=&wait=` | 200 `{"changes": [...], "next": seq}` ([`ChangesPage`]); with `wait`, an empty page waits up to that many seconds for the next change (long poll); 400 for a bad parameter |
//! | `GET /v1/changes/stream?after=` | Server-Sent Events: `event: access.changed`, `id:` the seq, `data:` the change; `Last-Event-ID` takes precedence over `after` |
//! | `GET /healthz` | 200 `{"status": "ok"}` while the store and the access index are usable; 503 `{"status": "unavailable", "error": "store_unavailable", "cause": ...}` otherwise |
//! | `GET /metrics` | Prometheus text: requests by route and status, delivery outcomes, signature failures, the writer queue, connections |
//!
//! The read API (the change feed included) and `/metrics` ask for `Authorization: Bearer <token>` when
//! [`Options::api_token`] is set (401 otherwise); webhooks never do (their signature is
//! their authentication), nor does `/healthz`.
//!
//! [`serve`] (and [`Receiver::serve`]) is the listener `entsync serve` runs: HTTP/1.1
//! only, with a header timeout, an idle timeout, a connection cap, back-off on `accept`
//! errors, a shutdown that closes idle connections at once, and a lingering close after
//! an early answer ([`Limits`]; details in its module). Under `axum::serve` the routes
//! work the same, without those limits.
//!
//! # Example
//!
//! ```no_run
//! use entitlement_sync::http::{Limits, Receiver};
//! use entitlement_sync::{verify::Verifier, Engine};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::open("entitlements.db")?;
//! let verifier = Verifier::from_list(&std::env::var("DODO_PAYMENTS_WEBHOOK_SECRET")?)?;
//! let receiver = Receiver::new(engine, verifier);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! receiver
//!     .serve(listener, Limits::default(), async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await;
//! # Ok(())
//! # }
//! ```

mod changes;
mod metrics;
mod openapi;
mod server;

pub use changes::{ChangesPage, ChangesQuery, StreamQuery, CHANGES_PATH, STREAM_PATH};
pub use metrics::ForwardStats;
pub use openapi::{document, ApiDoc, OPENAPI_PATH};

pub use server::{
    serve, Limits, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    LINGER_BYTES, LINGER_TIME, MAX_CONNECTIONS_LIMIT,
};

use crate::delivery::{Delivery, Outcome};
use crate::verify::{RawWebhookHeaders, Verifier};
use crate::Engine;
use crate::EngineError;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use metrics::{Metrics, Route, Snapshot};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The webhook route.
pub const WEBHOOK_PATH: &str = "/webhooks/dodo";
/// The access route.
pub const ACCESS_PATH: &str = "/v1/access/{customer_id}/{entitlement_id}";
/// The customer view route.
pub const CUSTOMER_PATH: &str = "/v1/customers/{customer_id}";
/// The credit balance route.
pub const CREDITS_PATH: &str = "/v1/credits/{customer_id}/{credit_entitlement_id}";
/// The default largest webhook body: 256 KiB (Dodo's bodies are a few KiB).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

/// Settings of a [`Receiver`].
#[derive(Clone)]
pub struct Options {
    /// Largest webhook body accepted, in bytes; larger ones get 413 unread.
    pub max_body: usize,
    /// When set, the read API (`/v1/...`) and `/metrics` require
    /// `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    /// A webhook body must arrive within this, counted from the end of its headers;
    /// 408 otherwise.
    pub body_timeout: Duration,
    /// Deliveries waiting for their commit at once; past it a delivery gets 503 with
    /// `Retry-After` (nothing of it stored), so that the sender retries later. At least 1.
    pub max_pending: usize,
    /// The counters of a change forwarder, shown by `/metrics` (forward lag, failures).
    pub forward: Option<Arc<ForwardStats>>,
}

/// The default [`Options::body_timeout`]: 30 s (Dodo gives up after 15 s).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Options::max_pending`]: 10000 deliveries.
pub const DEFAULT_MAX_PENDING: usize = 10_000;
/// The `Retry-After` (seconds) of a 503 for a full writer queue.
pub const QUEUE_FULL_RETRY_AFTER: &str = "1";

impl Default for Options {
    fn default() -> Self {
        Options {
            max_body: DEFAULT_MAX_BODY,
            api_token: None,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            forward: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("max_body", &self.max_body)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("body_timeout", &self.body_timeout)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// The HTTP front of an [`Engine`]: verifies and stores webhooks, answers the read API,
/// counts everything for `/metrics`. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    /// Woken after every commit of the engine: long polls and streams of the change feed.
    feed: Arc<tokio::sync::Notify>,
    /// Wakes the index catch-up loop (see [`Shared::catch_up`]).
    catch_up: Arc<tokio::sync::Notify>,
    catch_up_started: std::sync::atomic::AtomicBool,
    verifier: Verifier,
    max_body: usize,
    body_timeout: Duration,
    /// One permit per delivery waiting for its commit (see [`Options::max_pending`]).
    pending: Arc<tokio::sync::Semaphore>,
    max_pending: usize,
    /// SHA-256 of the API token: compared in constant time, whatever its length.
    token: Option<[u8; 32]>,
    metrics: Metrics,
    forward: Option<Arc<ForwardStats>>,
    /// `GET /openapi.json`, encoded once: the document of these routes under these
    /// options (with the bearer scheme only when a token is set).
    openapi: Bytes,
    /// Connection counters, kept by [`Receiver::serve`].
    conns: Arc<server::ConnStats>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("engine", &self.shared.engine)
            .field("verifier", &self.shared.verifier)
            .field("max_body", &self.shared.max_body)
            .field("body_timeout", &self.shared.body_timeout)
            .field("max_pending", &self.shared.max_pending)
            .field("api_token", &self.shared.token.map(|_| "<redacted>"))
            .finish()
    }
}

impl Receiver {
    /// A receiver with the default [`Options`].
    ///
    /// Reads the newest applied delivery once (one indexed query), so that `/metrics`
    /// reports the data's age from the start.
    pub fn new(engine: Engine, verifier: Verifier) -> Receiver {
        Receiver::with_options(engine, verifier, Options::default())
    }

    /// A receiver with options.
    pub fn with_options(engine: Engine, verifier: Verifier, options: Options) -> Receiver {
        let max_pending = options
            .max_pending
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let metrics = Metrics::default();
        if let Ok(newest) = engine.deliveries(Some(Outcome::Applied), Some(1)) {
            if let Some(t) = newest
                .first()
                .and_then(|d| d.event_at.as_deref())
                .and_then(crate::wire::parse_timestamp)
            {
                metrics.applied_event_at(t.timestamp());
            }
        }
        let token: Option<[u8; 32]> = options
            .api_token
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
        let openapi = match serde_json::to_vec(&document(token.is_some())) {
            Ok(doc) => Bytes::from(doc),
            Err(e) => {
                // Not reachable (the document is plain data); answered as a 500 if it were.
                tracing::error!(error = %e, "cannot encode the OpenAPI document");
                Bytes::new()
            }
        };
        let feed = Arc::new(tokio::sync::Notify::new());
        let wake = Arc::downgrade(&feed);
        engine.on_commit(move || {
            if let Some(feed) = wake.upgrade() {
                feed.notify_waiters();
            }
        });
        Receiver {
            shared: Arc::new(Shared {
                engine,
                feed,
                catch_up: Arc::new(tokio::sync::Notify::new()),
                catch_up_started: std::sync::atomic::AtomicBool::new(false),
                verifier,
                max_body: options.max_body,
                body_timeout: options.body_timeout,
                pending: Arc::new(tokio::sync::Semaphore::new(max_pending)),
                max_pending,
                token,
                metrics,
                forward: options.forward,
                openapi,
                conns: Arc::default(),
            }),
        }
    }

    /// The engine behind it.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    fn timed<S>(&self, route: Route, method_router: MethodRouter<Arc<Shared>>) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        method_router
            .layer(middleware::from_fn_with_state(
                (self.shared.clone(), route),
                track,
            ))
            .with_state(self.shared.clone())
    }

    /// `POST /webhooks/dodo` alone: mount it in your own axum app.
    pub fn webhook_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new().route(WEBHOOK_PATH, self.timed(Route::Webhook, post(webhook)))
    }

    /// The read API: access, customer view, credit balance.
    pub fn api_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route(ACCESS_PATH, self.timed(Route::Access, get(access)))
            .route(CUSTOMER_PATH, self.timed(Route::Customer, get(customer)))
            .route(CREDITS_PATH, self.timed(Route::Credits, get(credits)))
            .route(CHANGES_PATH, self.timed(Route::Changes, get(changes::page)))
            .route(STREAM_PATH, self.timed(Route::Stream, get(changes::stream)))
    }

    /// `GET /healthz` and `GET /metrics`.
    pub fn ops_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/healthz", self.timed(Route::Healthz, get(healthz)))
            .route("/metrics", self.timed(Route::Metrics, get(metrics_text)))
    }

    /// `GET /openapi.json`: the OpenAPI 3.1 document of every route [`Receiver::router`]
    /// answers ([`document`]). Public, like `/healthz`.
    pub fn openapi_routes<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new().route(
            OPENAPI_PATH,
            self.timed(Route::OpenApi, get(openapi::openapi_json)),
        )
    }

    /// Everything `entsync serve` answers, with a JSON 404 for anything else.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let shared = self.shared.clone();
        Router::new()
            .merge(self.webhook_routes())
            .merge(self.api_routes())
            .merge(self.ops_routes())
            .merge(self.openapi_routes())
            .fallback(move || {
                let shared = shared.clone();
                async move {
                    let started = Instant::now();
                    let resp = error(StatusCode::NOT_FOUND, "not_found");
                    shared
                        .metrics
                        .observe(Route::NotFound, 404, started.elapsed());
                    resp
                }
            })
    }
}

async fn track(
    State((shared, route)): State<(Arc<Shared>, Route)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    shared
        .metrics
        .observe(route, response.status().as_u16(), started.elapsed());
    response
}

// ---------------------------------------------------------------------------------------
// Responses

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// An error: `{"error": kind}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// What went wrong, as a stable kind: `unauthorized`, `not_found`,
    /// `store_unavailable`, `queue_full`, `body_too_large`, or a signature failure
    /// (`missing_headers`, `bad_signature`, `stale_timestamp`, ...).
    #[schema(example = "store_unavailable")]
    error: &'a str,
}

/// An error with a message for people: `{"error": kind, "message": ...}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorMessage<'a> {
    /// What went wrong, as a stable kind (`bad_request`).
    #[schema(example = "bad_request")]
    error: &'a str,
    /// What was wrong with the request, for people.
    message: &'a str,
}

fn error(status: StatusCode, kind: &str) -> Response {
    json(status, &ErrorBody { error: kind })
}

/// An error with a message for people: `{"error": kind, "message": ...}`.
fn error_message(status: StatusCode, kind: &str, message: &str) -> Response {
    json(
        status,
        &ErrorMessage {
            error: kind,
            message,
        },
    )
}

/// The 400 for path parameters axum could not decode (e.g. a percent-encoding that is
/// not UTF-8), as JSON like every other error.
fn bad_path(rejection: &PathRejection) -> Response {
    error_message(
        StatusCode::BAD_REQUEST,
        "bad_request",
        &rejection.body_text(),
    )
}

fn store_unavailable() -> Response {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

// ---------------------------------------------------------------------------------------
// The webhook route

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
/// after it, and when served by [`serve`] it closes lingering (the rest of the body is
/// read and discarded for a while), so that the client reads this answer rather than a
/// reset.
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
    ),
    responses(
        (status = 200, description = "Verified and durably stored, whatever its outcome.", body = Ack),
        (status = 400, description = "The body was cut off (`incomplete_body`).", body = ErrorBody),
        (status = 401, description = "Verification failed (`missing_headers`, `bad_signature`, \
            `stale_timestamp`, ...); nothing stored.", body = ErrorBody),
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
async fn webhook(State(s): State<Arc<Shared>>, request: Request) -> Response {
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

// ---------------------------------------------------------------------------------------
// The read API

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

impl Shared {
    /// After a commit: have the access index brought up to date on the blocking pool,
    /// so that reads find it current instead of paying for everything committed since
    /// the last read (after a burst of webhooks, a long pause for the first reader).
    /// One catch-up runs at a time; commits made meanwhile coalesce into the next one.
    fn catch_up(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.catch_up_started.swap(true, Ordering::AcqRel) {
            let wake = Arc::clone(&self.catch_up);
            let shared = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    wake.notified().await;
                    let Some(engine) = shared.upgrade().map(|s| s.engine.clone()) else {
                        break;
                    };
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || engine.sync_index()).await
                    {
                        tracing::warn!(error = %e, "access index catch-up failed; the next read retries");
                    }
                }
            });
        }
        self.catch_up.notify_one();
    }

    /// The 401 to answer unless the request carries `Authorization: Bearer <token>`
    /// (when a token is configured).
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = self.token.as_ref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|v| {
                let (scheme, rest) = v.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            });
        let ok = given.is_some_and(|token| {
            let digest: [u8; 32] = Sha256::digest(token).into();
            digest
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        });
        if ok {
            return None;
        }
        let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"entsync\""),
        );
        Some(resp)
    }

    /// Runs a store read on the blocking pool; `None` when it failed (logged).
    async fn read<T, F>(&self, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
    {
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || f(&engine)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store read failed");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "store read task failed");
                None
            }
        }
    }
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
async fn access(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
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
async fn customer(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
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
async fn credits(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
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

// ---------------------------------------------------------------------------------------
// Operations

/// The health answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    status: &'static str,
    /// `store_unavailable` when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// What failed, for people, when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
}

/// 200 while the store and the access index are usable, on the blocking pool: the
/// index is brought up to date with the store ([`Engine::sync_index`]; no SQLite work
/// when it is current) and the newest delivery row is read (one indexed row); 503 with
/// the cause when either fails. (It cannot see a stuck writer thread: the engine has no
/// probe for that.)
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Whether the store and the access index are usable",
    description = "Public: never asks for the API token.",
    responses(
        (status = 200, description = "Usable: `{\"status\": \"ok\"}`.", body = Health),
        (status = 503, description = "Not usable: `{\"status\": \"unavailable\", \"error\": \
            \"store_unavailable\", \"cause\": ...}`.", body = Health,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
)]
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let engine = s.engine.clone();
    let checked = tokio::task::spawn_blocking(move || {
        engine.sync_index()?;
        // One indexed row of the deliveries table: the store answers reads.
        engine.deliveries(None, Some(1)).map(|_| ())
    })
    .await
    .map_err(|e| format!("health check task failed: {e}"))
    .and_then(|r| r.map_err(|e| e.to_string()));
    match checked {
        Ok(()) => json(
            StatusCode::OK,
            &Health {
                status: "ok",
                error: None,
                cause: None,
            },
        ),
        Err(cause) => {
            tracing::warn!(%cause, "health check failed");
            let mut resp = json(
                StatusCode::SERVICE_UNAVAILABLE,
                &Health {
                    status: "unavailable",
                    error: Some("store_unavailable"),
                    cause: Some(cause),
                },
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format 0.0.4: requests by route and status, delivery \
        outcomes, signature failures, the writer queue, connections, the change feed and the \
        forward lag.",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "text/plain"),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
    ),
    security(("api_token" = [])),
)]
async fn metrics_text(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let (quarantined, grants, last_change) = s
        .read(|e| {
            Ok((
                e.quarantine_size().ok(),
                e.grant_count() as u64,
                e.last_change_seq().ok(),
            ))
        })
        .await
        .unwrap_or((None, 0, None));
    let now = chrono::Utc::now();
    let text = s.metrics.render(&Snapshot {
        quarantined,
        last_change,
        forward: s.forward.as_deref(),
        bad_rows: s.engine.bad_rows().count,
        grants: Some(grants),
        pending: s.max_pending.saturating_sub(s.pending.available_permits()) as u64,
        max_pending: s.max_pending as u64,
        conns: s.conn_stats(),
        now_unix: now.timestamp_micros() as f64 / 1e6,
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
