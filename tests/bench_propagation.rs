//! Benchmark harness for multi-region revocation propagation. Not a test: `#[ignore]`d, run
//! it with `scripts/bench-propagation.sh` (release build, `--nocapture`). Every number it
//! prints is measured in this one run, in this one process, on one monotonic clock, on
//! 127.0.0.1; targets are judged against baselines measured alongside.
//!
//! 1. **Lag.** The three-region topology of DESIGN §4 (hub + JetStream leaf per region: six
//!    real nats-server processes). Per region, in this process, each on its own thread and
//!    current-thread runtime: a sidecar with the fast path (defaults), a durable-only sidecar
//!    (`nats.fast_path = false`), a raw core-NATS subscriber on the same subjects as the fast
//!    path, and a raw JetStream ordered consumer on the region's stream (what the durable
//!    feed uses). Paced events are published from each region in turn through JetStream; a
//!    receiver's lag is (time it has the event) − (time just before the publish call). A
//!    sidecar "has" an event when its `Applier` inserted it into the revoked set: the
//!    `revocation applied` debug event, caught by this binary's tracing subscriber on the
//!    sidecar's own thread right after the insert — no HTTP polling in the number.
//! 2. **Partition catch-up.** Same topology and sidecars. For each round a region's hub is
//!    killed (the region is cut off), 100k revocations are published (async, bounded
//!    in-flight acks), the hub is restarted; we time heal → the cut-off side's sidecars hold
//!    all of them (polling `RevokedSet::len` every ms), for the sidecar with the catch-up
//!    reader (`catchup_after` default) and the one without (`catchup_after = 1h`: sourcing
//!    alone), next to heal → gateway link back and heal → the region's stream complete.
//! 3. **Replay.** One nats-server, 1M events in the stream. Baselines: a raw ordered consumer
//!    draining it, and `Applier::apply` alone over the same events from memory. Then the
//!    feed in-process (`Feed::run` until ready, with live-heap accounting) and a fresh
//!    `veto sidecar` process: start → `/readyz` 200, `veto_feed_replay_seconds`, VmRSS/VmHWM.
//!
//! Sizes are overridable for quick runs: `BENCH_PARTS` (`lag,partition,replay`),
//! `BENCH_LAG_EVENTS` (500 per origin), `BENCH_LAG_PACE_US` (2000), `BENCH_PARTITION_EVENTS`
//! (100000), `BENCH_REPLAY_EVENTS` (1000000), `BENCH_INFLIGHT` (1000).

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use support::{free_port, metric, metric_sum, wait_port, Issuer, NatsServer};
use tokio_util::sync::CancellationToken;
use topology_support::{stream, LocalTopology};
use veto::bus::names::event_subject;
use veto::config::Settings;
use veto::feed::{self, Applier, Feed};
use veto::metrics::Metrics;
use veto::readiness::Readiness;
use veto::revocation::{Freshness, Kind, RevocationEvent, RevokedSet};
use veto::token::Alg;

const REGIONS: [&str; 3] = ["us", "eu", "ap"];

// ---------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------
// The apply hook: a tracing subscriber that keeps only veto's `revocation applied` debug
// event (with the thread it happened on, which names the sidecar) and veto's info/warn/error
// lines. Everything else is disabled at the callsite.

mod hook {
    use super::*;
    use tracing::level_filters::LevelFilter;
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Level, Metadata, Subscriber};

    pub const OFF: u8 = 0;
    /// Keep every application (time, sidecar, event id, path).
    pub const RECORD: u8 = 1;
    /// Count applications per (sidecar, path), with first and last time.
    pub const COUNT: u8 = 2;

    pub struct Applied {
        pub at: Instant,
        pub who: String,
        pub event_id: String,
        pub path: String,
    }

    #[derive(Clone)]
    pub struct Tally {
        pub count: u64,
        pub first: Instant,
        pub last: Instant,
    }

    pub struct Line {
        pub at: Instant,
        pub who: String,
        pub target: &'static str,
        pub level: Level,
        pub text: String,
    }

    #[derive(Default)]
    pub struct State {
        pub mode: AtomicU8,
        pub applied: Mutex<Vec<Applied>>,
        pub counts: Mutex<BTreeMap<(String, String), Tally>>,
        pub log: Mutex<Vec<Line>>,
    }

    pub static STATE: LazyLock<State> = LazyLock::new(State::default);

    pub fn install() {
        // A second install (another test in this binary) keeps the first: same hook.
        let _ = tracing::subscriber::set_global_default(Hook);
    }

    struct Hook;

    fn is_apply(m: &Metadata<'_>) -> bool {
        m.fields().field("event_id").is_some() && m.fields().field("path").is_some()
    }

    /// veto's info and above, its apply event, and the catch-up reader's debug lines (why a
    /// direct read could not start).
    fn wanted(m: &Metadata<'_>) -> bool {
        m.is_event()
            && m.target().starts_with("veto")
            && (*m.level() <= Level::INFO
                || is_apply(m)
                || m.target().starts_with("veto::feed::catchup"))
    }

    #[derive(Default)]
    struct Fields {
        event_id: String,
        path: String,
        text: String,
    }

    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
            match f.name() {
                "event_id" => self.event_id = v.to_string(),
                "path" => self.path = v.to_string(),
                "message" => self.text.insert_str(0, v),
                n => {
                    let _ = write!(self.text, " {n}={v}");
                }
            }
        }
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            self.record_str(f, &format!("{v:?}"));
        }
    }

    impl Subscriber for Hook {
        fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
            if wanted(m) {
                Interest::always()
            } else {
                Interest::never()
            }
        }
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            wanted(m)
        }
        fn max_level_hint(&self) -> Option<LevelFilter> {
            Some(LevelFilter::DEBUG)
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let at = Instant::now();
            let st = &*STATE;
            let mode = st.mode.load(Ordering::Relaxed);
            let apply = is_apply(e.metadata());
            if apply && mode == OFF {
                return;
            }
            let mut f = Fields::default();
            e.record(&mut f);
            let who = std::thread::current().name().unwrap_or("main").to_string();
            if !apply {
                let mut log = st.log.lock();
                if log.len() < 100_000 {
                    log.push(Line {
                        at,
                        who,
                        target: e.metadata().target(),
                        level: *e.metadata().level(),
                        text: f.text,
                    });
                }
                return;
            }
            if mode == RECORD {
                st.applied.lock().push(Applied {
                    at,
                    who,
                    event_id: f.event_id,
                    path: f.path,
                });
            } else {
                st.counts
                    .lock()
                    .entry((who, f.path))
                    .and_modify(|t| {
                        t.count += 1;
                        t.last = at;
                    })
                    .or_insert(Tally {
                        count: 1,
                        first: at,
                        last: at,
                    });
            }
        }
    }

    /// Warnings and errors logged since `since`, by sidecar, at most `max` lines.
    pub fn warnings(since: Instant, max: usize) -> (usize, Vec<String>) {
        let log = STATE.log.lock();
        let w: Vec<&Line> = log
            .iter()
            .filter(|l| l.at >= since && l.level <= Level::WARN)
            .collect();
        let shown = w
            .iter()
            .take(max)
            .map(|l| {
                format!(
                    "{:>9.3}s {} {}: {}",
                    l.at.duration_since(since).as_secs_f64(),
                    l.level,
                    l.who,
                    l.text
                )
            })
            .collect();
        (w.len(), shown)
    }

    /// Info lines of sidecars `who` containing `needle`, since `since`.
    /// Lines of sidecars `who` from modules whose path starts with `target`, since `since`.
    pub fn lines(since: Instant, who: &[String], target: &str) -> Vec<(Duration, String)> {
        STATE
            .log
            .lock()
            .iter()
            .filter(|l| l.at >= since && who.contains(&l.who) && l.target.starts_with(target))
            .map(|l| {
                (
                    l.at.duration_since(since),
                    format!("{}: {} {}", l.who, l.level, l.text),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn wants(part: &str) -> bool {
    match std::env::var("BENCH_PARTS") {
        Ok(p) if !p.trim().is_empty() => p.split(',').any(|x| x.trim() == part),
        _ => true,
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// System-wide CPU time from /proc/stat: (busy, total) jiffies.
struct CpuSample(u64, u64);

impl CpuSample {
    fn now() -> CpuSample {
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
        CpuSample(total.saturating_sub(idle), total)
    }

    /// Fraction of all CPUs busy since this sample.
    fn busy(&self) -> f64 {
        let now = CpuSample::now();
        let total = now.1.saturating_sub(self.1);
        if total == 0 {
            return 0.0;
        }
        now.0.saturating_sub(self.0) as f64 / total as f64
    }
}

fn event(origin: &str, event_id: &str, now_ms: i64) -> RevocationEvent {
    RevocationEvent {
        event_id: event_id.into(),
        kind: Kind::Session as i32,
        id: format!("sid-{event_id}"),
        issuer: String::new(),
        revoked_at: now_ms,
        expires_at: now_ms + 3_600_000,
        origin_region: origin.into(),
        reason: "bench".into(),
        urgent: false,
    }
}

/// Publishes one event through JetStream; returns the ack future (not awaited).
async fn publish(
    js: &jetstream::Context,
    ev: &RevocationEvent,
) -> Option<jetstream::context::PublishAckFuture> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", ev.event_id.as_str());
    js.publish_with_headers(
        event_subject(&ev.origin_region, &ev.event_id),
        h,
        ev.encode_to_vec().into(),
    )
    .await
    .ok()
}

/// Publishes `n` events `<prefix>-<i>` from `origin`, at most `inflight` acks outstanding.
/// Returns (time, acked, failed).
async fn publish_bulk(
    js: &jetstream::Context,
    origin: &str,
    prefix: &str,
    n: usize,
    inflight: usize,
    deadline: Duration,
) -> (Duration, usize, usize) {
    let start = Instant::now();
    let now = veto::now_ms();
    let mut acks = VecDeque::with_capacity(inflight + 1);
    let (mut ok, mut failed) = (0usize, 0usize);
    for i in 0..n {
        if start.elapsed() > deadline {
            failed += n - i;
            break;
        }
        match publish(js, &event(origin, &format!("{prefix}-{i}"), now)).await {
            Some(f) => acks.push_back(f),
            None => failed += 1,
        }
        if acks.len() >= inflight {
            if let Some(f) = acks.pop_front() {
                match f.await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
        }
    }
    for f in acks {
        match f.await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (start.elapsed(), ok, failed)
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut s = js.get_stream(name).await.ok()?;
    s.info().await.ok().map(|i| i.state.messages)
}

/// p50/p99/max of a set of durations in microseconds (nearest rank).
#[derive(Clone, Copy)]
struct Pct {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn pct(mut v: Vec<f64>) -> Option<Pct> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Pct {
        n: v.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.3} s", d.as_secs_f64()))
        .unwrap_or_else(|| "never".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn sidecar_toml(
    issuer: &Issuer,
    url: &str,
    region: &str,
    regions: &[&str],
    fast_path: bool,
    catchup_after: Option<&str>,
) -> String {
    let regions = regions
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let catchup = catchup_after
        .map(|c| format!("catchup_after = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[log]
level = "info"
[[issuers]]
issuer = "{iss}"
audiences = ["api"]
algorithms = ["ES256"]
jwks_file = "{jwks}"
[nats]
url = "{url}"
region = "{region}"
regions = [{regions}]
fast_path = {fast_path}
{catchup}
[revocation]
retention = "1h"
"#,
        iss = issuer.iss,
        jwks = issuer.jwks_path().display(),
    )
}

// ---------------------------------------------------------------------------------------
// An in-process sidecar (`Sidecar::build` + `run`, port-0 listeners) on its own named thread
// with a current-thread runtime: the thread name tells the hook which sidecar applied.

struct InProc {
    label: String,
    revoked: Arc<RevokedSet>,
    readiness: Readiness,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProc {
    fn start(label: &str, toml: &str) -> InProc {
        let settings = Settings::from_toml(toml).expect("sidecar settings");
        let sc = veto::sidecar::Sidecar::build(&settings).expect("build sidecar");
        let (revoked, readiness) = (sc.revoked.clone(), sc.readiness.clone());
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        let name = label.to_string();
        let thread = std::thread::Builder::new()
            .name(label.to_string())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind");
                    if let Err(e) = sc.run(settings, grpc, http, sd).await {
                        eprintln!("{name}: sidecar stopped: {e:#}");
                    }
                });
            })
            .expect("sidecar thread");
        InProc {
            label: label.to_string(),
            revoked,
            readiness,
            shutdown,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!("{}: did not stop within 5 s; left behind", self.label);
            }
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_all_ready(sidecars: &[&InProc], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: Vec<String> = sidecars
            .iter()
            .filter(|s| !s.readiness.is_ready())
            .map(|s| format!("{} {:?}", s.label, s.readiness.blockers()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after {timeout:?}: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Raw receivers: the same NATS delivery without veto, timed the same way.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// A core subscription on the fast path's subjects.
    Core,
    /// An ordered consumer on the region's stream (what the durable feed uses), new messages.
    Js,
}

struct RawReceiver {
    label: String,
    records: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawReceiver {
    fn start(label: &str, url: String, kind: Raw, stream_name: String) -> RawReceiver {
        let records: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let stop = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (rec, sd, name) = (records.clone(), stop.clone(), label.to_string());
        let thread = std::thread::Builder::new()
            .name(label.to_string())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let client = async_nats::connect(url).await.expect("raw connect");
                    let record = |subject: &str| {
                        let at = Instant::now();
                        if subject.contains(".ev.") {
                            if let Some(id) = subject.rsplit('.').next() {
                                rec.lock().push((at, id.to_string()));
                            }
                        }
                    };
                    match kind {
                        Raw::Core => {
                            let subject = veto::bus::names::FAST_PATH_SUBJECT;
                            let mut sub = client.subscribe(subject).await.expect("subscribe");
                            client.flush().await.expect("flush");
                            let _ = tx.send(());
                            loop {
                                tokio::select! {
                                    _ = sd.cancelled() => return,
                                    m = sub.next() => match m {
                                        Some(m) => record(m.subject.as_str()),
                                        None => return,
                                    }
                                }
                            }
                        }
                        Raw::Js => {
                            let js = jetstream::new(client);
                            let s = js.get_stream(&stream_name).await.expect("stream");
                            let c = s
                                .create_consumer(OrderedConfig {
                                    deliver_policy: DeliverPolicy::New,
                                    ..Default::default()
                                })
                                .await
                                .expect("consumer");
                            let mut msgs = c.messages().await.expect("messages");
                            let _ = tx.send(());
                            loop {
                                tokio::select! {
                                    _ = sd.cancelled() => return,
                                    m = msgs.next() => match m {
                                        Some(Ok(m)) => record(m.subject.as_str()),
                                        Some(Err(e)) => eprintln!("{name}: {e}"),
                                        None => return,
                                    }
                                }
                            }
                        }
                    }
                });
            })
            .expect("raw thread");
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{label}: raw receiver did not start"));
        RawReceiver {
            label: label.to_string(),
            records,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Part 1: lag.

/// First time each receiver (label) had each event id.
fn first_seen(raws: &[RawReceiver]) -> HashMap<String, HashMap<String, Instant>> {
    let mut out: HashMap<String, HashMap<String, Instant>> = HashMap::new();
    for r in raws {
        let m = out.entry(r.label.clone()).or_default();
        for (at, id) in r.records.lock().iter() {
            m.entry(id.clone()).or_insert(*at);
        }
    }
    for a in hook::STATE.applied.lock().iter() {
        out.entry(a.who.clone())
            .or_default()
            .entry(a.event_id.clone())
            .or_insert(a.at);
    }
    out
}

/// One measured lag run: what was published when, and when each receiver had it.
struct LagRun {
    /// event id -> (origin, time just before the publish call)
    published: HashMap<String, (String, Instant)>,
    /// receiver label -> event id -> first time it had the event
    seen: HashMap<String, HashMap<String, Instant>>,
    took: Duration,
    cpu_busy: f64,
    /// per fast-path sidecar: path -> events it applied first through that path
    first_path: BTreeMap<String, BTreeMap<String, usize>>,
}

impl LagRun {
    /// Lags (µs) at `label` of the events from `origin` (all origins if `None`), leaving
    /// out those from `not_from`; and how many were expected.
    fn lags(
        &self,
        label: &str,
        origin: Option<&str>,
        not_from: Option<&str>,
    ) -> (Option<Pct>, usize) {
        let m = self.seen.get(label);
        let wanted = || {
            self.published
                .iter()
                .filter(|(_, (o, _))| origin.is_none_or(|x| x == o))
                .filter(|(_, (o, _))| not_from.is_none_or(|r| r != o))
        };
        let v: Vec<f64> = wanted()
            .filter_map(|(id, (_, at))| {
                m.and_then(|m| m.get(id))
                    .map(|t| t.saturating_duration_since(*at).as_secs_f64() * 1e6)
            })
            .collect();
        (pct(v), wanted().count())
    }
}

/// Warms up (until every receiver sees every origin), then publishes `n` paced events from
/// each region in turn and collects when each receiver had each.
async fn lag_run(
    topo: &LocalTopology,
    raws: &[RawReceiver],
    receivers: &[String],
    n: usize,
    pace: Duration,
    tag: &str,
) -> Result<LagRun, String> {
    let mut publishers = BTreeMap::new();
    for r in REGIONS {
        publishers.insert(r, jetstream::new(topo.client(r).await));
    }
    hook::STATE.applied.lock().clear();
    hook::STATE.mode.store(hook::RECORD, Ordering::Relaxed);
    let warm = Instant::now();
    let mut round = 0;
    loop {
        let mut ids = Vec::new();
        for (r, js) in &publishers {
            for i in 0..10 {
                let id = format!("{tag}w{round}-{r}-{i}");
                if let Some(f) = publish(js, &event(r, &id, veto::now_ms())).await {
                    let _ = f.await;
                }
                ids.push(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = first_seen(raws);
        let missing: Vec<&String> = receivers
            .iter()
            .filter(|l| {
                ids.iter()
                    .any(|id| !seen.get(*l).is_some_and(|m| m.contains_key(id)))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        round += 1;
        if warm.elapsed() > Duration::from_secs(15) {
            hook::STATE.mode.store(hook::OFF, Ordering::Relaxed);
            return Err(format!("warm-up: {missing:?} never saw every event"));
        }
    }
    hook::STATE.applied.lock().clear();
    for r in raws {
        r.records.lock().clear();
    }

    let mut published: HashMap<String, (String, Instant)> = HashMap::new();
    let cpu = CpuSample::now();
    let started = Instant::now();
    for (origin, js) in &publishers {
        let t0 = tokio::time::Instant::now();
        let mut acks = Vec::with_capacity(n);
        for i in 0..n {
            let id = format!("{tag}-{origin}-{i}");
            let ev = event(origin, &id, veto::now_ms());
            let at = Instant::now();
            if let Some(f) = publish(js, &ev).await {
                acks.push(f);
            }
            published.insert(id, (origin.to_string(), at));
            tokio::time::sleep_until(t0 + pace * (i as u32 + 1)).await;
        }
        for f in acks {
            let _ = tokio::time::timeout(Duration::from_secs(5), async move { f.await }).await;
        }
    }
    let took = started.elapsed();
    let cpu_busy = cpu.busy();
    // Let the stragglers arrive (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = first_seen(raws);
        let complete = receivers
            .iter()
            .all(|l| seen.get(l).map_or(0, |m| m.len()) >= published.len());
        if complete || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hook::STATE.mode.store(hook::OFF, Ordering::Relaxed);
    let seen = first_seen(raws);
    let mut first_path: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for a in hook::STATE.applied.lock().iter() {
        if published.contains_key(&a.event_id) {
            *first_path
                .entry(a.who.clone())
                .or_default()
                .entry(a.path.clone())
                .or_default() += 1;
        }
    }
    hook::STATE.applied.lock().clear();
    Ok(LagRun {
        published,
        seen,
        took,
        cpu_busy,
        first_path,
    })
}

fn start_raws(topo: &LocalTopology) -> Vec<RawReceiver> {
    let mut raws = Vec::new();
    for r in REGIONS {
        raws.push(RawReceiver::start(
            &format!("raw/{r}/core"),
            topo.js_url(r),
            Raw::Core,
            stream(r),
        ));
        raws.push(RawReceiver::start(
            &format!("raw/{r}/js"),
            topo.js_url(r),
            Raw::Js,
            stream(r),
        ));
    }
    raws
}

fn raw_labels() -> Vec<String> {
    REGIONS
        .iter()
        .flat_map(|r| ["raw/{r}/core", "raw/{r}/js"].map(|l| l.replace("{r}", r)))
        .collect()
}

/// The floor: the raw receivers alone (no sidecar running yet), same events, same pacing.
async fn lag_floor(topo: &LocalTopology) -> Result<LagRun, String> {
    let n = env_usize("BENCH_LAG_EVENTS", 500);
    let pace = Duration::from_micros(env_usize("BENCH_LAG_PACE_US", 2000) as u64);
    let mut raws = start_raws(topo);
    let mut labels = raw_labels();
    // Also: a core subscriber on each region's hub, one hop closer to the gateways than the
    // JetStream leaf the sidecars use.
    for r in REGIONS {
        let port = topo.topology.region(r).expect("region").ports.hub_client;
        let label = format!("raw/{r}/hub");
        raws.push(RawReceiver::start(
            &label,
            format!("nats://127.0.0.1:{port}"),
            Raw::Core,
            stream(r),
        ));
        labels.push(label);
    }
    lag_run(topo, &raws, &labels, n, pace, "floor").await
}

async fn part_lag(
    topo: &LocalTopology,
    sidecars: &BTreeMap<String, InProc>,
    floor: Option<&LagRun>,
    report: &mut String,
) -> Result<(), String> {
    let n = env_usize("BENCH_LAG_EVENTS", 500);
    let pace = Duration::from_micros(env_usize("BENCH_LAG_PACE_US", 2000) as u64);
    let raws = start_raws(topo);
    let mut receivers: Vec<String> = sidecars.keys().cloned().collect();
    receivers.extend(raw_labels());
    let run = lag_run(topo, &raws, &receivers, n, pace, "lag").await?;
    drop(raws);

    let _ = writeln!(
        report,
        "\n== 1. propagation lag: {n} events per origin, one every {pace:?}, published \
         through JetStream ({:.1} s; CPU busy {:.0}% system-wide; load avg {})",
        run.took.as_secs_f64(),
        run.cpu_busy * 100.0,
        loadavg()
    );
    if let Some(f) = floor {
        let _ = writeln!(
            report,
            "   floor run before any sidecar started (raw receivers alone, same pacing): CPU \
             busy {:.0}%; shown as 'alone' columns",
            f.cpu_busy * 100.0
        );
    }
    let _ = writeln!(
        report,
        "   lag = receiver has it (sidecar: inserted into its revoked set) - just before the \
         publish call; ms"
    );
    let _ = writeln!(
        report,
        "   receivers per region: 2 in-process sidecars (each on its own thread + current-thread \
         runtime), a raw core subscriber and a raw JetStream ordered consumer ({} sidecars in all)",
        sidecars.len()
    );
    let mut worst_ratio = [0f64; 2];
    let mut worst_p99 = [0f64; 2];
    let modes = [
        (
            0,
            "fast",
            "core",
            1000.0,
            "(a) fast path (default config) vs raw core-NATS subscriber; target ratio <= 1.5, p99 <= 1 ms",
        ),
        (
            1,
            "durable",
            "js",
            5000.0,
            "(b) durable only (fast_path = false) vs raw JetStream ordered consumer; target ratio <= 1.5, p99 <= 5 ms",
        ),
    ];
    for (mode, veto_kind, raw_kind, target_p99, title) in modes {
        let _ = writeln!(report, "\n   {title}");
        let _ = writeln!(
            report,
            "   {:<14} {:>5} | {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>5} {:>5} {:>5} | p99 target",
            "origin->at",
            "n",
            "alone50",
            "p99",
            "raw p50",
            "p99",
            "max",
            "veto50",
            "p99",
            "max",
            "x p50",
            "x p99",
            "x max",
        );
        let mut rows: Vec<(String, Option<&str>, Option<&str>, String)> = Vec::new();
        for origin in REGIONS {
            for at in REGIONS {
                rows.push((
                    format!("{origin}->{at}"),
                    Some(origin),
                    None,
                    at.to_string(),
                ));
            }
        }
        for at in REGIONS {
            rows.push((format!("x-reg ->{at}"), None, Some(at), at.to_string()));
        }
        for (name, origin, cross, at) in rows {
            let raw_label = format!("raw/{at}/{raw_kind}");
            let (raw, expected) = run.lags(&raw_label, origin, cross);
            let (vt, _) = run.lags(&format!("sc/{at}/{veto_kind}"), origin, cross);
            let alone = floor
                .and_then(|f| f.lags(&raw_label, origin, cross).0)
                .map(|a| format!("{:>7} {:>7}", ms(a.p50), ms(a.p99)))
                .unwrap_or_else(|| format!("{:>7} {:>7}", "-", "-"));
            let (Some(raw), Some(vt)) = (raw, vt) else {
                let _ = writeln!(report, "   {name:<12} no data");
                continue;
            };
            let ok = vt.p99 <= target_p99;
            if cross.is_some() {
                worst_ratio[mode] = worst_ratio[mode].max(vt.p99 / raw.p99);
                worst_p99[mode] = worst_p99[mode].max(vt.p99);
            }
            let missing = if vt.n < expected || raw.n < expected {
                format!(
                    "  (missing: veto {}, raw {})",
                    expected - vt.n,
                    expected - raw.n
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                report,
                "   {name:<14} {:>5} | {alone} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>5.2} {:>5.2} {:>5.2} | {}{missing}",
                vt.n,
                ms(raw.p50),
                ms(raw.p99),
                ms(raw.max),
                ms(vt.p50),
                ms(vt.p99),
                ms(vt.max),
                vt.p50 / raw.p50,
                vt.p99 / raw.p99,
                vt.max / raw.max,
                verdict(ok),
            );
        }
        let _ = writeln!(
            report,
            "   cross-region worst: p99 {} ms ({}), p99 ratio {:.2} ({})",
            ms(worst_p99[mode]),
            verdict(worst_p99[mode] <= target_p99),
            worst_ratio[mode],
            verdict(worst_ratio[mode] <= 1.5)
        );
    }
    if let Some(f) = floor {
        let _ = writeln!(
            report,
            "\n   where the fast path subscribes (floor run, raw core subscribers, cross-region \
             events): at the JetStream leaf (as sidecars do) vs at the region's hub"
        );
        for at in REGIONS {
            let (leaf, _) = f.lags(&format!("raw/{at}/core"), None, Some(at));
            let (hub, _) = f.lags(&format!("raw/{at}/hub"), None, Some(at));
            if let (Some(l), Some(h)) = (leaf, hub) {
                let _ = writeln!(
                    report,
                    "   x-reg ->{at:<6} leaf p50 {} p99 {} max {} | hub p50 {} p99 {} max {} ms",
                    ms(l.p50),
                    ms(l.p99),
                    ms(l.max),
                    ms(h.p50),
                    ms(h.p99),
                    ms(h.max)
                );
            }
        }
    }
    let _ = writeln!(
        report,
        "\n   first application by path (fast-path sidecars):"
    );
    for (who, paths) in &run.first_path {
        if who.ends_with("/fast") {
            let _ = writeln!(report, "     {who:<16} {paths:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part 2: partition catch-up.

struct Round {
    cut: &'static str,
    origin: &'static str,
}

async fn part_partition(
    topo: &mut LocalTopology,
    sidecars: &BTreeMap<String, InProc>,
    report: &mut String,
) -> Result<(), String> {
    let n = env_usize("BENCH_PARTITION_EVENTS", 100_000);
    let inflight = env_usize("BENCH_INFLIGHT", 1000);
    let rounds = [
        Round {
            cut: "eu",
            origin: "us",
        },
        Round {
            cut: "us",
            origin: "eu",
        },
        Round {
            cut: "ap",
            origin: "us",
        },
        // the cut-off region is the origin: the others catch up with it
        Round {
            cut: "eu",
            origin: "eu",
        },
    ];
    let _ = writeln!(
        report,
        "\n== 2. catch-up after a partition: {n} revocations published while one hub is down; \
         time from heal (hub process restarted) until the cut-off side holds them all \
         (target <= 2 s)"
    );
    let _ = writeln!(
        report,
        "   'catch-up' = sidecar with fast path and catch-up reader (catchup_after default 3s);\n   \
         'sourcing' = durable-only sidecar with catchup_after = 1h (stream sourcing alone)"
    );
    let mut clients = BTreeMap::new();
    for r in REGIONS {
        clients.insert(r, topo.client(r).await);
    }
    let part_start = Instant::now();
    let mut markers: Vec<(Instant, String)> = Vec::new();
    for (k, round) in rounds.iter().enumerate() {
        let receivers: Vec<&str> = if round.cut == round.origin {
            REGIONS
                .iter()
                .copied()
                .filter(|r| *r != round.cut)
                .collect()
        } else {
            vec![round.cut]
        };
        let js_of = |r: &str| jetstream::new(clients[r].clone());
        let origin_js = js_of(round.origin);
        let origin_before = stream_messages(&origin_js, &stream(round.origin))
            .await
            .ok_or("origin stream info")?;
        let mut stream_before = BTreeMap::new();
        for r in &receivers {
            stream_before.insert(
                *r,
                stream_messages(&js_of(r), &stream(r))
                    .await
                    .ok_or("stream info")?,
            );
        }
        let watched: Vec<&InProc> = receivers
            .iter()
            .flat_map(|r| {
                [
                    &sidecars[&format!("sc/{r}/fast")],
                    &sidecars[&format!("sc/{r}/durable")],
                ]
            })
            .collect();
        let len_before: Vec<usize> = watched.iter().map(|s| s.revoked.len()).collect();

        // cut
        let cut_at = Instant::now();
        markers.push((cut_at, format!("round {}: {}-hub killed", k + 1, round.cut)));
        topo.kill(&format!("{}-hub", round.cut));
        let (took, ok, failed) = publish_bulk(
            &origin_js,
            round.origin,
            &format!("p{k}-{}", round.origin),
            n,
            inflight,
            Duration::from_secs(60),
        )
        .await;
        let origin_after = stream_messages(&origin_js, &stream(round.origin))
            .await
            .ok_or("origin stream info")?;
        let delta = (origin_after - origin_before) as usize;
        // keep the partition long enough that the source is seen lagging (catchup_after 3s
        // + the reader's 200 ms poll)
        let min_cut = Duration::from_secs(5);
        if cut_at.elapsed() < min_cut {
            tokio::time::sleep(min_cut - cut_at.elapsed()).await;
        }
        let partition = cut_at.elapsed();
        hook::STATE.counts.lock().clear();
        hook::STATE.mode.store(hook::COUNT, Ordering::Relaxed);

        // A link probe: a responder on a receiving side, a requester on the other side.
        let probe_subject = format!("bench.probe.{k}");
        let responder = {
            let c = clients[receivers[0]].clone();
            let mut sub = c
                .subscribe(probe_subject.clone())
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(reply) = m.reply {
                        let _ = c.publish(reply, "pong".into()).await;
                    }
                }
            })
        };
        let requester_region = if round.cut == round.origin {
            round.origin
        } else {
            REGIONS
                .iter()
                .copied()
                .find(|r| *r != round.cut)
                .unwrap_or("us")
        };

        // heal
        let cpu = CpuSample::now();
        let healed = Instant::now();
        markers.push((
            healed,
            format!("round {}: {}-hub restarted", k + 1, round.cut),
        ));
        topo.start_server(&format!("{}-hub", round.cut));
        let prober = {
            let c = clients[requester_region].clone();
            let subject = probe_subject.clone();
            tokio::spawn(async move {
                while healed.elapsed() < Duration::from_secs(30) {
                    let r = tokio::time::timeout(
                        Duration::from_millis(100),
                        c.request(subject.clone(), "ping".into()),
                    )
                    .await;
                    if matches!(r, Ok(Ok(_))) {
                        return Some(healed.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            })
        };
        let mut done: Vec<Option<Duration>> = vec![None; watched.len()];
        let mut stream_done: BTreeMap<&str, Option<Duration>> =
            receivers.iter().map(|r| (*r, None)).collect();
        let mut last_stream_poll = Instant::now() - Duration::from_secs(1);
        let limit = Duration::from_secs(30);
        while healed.elapsed() < limit {
            for (i, s) in watched.iter().enumerate() {
                if done[i].is_none() && s.revoked.len() >= len_before[i] + delta {
                    done[i] = Some(healed.elapsed());
                }
            }
            if last_stream_poll.elapsed() >= Duration::from_millis(25) {
                last_stream_poll = Instant::now();
                for r in &receivers {
                    if stream_done[r].is_none() {
                        if let Some(m) = stream_messages(&js_of(r), &stream(r)).await {
                            if m >= stream_before[r] + delta as u64 {
                                stream_done.insert(r, Some(healed.elapsed()));
                            }
                        }
                    }
                }
            }
            if done.iter().all(Option::is_some) && stream_done.values().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let heal_cpu = cpu.busy();
        let link = prober.await.ok().flatten();
        responder.abort();
        hook::STATE.mode.store(hook::OFF, Ordering::Relaxed);

        let _ = writeln!(
            report,
            "\n   round {}: cut {} (hub killed), {} published in {} ({:.1} s, {:.0}/s, acked {ok}, \
             failed {failed}, stored {delta}); partition {:.1} s; load avg {}",
            k + 1,
            round.cut,
            n,
            round.origin,
            took.as_secs_f64(),
            ok as f64 / took.as_secs_f64(),
            partition.as_secs_f64(),
            loadavg()
        );
        let _ = writeln!(
            report,
            "     CPU busy after heal {:.0}% system-wide; heal -> link back ({requester_region} -> {} \
             core request answered): {}",
            heal_cpu * 100.0,
            receivers[0],
            secs(link)
        );
        for r in &receivers {
            let _ = writeln!(
                report,
                "     heal -> {r}'s stream holds all {delta} (sourcing): {}",
                secs(stream_done[r])
            );
        }
        let counts: Vec<((String, String), hook::Tally)> = hook::STATE
            .counts
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        for (i, s) in watched.iter().enumerate() {
            let kind = if s.label.ends_with("/fast") {
                "catch-up"
            } else {
                "sourcing"
            };
            let t = done[i];
            let got = s.revoked.len() - len_before[i];
            let paths: Vec<String> = counts
                .iter()
                .filter(|((who, _), _)| *who == s.label)
                .map(|((_, p), t)| {
                    format!(
                        "{p} {} ({:.3}-{:.3} s)",
                        t.count,
                        t.first.saturating_duration_since(healed).as_secs_f64(),
                        t.last.saturating_duration_since(healed).as_secs_f64()
                    )
                })
                .collect();
            let _ = writeln!(
                report,
                "     heal -> {:<16} [{kind}] holds all: {:>9}  {}  ({got}/{delta}; applied by \
                 path: {})",
                s.label,
                secs(t),
                if kind == "catch-up" {
                    verdict(t.is_some_and(|t| t <= Duration::from_secs(2)))
                } else {
                    "(reference)"
                },
                paths.join(", ")
            );
        }
        let names: Vec<String> = watched.iter().map(|s| s.label.clone()).collect();
        // The catch-up readers' own account (info and debug lines), repeated lines folded.
        let heal_off = healed.duration_since(cut_at).as_secs_f64();
        let mut folded: Vec<(f64, f64, String, usize)> = Vec::new();
        for (at, line) in hook::lines(cut_at, &names, "veto::feed::catchup") {
            let t = at.as_secs_f64() - heal_off;
            match folded.iter_mut().find(|(_, _, l, _)| *l == line) {
                Some(f) => {
                    f.1 = t;
                    f.3 += 1;
                }
                None => folded.push((t, t, line, 1)),
            }
        }
        for (first, last, line, count) in folded.iter().take(12) {
            let times = if *count > 1 {
                format!("{first:+.3}..{last:+.3} s, x{count}")
            } else {
                format!("{first:+.3} s")
            };
            let _ = writeln!(report, "       catch-up log ({times} from heal) {line}");
        }

        // settle before the next round: every sidecar holds everything, links are up
        let settle = Instant::now();
        let all: Vec<&InProc> = sidecars.values().collect();
        let want: Vec<usize> = all
            .iter()
            .map(|s| {
                if receivers
                    .iter()
                    .any(|r| s.label.starts_with(&format!("sc/{r}/")))
                {
                    let i = watched.iter().position(|w| w.label == s.label).unwrap_or(0);
                    len_before[i] + delta
                } else {
                    0
                }
            })
            .collect();
        while settle.elapsed() < Duration::from_secs(20)
            && all.iter().zip(&want).any(|(s, w)| s.revoked.len() < *w)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        topo.wait_linked(Duration::from_secs(20)).await;
    }
    // Every catch-up reader's start/stop over the whole part, with the cuts and heals.
    let all: Vec<String> = sidecars.keys().cloned().collect();
    let mut timeline: Vec<(Duration, String)> = markers
        .into_iter()
        .map(|(at, m)| (at.duration_since(part_start), format!("---- {m}")))
        .collect();
    timeline.extend(
        hook::lines(part_start, &all, "veto::feed::catchup")
            .into_iter()
            .filter(|(_, l)| !l.contains("DEBUG")),
    );
    timeline.sort_by_key(|(at, _)| *at);
    let _ = writeln!(report, "\n   catch-up readers, all sidecars (info lines):");
    for (at, line) in timeline.iter().take(60) {
        let _ = writeln!(report, "     {:>8.3} s  {line}", at.as_secs_f64());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Part 3: replay of 1M events.

struct Proc {
    child: Child,
    http: u16,
    dir: tempfile::TempDir,
}

impl Proc {
    fn spawn_sidecar(config: &str) -> Proc {
        let dir = tempfile::tempdir().expect("tempdir");
        let (grpc, http) = (free_port(), free_port());
        let path = dir.path().join("veto.toml");
        std::fs::write(
            &path,
            format!(
                "[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n{config}"
            ),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("veto.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_veto"))
            .args(["sidecar", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start veto");
        Proc { child, http, dir }
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let get = |k: &str| {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        Some((get("VmRSS:")?, get("VmHWM:")?))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("veto.log")).unwrap_or_default()
    }

    async fn ready(&self, http: &reqwest::Client) -> bool {
        http.get(format!("http://127.0.0.1:{}/readyz", self.http))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    async fn metrics(&self, http: &reqwest::Client) -> String {
        match http
            .get(format!("http://127.0.0.1:{}/metrics", self.http))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

async fn part_replay(issuer: &Issuer, report: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_REPLAY_EVENTS", 1_000_000);
    let inflight = env_usize("BENCH_INFLIGHT", 1000);
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let name = stream("us");
    let regions = vec!["us".to_string()];
    let plan = veto::provision::Plan::new(
        topology_support::STREAM_BASE,
        "us",
        &regions,
        Duration::from_secs(3600),
    )
    .map_err(|e| e.to_string())?;
    veto::provision::provision(&js, &plan)
        .await
        .map_err(|e| e.to_string())?;
    let config = sidecar_toml(issuer, &nats.url(), "us", &["us"], true, None);
    let http = reqwest::Client::new();

    let _ = writeln!(
        report,
        "\n== 3. replay of {n} events into a fresh sidecar (one nats-server; target start -> \
         ready <= 3 s)"
    );
    // An idle sidecar on the empty stream: the memory baseline.
    let empty_rss = {
        let p = Proc::spawn_sidecar(&config);
        let start = Instant::now();
        while !p.ready(&http).await && start.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready = start.elapsed();
        let rss = p.rss();
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
    let p = Proc::spawn_sidecar(&config);
    let start = Instant::now();
    let listening = wait_port(p.http, Duration::from_secs(10)).then(|| start.elapsed());
    let rss_listen = p.rss();
    let mut ready = None;
    // Progress watch (veto_feed_last_sequence every 250 ms): the longest stretch without
    // progress, so a stalled replay is reported as such rather than as slow.
    let mut stall = Stall::default();
    let mut last_metrics = Instant::now();
    while start.elapsed() < Duration::from_secs(45) {
        if p.ready(&http).await {
            ready = Some(start.elapsed());
            break;
        }
        if last_metrics.elapsed() >= Duration::from_millis(250) {
            last_metrics = Instant::now();
            let m = p.metrics(&http).await;
            if let Some(seq) = metric(&m, "veto_feed_last_sequence") {
                stall.observe(seq as u64, start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let veto_cpu = cpu.busy();
    let rss_ready = p.rss();
    tokio::time::sleep(Duration::from_millis(1200)).await; // one housekeeping tick
    let m = p.metrics(&http).await;
    let rss_settled = p.rss();
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
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("revocation applied"))
            .rev()
            .take(20)
            .collect();
        let _ = writeln!(
            report,
            "           sidecar log (last lines, per-event debug lines left out):"
        );
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
            Metrics::register(&prometheus::Registry::new()),
        );
        let readiness = Readiness::default();
        readiness.register(feed::COMPONENT, "replaying");
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
            readiness: readiness.clone(),
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
            Metrics::register(&prometheus::Registry::new()),
        );
        let now = veto::now_ms();
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

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run scripts/bench-propagation.sh"]
async fn propagation_benchmark() {
    hook::install();
    let begin = Instant::now();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "veto propagation benchmark — {} CPUs, load avg at start {}, nats-server {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        Command::new(
            std::env::var("VETO_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
        )
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
            let js = jetstream::new(topo.client(r).await);
            beat_tasks.push(tokio::spawn(veto::bus::publish::heartbeats(
                js,
                r.to_string(),
                Duration::from_secs(1),
                beats.clone(),
            )));
        }
        let floor = if wants("lag") {
            match lag_floor(&topo).await {
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
                InProc::start(&fast, &sidecar_toml(&issuer, &url, r, &REGIONS, true, None)),
            );
            sidecars.insert(
                durable.clone(),
                InProc::start(
                    &durable,
                    &sidecar_toml(&issuer, &url, r, &REGIONS, false, Some("1h")),
                ),
            );
        }
        wait_all_ready(
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
            if let Err(e) = part_lag(&topo, &sidecars, floor.as_ref(), &mut report).await {
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
            if let Err(e) = part_partition(&mut topo, &sidecars, &mut report).await {
                let _ = writeln!(report, "\n== 2. partition: FAILED: {e}");
            }
            print!("{}", &report[before..]);
            let _ = writeln!(
                report,
                "   (part 2 took {:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
        let (n, shown) = hook::warnings(begin, 12);
        let _ = writeln!(
            report,
            "   sidecar warnings/errors logged during parts 1-2: {n}{}",
            if n > 0 { " (first ones below)" } else { "" }
        );
        for l in shown {
            let _ = writeln!(report, "     {l}");
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
        if let Err(e) = part_replay(&issuer, &mut report).await {
            let _ = writeln!(report, "\n== 3. replay: FAILED: {e}");
        }
        print!("{}", &report[before..]);
        let _ = writeln!(
            report,
            "   (part 3 took {:.1} s)",
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
