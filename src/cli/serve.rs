//! `entsync serve`: the webhook receiver and the read API ([`entitlement_sync::http`])
//! on a TCP listener, with logs, signals and graceful shutdown.

use super::{open_engine, webhook_verifier, CliError, PolicyArgs};
use clap::Args;
use entitlement_sync::http::{Limits, Options, Receiver};
use entitlement_sync::store::Location;
use entitlement_sync::Engine;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the bound address is
    /// printed as `listening on http://ADDR`).
    #[arg(long, env = "ENTSYNC_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: String,
    /// Largest webhook body accepted, in bytes (suffixes k/KiB, m/MiB); larger: 413.
    #[arg(long, default_value = "256KiB", value_parser = parse_size, value_name = "BYTES")]
    pub max_body: usize,
    /// Webhook secret (whsec_...); repeat for several. Default: $DODO_PAYMENTS_WEBHOOK_SECRET
    /// (several separated by spaces or commas). The environment is the safer place:
    /// command lines are visible to other users.
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Seconds to wait for in-flight requests after SIGTERM/SIGINT before exiting anyway
    /// (idle connections and ones that sent no complete request are closed at once).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
    /// A request's headers must arrive within this (from the connection's accept, or
    /// from the request's first byte on a kept-alive connection); else it is closed.
    /// Plain seconds or with a unit: 10, 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// A webhook body must arrive within this once its headers did; else 408.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,
    /// Kept-alive connections with no request and no traffic for this long are closed.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog (not accepted)
    /// until one closes. At least 2: streams and long polls of the change feed may hold
    /// at most half of them, so that webhooks always have the rest.
    #[arg(long, default_value_t = 1024, value_parser = parse_max_connections, value_name = "N")]
    pub max_connections: u32,
    /// Deliveries waiting for their commit at once; past it a delivery gets 503 with
    /// `Retry-After: 1` (nothing stored), so that Dodo retries.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000_000), value_name = "N")]
    pub max_pending: u32,
    /// Post every access change to this URL as a Standard Webhooks delivery
    /// (`webhook-id: chg_<seq>`), in seq order, at least once, signed with
    /// $ENTSYNC_FORWARD_SECRET (a whsec_... secret). Plain http:// is for loopback hosts.
    #[arg(long, env = "ENTSYNC_FORWARD_URL", value_name = "URL")]
    pub forward_url: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub reconcile: super::reconcile::ServeArgs,
}

/// The forwarder's settings from `--forward-url` and `ENTSYNC_FORWARD_SECRET`.
fn forward_settings(url: Option<&str>) -> Result<Option<super::forward::Forward>, CliError> {
    let Some(url) = url else {
        return Ok(None);
    };
    let url = reqwest::Url::parse(url)
        .map_err(|e| CliError::usage(format_args!("--forward-url {url:?}: {e}")))?;
    let loopback = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(CliError::usage(format_args!(
                "--forward-url {url}: plain http:// is accepted for loopback hosts only (changes carry customer ids); use https://"
            )))
        }
        other => {
            return Err(CliError::usage(format_args!(
                "--forward-url {url}: unsupported scheme {other:?}"
            )))
        }
    }
    let secret = std::env::var("ENTSYNC_FORWARD_SECRET").map_err(|_| {
        CliError::usage("--forward-url needs ENTSYNC_FORWARD_SECRET (a whsec_... secret)")
    })?;
    let secret = entitlement_sync::verify::Secret::parse(secret.trim())
        .map_err(|e| CliError::usage(format_args!("ENTSYNC_FORWARD_SECRET: {e}")))?;
    Ok(Some(super::forward::Forward { url, secret }))
}

/// Parses `--max-connections`: 2 to [`MAX_CONNECTIONS_LIMIT`]. One is refused: the
/// change feed's waiting readers get at most half the slots (at least one), so with a
/// single slot one stream would hold every webhook off.
///
/// [`MAX_CONNECTIONS_LIMIT`]: entitlement_sync::http::MAX_CONNECTIONS_LIMIT
fn parse_max_connections(s: &str) -> Result<u32, String> {
    let limit = entitlement_sync::http::MAX_CONNECTIONS_LIMIT;
    match s.trim().parse::<u32>() {
        Ok(n) if (2..=limit).contains(&(n as usize)) => Ok(n),
        Ok(_) | Err(_) => Err(format!(
            "must be a number of connections from 2 to {limit}: at least 2, since streams and \
             long polls of the change feed may hold half of them and webhooks need the rest"
        )),
    }
}

/// Parses `262144`, `256k`, `256KiB`, `1m`, `1MiB`.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: usize = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 262144, 256KiB, 1MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (use k or m)")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} is not a usable body limit")),
        Some(v) => Ok(v),
    }
}

/// Parses `10`, `10s`, `500ms`, `1m`, `1h` (a whole number and an optional unit; plain
/// numbers are seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 10, 10s, 500ms, 1m)"))?;
    let ms_per = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1000,
        "ms" => 1,
        "m" | "min" | "mins" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ))
        }
    };
    match n.checked_mul(ms_per) {
        Some(0) | None => Err(format!("{s:?} is not a usable timeout")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// The read API's token from `ENTSYNC_API_TOKEN`: `None` when it is not set. A value no
/// client could ever match is a usage error rather than a server that starts open or
/// locked: not UTF-8, empty (set by mistake, e.g. from a file that is missing: starting
/// with the read API open would be the unsafe reading), with whitespace at either end
/// (a trailing newline from a file: header values arrive trimmed, so no request would
/// match), or with a control character (no header value can carry one).
fn api_token(var: Result<String, std::env::VarError>) -> Result<Option<String>, CliError> {
    const VAR: &str = "ENTSYNC_API_TOKEN";
    let token = match var {
        Ok(t) => t,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(CliError::usage(format_args!("{VAR} is not UTF-8")))
        }
    };
    if token.trim().is_empty() {
        return Err(CliError::usage(format_args!(
            "{VAR} is set but empty; set a token, or unset it to leave the read API open"
        )));
    }
    if token.trim() != token {
        return Err(CliError::usage(format_args!(
            "{VAR} has whitespace at its start or end (a trailing newline from a file?): \
             clients' Authorization headers arrive trimmed and would never match it; remove it"
        )));
    }
    if token.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CliError::usage(format_args!(
            "{VAR} contains a control character, which no Authorization header can carry"
        )));
    }
    Ok(Some(token))
}

/// Whether listening on `addr` without a token exposes the read API beyond this host.
fn exposed(addr: std::net::SocketAddr, protected: bool) -> bool {
    !protected && !addr.ip().to_canonical().is_loopback()
}

/// `entsync serve`.
pub fn run(db: &Location, args: ServeArgs) -> Result<ExitCode, CliError> {
    init_logging();
    let verifier = webhook_verifier(&args.secrets)?;
    let api_token = api_token(std::env::var("ENTSYNC_API_TOKEN"))?;
    let forward = forward_settings(args.forward_url.as_deref())?;
    let engine = open_engine(db, Some(args.policy.policy()))?;
    // Load the access index in the background: `serve` listens at once and answers from
    // the store until the index is loaded (`/healthz` says `"index": "warming"`).
    let warming = std::time::Instant::now();
    engine
        .warm_up()
        .map_err(CliError::store("cannot start loading the access index"))?;
    // Deliveries are stored by the engine's writer thread; the blocking pool only serves
    // the SQLite reads of /v1/customers, /v1/credits and /metrics.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("entsync")
        .build()
        .map_err(CliError::io("cannot start the runtime"))?;
    let forward_stats = forward
        .as_ref()
        .map(|_| Arc::new(entitlement_sync::http::ForwardStats::default()));
    let options = Options {
        max_body: args.max_body,
        api_token,
        body_timeout: args.body_timeout,
        max_pending: args.max_pending as usize,
        forward: forward_stats.clone(),
        // Streams and long polls hold their connections: never all of them (at least 2
        // connections, so at least 1 for the webhooks).
        max_waiting: (args.max_connections as usize / 2).max(1),
    };
    let limits = Limits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections as usize,
    };
    let protected = options.api_token.is_some();
    let commits = Arc::new(tokio::sync::Notify::new());
    {
        let commits = Arc::downgrade(&commits);
        engine.on_commit(move || {
            // One waiter: a permit kept while it is busy wakes its next wait at once.
            if let Some(c) = commits.upgrade() {
                c.notify_one();
            }
        });
    }
    runtime.spawn(advance_time(engine.clone(), Arc::clone(&commits)));
    runtime.spawn(report_warm(engine.clone(), warming));
    if let (Some(forward), Some(stats)) = (forward, forward_stats) {
        let wake = Arc::new(tokio::sync::Notify::new());
        {
            let wake = Arc::downgrade(&wake);
            engine.on_commit(move || {
                if let Some(w) = wake.upgrade() {
                    w.notify_waiters();
                }
            });
        }
        runtime.spawn(super::forward::run(engine.clone(), forward, stats, wake));
    }
    let receiver = Receiver::with_options(engine, verifier, options);
    {
        let _runtime = runtime.enter();
        let policy = args.policy.policy();
        if let Some(status) = super::reconcile::start(receiver.engine(), &args.reconcile, policy)? {
            receiver.add_metrics(move || status.render());
        }
    }
    let code = runtime.block_on(serve(
        receiver,
        &args.listen,
        limits,
        (db, protected),
        Duration::from_secs(args.shutdown_timeout),
    ));
    // In-flight blocking work (a commit) finishes before the process exits.
    runtime.shutdown_timeout(Duration::from_secs(args.shutdown_timeout));
    code
}

/// Logs once the access index is loaded.
async fn report_warm(engine: Engine, started: std::time::Instant) {
    while engine.index_state() != entitlement_sync::IndexState::Ready {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = engine.clone();
    let grants = tokio::task::spawn_blocking(move || e.grant_count())
        .await
        .unwrap_or_default();
    tracing::info!(
        grants,
        load_ms = started.elapsed().as_millis() as u64,
        "access index loaded: answering from memory"
    );
}

/// Records the access changes time alone makes (license keys expiring, on-hold graces
/// ending) when they are due: sleeps until the store's next due instant, woken early by
/// commits (which may bring an earlier one), and looks again at least every second for
/// other processes' commits. Never a scan: one indexed `MIN` per wake-up.
///
/// Its first pass writes whatever the store's state asks, at once: serve's policy if it
/// differs from the recorded one (every pair re-evaluated), a store a rebuild or a
/// migration flagged for evaluation, and what time changed while no instance ran, so
/// that the feed agrees with the answers from the start, not from the next delivery.
///
/// While the writer's last write failed it writes on every pass (at least once a
/// second): a store that recovers is seen to, without waiting for traffic that a load
/// balancer reading `/healthz` would no longer send.
async fn advance_time(engine: Engine, commits: Arc<tokio::sync::Notify>) {
    const LOOK_AGAIN: Duration = Duration::from_secs(1);
    let mut first = true;
    loop {
        let woken = commits.notified();
        let e = engine.clone();
        let settle = first;
        let next = tokio::task::spawn_blocking(move || {
            let now = chrono::Utc::now();
            // While the last write failed, each pass writes (the change counter, synced):
            // the first that succeeds clears the failure, so that /healthz recovers
            // with the store even when no delivery arrives to show it.
            let failing = e.write_failure().is_some();
            if settle || failing || e.next_due()?.is_some_and(|due| due <= now) {
                e.advance(now)?;
            }
            e.next_due()
        })
        .await;
        // A first pass that failed is tried again on the next.
        first &= !matches!(next, Ok(Ok(_)));
        let sleep = match next {
            Ok(Ok(Some(due))) => (due - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(LOOK_AGAIN),
            Ok(Ok(None)) => LOOK_AGAIN,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recording time-driven access changes failed; retrying");
                Duration::from_secs(1)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the time-driven change task failed; retrying");
                Duration::from_secs(1)
            }
        };
        // Past instants are recorded at their own time: a late wake-up loses nothing.
        let _ = tokio::time::timeout(sleep, woken).await;
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(
    receiver: Receiver,
    listen: &str,
    limits: Limits,
    (db, protected): (&Location, bool),
    grace: Duration,
) -> Result<ExitCode, CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(CliError::io(format!("cannot listen on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(CliError::io("cannot read the bound address"))?;
    tracing::info!(
        %addr,
        db = %db.display(),
        index = "warming",
        read_api_token = protected,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        max_connections = limits.max_connections,
        "entsync serve ready"
    );
    if exposed(addr, protected) {
        tracing::warn!(
            %addr,
            "listening beyond loopback without ENTSYNC_API_TOKEN: the read API and /metrics are open to anyone who can reach this address"
        );
    }
    // The machine-readable line scripts and tests wait for (stdout is line-buffered).
    println!("listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = receiver.serve(listener, limits, async move {
        let signal = shutdown_signal().await;
        tracing::info!(
            signal,
            "shutting down: closing idle connections, draining in-flight requests"
        );
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    let deadline = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        () = deadline => {
            tracing::warn!(seconds = grace.as_secs(), "requests still in flight after the shutdown timeout; exiting (unacknowledged deliveries will be retried by the sender)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGTERM or SIGINT; names the signal.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::{api_token, exposed, parse_duration, parse_max_connections, parse_size};
    use std::time::Duration;

    #[test]
    fn at_least_two_connections() {
        for (input, expected) in [
            ("2", Some(2)),
            ("1024", Some(1024)),
            ("1048576", Some(1_048_576)),
            ("1", None),
            ("0", None),
            ("1048577", None),
            ("-2", None),
            ("x", None),
        ] {
            assert_eq!(parse_max_connections(input).ok(), expected, "{input:?}");
        }
        let message = parse_max_connections("1").expect_err("one connection");
        assert!(message.contains("at least 2"), "{message}");
    }

    #[test]
    fn api_tokens_no_client_could_match_are_refused() {
        use std::env::VarError;
        let not_utf8 = || {
            use std::os::unix::ffi::OsStringExt;
            VarError::NotUnicode(std::ffi::OsString::from_vec(b"tok\xffen".to_vec()))
        };
        for (var, expected) in [
            (Err(VarError::NotPresent), Ok(None)),
            (Ok("s3cret-token"), Ok(Some("s3cret-token"))),
            (Ok("two\tparts"), Ok(Some("two\tparts"))),
            (Err(not_utf8()), Err("not UTF-8")),
            (Ok(""), Err("empty")),
            (Ok("  "), Err("empty")),
            (Ok("s3cret\n"), Err("whitespace")),
            (Ok(" s3cret"), Err("whitespace")),
            (Ok("s3c\u{7}ret"), Err("control character")),
        ] {
            let shown = format!("{var:?}");
            let got = api_token(var.map(str::to_string)).map_err(|e| e.to_string());
            match expected {
                Ok(token) => assert_eq!(got, Ok(token.map(str::to_string)), "{shown}"),
                Err(needle) => {
                    let message = got.expect_err(&shown);
                    assert!(
                        message.contains(needle) && message.contains("ENTSYNC_API_TOKEN"),
                        "{shown}: {message}"
                    );
                }
            }
        }
    }

    #[test]
    fn durations() {
        for (input, expected) in [
            ("10", Some(Duration::from_secs(10))),
            ("10s", Some(Duration::from_secs(10))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1m", Some(Duration::from_secs(60))),
            ("2 min", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("0", None),
            ("0s", None),
            ("1.5s", None),
            ("-1", None),
            ("10x", None),
            ("", None),
            ("99999999999999999999h", None),
        ] {
            assert_eq!(parse_duration(input).ok(), expected, "{input:?}");
        }
    }

    #[test]
    fn warns_beyond_loopback_without_a_token() {
        for (addr, protected, expected) in [
            ("127.0.0.1:8787", false, false),
            ("127.1.2.3:8787", false, false),
            ("[::1]:8787", false, false),
            ("[::ffff:127.0.0.1]:8787", false, false),
            ("0.0.0.0:8787", false, true),
            ("[::]:8787", false, true),
            ("192.168.1.10:8787", false, true),
            ("0.0.0.0:8787", true, false),
        ] {
            let addr = addr.parse().expect("test address");
            assert_eq!(exposed(addr, protected), expected, "{addr} {protected}");
        }
    }

    #[test]
    fn sizes() {
        for (input, expected) in [
            ("262144", Ok(262_144)),
            ("256KiB", Ok(262_144)),
            ("256k", Ok(262_144)),
            ("1MiB", Ok(1_048_576)),
            ("1 m", Ok(1_048_576)),
            ("0", Err(())),
            ("12x", Err(())),
            ("", Err(())),
            ("99999999999999999999m", Err(())),
        ] {
            assert_eq!(parse_size(input).map_err(|_| ()), expected, "{input:?}");
        }
    }
}
