//! Transports for the decision: Envoy ext_authz v3 over gRPC, and HTTP forward-auth. They
//! turn requests into a [`Credential`](crate::decision::Credential) for
//! [`Decider::decide`](crate::decision::Decider::decide) and render its answer; they decide
//! nothing themselves.
//!
//! - [`render`]: the denial's status, RFC 6750 challenge and JSON body, for both transports;
//! - [`identity`]: claim → identity-header mapping (the shape of what is set on allow);
//! - [`Answers`]: what the transports cache per verified token (their allow answers).

pub mod grpc;
pub mod http;
pub mod identity;
mod metrics;
pub mod render;

use std::sync::OnceLock;

pub use identity::Identity;
pub use metrics::{CheckMetrics, InproxyChecks};

/// The decider the transports share: its cached tokens carry the transports' [`Answers`].
pub type Decider = crate::decision::Decider<Answers>;

/// Each transport's allow answer for one verified token, built on first use and reused for
/// every repeat of the token.
#[derive(Default)]
pub struct Answers {
    pub(crate) grpc: OnceLock<envoy_types::ext_authz::v3::pb::CheckResponse>,
    pub(crate) http: OnceLock<Vec<(axum::http::HeaderName, axum::http::HeaderValue)>>,
}

/// A transport, as a metric label and an index into pre-resolved metric children.
#[derive(Clone, Copy)]
pub enum Transport {
    Grpc = 0,
    Http = 1,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}
