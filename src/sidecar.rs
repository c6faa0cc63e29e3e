//! Wires the sidecar: keys, decider, feed (and its upkeep), transports and health, all under one
//! shutdown token, with readiness as the conjunction of every component's latch.

use crate::admin::{self, Admin};
use crate::authz::grpc::AllowShape;
use crate::authz::grpc::AuthzService;
use crate::authz::http::ForwardAuth;
use crate::authz::{CheckMetrics, Decider, Identity};
use crate::bus;
use crate::config::{self, Settings};
use crate::decision::{DeciderConfig, DecisionMetrics, IssuerHooks, KeyRefetch};
use crate::feed::{self, Applied, Applier, Feed, FeedMetrics, Snapshots};
use crate::jwks::{
    JwksMetrics, KeysPublisher, PublishedMetrics, Refetcher, RefetcherConfig, Source,
};
use crate::listener::{ListenerMetrics, Server};
use crate::readiness::{Component, Latch, Readiness};
use crate::revocation::{Freshness, RevokedSet, ShmMirror};
use crate::source_repair::{RepairMetrics, SourceRepair};
use crate::token::{Alg, IssuerPolicy, KeySet, KeyStore, Validator};
use anyhow::Context as _;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Everything the running sidecar shares; tests reach in through it.
pub struct Sidecar {
    pub decider: Arc<Decider>,
    /// What allow answers carry (identity headers, metadata), shared by both transports.
    pub shape: Arc<AllowShape>,
    pub revoked: Arc<RevokedSet>,
    pub freshness: Arc<Freshness>,
    pub readiness: Readiness,
    pub registry: prometheus::Registry,
    pub metrics: Metrics,
    /// Applies what every feed path delivers; built here so [`Sidecar::applied`] can be
    /// subscribed to before `run`.
    applier: Applier,
    /// Each issuer's keys refresher, with its readiness latch.
    refetchers: Vec<(Arc<Refetcher>, Latch)>,
    /// The feed's readiness latch (`None`: no `[nats]`).
    feed_latch: Option<Latch>,
    /// The revoked set's snapshot (`None`: no `revocation.snapshot.path`, or no `[nats]`).
    snapshot: Option<Arc<Snapshots>>,
    /// The settings it was built from: read once, at `build`.
    settings: Settings,
    /// The in-proxy mode's shared-memory mirror of the revoked set (`inproxy.shm_path`).
    pub mirror: Option<Arc<ShmMirror>>,
    /// The key stores of the issuers whose keys are fetched or read (`jwks_url`,
    /// `jwks_file`): what the in-proxy mode publishes to the module beside the mirror.
    fetched_keys: Vec<(String, Arc<KeyStore>)>,
}

/// The shared secret of issuer `i` (HS* algorithms), read from its file.
pub fn hmac_secret(iss: &config::Issuer, i: usize) -> anyhow::Result<Option<Arc<[u8]>>> {
    match &iss.hmac_secret_file {
        Some(p) => {
            let secret = std::fs::read(p)
                .with_context(|| format!("issuers[{i}].hmac_secret_file: cannot read"))?;
            anyhow::ensure!(
                secret.len() >= 32,
                "issuers[{i}].hmac_secret_file: secret shorter than 32 bytes"
            );
            Ok(Some(secret.into()))
        }
        None => Ok(None),
    }
}

/// The validator's policy for an issuer, with its keys in `keys`: the sidecar's, and the
/// in-proxy module's (the same settings give the same validation).
pub fn issuer_policy(
    iss: &config::Issuer,
    algorithms: Vec<Alg>,
    keys: Arc<KeyStore>,
) -> IssuerPolicy {
    IssuerPolicy {
        issuer: iss.issuer.clone(),
        audiences: iss.audiences.clone(),
        algorithms,
        leeway: iss.leeway.as_secs() as i64,
        session_claim: iss.session_claim.clone(),
        max_token_lifetime: iss.max_token_lifetime.as_secs() as i64,
        required_claims: iss.required_claims.clone(),
        home_claim: (!iss.home_claim.is_empty()).then(|| iss.home_claim.clone()),
        home_region: iss.home_region.clone(),
        keys,
    }
}

/// The origins whose freshness the decision tracks: this region and `nats.regions`.
pub fn expected_origins(s: &Settings) -> Freshness {
    match &s.nats {
        Some(n) => Freshness::expecting(std::iter::once(&n.region).chain(&n.regions)),
        None => Freshness::default(),
    }
}

/// The decider's policy from the settings (the sidecar's and the in-proxy module's).
pub fn decider_config(s: &Settings, identity: &Identity) -> DeciderConfig {
    DeciderConfig {
        header_claims: identity.claims(),
        revoked_status: s.authz.revoked_status,
        on_stale: s.revocation.on_stale,
        isolation: s.revocation.isolation,
        own_region: s.nats.as_ref().map(|n| n.region.clone()),
        max_staleness: s.revocation.max_staleness,
        cache_capacity: s.cache.max_tokens,
    }
}

/// Every metric family of the sidecar, each part registered by the module that uses it.
#[derive(Clone)]
pub struct Metrics {
    pub checks: CheckMetrics,
    pub decision: DecisionMetrics,
    pub verify: crate::verify::PoolMetrics,
    pub feed: FeedMetrics,
    pub jwks: JwksMetrics,
    pub upkeep: feed::UpkeepMetrics,
    pub source_repair: RepairMetrics,
    /// Every listener's connection cap and timeouts (`listener` label).
    pub listeners: ListenerMetrics,
}

impl Metrics {
    pub fn register(r: &prometheus::Registry) -> Metrics {
        Metrics {
            checks: CheckMetrics::register(r),
            decision: DecisionMetrics::register(r),
            verify: crate::verify::PoolMetrics::register(r),
            feed: FeedMetrics::register(r),
            jwks: JwksMetrics::register(r),
            upkeep: feed::UpkeepMetrics::register(r),
            source_repair: RepairMetrics::register(r),
            listeners: ListenerMetrics::register(r),
        }
    }
}

/// The sidecar's long-running tasks. A server that stops stops the sidecar; any other task
/// that stops makes it unready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Grpc,
    Http,
    Jwks,
    Feed,
    FastPath,
    CatchUp,
    SourceRepair,
    Upkeep,
    Snapshot,
    Health,
    /// The in-proxy mirror's heartbeat (`inproxy.shm_path`).
    InproxyHeartbeat,
    /// A server or task added by the embedding program (the authority's API, its loops).
    ExtraServer(&'static str),
    Extra(&'static str),
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Grpc => "grpc",
            Task::Http => "http",
            Task::Jwks => "jwks",
            Task::Feed => "feed",
            Task::FastPath => "fast_path",
            Task::CatchUp => "catchup",
            Task::SourceRepair => "source_repair",
            Task::Upkeep => "upkeep",
            Task::Snapshot => "snapshot",
            Task::Health => "health",
            Task::InproxyHeartbeat => "inproxy_heartbeat",
            Task::ExtraServer(name) | Task::Extra(name) => name,
        }
    }

    fn is_server(self) -> bool {
        matches!(self, Task::Grpc | Task::Http | Task::ExtraServer(_))
    }

    /// Its readiness entry when it stops unexpectedly.
    fn component(self) -> Component {
        match self {
            Task::Feed => Component::Feed,
            other => Component::Task(other.name()),
        }
    }
}

impl Sidecar {
    /// Builds the sidecar's state from validated settings. Reads secret files; fetches
    /// nothing yet.
    pub fn build(s: &Settings) -> anyhow::Result<Sidecar> {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry);
        let readiness = Readiness::default();
        let mut policies = Vec::new();
        let mut refetchers = Vec::new();
        let mut per_issuer = Vec::new();
        let mut fetched_keys = Vec::new();
        for (i, iss) in s.issuers.iter().enumerate() {
            let algorithms = iss
                .parsed_algorithms()
                .map_err(|a| anyhow::anyhow!("issuers[{i}].algorithms: unsupported {a:?}"))?;
            let hmac_secret = hmac_secret(iss, i)?;
            let source = match (&iss.jwks_url, &iss.jwks_file) {
                (Some(u), _) => Some(Source::Url(u.clone())),
                (None, Some(f)) => Some(Source::File(f.clone())),
                (None, None) => None,
            };
            let store = Arc::new(match source {
                // keys arrive from the refresher
                Some(_) => KeyStore::new(None),
                None => KeyStore::new(Some(
                    KeySet::default().with_hmac_secret(hmac_secret.clone()),
                )),
            });
            let refetcher = match source {
                Some(source) => {
                    let latch =
                        readiness.latch(Component::Jwks(iss.issuer.clone()), "JWKS not loaded yet");
                    let r = Arc::new(Refetcher::new(
                        RefetcherConfig {
                            issuer: iss.issuer.clone(),
                            source,
                            allowed: algorithms.clone(),
                            hmac_secret,
                            refresh: iss.jwks_refresh_interval,
                            min_refetch: iss.jwks_min_refetch_interval,
                            timeout: iss.jwks_fetch_timeout,
                        },
                        store.clone(),
                        metrics.jwks.clone(),
                    )?);
                    refetchers.push((r.clone(), latch));
                    fetched_keys.push((iss.issuer.clone(), store.clone()));
                    Some(r)
                }
                None => None,
            };
            per_issuer.push(IssuerHooks {
                leeway: iss.leeway.as_secs() as i64,
                refetch: refetcher.map(|r| r as Arc<dyn KeyRefetch>),
            });
            policies.push(issuer_policy(iss, algorithms, store));
        }
        let validator = Validator {
            issuers: policies,
            max_token_bytes: s.authz.max_token_bytes,
        };
        // With a snapshot, the set is built under the snapshot's hash keys (its entries go in
        // once the feed has seen the stream); without one, or without [nats], a fresh set.
        let (revoked, snapshot) = match &s.nats {
            Some(n) => Snapshots::open(
                &s.revocation.snapshot,
                &bus::names::stream_name(&n.stream, &n.region),
                s.revocation.max_entries,
                &metrics.feed,
            ),
            None => {
                if s.revocation.snapshot.path.is_some() {
                    tracing::warn!("revocation.snapshot.path is set without [nats]: no snapshot");
                }
                let set = RevokedSet::with_max_entries(s.revocation.max_entries);
                (Arc::new(set), None)
            }
        };
        let freshness = Arc::new(expected_origins(s));
        let mirror = match &s.inproxy.shm_path {
            Some(path) => {
                let origins: Vec<String> = freshness
                    .names(freshness.all())
                    .map(str::to_string)
                    .collect();
                let m = revoked.mirror_to(path, &origins).with_context(|| {
                    format!("inproxy.shm_path: cannot create {}", path.display())
                })?;
                // what the module(s) count beside the mirror, read at each scrape
                crate::metrics::register(&registry, crate::authz::InproxyChecks::new(path));
                Some(m)
            }
            None => None,
        };
        let feed_latch = s
            .nats
            .as_ref()
            .map(|_| readiness.latch(Component::Feed, "revocation stream not replayed yet"));
        let identity = Arc::new(Identity::new(s.authz.headers.clone()));
        let pool = crate::verify::Pool::start(&s.verify, metrics.verify.clone())
            .map_err(|e| anyhow::anyhow!("verify: cannot start the pool's threads: {e}"))?;
        let decider = Arc::new(
            Decider::new(
                validator,
                revoked.clone(),
                freshness.clone(),
                per_issuer,
                decider_config(s, &identity),
                metrics.decision.clone(),
            )
            .with_pool(Arc::new(pool)),
        );
        if s.nats.is_some() {
            // Readiness asks the decider itself, at query time: /readyz is 503 exactly while
            // every check would be refused (or counted) for staleness.
            // For its first max(max_staleness, 10 s) a pod also waits to have heard from
            // every origin once (stream sourcing of a new region starts on nats-server's
            // retry timers, seconds); bounded, so a region that never published cannot hold
            // readiness forever.
            let d = Arc::downgrade(&decider);
            let settle = s.revocation.max_staleness.max(Duration::from_secs(10));
            let started = std::time::Instant::now();
            readiness.register_live(
                Component::Freshness,
                Arc::new(move || {
                    d.upgrade()?
                        .freshness_blocker(crate::now_ms(), started.elapsed() < settle)
                }),
            );
        }
        let shape = Arc::new(AllowShape {
            identity,
            remove_authorization: s.authz.remove_authorization,
            metadata_namespace: s.authz.metadata_namespace.clone(),
        });
        let applier = Applier::new(revoked.clone(), freshness.clone(), metrics.feed.clone());
        Ok(Sidecar {
            applier,
            mirror,
            decider,
            shape,
            revoked,
            freshness,
            readiness,
            registry,
            metrics,
            refetchers,
            feed_latch,
            snapshot,
            settings: s.clone(),
            fetched_keys,
        })
    }

    /// Every revocation newly applied from now on, by any feed path: what the forced-logout
    /// push, tests and benchmarks observe.
    pub fn applied(&self) -> tokio::sync::broadcast::Receiver<Applied> {
        self.applier.subscribe()
    }

    /// Loads every issuer's keys once, now, marking them ready on success: for in-process use
    /// without `run` (which keeps them refreshed).
    pub async fn load_keys(&self) {
        for (r, latch) in &self.refetchers {
            if r.load_now().await {
                latch.ready();
            }
        }
    }

    /// Runs until `stop` is cancelled (SIGTERM), then shuts down in order within
    /// `shutdown.grace`: NOT_SERVING first, the servers keep answering for `shutdown.drain`,
    /// then the listeners close, then the feed and everything else. Listeners are injected so
    /// tests bind port 0.
    pub async fn run(
        self,
        grpc: TcpListener,
        http: TcpListener,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        self.run_with(Some(grpc), http, Extra::default(), stop)
            .await
    }

    /// [`Sidecar::run`] for a program that embeds the sidecar's feed (the authority):
    /// without gRPC if `grpc` is `None`, and with `extra` servers and tasks under the same
    /// readiness and ordered shutdown (extra servers drain and close with the others).
    pub async fn run_with(
        self,
        grpc: Option<TcpListener>,
        http: TcpListener,
        extra: Extra,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let s = &self.settings;
        // Background work (keys, feed, housekeeping) stops on `shutdown`, the listeners on
        // `servers`: both are cancelled by the ordered shutdown below, the listeners first.
        let shutdown = CancellationToken::new();
        let servers_stop = CancellationToken::new();
        let mut tasks: JoinSet<Task> = JoinSet::new();
        let mut servers: JoinSet<Task> = JoinSet::new();

        for (r, latch) in &self.refetchers {
            let (r, latch, sd) = (r.clone(), latch.clone(), shutdown.clone());
            tasks.spawn(async move {
                r.run(latch, sd).await;
                Task::Jwks
            });
        }

        let applier = self.applier.clone();
        if let Some(n) = s.nats.clone() {
            let (client, events) = bus::connect(
                &bus::NatsConnection::from_settings(&n),
                "veto-sidecar",
                bus::Initial::Retry,
            )
            .await?;
            for origin in n.regions.iter().filter(|r| **r != n.region) {
                let c = feed::CatchUp {
                    origin: origin.clone(),
                    stream: bus::names::stream_name(&n.stream, origin),
                    lag_threshold: n.catchup_after,
                    // fail fast while the origin is unreachable, so the read starts as soon
                    // as the link is back
                    request_timeout: Duration::from_millis(250),
                    applier: applier.clone(),
                };
                let (client, sd) = (client.clone(), shutdown.clone());
                tasks.spawn(async move {
                    c.run(client, sd).await;
                    Task::CatchUp
                });
            }
            if n.ensure_stream && n.regions.iter().any(|r| *r != n.region) {
                // Unsticks a source the server stopped advancing (nats-server 2.9 dedupe
                // wedge, see source_repair): the stream this sidecar provisions is its care.
                match bus::stream::Plan::new(
                    &n.stream,
                    &n.region,
                    &n.regions,
                    s.revocation.retention,
                ) {
                    Ok(plan) => {
                        let api = SourceRepair::api_prefix(n.domain.as_deref());
                        let watcher = SourceRepair::new(client.clone(), &plan, api);
                        let (repairs, sd) = (self.metrics.source_repair.clone(), shutdown.clone());
                        tasks.spawn(async move {
                            watcher.run(repairs, sd).await;
                            Task::SourceRepair
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "stream sources not watched"),
                }
            }
            if n.fast_path {
                let (c, a, sd) = (client.clone(), applier.clone(), shutdown.clone());
                tasks.spawn(async move {
                    feed::run_fast_path(c, a, sd).await;
                    Task::FastPath
                });
            }
            let latch = self
                .feed_latch
                .clone()
                .unwrap_or_else(|| self.readiness.latch(Component::Feed, "not replayed yet"));
            let f = Feed {
                cfg: n,
                retention: s.revocation.retention,
                applier,
                readiness: latch,
                snapshot: self.snapshot.clone(),
            };
            let sd = shutdown.clone();
            tasks.spawn(async move {
                f.run(client, events, sd).await;
                Task::Feed
            });
            if let Some(snapshot) = self.snapshot.clone() {
                // written every interval and, when the ordered shutdown stops background
                // work, once more (within shutdown.grace)
                let sd = shutdown.clone();
                tasks.spawn(async move {
                    snapshot.run(sd).await;
                    Task::Snapshot
                });
            }
        } else {
            tracing::warn!("no [nats] section: revocations are NOT enforced by this sidecar");
        }

        let (health, health_svc) = tonic_health::server::health_reporter();
        let health_on_stop = health.clone();
        let upkeep = feed::Upkeep {
            revoked: self.revoked.clone(),
            freshness: self.freshness.clone(),
            capacity: self
                .readiness
                .latch(Component::Revocations, "not counted yet"),
            metrics: self.metrics.upkeep.clone(),
            max_entries: s.revocation.max_entries,
            prune_every: s.revocation.prune_interval,
        };
        let sd = shutdown.clone();
        tasks.spawn(async move {
            upkeep.run(sd).await;
            Task::Upkeep
        });
        let (readiness, sd) = (self.readiness.clone(), shutdown.clone());
        tasks.spawn(async move {
            follow_health(readiness, health, sd).await;
            Task::Health
        });
        if let Some(mirror) = self.mirror.clone() {
            let (freshness, feed, sd) = (
                self.freshness.clone(),
                self.metrics.feed.clone(),
                shutdown.clone(),
            );
            let every = s.inproxy.heartbeat_interval;
            let keys = s.inproxy.shm_path.as_deref().map(|p| {
                let m = PublishedMetrics::register(&self.registry);
                KeysPublisher::new(p, self.fetched_keys.clone(), m)
            });
            let gauges = MirrorMetrics::register(&self.registry);
            tasks.spawn(async move {
                inproxy_heartbeat(mirror, keys, freshness, feed, gauges, every, sd).await;
                Task::InproxyHeartbeat
            });
        }

        let authz = AuthzService::new(
            self.decider.clone(),
            self.shape.clone(),
            self.metrics.checks.clone(),
        );
        if let Some(grpc) = grpc {
            let sd = servers_stop.clone();
            let l = s.limits.clone();
            let incoming = crate::listener::grpc_incoming(
                tonic::transport::server::TcpIncoming::from(grpc)
                    .with_nodelay(Some(true))
                    // dead peers that never answer (a pod gone without a FIN)
                    .with_keepalive(Some(l.grpc_keepalive_interval)),
                "grpc",
                l.http(),
                self.metrics.listeners.clone(),
            );
            servers.spawn(async move {
                let result = tonic::transport::Server::builder()
                    .timeout(l.request_timeout)
                    .concurrency_limit_per_connection(l.grpc_concurrency_per_connection)
                    .max_concurrent_streams(l.grpc_max_concurrent_streams)
                    .http2_keepalive_interval(Some(l.grpc_keepalive_interval))
                    .http2_keepalive_timeout(Some(l.grpc_keepalive_timeout))
                    .http2_max_header_list_size(l.grpc_max_message_bytes as u32)
                    .add_service(health_svc)
                    .add_service(
                        AuthorizationServer::new(authz)
                            .max_decoding_message_size(l.grpc_max_message_bytes),
                    )
                    .serve_with_incoming_shutdown(incoming, sd.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC server failed");
                }
                Task::Grpc
            });
        }
        let draining = extra.draining.clone();
        for (name, listener, router) in extra.servers {
            let sd = servers_stop.clone();
            let server = Server::new(name, s.limits.http(), self.metrics.listeners.clone());
            servers.spawn(async move {
                server.serve(listener, router, sd).await;
                Task::ExtraServer(name)
            });
        }
        for (name, task) in extra.tasks {
            let sd = shutdown.clone();
            tasks.spawn(async move {
                task(sd).await;
                Task::Extra(name)
            });
        }

        let router = admin::router(
            ForwardAuth {
                decider: self.decider.clone(),
                identity: self.shape.identity.clone(),
                metrics: self.metrics.checks.clone(),
            },
            Admin {
                registry: self.registry.clone(),
                readiness: self.readiness.clone(),
            },
        );
        let sd = servers_stop.clone();
        let server = Server::new("http", s.limits.http(), self.metrics.listeners.clone());
        servers.spawn(async move {
            server.serve(http, router, sd).await;
            Task::Http
        });

        // A component that stops before shutdown makes the sidecar unready and, for the
        // servers, stops the process: never silently gone.
        let mut servers_gone = false;
        loop {
            let (done, from_servers) = tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = servers.join_next() => (done, true),
                Some(done) = tasks.join_next() => (done, false),
                else => break,
            };
            let (component, server) = match done {
                Ok(task) => (task.component(), task.is_server()),
                Err(e) => {
                    tracing::error!(error = %e, "task panicked");
                    (Component::Task("task"), from_servers)
                }
            };
            tracing::error!(component = %component, "component stopped unexpectedly");
            self.readiness
                .latch(component, "component stopped")
                .unready("component stopped");
            if server {
                servers_gone = true;
                break;
            }
        }
        self.shut_down(
            &s.shutdown,
            ShutdownParts {
                health: health_on_stop,
                draining,
                servers,
                servers_stop,
                tasks,
                tasks_stop: shutdown,
                skip_drain: servers_gone,
            },
        )
        .await;
        Ok(())
    }

    /// The ordered, bounded shutdown: NOT_SERVING (readiness and gRPC health) → servers keep
    /// answering for `drain` → listeners close (in-flight requests finish) → background work
    /// stops; whatever is still running at `grace` is aborted.
    async fn shut_down(&self, cfg: &crate::config::Shutdown, mut p: ShutdownParts) {
        let started = tokio::time::Instant::now();
        let deadline = started + cfg.grace;
        self.readiness
            .latch(Component::Shutdown, "shutting down")
            .unready("shutting down");
        p.draining.cancel();
        for service in ["", AUTHZ_SERVICE] {
            p.health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        if !p.skip_drain {
            tracing::info!(drain = ?cfg.drain, "shutting down: not serving; draining");
            tokio::time::sleep_until(started + cfg.drain).await;
        }
        p.servers_stop.cancel();
        let closed = tokio::time::timeout_at(deadline, async {
            while p.servers.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            tracing::warn!("listeners did not close within shutdown.grace; aborting them");
            p.servers.abort_all();
        }
        p.tasks_stop.cancel();
        let stopped = tokio::time::timeout_at(deadline, async {
            while p.tasks.join_next().await.is_some() {}
        })
        .await;
        if stopped.is_err() {
            tracing::warn!("background tasks did not stop within shutdown.grace; aborting them");
            p.tasks.abort_all();
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "shut down");
    }
}

/// Servers and background tasks an embedding program adds to [`Sidecar::run_with`].
#[derive(Default)]
pub struct Extra {
    /// `(name, listener, router)`: served until the ordered shutdown closes the listeners.
    pub servers: Vec<(&'static str, TcpListener, axum::Router)>,
    /// `(name, task)`: each gets the background shutdown token.
    #[allow(clippy::type_complexity)]
    pub tasks: Vec<(
        &'static str,
        Box<dyn FnOnce(CancellationToken) -> futures::future::BoxFuture<'static, ()> + Send>,
    )>,
    /// Cancelled when the ordered shutdown begins (NOT_SERVING, before the drain): for
    /// connections the listeners' close does not end, such as WebSockets, to be told to go
    /// elsewhere while the proxy stops routing here.
    pub draining: CancellationToken,
}

/// The ext_authz service name in gRPC health.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

struct ShutdownParts {
    health: tonic_health::server::HealthReporter,
    draining: CancellationToken,
    servers: JoinSet<Task>,
    servers_stop: CancellationToken,
    tasks: JoinSet<Task>,
    tasks_stop: CancellationToken,
    /// A server already died: nothing to drain.
    skip_drain: bool,
}

/// gRPC health follows readiness (latches and live checks) within one tick; NOT_SERVING on
/// shutdown comes from the ordered shutdown itself.
async fn follow_health(
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut was_ready = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ready = readiness.is_ready();
        if was_ready != Some(ready) {
            was_ready = Some(ready);
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for service in [AUTHZ_SERVICE, ""] {
                health.set_service_status(service, status).await;
            }
        }
    }
}

/// Publishes the sidecar's status into the in-proxy mirror every `every` until `stop`: the
/// heartbeat the module's freshness check reads, the feed position and whether the feed has
/// replayed (the file only becomes visible at its path once it has), and each origin's last
/// fresh time. First, when the issuers' keys changed (a refresh or an unknown-`kid` refetch
/// brought new ones), it publishes them beside the mirror and bumps the keys generation the
/// module watches; a failed write is logged (once until one succeeds) and retried next tick.
async fn inproxy_heartbeat(
    mirror: Arc<ShmMirror>,
    mut keys: Option<KeysPublisher>,
    freshness: Arc<Freshness>,
    feed: FeedMetrics,
    gauges: MirrorMetrics,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys_failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(p) = keys.as_mut() {
            match p.publish_if_changed() {
                Ok(true) => {
                    let generation = mirror.bump_keys_generation();
                    p.metrics().set_generation(generation);
                    tracing::info!(generation, path = %p.path().display(), "in-proxy keys published");
                    keys_failing = false;
                }
                Ok(false) => keys_failing = false,
                Err(e) if !keys_failing => {
                    keys_failing = true;
                    tracing::error!(error = %e, path = %p.path().display(), "in-proxy keys not published; the module keeps the keys it has");
                }
                Err(_) => {}
            }
        }
        let position = u64::try_from(feed.last_sequence.get()).unwrap_or(0);
        mirror.publish(&freshness, position, feed.ready.get() == 1, crate::now_ms());
        gauges.observe(&mirror);
    }
}

/// What the sidecar's `/metrics` shows of its in-proxy mirror, set each heartbeat.
struct MirrorMetrics {
    healthy: prometheus::IntGauge,
    bytes: prometheus::IntGauge,
    generation: prometheus::IntGauge,
}

impl MirrorMetrics {
    fn register(r: &prometheus::Registry) -> MirrorMetrics {
        MirrorMetrics {
            healthy: crate::metrics::gauge(
                r,
                "veto_inproxy_mirror_healthy",
                "1 while the in-proxy shared-memory mirror is written; 0 once a write failed (a full tmpfs): its heartbeat stops, the module goes stale, and only a restart recovers it.",
            ),
            bytes: crate::metrics::gauge(
                r,
                "veto_inproxy_mirror_bytes",
                "Size of the current in-proxy shared-memory file (size its tmpfs with room for two during a rebuild).",
            ),
            generation: crate::metrics::gauge(
                r,
                "veto_inproxy_mirror_generation",
                "Generation of the current in-proxy shared-memory file (it changes on growth and pruning).",
            ),
        }
    }

    fn observe(&self, mirror: &ShmMirror) {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.healthy.set(i64::from(mirror.healthy()));
        self.bytes.set(i(mirror.file_bytes() as u64));
        self.generation.set(i(mirror.generation()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Transport;
    use crate::decision::Decision;
    use crate::feed::{Outcome, Path};
    use crate::metrics;
    use crate::revocation::Kind;
    use std::collections::BTreeMap;

    /// Every family the sidecar exports: name, type, help and label names (sorted), byte for
    /// byte what alerts, the dashboard, promtool and the README rely on.
    const FAMILIES: &[(&str, &str, &str, &[&str])] = &[
        ("veto_check_duration_seconds", "histogram", "Time to decide one check.", &["transport"]),
        ("veto_checks_total", "counter", "Authorization checks by transport, result and reason.", &["reason", "result", "transport"]),
        ("veto_feed_catchup_reads_total", "counter", "Times an origin's stream was read directly because its source lagged.", &["origin_region"]),
        ("veto_feed_connected", "gauge", "1 while connected to NATS.", &[]),
        ("veto_feed_consumer_restarts_total", "counter", "Times the stream consumer was recreated.", &[]),
        ("veto_feed_consumer_stalls_total", "counter", "Times the stream consumer stopped delivering while the stream held more, and was recreated.", &[]),
        ("veto_feed_last_sequence", "gauge", "Last stream sequence applied.", &[]),
        ("veto_feed_ready", "gauge", "1 once the revocation stream has been replayed.", &[]),
        ("veto_feed_replay_seconds", "histogram", "Time from feed start to caught up.", &[]),
        ("veto_feed_staleness_seconds", "gauge", "Seconds since the feed from this origin was last known fresh.", &["origin_region"]),
        ("veto_jwks_keys", "gauge", "Verification keys currently loaded, by issuer.", &["issuer"]),
        ("veto_jwks_refresh_total", "counter", "JWKS loads by issuer and result.", &["issuer", "result"]),
        ("veto_listener_body_too_large_total", "counter", "Requests answered 413 because their Content-Length exceeded max_body_bytes.", &["listener"]),
        ("veto_listener_connections", "gauge", "Connections open on the listener (upgraded ones excluded).", &["listener"]),
        ("veto_listener_connections_refused_total", "counter", "Connections accepted and closed at once because the listener held max_connections.", &["listener"]),
        ("veto_listener_timeouts_total", "counter", "Connections closed by the server, by listener and timeout (header, idle, request).", &["kind", "listener"]),
        ("veto_revocation_events_total", "counter", "Revocation events received, by path (durable/fast) and result.", &["path", "result"]),
        ("veto_revocation_propagation_seconds", "histogram", "Revocation propagation lag: time applied here minus revoked_at at the origin.", &["origin_region", "path"]),
        ("veto_revocation_snapshot_fallbacks_total", "counter", "Starts with revocation.snapshot.path set that replayed the whole stream instead of loading the snapshot, by reason.", &["reason"]),
        ("veto_revocation_snapshot_loaded_entries", "gauge", "Revocations loaded from the snapshot at start (0: none loaded).", &[]),
        ("veto_revocation_snapshot_sequence", "gauge", "Stream sequence covered by the last snapshot loaded or written.", &[]),
        ("veto_revocation_snapshot_writes_total", "counter", "Revocation snapshot writes, by result (ok/error).", &["result"]),
        ("veto_revocations_capacity", "gauge", "Revocations the sidecar is configured to hold (revocation.max_entries).", &[]),
        ("veto_revocations_held", "gauge", "Live revocations held, by kind.", &["kind"]),
        ("veto_revocations_over_capacity", "gauge", "1 when revocations exceed revocation.max_entries (none are dropped).", &[]),
        ("veto_revocations_table_bytes", "gauge", "Bytes held by the revoked-set tables.", &[]),
        ("veto_served_while_origin_stale_total", "counter", "Checks allowed while this origin was stale, because the token does not depend on it (revocation.isolation = home), by stale origin.", &["origin"]),
        ("veto_stale_decisions_total", "counter", "Checks decided while the feed was stale, by policy.", &["policy"]),
        ("veto_stream_source_repairs_total", "counter", "Repairs of this region stream's source of an origin that stopped advancing while the origin did not, by result (healed/not_healed/not_applicable/error).", &["origin_region", "result"]),
        ("veto_token_cache_lookups_total", "counter", "Verified-token cache lookups by result.", &["result"]),
        ("veto_verify_jobs_total", "counter", "Token verifications submitted to the pool, by how they ended: ran; refused as the queue was full (queue_full) or after waiting verify.max_wait (timed_out); dropped unstarted as the caller had gone (abandoned); panicked.", &["result"]),
        ("veto_verify_queue_depth", "gauge", "Token verifications waiting for a pool thread.", &[]),
        ("veto_verify_queue_wait_seconds", "histogram", "Time a token verification waited in the queue before a pool thread took it.", &[]),
    ];

    /// Registers everything and gives every labelled family one child.
    fn touched() -> (prometheus::Registry, Metrics) {
        let r = prometheus::Registry::new();
        let m = Metrics::register(&r);
        m.checks
            .checks::<()>(Transport::Http, &Decision::Error("x"))
            .inc();
        m.feed.events(Path::Fast, Outcome::Applied).inc();
        m.feed.propagation("eu", Path::Durable).observe(0.1);
        m.feed.catchup_reads("eu").inc();
        m.feed.snapshot_fallback(feed::Fallback::Corrupt).inc();
        m.feed.snapshot_writes("ok").inc();
        m.decision
            .stale_decisions(crate::config::OnStale::Allow)
            .inc();
        m.decision.served_while_origin_stale("eu").inc();
        m.jwks.refresh("iss", crate::jwks::Load::Ok).inc();
        m.jwks.keys("iss").set(1);
        m.listeners.touch("http");
        m.upkeep.held(Kind::Token).set(1);
        m.upkeep.staleness("eu").set(1.0);
        m.source_repair
            .repairs::<()>("eu", &Ok(crate::source_repair::Outcome::Healed))
            .inc();
        (r, m)
    }

    #[test]
    fn families_names_help_and_labels_are_pinned() {
        let (r, _m) = touched();
        let text = metrics::render(&r);
        let mut help = BTreeMap::new();
        let mut kind = BTreeMap::new();
        let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let (n, h) = rest.split_once(' ').unwrap();
                help.insert(n.to_string(), h.to_string());
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (n, t) = rest.split_once(' ').unwrap();
                kind.insert(n.to_string(), t.to_string());
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find(|f| kind.get(*f).is_some_and(|t| t == "histogram"))
                    .unwrap_or(name);
                let mut names: Vec<String> = match l.split_once('{') {
                    Some((_, rest)) => rest
                        .split_once('}')
                        .unwrap()
                        .0
                        .split(',')
                        .map(|kv| kv.split_once('=').unwrap().0.to_string())
                        .filter(|k| k != "le")
                        .collect(),
                    None => Vec::new(),
                };
                names.sort();
                labels.insert(family.to_string(), names);
            }
        }
        let got: Vec<(String, String, String, Vec<String>)> = help
            .iter()
            .map(|(n, h)| {
                let t = kind[n].clone();
                (n.clone(), t, h.clone(), labels[n].clone())
            })
            .collect();
        let want: Vec<(String, String, String, Vec<String>)> = FAMILIES
            .iter()
            .map(|(n, t, h, l)| {
                let l = l.iter().map(|s| s.to_string()).collect();
                (n.to_string(), t.to_string(), h.to_string(), l)
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn registers_without_duplicates() {
        let r = prometheus::Registry::new();
        let m = Metrics::register(&r);
        m.checks.allowed(Transport::Grpc).inc();
        let text = metrics::render(&r);
        assert!(
            text.contains("veto_checks_total{reason=\"ok\",result=\"allow\",transport=\"grpc\"} 1")
        );
        // metrics are per registry (no globals): a second sidecar in the same process gets
        // its own complete set
        let r2 = prometheus::Registry::new();
        let _ = Metrics::register(&r2);
        assert!(metrics::render(&r2).contains("veto_feed_ready 0"));
        assert!(metrics::render(&r2)
            .contains("veto_checks_total{reason=\"ok\",result=\"allow\",transport=\"grpc\"} 0"));
    }
}
