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
use veto::bus::names::event_subject;
use veto::bus::stream::Outcome;
use veto::bus::topology::{parse_regions, Topology};
use veto::revocation::{Kind, RevocationEvent};

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
    let topology = shipped();
    for (name, text) in topology.files().expect("files") {
        let path = deploy.join(&name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, text,
            "{name} differs from what `veto nats topology` generates: regenerate deploy/nats \
             (see deploy/nats/README.md)"
        );
        for p in topology.secrets.all_passwords() {
            assert!(!text.contains(p), "{name} holds a password");
        }
        assert!(
            !text.contains("password: \""),
            "{name} holds a literal password"
        );
        if name.ends_with(".conf") {
            // The passwords come from the environment (`<out>/secrets.env`): without it the
            // server refuses the file.
            let check = |env: &[(String, String)]| {
                let mut cmd = std::process::Command::new(&bin);
                cmd.arg("-t").arg("-c").arg(&path);
                for (k, _) in topology.secret_vars() {
                    cmd.env_remove(k);
                }
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                cmd.output().expect("run nats-server -t")
            };
            let out = check(&topology.secret_vars());
            assert!(
                out.status.success(),
                "nats-server -t rejects {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!check(&[]).status.success(), "{name} without its secrets");
        }
    }
}

/// The parameters `k8s/overlays/<region>/nats/` were generated with (docs/kubernetes.md).
fn kubernetes() -> Topology {
    Topology::kubernetes(
        &parse_regions("us,eu,ap").unwrap(),
        "nats-{role}.veto-{region}.svc.cluster.local",
        "/data/jetstream",
    )
    .expect("topology")
}

#[test]
fn kubernetes_configs_are_generated_hold_no_password_and_are_accepted_by_nats_server() {
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/overlays");
    let bin = std::env::var("VETO_NATS_SERVER_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/sbin/nats-server".into());
    let files = kubernetes().files().expect("files");
    assert_eq!(
        files.len(),
        6,
        "hub.conf and js.conf per region, nothing else"
    );
    for (name, text) in files {
        let path = overlays.join(&name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk, text,
            "{name} differs from what `veto nats topology --host-template ...` generates: \
             regenerate k8s/overlays (docs/kubernetes.md)"
        );
        assert!(
            !text.contains("password: \""),
            "{name} holds a literal password"
        );
        // Without the environment the server refuses the file; with it, accepts it.
        let check = |env: &[(&str, &str)]| {
            let mut cmd = std::process::Command::new(&bin);
            cmd.arg("-t").arg("-c").arg(&path);
            for (k, _) in PASSWORD_VARS {
                cmd.env_remove(k);
            }
            cmd.envs(env.iter().copied());
            cmd.output().expect("run nats-server -t")
        };
        let out = check(&PASSWORD_VARS);
        assert!(
            out.status.success(),
            "nats-server -t rejects {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!check(&[]).status.success(), "{name} without its passwords");
    }
}

/// What the NATS pods' environment holds (k8s/base/nats, from Secret veto-nats-servers).
const PASSWORD_VARS: [(&str, &str); 7] = [
    ("VETO_NATS_SYSTEM_PASSWORD", "t-sys"),
    ("VETO_NATS_LEAF_PASSWORD", "t-leaf"),
    ("VETO_NATS_SIDECAR_PASSWORD", "t-sidecar"),
    ("VETO_NATS_AUTHORITY_PASSWORD", "t-authority"),
    ("VETO_NATS_REVOKER_PASSWORD", "t-revoker"),
    ("VETO_NATS_OPERATOR_PASSWORD", "t-operator"),
    ("VETO_NATS_LEAF_URL", "nats://leaf:t-leaf@nats-hub:7422"),
];

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
        revoked_at_us: 0,
    }
}

/// Publishes through JetStream with `Nats-Msg-Id`; returns whether it was a duplicate.
async fn publish(js: &jetstream::Context, origin: &str, event_id: &str) -> bool {
    veto::bus::publish_event(js, &event(origin, event_id), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("publish {event_id} in {origin}: {e}"))
        .duplicate
}

/// Publishes like a publisher that does not qualify its message ids by origin (a third-party
/// or pre-0.2 publisher): `Nats-Msg-Id: <event_id>`; returns whether it was a duplicate.
async fn publish_bare_id(js: &jetstream::Context, origin: &str, event_id: &str) -> bool {
    use prost::Message;
    let ev = event(origin, event_id);
    let subject = event_subject(origin, event_id);
    let ack = veto::bus::publish::send(js, subject, event_id, ev.encode_to_vec().into())
        .await
        .unwrap_or_else(|e| panic!("publish {event_id} in {origin}: {e}"));
    veto::bus::publish::acked(ack, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("publish {event_id} in {origin}: {e}"))
        .duplicate
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

/// Publishes `region`'s heartbeat every 250 ms until `shutdown`, over its own connection
/// (which reconnects by itself after a server restart).
fn heartbeats(topo: &LocalTopology, region: &str, shutdown: &tokio_util::sync::CancellationToken) {
    let (url, region, sd) = (topo.js_url(region), region.to_string(), shutdown.clone());
    let password = topo.topology.secrets.authority_password.clone();
    tokio::spawn(async move {
        // As `authority`, the only user that may publish heartbeats (its own inbox prefix).
        let client =
            async_nats::ConnectOptions::with_user_and_password("authority".into(), password)
                .custom_inbox_prefix(veto::bus::names::AUTHORITY_INBOX_PREFIX)
                .retry_on_initial_connect()
                .connect(url)
                .await
                .expect("heartbeat client");
        let js = jetstream::with_domain(client, &region);
        veto::bus::publish::heartbeats(js, region, Duration::from_millis(250), sd).await;
    });
}

/// The wedge of nats-io/nats-server#4459 on nats-server 2.9, as the fault harness met it.
/// us's JetStream server is SIGKILLed and restarted while us is cut off (its hub down, so
/// the order below is certain); one revocation is published in eu and — a retry, with the same
/// `event_id` and so the same `Nats-Msg-Id` — in us. When the link is back, each copy reaches
/// streams that already hold that msg id: the server refuses it ("msgid is duplicate"),
/// restarts the source at that same message every 2 s, and stores nothing more from that
/// origin until the 2-minute duplicate window lapses. eu (stuck on us) gets a fresh sidecar,
/// whose source repair must unstick eu's stream; the sidecar relies on the durable path alone
/// (no direct catch-up reads, 3 s staleness bound), so it can only see us fresh — and, where
/// readiness needs every origin, become ready — once eu's stream delivers us's heartbeats.
/// us (stuck on eu) is repaired by `veto nats provision --repair-sources` meanwhile. ap (stuck
/// on us) is left alone: it must still be stuck at the end (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_stuck_on_a_duplicate_msg_id_is_repaired_and_a_fresh_sidecar_becomes_ready() {
    let test_start = Instant::now();
    let mut topo = LocalTopology::start(&["us", "eu", "ap"]);
    topo.wait_linked(Duration::from_secs(10)).await;
    topo.provision_all().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    for r in topo.regions() {
        heartbeats(&topo, &r, &shutdown);
    }
    let eu = topo.jetstream("eu").await;
    let ap = topo.jetstream("ap").await;
    // Every source has delivered: the wedge needs a stream that already holds messages of the
    // origin (with none, the server's restart point skips the refused message instead).
    {
        let us = topo.jetstream("us").await;
        let streams = [("us", &us), ("eu", &eu), ("ap", &ap)];
        for r in ["us", "eu", "ap"] {
            let others: Vec<_> = streams.iter().filter(|s| s.0 != r).cloned().collect();
            let hb = format!("veto.revocations.{r}.hb");
            until_held(&topo, &others, &hb, Duration::from_secs(15)).await;
        }
    }

    // The wedge.
    topo.kill("us-hub");
    topo.kill("us-js");
    topo.start_server("us-js");
    let us = topo.jetstream("us").await;
    assert!(!publish_bare_id(&us, "us", "retried-1").await);
    assert!(!publish_bare_id(&eu, "eu", "retried-1").await);
    let (us_copy, eu_copy) = (
        event_subject("us", "retried-1"),
        event_subject("eu", "retried-1"),
    );
    until_held(&topo, &[("ap", &ap)], &eu_copy, Duration::from_secs(5)).await;
    topo.start_server("us-hub");
    topo.wait_linked(Duration::from_secs(10)).await;
    // Stuck: us's stream moves on (heartbeats), eu's and ap's copies of it do not; nor does
    // us's copy of eu.
    let wedged = Instant::now();
    let us_last = stream_state(&us, "us").await.last_sequence;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(stream_state(&us, "us").await.last_sequence > us_last + 5);
    for (region, js, subject) in [
        ("eu", &eu, &us_copy),
        ("ap", &ap, &us_copy),
        ("us", &us, &eu_copy),
    ] {
        assert!(
            !holds(js, region, subject).await,
            "{region} holds {subject}: not wedged:\n{}",
            topo.logs()
        );
    }
    for server in ["eu-js", "us-js"] {
        assert!(
            topo.log(server).contains("msgid is duplicate"),
            "{server}:\n{}",
            topo.log(server)
        );
    }

    // veto nats provision --repair-sources on us, while a fresh sidecar in eu repairs eu's
    // stream.
    let us_url = topo.js_url("us");
    let cli = tokio::task::spawn_blocking(move || {
        support::veto(&[
            "nats",
            "provision",
            "--nats",
            &us_url,
            "--region",
            "us",
            "--regions",
            "us,eu,ap",
            "--retention",
            "1h",
            "--repair-sources",
            "14s",
        ])
    });
    let issuer = support::Issuer::new(veto::token::Alg::ES256);
    let config = support::sidecar_config(&issuer, None, "")
        + &format!(
            "[nats]\nurl = \"{}\"\nregion = \"eu\"\nregions = [\"us\", \"eu\", \"ap\"]\n\
             catchup_after = \"1h\"\n[revocation]\nretention = \"1h\"\nmax_staleness = \"3s\"\n",
            topo.js_url("eu")
        );
    let sidecar = support::Sidecar::start(&config);
    let started = Instant::now();
    // The sidecar's own view of us: fresh again only once eu's stream delivers us's
    // heartbeats (its only path for them here).
    let us_fresh = || async {
        let m = sidecar.metrics().await;
        support::metric(&m, "veto_feed_staleness_seconds{origin_region=\"us\"}")
            .is_some_and(|s| s < 3.0)
    };
    let fresh = support::eventually(Duration::from_secs(30), us_fresh)
        .await
        .unwrap_or_else(|| {
            panic!(
                "us still stale for the fresh eu sidecar 30 s after its start:\n{}\n{}",
                sidecar.log(),
                topo.logs()
            )
        });
    println!(
        "source stuck {:?}; us fresh for the fresh eu sidecar {fresh:?} after its start",
        wedged.elapsed() - (started.elapsed() - fresh)
    );
    assert!(
        fresh > Duration::from_secs(3),
        "us fresh before any repair could have happened: the wedge was not in effect\n{}",
        sidecar.log()
    );
    sidecar.wait_ready(Duration::from_secs(5)).await;
    assert!(holds(&eu, "eu", &us_copy).await, "eu holds us's copy");
    // eu follows us again: a revocation made in us now reaches eu's stream at once.
    assert!(!publish(&us, "us", "after-repair").await);
    until_held(
        &topo,
        &[("eu", &eu)],
        &event_subject("us", "after-repair"),
        Duration::from_secs(3),
    )
    .await;
    // The repair counts itself once it has given the window back.
    let healed = || async {
        let m = sidecar.metrics().await;
        support::metric_sum(
            &m,
            "veto_stream_source_repairs_total",
            &["origin_region=\"us\"", "result=\"healed\""],
        ) == 1.0
    };
    assert!(
        support::eventually(Duration::from_secs(5), healed)
            .await
            .is_some(),
        "{}\n{}",
        sidecar.metrics().await,
        sidecar.log()
    );
    // The duplicate window is back to the planned 2 minutes, eu's other source untouched.
    let mut s = eu.get_stream(stream("eu")).await.expect("eu stream");
    let info = s.info().await.expect("info").clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.sources.map(|s| s.len()), Some(2));
    let (code, out, err) = cli.await.expect("veto nats provision");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("source from eu was stuck at") && out.contains("healed"),
        "{out}{err}"
    );
    assert!(holds(&us, "us", &eu_copy).await, "us holds eu's copy");
    // The control: ap, where nothing repairs, is still stuck on the same message.
    assert!(
        !holds(&ap, "ap", &us_copy).await,
        "ap healed without a repair: the test no longer shows the wedge"
    );
    println!("whole test: {:?}", test_start.elapsed());
}

/// The cause of the wedge above, removed for Veto's own publishers: message ids are qualified
/// by origin (`<origin>.<event_id>`), so one event id published at two origins — a revocation
/// retried in another region, or `veto revoke --to us,eu` — is two messages everywhere: both
/// stored under their origins in every region, and no source refuses anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_id_at_two_origins_is_two_messages_and_wedges_nothing() {
    let topo = LocalTopology::start(&["us", "eu", "ap"]);
    topo.wait_linked(Duration::from_secs(10)).await;
    topo.provision_all().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    for r in topo.regions() {
        heartbeats(&topo, &r, &shutdown);
    }
    let (us, eu, ap) = (
        topo.jetstream("us").await,
        topo.jetstream("eu").await,
        topo.jetstream("ap").await,
    );
    // every source has delivered once (the wedge needs that)
    let streams = [("us", &us), ("eu", &eu), ("ap", &ap)];
    for r in ["us", "eu", "ap"] {
        let others: Vec<_> = streams.iter().filter(|s| s.0 != r).cloned().collect();
        until_held(
            &topo,
            &others,
            &format!("veto.revocations.{r}.hb"),
            Duration::from_secs(15),
        )
        .await;
    }
    assert!(!publish(&us, "us", "same-1").await, "first copy");
    assert!(
        !publish(&eu, "eu", "same-1").await,
        "not a duplicate at another origin"
    );
    for subject in [event_subject("us", "same-1"), event_subject("eu", "same-1")] {
        until_held(&topo, &streams, &subject, Duration::from_secs(10)).await;
    }
    // and the sources keep moving: a later event from each reaches every region
    assert!(!publish(&us, "us", "after-1").await);
    assert!(!publish(&eu, "eu", "after-1").await);
    for subject in [
        event_subject("us", "after-1"),
        event_subject("eu", "after-1"),
    ] {
        until_held(&topo, &streams, &subject, Duration::from_secs(10)).await;
    }
    for server in ["us-js", "eu-js", "ap-js"] {
        assert!(
            !topo.log(server).contains("msgid is duplicate"),
            "{server}:\n{}",
            topo.log(server)
        );
    }
}
