//! The shipped alert rules in a real Prometheus. Three regions for real (`LocalTopology`: hub +
//! JetStream leaf per region), per region a `veto heartbeat`, a `veto authority` and a `veto
//! sidecar`, and a real `prometheus` (Debian; `PROMETHEUS_BIN`, else /usr/bin/prometheus)
//! scraping all six every second with `deploy/prometheus/alerts.yaml` itself as its rule file,
//! unmodified, evaluated every second. Targets carry the `namespace`/`pod`/`region` labels the
//! PodMonitor's relabelling gives.
//!
//! What it proves, with the measured times printed:
//! - eu cut off (its hub killed): `VetoFeedStale` reaches `firing` in `/api/v1/alerts` within
//!   its threshold (30 s) + `for:` (1 m) + a few scrape/eval intervals, for exactly the pairs
//!   across the cut (every us/ap pod about origin eu, every eu pod about us and ap), never for a
//!   healthy pair; after the heal it resolves (leaves `/api/v1/alerts`) within a bound;
//! - the refreshes of an eu-homed session through us during the cut (503) make
//!   `VetoAuthorityRefreshErrors` pending for the us authority, and nothing else is active;
//! - every metric name the Grafana dashboard and the alert rules use is among the series
//!   Prometheus scraped (`/api/v1/label/__name__/values`) once checks, a revocation, refreshes
//!   (one answered 503 during the cut) and a stale-feed decision have been made.
//!
//! Runtime: about 2 minutes (the rules' own 30 s + 1 m dominate).

#[path = "support/authority.rs"]
mod authority_support;
mod support;
#[path = "support/topology.rs"]
mod topology_support;

use authority_support::{Authority, Kit};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use topology_support::LocalTopology;
use veto::bus::topology::NatsUser;
use veto::token::Alg;

const REGIONS: [&str; 3] = ["us", "eu", "ap"];
/// The region cut off.
const CUT: &str = "eu";
/// Prometheus's scrape and rule evaluation interval here.
const INTERVAL: Duration = Duration::from_secs(1);
/// `VetoFeedStale`: `veto_feed_staleness_seconds > 30` for 1m (deploy/prometheus/alerts.yaml).
const STALE_THRESHOLD: Duration = Duration::from_secs(30);
const STALE_FOR: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `PROMETHEUS_BIN`, else /usr/bin/prometheus; a clear failure when neither is there.
fn prometheus_bin() -> PathBuf {
    let p = std::env::var("PROMETHEUS_BIN")
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        p.is_file(),
        "no Prometheus at {} (set PROMETHEUS_BIN, or install the Debian package: apt-get install -y prometheus)",
        p.display()
    );
    p
}

/// One scrape target: `host:port` and the labels a PodMonitor would give it.
struct Target {
    job: &'static str,
    addr: String,
    namespace: &'static str,
    pod: String,
    region: &'static str,
}

/// A real Prometheus on a free loopback port, storage in a tempdir; killed on drop.
struct Prometheus {
    port: u16,
    _child: Proc,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, targets: &[Target]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut jobs: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
        for t in targets {
            jobs.entry(t.job).or_default().push(t);
        }
        let mut scrape = String::new();
        for (job, ts) in jobs {
            scrape.push_str(&format!("- job_name: {job}\n  static_configs:\n"));
            for t in ts {
                scrape.push_str(&format!(
                    "  - targets: ['{}']\n    labels: {{namespace: {}, pod: {}, region: {}}}\n",
                    t.addr, t.namespace, t.pod, t.region
                ));
            }
        }
        let rules = repo().join("deploy/prometheus/alerts.yaml");
        let config = format!(
            "global:\n  scrape_interval: {i}s\n  scrape_timeout: {i}s\n  evaluation_interval: {i}s\n\
             rule_files:\n- {rules}\nscrape_configs:\n{scrape}",
            i = INTERVAL.as_secs(),
            rules = rules.display(),
        );
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            _child: Proc(Some(child)),
            dir,
        };
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "prometheus did not listen:\n{}",
            p.log()
        );
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let v: Value = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        assert_eq!(v["status"], "success", "GET {url}: {v}");
        v["data"].clone()
    }

    /// The active (pending or firing) alerts named `name`.
    async fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts").await["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }

    async fn series_names(&self) -> BTreeSet<String> {
        self.api("/api/v1/label/__name__/values")
            .await
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("name").to_string())
            .collect()
    }
}

fn sidecar_cfg(issuer: &Issuer, topo: &LocalTopology, region: &str) -> String {
    sidecar_config(issuer, None, "")
        + &nats_section(&topo.js_url(region), region, &REGIONS, "")
        + "[revocation]\nretention = \"1h\"\nmax_staleness = \"5s\"\non_stale = \"deny\"\n"
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_string()
}

/// `(pod, origin_region)` of an alert.
fn pair(a: &Value) -> (String, String) {
    let l = &a["labels"];
    (
        l["pod"].as_str().unwrap_or("?").to_string(),
        l["origin_region"].as_str().unwrap_or("?").to_string(),
    )
}

/// Every metric name used in a PromQL text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("veto_") {
        let start = i + at;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The `expr:` of every rule in a rule file (one-line or `|` block), without the comments
/// and annotations around them.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(l) = lines.next() {
        let Some((indent, rest)) = l.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() {
            continue;
        }
        let rest = rest.trim();
        if rest != "|" {
            out.push(rest.to_string());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent.len();
            if !deeper {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        out.push(block);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rules_fire_on_a_cut_region_and_resolve_on_heal() {
    let started = Instant::now();
    let prometheus_bin = prometheus_bin();

    // -- the world: 3 regions, heartbeats, an authority and a sidecar per region -----------
    let mut topo = LocalTopology::start(&REGIONS);
    topo.wait_linked(Duration::from_secs(20)).await;
    topo.provision_all().await;
    let _beats: Vec<Proc> = REGIONS.iter().map(|r| topo.heartbeat(r)).collect();
    // a key set the authority alerts call healthy: the current key activated an hour ago
    // (without an activation file it would count from the epoch: VetoAuthorityCurrentKeyOld)
    // and the next one published ahead of its activation (else VetoAuthorityNoNextKey)
    let kit = Kit::new();
    let now = std::time::SystemTime::now();
    let an_hour = Duration::from_secs(3600);
    std::fs::write(
        kit.keys_dir().join("k1.json"),
        format!(
            "{{\"activate_at\":\"{}\"}}",
            humantime::format_rfc3339_seconds(now - an_hour)
        ),
    )
    .expect("k1 activation");
    kit.add_key("k2", Alg::ES256, now + 2 * an_hour);
    let mut auth: BTreeMap<&str, Authority> = BTreeMap::new();
    for r in REGIONS {
        // As `authority`: the only user that may publish the heartbeats it hosts.
        let cfg = Authority::config(&kit, &topo.js_url(r), r, &REGIONS, "").replacen(
            "[nats]\n",
            &format!("[nats]\n{}", topo.nats_login(NatsUser::Authority)),
            1,
        );
        auth.insert(r, Authority::start(&cfg));
    }
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecars: BTreeMap<&str, Sidecar> = BTreeMap::new();
    for r in REGIONS {
        sidecars.insert(r, Sidecar::start(&sidecar_cfg(&issuer, &topo, r)));
    }
    for a in auth.values() {
        a.wait_ready(Duration::from_secs(30)).await;
    }
    for sc in sidecars.values() {
        sc.wait_ready(Duration::from_secs(20)).await;
    }

    // -- Prometheus scraping all six with the shipped rules ---------------------------------
    let mut targets = Vec::new();
    for r in REGIONS {
        targets.push(Target {
            job: "veto",
            addr: format!("127.0.0.1:{}", sidecars[r].http),
            namespace: "shop",
            pod: format!("app-{r}"),
            region: r,
        });
        targets.push(Target {
            job: "veto-authority",
            addr: format!("127.0.0.1:{}", auth[r].http),
            namespace: "auth",
            pod: format!("authority-{r}"),
            region: r,
        });
    }
    let prom = Prometheus::start(&prometheus_bin, &targets);
    let up = eventually(Duration::from_secs(30), || async {
        let t = prom.api("/api/v1/targets").await;
        let active = t["activeTargets"].as_array().cloned().unwrap_or_default();
        active.len() == targets.len() && active.iter().all(|t| t["health"] == "up")
    })
    .await;
    assert!(
        up.is_some(),
        "targets not up: {}\n{}",
        prom.api("/api/v1/targets").await,
        prom.log()
    );
    println!(
        "world and Prometheus up in {:?}; targets up after {:?}",
        started.elapsed(),
        up.unwrap()
    );
    // healthy: no alert of the rule file is active
    let active = prom.api("/api/v1/alerts").await;
    assert_eq!(active["alerts"], json!([]), "alerts while healthy");

    // -- traffic: checks (allow, deny), a revocation, refreshes ----------------------------
    let token = issuer.mint("alice", "s-ok");
    let doomed = issuer.mint("bob", "s-doomed");
    let unhomed = issuer.mint("carol", "s-unhomed");
    for sc in sidecars.values() {
        assert_eq!(
            sc.check(Some(&format!("Bearer {token}"))).await.status(),
            200
        );
        assert_eq!(
            sc.check(Some(&format!("Bearer {doomed}"))).await.status(),
            200
        );
        assert_eq!(sc.check(None).await.status(), 401);
    }
    let url = topo.js_url("us");
    let (code, out, err) = veto(&[
        "revoke",
        "--session",
        "s-doomed",
        "--nats",
        &url,
        "--region",
        "us",
        "--to",
        "us",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, 0, "revoke: {out}{err}");
    for (r, sc) in &sidecars {
        let denied = eventually(Duration::from_secs(5), || async {
            sc.check(Some(&format!("Bearer {doomed}"))).await.status() == 401
        })
        .await;
        assert!(denied.is_some(), "{r} never denied the revoked session");
    }
    // a session homed in eu, refreshed through us (forwarded home) and in eu
    let (st, t0) = auth[CUT].login(json!({ "sub": "dave" })).await;
    assert_eq!(st, 201, "login in {CUT}: {t0}");
    let (st, t1) = auth["us"].refresh(&s(&t0, "refresh_token")).await;
    assert_eq!(st, 200, "refresh via us: {t1}");
    let (st, t2) = auth[CUT].refresh(&s(&t1, "refresh_token")).await;
    assert_eq!(st, 200, "refresh in {CUT}: {t2}");
    let rt = s(&t2, "refresh_token");

    // -- cut eu off --------------------------------------------------------------------------
    topo.kill(&format!("{CUT}-hub"));
    let cut = Instant::now();
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for r in REGIONS {
        for pod in [format!("app-{r}"), format!("authority-{r}")] {
            if r == CUT {
                for o in REGIONS.iter().filter(|o| **o != CUT) {
                    expected.insert((pod.clone(), o.to_string()));
                }
            } else {
                expected.insert((pod.clone(), CUT.to_string()));
            }
        }
    }
    let bound = STALE_THRESHOLD + STALE_FOR + 6 * (INTERVAL + INTERVAL);
    let mut pending_at: BTreeMap<(String, String), Duration> = BTreeMap::new();
    let mut firing_at: BTreeMap<(String, String), Duration> = BTreeMap::new();
    let mut side_traffic_done = false;
    while firing_at.len() < expected.len() && cut.elapsed() < bound {
        for a in prom.alerts("VetoFeedStale").await {
            let p = pair(&a);
            assert!(
                expected.contains(&p),
                "VetoFeedStale for a healthy pair {p:?} after {:?}: {a}",
                cut.elapsed()
            );
            pending_at.entry(p.clone()).or_insert(cut.elapsed());
            if a["state"] == "firing" {
                if !firing_at.contains_key(&p) {
                    assert_eq!(
                        a["annotations"]["runbook_url"],
                        "https://github.com/veto-auth/veto/blob/main/docs/operations.md#vetofeedstale",
                        "{a}"
                    );
                }
                firing_at.entry(p).or_insert(cut.elapsed());
            }
        }
        // past the sidecars' max_staleness (5 s): a stale-feed decision, and a refresh of the
        // eu-homed session through us (503: its home is unreachable), twice, scrapes apart
        if !side_traffic_done && cut.elapsed() > Duration::from_secs(8) {
            side_traffic_done = true;
            let us = &sidecars["us"];
            assert_eq!(
                us.check(Some(&format!("Bearer {unhomed}"))).await.status(),
                503
            );
            for _ in 0..2 {
                let (st, body) = auth["us"].refresh(&rt).await;
                assert_eq!(
                    st, 503,
                    "refresh of an eu-homed session during the cut: {body}"
                );
                tokio::time::sleep(INTERVAL * 2).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("VetoFeedStale pending after the cut: {pending_at:?}");
    println!("VetoFeedStale firing after the cut:  {firing_at:?} (bound {bound:?})");
    let missing: Vec<_> = expected
        .iter()
        .filter(|p| !firing_at.contains_key(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "VetoFeedStale not firing within {bound:?} for {missing:?} (firing: {firing_at:?}, pending: {pending_at:?})\n{}",
        prom.log()
    );
    for (p, at) in &firing_at {
        assert!(
            *at + Duration::from_secs(1) >= STALE_THRESHOLD + STALE_FOR,
            "{p:?} firing after {at:?}, before threshold + for:"
        );
    }

    // -- heal --------------------------------------------------------------------------------
    topo.start_server(&format!("{CUT}-hub"));
    let resolve_bound = Duration::from_secs(30);
    let resolved = eventually(resolve_bound, || async {
        let left = prom.alerts("VetoFeedStale").await;
        for a in &left {
            assert!(expected.contains(&pair(a)), "healthy pair alerting: {a}");
        }
        left.is_empty()
    })
    .await;
    println!(
        "VetoFeedStale resolved {:?} after the heal (bound {resolve_bound:?})",
        resolved
    );
    assert!(
        resolved.is_some(),
        "VetoFeedStale still active {resolve_bound:?} after the heal: {:?}",
        prom.alerts("VetoFeedStale").await
    );
    // the two 503 refreshes at us (of 3 it was asked in 5m) make VetoAuthorityRefreshErrors
    // pending there, and only there (its `for: 5m` is not waited for); nothing else is active
    let active: Vec<(String, String, String)> = prom.api("/api/v1/alerts").await["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let f = |v: &Value| v.as_str().unwrap_or("?").to_string();
            (f(&l["alertname"]), f(&l["pod"]), f(&a["state"]))
        })
        .collect();
    println!("alerts active after the heal: {active:?}");
    assert_eq!(
        active,
        [(
            "VetoAuthorityRefreshErrors".to_string(),
            "authority-us".to_string(),
            "pending".to_string()
        )]
    );

    // -- the dashboard and the rules use only series that are scraped ----------------------
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/veto-dashboard.json"))
        .expect("dashboard");
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).expect("alerts");
    let dash: Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut used: BTreeMap<String, &str> = BTreeMap::new();
    let mut queries = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            queries.push(t["expr"].as_str().unwrap_or("").to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        queries.push(v["definition"].as_str().unwrap_or("").to_string());
    }
    for n in metric_names(&queries.join("\n")) {
        used.insert(n, "dashboard");
    }
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 12, "rule exprs: {exprs:?}");
    for n in metric_names(&exprs.join("\n")) {
        used.entry(n).or_insert("alerts.yaml");
    }
    assert!(used.len() > 10, "too few metric names found: {used:?}");
    let names = prom.series_names().await;
    let unknown: Vec<_> = used.iter().filter(|(n, _)| !names.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "used but never scraped: {unknown:?}\nscraped: {names:?}"
    );
    println!(
        "{} metric names used by the dashboard and the rules, all scraped: {:?}; total {:?}",
        used.len(),
        used.keys().collect::<Vec<_>>(),
        started.elapsed()
    );
}
