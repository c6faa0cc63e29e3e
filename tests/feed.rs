//! The revocation feed against real nats-server processes: replay, restarts, poison events,
//! duplicates, staleness policy.

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use prost::Message;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;
use topology_support::LocalTopology;
use veto::bus::names::event_subject;
use veto::bus::topology::NatsUser;
use veto::revocation::{Kind, RevocationEvent};
use veto::token::Alg;

async fn denied(s: &Sidecar, token: &str) -> bool {
    s.check(Some(&format!("Bearer {token}"))).await.status() == 401
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_nats_and_sidecar_restarts() {
    let mut nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), ""));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    // a session id that begins with `-`, as base64url ids can: `veto revoke` takes it as a value
    let t1 = issuer.mint("u1", "-s1");
    let t2 = issuer.mint("u2", "s2");
    let t3 = issuer.mint("u3", "s3");
    let alive = issuer.mint("u4", "s4");
    for t in [&t1, &t2, &t3, &alive] {
        assert!(!denied(&sidecar, t).await);
    }

    revoke(&nats.url(), &["--session", "-s1"]);
    assert!(eventually(Duration::from_secs(2), || denied(&sidecar, &t1))
        .await
        .is_some());

    // the JetStream server dies and comes back with its store
    nats.restart();
    revoke(&nats.url(), &["--token", "j-s2"]);
    assert!(
        eventually(Duration::from_secs(5), || denied(&sidecar, &t2))
            .await
            .is_some(),
        "feed did not resume after a nats-server restart:\n{}",
        sidecar.log()
    );
    revoke(&nats.url(), &["--subject", "u3"]);
    assert!(eventually(Duration::from_secs(2), || denied(&sidecar, &t3))
        .await
        .is_some());

    // the sidecar restarts: it replays everything before it is ready
    sidecar.restart();
    sidecar.wait_ready(Duration::from_secs(10)).await;
    for t in [&t1, &t2, &t3] {
        assert!(denied(&sidecar, t).await, "revocation lost across restart");
    }
    assert!(!denied(&sidecar, &alive).await);
    // a token issued for u3 after the subject revocation is valid
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!denied(&sidecar, &issuer.mint("u3", "s3b")).await);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "veto_revocation_events_total{path=\"durable\",result=\"applied\"}"
        ),
        Some(3.0),
        "{m}"
    );
    for kind in ["session", "token", "subject"] {
        let held = metric(&m, &format!("veto_revocations_held{{kind=\"{kind}\"}}"));
        assert_eq!(held, Some(1.0), "{kind}");
    }
}

async fn publish_raw(
    js: &async_nats::jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: Vec<u8>,
) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject, h, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn event(id: &str, event_id: &str, revoked_at: i64, expires_at: i64) -> RevocationEvent {
    RevocationEvent {
        event_id: event_id.into(),
        kind: Kind::Session as i32,
        id: id.into(),
        issuer: String::new(),
        revoked_at,
        expires_at,
        origin_region: "us".into(),
        reason: "test".into(),
        urgent: false,
        revoked_at_us: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_duplicate_events_are_counted_and_skipped() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), ""));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let now = veto::now_ms();

    publish_raw(
        &js,
        "veto.revocations.us.ev.p1".into(),
        "p1",
        b"\xff\x00garbage".to_vec(),
    )
    .await;
    publish_raw(&js, "veto.revocations.us.ev.p2".into(), "p2", Vec::new()).await;
    let mut no_kind = event("s-x", "p3", now, now + 60_000);
    no_kind.kind = 0;
    publish_raw(
        &js,
        event_subject("us", "p3"),
        "p3",
        no_kind.encode_to_vec(),
    )
    .await;
    let wrong_subject = event("s-y", "p4", now, now + 60_000);
    publish_raw(
        &js,
        event_subject("us", "other"),
        "p4",
        wrong_subject.encode_to_vec(),
    )
    .await;
    let mut wrong_origin = event("s-z", "p5", now, now + 60_000);
    wrong_origin.origin_region = "eu".into();
    publish_raw(
        &js,
        event_subject("us", "p5"),
        "p5",
        wrong_origin.encode_to_vec(),
    )
    .await;
    publish_raw(
        &js,
        "veto.revocations.us.hb".into(),
        "p6",
        b"\x01\x02".to_vec(),
    )
    .await;
    let expired = event("s-old", "e1", now - 120_000, now - 60_000);
    publish_raw(
        &js,
        event_subject("us", "e1"),
        "e1",
        expired.encode_to_vec(),
    )
    .await;
    // the same revocation under two event ids: applied once, counted once as a duplicate
    let a = event("s-dup", "d1", now, now + 60_000);
    let b = event("s-dup", "d2", now, now + 60_000);
    publish_raw(&js, event_subject("us", "d1"), "d1", a.encode_to_vec()).await;
    publish_raw(&js, event_subject("us", "d2"), "d2", b.encode_to_vec()).await;
    // the same event id twice: JetStream drops the second (Nats-Msg-Id)
    publish_raw(&js, event_subject("us", "d1"), "d1", a.encode_to_vec()).await;

    let token = issuer.mint("u", "s-dup");
    assert!(
        eventually(Duration::from_secs(2), || denied(&sidecar, &token))
            .await
            .is_some()
    );
    // the feed is alive after the poison: a later good event still applies
    revoke(&nats.url(), &["--session", "s-after"]);
    let later = issuer.mint("u", "s-after");
    assert!(
        eventually(Duration::from_secs(2), || denied(&sidecar, &later))
            .await
            .is_some()
    );
    let m = sidecar.metrics().await;
    let count = |labels: &[&str]| metric_sum(&m, "veto_revocation_events_total", labels);
    // durable path: every message once
    assert_eq!(
        count(&["path=\"durable\"", "result=\"invalid\""]),
        6.0,
        "{m}"
    );
    assert_eq!(count(&["path=\"durable\"", "result=\"expired\""]), 1.0);
    // the fast path sees the same event messages (not the heartbeat) as well
    assert_eq!(count(&["path=\"fast\"", "result=\"invalid\""]), 5.0, "{m}");
    // two distinct revocations applied once each, whichever path came first; every other
    // receipt of a valid event is a duplicate: s-dup's 2nd event id and each event's second
    // path (2 + 2 + 2 receipts - 2 applied = 4), plus the re-published d1 that JetStream
    // dropped by Nats-Msg-Id but core NATS still delivered to the fast path (5)
    assert_eq!(count(&["result=\"applied\""]), 2.0, "{m}");
    assert_eq!(count(&["result=\"duplicate\""]), 5.0, "{m}");
    // the stream itself holds d1, d2, s-after once each: JetStream dropped the re-publish
    let durable_valid = count(&["path=\"durable\"", "result=\"applied\""])
        + count(&["path=\"durable\"", "result=\"duplicate\""]);
    assert_eq!(durable_valid, 3.0, "JetStream dedup on Nats-Msg-Id");
    assert!(sidecar.ready().await);
    // poison never shows up as token text or payload in the log, and nothing panicked
    assert!(!sidecar.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_feed_applies_the_configured_policy() {
    let mut nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let deny = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&nats.url()),
        "[revocation]\nmax_staleness = \"1500ms\"\non_stale = \"deny\"\n",
    ));
    let allow = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&nats.url()),
        "[revocation]\nmax_staleness = \"1500ms\"\non_stale = \"allow\"\n",
    ));
    deny.wait_ready(Duration::from_secs(10)).await;
    allow.wait_ready(Duration::from_secs(10)).await;
    let t = format!("Bearer {}", issuer.mint("u", "s"));
    assert_eq!(deny.check(Some(&t)).await.status(), 200);

    nats.kill();
    let went_stale = eventually(Duration::from_secs(6), || async {
        deny.check(Some(&t)).await.status() == 503
    })
    .await;
    assert!(
        went_stale.is_some(),
        "deny policy never applied:\n{}",
        deny.log()
    );
    let r = deny.check(Some(&t)).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "feed_stale");
    // allow policy: still allowed, but counted and visible (each sidecar notices the loss
    // on its own connection, so poll)
    let counted = eventually(Duration::from_secs(6), || async {
        let ok = allow.check(Some(&t)).await.status() == 200;
        let m = allow.metrics().await;
        ok && metric(&m, "veto_stale_decisions_total{policy=\"allow\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(
        counted.is_some(),
        "allow policy: stale decisions not counted"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = deny.metrics().await;
    assert!(
        metric(&m, "veto_feed_staleness_seconds{origin_region=\"us\"}").unwrap() > 1.5,
        "{m}"
    );

    // heal: fresh again
    nats.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            deny.check(Some(&t)).await.status() == 200
        })
        .await
        .is_some(),
        "did not recover:\n{}",
        deny.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_until_nats_is_reachable_and_replayed() {
    let port = free_port();
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&format!("nats://127.0.0.1:{port}")),
        "",
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = reqwest::get(format!("{}/readyz", sidecar.base()))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["waiting_for"]["feed"].is_string(), "{body}");
    // fail closed meanwhile: the feed was never fresh
    let t = format!("Bearer {}", issuer.mint("u", "s"));
    assert_eq!(sidecar.check(Some(&t)).await.status(), 503);
    // NATS appears on that port later
    let nats = NatsServer::start_on(port);
    sidecar.wait_ready(Duration::from_secs(15)).await;
    assert_eq!(sidecar.check(Some(&t)).await.status(), 200);
    drop(nats);
}

/// Publishes `n` session revocations from `origin` (ids `<prefix>-<i>`), pipelined: a few
/// thousand JetStream publishes in flight, then their acks.
async fn publish_many(js: &async_nats::jetstream::Context, origin: &str, prefix: &str, n: usize) {
    let now = veto::now_ms();
    let mut i = 0;
    while i < n {
        let end = (i + 2_000).min(n);
        let mut acks = Vec::with_capacity(end - i);
        for k in i..end {
            let id = format!("{prefix}-{k}");
            let mut ev = event(&format!("s-{id}"), &id, now, now + 600_000);
            ev.origin_region = origin.into();
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            acks.push(
                js.publish_with_headers(event_subject(origin, &id), h, ev.encode_to_vec().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
        i = end;
    }
}

/// The regression of a restarted sidecar that stayed unready: nats-server 2.9 keeps reporting
/// a small non-zero `pending` at the tail of a stream whose heartbeat subjects keep one
/// message each (older heartbeats deleted while the consumer is still behind them), so
/// readiness must follow the stream sequence the replay started against, not that counter.
/// Tens of thousands of events, heartbeats of three origins replaced every 100 ms throughout,
/// and the sidecar restarted again and again: ready within a few seconds every time, with
/// every event applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_every_restart_over_a_large_stream_with_live_heartbeats() {
    const EVENTS: usize = 30_000;
    const RESTARTS: usize = 8;
    const BOUND: Duration = Duration::from_secs(8);
    let origins = ["us", "eu", "ap"];
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // This region's stream as sourcing leaves it: the other origins' heartbeats (and events)
    // in it too, one message per subject.
    let mut cfg = veto::bus::stream::stream_config(
        "VETO_REVOCATIONS_us",
        "us",
        Duration::from_secs(24 * 3600),
    );
    cfg.subjects = origins
        .iter()
        .map(|o| veto::bus::names::origin_subjects(o))
        .collect();
    js.create_stream(cfg).await.unwrap();

    let stop = CancellationToken::new();
    let beats = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                for o in origins {
                    veto::bus::publish_heartbeat(&js, o, veto::now_ms(), Duration::from_secs(5))
                        .await
                        .unwrap();
                }
            }
        })
    };
    let started = std::time::Instant::now();
    publish_many(&js, "us", "bulk", EVENTS).await;
    println!("published {EVENTS} events in {:?}", started.elapsed());

    let issuer = Issuer::new(Alg::ES256);
    let first = issuer.mint("u", "s-bulk-0");
    let last = issuer.mint("u", &format!("s-bulk-{}", EVENTS - 1));
    let config = sidecar_config(
        &issuer,
        Some(&nats.url()),
        "regions = [\"us\", \"eu\", \"ap\"]\nensure_stream = false\n",
    );
    let mut sidecar = Sidecar::start(&config);
    let mut took = Vec::new();
    let mut stuck = Vec::new();
    for run in 0..RESTARTS {
        if run > 0 {
            sidecar.restart();
        }
        match eventually(BOUND, || sidecar.ready()).await {
            Some(t) => {
                took.push(t);
                // ready means replayed: the oldest and the newest bulk event are enforced
                assert!(denied(&sidecar, &first).await, "run {run}: first event");
                assert!(denied(&sidecar, &last).await, "run {run}: last event");
            }
            None => {
                let body = reqwest::get(format!("{}/readyz", sidecar.base()))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let m = sidecar.metrics().await;
                stuck.push((
                    run,
                    body,
                    metric(&m, "veto_feed_last_sequence").unwrap_or(-1.0),
                ));
            }
        }
    }
    stop.cancel();
    beats.await.unwrap();
    println!("ready after {took:?}; stuck: {} of {RESTARTS}", stuck.len());
    for l in sidecar
        .log()
        .lines()
        .filter(|l| l.contains("replayed; ready"))
    {
        println!("{l}");
    }
    assert!(
        stuck.is_empty(),
        "{} of {RESTARTS} starts not ready within {BOUND:?}: {stuck:?}\n{}",
        stuck.len(),
        sidecar.log()
    );
}

/// The bounded corner of "replayed": the stream's last message when the replay starts is
/// deleted while the replay is still behind it, and nothing newer comes (no heartbeats). No
/// message at or past the target will ever arrive and the server's pending counter need not
/// reach 0, so the sidecar must find out by looking at the stream once the consumer is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_when_the_replay_target_is_deleted_and_nothing_newer_comes() {
    const EVENTS: usize = 30_000;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(veto::bus::stream::stream_config(
        "VETO_REVOCATIONS_us",
        "us",
        Duration::from_secs(24 * 3600),
    ))
    .await
    .unwrap();
    publish_many(&js, "us", "bulk", EVENTS).await;
    let now = veto::now_ms();
    let tail = veto::bus::publish_event(
        &js,
        &event("s-tail", "tail", now, now + 600_000),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .sequence;

    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), ""));
    // the replay has started (so its target is the tail): delete the tail
    let position =
        || async { metric(&sidecar.metrics().await, "veto_feed_last_sequence").unwrap_or(0.0) };
    let started = eventually(Duration::from_secs(10), || async { position().await > 0.0 }).await;
    assert!(
        started.is_some(),
        "replay never started:\n{}",
        sidecar.log()
    );
    js.get_stream("VETO_REVOCATIONS_us")
        .await
        .unwrap()
        .delete_message(tail)
        .await
        .unwrap();
    let at_delete = position().await;
    let took = eventually(Duration::from_secs(8), || sidecar.ready()).await;
    let log = sidecar.log();
    let line = log
        .lines()
        .find(|l| l.contains("replayed; ready"))
        .unwrap_or_default()
        .to_string();
    println!("tail {tail} deleted at replay position {at_delete}; ready after {took:?}: {line}");
    assert!(took.is_some(), "not ready:\n{log}");
    assert!(
        denied(
            &sidecar,
            &issuer.mint("u", &format!("s-bulk-{}", EVENTS - 1))
        )
        .await,
        "the last event before the tail is enforced"
    );
}

/// The catch-up reader counts its progress by the origin's stream sequence. When an origin
/// goes silent (its heartbeats stop while its stream still answers and takes revocations),
/// the source looks lagging for good: the direct read copies the lag once and then waits at
/// its position, instead of taking a quiet read for a stalled one and re-reading the whole
/// lag every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_a_silent_origins_lag_once() {
    const EVENTS: usize = 5_000;
    let topo = LocalTopology::start(&["us", "eu"]);
    topo.wait_linked(Duration::from_secs(20)).await;
    topo.provision_all().await;
    let eu = topo.jetstream("eu").await;
    let (stop_us, stop_eu) = (CancellationToken::new(), CancellationToken::new());
    for (region, stop) in [("us", &stop_us), ("eu", &stop_eu)] {
        let js = topo.jetstream_as(region, NatsUser::Authority).await;
        let stop = stop.clone();
        tokio::spawn(veto::bus::publish::heartbeats(
            js,
            region.to_string(),
            Duration::from_millis(200),
            stop,
        ));
    }
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(
        &(sidecar_config(&issuer, None, "")
            + &format!(
                "[nats]\nurl = \"{}\"\nregion = \"us\"\nregions = [\"us\", \"eu\"]\n\
             catchup_after = \"1s\"\n[revocation]\nretention = \"1h\"\n",
                topo.js_url("us")
            )),
    );
    sidecar.wait_ready(Duration::from_secs(15)).await;

    // eu's heartbeats stop, then revocations are published there: from a second later its
    // sourced heartbeats look stale and the direct read copies what eu holds since
    stop_eu.cancel();
    publish_many(&eu, "eu", "quiet", EVENTS).await;
    let reads = || async {
        metric(
            &sidecar.metrics().await,
            "veto_feed_catchup_reads_total{origin_region=\"eu\"}",
        )
        .unwrap_or(0.0)
    };
    let direct = || async {
        metric_sum(
            &sidecar.metrics().await,
            "veto_revocation_events_total",
            &["path=\"direct\""],
        )
    };
    let read = eventually(Duration::from_secs(15), || async {
        direct().await >= EVENTS as f64
    })
    .await;
    assert!(
        read.is_some(),
        "no direct read of eu's lag:\n{}",
        sidecar.log()
    );
    // quiet from here on: a read that is through waits, it is not recreated
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (n_reads, n_direct) = (reads().await, direct().await);
    let log = sidecar.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("veto::feed::catchup"))
        .collect();
    println!(
        "direct reads {n_reads}, events received directly {n_direct}:\n{}",
        lines.join("\n")
    );
    stop_us.cancel();
    // each event once (a read recreated after a slow answer resumes after its position)
    assert_eq!(
        n_direct, EVENTS as f64,
        "the lag was read again ({n_reads} reads):\n{log}"
    );
    // everything it read is enforced, whichever path brought it first
    assert!(
        denied(
            &sidecar,
            &issuer.mint("u", &format!("s-quiet-{}", EVENTS - 1))
        )
        .await
    );
}
