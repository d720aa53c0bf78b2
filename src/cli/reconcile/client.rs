//! The Dodo REST API client of `entsync reconcile`: bearer auth (the key never logged,
//! redacted in `Debug`), `page_number`/`page_size` pagination to the end, a client-side
//! rate limit, waits on 429 and retries of 5xx and timeouts with capped backoff. The
//! rules (which header says how long, how long to back off, which base URLs may be plain
//! http) are pure functions in [`entitlement_sync::reconcile`]; this is the IO.

use entitlement_sync::reconcile::{self, backoff, retry_wait, LIVE_URL, TEST_URL};
use entitlement_sync::wire::Timestamp;
use reqwest::header::{HeaderMap, ACCEPT, DATE};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// An API key. `Debug` never shows it; nothing logs it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (trimmed); `None` when empty.
    pub fn new(key: &str) -> Option<ApiKey> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://live.dodopayments.com`, ... (checked: plain http for loopback only).
    pub base_url: String,
    /// The bearer key.
    pub key: ApiKey,
    /// Requests per second, at most.
    pub rate: f64,
    /// Items per page (at most 100).
    pub page_size: u32,
    /// One request's timeout.
    pub timeout: Duration,
    /// Retries of a 5xx, a timeout or a connection failure.
    pub retries: u32,
    /// Retries of a 429.
    pub rate_limited_retries: u32,
    /// The longest wait a 429's headers may ask for; longer ones wait this long.
    pub max_wait: Duration,
}

impl Config {
    /// The defaults for `base_url` and `key`.
    pub fn new(base_url: String, key: ApiKey) -> Config {
        Config {
            base_url,
            key,
            rate: entitlement_sync::reconcile::DEFAULT_RATE,
            page_size: entitlement_sync::reconcile::MAX_PAGE_SIZE,
            timeout: Duration::from_secs(30),
            retries: 4,
            rate_limited_retries: 8,
            max_wait: Duration::from_secs(120),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 or 403: the key cannot be used. Fatal: the run stops (exit 2).
    #[error("{0}")]
    Refused(String),
    /// 404.
    #[error("GET {path}: not found (404)")]
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// Any other non-success status (after retries where they apply).
    #[error("GET {path}: HTTP {status}{message}")]
    Status {
        /// The path asked for.
        path: String,
        /// The status code.
        status: u16,
        /// `: <the API's message>` when it sent one.
        message: String,
    },
    /// No response (after retries): connection, timeout, body.
    #[error("GET {path}: {message}")]
    Transport {
        /// The path asked for.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A 2xx whose body is not what the API documents.
    #[error("GET {path}: unexpected response body: {message}")]
    Body {
        /// The path asked for.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A successful response: its JSON body and its `Date`.
#[derive(Debug)]
pub struct Response {
    /// The body.
    pub body: Value,
    /// The `Date` header, or, when it is missing, does not parse or is more than
    /// [`reconcile::DATE_TOLERANCE`] from the local clock, the local clock at the
    /// response ([`reconcile::response_instant`]).
    pub date: Timestamp,
}

/// The client. Share it by reference; the rate limit covers every request it makes.
pub struct Client {
    http: reqwest::Client,
    config: Config,
    /// When the next request may start.
    next_slot: tokio::sync::Mutex<Instant>,
    requests: AtomicU64,
    /// Responses whose `Date` was too far from the local clock to be used.
    skewed_dates: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `config` (HTTP/1.1 only).
    ///
    /// # Errors
    ///
    /// The HTTP client cannot be built (no TLS backend).
    pub fn new(config: Config) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .http1_only()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("entsync/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the http client: {e}"))?;
        Ok(Client {
            http,
            config,
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            skewed_dates: AtomicU64::new(0),
        })
    }

    /// Requests sent so far (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses so far whose `Date` was further from the local clock than
    /// [`reconcile::DATE_TOLERANCE`], so that the local clock versioned their objects.
    pub fn skewed_dates(&self) -> u64 {
        self.skewed_dates.load(Ordering::Relaxed)
    }

    /// The instant a response (to `path`) showed the API's state at, from its `Date`
    /// header and the local clock ([`reconcile::response_instant`]); a `Date` too far
    /// off is counted and warned about (once per client, then at debug level).
    fn response_instant(&self, date: Option<&str>, path: &str) -> Timestamp {
        let instant = reconcile::response_instant(date.and_then(http_date), chrono::Utc::now());
        if let reconcile::ResponseInstant::Skewed { date, local } = instant {
            let offset_s = (date - local).num_seconds();
            if self.skewed_dates.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    %path,
                    %date,
                    %local,
                    offset_s,
                    "the API's Date is more than {} minutes from the local clock: versioning its objects by the local clock instead (check this host's clock, and any proxy in between)",
                    reconcile::DATE_TOLERANCE.num_minutes()
                );
            } else {
                tracing::debug!(%path, %date, offset_s, "the API's Date is off; local clock used");
            }
        }
        instant.at()
    }

    /// Items per page.
    pub fn page_size(&self) -> u32 {
        self.config.page_size
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    /// Waits for the rate limit's next slot.
    async fn pace(&self) {
        let interval = Duration::from_secs_f64(1.0 / self.config.rate);
        let start = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    /// `GET base/<segments...>?query`, with the rate limit, waits on 429 and retries.
    ///
    /// # Errors
    ///
    /// [`ApiError`]; [`ApiError::Refused`] for 401 and 403.
    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Response, ApiError> {
        let mut url =
            reqwest::Url::parse(&self.config.base_url).map_err(|e| ApiError::Transport {
                path: segments.join("/"),
                message: format!("bad base url: {e}"),
            })?;
        {
            let mut path = url.path_segments_mut().map_err(|()| ApiError::Transport {
                path: segments.join("/"),
                message: "the base url cannot have a path".into(),
            })?;
            path.pop_if_empty().extend(segments);
        }
        let path = url.path().to_string();
        let mut attempt = 0u32;
        let mut limited = 0u32;
        loop {
            self.pace().await;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .get(url.clone())
                .query(query)
                .bearer_auth(&self.config.key.0)
                .header(ACCEPT, "application/json")
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    if attempt < self.config.retries {
                        tracing::debug!(%path, error = %e, attempt, "request failed; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(ApiError::Transport {
                        path,
                        message: describe(&e),
                    });
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let date = self.response_instant(header(&headers, DATE.as_str()), &path);
            if status.is_success() {
                let bytes = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) if attempt < self.config.retries => {
                        tracing::debug!(%path, error = %e, attempt, "body failed; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => {
                        return Err(ApiError::Transport {
                            path,
                            message: describe(&e),
                        })
                    }
                };
                let body = serde_json::from_slice(&bytes).map_err(|e| ApiError::Body {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                return Ok(Response { body, date });
            }
            let message = resp
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string));
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(ApiError::Refused(self.refusal(
                        status,
                        &path,
                        message.as_deref(),
                    )))
                }
                StatusCode::NOT_FOUND => return Err(ApiError::NotFound { path }),
                StatusCode::TOO_MANY_REQUESTS if limited < self.config.rate_limited_retries => {
                    let wait = retry_wait(
                        header(&headers, "retry-after-ms"),
                        header(&headers, "retry-after"),
                        header(&headers, "x-ratelimit-reset"),
                        chrono::Utc::now(),
                    )
                    .unwrap_or_else(|| backoff(limited))
                    .min(self.config.max_wait);
                    tracing::info!(%path, wait_ms = wait.as_millis() as u64, "rate limited (429); waiting");
                    // The wait holds the rate limit for every request of this client.
                    {
                        let mut next = self.next_slot.lock().await;
                        *next = (*next).max(Instant::now() + wait);
                    }
                    limited += 1;
                    continue;
                }
                s if (s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT)
                    && attempt < self.config.retries =>
                {
                    tracing::debug!(%path, status = s.as_u16(), attempt, "server error; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                s => {
                    return Err(ApiError::Status {
                        path,
                        status: s.as_u16(),
                        message: message.map(|m| format!(": {m}")).unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// The message of a 401/403, with what to do about it.
    fn refusal(&self, status: StatusCode, path: &str, message: Option<&str>) -> String {
        let said = message.map(|m| format!(" ({m})")).unwrap_or_default();
        let base = self.config.base_url.as_str();
        let hint = if status == StatusCode::FORBIDDEN {
            "give the key read access in the Dodo dashboard (Developer > API Keys)".to_string()
        } else if base == LIVE_URL {
            "check DODO_PAYMENTS_API_KEY / --api-key; a test-mode key is refused by the live \
             host: use --environment test for it"
                .to_string()
        } else if base == TEST_URL {
            "check DODO_PAYMENTS_API_KEY / --api-key; a live-mode key is refused by the test \
             host: use --environment live for it"
                .to_string()
        } else {
            "check DODO_PAYMENTS_API_KEY / --api-key".to_string()
        };
        format!(
            "this key cannot read entitlements: {base} answered {} {} to GET {path}{said}; {hint}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
        )
    }

    /// Pages through a list endpoint from page number `first` on.
    pub fn pages<'a>(
        &'a self,
        segments: Vec<String>,
        query: Vec<(&'static str, String)>,
        id_field: &'static str,
        first: u32,
    ) -> Pager<'a> {
        Pager {
            client: self,
            segments,
            query,
            id_field,
            page: first,
            done: false,
            seen: HashSet::new(),
        }
    }
}

/// One list endpoint, page by page: `page_number` counts up from 0 (never the SDKs'
/// `(page_number or 1) + 1`, which skips page 1); an empty page or one shorter than the
/// `page_size` asked for is the last. A full page with nothing new on it (a server that
/// ignores `page_number`) ends the listing as a failed request, and so does a body
/// without `items`: the run reports the rest as not read.
pub struct Pager<'a> {
    client: &'a Client,
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
    id_field: &'static str,
    page: u32,
    done: bool,
    seen: HashSet<String>,
}

/// One page of items, with the response's `Date`.
#[derive(Debug)]
pub struct Page {
    /// The items, as the API sent them.
    pub items: Vec<Value>,
    /// The response's `Date` (or the local clock at the response).
    pub date: Timestamp,
    /// Its `page_number`.
    pub number: u32,
    /// It is the last: the listing is over after it.
    pub last: bool,
}

impl Pager<'_> {
    /// The next page, or `None` after the last.
    ///
    /// # Errors
    ///
    /// The request's [`ApiError`] (the listing is over then).
    pub async fn next(&mut self) -> Result<Option<Page>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let size = self.client.page_size();
        let mut query = self.query.clone();
        query.push(("page_number", self.page.to_string()));
        query.push(("page_size", size.to_string()));
        let segments: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        let resp = match self.client.get(&segments, &query).await {
            Ok(r) => r,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        let items = match resp.body {
            Value::Object(mut map) => match map.remove("items") {
                Some(Value::Array(items)) => items,
                Some(Value::Null) => Vec::new(),
                None => {
                    self.done = true;
                    return Err(ApiError::Body {
                        path: self.segments.join("/"),
                        message: "no items in the page".into(),
                    });
                }
                Some(_) => {
                    self.done = true;
                    return Err(ApiError::Body {
                        path: self.segments.join("/"),
                        message: "items is not an array".into(),
                    });
                }
            },
            _ => {
                self.done = true;
                return Err(ApiError::Body {
                    path: self.segments.join("/"),
                    message: "not a json object with items".into(),
                });
            }
        };
        let mut fresh = 0usize;
        for item in &items {
            if let Some(id) = item.get(self.id_field).and_then(Value::as_str) {
                if self.seen.insert(id.to_string()) {
                    fresh += 1;
                }
            } else {
                fresh += 1;
            }
        }
        if items.len() < size as usize {
            self.done = true;
        } else if fresh == 0 {
            // A full page of items already listed: the server ignores `page_number`, or
            // a page's worth was inserted ahead of the cursor. Going on could loop, and
            // stopping quietly would report a partial listing as complete.
            self.done = true;
            return Err(ApiError::Body {
                path: self.segments.join("/"),
                message: format!(
                    "page {} repeats only items already listed; the rest of the list was not read",
                    self.page
                ),
            });
        }
        let number = self.page;
        self.page += 1;
        if items.is_empty() {
            return Ok(None);
        }
        Ok(Some(Page {
            items,
            date: resp.date,
            number,
            last: self.done,
        }))
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// An HTTP date (IMF-fixdate, as in `Date`).
fn http_date(v: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc2822(v.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A reqwest error with its causes, on one line.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_redacted() {
        let key = ApiKey::new(" sk_live_secret ").expect("key");
        let config = Config::new("https://live.dodopayments.com".into(), key);
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk_live_secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(ApiKey::new("  ").is_none());
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            http_date("Tue, 01 Dec 2026 20:41:51 GMT"),
            entitlement_sync::wire::parse_timestamp("2026-12-01T20:41:51Z")
        );
        assert_eq!(http_date("yesterday"), None);
    }
}
