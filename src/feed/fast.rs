//! The fast path: a plain core-NATS subscription on every region's event subjects. A
//! JetStream publish is also an ordinary message, so this sees revocations from any region
//! as soon as they cross the gateways, before stream sourcing delivers them durably. Both
//! paths apply idempotently; heartbeats are taken from the durable path only, since
//! staleness must describe the guarantee, not the shortcut.

use super::{Applier, Path};
use crate::bus::names::FAST_PATH_SUBJECT;
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Applies every event the subscription delivers until shutdown; subscribes again (with
/// backoff) whenever the subscription fails or the client closes it.
pub async fn run_fast_path(
    client: async_nats::Client,
    applier: Applier,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sub = match client.subscribe(FAST_PATH_SUBJECT).await {
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
                    Some(msg) => {
                        applier.apply(&msg.subject, &msg.payload, Path::Fast);
                    }
                    // the client closed the subscription: subscribe again
                    None => break,
                }
            }
        }
    }
}
