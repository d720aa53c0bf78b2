//! Operations: `GET /healthz` and `GET /metrics`.

use super::metrics::Snapshot;
use super::{json, ErrorBody, ExtraMetrics, Shared};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;

/// The health answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    status: &'static str,
    /// The access index: `ready` (answers from memory), `warming` (loading after a
    /// start; answers come from the store meanwhile, the same, slower) or `lazy` (loaded
    /// by the first read).
    #[schema(example = "ready")]
    index: &'static str,
    /// `store_unavailable` when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// What failed, for people, when unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
}

/// 200 while the store and the access index are usable; 503 with the cause otherwise:
/// while the writer's last write failed ([`Engine::write_failure`](crate::Engine::write_failure),
/// an atomic load: deliveries are being answered 503 then, e.g. on a full disk; 200 again
/// once a write succeeds, which `entsync serve` tries once a second meanwhile), or when,
/// on the blocking pool, the index cannot be brought up to date with the store ([`Engine::sync_index`](crate::Engine::sync_index); no SQLite
/// work when it is current) or the newest delivery row cannot be read (one indexed row).
/// Nothing is written to find out. (It cannot see a stuck writer thread: the engine has
/// no probe for that.)
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Whether the store and the access index are usable",
    description = "Public: never asks for the API token. 503 while the last write to the store \
        failed (deliveries are answered 503 then) until one succeeds, or while the store cannot \
        be read.",
    responses(
        (status = 200, description = "Usable: `{\"status\": \"ok\", \"index\": \"ready\"}`.", body = Health),
        (status = 503, description = "Not usable: `{\"status\": \"unavailable\", \"error\": \
            \"store_unavailable\", \"cause\": ...}`.", body = Health,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
)]
pub(super) async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let checked = match s.engine.write_failure() {
        Some(cause) => Err(format!("the last write to the store failed: {cause}")),
        None => {
            let engine = s.engine.clone();
            tokio::task::spawn_blocking(move || {
                engine.sync_index()?;
                // One indexed row of the deliveries table: the store answers reads.
                engine.deliveries(None, Some(1)).map(|_| ())
            })
            .await
            .map_err(|e| format!("health check task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()))
        }
    };
    match checked {
        Ok(()) => json(
            StatusCode::OK,
            &Health {
                status: "ok",
                index: s.engine.index_state().as_str(),
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
                    index: s.engine.index_state().as_str(),
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
pub(super) async fn metrics_text(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
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
    let mut text = s.metrics.render(&Snapshot {
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
    let extra: Vec<ExtraMetrics> = s
        .extra_metrics
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for render in extra {
        text.push_str(&render());
    }
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
