//! `entsync serve`: the webhook receiver and the read API ([`entitlement_sync::http`])
//! on a TCP listener, with logs, signals and graceful shutdown.

use super::{open_engine, webhook_verifier, CliError, PolicyArgs};
use clap::Args;
use entitlement_sync::http::{Options, Receiver};
use std::future::IntoFuture;
use std::path::Path;
use std::process::ExitCode;
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
    /// Seconds to wait for in-flight requests after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
    #[command(flatten)]
    pub policy: PolicyArgs,
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

/// `entsync serve`.
pub fn run(db: &Path, args: ServeArgs) -> Result<ExitCode, CliError> {
    init_logging();
    let verifier = webhook_verifier(&args.secrets)?;
    let api_token = match std::env::var("ENTSYNC_API_TOKEN") {
        Ok(t) if t.trim().is_empty() => {
            tracing::warn!("ENTSYNC_API_TOKEN is set but empty: the read API stays open");
            None
        }
        Ok(t) => Some(t),
        Err(_) => None,
    };
    let engine = open_engine(db, args.policy.policy())?;
    // Load the access index now, so that the first requests do not pay for it.
    let grants = engine.grant_count();
    // Deliveries are stored by the engine's writer thread; the blocking pool only serves
    // the SQLite reads of /v1/customers, /v1/credits and /metrics.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("entsync")
        .build()
        .map_err(CliError::io("cannot start the runtime"))?;
    let options = Options {
        max_body: args.max_body,
        api_token,
    };
    let protected = options.api_token.is_some();
    let receiver = Receiver::with_options(engine, verifier, options);
    let code = runtime.block_on(serve(
        receiver,
        &args.listen,
        (db, grants, protected),
        Duration::from_secs(args.shutdown_timeout),
    ));
    // In-flight blocking work (a commit) finishes before the process exits.
    runtime.shutdown_timeout(Duration::from_secs(args.shutdown_timeout));
    code
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
    (db, grants, protected): (&Path, usize, bool),
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
        grants,
        read_api_token = protected,
        "entsync serve ready"
    );
    // The machine-readable line scripts and tests wait for (stdout is line-buffered).
    println!("listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = receiver.router::<()>();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "shutting down: draining in-flight requests");
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx;
    let deadline = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server.into_future() => match result {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(CliError::Server(e)),
        },
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
    use super::parse_size;

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
