//! The multi-region topology of DESIGN §4 with real nats-server 2.9 processes: generated
//! configs, cross-domain sourcing without loops, idempotent provisioning, the core-NATS fast
//! path across gateways, and catch-up after a region's hub restarts.

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use async_nats::jetstream;
use futures::StreamExt;
use std::path::Path;
use std::time::{Duration, Instant};
use topology_support::{stream, stream_state, LocalTopology};
use veto::provision::Outcome;
use veto::revocation::{event_subject, Kind, RevocationEvent};
use veto::topology::{parse_regions, Topology};

/// The parameters `deploy/nats/` was generated with (its README names the command).
fn shipped() -> Topology {
    Topology::with_base_port(&parse_regions("us,eu,ap").unwrap(), 14000, "/tmp/veto-nats")
        .expect("topology")
}

#[test]
fn shipped_configs_are_generated_and_accepted_by_nats_server() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats");
    let bin = std::env::var("VETO_NATS_SERVER_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/sbin/nats-server".into());
    for (name, text) in shipped().files().expect("files") {
        let path = deploy.join(&name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, text,
            "{name} differs from what `veto nats topology` generates: regenerate deploy/nats \
             (see deploy/nats/README.md)"
        );
        if name.ends_with(".conf") {
            let out = std::process::Command::new(&bin)
                .arg("-t")
                .arg("-c")
                .arg(&path)
                .output()
                .expect("run nats-server -t");
            assert!(
                out.status.success(),
                "nats-server -t rejects {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn event(origin: &str, event_id: &str) -> RevocationEvent {
    let now = veto::now_ms();
    RevocationEvent {
        event_id: event_id.into(),
        kind: Kind::Session as i32,
        id: format!("session-{event_id}"),
        issuer: String::new(),
        revoked_at: now,
        expires_at: now + 3_600_000,
        origin_region: origin.into(),
        reason: "test".into(),
        urgent: false,
    }
}

/// Publishes through JetStream with `Nats-Msg-Id`; returns whether it was a duplicate.
async fn publish(js: &jetstream::Context, origin: &str, event_id: &str) -> bool {
    veto::feed::publish_event(js, &event(origin, event_id), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("publish {event_id} in {origin}: {e}"))
        .1
}

/// Does `region`'s stream (behind `js`) hold a message on `subject`?
async fn holds(js: &jetstream::Context, region: &str, subject: &str) -> bool {
    match js.get_stream(stream(region)).await {
        Ok(s) => s.get_last_raw_message_by_subject(subject).await.is_ok(),
        Err(_) => false,
    }
}

/// Polls until every stream in `streams` holds `subject`; returns how long it took.
async fn until_held(
    topo: &LocalTopology,
    streams: &[(&str, &jetstream::Context)],
    subject: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    for (region, js) in streams {
        while !holds(js, region, subject).await {
            assert!(
                start.elapsed() < timeout,
                "{region} lacks {subject} after {timeout:?}:\n{}",
                topo.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_source_each_other_without_loops_and_catch_up_after_a_hub_restart() {
    let test_start = Instant::now();
    let mut topo = LocalTopology::start(&["us", "eu", "ap"]);
    let linked = topo.wait_linked(Duration::from_secs(10)).await;
    println!("6 servers up and linked in {:?}", test_start.elapsed());
    println!("  (links formed {linked:?} after the last server listened)");

    // Provisioning: a two-region us first, then the third region joins.
    let two = vec!["us".to_string(), "eu".to_string()];
    assert_eq!(topo.provision("us", &two).await, Outcome::Created);
    let first = topo.provision_all().await;
    assert_eq!(
        first,
        [
            (
                "us".into(),
                Outcome::Updated(vec!["added source from ap".into()])
            ),
            ("eu".into(), Outcome::Created),
            ("ap".into(), Outcome::Created),
        ]
    );
    for (region, outcome) in topo.provision_all().await {
        assert_eq!(outcome, Outcome::Unchanged, "re-provisioning {region}");
    }

    let us = topo.jetstream("us").await;
    let eu = topo.jetstream("eu").await;
    let ap = topo.jetstream("ap").await;

    // Each server answers the plain JetStream API ($JS.API) for its own domain only (2.9
    // denies $JS.API.> on the leaf connection): the stream behind it captures that region's
    // subjects and sources the two others.
    for region in topo.regions() {
        let plain = jetstream::new(topo.client(&region).await);
        let mut s = plain
            .get_stream(stream(&region))
            .await
            .expect("local stream");
        let cfg = s.info().await.expect("info").config.clone();
        assert_eq!(cfg.subjects, [format!("veto.revocations.{region}.>")]);
        let mut from: Vec<String> = cfg
            .sources
            .unwrap_or_default()
            .iter()
            .map(|s| {
                s.external
                    .as_ref()
                    .expect("cross-domain")
                    .api_prefix
                    .clone()
            })
            .collect();
        from.sort();
        let mut want: Vec<String> = topo
            .regions()
            .into_iter()
            .filter(|r| *r != region)
            .map(|r| format!("$JS.{r}.API"))
            .collect();
        want.sort();
        assert_eq!(from, want, "{region}'s sources");
        for other in topo.regions().iter().filter(|o| **o != region) {
            assert!(
                plain.get_stream(stream(other)).await.is_err(),
                "{region}'s $JS.API must not reach {other}'s stream"
            );
        }
    }

    // The fast path: a core subscriber in eu sees a JetStream publish made in us.
    let eu_core = topo.client("eu").await;
    let mut fast = eu_core
        .subscribe("veto.revocations.*.ev.>")
        .await
        .expect("subscribe");
    eu_core.flush().await.expect("flush");
    // The subscription's interest must have crossed eu-js -> eu-hub -> us-hub -> us-js.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    let (duplicate, got) = tokio::join!(publish(&us, "us", "x1"), async {
        let got = tokio::time::timeout(Duration::from_secs(5), fast.next()).await;
        (got, sent.elapsed())
    });
    assert!(!duplicate);
    let (got, fast_took) = got;
    let got = got
        .expect("fast path: nothing within 5 s")
        .expect("subscription open");
    assert_eq!(got.subject.as_str(), event_subject("us", "x1"));
    println!("fast path us -> eu (core subscriber on eu-js): {fast_took:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fast.next())
            .await
            .is_err(),
        "the fast path delivers one copy"
    );

    // The durable path: eu and ap source it.
    let durable = until_held(
        &topo,
        &[("eu", &eu), ("ap", &ap)],
        &event_subject("us", "x1"),
        Duration::from_secs(10),
    )
    .await;
    println!("durable us -> eu, ap: held everywhere {durable:?} after the ack");

    // Every region publishes once; us repeats x1, which is deduplicated.
    assert!(!publish(&eu, "eu", "e1").await);
    assert!(!publish(&ap, "ap", "a1").await);
    assert!(
        publish(&us, "us", "x1").await,
        "same Nats-Msg-Id: duplicate"
    );
    let streams = [("us", &us), ("eu", &eu), ("ap", &ap)];
    for subject in [event_subject("eu", "e1"), event_subject("ap", "a1")] {
        let took = until_held(&topo, &streams, &subject, Duration::from_secs(12)).await;
        println!("{subject} held in all 3 regions after {took:?}");
    }
    // No loops: give a loop time to show, then every stream holds exactly the 3 events and
    // never stored anything else (a looped copy would raise last_seq even where
    // max_msgs_per_subject hides it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (region, js) in &streams {
        let st = stream_state(js, region).await;
        assert_eq!(
            (st.messages, st.last_sequence),
            (3, 3),
            "{region}: 3 distinct events, no loops"
        );
    }

    // Cut eu off: kill its hub. Both sides keep publishing and serving locally.
    topo.kill("eu-hub");
    assert!(
        !publish(&us, "us", "x2").await,
        "us publishes while eu is cut off"
    );
    assert!(
        !publish(&eu, "eu", "e2").await,
        "eu publishes while cut off"
    );
    assert_eq!(
        stream_state(&eu, "eu").await.messages,
        4,
        "eu-js serves while cut off"
    );
    until_held(
        &topo,
        &[("ap", &ap)],
        &event_subject("us", "x2"),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !holds(&eu, "eu", &event_subject("us", "x2")).await,
        "eu is cut off"
    );
    assert!(
        !holds(&us, "us", &event_subject("eu", "e2")).await,
        "eu is cut off"
    );

    let restarted = Instant::now();
    topo.start_server("eu-hub");
    let x2 = event_subject("us", "x2");
    let e2 = event_subject("eu", "e2");
    let (into_eu, out_of_eu) = tokio::join!(
        async {
            until_held(&topo, &[("eu", &eu)], &x2, Duration::from_secs(15)).await;
            restarted.elapsed()
        },
        async {
            until_held(
                &topo,
                &[("us", &us), ("ap", &ap)],
                &e2,
                Duration::from_secs(15),
            )
            .await;
            restarted.elapsed()
        },
    );
    println!(
        "after eu's hub restarted: eu's stream caught up (holds us/x2) in {into_eu:?}; \
         us and ap hold eu's e2 after {out_of_eu:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (region, js) in &streams {
        let st = stream_state(js, region).await;
        assert_eq!(
            (st.messages, st.last_sequence),
            (5, 5),
            "{region}: 5 distinct events after the restart, none lost or doubled"
        );
    }
    println!("whole test: {:?}", test_start.elapsed());
}
