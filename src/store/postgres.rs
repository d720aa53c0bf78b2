//! The PostgreSQL backend of [`Db`]: several entsync instances share one database.
//!
//! Every table lives in one schema (`entsync` by default), the migrations' own
//! bookkeeping (`schema_migrations`) included; the schema is created and migrated on
//! open, under an advisory lock so that instances starting together migrate once.
//!
//! **Writers.** Every write transaction runs at `READ COMMITTED` and begins by bumping
//! the change counter (`UPDATE meta SET value = value + 1 WHERE key = 'seq'`,
//! `Writer::begin`). That row lock serialises the writers of every instance, and
//! PostgreSQL makes a commit visible before it releases its locks: each transaction's
//! statements see everything committed before it took the counter, so any interleaving
//! of instances gives the state one serial writer gives, and the counter (and the change
//! feed's identity `seq`, taken under it) grows in commit order. No reader can skip a
//! slow transaction's rows. Nothing here can fail with a serialization error or a
//! deadlock, so there is nothing to retry: the cost is that instances' commits queue on
//! one row, which `docs/postgres.md` measures.
//!
//! **Readers** run their multi-statement reads at `REPEATABLE READ READ ONLY`: one
//! snapshot.
//!
//! **Notifications.** A writer's transaction ends with `pg_notify('entsync', schema)`,
//! delivered at commit; [`spawn_listener`] wakes the other instances' indexes with it,
//! and every second without one (a notification can be lost across a reconnect).
//!
//! A lost connection is re-opened by the next transaction (or statement outside one);
//! the failed operation reports a retryable error (503 for a webhook, so Dodo retries).

use super::sql::{Arg, Backend, Db, Mode, Row, Val};
use super::{Result, StoreError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
#[cfg(not(feature = "postgres-tls"))]
use postgres::NoTls;
use postgres::{Client, Config, Statement};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The PostgreSQL migrations, in order. Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    include_str!("../../postgres/0001_schema.sql"),
    include_str!("../../postgres/0002_partial_indexes.sql"),
    include_str!("../../postgres/0003_access_rules.sql"),
    include_str!("../../postgres/0004_dispute_refund_ranks.sql"),
    include_str!("../../postgres/0005_identity_rule.sql"),
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// The channel every instance's writer notifies on commit (the payload is the schema).
pub(crate) const CHANNEL: &str = "entsync";

/// One PostgreSQL connection, its prepared statements, and how to open it again.
pub(crate) struct Postgres {
    client: RefCell<Option<Client>>,
    statements: RefCell<HashMap<String, Statement>>,
    config: Config,
    schema: String,
    in_tx: Cell<bool>,
}

impl ToSql for Arg<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let int = |v: i64, out: &mut bytes::BytesMut| match *ty {
            Type::INT8 => v.to_sql(ty, out),
            Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
            Type::BOOL => (v != 0).to_sql(ty, out),
            _ => Err(format!("cannot bind an integer to a {ty} parameter").into()),
        };
        match *self {
            Arg::Null => Ok(IsNull::Yes),
            Arg::Int(v) => int(v, out),
            Arg::Bool(v) => int(i64::from(v), out),
            Arg::Text(s) => s.to_sql(ty, out),
            Arg::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// The store's SQL as PostgreSQL runs it: `?N` becomes `$N`, SQLite's planner hints
/// (`INDEXED BY name`, `NOT INDEXED`) go.
fn translate(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut words = sql.split_inclusive(char::is_whitespace).peekable();
    while let Some(word) = words.next() {
        let bare = word.trim_end();
        if bare == "INDEXED" && out.trim_end().ends_with("NOT") {
            // `NOT INDEXED`: drop the `NOT` already written, and this word.
            let keep = out.trim_end().len() - "NOT".len();
            out.truncate(keep);
            out.push(' ');
            continue;
        }
        if bare == "INDEXED" && words.peek().map(|w| w.trim_end()) == Some("BY") {
            words.next(); // BY
            words.next(); // the index's name
            continue;
        }
        out.push_str(word);
    }
    let mut sql = String::with_capacity(out.len());
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            sql.push('$');
        } else {
            sql.push(c);
        }
    }
    sql
}

/// The connection settings of `url`, each of these unless the URL sets it: a connect
/// timeout; an application name that tells the connection apart in `pg_stat_activity`;
/// TCP keepalives every few seconds and a 30 s limit on unacknowledged data, so that a
/// path that silently stops carrying packets (a partition, a failover that leaves the
/// old address dark) is noticed in about half a minute, like a refused connection,
/// rather than after the kernel's 15 minutes of retransmissions.
fn config(url: &str, application: &str, timeout: Duration) -> Result<Config> {
    let mut config: Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    // The library's default idle time is libpq's, two hours.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(10));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
    Ok(config)
}

/// Server settings a role or database may set that would turn a wait into a failure:
/// a writer waits for the change counter's lock as long as another instance holds it
/// (a rebuild holds it for its whole transaction), and a rebuild's transaction is idle
/// between statements while it folds. Each is turned off for entsync's sessions unless
/// the URL's `options` set it.
const SESSION_LIMITS: [&str; 4] = [
    "lock_timeout",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
];

/// A schema name entsync accepts: a plain lower-case identifier, so that it never needs
/// quoting.
fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "PostgreSQL schema name {schema:?}: use lower-case letters, digits and _ (at most 63)"
        )))
    }
}

/// The advisory lock key of a schema's migrations.
fn migration_lock(schema: &str) -> i64 {
    lock_key(&format!("entsync migrations {schema}"))
}

/// An advisory lock's key: the first 8 bytes of the SHA-256 of what it locks.
fn lock_key(what: &str) -> i64 {
    let digest = Sha256::digest(what.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Opens a connection: with TLS as the URL's `sslmode` asks when the `postgres-tls`
/// feature is on (rustls, the webpki roots), else in plain text (`sslmode=require`
/// then fails to connect, saying so).
fn connect(config: &Config) -> Result<Client> {
    #[cfg(feature = "postgres-tls")]
    {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))?;
        lift_session_limits(config, &mut client)?;
        Ok(client)
    }
    #[cfg(not(feature = "postgres-tls"))]
    {
        let mut client = config.connect(NoTls)?;
        lift_session_limits(config, &mut client)?;
        Ok(client)
    }
}

/// Turns off the [`SESSION_LIMITS`] the URL does not set.
fn lift_session_limits(config: &Config, client: &mut Client) -> Result<()> {
    let options = config.get_options().unwrap_or_default();
    let limits: Vec<&str> = SESSION_LIMITS
        .into_iter()
        .filter(|name| !options.contains(name))
        .collect();
    if !limits.is_empty() {
        // Only those this server knows (`idle_session_timeout` is PostgreSQL 14's).
        client.execute(
            "SELECT set_config(name, '0', false) FROM pg_settings WHERE name = ANY($1)",
            &[&limits],
        )?;
    }
    Ok(())
}

fn open_client(config: &Config, schema: &str) -> Result<Client> {
    let mut client = connect(config)?;
    // Every table is found in the schema; text compares bytewise (`COLLATE "C"` on the
    // columns), instants are stored as text, so the session's time zone never matters.
    client.batch_execute(&format!("SET search_path TO {schema}"))?;
    Ok(client)
}

impl Postgres {
    /// Connects to `url` and uses `schema`; the writer's connection (`migrate`) creates
    /// and migrates the schema.
    pub(crate) fn connect(url: &str, schema: &str, migrate: bool) -> Result<Postgres> {
        check_schema(schema)?;
        let config = config(url, &format!("entsync {schema}"), Duration::from_secs(10))?;
        let mut client = open_client(&config, schema)?;
        if migrate {
            migrate_schema(&mut client, schema)?;
        } else {
            check_version(&mut client).map(drop)?;
        }
        Ok(Postgres {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
            config,
            schema: schema.to_string(),
            in_tx: Cell::new(false),
        })
    }

    /// The client, connected again first if the connection was lost outside a
    /// transaction (inside one, the transaction is lost: the caller hears of it).
    fn client(&self) -> Result<RefMut<'_, Client>> {
        let mut slot = self.client.try_borrow_mut().map_err(|_| {
            StoreError::Corrupt("a PostgreSQL connection used while it reads rows".into())
        })?;
        let lost = slot.as_ref().is_none_or(Client::is_closed);
        if lost {
            if self.in_tx.get() {
                return Err(StoreError::Commit {
                    message: "the connection to PostgreSQL was lost in a transaction".into(),
                    retryable: true,
                });
            }
            *slot = None;
            self.statements.borrow_mut().clear();
            *slot = Some(open_client(&self.config, &self.schema)?);
        }
        Ok(RefMut::map(slot, |c| c.as_mut().expect("connected above")))
    }

    fn statement(&self, client: &mut Client, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let statement = client.prepare(&translate(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

fn val(row: &postgres::Row, i: usize) -> Result<Val> {
    let ty = row.columns()[i].type_();
    let v = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Val::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Val::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Val::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Val::Int(v.into())),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Blob),
        _ => row.try_get::<_, Option<String>>(i)?.map(Val::Text),
    };
    Ok(v.unwrap_or(Val::Null))
}

fn params<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Db for Postgres {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn exec(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        let mut client = self.client()?;
        let statement = self.statement(&mut client, sql)?;
        Ok(client.execute(&statement, &params(args))?)
    }

    fn for_each(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        f: &mut dyn FnMut(Row) -> Result<()>,
    ) -> Result<()> {
        let mut client = self.client()?;
        let statement = self.statement(&mut client, sql)?;
        let mut rows = client.query_raw(&statement, params(args))?;
        while let Some(row) = rows.next()? {
            let values = (0..row.len())
                .map(|i| val(&row, i))
                .collect::<Result<_>>()?;
            f(Row(values))?;
        }
        Ok(())
    }

    fn batch(&self, sql: &str) -> Result<()> {
        Ok(self.client()?.batch_execute(sql)?)
    }

    fn begin(&self, mode: Mode) -> Result<()> {
        let mut client = self.client()?;
        client.batch_execute(match mode {
            Mode::Write => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Mode::Read => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        })?;
        self.in_tx.set(true);
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        let result = self
            .client()
            .and_then(|mut c| Ok(c.batch_execute("COMMIT")?));
        self.in_tx.set(false);
        result
    }

    fn rollback(&self) -> Result<()> {
        if !self.in_tx.get() {
            return Ok(());
        }
        let result = self
            .client()
            .and_then(|mut c| Ok(c.batch_execute("ROLLBACK")?));
        self.in_tx.set(false);
        result
    }

    fn notify_commit(&self) -> Result<()> {
        self.exec(
            "SELECT pg_notify(CAST(?1 AS TEXT), CAST(?2 AS TEXT))",
            &[Arg::Text(CHANNEL), Arg::Text(&self.schema)],
        )
        .map(drop)
    }
}

/// Creates the schema if needed and applies the missing migrations, in one transaction
/// under an advisory lock.
fn migrate_schema(client: &mut Client, schema: &str) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&migration_lock(schema)],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))?;
    let found = check_version(&mut tx)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&((i + 1) as i64)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The schema's version; refuses a schema that is missing or newer than this build.
fn check_version(client: &mut impl postgres::GenericClient) -> Result<i64> {
    let found: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    if found > VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    Ok(found)
}

/// Could the same operation succeed later? A lost or refused connection, a server
/// shutting down or out of resources: yes. A statement PostgreSQL rejects: no.
pub(crate) fn is_retryable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O error, a timeout, a connection that went away.
        None => true,
        Some(code) => {
            let code = code.code();
            // 08: connection exception; 40: transaction rollback (serialization,
            // deadlock); 53: insufficient resources; 57P: operator intervention
            // (admin shutdown, crash shutdown, cannot connect now).
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P")
        }
    }
}

/// Listens on [`CHANNEL`] for commits to `schema` on a connection of its own, on a
/// thread of its own, and calls `wake` for each, once a second without one, and after
/// every (re)connect. Reconnects with backoff (0.1 s doubling to 5 s). Stops when
/// `wake` returns `false`.
///
/// # Errors
///
/// Only a URL that does not parse, or a thread that cannot start.
pub(crate) fn spawn_listener(
    url: &str,
    schema: &str,
    wake: impl Fn() -> bool + Send + 'static,
) -> Result<()> {
    let config = config(
        url,
        &format!("entsync listener {schema}"),
        Duration::from_secs(5),
    )?;
    let schema = schema.to_string();
    std::thread::Builder::new()
        .name("entsync-listen".into())
        .spawn(move || listen(&config, &schema, &wake))
        .map_err(|e| StoreError::Config(format!("cannot start the listener thread: {e}")))?;
    Ok(())
}

const POLL: Duration = Duration::from_secs(1);

fn listen(config: &Config, schema: &str, wake: &dyn Fn() -> bool) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut client = match open_listener(config) {
            Ok(client) => {
                backoff = Duration::from_millis(100);
                client
            }
            Err(_) => {
                // The poll goes on while the server is away.
                if !wake() {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if !wake() {
            return;
        }
        let mut last_wake = Instant::now();
        loop {
            // Wait for a commit to this schema, until a second after the last wake: the
            // channel is shared by every schema of the database, and other schemas'
            // notifications must not put the poll off (a busy neighbour would otherwise
            // keep a failed refresh from being retried for as long as it stays busy).
            let mut woke = false;
            let mut failed = false;
            {
                let mut notifications = client.notifications();
                loop {
                    let left = POLL.saturating_sub(last_wake.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    match notifications.timeout_iter(left).next() {
                        Ok(Some(n)) => {
                            if n.channel() == CHANNEL && n.payload() == schema {
                                woke = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed || client.is_closed() {
                break;
            }
            if woke {
                // Drain what else arrived meanwhile: one wake covers them all.
                let mut pending = client.notifications();
                let mut iter = pending.iter();
                while let Ok(Some(_)) = iter.next() {}
                if !wake() {
                    return;
                }
                last_wake = Instant::now();
                continue;
            }
            // A second without a wake: poll (which also retries a refresh that failed),
            // and check that the connection still lives (a terminated backend is
            // noticed here at the latest).
            if !wake() {
                return;
            }
            last_wake = Instant::now();
            if client.batch_execute("SELECT 1").is_err() {
                break;
            }
        }
    }
}

fn open_listener(config: &Config) -> Result<Client> {
    let mut client = connect(config)?;
    client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
    Ok(client)
}

/// A session advisory lock on a connection of its own: held by one connection of the
/// whole database at a time, released by PostgreSQL when that connection ends (a
/// crashed holder loses it at once).
pub(crate) struct AdvisoryLock {
    config: Config,
    key: i64,
    client: Option<Client>,
}

impl AdvisoryLock {
    pub(crate) fn new(url: &str, schema: &str, name: &str) -> Result<AdvisoryLock> {
        let config = config(
            url,
            &format!("entsync lock {name} {schema}"),
            Duration::from_secs(5),
        )?;
        let key = lock_key(&format!("entsync lock {schema} {name}"));
        Ok(AdvisoryLock {
            config,
            key,
            client: None,
        })
    }

    /// Whether this process holds the lock now: checks that the holding connection
    /// still lives, else (re)connects and tries to take it.
    pub(crate) fn held(&mut self) -> bool {
        if let Some(client) = &mut self.client {
            if client.batch_execute("SELECT 1").is_ok() {
                return true;
            }
            self.client = None;
        }
        let Ok(mut client) = connect(&self.config) else {
            return false;
        };
        let took = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if took {
            self.client = Some(client);
        }
        took
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_translate_to_postgres() {
        let words = |sql: &str| {
            translate(sql)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            words("SELECT a FROM objects INDEXED BY objects_customer\n WHERE x = ?1 AND y = ?12"),
            "SELECT a FROM objects WHERE x = $1 AND y = $12"
        );
        assert_eq!(
            words("SELECT kind FROM objects NOT INDEXED WHERE kind IN ('a')"),
            "SELECT kind FROM objects WHERE kind IN ('a')"
        );
        assert_eq!(translate("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["entsync", "tenant_a", "_x1"] {
            assert!(check_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Entsync", "a-b", "a;drop", "1a", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
