//! Three regions for real (6 nats-server processes: hub + JetStream leaf per region), a veto
//! sidecar and a heartbeat publisher per region, Envoy in front of `us`: revoke anywhere,
//! denied everywhere — through partitions, JetStream restarts and new pods.

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;
use topology_support::LocalTopology;
use veto::revocation::{Kind, RevocationEvent};
use veto::token::Alg;

const REGIONS: [&str; 3] = ["us", "eu", "ap"];

fn region_config(issuer: &Issuer, topo: &LocalTopology, region: &str, staleness: &str) -> String {
    sidecar_config(issuer, None, "")
        + &format!(
            r#"
[nats]
url = "{url}"
region = "{region}"
regions = ["us", "eu", "ap"]
catchup_after = "1s"
[revocation]
retention = "1h"
max_staleness = "{staleness}"
on_stale = "deny"
"#,
            url = topo.js_url(region),
        )
}

async fn status(s: &Sidecar, token: &str) -> u16 {
    s.check(Some(&format!("Bearer {token}")))
        .await
        .status()
        .as_u16()
}

fn revoke_in(topo: &LocalTopology, region: &str, what: &str, id: &str) {
    let (code, out, err) = veto(&[
        "revoke",
        what,
        id,
        "--nats",
        &topo.js_url(region),
        "--region",
        region,
    ]);
    assert_eq!(code, 0, "revoke in {region}: {out}{err}");
}

/// Polls every sidecar until `token` is refused; returns the time each took.
async fn until_denied(
    sidecars: &BTreeMap<&str, Sidecar>,
    token: &str,
    timeout: Duration,
) -> BTreeMap<String, Duration> {
    let start = Instant::now();
    let mut took = BTreeMap::new();
    while took.len() < sidecars.len() && start.elapsed() < timeout {
        for (r, s) in sidecars {
            if !took.contains_key(*r) && status(s, token).await == 401 {
                took.insert(r.to_string(), start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_anywhere_denied_everywhere_through_partitions_and_restarts() {
    let mut topo = LocalTopology::start(&REGIONS);
    topo.wait_linked(Duration::from_secs(20)).await;
    topo.provision_all().await;
    let mut beats: BTreeMap<&str, Proc> = REGIONS
        .iter()
        .map(|r| (*r, heartbeat(&topo.js_url(r), r)))
        .collect();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecars: BTreeMap<&str, Sidecar> = BTreeMap::new();
    for r in REGIONS {
        sidecars.insert(r, Sidecar::start(&region_config(&issuer, &topo, r, "3s")));
    }
    for s in sidecars.values() {
        s.wait_ready(Duration::from_secs(15)).await;
    }
    let (up, _h) = upstream().await;
    let envoy = Envoy::start(sidecars["us"].grpc, up.port());
    let http = reqwest::Client::new();

    // -- 1. revoke in us: denied in us, eu, ap (and through Envoy in us) -----------------
    let t1 = issuer.mint("alice", "s1");
    let via_envoy = |t: &str| {
        http.get(envoy.url("/x"))
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(
        via_envoy(&t1).await.unwrap().status(),
        200,
        "{}",
        envoy.log()
    );
    for s in sidecars.values() {
        assert_eq!(status(s, &t1).await, 200);
    }
    revoke_in(&topo, "us", "--session", "s1");
    let took = until_denied(&sidecars, &t1, Duration::from_secs(2)).await;
    println!("revoked in us, enforced after (from CLI exit): {took:?}");
    assert_eq!(took.len(), 3, "not denied everywhere within 2 s: {took:?}");
    assert_eq!(via_envoy(&t1).await.unwrap().status(), 401);

    // -- 2. duplicates, out-of-order and poison from every origin -------------------------
    let now = veto::now_ms();
    for origin in REGIONS {
        let js = async_nats::jetstream::new(topo.client(origin).await);
        let publish = |subject: String, id: String, payload: Vec<u8>| {
            let js = js.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                js.publish_with_headers(subject, h, payload.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        };
        let ev = |eid: &str, sid: &str, at: i64| RevocationEvent {
            event_id: eid.into(),
            kind: Kind::Session as i32,
            id: sid.into(),
            issuer: String::new(),
            revoked_at: at,
            expires_at: at + 600_000,
            origin_region: origin.into(),
            reason: "test".into(),
            urgent: false,
        };
        let sid = format!("dup-{origin}");
        // newer first, then an older one for the same session, then the newer again
        let newer = ev(&format!("{origin}-n"), &sid, now);
        let older = ev(&format!("{origin}-o"), &sid, now - 60_000);
        // through the library's publisher, as the authority and `veto revoke` publish
        for e in [&newer, &older, &newer] {
            veto::feed::publish_event(&js, e, Duration::from_secs(5))
                .await
                .unwrap();
        }
        publish(
            format!("veto.revocations.{origin}.ev.{origin}-poison"),
            format!("{origin}-poison"),
            b"\x08\xff\xff".to_vec(),
        )
        .await;
    }
    for origin in REGIONS {
        let t = issuer.mint("bob", &format!("dup-{origin}"));
        let took = until_denied(&sidecars, &t, Duration::from_secs(3)).await;
        assert_eq!(
            took.len(),
            3,
            "revocation from {origin} not everywhere: {took:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (r, s) in &sidecars {
        let m = s.metrics().await;
        let applied = metric_sum(&m, "veto_revocation_events_total", &["result=\"applied\""]);
        // s1 + one per origin for dup-<origin> (the older/duplicate ones change nothing)
        assert_eq!(applied, 4.0, "{r}: {m}");
        assert!(
            metric_sum(
                &m,
                "veto_revocation_events_total",
                &["path=\"durable\"", "result=\"invalid\""]
            ) >= 3.0,
            "{r}"
        );
        assert!(s.ready().await, "{r} not ready after poison");
    }

    // -- 3. kill eu's JetStream server under load: answers from memory, resumes, no gaps ---
    let t3 = issuer.mint("carol", "s3");
    let alive = issuer.mint("dave", "s-alive");
    let load = {
        let base = sidecars["eu"].base();
        let alive = alive.clone();
        tokio::spawn(async move {
            let c = reqwest::Client::new();
            let (mut ok, mut other) = (0u32, 0u32);
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(2500) {
                match c
                    .get(format!("{base}/check"))
                    .header("authorization", format!("Bearer {alive}"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => other += 1,
                }
            }
            (ok, other)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    topo.kill("eu-js");
    revoke_in(&topo, "us", "--session", "s3");
    tokio::time::sleep(Duration::from_millis(800)).await;
    topo.start_server("eu-js");
    let (ok, other) = load.await.unwrap();
    println!(
        "eu under load while its JetStream server restarted: {ok} answered 200, {other} other"
    );
    assert_eq!(other, 0, "the sidecar must keep answering from memory");
    let took = until_denied(&sidecars, &t3, Duration::from_secs(10)).await;
    assert_eq!(
        took.len(),
        3,
        "s3 not enforced everywhere after eu-js restart: {took:?}\n{}",
        sidecars["eu"].log()
    );
    let m = sidecars["eu"].metrics().await;
    assert_eq!(
        metric_sum(&m, "veto_revocation_events_total", &["result=\"applied\""]),
        5.0,
        "no gaps, no double counts: {m}"
    );

    // -- 4. cut eu off (kill its hub) while us revokes more --------------------------------
    let t4 = issuer.mint("erin", "s4");
    let eu_local = issuer.mint("frank", "s-eu");
    topo.kill("eu-hub");
    revoke_in(&topo, "us", "--session", "s4");
    // us and ap enforce at once; eu cannot know
    let took = until_denied(&sidecars, &t4, Duration::from_secs(1)).await;
    assert!(
        took.contains_key("us") && took.contains_key("ap"),
        "{took:?}"
    );
    assert!(!took.contains_key("eu"));
    // eu keeps serving its local state until the staleness bound, then the deny policy
    assert_eq!(
        status(&sidecars["eu"], &t1).await,
        401,
        "old revocations still enforced in eu"
    );
    let stale_after = eventually(Duration::from_secs(8), || async {
        sidecars["eu"]
            .check(Some(&format!("Bearer {eu_local}")))
            .await
            .status()
            == 503
    })
    .await;
    assert!(stale_after.is_some(), "eu never applied on_stale=deny");
    let m = sidecars["eu"].metrics().await;
    assert!(
        metric(&m, "veto_feed_staleness_seconds{origin_region=\"us\"}").unwrap_or(0.0) > 2.0,
        "{m}"
    );
    // heal: eu catches up — s4 enforced, everything fresh again
    let healed = Instant::now();
    topo.start_server("eu-hub");
    let caught_up = eventually(Duration::from_secs(10), || async {
        status(&sidecars["eu"], &t4).await == 401 && status(&sidecars["eu"], &eu_local).await == 200
    })
    .await;
    println!(
        "eu caught up {:?} after its hub restarted",
        healed.elapsed()
    );
    assert!(
        caught_up.is_some(),
        "eu did not catch up:\n{}",
        sidecars["eu"].log()
    );

    // -- 5. a new sidecar in ap while us is cut off ----------------------------------------
    topo.kill("us-hub");
    drop(beats.remove("us"));
    let fresh = Sidecar::start(&region_config(&issuer, &topo, "ap", "30s"));
    // not ready before it has replayed ap's stream; then every revocation ap holds applies
    // (us-origin ones included), although us is unreachable
    fresh.wait_ready(Duration::from_secs(10)).await;
    for t in [&t1, &t3, &t4] {
        assert_eq!(status(&fresh, t).await, 401);
    }
    let m = fresh.metrics().await;
    assert!(
        metric_sum(
            &m,
            "veto_revocation_events_total",
            &["path=\"durable\"", "result=\"applied\""]
        ) >= 6.0,
        "{m}"
    );
    drop(envoy);
}
