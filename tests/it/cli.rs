//! The `entsync` binary's exit codes and error messages, as a table: every error path a
//! command has (missing or bad secrets, missing or bad databases, usage errors, unknown
//! ids) and the answers that are not errors (`check` denied, `verify` failures).
//!
//! The contract (PRODUCT.md, "The binary"): `check` exits 0 allowed, 1 denied, 2 error;
//! `verify` 0 ok, 1 a verification failure (its kind on stdout), 2 a bad secret or usage;
//! every other error is 2, printed once on stderr as `entsync COMMAND: MESSAGE`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The test vector of `verify.rs`'s docs (the Standard Webhooks reference one).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS: &str = "1614265330";
const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const BODY: &str = r#"{"test": 2432232314}"#;

/// One run of the binary and what must come back.
struct Case {
    name: &'static str,
    /// Arguments; `{db}` an existing empty database, `{missing}` a path with no file,
    /// `{garbage}` a file that is not a database, `{body}` a file holding [`BODY`].
    args: &'static [&'static str],
    /// `DODO_PAYMENTS_WEBHOOK_SECRET`, when set.
    env_secret: Option<&'static str>,
    stdin: &'static str,
    code: i32,
    /// Substrings of stdout.
    stdout: &'static [&'static str],
    /// Substrings of stderr; empty: stderr must be empty.
    stderr: &'static [&'static str],
}

const fn case(name: &'static str, args: &'static [&'static str], code: i32) -> Case {
    Case {
        name,
        args,
        env_secret: None,
        stdin: "",
        code,
        stdout: &[],
        stderr: &[],
    }
}

impl Case {
    const fn env(mut self, secret: &'static str) -> Case {
        self.env_secret = Some(secret);
        self
    }
    const fn stdin(mut self, text: &'static str) -> Case {
        self.stdin = text;
        self
    }
    const fn out(mut self, stdout: &'static [&'static str]) -> Case {
        self.stdout = stdout;
        self
    }
    const fn err(mut self, stderr: &'static [&'static str]) -> Case {
        self.stderr = stderr;
        self
    }
}

const NO_SECRET: &[&str] = &[
    "no webhook secret",
    "DODO_PAYMENTS_WEBHOOK_SECRET",
    "--secret",
];

fn cases() -> Vec<Case> {
    vec![
        // serve: the secret is checked before anything else, whatever its source.
        case(
            "serve without a secret",
            &["--db", "{db}", "serve", "--listen", "127.0.0.1:0"],
            2,
        )
        .err(NO_SECRET),
        case(
            "serve with only separators",
            &["--db", "{db}", "serve", "--listen", "127.0.0.1:0"],
            2,
        )
        .env(" , ")
        .err(NO_SECRET),
        case(
            "serve with a bad env secret",
            &["--db", "{db}", "serve", "--listen", "127.0.0.1:0"],
            2,
        )
        .env("whsec_%%%")
        .err(&[
            "entsync serve: bad webhook secret in DODO_PAYMENTS_WEBHOOK_SECRET",
            "base64",
        ]),
        case(
            "serve with a bad --secret",
            &[
                "--db",
                "{db}",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--secret",
                SECRET,
                "--secret",
                "whsec_%%%",
            ],
            2,
        )
        .env(SECRET)
        .err(&["entsync serve: bad webhook secret in --secret", "base64"]),
        case(
            "serve on a file that is not a database",
            &["--db", "{garbage}", "serve", "--listen", "127.0.0.1:0"],
            2,
        )
        .env(SECRET)
        .err(&["entsync serve: cannot open", "not a database"]),
        // verify: 0 ok, 1 a failure (kind on stdout), 2 a bad secret or usage.
        case(
            "verify without a secret",
            &[
                "verify",
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "{body}",
            ],
            2,
        )
        .err(NO_SECRET),
        case(
            "verify with a bad secret",
            &["verify", "--secret", "whsec_%%%", "{body}"],
            2,
        )
        .err(&["entsync verify: bad webhook secret in --secret"]),
        case(
            "verify ok, secret from the flag",
            &[
                "verify",
                "--secret",
                SECRET,
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "--now",
                TS,
                "{body}",
            ],
            0,
        )
        .out(&["ok"]),
        case(
            "verify ok, secret from the environment, body on stdin",
            &[
                "verify",
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "--now",
                TS,
                "-",
            ],
            0,
        )
        .env(SECRET)
        .stdin(BODY)
        .out(&["ok"]),
        case(
            "verify ok with the second of two secrets",
            &[
                "verify",
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "--now",
                TS,
                "{body}",
            ],
            0,
        )
        .env("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD, whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .out(&["ok"]),
        case(
            "verify a body that was not signed",
            &[
                "verify",
                "--secret",
                SECRET,
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "--now",
                TS,
                "-",
            ],
            1,
        )
        .stdin("{}")
        .out(&["invalid_signature"])
        .err(&["entsync verify: no matching webhook signature"]),
        case(
            "verify a stale delivery",
            &[
                "verify",
                "--secret",
                SECRET,
                "--id",
                ID,
                "--timestamp",
                TS,
                "--signature",
                SIG,
                "--now",
                "1614265631",
                "{body}",
            ],
            1,
        )
        .out(&["timestamp_too_old"])
        .err(&["timestamp too old"]),
        case(
            "verify without headers",
            &["verify", "--secret", SECRET, "{body}"],
            1,
        )
        .out(&["missing_header"])
        .err(&["missing header webhook-id"]),
        case(
            "verify a body file that does not exist",
            &["verify", "--secret", SECRET, "{missing}"],
            2,
        )
        .err(&["entsync verify: cannot read body"]),
        // simulate: its secret and flags are checked before any request.
        case(
            "simulate without a secret",
            &["simulate", "--url", "http://127.0.0.1:9"],
            2,
        )
        .err(NO_SECRET),
        case(
            "simulate with a bad secret",
            &[
                "simulate",
                "--url",
                "http://127.0.0.1:9",
                "--secret",
                "nope!",
            ],
            2,
        )
        .err(&["entsync simulate: bad webhook secret in --secret"]),
        case(
            "simulate at concurrency 0",
            &[
                "simulate",
                "--url",
                "http://127.0.0.1:9",
                "--concurrency",
                "0",
            ],
            2,
        )
        .env(SECRET)
        .err(&["entsync simulate: --concurrency must be at least 1"]),
        // The store commands.
        case(
            "accept an unknown delivery id",
            &["--db", "{db}", "accept", "msg_unknown"],
            2,
        )
        .err(&["entsync accept: cannot accept", "msg_unknown"]),
        case(
            "accept without a database",
            &["--db", "{missing}", "accept", "msg_unknown"],
            2,
        )
        .err(&["entsync accept: no database at"]),
        case(
            "check a pair with no grant: denied is an answer",
            &["--db", "{db}", "check", "cus_x", "ent_x"],
            1,
        )
        .out(&["denied"]),
        case(
            "check --json denied",
            &["--db", "{db}", "check", "cus_x", "ent_x", "--json"],
            1,
        )
        .out(&[r#""allowed":false"#]),
        case(
            "check --at garbage",
            &[
                "--db",
                "{db}",
                "check",
                "cus_x",
                "ent_x",
                "--at",
                "yesterday",
            ],
            2,
        )
        .err(&["entsync check: --at \"yesterday\" is not an RFC 3339 timestamp"]),
        case(
            "check a file that is not a database",
            &["--db", "{garbage}", "check", "c", "e"],
            2,
        )
        .err(&["entsync check: cannot open", "not a database"]),
        case(
            "deliveries of an unknown outcome",
            &["--db", "{db}", "deliveries", "--outcome", "lost"],
            2,
        )
        .err(&["entsync deliveries: unknown outcome \"lost\""]),
        case(
            "deliveries of an empty store",
            &["--db", "{db}", "deliveries", "--json"],
            0,
        )
        .out(&["[]"]),
        case(
            "rejected without a database",
            &["--db", "{missing}", "rejected"],
            2,
        )
        .err(&["no database at"]),
        case(
            "ingest a file that does not exist",
            &["--db", "{db}", "ingest", "{missing}"],
            2,
        )
        .err(&["entsync ingest: cannot read input"]),
        // bench always prints JSON: it has no --json flag (a usage error, from clap).
        case("bench --json is not a flag", &["bench", "--json"], 2).err(&["--json"]),
    ]
}

/// Runs the binary, killing it if it is still running after 30 s (a `serve` that did not
/// refuse to start would otherwise hang the test).
fn run(dir: &Path, case: &Case) -> (Option<i32>, String, String) {
    let sub = |a: &str| {
        let path = |name: &str| dir.join(name).display().to_string();
        match a {
            "{db}" => path("store.db"),
            "{missing}" => path("missing.db"),
            "{garbage}" => path("garbage.db"),
            "{body}" => path("body.json"),
            other => other.to_string(),
        }
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_entsync"));
    cmd.args(case.args.iter().map(|a| sub(a)))
        .current_dir(dir)
        .env_remove("ENTSYNC_DB")
        .env_remove("ENTSYNC_API_TOKEN")
        .env_remove("ENTSYNC_LISTEN")
        .env_remove("ENTSYNC_URL")
        .env_remove("DODO_PAYMENTS_WEBHOOK_SECRET")
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(secret) = case.env_secret {
        cmd.env("DODO_PAYMENTS_WEBHOOK_SECRET", secret);
    }
    let mut child = cmd.spawn().expect("spawn entsync");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(case.stdin.as_bytes()).expect("write stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("entsync output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_and_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("body.json"), BODY).expect("body file");
    std::fs::write(dir.path().join("garbage.db"), vec![0x42u8; 8192]).expect("garbage file");
    // An existing, empty store: `ingest` of nothing creates it.
    let created = Command::new(env!("CARGO_BIN_EXE_entsync"))
        .arg("--db")
        .arg(dir.path().join("store.db"))
        .args(["ingest", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("ingest");
    assert!(created.status.success(), "{created:?}");

    let mut failures = Vec::new();
    for c in cases() {
        let (code, stdout, stderr) = run(dir.path(), &c);
        let mut wrong = Vec::new();
        if code != Some(c.code) {
            wrong.push(format!("exit {code:?}, expected {}", c.code));
        }
        for s in c.stdout {
            if !stdout.contains(s) {
                wrong.push(format!("stdout lacks {s:?}"));
            }
        }
        if c.stderr.is_empty() && !stderr.is_empty() {
            wrong.push("stderr is not empty".to_string());
        }
        for s in c.stderr {
            if !stderr.contains(s) {
                wrong.push(format!("stderr lacks {s:?}"));
            }
        }
        if stderr.contains("panicked") {
            wrong.push("panicked".to_string());
        }
        // An error is printed once.
        if stderr.lines().filter(|l| l.starts_with("entsync ")).count() > 1 {
            wrong.push("the error is printed more than once".to_string());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n  stdout: {stdout:?}\n  stderr: {stderr:?}",
                c.name,
                wrong.join("; ")
            ));
        }
    }
    assert!(
        !dir.path().join("missing.db").exists(),
        "a read command created a database"
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `entsync bench` prints every figure beside the baseline it is measured against, from
/// the same run, as JSON (small sizes: this checks the report, not the machine).
#[test]
fn bench_reports_each_figure_beside_its_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_entsync"))
        .args([
            "bench",
            "--grants",
            "300",
            "--lookups",
            "300",
            "--ingest",
            "40",
        ])
        .args(["--writers", "8", "--rebuild", "--dir"])
        .arg(dir.path())
        .output()
        .expect("entsync bench");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let number = |path: &str| -> f64 {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{path} is not a number in {report}"))
    };
    assert_eq!(number("/grants"), 300.0);
    for path in [
        "/has_access/p50_ns",
        "/raw_sqlite_lookup/p50_ns",
        "/hashmap_lookup/p50_ns",
        "/index_bytes_per_grant",
        "/hashmap_bytes_per_entry",
        "/ingest_one_writer_per_sec",
        "/ingest_group_commit_per_sec",
        "/raw_batched_insert_per_sec",
        "/same_rows_insert_per_sec",
        "/rebuild_seconds",
        "/rebuild_same_rows_rewrite_seconds",
        "/cold_start/first_answer_ms",
    ] {
        assert!(number(path) > 0.0, "{path} = {}", number(path));
    }
    let ratio = number("/raw_batched_insert_per_sec") / number("/ingest_group_commit_per_sec");
    assert!((number("/ratio_raw_batched_insert_over_group_commit") - ratio).abs() < 1e-6 * ratio);
    let ratio = number("/same_rows_insert_per_sec") / number("/ingest_group_commit_per_sec");
    assert!((number("/ratio_same_rows_insert_over_group_commit") - ratio).abs() < 1e-6 * ratio);
    // The same-rows baseline wrote, by plain SQL, exactly the rows the group commit stored.
    let counts = |name: &str| -> Vec<i64> {
        let conn = rusqlite::Connection::open(dir.path().join(name)).expect("open");
        ["deliveries", "objects", "history", "changes", "answers"]
            .iter()
            .map(|t| {
                conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                    .expect("count")
            })
            .collect()
    };
    let stored = counts("ingest-group.db");
    assert_eq!(stored[0], 160, "{stored:?}");
    assert!(stored.iter().all(|&n| n > 0), "{stored:?}");
    assert_eq!(counts("same-rows.db"), stored);
    if cfg!(target_os = "linux") {
        // Each delivery is stored with its body, so it writes at least that much.
        for path in [
            "/ingest_group_commit_bytes_written_per_delivery",
            "/raw_batched_insert_bytes_written_per_row",
            "/same_rows_insert_bytes_written_per_delivery",
        ] {
            assert!(number(path) > 500.0, "{path} = {}", number(path));
        }
    }
}
