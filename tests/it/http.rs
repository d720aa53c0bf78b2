//! `entsync serve` over real HTTP: the real binary on 127.0.0.1:0 with a real SQLite
//! file, spoken to by a minimal HTTP/1.1 client (so that the tests can send what a
//! well-behaved client would refuse to: bytes outside ASCII in headers, a declared
//! length without the body).

use entitlement_sync::verify::{sign, Secret};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_entsync");

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/http")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------------------------------
// The server under test

pub(crate) struct Server {
    child: Child,
    pub(crate) addr: SocketAddr,
    db: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `entsync serve` on `db` with the test secret and extra environment, and
    /// waits for its `listening on http://ADDR` line.
    pub(crate) fn start(db: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        let log = db.with_extension(format!("{}.log", std::process::id()));
        Server::start_logged(db.as_os_str(), log, env, args)
    }

    /// [`Server::start`] on any `--db` (a file or a URL), logging to `log`.
    pub(crate) fn start_logged(
        db: impl AsRef<std::ffi::OsStr>,
        log: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Server {
        let db = Path::new(db.as_ref());
        let stderr = std::fs::File::create(&log).expect("server log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("DODO_PAYMENTS_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .env_remove("ENTSYNC_API_TOKEN")
            .env_remove("ENTSYNC_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start entsync serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no `listening on` line; server log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server {
            child,
            addr,
            db: db.to_path_buf(),
            log,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, now.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `entsync deliveries --json` on the server's database.
    fn deliveries(&self) -> Vec<Value> {
        cli_json(&self.db, &["deliveries", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn post(&self, id: &str, body: &[u8]) -> Response {
        post_webhook(self.addr, SECRET, id, now(), body)
    }

    pub(crate) fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an `entsync` command and parses its stdout as JSON.
pub(crate) fn cli_json(db: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run entsync");
    assert!(
        out.status.success(),
        "entsync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client

#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body {:?} is not json: {e}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Sends raw request bytes on a fresh connection and reads the answer until the server
/// closes it.
pub(crate) fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(raw).expect("send request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read response");
    parse_response(&answer)
}

fn head(method: &str, path: &str, headers: &[(&str, &[u8])], length: Option<usize>) -> Vec<u8> {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n").into_bytes();
    if let Some(n) = length {
        raw.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    for (k, v) in headers {
        raw.extend_from_slice(k.as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(v);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Response {
    let mut raw = head(method, path, headers, Some(body.len()));
    raw.extend_from_slice(body);
    exchange(addr, &raw)
}

pub(crate) fn post_webhook(
    addr: SocketAddr,
    secret: &str,
    id: &str,
    ts: i64,
    body: &[u8],
) -> Response {
    let key = Secret::parse(secret).expect("test secret");
    let signature = sign(&key, id, ts, body);
    let ts = ts.to_string();
    request(
        addr,
        "POST",
        "/webhooks/dodo",
        &[
            ("Content-Type", b"application/json"),
            ("webhook-id", id.as_bytes()),
            ("webhook-timestamp", ts.as_bytes()),
            ("webhook-signature", signature.as_bytes()),
        ],
        body,
    )
}

// ---------------------------------------------------------------------------------------
// The tests

/// One row of the status-code table: a request and what must come back.
struct Case {
    name: &'static str,
    send: Box<dyn Fn(&Server) -> Response>,
    status: u16,
    /// `error` of a 4xx body, or `outcome` of a 2xx body.
    field: Option<(&'static str, &'static str)>,
    /// The webhook id this row stores, when it must be stored.
    stored: Option<&'static str>,
}

fn case(
    name: &'static str,
    status: u16,
    field: Option<(&'static str, &'static str)>,
    stored: Option<&'static str>,
    send: impl Fn(&Server) -> Response + 'static,
) -> Case {
    Case {
        name,
        send: Box::new(send),
        status,
        field,
        stored,
    }
}

fn signed_headers(secret: &str, id: &str, ts: &str, body: &[u8]) -> (String, String) {
    let key = Secret::parse(secret).expect("test secret");
    let ts_num = ts.parse().unwrap_or(0);
    (ts.to_string(), sign(&key, id, ts_num, body))
}

fn webhook_with(
    s: &Server,
    id: Option<&[u8]>,
    ts: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Response {
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", b"application/json")];
    if let Some(id) = id {
        headers.push(("webhook-id", id));
    }
    if let Some(ts) = ts {
        headers.push(("webhook-timestamp", ts.as_bytes()));
    }
    if let Some(sig) = signature {
        headers.push(("webhook-signature", sig.as_bytes()));
    }
    request(s.addr, "POST", "/webhooks/dodo", &headers, body)
}

/// Every status code of the `serve` contract, in an order that tells one grant's story;
/// then: what was stored, what was not, and what `/metrics` counted.
#[test]
fn every_status_code_of_the_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--max-body", "64KiB"]);

    let cases = vec![
        // Refused by the signature check: 401 with the error kind, nothing stored.
        case(
            "no webhook-id",
            401,
            Some(("error", "missing_header")),
            None,
            |s| {
                let (ts, sig) = signed_headers(SECRET, "msg_x", &now().to_string(), b"{}");
                webhook_with(s, None, Some(&ts), Some(&sig), b"{}")
            },
        ),
        case(
            "no signature",
            401,
            Some(("error", "missing_header")),
            None,
            |s| webhook_with(s, Some(b"msg_nosig"), Some(&now().to_string()), None, b"{}"),
        ),
        case(
            "id not visible ascii",
            401,
            Some(("error", "invalid_header")),
            None,
            |s| {
                let (ts, sig) = signed_headers(SECRET, "msg_x", &now().to_string(), b"{}");
                webhook_with(s, Some(b"msg_\xff"), Some(&ts), Some(&sig), b"{}")
            },
        ),
        case(
            "timestamp not an integer",
            401,
            Some(("error", "invalid_timestamp")),
            None,
            |s| webhook_with(s, Some(b"msg_badts"), Some("1.5"), Some("v1,AAAA"), b"{}"),
        ),
        case(
            "stale timestamp",
            401,
            Some(("error", "timestamp_too_old")),
            None,
            |s| {
                let body = fixture("grant_delivered.json");
                post_webhook(s.addr, SECRET, "msg_old", now() - 301, &body)
            },
        ),
        case(
            "future timestamp",
            401,
            Some(("error", "timestamp_too_new")),
            None,
            |s| {
                let body = fixture("grant_delivered.json");
                post_webhook(s.addr, SECRET, "msg_future", now() + 301, &body)
            },
        ),
        case(
            "wrong secret",
            401,
            Some(("error", "invalid_signature")),
            None,
            |s| {
                let body = fixture("grant_delivered.json");
                post_webhook(s.addr, OTHER_SECRET, "msg_wrong", now(), &body)
            },
        ),
        case(
            "body changed after signing",
            401,
            Some(("error", "invalid_signature")),
            None,
            |s| {
                let body = fixture("grant_delivered.json");
                let (ts, sig) = signed_headers(SECRET, "msg_tamper", &now().to_string(), &body);
                let mut changed = body.clone();
                changed.push(b'\n');
                webhook_with(s, Some(b"msg_tamper"), Some(&ts), Some(&sig), &changed)
            },
        ),
        case(
            "signed over re-serialized json",
            401,
            Some(("error", "invalid_signature")),
            None,
            |s| {
                let body = fixture("grant_delivered.json");
                let value: Value = serde_json::from_slice(&body).expect("fixture is json");
                let compact = serde_json::to_vec(&value).expect("encode");
                let (ts, sig) = signed_headers(SECRET, "msg_reser", &now().to_string(), &compact);
                webhook_with(s, Some(b"msg_reser"), Some(&ts), Some(&sig), &body)
            },
        ),
        // Too large: refused before the body is read (it is never even sent here).
        case(
            "declared length over the limit",
            413,
            Some(("error", "body_too_large")),
            None,
            |s| {
                let (ts, sig) = signed_headers(SECRET, "msg_big", &now().to_string(), b"");
                let raw = head(
                    "POST",
                    "/webhooks/dodo",
                    &[
                        ("webhook-id", b"msg_big"),
                        ("webhook-timestamp", ts.as_bytes()),
                        ("webhook-signature", sig.as_bytes()),
                    ],
                    Some(64 * 1024 + 1),
                );
                exchange(s.addr, &raw)
            },
        ),
        // Verified: 200 for every outcome.
        case(
            "pending grant",
            200,
            Some(("outcome", "applied")),
            Some("msg_pending"),
            |s| s.post("msg_pending", &fixture("grant_pending.json")),
        ),
        case(
            "delivered grant",
            200,
            Some(("outcome", "applied")),
            Some("msg_delivered"),
            |s| s.post("msg_delivered", &fixture("grant_delivered.json")),
        ),
        case(
            "redelivery, same id",
            200,
            Some(("outcome", "duplicate")),
            Some("msg_delivered"),
            |s| s.post("msg_delivered", &fixture("grant_delivered.json")),
        ),
        case(
            "same snapshot, another id",
            200,
            Some(("outcome", "duplicate")),
            Some("msg_replayed"),
            |s| s.post("msg_replayed", &fixture("grant_delivered.json")),
        ),
        case(
            "older snapshot, later",
            200,
            Some(("outcome", "stale")),
            Some("msg_pending_again"),
            |s| {
                // Legal, but older than what the grant already reflects.
                s.post("msg_pending_again", &fixture("grant_pending_new_link.json"))
            },
        ),
        case(
            "manual revocation",
            200,
            Some(("outcome", "applied")),
            Some("msg_manual"),
            |s| s.post("msg_manual", &fixture("grant_revoked_manual.json")),
        ),
        case(
            "restoring a manual revocation",
            200,
            Some(("outcome", "rejected")),
            Some("msg_restore"),
            |s| s.post("msg_restore", &fixture("grant_restored_after_manual.json")),
        ),
        case(
            "unknown event type",
            200,
            Some(("outcome", "unhandled")),
            Some("msg_unknown"),
            |s| s.post("msg_unknown", &fixture("unknown_type.json")),
        ),
        case(
            "not json",
            200,
            Some(("outcome", "malformed")),
            Some("msg_notjson"),
            |s| s.post("msg_notjson", &fixture("not_json.txt")),
        ),
        case(
            "not utf-8",
            200,
            Some(("outcome", "malformed")),
            Some("msg_notutf8"),
            |s| s.post("msg_notutf8", &fixture("not_utf8.bin")),
        ),
        case(
            "payload missing fields",
            200,
            Some(("outcome", "malformed")),
            Some("msg_nocustomer"),
            |s| s.post("msg_nocustomer", &fixture("grant_without_customer.json")),
        ),
        case(
            "credit ledger entry",
            200,
            Some(("outcome", "applied")),
            Some("msg_credit"),
            |s| s.post("msg_credit", &fixture("credit_added.json")),
        ),
        case(
            "secret rotation: a second signature entry",
            200,
            Some(("outcome", "duplicate")),
            Some("msg_credit"),
            |s| {
                let body = fixture("credit_added.json");
                let ts = now();
                let sigs = format!(
                    "{} {}",
                    sign(
                        &Secret::parse(OTHER_SECRET).expect("secret"),
                        "msg_credit",
                        ts,
                        &body
                    ),
                    sign(
                        &Secret::parse(SECRET).expect("secret"),
                        "msg_credit",
                        ts,
                        &body
                    )
                );
                webhook_with(
                    s,
                    Some(b"msg_credit"),
                    Some(&ts.to_string()),
                    Some(&sigs),
                    &body,
                )
            },
        ),
        // Routing.
        case(
            "unknown route",
            404,
            Some(("error", "not_found")),
            None,
            |s| s.get("/v1/nothing/here"),
        ),
        case(
            "webhook route with a suffix",
            404,
            Some(("error", "not_found")),
            None,
            |s| request(s.addr, "POST", "/webhooks/dodo/extra", &[], b"{}"),
        ),
        case("GET on the webhook route", 405, None, None, |s| {
            s.get("/webhooks/dodo")
        }),
        case("healthz", 200, Some(("status", "ok")), None, |s| {
            s.get("/healthz")
        }),
    ];

    let mut failures = Vec::new();
    for c in &cases {
        let r = (c.send)(&server);
        let got_field = c.field.map(|(k, _)| {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.get(k)?.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("<{}>", r.text()))
        });
        if r.status != c.status || got_field.as_deref() != c.field.map(|(_, v)| v) {
            failures.push(format!(
                "{}: expected {} {:?}, got {} {:?}",
                c.name, c.status, c.field, r.status, got_field
            ));
        }
        if (200..300).contains(&r.status) && r.header("content-type") != Some("application/json") {
            failures.push(format!(
                "{}: content-type {:?}",
                c.name,
                r.header("content-type")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nserver log:\n{}",
        failures.join("\n"),
        server.log()
    );

    // Exactly the verified deliveries are stored, with the outcome they were answered.
    let stored: BTreeMap<String, String> = server
        .deliveries()
        .iter()
        .filter_map(|d| {
            Some((
                d["delivery_id"].as_str()?.to_string(),
                d["outcome"].as_str()?.to_string(),
            ))
        })
        .collect();
    let expected: BTreeSet<&str> = cases.iter().filter_map(|c| c.stored).collect();
    assert_eq!(
        stored.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        expected,
        "signature failures must store nothing; every 2xx must be stored"
    );
    for (id, outcome) in [
        ("msg_delivered", "applied"),
        ("msg_replayed", "duplicate"),
        ("msg_pending_again", "stale"),
        ("msg_restore", "rejected"),
        ("msg_unknown", "unhandled"),
        ("msg_notjson", "malformed"),
    ] {
        assert_eq!(stored.get(id).map(String::as_str), Some(outcome), "{id}");
    }
    let quarantine = cli_json(&server.db, &["rejected", "--json"]);
    assert_eq!(quarantine[0]["delivery_id"], "msg_restore", "{quarantine}");

    // The read API sees the story's end: revoked for manual, the restoration refused.
    let access = server.get("/v1/access/cus_http_1/ent_http_1").json();
    assert_eq!(
        (
            &access["allowed"],
            &access["status"],
            &access["reason"],
            &access["grant_id"]
        ),
        (
            &Value::Bool(false),
            &Value::from("revoked"),
            &Value::from("manual"),
            &Value::from("grant_http_1")
        )
    );
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    let text = metrics.text();
    for line in [
        "entsync_signature_failures_total{kind=\"missing_header\"} 2",
        "entsync_signature_failures_total{kind=\"invalid_header\"} 1",
        "entsync_signature_failures_total{kind=\"invalid_timestamp\"} 1",
        "entsync_signature_failures_total{kind=\"timestamp_too_old\"} 1",
        "entsync_signature_failures_total{kind=\"timestamp_too_new\"} 1",
        "entsync_signature_failures_total{kind=\"invalid_signature\"} 3",
        "entsync_webhook_body_too_large_total 1",
        "entsync_deliveries_total{outcome=\"applied\"} 4",
        "entsync_deliveries_total{outcome=\"duplicate\"} 3",
        "entsync_deliveries_total{outcome=\"stale\"} 1",
        "entsync_deliveries_total{outcome=\"rejected\"} 1",
        "entsync_deliveries_total{outcome=\"unhandled\"} 1",
        "entsync_deliveries_total{outcome=\"malformed\"} 3",
        "entsync_deliveries_by_type_total{type=\"loyalty_points.sparkled\"} 1",
        "entsync_deliveries_by_type_total{type=\"entitlement_grant.delivered\"} 5",
        "entsync_quarantine_size 1",
        "entsync_http_responses_total{route=\"/webhooks/dodo\",code=\"401\"} 9",
        "entsync_http_responses_total{route=\"/webhooks/dodo\",code=\"413\"} 1",
        "entsync_http_responses_total{route=\"(unmatched)\",code=\"404\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("entsync_newest_applied_event_age_seconds ")),
        "{text}"
    );
    // Logs name failures but never carry the secret or a body.
    let log = server.log();
    assert!(log.contains("timestamp_too_old"), "{log}");
    assert!(
        !log.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") && !log.contains("oauth2/authorize"),
        "{log}"
    );
    Ok(())
}

/// A body over the limit sent in chunks (no declared length) is cut off at the limit.
#[test]
fn a_chunked_body_over_the_limit_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--max-body", "1KiB"]);
    let mut raw = head(
        "POST",
        "/webhooks/dodo",
        &[
            ("Transfer-Encoding", b"chunked"),
            ("webhook-id", b"msg_chunked"),
        ],
        None,
    );
    for _ in 0..2 {
        raw.extend_from_slice(format!("{:x}\r\n", 600).as_bytes());
        raw.extend_from_slice(&[b'a'; 600]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(server.addr, &raw);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("body_too_large"))
    );
    // Under the limit, the same route verifies as usual.
    let small = server.post("msg_small", &fixture("unknown_type.json"));
    assert_eq!(
        (small.status, small.json()["outcome"].as_str()),
        (200, Some("unhandled"))
    );
    assert!(server
        .deliveries()
        .iter()
        .all(|d| d["delivery_id"] != "msg_chunked"));
    Ok(())
}

/// The read API: open without ENTSYNC_API_TOKEN, bearer-only with it; webhooks,
/// health and metrics never ask for it.
#[test]
fn the_read_api_with_and_without_a_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let paths = [
        "/v1/access/cus_http_1/ent_http_1",
        "/v1/customers/cus_http_1",
        "/v1/credits/cus_http_1/cent_http_1",
    ];
    {
        let open = Server::start(&dir.path().join("open.db"), &[], &[]);
        for (id, f) in [
            ("msg_d", "grant_delivered.json"),
            ("msg_c", "credit_added.json"),
        ] {
            assert_eq!(open.post(id, &fixture(f)).status, 200);
        }
        for p in paths {
            assert_eq!(open.get(p).status, 200, "{p}");
        }
        let access = open.get(paths[0]).json();
        assert_eq!(access["allowed"], true, "{access}");
        assert_eq!(access["status"], "delivered");
        assert_eq!(access["reason"], Value::Null);
        assert_eq!(access["as_of"], "2026-05-01T10:00:00.250Z");
        let denied = open.get("/v1/access/cus_http_1/ent_other").json();
        assert_eq!(
            (&denied["allowed"], &denied["reason"]),
            (&Value::Bool(false), &Value::from("no_grant"))
        );
        let view = open.get(paths[1]).json();
        assert_eq!(view["customer_id"], "cus_http_1");
        assert_eq!(view["grants"][0]["grant_id"], "grant_http_1", "{view}");
        assert_eq!(view["credits"][0]["balance"], "1000.500", "{view}");
        let balance = open.get(paths[2]).json();
        assert_eq!(
            (&balance["balance"], &balance["overage"]),
            (&Value::from("1000.500"), &Value::from("0")),
            "{balance}"
        );
        let none = open.get("/v1/credits/cus_http_1/cent_none").json();
        assert_eq!(none["balance"], "0", "{none}");
        // Percent-encoded path segments are decoded.
        assert_eq!(
            open.get("/v1/access/cus%5Fhttp%5F1/ent%5Fhttp%5F1").json()["allowed"],
            true
        );
    }
    let token = "s3cret-token";
    let locked = Server::start(
        &dir.path().join("locked.db"),
        &[("ENTSYNC_API_TOKEN", token)],
        &[],
    );
    assert_eq!(
        locked
            .post("msg_d", &fixture("grant_delivered.json"))
            .status,
        200
    );
    let bearer = format!("Bearer {token}");
    let lower = format!("bearer {token}");
    for p in paths {
        for (auth, expected) in [
            (None, 401),
            (Some("Bearer wrong-token".to_string()), 401),
            (Some(format!("Bearer {token}x")), 401),
            (Some(format!("Basic {token}")), 401),
            (Some(token.to_string()), 401),
            (Some(bearer.clone()), 200),
            (Some(lower.clone()), 200),
        ] {
            let headers: Vec<(&str, &[u8])> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a.as_bytes())])
                .unwrap_or_default();
            let r = request(locked.addr, "GET", p, &headers, b"");
            assert_eq!(r.status, expected, "{p} with {auth:?}: {}", r.text());
            if expected == 401 {
                assert_eq!(r.json()["error"], "unauthorized");
                assert!(r
                    .header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Bearer")));
            }
        }
    }
    // /healthz stays open; /metrics asks for the token too.
    let health = locked.get("/healthz");
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok"))
    );
    let metrics = locked.get("/metrics");
    assert_eq!(metrics.status, 401, "{}", metrics.text());
    assert_eq!(metrics.json()["error"], "unauthorized");
    let metrics = request(
        locked.addr,
        "GET",
        "/metrics",
        &[("Authorization", bearer.as_bytes())],
        b"",
    );
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .text()
        .contains("entsync_http_connections_accepted_total "));
    assert!(metrics.text().contains("entsync_webhook_max_pending 10000"));
    Ok(())
}

/// Runs `entsync simulate` against a server; returns its JSON report.
fn simulate(url: &str, seed: u64, epoch: i64, extra: &[&str]) -> (bool, Value) {
    let out = Command::new(BIN)
        .args(["simulate", "--url", url, "--secret", SECRET, "--json"])
        .args(["--seed", &seed.to_string(), "--epoch", &epoch.to_string()])
        .args(extra)
        .env_remove("ENTSYNC_API_TOKEN")
        .output()
        .expect("run entsync simulate");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "simulate output is not json ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The grants of a database, minus which delivery carried the state snapshot (two
/// deliveries may carry the same snapshot; which arrived first depends on the order).
fn grants(db: &Path) -> Vec<Value> {
    let mut list = cli_json(db, &["grants", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    for g in &mut list {
        if let Some(o) = g.as_object_mut() {
            o.remove("delivery_id");
        }
    }
    list
}

/// In order without duplicates, or shuffled with many: the same answers and the same
/// state (simulate's own model is the in-order answer).
#[test]
fn duplicates_and_reordering_give_the_same_answers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let epoch = now();
    let mut states = Vec::new();
    for (name, duplicates) in [("a", "0"), ("b", "1.5")] {
        let db = dir.path().join(format!("{name}.db"));
        let server = Server::start(&db, &[], &[]);
        let (ok, report) = simulate(
            &server.url(),
            3,
            epoch,
            &[
                "--customers",
                "40",
                "--concurrency",
                "8",
                "--duplicates",
                duplicates,
                "--verify",
            ],
        );
        assert!(ok, "{report}\n{}", server.log());
        assert_eq!(report["verify"]["mismatches"], 0, "{report}");
        assert!(
            report["verify"]["access_checked"].as_u64() > Some(40),
            "{report}"
        );
        if duplicates != "0" {
            assert!(
                report["outcomes"]["duplicate"].as_u64() > Some(0),
                "{report}"
            );
        }
        states.push((grants(&db), cli_json(&db, &["rejected", "--json"])));
    }
    assert!(!states[0].0.is_empty());
    assert_eq!(states[0].0, states[1].0, "grants differ");
    let quarantined = |q: &Value| -> BTreeSet<String> {
        q.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(format!(
                    "{} {}",
                    r["object_id"].as_str()?,
                    r["to"].as_str()?
                ))
            })
            .collect()
    };
    assert_eq!(
        quarantined(&states[0].1),
        quarantined(&states[1].1),
        "quarantines differ"
    );
    Ok(())
}

/// SIGKILL in the middle of a load: every delivery acknowledged before the kill is
/// stored; after a restart, re-sending everything converges to a clean run's state.
#[test]
fn sigkill_during_load_loses_no_acknowledged_delivery() -> TestResult {
    let dir = tempfile::tempdir()?;
    let epoch = now();
    let args = ["--customers", "120", "--concurrency", "16"];
    let db = dir.path().join("crash.db");
    let acks = dir.path().join("acks.txt");
    let ack_arg = acks.to_string_lossy().into_owned();

    let server = Server::start(&db, &[], &[]);
    let url = server.url();
    let load = std::thread::spawn({
        let ack_arg = ack_arg.clone();
        move || {
            simulate(
                &url,
                9,
                epoch,
                &[&args[..], &["--ack-log", &ack_arg]].concat(),
            )
        }
    });
    // Kill once a good part of the load was acknowledged, while the rest is in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = std::fs::read_to_string(&acks)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the load did not get going:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill();
    let (ok, report) = load.join().map_err(|_| "simulate thread panicked")?;
    assert!(!ok, "the load should have seen the server die: {report}");
    assert!(report["transport_errors"].as_u64() > Some(0), "{report}");

    let acked: BTreeSet<String> = std::fs::read_to_string(&acks)?
        .lines()
        .map(str::to_string)
        .collect();
    let stored: BTreeSet<String> = cli_json(&db, &["deliveries", "--json"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["delivery_id"].as_str().map(str::to_string))
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost, e.g. {lost:?}",
        acked.difference(&stored).count()
    );
    assert!(acked.len() >= 100, "{} acknowledged", acked.len());

    // Restart on the same file and send everything again: all 2xx, answers as expected.
    let again = Server::start(&db, &[], &[]);
    let (ok, report) = simulate(&again.url(), 9, epoch, &[&args[..], &["--verify"]].concat());
    assert!(ok, "{report}\n{}", again.log());
    assert_eq!(report["non_2xx"], 0);
    assert!(
        report["outcomes"]["duplicate"].as_u64() >= Some(acked.len() as u64),
        "{report}"
    );
    drop(again);

    // A clean run of the same deliveries ends in the same state.
    let clean_db = dir.path().join("clean.db");
    let clean = Server::start(&clean_db, &[], &[]);
    let (ok, report) = simulate(&clean.url(), 9, epoch, &[&args[..], &["--verify"]].concat());
    assert!(ok, "{report}");
    drop(clean);
    assert_eq!(grants(&db), grants(&clean_db));
    Ok(())
}

/// SIGTERM: the listener closes, the request in flight completes (and is stored), then
/// the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(&dir.path().join("e.db"), &[], &[]);
    let body = fixture("grant_delivered.json");
    let ts = now();
    let sig = sign(&Secret::parse(SECRET)?, "msg_inflight", ts, &body);
    let ts = ts.to_string();
    let mut raw = head(
        "POST",
        "/webhooks/dodo",
        &[
            ("webhook-id", b"msg_inflight"),
            ("webhook-timestamp", ts.as_bytes()),
            ("webhook-signature", sig.as_bytes()),
        ],
        Some(body.len()),
    );
    let split = body.len() / 2;
    raw.extend_from_slice(&body[..split]);
    let mut stream = TcpStream::connect(server.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.write_all(&raw)?;
    std::thread::sleep(Duration::from_millis(200));

    server.terminate();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait()?.is_none(),
        "exited with a request in flight"
    );
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting connections after SIGTERM"
    );

    stream.write_all(&body[split..])?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let r = parse_response(&answer);
    assert_eq!(
        (r.status, r.json()["outcome"].as_str()),
        (200, Some("applied"))
    );
    let status = server
        .wait_exit(Duration::from_secs(20))
        .ok_or("still running after the drain")?;
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server
        .deliveries()
        .iter()
        .any(|d| d["delivery_id"] == "msg_inflight"));
    Ok(())
}

/// Without a secret `serve` refuses to start and says how to set one; a bad secret or a
/// bad flag is a usage error too.
#[test]
fn serve_refuses_to_start_without_a_usable_secret() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    for (env, args, needle) in [
        (None, vec![], "DODO_PAYMENTS_WEBHOOK_SECRET"),
        (Some(" , "), vec![], "DODO_PAYMENTS_WEBHOOK_SECRET"),
        (Some("whsec_not base64!"), vec![], "secret"),
        (Some(SECRET), vec!["--max-body", "0"], "max-body"),
        (
            Some(SECRET),
            vec!["--listen", "not-an-address"],
            "not-an-address",
        ),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--db"]).arg(&db).args(&args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.env_remove("DODO_PAYMENTS_WEBHOOK_SECRET")
            .env_remove("ENTSYNC_LISTEN");
        if let Some(v) = env {
            cmd.env("DODO_PAYMENTS_WEBHOOK_SECRET", v);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {stderr}");
        assert!(stderr.contains(needle), "{env:?} {args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
    }
    // --secret on the command line works without the environment.
    let mut child = Command::new(BIN)
        .args(["serve", "--db"])
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--secret", SECRET])
        .env_remove("DODO_PAYMENTS_WEBHOOK_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
    Ok(())
}

/// Runs `entsync serve` with `token` as ENTSYNC_API_TOKEN (`None`: unset) and `args`,
/// expecting it to refuse to start: its exit code and stderr. A server that starts
/// anyway is killed after 10 s and shows as exit code `None`.
fn refused_serve(
    db: &Path,
    token: Option<&std::ffi::OsStr>,
    args: &[&str],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--db"])
        .arg(db)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("DODO_PAYMENTS_WEBHOOK_SECRET", SECRET)
        .env_remove("ENTSYNC_API_TOKEN")
        .env_remove("ENTSYNC_LISTEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("ENTSYNC_API_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start entsync serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match child.try_wait().expect("wait for serve") {
            Some(status) => break status.code(),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (code, stderr)
}

/// An API token no client could ever present is refused at start (exit 2, naming the
/// variable), never taken as "no token" (the read API open) nor as a token that locks
/// every client out: not UTF-8, empty, with whitespace at an end (a trailing newline
/// from `$(cat file)` or a secrets file; header values arrive trimmed), with a control
/// character.
#[test]
fn serve_refuses_an_api_token_no_client_could_match() -> TestResult {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    for (token, needle) in [
        (&b"s3cret\xff"[..], "not UTF-8"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b"s3cret-token\n", "whitespace"),
        (b" s3cret-token", "whitespace"),
        (b"s3cret\x07token", "control character"),
    ] {
        let shown = String::from_utf8_lossy(token).into_owned();
        let (code, stderr) = refused_serve(&db, Some(std::ffi::OsStr::from_bytes(token)), &[]);
        assert_eq!(code, Some(2), "{shown:?}: {stderr}");
        assert!(
            stderr.contains("ENTSYNC_API_TOKEN") && stderr.contains(needle),
            "{shown:?}: {stderr}"
        );
    }
    Ok(())
}

/// `--max-connections` below 2 is a usage error: half the slots at most may wait on the
/// change feed, and with one slot a single stream would hold every webhook off.
#[test]
fn serve_refuses_fewer_than_two_connections() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    for n in ["1", "0"] {
        let (code, stderr) = refused_serve(&db, None, &["--max-connections", n]);
        assert_eq!(code, Some(2), "--max-connections {n}: {stderr}");
        assert!(
            stderr.contains("--max-connections") && stderr.contains("at least 2"),
            "{n}: {stderr}"
        );
    }
    Ok(())
}

/// An empty path segment matches no route: 404 `not_found`, as documented, never an
/// answer about the customer "" (with or without a token).
#[test]
fn an_empty_path_segment_is_not_found() -> TestResult {
    let dir = tempfile::tempdir()?;
    for token in [None, Some("s3cret-token")] {
        let env: Vec<(&str, &str)> = token
            .map(|t| ("ENTSYNC_API_TOKEN", t))
            .into_iter()
            .collect();
        let db = dir.path().join(format!("e{}.db", env.len()));
        let server = Server::start(&db, &env, &[]);
        assert_eq!(
            server
                .post("msg_d", &fixture("grant_delivered.json"))
                .status,
            200
        );
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &[u8])> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a.as_bytes())])
            .unwrap_or_default();
        for path in [
            "/v1/access//ent_http_1",
            "/v1/access/cus_http_1/",
            "/v1/access//",
            "/v1/credits//cent_http_1",
            "/v1/credits/cus_http_1/",
            "/v1/customers/",
            "/v1/customers//",
        ] {
            let r = request(server.addr, "GET", path, &headers, b"");
            assert_eq!(
                (r.status, r.json()["error"].as_str()),
                (404, Some("not_found")),
                "{path} {token:?}: {}",
                r.text()
            );
        }
        let r = request(
            server.addr,
            "GET",
            "/v1/access/cus_http_1/ent_http_1",
            &headers,
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hardening: slow, many and hostile clients (PRODUCT.md, "Hardening")

/// Reads one response from a kept-alive connection: the head, then `Content-Length`
/// bytes of body.
fn read_one(reader: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&line);
    }
    let mut r = parse_response(&head);
    let n: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; n];
    reader.read_exact(&mut body)?;
    r.body = body;
    Ok(r)
}

/// How long until the server closes `stream` (EOF or reset), reading and discarding;
/// `None` if it is still open after `limit`.
fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

const HEALTHZ_KEEP_ALIVE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// A client speaking HTTP/2 with prior knowledge (h2c) gets no HTTP/2 SETTINGS frame:
/// the server speaks HTTP/1.1 only.
#[test]
fn h2c_prior_knowledge_is_not_spoken() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &[]);
    let mut stream = TcpStream::connect(server.addr)?;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")?;
    // An empty SETTINGS frame from the client, as h2 clients send right after.
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    // An HTTP/2 server's first frame is SETTINGS: type 0x4 at byte 3, stream 0.
    let settings = answer.len() >= 9 && answer[3] == 4 && answer[5..9] == [0, 0, 0, 0];
    assert!(
        !settings && (answer.is_empty() || answer.starts_with(b"HTTP/1.1 ")),
        "answered {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
    );
    assert_eq!(server.get("/healthz").status, 200);
    Ok(())
}

/// --header-timeout 1s: a client dribbling its headers is disconnected after about a
/// second; 50 half-open connections (25 silent, 25 with part of a head) are all dropped
/// within the timeout plus slack, while a normal request is answered meanwhile.
#[test]
fn slow_headers_and_half_open_connections_are_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--header-timeout", "1s"]);
    let timeout = Duration::from_secs(1);
    let slack = Duration::from_millis(1500);

    // One byte every 100 ms: 20 bytes would take 2 s, but the head is due after 1 s.
    let mut slow = TcpStream::connect(server.addr)?;
    let mut writer = slow.try_clone()?;
    let dribble = std::thread::spawn(move || {
        for b in b"POST /webhooks/dodo HTTP/1.1\r\nHost: test\r\n"
            .iter()
            .take(40)
        {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cut = time_to_close(&mut slow, timeout + slack).ok_or("dribbling client not cut off")?;
    assert!(
        cut >= timeout - Duration::from_millis(100),
        "cut off early: {cut:?}"
    );
    let _ = dribble.join();

    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(server.addr)?;
        if i % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")?;
        }
        held.push(s);
    }
    // Meanwhile, a well-behaved client is served.
    assert_eq!(server.get("/healthz").status, 200);
    let mut slowest = Duration::ZERO;
    for s in &mut held {
        let left = (timeout + slack).saturating_sub(started.elapsed());
        time_to_close(s, left)
            .ok_or_else(|| format!("a half-open connection outlived {:?}", started.elapsed()))?;
        slowest = started.elapsed();
    }
    eprintln!(
        "header timeout 1s: dribbler cut after {cut:?}; 50 half-open connections all closed {slowest:?} after the first opened"
    );
    assert_eq!(server.get("/healthz").status, 200);
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l
            .strip_prefix("entsync_http_connections_closed_total{reason=\"header_timeout\"} ")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 51)),
        "{metrics}"
    );
    Ok(())
}

/// --body-timeout 1s: headers on time, then a body that stops coming gets 408.
#[test]
fn a_body_slower_than_the_body_timeout_gets_408() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--body-timeout", "1s"]);
    let mut raw = head(
        "POST",
        "/webhooks/dodo",
        &[("webhook-id", b"msg_slow_body")],
        Some(100),
    );
    raw.extend_from_slice(b"{\"type\":");
    let mut stream = TcpStream::connect(server.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let started = Instant::now();
    stream.write_all(&raw)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let took = started.elapsed();
    let r = parse_response(&answer);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (408, Some("body_timeout"))
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    Ok(())
}

/// --idle-timeout 2s with --header-timeout 1s: a kept-alive connection survives a pause
/// longer than the header timeout (idle is not "late headers"), serves a second
/// request, then is closed about 2 s after its last response.
#[test]
fn idle_keep_alive_connections_close_after_the_idle_timeout() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        &dir.path().join("e.db"),
        &[],
        &["--header-timeout", "1s", "--idle-timeout", "2s"],
    );
    let stream = TcpStream::connect(server.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(HEALTHZ_KEEP_ALIVE)?;
    assert_eq!(read_one(&mut reader)?.status, 200);
    std::thread::sleep(Duration::from_millis(1300));
    writer.write_all(HEALTHZ_KEEP_ALIVE)?;
    assert_eq!(read_one(&mut reader)?.status, 200, "closed while idle");
    let mut stream = reader.into_inner();
    let closed =
        time_to_close(&mut stream, Duration::from_secs(5)).ok_or("idle connection not closed")?;
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_millis(3500),
        "closed {closed:?} after the last response"
    );
    eprintln!("idle timeout 2s: closed {closed:?} after the last response");
    Ok(())
}

/// --max-connections 2: a third connection is not served while two are open, is
/// served as soon as one closes, and the server serves normally afterwards.
#[test]
fn max_connections_holds_further_connections_until_one_closes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--max-connections", "2"]);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(HEALTHZ_KEEP_ALIVE)?;
        let mut reader = BufReader::new(s);
        assert_eq!(read_one(&mut reader)?.status, 200);
        open.push(reader);
    }
    let third = TcpStream::connect(server.addr)?;
    let mut writer = third.try_clone()?;
    writer.write_all(HEALTHZ_KEEP_ALIVE)?;
    third.set_read_timeout(Some(Duration::from_millis(800)))?;
    let mut third = BufReader::new(third);
    assert!(
        read_one(&mut third).is_err(),
        "a third connection was served with --max-connections 2"
    );
    let closed_at = Instant::now();
    drop(open.pop());
    third
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))?;
    assert_eq!(read_one(&mut third)?.status, 200);
    eprintln!(
        "max-connections 2: the third was served {:?} after one closed",
        closed_at.elapsed()
    );
    drop(third);
    drop(open);
    for _ in 0..3 {
        assert_eq!(server.get("/healthz").status, 200);
    }
    Ok(())
}

/// A newer build migrates the store while this one serves (a rolling upgrade): this one
/// stops writing, answers 503 so that the retry reaches an upgraded instance, and
/// stores the same delivery once the store is one it knows again.
#[test]
fn a_store_migrated_by_a_newer_build_while_serving_gets_503_not_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    let server = Server::start(&db, &[], &[]);
    assert_eq!(server.post("msg_1", &grant_body("grant_1")).status, 200);
    let newer = NewerBuild::migrate(&db)?;
    let raw = &newer.raw;
    let refused = server.post("msg_2", &grant_body("grant_2"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    let count = |raw: &rusqlite::Connection| -> rusqlite::Result<i64> {
        raw.query_row(
            "SELECT COUNT(*) FROM deliveries WHERE delivery_id = 'msg_2'",
            [],
            |r| r.get(0),
        )
    };
    assert_eq!(count(raw)?, 0, "nothing of a refused delivery is stored");
    newer.undo()?;
    assert_eq!(server.post("msg_2", &grant_body("grant_2")).status, 200);
    assert_eq!(count(raw)?, 1);
    Ok(())
}

/// A delivered grant's body, of its own customer's pair.
fn grant_body(id: &str) -> Vec<u8> {
    crate::support::grant(id, crate::support::St::Delivered, chrono::Utc::now()).body()
}

/// A newer build's migration as this build sees it: the store's schema version one ahead
/// of what it was, until [`NewerBuild::undo`].
struct NewerBuild {
    raw: rusqlite::Connection,
    version: i64,
}

impl NewerBuild {
    fn migrate(db: &std::path::Path) -> rusqlite::Result<NewerBuild> {
        let raw = rusqlite::Connection::open(db)?;
        let version: i64 = raw.pragma_query_value(None, "user_version", |r| r.get(0))?;
        raw.pragma_update(None, "user_version", version + 1)?;
        Ok(NewerBuild { raw, version })
    }

    fn undo(&self) -> rusqlite::Result<()> {
        self.raw.pragma_update(None, "user_version", self.version)
    }
}

/// While commits fail (here: a newer build migrated the store, so this one may not write;
/// the same path as a full disk), `/healthz` says so, 503 with the cause, rather than 200
/// beside webhooks answered 503; it answers 200 again once a commit succeeds.
#[test]
fn healthz_is_503_while_commits_fail_and_200_once_one_succeeds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    let server = Server::start(&db, &[], &[]);
    assert_eq!(server.post("msg_1", &grant_body("grant_1")).status, 200);
    assert_eq!(server.get("/healthz").status, 200);
    let newer = NewerBuild::migrate(&db)?;
    let refused = server.post("msg_2", &grant_body("grant_2"));
    assert_eq!(
        (refused.status, refused.json()["error"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        refused.text()
    );
    let health = server.get("/healthz");
    assert_eq!(health.status, 503, "{}", health.text());
    let h = health.json();
    assert_eq!(
        (h["status"].as_str(), h["error"].as_str()),
        (Some("unavailable"), Some("store_unavailable")),
        "{h}"
    );
    assert!(
        h["cause"].as_str().is_some_and(|c| c.contains("newer")),
        "{h}"
    );
    assert_eq!(health.header("retry-after"), Some("5"));
    newer.undo()?;
    assert_eq!(server.post("msg_2", &grant_body("grant_2")).status, 200);
    let health = server.get("/healthz");
    assert_eq!(
        (health.status, health.json()["status"].as_str()),
        (200, Some("ok")),
        "{}",
        health.text()
    );
    Ok(())
}

/// A store that takes writes again is seen to without a delivery: `serve` writes once a
/// second while its last write failed, so `/healthz` answers 200 again on its own. (A
/// load balancer that stopped routing to the instance would never send the delivery
/// that used to clear it.)
#[test]
fn healthz_recovers_without_a_delivery_once_the_store_takes_writes_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("e.db");
    let server = Server::start(&db, &[], &[]);
    // serve's first pass of time-driven changes, which retries until it succeeds, is
    // done (it took the change counter): what writes later is the fix under test.
    let raw = rusqlite::Connection::open(&db)?;
    let seq = |raw: &rusqlite::Connection| -> rusqlite::Result<i64> {
        raw.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while seq(&raw)? == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seq(&raw)? > 0, "serve's first pass did not run");
    let newer = NewerBuild::migrate(&db)?;
    assert_eq!(server.post("msg_1", &grant_body("grant_1")).status, 503);
    assert_eq!(server.get("/healthz").status, 503);
    newer.undo()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = server.get("/healthz");
        if health.status == 200 || Instant::now() > deadline {
            break health;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.status, 200, "{}", health.text());
    let stored: i64 = newer
        .raw
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))?;
    assert_eq!(stored, 0, "recovered with no delivery stored");
    Ok(())
}

/// --max-pending 2 under 64 concurrent signed deliveries: some get 503 with
/// Retry-After and are not stored; every 2xx is stored; re-sending the refused ones
/// converges to all stored.
#[test]
fn a_full_writer_queue_answers_503_and_loses_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &["--max-pending", "2"]);
    let body = Arc::new(fixture("grant_delivered.json"));
    let addr = server.addr;
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    // Rounds of 64 at once until the bound was hit (a fast disk may need a few).
    for round in 0..5 {
        let barrier = Arc::new(std::sync::Barrier::new(64));
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let (barrier, body) = (barrier.clone(), body.clone());
                std::thread::spawn(move || {
                    let id = format!("msg_q_{round}_{i}");
                    barrier.wait();
                    let r = post_webhook(addr, SECRET, &id, now(), &body);
                    (id, r)
                })
            })
            .collect();
        for t in threads {
            let (id, r) = t.join().map_err(|_| "client thread panicked")?;
            match r.status {
                200 => {
                    acked.insert(id);
                }
                503 => {
                    assert_eq!(r.json()["error"], "queue_full");
                    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                    refused.insert(id);
                }
                other => panic!("{id}: {other} {}", r.text()),
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty(), "no 503 with --max-pending 2");
    eprintln!(
        "max-pending 2: {} acknowledged, {} refused with 503",
        acked.len(),
        refused.len()
    );
    let stored: BTreeSet<String> = server
        .deliveries()
        .iter()
        .filter_map(|d| d["delivery_id"].as_str().map(str::to_string))
        .collect();
    assert!(
        acked.is_subset(&stored),
        "an acknowledged delivery is missing"
    );
    assert!(
        stored.is_disjoint(&refused),
        "a refused delivery was stored"
    );
    // The sender retries: one at a time, each gets through.
    for id in &refused {
        let mut tries = 0;
        loop {
            let r = post_webhook(addr, SECRET, id, now(), &body);
            if r.status == 200 {
                break;
            }
            tries += 1;
            assert!(tries < 20 && r.status == 503, "{id}: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let stored: BTreeSet<String> = server
        .deliveries()
        .iter()
        .filter_map(|d| d["delivery_id"].as_str().map(str::to_string))
        .collect();
    let all: BTreeSet<String> = acked.union(&refused).cloned().collect();
    assert!(all.is_subset(&stored));
    Ok(())
}

/// A client that writes all of a 2 MiB body before reading (Python urllib's way) reads
/// the 413, never a reset: 20 times, with a declared length and chunked.
#[test]
fn a_too_large_body_sent_in_full_still_reads_413() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("e.db"), &[], &[]);
    let big = vec![b'a'; 2 * 1024 * 1024];
    let mut chunked_body = Vec::with_capacity(big.len() + 1024);
    for chunk in big.chunks(64 * 1024) {
        chunked_body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked_body.extend_from_slice(chunk);
        chunked_body.extend_from_slice(b"\r\n");
    }
    chunked_body.extend_from_slice(b"0\r\n\r\n");
    let started = Instant::now();
    for i in 0..20 {
        let mut raw = if i % 2 == 0 {
            head("POST", "/webhooks/dodo", &[], Some(big.len()))
        } else {
            head(
                "POST",
                "/webhooks/dodo",
                &[("Transfer-Encoding", b"chunked")],
                None,
            )
        };
        raw.extend_from_slice(if i % 2 == 0 { &big } else { &chunked_body });
        let mut stream = TcpStream::connect(server.addr)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream
            .write_all(&raw)
            .map_err(|e| format!("round {i}: writing the body: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(|e| format!("round {i}: reading the answer: {e}"))?;
        let r = parse_response(&answer);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (413, Some("body_too_large")),
            "round {i}"
        );
        assert_eq!(r.header("connection"), Some("close"));
    }
    eprintln!(
        "413 after a full 2 MiB body: 20/20 in {:?}",
        started.elapsed()
    );
    assert_eq!(server.get("/healthz").status, 200);
    Ok(())
}

/// SIGTERM with an idle kept-alive connection, a silent one and one with half a head
/// open: the server closes them at once and exits 0 well before --shutdown-timeout.
#[test]
fn sigterm_does_not_wait_for_idle_or_half_open_connections() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(&dir.path().join("e.db"), &[], &["--shutdown-timeout", "30"]);
    let idle = TcpStream::connect(server.addr)?;
    idle.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&idle).write_all(HEALTHZ_KEEP_ALIVE)?;
    let mut reader = BufReader::new(idle);
    assert_eq!(read_one(&mut reader)?.status, 200);
    let mut idle = reader.into_inner();
    let mut silent = TcpStream::connect(server.addr)?;
    let mut partial = TcpStream::connect(server.addr)?;
    partial.write_all(b"POST /webhooks/dodo HTTP/1.1\r\nHost: te")?;
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(5))
        .ok_or("still running 5 s after SIGTERM")?;
    let exited = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    for (name, s) in [
        ("idle", &mut idle),
        ("silent", &mut silent),
        ("partial", &mut partial),
    ] {
        assert!(
            time_to_close(s, Duration::from_secs(2)).is_some(),
            "{name} still open"
        );
    }
    eprintln!("SIGTERM with 3 idle/half-open connections: exited after {exited:?}");
    assert!(exited < Duration::from_secs(3), "{exited:?}");
    Ok(())
}

/// SIGTERM with a long poll (`wait=300`) and a stream open: the long poll is answered at
/// once with its page (empty), the stream's body ends cleanly, and the process exits 0
/// well before --shutdown-timeout; what was acknowledged before is stored.
#[test]
fn sigterm_answers_long_polls_and_ends_streams_at_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(&dir.path().join("e.db"), &[], &["--shutdown-timeout", "30"]);
    let ack = server.post("msg_before", &fixture("grant_delivered.json"));
    assert_eq!(ack.status, 200, "{}", ack.text());
    let next = server.get("/v1/changes").json()["next"]
        .as_i64()
        .ok_or("next")?;
    let addr = server.addr;
    let poll = std::thread::spawn(move || {
        request(
            addr,
            "GET",
            &format!("/v1/changes?after={next}&wait=300"),
            &[],
            b"",
        )
    });
    let mut stream =
        crate::changes::open_stream(&server, &format!("/v1/changes/stream?after={next}"), None);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .ok_or("still running 10 s after SIGTERM")?;
    let exited = started.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    let page = poll.join().map_err(|_| "the long poll failed")?;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.json(),
        serde_json::json!({"changes": [], "next": next})
    );
    // The stream's chunked body ended with its last chunk, then the connection closed.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    assert!(
        rest.ends_with(b"0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    eprintln!("SIGTERM with a long poll and a stream open: exited after {exited:?}");
    assert!(exited < Duration::from_secs(5), "{exited:?}");
    assert!(server
        .deliveries()
        .iter()
        .any(|d| d["delivery_id"] == "msg_before"));
    Ok(())
}
