//! Self-repair of a region stream's cross-domain sources (the wedge of nats-io/nats-server#4459).
//!
//! **What goes wrong.** nats-server 2.9 stores a sourced message through the same path as a
//! publish, `Nats-Msg-Id` dedupe included. When a source delivers a message whose msg id is
//! already in the sourcing stream's duplicate window, the store fails with "msgid is
//! duplicate"; the server then recomputes the source's start from the stored
//! `Nats-Stream-Source` headers — which points at that same message — and retries every 2 s
//! ("Error processing inbound source ... msgid is duplicate" in its log). Nothing from that
//! origin is stored until the msg id leaves the window (2 min here). Stream info does not show
//! it: the source reports `lag` 0, no `error`, and `active` under 2 s. (Only a stream that
//! already holds messages from that origin is held: with none, the restart point skips the
//! refused message instead.) It happens when the same msg id lands in two regions' streams
//! and the local copy is stored first — e.g. a revocation retried in another region with the
//! same `event_id` (the contract reuses it for retries) while sourcing was delayed by a
//! restart or partition — or when an origin stores a msg id again. 2.9 has no fix: disabling
//! dedupe for sourced messages came in 2.14 (nats-io/nats-server#7651); the 2.10 attempt
//! (#4476) was reverted (#4495).
//!
//! **Detection.** Every [`Settings::interval`], per origin: the newest message of the origin's
//! subjects in *this* stream names, in its `Nats-Stream-Source` header, the origin sequence it
//! came from. While that moves, the source is healthy (no request leaves the region). When it
//! has not moved, the origin's own stream is asked (across domains) for its newest message of
//! those subjects: an origin ahead of us for [`Settings::stuck_after`] — longer than the
//! server's own 2–5 s retries after a partition heals — is stuck. An unreachable origin is a
//! partition, not a wedge: nothing is done.
//!
//! **Repair.** The stream's duplicate window is set to 100 ms (the minimum), which makes the
//! server purge its msg-id map at once; the stuck message is stored on the server's next retry
//! (≤ 2 s), and the window is set back to the planned one (`Plan`'s
//! `duplicate_window`) as soon as the source has caught up to where the origin was, or after
//! [`Settings::hold`]. Re-applying the sources (remove and add back) does *not* help: the
//! server recomputes the same start from the stored headers and meets the same duplicate.
//! Nothing is lost or applied twice: a message stored because the map was purged is a copy of
//! a message with the same subject (one is kept per subject) and identical id, which every
//! sidecar applies idempotently; the window is only short while the source catches up.
//!
//! Every request has a timeout; server answers are parsed without panicking.

use crate::bus::names::{domain_api_prefix, origin_subjects, stream_name};
use crate::bus::stream::{stream_config, Plan};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The duplicate window set while repairing: nats-server's minimum.
pub const REPAIR_WINDOW: Duration = Duration::from_millis(100);

/// Timing of the watcher.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often sources are looked at.
    pub interval: Duration,
    /// How long an origin must be ahead of a source that does not move before it is repaired.
    pub stuck_after: Duration,
    /// Per NATS request.
    pub request_timeout: Duration,
    /// Longest the short duplicate window is kept while waiting for the source to catch up.
    pub hold: Duration,
    /// Random delay before a repair, so the sidecars of a region do not all repair at once
    /// (each looks again after it; the first repair makes the others' look see progress).
    pub jitter: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            interval: Duration::from_secs(2),
            stuck_after: Duration::from_secs(10),
            request_timeout: Duration::from_secs(1),
            hold: Duration::from_secs(5),
            jitter: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// No answer within the timeout, no responders, or no connection.
    #[error("{0}")]
    Unreachable(String),
    /// JetStream answered with an error, or with something that is not the expected JSON.
    #[error("{0}")]
    Refused(String),
}

/// What one repair achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The source moved past the stuck position.
    Healed,
    /// The window was shortened and restored but the source did not move: not this wedge.
    NotHealed,
    /// The stream's window is already at most [`REPAIR_WINDOW`]: dedupe cannot hold it long.
    NotApplicable,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Healed => "healed",
            Outcome::NotHealed => "not_healed",
            Outcome::NotApplicable => "not_applicable",
        }
    }
}

/// The repairs' metric family.
#[derive(Clone)]
pub struct RepairMetrics {
    repairs: prometheus::IntCounterVec,
}

impl RepairMetrics {
    pub fn register(r: &prometheus::Registry) -> RepairMetrics {
        RepairMetrics {
            repairs: crate::metrics::counter_vec(
                r,
                "veto_stream_source_repairs_total",
                "Repairs of this region stream's source of an origin that stopped advancing while the origin did not, by result (healed/not_healed/not_applicable/error).",
                &["origin_region", "result"],
            ),
        }
    }

    /// `veto_stream_source_repairs_total{origin_region, result}`: `result` is the
    /// [`Outcome`], or `error` when the repair failed.
    pub fn repairs<E>(&self, origin: &str, result: &Result<Outcome, E>) -> prometheus::IntCounter {
        let result = match result {
            Ok(o) => o.label(),
            Err(_) => "error",
        };
        self.repairs.with_label_values(&[origin, result])
    }
}

/// One repair, for callers that report them (`veto nats provision --repair-sources`).
#[derive(Debug, Clone)]
pub struct Repair {
    pub origin: String,
    /// Origin sequence the source was stuck at, and the origin's newest when repaired.
    pub stuck_at: u64,
    pub origin_at: u64,
    pub result: Result<Outcome, String>,
}

/// What one look at an origin concluded ([`Tracker::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The source moved since the last look, or is level with its origin.
    Healthy,
    /// The source has not moved and its origin is ahead, for less than `stuck_after` (or a
    /// repair is backing off).
    Behind,
    /// Stuck: `local` has not moved for `stuck_after` while the origin is at `origin`.
    Stuck { local: u64, origin: u64 },
    /// The origin did not answer: a partition, not a wedge.
    Unknown,
}

#[derive(Debug, Default, Clone)]
struct OriginState {
    /// Last local position seen (`Some(0)`: the stream holds nothing from the origin).
    local: Option<u64>,
    behind_since: Option<Instant>,
    not_before: Option<Instant>,
    failed_repairs: u32,
}

/// The detection logic, without I/O.
#[derive(Debug, Default)]
pub struct Tracker {
    origins: BTreeMap<String, OriginState>,
}

impl Tracker {
    /// Records the local position of `origin`'s source; true when it moved since the last
    /// look (or is seen for the first time), i.e. the origin need not be asked.
    pub fn local_moved(&mut self, origin: &str, local: u64) -> bool {
        let st = self.origins.entry(origin.to_string()).or_default();
        if st.local == Some(local) {
            return false;
        }
        st.local = Some(local);
        st.behind_since = None;
        st.failed_repairs = 0;
        st.not_before = None;
        true
    }

    /// Concludes about a source whose local position did not move, given the origin's own
    /// newest position (`None`: unreachable).
    pub fn observe(
        &mut self,
        origin: &str,
        origin_pos: Option<u64>,
        stuck_after: Duration,
        now: Instant,
    ) -> Verdict {
        let st = self.origins.entry(origin.to_string()).or_default();
        let local = st.local.unwrap_or(0);
        let Some(o) = origin_pos else {
            st.behind_since = None;
            return Verdict::Unknown;
        };
        if o <= local {
            st.behind_since = None;
            return Verdict::Healthy;
        }
        let since = *st.behind_since.get_or_insert(now);
        let waiting = st.not_before.is_some_and(|t| now < t);
        if now.saturating_duration_since(since) >= stuck_after && !waiting {
            Verdict::Stuck { local, origin: o }
        } else {
            Verdict::Behind
        }
    }

    /// Records a repair's result: success starts detection afresh; a repair that did not help
    /// (or failed) is not tried again for a while, doubling up to 10 minutes.
    pub fn repaired(&mut self, origin: &str, healed: bool, now: Instant) {
        let st = self.origins.entry(origin.to_string()).or_default();
        st.behind_since = None;
        if healed {
            st.failed_repairs = 0;
            st.not_before = None;
        } else {
            let wait = Duration::from_secs(30) * 2u32.saturating_pow(st.failed_repairs.min(5));
            st.failed_repairs = st.failed_repairs.saturating_add(1);
            st.not_before = Some(now + wait.min(Duration::from_secs(600)));
        }
    }
}

/// The origin sequence named by a `Nats-Stream-Source` header value: `<index name> <seq>`
/// (2.9; later versions append more fields), or the 2.2-era ack reply
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>...`.
pub fn source_header_seq(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix("$JS.ACK.") {
        return rest.split('.').nth(3)?.parse().ok();
    }
    value.split_whitespace().nth(1)?.parse().ok()
}

/// The value of header `name` in a NATS header block (`NATS/1.0\r\nKey: value\r\n...`).
fn header_value<'a>(block: &'a str, name: &str) -> Option<&'a str> {
    block.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Watches and repairs the sources of one region's stream.
pub struct SourceRepair {
    client: async_nats::Client,
    /// JetStream API prefix of this region's stream (`$JS.API` or `$JS.<domain>.API`).
    local_api: String,
    stream: String,
    base: String,
    origins: Vec<String>,
    /// The duplicate window the stream is given back.
    window: Duration,
    pub settings: Settings,
}

impl SourceRepair {
    /// For `plan`'s stream, reached through `local_api` (the sidecar's own JetStream: `$JS.API`
    /// without a domain), sourcing every other region of the plan.
    pub fn new(client: async_nats::Client, plan: &Plan, local_api: String) -> SourceRepair {
        let window = stream_config(&plan.stream, &plan.region, plan.retention).duplicate_window;
        SourceRepair {
            client,
            local_api,
            stream: plan.stream.clone(),
            base: plan.base.clone(),
            origins: plan
                .regions
                .iter()
                .filter(|r| **r != plan.region)
                .cloned()
                .collect(),
            window,
            settings: Settings::default(),
        }
    }

    /// The API prefix of `domain`, or of the connected server's own JetStream.
    pub fn api_prefix(domain: Option<&str>) -> String {
        match domain {
            Some(d) => domain_api_prefix(d),
            None => "$JS.API".to_string(),
        }
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    async fn request(&self, subject: String, body: String) -> Result<Value, RepairError> {
        let reply = tokio::time::timeout(
            self.settings.request_timeout,
            self.client.request(subject.clone(), body.into()),
        )
        .await
        .map_err(|_| RepairError::Unreachable(format!("{subject}: no answer")))?
        .map_err(|e| RepairError::Unreachable(format!("{subject}: {e}")))?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| RepairError::Refused(format!("{subject}: not JSON: {e}")))
    }

    /// The newest message of `origin`'s subjects in the stream behind `api`: `Ok(None)` when
    /// it holds none, else the message (`seq`, `hdrs`...).
    async fn last_of_origin(
        &self,
        api: &str,
        stream: &str,
        origin: &str,
    ) -> Result<Option<Value>, RepairError> {
        let subject = format!("{api}.STREAM.MSG.GET.{stream}");
        let body = serde_json::json!({ "last_by_subj": origin_subjects(origin) });
        let v = self.request(subject.clone(), body.to_string()).await?;
        if let Some(err) = v.get("error") {
            // 10037: no message found
            if err.get("err_code").and_then(Value::as_u64) == Some(10037) {
                return Ok(None);
            }
            return Err(RepairError::Refused(format!("{subject}: {err}")));
        }
        match v.get("message") {
            Some(m) if m.is_object() => Ok(Some(m.clone())),
            _ => Err(RepairError::Refused(format!(
                "{subject}: no message in answer"
            ))),
        }
    }

    /// The origin sequence this stream's source of `origin` has reached (0: nothing yet).
    pub async fn local_position(&self, origin: &str) -> Result<u64, RepairError> {
        let Some(m) = self
            .last_of_origin(&self.local_api, &self.stream, origin)
            .await?
        else {
            return Ok(0);
        };
        use base64::Engine as _;
        let block = m
            .get("hdrs")
            .and_then(Value::as_str)
            .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        header_value(&block, "Nats-Stream-Source")
            .and_then(source_header_seq)
            .ok_or_else(|| {
                RepairError::Refused(format!(
                    "{}: newest message of {origin} carries no Nats-Stream-Source header",
                    self.stream
                ))
            })
    }

    /// The sequence of the newest message of `origin`'s subjects in the origin's own stream.
    pub async fn origin_position(&self, origin: &str) -> Result<u64, RepairError> {
        let api = domain_api_prefix(origin);
        let stream = stream_name(&self.base, origin);
        Ok(self
            .last_of_origin(&api, &stream, origin)
            .await?
            .and_then(|m| m.get("seq").and_then(Value::as_u64))
            .unwrap_or(0))
    }

    async fn stream_config(&self) -> Result<Value, RepairError> {
        let subject = format!("{}.STREAM.INFO.{}", self.local_api, self.stream);
        let v = self.request(subject.clone(), String::new()).await?;
        if let Some(err) = v.get("error") {
            return Err(RepairError::Refused(format!("{subject}: {err}")));
        }
        match v.get("config") {
            Some(c) if c.is_object() => Ok(c.clone()),
            _ => Err(RepairError::Refused(format!(
                "{subject}: no config in answer"
            ))),
        }
    }

    /// Writes `cfg` back with `duplicate_window` = `window`. The rest is sent exactly as the
    /// server rendered it, so nothing else changes.
    async fn set_window(&self, mut cfg: Value, window: Duration) -> Result<(), RepairError> {
        let subject = format!("{}.STREAM.UPDATE.{}", self.local_api, self.stream);
        let Some(obj) = cfg.as_object_mut() else {
            return Err(RepairError::Refused(format!(
                "{subject}: config is not an object"
            )));
        };
        obj.insert(
            "duplicate_window".into(),
            Value::from(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)),
        );
        let v = self.request(subject.clone(), cfg.to_string()).await?;
        match v.get("error") {
            Some(err) => Err(RepairError::Refused(format!("{subject}: {err}"))),
            None => Ok(()),
        }
    }

    /// Repairs the source of `origin`, stuck at origin sequence `stuck_at` while the origin
    /// is at `origin_at` (see the module documentation).
    pub async fn repair(
        &self,
        origin: &str,
        stuck_at: u64,
        origin_at: u64,
    ) -> Result<Outcome, RepairError> {
        let cfg = self.stream_config().await?;
        let window_ns = cfg
            .get("duplicate_window")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let repair_ns = REPAIR_WINDOW.as_nanos() as u64;
        // Another sidecar's repair may be under way (window already short): join it rather
        // than give up, and restore the planned window afterwards either way.
        if window_ns <= repair_ns && self.window <= REPAIR_WINDOW {
            return Ok(Outcome::NotApplicable);
        }
        if window_ns > repair_ns {
            self.set_window(cfg, REPAIR_WINDOW).await?;
        }
        let started = Instant::now();
        let mut moved = false;
        while started.elapsed() < self.settings.hold {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match self.local_position(origin).await {
                Ok(p) if p >= origin_at => {
                    moved = true;
                    break;
                }
                Ok(p) => moved |= p > stuck_at,
                Err(_) => {}
            }
        }
        // Give the window back, whatever happened; retried, since a stream left at 100 ms
        // would no longer deduplicate publisher retries (the provisioner also restores it).
        let mut last_err = None;
        for _ in 0..3 {
            match self.stream_config().await {
                Ok(cfg) => {
                    let now_ns = cfg.get("duplicate_window").and_then(Value::as_u64);
                    // Only undo our own change: a window set meanwhile by someone else stays.
                    if now_ns != Some(repair_ns) {
                        last_err = None;
                        break;
                    }
                    match self.set_window(cfg, self.window).await {
                        Ok(()) => {
                            last_err = None;
                            break;
                        }
                        Err(e) => last_err = Some(e),
                    }
                }
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(e) = last_err {
            tracing::error!(stream = %self.stream, error = %e, "could not restore the stream's duplicate window after a source repair; the provisioner restores it at the next feed start");
        }
        Ok(if moved {
            Outcome::Healed
        } else {
            Outcome::NotHealed
        })
    }

    /// One look at every origin; repairs what is stuck. Returns the repairs made.
    pub async fn check(&self, tracker: &mut Tracker) -> Vec<Repair> {
        let mut repairs = Vec::new();
        for origin in &self.origins {
            let local = match self.local_position(origin).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(origin = %origin, error = %e, "source position unknown");
                    continue;
                }
            };
            if tracker.local_moved(origin, local) {
                continue;
            }
            let origin_pos = match self.origin_position(origin).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(origin = %origin, error = %e, "origin stream unreachable");
                    None
                }
            };
            let verdict = tracker.observe(
                origin,
                origin_pos,
                self.settings.stuck_after,
                Instant::now(),
            );
            tracing::debug!(origin = %origin, local, ?origin_pos, ?verdict, "source not moving");
            let Verdict::Stuck {
                local: stuck_at,
                origin: origin_at,
            } = verdict
            else {
                continue;
            };
            // Let another sidecar of the region go first, then look again.
            let jitter_ms = self.settings.jitter.as_millis() as u64;
            if jitter_ms > 0 {
                let ms = rand::random_range(0..=jitter_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if matches!(self.local_position(origin).await, Ok(p) if p != stuck_at) {
                    tracker.repaired(origin, true, Instant::now());
                    continue;
                }
            }
            tracing::warn!(
                stream = %self.stream,
                origin = %origin,
                stuck_at,
                origin_at,
                "stream source not advancing while its origin is (nats-server 2.9 duplicate-window wedge, nats-io/nats-server#4459); purging the stream's msg-id window"
            );
            let result = self.repair(origin, stuck_at, origin_at).await;
            let healed = matches!(result, Ok(Outcome::Healed));
            tracker.repaired(origin, healed, Instant::now());
            match &result {
                Ok(Outcome::Healed) => {
                    tracing::warn!(stream = %self.stream, origin = %origin, "stream source repaired: advancing again")
                }
                Ok(o) => tracing::error!(
                    stream = %self.stream,
                    origin = %origin,
                    result = o.label(),
                    "stream source still stuck after purging the msg-id window; not the duplicate-window wedge (will retry with backoff)"
                ),
                Err(e) => {
                    tracing::error!(stream = %self.stream, origin = %origin, error = %e, "stream source repair failed")
                }
            }
            repairs.push(Repair {
                origin: origin.clone(),
                stuck_at,
                origin_at,
                result: result.map_err(|e| e.to_string()),
            });
        }
        repairs
    }

    /// Watches until `shutdown`, counting repairs in `metrics`.
    pub async fn run(self, metrics: RepairMetrics, shutdown: CancellationToken) {
        let mut tracker = Tracker::default();
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let repairs = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.check(&mut tracker) => r,
            };
            for r in repairs {
                metrics.repairs(&r.origin, &r.result).inc();
            }
        }
    }

    /// Watches for `duration` (at least one look past `stuck_after`), for one-shot callers.
    pub async fn watch_for(&self, duration: Duration) -> Vec<Repair> {
        let mut tracker = Tracker::default();
        let mut repairs = Vec::new();
        let start = Instant::now();
        loop {
            repairs.extend(self.check(&mut tracker).await);
            if start.elapsed() >= duration {
                return repairs;
            }
            tokio::time::sleep(self.settings.interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_headers_of_every_version_parse() {
        assert_eq!(
            source_header_seq("VETO_REVOCATIONS_us:Su6DK0Jv 11"),
            Some(11)
        );
        assert_eq!(
            source_header_seq("VETO_REVOCATIONS_us:Su6DK0Jv 11 > > veto.revocations.us.>"),
            Some(11)
        );
        assert_eq!(
            source_header_seq("$JS.ACK.VETO_REVOCATIONS_us.src-x.1.42.7.1690000000.0"),
            Some(42)
        );
        for bad in ["", "x", "x y", "$JS.ACK.a", "a -1"] {
            assert_eq!(source_header_seq(bad), None, "{bad:?}");
        }
        let block = "NATS/1.0\r\nNats-Msg-Id: hb-us-1\r\nnats-stream-source: S:x 9\r\n\r\n";
        assert_eq!(header_value(block, "Nats-Stream-Source"), Some("S:x 9"));
        assert_eq!(
            header_value("NATS/1.0 503\r\n\r\n", "Nats-Stream-Source"),
            None
        );
    }

    #[test]
    fn a_source_that_moves_or_is_level_is_healthy() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        assert!(t.local_moved("us", 5));
        assert!(!t.local_moved("us", 5));
        assert_eq!(t.observe("us", Some(5), after, t0), Verdict::Healthy);
        assert_eq!(
            t.observe("us", Some(9), after, t0 + Duration::from_secs(1)),
            Verdict::Behind
        );
        // it moves: behind starts over
        assert!(t.local_moved("us", 9));
        assert!(!t.local_moved("us", 9));
        assert_eq!(
            t.observe("us", Some(12), after, t0 + Duration::from_secs(20)),
            Verdict::Behind
        );
    }

    #[test]
    fn stuck_only_after_the_bound_and_never_while_the_origin_is_unreachable() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let s = |n| t0 + Duration::from_secs(n);
        t.local_moved("us", 18);
        assert_eq!(t.observe("us", Some(30), after, s(0)), Verdict::Behind);
        assert_eq!(t.observe("us", Some(40), after, s(9)), Verdict::Behind);
        // a partition resets the clock
        assert_eq!(t.observe("us", None, after, s(10)), Verdict::Unknown);
        assert_eq!(t.observe("us", Some(50), after, s(11)), Verdict::Behind);
        assert_eq!(
            t.observe("us", Some(60), after, s(21)),
            Verdict::Stuck {
                local: 18,
                origin: 60
            }
        );
        // other origins are tracked apart
        assert!(t.local_moved("ap", 3));
        assert!(!t.local_moved("ap", 3));
        assert_eq!(t.observe("ap", Some(3), after, s(21)), Verdict::Healthy);
    }

    #[test]
    fn a_repair_that_did_not_help_backs_off_and_doubles() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let s = |n| t0 + Duration::from_secs(n);
        t.local_moved("us", 1);
        t.observe("us", Some(2), after, s(0));
        assert!(matches!(
            t.observe("us", Some(2), after, s(10)),
            Verdict::Stuck { .. }
        ));
        t.repaired("us", false, s(10));
        assert_eq!(t.observe("us", Some(2), after, s(12)), Verdict::Behind);
        assert_eq!(t.observe("us", Some(2), after, s(30)), Verdict::Behind);
        assert!(matches!(
            t.observe("us", Some(2), after, s(41)),
            Verdict::Stuck { .. }
        ));
        t.repaired("us", false, s(41));
        // second failure: 60 s
        assert_eq!(t.observe("us", Some(2), after, s(90)), Verdict::Behind);
        assert!(matches!(
            t.observe("us", Some(2), after, s(102)),
            Verdict::Stuck { .. }
        ));
        // a healed repair clears the backoff
        t.repaired("us", true, s(102));
        t.observe("us", Some(3), after, s(103));
        assert!(matches!(
            t.observe("us", Some(3), after, s(113)),
            Verdict::Stuck { .. }
        ));
    }
}
