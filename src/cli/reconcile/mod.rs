//! `entsync reconcile`: after missed webhooks, fetch the current state from Dodo's REST
//! API and feed it through the same pipeline ([`sweep`]), with the API client in
//! [`client`](mod@client) and the pure rules in [`entitlement_sync::reconcile`]. Also the background
//! run of `serve --reconcile-every` and its `/metrics` lines.

pub mod client;
pub mod sweep;

use super::{open_engine_over, print_json, CliError, PolicyArgs};
use clap::{Args, ValueEnum};
use client::{ApiKey, Client, Config};
use entitlement_sync::reconcile::checkpoint::Checkpoint;
use entitlement_sync::reconcile::{self, Summary, LIVE_URL, MAX_PAGE_SIZE, TEST_URL};
use entitlement_sync::store::Location;
use entitlement_sync::Engine;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable holding the API key.
pub const KEY_ENV: &str = "DODO_PAYMENTS_API_KEY";

/// Dodo's two modes, each with its own host, data and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    /// `https://live.dodopayments.com`
    Live,
    /// `https://test.dodopayments.com`
    Test,
}

impl Environment {
    fn url(self) -> &'static str {
        match self {
            Environment::Live => LIVE_URL,
            Environment::Test => TEST_URL,
        }
    }
}

/// How to reach the API: shared by `reconcile` and `serve --reconcile-every`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Client-side rate limit, requests per second (Dodo's lowest tier allows 240 a
    /// minute).
    #[arg(long = "rate-limit", default_value_t = reconcile::DEFAULT_RATE, value_parser = parse_rate, value_name = "PER_SECOND")]
    pub rate: f64,
    /// Items asked per page (at most 100).
    #[arg(long, default_value_t = MAX_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE_SIZE)), hide = true)]
    pub page_size: u32,
}

/// Arguments of `reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Dodo API key (a read-only key suffices). Default: $DODO_PAYMENTS_API_KEY, the
    /// safer place: command lines are visible to other users.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Dodo mode: live or test (its host and its keys).
    #[arg(long, value_enum, default_value = "live")]
    pub environment: Environment,
    /// API base URL instead of the environment's (plain http:// for loopback hosts only).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Reconcile this customer only.
    #[arg(long, value_name = "CUSTOMER")]
    pub customer: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Sweep everything, even when an interrupted sweep of the last 24 hours could be
    /// resumed from its checkpoint.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// The `serve` flags of the background reconcile (their group has its own name: clap
/// names a group after its struct, and `serve`'s own flags are a `ServeArgs` too).
#[derive(Debug, Clone, Args)]
#[group(id = "ReconcileServeArgs")]
pub struct ServeArgs {
    /// Run `reconcile` every DURATION (e.g. 15m, 1h) in the background, when
    /// DODO_PAYMENTS_API_KEY is set; the first run starts at once.
    #[arg(long, value_parser = parse_every, value_name = "DURATION")]
    pub reconcile_every: Option<Duration>,
    /// The background reconcile's Dodo mode.
    #[arg(
        long,
        value_enum,
        default_value = "live",
        env = "ENTSYNC_RECONCILE_ENVIRONMENT"
    )]
    pub reconcile_environment: Environment,
    /// The background reconcile's API base URL instead of the mode's.
    #[arg(long, env = "ENTSYNC_RECONCILE_BASE_URL", value_name = "URL")]
    pub reconcile_base_url: Option<String>,
    /// The background reconcile's rate limit, requests per second.
    #[arg(long, default_value_t = reconcile::DEFAULT_RATE, value_parser = parse_rate, value_name = "PER_SECOND")]
    pub reconcile_rate_limit: f64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (requests per second, e.g. 4 or 0.5)"
        )),
    }
}

/// Parses `90`, `90s`, `15m`, `1h`, `1d` (a whole number and an optional unit; plain
/// numbers are seconds).
fn parse_every(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 15m, 1h)"))?;
    let secs = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use s, m, h or d)"
            ))
        }
    };
    match n.checked_mul(secs) {
        Some(0) | None => Err(format!("{s:?} is not a usable interval")),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// The key: `--api-key`, else `DODO_PAYMENTS_API_KEY`.
fn api_key(flag: Option<&str>) -> Result<Option<ApiKey>, CliError> {
    if let Some(k) = flag {
        return ApiKey::new(k)
            .map(Some)
            .ok_or_else(|| CliError::usage("--api-key is empty"));
    }
    match std::env::var(KEY_ENV) {
        Ok(v) => Ok(ApiKey::new(&v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(CliError::usage(format_args!("{KEY_ENV} is not UTF-8")))
        }
    }
}

fn client(
    base_url: Option<&str>,
    environment: Environment,
    key: ApiKey,
    api: &ApiArgs,
) -> Result<Client, CliError> {
    let base = reconcile::check_base_url(base_url.unwrap_or(environment.url()))
        .map_err(CliError::Usage)?;
    let mut config = Config::new(base, key);
    config.rate = api.rate;
    config.page_size = api.page_size;
    Client::new(config).map_err(CliError::Usage)
}

/// A progress bar on a terminal (stderr).
struct Bar(indicatif::ProgressBar);

impl sweep::Progress for Bar {
    fn update(&self, what: &str, s: &Summary, requests: u64) {
        self.0.set_message(format!(
            "{what}: fetched {} (applied {}, unchanged {}, rejected {}), {} errors, {requests} requests",
            s.fetched, s.applied, s.unchanged, s.rejected, s.errors
        ));
        self.0.tick();
    }

    fn resumed(&self, from: &Checkpoint) {
        self.0.suspend(|| {
            eprintln!("entsync reconcile: resuming {from} (--restart sweeps everything)");
        });
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// `entsync reconcile`.
pub fn run(db: &Location, args: ReconcileArgs) -> Result<ExitCode, CliError> {
    init_logging();
    let key = api_key(args.api_key.as_deref())?.ok_or_else(|| {
        CliError::usage(format_args!(
            "no API key: create a read-only key in the Dodo dashboard (Developer > API Keys) \
             and set {KEY_ENV}, or pass --api-key"
        ))
    })?;
    if args
        .customer
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        return Err(CliError::usage("--customer is empty"));
    }
    let client = client(args.base_url.as_deref(), args.environment, key, &args.api)?;
    // A store `serve` keeps: the flags not given take the policy it recorded.
    let engine = open_engine_over(db, &args.policy)?;
    let plan = sweep::Plan {
        customer: args.customer.clone(),
        policy: engine.policy().clone(),
        resume: !args.restart,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(CliError::io("cannot start the runtime"))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message("reconcile: starting");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = Bar(bar);
    let started = Instant::now();
    let report = runtime.block_on(sweep::run(
        &engine,
        &client,
        &plan,
        &progress,
        chrono::Utc::now(),
    ));
    progress.0.finish_and_clear();
    if let Some(message) = report.refused {
        return Err(CliError::Refused(message));
    }
    let s = report.summary;
    if args.json {
        print_json(&s)?;
    } else {
        println!(
            "fetched {}: applied {}, unchanged {}, rejected {}; access changed for {} pairs; {} errors ({} requests, {:.1} s)",
            s.fetched,
            s.applied,
            s.unchanged,
            s.rejected,
            s.access_changed,
            s.errors,
            report.requests,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if s.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The last background run, for `/metrics`.
#[derive(Debug, Default)]
pub struct Status {
    last: Mutex<Option<LastRun>>,
    runs: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone)]
struct LastRun {
    /// Unix seconds of its end.
    finished: f64,
    seconds: f64,
    outcome: &'static str,
    summary: Summary,
    requests: u64,
    /// Responses whose `Date` was too far from the local clock to be used.
    skewed_dates: u64,
}

impl Status {
    /// The Prometheus lines.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut w = String::new();
        let runs = self.runs.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            w,
            "# HELP entsync_reconcile_runs_total Background reconcile runs finished since start."
        );
        let _ = writeln!(w, "# TYPE entsync_reconcile_runs_total counter");
        let _ = writeln!(w, "entsync_reconcile_runs_total {runs}");
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(last) = last else {
            return w;
        };
        let gauge = |w: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(w, "# HELP {name} {help}");
            let _ = writeln!(w, "# TYPE {name} gauge");
            let _ = writeln!(w, "{name} {value}");
        };
        gauge(
            &mut w,
            "entsync_reconcile_last_run_timestamp_seconds",
            "When the last reconcile run ended (unix seconds).",
            last.finished.to_string(),
        );
        gauge(
            &mut w,
            "entsync_reconcile_last_run_duration_seconds",
            "How long the last reconcile run took.",
            last.seconds.to_string(),
        );
        let _ = writeln!(w, "# HELP entsync_reconcile_last_run_outcome The last reconcile run's outcome (1 for the one it had: ok, errors, refused).");
        let _ = writeln!(w, "# TYPE entsync_reconcile_last_run_outcome gauge");
        for o in ["ok", "errors", "refused"] {
            let _ = writeln!(
                w,
                "entsync_reconcile_last_run_outcome{{outcome=\"{o}\"}} {}",
                u8::from(o == last.outcome)
            );
        }
        let _ = writeln!(w, "# HELP entsync_reconcile_last_run_objects The last reconcile run's counts (its --json summary).");
        let _ = writeln!(w, "# TYPE entsync_reconcile_last_run_objects gauge");
        let s = last.summary;
        for (name, n) in [
            ("fetched", s.fetched),
            ("applied", s.applied),
            ("unchanged", s.unchanged),
            ("rejected", s.rejected),
            ("access_changed", s.access_changed),
            ("errors", s.errors),
        ] {
            let _ = writeln!(
                w,
                "entsync_reconcile_last_run_objects{{count=\"{name}\"}} {n}"
            );
        }
        gauge(
            &mut w,
            "entsync_reconcile_last_run_requests",
            "Requests the last reconcile run sent to Dodo's API.",
            last.requests.to_string(),
        );
        gauge(
            &mut w,
            "entsync_reconcile_last_run_skewed_dates",
            "Responses of the last reconcile run whose Date was more than 5 minutes from the local clock (their objects were versioned by the local clock).",
            last.skewed_dates.to_string(),
        );
        w
    }
}

/// Starts the background reconcile of `serve --reconcile-every` on the current tokio
/// runtime, when an interval and a key are configured; returns its status for
/// `/metrics`.
///
/// # Errors
///
/// A base URL that is not usable, or a key that is not UTF-8 (usage, exit 2).
pub fn start(
    engine: &Engine,
    args: &ServeArgs,
    policy: entitlement_sync::Policy,
) -> Result<Option<Arc<Status>>, CliError> {
    let Some(every) = args.reconcile_every else {
        return Ok(None);
    };
    let Some(key) = api_key(None)? else {
        tracing::warn!("--reconcile-every is set but {KEY_ENV} is not: no background reconcile");
        return Ok(None);
    };
    let client = client(
        args.reconcile_base_url.as_deref(),
        args.reconcile_environment,
        key,
        &ApiArgs {
            rate: args.reconcile_rate_limit,
            page_size: MAX_PAGE_SIZE,
        },
    )?;
    let status = Arc::new(Status::default());
    let engine = engine.clone();
    let plan = sweep::Plan {
        customer: None,
        policy,
        resume: true,
    };
    let shared = Arc::clone(&status);
    // On a store several instances share, one of them sweeps at a time.
    let lease = Arc::new(Mutex::new(
        engine
            .lease("reconcile")
            .map_err(CliError::store("cannot set up the reconcile lease"))?,
    ));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let lease = Arc::clone(&lease);
            let held = tokio::task::spawn_blocking(move || {
                lease.lock().unwrap_or_else(|p| p.into_inner()).held()
            })
            .await
            .unwrap_or(false);
            if !held {
                tracing::debug!("reconcile: another instance sweeps");
                continue;
            }
            let started = Instant::now();
            let before = client.requests();
            let skewed_before = client.skewed_dates();
            let report =
                sweep::run(&engine, &client, &plan, &sweep::Quiet, chrono::Utc::now()).await;
            let outcome = if report.refused.is_some() {
                "refused"
            } else if report.summary.errors > 0 {
                "errors"
            } else {
                "ok"
            };
            let s = report.summary;
            let skewed_dates = report.skewed_dates - skewed_before;
            if let Some(from) = &report.resumed {
                tracing::info!(%from, "reconcile: resumed an interrupted sweep");
            }
            if skewed_dates > 0 {
                tracing::warn!(
                    responses = skewed_dates,
                    "reconcile: the API's Date was more than 5 minutes from the local clock; its objects were versioned by the local clock"
                );
            }
            match &report.refused {
                Some(m) => tracing::error!(error = %m, "reconcile: the API refused the key"),
                None => tracing::info!(
                    fetched = s.fetched,
                    applied = s.applied,
                    unchanged = s.unchanged,
                    rejected = s.rejected,
                    access_changed = s.access_changed,
                    errors = s.errors,
                    "reconcile run finished"
                ),
            }
            let now = chrono::Utc::now();
            *shared.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastRun {
                finished: now.timestamp_micros() as f64 / 1e6,
                seconds: started.elapsed().as_secs_f64(),
                outcome,
                summary: s,
                requests: report.requests - before,
                skewed_dates,
            });
            shared
                .runs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    tracing::info!(every_s = every.as_secs(), "background reconcile on");
    Ok(Some(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        let s = Duration::from_secs;
        for (input, expected) in [
            ("15m", Some(s(900))),
            ("1h", Some(s(3600))),
            ("90", Some(s(90))),
            ("30s", Some(s(30))),
            ("1d", Some(s(86_400))),
            ("0m", None),
            ("1.5h", None),
            ("5x", None),
            ("", None),
        ] {
            assert_eq!(parse_every(input).ok(), expected, "{input:?}");
        }
    }

    #[test]
    fn metrics_lines() {
        let status = Status::default();
        assert!(status.render().contains("entsync_reconcile_runs_total 0"));
        *status.last.lock().expect("lock") = Some(LastRun {
            finished: 1.0,
            seconds: 2.0,
            outcome: "errors",
            summary: Summary {
                fetched: 3,
                errors: 1,
                ..Summary::default()
            },
            requests: 7,
            skewed_dates: 2,
        });
        let text = status.render();
        for line in [
            "entsync_reconcile_last_run_outcome{outcome=\"errors\"} 1",
            "entsync_reconcile_last_run_outcome{outcome=\"ok\"} 0",
            "entsync_reconcile_last_run_objects{count=\"fetched\"} 3",
            "entsync_reconcile_last_run_requests 7",
            "entsync_reconcile_last_run_skewed_dates 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
