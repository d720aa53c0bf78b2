//! Several instances on one PostgreSQL database: engines and `entsync serve` processes
//! sharing a schema, interleaved at random, one SIGKILLed under load, a listener
//! connection terminated, the server going away. Every test compares with a serial run
//! of the same deliveries on SQLite. The model-based suite runs on PostgreSQL too
//! (`core::postgres_engine_matches_the_naive_model`). See [`crate::pg`] for the server.

use crate::core::folded_feed;
use crate::http::{post_webhook, Server, SECRET};
use crate::pg::Schema;
use crate::support::{grant, ms, t0, St};
use entitlement_sync::change::Answer;
use entitlement_sync::store::StoreError;
use entitlement_sync::synth::Rng;
use entitlement_sync::{Delivery, Engine, EngineError, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CUSTOMERS: usize = 7;
const ENTITLEMENTS: usize = 5;

/// Grant histories of every status and revocation reason over the pairs of
/// [`pairs`] (some transitions illegal, so quarantined): (webhook id, body).
fn history(seed: u64, grants: usize) -> Vec<(String, Vec<u8>)> {
    crate::support::grant_histories(seed, grants, CUSTOMERS, ENTITLEMENTS)
}

fn pairs() -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for c in 0..CUSTOMERS {
        for e in 0..ENTITLEMENTS {
            pairs.push((format!("cus_{c}"), format!("ent_{e}")));
        }
    }
    pairs
}

/// When every delivery is received, and answers are asked.
fn now() -> entitlement_sync::wire::Timestamp {
    t0() + chrono::Duration::days(1)
}

/// Ingests every (webhook id, body) of `history`, received at [`now`].
fn ingest_all(engine: &Engine, history: &[(String, Vec<u8>)]) {
    for (id, body) in history {
        engine
            .ingest(Delivery::new(id.clone(), body.clone(), now()))
            .expect("ingest");
    }
}

/// What a serial run on SQLite answers, lists and records: the reference.
struct Serial {
    answers: BTreeMap<(String, String), Answer>,
    rejected: BTreeSet<(String, String, String)>,
    deliveries: usize,
    _dir: tempfile::TempDir,
}

fn serial(history: &[(String, Vec<u8>)]) -> Serial {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path().join("serial.db")).expect("open SQLite");
    ingest_all(&engine, history);
    Serial {
        answers: answers(&engine),
        rejected: rejected(&engine),
        deliveries: engine.deliveries(None, None).expect("deliveries").len(),
        _dir: dir,
    }
}

fn answers(engine: &Engine) -> BTreeMap<(String, String), Answer> {
    pairs()
        .into_iter()
        .map(|(c, e)| {
            let a = engine.access(&c, &e, now()).expect("access");
            ((c, e), Answer::of(&a))
        })
        .collect()
}

fn rejected(engine: &Engine) -> BTreeSet<(String, String, String)> {
    engine
        .rejected()
        .expect("rejected")
        .into_iter()
        .map(|q| (q.delivery_id, q.object_id, q.code))
        .collect()
}

/// The last change of every pair the feed has, as answers (pairs without one answer
/// `none`): checks the feed's invariants on the way ([`folded_feed`]).
fn feed_answers(engine: &Engine) -> BTreeMap<(String, String), Answer> {
    let feed = folded_feed(engine);
    pairs()
        .into_iter()
        .map(|p| {
            let a = feed.get(&p).cloned().unwrap_or_else(Answer::none);
            (p, a)
        })
        .collect()
}

#[test]
fn a_store_on_postgres_ingests_lists_accepts_and_rebuilds() {
    let Some(schema) = Schema::new("basics") else {
        return;
    };
    let engine = schema.engine();
    let history = history(7, 30);
    ingest_all(&engine, &history);
    let (id, body) = &history[0];
    assert_eq!(
        engine
            .ingest(Delivery::new(id.clone(), body.clone(), now()))
            .expect("ingest"),
        Outcome::Duplicate
    );
    let reference = serial(&history);
    assert_eq!(answers(&engine), reference.answers);
    assert_eq!(rejected(&engine), reference.rejected);
    assert_eq!(
        feed_answers(&engine),
        reference.answers,
        "the feed ends at the answers"
    );
    assert_eq!(
        engine.deliveries(None, None).unwrap().len(),
        reference.deliveries
    );

    // An operator accept, then a rebuild: the same answers as live.
    let quarantined = engine.rejected().expect("rejected");
    let first = quarantined
        .first()
        .expect("the history quarantines something");
    engine.accept(&first.delivery_id, now()).expect("accept");
    let live = answers(&engine);
    let live_rejected = rejected(&engine);
    let stats = engine.rebuild(now()).expect("rebuild");
    assert_eq!(stats.deliveries as usize, reference.deliveries);
    assert_eq!(stats.rewritten, 0, "live left nothing to repair: {stats:?}");
    assert_eq!(answers(&engine), live, "rebuild equals live");
    assert_eq!(rejected(&engine), live_rejected);
    assert_eq!(feed_answers(&engine), live);

    // A second engine (another instance) opens the same schema and agrees.
    let other = schema.engine();
    assert_eq!(answers(&other), live);
    drop(engine);
    drop(other);
    let reopened = schema.engine();
    assert_eq!(answers(&reopened), live);
}

#[test]
fn engines_sharing_a_schema_agree_with_a_serial_run_under_any_interleaving() {
    for seed in [1_u64, 2, 3] {
        let Some(schema) = Schema::new(&format!("interleave_{seed}")) else {
            return;
        };
        let history = history(seed, 40);
        let reference = serial(&history);
        // Every delivery once, a fifth twice, shuffled, dealt to three engines that
        // ingest concurrently (one transaction each, so their commits interleave).
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut sends: Vec<usize> = (0..history.len()).collect();
        for i in 0..history.len() / 5 {
            sends.push(i * 5 % history.len());
        }
        rng.shuffle(&mut sends);
        let engines: Vec<Engine> = (0..3).map(|_| schema.engine()).collect();
        let history = Arc::new(history);
        std::thread::scope(|s| {
            for (k, engine) in engines.iter().enumerate() {
                let mine: Vec<usize> = sends.iter().copied().skip(k).step_by(3).collect();
                let history = Arc::clone(&history);
                s.spawn(move || {
                    for i in mine {
                        let (id, body) = &history[i];
                        engine
                            .ingest(Delivery::new(id.clone(), body.clone(), now()))
                            .expect("ingest");
                    }
                });
            }
        });
        let committed = Instant::now();
        // Each engine sees the others' commits within a second (the listener).
        let deadline = committed + Duration::from_secs(3);
        for (k, engine) in engines.iter().enumerate() {
            loop {
                let got = answers(engine);
                if got == reference.answers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: engine {k} disagrees with the serial run after 3 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(rejected(engine), reference.rejected, "seed {seed}");
            assert_eq!(
                engine.deliveries(None, None).unwrap().len(),
                reference.deliveries
            );
            assert_eq!(feed_answers(engine), reference.answers, "seed {seed}");
        }
        eprintln!(
            "seed {seed}: all engines agree {} ms after the last commit",
            committed.elapsed().as_millis()
        );
    }
}

/// A schema with two engines: a writer, and a reader whose index is loaded and is kept
/// current by its listener only (it never asks the server on its own).
fn writer_and_listening_reader(tag: &str) -> Option<(Schema, Engine, Engine)> {
    let schema = Schema::new(tag)?;
    let writer = schema.engine();
    let reader = schema.engine();
    reader.set_external_check_interval(Duration::from_secs(3600));
    assert!(
        !reader.has_access("cus_0", "ent_0", now()),
        "loads the index"
    );
    Some((schema, writer, reader))
}

#[test]
fn a_terminated_listener_reconnects_and_its_index_catches_up() {
    let Some((schema, writer, reader)) = writer_and_listening_reader("listener") else {
        return;
    };
    let seen_within = |n: usize, limit: Duration| -> Duration {
        let started = Instant::now();
        while !reader.has_access("cus_0", &format!("ent_{n}"), now()) {
            assert!(
                started.elapsed() < limit,
                "the reader did not see grant {n} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    };

    // Promptly, on NOTIFY.
    writer.ingest(delivered(0)).expect("ingest");
    let prompt = seen_within(0, Duration::from_secs(2));

    // The listener's connection is terminated; a commit lands while it is away.
    let mut admin = schema.client();
    let terminated = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("entsync listener {}", schema.name)],
        )
        .expect("terminate the listeners");
    assert_eq!(terminated.len(), 2, "one listener per engine");
    writer.ingest(delivered(1)).expect("ingest");
    let caught_up = seen_within(1, Duration::from_secs(5));
    // And it listens again.
    std::thread::sleep(Duration::from_millis(300));
    writer.ingest(delivered(2)).expect("ingest");
    let again = seen_within(2, Duration::from_secs(2));
    eprintln!(
        "seen by the other engine: {} ms on NOTIFY, {} ms after its listener was \
         terminated, {} ms once it listened again",
        prompt.as_millis(),
        caught_up.as_millis(),
        again.as_millis()
    );
}

/// A TCP proxy in front of the test server that can go away and come back.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, open2) = (Arc::clone(&up), Arc::clone(&open));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: the server is away
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut open = open2.lock().unwrap();
                for s in [&client, &server] {
                    open.push(s.try_clone().expect("clone a stream"));
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, up, open }
    }

    /// The server goes away: every open connection is cut, new ones are refused.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The test server's URL with its host and port replaced by `addr`.
fn url_via(url: &str, addr: SocketAddr) -> String {
    let config: postgres::Config = url.parse().expect("test server URL");
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!("postgres://{user}{password}@{addr}/{db}")
}

fn server_addr(url: &str) -> SocketAddr {
    let config: postgres::Config = url.parse().expect("test server URL");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn a_server_that_goes_away_gives_503s_then_the_same_deliveries_succeed() {
    let Some(schema) = Schema::new("goes_away") else {
        return;
    };
    let proxy = Proxy::start(server_addr(&schema.url));
    let via = url_via(&schema.url, proxy.addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_logged(
        &via,
        dir.path().join("serve.log"),
        &[("ENTSYNC_PG_SCHEMA", &schema.name)],
        &[],
    );
    let history = history(11, 12);
    let ts = crate::http::now();
    let (first, rest) = history.split_at(history.len() / 2);
    for (id, body) in first {
        let r = post_webhook(server.addr, SECRET, id, ts, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // What the instance answers before the server goes away.
    let before = serial(first);
    let answers_now = |server: &Server| -> BTreeMap<(String, String), Answer> {
        before
            .answers
            .keys()
            .map(|(c, e)| {
                let got = server.get(&format!("/v1/access/{c}/{e}"));
                assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
                let got = got.json();
                let answer = Answer {
                    allowed: got["allowed"].as_bool().unwrap_or_default(),
                    status: got["status"].as_str().unwrap_or_default().to_string(),
                    reason: got["reason"].as_str().map(String::from),
                };
                ((c.clone(), e.clone()), answer)
            })
            .collect()
    };
    assert_eq!(answers_now(&server), before.answers);
    assert!(
        before.answers.values().any(|a| a.allowed),
        "some pair is granted"
    );
    proxy.down();
    for (id, body) in rest {
        let r = post_webhook(server.addr, SECRET, id, ts, body);
        assert_eq!(
            r.status,
            503,
            "{}: {}",
            id,
            String::from_utf8_lossy(&r.body)
        );
    }
    // Reads keep answering from the index as it was, at once, for longer than the poll
    // interval; /healthz says the store is unavailable.
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    assert_eq!(
        answers_now(&server),
        before.answers,
        "answers while the server is away"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "reads waited for the server: {:?}",
        asked.elapsed()
    );
    assert_eq!(server.get("/healthz").status, 503);
    proxy.up();
    // Dodo retries: each delivery succeeds once the server is back.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, body) in rest {
        loop {
            let r = post_webhook(server.addr, SECRET, id, ts, body);
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
            assert!(Instant::now() < deadline, "no recovery: {}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let reference = serial(&history);
    let engine = schema.engine();
    assert_eq!(answers(&engine), reference.answers);
    assert_eq!(
        engine.deliveries(None, None).unwrap().len(),
        reference.deliveries
    );
    assert_eq!(server.get("/healthz").status, 200);
    server.kill();
}

/// Posts a delivery to the servers, starting at `first`, until one acknowledges it;
/// returns which one did.
fn deliver(
    servers: &Mutex<Vec<Option<SocketAddr>>>,
    first: usize,
    id: &str,
    ts: i64,
    body: &[u8],
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = first;
    loop {
        let addr = servers.lock().unwrap()[k % 3];
        if let Some(addr) = addr {
            if let Some(200) = try_post(addr, id, ts, body) {
                return k % 3;
            }
        }
        assert!(Instant::now() < deadline, "{id} never acknowledged");
        k += 1;
    }
}

/// One signed webhook POST; `None` when the connection failed (a killed server).
fn try_post(addr: SocketAddr, id: &str, ts: i64, body: &[u8]) -> Option<u16> {
    let key = entitlement_sync::verify::Secret::parse(SECRET).ok()?;
    let signature = entitlement_sync::verify::sign(&key, id, ts, body);
    let mut raw = format!(
        "POST /webhooks/dodo HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {id}\r\n\
         webhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(&raw).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn three_serve_instances_lose_nothing_when_one_is_sigkilled_under_load() {
    let Some(schema) = Schema::new("three_serves") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("ENTSYNC_PG_SCHEMA", schema.name.as_str())];
    let start = |k: usize| {
        Server::start_logged(
            &schema.url,
            dir.path()
                .join(format!("serve-{k}-{}.log", std::process::id())),
            &env,
            &[],
        )
    };
    let servers: Vec<Option<Server>> = (0..3).map(|k| Some(start(k))).collect();
    let addrs = Mutex::new(
        servers
            .iter()
            .map(|s| s.as_ref().map(|s| s.addr))
            .collect::<Vec<_>>(),
    );
    let servers = Mutex::new(servers);
    let history = history(42, 120);
    let reference = serial(&history);
    let ts = crate::http::now();
    let next = AtomicUsize::new(0);
    let acked: Mutex<Vec<(usize, usize)>> = Mutex::default();
    let kill_at = history.len() / 3;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((id, body)) = history.get(i) else {
                    break;
                };
                if i == kill_at {
                    // SIGKILL instance 1 mid-load; its unanswered requests go elsewhere.
                    addrs.lock().unwrap()[1] = None;
                    let killed = servers.lock().unwrap()[1].take();
                    if let Some(server) = killed {
                        server.kill();
                    }
                }
                let by = deliver(&addrs, i, id, ts, body);
                acked.lock().unwrap().push((i, by));
            });
        }
    });
    let acked = acked.into_inner().unwrap();
    assert_eq!(
        acked.len(),
        history.len(),
        "every delivery was acknowledged"
    );
    assert!(
        acked.iter().any(|&(i, by)| by == 1 && i < kill_at),
        "the killed instance had acknowledged deliveries"
    );
    // The killed instance comes back; all three answer the same, as the serial run.
    let mut servers = servers.into_inner().unwrap();
    servers[1] = Some(start(3));
    let deadline = Instant::now() + Duration::from_secs(5);
    for (k, server) in servers.iter().enumerate() {
        let server = server.as_ref().expect("running");
        for ((c, e), want) in &reference.answers {
            loop {
                let got = server.get(&format!("/v1/access/{c}/{e}")).json();
                let got = Answer {
                    allowed: got["allowed"].as_bool().unwrap_or_default(),
                    status: got["status"].as_str().unwrap_or_default().to_string(),
                    reason: got["reason"].as_str().map(String::from),
                };
                if &got == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "instance {k} answers {got:?} for ({c}, {e}), the serial run {want:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Nothing acknowledged is lost: every delivery is stored once.
    let engine = Engine::open_at(schema.location(), None).expect("open");
    assert_eq!(
        engine.deliveries(None, None).unwrap().len(),
        reference.deliveries
    );
    assert_eq!(rejected(&engine), reference.rejected);
    assert_eq!(feed_answers(&engine), reference.answers);
    for server in servers.into_iter().flatten() {
        server.kill();
    }
}

#[test]
fn one_instance_forwards_the_feed_and_another_takes_over_when_it_dies() {
    use crate::changes::{receiver, wait_for, FORWARD_SECRET};
    let Some(schema) = Schema::new("forward") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = receiver(0);
    let env = [
        ("ENTSYNC_PG_SCHEMA", schema.name.as_str()),
        ("ENTSYNC_FORWARD_SECRET", FORWARD_SECRET),
    ];
    let args = ["--forward-url", url.as_str()];
    let start = |k: usize| {
        Server::start_logged(
            &schema.url,
            dir.path().join(format!("serve-{k}.log")),
            &env,
            &args,
        )
    };
    let mut servers = vec![Some(start(0)), Some(start(1))];
    let history = history(5, 30);
    let ts = crate::http::now();
    let (first, rest) = history.split_at(history.len() / 2);
    for (i, (id, body)) in first.iter().enumerate() {
        let server = servers[i % 2].as_ref().expect("running");
        assert_eq!(post_webhook(server.addr, SECRET, id, ts, body).status, 200);
    }
    let engine = schema.engine();
    let last = engine.last_change_seq().expect("last seq");
    let arrived = |seq: i64| {
        let id = format!("chg_{seq}");
        seen.lock().unwrap().acked.iter().any(|(i, _)| *i == id)
    };
    wait_for("the first half", Duration::from_secs(30), || arrived(last));
    // One instance forwards: the other's cursor never moved, and nothing arrived twice.
    let cursor = |s: &Server| {
        s.get("/metrics")
            .text()
            .contains(&format!("entsync_forward_cursor {last}"))
    };
    let leader = (0..2)
        .find(|&k| cursor(servers[k].as_ref().expect("running")))
        .expect("one instance forwards");
    assert!(
        !cursor(servers[1 - leader].as_ref().expect("running")),
        "both instances forward"
    );
    {
        let seen = seen.lock().unwrap();
        let ids: BTreeSet<&String> = seen.acked.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), seen.acked.len(), "a change was posted twice");
    }
    // The forwarding instance dies; the other takes over from the stored cursor.
    servers[leader].take().expect("running").kill();
    let survivor = servers[1 - leader].as_ref().expect("running");
    for (id, body) in rest {
        assert_eq!(
            post_webhook(survivor.addr, SECRET, id, ts, body).status,
            200
        );
    }
    let last = engine.last_change_seq().expect("last seq");
    wait_for("every change", Duration::from_secs(30), || arrived(last));
    let seen = seen.lock().unwrap();
    let ids: BTreeSet<i64> = seen
        .acked
        .iter()
        .map(|(id, _)| id.trim_start_matches("chg_").parse().expect("chg_<seq>"))
        .collect();
    let every: BTreeSet<i64> = engine
        .changes(0, usize::MAX)
        .expect("changes")
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(ids, every, "every change arrived");
    for server in servers.into_iter().flatten() {
        server.kill();
    }
}

/// `serve` number `k` on `schema`, reconciling against `api` every `every` at `rate`
/// requests a second, its log in `dir`.
fn reconciling_server(
    schema: &Schema,
    dir: &std::path::Path,
    k: usize,
    api: &str,
    every: &str,
    rate: &str,
) -> Server {
    let env = [
        ("ENTSYNC_PG_SCHEMA", schema.name.as_str()),
        ("DODO_PAYMENTS_API_KEY", crate::fake_dodo::KEY),
    ];
    let args = [
        "--reconcile-every",
        every,
        "--reconcile-base-url",
        api,
        "--reconcile-rate-limit",
        rate,
    ];
    Server::start_logged(&schema.url, dir.join(format!("serve-{k}.log")), &env, &args)
}

/// The background reconcile runs `server` finished (its `/metrics`).
fn reconcile_runs(server: &Server) -> u64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("entsync_reconcile_runs_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_instance_reconciles_each_round() {
    use crate::fake_dodo::{Data, FakeDodo};
    let Some(schema) = Schema::new("reconcile") else {
        return;
    };
    let fake = FakeDodo::start(Data::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let servers: Vec<Server> = (0..2)
        .map(|k| reconciling_server(&schema, dir.path(), k, &fake.url(), "1h", "200"))
        .collect();
    // Both tick at once on start; one holds the lease and sweeps, the other skips.
    crate::changes::wait_for("a sweep", Duration::from_secs(30), || {
        servers.iter().map(reconcile_runs).sum::<u64>() >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut counts: Vec<u64> = servers.iter().map(reconcile_runs).collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 1], "exactly one instance swept");
    for server in servers {
        server.kill();
    }
}

/// The instance sweeping is SIGKILLed mid-listing: another takes the lease and resumes
/// the sweep from the checkpoint the store shares, one page before the first page the
/// killed one had not stored, not from the start.
#[test]
fn a_sweep_an_instance_was_killed_in_is_resumed_by_another() {
    use crate::fake_dodo::{self as dodo, Data, FakeDodo};
    use entitlement_sync::reconcile::checkpoint;
    let Some(schema) = Schema::new("resume") else {
        return;
    };
    // Twenty pages of 100 grants at ten requests a second.
    let fake = FakeDodo::start(Data {
        entitlements: vec![dodo::entitlement("ent_pro")],
        grants: dodo::delivered_grants(2000),
        ..Data::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let url = fake.url();
    let start = |k: usize| reconciling_server(&schema, dir.path(), k, &url, "1s", "10");
    let first = start(0);
    let engine = schema.engine();
    let scope = checkpoint::scope(&url, None);
    let saved = || {
        engine
            .reconcile_checkpoint(&scope)
            .expect("read the checkpoint")
    };
    crate::changes::wait_for("three pages stored", Duration::from_secs(60), || {
        saved().is_some_and(|c| c.pages >= 3)
    });
    first.kill();
    let at = saved().expect("the checkpoint outlives the instance");
    assert!(!at.complete && at.pages < 20, "{at:?}");
    fake.take_log();

    let second = start(1);
    crate::changes::wait_for("the resumed sweep", Duration::from_secs(60), || {
        reconcile_runs(&second) >= 1
    });
    let asked = dodo::pages_asked(&fake.take_log(), "/entitlements/ent_pro/grants");
    assert!(
        asked.starts_with(&(at.pages - 1..=20).collect::<Vec<_>>()),
        "resumed at page {}: {asked:?}",
        at.pages - 1
    );
    // Every grant stored, as read from the store itself.
    let grants = engine.grants(None).expect("grants");
    assert_eq!(grants.len(), 2000);
    assert!(grants.iter().all(|g| g.status == "delivered"));
    second.kill();
}

/// A schema at version 1 (`objects_ref` over every object) is migrated to version 2
/// (`objects_ref` without grants) on open, keeping every answer; the views that read
/// through the index work on the migrated schema.
#[test]
fn a_version_1_schema_is_migrated_and_answers_the_same() {
    let Some(schema) = Schema::new("migrate") else {
        return;
    };
    let pair = ("cus_fx", "ent_fx_flag");
    let times = [t0(), t0() + ms(86_400_000), t0() + ms(400 * 86_400_000)];
    let before = {
        let engine = schema.engine();
        for (i, body) in crate::support::event_fixture_bodies()
            .into_iter()
            .enumerate()
        {
            engine
                .ingest(Delivery::new(format!("wh_{i}"), body, now()))
                .expect("ingest");
        }
        times.map(|t| engine.access(pair.0, pair.1, t).expect("access"))
    };
    assert!(
        before
            .iter()
            .all(|a| a.allowed && a.subscription_id.is_some()),
        "{before:?}"
    );
    let name = &schema.name;
    let index = |client: &mut postgres::Client| -> String {
        client
            .query_one(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'objects_ref'",
                &[name],
            )
            .expect("objects_ref")
            .get(0)
    };
    let mut client = schema.client();
    assert!(
        index(&mut client).contains("WHERE"),
        "{}",
        index(&mut client)
    );
    client
        .batch_execute(&format!(
            "DROP INDEX {name}.objects_ref;
             CREATE INDEX objects_ref ON {name}.objects (kind, ref_id);
             DELETE FROM {name}.schema_migrations WHERE version >= 2;"
        ))
        .expect("back to version 1");
    assert!(!index(&mut client).contains("WHERE"));

    let engine = schema.engine();
    let version: i64 = client
        .query_one(
            &format!("SELECT MAX(version) FROM {name}.schema_migrations"),
            &[],
        )
        .expect("version")
        .get(0);
    // Migrated to the latest.
    assert_eq!(version, entitlement_sync::store::POSTGRES_VERSION);
    assert!(
        index(&mut client).contains("WHERE"),
        "{}",
        index(&mut client)
    );
    assert_eq!(
        times.map(|t| engine.access(pair.0, pair.1, t).expect("access")),
        before
    );
    let view = serde_json::to_string(&engine.customer(pair.0).expect("customer view"))
        .expect("view as JSON");
    assert!(view.contains("ref_fx") && view.contains("dsp_fx"), "{view}");
}

/// A rebuild on PostgreSQL compares range by range too (text in the schema compares
/// bytewise, as in Rust): rows changed, deleted or added behind the engine's back are
/// repaired, and a second rebuild finds nothing left to write.
#[test]
fn a_rebuild_on_postgres_repairs_the_rows_that_differ() {
    let Some(schema) = Schema::new("repair") else {
        return;
    };
    let engine = schema.engine();
    let history = history(5, 40);
    ingest_all(&engine, &history);
    let live = answers(&engine);
    let live_rejected = rejected(&engine);
    let name = &schema.name;
    let dump = |client: &mut postgres::Client| -> Vec<String> {
        client
            .query(
                &format!(
                    "SELECT o::text FROM (SELECT kind, id, customer_id, ref_id, status, as_of,
                            since, state_key, max_key, delivery_id, body,
                            grant_subscription_id, grant_payment_id
                       FROM {name}.objects ORDER BY kind, id) o
                     UNION ALL
                     SELECT h::text FROM (SELECT * FROM {name}.history
                       ORDER BY kind, object_id, version_key) h"
                ),
                &[],
            )
            .expect("dump")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let mut client = schema.client();
    let rows = dump(&mut client);
    // grant_1 denies nothing it allowed and allows what it did not; grant_2's row is gone;
    // grant_3's history points elsewhere; a grant no delivery gives lets cus_ghost in.
    client
        .batch_execute(&format!(
            "UPDATE {name}.objects SET status = CASE status WHEN 'delivered' THEN 'failed'
                                                      ELSE 'delivered' END
              WHERE kind = 'grant' AND id = 'grant_1';
             UPDATE {name}.objects SET body = jsonb_set(body::jsonb, '{{status}}',
                                                  to_jsonb(status))::text
              WHERE kind = 'grant' AND id = 'grant_1';
             DELETE FROM {name}.objects WHERE kind = 'grant' AND id = 'grant_2';
             UPDATE {name}.history SET delivery_id = 'msg_elsewhere'
              WHERE kind = 'grant' AND object_id = 'grant_3';
             INSERT INTO {name}.objects
                  SELECT kind, 'grant_ghost', 'cus_ghost', 'ent_0', 'delivered', as_of, since,
                         state_key, max_key, delivery_id,
                         jsonb_set(jsonb_set(jsonb_set(body::jsonb, '{{id}}', '\"grant_ghost\"'),
                                   '{{customer_id}}', '\"cus_ghost\"'),
                                   '{{status}}', '\"delivered\"')::text,
                         seq, grant_subscription_id, grant_payment_id
                    FROM {name}.objects WHERE kind = 'grant' AND id = 'grant_0';"
        ))
        .expect("damage");
    assert_ne!(dump(&mut client), rows);
    let damaged = schema.engine();
    assert!(
        damaged.has_access("cus_ghost", "ent_0", now()),
        "the damage is not seen"
    );
    // In ranges of a few objects, each range's deliveries read again by seq.
    let stats = damaged.rebuild_within(now(), 2_000).expect("repair");
    assert!(stats.ranges > 1, "{stats:?}");
    assert_eq!(stats.rewritten, 4, "{stats:?}");
    assert!(!damaged.has_access("cus_ghost", "ent_0", now()));
    assert_eq!(answers(&damaged), live);
    assert_eq!(rejected(&damaged), live_rejected);
    assert_eq!(dump(&mut client), rows);
    let stats = damaged.rebuild(now()).expect("rebuild again");
    assert_eq!(stats.rewritten, 0, "{stats:?}");
    drop(damaged);
    assert_eq!(answers(&engine), live);
}

/// One delivered grant of `cus_0` / `ent_{n}`, received at [`now`].
fn delivered(n: usize) -> Delivery {
    let spec = grant(&format!("grant_p{n}"), St::Delivered, t0() + ms(n as i64))
        .customer("cus_0")
        .entitlement(&format!("ent_{n}"));
    Delivery::new(format!("msg_p{n}"), spec.body(), now())
}

/// Ingests until the store takes it (connections that were terminated are opened
/// again by the next transaction).
fn ingest_until_stored(engine: &Engine, delivery: &Delivery) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match engine.ingest(delivery.clone()) {
            Ok(_) => return,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "not stored: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn a_schema_a_newer_build_migrated_is_not_written_by_an_older_one() {
    let Some(schema) = Schema::new("newer") else {
        return;
    };
    let engine = schema.engine();
    engine.ingest(delivered(0)).expect("ingest");
    let mut admin = schema.client();
    let newer = entitlement_sync::store::POSTGRES_VERSION + 1;
    let migrations = format!("{}.schema_migrations", schema.name);
    admin
        .execute(
            &format!("INSERT INTO {migrations} (version) VALUES ($1)"),
            &[&newer],
        )
        .expect("a newer build's migration");
    let err = engine.ingest(delivered(1)).expect_err("refused");
    assert!(
        err.is_retryable() && err.to_string().contains("newer"),
        "retryable (503), so that Dodo's retry reaches an upgraded instance: {err}"
    );
    assert!(
        !engine.has_access("cus_0", "ent_1", now()),
        "nothing stored"
    );
    admin
        .execute(
            &format!("DELETE FROM {migrations} WHERE version = $1"),
            &[&newer],
        )
        .expect("forget it");
    assert_eq!(
        engine.ingest(delivered(1)).expect("ingest"),
        Outcome::Applied
    );
}

/// A database of the test server for one test, dropped (its sessions ended) when this
/// is.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn new(server: &str, tag: &str) -> Database {
        let name = format!("entsync_t{}_{tag}", std::process::id());
        let mut admin = postgres::Client::connect(server, postgres::NoTls).expect("connect");
        // One statement each: neither runs in a transaction block.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .expect("drop an old database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a database");
        let config: postgres::Config = server.parse().expect("test server URL");
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let url = format!("postgres://{user}{password}@{}/{name}", server_addr(server));
        Database {
            admin: server.to_string(),
            name,
            url,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[test]
fn a_writer_waits_for_the_lock_whatever_timeouts_the_database_sets() {
    let Some(server) = crate::pg::url() else {
        return;
    };
    let db = Database::new(&server, "limits");
    {
        let mut admin = postgres::Client::connect(&db.admin, postgres::NoTls).expect("connect");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {0} SET lock_timeout = '100ms';
                 ALTER DATABASE {0} SET statement_timeout = '200ms';
                 ALTER DATABASE {0} SET idle_in_transaction_session_timeout = '200ms';",
                db.name
            ))
            .expect("set the limits");
    }
    let location = entitlement_sync::store::Location::Postgres {
        url: db.url.clone(),
        schema: "entsync".into(),
    };
    let engine = Engine::open_at(location, None).expect("open");
    engine.ingest(delivered(0)).expect("ingest");
    // Another writer (a rebuild, say) holds the change counter for a second.
    let mut holder = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    holder
        .batch_execute(
            "SET idle_in_transaction_session_timeout = 0;
             BEGIN; SELECT value FROM entsync.meta WHERE key = 'seq' FOR UPDATE;",
        )
        .expect("take the counter");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        holder.batch_execute("COMMIT").expect("release");
    });
    let started = Instant::now();
    let outcome = engine.ingest(delivered(1));
    let waited = started.elapsed();
    release.join().expect("holder");
    assert_eq!(
        outcome.expect("waits for the lock instead of failing"),
        Outcome::Applied
    );
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert!(engine.has_access("cus_0", "ent_1", now()));
}

#[test]
fn other_schemas_notifications_do_not_keep_a_failed_refresh_from_being_retried() {
    let Some((schema, writer, reader)) = writer_and_listening_reader("noisy") else {
        return;
    };
    // Another schema of the database commits several times a second.
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let stop = Arc::clone(&stop);
        let mut client = schema.client();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = client.batch_execute("SELECT pg_notify('entsync', 'another_schema')");
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Every store connection of the schema ends (a failover, an idle timeout); the
    // listeners stay. The reader's next refresh fails on its dead connection.
    let mut admin = schema.client();
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("entsync {}", schema.name)],
        )
        .expect("terminate");
    assert!(!ended.is_empty());
    ingest_until_stored(&writer, &delivered(1));
    let started = Instant::now();
    while !reader.has_access("cus_0", "ent_1", now()) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the reader's index stayed stale"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    noise.join().expect("noise");
    eprintln!(
        "seen by the other engine {} ms after its refresh failed",
        started.elapsed().as_millis()
    );
}

#[test]
fn a_forwarder_that_lost_its_lease_stops_posting_even_while_it_retries() {
    use crate::changes::{receiver, wait_for, FORWARD_SECRET};
    let Some(schema) = Schema::new("lease_lost") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // A receiver that refuses everything: the forwarder retries 1 s, 2 s, 4 s, ... apart.
    let (url, seen) = receiver(usize::MAX);
    let env = [
        ("ENTSYNC_PG_SCHEMA", schema.name.as_str()),
        ("ENTSYNC_FORWARD_SECRET", FORWARD_SECRET),
    ];
    let server = Server::start_logged(
        &schema.url,
        dir.path().join("serve.log"),
        &env,
        &["--forward-url", url.as_str()],
    );
    let body = grant("grant_f", St::Delivered, t0()).body();
    let ts = crate::http::now();
    assert_eq!(
        post_webhook(server.addr, SECRET, "msg_f", ts, &body).status,
        200
    );
    let refused = || seen.lock().unwrap().refused;
    wait_for("the first attempt", Duration::from_secs(10), || {
        refused() >= 1
    });
    // The lease's connection ends and another holder takes the lock at once.
    let mut admin = schema.client();
    let held = admin
        .query_one(
            "SELECT (l.classid::bigint << 32) | l.objid::bigint, a.pid
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND a.application_name = $1",
            &[&format!("entsync lock forward {}", schema.name)],
        )
        .expect("the forwarder holds its lease");
    let (key, pid): (i64, i32) = (held.get(0), held.get(1));
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("terminate");
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .expect("take the lease");
    std::thread::sleep(Duration::from_millis(500));
    let at_loss = refused();
    // Without the check between attempts, the retries at about 3 s and 7 s come.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(refused(), at_loss, "posted after it lost the lease");
    server.kill();
}

#[test]
fn a_reader_polling_the_feed_while_three_engines_commit_never_skips_a_change() {
    // The gap problem of event stores: a transaction that took a lower seq committing
    // after one with a higher seq was read. Every change must reach a poller that only
    // ever asks for what lies above the last seq it saw.
    let Some(schema) = Schema::new("no_gaps") else {
        return;
    };
    const PER_WRITER: usize = 60;
    let done = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let engine = schema.engine();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                for n in 0..PER_WRITER {
                    let spec = grant(&format!("grant_{w}_{n}"), St::Delivered, t0())
                        .customer(&format!("cus_{w}"))
                        .entitlement(&format!("ent_{n}"));
                    let delivery = Delivery::new(format!("msg_{w}_{n}"), spec.body(), now());
                    assert_eq!(engine.ingest(delivery).expect("ingest"), Outcome::Applied);
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let reader = schema.engine();
    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Every writer ended (one that panicked is reported by its join below).
        let finished = writers.iter().all(std::thread::JoinHandle::is_finished);
        assert!(Instant::now() < deadline, "the writers did not finish");
        let page = reader.changes(after, 7).expect("changes");
        for change in &page {
            assert!(change.seq > after, "{} after {after}", change.seq);
            after = change.seq;
            seen.push(change.seq);
        }
        // One more read after every writer finished, to the end.
        if finished && page.is_empty() {
            break;
        }
    }
    for w in writers {
        w.join().expect("writer");
    }
    assert_eq!(done.load(Ordering::SeqCst), 3);
    let every: Vec<i64> = reader
        .changes(0, usize::MAX)
        .expect("changes")
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(every.len(), 3 * PER_WRITER, "one change per new grant");
    assert_eq!(seen, every, "the poller saw every change, in order");
}

/// A grant body whose `data` the caller may change.
fn nul_case(edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = serde_json::json!({
        "business_id": "bus_1", "type": "entitlement_grant.revoked",
        "timestamp": "2026-05-01T10:00:00Z",
        "data": {"id": "grant_1", "business_id": "bus_1", "customer_id": "cus_1",
                 "entitlement_id": "ent_1", "status": "revoked",
                 "revocation_reason": "manual",
                 "updated_at": "2026-05-01T10:00:00Z", "metadata": {"k": "v"}}
    });
    edit(&mut v);
    serde_json::to_vec(&v).expect("json")
}

/// U+0000 is text SQLite keeps and PostgreSQL's cannot. A payload holding one anywhere
/// is `malformed` on both stores (it was a 5xx on PostgreSQL for every retry, while
/// SQLite applied it); a delivery id holding one is refused on both, alone or in a
/// batch whose other deliveries are stored.
#[test]
fn a_nul_character_is_refused_alike_on_sqlite_and_postgresql() {
    let Some(schema) = Schema::new("nul") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = [
        (
            "sqlite",
            Engine::open(dir.path().join("e.db")).expect("sqlite"),
        ),
        ("postgres", schema.engine()),
    ];
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 7] = [
        ("object id", |v| v["data"]["id"] = "grant\u{0}1".into()),
        ("customer id", |v| {
            v["data"]["customer_id"] = "cus\u{0}1".into()
        }),
        ("event type", |v| {
            v["type"] = "entitlement_grant.rev\u{0}oked".into()
        }),
        ("status", |v| v["data"]["status"] = "rev\u{0}oked".into()),
        ("reason", |v| {
            v["data"]["revocation_reason"] = "man\u{0}ual".into()
        }),
        ("metadata", |v| v["data"]["metadata"]["k"] = "v\u{0}".into()),
        ("a key", |v| v["data"]["metadata"]["k\u{0}"] = "v".into()),
    ];
    for (store, engine) in &stores {
        for (i, (case, edit)) in cases.iter().enumerate() {
            let d = Delivery::new(format!("msg_{i}"), nul_case(edit), now());
            let got = engine.ingest_detailed(d).map(|a| (a.outcome, a.detail));
            let (outcome, detail) = got.unwrap_or_else(|e| panic!("{store}, {case}: {e}"));
            assert_eq!(outcome, Outcome::Malformed, "{store}, {case}");
            assert!(
                detail.is_some_and(|d| d.contains("U+0000")),
                "{store}, {case}"
            );
        }
        let good = |n: usize| Delivery::new(format!("msg_ok{n}"), nul_case(|_| {}), now());
        let bad = Delivery::new("msg\u{0}x", nul_case(|_| {}), now());
        let e = engine.ingest(bad.clone()).expect_err(store);
        assert!(
            matches!(e, EngineError::DeliveryId) && !e.is_retryable(),
            "{store}: {e}"
        );
        let results = engine
            .ingest_batch(vec![good(1), bad, good(2)])
            .unwrap_or_else(|e| panic!("{store}: the batch failed: {e}"));
        let outcomes: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|a| a.outcome))
            .collect();
        assert!(
            matches!(
                outcomes[..],
                [Ok(Outcome::Applied), Err(_), Ok(Outcome::Duplicate)]
            ),
            "{store}: {outcomes:?}"
        );
        let stored = engine.deliveries(None, None).expect("list");
        assert_eq!(stored.len(), cases.len() + 2, "{store}");
        // Nothing is found by such a key, and asking is no error.
        let (c, e) = ("cus\u{0}1", "ent\u{0}1");
        let view = engine.customer(c).expect(store);
        assert!(
            view.grants.is_empty() && view.payments.is_empty(),
            "{store}"
        );
        assert!(engine.grants(Some(c)).expect(store).is_empty(), "{store}");
        assert_eq!(engine.credit_balance(c, e).expect(store), None, "{store}");
        let object = engine.object(entitlement_sync::event::Kind::Grant, "grant\u{0}1");
        assert!(object.expect(store).is_none(), "{store}");
        let policy = engine.policy().clone();
        let answer = engine.access_direct(c, e, now(), &policy).expect(store);
        assert!(!answer.allowed, "{store}: {answer:?}");
        let accepted = engine.accept("msg\u{0}x", now()).expect_err(store);
        assert!(
            matches!(accepted.as_store(), Some(StoreError::UnknownDelivery(_))),
            "{store}: {accepted}"
        );
        assert!(!accepted.is_retryable(), "{store}: {accepted}");
        // None of it was the store's failure: /healthz stays 200.
        assert_eq!(engine.write_failure(), None, "{store}");
    }
}

/// As `store::a_version_6_store_that_took_a_grant_without_its_business_is_rebuilt`, on
/// PostgreSQL: a schema of version 4 that let a grant go `bus_A -> absent -> bus_B` is
/// rebuilt once by the migration to version 5.
#[test]
fn a_version_4_schema_that_took_a_grant_without_its_business_is_rebuilt() {
    let Some(schema) = Schema::new("identity") else {
        return;
    };
    let engine = schema.engine();
    for (id, g) in crate::store::business_moves() {
        engine
            .ingest(Delivery::new(id, g.body(), now()))
            .expect("ingest");
    }
    crate::store::assert_business_moves_refused(&engine);
    drop(engine);
    let name = &schema.name;
    let mut client = schema.client();
    client
        .batch_execute(&format!(
            "UPDATE {name}.objects SET
                 body = (SELECT (convert_from(body, 'UTF8')::jsonb -> 'data')::text
                           FROM {name}.deliveries WHERE delivery_id = 'm_b'),
                 state_key = (SELECT version_key FROM {name}.deliveries WHERE delivery_id = 'm_b'),
                 delivery_id = 'm_b', status = 'delivered'
              WHERE kind = 'grant';
             UPDATE {name}.history SET code = NULL, reason = NULL, from_state = NULL, to_state = NULL;
             UPDATE {name}.deliveries SET outcome = 'applied';
             DELETE FROM {name}.schema_migrations WHERE version >= 5;"
        ))
        .expect("write as version 4 did");
    let engine = schema.engine();
    crate::store::assert_business_moves_refused(&engine);
    let flagged: i64 = client
        .query_one(
            &format!("SELECT COUNT(*) FROM {name}.meta WHERE key = 'needs_rebuild' AND value <> 0"),
            &[],
        )
        .expect("meta")
        .get(0);
    assert_eq!(flagged, 0, "the rebuild ran once");
}
