//! Layered settings: built-in defaults → TOML file → `VETO__SECTION__KEY` environment
//! variables. [`Settings::load`] both parses and validates; every error names the key.

use crate::token::Alg;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error. `veto` exits 64 (EX_USAGE) on it, printing the message.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

pub(crate) fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub grpc: Grpc,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub authz: Authz,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub issuers: Vec<Issuer>,
    pub nats: Option<Nats>,
    #[serde(default)]
    pub revocation: Revocation,
    #[serde(default)]
    pub shutdown: Shutdown,
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Where cache misses are verified: a bounded pool beside the request path.
    #[serde(default)]
    pub verify: Verify,
    /// The in-proxy mode: the revoked set mirrored into shared memory for the Envoy module.
    #[serde(default)]
    pub inproxy: Inproxy,
    /// `veto authority` only: sessions, refresh rotation, keys, back-channel logout.
    pub authority: Option<crate::authority::config::Authority>,
}

/// The ordered shutdown on SIGTERM: readiness and gRPC health go NOT_SERVING at once, the
/// servers keep answering for `drain` (the proxy and Kubernetes stop routing meanwhile), then
/// the listeners close (in-flight requests finish), then the feed and the rest stop; all of
/// it within `grace`, after which whatever is left is aborted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            drain: Duration::from_secs(5),
            grace: Duration::from_secs(10),
        }
    }
}

/// `[limits]`: what every listener (forward-auth and admin, gRPC, the authority's API)
/// lets one connection hold and for how long; README "Listener limits".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// From a request's first byte (a connection's opening, for the first request; the
    /// HTTP/2 preface on gRPC) to its complete head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An HTTP/1 keep-alive connection with nothing in flight is closed after this. Longer
    /// than the proxy's own idle timeout (Envoy's clusters: 60 s in deploy/envoy), so the
    /// proxy, not veto, closes a pooled connection and never reuses one being closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request (its body read included) not answered within this has its connection
    /// closed; on gRPC, the per-call deadline (DEADLINE_EXCEEDED).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections per listener; more are accepted and closed at once.
    pub max_connections: usize,
    /// Request bodies on HTTP listeners: a larger Content-Length is answered 413 unread.
    pub max_body_bytes: usize,
    /// The largest gRPC message decoded (a CheckRequest: the headers Envoy forwards).
    pub grpc_max_message_bytes: usize,
    /// HTTP/2 streams one gRPC connection may have open.
    pub grpc_max_concurrent_streams: u32,
    /// Calls served at once per gRPC connection; more wait for a slot.
    pub grpc_concurrency_per_connection: usize,
    /// HTTP/2 PING to an idle gRPC peer every this long ...
    #[serde(with = "humantime_serde")]
    pub grpc_keepalive_interval: Duration,
    /// ... which must answer within this, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub grpc_keepalive_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 64 * 1024,
            grpc_max_message_bytes: 256 * 1024,
            grpc_max_concurrent_streams: 256,
            grpc_concurrency_per_connection: 256,
            grpc_keepalive_interval: Duration::from_secs(30),
            grpc_keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl ListenerLimits {
    /// The HTTP listeners' share.
    pub fn http(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_body_bytes: self.max_body_bytes,
        }
    }

    fn validate(&self, max_token_bytes: usize) -> Result<(), ConfigError> {
        let positive = [
            ("limits.header_read_timeout", self.header_read_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.request_timeout", self.request_timeout),
            (
                "limits.grpc_keepalive_interval",
                self.grpc_keepalive_interval,
            ),
            ("limits.grpc_keepalive_timeout", self.grpc_keepalive_timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(bad(key, "must be positive"));
            }
        }
        if self.idle_timeout < self.header_read_timeout {
            return Err(bad(
                "limits.idle_timeout",
                "must be at least limits.header_read_timeout",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(bad("limits.max_connections", "must be 1-1000000"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(bad("limits.max_body_bytes", "must be 1 KiB-64 MiB"));
        }
        // a CheckRequest carries the token plus the other request headers
        if self.grpc_max_message_bytes < 2 * max_token_bytes + 16 * 1024
            || self.grpc_max_message_bytes > 64 * 1024 * 1024
        {
            return Err(bad(
                "limits.grpc_max_message_bytes",
                "must be at least 2 × authz.max_token_bytes + 16 KiB, at most 64 MiB",
            ));
        }
        if self.grpc_max_concurrent_streams == 0 {
            return Err(bad(
                "limits.grpc_max_concurrent_streams",
                "must be positive",
            ));
        }
        if self.grpc_concurrency_per_connection == 0 {
            return Err(bad(
                "limits.grpc_concurrency_per_connection",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// `[inproxy]`: the sidecar mirrors its revoked set, its feed position and its per-origin
/// freshness into `shm_path` (a file on a tmpfs shared with Envoy: `/dev/shm`, or a
/// `medium: Memory` emptyDir), where the in-proxy module (`envoy-module/`) reads them; and it
/// publishes its issuers' current public keys beside it, in `<shm_path>.jwks`
/// (`crate::jwks::KeysPublisher`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inproxy {
    /// The shared-memory file (absent: no mirror). Its directory must exist.
    pub shm_path: Option<PathBuf>,
    /// How often the sidecar refreshes the file's heartbeat and freshness.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl Default for Inproxy {
    fn default() -> Self {
        Inproxy {
            shm_path: None,
            heartbeat_interval: Duration::from_millis(100),
        }
    }
}

impl Inproxy {
    fn validate(&self, s: &Settings) -> Result<(), ConfigError> {
        let Some(p) = &self.shm_path else {
            return Ok(());
        };
        let key = "inproxy.shm_path";
        if !p.is_absolute() {
            return Err(bad(key, "must be an absolute path"));
        }
        match p.parent() {
            Some(dir) if dir.is_dir() => {}
            _ => return Err(bad(key, "its directory does not exist")),
        }
        if p.is_dir() {
            return Err(bad(key, "is a directory"));
        }
        if s.nats.is_none() {
            return Err(bad(
                key,
                "needs a [nats] section (without a feed there is nothing to mirror)",
            ));
        }
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval * 4 > s.revocation.max_staleness
        {
            return Err(bad(
                "inproxy.heartbeat_interval",
                "must be positive and at most a quarter of revocation.max_staleness",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grpc {
    pub listen: SocketAddr,
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            listen: ([127, 0, 0, 1], 9191).into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: SocketAddr,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: ([127, 0, 0, 1], 9192).into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `veto=debug,info`. `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DenyStatus {
    /// 401 + gRPC UNAUTHENTICATED.
    #[default]
    Unauthenticated,
    /// 403 + gRPC PERMISSION_DENIED.
    PermissionDenied,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authz {
    /// Request header to set from a claim, on allow: header name → claim name. The header is
    /// overwritten (never appended), and removed when the token lacks the claim, so clients
    /// cannot inject identity headers.
    pub headers: BTreeMap<String, String>,
    /// Remove the `authorization` header before the request reaches the upstream.
    pub remove_authorization: bool,
    /// Tokens longer than this are refused without parsing.
    pub max_token_bytes: usize,
    /// Envoy dynamic metadata namespace for the verified claims (empty: none).
    pub metadata_namespace: String,
    /// How a revoked token is refused.
    pub revoked_status: DenyStatus,
}

impl Default for Authz {
    fn default() -> Self {
        Authz {
            headers: BTreeMap::from([("x-user-id".to_string(), "sub".to_string())]),
            remove_authorization: false,
            max_token_bytes: 8192,
            metadata_namespace: "veto".into(),
            revoked_status: DenyStatus::Unauthenticated,
        }
    }
}

/// `[verify]`: a token not in the verified-token cache is verified (parse, signature, claims)
/// on a pool of its own threads, not on the threads that serve requests, so a flood of
/// unique forged tokens (each costs a signature check) cannot delay the checks the cache
/// answers. The pool's queue is bounded in length and in wait: a check that would wait
/// longer is answered "cannot decide" (gRPC `UNAVAILABLE`, HTTP 503: the proxy's failure
/// mode applies) at once, instead of holding a connection slot past the proxy's timeout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// Verifying threads (0: one per CPU the process may use).
    pub threads: usize,
    /// Verifications queued at most; one more is refused at once.
    pub queue: usize,
    /// A verification that has waited this long in the queue is refused, not started.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Added to the verifying threads' nice value (0-19), so when the CPU is short the
    /// scheduler runs the request path (cache hits, revocation checks) first. Linux keeps
    /// a nice value per thread; raising it needs no privilege.
    pub nice: i32,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            threads: 0,
            queue: 1024,
            max_wait: Duration::from_millis(100),
            nice: 10,
        }
    }
}

impl Verify {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.threads > 256 {
            return Err(bad("verify.threads", "at most 256 (0: one per CPU)"));
        }
        if self.queue == 0 {
            return Err(bad("verify.queue", "must be positive"));
        }
        if self.max_wait.is_zero() {
            return Err(bad("verify.max_wait", "must be positive"));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(bad(
                "verify.nice",
                "0-19 (added to the threads' nice value)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Verified tokens kept (moka, bounded; eviction only costs a re-verification).
    pub max_tokens: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_tokens: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    /// File holding the shared secret, required for (and only for) HS* algorithms.
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default = "default_session_claim")]
    pub session_claim: String,
    #[serde(default = "default_lifetime", with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Refresh interval when the JWKS response carries no Cache-Control max-age, and the
    /// upper bound when it does.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub jwks_refresh_interval: Duration,
    /// Minimum time between two fetches (unknown-`kid` refetches included).
    #[serde(default = "default_min_refetch", with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub jwks_fetch_timeout: Duration,
    /// Claim naming the region a token's session is homed in (`""`: none). With
    /// `revocation.isolation = "home"` a token depends only on its home's and this region's
    /// revocation origins.
    #[serde(default = "default_home_claim")]
    pub home_claim: String,
    /// Home region of every token of this issuer that carries no home claim (e.g. a
    /// third-party IdP whose revocations are all published in one region).
    #[serde(default)]
    pub home_region: Option<String>,
}

fn default_home_claim() -> String {
    "veto_home".into()
}

fn default_algs() -> Vec<String> {
    vec!["ES256".into()]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_session_claim() -> String {
    "sid".into()
}
fn default_lifetime() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    /// Comma-separated server URLs of this region's JetStream domain.
    pub url: String,
    /// This sidecar's region (the origin subjects it captures are `veto.revocations.<region>.>`).
    pub region: String,
    /// Every region whose revocations this sidecar must see (its own included). Each is an
    /// origin whose feed freshness is tracked from its heartbeats; empty = this region only.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Also subscribe to every region's event subjects over core NATS (the fast path).
    #[serde(default = "yes")]
    pub fast_path: bool,
    /// When another region's revocations, as sourced into this region's stream, are older
    /// than this (by their heartbeats), read that region's stream directly until the source
    /// catches up. Needs `regions`.
    #[serde(default = "default_catchup_after", with = "humantime_serde")]
    pub catchup_after: Duration,
    /// Base name of the revocation streams: region R's stream is `<stream>_<R>`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// JetStream domain of this region, if the servers use one.
    pub domain: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Create/update the stream at start (off when an operator provisions streams).
    #[serde(default = "yes")]
    pub ensure_stream: bool,
    /// Not a configuration key: the authority sets its own inbox prefix on the feed it embeds
    /// (its NATS user may not subscribe to `_INBOX`).
    #[serde(skip)]
    pub inbox_prefix: Option<String>,
}

fn default_stream() -> String {
    "VETO_REVOCATIONS".into()
}
fn default_catchup_after() -> Duration {
    Duration::from_secs(3)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    #[default]
    Deny,
    Allow,
}

/// Which stale origins `revocation.on_stale` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A token depends on its home region's origin and this region's own; a token with no
    /// known home depends on every origin. One region cut off affects only tokens homed there.
    #[default]
    Home,
    /// Every token depends on every origin: any stale origin applies `on_stale` to all
    /// (strict global fail-closed), and readiness needs every origin fresh.
    Global,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Revocation {
    /// Longest a revocation must be held: ≥ every issuer's `max_token_lifetime`. Also the
    /// stream's `max_age`.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    pub on_stale: OnStale,
    pub isolation: Isolation,
    /// Entries above which the sidecar reports itself over capacity (it never drops any).
    pub max_entries: usize,
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// `[revocation.snapshot]`: a local snapshot of the revoked set, so a restart replays
    /// only the stream's tail.
    pub snapshot: Snapshot,
}

/// `[revocation.snapshot]`: the revoked set written to `path` every `interval` and at
/// shutdown (atomically, mode 0600: it holds the set's hash keys), loaded at start so the
/// durable follower replays only what came after it. Unset `path`: off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Snapshot {
    pub path: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            path: None,
            interval: Duration::from_secs(30),
        }
    }
}

impl Snapshot {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.path {
            let dir_like = p.as_os_str().to_string_lossy().ends_with('/');
            if p.as_os_str().is_empty() || p.file_name().is_none() || dir_like || p.is_dir() {
                return Err(bad(
                    "revocation.snapshot.path",
                    "must name a file, not a directory (unset it to turn snapshots off)",
                ));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.interval) {
            return Err(bad("revocation.snapshot.interval", "must be 1s-24h"));
        }
        Ok(())
    }
}

impl Default for Revocation {
    fn default() -> Self {
        Revocation {
            retention: Duration::from_secs(24 * 3600),
            max_staleness: Duration::from_secs(30),
            on_stale: OnStale::Deny,
            isolation: Isolation::Home,
            max_entries: crate::revocation::DEFAULT_MAX_ENTRIES,
            prune_interval: Duration::from_secs(60),
            snapshot: Snapshot::default(),
        }
    }
}

impl Settings {
    /// Reads `path` (TOML) under `VETO__SECTION__KEY` overrides and validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let s: Settings = layered(path, &["issuers", "nats.regions"])?;
        s.validate()?;
        Ok(s)
    }

    /// Parses TOML text (no environment), for tests.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let s: Settings = from_toml_text(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.authority {
            a.validate()?;
            if self.nats.is_none() {
                return Err(bad("nats", "the authority needs a [nats] section"));
            }
        } else if self.issuers.is_empty() {
            return Err(bad("issuers", "at least one [[issuers]] entry is required"));
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            let k = |f: &str| format!("issuers[{i}].{f}");
            if iss.issuer.is_empty() {
                return Err(bad(k("issuer"), "must not be empty"));
            }
            if self.issuers[..i].iter().any(|o| o.issuer == iss.issuer) {
                return Err(bad(k("issuer"), "duplicate issuer"));
            }
            if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
                return Err(bad(k("audiences"), "list at least one non-empty audience"));
            }
            if iss.algorithms.is_empty() {
                return Err(bad(k("algorithms"), "list at least one algorithm"));
            }
            let algs = iss.parsed_algorithms().map_err(|a| {
                bad(
                    k("algorithms"),
                    format!("unsupported algorithm {a:?} (never `none`)"),
                )
            })?;
            let hmac = algs.iter().any(|a| a.is_hmac());
            if hmac && iss.hmac_secret_file.is_none() {
                return Err(bad(
                    k("hmac_secret_file"),
                    "required when an HS* algorithm is listed",
                ));
            }
            if !hmac && iss.hmac_secret_file.is_some() {
                return Err(bad(
                    k("hmac_secret_file"),
                    "set, but no HS* algorithm is listed",
                ));
            }
            let asym = algs.iter().any(|a| !a.is_hmac());
            match (&iss.jwks_url, &iss.jwks_file) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        k("jwks_url"),
                        "set either jwks_url or jwks_file, not both",
                    ))
                }
                (None, None) if asym => {
                    return Err(bad(
                        k("jwks_url"),
                        "one of jwks_url or jwks_file is required",
                    ))
                }
                (Some(u), None) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                    return Err(bad(k("jwks_url"), "must be an http(s) URL"))
                }
                _ => {}
            }
            if iss.session_claim.is_empty() {
                return Err(bad(k("session_claim"), "must not be empty"));
            }
            if let Some(h) = &iss.home_region {
                if !crate::revocation::valid_region(h) {
                    return Err(bad(k("home_region"), "1-64 characters of [A-Za-z0-9_-]"));
                }
            }
            if iss.max_token_lifetime.is_zero() {
                return Err(bad(k("max_token_lifetime"), "must be positive"));
            }
            if iss.max_token_lifetime + iss.leeway > self.revocation.retention {
                return Err(bad(
                    "revocation.retention",
                    format!(
                        "must be at least issuers[{i}].max_token_lifetime + leeway, or revocations \
                         would be forgotten while tokens they kill still validate"
                    ),
                ));
            }
            if iss.jwks_min_refetch_interval > iss.jwks_refresh_interval {
                return Err(bad(
                    k("jwks_min_refetch_interval"),
                    "must not exceed jwks_refresh_interval",
                ));
            }
        }
        for (h, claim) in &self.authz.headers {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !matches!(h.as_str(), "authorization" | "host" | "content-length");
            if !ok {
                return Err(bad(
                    format!("authz.headers.{h}"),
                    "must be a lowercase header name and not a reserved one",
                ));
            }
            if claim.is_empty() {
                return Err(bad(
                    format!("authz.headers.{h}"),
                    "claim name must not be empty",
                ));
            }
        }
        self.limits.validate(self.authz.max_token_bytes)?;
        self.verify.validate()?;
        if self.authz.max_token_bytes < 256 {
            return Err(bad("authz.max_token_bytes", "must be at least 256"));
        }
        if self.cache.max_tokens == 0 {
            return Err(bad("cache.max_tokens", "must be positive"));
        }
        if let Some(n) = &self.nats {
            if n.url.trim().is_empty() {
                return Err(bad("nats.url", "must not be empty"));
            }
            if !crate::revocation::valid_region(&n.region) {
                return Err(bad("nats.region", "1-64 characters of [A-Za-z0-9_-]"));
            }
            if let Some(r) = n
                .regions
                .iter()
                .find(|r| !crate::revocation::valid_region(r))
            {
                return Err(bad(
                    "nats.regions",
                    format!("{r:?} is not a valid region name"),
                ));
            }
            if !n.regions.is_empty() && !n.regions.contains(&n.region) {
                return Err(bad("nats.regions", "must include nats.region"));
            }
            if n.regions.len() > crate::revocation::MAX_ORIGINS {
                return Err(bad(
                    "nats.regions",
                    format!("at most {} regions", crate::revocation::MAX_ORIGINS),
                ));
            }
            for (i, iss) in self.issuers.iter().enumerate() {
                if let Some(h) = &iss.home_region {
                    let known = h == &n.region || n.regions.contains(h);
                    if !known {
                        return Err(bad(
                            format!("issuers[{i}].home_region"),
                            format!("{h:?} is not in nats.regions"),
                        ));
                    }
                }
            }
            if n.stream.is_empty() || n.stream.contains(['.', '*', '>', ' ']) {
                return Err(bad("nats.stream", "must be a valid stream name"));
            }
            // `nats.stream` is the base name. A base that already ends in a region's suffix is
            // the mistake of writing a region's full stream name here: the sidecar would look
            // for `<name>_<region>` and never become ready.
            if let Some(r) = std::iter::once(&n.region)
                .chain(&n.regions)
                .find(|r| n.stream.ends_with(&format!("_{r}")))
            {
                return Err(bad(
                    "nats.stream",
                    format!(
                        "is the base name (region R's stream is <stream>_R); {:?} ends in \"_{r}\", so region {r}'s stream would be {:?} — use {:?}",
                        n.stream,
                        format!("{}_{r}", n.stream),
                        n.stream.trim_end_matches(&format!("_{r}")),
                    ),
                ));
            }
            if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
                return Err(bad(
                    "nats.tls_key_file",
                    "tls_cert_file and tls_key_file go together",
                ));
            }
            // A missing or unreadable TLS file is a configuration error naming its key, not
            // a connection failure at run time.
            for (key, path) in [
                ("nats.tls_ca_file", &n.tls_ca_file),
                ("nats.tls_cert_file", &n.tls_cert_file),
                ("nats.tls_key_file", &n.tls_key_file),
            ] {
                if let Some(p) = path {
                    match std::fs::read_to_string(p) {
                        Ok(text) if text.contains("-----BEGIN ") => {}
                        Ok(_) => return Err(bad(key, format!("{}: not a PEM file", p.display()))),
                        Err(e) => return Err(bad(key, format!("{}: {e}", p.display()))),
                    }
                }
            }
        }
        if self.revocation.max_staleness.is_zero() {
            return Err(bad("revocation.max_staleness", "must be positive"));
        }
        if self.revocation.prune_interval.is_zero() {
            return Err(bad("revocation.prune_interval", "must be positive"));
        }
        if self.revocation.max_entries == 0 {
            return Err(bad(
                "revocation.max_entries",
                "must be at least 1 (the capacity above which the sidecar reports itself over capacity; it never drops any)",
            ));
        }
        self.inproxy.validate(self)?;
        self.revocation.snapshot.validate()?;
        if self.shutdown.drain >= self.shutdown.grace {
            return Err(bad(
                "shutdown.drain",
                "must be shorter than shutdown.grace (the listeners close after the drain, within the grace)",
            ));
        }
        Ok(())
    }

    /// The longest `max_token_lifetime + leeway` of any issuer, in milliseconds.
    pub fn longest_token_lifetime_ms(&self) -> i64 {
        self.issuers
            .iter()
            .map(|i| (i.max_token_lifetime + i.leeway).as_millis() as i64)
            .max()
            .unwrap_or(0)
    }
}

impl Issuer {
    pub fn parsed_algorithms(&self) -> Result<Vec<Alg>, String> {
        self.algorithms
            .iter()
            .map(|a| Alg::parse(a).ok_or_else(|| a.clone()))
            .collect()
    }
}

/// Deserializes `path` (TOML) under `VETO__SECTION__KEY` overrides, without validating:
/// the one layering every command's settings go through (`list_keys` are the keys whose
/// environment value is a comma-separated list). Unknown keys are errors where the type says
/// `deny_unknown_fields`.
pub(crate) fn layered<T: serde::de::DeserializeOwned>(
    path: &Path,
    list_keys: &[&str],
) -> Result<T, ConfigError> {
    if !path.is_file() {
        return Err(bad(
            "--config",
            format!("{} is not a readable file", path.display()),
        ));
    }
    let mut env = config::Environment::with_prefix("VETO")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .ignore_empty(true);
    // with a separator but no list keys, the config crate would split every value
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for key in list_keys {
            env = env.with_list_parse_key(key);
        }
    }
    let raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(env)
        .build()
        .map_err(|e| from_config_error(&e))?;
    raw.try_deserialize().map_err(|e| from_config_error(&e))
}

/// [`layered`] of TOML text, without the environment (tests).
pub(crate) fn from_toml_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map_err(|e| from_config_error(&e))?;
    raw.try_deserialize().map_err(|e| from_config_error(&e))
}

/// The `config` crate names the key in most of its messages; keep its text as the message
/// and pull the key out when it is there.
fn from_config_error(e: &config::ConfigError) -> ConfigError {
    let text = e.to_string();
    let key = text
        .split("for key `")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .map(str::to_string)
        .or_else(|| {
            text.split("unknown field `")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        })
        .or_else(|| {
            text.split("missing field `")
                .nth(1)
                .and_then(|r| r.split('`').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "config".to_string());
    ConfigError { key, message: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[issuers]]
issuer = "https://auth"
audiences = ["api"]
jwks_file = "/dev/null"
[nats]
url = "nats://127.0.0.1:4222"
region = "us"
"#;

    #[test]
    fn defaults_and_good_file() {
        let s = Settings::from_toml(GOOD).unwrap();
        assert_eq!(s.grpc.listen.to_string(), "127.0.0.1:9191");
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:9192");
        assert_eq!(s.issuers[0].session_claim, "sid");
        assert_eq!(s.revocation.on_stale, OnStale::Deny);
        assert_eq!(s.revocation.snapshot.path, None);
        assert_eq!(s.revocation.snapshot.interval, Duration::from_secs(30));
        let s = Settings::from_toml(&format!(
            "{GOOD}\n[revocation.snapshot]\npath = \"/var/lib/veto/revoked.snap\"\ninterval = \"10s\""
        ))
        .unwrap();
        assert_eq!(
            s.revocation.snapshot.path.as_deref(),
            Some(Path::new("/var/lib/veto/revoked.snap"))
        );
        assert_eq!(s.revocation.snapshot.interval, Duration::from_secs(10));
        assert_eq!(
            s.authz.headers.get("x-user-id").map(String::as_str),
            Some("sub")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("[\"api\"]", "[]"), "issuers[0].audiences"),
            (
                GOOD.replace(
                    "jwks_file = \"/dev/null\"",
                    "jwks_file = \"/dev/null\"\nalgorithms = [\"none\"]",
                ),
                "issuers[0].algorithms",
            ),
            (
                GOOD.replace(
                    "jwks_file = \"/dev/null\"",
                    "jwks_file = \"/dev/null\"\nalgorithms = [\"HS256\"]",
                ),
                "issuers[0].hmac_secret_file",
            ),
            (
                GOOD.replace("jwks_file = \"/dev/null\"", ""),
                "issuers[0].jwks_url",
            ),
            (
                GOOD.replace("region = \"us\"", "region = \"u.s\""),
                "nats.region",
            ),
            (GOOD.replace("[nats]", "[nats]\nbogus = 1"), "bogus"),
            (format!("{GOOD}\n[grpc]\nlisten = \"nope\""), "grpc.listen"),
            (
                format!("{GOOD}\n[revocation]\non_stale = \"maybe\""),
                "revocation.on_stale",
            ),
            (
                format!("{GOOD}\n[revocation]\nretention = \"1m\""),
                "revocation.retention",
            ),
            (
                format!("{GOOD}\n[revocation]\nmax_staleness = \"soon\""),
                "revocation.max_staleness",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\npath = \"/tmp/x\"\ninterval = \"0s\""),
                "revocation.snapshot.interval",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\ninterval = \"soon\""),
                "revocation.snapshot.interval",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\npath = \"\""),
                "revocation.snapshot.path",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\npath = \"/var/lib/veto/..\""),
                "revocation.snapshot.path",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\npath = \"/tmp\""),
                "revocation.snapshot.path",
            ),
            (
                format!("{GOOD}\n[revocation.snapshot]\npath = \"/var/lib/veto/\""),
                "revocation.snapshot.path",
            ),
            (
                format!("{GOOD}\n[revocation]\nmax_entries = 0"),
                "revocation.max_entries",
            ),
            (format!("{GOOD}\n[revocation.snapshot]\nbogus = 1"), "bogus"),
            (
                format!("{GOOD}\n[limits]\nheader_read_timeout = \"0s\""),
                "limits.header_read_timeout",
            ),
            (
                format!("{GOOD}\n[limits]\nidle_timeout = \"1s\""),
                "limits.idle_timeout",
            ),
            (
                format!("{GOOD}\n[limits]\nmax_connections = 0"),
                "limits.max_connections",
            ),
            (
                format!("{GOOD}\n[limits]\nmax_body_bytes = 10"),
                "limits.max_body_bytes",
            ),
            (
                format!("{GOOD}\n[limits]\ngrpc_max_message_bytes = 4096"),
                "limits.grpc_max_message_bytes",
            ),
            (
                format!("{GOOD}\n[inproxy]\nshm_path = \"relative/shm\""),
                "inproxy.shm_path",
            ),
            (
                format!("{GOOD}\n[inproxy]\nshm_path = \"/nonexistent-dir/shm\""),
                "inproxy.shm_path",
            ),
            (
                format!("{GOOD}\n[inproxy]\nshm_path = \"/tmp\""),
                "inproxy.shm_path",
            ),
            (
                format!(
                    "{GOOD}\n[inproxy]\nshm_path = \"/tmp/veto-shm\"\nheartbeat_interval = \"20s\""
                ),
                "inproxy.heartbeat_interval",
            ),
            (
                format!(
                    "{}[inproxy]\nshm_path = \"/tmp/veto-shm\"",
                    GOOD.split("[nats]").next().unwrap_or_default()
                ),
                "inproxy.shm_path",
            ),
        ];
        let ok = Settings::from_toml(&format!("{GOOD}\n[inproxy]\nshm_path = \"/tmp/veto-shm\""));
        assert!(ok.is_ok(), "{ok:?}");
        for (text, key) in cases {
            let err = Settings::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
