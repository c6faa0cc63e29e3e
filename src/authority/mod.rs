//! The authority: issues what the sidecars validate. Sessions homed in one region (JetStream
//! KV, compare-and-set), refresh-token rotation with reuse detection (any region, forwarded
//! to the home), logout and admin revocations published to every region, signing keys with
//! next/current/retired states and their JWKS, OIDC back-channel logout from upstream IdPs,
//! and the region's heartbeat.
//!
//! It embeds the sidecar's feed ([`crate::sidecar::Sidecar::run_with`], no gRPC): the same
//! durable + fast path, freshness per origin (a stale home is answered 503 at once) and the
//! applied stream, which marks the records of sessions revoked anywhere. `/metrics`,
//! `/healthz` and `/readyz` stay on `http.listen`; the public API is on `authority.listen`.

pub mod backchannel;
pub mod config;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod push;
pub mod refresh;
pub mod service;
pub mod session;
pub mod store;

use crate::bus::{self, names};
use crate::config::Settings;
use crate::readiness::{Component, Latch};
use crate::revocation::Freshness;
use crate::sidecar::{Extra, Sidecar};
use crate::token::{IssuerPolicy, KeyStore, Validator};
use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use service::{HomeRequest, Service};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Session records a replica remembers having written (about 0.5 KiB each).
const RECENT_RECORDS: u64 = 10_000;

/// Requests from other regions served at once, per replica.
const MAX_HOME_REQUESTS: usize = 512;

/// A problem with the configuration or its files: `veto authority` exits 64 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn setup(key: &str, e: impl std::fmt::Display) -> SetupError {
    SetupError(format!("invalid configuration: {key}: {e}"))
}

/// `scheme://host[:port]` of a URL (what a browser sends as `Origin`).
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

/// Reads a secret file (trailing newline trimmed) of at least 32 bytes.
fn secret_file(path: &std::path::Path, key: &str) -> Result<Arc<[u8]>, SetupError> {
    let raw = std::fs::read(path).map_err(|e| setup(key, format!("cannot read: {}", e.kind())))?;
    let trimmed = raw.trim_ascii_end();
    if trimmed.len() < 32 {
        return Err(setup(key, "the secret must be at least 32 bytes"));
    }
    Ok(trimmed.into())
}

/// The sidecar settings of the embedded feed: this authority's own issuer, no key source.
fn feed_settings(s: &Settings, a: &config::Authority) -> Result<Settings, SetupError> {
    let issuer: crate::config::Issuer = serde_json::from_value(serde_json::json!({
        "issuer": a.issuer,
        "audiences": a.audiences,
        "algorithms": a.algorithms,
        "leeway": humantime::format_duration(a.leeway).to_string(),
        "max_token_lifetime": humantime::format_duration(a.max_token_lifetime).to_string(),
    }))
    .map_err(|e| setup("authority", e))?;
    let mut ss = s.clone();
    ss.issuers = vec![issuer];
    ss.authority = None;
    if let Some(n) = ss.nats.as_mut() {
        n.inbox_prefix = Some(names::AUTHORITY_INBOX_PREFIX.to_string());
    }
    Ok(ss)
}

/// Everything `veto authority` runs, built from validated settings.
pub struct Authority {
    sidecar: Sidecar,
    service: Arc<Service>,
    api: http::Api,
    keys: Arc<keys::Keyring>,
    backchannel: Arc<backchannel::Receiver>,
    push: Arc<push::Hub>,
    /// The KV bucket is open.
    store_latch: Latch,
    /// The home responder is subscribed.
    responder_latch: Latch,
    /// The client the service uses (also for heartbeats and the responder).
    client: async_nats::Client,
    /// The sections it was built from (read once, at `build`).
    cfg: config::Authority,
    nats: crate::config::Nats,
}

impl Authority {
    /// Reads every file (keys, MAC keys, admin secret) and connects to NATS (in the
    /// background: the authority starts unready rather than failing when NATS is down).
    pub async fn build(s: &Settings) -> Result<Authority, anyhow::Error> {
        let a = s
            .authority
            .clone()
            .ok_or_else(|| setup("authority", "the [authority] section is required"))?;
        let n = s
            .nats
            .clone()
            .ok_or_else(|| setup("nats", "the authority needs a [nats] section"))?;
        let admin_token = secret_file(&a.admin_token_file, "authority.admin_token_file")?;
        let mac = refresh::MacKeys::load(&a.refresh_key_file)
            .map_err(|e| setup("authority.refresh_key_file", e))?;
        let sidecar = Sidecar::build(&feed_settings(s, &a)?)?;
        let own_keys = Arc::new(KeyStore::new(None));
        let keys = Arc::new(
            keys::Keyring::load(&a, crate::now_ms())
                .map_err(|e| setup("authority.keys_dir", e))?
                .with_metrics(keys::KeyMetrics::register(&sidecar.registry))
                .with_store(own_keys.clone()),
        );
        let validator = Arc::new(Validator {
            issuers: vec![IssuerPolicy {
                issuer: a.issuer.clone(),
                audiences: a.audiences.clone(),
                algorithms: a
                    .allowed_algorithms()
                    .map_err(|e| setup("authority.algorithms", e))?,
                leeway: a.leeway.as_secs() as i64,
                session_claim: "sid".into(),
                max_token_lifetime: a.max_token_lifetime.as_secs() as i64,
                required_claims: vec![],
                home_claim: Some("veto_home".into()),
                home_region: None,
                keys: own_keys,
            }],
            max_token_bytes: service::MAX_ACCESS_TOKEN_BYTES,
        });
        let mut conn = bus::NatsConnection::from_settings(&n);
        conn.inbox_prefix = Some(names::AUTHORITY_INBOX_PREFIX.to_string());
        let (client, _events) = bus::connect(&conn, "veto-authority", bus::Initial::Retry)
            .await
            .context("nats")?;
        let js = bus::jetstream(client.clone(), n.domain.as_deref());
        let mut regions = n.regions.clone();
        if !regions.contains(&n.region) {
            regions.push(n.region.clone());
        }
        let metrics = metrics::AuthorityMetrics::register(&sidecar.registry);
        let backchannel = Arc::new(
            backchannel::Receiver::new(
                &a.upstreams,
                sidecar.metrics.jwks.clone(),
                backchannel::BackchannelMetrics::register(&sidecar.registry),
            )
            .map_err(|e| setup("authority.upstreams", e))?,
        );
        let current = keys.clone();
        let service = Arc::new(Service {
            rules: session::Rules {
                grace_ms: a.refresh_grace.as_millis() as i64,
                max_replays: a.refresh_max_replays,
                coalesce_ms: a.refresh_grace.as_millis().min(2_000) as i64,
            },
            region: n.region.clone(),
            regions,
            mac,
            sessions: std::sync::OnceLock::new(),
            not_befores: Arc::default(),
            recent: moka::sync::Cache::builder()
                .max_capacity(RECENT_RECORDS)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            key: Arc::new(move || current.current()),
            validator: validator.clone(),
            js,
            client: client.clone(),
            freshness: sidecar.freshness.clone(),
            metrics,
            cfg: a.clone(),
        });
        let push = Arc::new(push::Hub::new(
            push::PushConfig {
                origins: a
                    .push_origins
                    .clone()
                    .unwrap_or_else(|| a.cors_origins.clone()),
                ping_interval: a.push_ping_interval,
                max_per_session: a.push_max_per_session,
                max_sockets: a.push_max_sockets,
                leeway_secs: a.leeway.as_secs() as i64,
            },
            validator,
            sidecar.revoked.clone(),
            service.metrics.clone(),
        ));
        let api = http::Api {
            service: service.clone(),
            admin_token,
            cors_origins: a.cors_origins.clone().into(),
            own_origin: origin_of(a.public_url()).into(),
        };
        let store_latch = sidecar
            .readiness
            .latch(Component::Task("sessions"), "session bucket not open yet");
        let responder_latch = sidecar
            .readiness
            .latch(Component::Task("home_responder"), "not subscribed yet");
        Ok(Authority {
            sidecar,
            service,
            api,
            keys,
            backchannel,
            push,
            store_latch,
            responder_latch,
            client,
            cfg: a,
            nats: n,
        })
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.sidecar.freshness
    }

    /// Runs until `stop`: the public API on `public`, metrics and probes on `http`.
    pub async fn run(
        self,
        http: TcpListener,
        public: TcpListener,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let (a, n) = (self.cfg.clone(), self.nats.clone());
        let mut extra = Extra::default();
        let router = http::router(self.api.clone())
            .merge(keys::routes(
                self.keys.clone(),
                keys::Discovery::from_config(&a),
            ))
            .merge(push::routes(self.push.clone()))
            .merge(backchannel::routes(
                self.backchannel.clone(),
                self.service.clone() as Arc<dyn backchannel::LogoutEffect>,
            ));
        extra.servers.push(("api", public, router));

        // open the bucket (retried: JetStream may come up later)
        let (svc, latch) = (self.service.clone(), self.store_latch.clone());
        let js = self.service.js.clone();
        let (idle, timeout) = (a.session_idle_timeout, Duration::from_secs(5));
        extra.tasks.push((
            "sessions",
            Box::new(move |stop: CancellationToken| {
                async move {
                    let mut wait = Duration::from_millis(200);
                    loop {
                        match store::Sessions::open(&js, idle, timeout).await {
                            Ok(s) => {
                                let _ = svc.sessions.set(s.clone());
                                latch.ready();
                                // the subjects' not-befores, in memory from here on
                                s.follow_not_befores(&svc.not_befores, &stop).await;
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "session bucket not open yet");
                                latch.unready("session bucket not open yet");
                            }
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
                .boxed()
            }),
        ));

        // serve other regions' requests for sessions homed here
        let (svc, latch, client) = (
            self.service.clone(),
            self.responder_latch.clone(),
            self.client.clone(),
        );
        let region = n.region.clone();
        extra.tasks.push((
            "home_responder",
            Box::new(move |stop| serve_home(client, svc, region, latch, stop).boxed()),
        ));

        // revocations made anywhere reach the records homed here
        let (svc, mut applied) = (self.service.clone(), self.sidecar.applied());
        extra.tasks.push((
            "records",
            Box::new(move |stop: CancellationToken| {
                async move {
                    loop {
                        let a = tokio::select! {
                            _ = stop.cancelled() => return,
                            a = applied.recv() => a,
                        };
                        match a {
                            Ok(a) => {
                                let ok = follow_record(&svc, &a, &stop).await;
                                svc.metrics.records(if ok { "ok" } else { "failed" }).inc();
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                svc.metrics.records("lagged").inc_by(n);
                                tracing::error!(missed = n, "record follower lagged: some revocations were not marked on their records (their tokens stay revoked by the feed)");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }
                .boxed()
            }),
        ));

        // forced logout: sockets told of every revocation applied; told to go elsewhere at
        // shutdown
        let (hub, mut applied) = (self.push.clone(), self.sidecar.applied());
        let draining = extra.draining.clone();
        extra.tasks.push((
            "push",
            Box::new(move |stop: CancellationToken| {
                async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = draining.cancelled() => break,
                            a = applied.recv() => match a {
                                Ok(a) => hub.on_applied(&a),
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                    tracing::error!(missed = n, "push follower lagged: some open sockets were not told of their revocation (their tokens stay refused)");
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            },
                        }
                    }
                    // draining: every socket goes elsewhere now, and new ones keep being sent
                    // away until the listeners close
                    hub.drain();
                    stop.cancelled().await;
                }
                .boxed()
            }),
        ));

        // this region's heartbeat
        let (js, region, every) = (
            self.service.js.clone(),
            n.region.clone(),
            a.heartbeat_interval,
        );
        extra.tasks.push((
            "heartbeat",
            Box::new(move |stop| bus::publish::heartbeats(js, region, every, stop).boxed()),
        ));

        // signing keys follow the directory and the clock
        let keys = self.keys.clone();
        extra
            .tasks
            .push(("keys", Box::new(move |stop| keys.run(stop).boxed())));

        // upstream IdPs' keys: their own readiness, not the authority's — an IdP whose JWKS is
        // down must not take refresh out of service (its logout tokens get 503 meanwhile;
        // `veto_jwks_*` metrics show it)
        let (bcl, readiness) = (
            self.backchannel.clone(),
            crate::readiness::Readiness::default(),
        );
        extra.tasks.push((
            "backchannel_jwks",
            Box::new(move |stop: CancellationToken| {
                async move {
                    // returns at once when no upstream is configured: wait for shutdown
                    bcl.run_refreshers(&readiness, stop.clone()).await;
                    stop.cancelled().await;
                }
                .boxed()
            }),
        ));

        self.sidecar.run_with(None, http, extra, stop).await
    }
}

/// Marks one applied revocation on the records homed here, retrying while the bucket is
/// unavailable (bounded: the feed replays it at the next start anyway).
async fn follow_record(svc: &Service, a: &crate::feed::Applied, stop: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(100);
    for _ in 0..8 {
        match svc.apply_to_records(a).await {
            Ok(()) => return true,
            Err(e) => tracing::debug!(error = %e, "record not marked yet"),
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
    tracing::warn!(
        id_kind = a.kind.label(),
        "revocation not marked on its record"
    );
    false
}

/// The home's request-reply endpoint: a queue group of this region's replicas.
async fn serve_home(
    client: async_nats::Client,
    svc: Arc<Service>,
    region: String,
    latch: Latch,
    stop: CancellationToken,
) {
    let subject = format!("{}.{region}.*", names::AUTHORITY_ROOT);
    let mut sub = loop {
        match client
            .queue_subscribe(subject.clone(), names::AUTHORITY_QUEUE.to_string())
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "home responder: cannot subscribe yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    latch.ready();
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HOME_REQUESTS));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // overloaded: no answer; the caller's budget turns it into a 503
            tracing::warn!("home responder saturated; request dropped");
            continue;
        };
        let (svc, client) = (svc.clone(), client.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let answer = match serde_json::from_slice::<HomeRequest>(&msg.payload) {
                Ok(req) => svc.serve_home(req).await,
                Err(_) => service::HomeReply::Error(
                    oauth::OAuthError::invalid_request("request not understood").to_wire(),
                ),
            };
            if let Ok(body) = serde_json::to_vec(&answer) {
                if let Err(e) = client.publish(reply, body.into()).await {
                    tracing::warn!(error = %e, "home reply not sent");
                }
            }
            svc.metrics
                .home_requests
                .observe(started.elapsed().as_secs_f64());
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_origin_of_a_url() {
        let o = super::origin_of;
        assert_eq!(o("https://auth.example.com"), "https://auth.example.com");
        assert_eq!(
            o("https://auth.example.com:8443/x/y?z"),
            "https://auth.example.com:8443"
        );
        assert_eq!(o("http://127.0.0.1:9280/"), "http://127.0.0.1:9280");
    }
}
