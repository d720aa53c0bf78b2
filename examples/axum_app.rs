//! An axum application that embeds entitlement-sync: it mounts Dodo's webhook route and
//! gates one of its own routes with `has_access`.
//!
//! ```text
//! DODO_PAYMENTS_WEBHOOK_SECRET=whsec_... cargo run --example axum_app
//! curl -i http://127.0.0.1:3000/reports/cus_123
//! ```
//!
//! Point the Dodo dashboard's webhook endpoint at `https://<your host>/webhooks/dodo`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use entitlement_sync::http::{self, Receiver};
use entitlement_sync::verify::Verifier;
use entitlement_sync::Engine;

/// The entitlement (from the Dodo dashboard) that unlocks reports.
const REPORTS: &str = "ent_reports";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("DODO_PAYMENTS_WEBHOOK_SECRET")
        .map_err(|_| "set DODO_PAYMENTS_WEBHOOK_SECRET to the endpoint's whsec_ secret")?;
    let engine = Engine::open("entitlements.db")?;
    let webhooks = Receiver::new(engine.clone(), Verifier::from_list(&secret)?);

    let app = Router::new()
        .route("/reports/{customer_id}", get(reports))
        .with_state(engine)
        // POST /webhooks/dodo: verify, store durably, then answer 2xx.
        .merge(webhooks.webhook_routes());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Only customers holding the entitlement get their report. The answer comes from the
/// in-memory index in microseconds; right after a commit the index is refreshed from
/// SQLite on the blocking pool, never on this async worker.
async fn reports(
    State(engine): State<Engine>,
    Path(customer_id): Path<String>,
) -> Result<String, StatusCode> {
    if http::has_access(&engine, &customer_id, REPORTS, chrono::Utc::now()).await {
        Ok(format!("the reports of {customer_id}\n"))
    } else {
        Err(StatusCode::PAYMENT_REQUIRED)
    }
}
