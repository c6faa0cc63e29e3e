//! Catch-up reader: while this region's copy of another region's revocations lags (stream
//! sourcing in nats-server 2.9 retries on 2–5 s timers after a partition heals), read that
//! region's stream directly across domains (`$JS.<origin>.API`) and apply what it holds.
//!
//! It only runs while a source lags, so in steady state a sidecar holds no consumer outside
//! its region. Everything it applies is idempotent with the other paths.
//!
//! It stops when the source has caught up: the origin's heartbeats arrive through this
//! region's own stream again (sourcing is in order, so everything before them has arrived
//! too). Its progress is counted by the origin's stream sequence, not by the server's pending
//! counter: the first read of a lag starts by time, later ones resume after the last message
//! read (so a recreated read never re-reads the lag), and a quiet read is told from a stalled
//! one by looking at the origin's stream — nothing after our position means the read is
//! through the origin's stream as of the lag's start ([`super::replay`]); more after it
//! means the read stalled and is recreated.

use super::{Applier, Path, Progress, Through};
use crate::bus::names::origin_subjects;
use crate::bus::stream::nothing_after;
use async_nats::jetstream::{
    self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, stream,
};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub struct CatchUp {
    pub origin: String,
    pub stream: String,
    /// Start reading when the origin's sourced feed is older than this.
    pub lag_threshold: Duration,
    /// Per JetStream API request across regions.
    pub request_timeout: Duration,
    pub applier: Applier,
}

impl CatchUp {
    fn sourced_lag_ms(&self, now: i64) -> Option<i64> {
        self.applier
            .sourced
            .staleness(now)
            .into_iter()
            .find(|(o, _)| o == &self.origin)
            .and_then(|(_, s)| s)
    }

    fn lagging(&self) -> bool {
        let now = crate::now_ms();
        match self.sourced_lag_ms(now) {
            Some(ms) => ms > self.lag_threshold.as_millis() as i64,
            // never heard from through the stream: nothing to catch up from yet
            None => false,
        }
    }

    /// Whether the origin's stream holds anything of this origin after `position`: `None`
    /// when it did not answer. By stream sequence (the stream's last sequence, then a look-up
    /// of the next message), never by a pending counter.
    async fn more_after(
        stream: &mut stream::Stream,
        subjects: &str,
        position: u64,
    ) -> Option<bool> {
        let state = &stream.info().await.ok()?.state;
        if state.messages == 0 || state.last_sequence <= position {
            return Some(false);
        }
        nothing_after(stream, subjects, position)
            .await
            .ok()
            .map(|none| !none)
    }

    pub async fn run(self, client: async_nats::Client, shutdown: CancellationToken) {
        let js = jetstream::ContextBuilder::new()
            .timeout(self.request_timeout)
            .domain(self.origin.clone())
            .build(client);
        let poll = Duration::from_millis(100);
        let subjects = origin_subjects(&self.origin);
        // What has been read of the origin's stream since the source began to lag.
        let mut episode: Option<Episode> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            if !self.lagging() {
                episode = None;
                continue;
            }
            let mut stream = match js.get_stream(&self.stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(origin = %self.origin, error = %e, "origin stream unreachable; will retry");
                    continue;
                }
            };
            let ep = episode.get_or_insert_with(Episode::default);
            // The first read of an episode starts from just before the newest heartbeat we
            // hold of the origin: everything it published after that is what sourcing has
            // not brought yet (a little earlier, for clock skew between the origin's
            // publisher and its server). A read recreated within the episode resumes after
            // the last message it read.
            let deliver_policy = match ep.position {
                Some(p) => DeliverPolicy::ByStartSequence {
                    start_sequence: p + 1,
                },
                None => {
                    let since_ms =
                        crate::now_ms() - self.sourced_lag_ms(crate::now_ms()).unwrap_or(0) - 5_000;
                    let Ok(start_time) = time::OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(since_ms) * 1_000_000,
                    ) else {
                        continue;
                    };
                    DeliverPolicy::ByStartTime { start_time }
                }
            };
            // A plain pull consumer without acks and with large batches: the read is a bulk
            // copy (order does not matter to the set), measured ~1.4x faster than the ordered
            // consumer's 500-message pulls; the server drops it when idle.
            let consumer = match stream
                .create_consumer(pull::Config {
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    filter_subject: subjects.clone(),
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                })
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(origin = %self.origin, error = %e, "cannot read origin stream; will retry");
                    continue;
                }
            };
            // The server places a new consumer just before its first message: everything at
            // or below is before the start time, or was read already.
            let mut position = ep
                .position
                .unwrap_or(0)
                .max(consumer.cached_info().delivered.stream_sequence);
            ep.position = Some(position);
            // The origin's last sequence when the episode's first read started is the target.
            let state = &stream.cached_info().state;
            if let Some(why) =
                ep.read
                    .on_stream_state(position, state.messages, state.last_sequence)
            {
                self.read_through(why, position, &ep.read);
            }
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(10_000)
                .messages()
                .await
            {
                Ok(m) => m,
                Err(_) => continue,
            };
            tracing::info!(origin = %self.origin, from = position + 1, "source lags; reading the origin's stream directly");
            self.applier.metrics.catchup_reads(&self.origin).inc();
            // Follow until the source has caught up (its heartbeats arrive through our own
            // stream again). A read that goes quiet is checked against the origin's stream
            // once a second: nothing after our position is a read that is through (and stays
            // open for what comes next); more after it, or no answer, for 2 s is a stalled
            // read, recreated from our position on the next round.
            let mut last_message = Instant::now();
            let mut last_check = Instant::now();
            // Consumer sequences of a new consumer start at 1 and, without acks, count every
            // delivery: a jump means messages were lost between the server and us.
            let mut next_delivery: u64 = 1;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {
                        if !self.lagging() {
                            tracing::info!(origin = %self.origin, position, "source caught up; direct read stopped");
                            break;
                        }
                        let quiet = last_message.elapsed();
                        if quiet <= Duration::from_secs(1) || last_check.elapsed() <= Duration::from_secs(1) {
                            continue;
                        }
                        last_check = Instant::now();
                        match Self::more_after(&mut stream, &subjects, position).await {
                            Some(false) => {
                                if let Some(why) = ep.read.on_nothing_after() {
                                    self.read_through(why, position, &ep.read);
                                }
                            }
                            Some(true) if quiet > Duration::from_secs(2) => {
                                tracing::info!(origin = %self.origin, position, "direct read stalled while the origin holds more; recreating");
                                break;
                            }
                            None if quiet > Duration::from_secs(2) => {
                                tracing::info!(origin = %self.origin, position, "origin stream not answering while the source still lags; recreating");
                                break;
                            }
                            _ => {}
                        }
                    }
                    m = messages.next() => match m {
                        Some(Ok(msg)) => {
                            last_message = Instant::now();
                            let info = msg.info().ok().map(|i| (i.stream_sequence, i.consumer_sequence));
                            if let Some((_, delivery)) = info {
                                if delivery != next_delivery {
                                    tracing::info!(origin = %self.origin, position, delivery, expected = next_delivery, "direct read lost messages; re-reading from our position");
                                    break;
                                }
                                next_delivery += 1;
                            }
                            self.applier.apply(&msg.subject, &msg.payload, Path::Direct);
                            if let Some((seq, _)) = info {
                                position = position.max(seq);
                                ep.position = Some(position);
                                if let Some(why) = ep.read.on_applied(seq, None) {
                                    self.read_through(why, position, &ep.read);
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::info!(origin = %self.origin, error = %e, "direct read failed; will retry");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }

    fn read_through(&self, why: Through, position: u64, read: &Progress) {
        tracing::info!(
            origin = %self.origin,
            position,
            target = read.target().unwrap_or(0),
            ?why,
            "direct read is through the origin's stream as of the lag's start; following"
        );
    }
}

/// One lag of a source: how far the direct read has got, by the origin's stream sequence.
#[derive(Default)]
struct Episode {
    /// Everything of the origin up to this stream sequence (after the episode's start time)
    /// has been applied; `None` before the first read.
    position: Option<u64>,
    read: Progress,
}
