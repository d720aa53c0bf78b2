//! The store commands: ingest, check, verify, deliveries, rejected, accept, grants,
//! rebuild, customer, balance.

use super::{open_engine, print_json, webhook_verifier, CliError, PolicyArgs};
use chrono::Utc;
use clap::Args;
use entitlement_sync::store::{Location, REBUILD_MEMORY};
use entitlement_sync::verify::WebhookHeaders;
use entitlement_sync::wire::parse_timestamp;
use entitlement_sync::{Delivery, Engine, Outcome};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--json` alone.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// JSON Lines file; `-` or nothing for standard input. Each line is a bare event
    /// envelope or a captured delivery {"webhook_id","webhook_timestamp","webhook_signature","body"}.
    pub file: Option<PathBuf>,
    /// Print the outcome counts as JSON.
    #[arg(long)]
    pub json: bool,
    /// Deliveries per transaction.
    #[arg(long, default_value_t = 1000, hide = true)]
    pub batch: usize,
    /// Print `ack <delivery id>` on stdout as each delivery becomes durable (for crash
    /// tests and pipelines that must know what was stored).
    #[arg(long, hide = true)]
    pub print_acks: bool,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Customer id.
    pub customer: String,
    /// Entitlement id.
    pub entitlement: String,
    /// Decide at this instant (RFC 3339) instead of now.
    #[arg(long)]
    pub at: Option<String>,
    /// Print the access answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An endpoint secret (`whsec_...`); repeat for several. Default: $DODO_PAYMENTS_WEBHOOK_SECRET.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// The `webhook-id` header (left out: the header is missing).
    #[arg(long)]
    pub id: Option<String>,
    /// The `webhook-timestamp` header (any text: a negative one fails verification).
    #[arg(long, allow_hyphen_values = true)]
    pub timestamp: Option<String>,
    /// The `webhook-signature` header.
    #[arg(long)]
    pub signature: Option<String>,
    /// Verify as of this unix time instead of now.
    #[arg(long, allow_hyphen_values = true)]
    pub now: Option<i64>,
    /// The raw body; `-` or nothing for standard input.
    pub file: Option<PathBuf>,
}

/// Arguments of `deliveries`.
#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Only this outcome (applied, duplicate, stale, rejected, unhandled, malformed).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only the newest N.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Arguments of `accept`.
#[derive(Debug, Args)]
pub struct AcceptArgs {
    /// The delivery whose quarantined snapshot to apply.
    pub delivery_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `grants`.
#[derive(Debug, Args)]
pub struct GrantsArgs {
    /// Only this customer's grants.
    #[arg(long)]
    pub customer: Option<String>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `customer`.
#[derive(Debug, Args)]
pub struct CustomerArgs {
    /// Customer id.
    pub customer: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `balance`.
#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// Customer id.
    pub customer: String,
    /// Credit entitlement id.
    pub credit_entitlement: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Opens an existing database for a read command (never creates an empty one).
/// Its access-change feed keeps the policy it was last computed under (`serve` sets it).
/// Opens a store that must exist: a SQLite file is never created by a command that
/// only reads (a PostgreSQL schema is created and migrated, empty, like on any open).
fn open_existing(db: &Location) -> Result<Engine, CliError> {
    if let Location::Sqlite(path) = db {
        if !path.exists() {
            return Err(CliError::NoDatabase(path.clone()));
        }
    }
    open_engine(db, None)
}

/// One input line as a delivery.
fn line_delivery(line: &[u8], now: chrono::DateTime<Utc>) -> Delivery {
    #[derive(serde::Deserialize)]
    struct Captured {
        webhook_id: String,
        webhook_timestamp: Option<serde_json::Value>,
        webhook_signature: Option<String>,
        body: String,
    }
    if let Ok(c) = serde_json::from_slice::<Captured>(line) {
        let ts = c.webhook_timestamp.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        return Delivery {
            id: c.webhook_id,
            webhook_timestamp: ts,
            webhook_signature: c.webhook_signature,
            body: c.body.into_bytes(),
            received_at: now,
        };
    }
    Delivery::from_bare(line.to_vec(), now)
}

fn open_input(file: Option<&Path>) -> std::io::Result<(Box<dyn Read>, Option<u64>)> {
    match file {
        None => Ok((Box::new(std::io::stdin()), None)),
        Some(p) if p == Path::new("-") => Ok((Box::new(std::io::stdin()), None)),
        Some(p) => {
            let f = std::fs::File::open(p)?;
            let len = f.metadata().ok().map(|m| m.len());
            Ok((Box::new(f), len))
        }
    }
}

/// `entsync ingest`.
pub fn ingest(db: &Location, args: IngestArgs) -> Result<ExitCode, CliError> {
    let engine = open_engine(db, None)?;
    let (input, len) =
        open_input(args.file.as_deref()).map_err(CliError::io("cannot read input"))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut counts: BTreeMap<&'static str, u64> =
        Outcome::ALL.iter().map(|o| (o.as_str(), 0)).collect();
    let mut failed = 0u64;
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut batch: Vec<Delivery> = Vec::with_capacity(args.batch.max(1));
    let mut line = Vec::new();
    let mut flush = |batch: &mut Vec<Delivery>, counts: &mut BTreeMap<&'static str, u64>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let ids: Vec<String> = if args.print_acks {
            batch.iter().map(|d| d.id.clone()).collect()
        } else {
            Vec::new()
        };
        match engine.ingest_batch(std::mem::take(batch)) {
            Ok(results) => {
                let mut out = std::io::stdout().lock();
                for (i, r) in results.into_iter().enumerate() {
                    match r {
                        Ok(a) => {
                            *counts.entry(a.outcome.as_str()).or_default() += 1;
                            if let Some(id) = ids.get(i) {
                                let _ = writeln!(out, "ack {id}");
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            // Reported as it happens (like ripgrep does a file it cannot read); the
                            // count ends the command as `CliError::NotStored`.
                            eprintln!("entsync ingest: delivery not stored: {e}");
                        }
                    }
                }
                let _ = out.flush();
            }
            Err(e) => {
                failed += n as u64;
                eprintln!("entsync ingest: batch not stored: {e}");
            }
        }
    };
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(n) => bar.inc(n as u64),
            Err(e) => return Err(CliError::io("cannot read input")(e)),
        }
        let trimmed = trim_line(&line);
        if trimmed.is_empty() {
            continue;
        }
        batch.push(line_delivery(trimmed, Utc::now()));
        if batch.len() >= args.batch.max(1) {
            flush(&mut batch, &mut counts);
            bar.set_message(format!("{} applied", counts["applied"]));
        }
    }
    flush(&mut batch, &mut counts);
    bar.finish_and_clear();
    if args.json {
        print_json(&counts)?;
    } else {
        let text: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}", text.join(", "));
    }
    if failed > 0 {
        return Err(CliError::NotStored(failed));
    }
    Ok(ExitCode::SUCCESS)
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    let s = &line[..end];
    if s.iter().all(u8::is_ascii_whitespace) {
        &[]
    } else {
        s
    }
}

/// The one-line human answer of `check`.
pub fn describe(a: &entitlement_sync::Access) -> String {
    let verdict = if a.allowed { "allowed" } else { "denied" };
    let mut s = format!("{verdict}: {}", a.status);
    if let Some(reason) = &a.reason {
        s.push_str(&format!(" ({reason})"));
    }
    if let Some(g) = &a.grant_id {
        s.push_str(&format!(", grant {g}"));
    }
    if let Some(url) = &a.oauth_url {
        s.push_str(&format!(", awaiting the customer at {url}"));
    }
    if let Some(until) = &a.grace_until {
        s.push_str(&format!(
            ", on_hold grace until {}",
            entitlement_sync::wire::format_timestamp(until)
        ));
    }
    s
}

/// `entsync check`.
pub fn check(db: &Location, args: CheckArgs) -> Result<ExitCode, CliError> {
    let now = match args.at.as_deref() {
        None => Utc::now(),
        Some(t) => parse_timestamp(t).ok_or_else(|| {
            CliError::usage(format_args!("--at {t:?} is not an RFC 3339 timestamp"))
        })?,
    };
    let engine = open_existing(db)?;
    // The flags not given take the policy `serve` recorded: `check` answers as it does.
    let policy = args.policy.over(engine.policy());
    // One answer: read the pair's rows, not the whole index.
    let answer = engine
        .access_direct(&args.customer, &args.entitlement, now, &policy)
        .map_err(CliError::store("cannot read the access answer"))?;
    if args.json {
        print_json(&answer)?;
    } else {
        println!("{}", describe(&answer));
    }
    // Denied is an answer, not an error: exit 1 with nothing on stderr.
    Ok(if answer.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `entsync verify`.
///
/// A delivery that does not verify prints its kind on stdout (the command's answer) and
/// returns [`CliError::Unverified`] (exit 1, the message on stderr).
pub fn verify(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let verifier = webhook_verifier(&args.secrets)?;
    let (mut input, _) =
        open_input(args.file.as_deref()).map_err(CliError::io("cannot read body"))?;
    let mut body = Vec::new();
    input
        .read_to_end(&mut body)
        .map_err(CliError::io("cannot read body"))?;
    let now = args.now.unwrap_or_else(|| Utc::now().timestamp());
    let headers = WebhookHeaders {
        id: args.id.as_deref(),
        timestamp: args.timestamp.as_deref(),
        signature: args.signature.as_deref(),
    };
    match verifier.verify(&headers, &body, now) {
        Ok(()) => {
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("{}", e.kind());
            Err(CliError::Unverified(e))
        }
    }
}

/// `entsync deliveries`.
pub fn deliveries(db: &Location, args: DeliveriesArgs) -> Result<ExitCode, CliError> {
    let outcome = match args.outcome.as_deref().map(|o| (o, Outcome::parse(o))) {
        None => None,
        Some((_, Some(o))) => Some(o),
        Some((o, None)) => return Err(CliError::usage(format_args!("unknown outcome {o:?}"))),
    };
    let engine = open_existing(db)?;
    let list = engine
        .deliveries(outcome, args.limit)
        .map_err(CliError::store("cannot list deliveries"))?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    for d in list {
        println!(
            "{}  {:<9}  {:<40}  {}{}",
            d.received_at,
            d.outcome,
            d.event_type.as_deref().unwrap_or("-"),
            d.delivery_id,
            d.detail.map(|x| format!("  ({x})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `entsync rejected`.
pub fn rejected(db: &Location, args: JsonArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let list = engine
        .rejected()
        .map_err(CliError::store("cannot list the quarantine"))?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("the quarantine is empty");
    }
    for q in list {
        println!(
            "{}  {} {}  {}",
            q.delivery_id, q.object_kind, q.object_id, q.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `entsync accept`.
pub fn accept(db: &Location, args: AcceptArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let (kind, id) = engine
        .accept(&args.delivery_id, Utc::now())
        .map_err(CliError::store(format!(
            "cannot accept {:?}",
            args.delivery_id
        )))?;
    if args.json {
        print_json(&serde_json::json!({
            "delivery_id": args.delivery_id, "object_kind": kind, "object_id": id, "accepted": true
        }))?;
    } else {
        println!(
            "accepted {}: {kind} {id} re-folded with the override",
            args.delivery_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `entsync grants`.
pub fn grants(db: &Location, args: GrantsArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let list = engine
        .grants(args.customer.as_deref())
        .map_err(CliError::store("cannot list grants"))?;
    if args.json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    for g in list {
        println!(
            "{}  {}  {}  {}{}",
            g.customer_id,
            g.entitlement_id,
            g.grant_id,
            g.status,
            g.revocation_reason
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// MiB of delivery bodies whose parsed snapshots are held at once; a store with
    /// more is folded range by range, each range's deliveries parsed a second time.
    #[arg(long, value_name = "MIB", default_value_t = (REBUILD_MEMORY >> 20) as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub memory: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `entsync rebuild`.
pub fn rebuild(db: &Location, args: RebuildArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let started = std::time::Instant::now();
    let stats = engine
        .rebuild_within(
            chrono::Utc::now(),
            usize::try_from(args.memory.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        )
        .map_err(CliError::store("cannot rebuild"))?;
    if args.json {
        print_json(&stats)?;
    } else {
        println!(
            "rebuilt {} objects from {} deliveries in {:.2?} ({} ranges, {} rewritten, {} still malformed, {} newly parsed, {} quarantined)",
            stats.objects, stats.deliveries, started.elapsed(), stats.ranges, stats.rewritten, stats.malformed, stats.reparsed, stats.quarantined
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `entsync customer`.
pub fn customer(db: &Location, args: CustomerArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let view = engine
        .customer(&args.customer)
        .map_err(CliError::store(format!(
            "cannot read customer {:?}",
            args.customer
        )))?;
    if args.json {
        print_json(&view)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("customer {}", view.customer_id);
    for g in &view.grants {
        println!(
            "  grant {} {} {}{}",
            g.grant_id,
            g.entitlement_id,
            g.status,
            g.revocation_reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }
    for s in &view.subscriptions {
        println!(
            "  subscription {} {} since {}",
            s.subscription_id, s.status, s.since
        );
    }
    for p in &view.payments {
        println!("  payment {} {}", p.payment_id, p.status);
    }
    for c in &view.credits {
        println!(
            "  credits {} balance {} overage {}",
            c.credit_entitlement_id, c.balance, c.overage
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `entsync balance`.
pub fn balance(db: &Location, args: BalanceArgs) -> Result<ExitCode, CliError> {
    let engine = open_existing(db)?;
    let balance = engine
        .credit_balance(&args.customer, &args.credit_entitlement)
        .map_err(CliError::store("cannot read the balance"))?;
    let value = match &balance {
        Some(b) => serde_json::to_value(b)?,
        None => serde_json::json!({
            "customer_id": args.customer,
            "credit_entitlement_id": args.credit_entitlement,
            "balance": "0",
            "overage": "0",
            "entries": 0,
            "entry_id": null,
            "as_of": null,
            "balance_low": null,
        }),
    };
    if args.json {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    match balance {
        Some(b) => println!(
            "{} {}: balance {}, overage {} (as of {}, {} entries)",
            b.customer_id,
            b.credit_entitlement_id,
            b.balance,
            b.overage,
            entitlement_sync::wire::format_timestamp(&b.as_of),
            b.entries
        ),
        None => println!(
            "{} {}: balance 0 (no ledger entries)",
            args.customer, args.credit_entitlement
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `changes`.
#[derive(Debug, Args)]
pub struct ChangesArgs {
    /// Print the changes after this seq (default: from the start).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: i64,
    /// Keep waiting for new changes and print them as they come (until interrupted).
    #[arg(long)]
    pub follow: bool,
    /// Print JSON Lines, one change per line.
    #[arg(long)]
    pub json: bool,
}

/// `entsync changes`.
pub fn changes(db: &Location, args: ChangesArgs) -> Result<ExitCode, CliError> {
    use std::io::Write;
    if args.after < 0 {
        return Err(CliError::usage(format_args!(
            "--after {} is not a seq (an integer ≥ 0)",
            args.after
        )));
    }
    let engine = open_existing(db)?;
    let mut after = args.after;
    let stdout = std::io::stdout();
    loop {
        let page = if args.follow {
            engine.wait_changes(after, 1000, std::time::Duration::from_secs(60))
        } else {
            engine.changes(after, 1000)
        }
        .map_err(CliError::store("cannot read the change feed"))?;
        let mut out = stdout.lock();
        for change in &page {
            let line = if args.json {
                serde_json::to_string(change)?
            } else {
                describe_change(change)
            };
            // A closed pipe (`entsync changes --follow | head`) ends the command.
            if writeln!(out, "{line}").is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            after = change.seq;
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        if page.is_empty() && !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One change for people: `seq at customer entitlement before -> after (cause)`.
fn describe_change(c: &entitlement_sync::change::Change) -> String {
    use entitlement_sync::change::{Answer, Cause};
    let answer = |a: &Answer| {
        let verdict = if a.allowed { "allowed" } else { "denied" };
        match &a.reason {
            Some(reason) => format!("{verdict} ({} {reason})", a.status),
            None => format!("{verdict} ({})", a.status),
        }
    };
    let cause = match &c.cause {
        Cause::Delivery {
            delivery_id,
            event_type,
        } => format!("{event_type} {delivery_id}"),
        Cause::Reconcile {
            delivery_id,
            event_type,
        } => format!("reconcile {event_type} {delivery_id}"),
        Cause::Time { detail } => format!("time: {detail}"),
        Cause::Operator {
            delivery_id: Some(id),
            detail,
        } => format!("operator: {detail} {id}"),
        Cause::Operator { detail, .. } => format!("operator: {detail}"),
        Cause::Rebuild => "rebuild".into(),
    };
    format!(
        "{}  {}  {} {}  {} -> {}  [{cause}]",
        c.seq,
        entitlement_sync::wire::format_timestamp(&c.at),
        c.customer_id,
        c.entitlement_id,
        answer(&c.previous),
        answer(&c.answer()),
    )
}
