//! Publishing through JetStream: one routine, [`send`] (then [`acked`]), for events and
//! heartbeats alike — every message carries a `Nats-Msg-Id` (the stream drops a retry as a
//! duplicate) and counts as published only once the stream acknowledged it. A JetStream
//! publish is also an ordinary core-NATS message, which is what the fast path sees.
//!
//! The heartbeat loop lives here too: the regional authority hosts it; `veto heartbeat` runs
//! it on its own.

use super::names::{
    event_msg_id, event_subject, heartbeat_msg_id, heartbeat_subject, MSG_ID_HEADER,
};
use crate::revocation::{Heartbeat, RevocationEvent};
use async_nats::jetstream::{self, context::PublishAckFuture};
use prost::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("publish failed: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("no acknowledgement from JetStream within {0:?} (is a stream capturing veto.revocations.<region>.> ?)")]
    NoAck(Duration),
}

/// What the stream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Stream sequence of the message (of the earlier copy, for a duplicate).
    pub sequence: u64,
    /// The stream already held this message id (within its duplicate window).
    pub duplicate: bool,
}

/// Sends `payload` on `subject` with `Nats-Msg-Id: msg_id`; the acknowledgement is not
/// awaited (bulk publishers keep many in flight). Await it with [`acked`].
pub async fn send(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: bytes::Bytes,
) -> Result<PublishAckFuture, PublishFailure> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, msg_id);
    Ok(js.publish_with_headers(subject, headers, payload).await?)
}

/// Waits at most `timeout` for the stream's acknowledgement of a [`send`].
pub async fn acked(ack: PublishAckFuture, timeout: Duration) -> Result<Ack, PublishFailure> {
    let ack = tokio::time::timeout(timeout, ack)
        .await
        .map_err(|_| PublishFailure::NoAck(timeout))??;
    Ok(Ack {
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// [`send`] of a revocation event on its subject, with `<origin>.<event_id>` as message id
/// ([`event_msg_id`]).
pub async fn send_event(
    js: &jetstream::Context,
    ev: &RevocationEvent,
) -> Result<PublishAckFuture, PublishFailure> {
    send(
        js,
        event_subject(&ev.origin_region, &ev.event_id),
        &event_msg_id(&ev.origin_region, &ev.event_id),
        ev.encode_to_vec().into(),
    )
    .await
}

/// Publishes `ev` and waits for the stream's acknowledgement.
pub async fn publish_event(
    js: &jetstream::Context,
    ev: &RevocationEvent,
    timeout: Duration,
) -> Result<Ack, PublishFailure> {
    acked(send_event(js, ev).await?, timeout).await
}

/// Publishes one heartbeat of `region` stamped `now_ms` and waits for the stream's ack.
pub async fn publish_heartbeat(
    js: &jetstream::Context,
    region: &str,
    now_ms: i64,
    timeout: Duration,
) -> Result<Ack, PublishFailure> {
    let hb = Heartbeat {
        origin_region: region.to_string(),
        sent_at: now_ms,
    };
    let ack = send(
        js,
        heartbeat_subject(region),
        &heartbeat_msg_id(region, now_ms),
        hb.encode_to_vec().into(),
    )
    .await?;
    acked(ack, timeout).await
}

/// Publishes a heartbeat of `region` every `interval` until shutdown, so every sidecar in
/// every region can tell "no revocations" from "no news". Failures are logged and retried on
/// the next tick (a missed heartbeat is exactly what staleness alerts are for).
pub async fn heartbeats(
    js: jetstream::Context,
    region: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match publish_heartbeat(
            &js,
            &region,
            crate::now_ms(),
            interval.max(Duration::from_secs(1)),
        )
        .await
        {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(region = %region, "heartbeats flowing again");
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(region = %region, error = %e, "heartbeat publish failed");
                }
                failing = true;
            }
        }
    }
}
