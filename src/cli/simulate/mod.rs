//! `entsync simulate`: realistic signed Dodo traffic against a running receiver, with
//! duplicates and reordering; reports throughput and latency, and with `--verify` checks
//! the server's answers against the answers the lifecycles imply.

mod model;

use super::{webhook_secrets, CliError};
use clap::Args;
use entitlement_sync::verify::{sign, Secret, Verifier};
use model::{generate, Planned, Rng};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The receiver's base URL.
    #[arg(long, env = "ENTSYNC_URL", default_value = "http://127.0.0.1:8787")]
    pub url: String,
    /// The secret to sign with (whsec_...); default: the first of
    /// $DODO_PAYMENTS_WEBHOOK_SECRET (several separated by spaces or commas).
    #[arg(long)]
    pub secret: Option<String>,
    /// Customers to simulate (each with 1 to 3 lifecycles, some with credits).
    #[arg(long, default_value_t = 200)]
    pub customers: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Extra deliveries re-sent with the same webhook id, as a share of the unique ones.
    #[arg(long, default_value_t = 0.2)]
    pub duplicates: f64,
    /// Seed of the lifecycles, ids and order (default: the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The instant (unix seconds) the lifecycles are generated relative to (default:
    /// now). With the same seed and epoch, a run re-sends exactly the same deliveries.
    #[arg(long, allow_hyphen_values = true)]
    pub epoch: Option<i64>,
    /// After sending, GET every pair's access answer (and every credit balance) and
    /// compare with what the lifecycles imply under the default policy.
    #[arg(long)]
    pub verify: bool,
    /// Bearer token for the read API (when the server has ENTSYNC_API_TOKEN).
    #[arg(long, env = "ENTSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Append the webhook id of every delivery answered 2xx to this file, as each
    /// answer arrives (a crash test reads it to know what was acknowledged).
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one send reported.
struct Sent {
    latency: Duration,
    status: Option<u16>,
    outcome: Option<String>,
}

#[derive(Serialize, Default)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut micros: Vec<u64>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let at = |q: f64| super::bench::nearest_rank(&micros, q) as f64 / 1000.0;
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

#[derive(Serialize)]
struct Mismatch {
    what: String,
    expected: String,
    got: String,
}

#[derive(Serialize)]
struct VerifyReport {
    access_checked: usize,
    balances_checked: usize,
    mismatches: usize,
    errors: usize,
    examples: Vec<Mismatch>,
    seconds: f64,
    requests_per_sec: f64,
}

#[derive(Serialize)]
struct Report {
    url: String,
    seed: u64,
    epoch: i64,
    customers: usize,
    pairs: usize,
    unique: usize,
    duplicates: usize,
    deliveries: usize,
    concurrency: usize,
    seconds: f64,
    deliveries_per_sec: f64,
    latency_ms: Latency,
    non_2xx: usize,
    transport_errors: usize,
    status_codes: BTreeMap<String, usize>,
    outcomes: BTreeMap<String, usize>,
    /// Unique deliveries by event type.
    event_types: BTreeMap<&'static str, usize>,
    /// A few pairs to try with `entsync check`, with the answer each should give.
    try_pairs: Vec<TryPair>,
    verify: Option<VerifyReport>,
}

#[derive(Serialize)]
struct TryPair {
    customer_id: String,
    entitlement_id: String,
    allowed: bool,
    status: &'static str,
    reason: Option<String>,
}

/// `entsync simulate`.
///
/// Exit 1 (a result, not an error) when a delivery got no 2xx or `--verify` found a
/// mismatch; the report says which.
pub fn run(args: SimulateArgs) -> Result<ExitCode, CliError> {
    // Signs with the first secret (the newest, during a rotation).
    let secret: Secret = webhook_secrets(args.secret.as_slice())?
        .into_iter()
        .next()
        .ok_or(CliError::NoSecret)?;
    // Signing and verifying agree (a self-check of the secret's encoding).
    if Verifier::new(vec![secret.clone()])
        .verify(
            &entitlement_sync::verify::WebhookHeaders {
                id: Some("msg_self_check"),
                timestamp: Some("1"),
                signature: Some(&sign(&secret, "msg_self_check", 1, b"{}")),
            },
            b"{}",
            1,
        )
        .is_err()
    {
        return Err(CliError::usage("the secret does not round-trip"));
    }
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    if !(0.0..=10.0).contains(&args.duplicates) {
        return Err(CliError::usage("--duplicates must be between 0 and 10"));
    }
    let base = args.url.trim_end_matches('/').to_string();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(CliError::usage(format_args!(
            "--url {base:?} is not an http:// URL"
        )));
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let epoch_unix = args.epoch.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let Some(epoch) = chrono::DateTime::from_timestamp(epoch_unix, 0) else {
        return Err(CliError::usage(format_args!(
            "--epoch {epoch_unix} is out of range"
        )));
    };

    let mut rng = Rng::new(seed);
    let plan = generate(&mut rng, args.customers, epoch);
    let unique = plan.deliveries.len();
    let mut event_types: BTreeMap<&'static str, usize> = BTreeMap::new();
    for d in &plan.deliveries {
        *event_types.entry(d.event_type).or_default() += 1;
    }
    let mut order: Vec<usize> = (0..unique).collect();
    let dups = (unique as f64 * args.duplicates).round() as usize;
    if unique > 0 {
        for _ in 0..dups {
            order.push(rng.below(unique));
        }
    }
    rng.shuffle(&mut order);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::io("cannot start the runtime"))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout.max(1)))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .map_err(|e| CliError::io("cannot build the http client")(std::io::Error::other(e)))?;

    let ack_log = match &args.ack_log {
        None => None,
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(CliError::io(format!("cannot open {}", path.display())))?;
            Some(Arc::new(std::sync::Mutex::new(f)))
        }
    };
    let deliveries = Arc::new(plan.deliveries);
    let order = Arc::new(order);
    let started = Instant::now();
    let sent = runtime.block_on(send_all(
        client.clone(),
        format!("{base}/webhooks/dodo"),
        secret,
        deliveries.clone(),
        order.clone(),
        args.concurrency,
        ack_log,
    ));
    let seconds = started.elapsed().as_secs_f64();

    let mut status_codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut transport_errors = 0;
    let mut non_2xx = 0;
    for s in &sent {
        match s.status {
            Some(code) => {
                *status_codes.entry(code.to_string()).or_default() += 1;
                if !(200..300).contains(&code) {
                    non_2xx += 1;
                }
            }
            None => transport_errors += 1,
        }
        if let Some(o) = &s.outcome {
            *outcomes.entry(o.clone()).or_default() += 1;
        }
    }
    let latency = percentiles(sent.iter().map(|s| s.latency.as_micros() as u64).collect());

    let verify = args.verify.then(|| {
        runtime.block_on(verify_all(
            client,
            base.clone(),
            args.api_token.clone(),
            Arc::new(plan.access.clone()),
            Arc::new(plan.balances.clone()),
            args.concurrency,
        ))
    });

    let report = Report {
        url: base,
        seed,
        epoch: epoch_unix,
        customers: args.customers,
        pairs: plan.access.len(),
        unique,
        duplicates: dups,
        deliveries: order.len(),
        concurrency: args.concurrency,
        seconds,
        deliveries_per_sec: if seconds > 0.0 {
            order.len() as f64 / seconds
        } else {
            0.0
        },
        latency_ms: latency,
        non_2xx,
        transport_errors,
        status_codes,
        outcomes,
        event_types,
        try_pairs: try_pairs(&plan.access),
        verify,
    };
    print_report(&report, args.json)?;
    let failed = report.non_2xx > 0
        || report.transport_errors > 0
        || report
            .verify
            .as_ref()
            .is_some_and(|v| v.mismatches > 0 || v.errors > 0);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One expected answer of each kind (allowed, pending, each denial reason), at most six.
fn try_pairs(access: &[model::Expected]) -> Vec<TryPair> {
    let mut seen = std::collections::BTreeSet::new();
    access
        .iter()
        .filter(|e| seen.insert((e.allowed, e.status, e.reason.clone())))
        .take(6)
        .map(|e| TryPair {
            customer_id: e.customer_id.clone(),
            entitlement_id: e.entitlement_id.clone(),
            allowed: e.allowed,
            status: e.status,
            reason: e.reason.clone(),
        })
        .collect()
}

fn print_report(r: &Report, json: bool) -> Result<(), CliError> {
    if json {
        return super::print_json(r);
    }
    println!(
        "simulate: {} customers, {} access pairs, {} deliveries ({} unique + {} duplicates) to {} (seed {}, epoch {})",
        r.customers, r.pairs, r.deliveries, r.unique, r.duplicates, r.url, r.seed, r.epoch
    );
    println!(
        "sent in {:.2} s at concurrency {}: {:.0} deliveries/s, latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; non-2xx {}, transport errors {}",
        r.seconds, r.concurrency, r.deliveries_per_sec, r.latency_ms.p50, r.latency_ms.p90,
        r.latency_ms.p99, r.latency_ms.max, r.non_2xx, r.transport_errors
    );
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let codes: Vec<String> = r
        .status_codes
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "outcomes: {}; status codes: {}",
        outcomes.join(", "),
        codes.join(", ")
    );
    if let Some(v) = &r.verify {
        println!(
            "verify: {} access answers and {} balances checked in {:.2} s ({:.0} req/s): {} mismatches, {} errors",
            v.access_checked, v.balances_checked, v.seconds, v.requests_per_sec, v.mismatches, v.errors
        );
        for m in &v.examples {
            println!("  {}: expected {}, got {}", m.what, m.expected, m.got);
        }
    }
    if !r.try_pairs.is_empty() {
        println!("try (against the server's --db):");
        for p in &r.try_pairs {
            let expected = match (&p.allowed, &p.reason) {
                (true, _) => "allowed".to_string(),
                (false, Some(reason)) => format!("denied: {} ({reason})", p.status),
                (false, None) => format!("denied: {}", p.status),
            };
            println!(
                "  entsync check {} {}   # {expected}",
                p.customer_id, p.entitlement_id
            );
        }
    }
    Ok(())
}

async fn send_all(
    client: reqwest::Client,
    url: String,
    secret: Secret,
    deliveries: Arc<Vec<Planned>>,
    order: Arc<Vec<usize>>,
    concurrency: usize,
    ack_log: Option<Arc<std::sync::Mutex<std::fs::File>>>,
) -> Vec<Sent> {
    let next = Arc::new(AtomicUsize::new(0));
    let secret = Arc::new(secret);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, secret, deliveries, order, next, ack_log) = (
            client.clone(),
            url.clone(),
            secret.clone(),
            deliveries.clone(),
            order.clone(),
            next.clone(),
            ack_log.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = order.get(i) else { break };
                let Some(d) = deliveries.get(index) else {
                    break;
                };
                // Signed at send time, as every retry of Dodo's is.
                let ts = chrono::Utc::now().timestamp();
                let signature = sign(&secret, &d.webhook_id, ts, d.body.as_bytes());
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", &d.webhook_id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", signature)
                    .body(d.body.clone())
                    .send()
                    .await;
                let (status, outcome) = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await.unwrap_or_default();
                        if let (Some(log), true) = (&ack_log, (200..300).contains(&status)) {
                            let line = format!("{}\n", d.webhook_id);
                            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = std::io::Write::write_all(&mut *f, line.as_bytes()) {
                                eprintln!("entsync simulate: cannot write the ack log: {e}");
                            }
                        }
                        let outcome = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("outcome")?.as_str().map(str::to_string));
                        (Some(status), outcome)
                    }
                    Err(_) => (None, None),
                };
                out.push(Sent {
                    latency: started.elapsed(),
                    status,
                    outcome,
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(part) = t.await {
            all.extend(part);
        }
    }
    all
}

/// One read-API check: the URL and how to judge the answer.
enum Check {
    Access(model::Expected),
    Balance(model::ExpectedBalance),
}

async fn verify_all(
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    access: Arc<Vec<model::Expected>>,
    balances: Arc<Vec<model::ExpectedBalance>>,
    concurrency: usize,
) -> VerifyReport {
    let checks: Arc<Vec<Check>> = Arc::new(
        access
            .iter()
            .cloned()
            .map(Check::Access)
            .chain(balances.iter().cloned().map(Check::Balance))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, token, checks, next) = (
            client.clone(),
            base.clone(),
            token.clone(),
            checks.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mismatches = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(check) = checks.get(i) else { break };
                let url = match check {
                    Check::Access(e) => {
                        format!("{base}/v1/access/{}/{}", e.customer_id, e.entitlement_id)
                    }
                    Check::Balance(b) => format!(
                        "{base}/v1/credits/{}/{}",
                        b.customer_id, b.credit_entitlement_id
                    ),
                };
                let mut request = client.get(&url);
                if let Some(t) = &token {
                    request = request.bearer_auth(t);
                }
                let answer = match request.send().await {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()),
                    Ok(r) => {
                        errors += 1;
                        mismatches.push(Mismatch {
                            what: url,
                            expected: "2xx".into(),
                            got: r.status().to_string(),
                        });
                        continue;
                    }
                    Err(e) => {
                        errors += 1;
                        mismatches.push(Mismatch {
                            what: url,
                            expected: "an answer".into(),
                            got: e.to_string(),
                        });
                        continue;
                    }
                };
                let Some(v) = answer else {
                    errors += 1;
                    mismatches.push(Mismatch {
                        what: url,
                        expected: "json".into(),
                        got: "an unreadable body".into(),
                    });
                    continue;
                };
                match check {
                    Check::Access(e) => {
                        let got = (
                            v.get("allowed").and_then(|x| x.as_bool()),
                            v.get("status").and_then(|x| x.as_str()),
                            v.get("reason").and_then(|x| x.as_str()),
                        );
                        let want = (Some(e.allowed), Some(e.status), e.reason.as_deref());
                        if got != want {
                            mismatches.push(Mismatch {
                                what: format!("access {} {}", e.customer_id, e.entitlement_id),
                                expected: describe(want),
                                got: describe(got),
                            });
                        }
                    }
                    Check::Balance(b) => {
                        let got = v
                            .get("balance")
                            .and_then(|x| x.as_str())
                            .and_then(|s| s.parse::<Decimal>().ok());
                        if got != Some(b.balance) {
                            mismatches.push(Mismatch {
                                what: format!(
                                    "balance {} {}",
                                    b.customer_id, b.credit_entitlement_id
                                ),
                                expected: b.balance.to_string(),
                                got: got.map_or_else(|| v.to_string(), |d| d.to_string()),
                            });
                        }
                    }
                }
            }
            (mismatches, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((m, e)) => {
                all.extend(m);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    VerifyReport {
        access_checked: access.len(),
        balances_checked: balances.len(),
        mismatches: all.len() - errors.min(all.len()),
        errors,
        examples: all.into_iter().take(10).collect(),
        seconds,
        requests_per_sec: if seconds > 0.0 {
            checks.len() as f64 / seconds
        } else {
            0.0
        },
    }
}

fn describe((allowed, status, reason): (Option<bool>, Option<&str>, Option<&str>)) -> String {
    format!(
        "allowed={} status={} reason={}",
        allowed.map_or("?".into(), |a| a.to_string()),
        status.unwrap_or("?"),
        reason.unwrap_or("null")
    )
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn percentiles_pick_ranks() {
        let l = percentiles((1..=100).map(|x| x * 1000).collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(vec![]).max, 0.0);
        assert_eq!(percentiles(vec![2000]).p50, 2.0);
    }
}
