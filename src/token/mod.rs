//! Pure token logic: compact JWS parsing, JWK key handling, signature and claim validation.
//!
//! Nothing here does I/O; keys arrive through [`KeyStore::replace`] from whoever fetched them
//! (see `crate::jwks`). The verifier is `aws-lc-rs` with keys parsed once when a JWKS is loaded,
//! so the request path pays for exactly one signature check and nothing else.

mod alg;
mod claims;
mod error;
mod jwk;
mod jws;
pub mod sign;
mod validator;

pub use alg::Alg;
pub use claims::{header_value, Claims, MAX_HEADER_VALUE_BYTES};
// Canonical claim forms, shared with the back-channel logout receiver.
pub(crate) use claims::{audiences, id_claim, numeric_date};
pub use error::TokenError;
pub(crate) use jwk::fingerprint;
pub use jwk::{Jwk, JwkError, KeySet, KeyStore, PUBLIC_MEMBERS};
pub use jws::{b64, Header};
pub use validator::{verify_jws, IssuerPolicy, Validator, VerifiedJws, VerifiedToken};
