//! Veto: a regional auth sidecar.
//!
//! The map of the crate, from the request path outwards:
//!
//! - [`token`]: pure JWS/JWK logic. Parses compact tokens, holds each issuer's keys, verifies
//!   signatures and registered claims. No I/O.
//! - [`revocation`]: the grow-only revoked set (compact, never evicts before expiry) and the
//!   protobuf event schema of `proto/veto/v1/revocation.proto`.
//! - [`decision`]: the one place where allow/deny is decided: token cache, validation,
//!   revocation and feed-freshness checks (per token's origins: `revocation.isolation`),
//!   with stable deny reasons and typed deny codes. Knows no transport and does no I/O
//!   (JWKS refetch is behind its `KeyRefetch` trait).
//! - [`verify`]: the bounded pool beside the request path where cache misses are verified,
//!   so a flood of forged tokens cannot delay what the token cache answers (`[verify]`).
//! - [`jwks`]: fetches and refreshes issuers' JWKS (URL or file) off the request path.
//! - [`bus`]: everything about NATS and nothing about what is done with it: every subject,
//!   stream and domain name (`bus::names`, with a typed `parse`), connecting, the region
//!   streams and their provisioning, the one publish-with-id-and-ack routine (events,
//!   heartbeats), the nats-server topology. Imports nothing of the feed.
//! - [`feed`]: the subscriber side: the durable follower (replay, follow, typed restarts),
//!   the fast path, the catch-up reader, and the applier with its broadcast of what was
//!   applied (`feed::Applied`).
//! - [`authz`]: transports that translate only: Envoy ext_authz v3 gRPC and HTTP forward-auth,
//!   the denial rendering both share (`authz::render`), the claim → header mapping
//!   (`authz::identity`) and the per-token answers they cache (`authz::Answers`).
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`listener`]: the one HTTP/1 server every HTTP listener runs on (connection cap,
//!   header read, idle and request timeouts, body limit, optional TLS), and the gRPC
//!   listener's cap and preface deadline (`[limits]`).
//! - [`source_repair`]: notices a region stream's source that stopped advancing while its
//!   origin did not (the nats-server 2.9 duplicate-window wedge) and unsticks it.
//! - [`metrics`]: the registry helper and rendering; each module registers its own families
//!   with typed label methods (`feed::FeedMetrics`, `authz::CheckMetrics`, ...), and
//!   `sidecar::Metrics` holds them all.
//! - [`readiness`]: typed latches and live checks behind `/readyz` and gRPC health.
//! - [`sidecar`]: wires the parts together: settings read once, typed tasks, the ordered and
//!   bounded shutdown (`shutdown.drain`, `shutdown.grace`).
//! - [`authority`]: sessions homed in a region's JetStream KV, refresh rotation with grace and
//!   reuse detection (forwarded to the home over request-reply), logout and admin
//!   revocations, signing keys and JWKS, OIDC back-channel logout, the region's heartbeat.
//!   It reuses [`bus`] and [`token`], and embeds the sidecar's feed
//!   ([`sidecar::Sidecar::run_with`]) for freshness and the applied stream.
//! - [`inject`]: `veto inject`, the mutating admission webhook that adds the sidecar (and
//!   Envoy) to pods: pure patch logic, AdmissionReview handling, HTTPS with a reloaded
//!   certificate.
//! - [`config`]: layered settings (defaults → TOML file → `VETO__SECTION__KEY`), validated.

#![forbid(unsafe_code)]

pub mod admin;
pub mod authority;
pub mod authz;
pub mod bus;
pub mod config;
pub mod decision;
pub mod feed;
pub mod inject;
pub mod jwks;
pub mod listener;
pub mod metrics;
pub mod readiness;
pub mod revocation;
pub mod sidecar;
pub mod source_repair;
pub mod telemetry;
pub mod token;
pub mod verify;

/// Microseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Resolves on SIGTERM or Ctrl-C: what every long-running command shuts down on.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
