//! Part 2: refresh throughput at the home with concurrent clients, each on its own session,
//! and the CPU time of the authority (and of nats-server, and of this load generator) over
//! the measured window.

use crate::support::metric_sum;
use crate::{
    authority_pid, cpu_seconds, env_usize, loadavg, login, ms, nats_pids, pct, refresh, verdict,
    write_out, Rig,
};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keycloak's sizing guide: 1 vCPU per 120 refreshes/s.
const KEYCLOAK_PER_VCPU: f64 = 120.0;
const TARGET_PER_VCPU: f64 = 2000.0;

/// System-wide CPU jiffies from /proc/stat: (busy, total).
fn system_cpu() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

struct Snap {
    at: Instant,
    ok: u64,
    authority: f64,
    nats: Vec<(String, f64)>,
    me: f64,
    system: (u64, u64),
    rotated: f64,
}

pub async fn part(rig: &mut Rig, out: &mut String) -> Result<(), String> {
    let clients = env_usize("BENCH_TP_TASKS", 64);
    let secs = env_usize("BENCH_TP_SECS", 15) as u64;
    let warm = Duration::from_secs(2);
    let http = rig.http.clone();
    let url = rig.home.url("/v1/token");
    let pid = authority_pid(&mut rig.home);
    let nats = nats_pids(&rig.topo);
    let me = std::process::id();

    let mut tokens = Vec::with_capacity(clients);
    for i in 0..clients {
        tokens.push(
            login(&http, &rig.home, &format!("tp-{i}"))
                .await?
                .refresh_token,
        );
    }
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(Mutex::new(String::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for rt in tokens {
        let (http, url, ok, failed, last_error, measuring, stop) = (
            http.clone(),
            url.clone(),
            ok.clone(),
            failed.clone(),
            last_error.clone(),
            measuring.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rt = rt;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match refresh(&http, &url, &rt).await {
                    Ok((next, _)) => {
                        rt = next;
                        ok.fetch_add(1, Ordering::Relaxed);
                        if measuring.load(Ordering::Relaxed) {
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock() = e;
                        // the same token again: a lost answer is replayed within the grace
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(warm).await;
    let snap = |metrics: String| Snap {
        at: Instant::now(),
        ok: ok.load(Ordering::Relaxed),
        authority: cpu_seconds(pid).unwrap_or(f64::NAN),
        nats: nats
            .iter()
            .map(|(n, p)| (n.clone(), cpu_seconds(*p).unwrap_or(f64::NAN)))
            .collect(),
        me: cpu_seconds(me).unwrap_or(f64::NAN),
        system: system_cpu(),
        rotated: metric_sum(
            &metrics,
            "veto_authority_refreshes_total",
            &["result=\"rotated\""],
        ),
    };
    let failed_before = failed.load(Ordering::Relaxed);
    let m0 = rig.home.metrics().await;
    let s0 = snap(m0);
    measuring.store(true, Ordering::Relaxed);
    let load = loadavg();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let m1 = rig.home.metrics().await;
    let s1 = snap(m1);
    let failed_window = failed.load(Ordering::Relaxed) - failed_before;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            lat.extend(v);
        }
    }

    let wall = s1.at.duration_since(s0.at).as_secs_f64();
    let answered = (s1.ok - s0.ok) as f64;
    let rotated = s1.rotated - s0.rotated;
    let auth_cpu = s1.authority - s0.authority;
    let nats_cpu: Vec<(String, f64)> = s1
        .nats
        .iter()
        .zip(&s0.nats)
        .map(|((n, b), (_, a))| (n.clone(), b - a))
        .collect();
    let nats_total: f64 = nats_cpu.iter().map(|x| x.1).sum();
    let me_cpu = s1.me - s0.me;
    let busy = (s1.system.0 - s0.system.0) as f64 / (s1.system.1 - s0.system.1).max(1) as f64;
    let per_cpu = rotated / auth_cpu;
    let p = pct(&lat);

    let _ = writeln!(
        out,
        "\n## 2. Refresh throughput at the home (local), {clients} concurrent clients\n\n\
         Each client task has its own session and refreshes in a loop (HTTP keep-alive, shared \
         reqwest pool) against the us authority; {:.1} s window after {:.0} s warm-up; load avg \
         before {load}. CPU = utime + stime from /proc/<pid>/stat over the window.\n",
        wall,
        warm.as_secs_f64()
    );
    let mut csv = String::from("metric,value\n");
    let mut row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "| {k} | {v} |");
        let _ = writeln!(csv, "\"{k}\",\"{v}\"");
    };
    let _ = writeln!(out, "| metric | value |\n|---|---|");
    row(
        out,
        "successful refreshes (HTTP 200)",
        format!("{answered:.0} = {:.0}/s", answered / wall),
    );
    row(
        out,
        "rotations (veto_authority_refreshes_total{result=rotated})",
        format!("{rotated:.0} = {:.0}/s", rotated / wall),
    );
    row(
        out,
        "failed requests",
        format!(
            "{failed_window}{}",
            if failed_window > 0 {
                format!(" (last: {})", last_error.lock())
            } else {
                String::new()
            }
        ),
    );
    row(
        out,
        "latency under load p50 / p90 / p99 / max",
        format!(
            "{} / {} / {} / {} ms (n = {})",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max),
            p.n
        ),
    );
    row(
        out,
        "authority CPU",
        format!("{auth_cpu:.2} s = {:.2} cores", auth_cpu / wall),
    );
    row(
        out,
        "**rotations per authority CPU-second**",
        format!(
            "**{per_cpu:.0}** (target ≥ {TARGET_PER_VCPU:.0}: {}; {:.1}x Keycloak's {KEYCLOAK_PER_VCPU:.0}/s per vCPU)",
            verdict(per_cpu >= TARGET_PER_VCPU),
            per_cpu / KEYCLOAK_PER_VCPU
        ),
    );
    for (n, c) in &nats_cpu {
        row(
            out,
            &format!("nats-server {n} CPU"),
            format!("{c:.2} s = {:.2} cores", c / wall),
        );
    }
    row(
        out,
        "rotations per CPU-second, authority + all nats-servers",
        format!("{:.0}", rotated / (auth_cpu + nats_total)),
    );
    row(
        out,
        "load generator (this process) CPU",
        format!("{me_cpu:.2} s = {:.2} cores", me_cpu / wall),
    );
    row(
        out,
        "machine busy (all CPUs, /proc/stat)",
        format!("{:.0}%", busy * 100.0),
    );
    write_out("throughput.csv", &csv);
    Ok(())
}
