//! The `[authority]` section: what `veto authority` needs beyond `[nats]`, `[log]`,
//! `[revocation]` and `[shutdown]`, which it shares with the sidecar.

use crate::config::{bad, ConfigError};
use crate::token::Alg;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authority {
    /// The public API: sessions, token, logout, revocations, JWKS, back-channel logout.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `iss` of every access token, and the base of the discovery document's URLs unless
    /// `public_url` says otherwise.
    pub issuer: String,
    /// Where clients reach this API (`jwks_uri`, `token_endpoint`); default: `issuer`.
    pub public_url: Option<String>,
    /// `aud` of access tokens when the session request names none.
    pub audiences: Vec<String>,
    /// The signing algorithms the key directory may hold (`<kid>.<alg>.der`; a file of
    /// another algorithm is bad key material). `veto keys generate` makes ES256 keys by
    /// default; list two algorithms while migrating from one to the other.
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    /// Signing keys: `<kid>.<alg>.der` with an activation time (see `veto keys generate`);
    /// a Kubernetes Secret mounted as a directory works as is.
    pub keys_dir: PathBuf,
    /// How often the key directory is re-read (a rotated Secret appears without a restart).
    #[serde(default = "default_keys_reload", with = "humantime_serde")]
    pub keys_reload: Duration,
    /// `Cache-Control: max-age` of the JWKS document.
    #[serde(default = "default_jwks_max_age", with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// Lifetime of access tokens; ≤ `max_token_lifetime`.
    #[serde(default = "default_access_ttl", with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// What the sidecars enforce (`issuers[].max_token_lifetime`): revocation events live
    /// this long + `leeway`, retired keys at least this long + `leeway` + `jwks_max_age`.
    #[serde(default = "default_max_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// The admin credential of `POST /v1/sessions` and `POST /v1/revocations` (a bearer
    /// secret, ≥ 32 bytes).
    pub admin_token_file: PathBuf,
    /// The refresh-token MAC keys shared by every region's authorities: one `kid=secret`
    /// per line (secret base64url, ≥ 32 bytes); the first line signs, every line verifies.
    pub refresh_key_file: PathBuf,
    /// The immediately previous refresh token keeps returning the same successor this long
    /// after a rotation (two tabs, lost responses). ≤ 120 s.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub refresh_grace: Duration,
    /// How many times within the grace (≤ 10).
    #[serde(default = "default_max_replays")]
    pub refresh_max_replays: u32,
    /// A session not refreshed for this long is gone (the bucket's `max_age`).
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// A session ends this long after login, refreshed or not.
    #[serde(default = "default_session_lifetime", with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Budget of a refresh forwarded to another home region.
    #[serde(default = "default_home_timeout", with = "humantime_serde")]
    pub home_timeout: Duration,
    /// A home whose heartbeat is older than this is answered 503 at once, without waiting.
    #[serde(default = "default_home_stale", with = "humantime_serde")]
    pub home_stale_after: Duration,
    /// This region's heartbeat period (the authority hosts the heartbeat publisher).
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Browser origins allowed to call `/v1/token` and `/v1/logout` (CORS); empty: none.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Browser origins allowed to open the forced-logout socket (`GET /v1/ws`); default:
    /// `cors_origins`. A handshake without `Origin` (not a browser) is not refused for it.
    #[serde(default)]
    pub push_origins: Option<Vec<String>>,
    /// Ping period of the forced-logout sockets; a socket that has not answered the last ping
    /// is closed (4408).
    #[serde(default = "default_push_ping", with = "humantime_serde")]
    pub push_ping_interval: Duration,
    /// Most open sockets per session on one replica (more: close 4429).
    #[serde(default = "default_push_per_session")]
    pub push_max_per_session: usize,
    /// Most open sockets on one replica (more: close 4429).
    #[serde(default = "default_push_max")]
    pub push_max_sockets: usize,
    /// Upstream IdPs whose OIDC back-channel logout tokens are accepted.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
}

/// An upstream IdP for OIDC Back-Channel Logout (`POST /v1/backchannel-logout/<name>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Path segment of its endpoint: `[a-z0-9_-]+`.
    pub name: String,
    /// The IdP's `iss`, exactly.
    pub issuer: String,
    /// Our client id at the IdP: the logout token's `aud` must contain it.
    pub client_id: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    #[serde(default = "default_upstream_algs")]
    pub algorithms: Vec<String>,
    /// A logout token older than this (by `iat`) is refused; replays are remembered this long.
    #[serde(default = "default_logout_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Accept `typ: JWT` (Keycloak) besides `logout+jwt`. Off by default.
    #[serde(default)]
    pub accept_typ_jwt: bool,
    /// Accept a logout token without `exp` (Hydra, Keycloak < 23); `iat` age still applies.
    /// Off by default (the 2023 errata make `exp` required).
    #[serde(default)]
    pub allow_missing_exp: bool,
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    #[serde(default = "default_jwks_min_refetch", with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 9280).into()
}
fn default_algs() -> Vec<String> {
    SIGNING_ALGS
        .iter()
        .map(|a| a.as_str().to_string())
        .collect()
}
fn default_keys_reload() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_access_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_max_lifetime() -> Duration {
    Duration::from_secs(900)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_replays() -> u32 {
    5
}
fn default_idle() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_home_timeout() -> Duration {
    Duration::from_millis(1500)
}
fn default_home_stale() -> Duration {
    Duration::from_secs(3)
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}
fn default_push_ping() -> Duration {
    Duration::from_secs(20)
}
fn default_push_per_session() -> usize {
    16
}
fn default_push_max() -> usize {
    50_000
}
fn default_upstream_algs() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_logout_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min_refetch() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(3)
}

/// Signing algorithms the authority mints with.
pub const SIGNING_ALGS: [Alg; 3] = [Alg::ES256, Alg::EdDSA, Alg::RS256];

impl Authority {
    pub fn allowed_algorithms(&self) -> Result<Vec<Alg>, ConfigError> {
        if self.algorithms.is_empty() {
            return Err(bad("authority.algorithms", "list at least one algorithm"));
        }
        self.algorithms
            .iter()
            .map(|name| {
                Alg::parse(name)
                    .filter(|a| SIGNING_ALGS.contains(a))
                    .ok_or_else(|| {
                        bad(
                            "authority.algorithms",
                            format!("{name:?}: use ES256, EdDSA or RS256"),
                        )
                    })
            })
            .collect()
    }

    pub fn public_url(&self) -> &str {
        self.public_url
            .as_deref()
            .unwrap_or(&self.issuer)
            .trim_end_matches('/')
    }

    /// How long a revocation published by the authority must be held: the longest token
    /// lifetime + leeway.
    pub fn revocation_ttl(&self) -> Duration {
        self.max_token_lifetime + self.leeway
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = |f: &str| format!("authority.{f}");
        if self.issuer.is_empty() {
            return Err(bad(k("issuer"), "must not be empty"));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(bad(k("audiences"), "list at least one non-empty audience"));
        }
        self.allowed_algorithms()?;
        if self.access_token_ttl.is_zero() || self.access_token_ttl > self.max_token_lifetime {
            return Err(bad(
                k("access_token_ttl"),
                "must be positive and ≤ authority.max_token_lifetime (what the sidecars enforce)",
            ));
        }
        if self.refresh_grace > Duration::from_secs(120) {
            return Err(bad(
                k("refresh_grace"),
                "at most 120s: a long grace lets a stolen previous token ride the chain",
            ));
        }
        if self.refresh_max_replays > 10 {
            return Err(bad(k("refresh_max_replays"), "at most 10"));
        }
        if self.session_idle_timeout < Duration::from_secs(1) {
            return Err(bad(k("session_idle_timeout"), "at least 1s"));
        }
        if self.session_lifetime < self.access_token_ttl {
            return Err(bad(
                k("session_lifetime"),
                "shorter than authority.access_token_ttl",
            ));
        }
        if self.home_timeout.is_zero() || self.home_timeout > Duration::from_secs(30) {
            return Err(bad(k("home_timeout"), "must be in (0, 30s]"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(bad(k("heartbeat_interval"), "must be positive"));
        }
        if self.keys_reload.is_zero() {
            return Err(bad(k("keys_reload"), "must be positive"));
        }
        if self.push_ping_interval < Duration::from_secs(1) {
            return Err(bad(k("push_ping_interval"), "at least 1s"));
        }
        if self.push_max_per_session == 0 || self.push_max_sockets == 0 {
            return Err(bad(
                k("push_max_sockets"),
                "the socket caps must be positive",
            ));
        }
        for (i, o) in self.cors_origins.iter().enumerate() {
            if !(o.starts_with("https://") || o.starts_with("http://")) || o.ends_with('/') {
                return Err(bad(
                    format!("authority.cors_origins[{i}]"),
                    "an origin is scheme://host[:port], no path, no trailing slash",
                ));
            }
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let k = |f: &str| format!("authority.upstreams[{i}].{f}");
            let name_ok = !u.name.is_empty()
                && u.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !name_ok {
                return Err(bad(k("name"), "must match [a-z0-9_-]+"));
            }
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                return Err(bad(k("name"), "duplicate upstream name"));
            }
            if u.issuer.is_empty() {
                return Err(bad(k("issuer"), "must not be empty"));
            }
            if u.client_id.is_empty() {
                return Err(bad(k("client_id"), "must not be empty"));
            }
            if u.jwks_url.is_some() == u.jwks_file.is_some() {
                return Err(bad(k("jwks_url"), "set exactly one of jwks_url, jwks_file"));
            }
            for a in &u.algorithms {
                match Alg::parse(a) {
                    Some(alg) if !alg.is_hmac() => {}
                    _ => {
                        return Err(bad(
                            k("algorithms"),
                            format!("{a:?}: an asymmetric JWS algorithm (never none or HS*)"),
                        ))
                    }
                }
            }
            if u.algorithms.is_empty() {
                return Err(bad(k("algorithms"), "list at least one algorithm"));
            }
        }
        Ok(())
    }
}
