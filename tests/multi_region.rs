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
    let (code, out) = revoke_to(topo, region, region, what, id, "5s");
    assert_eq!(code, 0, "revoke in {region}: {out}");
}

/// `veto revoke` connected to `from`'s JetStream server, publishing at the origins `to`.
fn revoke_to(
    topo: &LocalTopology,
    from: &str,
    to: &str,
    what: &str,
    id: &str,
    timeout: &str,
) -> (i32, String) {
    let url = topo.js_url(from);
    let args = [what, id, "--nats", &url, "--region", from, "--to", to];
    let (code, out, err) = veto(&[&["revoke"][..], &args, &["--timeout", timeout]].concat());
    (code, format!("{out}{err}"))
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
    let mut beats: BTreeMap<&str, Proc> = REGIONS.iter().map(|r| (*r, topo.heartbeat(r))).collect();
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
            revoked_at_us: 0,
        };
        let sid = format!("dup-{origin}");
        // newer first, then an older one for the same session, then the newer again
        let newer = ev(&format!("{origin}-n"), &sid, now);
        let older = ev(&format!("{origin}-o"), &sid, now - 60_000);
        // through the library's publisher, as the authority and `veto revoke` publish
        for e in [&newer, &older, &newer] {
            veto::bus::publish_event(&js, e, Duration::from_secs(5))
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

/// Mints a token for `sub`/`sid` homed in `home` (claim `veto_home`), issued a minute ago so
/// a subject revocation made now covers it.
fn homed(issuer: &Issuer, sub: &str, sid: &str, home: &str) -> String {
    let mut c = issuer.claims(sub, sid);
    c["veto_home"] = serde_json::json!(home);
    c["iat"] = serde_json::json!(c["iat"].as_i64().unwrap() - 60);
    issuer.key.sign(&c).unwrap()
}

async fn ready(s: &Sidecar) -> bool {
    s.ready().await
}

/// Issue: one region cut off took every region down (each sidecar tracked every origin). With
/// `revocation.isolation = "home"` (the default), cutting eu's hub leaves us and ap serving
/// and enforcing each other's revocations, ready, with eu reported stale; tokens homed in eu
/// are what they refuse; eu serves its own; strict `global` mode still fails closed; after the
/// heal everything converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cut_region_stays_in_its_region() {
    const STALE: &str = "2s";
    let mut topo = LocalTopology::start(&REGIONS);
    topo.wait_linked(Duration::from_secs(20)).await;
    topo.provision_all().await;
    let _beats: Vec<Proc> = REGIONS.iter().map(|r| topo.heartbeat(r)).collect();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecars: BTreeMap<&str, Sidecar> = BTreeMap::new();
    for r in REGIONS {
        sidecars.insert(r, Sidecar::start(&region_config(&issuer, &topo, r, STALE)));
    }
    // the strict mode, for comparison, in us
    let strict = Sidecar::start(&region_config(&issuer, &topo, "us", STALE).replace(
        "on_stale = \"deny\"",
        "on_stale = \"deny\"\nisolation = \"global\"",
    ));
    for s in sidecars.values().chain([&strict]) {
        s.wait_ready(Duration::from_secs(15)).await;
    }
    let home_us = homed(&issuer, "u-us", "s-us", "us");
    let home_eu = homed(&issuer, "u-eu", "s-eu", "eu");
    let home_ap = homed(&issuer, "u-ap", "s-ap", "ap");
    let unhomed = issuer.mint("u-x", "s-x");
    let doomed_us = homed(&issuer, "d-us", "s-doomed-us", "us");
    let doomed_ap = homed(&issuer, "d-ap", "s-doomed-ap", "ap");
    let bob_eu = homed(&issuer, "bob", "s-bob-eu", "eu");
    let bob_ap = homed(&issuer, "bob", "s-bob-ap", "ap");
    for s in sidecars.values() {
        for t in [
            &home_us, &home_eu, &home_ap, &unhomed, &doomed_us, &doomed_ap, &bob_eu,
        ] {
            assert_eq!(status(s, t).await, 200);
        }
    }

    // -- cut eu off ---------------------------------------------------------------------
    topo.kill("eu-hub");
    let cut = Instant::now();
    // us and ap keep enforcing each other's revocations, each published at the session's home
    assert_eq!(
        revoke_to(&topo, "us", "us", "--session", "s-doomed-us", "5s").0,
        0
    );
    assert_eq!(
        revoke_to(&topo, "ap", "ap", "--session", "s-doomed-ap", "5s").0,
        0
    );
    for t in [&doomed_us, &doomed_ap] {
        for r in ["us", "ap"] {
            let s = &sidecars[r];
            let took = eventually(Duration::from_secs(2), || async {
                status(s, t).await == 401
            })
            .await;
            assert!(
                took.is_some(),
                "{r} did not enforce a healthy region's revocation"
            );
        }
    }
    // a revocation that belongs to eu cannot be published from outside: a loud failure (the
    // us sidecars' fast path may still have seen the message: more refused, never less)
    let (code, out) = revoke_to(&topo, "us", "eu", "--session", "s-eu-outside", "1s");
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("not acknowledged by eu"), "{out}");
    // a subject revocation goes to every origin: us and ap acknowledge, eu cannot
    let (code, out) = revoke_to(&topo, "ap", "us,eu,ap", "--subject", "bob", "1s");
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains("at origin us") && out.contains("at origin ap"),
        "{out}"
    );

    // -- past the staleness bound --------------------------------------------------------
    let stale_seen = eventually(Duration::from_secs(10), || async {
        status(&sidecars["us"], &home_eu).await == 503
    })
    .await;
    assert!(stale_seen.is_some(), "us never treated eu as stale");
    println!("eu stale in us after {:?} (bound {STALE})", cut.elapsed());
    for r in ["us", "ap"] {
        let s = &sidecars[r];
        assert!(ready(s).await, "{r} unready because eu is cut off");
        assert_eq!(status(s, &home_us).await, 200, "{r}");
        assert_eq!(status(s, &home_ap).await, 200, "{r}");
        assert_eq!(
            status(s, &home_eu).await,
            503,
            "{r}: eu-homed tokens depend on eu"
        );
        assert_eq!(status(s, &unhomed).await, 503, "{r}: no home: every origin");
        assert_eq!(status(s, &doomed_us).await, 401, "{r}");
        assert_eq!(status(s, &doomed_ap).await, 401, "{r}");
        let m = s.metrics().await;
        assert!(
            metric(&m, "veto_feed_staleness_seconds{origin_region=\"eu\"}").unwrap_or(0.0) > 2.0,
            "{r}: {m}"
        );
        assert!(
            metric_sum(
                &m,
                "veto_served_while_origin_stale_total",
                &["origin=\"eu\""]
            ) >= 2.0,
            "{r}: {m}"
        );
    }
    // bob's subject revocation reached ap's own origin: refused in ap even though eu is stale
    assert_eq!(status(&sidecars["ap"], &bob_ap).await, 401);
    assert_eq!(status(&sidecars["ap"], &bob_eu).await, 401);
    // the cut region serves what is homed there, and refuses what depends on the others
    let eu = &sidecars["eu"];
    assert!(ready(eu).await, "eu's own origin is fresh");
    assert_eq!(status(eu, &home_eu).await, 200);
    assert_eq!(status(eu, &home_us).await, 503);
    assert_eq!(status(eu, &home_ap).await, 503);
    // strict global mode: any stale origin refuses everything, and the pod is unready
    assert_eq!(status(&strict, &home_us).await, 503);
    assert!(!ready(&strict).await);
    let body: serde_json::Value = reqwest::get(format!("{}/readyz", strict.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.to_string().contains("eu"), "{body}");

    // -- heal -----------------------------------------------------------------------------
    topo.start_server("eu-hub");
    let healed = Instant::now();
    let converged = eventually(Duration::from_secs(15), || async {
        let mut ok = true;
        for s in sidecars.values().chain([&strict]) {
            for t in [&home_us, &home_eu, &home_ap, &unhomed] {
                ok &= status(s, t).await == 200;
            }
            for t in [&doomed_us, &doomed_ap] {
                ok &= status(s, t).await == 401;
            }
            ok &= ready(s).await;
        }
        ok
    })
    .await;
    println!("converged {:?} after eu's hub restarted", healed.elapsed());
    assert!(
        converged.is_some(),
        "not converged after the heal:\n{}",
        sidecars["eu"].log()
    );
    // eu now holds what us and ap published during the cut (bob's subject at us/ap origins)
    assert_eq!(status(eu, &bob_eu).await, 401);
}
