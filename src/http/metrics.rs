//! Prometheus counters of the HTTP shell, rendered by hand in the text exposition format
//! (version 0.0.4). Everything on the request path is a relaxed atomic add; the only
//! locks guard the per-event-type and per-status maps and are held for one map update,
//! never across an `.await`.

use super::server::ConnStats;
use crate::delivery::Outcome;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// The routes the shell serves, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Webhook,
    Access,
    Customer,
    Credits,
    Changes,
    Stream,
    Healthz,
    Metrics,
    OpenApi,
    NotFound,
}

impl Route {
    const ALL: [Route; 10] = [
        Route::Webhook,
        Route::Access,
        Route::Customer,
        Route::Credits,
        Route::Changes,
        Route::Stream,
        Route::Healthz,
        Route::Metrics,
        Route::OpenApi,
        Route::NotFound,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Webhook => super::WEBHOOK_PATH,
            Route::Access => super::ACCESS_PATH,
            Route::Customer => super::CUSTOMER_PATH,
            Route::Credits => super::CREDITS_PATH,
            Route::Changes => super::CHANGES_PATH,
            Route::Stream => super::STREAM_PATH,
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => super::OPENAPI_PATH,
            Route::NotFound => "(unmatched)",
        }
    }
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }
}

#[derive(Default)]
struct RouteStats {
    latency: Histogram,
    /// Responses by status code.
    statuses: Mutex<BTreeMap<u16, u64>>,
}

/// The type label of a delivery whose body has no readable `type`.
const UNPARSED: &str = "(unparsed)";

/// The signature failure kinds, in the order of [`crate::verify::VerifyError::kind`].
const SIGNATURE_KINDS: [&str; 6] = [
    "missing_header",
    "invalid_header",
    "invalid_timestamp",
    "timestamp_too_old",
    "timestamp_too_new",
    "invalid_signature",
];

/// All counters of one [`super::Receiver`].
pub(crate) struct Metrics {
    routes: [RouteStats; Route::ALL.len()],
    outcomes: [AtomicU64; Outcome::ALL.len()],
    types: Mutex<BTreeMap<String, u64>>,
    signature_failures: [AtomicU64; SIGNATURE_KINDS.len()],
    too_large: AtomicU64,
    body_timeouts: AtomicU64,
    queue_full: AtomicU64,
    store_failures: AtomicU64,
    /// Unix seconds of the envelope timestamp of the newest applied event; `i64::MIN`
    /// while unknown.
    newest_applied: AtomicI64,
    started: std::time::Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            routes: Default::default(),
            outcomes: Default::default(),
            types: Mutex::new(BTreeMap::new()),
            signature_failures: Default::default(),
            too_large: AtomicU64::new(0),
            body_timeouts: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            newest_applied: AtomicI64::new(i64::MIN),
            started: std::time::Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the store and the server say at scrape time.
pub(crate) struct Snapshot<'a> {
    pub quarantined: Option<u64>,
    /// The newest seq of the access-change feed.
    pub last_change: Option<i64>,
    /// The forwarder's counters, when it runs.
    pub forward: Option<&'a ForwardStats>,
    /// Rows the access index skipped because they do not decode.
    pub bad_rows: u64,
    pub grants: Option<u64>,
    /// Deliveries waiting for their commit, and the bound.
    pub pending: u64,
    pub max_pending: u64,
    pub conns: &'a ConnStats,
    pub now_unix: f64,
}

impl Metrics {
    pub(crate) fn observe(&self, route: Route, status: u16, elapsed: Duration) {
        let stats = &self.routes[route as usize];
        stats.latency.observe(elapsed);
        *lock(&stats.statuses).entry(status).or_default() += 1;
    }

    pub(crate) fn delivery(&self, outcome: Outcome, event_type: Option<&str>) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Relaxed);
        }
        let event_type = event_type.unwrap_or(UNPARSED);
        let mut types = lock(&self.types);
        match types.get_mut(event_type) {
            Some(n) => *n += 1,
            None => {
                types.insert(event_type.to_string(), 1);
            }
        }
    }

    pub(crate) fn signature_failure(&self, kind: &str) {
        if let Some(i) = SIGNATURE_KINDS.iter().position(|k| *k == kind) {
            self.signature_failures[i].fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn too_large(&self) {
        self.too_large.fetch_add(1, Relaxed);
    }

    pub(crate) fn body_timeout(&self) {
        self.body_timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn queue_full(&self) {
        self.queue_full.fetch_add(1, Relaxed);
    }

    pub(crate) fn store_failure(&self) {
        self.store_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn applied_event_at(&self, unix: i64) {
        self.newest_applied.fetch_max(unix, Relaxed);
    }

    /// The text exposition.
    pub(crate) fn render(&self, snap: &Snapshot<'_>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let w = &mut out;

        header(
            w,
            "entsync_deliveries_total",
            "counter",
            "Verified deliveries stored since start, by outcome on arrival.",
        );
        for (o, n) in Outcome::ALL.iter().zip(&self.outcomes) {
            let _ = writeln!(
                w,
                "entsync_deliveries_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                n.load(Relaxed)
            );
        }
        header(
            w,
            "entsync_deliveries_by_type_total",
            "counter",
            "Verified deliveries stored since start, by event type ((unparsed): no readable type).",
        );
        for (t, n) in lock(&self.types).iter() {
            let _ = writeln!(
                w,
                "entsync_deliveries_by_type_total{{type=\"{}\"}} {n}",
                escape(t)
            );
        }
        header(
            w,
            "entsync_signature_failures_total",
            "counter",
            "Webhook requests refused with 401, by verification failure kind.",
        );
        for (k, n) in SIGNATURE_KINDS.iter().zip(&self.signature_failures) {
            let _ = writeln!(
                w,
                "entsync_signature_failures_total{{kind=\"{k}\"}} {}",
                n.load(Relaxed)
            );
        }
        header(
            w,
            "entsync_webhook_body_too_large_total",
            "counter",
            "Webhook requests refused with 413.",
        );
        let _ = writeln!(
            w,
            "entsync_webhook_body_too_large_total {}",
            self.too_large.load(Relaxed)
        );
        header(
            w,
            "entsync_webhook_body_timeouts_total",
            "counter",
            "Webhook requests answered 408: the body did not arrive within --body-timeout.",
        );
        let _ = writeln!(
            w,
            "entsync_webhook_body_timeouts_total {}",
            self.body_timeouts.load(Relaxed)
        );
        header(
            w,
            "entsync_webhook_queue_full_total",
            "counter",
            "Verified deliveries answered 503 + Retry-After because --max-pending were waiting for their commit.",
        );
        let _ = writeln!(
            w,
            "entsync_webhook_queue_full_total {}",
            self.queue_full.load(Relaxed)
        );
        header(
            w,
            "entsync_webhook_pending",
            "gauge",
            "Deliveries waiting for their commit now.",
        );
        let _ = writeln!(w, "entsync_webhook_pending {}", snap.pending);
        header(
            w,
            "entsync_webhook_max_pending",
            "gauge",
            "The bound on deliveries waiting for their commit (--max-pending).",
        );
        let _ = writeln!(w, "entsync_webhook_max_pending {}", snap.max_pending);
        render_conns(w, snap.conns);
        header(
            w,
            "entsync_store_failures_total",
            "counter",
            "Deliveries answered 503 because the store failed (the sender retries).",
        );
        let _ = writeln!(
            w,
            "entsync_store_failures_total {}",
            self.store_failures.load(Relaxed)
        );

        header(
            w,
            "entsync_http_request_duration_seconds",
            "histogram",
            "Time from routing a request to its response, by route.",
        );
        for route in Route::ALL {
            let h = &self.routes[route as usize].latency;
            let label = route.label();
            let mut cumulative = 0u64;
            for (bound, count) in BUCKETS.iter().zip(&h.counts) {
                cumulative += count.load(Relaxed);
                let _ = writeln!(w, "entsync_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"{bound}\"}} {cumulative}");
            }
            cumulative += h.counts[BUCKETS.len()].load(Relaxed);
            let _ = writeln!(w, "entsync_http_request_duration_seconds_bucket{{route=\"{label}\",le=\"+Inf\"}} {cumulative}");
            let sum = h.sum_nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                w,
                "entsync_http_request_duration_seconds_sum{{route=\"{label}\"}} {sum}"
            );
            let _ = writeln!(
                w,
                "entsync_http_request_duration_seconds_count{{route=\"{label}\"}} {cumulative}"
            );
        }
        header(
            w,
            "entsync_http_responses_total",
            "counter",
            "Responses by route and status code.",
        );
        for route in Route::ALL {
            for (status, n) in lock(&self.routes[route as usize].statuses).iter() {
                let _ = writeln!(
                    w,
                    "entsync_http_responses_total{{route=\"{}\",code=\"{status}\"}} {n}",
                    route.label()
                );
            }
        }

        if let Some(q) = snap.quarantined {
            header(
                w,
                "entsync_quarantine_size",
                "gauge",
                "Snapshots in the quarantine (rejected as illegal transitions).",
            );
            let _ = writeln!(w, "entsync_quarantine_size {q}");
        }
        header(
            w,
            "entsync_index_bad_rows_total",
            "counter",
            "Object rows the access index skipped because they do not decode (named in the log and by /healthz); every other answer stays right.",
        );
        let _ = writeln!(w, "entsync_index_bad_rows_total {}", snap.bad_rows);
        if let Some(g) = snap.grants {
            header(
                w,
                "entsync_grants",
                "gauge",
                "Grants in the in-memory access index.",
            );
            let _ = writeln!(w, "entsync_grants {g}");
        }
        let newest = self.newest_applied.load(Relaxed);
        if newest != i64::MIN {
            header(
                w,
                "entsync_newest_applied_event_timestamp_seconds",
                "gauge",
                "Envelope timestamp of the newest applied event (unix seconds).",
            );
            let _ = writeln!(w, "entsync_newest_applied_event_timestamp_seconds {newest}");
            header(
                w,
                "entsync_newest_applied_event_age_seconds",
                "gauge",
                "How long ago the newest applied event occurred: the freshness of the answers.",
            );
            let _ = writeln!(
                w,
                "entsync_newest_applied_event_age_seconds {}",
                snap.now_unix - newest as f64
            );
        }
        if let Some(last) = snap.last_change {
            header(
                w,
                "entsync_changes_last_seq",
                "gauge",
                "The newest seq of the access-change feed.",
            );
            let _ = writeln!(w, "entsync_changes_last_seq {last}");
        }
        if let Some(f) = snap.forward {
            render_forward(w, f, snap.last_change, snap.now_unix);
        }
        header(
            w,
            "entsync_uptime_seconds",
            "gauge",
            "Seconds since the receiver started.",
        );
        let _ = writeln!(
            w,
            "entsync_uptime_seconds {}",
            self.started.elapsed().as_secs_f64()
        );
        out
    }
}

/// What `serve --forward-url` reports: written by the forwarder, read by `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// The last seq acknowledged by the receiver.
    pub cursor: std::sync::atomic::AtomicI64,
    /// Changes acknowledged since start.
    pub delivered: AtomicU64,
    /// Failed attempts since start.
    pub failures: AtomicU64,
    /// When (Unix µs, local clock) the forwarder first tried the change it is stuck on;
    /// 0 when it is not behind.
    pub pending_since_micros: std::sync::atomic::AtomicI64,
}

fn render_forward(w: &mut String, f: &ForwardStats, last: Option<i64>, now_unix: f64) {
    let cursor = f.cursor.load(Relaxed);
    header(
        w,
        "entsync_forward_cursor",
        "gauge",
        "The last access-change seq the forward receiver acknowledged.",
    );
    let _ = writeln!(w, "entsync_forward_cursor {cursor}");
    if let Some(last) = last {
        header(
            w,
            "entsync_forward_lag_seqs",
            "gauge",
            "Access changes recorded but not yet acknowledged by the forward receiver.",
        );
        let _ = writeln!(w, "entsync_forward_lag_seqs {}", (last - cursor).max(0));
    }
    let since = f.pending_since_micros.load(Relaxed);
    header(
        w,
        "entsync_forward_lag_seconds",
        "gauge",
        "How long the forwarder has been trying to deliver the oldest pending change (0: caught up).",
    );
    let lag = if since == 0 {
        0.0
    } else {
        (now_unix - since as f64 / 1e6).max(0.0)
    };
    let _ = writeln!(w, "entsync_forward_lag_seconds {lag}");
    header(
        w,
        "entsync_forward_delivered_total",
        "counter",
        "Access changes the forward receiver acknowledged since start.",
    );
    let _ = writeln!(
        w,
        "entsync_forward_delivered_total {}",
        f.delivered.load(Relaxed)
    );
    header(
        w,
        "entsync_forward_failures_total",
        "counter",
        "Failed forward attempts (connection errors, timeouts, non-2xx) since start.",
    );
    let _ = writeln!(
        w,
        "entsync_forward_failures_total {}",
        f.failures.load(Relaxed)
    );
}

fn render_conns(w: &mut String, c: &ConnStats) {
    let accepted = c.accepted.load(Relaxed);
    let closed = c.closed.load(Relaxed);
    header(
        w,
        "entsync_http_connections_accepted_total",
        "counter",
        "TCP connections accepted by the listener.",
    );
    let _ = writeln!(w, "entsync_http_connections_accepted_total {accepted}");
    header(
        w,
        "entsync_http_connections_open",
        "gauge",
        "Connections being served now.",
    );
    let _ = writeln!(
        w,
        "entsync_http_connections_open {}",
        accepted.saturating_sub(closed)
    );
    header(
        w,
        "entsync_http_connections_closed_total",
        "counter",
        "Connections closed by the server before the client, by reason (lingering: after an early answer such as 413).",
    );
    for (reason, n) in [
        ("header_timeout", &c.header_timeouts),
        ("idle_timeout", &c.idle_timeouts),
        ("shutdown", &c.closed_at_shutdown),
        ("lingering", &c.lingered),
    ] {
        let _ = writeln!(
            w,
            "entsync_http_connections_closed_total{{reason=\"{reason}\"}} {}",
            n.load(Relaxed)
        );
    }
    header(
        w,
        "entsync_http_accept_errors_total",
        "counter",
        "accept() failures other than per-connection ones (e.g. EMFILE); the listener backs off after each.",
    );
    let _ = writeln!(
        w,
        "entsync_http_accept_errors_total {}",
        c.accept_errors.load(Relaxed)
    );
    header(
        w,
        "entsync_http_connection_limit_waits_total",
        "counter",
        "Times the listener stopped accepting because --max-connections were being served.",
    );
    let _ = writeln!(
        w,
        "entsync_http_connection_limit_waits_total {}",
        c.at_capacity.load(Relaxed)
    );
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escapes_labels() {
        let m = Metrics::default();
        m.delivery(Outcome::Applied, Some("entitlement_grant.delivered"));
        m.delivery(Outcome::Malformed, None);
        m.delivery(Outcome::Unhandled, Some("odd\"type\\\n"));
        m.signature_failure("timestamp_too_old");
        m.observe(Route::Webhook, 200, Duration::from_micros(700));
        m.observe(Route::Webhook, 401, Duration::from_secs(20));
        m.applied_event_at(1_000);
        let conns = ConnStats::default();
        let forward = ForwardStats::default();
        forward.cursor.store(40, Relaxed);
        forward.failures.store(3, Relaxed);
        forward.pending_since_micros.store(1_004_000_000, Relaxed);
        let text = m.render(&Snapshot {
            quarantined: Some(3),
            last_change: Some(42),
            forward: Some(&forward),
            bad_rows: 1,
            grants: None,
            pending: 2,
            max_pending: 10,
            conns: &conns,
            now_unix: 1_010.0,
        });
        for line in [
            "entsync_changes_last_seq 42",
            "entsync_forward_cursor 40",
            "entsync_forward_lag_seqs 2",
            "entsync_forward_lag_seconds 6",
            "entsync_forward_failures_total 3",
            "entsync_deliveries_total{outcome=\"applied\"} 1",
            "entsync_deliveries_total{outcome=\"malformed\"} 1",
            "entsync_deliveries_by_type_total{type=\"entitlement_grant.delivered\"} 1",
            "entsync_deliveries_by_type_total{type=\"(unparsed)\"} 1",
            "entsync_deliveries_by_type_total{type=\"odd\\\"type\\\\\\n\"} 1",
            "entsync_signature_failures_total{kind=\"timestamp_too_old\"} 1",
            "entsync_signature_failures_total{kind=\"invalid_signature\"} 0",
            "entsync_http_request_duration_seconds_bucket{route=\"/webhooks/dodo\",le=\"0.0005\"} 0",
            "entsync_http_request_duration_seconds_bucket{route=\"/webhooks/dodo\",le=\"0.001\"} 1",
            "entsync_http_request_duration_seconds_bucket{route=\"/webhooks/dodo\",le=\"10\"} 1",
            "entsync_http_request_duration_seconds_bucket{route=\"/webhooks/dodo\",le=\"+Inf\"} 2",
            "entsync_http_request_duration_seconds_count{route=\"/webhooks/dodo\"} 2",
            "entsync_http_responses_total{route=\"/webhooks/dodo\",code=\"401\"} 1",
            "entsync_quarantine_size 3",
            "entsync_index_bad_rows_total 1",
            "entsync_newest_applied_event_timestamp_seconds 1000",
            "entsync_newest_applied_event_age_seconds 10",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("entsync_grants "));
    }
}
