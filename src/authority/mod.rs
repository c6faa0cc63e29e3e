//! The authority: issues what the sidecars validate. Sessions homed in one region (JetStream
//! KV, compare-and-set), refresh-token rotation with reuse detection (any region, forwarded
//! to the home), logout and admin revocations published to every region, signing keys with
//! next/current/retired states and their JWKS, OIDC back-channel logout from upstream IdPs,
//! and the region's heartbeat.

pub mod backchannel;
pub mod config;
pub mod keys;
