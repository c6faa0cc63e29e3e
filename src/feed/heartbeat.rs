//! Region heartbeats: published every interval through the durable path (JetStream), so
//! every sidecar in every region can tell "no revocations" from "no news" per origin. The
//! regional authority hosts this loop; `veto heartbeat` runs it on its own.

use crate::revocation::{heartbeat_subject, Heartbeat};
use async_nats::jetstream;
use prost::Message;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Publishes one heartbeat and waits for the stream's ack.
pub async fn publish_heartbeat(
    js: &jetstream::Context,
    region: &str,
    now_ms: i64,
    timeout: Duration,
) -> Result<u64, String> {
    let hb = Heartbeat {
        origin_region: region.to_string(),
        sent_at: now_ms,
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("hb-{region}-{now_ms}").as_str());
    let ack = js
        .publish_with_headers(
            heartbeat_subject(region),
            headers,
            hb.encode_to_vec().into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(timeout, ack)
        .await
        .map_err(|_| "no acknowledgement from JetStream".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// Publishes a heartbeat every `interval` until shutdown. Failures are logged and retried
/// on the next tick (a missed heartbeat is exactly what staleness alerts are for).
pub async fn run(
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
