//! `serve --forward-url`: posts each access change, in seq order, as a Standard Webhooks
//! delivery signed with `ENTSYNC_FORWARD_SECRET`.
//!
//! - `webhook-id` is `chg_<seq>`; the body is
//!   `{"type":"access.changed","timestamp":<the change's at>,"data":<the change>}`, the
//!   same bytes on every attempt, so a receiver's idempotency key holds across retries.
//! - At least once, in order: seq k+1 is not posted before seq k was answered 2xx.
//! - A failure (connection error, timeout, non-2xx) is retried after about 1 s, doubling
//!   with ±25 % jitter up to 60 s; the same change until it passes.
//! - The cursor (the last seq acknowledged) is kept in the store, written after each
//!   acknowledged page and at most once a second while changes flow, so a restart resumes
//!   there and re-sends at most what was acknowledged since the last write.
//! - It runs on its own task and reads the feed on the blocking pool: ingest never waits
//!   for it.
//! - On a store several instances share (PostgreSQL), one of them forwards at a time: the
//!   one holding the `forward` lease ([`Engine::lease`]). The others check once a second
//!   and take over, from the stored cursor, when the holder dies (at least once: the new
//!   holder may re-send what the old one posted after its last cursor write).

use entitlement_sync::change::Change;
use entitlement_sync::http::ForwardStats;
use entitlement_sync::verify::{sign, Secret};
use entitlement_sync::{Engine, Lease};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first retry delay.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Changes read at a time.
const PAGE: usize = 100;

/// The forwarder's settings.
pub struct Forward {
    /// Where to post.
    pub url: reqwest::Url,
    /// The signing secret.
    pub secret: Secret,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The body of one forwarded change.
pub fn body(change: &Change) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&serde_json::json!({
        "type": "access.changed",
        "timestamp": change.at,
        "data": change,
    }))
}

/// The delay before retry number `failures` (1 = the first retry), before jitter.
pub fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

/// `delay` scaled by a factor in [0.75, 1.25) drawn from `seed`, capped at
/// [`MAX_BACKOFF`].
fn jitter(delay: Duration, seed: u64) -> Duration {
    let unit = entitlement_sync::synth::Rng::new(seed).unit();
    delay.mul_f64(0.75 + unit / 2.0).min(MAX_BACKOFF)
}

/// Runs the forwarder until the process ends. `wake` is notified after every commit.
pub async fn run(
    engine: Engine,
    forward: Forward,
    stats: Arc<ForwardStats>,
    wake: Arc<tokio::sync::Notify>,
) {
    let client = match reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        // A redirect is not an acknowledgement (Standard Webhooks: only a 2xx is), and
        // following one would re-send the signed change where the URL did not say.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("entsync/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the forward client; not forwarding");
            return;
        }
    };
    let lease = match engine.lease("forward") {
        Ok(lease) => Arc::new(std::sync::Mutex::new(lease)),
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the forward lease; not forwarding");
            return;
        }
    };
    let mut leading = false;
    let mut checked = Instant::now();
    let mut cursor = 0;
    let mut saved = 0;
    let mut saved_at = Instant::now();
    loop {
        if !leading || checked.elapsed() >= Duration::from_secs(1) {
            let held = held(&lease).await;
            checked = Instant::now();
            if !held {
                if leading {
                    tracing::warn!("lost the forward lease; another instance forwards");
                }
                leading = false;
                tokio::time::sleep(FIRST_BACKOFF).await;
                continue;
            }
            if !leading {
                // Taking over: resume from the stored cursor.
                let Some(stored) = blocking(&engine, |e| e.forward_cursor()).await else {
                    tokio::time::sleep(FIRST_BACKOFF).await;
                    continue;
                };
                cursor = stored;
                saved = stored;
                leading = true;
                stats.cursor.store(cursor, Ordering::Relaxed);
                tracing::info!(url = %forward.url, cursor, "forwarding access changes");
            }
        }
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let Some(page) = blocking(&engine, move |e| e.changes(cursor, PAGE)).await else {
            tokio::time::sleep(FIRST_BACKOFF).await;
            continue;
        };
        if page.is_empty() {
            stats.pending_since_micros.store(0, Ordering::Relaxed);
            if saved != cursor {
                saved = save(&engine, cursor).await.unwrap_or(saved);
                saved_at = Instant::now();
            }
            // Woken by this process's commits; other processes' are seen within 1 s.
            let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
            continue;
        }
        for change in &page {
            // The lease is checked between changes as between pages, and between the
            // attempts of one change: an instance that lost it stops posting within
            // about a second, so that two instances never forward side by side.
            if checked.elapsed() >= Duration::from_secs(1) {
                checked = Instant::now();
                if !held(&lease).await {
                    tracing::warn!("lost the forward lease; another instance forwards");
                    leading = false;
                    break;
                }
            }
            if !deliver(&client, &forward, change, &stats, &lease).await {
                leading = false;
                break;
            }
            cursor = change.seq;
            stats.cursor.store(cursor, Ordering::Relaxed);
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            if saved_at.elapsed() >= Duration::from_secs(1) {
                saved = save(&engine, cursor).await.unwrap_or(saved);
                saved_at = Instant::now();
            }
        }
    }
}

/// Whether this process holds the lease now (checked on the store's connection).
async fn held(lease: &Arc<std::sync::Mutex<Lease>>) -> bool {
    let lease = Arc::clone(lease);
    tokio::task::spawn_blocking(move || lease.lock().unwrap_or_else(|p| p.into_inner()).held())
        .await
        .unwrap_or(false)
}

/// Posts one change until a 2xx (`true`), or until the lease is lost between two
/// attempts (`false`: another instance forwards from the stored cursor).
async fn deliver(
    client: &reqwest::Client,
    forward: &Forward,
    change: &Change,
    stats: &ForwardStats,
    lease: &Arc<std::sync::Mutex<Lease>>,
) -> bool {
    let id = format!("chg_{}", change.seq);
    let body = match body(change) {
        Ok(body) => body,
        Err(e) => {
            // Cannot happen for these types; skipping would break "every seq arrives".
            tracing::error!(error = %e, seq = change.seq, "cannot encode a change");
            return true;
        }
    };
    let first_seen = chrono::Utc::now().timestamp_micros();
    let _ = stats.pending_since_micros.compare_exchange(
        0,
        first_seen,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut failures = 0u32;
    loop {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(&forward.secret, &id, timestamp, &body);
        let attempt = client
            .post(forward.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await;
        let failure = match attempt {
            Ok(resp) if resp.status().is_success() => {
                stats.pending_since_micros.store(0, Ordering::Relaxed);
                return true;
            }
            Ok(resp) => format!("answered {}", resp.status()),
            Err(e) => e.to_string(),
        };
        failures += 1;
        stats.failures.fetch_add(1, Ordering::Relaxed);
        let seed = (change.seq as u64) ^ u64::from(failures).rotate_left(32) ^ first_seen as u64;
        let delay = jitter(backoff(failures), seed);
        tracing::warn!(
            seq = change.seq,
            failures,
            retry_in_ms = delay.as_millis() as u64,
            error = %failure,
            "forwarding a change failed; retrying"
        );
        tokio::time::sleep(delay).await;
        if !held(lease).await {
            tracing::warn!(
                seq = change.seq,
                "lost the forward lease while retrying a change"
            );
            return false;
        }
    }
}

async fn save(engine: &Engine, cursor: i64) -> Option<i64> {
    blocking(engine, move |e| e.set_forward_cursor(cursor))
        .await
        .map(|()| cursor)
}

/// Runs a store call on the blocking pool; `None` when it failed (logged).
async fn blocking<T: Send + 'static>(
    engine: &Engine,
    f: impl FnOnce(&Engine) -> Result<T, entitlement_sync::EngineError> + Send + 'static,
) -> Option<T> {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || f(&engine)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "forwarder: store call failed");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "forwarder: store task failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for seed in 0..1000u64 {
            let d = jitter(Duration::from_secs(8), seed).as_secs_f64();
            assert!((6.0..10.0).contains(&d), "{d}");
            assert!(jitter(MAX_BACKOFF, seed) <= MAX_BACKOFF);
        }
    }
}
