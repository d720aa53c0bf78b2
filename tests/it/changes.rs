//! The access-change feed end to end: what it records (causes, time, subscriptions,
//! rebuild, accept, a new policy), and its four consumers: `Engine::changes`,
//! `GET /v1/changes` (long poll), `GET /v1/changes/stream` (SSE) and `entsync changes`,
//! and `serve --forward-url` against a real receiver on 127.0.0.1.

use crate::core::folded_feed;
use crate::http::{request, Server, TestResult, BIN};
use crate::support::{at, grant, ms, subscription, St};
use chrono::Duration;
use entitlement_sync::change::{Answer, Cause, Change};
use entitlement_sync::verify::{RawWebhookHeaders, Verifier};
use entitlement_sync::{Delivery, Engine, Policy};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

fn triple(c: &Change) -> (bool, &str, Option<&str>) {
    (c.allowed, c.status.as_str(), c.reason.as_deref())
}

fn engine_in(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path().join("entitlements.db")).expect("open")
}

#[test]
fn each_cause_is_recorded_once_and_a_no_op_records_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = engine_in(&dir);
    let t = at("2026-06-15T08:00:00Z");
    let pending = grant("grant_1", St::Pending, t).body();
    let delivered = grant("grant_1", St::Delivered, t + ms(1000)).body();
    engine.ingest(Delivery::new("msg_1", pending.clone(), t))?;
    // pending is not allowed, with no reason: a change from `none`.
    let c = engine.changes(0, 100)?;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(triple(&c[0]), (false, "pending", None));
    assert_eq!(c[0].previous, Answer::none());
    assert_eq!(
        c[0].cause,
        Cause::Delivery {
            delivery_id: "msg_1".into(),
            event_type: "entitlement_grant.created".into()
        }
    );
    assert_eq!(c[0].at, t);
    // A duplicate, a replay under another id, and a stale snapshot change nothing.
    engine.ingest(Delivery::new("msg_1", pending.clone(), t))?;
    engine.ingest(Delivery::new("msg_1b", pending, t))?;
    engine.ingest(Delivery::new("msg_2", delivered.clone(), t + ms(5)))?;
    engine.ingest(Delivery::new(
        "msg_old",
        grant("grant_1", St::Pending, t - ms(1000)).body(),
        t + ms(6),
    ))?;
    let c = engine.changes(0, 100)?;
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(triple(&c[1]), (true, "delivered", None));
    assert_eq!(c[1].previous, c[0].answer());
    // The seq continues from `after`; `limit` bounds the page.
    assert_eq!(engine.changes(c[0].seq, 100)?, vec![c[1].clone()]);
    assert_eq!(engine.changes(0, 1)?, vec![c[0].clone()]);
    assert!(engine.changes(c[1].seq, 100)?.is_empty());
    assert_eq!(engine.last_change_seq()?, c[1].seq);
    // A rebuild that finds the same answers records nothing; an `api:` delivery is a
    // reconcile.
    engine.rebuild(t + ms(10))?;
    assert_eq!(engine.changes(0, 100)?.len(), 2);
    let revoked = grant("grant_1", St::Revoked, t + ms(2000))
        .reason("manual")
        .body();
    engine.ingest(Delivery::new(
        "api:grant:grant_1:0123456789abcdef",
        revoked,
        t + ms(20),
    ))?;
    let c = engine.changes(0, 100)?;
    assert_eq!(c.len(), 3);
    assert_eq!(c[2].cause.kind(), "reconcile");
    assert_eq!(triple(&c[2]), (false, "revoked", Some("manual")));
    folded_feed(&engine);
    Ok(())
}

#[test]
fn a_subscription_change_records_every_pair_it_backs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = engine_in(&dir);
    let t = at("2026-06-15T08:00:00Z");
    for (i, ent) in ["ent_pro", "ent_api", "ent_docs"].iter().enumerate() {
        let mut g = grant(&format!("grant_{i}"), St::Delivered, t).entitlement(ent);
        g.subscription_id = Some("sub_1".into());
        engine.ingest(Delivery::new(format!("msg_g{i}"), g.body(), t))?;
    }
    // A grant of another subscription stays out of it.
    let mut other = grant("grant_x", St::Delivered, t).entitlement("ent_other");
    other.subscription_id = Some("sub_2".into());
    engine.ingest(Delivery::new("msg_gx", other.body(), t))?;
    let before = engine.last_change_seq()?;
    let hold = subscription("sub_1", "on_hold", t + ms(60_000)).body();
    engine.ingest(Delivery::new("msg_hold", hold, t + ms(60_000)))?;
    let c = engine.changes(before, 100)?;
    let mut pairs: Vec<&str> = c.iter().map(|c| c.entitlement_id.as_str()).collect();
    pairs.sort_unstable();
    assert_eq!(pairs, ["ent_api", "ent_docs", "ent_pro"], "{c:?}");
    for change in &c {
        assert_eq!(
            triple(change),
            (false, "delivered", Some("subscription_on_hold"))
        );
        assert_eq!(change.cause.kind(), "delivery");
        // All in one transaction: consecutive seqs.
    }
    assert_eq!(c.last().map(|x| x.seq), Some(before + 3));
    folded_feed(&engine);
    Ok(())
}

#[test]
fn time_alone_records_license_expiry_and_the_end_of_a_grace() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let grace = Policy {
        on_hold_grace: Some(Duration::hours(2)),
        ..Policy::default()
    };
    let engine = Engine::open_with(&db, grace.clone())?;
    let t = at("2026-06-15T08:00:00Z");
    let expires = t + Duration::hours(1);
    let keyed = grant("grant_k", St::Delivered, t)
        .entitlement("ent_key")
        .license_until(Some(expires));
    engine.ingest(Delivery::new("msg_k", keyed.body(), t))?;
    deliver_held_grant(&engine, t)?;
    let hold_at = t + Duration::minutes(30);
    hold_sub_1(&engine, "msg_hold", hold_at)?;
    // In grace: still allowed, so the hold itself changed nothing.
    assert!(engine.access("cus_a", "ent_sub", hold_at)?.allowed);
    let before = engine.last_change_seq()?;
    assert_eq!(engine.next_due()?, Some(expires));
    // Not yet due: nothing.
    assert_eq!(engine.advance(expires - ms(1))?, 0);
    // Both are due by then; each is recorded at its own instant, in time order.
    let later = t + Duration::hours(5);
    assert_eq!(engine.advance(later)?, 2);
    let c = engine.changes(before, 100)?;
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].entitlement_id, "ent_key");
    assert_eq!(c[0].at, expires);
    assert_eq!(
        triple(&c[0]),
        (false, "delivered", Some("license_key_expired"))
    );
    assert_eq!(
        c[0].cause,
        Cause::Time {
            detail: "license_key_expired".into()
        }
    );
    assert_eq!(c[1].entitlement_id, "ent_sub");
    assert_eq!(c[1].at, hold_at + Duration::hours(2));
    assert_eq!(
        triple(&c[1]),
        (false, "delivered", Some("subscription_on_hold"))
    );
    assert_eq!(
        c[1].cause,
        Cause::Time {
            detail: "grace_ended".into()
        }
    );
    assert_eq!(engine.next_due()?, None);
    assert_eq!(engine.advance(later + Duration::hours(1))?, 0);
    // The feed's clock does not run backwards: a late delivery is evaluated at the
    // latest instant it has seen.
    engine.ingest(Delivery::new(
        "msg_late",
        grant("grant_z", St::Delivered, t)
            .entitlement("ent_z")
            .body(),
        t,
    ))?;
    let latest = later + Duration::hours(1);
    assert_eq!(engine.changes(0, 100)?.last().map(|c| c.at), Some(latest));
    // Reopened under the default policy (no grace), the answers change: recorded as an
    // operator's doing, and stored as the feed's policy.
    drop(engine);
    let engine = Engine::open_with(&db, Policy::default())?;
    let before = engine.last_change_seq()?;
    // Reopened without a policy: the stored one.
    assert_eq!(Engine::open(&db)?.policy(), &grace);
    engine.advance(later + Duration::hours(2))?;
    assert_eq!(Engine::open(&db)?.policy(), &Policy::default());
    let c = engine.changes(before, 100)?;
    assert!(c.is_empty(), "grace ended already: nothing differs {c:?}");
    folded_feed(&engine);
    Ok(())
}

/// A rebuild evaluates every pair from the states it folds, not from re-read rows: a
/// grace that began before the subscription's newest snapshot (`since` earlier than
/// `as_of`) must end when it did live, and the rebuild must record nothing.
#[test]
fn a_rebuild_keeps_a_grace_that_began_before_the_newest_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let grace = Policy {
        on_hold_grace: Some(Duration::hours(2)),
        ..Policy::default()
    };
    let engine = Engine::open_with(dir.path().join("entitlements.db"), grace)?;
    let t = at("2026-06-15T08:00:00Z");
    deliver_held_grant(&engine, t)?;
    let hold_at = t + Duration::minutes(30);
    for (id, when) in [
        ("msg_hold", hold_at),
        ("msg_hold_2", hold_at + Duration::minutes(90)),
    ] {
        hold_sub_1(&engine, id, when)?;
    }
    let ends = hold_at + Duration::hours(2);
    assert_eq!(engine.next_due()?, Some(ends));
    let before = engine.last_change_seq()?;
    let now = hold_at + Duration::minutes(100);
    engine.rebuild(now)?;
    assert_eq!(
        engine.changes(before, 100)?,
        vec![],
        "the rebuild changed an answer"
    );
    assert_eq!(
        engine.next_due()?,
        Some(ends),
        "the rebuild moved the grace's end"
    );
    assert!(engine.access("cus_a", "ent_sub", now)?.allowed);
    assert_eq!(engine.advance(ends)?, 1);
    assert!(!engine.access("cus_a", "ent_sub", ends)?.allowed);
    folded_feed(&engine);
    Ok(())
}

#[test]
fn a_new_policy_re_evaluates_every_pair_as_an_operator_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let engine = Engine::open(&db)?;
    let t = at("2026-06-15T08:00:00Z");
    held_grant_on_hold(&engine, t)?;
    assert!(!engine.changes(0, 100)?.last().expect("a change").allowed);
    drop(engine);
    let engine = Engine::open_with(
        &db,
        Policy {
            subscription_backstop: false,
            ..Policy::default()
        },
    )?;
    engine.advance(t + ms(2000))?;
    let last = engine.changes(0, 100)?.pop().expect("a change");
    assert!(last.allowed, "{last:?}");
    assert_eq!(
        last.cause,
        Cause::Operator {
            delivery_id: None,
            detail: "policy_changed".into()
        }
    );
    folded_feed(&engine);
    Ok(())
}

/// A grant revoked for the hold and kept by the on_hold grace, whose license key expires
/// during the grace: denied for the key first, then, once the grace ends, for its
/// revocation. Time alone makes the second change too; it was never recorded (the grace's
/// end was only looked for while the answer allowed), and the feed's last change stayed
/// `license_key_expired`. A delivered grant of the held subscription stays denied for its
/// key.
#[test]
fn a_grace_that_ends_while_the_key_denies_changes_the_reason_at_its_end() -> TestResult {
    for revoked in [false, true] {
        let dir = tempfile::tempdir()?;
        let grace = Policy {
            on_hold_grace: Some(Duration::hours(2)),
            ..Policy::default()
        };
        let engine = Engine::open_with(dir.path().join("e.db"), grace)?;
        let t = at("2026-06-15T08:00:00Z");
        let hold_at = t + Duration::minutes(30);
        let expires = hold_at + Duration::hours(1);
        let ends = hold_at + Duration::hours(2);
        let mut g = grant("grant_s", St::Delivered, t)
            .entitlement("ent_sub")
            .license_until(Some(expires));
        g.subscription_id = Some("sub_1".into());
        engine.ingest(Delivery::new("msg_s", g.body(), t))?;
        hold_sub_1(&engine, "msg_hold", hold_at)?;
        if revoked {
            let mut r = grant("grant_s", St::Revoked, hold_at + ms(1000))
                .entitlement("ent_sub")
                .license_until(Some(expires))
                .reason("subscription_on_hold");
            r.subscription_id = Some("sub_1".into());
            engine.ingest(Delivery::new("msg_r", r.body(), hold_at + ms(1000)))?;
        }
        assert!(
            engine
                .access("cus_a", "ent_sub", hold_at + ms(2000))?
                .allowed
        );
        let before = engine.last_change_seq()?;
        let status = if revoked { "revoked" } else { "delivered" };
        engine.advance(ends + Duration::hours(1))?;
        let c = engine.changes(before, 100)?;
        let seen: Vec<_> = c.iter().map(|c| (c.at, triple(c))).collect();
        let mut want = vec![(expires, (false, status, Some("license_key_expired")))];
        // A delivered grant's expired key keeps denying it for the key; a revoked one's
        // answer says the revocation's reason once nothing keeps it.
        if revoked {
            want.push((ends, (false, status, Some("subscription_on_hold"))));
        }
        assert_eq!(seen, want, "revoked: {revoked}");
        let now = engine.access("cus_a", "ent_sub", ends + Duration::hours(1))?;
        assert_eq!(
            c.last().map(triple),
            Some((now.allowed, now.status.as_str(), now.reason.as_deref()))
        );
        assert_eq!(engine.next_due()?, None);
        folded_feed(&engine);
    }
    Ok(())
}

/// `grant_s` of (`cus_a`, `ent_sub`), delivered at `t`, held by `sub_1`.
fn deliver_held_grant(engine: &Engine, t: chrono::DateTime<chrono::Utc>) -> TestResult {
    let mut held = grant("grant_s", St::Delivered, t).entitlement("ent_sub");
    held.subscription_id = Some("sub_1".into());
    engine.ingest(Delivery::new("msg_s", held.body(), t))?;
    Ok(())
}

/// `sub_1` goes on_hold at `at`, delivered as `id`.
fn hold_sub_1(engine: &Engine, id: &str, at: chrono::DateTime<chrono::Utc>) -> TestResult {
    let body = subscription("sub_1", "on_hold", at).body();
    engine.ingest(Delivery::new(id, body, at))?;
    Ok(())
}

/// The pair of `grant_s` (`cus_a`, `ent_sub`), held by `sub_1`, which goes on_hold at
/// `t + 1 s`: denied by the default policy's backstop.
fn held_grant_on_hold(engine: &Engine, t: chrono::DateTime<chrono::Utc>) -> TestResult {
    deliver_held_grant(engine, t)?;
    hold_sub_1(engine, "msg_hold", t + ms(1000))
}

fn last_of(engine: &Engine, entitlement: &str) -> Change {
    engine
        .changes(0, usize::MAX)
        .expect("changes")
        .into_iter()
        .rfind(|c| c.entitlement_id == entitlement)
        .expect("a change of the pair")
}

#[test]
fn a_policy_change_and_a_rebuild_leave_to_time_what_time_changed_before_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let engine = Engine::open(&db)?;
    let t = at("2026-06-15T08:00:00Z");
    let expires = t + Duration::hours(1);
    let keyed = grant("grant_k", St::Delivered, t)
        .entitlement("ent_key")
        .license_until(Some(expires));
    engine.ingest(Delivery::new("msg_k", keyed.body(), t))?;
    held_grant_on_hold(&engine, t)?;
    drop(engine);

    // Nothing ran while the key expired; then serve starts with another policy. The
    // expiry is time's, at its instant, under the policy then in force; the policy
    // change is the operator's, now.
    let off = Policy {
        subscription_backstop: false,
        ..Policy::default()
    };
    let engine = Engine::open_with(&db, off)?;
    let now = t + Duration::hours(3);
    engine.advance(now)?;
    let key = last_of(&engine, "ent_key");
    assert_eq!(
        (key.at, &key.cause, triple(&key)),
        (
            expires,
            &Cause::Time {
                detail: "license_key_expired".into()
            },
            (false, "delivered", Some("license_key_expired"))
        ),
        "{key:?}"
    );
    let sub = last_of(&engine, "ent_sub");
    assert_eq!((sub.at, sub.allowed), (now, true), "{sub:?}");
    assert_eq!(
        sub.cause,
        Cause::Operator {
            delivery_id: None,
            detail: "policy_changed".into()
        }
    );
    folded_feed(&engine);

    // A rebuild after a second key expired: the expiry is time's too.
    let expires2 = now + Duration::hours(1);
    let keyed2 = grant("grant_k2", St::Delivered, now)
        .entitlement("ent_key2")
        .license_until(Some(expires2));
    engine.ingest(Delivery::new("msg_k2", keyed2.body(), now))?;
    engine.rebuild(expires2 + Duration::hours(1))?;
    let key2 = last_of(&engine, "ent_key2");
    assert_eq!(
        (key2.at, &key2.cause),
        (
            expires2,
            &Cause::Time {
                detail: "license_key_expired".into()
            }
        ),
        "{key2:?}"
    );
    folded_feed(&engine);
    Ok(())
}

#[test]
fn writers_with_different_policies_follow_the_one_stored_last() -> TestResult {
    // A rolling restart: A runs with the defaults, B starts with a 72-hour grace; A's
    // later writes are evaluated under B's policy, so the feed never flips between
    // the two, and once A restarts with B's policy the last change is the answer.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let grace = Policy {
        on_hold_grace: Some(Duration::hours(72)),
        ..Policy::default()
    };
    let a = Engine::open_with(&db, Policy::default())?;
    let t = at("2026-06-15T08:00:00Z");
    deliver_held_grant(&a, t)?;
    let b = Engine::open_with(&db, grace.clone())?;
    b.advance(t + ms(500))?;
    hold_sub_1(&a, "msg_hold", t + ms(1000))?;
    let last = last_of(&b, "ent_sub");
    assert!(last.allowed, "evaluated under the grace B stored: {last:?}");
    drop(a);
    let a = Engine::open_with(&db, grace)?;
    let now = t + ms(2000);
    a.advance(now)?;
    let answer = a.access("cus_a", "ent_sub", now)?;
    let last = last_of(&a, "ent_sub");
    assert_eq!(
        (last.allowed, last.status.as_str(), last.reason.as_deref()),
        (
            answer.allowed,
            answer.status.as_str(),
            answer.reason.as_deref()
        ),
        "{last:?} against {answer:?}"
    );
    folded_feed(&a);
    Ok(())
}

#[test]
fn serve_records_a_new_policy_as_it_starts_not_at_the_next_delivery() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let engine = Engine::open(&db)?;
    let t = chrono::Utc::now() - Duration::minutes(5);
    held_grant_on_hold(&engine, t)?;
    let before = engine.last_change_seq()?;
    assert!(!last_of(&engine, "ent_sub").allowed);
    drop(engine);
    let server = Server::start(&db, &[], &["--no-subscription-backstop"]);
    let page = server
        .get(&format!("/v1/changes?after={before}&wait=10"))
        .json();
    let change = &page["changes"][0];
    assert_eq!(
        (&change["allowed"], &change["cause"]),
        (
            &serde_json::json!(true),
            &serde_json::json!({"kind": "operator", "detail": "policy_changed"})
        ),
        "{page}"
    );
    let answer = server.get("/v1/access/cus_a/ent_sub").json();
    assert_eq!(answer["allowed"], true, "{answer}");
    Ok(())
}

#[test]
fn accept_and_rebuild_record_their_changes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = engine_in(&dir);
    let t = at("2026-06-15T08:00:00Z");
    let revoked = grant("grant_1", St::Revoked, t).reason("manual").body();
    engine.ingest(Delivery::new("msg_1", revoked, t))?;
    // A restoration after a manual revocation is illegal: quarantined, no change.
    let restored = grant("grant_1", St::Delivered, t + ms(1000)).body();
    let before = engine.last_change_seq()?;
    engine.ingest(Delivery::new("msg_2", restored, t + ms(1000)))?;
    assert_eq!(engine.last_change_seq()?, before);
    engine.accept("msg_2", t + ms(2000))?;
    let c = engine.changes(before, 100)?;
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].allowed);
    assert_eq!(
        c[0].cause,
        Cause::Operator {
            delivery_id: Some("msg_2".into()),
            detail: "accept".into()
        }
    );
    folded_feed(&engine);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Over HTTP and the CLI

fn post_grant(server: &Server, id: &str, grant_id: &str, ent: &str, status: St) {
    let body = grant(grant_id, status, chrono::Utc::now())
        .entitlement(ent)
        .body();
    let resp = server.post(id, &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Reads SSE events (`id`, `event`, `data`) from an open stream until `n` arrived.
fn read_events(reader: &mut BufReader<TcpStream>, n: usize) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    while events.len() < n {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read the stream") == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        // Chunked encoding: size lines are hex alone; skip them.
        if line.is_empty() {
            if !data.is_empty() {
                let value = serde_json::from_str(&data).expect("data is json");
                events.push((id.clone(), event.clone(), value));
            }
            (id, event, data) = (String::new(), String::new(), String::new());
        } else if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
            data.push_str(v);
        }
    }
    events
}

pub(crate) fn open_stream(
    server: &Server,
    path: &str,
    last_event_id: Option<&str>,
) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(StdDuration::from_secs(20)))
        .expect("timeout");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
    if let Some(id) = last_event_id {
        head.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200 "), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
    reader
}

#[test]
fn the_feed_over_http_a_stream_and_the_cli_agree() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let server = Server::start(&db, &[], &[]);
    post_grant(&server, "msg_1", "grant_1", "ent_pro", St::Delivered);
    post_grant(&server, "msg_2", "grant_2", "ent_api", St::Delivered);
    post_grant(&server, "msg_3", "grant_1", "ent_pro", St::Revoked);

    let page = server.get("/v1/changes").json();
    let changes = page["changes"].as_array().expect("changes").clone();
    assert_eq!(changes.len(), 3, "{page}");
    assert_eq!(page["next"], changes[2]["seq"]);
    assert_eq!(changes[0]["cause"]["kind"], "delivery");
    assert_eq!(changes[0]["cause"]["delivery_id"], "msg_1");
    assert_eq!(changes[0]["cause"]["type"], "entitlement_grant.delivered");
    assert_eq!(
        changes[0]["previous"],
        serde_json::json!({"allowed": false, "status": "none", "reason": "no_grant"})
    );
    assert_eq!(changes[2]["previous"]["allowed"], true);
    assert_eq!(changes[2]["allowed"], false);
    let first = changes[0]["seq"].as_i64().expect("seq");
    // after / limit, and an empty page keeps `after` as `next`.
    let page = server
        .get(&format!("/v1/changes?after={first}&limit=1"))
        .json();
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["changes"][0], changes[1]);
    let last = changes[2]["seq"].as_i64().expect("seq");
    let page = server.get(&format!("/v1/changes?after={last}")).json();
    assert_eq!(page, serde_json::json!({"changes": [], "next": last}));
    for bad in ["after=-1", "after=x", "limit=0", "wait=-1", "wait=abc"] {
        let resp = server.get(&format!("/v1/changes?{bad}"));
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request");
    }

    // The CLI prints the same changes, one JSON line each.
    let out = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["changes", "--json"])
        .output()?;
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines, changes);
    let out = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["changes", "--after", &first.to_string()])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("allowed (delivered) -> denied (revoked"),
        "{text}"
    );

    // The stream: everything after `after`, then what comes next, live.
    let mut stream = open_stream(&server, &format!("/v1/changes/stream?after={first}"), None);
    let events = read_events(&mut stream, 2);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].0, changes[1]["seq"].to_string());
    assert_eq!(events[0].1, "access.changed");
    assert_eq!(events[0].2, changes[1]);
    assert_eq!(events[1].2, changes[2]);
    post_grant(&server, "msg_4", "grant_3", "ent_docs", St::Delivered);
    let live = read_events(&mut stream, 1);
    assert_eq!(live[0].2["entitlement_id"], "ent_docs");
    // Resumed with Last-Event-ID, which wins over `after`.
    let mut resumed = open_stream(
        &server,
        "/v1/changes/stream?after=0",
        Some(&last.to_string()),
    );
    let events = read_events(&mut resumed, 1);
    assert_eq!(events[0].2, live[0].2);
    Ok(())
}

#[test]
fn a_long_poll_wakes_as_soon_as_a_change_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let server = Server::start(&db, &[], &[]);
    let addr = server.addr;
    let mut latencies = Vec::new();
    for round in 0..5 {
        let next = server.get("/v1/changes").json()["next"]
            .as_i64()
            .expect("next");
        let poll = std::thread::spawn(move || {
            let resp = request(
                addr,
                "GET",
                &format!("/v1/changes?after={next}&wait=20"),
                &[],
                b"",
            );
            (resp, Instant::now())
        });
        std::thread::sleep(StdDuration::from_millis(300));
        let sent = Instant::now();
        let ent = format!("ent_{round}");
        post_grant(
            &server,
            &format!("msg_{round}"),
            &format!("grant_{round}"),
            &ent,
            St::Delivered,
        );
        let acked = Instant::now();
        let (resp, returned) = poll.join().expect("poll thread");
        assert_eq!(resp.status, 200);
        let page = resp.json();
        assert_eq!(page["changes"].as_array().map(Vec::len), Some(1), "{page}");
        // Woken by the commit, not by the 20 s timeout.
        assert!(returned.duration_since(sent) < StdDuration::from_secs(10));
        latencies.push(returned.saturating_duration_since(acked));
    }
    latencies.sort();
    eprintln!("long-poll wake-up after the webhook's 200: {latencies:?}");
    // An empty long poll waits out its `wait`.
    let next = server.get("/v1/changes").json()["next"]
        .as_i64()
        .expect("next");
    let started = Instant::now();
    let page = server
        .get(&format!("/v1/changes?after={next}&wait=0.5"))
        .json();
    assert!(started.elapsed() >= StdDuration::from_millis(450));
    assert_eq!(page, serde_json::json!({"changes": [], "next": next}));
    Ok(())
}

#[test]
fn streams_and_long_polls_never_take_every_connection_from_the_webhooks() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Four connections: at most two may wait on the feed.
    let server = Server::start(
        &dir.path().join("entitlements.db"),
        &[],
        &["--max-connections", "4"],
    );
    let first = open_stream(&server, "/v1/changes/stream", None);
    let second = open_stream(&server, "/v1/changes/stream", None);
    // Only the status line first: a stream that is served never ends.
    let status_line = |path: &str| {
        let mut conn = TcpStream::connect(server.addr).expect("connect");
        conn.set_read_timeout(Some(StdDuration::from_secs(5)))
            .expect("timeout");
        let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).expect("send");
        let mut line = String::new();
        BufReader::new(conn)
            .read_line(&mut line)
            .expect("status line");
        line
    };
    let line = status_line("/v1/changes/stream");
    assert!(line.contains(" 503 "), "a third stream: {line}");
    let refused = server.get("/v1/changes/stream");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"], "too_many_waiting");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let poll = server.get("/v1/changes?wait=5");
    assert_eq!(poll.status, 503, "a long poll waits too: {}", poll.text());
    // A plain page, and the webhooks, are served.
    assert_eq!(server.get("/v1/changes").status, 200);
    post_grant(&server, "msg_1", "grant_1", "ent_pro", St::Delivered);
    // A stream that closes gives its place back (noticed when the change is written).
    drop(first);
    post_grant(&server, "msg_2", "grant_2", "ent_two", St::Delivered);
    wait_for("a freed place", StdDuration::from_secs(10), || {
        server.get("/v1/changes?wait=0.1").status == 200
    });
    drop(second);
    Ok(())
}

/// --idle-timeout 2s --header-timeout 1s: a stream with nothing to send for 3 s is not an
/// idle connection (its response is still going out), and a byte from the client (the
/// start of a pipelined request) does not start the header clock: the stream stays
/// open and gets the change committed after 3 s.
#[test]
fn a_quiet_stream_is_busy_not_idle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        &dir.path().join("entitlements.db"),
        &[],
        &["--idle-timeout", "2s", "--header-timeout", "1s"],
    );
    let mut stream = open_stream(&server, "/v1/changes/stream", None);
    let opened = Instant::now();
    stream.get_mut().write_all(b"G")?;
    std::thread::sleep(StdDuration::from_secs(3));
    post_grant(&server, "msg_late", "grant_late", "ent_late", St::Delivered);
    let events = read_events(&mut stream, 1);
    assert_eq!(
        events.len(),
        1,
        "the stream was closed within {:?}",
        opened.elapsed()
    );
    assert_eq!(events[0].2["entitlement_id"], "ent_late");
    Ok(())
}

/// `after` is read the same strict way by the page and the stream (decimal digits, an
/// integer ≥ 0: `+5`, which a query string reads as ` 5`, is a 400 on both), and an
/// empty `Last-Event-ID` carries no event id: the stream starts from `after`.
#[test]
fn the_stream_reads_after_like_the_page_and_an_empty_last_event_id_defers_to_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("entitlements.db"), &[], &[]);
    post_grant(&server, "msg_1", "grant_1", "ent_pro", St::Delivered);
    post_grant(&server, "msg_2", "grant_2", "ent_api", St::Delivered);
    let changes = server.get("/v1/changes").json()["changes"]
        .as_array()
        .cloned()
        .ok_or("changes")?;
    assert_eq!(changes.len(), 2);
    let first = changes[0]["seq"].as_i64().ok_or("seq")?;
    // Only the status line of the stream: one that is served never ends.
    let status_line = |path: &str| -> std::io::Result<String> {
        let mut conn = TcpStream::connect(server.addr)?;
        conn.set_read_timeout(Some(StdDuration::from_secs(10)))?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        conn.write_all(head.as_bytes())?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line)?;
        Ok(line)
    };
    for bad in ["+5", "%2B5", "%205", "5%20", "x", "-1", ""] {
        let resp = server.get(&format!("/v1/changes?after={bad}"));
        assert_eq!(resp.status, 400, "/v1/changes?after={bad}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request");
        let line = status_line(&format!("/v1/changes/stream?after={bad}"))?;
        assert!(
            line.contains(" 400 "),
            "/v1/changes/stream?after={bad}: {line}"
        );
    }
    let mut stream = open_stream(
        &server,
        &format!("/v1/changes/stream?after={first}"),
        Some(""),
    );
    let events = read_events(&mut stream, 1);
    assert_eq!(
        events[0].2, changes[1],
        "an empty Last-Event-ID overrode after"
    );
    Ok(())
}

#[test]
fn the_feed_needs_the_token_when_one_is_set() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let server = Server::start(&db, &[("ENTSYNC_API_TOKEN", "s3cret")], &[]);
    for path in ["/v1/changes", "/v1/changes/stream"] {
        assert_eq!(server.get(path).status, 401, "{path}");
    }
    let resp = request(
        server.addr,
        "GET",
        "/v1/changes",
        &[("Authorization", b"Bearer s3cret")],
        b"",
    );
    assert_eq!(resp.status, 200);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Forwarding

pub(crate) const FORWARD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// What the test receiver saw: (webhook-id, body) of every request it acknowledged, and
/// how many it refused on purpose.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) acked: Vec<(String, Value)>,
    pub(crate) refused: usize,
    bad_signatures: usize,
}

/// A receiver on 127.0.0.1 that verifies every request and answers 500 to the first
/// `fail_first` of them.
pub(crate) fn receiver(fail_first: usize) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/hooks/access",
        listener.local_addr().expect("addr")
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        let verifier = Verifier::from_list(FORWARD_SECRET).expect("secret");
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = Arc::clone(&shared);
            let verifier = verifier.clone();
            std::thread::spawn(move || serve_conn(conn, &verifier, fail_first, &seen));
        }
    });
    (url, seen)
}

fn serve_conn(conn: TcpStream, verifier: &Verifier, fail_first: usize, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    loop {
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let length: usize = get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (id, ts, sig) = (
            get("webhook-id"),
            get("webhook-timestamp"),
            get("webhook-signature"),
        );
        let headers = RawWebhookHeaders {
            id: id.as_deref().map(str::as_bytes),
            timestamp: ts.as_deref().map(str::as_bytes),
            signature: sig.as_deref().map(str::as_bytes),
        };
        let status = {
            let mut seen = seen.lock().expect("seen");
            if verifier
                .verify_raw(&headers, &body, chrono::Utc::now().timestamp())
                .is_err()
            {
                seen.bad_signatures += 1;
                "401 Unauthorized"
            } else if seen.refused < fail_first {
                seen.refused += 1;
                "500 Internal Server Error"
            } else {
                let value = serde_json::from_slice(&body).expect("json body");
                seen.acked.push((id.unwrap_or_default(), value));
                "200 OK"
            }
        };
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

pub(crate) fn wait_for(what: &str, limit: StdDuration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(StdDuration::from_millis(50));
    }
}

#[test]
fn forwarding_delivers_every_seq_in_order_signed_through_failures_and_sigkill() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let (url, seen) = receiver(2);
    let env = [("ENTSYNC_FORWARD_SECRET", FORWARD_SECRET)];
    let args = ["--forward-url", url.as_str()];
    let server = Server::start(&db, &env, &args);
    let n = 40;
    for i in 0..n / 2 {
        post_grant(
            &server,
            &format!("msg_{i}"),
            &format!("grant_{i}"),
            &format!("ent_{i}"),
            St::Delivered,
        );
    }
    // The first two attempts fail: the forwarder backs off (1 s, then 2 s) and retries.
    wait_for(
        "the first forwarded change",
        StdDuration::from_secs(30),
        || !seen.lock().expect("seen").acked.is_empty(),
    );
    let started = Instant::now();
    wait_for("half of the changes", StdDuration::from_secs(30), || {
        seen.lock().expect("seen").acked.len() >= n / 4
    });
    // SIGKILL mid-stream, more changes while it is down, then a restart.
    server.kill();
    let engine = Engine::open(&db)?;
    for i in n / 2..n {
        let body = grant(&format!("grant_{i}"), St::Delivered, chrono::Utc::now())
            .entitlement(&format!("ent_{i}"))
            .body();
        engine.ingest(Delivery::new(format!("msg_{i}"), body, chrono::Utc::now()))?;
    }
    let last = engine.last_change_seq()?;
    drop(engine);
    let server = Server::start(&db, &env, &args);
    wait_for("every change", StdDuration::from_secs(60), || {
        seen.lock()
            .expect("seen")
            .acked
            .iter()
            .any(|(id, _)| id == &format!("chg_{last}"))
    });
    let elapsed = started.elapsed();
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(seen.refused, 2);
    // At least once and in order: the first arrivals of the seqs are 1..=last in order;
    // a re-send after the restart only repeats what came before.
    let mut firsts = Vec::new();
    let mut high = 0;
    for (id, body) in &seen.acked {
        let seq: i64 = id.strip_prefix("chg_").expect("chg_ id").parse()?;
        assert_eq!(body["type"], "access.changed");
        assert_eq!(body["data"]["seq"], seq);
        assert_eq!(body["timestamp"], body["data"]["at"]);
        if seq > high {
            assert_eq!(seq, high + 1, "a seq was skipped: {seq} after {high}");
            high = seq;
            firsts.push(seq);
        }
    }
    assert_eq!(high, last);
    assert_eq!(firsts.len() as i64, last);
    let resent = seen.acked.len() as i64 - last;
    eprintln!(
        "forwarded {last} changes ({resent} re-sent after the SIGKILL) in {elapsed:?} after the first"
    );
    // /metrics shows the forwarder caught up.
    wait_for("the cursor to be saved", StdDuration::from_secs(10), || {
        let text = server.get("/metrics").text();
        text.contains(&format!("entsync_forward_cursor {last}"))
            && text.contains("entsync_forward_lag_seqs 0")
    });
    let text = server.get("/metrics").text();
    assert!(text.contains("entsync_forward_lag_seconds 0"), "{text}");
    drop(server);
    Ok(())
}

/// A receiver that answers every request with `302 Found` to another path, counting the
/// requests by method.
fn redirecting_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/hooks/access",
        listener.local_addr().expect("addr")
    );
    let methods = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&methods);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let methods = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut request_line = String::new();
                    if !matches!(reader.read_line(&mut request_line), Ok(n) if n > 0) {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.trim().eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let method = request_line.split(' ').next().unwrap_or("").to_string();
                    let answer = if method == "POST" {
                        "HTTP/1.1 302 Found\r\nLocation: /moved\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                    };
                    methods.lock().expect("methods").push(method);
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, methods)
}

/// Standard Webhooks: only a 2xx acknowledges. A receiver that redirects has not taken
/// the change: the forwarder does not follow it (a followed 302 turns into a GET that a
/// login page answers 200), counts a failure and keeps the cursor where it was.
#[test]
fn forwarding_takes_a_redirect_as_a_failure_not_as_an_acknowledgement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("entitlements.db");
    let (url, methods) = redirecting_receiver();
    let env = [("ENTSYNC_FORWARD_SECRET", FORWARD_SECRET)];
    let server = Server::start(&db, &env, &["--forward-url", url.as_str()]);
    post_grant(&server, "msg_1", "grant_1", "ent_1", St::Delivered);
    wait_for("two attempts", StdDuration::from_secs(30), || {
        methods.lock().expect("methods").len() >= 2
    });
    let text = server.get("/metrics").text();
    assert!(text.contains("entsync_forward_cursor 0"), "{text}");
    assert!(text.contains("entsync_forward_delivered_total 0"), "{text}");
    assert!(
        !text.contains("entsync_forward_failures_total 0\n"),
        "{text}"
    );
    let methods = methods.lock().expect("methods").clone();
    assert!(methods.iter().all(|m| m == "POST"), "{methods:?}");
    drop(server);
}

#[test]
fn forward_url_needs_a_secret_and_https_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("entitlements.db");
    for (url, secret, message) in [
        ("http://127.0.0.1:9/x", None, "ENTSYNC_FORWARD_SECRET"),
        ("http://example.com/x", Some(FORWARD_SECRET), "loopback"),
        ("ftp://127.0.0.1/x", Some(FORWARD_SECRET), "scheme"),
        (
            "http://127.0.0.1:9/x",
            Some("not-a-secret"),
            "ENTSYNC_FORWARD_SECRET",
        ),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--db")
            .arg(&db)
            .args(["serve", "--listen", "127.0.0.1:0", "--forward-url", url])
            .env("DODO_PAYMENTS_WEBHOOK_SECRET", crate::http::SECRET)
            .env_remove("ENTSYNC_FORWARD_SECRET");
        if let Some(s) = secret {
            cmd.env("ENTSYNC_FORWARD_SECRET", s);
        }
        let out = cmd.output().expect("run serve");
        assert_eq!(out.status.code(), Some(2), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{url}: {stderr}");
    }
}

#[test]
fn serve_records_a_license_expiry_when_it_happens_with_no_traffic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("entitlements.db");
    let server = Server::start(&db, &[], &[]);
    let now = chrono::Utc::now();
    let expires = now + Duration::milliseconds(1500);
    let body = grant("grant_k", St::Delivered, now)
        .license_until(Some(expires))
        .body();
    assert_eq!(server.post("msg_k", &body).status, 200);
    let first = server.get("/v1/changes").json();
    assert_eq!(first["changes"][0]["allowed"], true, "{first}");
    let next = first["next"].as_i64().expect("next");
    // The next change comes from serve's timer alone.
    let page = server
        .get(&format!("/v1/changes?after={next}&wait=10"))
        .json();
    let change = &page["changes"][0];
    assert_eq!(change["reason"], "license_key_expired", "{page}");
    assert_eq!(
        change["cause"],
        serde_json::json!({"kind": "time", "detail": "license_key_expired"})
    );
    let recorded_at = chrono::DateTime::parse_from_rfc3339(change["at"].as_str().expect("at"))?;
    // At the instant itself, to the microsecond the store keeps (rounded up).
    let off = recorded_at.with_timezone(&chrono::Utc) - expires;
    assert!(
        off >= Duration::zero() && off < Duration::microseconds(1),
        "{off}"
    );
    let late = chrono::Utc::now() - expires;
    eprintln!(
        "license expiry recorded by serve's timer {} ms after it passed",
        late.num_milliseconds()
    );
    Ok(())
}
