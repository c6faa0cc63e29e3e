//! Part 3: the home authority's resident memory with 100k live sessions, next to its RSS
//! right after ready with none.

use crate::{authority_pid, env_usize, nats_pids, verdict, vm_kib, write_out, Rig};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use veto::bus::names::SESSION_BUCKET;

const TARGET_MIB: f64 = 64.0;

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

pub async fn part(rig: &mut Rig, out: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_RSS_SESSIONS", 100_000);
    let conc = env_usize("BENCH_RSS_CONC", 64).max(1);
    // a fresh process: whatever the earlier parts grew is gone
    rig.home.restart();
    rig.home.wait_ready(Duration::from_secs(30)).await;
    let pid = authority_pid(&mut rig.home);
    let js_pid = nats_pids(&rig.topo)
        .into_iter()
        .find(|(name, _)| name == "us-js")
        .map(|x| x.1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = vm_kib(pid, "VmRSS:");
    let hwm0 = vm_kib(pid, "VmHWM:");
    let js0 = js_pid.and_then(|p| vm_kib(p, "VmRSS:"));
    let js = veto::bus::jetstream(rig.topo.client("us").await, None);
    let stream_msgs = |js: async_nats::jetstream::Context| async move {
        let mut s = js.get_stream(format!("KV_{SESSION_BUCKET}")).await.ok()?;
        s.info().await.ok().map(|i| i.state.messages)
    };
    let msgs0 = stream_msgs(js.clone()).await;

    // a fresh client: the pool's connections were to the previous process
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conc * 2)
        .build()
        .map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let url_holder = Arc::new(rig.home.url(""));
    for _ in 0..conc {
        let (http, next, created, failed) =
            (http.clone(), next.clone(), created.clone(), failed.clone());
        let base = url_holder.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match login_at(&http, &base, &format!("user-{i}")).await {
                    Ok(()) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        last = e;
                    }
                }
            }
            last
        }));
    }
    // RSS as sessions grow
    let mut curve = String::from("elapsed_s,sessions,vmrss_kib\n");
    let mut last_error = String::new();
    loop {
        let done = tasks.iter().all(|t| t.is_finished());
        let _ = writeln!(
            curve,
            "{:.1},{},{}",
            started.elapsed().as_secs_f64(),
            created.load(Ordering::Relaxed),
            vm_kib(pid, "VmRSS:").unwrap_or(0)
        );
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        if let Ok(e) = t.await {
            if !e.is_empty() {
                last_error = e;
            }
        }
    }
    let took = started.elapsed();
    let rss_peak_load = vm_kib(pid, "VmRSS:");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = vm_kib(pid, "VmRSS:");
    let hwm1 = vm_kib(pid, "VmHWM:");
    let js1 = js_pid.and_then(|p| vm_kib(p, "VmRSS:"));
    let msgs1 = stream_msgs(js).await;
    let created = created.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let rss1_mib = rss1.map_or(f64::NAN, |k| k as f64 / 1024.0);

    let _ = writeln!(
        out,
        "\n## 3. Home authority RSS at {n} live sessions\n\n\
         A fresh us authority (restarted); {conc} concurrent `POST /v1/sessions` clients.\n\n\
         | metric | value |\n|---|---|\n\
         | sessions created | {created} in {:.1} s = {:.0}/s; failed {failed}{} |\n\
         | KV_{SESSION_BUCKET} messages before / after | {} / {} |\n\
         | authority VmRSS right after ready, 0 sessions of its own (baseline) | {} (VmHWM {}) |\n\
         | authority VmRSS at the end of the creation load | {} |\n\
         | **authority VmRSS 2 s after {created} sessions** | **{}** (VmHWM {}); target ≤ {TARGET_MIB:.0} MiB: {} |\n\
         | growth over the baseline | {} |\n\
         | nats-server us-js VmRSS before / after | {} / {} |",
        took.as_secs_f64(),
        created as f64 / took.as_secs_f64(),
        if failed > 0 {
            format!(" (last: {last_error})")
        } else {
            String::new()
        },
        msgs0.map_or("?".into(), |m| m.to_string()),
        msgs1.map_or("?".into(), |m| m.to_string()),
        mib(rss0),
        mib(hwm0),
        mib(rss_peak_load),
        mib(rss1),
        mib(hwm1),
        verdict(rss1_mib <= TARGET_MIB),
        match (rss0, rss1) {
            (Some(a), Some(b)) => format!("{:+.1} MiB", (b as f64 - a as f64) / 1024.0),
            _ => "?".into(),
        },
        mib(js0),
        mib(js1),
    );
    let _ = writeln!(
        out,
        "\nFile: rss.csv (VmRSS every 0.5 s while sessions are created)."
    );
    write_out("rss.csv", &curve);
    Ok(())
}

/// `POST /v1/sessions` at `base`, only the status checked (201).
async fn login_at(http: &reqwest::Client, base: &str, sub: &str) -> Result<(), String> {
    let r = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(crate::ADMIN_TOKEN)
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
    Ok(())
}
