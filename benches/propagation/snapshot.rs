//! Part 4: start → ready of a `veto sidecar` process over a 1M-event stream, with and without
//! the revoked set's snapshot (`[revocation.snapshot]`), in the same run on the same stream.
//!
//! One nats-server; `BENCH_REPLAY_EVENTS` (1M) revocations published once. Then, alternating
//! for `BENCH_SNAPSHOT_ROUNDS` (2) rounds: a sidecar without a snapshot (full replay), and a
//! sidecar loading the snapshot written by the seeding start, which stopped before the last
//! `BENCH_SNAPSHOT_TAIL` (10k) revocations were published: that tail is replayed from the
//! stream. Each is timed from process spawn to `/readyz` 200 and checked: the first, the last
//! snapshotted and the last published revocation refused, and for the snapshot start no
//! fallback, the snapshot's entries loaded and only the tail replayed.

use crate::support::{metric, metric_sum, Issuer, NatsServer, Sidecar};
use crate::topology_support::{self, stream};
use crate::{env_usize, loadavg, publish_bulk, sidecar_toml, verdict};
use async_nats::jetstream;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Spawn → `/readyz` 200, bounded.
async fn start_ready(config: &str, bound: Duration) -> (Sidecar, Option<Duration>) {
    let start = Instant::now();
    let p = Sidecar::start(config);
    while start.elapsed() < bound {
        if p.ready().await {
            return (p, Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (p, None)
}

/// Are the bench's revocations `r-0`, `r-<n-1>` and `t-<tail-1>` refused?
async fn refuses(p: &Sidecar, issuer: &Issuer, n: usize, tail: usize) -> bool {
    let mut all = true;
    let mut sids = vec![format!("sid-r-0"), format!("sid-r-{}", n - 1)];
    if tail > 0 {
        sids.push(format!("sid-t-{}", tail - 1));
    }
    for sid in sids {
        let t = issuer.mint("u", &sid);
        let r = p.check(Some(&format!("Bearer {t}"))).await;
        all &= r.status() == 401;
    }
    all
}

fn stop(p: &mut Sidecar) -> Result<Duration, String> {
    let start = Instant::now();
    p.process().terminate();
    p.process()
        .wait_exit(Duration::from_secs(120))
        .ok_or("sidecar did not exit within 120 s")?;
    Ok(start.elapsed())
}

pub async fn part(issuer: &Issuer, report: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_REPLAY_EVENTS", 1_000_000);
    let rounds = env_usize("BENCH_SNAPSHOT_ROUNDS", 2).max(1);
    let tail = env_usize("BENCH_SNAPSHOT_TAIL", 10_000);
    let inflight = env_usize("BENCH_INFLIGHT", 1000);
    // Bounds that grow with the stream (10M: publishing takes ~10 min here, a full replay
    // minutes); 60 s and 180 s at 1M.
    let ready_bound = Duration::from_secs((n as u64 / 50_000).max(60));
    let publish_bound = Duration::from_secs((n as u64 / 15_000).max(180));
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let regions = vec!["us".to_string()];
    let plan = veto::bus::stream::Plan::new(
        topology_support::STREAM_BASE,
        "us",
        &regions,
        Duration::from_secs(3600),
    )
    .map_err(|e| e.to_string())?;
    veto::bus::stream::provision(&js, &plan)
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let snap = dir.path().join("revoked.snap");
    let plain = sidecar_toml(issuer, &nats.url(), "us", &["us"], true, None);
    let with_snapshot = format!(
        "{plain}[revocation.snapshot]\npath = \"{}\"\ninterval = \"1h\"\n\
         [shutdown]\ndrain = \"100ms\"\ngrace = \"60s\"\n",
        snap.display()
    );
    let _ = writeln!(
        report,
        "\n== 4. start -> ready with {n} revocations held: full replay vs snapshot + tail \
         (one nats-server; target < 1 s with the snapshot)"
    );
    let (took, ok, failed) = publish_bulk(&js, "us", "r", n, inflight, publish_bound).await;
    let held = {
        let mut s = js
            .get_stream(stream("us"))
            .await
            .map_err(|e| e.to_string())?;
        s.info().await.map_err(|e| e.to_string())?.state.messages
    };
    let _ = writeln!(
        report,
        "   published {n} in {:.1} s: acked {ok}, failed {failed}; stream holds {held}; load avg {}",
        took.as_secs_f64(),
        loadavg()
    );

    // the first snapshot: a full replay, then written at shutdown
    let (mut p, ready) = start_ready(&with_snapshot, ready_bound).await;
    let ready = ready.ok_or_else(|| format!("seeding sidecar never ready:\n{}", p.log()))?;
    let stopped = stop(&mut p)?;
    let size = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);
    let written = p
        .log()
        .lines()
        .rfind(|l| l.contains("revocation snapshot written"))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "NO SNAPSHOT WRITTEN".into());
    let _ = writeln!(
        report,
        "   seeding start (full replay, fallback \"missing\") ready in {:.3} s; SIGTERM -> exit \
         {:.3} s (drain 100 ms + snapshot); snapshot {:.1} MiB\n     {written}",
        ready.as_secs_f64(),
        stopped.as_secs_f64(),
        size as f64 / 1048576.0
    );
    let (took, ok, failed) = publish_bulk(&js, "us", "t", tail, inflight, ready_bound).await;
    let _ = writeln!(
        report,
        "   then the tail: {tail} more published in {:.1} s (acked {ok}, failed {failed})",
        took.as_secs_f64()
    );

    let (mut full, mut fast) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (mut p, ready) = start_ready(&plain, ready_bound).await;
        let refused = refuses(&p, issuer, n, tail).await;
        let m = p.metrics().await;
        let applied = metric_sum(&m, "veto_revocation_events_total", &["path=\"durable\""]) + 0.0;
        let _ = writeln!(
            report,
            "   round {round}: no snapshot:   spawn -> ready {}; durable events {applied}; first/last refused: {refused}",
            ready.map_or("never".into(), |d| format!("{:.3} s", d.as_secs_f64())),
        );
        full.push(ready.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        p.kill();

        let (mut p, ready) = start_ready(&with_snapshot, ready_bound).await;
        let refused = refuses(&p, issuer, n, tail).await;
        let m = p.metrics().await;
        let loaded = metric(&m, "veto_revocation_snapshot_loaded_entries").unwrap_or(-1.0);
        let fallbacks = metric_sum(&m, "veto_revocation_snapshot_fallbacks_total", &[]) + 0.0;
        let replayed = metric_sum(&m, "veto_revocation_events_total", &["path=\"durable\""]) + 0.0;
        let line = p
            .log()
            .lines()
            .rfind(|l| l.contains("revocation snapshot loaded"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            report,
            "   round {round}: with snapshot: spawn -> ready {}; loaded {loaded}, replayed {replayed}, fallbacks {fallbacks}; first/last refused: {refused}\n     {line}",
            ready.map_or("never".into(), |d| format!("{:.3} s", d.as_secs_f64())),
        );
        fast.push(ready.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        // SIGKILL: the next round loads the seeding start's snapshot and replays the tail again
        p.kill();
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (f, s) = (best(&full), best(&fast));
    let _ = writeln!(
        report,
        "   best of {rounds}: full replay {f:.3} s, snapshot {s:.3} s -> {:.1}x faster ({:.2} of the \
         full replay); target < 1 s: {}",
        f / s,
        s / f,
        verdict(s < 1.0)
    );
    Ok(())
}
