//! The authority across three real regions, black box: per region a hub + JetStream leaf
//! (`LocalTopology`), one `veto authority` process, one `veto sidecar` trusting that region's
//! authority JWKS, and real Envoy in front where the test calls through a proxy. One key set,
//! one refresh MAC key and one admin secret for every region (`Kit`).
//!
//! What it proves, each with statuses, bodies and timings: a session made in us refreshes in
//! eu (forwarded home), is accepted in ap, and a logout in ap denies it everywhere within the
//! propagation budget; reuse of an old refresh token in another region kills the session
//! everywhere; 50 concurrent refreshes of one token from two regions rotate exactly once;
//! an unreachable home (hub killed, JetStream killed, authority killed, hub frozen) is a fast
//! 503 with nothing half-written while access tokens keep validating, and the same refresh
//! token works after the heal; a signing key rotation while sidecars validate continuously
//! through Envoy causes no false 401.

#[path = "support/authority.rs"]
mod authority_support;
mod support;
#[path = "support/topology.rs"]
mod topology_support;

use authority_support::{sidecar_issuer, Authority, Kit, ISSUER};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;
use topology_support::LocalTopology;
use veto::bus::topology::NatsUser;
use veto::token::Alg;

const REGIONS: [&str; 3] = ["us", "eu", "ap"];
/// A revocation made anywhere must be enforced everywhere within this.
const PROPAGATION_BUDGET: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Opts {
    /// Extra `[authority]` lines of every authority.
    authority: &'static str,
    /// Extra `[[issuers]]` lines of every sidecar.
    issuer: &'static str,
    /// Regions with a sidecar (none: authorities only).
    sidecars: &'static [&'static str],
    /// Regions with Envoy in front of their sidecar.
    envoys: &'static [&'static str],
    /// The us authority connects to the us hub (JetStream through domain `us`), so it stays
    /// reachable when the us JetStream server is down.
    us_on_hub: bool,
}

struct World {
    topo: LocalTopology,
    kit: Kit,
    auth: BTreeMap<&'static str, Authority>,
    sidecars: BTreeMap<&'static str, Sidecar>,
    envoys: BTreeMap<&'static str, Envoy>,
    http: reqwest::Client,
    _upstream: tokio::task::JoinHandle<()>,
}

fn hub_url(topo: &LocalTopology, region: &str) -> String {
    let ports = topo.topology.region(region).expect("region").ports;
    format!("nats://127.0.0.1:{}", ports.hub_client)
}

impl World {
    async fn start(o: Opts) -> World {
        let started = Instant::now();
        let topo = LocalTopology::start(&REGIONS);
        topo.wait_linked(Duration::from_secs(20)).await;
        topo.provision_all().await;
        let kit = Kit::new();
        let mut auth = BTreeMap::new();
        for r in REGIONS {
            let on_hub = o.us_on_hub && r == "us";
            let url = if on_hub {
                hub_url(&topo, r)
            } else {
                topo.js_url(r)
            };
            // As `authority`: the only user that may publish the heartbeats it hosts.
            let login = topo.nats_login(NatsUser::Authority);
            let nats_extra = if on_hub {
                format!("[nats]\ndomain = \"{r}\"\ncatchup_after = \"1s\"\n{login}")
            } else {
                format!("[nats]\ncatchup_after = \"1s\"\n{login}")
            };
            let cfg = Authority::config(&kit, &url, r, &REGIONS, o.authority).replacen(
                "[nats]\n",
                &nats_extra,
                1,
            );
            auth.insert(r, Authority::start(&cfg));
        }
        for a in auth.values() {
            a.wait_ready(Duration::from_secs(30)).await;
        }
        let mut sidecars = BTreeMap::new();
        for r in o.sidecars {
            let cfg = format!(
                "[log]\nlevel = \"info\"\n{}{}\n{}[revocation]\nretention = \"24h\"\n\
                 max_staleness = \"30s\"\non_stale = \"deny\"\n",
                sidecar_issuer(&auth[r].jwks_url()),
                o.issuer,
                nats_section(&topo.js_url(r), r, &REGIONS, "catchup_after = \"1s\""),
            );
            sidecars.insert(*r, Sidecar::start(&cfg));
        }
        for s in sidecars.values() {
            s.wait_ready(Duration::from_secs(20)).await;
        }
        let (up, upstream) = upstream().await;
        let mut envoys = BTreeMap::new();
        for r in o.envoys {
            envoys.insert(*r, Envoy::start(sidecars[r].grpc, up.port()));
        }
        eprintln!("world up in {:?}", started.elapsed());
        World {
            topo,
            kit,
            auth,
            sidecars,
            envoys,
            http: reqwest::Client::new(),
            _upstream: upstream,
        }
    }

    /// A request through `region`'s Envoy with `token`: the status.
    async fn through(&self, region: &str, token: &str) -> u16 {
        self.http
            .get(self.envoys[region].url("/x"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// `GET /check` at `region`'s sidecar: the status.
    async fn check(&self, region: &str, token: &str) -> u16 {
        self.http
            .get(format!("{}/check", self.sidecars[region].base()))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// What `region` answers for `token`: through its Envoy if it has one, else its sidecar.
    async fn decide(&self, region: &str, token: &str) -> u16 {
        if self.envoys.contains_key(region) {
            self.through(region, token).await
        } else {
            self.check(region, token).await
        }
    }

    /// Polls every region with a sidecar until all of `tokens` are refused (401) there;
    /// the time each region took.
    async fn until_denied(&self, tokens: &[&str], timeout: Duration) -> BTreeMap<String, Duration> {
        let start = Instant::now();
        let mut took = BTreeMap::new();
        while took.len() < self.sidecars.len() && start.elapsed() < timeout {
            for r in self.sidecars.keys() {
                if took.contains_key(*r) {
                    continue;
                }
                let mut all = true;
                for t in tokens {
                    let st = self.decide(r, t).await;
                    assert!(st == 200 || st == 401, "{r}: unexpected {st}");
                    all &= st == 401;
                }
                if all {
                    took.insert(r.to_string(), start.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        took
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (r, a) in &self.auth {
            let log = a.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- authority {r} (last 40 lines)\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// The decoded JOSE header and claims of a compact JWS (no verification).
fn jwt_parts(jwt: &str) -> (Value, Value) {
    let mut it = jwt.split('.');
    let mut part = || {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(it.next().expect("jwt part"))
            .expect("base64url");
        serde_json::from_slice::<Value>(&b).expect("json")
    };
    let header = part();
    (header, part())
}

fn kid(jwt: &str) -> String {
    s(&jwt_parts(jwt).0, "kid")
}

/// The session record `s.<sid>` in `region`'s bucket and its KV revision, if any.
async fn record_in(topo: &LocalTopology, region: &str, sid: &str) -> Option<(Value, u64)> {
    let js = async_nats::jetstream::with_domain(topo.client(region).await, region);
    let kv = js
        .get_key_value("VETO_SESSIONS")
        .await
        .unwrap_or_else(|e| panic!("open VETO_SESSIONS in {region}: {e}"));
    let e = kv.entry(format!("s.{sid}")).await.expect("kv entry")?;
    Some((
        serde_json::from_slice(&e.value).expect("record json"),
        e.revision,
    ))
}

/// The session record `s.<sid>` in `region`'s bucket and its KV revision.
async fn record(topo: &LocalTopology, region: &str, sid: &str) -> (Value, u64) {
    record_in(topo, region, sid)
        .await
        .unwrap_or_else(|| panic!("no record s.{sid} in {region}"))
}

/// A refresh answer with its headers and how long it took.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    took: Duration,
}

async fn refresh_raw(http: &reqwest::Client, a: &Authority, rt: &str) -> Answer {
    let body =
        serde_urlencoded::to_string([("grant_type", "refresh_token"), ("refresh_token", rt)])
            .expect("form");
    let started = Instant::now();
    let r = http
        .post(a.url("/v1/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("post /v1/token");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        took: started.elapsed(),
    }
}

/// A 503 `temporarily_unavailable` with Retry-After and `Cache-Control: no-store`.
fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.body);
    assert_eq!(
        a.body["error"], "temporarily_unavailable",
        "{what}: {}",
        a.body
    );
    let retry = a
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry.is_some_and(|r| r >= 1),
        "{what}: Retry-After missing: {:?}",
        a.headers
    );
    let cc = a
        .headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(cc.contains("no-store"), "{what}: Cache-Control {cc:?}");
}

/// Asserts that every region's authority refuses `rt` with 400 invalid_grant within
/// `timeout` and never refreshes it meanwhile (a revoked session must not refresh again).
async fn refused_everywhere(w: &World, rt: &str, timeout: Duration, what: &str) {
    for r in REGIONS {
        let a = &w.auth[r];
        let took = eventually(timeout, || async {
            let (st, b) = a.refresh(rt).await;
            assert_ne!(st, 200, "{what}: {r} refreshed a revoked session: {b}");
            assert!(st == 400 || st == 503, "{what}: {r}: {st} {b}");
            st == 400 && b["error"] == "invalid_grant"
        })
        .await;
        assert!(
            took.is_some(),
            "{what}: {r} did not refuse with invalid_grant\n{}",
            w.logs()
        );
        eprintln!("{what}: {r} refuses after {:?}", took.unwrap_or_default());
    }
}

async fn login(w: &World, region: &str, sub: &str) -> Value {
    let (st, t) = w.auth[region].login(json!({ "sub": sub })).await;
    assert_eq!(st, 201, "login in {region}: {t}\n{}", w.logs());
    assert_eq!(t["home_region"], region);
    t
}

// -------------------------------------------------------------------------------------------
// 1. the end-to-end scenario
// -------------------------------------------------------------------------------------------

/// Login in us → a call through Envoy in us → refresh in eu (forwarded to the us home) → the
/// new access token through Envoy in ap → logout in ap → denied everywhere within the budget,
/// and the newest refresh token refused by every region's authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_us_refresh_eu_call_ap_logout_ap_is_denied_everywhere() {
    let w = World::start(Opts {
        sidecars: &REGIONS,
        envoys: &REGIONS,
        ..Opts::default()
    })
    .await;

    let t0 = login(&w, "us", "alice").await;
    let (at0, rt0, sid) = (
        s(&t0, "access_token"),
        s(&t0, "refresh_token"),
        s(&t0, "session_id"),
    );
    let (_, claims) = jwt_parts(&at0);
    assert_eq!(claims["veto_home"], "us");
    assert_eq!(claims["sid"], sid.as_str());
    assert_eq!(w.through("us", &at0).await, 200, "{}", w.envoys["us"].log());

    // refresh in eu: forwarded to the home in us
    let a = refresh_raw(&w.http, &w.auth["eu"], &rt0).await;
    eprintln!("refresh in eu of a us session (forwarded): {:?}", a.took);
    assert_eq!(a.status, 200, "{}\n{}", a.body, w.logs());
    let t1 = a.body;
    let (at1, rt1) = (s(&t1, "access_token"), s(&t1, "refresh_token"));
    assert!(rt1.starts_with("vrt1.us."), "{rt1}");
    assert_ne!(rt1, rt0);
    assert_ne!(at1, at0);
    assert_eq!(t1["session_id"], sid.as_str());
    assert_eq!(t1["home_region"], "us");
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["generation"], 1, "{rec}");
    // the session lives in its home only
    for r in ["eu", "ap"] {
        let copy = record_in(&w.topo, r, &sid).await;
        assert!(copy.is_none(), "a us session in {r}'s bucket: {copy:?}");
    }
    assert!(
        metric_sum(
            &w.auth["eu"].metrics().await,
            "veto_authority_refresh_seconds_count",
            &["path=\"forwarded\""]
        ) >= 1.0
    );

    // the new access token in ap (and everywhere), the old one too (still valid)
    assert_eq!(w.through("ap", &at1).await, 200, "{}", w.envoys["ap"].log());
    for r in REGIONS {
        assert_eq!(w.through(r, &at0).await, 200, "{r}");
        assert_eq!(w.through(r, &at1).await, 200, "{r}");
    }

    // logout in ap with the access token
    let started = Instant::now();
    let (st, body) = w.auth["ap"].logout(&at1).await;
    let logout_took = started.elapsed();
    assert_eq!(st, 200, "{body}\n{}", w.logs());
    let took = w.until_denied(&[&at0, &at1], PROPAGATION_BUDGET).await;
    eprintln!("logout in ap took {logout_took:?}; denied through Envoy after {took:?}");
    assert_eq!(
        took.len(),
        3,
        "not denied everywhere within {PROPAGATION_BUDGET:?}: {took:?}\n{}",
        w.logs()
    );

    // the home marked its record from the feed; the newest (and the previous) refresh token
    // fail in every region
    refused_everywhere(&w, &rt1, PROPAGATION_BUDGET, "newest after logout").await;
    refused_everywhere(&w, &rt0, PROPAGATION_BUDGET, "previous after logout").await;
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["state"], "revoked", "{rec}");
    assert_eq!(rec["reason"], "logout", "{rec}");
}

// -------------------------------------------------------------------------------------------
// 2. reuse across regions
// -------------------------------------------------------------------------------------------

/// Two rotations in us, then the grandparent presented in ap: reuse detected at the home,
/// 400 invalid_grant; the session's access tokens are denied by every sidecar within the
/// budget and the newest refresh token fails everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_of_an_old_refresh_token_in_another_region_revokes_everywhere() {
    let w = World::start(Opts {
        sidecars: &REGIONS,
        ..Opts::default()
    })
    .await;
    let t0 = login(&w, "us", "bob").await;
    let (rt0, sid) = (s(&t0, "refresh_token"), s(&t0, "session_id"));
    let (st, t1) = w.auth["us"].refresh(&rt0).await;
    assert_eq!(st, 200, "{t1}");
    let (st, t2) = w.auth["us"].refresh(&s(&t1, "refresh_token")).await;
    assert_eq!(st, 200, "{t2}");
    let (rt1, rt2) = (s(&t1, "refresh_token"), s(&t2, "refresh_token"));
    let ats = [
        s(&t0, "access_token"),
        s(&t1, "access_token"),
        s(&t2, "access_token"),
    ];
    for r in REGIONS {
        for at in &ats {
            assert_eq!(w.check(r, at).await, 200, "{r}");
        }
    }
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["generation"], 2, "{rec}");

    // the grandparent, in ap
    let started = Instant::now();
    let (st, b) = w.auth["ap"].refresh(&rt0).await;
    let reuse_took = started.elapsed();
    assert_eq!(st, 400, "{b}\n{}", w.logs());
    assert_eq!(b["error"], "invalid_grant", "{b}");
    assert!(
        s(&b, "error_description").contains("reuse"),
        "the answer names the reuse: {b}"
    );
    let tokens: Vec<&str> = ats.iter().map(String::as_str).collect();
    let took = w.until_denied(&tokens, PROPAGATION_BUDGET).await;
    eprintln!("reuse detected via ap in {reuse_took:?}; session denied everywhere after {took:?}");
    assert_eq!(
        took.len(),
        3,
        "not denied everywhere within {PROPAGATION_BUDGET:?}: {took:?}\n{}",
        w.logs()
    );
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["state"], "revoked", "{rec}");
    assert_eq!(rec["reason"], "refresh_reuse", "{rec}");
    refused_everywhere(&w, &rt2, PROPAGATION_BUDGET, "newest after reuse").await;
    refused_everywhere(&w, &rt1, PROPAGATION_BUDGET, "parent after reuse").await;
    let m = w.auth["us"].metrics().await;
    assert_eq!(
        metric_sum(&m, "veto_authority_refreshes_total", &["result=\"reuse\""]),
        1.0,
        "{m}"
    );
}

// -------------------------------------------------------------------------------------------
// 3. concurrent refreshes from two regions
// -------------------------------------------------------------------------------------------

/// 50 refreshes of one us-homed token at once, 25 through us and 25 through eu: exactly one
/// rotation (the record's generation is 1), every answer 200 with the same successor, no 5xx,
/// no theft detected (the session keeps refreshing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_refreshes_from_two_regions_rotate_once() {
    let w = World::start(Opts::default()).await;
    let t0 = login(&w, "us", "carol").await;
    let (rt0, sid) = (s(&t0, "refresh_token"), s(&t0, "session_id"));
    // warm the forwarding path up with another session (first request-reply across gateways)
    let warm = login(&w, "us", "warm").await;
    assert_eq!(
        w.auth["eu"].refresh(&s(&warm, "refresh_token")).await.0,
        200
    );

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let region = if i % 2 == 0 { "us" } else { "eu" };
        let url = w.auth[region].url("/v1/token");
        let (rt, barrier, http) = (rt0.clone(), barrier.clone(), w.http.clone());
        let body = serde_urlencoded::to_string([
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ])
        .expect("form");
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post");
            let st = r.status().as_u16();
            let b: Value = r.json().await.unwrap_or(Value::Null);
            (region, st, b, started.elapsed())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let mut slowest: BTreeMap<&str, Duration> = BTreeMap::new();
    for (r, _, _, took) in &answers {
        let e = slowest.entry(r).or_default();
        *e = (*e).max(*took);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
    eprintln!("50 parallel refreshes: statuses {statuses:?}; slowest per region {slowest:?}");
    for (r, st, b, _) in &answers {
        assert_eq!(*st, 200, "via {r}: {b}\n{}", w.logs());
    }
    let successors: std::collections::BTreeSet<String> =
        answers.iter().map(|a| s(&a.2, "refresh_token")).collect();
    assert_eq!(successors.len(), 1, "different successors: {successors:?}");
    let rt1 = successors.into_iter().next().unwrap_or_default();
    assert_ne!(rt1, rt0);
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["generation"], 1, "exactly one rotation: {rec}");
    assert_eq!(rec["state"], "active", "{rec}");
    let m = w.auth["us"].metrics().await;
    // the warm-up session rotated once too
    assert_eq!(
        metric_sum(
            &m,
            "veto_authority_refreshes_total",
            &["result=\"rotated\""]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "veto_authority_refreshes_total", &["result=\"reuse\""]),
        0.0
    );
    eprintln!(
        "home counted: coalesced {}, grace_replay {}",
        metric_sum(
            &m,
            "veto_authority_refreshes_total",
            &["result=\"coalesced\""]
        ),
        metric_sum(
            &m,
            "veto_authority_refreshes_total",
            &["result=\"grace_replay\""]
        )
    );
    // no theft: the successor refreshes, from either region
    let (st, t2) = w.auth["eu"].refresh(&rt1).await;
    assert_eq!(st, 200, "{t2}");
    let (st, t3) = w.auth["us"].refresh(&s(&t2, "refresh_token")).await;
    assert_eq!(st, 200, "{t3}");
    let (rec, _) = record(&w.topo, "us", &sid).await;
    assert_eq!(rec["generation"], 3, "{rec}");
}

// -------------------------------------------------------------------------------------------
// 4. home unreachable
// -------------------------------------------------------------------------------------------

/// The pid of the topology server `server` (its cmdline names its own conf file).
fn server_pid(topo: &LocalTopology, server: &str) -> u32 {
    let conf = topo
        .dir()
        .join("conf")
        .join(format!("{server}.conf"))
        .display()
        .to_string();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == conf.as_bytes()) {
            return pid;
        }
    }
    panic!("no process for {server}");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Refreshes the home answered with the successor already issued (coalesced + grace).
async fn replays(a: &Authority) -> f64 {
    let m = a.metrics().await;
    ["coalesced", "grace_replay"]
        .iter()
        .map(|r| {
            metric_sum(
                &m,
                "veto_authority_refreshes_total",
                &[&format!("result=\"{r}\"")],
            )
        })
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    HubKilled,
    JetStreamKilled,
    AuthorityKilled,
    HubStopped,
}

/// For each fault in turn, on one topology: the eu authority answers a refresh of a us-homed
/// session with a 503 (+ Retry-After, no-store) within `home_timeout` + margin at once and
/// within 300 ms once the us heartbeat is stale; the record's revision does not move; the
/// eu and ap sidecars keep validating the session's access token; after the heal the same
/// refresh token works (one rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_home_is_a_fast_503_and_nothing_half_written() {
    const HOME_TIMEOUT: Duration = Duration::from_millis(1500);
    let mut w = World::start(Opts {
        authority: "home_timeout = \"1500ms\"\nhome_stale_after = \"3s\"\n",
        sidecars: &REGIONS,
        us_on_hub: true,
        ..Opts::default()
    })
    .await;
    let t0 = login(&w, "us", "dave").await;
    let sid = s(&t0, "session_id");
    // one rotation through eu first: the forwarding path works before any fault
    let (st, t) = w.auth["eu"].refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 200, "{t}\n{}", w.logs());
    let (mut rt, mut at, mut generation) = (s(&t, "refresh_token"), s(&t, "access_token"), 1u64);

    for fault in [
        Fault::HubKilled,
        Fault::JetStreamKilled,
        Fault::AuthorityKilled,
        Fault::HubStopped,
    ] {
        let what = format!("{fault:?}");
        let (rec, rev_before) = record(&w.topo, "us", &sid).await;
        assert_eq!(rec["generation"], generation, "{what}: {rec}");
        let replays_before = replays(&w.auth["us"]).await;
        let mut hub_pid = 0;
        match fault {
            Fault::HubKilled => w.topo.kill("us-hub"),
            Fault::JetStreamKilled => w.topo.kill("us-js"),
            Fault::AuthorityKilled => w.auth.get_mut("us").expect("us").kill(),
            Fault::HubStopped => {
                hub_pid = server_pid(&w.topo, "us-hub");
                signal(hub_pid, "-STOP");
            }
        }
        let fault_at = Instant::now();

        // at once: a 503 within the home budget
        let first = refresh_raw(&w.http, &w.auth["eu"], &rt).await;
        eprintln!(
            "{what}: first refresh via eu: {} in {:?} ({})",
            first.status,
            first.took,
            s(&first.body, "error_description")
        );
        assert_unavailable(&first, &what);
        assert!(
            first.took <= HOME_TIMEOUT + Duration::from_millis(1000),
            "{what}: took {:?}",
            first.took
        );
        if fault == Fault::JetStreamKilled {
            // the home itself answered: its store is unavailable
            assert!(
                s(&first.body, "error_description").contains("session store"),
                "{what}: the home should answer itself: {}",
                first.body
            );
        }
        // access tokens keep validating in eu and ap
        for r in ["eu", "ap"] {
            assert_eq!(w.check(r, &at).await, 200, "{what}: {r}");
        }

        // once the us heartbeat is stale in eu's authority: answered without waiting
        let eu = &w.auth["eu"];
        let stale = eventually(Duration::from_secs(15), || async {
            metric(
                &eu.metrics().await,
                "veto_feed_staleness_seconds{origin_region=\"us\"}",
            )
            .unwrap_or(0.0)
                > 3.3
        })
        .await;
        assert!(
            stale.is_some(),
            "{what}: us never stale in eu\n{}",
            w.logs()
        );
        let fast = refresh_raw(&w.http, eu, &rt).await;
        eprintln!(
            "{what}: us stale in eu {:?} after the fault; refresh via eu then: {} in {:?}",
            fault_at.elapsed(),
            fast.status,
            fast.took
        );
        assert_unavailable(&fast, &what);
        assert!(
            fast.took < Duration::from_millis(300),
            "{what}: a stale home must be answered at once, took {:?}",
            fast.took
        );
        let ap_answer = refresh_raw(&w.http, &w.auth["ap"], &rt).await;
        assert_unavailable(&ap_answer, &format!("{what} (via ap)"));
        for r in ["eu", "ap"] {
            assert_eq!(w.check(r, &at).await, 200, "{what}: {r}");
        }

        // nothing written while the home was unreachable (readable unless us-js is down)
        if fault != Fault::JetStreamKilled {
            let (_, rev) = record(&w.topo, "us", &sid).await;
            assert_eq!(rev, rev_before, "{what}: the record moved during the fault");
        }

        // heal
        match fault {
            Fault::HubKilled => w.topo.start_server("us-hub"),
            Fault::JetStreamKilled => w.topo.start_server("us-js"),
            Fault::AuthorityKilled => {
                let a = w.auth.get_mut("us").expect("us");
                a.restart();
                a.wait_ready(Duration::from_secs(30)).await;
            }
            Fault::HubStopped => {
                let stopped = fault_at.elapsed();
                if stopped < Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_secs(5) - stopped).await;
                }
                signal(hub_pid, "-CONT");
            }
        }
        let healed_at = Instant::now();
        if fault == Fault::JetStreamKilled {
            let (_, rev) = record(&w.topo, "us", &sid).await;
            assert_eq!(rev, rev_before, "{what}: the record moved during the fault");
        }

        // the same refresh token works again
        let last = std::cell::RefCell::new(None);
        let (http, eu) = (&w.http, &w.auth["eu"]);
        let back = eventually(Duration::from_secs(30), || async {
            let a = refresh_raw(http, eu, &rt).await;
            assert!(
                a.status == 200 || a.status == 503,
                "{fault:?}: after the heal: {} {}",
                a.status,
                a.body
            );
            let ok = a.status == 200;
            *last.borrow_mut() = Some(a);
            if !ok {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok
        })
        .await;
        let last = last.into_inner().expect("an answer");
        assert!(
            back.is_some(),
            "{what}: not refreshing after the heal: {} {}\n{}",
            last.status,
            last.body,
            w.logs()
        );
        let (rec, _) = record(&w.topo, "us", &sid).await;
        let replays_after = replays(&w.auth["us"]).await;
        eprintln!(
            "{what}: refreshing again {:?} after the heal (replays of the previous token at the \
             home, i.e. a request delivered late rotated meanwhile: {})",
            healed_at.elapsed(),
            replays_after - replays_before
        );
        generation += 1;
        assert_eq!(rec["generation"], generation, "{what}: one rotation: {rec}");
        assert_eq!(rec["state"], "active", "{what}: {rec}");
        let new_rt = s(&last.body, "refresh_token");
        assert_ne!(new_rt, rt);
        rt = new_rt;
        at = s(&last.body, "access_token");
        for r in REGIONS {
            assert_eq!(w.check(r, &at).await, 200, "{what}: {r} after the heal");
        }
    }
    let m = w.auth["eu"].metrics().await;
    eprintln!(
        "eu home_unavailable: stale {}, timeout {}, error {}",
        metric_sum(
            &m,
            "veto_authority_home_unavailable_total",
            &["why=\"stale\""]
        ),
        metric_sum(
            &m,
            "veto_authority_home_unavailable_total",
            &["why=\"timeout\""]
        ),
        metric_sum(
            &m,
            "veto_authority_home_unavailable_total",
            &["why=\"error\""]
        ),
    );
}

// -------------------------------------------------------------------------------------------
// 5. key rotation under load
// -------------------------------------------------------------------------------------------

/// k1 signs; k2 is added with an activation a few seconds ahead while tokens are minted
/// (logins and refreshes in every region) and called through Envoy in us and ap several
/// times per 100 ms — newest tokens and tokens minted before the switch — until k2 has been
/// current a while. Every call is 200; k2 tokens were minted and validated; the sidecars
/// knew k2 before it signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_envoy_traffic_has_no_false_401() {
    const LEAD: u64 = 8;
    let w = World::start(Opts {
        authority: "keys_reload = \"1s\"\njwks_max_age = \"2s\"\n",
        issuer: "jwks_refresh_interval = \"1s\"\njwks_min_refetch_interval = \"1s\"\n",
        sidecars: &REGIONS,
        envoys: &["us", "ap"],
        ..Opts::default()
    })
    .await;
    let first = login(&w, "us", "erin").await;
    let first_at = s(&first, "access_token");
    assert_eq!(kid(&first_at), "k1");

    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let activate = UNIX_EPOCH + Duration::from_secs(now_s + LEAD + 1);
    w.kit.add_key("k2", Alg::ES256, activate);
    let activate_ms = (now_s + LEAD + 1) as i64 * 1000;
    let until_ms = activate_ms + 5_000;

    let mut tokens: Vec<(String, i64)> = vec![(first_at.clone(), veto::now_ms())];
    let mut rts: BTreeMap<&str, String> = BTreeMap::new();
    let mut failures = Vec::new();
    let (mut calls, mut k1_after, mut k2_ok) = (0u32, 0u32, 0u32);
    let mut known_before = BTreeMap::new();
    let mut first_k2: Option<i64> = None;
    let mut i = 0usize;
    while veto::now_ms() < until_ms {
        i += 1;
        let region = REGIONS[i % 3];
        // a new token: a login, or a refresh of that region's own chain
        let minted_at = veto::now_ms();
        let t = match rts.get(region) {
            Some(rt) if i.is_multiple_of(2) => {
                let (st, t) = w.auth[region].refresh(rt).await;
                assert_eq!(st, 200, "refresh in {region}: {t}\n{}", w.logs());
                t
            }
            _ => login(&w, region, &format!("user-{i}")).await,
        };
        rts.insert(region, s(&t, "refresh_token"));
        let at = s(&t, "access_token");
        let k = kid(&at);
        if minted_at < activate_ms - 500 {
            assert_eq!(k, "k1", "k2 signed before its activation");
        }
        if minted_at > activate_ms + 1000 {
            assert_eq!(k, "k2", "k1 still signs 1 s after k2's activation");
        }
        if k == "k2" && first_k2.is_none() {
            first_k2 = Some(minted_at - activate_ms);
        }
        tokens.push((at.clone(), minted_at));
        // the newest, the very first (k1) and one in between, through both proxies
        let older = tokens[i % tokens.len()].0.clone();
        for e in ["us", "ap"] {
            for tok in [&at, &first_at, &older] {
                calls += 1;
                let st = w.through(e, tok).await;
                let tk = kid(tok);
                if st != 200 {
                    failures.push(format!(
                        "{e}: {st} for a {tk} token at {} ms from activation",
                        veto::now_ms() - activate_ms
                    ));
                } else if tk == "k2" {
                    k2_ok += 1;
                } else if veto::now_ms() > activate_ms {
                    k1_after += 1;
                }
            }
        }
        // when each sidecar first published k2 (before activation, it must)
        if veto::now_ms() < activate_ms {
            for (r, sc) in &w.sidecars {
                if known_before.contains_key(*r) {
                    continue;
                }
                let n = metric(
                    &sc.metrics().await,
                    &format!("veto_jwks_keys{{issuer=\"{ISSUER}\"}}"),
                )
                .unwrap_or(0.0);
                if n >= 2.0 {
                    known_before.insert(r.to_string(), activate_ms - veto::now_ms());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = (until_ms - activate_ms + (LEAD as i64 + 1) * 1000) as f64 / 1000.0;
    eprintln!(
        "key rotation: {calls} calls through Envoy in ~{secs:.0} s ({:.0}/100 ms), {} tokens minted, \
         first k2 token {first_k2:?} ms after activation, k2 validated {k2_ok}, k1 validated after \
         the switch {k1_after}; sidecars knew k2 this many ms before activation: {known_before:?}",
        calls as f64 / secs / 10.0,
        tokens.len()
    );
    assert!(failures.is_empty(), "false refusals: {failures:?}");
    assert!(first_k2.is_some(), "k2 never signed\n{}", w.logs());
    assert!(k2_ok > 0 && k1_after > 0, "k2 {k2_ok}, k1 after {k1_after}");
    assert!(
        calls as f64 / secs >= 30.0,
        "too few calls to mean anything: {calls} in {secs} s"
    );
    assert_eq!(
        known_before.len(),
        3,
        "every sidecar must know k2 before it signs: {known_before:?}"
    );
    for a in w.auth.values() {
        let jwks: Value = reqwest::get(a.jwks_url())
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        let kids: Vec<String> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| s(k, "kid"))
            .collect();
        assert!(
            kids.contains(&"k1".into()) && kids.contains(&"k2".into()),
            "{kids:?}"
        );
    }
}

/// A refresh forwarded to a frozen home (us hub SIGSTOPped) is answered 503 by eu, but the
/// request sits in the gateway's buffers and reaches the home when the hub resumes. It must
/// not rotate then: the client was told nothing happened, keeps its token and may retry
/// after the grace — which would be a reuse and kill the session. Grace 2 s here to show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_delivered_late_to_a_frozen_home_does_not_rotate_behind_its_503() {
    let w = World::start(Opts {
        authority: "refresh_grace = \"2s\"\nhome_timeout = \"1500ms\"\n",
        ..Opts::default()
    })
    .await;
    let t0 = login(&w, "us", "frank").await;
    let sid = s(&t0, "session_id");
    let (st, t1) = w.auth["eu"].refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 200, "{t1}");
    let rt1 = s(&t1, "refresh_token");
    let (_, rev_before) = record(&w.topo, "us", &sid).await;

    let hub = server_pid(&w.topo, "us-hub");
    signal(hub, "-STOP");
    let a = refresh_raw(&w.http, &w.auth["eu"], &rt1).await;
    assert_unavailable(&a, "frozen home");
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(hub, "-CONT");
    // us reachable again (its heartbeats reach eu), then give a late request time to land
    let eu = &w.auth["eu"];
    let back = eventually(Duration::from_secs(15), || async {
        let m = eu.metrics().await;
        metric(&m, "veto_feed_staleness_seconds{origin_region=\"us\"}").is_some_and(|s| s < 1.0)
    })
    .await;
    assert!(back.is_some(), "us not fresh again in eu\n{}", w.logs());
    let (rec, rev) = record(&w.topo, "us", &sid).await;
    eprintln!(
        "after the hub resumed: generation {} (before: 1), revision moved: {}",
        rec["generation"],
        rev != rev_before
    );
    assert_eq!(
        rev, rev_before,
        "the home rotated behind the 503 the client got: {rec}"
    );
    // the client retries after the grace with the token it holds
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (st, b) = w.auth["eu"].refresh(&rt1).await;
    assert_eq!(st, 200, "the retry after the grace: {b}\n{}", w.logs());
}
