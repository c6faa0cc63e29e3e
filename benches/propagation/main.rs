//! Benchmark harness for multi-region revocation propagation: `cargo bench --bench
//! propagation` (or `scripts/bench-propagation.sh`). Every number it prints is measured in
//! this one run, in this one process, on one monotonic clock, on 127.0.0.1; targets are
//! judged against baselines measured alongside.
//!
//! 1. **Lag** ([`lag`]). The three-region topology of DESIGN §4 (hub + JetStream leaf per
//!    region: six real nats-server processes). Per region, in this process, each on its own
//!    thread and current-thread runtime: a sidecar with the fast path (defaults), a
//!    durable-only sidecar (`nats.fast_path = false`), a raw core-NATS subscriber on the same
//!    subjects as the fast path, and a raw JetStream ordered consumer on the region's stream
//!    (what the durable feed uses). Paced events are published from each region in turn
//!    through JetStream; a receiver's lag is (time it has the event) − (time just before the
//!    publish call). A sidecar "has" an event when its `Applier` inserted it into the revoked
//!    set: the `instant` of the event's `Applied` announcement (`Sidecar::applied`), taken
//!    on the sidecar's own thread right after the insert — no HTTP polling, no log lines.
//! 2. **Partition catch-up** ([`partition`]). Same topology and sidecars. For each round a
//!    region's hub is killed (the region is cut off), 100k revocations are published (async,
//!    bounded in-flight acks), the hub is restarted; we time heal → the cut-off side's
//!    sidecars hold all of them (polling `RevokedSet::len` every ms), for the sidecar with the
//!    catch-up reader (`catchup_after` default) and the one without (`catchup_after = 1h`:
//!    sourcing alone), next to heal → gateway link back and heal → the region's stream
//!    complete.
//! 3. **Replay** ([`replay`]). One nats-server, 1M events in the stream. Baselines: a raw
//!    ordered consumer draining it, and `Applier::apply` alone over the same events from
//!    memory. Then the feed in-process (`Feed::run` until ready, with live-heap accounting)
//!    and a fresh `veto sidecar` process: start → `/readyz` 200, `veto_feed_replay_seconds`,
//!    VmRSS/VmHWM.
//!
//! 4. **Snapshot** ([`snapshot`]). One nats-server, 1M events: a fresh `veto sidecar`
//!    process start → `/readyz` 200 with a full replay and with `[revocation.snapshot]`
//!    (snapshot + tail), alternating, in the same run.
//!
//! Which parts: `--parts lag,partition,replay,snapshot` (or `BENCH_PARTS`); sizes are
//! overridable for quick runs: `BENCH_LAG_EVENTS` (500 per origin), `BENCH_LAG_PACE_US` (2000),
//! `BENCH_PARTITION_EVENTS` (100000), `BENCH_REPLAY_EVENTS` (1000000, parts 3 and 4),
//! `BENCH_SNAPSHOT_ROUNDS` (2), `BENCH_INFLIGHT` (1000).

#[path = "../common/mod.rs"]
mod common;
#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "../../tests/support/topology.rs"]
mod topology_support;

mod arrivals;
mod inproc;
mod lag;
mod partition;
mod replay;
mod snapshot;

use async_nats::jetstream;
#[allow(unused_imports)]
pub use common::{env_usize, loadavg, system_cpu, wants, CpuSample, PARTS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{nats_section, sidecar_config, Issuer};
use tokio_util::sync::CancellationToken;
use topology_support::LocalTopology;
use veto::revocation::{Kind, RevocationEvent};
use veto::token::Alg;

pub const REGIONS: [&str; 3] = ["us", "eu", "ap"];

// ---------------------------------------------------------------------------------------
// Small helpers shared by the parts.

/// A session revocation from `origin` stamped at `now_us`, held for an hour.
pub fn event(origin: &str, event_id: &str, now_us: i64) -> RevocationEvent {
    RevocationEvent {
        reason: "bench".into(),
        ..RevocationEvent::new_at_us(
            event_id,
            Kind::Session,
            format!("sid-{event_id}"),
            origin,
            now_us,
            Duration::from_secs(3600),
        )
    }
}

/// Publishes `n` events `<prefix>-<i>` from `origin`, at most `inflight` acks outstanding
/// (the kit's [`support::publish_bulk`]). Returns (time, acked, failed).
pub async fn publish_bulk(
    js: &jetstream::Context,
    origin: &str,
    prefix: &str,
    n: usize,
    inflight: usize,
    deadline: Duration,
) -> (Duration, usize, usize) {
    let now = veto::now_us();
    let events = (0..n).map(|i| event(origin, &format!("{prefix}-{i}"), now));
    support::publish_bulk(js, events, inflight, deadline).await
}

pub async fn stream_messages(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut s = js.get_stream(name).await.ok()?;
    s.info().await.ok().map(|i| i.state.messages)
}

pub fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

pub fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.as_secs_f64()))
        .unwrap_or_else(|| "never".into())
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A sidecar in `region` following `regions`, with the test kit's issuer section.
pub fn sidecar_toml(
    issuer: &Issuer,
    url: &str,
    region: &str,
    regions: &[&str],
    fast_path: bool,
    catchup_after: Option<&str>,
) -> String {
    let mut nats = format!("fast_path = {fast_path}\n");
    if let Some(c) = catchup_after {
        let _ = writeln!(nats, "catchup_after = \"{c}\"");
    }
    let extra = format!(
        "{}[revocation]\nretention = \"1h\"\n",
        nats_section(url, region, regions, &nats)
    );
    sidecar_config(issuer, None, &extra)
}

// ---------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `--parts X` picks parts; anything else is ignored.
    // Without `--bench` (`cargo test --all-targets` runs bench targets too) it does nothing:
    // this is a heavy load harness, not a CI step.
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
        println!("propagation benchmark: skipped (run it with `cargo bench --bench propagation`)");
        return;
    }
    arrivals::install_log();
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
    let _ = writeln!(
        report,
        "veto propagation benchmark — {} CPUs, load avg at start {}, nats-server {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        Command::new(support::nats_server_bin())
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    let issuer = Issuer::new(Alg::ES256);

    if wants("lag") || wants("partition") {
        let setup = Instant::now();
        let mut topo = LocalTopology::start(&REGIONS);
        topo.wait_linked(Duration::from_secs(20)).await;
        topo.provision_all().await;
        let beats = CancellationToken::new();
        let mut beat_tasks = Vec::new();
        for r in REGIONS {
            let js = async_nats::jetstream::new(topo.client(r).await);
            beat_tasks.push(tokio::spawn(veto::bus::publish::heartbeats(
                js,
                r.to_string(),
                Duration::from_secs(1),
                beats.clone(),
            )));
        }
        let floor = if wants("lag") {
            match lag::floor(&topo).await {
                Ok(f) => Some(f),
                Err(e) => {
                    let _ = writeln!(report, "lag floor run FAILED: {e}");
                    None
                }
            }
        } else {
            None
        };
        let mut sidecars = BTreeMap::new();
        for r in REGIONS {
            let url = topo.js_url(r);
            let fast = format!("sc/{r}/fast");
            let durable = format!("sc/{r}/durable");
            sidecars.insert(
                fast.clone(),
                inproc::InProc::start(&fast, &sidecar_toml(&issuer, &url, r, &REGIONS, true, None)),
            );
            sidecars.insert(
                durable.clone(),
                inproc::InProc::start(
                    &durable,
                    &sidecar_toml(&issuer, &url, r, &REGIONS, false, Some("1h")),
                ),
            );
        }
        inproc::wait_all_ready(
            &sidecars.values().collect::<Vec<_>>(),
            Duration::from_secs(30),
        )
        .await;
        let _ = writeln!(
            report,
            "topology: 3 regions x (hub + JetStream leaf), streams provisioned, 6 in-process \
             sidecars ready, heartbeats every 1 s: {:.1} s",
            setup.elapsed().as_secs_f64()
        );
        if wants("lag") {
            let t = Instant::now();
            let before = report.len();
            if let Err(e) = lag::part(&topo, &sidecars, floor.as_ref(), &mut report).await {
                let _ = writeln!(report, "\n== 1. lag: FAILED: {e}");
            }
            print!("{}", &report[before..]);
            let _ = writeln!(
                report,
                "   (part 1 took {:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
        if wants("partition") {
            let t = Instant::now();
            let before = report.len();
            if let Err(e) = partition::part(&mut topo, &sidecars, &mut report).await {
                let _ = writeln!(report, "\n== 2. partition: FAILED: {e}");
            }
            print!("{}", &report[before..]);
            let _ = writeln!(
                report,
                "   (part 2 took {:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
        let (n, shown) = arrivals::warnings(12);
        let _ = writeln!(
            report,
            "   sidecar warnings/errors logged during parts 1-2: {n}{}",
            if n > 0 { " (first ones below)" } else { "" }
        );
        for l in shown {
            let _ = writeln!(report, "     {l}");
        }
        let missed = arrivals::missed();
        if missed > 0 {
            let _ = writeln!(
                report,
                "   applied announcements missed by slow recorders: {missed} (those events \
                 count as not seen)"
            );
        }
        for s in sidecars.values_mut() {
            s.stop();
        }
        beats.cancel();
        for t in beat_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        drop(topo);
    }
    if wants("replay") {
        let t = Instant::now();
        let before = report.len();
        if let Err(e) = replay::part(&issuer, &mut report).await {
            let _ = writeln!(report, "\n== 3. replay: FAILED: {e}");
        }
        print!("{}", &report[before..]);
        let _ = writeln!(
            report,
            "   (part 3 took {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    if wants("snapshot") {
        let t = Instant::now();
        let before = report.len();
        if let Err(e) = snapshot::part(&issuer, &mut report).await {
            let _ = writeln!(report, "\n== 4. snapshot: FAILED: {e}");
        }
        print!("{}", &report[before..]);
        let _ = writeln!(
            report,
            "   (part 4 took {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    let _ = writeln!(
        report,
        "\ntotal {:.1} s; load avg at end {}",
        begin.elapsed().as_secs_f64(),
        loadavg()
    );
    println!("\n================ RESULTS ================\n{report}");
}
