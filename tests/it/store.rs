//! The store and the engine on real SQLite files: convergence through the store, rebuild
//! equals live, malformed rows picked up by a rebuild, crash safety (SIGKILL mid-ingest),
//! concurrency, other processes' writes, and clear errors for bad files.

use crate::support::{self, grant, ms, t0, St};
use entitlement_sync::store::REBUILD_MEMORY;
use entitlement_sync::{Delivery, Engine, Outcome};
use proptest::prelude::*;
use rusqlite::Connection;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const REGRESSIONS: &str = support::regressions_path!("store");

fn entsync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_entsync"))
}

/// Every projection row, without the change counter and the arrival order (which deliveries
/// a history row points at): what "the same store state" means.
#[derive(Debug, PartialEq, Eq)]
struct Dump {
    objects: Vec<Vec<String>>,
    quarantine: Vec<Vec<String>>,
    history: Vec<Vec<String>>,
}

fn dump(path: &Path) -> Dump {
    let conn = Connection::open(path).expect("open for dump");
    let rows = |sql: &str| -> Vec<Vec<String>> {
        let mut stmt = conn.prepare(sql).expect("prepare");
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, Option<String>>(i).map(|v| v.unwrap_or_default()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("query");
        rows.collect::<Result<_, _>>().expect("rows")
    };
    Dump {
        objects: rows(
            "SELECT kind, id, customer_id, ref_id, status, as_of, since, state_key, max_key,
                    delivery_id, body FROM objects ORDER BY kind, id",
        ),
        quarantine: rows(
            "SELECT delivery_id, kind, object_id, version_key, code, reason, from_state,
                    to_state FROM history WHERE code IS NOT NULL
              ORDER BY kind, object_id, version_key",
        ),
        history: rows(
            "SELECT kind, object_id, version_key, delivery_id,
                    CAST(accepted AS TEXT), CAST(starts_run AS TEXT),
                    CAST(forced AS TEXT), rejection
               FROM history ORDER BY kind, object_id, version_key",
        ),
    }
}

fn delivery(id: &str, body: Vec<u8>) -> Delivery {
    Delivery::new(id, body, t0())
}

/// Bodies of a realistic mixed history: grants (generated lifecycles) and a subscription.
fn bodies(grants: &[support::GrantSpec], subs: &[support::SubSpec]) -> Vec<Vec<u8>> {
    grants
        .iter()
        .map(support::GrantSpec::body)
        .chain(subs.iter().map(support::SubSpec::body))
        .collect()
}

fn pairs() -> [(&'static str, &'static str); 3] {
    [
        ("cus_a", "ent_pro"),
        ("cus_b", "ent_files"),
        ("cus_x", "ent_pro"),
    ]
}

proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 24,
        ..support::proptest_config(REGRESSIONS)
    })]

    /// Through the real store: any arrival order with retries and replays gives the same
    /// projections (objects and quarantine, row for row) and the same answers as in-order
    /// delivery; a rebuild from the stored deliveries gives the same again.
    #[test]
    fn store_converges_and_rebuild_equals_live(
        (grants, subs, order) in (support::grant_lifecycles(5), support::subscription_history(false))
            .prop_flat_map(|(g, s)| {
                let n = g.len() + s.len();
                (Just(g), Just(s), support::shuffled_with_duplicates(n))
            }),
        split in 0usize..8,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = bodies(&grants, &subs);
        let in_order_path = dir.path().join("in-order.db");
        let shuffled_path = dir.path().join("shuffled.db");
        {
            let a = Engine::open(&in_order_path).expect("open a");
            let batch = all.iter().enumerate().map(|(i, b)| delivery(&format!("wh_{i}"), b.clone())).collect();
            for r in a.ingest_batch(batch).expect("batch") {
                r.expect("delivery");
            }
            let b = Engine::open(&shuffled_path).expect("open b");
            let ids = support::delivery_ids(&order);
            // Some one by one (group commit path), the rest in one bulk transaction.
            let (one_by_one, bulk) = ids.split_at(split.min(ids.len()));
            for (i, id) in one_by_one {
                b.ingest(delivery(id, all[*i].clone())).expect("ingest");
            }
            let rest = bulk.iter().map(|(i, id)| delivery(id, all[*i].clone())).collect();
            for r in b.ingest_batch(rest).expect("batch") {
                r.expect("delivery");
            }
            for now in [t0(), t0() + ms(3_600_000), t0() + ms(90 * 86_400_000)] {
                for (c, e) in pairs() {
                    let live = b.access(c, e, now).expect("b");
                    prop_assert_eq!(a.access(c, e, now).expect("a"), live.clone());
                    // The one-shot path (`entsync check`) reads the pair's rows instead.
                    prop_assert_eq!(b.access_direct(c, e, now, b.policy()).expect("direct"), live);
                }
            }
        }
        let live = dump(&shuffled_path);
        prop_assert_eq!(&dump(&in_order_path), &live);
        let b = Engine::open(&shuffled_path).expect("reopen");
        let stats = b.rebuild(chrono::Utc::now()).expect("rebuild");
        prop_assert_eq!(stats.malformed, 0);
        // Live wrote every row as a rebuild would: there is nothing to rewrite.
        prop_assert_eq!(stats.rewritten, 0);
        prop_assert_eq!(&dump(&shuffled_path), &live);
        // Each object folded in a range of its own, its deliveries read again: the
        // same rows (a row computed otherwise would have been rewritten).
        let stats = b.rebuild_within(chrono::Utc::now(), 1).expect("rebuild in ranges");
        prop_assert_eq!(stats.rewritten, 0);
        if stats.objects > 0 {
            prop_assert_eq!(stats.ranges, stats.objects);
        }
        prop_assert_eq!(&dump(&shuffled_path), &live);
    }
}

#[test]
fn a_retry_with_a_newer_payload_under_the_same_webhook_id_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("e.db")).expect("open");
    let pending = grant("grant_1", St::Pending, t0()).body();
    let delivered = grant("grant_1", St::Delivered, t0() + ms(1_000)).body();
    assert_eq!(
        engine.ingest(delivery("msg_1", pending.clone())).unwrap(),
        Outcome::Applied
    );
    // Dodo sends the latest payload at delivery time: the retry carries `delivered`.
    assert_eq!(
        engine.ingest(delivery("msg_1", delivered.clone())).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        engine.ingest(delivery("msg_1", delivered)).unwrap(),
        Outcome::Duplicate
    );
    assert_eq!(
        engine.ingest(delivery("msg_1", pending)).unwrap(),
        Outcome::Duplicate
    );
    let rows = engine.deliveries(None, None).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.delivery_id == "msg_1"));
    let a = engine.access("cus_a", "ent_pro", t0() + ms(2_000)).unwrap();
    assert!(a.allowed, "{a:?}");
}

#[test]
fn accept_applies_a_quarantined_snapshot_and_survives_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    let revoked = grant("grant_1", St::Revoked, t0()).reason("manual").body();
    let restored = grant("grant_1", St::Delivered, t0() + ms(60_000)).body();
    assert_eq!(
        engine.ingest(delivery("m1", revoked)).unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        engine.ingest(delivery("m2", restored)).unwrap(),
        Outcome::Rejected
    );
    let q = engine.rejected().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].delivery_id.as_str(), q[0].code.as_str()),
        ("m2", "forbidden_restoration")
    );
    assert!(!engine.has_access("cus_a", "ent_pro", t0() + ms(120_000)));
    assert!(matches!(
        engine.accept("m1", t0()),
        Err(entitlement_sync::EngineError::Store(
            entitlement_sync::store::StoreError::NotQuarantined(_)
        ))
    ));
    assert!(matches!(
        engine.accept("nope", t0()),
        Err(entitlement_sync::EngineError::Store(
            entitlement_sync::store::StoreError::UnknownDelivery(_)
        ))
    ));
    engine.accept("m2", t0()).expect("accept");
    assert!(engine.rejected().unwrap().is_empty());
    assert!(engine.has_access("cus_a", "ent_pro", t0() + ms(120_000)));
    let before = dump(&path);
    engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(
        dump(&path),
        before,
        "the override is recorded, so a rebuild keeps it"
    );
    assert!(engine.has_access("cus_a", "ent_pro", t0() + ms(120_000)));
}

/// A subscription body; `customer: None` leaves the customer out (it stays unknown).
fn sub_body(at: &str, status: &str, customer: Option<&str>) -> Vec<u8> {
    let customer = customer.map_or(String::new(), |c| {
        format!(r#","customer":{{"customer_id":"{c}"}}"#)
    });
    format!(
        r#"{{"business_id":"bus_1","type":"subscription.updated","timestamp":"{at}","data":{{"subscription_id":"sub_1","status":"{status}"{customer}}}}}"#
    )
    .into_bytes()
}

#[test]
fn accept_refolds_through_every_body_its_delivery_id_carried_of_one_object() {
    // One webhook id, retried with a newer payload, carried two bodies of `sub_1`, both
    // rejected; between them a step that an accept of the first leaves as it was (it
    // applies, and starts a run of its status, after either). The re-fold must not stop
    // at that step: it goes on to the second accepted body.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    let outcomes: Vec<Outcome> = [
        ("m_a", "2026-05-01T10:00:00Z", "active"),
        ("m_x", "2026-05-01T10:01:00Z", "pending"),
        ("m_s", "2026-05-01T10:02:00Z", "on_hold"),
        ("m_x", "2026-05-01T10:03:00Z", "pending"),
    ]
    .into_iter()
    .map(|(id, at, status)| {
        let body = sub_body(at, status, Some("cus_1"));
        engine.ingest(delivery(id, body)).expect("ingest")
    })
    .collect();
    use Outcome::{Applied, Rejected};
    assert_eq!(outcomes, [Applied, Rejected, Applied, Rejected]);
    let codes: Vec<String> = engine
        .rejected()
        .unwrap()
        .into_iter()
        .map(|q| q.code)
        .collect();
    assert_eq!(codes, ["illegal_transition", "illegal_transition"]);

    let (kind, id) = engine.accept("m_x", t0()).expect("accept");
    assert_eq!((kind.as_str(), id.as_str()), ("subscription", "sub_1"));
    assert!(
        engine.rejected().unwrap().is_empty(),
        "both bodies accepted"
    );
    let accepted = dump(&path);
    let sub = &accepted.objects[0];
    assert_eq!((sub[1].as_str(), sub[4].as_str()), ("sub_1", "pending"));
    engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(dump(&path), accepted, "accept leaves what a rebuild makes");
}

#[test]
fn accept_refolds_every_object_its_delivery_id_carried() {
    // One webhook id carried restorations of two revoked grants, both rejected.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    let later = t0() + ms(60_000);
    let bodies = [
        ("m1", grant("grant_a", St::Revoked, t0()).reason("manual")),
        ("m2", grant("grant_b", St::Revoked, t0()).reason("manual")),
        ("m_x", grant("grant_a", St::Delivered, later)),
        ("m_x", grant("grant_b", St::Delivered, later + ms(1_000))),
    ];
    for (id, g) in bodies {
        let g = if g.id == "grant_b" {
            g.entitlement("ent_files")
        } else {
            g
        };
        engine.ingest(delivery(id, g.body())).expect("ingest");
    }
    assert_eq!(engine.rejected().unwrap().len(), 2);
    let watched = t0() + ms(120_000);
    let after = engine.changes(0, 100).unwrap().last().map_or(0, |c| c.seq);
    assert!(!engine.has_access("cus_a", "ent_pro", watched));
    assert!(!engine.has_access("cus_a", "ent_files", watched));

    let (kind, id) = engine.accept("m_x", t0()).expect("accept");
    assert_eq!(
        (kind.as_str(), id.as_str()),
        ("grant", "grant_a"),
        "the first by key"
    );
    assert!(
        engine.rejected().unwrap().is_empty(),
        "both objects re-folded"
    );
    assert!(engine.has_access("cus_a", "ent_pro", watched));
    assert!(engine.has_access("cus_a", "ent_files", watched));
    let mut changed: Vec<(String, bool, String)> = engine
        .changes(after, 100)
        .unwrap()
        .into_iter()
        .map(|c| (c.entitlement_id, c.allowed, c.cause.kind().to_string()))
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            ("ent_files".to_string(), true, "operator".to_string()),
            ("ent_pro".to_string(), true, "operator".to_string()),
        ],
        "one change per pair, caused by the accept"
    );
    let accepted = dump(&path);
    engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(dump(&path), accepted, "accept leaves what a rebuild makes");
}

#[test]
fn rows_stored_as_malformed_are_picked_up_by_a_rebuild_once_they_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    assert_eq!(
        engine
            .ingest(delivery("junk", b"{not json".to_vec()))
            .unwrap(),
        Outcome::Malformed
    );
    // As an older version that could not parse this body would have stored it.
    let body = grant("grant_old", St::Delivered, t0()).body();
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO deliveries (delivery_id, body_sha256, received_at, body, outcome, detail)
         VALUES ('old_1', 'x', '2026-05-01T10:00:00.000000Z', ?1, 'malformed', 'old parser')",
        [&body],
    )
    .unwrap();
    drop(conn);
    assert!(!engine.has_access("cus_a", "ent_pro", t0()));
    let stats = engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(
        (stats.deliveries, stats.reparsed, stats.malformed),
        (2, 1, 1)
    );
    assert!(engine.has_access("cus_a", "ent_pro", t0()));
    let rows = engine.deliveries(None, None).unwrap();
    let old = rows.iter().find(|r| r.delivery_id == "old_1").unwrap();
    assert_eq!(
        (old.outcome.as_str(), old.object_id.as_deref()),
        ("applied", Some("grant_old"))
    );
    let junk = rows.iter().find(|r| r.delivery_id == "junk").unwrap();
    assert_eq!(junk.outcome, "malformed");
}

/// JSON Lines of `n` grant deliveries as bare envelopes (ids `sha256:` of each line).
fn jsonl(n: usize) -> (String, Vec<String>) {
    let mut rng = entitlement_sync::synth::Rng(9);
    let mut text = String::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let d = entitlement_sync::synth::grant_delivery(i, n / 3 + 1, i, &mut rng, t0());
        let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        let line = serde_json::to_string(&v).unwrap();
        ids.push(Delivery::from_bare(line.clone().into_bytes(), t0()).id);
        text.push_str(&line);
        text.push('\n');
    }
    (text, ids)
}

#[test]
fn sigkill_mid_ingest_loses_no_acknowledged_delivery_and_applies_none_by_half() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.db");
    let input = dir.path().join("events.jsonl");
    let (text, _) = jsonl(6_000);
    std::fs::write(&input, text).unwrap();
    let mut child = entsync()
        .arg("--db")
        .arg(&db)
        .args(["ingest", "--print-acks", "--batch", "25"])
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn entsync ingest");
    let stdout = child.stdout.take().unwrap();
    let mut acked = BTreeSet::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ack ") {
            acked.insert(id.to_string());
        }
        if acked.len() >= 500 {
            // SIGKILL: no destructor, no flush, no commit of what is in flight.
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    assert!(
        acked.len() >= 500,
        "the child finished before the kill: raise n"
    );

    let conn = Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    let engine = Engine::open(&db).expect("reopen after SIGKILL");
    let stored: BTreeSet<String> = engine
        .deliveries(None, None)
        .unwrap()
        .into_iter()
        .map(|d| d.delivery_id)
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        stored.len() < 6_000,
        "the kill came too late to test anything"
    );
    // Nothing half-applied: the projections equal a rebuild from the stored deliveries.
    let live = dump(&db);
    engine.rebuild(chrono::Utc::now()).unwrap();
    assert_eq!(dump(&db), live);
}

#[test]
fn concurrent_writers_equal_a_serial_run_and_readers_never_see_a_torn_state() {
    // One grant flips delivered <-> revoked(subscription_on_hold) many times, plus
    // unrelated grants; writers deliver everything interleaved and duplicated.
    let mut bodies = Vec::new();
    for k in 0..40 {
        let at = t0() + ms(1_000 * k);
        let spec = if k % 2 == 0 {
            grant("grant_flip", St::Delivered, at)
        } else {
            grant("grant_flip", St::Revoked, at).reason("subscription_on_hold")
        };
        bodies.push(spec.body());
        bodies.push(
            grant(&format!("grant_{k}"), St::Delivered, at)
                .customer(&format!("cus_{k}"))
                .body(),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let serial_path = dir.path().join("serial.db");
    let serial = Engine::open(&serial_path).unwrap();
    for (i, b) in bodies.iter().enumerate() {
        serial
            .ingest(delivery(&format!("wh_{i}"), b.clone()))
            .unwrap();
    }
    let path = dir.path().join("concurrent.db");
    let engine = Engine::open(&path).unwrap();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let writers = 4;
    let reads = std::thread::scope(|s| {
        for w in 0..writers {
            let engine = engine.clone();
            let (bodies, done) = (&bodies, &done);
            s.spawn(move || {
                // Each writer sends every delivery, in its own rotated order.
                for j in 0..bodies.len() {
                    let i = (j * 7 + w * 13) % bodies.len();
                    engine
                        .ingest(delivery(&format!("wh_{i}"), bodies[i].clone()))
                        .unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let engine = engine.clone();
                let done = &done;
                s.spawn(move || {
                    let mut reads = 0u64;
                    while done.load(std::sync::atomic::Ordering::SeqCst) < writers || reads < 100 {
                        let a = engine
                            .access("cus_a", "ent_pro", t0() + ms(100_000))
                            .unwrap();
                        // A whole snapshot or nothing: never a mix of two.
                        match a.status.as_str() {
                            "none" => assert_eq!(a.reason.as_deref(), Some("no_grant")),
                            "delivered" => assert!(a.allowed && a.reason.is_none(), "{a:?}"),
                            "revoked" => assert!(
                                !a.allowed && a.reason.as_deref() == Some("subscription_on_hold"),
                                "{a:?}"
                            ),
                            other => panic!("impossible status {other}: {a:?}"),
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    });
    assert!(reads >= 200);
    assert_eq!(dump(&path), dump(&serial_path));
    assert_eq!(
        engine.access("cus_a", "ent_pro", t0()).unwrap(),
        serial.access("cus_a", "ent_pro", t0()).unwrap()
    );
}

#[test]
fn writes_of_another_process_are_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("shared.db");
    let engine = Engine::open(&db).unwrap();
    engine.set_external_check_interval(Duration::ZERO);
    assert!(!engine.has_access("cus_a", "ent_pro", t0()));
    let input = dir.path().join("one.jsonl");
    let body = grant("grant_1", St::Delivered, t0()).body();
    let line: serde_json::Value = serde_json::from_slice(&body).unwrap();
    std::fs::write(&input, format!("{line}\n")).unwrap();
    let status = entsync()
        .arg("--db")
        .arg(&db)
        .arg("ingest")
        .arg(&input)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        engine.has_access("cus_a", "ent_pro", t0()),
        "another process's commit"
    );

    // With the default interval, it is seen once the interval has passed.
    let engine = Engine::open(&db).unwrap();
    assert!(engine.has_access("cus_a", "ent_pro", t0()));
    let revoked = grant("grant_1", St::Revoked, t0() + ms(1_000))
        .reason("manual")
        .body();
    let line: serde_json::Value = serde_json::from_slice(&revoked).unwrap();
    std::fs::write(&input, format!("{line}\n")).unwrap();
    assert!(entsync()
        .arg("--db")
        .arg(&db)
        .arg("ingest")
        .arg(&input)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(5));
    assert!(!engine.has_access("cus_a", "ent_pro", t0()));
}

fn stderr_of(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run entsync");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_files_give_clear_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be.
    let err = Engine::open(dir.path()).unwrap_err();
    assert!(!err.to_string().is_empty());
    // A file that is not a database.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = Engine::open(&garbage).unwrap_err().to_string();
    assert!(err.contains("not a database"), "{err}");
    let (code, stderr) = stderr_of(
        entsync()
            .arg("--db")
            .arg(&garbage)
            .args(["check", "c", "e"]),
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("not a database") && !stderr.contains("panicked"),
        "{stderr}"
    );
    // A database written by a newer version: refused, untouched.
    let newer = dir.path().join("newer.db");
    {
        let conn = Connection::open(&newer).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    let err = Engine::open(&newer).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
    assert!(
        std::fs::read(&newer).unwrap() == before,
        "the newer file was modified"
    );
    // A read command on a missing file does not create an empty database.
    let missing = dir.path().join("missing.db");
    let (code, stderr) = stderr_of(
        entsync()
            .arg("--db")
            .arg(&missing)
            .args(["check", "c", "e"]),
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no database"), "{stderr}");
    assert!(!missing.exists());
}

#[test]
fn a_full_disk_is_a_clear_error() {
    // RLIMIT_FSIZE stands in for a full disk: writes past 64 KiB fail with EFBIG.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("full.db");
    let input = dir.path().join("events.jsonl");
    let (text, _) = jsonl(500);
    std::fs::write(&input, text).unwrap();
    let script = format!(
        "trap '' XFSZ; ulimit -f 64; exec '{}' --db '{}' ingest '{}'",
        env!("CARGO_BIN_EXE_entsync"),
        db.display(),
        input.display()
    );
    let (code, stderr) = stderr_of(Command::new("bash").arg("-c").arg(script));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("not stored") || stderr.contains("cannot open"),
        "{stderr}"
    );
}

#[test]
fn ingest_then_check_gives_the_same_answer_whatever_the_line_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = [
        grant("grant_1", St::Pending, t0()).body(),
        grant("grant_1", St::Delivered, t0() + ms(60_000)).body(),
        grant("grant_1", St::Revoked, t0() + ms(120_000))
            .reason("manual")
            .body(),
        grant("grant_1", St::Delivered, t0() + ms(180_000)).body(),
        grant("grant_2", St::Delivered, t0())
            .customer("cus_b")
            .body(),
    ]
    .iter()
    .map(|b| {
        serde_json::from_slice::<serde_json::Value>(b)
            .unwrap()
            .to_string()
    })
    .collect();
    let orders: [[usize; 5]; 3] = [[0, 1, 2, 3, 4], [3, 2, 1, 0, 4], [4, 3, 0, 2, 1]];
    let mut answers = Vec::new();
    for (k, order) in orders.iter().enumerate() {
        let db: PathBuf = dir.path().join(format!("o{k}.db"));
        let file = dir.path().join(format!("o{k}.jsonl"));
        let text: String = order.iter().map(|&i| format!("{}\n", lines[i])).collect();
        std::fs::write(&file, text).unwrap();
        let out = entsync()
            .arg("--db")
            .arg(&db)
            .args(["ingest", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            counts["rejected"].as_u64().unwrap()
                + counts["applied"].as_u64().unwrap()
                + counts["stale"].as_u64().unwrap(),
            5,
            "{counts}"
        );
        let out = entsync()
            .arg("--db")
            .arg(&db)
            .args([
                "check",
                "cus_a",
                "ent_pro",
                "--json",
                "--at",
                "2026-06-01T00:00:00Z",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "manual revocation is sticky");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["reason"], "manual");
        let human = entsync()
            .arg("--db")
            .arg(&db)
            .args(["check", "cus_a", "ent_pro"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&human.stdout).trim(),
            "denied: revoked (manual), grant grant_1"
        );
        let rejected = entsync()
            .arg("--db")
            .arg(&db)
            .args(["rejected", "--json"])
            .output()
            .unwrap();
        let rejected: serde_json::Value = serde_json::from_slice(&rejected.stdout).unwrap();
        assert_eq!(rejected.as_array().map(Vec::len), Some(1), "{rejected}");
        answers.push((answer, rejected[0]["object_id"].clone()));
        let ok = entsync()
            .arg("--db")
            .arg(&db)
            .args(["check", "cus_b", "ent_pro"])
            .status()
            .unwrap();
        assert_eq!(ok.code(), Some(0));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

#[test]
fn a_panicking_callback_does_not_stop_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("e.db")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    engine.ingest_then(
        delivery("m1", grant("grant_1", St::Pending, t0()).body()),
        move |r| {
            tx.send(r.map(|a| a.outcome)).unwrap();
            panic!("a caller's bug");
        },
    );
    assert_eq!(rx.recv().unwrap().unwrap(), Outcome::Applied);
    let next = grant("grant_1", St::Delivered, t0() + ms(1_000)).body();
    assert_eq!(
        engine.ingest(delivery("m2", next)).unwrap(),
        Outcome::Applied
    );
    assert!(engine.has_access("cus_a", "ent_pro", t0()));
}

#[test]
fn an_engine_warming_up_answers_from_the_store_the_same_as_from_memory() {
    use entitlement_sync::synth::{customer, entitlement, grant_delivery, Rng, ENTITLEMENTS};
    use entitlement_sync::IndexState;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warm.db");
    let (grants, customers) = (30_000, 10_000);
    {
        let engine = Engine::open(&path).unwrap();
        let mut rng = Rng::new(7);
        let batch: Vec<Delivery> = (0..grants)
            .map(|i| grant_delivery(i, customers, i, &mut rng, chrono::Utc::now()))
            .collect();
        for r in engine.ingest_batch(batch).unwrap() {
            r.unwrap();
        }
    }
    let now = chrono::Utc::now();
    let pairs: Vec<(String, String)> = (0..200)
        .map(|i| (customer(i * 37 % customers), entitlement(i % ENTITLEMENTS)))
        .collect();
    // A fresh process: warm up, and ask at once.
    let engine = Engine::open(&path).unwrap();
    assert_eq!(engine.index_state(), IndexState::Lazy);
    engine.warm_up().unwrap();
    let mut while_warming = Vec::new();
    for (c, e) in &pairs {
        if engine.index_state() != IndexState::Warming {
            break;
        }
        let answer = engine.access(c, e, now).unwrap();
        assert_eq!(engine.has_access(c, e, now), answer.allowed);
        assert!(engine.access_if_current(c, e, now).is_none());
        while_warming.push(((c.clone(), e.clone()), answer));
    }
    assert!(
        !while_warming.is_empty(),
        "the index of {grants} grants loaded before the first answer"
    );
    let started = std::time::Instant::now();
    while engine.index_state() != IndexState::Ready {
        assert!(started.elapsed() < Duration::from_secs(60), "never warm");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(engine.grant_count(), grants);
    for ((c, e), answer) in &while_warming {
        assert_eq!(&engine.access(c, e, now).unwrap(), answer, "({c}, {e})");
    }
    assert!(
        while_warming.iter().any(|(_, a)| a.allowed),
        "the sample holds granted pairs"
    );
}

#[test]
fn the_write_ahead_log_stays_bounded_under_sustained_concurrent_ingest() {
    // Sixteen callers keep the writer busy with new grants (each writes a dozen pages),
    // so the log never drains between commits: only the checkpoints (the thread's, the
    // writer's inline ones) let it start over. Without them it would grow with the
    // volume written (hundreds of MB here).
    const CALLERS: usize = 16;
    const EACH: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("entitlements.db");
    let engine = Engine::open(&path).unwrap();
    std::thread::scope(|s| {
        for c in 0..CALLERS {
            let engine = &engine;
            s.spawn(move || {
                for k in 0..EACH {
                    let id = format!("grant_{c}_{k}");
                    let body = grant(&id, St::Delivered, t0() + ms(k as i64))
                        .customer(&format!("cus_{c}_{k}"))
                        .entitlement(&format!("ent_{}", k % 7))
                        .body();
                    let outcome = engine.ingest(delivery(&format!("wh_{c}_{k}"), body));
                    assert_eq!(outcome.unwrap(), Outcome::Applied);
                }
            });
        }
    });
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let written = std::fs::metadata(&wal).expect("the log").len();
    // The inline bound (16,000 frames) plus one group commit's frames at most (512
    // deliveries of about a dozen pages), at 4 KiB pages and 24-byte frame headers.
    let bound = (16_000 + 512 * 12) * (4096 + 24) + 32;
    assert!(
        written <= bound,
        "the log grew to {written} bytes (bound {bound})"
    );
    for c in [0, CALLERS - 1] {
        let (customer, entitlement) = (
            format!("cus_{c}_{}", EACH - 1),
            format!("ent_{}", (EACH - 1) % 7),
        );
        assert!(
            engine.has_access(&customer, &entitlement, t0() + ms(EACH as i64)),
            "{customer} {entitlement}"
        );
    }
    drop(engine);
    let conn = Connection::open(&path).unwrap();
    let grants: i64 = conn
        .query_row(
            "SELECT count(*) FROM objects WHERE kind = 'grant'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(grants, (CALLERS * EACH) as i64);
}

/// The lookup indexes as schema version 3 defined them (before
/// `migrations/0004_partial_indexes.sql`).
const VERSION_3_INDEXES: &str = "
    DROP INDEX answers_due;
    CREATE INDEX answers_due ON answers (due_at);
    DROP INDEX objects_ref;
    CREATE INDEX objects_ref ON objects (kind, ref_id);
    DROP INDEX objects_grant_subscription;
    CREATE INDEX objects_grant_subscription ON objects (grant_subscription_id);
    DROP INDEX objects_grant_payment;
    CREATE INDEX objects_grant_payment ON objects (grant_payment_id);
    PRAGMA user_version = 3;";

fn index_sql(path: &Path) -> Vec<(String, String)> {
    let conn = Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL
              ORDER BY name",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

#[test]
fn a_version_3_store_is_migrated_to_partial_indexes_and_keeps_every_row_and_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = ("cus_fx", "ent_fx_flag");
    let fresh = dir.path().join("fresh.db");
    let old = dir.path().join("v3.db");
    let answers = |engine: &Engine| {
        [t0(), t0() + ms(86_400_000), t0() + ms(400 * 86_400_000)]
            .map(|now| engine.access(pair.0, pair.1, now).expect("access"))
    };
    let before = {
        let engine = Engine::open(&old).expect("open");
        for (i, body) in support::event_fixture_bodies().into_iter().enumerate() {
            engine
                .ingest(delivery(&format!("wh_{i}"), body))
                .expect("ingest");
        }
        answers(&engine)
    };
    let fresh_indexes = {
        Engine::open(&fresh).expect("fresh");
        index_sql(&fresh)
    };
    let partial: Vec<&str> = fresh_indexes
        .iter()
        .filter(|(_, sql)| sql.contains("WHERE"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        partial,
        [
            "answers_due",
            "history_rejected",
            "objects_grant_payment",
            "objects_grant_subscription",
            "objects_ref"
        ],
        "{fresh_indexes:?}"
    );
    // Not a vacuous comparison: the pair is allowed through a grant linked to its
    // subscription (read through the grant-link indexes the migration recreates).
    assert!(
        before
            .iter()
            .all(|a| a.allowed && a.subscription_id.is_some()),
        "{before:?}"
    );
    // The same rows under version 3's indexes, as a store written by the previous release.
    Connection::open(&old)
        .expect("open v3")
        .execute_batch(VERSION_3_INDEXES)
        .expect("downgrade the indexes");
    let rows = dump(&old);
    assert_ne!(index_sql(&old), fresh_indexes);
    assert!(!rows.objects.is_empty() && !rows.history.is_empty());

    let engine = Engine::open(&old).expect("migrate");
    let conn = Connection::open(&old).expect("inspect");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, entitlement_sync::store::VERSION);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(integrity, "ok");
    assert_eq!(index_sql(&old), fresh_indexes);
    assert_eq!(dump(&old), rows);
    assert_eq!(answers(&engine), before);
    // Reads through every rebuilt index: a payment's refunds and disputes (objects_ref),
    // a customer's records, a rebuild, and new deliveries linked to the payment.
    let (code, stdout) = {
        let out = entsync()
            .arg("--db")
            .arg(&old)
            .args(["customer", pair.0, "--json"])
            .output()
            .expect("customer");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("ref_fx") && stdout.contains("dsp_fx"),
        "{stdout}"
    );
    engine.rebuild(chrono::Utc::now()).expect("rebuild");
    assert_eq!(dump(&old), rows);
    assert_eq!(index_sql(&old), fresh_indexes);
    assert_eq!(answers(&engine), before);
}

/// The write-ahead log of `db`, in bytes (0 when there is none).
fn log_bytes(db: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len())
}

#[test]
fn a_command_or_an_engine_that_ends_leaves_its_log_copied_into_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("closed.db");
    let input = dir.path().join("events.jsonl");
    let (text, ids) = jsonl(600);
    std::fs::write(&input, text).unwrap();
    let run = |args: &[&str]| {
        let out = entsync()
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["ingest", input.to_str().expect("path")]);
    assert_eq!(log_bytes(&db), 0, "after ingest");
    run(&["rebuild"]);
    assert_eq!(log_bytes(&db), 0, "after rebuild");
    // In a process that goes on: the last clone of the engine closes the store.
    {
        let engine = Engine::open(&db).expect("open");
        let clone = engine.clone();
        let (more, _) = jsonl(700);
        let line = more.lines().last().expect("a line").as_bytes().to_vec();
        assert_eq!(
            engine
                .ingest(Delivery::from_bare(line, t0()))
                .expect("ingest"),
            Outcome::Applied
        );
        drop(engine);
        assert!(log_bytes(&db) > 0, "the clone still has the store open");
        drop(clone);
    }
    assert_eq!(log_bytes(&db), 0, "after the last engine");
    // Everything is in the database file itself.
    let conn = Connection::open(&db).expect("open");
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .expect("count");
    assert_eq!(stored as usize, ids.len() + 1);
}

/// Every row of `table` in key order, every column (the change counter and the arrival
/// order included), as SQLite gives it.
fn rows_of(path: &Path, table: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let conn = Connection::open(path).expect("open");
    let order = if table == "objects" {
        "kind, id"
    } else {
        "kind, object_id, version_key"
    };
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
        .expect("prepare");
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

/// Grant histories with illegal transitions among them (quarantined) and every family's
/// fixture: (webhook id, body).
fn mixed_history() -> Vec<(String, Vec<u8>)> {
    support::event_fixture_bodies()
        .into_iter()
        .enumerate()
        .map(|(i, b)| (format!("wh_fx_{i}"), b))
        .chain(support::grant_histories(11, 40, 5, 3))
        .collect()
}

/// A rebuild writes only the rows that differ from what the deliveries give: on an
/// intact store none (every row, its change counter too, stays as it was); rows changed,
/// deleted or added behind the engine's back are put back to exactly what a rebuild onto
/// empty projections writes, and no other row is touched.
#[test]
fn a_rebuild_repairs_exactly_the_rows_that_differ_and_leaves_the_rest() {
    rebuild_repairs_exactly(REBUILD_MEMORY);
}

/// The same, with a memory budget of a few bodies: the objects are folded in many
/// ranges, each range's deliveries read and parsed a second time, and the damaged rows,
/// the ghost's and the unknown kind's among them, fall into different ranges and
/// between them. The repair is row for row the reference rebuilt at the default budget.
#[test]
fn a_rebuild_in_ranges_repairs_exactly_what_a_rebuild_at_once_does() {
    rebuild_repairs_exactly(3_000);
}

/// Ingests a mixed history, checks that a rebuild within `memory` rewrites nothing on
/// the intact store, damages it, and checks the repair against a reference rebuilt
/// onto empty projections at the default budget.
fn rebuild_repairs_exactly(memory: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let pairs: Vec<(String, String)> = (0..5)
        .flat_map(|c| (0..3).map(move |e| (format!("cus_{c}"), format!("ent_{e}"))))
        .chain([("cus_fx".into(), "ent_fx_flag".into())])
        .collect();
    let now = t0() + ms(86_400_000);
    let answers = |engine: &Engine| -> Vec<bool> {
        pairs
            .iter()
            .map(|(c, e)| engine.has_access(c, e, now))
            .collect()
    };
    let live = {
        let engine = Engine::open(&path).expect("open");
        for (id, body) in mixed_history() {
            engine.ingest(delivery(&id, body)).expect("ingest");
        }
        let quarantined = engine.rejected().expect("rejected");
        assert!(quarantined.len() >= 3, "{quarantined:?}");
        engine
            .accept(&quarantined[0].delivery_id, now)
            .expect("accept");
        answers(&engine)
    };
    assert!(
        live.iter().any(|a| *a) && live.iter().any(|a| !*a),
        "{live:?}"
    );
    let (objects, history) = (rows_of(&path, "objects"), rows_of(&path, "history"));

    // Intact: nothing written.
    let engine = Engine::open(&path).expect("open");
    let stats = engine.rebuild_within(now, memory).expect("rebuild");
    assert_eq!(stats.rewritten, 0, "{stats:?}");
    assert_eq!(stats.objects as usize, objects.len());
    if memory < REBUILD_MEMORY {
        assert!(stats.ranges > 10, "{stats:?}");
    } else {
        assert_eq!(stats.ranges, 1, "{stats:?}");
    }
    drop(engine);
    assert_eq!(rows_of(&path, "objects"), objects);
    assert_eq!(rows_of(&path, "history"), history);

    // The reference: the same store with its projections emptied, rebuilt.
    let reference = dir.path().join("reference.db");
    std::fs::copy(&path, &reference).expect("copy");
    Connection::open(&reference)
        .expect("open reference")
        .execute_batch("DELETE FROM objects; DELETE FROM history;")
        .expect("empty the projections");
    let stats = Engine::open(&reference)
        .expect("open reference")
        .rebuild(now)
        .expect("rebuild the reference");
    let mut all: BTreeSet<(String, String)> = BTreeSet::new();
    for table in ["objects", "history"] {
        for r in rows_of(&path, table) {
            all.insert((format!("{:?}", r[0]), format!("{:?}", r[1])));
        }
    }
    assert_eq!(stats.rewritten as usize, all.len(), "{stats:?}");

    // Damage: a changed state (grant_1's status flipped), a changed lookup column
    // (an index entry), a missing state row, a missing and a changed history row, a
    // history row pointing at another delivery, a state and a history that no delivery
    // gives (a grant that would let cus_ghost in), a kind this release does not know
    // (one sorting among the kinds, one after them all: after the last range).
    let conn = Connection::open(&path).expect("open");
    conn.execute_batch(
        "UPDATE objects SET status = CASE status WHEN 'delivered' THEN 'failed' ELSE 'delivered' END
          WHERE kind = 'grant' AND id = 'grant_1';
         UPDATE objects SET body = json_set(body, '$.status', status)
          WHERE kind = 'grant' AND id = 'grant_1';
         UPDATE objects SET customer_id = 'cus_4' WHERE kind = 'grant' AND id = 'grant_2';
         DELETE FROM objects WHERE kind = 'grant' AND id = 'grant_3';
         DELETE FROM history WHERE kind = 'grant' AND object_id = 'grant_4'
            AND version_key = (SELECT MIN(version_key) FROM history
                                WHERE kind = 'grant' AND object_id = 'grant_4');
         UPDATE history SET starts_run = 1 - starts_run
          WHERE kind = 'grant' AND object_id = 'grant_5';
         UPDATE history SET delivery_seq = 1, delivery_id = 'wh_elsewhere'
          WHERE kind = 'grant' AND object_id = 'grant_6';
         INSERT INTO objects (kind, id, customer_id, ref_id, status, as_of, since, state_key,
                              max_key, delivery_id, body, seq)
              SELECT kind, 'grant_ghost', 'cus_ghost', 'ent_0', 'delivered', as_of, since,
                     state_key, max_key, 'wh_ghost',
                     json_set(body, '$.id', 'grant_ghost', '$.customer_id', 'cus_ghost',
                              '$.status', 'delivered', '$.entitlement_id', 'ent_0'),
                     seq
                FROM objects WHERE kind = 'grant' AND id = 'grant_0';
         INSERT INTO history SELECT kind, 'grant_ghost', version_key, delivery_seq,
                                    delivery_id, accepted, starts_run, forced, code, reason,
                                    from_state, to_state, rejection
                               FROM history WHERE kind = 'grant' AND object_id = 'grant_0';
         INSERT INTO objects (kind, id, status, as_of, since, state_key, max_key,
                              delivery_id, body, seq)
              VALUES ('martian', 'mars_1', 'red', '', '', '', '', 'wh_mars', '{}', 1),
                     ('zebra', 'zebra_1', 'striped', '', '', '', '', 'wh_zebra', '{}', 1);",
    )
    .expect("damage");
    drop(conn);
    let damaged = [
        "grant_1",
        "grant_2",
        "grant_3",
        "grant_4",
        "grant_5",
        "grant_6",
        "grant_ghost",
        "mars_1",
        "zebra_1",
    ];
    let engine = Engine::open(&path).expect("open the damaged store");
    assert!(
        engine.has_access("cus_ghost", "ent_0", now),
        "the damage is not seen"
    );
    let stats = engine.rebuild_within(now, memory).expect("repair");
    assert_eq!(stats.rewritten as usize, damaged.len(), "{stats:?}");
    assert!(!engine.has_access("cus_ghost", "ent_0", now));
    assert_eq!(answers(&engine), live);
    drop(engine);

    // Row for row the reference, change counters aside; the rows not damaged are the
    // very rows they were, change counters included.
    let seq = 11; // objects.seq
    let without_seq = |rows: Vec<Vec<rusqlite::types::Value>>| -> Vec<_> {
        rows.into_iter()
            .map(|mut r| {
                r.remove(seq);
                r
            })
            .collect()
    };
    let repaired = rows_of(&path, "objects");
    assert_eq!(
        without_seq(repaired.clone()),
        without_seq(rows_of(&reference, "objects"))
    );
    assert_eq!(rows_of(&path, "history"), rows_of(&reference, "history"));
    assert_eq!(rows_of(&path, "history"), history);
    let id_of = |r: &Vec<rusqlite::types::Value>| match &r[1] {
        rusqlite::types::Value::Text(id) => id.clone(),
        other => panic!("id {other:?}"),
    };
    let untouched = |rows: &[Vec<rusqlite::types::Value>]| -> Vec<Vec<rusqlite::types::Value>> {
        rows.iter()
            .filter(|r| !damaged.contains(&id_of(r).as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(untouched(&repaired), untouched(&objects));
    assert_eq!(repaired.len(), objects.len());
    let conn = Connection::open(&path).expect("inspect");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(integrity, "ok");
}

/// A store of schema version 6 was folded under the old identity rule, which let a grant
/// go `bus_A -> absent -> bus_B`: the migration to version 7 finds the delivery that left
/// the business out and rebuilds the store once, and the grant is back at `bus_A`'s
/// snapshot with the two later ones rejected. A store whose grants all name their
/// business is not flagged.
#[test]
fn a_version_6_store_that_took_a_grant_without_its_business_is_rebuilt() {
    let migration = include_str!("../../migrations/0007_identity_rule.sql");
    let flagged = |conn: &Connection| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM meta WHERE key = 'needs_rebuild' AND value <> 0",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let [(_, named), ..] = business_moves();

    // Every grant names its business: the migration flags nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    engine
        .ingest(delivery("m_a", named.body()))
        .expect("ingest");
    drop(engine);
    let conn = Connection::open(&path).expect("open raw");
    conn.execute_batch(migration).expect("the migration's SQL");
    assert_eq!(flagged(&conn), 0, "nothing to rebuild");
    drop(conn);

    // The three snapshots, and the state version 6 made of them: `bus_B`'s, delivered.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.db");
    let engine = Engine::open(&path).expect("open");
    for (id, g) in business_moves() {
        engine.ingest(delivery(id, g.body())).expect("ingest");
    }
    assert_eq!(engine.rejected().unwrap().len(), 2);
    drop(engine);
    let conn = Connection::open(&path).expect("open raw");
    conn.execute_batch(
        "UPDATE objects SET
             body = (SELECT json_extract(CAST(body AS TEXT), '$.data') FROM deliveries WHERE delivery_id = 'm_b'),
             state_key = (SELECT version_key FROM deliveries WHERE delivery_id = 'm_b'),
             delivery_id = 'm_b', status = 'delivered'
          WHERE kind = 'grant';
         UPDATE history SET code = NULL, reason = NULL, from_state = NULL, to_state = NULL;
         UPDATE deliveries SET outcome = 'applied';
         PRAGMA user_version = 6;",
    )
    .expect("write as version 6 did");
    drop(conn);
    let engine = Engine::open(&path).expect("migrate");
    let conn = Connection::open(&path).expect("open raw");
    assert_eq!(flagged(&conn), 0, "the rebuild ran once");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 7);
    assert_business_moves_refused(&engine);
}

/// A grant named `bus_A`, then left out, then `bus_B` (and delivered), as deliveries
/// `m_a`, `m_x`, `m_b`.
pub(crate) fn business_moves() -> [(&'static str, support::GrantSpec); 3] {
    let mut named = grant("grt_m", St::Pending, t0());
    named.business_id = Some("bus_A".into());
    let mut left_out = grant("grt_m", St::Pending, t0() + ms(60_000));
    left_out.business_id = None;
    let mut other = grant("grt_m", St::Delivered, t0() + ms(120_000));
    other.business_id = Some("bus_B".into());
    [("m_a", named), ("m_x", left_out), ("m_b", other)]
}

/// What [`business_moves`] must leave: `bus_A`'s pending grant, the other two rejected.
pub(crate) fn assert_business_moves_refused(engine: &Engine) {
    let now = t0() + ms(3_600_000);
    let access = engine.access("cus_a", "ent_pro", now).expect("access");
    assert_eq!(
        (access.allowed, access.status.as_str()),
        (false, "pending"),
        "{access:?}"
    );
    let mut codes: Vec<(String, String)> = engine
        .rejected()
        .unwrap()
        .into_iter()
        .map(|q| (q.delivery_id, q.code))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("m_b".to_string(), "identity_changed".to_string()),
            ("m_x".to_string(), "identity_changed".to_string())
        ]
    );
}
