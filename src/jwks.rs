//! Keeps each issuer's verification keys current, off the request path.
//!
//! - fetched (URL) or read (file) at start; the issuer is unready until the first load;
//! - refreshed on a schedule: the response's `Cache-Control: max-age`, bounded by
//!   `[jwks_min_refetch_interval, jwks_refresh_interval]`;
//! - refetched on an unknown `kid`: one fetch in flight at a time (others wait for it), and at
//!   most one per `jwks_min_refetch_interval`, so a flood of junk kids cannot flood the
//!   endpoint;
//! - on failure the last good keys stay in use, with backoff and a metric;
//! - in the in-proxy mode, the keys every issuer trusts now are published to the Envoy module
//!   in a file beside the shared-memory file ([`KeysPublisher`], [`read_published`]).

use crate::metrics;
use crate::readiness::Latch;
use crate::token::{Alg, KeySet, KeyStore};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The JWKS metric families, by issuer.
#[derive(Clone)]
pub struct JwksMetrics {
    refresh: IntCounterVec,
    keys: IntGaugeVec,
}

/// How one JWKS load ended: the `result` label of `veto_jwks_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Ok,
    Error,
}

impl Load {
    pub fn label(self) -> &'static str {
        match self {
            Load::Ok => "ok",
            Load::Error => "error",
        }
    }
}

impl JwksMetrics {
    pub fn register(r: &Registry) -> JwksMetrics {
        JwksMetrics {
            refresh: metrics::counter_vec(
                r,
                "veto_jwks_refresh_total",
                "JWKS loads by issuer and result.",
                &["issuer", "result"],
            ),
            keys: metrics::gauge_vec(
                r,
                "veto_jwks_keys",
                "Verification keys currently loaded, by issuer.",
                &["issuer"],
            ),
        }
    }

    /// `veto_jwks_refresh_total{issuer, result}`.
    pub fn refresh(&self, issuer: &str, result: Load) -> IntCounter {
        self.refresh.with_label_values(&[issuer, result.label()])
    }

    /// `veto_jwks_keys{issuer}`.
    pub fn keys(&self, issuer: &str) -> IntGauge {
        self.keys.with_label_values(&[issuer])
    }
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub enum Source {
    Url(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    #[error("document larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("cannot read file: {0}")]
    File(String),
    #[error(transparent)]
    Jwks(#[from] crate::token::JwkError),
}

pub struct Refetcher {
    pub issuer: String,
    source: Source,
    allowed: Vec<Alg>,
    hmac_secret: Option<Arc<[u8]>>,
    store: Arc<KeyStore>,
    client: reqwest::Client,
    refresh: Duration,
    min_refetch: Duration,
    /// Serialises fetches (single flight) and remembers when the last unknown-`kid` refetch
    /// started (the rate limit applies to those; scheduled refreshes do not use it up).
    gate: tokio::sync::Mutex<Option<Instant>>,
    /// Bumped on every successful load, so waiters can tell a fetch finished.
    generation: AtomicU64,
    metrics: JwksMetrics,
}

pub struct RefetcherConfig {
    pub issuer: String,
    pub source: Source,
    pub allowed: Vec<Alg>,
    pub hmac_secret: Option<Arc<[u8]>>,
    pub refresh: Duration,
    pub min_refetch: Duration,
    pub timeout: Duration,
}

impl crate::decision::KeyRefetch for Refetcher {
    fn refetch_for_unknown_kid(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(Refetcher::refetch_for_unknown_kid(self))
    }
}

impl Refetcher {
    pub fn new(
        cfg: RefetcherConfig,
        store: Arc<KeyStore>,
        metrics: JwksMetrics,
    ) -> Result<Refetcher, FetchError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("veto/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        // Both results exist from the start so `increase()` sees the first failure.
        for result in [Load::Ok, Load::Error] {
            metrics.refresh(&cfg.issuer, result).inc_by(0);
        }
        Ok(Refetcher {
            issuer: cfg.issuer,
            source: cfg.source,
            allowed: cfg.allowed,
            hmac_secret: cfg.hmac_secret,
            store,
            client,
            refresh: cfg.refresh,
            min_refetch: cfg.min_refetch,
            gate: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            metrics,
        })
    }

    /// Fetches and installs the keys once. Returns the server's max-age, if any.
    async fn load(&self) -> Result<Option<Duration>, FetchError> {
        let result = self.fetch().await.and_then(|(doc, max_age)| {
            let (set, skipped) = KeySet::from_jwks(&doc, &self.allowed)?;
            if !set.duplicate_kids().is_empty() {
                tracing::warn!(
                    issuer = %self.issuer,
                    kids = ?set.duplicate_kids(),
                    "JWKS publishes more than one key of the same type under one kid; the first one in the document is used"
                );
            }
            if skipped > 0 {
                tracing::debug!(issuer = %self.issuer, skipped, "JWKS keys skipped (unsupported or not for signing)");
            }
            let n = set.len();
            self.store.replace(set.with_hmac_secret(self.hmac_secret.clone()));
            self.metrics.keys(&self.issuer).set(n as i64);
            Ok(max_age)
        });
        let load = if result.is_ok() {
            Load::Ok
        } else {
            Load::Error
        };
        self.metrics.refresh(&self.issuer, load).inc();
        if result.is_ok() {
            self.generation.fetch_add(1, Ordering::Release);
        }
        result
    }

    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        match &self.source {
            Source::File(p) => {
                let doc = tokio::fs::read(p)
                    .await
                    .map_err(|e| FetchError::File(e.kind().to_string()))?;
                if doc.len() > MAX_JWKS_BYTES {
                    return Err(FetchError::TooLarge);
                }
                Ok((doc, None))
            }
            Source::Url(u) => {
                let mut resp = self
                    .client
                    .get(u)
                    .header("accept", "application/jwk-set+json, application/json")
                    .send()
                    .await
                    .map_err(|e| FetchError::Http(without_url(&e)))?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status(resp.status().as_u16()));
                }
                let max_age = resp
                    .headers()
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok())
                    .and_then(cache_control_max_age);
                if resp
                    .content_length()
                    .is_some_and(|n| n as usize > MAX_JWKS_BYTES)
                {
                    return Err(FetchError::TooLarge);
                }
                let mut doc = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| FetchError::Http(without_url(&e)))?
                {
                    if doc.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(FetchError::TooLarge);
                    }
                    doc.extend_from_slice(&chunk);
                }
                Ok((doc, max_age))
            }
        }
    }

    /// Called on the request path when a token's `kid` is unknown. Returns true when keys
    /// were (re)loaded by this call or by a fetch it waited for, i.e. when retrying the
    /// validation can change the answer.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let seen = self.generation.load(Ordering::Acquire);
        let mut last = self.gate.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        match self.load().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refetch for unknown kid failed; keeping last good keys");
                false
            }
        }
    }

    /// The refresh loop. Loads at start (retrying with backoff until it succeeds), marks the
    /// issuer ready, then refreshes until shutdown.
    /// Loads the keys once now (single flight with the other fetches); true on success.
    pub async fn load_now(&self) -> bool {
        let _single_flight = self.gate.lock().await;
        self.load().await.is_ok()
    }

    /// Keeps the keys loaded and refreshed until `shutdown`, reporting on the issuer's latch.
    pub async fn run(self: Arc<Self>, latch: Latch, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let outcome = {
                let _single_flight = self.gate.lock().await;
                self.load().await
            };
            let delay = match outcome {
                Ok(max_age) => {
                    failures = 0;
                    latch.ready();
                    max_age.map_or(self.refresh, |m| m.clamp(self.min_refetch, self.refresh))
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if self.store.is_loaded() {
                        tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping last good keys");
                    } else {
                        tracing::error!(issuer = %self.issuer, error = %e, "JWKS not loaded yet; issuer's tokens cannot be verified");
                        latch.unready("JWKS not loaded");
                    }
                    let backoff =
                        Duration::from_millis(250u64.saturating_mul(1 << failures.min(10)));
                    backoff.min(self.refresh)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The in-proxy keys file of the shared-memory file `shm`: `<shm>.jwks`, beside it.
pub fn published_keys_path(shm: &Path) -> PathBuf {
    veto_shm::beside(shm, ".jwks")
}

/// The keys file's `format` (a document of another format is refused, keeping the keys).
const PUBLISHED_FORMAT: u64 = 1;
/// Largest keys file read: a JWKS per issuer, each at most [`MAX_JWKS_BYTES`] when fetched.
const MAX_PUBLISHED_BYTES: u64 = 16 << 20;

/// The sidecar's side of the in-proxy keys (`inproxy.shm_path`): writes
/// `{"format": 1, "issuers": {"<iss>": {"keys": [...]}}}` — per issuer whose keys come from a
/// `jwks_url` or `jwks_file` and are loaded, the JWKS it trusts now, public members only
/// ([`KeySet::public_jwks`]). HMAC secrets are never written: the module reads an issuer's
/// `hmac_secret_file` itself. Written atomically (a temporary file in the same directory,
/// renamed over the path) and only when the keys changed; the caller then bumps the keys
/// generation in the shared-memory header, which is what the module watches.
pub struct KeysPublisher {
    path: PathBuf,
    /// The published issuers and their stores (the refreshers replace the sets in them).
    issuers: Vec<(String, Arc<KeyStore>)>,
    /// Each store's generation when last looked at (`None`: never).
    seen: Vec<Option<u64>>,
    /// The document last written (a refresh that brings the same keys writes nothing).
    last: Option<Vec<u8>>,
    metrics: PublishedMetrics,
}

/// `veto_inproxy_keys_published_total{result}` and `veto_inproxy_keys_generation`: what the
/// sidecar told the in-proxy module(s) of its keys.
#[derive(Clone)]
pub struct PublishedMetrics {
    written: IntCounter,
    failed: IntCounter,
    generation: IntGauge,
}

impl PublishedMetrics {
    pub fn register(r: &Registry) -> PublishedMetrics {
        let published = metrics::counter_vec(
            r,
            "veto_inproxy_keys_published_total",
            "Writes of the keys file for the in-proxy module(s), by result (error: the module keeps the keys it has; retried each heartbeat).",
            &["result"],
        );
        PublishedMetrics {
            written: published.with_label_values(&["ok"]),
            failed: published.with_label_values(&["error"]),
            generation: metrics::gauge(
                r,
                "veto_inproxy_keys_generation",
                "The keys generation last published to the in-proxy module(s) (0: none yet).",
            ),
        }
    }

    /// The generation the module(s) were told of (the header's word, after a write).
    pub fn set_generation(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }
}

impl KeysPublisher {
    /// Publishes beside the shared-memory file `shm` the keys of `issuers`.
    pub fn new(
        shm: &Path,
        issuers: Vec<(String, Arc<KeyStore>)>,
        metrics: PublishedMetrics,
    ) -> KeysPublisher {
        KeysPublisher {
            path: published_keys_path(shm),
            seen: vec![None; issuers.len()],
            issuers,
            last: None,
            metrics,
        }
    }

    pub fn metrics(&self) -> &PublishedMetrics {
        &self.metrics
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the keys file if the keys changed since the last write; true when it did (the
    /// caller then bumps the keys generation). Cheap when nothing was reloaded: one atomic
    /// load per issuer. A failed write is retried on the next call. Each write is counted by
    /// result.
    pub fn publish_if_changed(&mut self) -> std::io::Result<bool> {
        let r = self.publish_inner();
        match &r {
            Ok(true) => self.metrics.written.inc(),
            Ok(false) => {}
            Err(_) => self.metrics.failed.inc(),
        }
        r
    }

    fn publish_inner(&mut self) -> std::io::Result<bool> {
        let now: Vec<Option<u64>> = self
            .issuers
            .iter()
            .map(|(_, store)| Some(store.generation()))
            .collect();
        if now == self.seen {
            return Ok(false);
        }
        let mut issuers = serde_json::Map::new();
        for (name, store) in &self.issuers {
            if let Some(set) = store.get() {
                issuers.insert(name.clone(), set.public_jwks());
            }
        }
        if issuers.is_empty() {
            // nothing loaded yet: nothing to publish (the generation stays where it is)
            self.seen = now;
            return Ok(false);
        }
        let doc = serde_json::to_vec(&serde_json::json!({
            "format": PUBLISHED_FORMAT,
            "issuers": issuers,
        }))
        .map_err(std::io::Error::other)?;
        if self.last.as_ref() == Some(&doc) {
            self.seen = now;
            return Ok(false);
        }
        // 0644: Envoy may run as another user than the sidecar
        crate::feed::snapshot::write_atomically(&self.path, 0o644, |w| {
            std::io::Write::write_all(w, &doc)
        })?;
        self.last = Some(doc);
        self.seen = now;
        Ok(true)
    }
}

/// Why the in-proxy keys file could not be read (the keys in use then stay). Never carries
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    #[error("cannot read the keys file: {0}")]
    Read(std::io::ErrorKind),
    #[error("the keys file is larger than {MAX_PUBLISHED_BYTES} bytes")]
    TooLarge,
    #[error("the keys file is not a veto keys document (format {PUBLISHED_FORMAT})")]
    NotKeys,
    #[error("the keys file's JWKS of {issuer}: {error}")]
    Jwks {
        issuer: String,
        error: crate::token::JwkError,
    },
}

/// The module's side: reads the keys file `path` and parses, for each `(issuer, allowed
/// algorithms)` asked, the JWKS published for it with [`KeySet::from_jwks_value`] (`None`:
/// nothing published for that issuer). All or nothing: one bad issuer fails the whole read.
pub fn read_published(
    path: &Path,
    issuers: &[(&str, &[Alg])],
) -> Result<Vec<Option<KeySet>>, PublishedError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| PublishedError::Read(e.kind()))?;
    let mut doc = Vec::new();
    file.take(MAX_PUBLISHED_BYTES + 1)
        .read_to_end(&mut doc)
        .map_err(|e| PublishedError::Read(e.kind()))?;
    if doc.len() as u64 > MAX_PUBLISHED_BYTES {
        return Err(PublishedError::TooLarge);
    }
    let v: serde_json::Value = serde_json::from_slice(&doc).map_err(|_| PublishedError::NotKeys)?;
    if v.get("format").and_then(serde_json::Value::as_u64) != Some(PUBLISHED_FORMAT) {
        return Err(PublishedError::NotKeys);
    }
    let published = v
        .get("issuers")
        .and_then(serde_json::Value::as_object)
        .ok_or(PublishedError::NotKeys)?;
    issuers
        .iter()
        .map(|(issuer, allowed)| match published.get(*issuer) {
            None => Ok(None),
            Some(jwks) => KeySet::from_jwks_value(jwks, allowed)
                .map(|(set, _)| Some(set))
                .map_err(|error| PublishedError::Jwks {
                    issuer: issuer.to_string(),
                    error,
                }),
        })
        .collect()
}

/// reqwest errors print the URL; JWKS URLs can carry credentials in their query, so strip it.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<jwks_url>");
    }
    text
}

/// `max-age` from a Cache-Control value; `no-store`/`no-cache` count as 0.
pub fn cache_control_max_age(v: &str) -> Option<Duration> {
    let mut max_age = None;
    for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-store" || d == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            max_age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::token::sign::{jwks, SigningKey};

    fn set_of(keys: &[&SigningKey]) -> KeySet {
        let doc = jwks(keys).to_string();
        KeySet::from_jwks(doc.as_bytes(), &[Alg::ES256, Alg::HS256])
            .unwrap()
            .0
    }

    #[test]
    fn published_keys_round_trip_and_are_written_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let shm = dir.path().join("shm");
        let (k1, k2) = (
            SigningKey::generate(Alg::ES256, "k1").unwrap(),
            SigningKey::generate(Alg::ES256, "k2").unwrap(),
        );
        let secret: Arc<[u8]> = b"0123456789abcdef0123456789abcdef".as_slice().into();
        let a = Arc::new(KeyStore::new(None));
        let b = Arc::new(KeyStore::new(None));
        let r = Registry::new();
        let mut p = KeysPublisher::new(
            &shm,
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            PublishedMetrics::register(&r),
        );
        assert_eq!(p.path(), dir.path().join("shm.jwks"));
        assert!(
            !p.publish_if_changed().unwrap(),
            "nothing loaded: nothing written"
        );
        assert!(!p.path().exists());
        a.replace(set_of(&[&k1]).with_hmac_secret(Some(secret.clone())));
        assert!(p.publish_if_changed().unwrap());
        assert!(!p.publish_if_changed().unwrap(), "unchanged");
        let text = std::fs::read_to_string(p.path()).unwrap();
        assert!(
            !text.contains("MDEyMzQ1") && !text.contains("\"oct\""),
            "no secret: {text}"
        );
        let algs: &[Alg] = &[Alg::ES256];
        let got = read_published(p.path(), &[("a", algs), ("b", algs), ("c", algs)]).unwrap();
        assert!(got[0]
            .as_ref()
            .unwrap()
            .find(Some("k1"), Alg::ES256)
            .is_some());
        assert!(got[0].as_ref().unwrap().hmac_secret().is_none());
        assert!(
            got[1].is_none() && got[2].is_none(),
            "not loaded / not configured"
        );
        // a refresh that brings the same keys writes nothing; new keys do
        a.replace(set_of(&[&k1]));
        assert!(!p.publish_if_changed().unwrap());
        a.replace(set_of(&[&k1, &k2]));
        b.replace(set_of(&[&k2]));
        assert!(p.publish_if_changed().unwrap());
        let got = read_published(p.path(), &[("a", algs), ("b", algs)]).unwrap();
        assert_eq!(got[0].as_ref().unwrap().len(), 2);
        assert!(got[1]
            .as_ref()
            .unwrap()
            .find(Some("k2"), Alg::ES256)
            .is_some());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
        let text = metrics::render(&r);
        assert!(
            text.contains("veto_inproxy_keys_published_total{result=\"ok\"} 2"),
            "{text}"
        );
        assert!(text.contains("veto_inproxy_keys_published_total{result=\"error\"} 0"));
        // a write that fails is counted, and retried (counted again) on the next call
        let mut gone = KeysPublisher::new(
            &dir.path().join("no-such-dir/shm"),
            vec![("a".into(), a.clone())],
            PublishedMetrics::register(&Registry::new()),
        );
        assert!(gone.publish_if_changed().is_err());
        assert!(gone.publish_if_changed().is_err());
        assert_eq!(gone.metrics().failed.get(), 2);
        assert_eq!(gone.metrics().written.get(), 0);
    }

    #[test]
    fn bad_keys_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm.jwks");
        let algs: &[Alg] = &[Alg::ES256];
        let ask = [("a", algs)];
        assert!(matches!(
            read_published(&path, &ask),
            Err(PublishedError::Read(std::io::ErrorKind::NotFound))
        ));
        for doc in [
            "not json",
            "{}",
            r#"{"format": 2, "issuers": {}}"#,
            r#"{"format": 1, "issuers": []}"#,
        ] {
            std::fs::write(&path, doc).unwrap();
            assert!(
                matches!(read_published(&path, &ask), Err(PublishedError::NotKeys)),
                "{doc}"
            );
        }
        std::fs::write(&path, r#"{"format": 1, "issuers": {"a": {"keys": []}}}"#).unwrap();
        let e = read_published(&path, &ask).err().unwrap();
        assert!(matches!(e, PublishedError::Jwks { .. }), "{e}");
    }

    #[test]
    fn cache_control() {
        assert_eq!(
            cache_control_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(cache_control_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_control_max_age("max-age=abc"), None);
        assert_eq!(cache_control_max_age("private"), None);
    }
}
