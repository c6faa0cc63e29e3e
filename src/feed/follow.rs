//! The durable follower of this region's stream: replays it from the start (or, with a
//! usable snapshot, from the snapshot's sequence + 1: [`super::snapshot`]), marks the
//! sidecar ready once everything up to the stream's last sequence at start is applied
//! ([`super::replay`]), then follows live.
//!
//! A small state machine: [`Feed::run`] opens a consumer and [`Feed::follow`]s it until it
//! must be recreated, for a typed [`Restart`] reason; the next consumer starts at our own
//! position (`last_sequence + 1`), so nothing is lost or applied twice.

use super::{Applier, Path, Progress, Snapshots, Through};
use crate::bus::connect::{jetstream, Events};
use crate::bus::names::stream_name;
use crate::bus::stream::{nothing_after, provision, Outcome, Plan, ProvisionError};
use crate::config::Nats;
use crate::readiness::Latch;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig, OrderedError};
use async_nats::jetstream::consumer::{DeliverPolicy, StreamError};
use async_nats::jetstream::context::GetStreamError;
use async_nats::jetstream::stream::{self, ConsumerError};
use async_nats::jetstream::Context;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("stream {stream}: {source}")]
    Provision {
        stream: String,
        source: ProvisionError,
    },
    #[error("stream {stream}: {source}")]
    Lookup {
        stream: String,
        source: GetStreamError,
    },
    #[error("stream {stream}: cannot create consumer: {source}")]
    Consumer {
        stream: String,
        source: ConsumerError,
    },
    #[error("stream {stream}: cannot read consumer: {source}")]
    Messages { stream: String, source: StreamError },
}

/// Why the follower recreates its consumer. Logged with its [`Restart::label`]; every new
/// consumer is counted in `veto_feed_consumer_restarts_total` (unlabelled, as documented).
#[derive(Debug)]
pub enum Restart {
    /// The stream could not be provisioned or looked up.
    StreamUnavailable(FeedError),
    /// The stream is there but no consumer could be opened on it.
    ConsumerUnavailable(FeedError),
    /// NATS reconnected after a disconnect. The pitfall DESIGN §4 names: after a server
    /// restart the ordered consumer can stall, so it is recreated from our own position.
    Reconnected,
    /// The consumer reported an error.
    ConsumerFailed(OrderedError),
    /// The consumer stopped delivering while the stream held more than we applied (seen on
    /// 1M replays: a stall at a pull-batch boundary that never recovers).
    Stalled { stream_last: u64 },
    /// The consumer's message stream ended.
    Ended,
}

impl Restart {
    pub fn label(&self) -> &'static str {
        match self {
            Restart::StreamUnavailable(_) => "stream_unavailable",
            Restart::ConsumerUnavailable(_) => "consumer_unavailable",
            Restart::Reconnected => "reconnected",
            Restart::ConsumerFailed(_) => "consumer_failed",
            Restart::Stalled { .. } => "stalled",
            Restart::Ended => "ended",
        }
    }

    /// The consecutive-failure count (the backoff before the next consumer) after this.
    fn failures(&self, before: u32) -> u32 {
        match self {
            // a fresh connection: try again at once
            Restart::Reconnected => 0,
            // the server answered; the watchdog's own 2 s is the delay
            Restart::Stalled { .. } => before,
            _ => before.saturating_add(1),
        }
    }
}

/// The durable follower of one region's stream.
pub struct Feed {
    pub cfg: Nats,
    pub retention: Duration,
    pub applier: Applier,
    /// The feed's readiness latch (`Component::Feed`).
    pub readiness: Latch,
    /// The revoked set's snapshot (`revocation.snapshot.path`): loaded when the stream is
    /// first seen, and told every sequence applied.
    pub snapshot: Option<Arc<Snapshots>>,
}

/// Where the follower is, across consumers.
struct Position {
    started: Instant,
    /// Highest stream sequence applied.
    last_seq: u64,
    /// The replay's target is the stream's last sequence when the first consumer is
    /// created; readiness latches once everything up to it is applied.
    replay: Progress,
    /// Whether the client was ever disconnected (the first `Connected` needs no recreate).
    seen_disconnect: bool,
    /// Consecutive failures: the backoff before the next consumer.
    failures: u32,
}

impl Feed {
    pub async fn run(
        self,
        client: async_nats::Client,
        mut events: Events,
        shutdown: CancellationToken,
    ) {
        let js = jetstream(client.clone(), self.cfg.domain.as_deref());
        let name = stream_name(&self.cfg.stream, &self.cfg.region);
        let mut at = Position {
            started: Instant::now(),
            last_seq: 0,
            replay: Progress::default(),
            seen_disconnect: false,
            failures: 0,
        };
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if at.failures > 0 {
                let backoff = Duration::from_millis(100u64 << at.failures.min(6));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            let restart = match self.open(&js, &name, &mut at).await {
                Ok((stream, messages)) => {
                    match self
                        .follow(&client, stream, messages, &mut at, &mut events, &shutdown)
                        .await
                    {
                        Some(r) => r,
                        None => return, // shutdown
                    }
                }
                Err(r) => r,
            };
            let (reason, last_seq) = (restart.label(), at.last_seq);
            match &restart {
                Restart::StreamUnavailable(e) => {
                    tracing::warn!(error = %e, reason, "revocation stream not available; retrying")
                }
                Restart::ConsumerUnavailable(e) => {
                    tracing::warn!(error = %e, last_seq, reason, "cannot create stream consumer; retrying")
                }
                Restart::Reconnected => {
                    tracing::info!(last_seq, reason, "NATS reconnected; recreating consumer")
                }
                Restart::ConsumerFailed(e) => {
                    tracing::warn!(error = %e, last_seq, reason, "stream consumer failed; recreating")
                }
                Restart::Stalled { stream_last } => {
                    self.applier.metrics.stalls.inc();
                    tracing::warn!(
                        last_seq,
                        stream_last,
                        reason,
                        "stream consumer stalled; recreating"
                    )
                }
                Restart::Ended => {
                    tracing::info!(last_seq, reason, "stream consumer ended; recreating")
                }
            }
            at.failures = restart.failures(at.failures);
        }
    }

    /// Prepares the stream and opens an ordered consumer at our position.
    async fn open(
        &self,
        js: &Context,
        name: &str,
        at: &mut Position,
    ) -> Result<(stream::Stream, Ordered), Restart> {
        let stream = self
            .prepare_stream(js, name)
            .await
            .map_err(Restart::StreamUnavailable)?;
        // get_stream already fetched the stream's info: no second request.
        let info = stream.cached_info();
        let state = &info.state;
        if let Some(snapshot) = &self.snapshot {
            // once, before the first consumer: the snapshot's entries, if it fits the stream
            let created_ns = i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0);
            if let Some(seq) = snapshot
                .adopt(state.first_sequence, state.last_sequence, created_ns)
                .await
            {
                at.last_seq = seq;
                self.applier.metrics.last_sequence.set(seq as i64);
            }
        }
        if let Some(why) =
            at.replay
                .on_stream_state(at.last_seq, state.messages, state.last_sequence)
        {
            self.mark_ready(at, why, at.last_seq, None);
        }
        let deliver_policy = if at.last_seq == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: at.last_seq + 1,
            }
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|source| {
                Restart::ConsumerUnavailable(FeedError::Consumer {
                    stream: name.to_string(),
                    source,
                })
            })?;
        let messages = consumer.messages().await.map_err(|source| {
            Restart::ConsumerUnavailable(FeedError::Messages {
                stream: name.to_string(),
                source,
            })
        })?;
        let metrics = &self.applier.metrics;
        metrics.restarts.inc();
        metrics.connected.set(1);
        tracing::info!(stream = %name, from = at.last_seq + 1, "following revocation stream");
        Ok((stream, messages))
    }

    /// Applies what one consumer delivers until it must be recreated (`Some`) or shutdown
    /// (`None`). Meanwhile: connection events, this region's own freshness, and the replay
    /// and stall checks on a 500 ms tick.
    async fn follow(
        &self,
        client: &async_nats::Client,
        mut stream: stream::Stream,
        mut messages: Ordered,
        at: &mut Position,
        events: &mut Events,
        shutdown: &CancellationToken,
    ) -> Option<Restart> {
        let metrics = &self.applier.metrics;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_progress = Instant::now();
        let mut last_recheck = Instant::now();
        let mut last_pending: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                ev = events.recv() => match ev {
                    // The first connection (with retry_on_initial_connect it is reported
                    // after start-up) needs no new consumer.
                    Some(async_nats::Event::Connected) if !at.seen_disconnect => {
                        metrics.connected.set(1);
                    }
                    Some(async_nats::Event::Connected) => {
                        metrics.connected.set(1);
                        return Some(Restart::Reconnected);
                    }
                    Some(async_nats::Event::Disconnected) => {
                        tracing::warn!("NATS disconnected");
                        at.seen_disconnect = true;
                        metrics.connected.set(0);
                    }
                    Some(other) => tracing::info!(event = %other, "NATS event"),
                    None => {}
                },
                _ = tick.tick() => {
                    let ready = at.replay.is_through();
                    if ready && client.connection_state() == async_nats::connection::State::Connected {
                        self.applier.freshness.mark(&self.cfg.region, crate::now_ms());
                    }
                    // Not replayed yet and nothing delivered for a second: the target may be
                    // gone (deleted by max_age or by hand, with nothing newer), so look at the
                    // stream again; if it holds nothing past our position the replay is done.
                    // Bounded: once a second while quiet.
                    let recheck = !ready
                        && last_progress.elapsed() > Duration::from_secs(1)
                        && last_recheck.elapsed() > Duration::from_secs(1);
                    // Watchdog: a consumer that stops delivering while the stream holds more
                    // than we applied is recreated from our position.
                    let quiet = last_progress.elapsed();
                    let suspect = if !ready || last_pending > 0 {
                        quiet > Duration::from_secs(2)
                    } else {
                        quiet > Duration::from_secs(15)
                    };
                    if !(recheck || suspect) {
                        continue;
                    }
                    last_recheck = Instant::now();
                    if suspect {
                        last_progress = Instant::now();
                    }
                    let Ok(info) = stream.info().await else { continue };
                    let (held, stream_last) = (info.state.messages, info.state.last_sequence);
                    let mut why = at.replay.on_stream_state(at.last_seq, held, stream_last);
                    // Anything past our position? The stream's last sequence says no, or a
                    // look-up by sequence (a deleted tail keeps the stream's last sequence);
                    // `None`: the server did not say.
                    let more = if held == 0 || stream_last <= at.last_seq {
                        Some(false)
                    } else {
                        match nothing_after(&stream, ">", at.last_seq).await {
                            Ok(none) => Some(!none),
                            Err(e) => {
                                tracing::debug!(error = %e, last_seq = at.last_seq, "cannot look past our position");
                                None
                            }
                        }
                    };
                    if more == Some(false) {
                        why = why.or_else(|| at.replay.on_nothing_after());
                    }
                    if let Some(why) = why {
                        self.mark_ready(at, why, at.last_seq, Some(last_pending));
                    } else if suspect && more != Some(false) {
                        return Some(Restart::Stalled { stream_last });
                    }
                }
                m = messages.next() => match m {
                    Some(Ok(msg)) => {
                        let (seq, pending) = match msg.info() {
                            Ok(i) => (i.stream_sequence, i.pending),
                            Err(_) => continue,
                        };
                        last_progress = Instant::now();
                        last_pending = pending;
                        if seq <= at.last_seq {
                            continue; // redelivery after a consumer recreate
                        }
                        self.applier.apply(&msg.subject, &msg.payload, Path::Durable);
                        at.last_seq = seq;
                        metrics.last_sequence.set(seq as i64);
                        if let Some(s) = &self.snapshot {
                            s.advanced(seq);
                        }
                        if let Some(why) = at.replay.on_applied(seq, Some(pending)) {
                            self.mark_ready(at, why, seq, Some(pending));
                        }
                        at.failures = 0;
                    }
                    Some(Err(e)) => return Some(Restart::ConsumerFailed(e)),
                    None => return Some(Restart::Ended),
                }
            }
        }
    }

    /// With `nats.ensure_stream`, provisions the region's stream (the same idempotent logic
    /// as `veto nats provision`: limits, and sources for `nats.regions`; sources it does not
    /// know are kept); otherwise only looks it up.
    async fn prepare_stream(&self, js: &Context, name: &str) -> Result<stream::Stream, FeedError> {
        if self.cfg.ensure_stream {
            let regions = if self.cfg.regions.is_empty() {
                vec![self.cfg.region.clone()]
            } else {
                self.cfg.regions.clone()
            };
            let provision_err = |source| FeedError::Provision {
                stream: name.to_string(),
                source,
            };
            let plan = Plan::new(&self.cfg.stream, &self.cfg.region, &regions, self.retention)
                .map_err(provision_err)?;
            let (outcome, _) = provision(js, &plan).await.map_err(provision_err)?;
            if outcome != Outcome::Unchanged {
                tracing::info!(stream = name, ?outcome, "revocation stream provisioned");
            }
        }
        js.get_stream(name)
            .await
            .map_err(|source| FeedError::Lookup {
                stream: name.to_string(),
                source,
            })
    }

    fn mark_ready(&self, at: &Position, why: Through, applied: u64, server_pending: Option<u64>) {
        let took = at.started.elapsed();
        let metrics = &self.applier.metrics;
        metrics.replay.observe(took.as_secs_f64());
        metrics.ready.set(1);
        self.applier
            .freshness
            .mark(&self.cfg.region, crate::now_ms());
        self.readiness.ready();
        tracing::info!(
            took_ms = took.as_millis() as u64,
            held = self.applier.revoked.len(),
            applied_seq = applied,
            target_seq = at.replay.target().unwrap_or(0),
            ?why,
            ?server_pending,
            "revocation stream replayed; ready"
        );
    }
}
