//! Publishing revocation events through JetStream (the durable path; every JetStream publish
//! is also seen by core subscribers, which is the fast path).

use crate::revocation::{event_subject, RevocationEvent};
use async_nats::jetstream;
use prost::Message;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("no acknowledgement from JetStream within {0:?} (is a stream capturing veto.revocations.<region>.> ?)")]
    NoAck(Duration),
}

/// Publishes `ev` with `Nats-Msg-Id: event_id` and waits for the stream's acknowledgement.
/// Returns `(stream sequence, duplicate)`.
pub async fn publish_event(
    js: &jetstream::Context,
    ev: &RevocationEvent,
    timeout: Duration,
) -> Result<(u64, bool), PublishFailure> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", ev.event_id.as_str());
    let ack = js
        .publish_with_headers(
            event_subject(&ev.origin_region, &ev.event_id),
            headers,
            ev.encode_to_vec().into(),
        )
        .await
        .map_err(|e| PublishFailure::Publish(e.to_string()))?;
    let ack = tokio::time::timeout(timeout, ack)
        .await
        .map_err(|_| PublishFailure::NoAck(timeout))?
        .map_err(|e| PublishFailure::Publish(e.to_string()))?;
    Ok((ack.sequence, ack.duplicate))
}
