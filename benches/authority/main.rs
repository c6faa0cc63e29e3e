//! Benchmark harness for the authority: `cargo bench --bench authority` (or
//! `scripts/bench-authority.sh`). Real processes on 127.0.0.1: the two-region topology of
//! DESIGN §4 (hub + JetStream leaf per region, rendered by `veto::bus::topology`, clients
//! without credentials are `operator`), one `veto authority` per region (the bench-profile
//! binary, i.e. release + thin LTO), HTTP clients and raw NATS clients in this process. Every
//! number is measured in this one run, next to its baseline.
//!
//! 1. **Latency** ([`latency`]): sequential refreshes through HTTP at the home (`local`) and
//!    at the other region (`forwarded` over `veto.authority.<home>.refresh`), interleaved in
//!    rounds with the baselines, same topology, same moment: raw KV read + compare-and-set on
//!    a bucket of the same layout in the home's JetStream (client on the home JS server), the
//!    same with the extra missing-key read the authority does for the subject not-before
//!    (`nb.<hash>`), raw request-reply from the other region to a trivial responder on the
//!    home JS server, the same responder doing the read + CAS before answering (the raw
//!    equivalent of a forwarded refresh), and `GET /.well-known/jwks.json` on each authority
//!    (the HTTP client + server floor). Also the authorities' own histograms over the same
//!    window (`veto_authority_refresh_seconds`, `veto_authority_home_request_seconds`).
//! 2. **Throughput** ([`throughput`]): 64 client tasks, each with its own session, refreshing
//!    at the home for 15 s; rotations/s and the authority's CPU time (utime + stime from
//!    `/proc/<pid>/stat`) → rotations per CPU-second; nats-server and load-generator CPU over
//!    the same window.
//! 3. **RSS** ([`rss`]): a fresh home authority: VmRSS right after ready, then after 100k
//!    `POST /v1/sessions` (64 concurrent).
//!
//! 4. **Push** ([`push`]): 10k forced-logout sockets on the home authority; single-socket
//!    push latency next to the same event's arrival on the bus, a subject revocation closing
//!    1k of them, memory per idle socket.
//!
//! Which parts: `--parts latency,throughput,rss,push` (or `BENCH_PARTS`). Sizes:
//! `BENCH_LAT_N` (2000 per kind), `BENCH_LAT_ROUNDS` (10), `BENCH_TP_TASKS` (64),
//! `BENCH_TP_SECS` (15), `BENCH_RSS_SESSIONS` (100000), `BENCH_RSS_CONC` (64). Results are
//! printed and written to `BENCH_OUT` (default `<repo>/target/bench-authority/`):
//! `results.md`, `latency.csv`, `latency_samples.csv`, `latency_cdf.svg`, `throughput.csv`,
//! `rss.csv`.
//!
//! Without `--bench` (`cargo test --all-targets` builds and runs bench targets too) it does
//! nothing: this is a load harness, not a CI step.

#[path = "../../tests/support/authority.rs"]
mod authority_support;
#[path = "../common/mod.rs"]
mod common;
#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/support/topology.rs"]
mod topology_support;

mod latency;
mod push;
mod rss;
mod svg;
mod throughput;

use authority_support::{Authority, Kit, ADMIN_TOKEN};
#[allow(unused_imports)]
pub use common::{env_usize, loadavg, system_cpu, wants, CpuSample, PARTS};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
// `authority_support` reaches these as `super::...`
#[allow(unused_imports)]
use support::{free_port, wait_port, Proc};
use topology_support::LocalTopology;

/// The session's home region and the other one.
pub const HOME: &str = "us";
pub const OTHER: &str = "eu";
pub const REGIONS: [&str; 2] = [HOME, OTHER];

// ---------------------------------------------------------------------------------------
// Small helpers shared by the parts.

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (utime + stime) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// A `Vm*:` line of `/proc/<pid>/status`, KiB.
pub fn vm_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Pids of the nats-server processes of `topo`, by server name (`us-js`, ...), found by
/// their config path in `/proc/*/cmdline`.
pub fn nats_pids(topo: &LocalTopology) -> Vec<(String, u32)> {
    let conf = topo.dir().join("conf");
    let conf = conf.to_string_lossy();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if let Some(at) = cmd.find(conf.as_ref()) {
            let file = cmd[at + conf.len()..].trim_start_matches('/');
            let name = file.split(".conf").next().unwrap_or("").to_string();
            out.push((name, pid));
        }
    }
    out.sort();
    out
}

pub fn authority_pid(a: &mut Authority) -> u32 {
    a.process()
        .0
        .as_ref()
        .map(|c| c.id())
        .expect("authority runs")
}

/// Nearest-rank percentiles of samples in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pct {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn pct(v: &[f64]) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Pct {
        n: v.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

/// µs → "x.xxx" ms.
pub fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A Prometheus histogram read from a text exposition: cumulative bucket counts by `le`,
/// sum and count. Subtract two readings for a window.
#[derive(Clone, Debug, Default)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    /// The histogram `name` whose labels contain every one of `labels`.
    pub fn parse(text: &str, name: &str, labels: &[&str]) -> Hist {
        let mut h = Hist::default();
        let fits = |l: &str| labels.iter().all(|w| l.contains(w));
        let value = |l: &str| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        for l in text.lines().filter(|l| fits(l)) {
            if let Some(rest) = l.strip_prefix(&format!("{name}_bucket{{")) {
                let le = rest
                    .split("le=\"")
                    .nth(1)
                    .and_then(|x| x.split('"').next())
                    .unwrap_or("");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                h.buckets.push((le, value(l)));
            } else if l.starts_with(&format!("{name}_sum")) {
                h.sum = value(l);
            } else if l.starts_with(&format!("{name}_count")) {
                h.count = value(l);
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    pub fn minus(&self, before: &Hist) -> Hist {
        Hist {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |x| x.1);
                    (*le, c - b)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// `histogram_quantile` (linear interpolation inside the bucket), seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let span = c - prev.1;
                let frac = if span > 0.0 {
                    (rank - prev.1) / span
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        None
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

// ---------------------------------------------------------------------------------------
// The rig: topology, authorities, HTTP client.

pub struct Rig {
    pub topo: LocalTopology,
    pub kit: Kit,
    pub home: Authority,
    pub other: Authority,
    pub http: reqwest::Client,
}

#[derive(Deserialize)]
pub struct Tokens {
    pub refresh_token: String,
    pub session_id: String,
}

/// The config of a bench authority in `region` (log level info, not the tests' debug).
pub fn authority_config(kit: &Kit, topo: &LocalTopology, region: &str) -> String {
    Authority::config(kit, &topo.js_url(region), region, &REGIONS, "")
        .replace("level = \"info,veto=debug\"", "level = \"info\"")
}

impl Rig {
    async fn start() -> Rig {
        let topo = LocalTopology::start(&REGIONS);
        topo.wait_linked(Duration::from_secs(20)).await;
        topo.provision_all().await;
        let kit = Kit::new();
        let home = Authority::start(&authority_config(&kit, &topo, HOME));
        let other = Authority::start(&authority_config(&kit, &topo, OTHER));
        home.wait_ready(Duration::from_secs(30)).await;
        other.wait_ready(Duration::from_secs(30)).await;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("http client");
        Rig {
            topo,
            kit,
            home,
            other,
            http,
        }
    }
}

/// `POST /v1/sessions` for `sub` at `a`.
pub async fn login(http: &reqwest::Client, a: &Authority, sub: &str) -> Result<Tokens, String> {
    let r = http
        .post(a.url("/v1/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(format!("{{\"sub\":\"{sub}\"}}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if status != 201 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// `POST /v1/token` (refresh grant) at `url`: the response's refresh token and body length.
pub async fn refresh(
    http: &reqwest::Client,
    url: &str,
    rt: &str,
) -> Result<(String, usize), String> {
    let body = format!("grant_type=refresh_token&refresh_token={rt}");
    let r = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    let t: Tokens = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((t.refresh_token, body.len()))
}

pub fn out_dir() -> PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-authority"))
}

pub fn write_out(name: &str, text: &str) {
    let dir = out_dir();
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(dir.join(name), text))
    {
        eprintln!("cannot write {}: {e}", dir.join(name).display());
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `--parts X` picks parts; anything else is ignored.
    let mut args = std::env::args().skip(1);
    let mut bench = false;
    while let Some(a) = args.next() {
        if a == "--bench" {
            bench = true;
        } else if a == "--parts" {
            let _ = PARTS.set(args.next());
        }
    }
    if !bench {
        println!("authority benchmark: skipped (run it with `cargo bench --bench authority`)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let begin = Instant::now();
    let mut report = String::new();
    let nats_version = Command::new(support::nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        report,
        "# veto authority benchmark\n\n- machine: {} CPUs (nproc), {}\n- {nats_version}, \
         async-nats 0.51, 127.0.0.1 only\n- load avg at start: {}\n- veto binary: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        loadavg(),
        env!("CARGO_BIN_EXE_veto"),
    );
    let setup = Instant::now();
    let mut rig = Rig::start().await;
    let _ = writeln!(
        report,
        "- topology: 2 regions ({HOME}, {OTHER}) x (hub + JetStream leaf), streams provisioned, \
         one `veto authority` per region ready: {:.1} s\n- sessions are homed in `{HOME}`; \
         `local` = refresh at the {HOME} authority, `forwarded` = at the {OTHER} authority",
        setup.elapsed().as_secs_f64()
    );
    print!("{report}");

    macro_rules! part {
        ($name:literal, $title:literal, $call:expr) => {
            if wants($name) {
                let t = Instant::now();
                let before = report.len();
                if let Err(e) = $call.await {
                    let _ = writeln!(report, "\n## {}: FAILED: {e}", $title);
                }
                let _ = writeln!(report, "\n(part took {:.1} s)", t.elapsed().as_secs_f64());
                print!("{}", &report[before..]);
            }
        };
    }
    part!(
        "latency",
        "1. refresh latency",
        latency::part(&mut rig, &mut report)
    );
    part!(
        "throughput",
        "2. refresh throughput",
        throughput::part(&mut rig, &mut report)
    );
    part!(
        "rss",
        "3. RSS at live sessions",
        rss::part(&mut rig, &mut report)
    );
    part!(
        "push",
        "4. forced-logout push",
        push::part(&mut rig, &mut report)
    );
    let warnings: Vec<String> = [&rig.home, &rig.other]
        .iter()
        .flat_map(|a| {
            a.log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let _ = writeln!(
        report,
        "\nauthority warnings/errors logged: {}{}",
        warnings.len(),
        if warnings.is_empty() {
            ""
        } else {
            " (first ones below)"
        }
    );
    for l in warnings.iter().take(8) {
        let _ = writeln!(report, "    {}", l.chars().take(300).collect::<String>());
    }
    let _ = writeln!(
        report,
        "\ntotal {:.1} s; load avg at end {}",
        begin.elapsed().as_secs_f64(),
        loadavg()
    );
    write_out("results.md", &report);
    println!(
        "\n================ RESULTS ({}) ================\n{report}",
        out_dir().display()
    );
}
