//! Part 3: replay of 1M events into a fresh sidecar, with the raw drains and the applier
//! alone as baselines.

use crate::support::{metric, metric_sum, wait_port, Issuer, NatsServer, Sidecar};
use crate::topology_support::{self, stream};
use crate::{env_usize, event, loadavg, publish_bulk, secs, sidecar_toml, verdict, CpuSample};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use prost::Message as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use veto::bus::names::event_subject;
use veto::config::Settings;
use veto::feed::{self, Applier, Feed, FeedMetrics};
use veto::readiness::Readiness;
use veto::revocation::{Freshness, RevokedSet};

// Live-heap accounting (for the in-process replay's memory).

struct CountingAlloc;

static LIVE_HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// (VmRSS, VmHWM) in KiB of a running sidecar process.
fn rss(p: &Sidecar) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{}/status", p.pid()?)).ok()?;
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

fn mib_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

/// Deletes every consumer of `name` and waits (bounded) until the server reports none, so a
/// timed phase does not share the server with leftovers of the previous one (an abandoned
/// pull consumer keeps being fed until its pull requests expire).
async fn quiesce(js: &jetstream::Context, name: &str) {
    let Ok(s) = js.get_stream(name).await else {
        return;
    };
    let mut names = s.consumer_names();
    let mut all = Vec::new();
    while let Ok(Some(Ok(n))) = tokio::time::timeout(Duration::from_secs(2), names.next()).await {
        all.push(n);
    }
    for n in all {
        let _ = s.delete_consumer(&n).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(mut s) = js.get_stream(name).await else {
            return;
        };
        if s.info().await.map_or(true, |i| i.state.consumer_count == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads stream `name` from sequence `from` until it has seen sequence `to`, through one
/// ephemeral pull consumer without acks, `batch` messages per pull request; deletes the
/// consumer afterwards. Returns how many messages it read.
async fn drain_pull(
    url: String,
    name: String,
    from: u64,
    to: u64,
    batch: usize,
) -> Result<u64, String> {
    let c = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(c);
    let s = js.get_stream(&name).await.map_err(|e| e.to_string())?;
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: if from <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let consumer_name = consumer.cached_info().name.clone();
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < Duration::from_secs(30) {
        match tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
            Ok(Some(Ok(m))) => {
                count += 1;
                if m.info().map(|i| i.stream_sequence).unwrap_or(0) >= to {
                    break;
                }
            }
            _ => break,
        }
    }
    drop(msgs);
    let _ = s.delete_consumer(&consumer_name).await;
    Ok(count)
}

/// The longest time a progress counter stood still while it was being watched.
#[derive(Default)]
struct Stall {
    last: u64,
    since: Duration,
    longest: Duration,
    at: u64,
    from: Duration,
}

impl Stall {
    fn observe(&mut self, value: u64, now: Duration) {
        if value != self.last {
            self.last = value;
            self.since = now;
            return;
        }
        if value > 0 && now - self.since > self.longest {
            self.longest = now - self.since;
            self.at = value;
            self.from = self.since;
        }
    }

    /// A line when progress stopped for a second or more.
    fn describe(&self) -> Option<String> {
        (self.longest >= Duration::from_secs(1)).then(|| {
            format!(
                "STALL: no progress for {:.1} s at {} (from {:.1} s after start)",
                self.longest.as_secs_f64(),
                self.at,
                self.from.as_secs_f64()
            )
        })
    }
}

fn rate(count: f64, d: Duration) -> String {
    format!(
        "{:.3} s ({:.0}/s)",
        d.as_secs_f64(),
        count / d.as_secs_f64()
    )
}

pub async fn part(issuer: &Issuer, report: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_REPLAY_EVENTS", 1_000_000);
    let inflight = env_usize("BENCH_INFLIGHT", 1000);
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let name = stream("us");
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
    let config = sidecar_toml(issuer, &nats.url(), "us", &["us"], true, None);

    let _ = writeln!(
        report,
        "\n== 3. replay of {n} events into a fresh sidecar (one nats-server; target start -> \
         ready <= 3 s)"
    );
    // An idle sidecar on the empty stream: the memory baseline.
    let empty_rss = {
        let start = Instant::now();
        let p = Sidecar::start(&config);
        while !p.ready().await && start.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready = start.elapsed();
        let rss = rss(&p);
        let _ = writeln!(
            report,
            "   empty stream: sidecar process spawn -> /readyz 200 {:.3} s, VmRSS {}",
            ready.as_secs_f64(),
            rss.map(|r| mib_kib(r.0)).unwrap_or_default()
        );
        rss
    };
    quiesce(&js, &name).await;

    let (took, ok, failed) =
        publish_bulk(&js, "us", "r", n, inflight, Duration::from_secs(120)).await;
    let (stored, last_seq) = {
        let mut s = js.get_stream(&name).await.map_err(|e| e.to_string())?;
        let st = &s.info().await.map_err(|e| e.to_string())?.state;
        (st.messages, st.last_sequence)
    };
    let _ = writeln!(
        report,
        "   published {n} in {:.1} s ({:.0}/s, {inflight} acks in flight): acked {ok}, failed \
         {failed}; stream holds {stored}; load avg {}",
        took.as_secs_f64(),
        ok as f64 / took.as_secs_f64(),
        loadavg()
    );
    quiesce(&js, &name).await;

    // (veto) a fresh sidecar process: the headline number.
    let cpu = CpuSample::now();
    let start = Instant::now();
    // returns once the process listens (the kit asserts it does within 10 s)
    let p = Sidecar::start(&config);
    let listening = wait_port(p.http, Duration::ZERO).then(|| start.elapsed());
    let rss_listen = rss(&p);
    let mut ready = None;
    // Progress watch (veto_feed_last_sequence every 250 ms): the longest stretch without
    // progress, so a stalled replay is reported as such rather than as slow.
    let mut stall = Stall::default();
    let mut last_metrics = Instant::now();
    while start.elapsed() < Duration::from_secs(45) {
        if p.ready().await {
            ready = Some(start.elapsed());
            break;
        }
        if last_metrics.elapsed() >= Duration::from_millis(250) {
            last_metrics = Instant::now();
            let m = p.metrics().await;
            if let Some(seq) = metric(&m, "veto_feed_last_sequence") {
                stall.observe(seq as u64, start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let veto_cpu = cpu.busy();
    let rss_ready = rss(&p);
    tokio::time::sleep(Duration::from_millis(1200)).await; // one housekeeping tick
    let m = p.metrics().await;
    let rss_settled = rss(&p);
    let replay_s = metric(&m, "veto_feed_replay_seconds_sum");
    let held = metric_sum(&m, "veto_revocations_held", &[]);
    let table = metric(&m, "veto_revocations_table_bytes");
    let _ = writeln!(
        report,
        "   (veto)  fresh sidecar process: spawn -> listening {}, spawn -> /readyz 200 {}, \
         veto_feed_replay_seconds {}, held {held}; CPU busy {:.0}%",
        secs(listening),
        secs(ready),
        replay_s
            .map(|s| format!("{s:.3} s"))
            .unwrap_or_else(|| "?".into()),
        veto_cpu * 100.0
    );
    if let Some(line) = stall.describe() {
        let _ = writeln!(report, "           {line}");
    }
    if ready.is_none() || stall.longest >= Duration::from_secs(1) {
        let log = p.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let _ = writeln!(report, "           sidecar log (last lines):");
        for l in tail.iter().rev() {
            let _ = writeln!(report, "             {l}");
        }
    }
    let fmt_rss = |r: Option<(u64, u64)>| r.map(|r| mib_kib(r.0)).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        report,
        "           VmRSS: empty-stream sidecar {}, at listening {}, at ready {}, settled {}; \
         VmHWM {}; (settled - empty) / entries {:.0} B; set tables {} ({:.0} B/entry)",
        fmt_rss(empty_rss),
        fmt_rss(rss_listen),
        fmt_rss(rss_ready),
        fmt_rss(rss_settled),
        rss_settled
            .map(|r| mib_kib(r.1))
            .unwrap_or_else(|| "?".into()),
        match (rss_settled, empty_rss) {
            (Some(a), Some(b)) => (a.0 as f64 - b.0 as f64) * 1024.0 / held.max(1.0),
            _ => f64::NAN,
        },
        table.map(mib).unwrap_or_else(|| "?".into()),
        table.unwrap_or(0.0) / held.max(1.0)
    );
    drop(p);
    quiesce(&js, &name).await;

    // (raw) an ordered consumer draining the stream, created as the feed creates it.
    let raw = {
        let c2 = async_nats::connect(nats.url())
            .await
            .map_err(|e| e.to_string())?;
        let js2 = jetstream::new(c2);
        let start = Instant::now();
        let s = js2.get_stream(&name).await.map_err(|e| e.to_string())?;
        let c = s
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut msgs = c.messages().await.map_err(|e| e.to_string())?;
        let mut count = 0u64;
        while start.elapsed() < Duration::from_secs(30) {
            match tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
                Ok(Some(Ok(m))) => {
                    count += 1;
                    if m.info().map(|i| i.stream_sequence).unwrap_or(0) >= last_seq {
                        break;
                    }
                }
                _ => break,
            }
        }
        let t = start.elapsed();
        let _ = writeln!(
            report,
            "   (raw)   ordered consumer (what the feed uses; 500-message pulls) drains {count}: {}",
            rate(count as f64, t)
        );
        t
    };
    quiesce(&js, &name).await;

    // (feed) the feed in-process: Feed::run from connect to ready; live heap before/after.
    let inproc = {
        let settings = Settings::from_toml(&config).map_err(|e| e.to_string())?;
        let cfg = settings.nats.clone().ok_or("no nats section")?;
        let heap_before = LIVE_HEAP.load(Ordering::Relaxed);
        let revoked = Arc::new(RevokedSet::new());
        let applier = Applier::new(
            revoked.clone(),
            Arc::new(Freshness::default()),
            FeedMetrics::register(&prometheus::Registry::new()),
        );
        let readiness = Readiness::default();
        let latch = readiness.latch(veto::readiness::Component::Feed, "replaying");
        let start = Instant::now();
        let (c, events) = veto::bus::connect(
            &veto::bus::NatsConnection::from_settings(&cfg),
            "bench-replay",
            veto::bus::Initial::Fail,
        )
        .await
        .map_err(|e| e.to_string())?;
        let f = Feed {
            cfg,
            retention: Duration::from_secs(3600),
            applier,
            readiness: latch,
            snapshot: None,
        };
        let sd = CancellationToken::new();
        let task = tokio::spawn(f.run(c, events, sd.clone()));
        let mut stall = Stall::default();
        while !readiness.is_ready() && start.elapsed() < Duration::from_secs(45) {
            stall.observe(revoked.len() as u64, start.elapsed());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(line) = stall.describe() {
            let _ = writeln!(report, "           (feed) {line}");
        }
        let t = start.elapsed();
        let heap = LIVE_HEAP.load(Ordering::Relaxed) - heap_before;
        let stats = revoked.stats();
        let _ = writeln!(
            report,
            "   (feed)  in-process Feed::run connect -> ready: {}{}, {} held; live heap +{} \
             ({:.0} B/entry), set tables {} ({:.0} B/entry)",
            rate(revoked.len() as f64, t),
            if readiness.is_ready() {
                ""
            } else {
                " NOT READY (bound hit)"
            },
            revoked.len(),
            mib(heap as f64),
            heap as f64 / revoked.len().max(1) as f64,
            mib(stats.table_bytes as f64),
            stats.table_bytes as f64 / revoked.len().max(1) as f64
        );
        sd.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        t
    };
    quiesce(&js, &name).await;

    // (raw) what NATS does with other consumer shapes: one pull consumer without acks and
    // 10k-message pulls; two of them over the two halves in parallel (the revoked set is
    // order-independent, so a split replay would be correct).
    let one = {
        let start = Instant::now();
        let count = drain_pull(nats.url(), name.clone(), 1, last_seq, 10_000).await?;
        let t = start.elapsed();
        let _ = writeln!(
            report,
            "   (raw)   pull consumer, no acks, 10k-message pulls, drains {count}: {}",
            rate(count as f64, t)
        );
        t
    };
    quiesce(&js, &name).await;
    let two = {
        let start = Instant::now();
        let mid = last_seq / 2;
        let (a, b) = tokio::join!(
            tokio::spawn(drain_pull(nats.url(), name.clone(), 1, mid, 10_000)),
            tokio::spawn(drain_pull(
                nats.url(),
                name.clone(),
                mid + 1,
                last_seq,
                10_000
            ))
        );
        let count = a.map_err(|e| e.to_string())?? + b.map_err(|e| e.to_string())??;
        let t = start.elapsed();
        let _ = writeln!(
            report,
            "   (raw)   two such consumers over the halves in parallel drain {count}: {}",
            rate(count as f64, t)
        );
        t
    };
    quiesce(&js, &name).await;

    // (apply) Applier alone over the same events from memory (decode + insert + metrics).
    let apply_only = {
        let applier = Applier::new(
            Arc::new(RevokedSet::new()),
            Arc::new(Freshness::default()),
            FeedMetrics::register(&prometheus::Registry::new()),
        );
        let now = veto::now_us();
        let mut t = Duration::ZERO;
        let chunk = 100_000;
        let mut i = 0;
        while i < n {
            let batch: Vec<(String, bytes::Bytes)> = (i..(i + chunk).min(n))
                .map(|j| {
                    let ev = event("us", &format!("r-{j}"), now);
                    (event_subject("us", &ev.event_id), ev.encode_to_vec().into())
                })
                .collect();
            let start = Instant::now();
            for (s, p) in &batch {
                applier.apply(s, p, feed::Path::Durable);
            }
            t += start.elapsed();
            i += chunk;
        }
        let _ = writeln!(
            report,
            "   (apply) Applier::apply alone (decode, insert, metrics), {} events from memory: {}",
            applier.revoked.len(),
            rate(n as f64, t)
        );
        t
    };

    let ready_s = ready.map_or(f64::INFINITY, |d| d.as_secs_f64());
    let raw_s = raw.as_secs_f64();
    let _ = writeln!(
        report,
        "   start -> ready {ready_s:.3} s: {} (target 3 s, {:+.3} s)\n   ratios to the raw \
         ordered drain ({raw_s:.3} s): process ready {:.2}, replay metric {:.2}, in-process \
         feed {:.2}, apply alone {:.2}; 10k pulls {:.2}, two in parallel {:.2}",
        verdict(ready_s <= 3.0),
        ready_s - 3.0,
        ready_s / raw_s,
        replay_s.unwrap_or(f64::NAN) / raw_s,
        inproc.as_secs_f64() / raw_s,
        apply_only.as_secs_f64() / raw_s,
        one.as_secs_f64() / raw_s,
        two.as_secs_f64() / raw_s,
    );
    Ok(())
}
