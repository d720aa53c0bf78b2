//! The access-change feed over HTTP: `GET /v1/changes` (a page, or a long poll with
//! `wait`) and `GET /v1/changes/stream` (Server-Sent Events, resumable with
//! `Last-Event-ID`).
//!
//! Both read the store on tokio's blocking pool and wait on a [`tokio::sync::Notify`]
//! that the engine's writer thread wakes after every commit ([`crate::Engine::on_commit`]);
//! every second they also look again, for commits made by other processes.

use super::server::{shutdown_of, ConnHandle};
use super::{
    error_message, json, store_unavailable, too_many_waiting, ErrorBody, ErrorMessage, Shared,
};
use crate::change::Change;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The route of a page of changes.
pub const CHANGES_PATH: &str = "/v1/changes";
/// The route of the change stream.
pub const STREAM_PATH: &str = "/v1/changes/stream";
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`; larger ones are capped.
pub const MAX_LIMIT: usize = 1000;
/// The longest `wait`, in seconds; longer ones are capped.
pub const MAX_WAIT_SECS: f64 = 300.0;
/// How often a waiting request looks again without being woken (other processes).
const RECHECK: Duration = Duration::from_secs(1);

/// The query of `GET /v1/changes`, as received (validated by `ChangesQuery::parse`).
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct ChangesQuery {
    /// Return changes with a seq above this one (default 0: from the start).
    #[cfg_attr(feature = "openapi", param(value_type = Option<i64>, minimum = 0))]
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[cfg_attr(feature = "openapi", param(value_type = Option<i64>, minimum = 1))]
    pub limit: Option<String>,
    /// When there is no change yet, wait up to this many seconds for one (long poll;
    /// at most 300).
    #[cfg_attr(feature = "openapi", param(value_type = Option<f64>, minimum = 0))]
    pub wait: Option<String>,
}

/// A validated [`ChangesQuery`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Page {
    after: i64,
    limit: usize,
    wait: Duration,
}

/// A seq as `after` and `Last-Event-ID` give it: decimal digits only, up to 2^63-1. No
/// sign, no whitespace (`?after=+5` reads as ` 5`), and an empty value is not a number:
/// 400, as the document says, not the default.
fn parse_seq(what: &str, s: &str) -> Result<i64, String> {
    Some(s)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("{what} must be a seq (an integer ≥ 0), not {s:?}"))
}

impl ChangesQuery {
    fn parse(&self) -> Result<Page, String> {
        let after = match self.after.as_deref() {
            None => 0,
            Some(s) => parse_seq("after", s)?,
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(s) => s
                // An int64, as the document says (like `after`); above 1000 it is capped.
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT))
                .ok_or_else(|| format!("limit must be an integer from 1 to 2^63-1, not {s:?}"))?,
        };
        let wait = match self.wait.as_deref() {
            None => Duration::ZERO,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .map(|w| Duration::from_secs_f64(w.min(MAX_WAIT_SECS)))
                .ok_or_else(|| format!("wait must be a number of seconds ≥ 0, not {s:?}"))?,
        };
        Ok(Page { after, limit, wait })
    }
}

/// A page of changes: `next` is the seq of the last change in it, or `after` when it
/// is empty (the `after` of the next request).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangesPage {
    /// The changes, oldest first.
    pub changes: Vec<Change>,
    /// Where to continue from.
    pub next: i64,
}

/// `GET /v1/changes?after=&limit=&wait=`.
#[utoipa::path(
    get,
    path = "/v1/changes",
    tag = "changes",
    operation_id = "changes",
    summary = "A page of access changes, or a long poll for the next ones",
    description = "Changes with a seq above `after`, oldest first. With `wait`, an empty page \
        waits up to that many seconds for the next change (long poll). `next` is the seq of \
        the last change returned, or `after` when none: the `after` of the next request.",
    params(ChangesQuery),
    responses(
        (status = 200, description = "A page (empty when nothing came within `wait`, or when \
            the server began shutting down meanwhile).", body = ChangesPage),
        (status = 400, description = "A bad parameter (`bad_request`).", body = ErrorMessage),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
        (status = 503, description = "The store could not be read (`store_unavailable`), or, \
            with `wait`, as many streams and long polls as the server allows are already \
            waiting (`too_many_waiting`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
    security(("api_token" = [])),
)]
pub(super) async fn page(
    State(s): State<Arc<Shared>>,
    conn: Option<Extension<ConnHandle>>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let page = match query.map_err(|e| e.body_text()).and_then(|q| q.parse()) {
        Ok(page) => page,
        Err(message) => return error_message(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // A long poll holds a waiting permit until it answers; a plain page needs none.
    let _waiting = if page.wait.is_zero() {
        None
    } else {
        match Arc::clone(&s.waiting).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return too_many_waiting(),
        }
    };
    let deadline = tokio::time::Instant::now() + page.wait;
    // The server shutting down ends the wait: the page as it stands (empty, most likely)
    // is answered at once, and the client polls again elsewhere.
    let shutdown = shutdown_of(conn.map(|Extension(c)| c));
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        // Armed before reading, so that a commit between the read and the wait wakes it.
        let woken = s.feed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let Some(changes) = s.read(move |e| e.changes(page.after, page.limit)).await else {
            return store_unavailable();
        };
        let now = tokio::time::Instant::now();
        if !changes.is_empty() || now >= deadline || stopping {
            let next = changes.last().map_or(page.after, |c| c.seq);
            return json(StatusCode::OK, &ChangesPage { changes, next });
        }
        tokio::select! {
            _ = tokio::time::timeout((deadline - now).min(RECHECK), woken) => {}
            () = &mut shutdown => stopping = true,
        }
    }
}

/// The query of `GET /v1/changes/stream`.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct StreamQuery {
    /// Stream changes with a seq above this one (default 0). A non-empty `Last-Event-ID`
    /// header takes precedence.
    #[cfg_attr(feature = "openapi", param(value_type = Option<i64>, minimum = 0))]
    pub after: Option<String>,
}

/// How a stream resumes: `Last-Event-ID` over `after`, both read as [`parse_seq`]. An
/// empty `Last-Event-ID` carries no event id (the stream had sent none yet), so `after`
/// decides then, else 0.
fn stream_start(headers: &HeaderMap, query: &StreamQuery) -> Result<i64, String> {
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| "Last-Event-ID must be a seq (an integer ≥ 0)".to_string())
        })
        .transpose()?
        .filter(|id| !id.is_empty());
    match (last_event_id, query.after.as_deref()) {
        (Some(id), _) => parse_seq("Last-Event-ID", id),
        (None, Some(after)) => parse_seq("after", after),
        (None, None) => Ok(0),
    }
}

/// `GET /v1/changes/stream?after=`: `event: access.changed`, `id:` the seq, `data:` the
/// change as one line of JSON.
#[utoipa::path(
    get,
    path = "/v1/changes/stream",
    tag = "changes",
    operation_id = "changes_stream",
    summary = "Access changes as Server-Sent Events",
    description = "Never ends while the server runs: every change with a seq above the start, \
        then each new one as it commits, as `event: access.changed`, `id:` the seq, `data:` the \
        change (a `Change`) as one line of JSON; a comment every 15 s keeps the connection open. \
        It ends when the server shuts down. Resume with `Last-Event-ID`.",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The seq of the last event \
            received (an integer ≥ 0); takes precedence over `after` unless empty (an empty \
            one carries no event id)."),
    ),
    responses(
        (status = 200, description = "The stream; each event's `data` is a `Change`.",
            body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad `after` or `Last-Event-ID` (`bad_request`).", body = ErrorMessage),
        (status = 401, description = "`ENTSYNC_API_TOKEN` is set and the request has no \
            `Authorization: Bearer <token>` with it (`unauthorized`).", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"entsync\"`"))),
        (status = 503, description = "As many streams and long polls as the server allows are \
            already waiting (`too_many_waiting`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds to wait before retrying."))),
    ),
    security(("api_token" = [])),
)]
pub(super) async fn stream(
    State(s): State<Arc<Shared>>,
    conn: Option<Extension<ConnHandle>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refusal) = s.refuse(&headers) {
        return refusal;
    }
    let after = match query
        .map_err(|e| e.body_text())
        .and_then(|q| stream_start(&headers, &q))
    {
        Ok(after) => after,
        Err(message) => return error_message(StatusCode::BAD_REQUEST, "bad_request", &message),
    };
    // The stream holds a waiting permit for as long as it is open.
    let Ok(waiting) = Arc::clone(&s.waiting).try_acquire_owned() else {
        return too_many_waiting();
    };
    let state = (s, after, VecDeque::<Change>::new(), waiting);
    let events =
        futures_util::stream::unfold(state, |(s, mut after, mut buffered, waiting)| async move {
            loop {
                if let Some(change) = buffered.pop_front() {
                    let event = match serde_json::to_string(&change) {
                        Ok(data) => Event::default()
                            .event("access.changed")
                            .id(change.seq.to_string())
                            .data(data),
                        Err(e) => Event::default().comment(format!("unencodable change: {e}")),
                    };
                    return Some((Ok::<_, Infallible>(event), (s, after, buffered, waiting)));
                }
                let woken = s.feed.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match s.read(move |e| e.changes(after, DEFAULT_LIMIT)).await {
                    Some(changes) if !changes.is_empty() => {
                        after = changes.last().map_or(after, |c| c.seq);
                        buffered.extend(changes);
                    }
                    // Nothing yet, or the store failed (logged): look again soon.
                    _ => {
                        let _ = tokio::time::timeout(RECHECK, woken).await;
                    }
                }
            }
        });
    // The server shutting down ends the stream (its last chunk, then the connection
    // closes): the client reconnects with `Last-Event-ID`, elsewhere or later.
    let shutdown = shutdown_of(conn.map(|Extension(c)| c));
    let events = futures_util::StreamExt::take_until(events, shutdown);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(after: Option<&str>, limit: Option<&str>, wait: Option<&str>) -> ChangesQuery {
        ChangesQuery {
            after: after.map(Into::into),
            limit: limit.map(Into::into),
            wait: wait.map(Into::into),
        }
    }

    #[test]
    fn a_query_is_validated_and_capped() {
        let page = q(None, None, None).parse().unwrap();
        assert_eq!(
            (page.after, page.limit, page.wait),
            (0, 100, Duration::ZERO)
        );
        let page = q(Some("42"), Some("5000"), Some("999")).parse().unwrap();
        assert_eq!((page.after, page.limit), (42, MAX_LIMIT));
        assert_eq!(page.wait, Duration::from_secs(300));
        for bad in [
            q(Some("-1"), None, None),
            q(Some("x"), None, None),
            q(None, Some("0"), None),
            q(None, Some("1.5"), None),
            q(None, Some("9223372036854775808"), None),
            q(None, None, Some("-2")),
            q(None, None, Some("NaN")),
            q(None, None, Some("inf")),
            q(Some(""), None, None),
            q(None, Some(""), None),
            q(None, None, Some("")),
        ] {
            assert!(bad.parse().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn last_event_id_takes_precedence_over_after() {
        let mut headers = HeaderMap::new();
        let query = StreamQuery {
            after: Some("3".into()),
        };
        assert_eq!(stream_start(&headers, &query), Ok(3));
        headers.insert("last-event-id", "7".parse().unwrap());
        assert_eq!(stream_start(&headers, &query), Ok(7));
        headers.insert("last-event-id", "seven".parse().unwrap());
        assert!(stream_start(&headers, &query).is_err());
        // An empty Last-Event-ID carries no event id: `after` decides (else 0).
        headers.insert("last-event-id", "".parse().unwrap());
        assert_eq!(stream_start(&headers, &query), Ok(3));
        assert_eq!(stream_start(&headers, &StreamQuery::default()), Ok(0));
        let empty = StreamQuery {
            after: Some(String::new()),
        };
        assert!(stream_start(&HeaderMap::new(), &empty).is_err());
        assert_eq!(
            stream_start(&HeaderMap::new(), &StreamQuery::default()),
            Ok(0)
        );
    }

    /// `after` (on both routes) and `Last-Event-ID` are read the same strict way.
    #[test]
    fn seqs_are_plain_digits_on_both_routes() {
        for (input, expected) in [
            ("0", Ok(0)),
            ("42", Ok(42)),
            ("007", Ok(7)),
            ("9223372036854775807", Ok(i64::MAX)),
            ("9223372036854775808", Err(())),
            ("+5", Err(())),
            (" 5", Err(())),
            ("5 ", Err(())),
            ("-0", Err(())),
            ("-1", Err(())),
            ("5.0", Err(())),
            ("", Err(())),
        ] {
            let page = q(Some(input), None, None).parse().map(|p| p.after);
            let stream = stream_start(
                &HeaderMap::new(),
                &StreamQuery {
                    after: Some(input.into()),
                },
            );
            assert_eq!(page.clone().map_err(|_| ()), expected, "page {input:?}");
            assert_eq!(stream.map_err(|_| ()), expected, "stream {input:?}");
            if !input.is_empty() && !input.starts_with(' ') && !input.ends_with(' ') {
                let mut headers = HeaderMap::new();
                headers.insert("last-event-id", input.parse().unwrap());
                let resumed = stream_start(&headers, &StreamQuery::default());
                assert_eq!(resumed.map_err(|_| ()), expected, "Last-Event-ID {input:?}");
            }
        }
    }
}
