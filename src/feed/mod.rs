//! The revocation feed: NATS JetStream in, revoked set out.
//!
//! - [`connect`] opens a NATS connection with the configured credentials/TLS and reports
//!   connection events.
//! - [`ensure_stream`] creates or updates this region's stream (idempotent; keeps whatever
//!   else an operator configured, e.g. sources).
//! - [`Feed::run`] replays the stream from the start, marks the sidecar ready once it has
//!   applied everything up to the stream's last sequence at start ([`replay`]), then follows
//!   live. After any error or reconnect it recreates its ordered consumer from
//!   `last_sequence + 1`, so nothing is lost or applied twice.
//! - [`publish_event`] is the publisher side (`veto revoke`, the authority).

mod apply;
mod catchup;
pub mod heartbeat;
mod publish;
pub mod replay;

pub use apply::Applier;
pub use catchup::CatchUp;
pub use publish::{publish_event, PublishFailure};
pub use replay::{Progress, Through};

use crate::config::Nats;
use crate::readiness::Readiness;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy, stream};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Readiness component name of the feed.
pub const COMPONENT: &str = "feed";

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read {what}: {source}")]
    Credentials {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

fn read_secret(path: &std::path::Path, what: &'static str) -> Result<String, FeedError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| FeedError::Credentials { what, source })
}

/// Connects to NATS. With `wait_for_server`, the call returns at once and the client keeps
/// trying in the background (a sidecar starts unready rather than crashing); without it, an
/// unreachable server is an error (for CLI commands).
pub async fn connect(
    cfg: &Nats,
    name: &str,
    wait_for_server: bool,
) -> Result<
    (
        async_nats::Client,
        mpsc::UnboundedReceiver<async_nats::Event>,
    ),
    FeedError,
> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(cfg.connect_timeout)
        .ping_interval(Duration::from_secs(5))
        .require_tls(cfg.tls_required)
        .event_callback(move |ev| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ev);
            }
        });
    if wait_for_server {
        opts = opts.retry_on_initial_connect();
    }
    if let Some(p) = &cfg.credentials_file {
        opts = opts
            .credentials_file(p)
            .await
            .map_err(|source| FeedError::Credentials {
                what: "nats.credentials_file",
                source,
            })?;
    }
    if let Some(p) = &cfg.token_file {
        opts = opts.token(read_secret(p, "nats.token_file")?);
    }
    if let Some(user) = &cfg.user {
        let pass = match &cfg.password_file {
            Some(p) => read_secret(p, "nats.password_file")?,
            None => String::new(),
        };
        opts = opts.user_and_password(user.clone(), pass);
    }
    if let Some(p) = &cfg.nkey_seed_file {
        opts = opts.nkey(read_secret(p, "nats.nkey_seed_file")?);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    let urls: Vec<String> = cfg.url.split(',').map(|s| s.trim().to_string()).collect();
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|_| FeedError::Connect("nats.url is not a valid server URL".into()))
        })
        .collect::<Result<_, _>>()?;
    let client = opts
        .connect(addrs)
        .await
        .map_err(|e| FeedError::Connect(e.to_string()))?;
    Ok((client, rx))
}

pub fn context(client: async_nats::Client, cfg: &Nats) -> jetstream::Context {
    match &cfg.domain {
        Some(d) => jetstream::with_domain(client, d),
        None => jetstream::new(client),
    }
}

/// The subjects a region's stream captures.
pub fn origin_subjects(region: &str) -> String {
    format!("{}.{region}.>", crate::revocation::SUBJECT_ROOT)
}

/// Whether `stream` holds no message matching `subject` after stream sequence `position` — a
/// look-up by sequence (`STREAM.MSG.GET` with `next_by_subj`), not a counter. `Err` when the
/// server did not say.
pub async fn nothing_after(
    stream: &stream::Stream,
    subject: &str,
    position: u64,
) -> Result<bool, String> {
    match stream
        .get_first_raw_message_by_subject(subject, position.saturating_add(1))
        .await
    {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

/// The stream a region needs: its origin subjects, entries kept for the longest revocation
/// lifetime, dedup on `Nats-Msg-Id`, and one message per subject — events have unique
/// subjects, heartbeats share one, so only the newest heartbeat is kept.
pub fn stream_config(name: &str, region: &str, retention: Duration) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![origin_subjects(region)],
        max_age: retention,
        duplicate_window: Duration::from_secs(120).min(retention),
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        num_replicas: 1,
        ..Default::default()
    }
}

/// The fast path: a plain core-NATS subscription on every region's event subjects. A
/// JetStream publish is also an ordinary message, so this sees revocations from any region
/// as soon as they cross the gateways, before stream sourcing delivers them durably. Both
/// paths apply idempotently; heartbeats are taken from the durable path only, since
/// staleness must describe the guarantee, not the shortcut.
pub async fn run_fast_path(
    client: async_nats::Client,
    applier: Applier,
    shutdown: CancellationToken,
) {
    let subject = format!("{}.*.ev.>", crate::revocation::SUBJECT_ROOT);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sub = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "fast-path subscription failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m {
                    Some(msg) => applier.apply(&msg.subject, &msg.payload, "fast"),
                    // the client closed the subscription: subscribe again
                    None => break,
                }
            }
        }
    }
}

/// The durable follower of one region's stream.
pub struct Feed {
    pub cfg: Nats,
    pub retention: Duration,
    pub applier: Applier,
    pub readiness: Readiness,
}

impl Feed {
    pub async fn run(
        self,
        client: async_nats::Client,
        mut events: mpsc::UnboundedReceiver<async_nats::Event>,
        shutdown: CancellationToken,
    ) {
        let metrics = self.applier.metrics.clone();
        let js = context(client.clone(), &self.cfg);
        let started = Instant::now();
        let stream_name = crate::provision::stream_name(&self.cfg.stream, &self.cfg.region);
        let mut last_seq: u64 = 0;
        // The replay's target is this stream's last sequence when the first consumer is
        // created; readiness latches once everything up to it is applied.
        let mut replay = Progress::default();
        let mut seen_disconnect = false;
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if failures > 0 {
                let backoff = Duration::from_millis(100u64 << failures.min(6));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            let mut stream = match self.prepare_stream(&js, &stream_name).await {
                Ok(s) => s,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "revocation stream not available; retrying");
                    continue;
                }
            };
            // get_stream already fetched the stream's info: no second request.
            let state = &stream.cached_info().state;
            if let Some(why) = replay.on_stream_state(last_seq, state.messages, state.last_sequence)
            {
                self.mark_ready(started, why, last_seq, &replay, None);
            }
            let deliver_policy = if last_seq == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: last_seq + 1,
                }
            };
            let messages = match stream
                .create_consumer(OrderedConfig {
                    deliver_policy,
                    ..Default::default()
                })
                .await
            {
                Ok(c) => c.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, last_seq, "cannot create stream consumer; retrying");
                    continue;
                }
            };
            metrics.feed_restarts.inc();
            metrics.feed_connected.set(1);
            tracing::info!(stream = %stream_name, from = last_seq + 1, "following revocation stream");
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut last_progress = Instant::now();
            let mut last_recheck = Instant::now();
            let mut last_pending: u64 = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    ev = events.recv() => match ev {
                        // The first connection (with retry_on_initial_connect it is reported
                        // after start-up) needs no new consumer.
                        Some(async_nats::Event::Connected) if !seen_disconnect => {
                            metrics.feed_connected.set(1);
                        }
                        Some(async_nats::Event::Connected) => {
                            // The pitfall DESIGN §4 names: after a server restart the ordered
                            // consumer can stall. Recreate it from our own position.
                            tracing::info!(last_seq, "NATS reconnected; recreating consumer");
                            metrics.feed_connected.set(1);
                            failures = 0;
                            break;
                        }
                        Some(async_nats::Event::Disconnected) => {
                            tracing::warn!("NATS disconnected");
                            seen_disconnect = true;
                            metrics.feed_connected.set(0);
                        }
                        Some(other) => tracing::info!(event = %other, "NATS event"),
                        None => {}
                    },
                    _ = tick.tick() => {
                        let ready = replay.is_through();
                        if ready && client.connection_state() == async_nats::connection::State::Connected {
                            self.applier.freshness.mark(&self.cfg.region, crate::now_ms());
                        }
                        // Not replayed yet and nothing delivered for a second: the target
                        // may be gone (deleted by max_age or by hand, with nothing newer), so
                        // look at the stream again; if it holds nothing past our position the
                        // replay is done. Bounded: once a second while quiet.
                        let recheck = !ready
                            && last_progress.elapsed() > Duration::from_secs(1)
                            && last_recheck.elapsed() > Duration::from_secs(1);
                        // Watchdog: a consumer that stops delivering while the stream holds
                        // more than we applied is recreated from our position (seen on 1M
                        // replays: a stall at a pull-batch boundary that never recovers).
                        let quiet = last_progress.elapsed();
                        let suspect = if !ready || last_pending > 0 {
                            quiet > Duration::from_secs(2)
                        } else {
                            quiet > Duration::from_secs(15)
                        };
                        if recheck || suspect {
                            last_recheck = Instant::now();
                            if suspect {
                                last_progress = Instant::now();
                            }
                            if let Ok(info) = stream.info().await {
                                let (messages, stream_last) = (info.state.messages, info.state.last_sequence);
                                let mut why = replay.on_stream_state(last_seq, messages, stream_last);
                                // Anything past our position? The stream's last sequence says
                                // no, or a look-up by sequence (a deleted tail keeps the
                                // stream's last sequence); `None`: the server did not say.
                                let more = if messages == 0 || stream_last <= last_seq {
                                    Some(false)
                                } else {
                                    match nothing_after(&stream, ">", last_seq).await {
                                        Ok(none) => Some(!none),
                                        Err(e) => {
                                            tracing::debug!(error = %e, last_seq, "cannot look past our position");
                                            None
                                        }
                                    }
                                };
                                if more == Some(false) {
                                    why = why.or_else(|| replay.on_nothing_after());
                                }
                                if let Some(why) = why {
                                    self.mark_ready(started, why, last_seq, &replay, Some(last_pending));
                                } else if suspect && more != Some(false) {
                                    tracing::warn!(last_seq, stream_last, "stream consumer stalled; recreating");
                                    metrics.feed_stalls.inc();
                                    break;
                                }
                            }
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
                            if seq <= last_seq {
                                continue; // redelivery after a consumer recreate
                            }
                            self.applier.apply(&msg.subject, &msg.payload, "durable");
                            last_seq = seq;
                            metrics.feed_last_sequence.set(seq as i64);
                            if let Some(why) = replay.on_applied(seq, Some(pending)) {
                                self.mark_ready(started, why, seq, &replay, Some(pending));
                            }
                            failures = 0;
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, last_seq, "stream consumer failed; recreating");
                            failures = failures.saturating_add(1);
                            break;
                        }
                        None => {
                            failures = failures.saturating_add(1);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// With `nats.ensure_stream`, provisions the region's stream (the same idempotent logic
    /// as `veto nats provision`: limits, and sources for `nats.regions`; sources it does not
    /// know are kept); otherwise only looks it up.
    async fn prepare_stream(
        &self,
        js: &jetstream::Context,
        name: &str,
    ) -> Result<stream::Stream, FeedError> {
        let err = |m: String| FeedError::Stream {
            stream: name.to_string(),
            message: m,
        };
        if self.cfg.ensure_stream {
            let regions = if self.cfg.regions.is_empty() {
                vec![self.cfg.region.clone()]
            } else {
                self.cfg.regions.clone()
            };
            let plan = crate::provision::Plan::new(
                &self.cfg.stream,
                &self.cfg.region,
                &regions,
                self.retention,
            )
            .map_err(|e| err(e.to_string()))?;
            let (outcome, _) = crate::provision::provision(js, &plan)
                .await
                .map_err(|e| err(e.to_string()))?;
            if outcome != crate::provision::Outcome::Unchanged {
                tracing::info!(stream = name, ?outcome, "revocation stream provisioned");
            }
        }
        js.get_stream(name).await.map_err(|e| err(e.to_string()))
    }

    fn mark_ready(
        &self,
        started: Instant,
        why: Through,
        applied: u64,
        replay: &Progress,
        server_pending: Option<u64>,
    ) {
        let took = started.elapsed();
        self.applier
            .metrics
            .replay_duration
            .observe(took.as_secs_f64());
        self.applier.metrics.feed_ready.set(1);
        self.applier
            .freshness
            .mark(&self.cfg.region, crate::now_ms());
        self.readiness.set_ready(COMPONENT);
        tracing::info!(
            took_ms = took.as_millis() as u64,
            held = self.applier.revoked.len(),
            applied_seq = applied,
            target_seq = replay.target().unwrap_or(0),
            ?why,
            ?server_pending,
            "revocation stream replayed; ready"
        );
    }
}
