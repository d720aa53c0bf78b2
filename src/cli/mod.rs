//! Command-line interface: argument parsing and dispatch. Each command is a function
//! of its arguments that returns `Result<ExitCode, CliError>`; [`main`] alone prints
//! errors and turns them into exit codes (ripgrep's `main` / `try_main` shape).

mod alloc;
mod bench;
mod bench_pg;
mod bench_rows;
mod commands;
mod error;
mod forward;
mod reconcile;
mod serve;
mod simulate;

pub use error::{webhook_secrets, CliError};

use clap::{Args, Parser, Subcommand};
use entitlement_sync::store::Location;
use entitlement_sync::verify::Verifier;
use entitlement_sync::{DisputePolicy, Engine, Policy};
use std::process::ExitCode;

/// Keeps access rights in exact step with Dodo Payments webhooks.
#[derive(Debug, Parser)]
#[command(name = "entsync", version, about, propagate_version = true)]
pub struct Cli {
    /// The store: a SQLite database file, or a postgres:// (postgresql://) URL that
    /// several instances share.
    #[arg(
        long,
        global = true,
        env = "ENTSYNC_DB",
        default_value = "entitlements.db",
        value_name = "FILE|URL"
    )]
    pub db: String,
    /// The PostgreSQL schema that holds every table (created if missing).
    #[arg(
        long,
        global = true,
        env = "ENTSYNC_PG_SCHEMA",
        default_value = entitlement_sync::store::DEFAULT_PG_SCHEMA,
        value_name = "NAME"
    )]
    pub pg_schema: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver and the access API (the main job).
    Serve(serve::ServeArgs),
    /// Ingest deliveries from a JSON Lines file (or - for stdin).
    Ingest(commands::IngestArgs),
    /// Does CUSTOMER have ENTITLEMENT? Exit 0 allowed, 1 denied, 2 error.
    Check(commands::CheckArgs),
    /// Check one delivery's Standard Webhooks signature. Exit 0 ok, 1 invalid, 2 usage.
    Verify(commands::VerifyArgs),
    /// List stored deliveries and their outcomes.
    Deliveries(commands::DeliveriesArgs),
    /// List the quarantine: snapshots rejected as illegal transitions.
    Rejected(commands::JsonArgs),
    /// Apply one quarantined snapshot (a recorded operator override).
    Accept(commands::AcceptArgs),
    /// List grants.
    Grants(commands::GrantsArgs),
    /// Recompute every projection from the stored deliveries.
    Rebuild(commands::RebuildArgs),
    /// Built-in benchmark; prints its figures as JSON.
    Bench(bench::BenchArgs),
    /// Everything known about one customer.
    Customer(commands::CustomerArgs),
    /// A customer's credit balance for one credit entitlement.
    Balance(commands::BalanceArgs),
    /// The access-change feed: every change of an answer, in commit order.
    Changes(commands::ChangesArgs),
    /// Generate realistic signed Dodo traffic against a running server.
    Simulate(simulate::SimulateArgs),
    /// Fetch the current state from Dodo's API after missed webhooks and fold it in.
    Reconcile(reconcile::ReconcileArgs),
}

/// The access policy knobs, shared by `serve`, `check` and `reconcile`.
///
/// `serve` runs under the knobs it is given, each one not given at its default, and
/// records that policy in the store. `check` and a `reconcile` of its own act on a
/// store that `serve` keeps: each knob not given takes the value `serve` recorded
/// ([`PolicyArgs::over`]), so that `check` answers as the server does.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Do not deny a grant whose subscription is known to be on_hold, paused,
    /// cancelled, expired or failed before the grant's own revocation arrives.
    #[arg(
        long,
        env = "ENTSYNC_NO_SUBSCRIPTION_BACKSTOP",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub no_subscription_backstop: Option<bool>,
    /// Keep access this many hours after a subscription went on_hold.
    #[arg(long, env = "ENTSYNC_ON_HOLD_GRACE_HOURS", value_name = "HOURS")]
    pub on_hold_grace_hours: Option<u32>,
    /// When disputes deny access: never (the default), on_lost, on_opened.
    #[arg(long, env = "ENTSYNC_DISPUTES", value_name = "WHEN")]
    pub disputes: Option<DisputePolicy>,
    /// Do not deny grants of a fully refunded one-time payment.
    #[arg(
        long,
        env = "ENTSYNC_NO_REFUND_DENY",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub no_refund_deny: Option<bool>,
}

impl PolicyArgs {
    /// The policy these flags describe, each knob not given at its default.
    pub fn policy(&self) -> Policy {
        self.over(&Policy::default())
    }

    /// The policy these flags describe, each knob not given as in `base`.
    pub fn over(&self, base: &Policy) -> Policy {
        Policy {
            subscription_backstop: self
                .no_subscription_backstop
                .map_or(base.subscription_backstop, |no| !no),
            on_hold_grace: match self.on_hold_grace_hours {
                Some(h) => Some(chrono::Duration::hours(i64::from(h))),
                None => base.on_hold_grace,
            },
            refund_denies: self.no_refund_deny.map_or(base.refund_denies, |no| !no),
            disputes: self.disputes.unwrap_or(base.disputes),
        }
    }
}

/// Opens the engine (creating the database if needed) for a command that writes to a
/// store `serve` keeps, under `serve`'s recorded policy where `args` are silent
/// ([`PolicyArgs::over`]).
pub fn open_engine_over(db: &Location, args: &PolicyArgs) -> Result<Engine, CliError> {
    let engine = open_engine(db, None)?;
    let policy = args.over(engine.policy());
    if policy == *engine.policy() {
        return Ok(engine);
    }
    drop(engine);
    open_engine(db, Some(policy))
}

/// Opens the engine (creating the database if needed), with `policy`, or with the one
/// its access-change feed was last computed under.
pub fn open_engine(db: &Location, policy: Option<Policy>) -> Result<Engine, CliError> {
    Engine::open_at(db.clone(), policy).map_err(|source| CliError::Open {
        store: db.display(),
        source,
    })
}

/// The verifier of the webhook secrets given by `--secret` flags, else by
/// `DODO_PAYMENTS_WEBHOOK_SECRET` (see [`webhook_secrets`]).
pub fn webhook_verifier(flags: &[String]) -> Result<Verifier, CliError> {
    webhook_secrets(flags).map(Verifier::new)
}

/// Prints a value as JSON on one line.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let s = serde_json::to_string(value)?;
    println!("{s}");
    Ok(())
}

impl Command {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Serve(_) => "serve",
            Command::Ingest(_) => "ingest",
            Command::Check(_) => "check",
            Command::Verify(_) => "verify",
            Command::Deliveries(_) => "deliveries",
            Command::Rejected(_) => "rejected",
            Command::Accept(_) => "accept",
            Command::Grants(_) => "grants",
            Command::Rebuild(_) => "rebuild",
            Command::Bench(_) => "bench",
            Command::Customer(_) => "customer",
            Command::Balance(_) => "balance",
            Command::Changes(_) => "changes",
            Command::Simulate(_) => "simulate",
            Command::Reconcile(_) => "reconcile",
        }
    }
}

/// Parses the command line, runs the command, and decides the exit code: the one place
/// that prints an error (`entsync COMMAND: MESSAGE` on stderr).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.command.name();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("entsync {name}: {err}");
            err.exit_code()
        }
    }
}

/// Runs the parsed command.
///
/// # Errors
///
/// Whatever the command could not do, as a [`CliError`]; `Ok` is the command's own
/// exit code (0, or 1 for `check` denied and `simulate` failures).
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let db = Location::parse(&cli.db, Some(&cli.pg_schema));
    match cli.command {
        Command::Serve(args) => serve::run(&db, args),
        Command::Ingest(args) => commands::ingest(&db, args),
        Command::Check(args) => commands::check(&db, args),
        Command::Verify(args) => commands::verify(args),
        Command::Deliveries(args) => commands::deliveries(&db, args),
        Command::Rejected(args) => commands::rejected(&db, args),
        Command::Accept(args) => commands::accept(&db, args),
        Command::Grants(args) => commands::grants(&db, args),
        Command::Rebuild(args) => commands::rebuild(&db, args),
        Command::Bench(args) => bench::run(args),
        Command::Customer(args) => commands::customer(&db, args),
        Command::Balance(args) => commands::balance(&db, args),
        Command::Changes(args) => commands::changes(&db, args),
        Command::Simulate(args) => simulate::run(args),
        Command::Reconcile(args) => reconcile::run(&db, args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command's argument groups have distinct names. clap names a group after its
    /// struct and checks the names only in debug builds (a clash panicked `serve` there),
    /// so this test checks them itself, in the release build CI tests too.
    #[test]
    fn every_command_names_its_argument_groups_once() {
        fn check(cmd: &clap::Command) {
            let mut seen = std::collections::BTreeSet::new();
            for group in cmd.get_groups() {
                let id = group.get_id().as_str().to_string();
                assert!(
                    seen.insert(id.clone()),
                    "{}: group {id:?} twice",
                    cmd.get_name()
                );
            }
            cmd.get_subcommands().for_each(check);
        }
        let mut cli = super::Cli::command();
        cli.build();
        check(&cli);
    }
}
