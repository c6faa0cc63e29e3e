//! The bus: everything veto knows about NATS, for every program that talks to it (the
//! sidecar's feed, the CLI, and the authority to come), and nothing about what they do with
//! it. Nothing here imports the feed (`src/feed/`); the feed imports this.
//!
//! - [`names`]: every subject, stream and JetStream-domain name, and [`names::parse`] of a
//!   subject into a typed [`names::Subject`].
//! - [`connect`]: connection options, credentials, TLS ([`connect::NatsConnection`]), and the
//!   JetStream context of a domain.
//! - [`stream`]: a region's stream: its configuration, idempotent provisioning with
//!   cross-domain sources, look-ups by sequence.
//! - [`publish`]: the one publish-with-id-and-ack routine, for events and heartbeats, and the
//!   heartbeat loop.
//! - [`topology`]: generated nats-server configs for N regions (hub + JetStream leaf each).

pub mod connect;
pub mod names;
pub mod publish;
pub mod stream;
pub mod topology;

pub use connect::{connect, jetstream, ConnectError, Events, Initial, NatsConnection};
pub use publish::{publish_event, publish_heartbeat, Ack, PublishFailure};
