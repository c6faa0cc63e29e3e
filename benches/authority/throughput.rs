//! Part 2: refresh throughput at the home with concurrent clients, each on its own session,
//! and the CPU time of the authority (and of nats-server, and of this load generator) over
//! the measured window.

use crate::latency::{cas, raw_bucket};
use crate::support::metric_sum;
use crate::{
    authority_pid, cpu_seconds, env_usize, loadavg, login, ms, nats_pids, pct, refresh, system_cpu,
    verdict, write_out, Pct, Rig, HOME,
};
use async_nats::jetstream::kv;
use bytes::Bytes;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use veto::bus::names::SESSION_BUCKET;

/// Keycloak's sizing guide: 1 vCPU per 120 refreshes/s.
const KEYCLOAK_PER_VCPU: f64 = 120.0;
const TARGET_PER_VCPU: f64 = 2000.0;

struct Snap {
    at: Instant,
    ok: u64,
    authority: f64,
    nats: Vec<(String, f64)>,
    me: f64,
    system: (u64, u64),
    rotated: f64,
}

/// What a client task does in a loop.
#[derive(Clone)]
enum Load {
    /// `POST /v1/token` at the home, on its own session.
    Refresh { http: reqwest::Client, url: String },
    /// Raw KV entry + update(rev) on its own key (+ the missing `nb` read if `nb`).
    Raw {
        kv: Box<kv::Store>,
        value: Bytes,
        nb: bool,
    },
}

/// One measured window: what happened and who burnt how much CPU.
struct Window {
    wall: f64,
    ok: f64,
    failed: u64,
    last_error: String,
    rotated: f64,
    authority: f64,
    nats: Vec<(String, f64)>,
    me: f64,
    busy: f64,
    lat: Pct,
    load: String,
}

/// `starts[i]`: task i's first refresh token (Refresh) or key (Raw).
async fn window(
    rig: &mut Rig,
    load: Load,
    starts: Vec<String>,
    warm: Duration,
    secs: u64,
) -> Window {
    let pid = authority_pid(&mut rig.home);
    let nats = nats_pids(&rig.topo);
    let me = std::process::id();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(Mutex::new(String::new()));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for start in starts {
        let (load, ok, failed, last_error, measuring, stop) = (
            load.clone(),
            ok.clone(),
            failed.clone(),
            last_error.clone(),
            measuring.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut cur = start;
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = match &load {
                    Load::Refresh { http, url } => {
                        refresh(http, url, &cur).await.map(|(next, _)| {
                            cur = next;
                        })
                    }
                    Load::Raw { kv, value, nb } => cas(kv, &cur, value.clone(), *nb).await,
                };
                match r {
                    Ok(()) => {
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
    let s0 = snap(rig.home.metrics().await);
    measuring.store(true, Ordering::Relaxed);
    let load_avg = loadavg();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let s1 = snap(rig.home.metrics().await);
    let failed_window = failed.load(Ordering::Relaxed) - failed_before;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(v) = t.await {
            lat.extend(v);
        }
    }
    let last_error = last_error.lock().clone();
    Window {
        wall: s1.at.duration_since(s0.at).as_secs_f64(),
        ok: (s1.ok - s0.ok) as f64,
        failed: failed_window,
        last_error,
        rotated: s1.rotated - s0.rotated,
        authority: s1.authority - s0.authority,
        nats: s1
            .nats
            .iter()
            .zip(&s0.nats)
            .map(|((n, b), (_, a))| (n.clone(), b - a))
            .collect(),
        me: s1.me - s0.me,
        busy: (s1.system.0 - s0.system.0) as f64 / (s1.system.1 - s0.system.1).max(1) as f64,
        lat: pct(&lat),
        load: load_avg,
    }
}

impl Window {
    fn nats_of(&self, server: &str) -> f64 {
        self.nats
            .iter()
            .find(|(n, _)| n == server)
            .map_or(f64::NAN, |x| x.1)
    }
    fn nats_total(&self) -> f64 {
        self.nats.iter().map(|x| x.1).sum()
    }
}

pub async fn part(rig: &mut Rig, out: &mut String) -> Result<(), String> {
    let clients = env_usize("BENCH_TP_TASKS", 64);
    let secs = env_usize("BENCH_TP_SECS", 15) as u64;
    let raw_secs = env_usize("BENCH_TP_RAW_SECS", secs as usize) as u64;
    let warm = Duration::from_secs(2);
    let http = rig.http.clone();

    let mut tokens = Vec::with_capacity(clients);
    let mut first_sid = String::new();
    for i in 0..clients {
        let t = login(&http, &rig.home, &format!("tp-{i}")).await?;
        if i == 0 {
            first_sid = t.session_id.clone();
        }
        tokens.push(t.refresh_token);
    }
    let w = window(
        rig,
        Load::Refresh {
            http: http.clone(),
            url: rig.home.url("/v1/token"),
        },
        tokens,
        warm,
        secs,
    )
    .await;

    // the baselines: the same number of raw clients, one NATS connection on us-js (like the
    // authority's), each on its own key holding a real rotated record
    let js = veto::bus::jetstream(rig.topo.client(HOME).await, None);
    let value = js
        .get_key_value(SESSION_BUCKET)
        .await
        .map_err(|e| e.to_string())?
        .get(format!("s.{first_sid}"))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("session record not found")?;
    let kv = raw_bucket(&js).await?;
    let keys: Vec<String> = (0..clients).map(|i| format!("s.tp-raw-{i}")).collect();
    for k in &keys {
        kv.put(k, value.clone()).await.map_err(|e| e.to_string())?;
    }
    let mut raws = Vec::new();
    for nb in [false, true] {
        let load = Load::Raw {
            kv: Box::new(kv.clone()),
            value: value.clone(),
            nb,
        };
        raws.push(window(rig, load, keys.clone(), warm, raw_secs).await);
    }
    let (raw, raw_nb) = (&raws[0], &raws[1]);

    let per_cpu = w.rotated / w.authority;
    let _ = writeln!(
        out,
        "\n## 2. Refresh throughput at the home (local), {clients} concurrent clients\n\n\
         Each client task has its own session and refreshes in a loop (HTTP keep-alive, shared \
         reqwest pool) against the us authority; {:.1} s window after {:.0} s warm-up; load avg \
         before {}. CPU = utime + stime from /proc/<pid>/stat over the window. Baselines, same \
         run, right after: {clients} raw client tasks on one NATS connection to us-js, each on \
         its own key of a bucket in the session bucket's layout, doing KV entry + update(rev) \
         (and the same with the extra missing-key read the authority does), {:.1} s windows.\n",
        w.wall,
        warm.as_secs_f64(),
        w.load,
        raw.wall,
    );
    let mut csv = String::from("metric,authority_refresh,raw_kv_read_cas,raw_kv_read_read_cas\n");
    let _ = writeln!(
        out,
        "| metric | authority refresh | raw KV read + CAS | raw KV read + read + CAS |\n|---|---|---|---|"
    );
    let mut row = |out: &mut String, k: &str, f: &dyn Fn(&Window) -> String| {
        let (a, b, c) = (f(&w), f(raw), f(raw_nb));
        let _ = writeln!(out, "| {k} | {a} | {b} | {c} |");
        let _ = writeln!(csv, "\"{k}\",\"{a}\",\"{b}\",\"{c}\"");
    };
    row(out, "successful ops", &|x| {
        format!("{:.0} = **{:.0}/s**", x.ok, x.ok / x.wall)
    });
    row(
        out,
        "rotations (veto_authority_refreshes_total{result=rotated})",
        &|x| {
            if x.rotated > 0.0 {
                format!("{:.0} = {:.0}/s", x.rotated, x.rotated / x.wall)
            } else {
                "-".into()
            }
        },
    );
    row(out, "failed ops", &|x| {
        if x.failed > 0 {
            format!("{} (last: {})", x.failed, x.last_error)
        } else {
            "0".into()
        }
    });
    row(out, "latency under load p50 / p99 ms", &|x| {
        format!("{} / {} (n = {})", ms(x.lat.p50), ms(x.lat.p99), x.lat.n)
    });
    row(out, "authority CPU", &|x| {
        format!("{:.2} s = {:.2} cores", x.authority, x.authority / x.wall)
    });
    row(out, "**ops per authority CPU-second**", &|x| {
        if x.rotated > 0.0 {
            format!("**{:.0}**", x.rotated / x.authority)
        } else {
            "-".into()
        }
    });
    let servers: Vec<String> = w.nats.iter().map(|x| x.0.clone()).collect();
    for s in &servers {
        row(out, &format!("nats-server {s} CPU"), &|x| {
            format!("{:.2} s = {:.2} cores", x.nats_of(s), x.nats_of(s) / x.wall)
        });
    }
    row(out, "us-js CPU µs per op", &|x| {
        format!("{:.0}", 1e6 * x.nats_of(&format!("{HOME}-js")) / x.ok)
    });
    row(
        out,
        "ops per CPU-second, authority (refresh only) + all nats-servers",
        &|x| {
            // in the raw windows the authority idles: its CPU is not part of the path
            let a = if x.rotated > 0.0 { x.authority } else { 0.0 };
            format!("{:.0}", x.ok / (a + x.nats_total()))
        },
    );
    row(out, "load generator (this process) CPU", &|x| {
        format!("{:.2} s = {:.2} cores", x.me, x.me / x.wall)
    });
    row(out, "machine busy (all CPUs, /proc/stat)", &|x| {
        format!("{:.0}%", x.busy * 100.0)
    });
    let _ = writeln!(
        out,
        "\n- **rotations per authority CPU-second: {per_cpu:.0}** — target ≥ {TARGET_PER_VCPU:.0}: \
         {}; {:.1}x Keycloak's budget of {KEYCLOAK_PER_VCPU:.0} refreshes/s per vCPU\n\
         - authority refreshes/s vs raw read+CAS ops/s (same clients, same connection count): \
         {:.2}x; vs raw read+read+CAS: {:.2}x (the machine is saturated in every window: these \
         are shares of 2 shared cores, not capacities)\n\
         - us-js CPU per refresh vs per raw read+CAS: {:.2}x; the extra `nb` read costs us-js \
         {:.0} µs CPU per op in the raw runs ({:.0}% more than read+CAS)",
        verdict(per_cpu >= TARGET_PER_VCPU),
        per_cpu / KEYCLOAK_PER_VCPU,
        (w.ok / w.wall) / (raw.ok / raw.wall),
        (w.ok / w.wall) / (raw_nb.ok / raw_nb.wall),
        (w.nats_of(&format!("{HOME}-js")) / w.ok) / (raw.nats_of(&format!("{HOME}-js")) / raw.ok),
        1e6 * (raw_nb.nats_of(&format!("{HOME}-js")) / raw_nb.ok
            - raw.nats_of(&format!("{HOME}-js")) / raw.ok),
        100.0
            * ((raw_nb.nats_of(&format!("{HOME}-js")) / raw_nb.ok)
                / (raw.nats_of(&format!("{HOME}-js")) / raw.ok)
                - 1.0),
    );
    write_out("throughput.csv", &csv);
    Ok(())
}
