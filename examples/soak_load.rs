//! The load side of `scripts/soak.sh` (issue 12 §4): an open-loop HTTP/1.1 load generator
//! through Envoy, a revocation publisher, a per-minute sampler of the sidecar, and the
//! verdict, the CSV and the SVG at the end. Also the do-nothing upstream the soak's Envoy
//! routes allowed requests to.
//!
//! ```text
//! soak_load upstream 127.0.0.1:PORT         # answers every request `200 ok`
//! soak_load run --url http://127.0.0.1:ENVOY/ --key DIR/<kid>.<alg>.der --iss I --aud A \
//!     --nats nats://127.0.0.1:N --region R --sidecar-pid P --metrics http://127.0.0.1:H/metrics \
//!     --out DIR [--rate 10000] [--minutes 60] [--revocations-per-second 100] ...
//! soak_load forged --grpc http://127.0.0.1:GRPC --key DIR/<kid>.<alg>.der --iss I --aud A \
//!     --sidecar-pid P --forged-rate 10000 [--valid-rate 1000] [--duration 10s]
//! ```
//!
//! `forged` (scripts/bench-envoy.sh FORGED_RATES=, for scripts/curves.sh): valid-token
//! latency while unique forged tokens arrive at a fixed rate, and the sidecar's CPU; see
//! [`ForgedArgs`].
//!
//! Open loop: a pacer thread schedules request k at `start + k / rate` whatever the answers
//! do, and a request's latency is measured from that scheduled instant (so a stall of Envoy
//! or veto shows as latency of every request that should have been sent meanwhile, not as a
//! pause of the generator: no coordinated omission). Requests wait in one queue for the
//! first free keep-alive connection of a fixed pool. If the backlog passes 2 s worth of
//! requests, the pacer stops enqueueing and counts the requests it skipped as `missed`; the
//! achieved rate is what completed.
//!
//! The mix: one repeat token, a pool of distinct valid tokens (re-minted before they expire,
//! as clients rotate them), and tokens whose session was revoked (minted for a share of the
//! published revocations, used from 0.5 s after the stream acknowledged the revocation until
//! 5 s before they expire): a revoked token must be answered 401 `"reason":"revoked"`, a
//! valid one 200; anything else, a connection error or a 2 s timeout is an error.
//!
//! Revocations: session revocations of random ids at `--revocations-per-second`, each held
//! for `--revocation-ttl` (a revocation lives until the revoked token's expiry), so the
//! revoked set grows for one TTL and then plateaus at rate × TTL (plus up to one prune
//! interval of expired entries not yet pruned).

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use parking_lot::{Mutex, RwLock};
use rand::Rng as _;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veto::revocation::{Kind, RevocationEvent};
use veto::token::sign::SigningKey;
use veto::token::Alg;

#[derive(Parser)]
#[command(about = "Soak load generator for scripts/soak.sh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A do-nothing HTTP/1.1 upstream: `200 ok` to every request.
    Upstream { listen: SocketAddr },
    /// The soak: load, revocations, per-minute samples, verdict.
    Run(Box<RunArgs>),
    /// Revocations only (scripts/bench-envoy.sh HELD=/REVOKE_RATE=): `--count` session
    /// revocations as fast as the stream acknowledges them (`--in-flight` at a time), then
    /// `--rate` a second until killed; prints `held N` once the first part is acknowledged.
    Revocations(RevocationArgs),
    /// A flood of unique forged tokens next to a valid-token probe, straight to the
    /// sidecar's gRPC ext_authz port (scripts/curves.sh, issue 13 §5); see [`ForgedArgs`].
    Forged(ForgedArgs),
}

/// Open loop, both streams paced on their own threads: `--valid-rate` checks a second of one
/// valid token (answered from the verified-token cache), each timed from its scheduled
/// instant, and `--forged-rate` checks a second of forged tokens: well formed, the key's
/// `kid` and `alg`, claims unique per token (so no cache answers them), and a random
/// signature, so each costs the sidecar a signature check before its `bad_signature` 401 —
/// or, when the sidecar's verify pool is full, an `UNAVAILABLE` without one (`forged_shed`).
/// Both share `--connections` HTTP/2 connections, as Envoy's workers share theirs. Warm-up
/// first (not counted), then `--duration` measured; the sidecar's CPU (utime + stime of
/// `--sidecar-pid`) is read at both ends of the measured part, after its last answers.
/// Prints one line, `FORGED key=value ...`.
#[derive(clap::Args)]
struct ForgedArgs {
    /// The sidecar's gRPC listener, `http://HOST:PORT`.
    #[arg(long)]
    grpc: String,
    #[command(flatten)]
    issuing: Issuing,
    #[arg(long, default_value_t = 1000.0)]
    valid_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    forged_rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Forged checks outstanding at most; a forged check due beyond it is not sent (counted
    /// as `forged_skipped`), as Envoy's default circuit breaker (1024 requests to a cluster)
    /// would not send it, so an overloaded sidecar is not buried under a growing backlog.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: u64,
    /// A check not answered within this is an error (Envoy's ext_authz timeout in
    /// deploy/envoy/envoy-sidecar.yaml.tmpl); its latency counts as the time it waited.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long)]
    sidecar_pid: u32,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

#[derive(clap::Args)]
struct RevocationArgs {
    #[arg(long)]
    nats: String,
    #[arg(long)]
    region: String,
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// After `--count`: revocations per second until killed (0: exit).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Envoy's listener, `http://HOST:PORT/`.
    #[arg(long)]
    url: String,
    #[command(flatten)]
    issuing: Issuing,
    #[arg(long)]
    nats: String,
    #[arg(long)]
    region: String,
    /// The region's JetStream domain, if the server has one.
    #[arg(long)]
    domain: Option<String>,
    #[arg(long)]
    sidecar_pid: u32,
    #[arg(long)]
    envoy_pid: Option<u32>,
    /// The sidecar's `/metrics` URL.
    #[arg(long)]
    metrics: String,
    #[arg(long)]
    out: PathBuf,
    /// Checks per second (scheduled, open loop).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    #[arg(long, default_value_t = 60)]
    minutes: u32,
    /// Seconds per sample row (60: one a minute; shorter only to try the tool).
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// Load before the first sample, not recorded.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, default_value_t = 100.0)]
    revocations_per_second: f64,
    /// How long each revocation is held (the revoked token's remaining lifetime).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    revocation_ttl: Duration,
    /// The sidecar's `revocation.prune_interval` (for the expected plateau).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    prune_interval: Duration,
    /// Lifetime of the valid tokens (re-minted 2 min before they expire).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// Keep-alive connections to Envoy.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Distinct valid tokens (besides the repeat token).
    #[arg(long, default_value_t = 1000)]
    distinct_tokens: usize,
    /// Percent of checks with a distinct token, and with a revoked token; the rest use the
    /// repeat token.
    #[arg(long, default_value_t = 49)]
    distinct_percent: u32,
    #[arg(long, default_value_t = 1)]
    revoked_percent: u32,
    /// One published revocation in this many gets a token minted for it (the revoked pool).
    #[arg(long, default_value_t = 10)]
    mint_every: u64,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Targets: RSS growth beyond the revoked set's own (MiB/hour), p99 last/first quarter.
    #[arg(long, default_value_t = 1.0)]
    max_unexplained_mib_per_hour: f64,
    #[arg(long, default_value_t = 1.5)]
    max_p99_ratio: f64,
    /// Achieved/target rate below which the run does not count as "at the rate".
    #[arg(long, default_value_t = 0.98)]
    min_rate_ratio: f64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Upstream { listen } => rt.block_on(upstream(listen)),
        Cmd::Revocations(a) => rt.block_on(revocations(a)),
        Cmd::Forged(a) => rt.block_on(forged(a)),
        Cmd::Run(a) => {
            let pass = rt.block_on(run(*a))?;
            std::process::exit(if pass { 0 } else { 1 });
        }
    }
}

// --- the do-nothing upstream ------------------------------------------------------------

async fn upstream(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    println!("listening on {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            const OK: &[u8] =
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
            loop {
                match s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // GETs without a body: one answer per complete head.
                let mut answers = 0;
                while let Some(end) = find(&buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    answers += 1;
                }
                for _ in 0..answers {
                    if s.write_all(OK).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// --- a log-linear latency histogram (HDR-style: ~1.6% precision, 1 us .. 2^40 us) --------

const SUB: u64 = 64;

#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; (2 * SUB + 40 * SUB) as usize],
            n: 0,
            max: 0,
        }
    }
    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as u64 - 6; // v >> e in [64, 128)
        (2 * SUB + (e - 1) * SUB + ((v >> e) - SUB)) as usize
    }
    /// The highest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let e = (i - 2 * SUB) / SUB + 1;
        let m = (i - 2 * SUB) % SUB + SUB;
        ((m + 1) << e) - 1
    }
    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.n += 1;
        self.max = self.max.max(us);
    }
    fn add(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }
    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

// --- shared state -------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Pick {
    Repeat,
    Distinct,
    Revoked,
}

struct Item {
    scheduled: Instant,
    pick: Pick,
}

struct Minute {
    hist: Hist,
    completed: u64,
    revoked_refused: u64,
    errors: BTreeMap<String, u64>,
}

impl Minute {
    fn new() -> Minute {
        Minute {
            hist: Hist::new(),
            completed: 0,
            revoked_refused: 0,
            errors: BTreeMap::new(),
        }
    }
}

struct RevokedToken {
    token: Arc<str>,
    usable_from_ms: i64,
    exp_ms: i64,
}

/// How the load tools mint tokens: `--key`, `--iss`, `--aud`.
#[derive(clap::Args)]
struct Issuing {
    /// Signing key `<kid>.<alg>.der` (`veto keys generate`).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    iss: String,
    #[arg(long)]
    aud: String,
}

/// [`Issuing`] with its key loaded.
struct Minter {
    key: SigningKey,
    iss: String,
    aud: String,
}

impl Issuing {
    fn minter(&self) -> anyhow::Result<Minter> {
        Ok(Minter {
            key: signing_key(&self.key)?,
            iss: self.iss.clone(),
            aud: self.aud.clone(),
        })
    }
}

impl Minter {
    /// The claims of a token of `sub`/`sid` issued now (Unix seconds) and expiring at `exp_s`.
    fn claims(&self, sub: &str, sid: &str, now_s: i64, exp_s: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": self.iss, "aud": self.aud, "sub": sub, "sid": sid, "jti": random_id(),
            "iat": now_s, "exp": exp_s,
        })
    }
}

struct Tokens {
    minter: Minter,
    repeat: RwLock<(Arc<str>, i64)>,
    distinct: RwLock<Vec<(Arc<str>, i64)>>,
    revoked: Mutex<VecDeque<RevokedToken>>,
}

fn random_id() -> String {
    let v: u128 = rand::rng().random();
    format!("{v:032x}")
}

impl Tokens {
    /// A token of `sid` expiring at `exp_s` (Unix seconds).
    fn mint(&self, sub: &str, sid: &str, exp_s: i64) -> Arc<str> {
        let m = &self.minter;
        let claims = m.claims(sub, sid, veto::now_ms() / 1000, exp_s);
        m.key.sign(&claims).expect("sign").into()
    }

    /// Re-mints every valid token expiring within 2 minutes (a client rotating its token).
    fn refresh(&self, ttl: Duration) -> usize {
        let now_ms = veto::now_ms();
        let exp = |_: ()| (now_ms + ttl.as_millis() as i64) / 1000;
        let due = |e: i64| e * 1000 - now_ms < 120_000;
        let mut n = 0;
        if due(self.repeat.read().1) {
            *self.repeat.write() = (self.mint("soak-user-0", "soak-session-0", exp(())), exp(()));
            n += 1;
        }
        let stale: Vec<usize> = (self.distinct.read().iter().enumerate())
            .filter(|(_, (_, e))| due(*e))
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            let t = self.mint(
                &format!("soak-user-{}", i + 1),
                &format!("soak-session-{}", i + 1),
                exp(()),
            );
            self.distinct.write()[i] = (t, exp(()));
            n += 1;
        }
        n
    }

    fn pick(&self, p: Pick) -> Option<(Arc<str>, bool)> {
        match p {
            Pick::Repeat => Some((self.repeat.read().0.clone(), false)),
            Pick::Distinct => {
                let d = self.distinct.read();
                let i = rand::rng().random_range(0..d.len());
                Some((d[i].0.clone(), false))
            }
            Pick::Revoked => {
                let now = veto::now_ms();
                let mut q = self.revoked.lock();
                while q.front().is_some_and(|t| t.exp_ms - now < 5_000) {
                    q.pop_front();
                }
                if q.is_empty() {
                    return None;
                }
                let i = rand::rng().random_range(0..q.len());
                let t = if q[i].usable_from_ms <= now {
                    &q[i]
                } else {
                    &q[0]
                };
                (t.usable_from_ms <= now).then(|| (t.token.clone(), true))
            }
        }
    }
}

struct Shared {
    tokens: Tokens,
    minute: Mutex<Minute>,
    enqueued: AtomicU64,
    done: AtomicU64,
    missed: AtomicU64,
    published: AtomicU64,
    publish_errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn error(&self, what: &str) {
        *self
            .minute
            .lock()
            .errors
            .entry(what.to_string())
            .or_default() += 1;
    }
}

// --- the HTTP/1.1 client ------------------------------------------------------------------

/// Reads one response: (status, body mentions "revoked", server closes).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool, bool)> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed");
    let head_end = loop {
        if let Some(e) = find(buf, b"\r\n\r\n") {
            break e + 4;
        }
        if s.read_buf(buf).await? == 0 {
            return Err(eof());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .unwrap_or("")
        .to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let close = header("connection:").is_some_and(|v| v == "close");
    let total = if let Some(len) = header("content-length:") {
        head_end + len.parse::<usize>().unwrap_or(0)
    } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            if let Some(e) = find(&buf[head_end..], b"0\r\n\r\n") {
                break head_end + e + 5;
            }
            if s.read_buf(buf).await? == 0 {
                return Err(eof());
            }
        }
    } else {
        head_end
    };
    while buf.len() < total {
        if s.read_buf(buf).await? == 0 {
            return Err(eof());
        }
    }
    let revoked = find(&buf[head_end..total], b"\"revoked\"").is_some();
    buf.drain(..total);
    Ok((status, revoked, close))
}

async fn connection(
    addr: SocketAddr,
    queue: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Item>>>,
    sh: Arc<Shared>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut req = Vec::with_capacity(1024);
    loop {
        let item = {
            let mut q = queue.lock().await;
            match q.recv().await {
                Some(i) => i,
                None => return,
            }
        };
        let (token, revoked) = sh
            .tokens
            .pick(item.pick)
            .or_else(|| sh.tokens.pick(Pick::Distinct))
            .expect("a token");
        req.clear();
        req.extend_from_slice(b"GET /soak HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer ");
        req.extend_from_slice(token.as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            if conn.is_none() {
                let s = TcpStream::connect(addr).await.map_err(|e| ("connect", e))?;
                let _ = s.set_nodelay(true);
                buf.clear();
                conn = Some(s);
            }
            let s = conn.as_mut().expect("connected");
            s.write_all(&req).await.map_err(|e| ("write", e))?;
            read_response(s, &mut buf).await.map_err(|e| ("read", e))
        })
        .await;
        let latency_us = item.scheduled.elapsed().as_micros() as u64;
        sh.done.fetch_add(1, Relaxed);
        if sh.stop.load(Relaxed) {
            continue;
        }
        let verdict: Result<bool, String> = match attempt {
            Err(_) => {
                conn = None;
                Err("timeout_2s".into())
            }
            Ok(Err((what, _))) => {
                conn = None;
                Err(format!("{what}_error"))
            }
            Ok(Ok((status, body_revoked, close))) => {
                if close {
                    conn = None;
                }
                match (revoked, status, body_revoked) {
                    (false, 200, _) => Ok(false),
                    (true, 401, true) => Ok(true),
                    (true, 200, _) => Err("revoked_token_allowed".into()),
                    (true, s, _) => Err(format!("revoked_token_status_{s}")),
                    (false, s, _) => Err(format!("valid_token_status_{s}")),
                }
            }
        };
        let mut m = sh.minute.lock();
        m.hist.record(latency_us);
        m.completed += 1;
        match verdict {
            Ok(true) => m.revoked_refused += 1,
            Ok(false) => {}
            Err(e) => *m.errors.entry(e).or_default() += 1,
        }
    }
}

/// The pacer: request k at `start + k / rate` until `end`, on its own thread (nanosleep,
/// not the runtime's 1 ms timer wheel).
struct Pace {
    rate: f64,
    connections: usize,
    distinct_percent: u64,
    revoked_percent: u64,
}

fn pacer(
    tx: tokio::sync::mpsc::UnboundedSender<Item>,
    sh: Arc<Shared>,
    p: Pace,
    start: Instant,
    end: Instant,
) {
    let backlog_cap = (p.rate * 2.0) as u64 + p.connections as u64;
    let (d, r) = (p.distinct_percent, p.revoked_percent);
    paced(p.rate, start, end, |k, t| {
        // a fixed, interleaved mix: in every 100 requests r revoked, d distinct
        let slot = (k * 37) % 100;
        let pick = if slot < r {
            Pick::Revoked
        } else if slot < r + d {
            Pick::Distinct
        } else {
            Pick::Repeat
        };
        let enq = sh.enqueued.load(Relaxed);
        if enq - sh.done.load(Relaxed) > backlog_cap {
            sh.missed.fetch_add(1, Relaxed);
            return true;
        }
        sh.enqueued.store(enq + 1, Relaxed);
        tx.send(Item { scheduled: t, pick }).is_ok()
    });
}

/// Calls `due(k, t)` for k = 0, 1, ... at t = `start` + k / `rate` (on time or late, never
/// early) until `end`, or until it returns false; on the calling thread (nanosleep, not the
/// runtime's 1 ms timer wheel).
fn paced(rate: f64, start: Instant, end: Instant, mut due: impl FnMut(u64, Instant) -> bool) {
    let period = 1.0 / rate;
    let at = |k: u64| start + Duration::from_secs_f64(k as f64 * period);
    let mut k: u64 = 0;
    loop {
        if at(k) >= end {
            return;
        }
        let now = Instant::now();
        if at(k) > now {
            std::thread::sleep(at(k) - now);
        }
        let now = Instant::now();
        while at(k) <= now && at(k) < end {
            if !due(k, at(k)) {
                return;
            }
            k += 1;
        }
    }
}

// --- the revocation publisher -------------------------------------------------------------

async fn publisher(
    js: async_nats::jetstream::Context,
    sh: Arc<Shared>,
    region: String,
    rate: f64,
    ttl: Duration,
    mint_every: u64,
) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n: u64 = 0;
    while !sh.stop.load(Relaxed) {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while n < due {
            n += 1;
            let id = format!("soak-rev-{n}-{}", &random_id()[..8]);
            let now = veto::now_ms();
            // the revoked token expires with its revocation (whole seconds, JWT exp)
            let exp_s = (now + ttl.as_millis() as i64) / 1000;
            let mut ev = RevocationEvent::new(random_id(), Kind::Session, &id, &region, now, ttl);
            ev.expires_at = exp_s * 1000;
            ev.reason = "soak".into();
            match veto::bus::publish_event(&js, &ev, Duration::from_secs(2)).await {
                Ok(_) => {
                    sh.published.fetch_add(1, Relaxed);
                    if n.is_multiple_of(mint_every) {
                        let token = sh.tokens.mint("soak-revoked-user", &id, exp_s);
                        sh.tokens.revoked.lock().push_back(RevokedToken {
                            token,
                            usable_from_ms: veto::now_ms() + 500,
                            exp_ms: exp_s * 1000,
                        });
                    }
                }
                Err(e) => {
                    if sh.publish_errors.fetch_add(1, Relaxed) < 5 {
                        eprintln!("soak: publish failed: {e}");
                    }
                    sh.error("revocation_publish");
                }
            }
        }
    }
}

/// `soak_load revocations`: a bulk part, then a steady rate (see [`Cmd::Revocations`]).
async fn revocations(a: RevocationArgs) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let client = async_nats::connect(&a.nats)
        .await
        .context("connect to NATS")?;
    let js = veto::bus::jetstream(client, a.domain.as_deref());
    let event = |n: u64| {
        let mut ev = RevocationEvent::new(
            random_id(),
            Kind::Session,
            format!("bench-held-{n}-{}", &random_id()[..8]),
            &a.region,
            veto::now_ms(),
            a.ttl,
        );
        ev.reason = "bench".into();
        ev
    };
    let start = Instant::now();
    let failed = futures::stream::iter(1..=a.count)
        .map(|n| {
            let (js, ev) = (js.clone(), event(n));
            async move { veto::bus::publish_event(&js, &ev, Duration::from_secs(10)).await }
        })
        .buffer_unordered(a.in_flight.max(1))
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    if failed > 0 {
        bail!("{failed} of {} revocations were not acknowledged", a.count);
    }
    println!(
        "held {} ({:.1} s, {:.0}/s)",
        a.count,
        start.elapsed().as_secs_f64(),
        a.count as f64 / start.elapsed().as_secs_f64().max(1e-9)
    );
    if a.rate <= 0.0 {
        return Ok(());
    }
    let (start, mut n) = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * a.rate) as u64;
        while n < due {
            n += 1;
            if let Err(e) =
                veto::bus::publish_event(&js, &event(a.count + n), Duration::from_secs(2)).await
            {
                eprintln!("soak_load revocations: publish failed: {e}");
            }
        }
    }
}

/// The key of `--key DIR/<kid>.<alg>.der`.
fn signing_key(path: &std::path::Path) -> anyhow::Result<SigningKey> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut parts = name.rsplitn(3, '.');
    let (_, alg, kid) = (parts.next(), parts.next(), parts.next());
    let (Some(alg), Some(kid)) = (alg.and_then(Alg::parse), kid) else {
        bail!("--key: expected <kid>.<alg>.der");
    };
    Ok(SigningKey::from_pkcs8(alg, kid, &std::fs::read(path)?)?)
}

// --- the forged-token flood ---------------------------------------------------------------

/// What one stream of [`forged`] counts, from its measured part only.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    skipped: AtomicU64,
    /// Answered as expected: OK for the valid token, a `bad_signature` deny for a forged one.
    expected: AtomicU64,
    /// A forged token the sidecar shed unverified (`UNAVAILABLE`: its verify pool was full,
    /// `[verify]`); for the valid token that is an error.
    shed: AtomicU64,
    /// Any other answer, a failed call or no answer within `--timeout`.
    errors: AtomicU64,
    in_flight: AtomicU64,
    hist: Mutex<Option<Hist>>,
}

/// An Envoy-like CheckRequest for `GET /` with `authorization: Bearer <token>`.
fn check_request(token: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let headers = [
        (":authority", "bench"),
        (":method", "GET"),
        (":path", "/"),
        ("authorization", &*format!("Bearer {token}")),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    host: "bench".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `soak_load forged` (see [`ForgedArgs`]).
async fn forged(a: ForgedArgs) -> anyhow::Result<()> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
    use tonic::transport::Channel;

    // shared by the clones of `forge`, one per connection
    let minter = Arc::new(a.issuing.minter()?);
    let now = veto::now_ms() / 1000;
    let valid = minter
        .key
        .sign(&minter.claims("curves-user", "curves-session", now, now + 600))?;
    // the valid token's header, and claims that differ in every forged token
    let header = valid.split('.').next().unwrap_or_default().to_string();
    let forge = move |k: u64| {
        let b64 = veto::token::b64();
        let id = format!("forged-{k}");
        let claims = minter.claims(&id, &id, now, now + 600);
        let sig: [u8; 64] = rand::rng().random();
        format!(
            "{header}.{}.{}",
            base64::Engine::encode(b64, claims.to_string()),
            base64::Engine::encode(b64, sig)
        )
    };
    let mut clients = Vec::new();
    for _ in 0..a.connections.max(1) {
        let ch = Channel::from_shared(a.grpc.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connect to {}", a.grpc))?;
        clients.push(AuthorizationClient::new(ch));
    }
    // sanity: the valid token is allowed, a forged one refused as bad_signature
    let verdict = |r: Result<tonic::Response<CheckResponse>, tonic::Status>| -> Option<bool> {
        let r = r.ok()?.into_inner();
        match (r.status.map(|s| s.code), r.http_response) {
            (Some(0), Some(HttpResponse::OkResponse(_))) => Some(true),
            (Some(16), Some(HttpResponse::DeniedResponse(d))) => {
                d.body.contains("bad_signature").then_some(false)
            }
            _ => None,
        }
    };
    let c = &mut clients[0];
    if verdict(c.check(check_request(&valid)).await) != Some(true) {
        bail!("the valid token was not allowed");
    }
    if verdict(c.check(check_request(&forge(u64::MAX))).await) != Some(false) {
        bail!("a forged token was not refused as bad_signature");
    }

    let start = Instant::now() + Duration::from_millis(20);
    let measured = start + a.warmup;
    let end = measured + a.duration;
    let streams = [(true, a.valid_rate), (false, a.forged_rate)];
    let timeout = a.timeout;
    let tallies: [Arc<Tally>; 2] = Default::default();
    let mut pacers = Vec::new();
    for ((is_valid, rate), tally) in streams.into_iter().zip(tallies.iter().cloned()) {
        if rate <= 0.0 {
            continue;
        }
        *tally.hist.lock() = Some(Hist::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let cap = if is_valid { u64::MAX } else { a.max_in_flight };
        let t = tally.clone();
        pacers.push(std::thread::spawn(move || {
            paced(rate, start, end, |k, at| {
                if t.in_flight.load(Relaxed) >= cap {
                    if at >= measured {
                        t.skipped.fetch_add(1, Relaxed);
                    }
                    return true;
                }
                t.in_flight.fetch_add(1, Relaxed);
                tx.send((k, at)).is_ok()
            })
        }));
        let (clients, valid, forge) = (clients.clone(), valid.clone(), forge.clone());
        tokio::spawn(async move {
            while let Some((k, at)) = rx.recv().await {
                let mut c = clients[k as usize % clients.len()].clone();
                let req = check_request(&if is_valid { valid.clone() } else { forge(k) });
                let (t, verdict) = (tally.clone(), verdict);
                tokio::spawn(async move {
                    let r = tokio::time::timeout(timeout, c.check(req)).await;
                    let shed = !is_valid
                        && matches!(&r, Ok(Err(s)) if s.code() == tonic::Code::Unavailable);
                    let ok = r.ok().and_then(verdict) == Some(is_valid);
                    t.in_flight.fetch_sub(1, Relaxed);
                    if at < measured {
                        return;
                    }
                    t.sent.fetch_add(1, Relaxed);
                    if ok {
                        t.expected.fetch_add(1, Relaxed);
                    } else if shed {
                        t.shed.fetch_add(1, Relaxed);
                    } else {
                        t.errors.fetch_add(1, Relaxed);
                    }
                    if let Some(h) = t.hist.lock().as_mut() {
                        h.record(at.elapsed().as_micros() as u64);
                    }
                });
            }
        });
    }
    let sidecar = a.sidecar_pid.to_string();
    tokio::time::sleep_until(measured.into()).await;
    let cpu0 = (Instant::now(), cpu_ticks(&sidecar), cpu_ticks("self"));
    tokio::time::sleep_until(end.into()).await;
    // the last answers (bounded)
    let drained = Instant::now() + Duration::from_secs(5);
    while tallies.iter().any(|t| t.in_flight.load(Relaxed) > 0) && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu1 = (Instant::now(), cpu_ticks(&sidecar), cpu_ticks("self"));
    for p in pacers {
        let _ = p.join();
    }
    let secs = a.duration.as_secs_f64();
    let tick_s = 1.0 / a.clk_tck as f64;
    let mut line = format!(
        "FORGED seconds={secs:.3} wall_s={:.3} sidecar_cpu_s={:.3} loadgen_cpu_s={:.3} load1={:.2}",
        (cpu1.0 - cpu0.0).as_secs_f64(),
        (cpu1.1 - cpu0.1) as f64 * tick_s,
        (cpu1.2 - cpu0.2) as f64 * tick_s,
        load1()
    );
    for ((name, rate), t) in [("valid", a.valid_rate), ("forged", a.forged_rate)]
        .into_iter()
        .zip(&tallies)
    {
        let h = t.hist.lock().take().unwrap_or_else(Hist::new);
        let _ = write!(
            line,
            " {name}_target_per_s={rate:.0} {name}_per_s={:.0} {name}_sent={} {name}_skipped={} \
             {name}_expected={} {name}_shed={} {name}_errors={} {name}_p50_us={} {name}_p99_us={} \
             {name}_max_us={}",
            t.sent.load(Relaxed) as f64 / secs,
            t.sent.load(Relaxed),
            t.skipped.load(Relaxed),
            t.expected.load(Relaxed),
            t.shed.load(Relaxed),
            t.errors.load(Relaxed),
            h.quantile(0.50),
            h.quantile(0.99),
            h.max,
        );
    }
    println!("{line}");
    Ok(())
}

// --- samples ------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let g = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    g(11) + g(12)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// (revocations held, all kinds; table bytes)
async fn revocation_metrics(http: &reqwest::Client, url: &str) -> (u64, u64) {
    let Ok(r) = http.get(url).timeout(Duration::from_secs(5)).send().await else {
        return (0, 0);
    };
    let text = r.text().await.unwrap_or_default();
    let (mut held, mut bytes) = (0.0, 0.0);
    for l in text.lines() {
        let v = || {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if l.starts_with("veto_revocations_held{") || l.starts_with("veto_revocations_held ") {
            held += v();
        } else if l.starts_with("veto_revocations_table_bytes ") {
            bytes = v();
        }
    }
    (held as u64, bytes as u64)
}

struct Row {
    minute: u32,
    elapsed_s: f64,
    scheduled: u64,
    completed: u64,
    achieved_rps: f64,
    missed: u64,
    errors: u64,
    error_kinds: String,
    revoked_refused: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    rss_kib: u64,
    sidecar_cpu_us_per_check: f64,
    envoy_cpu_us_per_check: f64,
    generator_cpu_pct: f64,
    revocations_published: u64,
    held: u64,
    expected_held: u64,
    table_bytes: u64,
    load1: f64,
}

const CSV_HEADER: &str = "minute,elapsed_s,scheduled,completed,achieved_rps,missed,errors,revoked_refused,p50_us,p99_us,p999_us,max_us,rss_kib,sidecar_cpu_us_per_check,envoy_cpu_us_per_check,generator_cpu_pct,revocations_published,revocations_held,expected_held,table_bytes,load1,error_kinds";

impl Row {
    /// The sample at the start of the measurement.
    fn start(rss_kib: u64, table_bytes: u64) -> Row {
        Row {
            minute: 0,
            elapsed_s: 0.0,
            scheduled: 0,
            completed: 0,
            achieved_rps: 0.0,
            missed: 0,
            errors: 0,
            error_kinds: String::new(),
            revoked_refused: 0,
            p50_us: 0,
            p99_us: 0,
            p999_us: 0,
            max_us: 0,
            rss_kib,
            sidecar_cpu_us_per_check: 0.0,
            envoy_cpu_us_per_check: 0.0,
            generator_cpu_pct: 0.0,
            revocations_published: 0,
            held: 0,
            expected_held: 0,
            table_bytes,
            load1: 0.0,
        }
    }

    fn csv(&self) -> String {
        format!(
            "{},{:.1},{},{},{:.0},{},{},{},{},{},{},{},{},{:.1},{:.1},{:.1},{},{},{},{},{:.2},{}",
            self.minute,
            self.elapsed_s,
            self.scheduled,
            self.completed,
            self.achieved_rps,
            self.missed,
            self.errors,
            self.revoked_refused,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.rss_kib,
            self.sidecar_cpu_us_per_check,
            self.envoy_cpu_us_per_check,
            self.generator_cpu_pct,
            self.revocations_published,
            self.held,
            self.expected_held,
            self.table_bytes,
            self.load1,
            self.error_kinds
        )
    }
}

// --- the run ------------------------------------------------------------------------------

async fn run(a: RunArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&a.out)?;
    let addr: SocketAddr = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("--url: http://IP:PORT/")?;
    let minter = a.issuing.minter()?;

    let exp = (veto::now_ms() + a.token_ttl.as_millis() as i64) / 1000;
    let tokens = Tokens {
        minter,
        repeat: RwLock::new(("".into(), 0)),
        distinct: RwLock::new(Vec::new()),
        revoked: Mutex::new(VecDeque::new()),
    };
    *tokens.repeat.write() = (tokens.mint("soak-user-0", "soak-session-0", exp), exp);
    let distinct: Vec<_> = (1..=a.distinct_tokens.max(1))
        .map(|i| {
            let t = tokens.mint(&format!("soak-user-{i}"), &format!("soak-session-{i}"), exp);
            (t, exp)
        })
        .collect();
    *tokens.distinct.write() = distinct;

    let sh = Arc::new(Shared {
        tokens,
        minute: Mutex::new(Minute::new()),
        enqueued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        missed: AtomicU64::new(0),
        published: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // sanity: one valid check through Envoy
    {
        let mut s = TcpStream::connect(addr).await.context("connect to Envoy")?;
        let t = sh.tokens.repeat.read().0.clone();
        s.write_all(
            format!("GET /soak HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {t}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let (status, _, _) = read_response(&mut s, &mut Vec::new()).await?;
        if status != 200 {
            bail!("a valid token through Envoy got HTTP {status}, not 200");
        }
    }

    let client = async_nats::connect(&a.nats)
        .await
        .context("connect to NATS")?;
    let js = veto::bus::jetstream(client, a.domain.as_deref());
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(veto::bus::publish::heartbeats(
        js.clone(),
        a.region.clone(),
        Duration::from_secs(1),
        cancel.clone(),
    ));
    let publisher_start = Instant::now();
    tokio::spawn(publisher(
        js,
        sh.clone(),
        a.region.clone(),
        a.revocations_per_second,
        a.revocation_ttl,
        a.mint_every.max(1),
    ));
    {
        let sh = sh.clone();
        let ttl = a.token_ttl;
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(10));
            loop {
                t.tick().await;
                let sh = sh.clone();
                let _ = tokio::task::spawn_blocking(move || sh.tokens.refresh(ttl)).await;
            }
        });
    }

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let queue = Arc::new(tokio::sync::Mutex::new(rx));
    let mut conns = Vec::new();
    for _ in 0..a.connections.max(1) {
        conns.push(tokio::spawn(connection(addr, queue.clone(), sh.clone())));
    }
    let sample = Duration::from_secs(a.sample_seconds.max(1));
    let load_start = Instant::now() + Duration::from_millis(50);
    let measure_start = load_start + a.warmup;
    let end = measure_start + sample * a.minutes;
    let pacer_thread = {
        let sh = sh.clone();
        let p = Pace {
            rate: a.rate,
            connections: a.connections,
            distinct_percent: a.distinct_percent as u64,
            revoked_percent: a.revoked_percent as u64,
        };
        std::thread::spawn(move || pacer(tx, sh, p, load_start, end))
    };

    println!(
        "soak: {} checks/s scheduled over {} connections ({}% distinct of {} tokens, {}% revoked, rest one repeat token), {} revocations/s held {}; {} x {}s after a {}s warm-up",
        a.rate,
        a.connections,
        a.distinct_percent,
        a.distinct_tokens,
        a.revoked_percent,
        a.revocations_per_second,
        humantime::format_duration(a.revocation_ttl),
        a.minutes,
        sample.as_secs(),
        a.warmup.as_secs()
    );
    let http = reqwest::Client::new();
    let sidecar = a.sidecar_pid.to_string();
    let envoy = a.envoy_pid.map(|p| p.to_string());
    tokio::time::sleep_until(measure_start.into()).await;
    *sh.minute.lock() = Minute::new();
    let mut last = (
        Instant::now(),
        cpu_ticks(&sidecar),
        envoy.as_deref().map_or(0, cpu_ticks),
        cpu_ticks("self"),
        sh.enqueued.load(Relaxed) + sh.missed.load(Relaxed),
        sh.missed.load(Relaxed),
        sh.published.load(Relaxed),
    );
    let base_rss = rss_kib(a.sidecar_pid);
    let (base_held, base_bytes) = revocation_metrics(&http, &a.metrics).await;
    println!(
        "soak: at the start (after warm-up): sidecar RSS {:.1} MiB, {base_held} revocations held, tables {:.2} MiB",
        base_rss as f64 / 1024.0,
        base_bytes as f64 / 1048576.0
    );
    let mut csv = std::fs::File::create(a.out.join("minutes.csv"))?;
    writeln!(csv, "{CSV_HEADER}")?;
    writeln!(
        csv,
        "0,0.0,0,0,0,0,0,0,0,0,0,0,{base_rss},0,0,0,0,{base_held},{},{base_bytes},{:.2},",
        expected_held(&a, publisher_start.elapsed()),
        load1()
    )?;
    println!(
        "  {:>3} {:>8} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
        "min",
        "req/s",
        "missed",
        "errors",
        "p50_us",
        "p99_us",
        "max_us",
        "RSS_MiB",
        "held",
        "expected",
        "table_MiB",
        "veto_us",
        "envoy_us",
        "load1"
    );
    let mut rows = Vec::new();
    let mut hists = Vec::new();
    let mut fail_early = false;
    for minute in 1..=a.minutes {
        tokio::time::sleep_until((measure_start + sample * minute).into()).await;
        let m = std::mem::replace(&mut *sh.minute.lock(), Minute::new());
        let now = Instant::now();
        let (c_side, c_env, c_self) = (
            cpu_ticks(&sidecar),
            envoy.as_deref().map_or(0, cpu_ticks),
            cpu_ticks("self"),
        );
        let sched = sh.enqueued.load(Relaxed) + sh.missed.load(Relaxed);
        let missed = sh.missed.load(Relaxed);
        let published = sh.published.load(Relaxed);
        let (held, table_bytes) = revocation_metrics(&http, &a.metrics).await;
        let secs = now.duration_since(last.0).as_secs_f64();
        let tick_us = 1e6 / a.clk_tck as f64;
        let per_check = |d: u64| d as f64 * tick_us / (m.completed.max(1) as f64);
        let errors: u64 = m.errors.values().sum();
        let row = Row {
            minute,
            elapsed_s: now.duration_since(measure_start).as_secs_f64(),
            scheduled: sched - last.4,
            completed: m.completed,
            achieved_rps: m.completed as f64 / secs,
            missed: missed - last.5,
            errors,
            error_kinds: m
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            revoked_refused: m.revoked_refused,
            p50_us: m.hist.quantile(0.5),
            p99_us: m.hist.quantile(0.99),
            p999_us: m.hist.quantile(0.999),
            max_us: m.hist.max,
            rss_kib: rss_kib(a.sidecar_pid),
            sidecar_cpu_us_per_check: per_check(c_side - last.1),
            envoy_cpu_us_per_check: per_check(c_env - last.2),
            generator_cpu_pct: (c_self - last.3) as f64 * tick_us / (secs * 1e6) * 100.0,
            revocations_published: published - last.6,
            held,
            expected_held: expected_held(&a, publisher_start.elapsed()),
            table_bytes,
            load1: load1(),
        };
        last = (now, c_side, c_env, c_self, sched, missed, published);
        println!(
            "  {:>3} {:>8.0} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8.1} {:>9} {:>9} {:>9.2} {:>8.1} {:>8.1} {:>6.2}{}",
            row.minute,
            row.achieved_rps,
            row.missed,
            row.errors,
            row.p50_us,
            row.p99_us,
            row.max_us,
            row.rss_kib as f64 / 1024.0,
            row.held,
            row.expected_held,
            row.table_bytes as f64 / 1048576.0,
            row.sidecar_cpu_us_per_check,
            row.envoy_cpu_us_per_check,
            row.load1,
            if row.error_kinds.is_empty() { String::new() } else { format!("  [{}]", row.error_kinds) }
        );
        writeln!(csv, "{}", row.csv())?;
        csv.flush()?;
        if rss_kib(a.sidecar_pid) == 0 {
            eprintln!("soak: the sidecar (pid {}) is gone", a.sidecar_pid);
            fail_early = true;
        }
        rows.push(row);
        hists.push(m.hist);
        if fail_early {
            break;
        }
    }
    sh.stop.store(true, Relaxed);
    cancel.cancel();
    let _ = pacer_thread.join();
    let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(conns)).await;

    let (summary, pass) = verdict(
        &a,
        &rows,
        &hists,
        base_rss,
        base_bytes,
        sh.tokens.revoked.lock().len(),
    );
    print!("{summary}");
    std::fs::write(a.out.join("summary.txt"), &summary)?;
    std::fs::write(a.out.join("soak.svg"), svg(&a, &rows, base_rss, base_bytes))?;
    println!(
        "soak: wrote {0}/minutes.csv, {0}/summary.txt, {0}/soak.svg",
        a.out.display()
    );
    Ok(pass && !fail_early)
}

/// Live revocations expected `since` the publisher started: rate × min(since, TTL) (expired
/// entries linger up to one prune interval more).
fn expected_held(a: &RunArgs, since: Duration) -> u64 {
    (a.revocations_per_second * since.min(a.revocation_ttl).as_secs_f64()) as u64
}

/// Samples per window of the RSS envelope (one a minute: five minutes).
const ENVELOPE_WINDOW: usize = 5;

/// Each window of `w` consecutive points as (its last x, its largest y); a last, shorter
/// window counts only with at least two points.
fn envelope(p: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    p.chunks(w.max(1))
        .filter(|c| c.len() >= w.min(2))
        .map(|c| {
            let x = c.last().map_or(0.0, |q| q.0);
            (x, c.iter().map(|q| q.1).fold(f64::MIN, f64::max))
        })
        .collect()
}

/// Least-squares slope of (x, y).
fn slope(p: &[(f64, f64)]) -> f64 {
    let n = p.len() as f64;
    if p.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        p.iter().map(|q| q.0).sum::<f64>() / n,
        p.iter().map(|q| q.1).sum::<f64>() / n,
    );
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn verdict(
    a: &RunArgs,
    rows: &[Row],
    hists: &[Hist],
    base_rss: u64,
    base_bytes: u64,
    revoked_pool: usize,
) -> (String, bool) {
    let mut s = String::new();
    if rows.is_empty() {
        return ("soak: no samples\n".into(), false);
    }
    let mib = |kib: f64| kib / 1024.0;
    // Plateau: one TTL + one prune interval after the publisher started (it started with
    // the warm-up).
    let plateau_s = (a.revocation_ttl + a.prune_interval).as_secs_f64() - a.warmup.as_secs_f64();
    // Samples taken once the set has plateaued; else every sample, the start's included.
    let base = Row::start(base_rss, base_bytes);
    let after: Vec<&Row> = rows.iter().filter(|r| r.elapsed_s >= plateau_s).collect();
    let plateau = after.len() >= 3;
    let used: Vec<&Row> = if plateau {
        after
    } else {
        std::iter::once(&base).chain(rows).collect()
    };
    let hours = |r: &Row| r.elapsed_s / 3600.0;
    let rss: Vec<(f64, f64)> = used
        .iter()
        .map(|r| (hours(r), mib(r.rss_kib as f64)))
        .collect();
    // Judged on the upper envelope, the slope of each window's maximum: the allocator can
    // sit in either of two states a MiB apart from one minute to the next (the one-hour run
    // did, until minute 38), which tilts a least-squares line through the samples by which
    // state the samples happen to land in, while a leak raises every window's maximum.
    // (a run too short for three windows is judged through every sample)
    let raw_rss_slope = slope(&rss);
    let windows = envelope(&rss, ENVELOPE_WINDOW);
    let rss_slope = if windows.len() >= 3 {
        slope(&windows)
    } else {
        raw_rss_slope
    };
    let table_slope = slope(
        &used
            .iter()
            .map(|r| (hours(r), r.table_bytes as f64 / 1048576.0))
            .collect::<Vec<_>>(),
    );
    // The set's own growth: its entries' (held slope x table bytes per entry held at the
    // end). Tables growing faster than their entries (churn at a flat count) is not "the set's
    // own entries", and counts against the target like any other RSS growth.
    let held_slope = slope(
        &used
            .iter()
            .map(|r| (hours(r), r.held as f64))
            .collect::<Vec<_>>(),
    );
    let last_row = rows.last().expect("rows");
    let per_entry = last_row.table_bytes as f64 / last_row.held.max(1) as f64;
    let entries_slope = held_slope * per_entry / 1048576.0;
    let unexplained = rss_slope - entries_slope;
    let mem_ok = plateau && unexplained <= a.max_unexplained_mib_per_hour;

    let last = rows.last().expect("rows");
    let completed: u64 = rows.iter().map(|r| r.completed).sum();
    let scheduled: u64 = rows.iter().map(|r| r.scheduled).sum();
    let missed: u64 = rows.iter().map(|r| r.missed).sum();
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    let refused: u64 = rows.iter().map(|r| r.revoked_refused).sum();
    let secs = last.elapsed_s;
    let achieved = completed as f64 / secs;
    let rate_ok = achieved >= a.rate * a.min_rate_ratio;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows {
        for kv in r.error_kinds.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                *kinds.entry(k).or_default() += v.parse::<u64>().unwrap_or(0);
            }
        }
    }

    let q = rows.len().div_ceil(4);
    let merge = |hs: &[Hist]| {
        let mut h = Hist::new();
        hs.iter().for_each(|x| h.add(x));
        h
    };
    let (first, lastq, all) = (
        merge(&hists[..q]),
        merge(&hists[hists.len() - q..]),
        merge(hists),
    );
    let p99_ratio = lastq.quantile(0.99) as f64 / first.quantile(0.99).max(1) as f64;
    let p99_ok = p99_ratio <= a.max_p99_ratio;

    let plateau_entries = (a.revocations_per_second * a.revocation_ttl.as_secs_f64()) as u64;
    let held_cap = (a.revocations_per_second
        * (a.revocation_ttl + a.prune_interval).as_secs_f64()
        * 1.05) as u64
        + 100;
    let held_ok =
        last.held <= held_cap && (!plateau || last.held as f64 >= plateau_entries as f64 * 0.9);
    let errors_ok = errors == 0 && refused > 0;
    let mark = |ok: bool| if ok { "PASS" } else { "FAIL" };

    let _ = writeln!(
        s,
        "==> soak summary: {} sample(s) of {} s",
        rows.len(),
        a.sample_seconds
    );
    let _ = writeln!(
        s,
        "    rate: {achieved:.0} checks/s achieved of {:.0} scheduled ({scheduled} scheduled, {completed} completed, {missed} missed by the generator's 2 s backlog cap) -> {} (>= {:.0}%)",
        a.rate,
        mark(rate_ok),
        a.min_rate_ratio * 100.0
    );
    let _ = writeln!(
        s,
        "    latency (from the scheduled send time): p50 {} us, p99 {} us, p99.9 {} us, max {} us over the run",
        all.quantile(0.5),
        all.quantile(0.99),
        all.quantile(0.999),
        all.max
    );
    let _ = writeln!(
        s,
        "    p99 first quarter ({q} sample(s)) {} us, last quarter {} us: ratio {p99_ratio:.2} -> {} (<= {})",
        first.quantile(0.99),
        lastq.quantile(0.99),
        mark(p99_ok),
        a.max_p99_ratio
    );
    let _ = writeln!(
        s,
        "    errors: {errors}{}; revoked tokens refused: {refused} (pool {revoked_pool}) -> {}",
        if kinds.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                kinds
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        mark(errors_ok)
    );
    let _ = writeln!(
        s,
        "    revoked set: {} held at the end (plateau {plateau_entries} = {}/s x {}, up to {} with one prune interval of expired entries), tables {:.2} MiB -> {}",
        last.held,
        a.revocations_per_second,
        humantime::format_duration(a.revocation_ttl),
        held_cap,
        last.table_bytes as f64 / 1048576.0,
        mark(held_ok)
    );
    let _ = writeln!(
        s,
        "    RSS: {:.1} MiB at the start, {:.1} MiB at the end ({:+.1} MiB; the tables {:+.2} MiB)",
        mib(base_rss as f64),
        mib(last.rss_kib as f64),
        mib(last.rss_kib as f64 - base_rss as f64),
        (last.table_bytes as f64 - base_bytes as f64) / 1048576.0
    );
    let _ = writeln!(
        s,
        "    RSS slope {rss_slope:+.2} MiB/h (of the maxima of {} window(s) of {ENVELOPE_WINDOW} samples; through every sample {raw_rss_slope:+.2}) over {} sample(s){}; the set's entries {held_slope:+.0}/h x {per_entry:.0} B = {entries_slope:+.2} MiB/h (tables {table_slope:+.2} MiB/h): beyond the set's own entries {unexplained:+.2} MiB/h -> {} (<= {} MiB/h)",
        windows.len(),
        used.len(),
        if plateau {
            " after the plateau".to_string()
        } else {
            format!(
                " (PLATEAU NOT REACHED: it needs 3 samples from {:.0} s on; this slope is over every sample and includes the set's growth)",
                plateau_s.max(0.0)
            )
        },
        if plateau {
            mark(mem_ok)
        } else {
            "INCONCLUSIVE"
        },
        a.max_unexplained_mib_per_hour
    );
    let cpu: f64 = rows
        .iter()
        .map(|r| r.sidecar_cpu_us_per_check * r.completed as f64)
        .sum::<f64>()
        / completed.max(1) as f64;
    let ecpu: f64 = rows
        .iter()
        .map(|r| r.envoy_cpu_us_per_check * r.completed as f64)
        .sum::<f64>()
        / completed.max(1) as f64;
    let gen: f64 = rows.iter().map(|r| r.generator_cpu_pct).sum::<f64>() / rows.len() as f64;
    let la: f64 = rows.iter().map(|r| r.load1).sum::<f64>() / rows.len() as f64;
    let _ = writeln!(
        s,
        "    CPU per check: sidecar {cpu:.1} us, Envoy {ecpu:.1} us (the generator used {gen:.0}% of a core); mean load average {la:.2} on {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let pass = rate_ok && p99_ok && errors_ok && held_ok && mem_ok;
    let others = rate_ok && p99_ok && errors_ok && held_ok;
    let _ = writeln!(
        s,
        "==> soak: {}",
        match (pass, others && !plateau) {
            (true, _) => "PASS",
            (false, true) => "INCONCLUSIVE (every other target met; too short to judge memory)",
            _ => "FAIL",
        }
    );
    (s, pass)
}

// --- the plot -----------------------------------------------------------------------------

/// A panel: its title and (label, colour, points) per series.
type Panel<'a> = (&'a str, Vec<(&'a str, &'a str, &'a [(f64, f64)])>);

/// Three stacked panels over minutes: RSS and table MiB; held vs expected; p50/p99 ms.
fn svg(a: &RunArgs, rows: &[Row], base_rss: u64, base_bytes: u64) -> String {
    let x_of = |r: &Row| r.elapsed_s / 60.0;
    let mut pts0 = vec![(0.0, base_rss as f64 / 1024.0)];
    pts0.extend(rows.iter().map(|r| (x_of(r), r.rss_kib as f64 / 1024.0)));
    let mut tb = vec![(0.0, base_bytes as f64 / 1048576.0)];
    tb.extend(
        rows.iter()
            .map(|r| (x_of(r), r.table_bytes as f64 / 1048576.0)),
    );
    let held: Vec<_> = rows.iter().map(|r| (x_of(r), r.held as f64)).collect();
    let exp: Vec<_> = rows
        .iter()
        .map(|r| (x_of(r), r.expected_held as f64))
        .collect();
    let p50: Vec<_> = rows
        .iter()
        .map(|r| (x_of(r), r.p50_us as f64 / 1000.0))
        .collect();
    let p99: Vec<_> = rows
        .iter()
        .map(|r| (x_of(r), r.p99_us as f64 / 1000.0))
        .collect();
    let xmax = rows.iter().map(x_of).fold(1.0, f64::max);
    let panels: [Panel; 3] = [
        (
            "sidecar memory, MiB",
            vec![
                ("RSS", "#d62728", &pts0),
                ("revoked-set tables", "#1f77b4", &tb),
            ],
        ),
        (
            "revocations held",
            vec![
                ("held", "#2ca02c", &held),
                ("expected (rate x min(t, TTL))", "#7f7f7f", &exp),
            ],
        ),
        (
            "latency from scheduled send, ms",
            vec![("p99", "#ff7f0e", &p99), ("p50", "#9467bd", &p50)],
        ),
    ];
    let (w, ph, left, right, top, gap) = (900.0, 200.0, 80.0, 230.0, 50.0, 50.0);
    let pw = w - left - right;
    let h = top + 3.0 * ph + 3.0 * gap;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">veto soak: {} checks/s scheduled, {} revocations/s held {}</text>"#,
        left + pw / 2.0,
        a.rate,
        a.revocations_per_second,
        humantime::format_duration(a.revocation_ttl)
    );
    for (pi, (title, series)) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * (ph + gap);
        let ymax = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|q| q.1))
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let x = |v: f64| left + pw * v / xmax;
        let y = |v: f64| y0 + ph * (1.0 - v / ymax);
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="black"/><text x="{left}" y="{}" font-size="13">{title}</text>"#,
            y0 - 6.0
        );
        for i in 0..=4 {
            let v = ymax * i as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y(v) + 4.0,
                if ymax >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                },
                py = y(v)
            );
        }
        let step = (xmax / 10.0).ceil().max(1.0);
        let mut t = 0.0;
        while t <= xmax + 1e-9 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0}</text>"#,
                x(t),
                y0 + ph + 15.0
            );
            t += step;
        }
        for (si, (label, color, p)) in series.iter().enumerate() {
            let pts: String = p
                .iter()
                .map(|q| format!("{:.1},{:.1} ", x(q.0), y(q.1)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>"#
            );
            let ly = y0 + 14.0 + 18.0 * si as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{label}</text>"#,
                left + pw + 12.0,
                left + pw + 36.0,
                left + pw + 42.0,
                ly + 4.0
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">minutes since the first sample</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    s.push_str("</svg>\n");
    s
}
