//! Part 1: propagation lag, sidecars against raw NATS receivers on the same subjects.

use crate::arrivals::{self, STATE};
use crate::inproc::{on_own_thread, InProc};
use crate::topology_support::{stream, LocalTopology};
use crate::{env_usize, event, loadavg, ms, verdict, CpuSample, REGIONS};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use veto::bus::names::{parse, Subject, FAST_PATH_SUBJECT};
use veto::bus::publish::send_event;

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
        let thread = on_own_thread(label, move || async move {
            let client = async_nats::connect(url).await.expect("raw connect");
            let record = |subject: &str| {
                let at = Instant::now();
                if let Some(Subject::Event { id, .. }) = parse(subject) {
                    rec.lock().push((at, id.to_string()));
                }
            };
            match kind {
                Raw::Core => {
                    let mut sub = client
                        .subscribe(FAST_PATH_SUBJECT)
                        .await
                        .expect("subscribe");
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

/// First time each receiver (label) had each event id.
fn first_seen(raws: &[RawReceiver]) -> HashMap<String, HashMap<String, Instant>> {
    let mut out: HashMap<String, HashMap<String, Instant>> = HashMap::new();
    for r in raws {
        let m = out.entry(r.label.clone()).or_default();
        for (at, id) in r.records.lock().iter() {
            m.entry(id.clone()).or_insert(*at);
        }
    }
    for a in STATE.applied.lock().iter() {
        out.entry(a.who.clone())
            .or_default()
            .entry(a.event_id.clone())
            .or_insert(a.at);
    }
    out
}

/// One measured lag run: what was published when, and when each receiver had it.
pub struct LagRun {
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
        let (v, expected) = self.samples(label, origin, not_from);
        (pct(v), expected)
    }

    /// The lags behind [`LagRun::lags`], unsorted, and how many were expected.
    fn samples(
        &self,
        label: &str,
        origin: Option<&str>,
        not_from: Option<&str>,
    ) -> (Vec<f64>, usize) {
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
        (v, wanted().count())
    }

    /// Every cross-region lag at receivers `<region>/<kind>` pooled over the three regions
    /// (`sc/{r}/fast`, `raw/{r}/core`, ...), and how many were expected.
    fn cross_region(&self, kind: &str) -> (Option<Pct>, usize) {
        let (mut all, mut expected) = (Vec::new(), 0);
        for at in REGIONS {
            let (v, e) = self.samples(&kind.replace("{r}", at), None, Some(at));
            all.extend(v);
            expected += e;
        }
        (pct(all), expected)
    }

    /// Events per second each origin actually published at (first to last publish call),
    /// the median over the origins.
    fn achieved_rate(&self) -> f64 {
        let mut rates: Vec<f64> = REGIONS
            .iter()
            .filter_map(|r| {
                let ats: Vec<Instant> = (self.published.values())
                    .filter(|(o, _)| o == r)
                    .map(|(_, at)| *at)
                    .collect();
                let (first, last) = (ats.iter().min()?, ats.iter().max()?);
                let span = last.duration_since(*first).as_secs_f64();
                (ats.len() > 1 && span > 0.0).then(|| (ats.len() - 1) as f64 / span)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
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
    STATE.applied.lock().clear();
    arrivals::set_mode(arrivals::RECORD);
    let warm = Instant::now();
    let mut round = 0;
    loop {
        let mut ids = Vec::new();
        for (r, js) in &publishers {
            for i in 0..10 {
                let id = format!("{tag}w{round}-{r}-{i}");
                if let Ok(f) = send_event(js, &event(r, &id, veto::now_us())).await {
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
            arrivals::set_mode(arrivals::OFF);
            return Err(format!("warm-up: {missing:?} never saw every event"));
        }
    }
    STATE.applied.lock().clear();
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
            let ev = event(origin, &id, veto::now_us());
            let at = Instant::now();
            if let Ok(f) = send_event(js, &ev).await {
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
    arrivals::set_mode(arrivals::OFF);
    let seen = first_seen(raws);
    let mut first_path: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for a in STATE.applied.lock().iter() {
        if published.contains_key(&a.event_id) {
            *first_path
                .entry(a.who.clone())
                .or_default()
                .entry(a.path.to_string())
                .or_default() += 1;
        }
    }
    STATE.applied.lock().clear();
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
pub async fn floor(topo: &LocalTopology) -> Result<LagRun, String> {
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

pub async fn part(
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
    // One machine-readable line per mode for scripts/curves.sh: every cross-region event
    // pooled over the regions, veto and its raw baseline from this run.
    for (mode, veto, raw) in [
        ("fast", "sc/{r}/fast", "raw/{r}/core"),
        ("durable", "sc/{r}/durable", "raw/{r}/js"),
    ] {
        if let ((Some(v), expected), (Some(r), _)) = (run.cross_region(veto), run.cross_region(raw))
        {
            let _ = writeln!(
                report,
                "curve: lag mode={mode} target_per_s={:.0} achieved_per_s={:.0} expected={expected} \
                 n={} raw_p50_ms={} raw_p99_ms={} veto_p50_ms={} veto_p99_ms={} veto_max_ms={}",
                1e6 / pace.as_micros().max(1) as f64,
                run.achieved_rate(),
                v.n,
                ms(r.p50),
                ms(r.p99),
                ms(v.p50),
                ms(v.p99),
                ms(v.max),
            );
        }
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
