//! The binary's one error type and the one secret loader.
//!
//! Commands return `Result<ExitCode, CliError>`: `Ok` carries the answer's exit code
//! (`check` denied is `Ok(1)`, a result and not an error), `Err` everything that went
//! wrong. `main` prints the error once, as `entsync COMMAND: MESSAGE` on stderr, and
//! exits with [`CliError::exit_code`]; no command prints its own errors.
//!
//! Each message carries its cause inline (the library's errors do the same), so `main`
//! prints `Display` only and never walks `source()`, which would repeat the causes.

use entitlement_sync::engine;
use entitlement_sync::verify::{Secret, SecretError, VerifyError};
use std::path::PathBuf;
use std::process::ExitCode;

/// What a command could not do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag, argument or value the command cannot use (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No webhook secret in `--secret` nor in `DODO_PAYMENTS_WEBHOOK_SECRET` (exit 2).
    #[error(
        "no webhook secret: copy the endpoint's signing secret (whsec_...) from the Dodo \
         dashboard (Developer > Webhooks) and set it:\n  \
         export DODO_PAYMENTS_WEBHOOK_SECRET=whsec_...\n\
         (several secrets, e.g. during a rotation, separated by spaces or commas), or pass --secret"
    )]
    NoSecret,
    /// A webhook secret that does not parse (exit 2).
    #[error("bad webhook secret in {origin}: {source}")]
    BadSecret {
        /// Where it came from: `--secret` or `DODO_PAYMENTS_WEBHOOK_SECRET`.
        origin: &'static str,
        /// Why it does not parse.
        #[source]
        source: SecretError,
    },
    /// A read command pointed at a database file that does not exist; it is never
    /// created empty (exit 2).
    #[error(
        "no database at {} (ingest or serve first, or pass --db / ENTSYNC_DB)",
        .0.display()
    )]
    NoDatabase(PathBuf),
    /// The store cannot be opened: not a database, written by a newer version, no
    /// permission, ... (exit 2).
    #[error("cannot open {store}: {source}")]
    Open {
        /// The `--db` path or URL (without its password).
        store: String,
        /// What the engine said.
        #[source]
        source: engine::Error,
    },
    /// A store or engine operation failed (exit 2).
    #[error("{context}: {source}")]
    Store {
        /// What the command was doing, e.g. `cannot list deliveries`.
        context: String,
        /// What the engine said.
        #[source]
        source: engine::Error,
    },
    /// Reading input, writing a file, binding a socket or starting the runtime failed
    /// (exit 2).
    #[error("{context}: {source}")]
    Io {
        /// What the command was doing, e.g. `cannot read input`.
        context: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A value could not be encoded as JSON (exit 2).
    #[error("cannot encode json: {0}")]
    Json(#[from] serde_json::Error),
    /// `ingest` or `bench`: some deliveries were not stored (exit 2).
    #[error("{0} deliveries were not stored")]
    NotStored(u64),
    /// `reconcile`: Dodo's API refused the key (401/403); the message says what to do
    /// (exit 2).
    #[error("{0}")]
    Refused(String),
    /// `verify`: the delivery does not verify; its kind is the command's output on
    /// stdout (exit 1).
    #[error("{0}")]
    Unverified(#[source] VerifyError),
}

impl CliError {
    /// The process exit code for this error: 1 for a delivery that does not verify, 2 for
    /// everything else (usage, secrets, the store, IO).
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Unverified(_) => ExitCode::from(1),
            CliError::Usage(_)
            | CliError::NoSecret
            | CliError::BadSecret { .. }
            | CliError::NoDatabase(_)
            | CliError::Open { .. }
            | CliError::Store { .. }
            | CliError::Io { .. }
            | CliError::Json(_)
            | CliError::NotStored(_)
            | CliError::Refused(_) => ExitCode::from(2),
        }
    }

    /// A usage error.
    pub fn usage(msg: impl std::fmt::Display) -> CliError {
        CliError::Usage(msg.to_string())
    }

    /// Wraps an engine error with what the command was doing.
    pub fn store(context: impl Into<String>) -> impl FnOnce(engine::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Store { context, source }
    }

    /// Wraps an IO error with what the command was doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Io { context, source }
    }
}

/// The environment variable holding the webhook secrets.
pub const SECRET_ENV: &str = "DODO_PAYMENTS_WEBHOOK_SECRET";

/// The webhook secrets, the one way `serve`, `verify` and `simulate` all read them: the
/// `--secret` flags when any is given, else `DODO_PAYMENTS_WEBHOOK_SECRET`. Each value
/// may hold several secrets separated by spaces or commas (a rotation). Never empty.
///
/// # Errors
///
/// [`CliError::NoSecret`] when neither holds a secret; [`CliError::BadSecret`] naming the
/// source of the first secret that does not parse; [`CliError::Usage`] when the variable
/// is not UTF-8.
pub fn webhook_secrets(flags: &[String]) -> Result<Vec<Secret>, CliError> {
    if flags.is_empty() {
        let env = match std::env::var(SECRET_ENV) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(CliError::usage(format_args!("{SECRET_ENV} is not UTF-8")))
            }
        };
        parse_secrets([env.as_str()], SECRET_ENV)
    } else {
        parse_secrets(flags.iter().map(String::as_str), "--secret")
    }
}

/// The secrets in `values`, each split at spaces and commas.
fn parse_secrets<'a>(
    values: impl IntoIterator<Item = &'a str>,
    origin: &'static str,
) -> Result<Vec<Secret>, CliError> {
    let secrets = values
        .into_iter()
        .flat_map(|v| v.split(|c: char| c == ',' || c.is_ascii_whitespace()))
        .filter(|item| !item.is_empty())
        .map(|item| Secret::parse(item).map_err(|source| CliError::BadSecret { origin, source }))
        .collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() {
        return Err(CliError::NoSecret);
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const B: &str = "C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn secrets_from_flags() {
        let flags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (input, expected) in [
            (flags(&[A]), Ok(1)),
            (flags(&[A, B]), Ok(2)),
            (flags(&[&format!("{A}, {B}")]), Ok(2)),
            (flags(&[&format!(" {A},,{B} ")]), Ok(2)),
            (flags(&[""]), Err("no webhook secret")),
            (flags(&[" , "]), Err("no webhook secret")),
            (
                flags(&[A, "whsec_%%%"]),
                Err("bad webhook secret in --secret: webhook secret is not valid base64"),
            ),
        ] {
            let got = webhook_secrets(&input)
                .map(|s| s.len())
                .map_err(|e| e.to_string());
            match expected {
                Ok(n) => assert_eq!(got.ok(), Some(n), "{input:?}"),
                Err(msg) => assert!(
                    got.as_ref().is_err_and(|e| e.starts_with(msg)),
                    "{input:?}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn exit_codes() {
        let io = || std::io::Error::other("x");
        for (err, code) in [
            (CliError::usage("x"), 2),
            (CliError::NoSecret, 2),
            (
                CliError::BadSecret {
                    origin: "--secret",
                    source: SecretError::Empty,
                },
                2,
            ),
            (CliError::NoDatabase(PathBuf::from("x.db")), 2),
            (CliError::io("cannot read input")(io()), 2),
            (CliError::NotStored(3), 2),
            (
                CliError::Refused("this key cannot read entitlements".into()),
                2,
            ),
            (CliError::Unverified(VerifyError::InvalidSignature), 1),
        ] {
            assert_eq!(err.exit_code(), ExitCode::from(code), "{err}");
            let msg = err.to_string();
            assert!(!msg.ends_with('.'), "{msg:?}");
            assert!(!msg.starts_with(char::is_uppercase), "{msg:?}");
        }
    }
}
