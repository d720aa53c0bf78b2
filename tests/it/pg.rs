//! The PostgreSQL server the tests use, found through `ENTSYNC_TEST_POSTGRES` (a URL;
//! `.ci/postgres` starts a throw-away one and prints it):
//!
//! ```text
//! export ENTSYNC_TEST_POSTGRES=$(.ci/postgres)
//! cargo test --release
//! ```
//!
//! Without it, a PostgreSQL test says so and passes — except under `CI=true`, where it
//! fails: CI cannot pass without running them. Each test works in a schema of its own,
//! dropped afterwards, so tests run in parallel on one server.

use entitlement_sync::store::Location;
use entitlement_sync::Engine;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the test server.
pub const ENV: &str = "ENTSYNC_TEST_POSTGRES";

/// The test server's URL; `None` (after saying so) when there is none, outside CI.
///
/// # Panics
///
/// Under `CI=true` without a server.
pub fn url() -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_string()),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "CI=true but {ENV} is not set: the PostgreSQL tests must run in CI \
                 (export {ENV}=$(.ci/postgres))"
            );
            eprintln!("no PostgreSQL test server: set {ENV} (export {ENV}=$(.ci/postgres))");
            None
        }
    }
}

/// A schema of the test server for one test, dropped when this is.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    /// A fresh schema named after `tag` (lower-case letters, digits, `_`); `None`
    /// without a test server.
    pub fn new(tag: &str) -> Option<Schema> {
        static N: AtomicU64 = AtomicU64::new(0);
        let url = url()?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("t{}_{n}_{tag}", std::process::id());
        name.truncate(63);
        let schema = Schema { url, name };
        schema.drop_schema();
        Some(schema)
    }

    /// The schema named `name` exactly (the caller keeps it unique).
    pub fn named(url: &str, name: &str) -> Schema {
        Schema {
            url: url.to_string(),
            name: name.to_string(),
        }
    }

    pub fn location(&self) -> Location {
        Location::Postgres {
            url: self.url.clone(),
            schema: self.name.clone(),
        }
    }

    /// An engine on the schema with the stored (or default) policy.
    pub fn engine(&self) -> Engine {
        Engine::open_at(self.location(), None).expect("open an engine on PostgreSQL")
    }

    /// A plain client of the test server.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect to the test server")
    }

    fn drop_schema(&self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.drop_schema();
    }
}
