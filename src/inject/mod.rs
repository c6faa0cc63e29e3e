//! `veto inject`: the mutating admission webhook that adds the veto sidecar (and Envoy with its
//! ext_authz wiring) to pods that ask for it.
//!
//! - [`config`]: the webhook's settings and the named profiles a pod picks.
//! - [`patch`]: PURE, the decision about one pod and its RFC 6902 patch.
//! - [`review`]: PURE, one AdmissionReview v1 in, the HTTP status and body out.
//! - [`tls`]: the serving certificate, reloaded when its files' content changes.
//! - this module: the HTTPS listener (on [`crate::listener`]: bounded handshake, header
//!   and body reads, body limit, connection cap), the plain-HTTP `/healthz` `/readyz` `/metrics` listener, the metrics, and the
//!   ordered shutdown (unready at once, keep answering for `shutdown.drain`, then close
//!   within `shutdown.grace`).

pub mod config;
pub mod patch;
pub mod review;
pub mod tls;

use crate::admin::{admin_router, Admin};
use crate::listener::{Limits, ListenerMetrics, Server, Tls};
use crate::readiness::{Component, Readiness};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use config::{Inject, InjectSettings};
use futures::StreamExt;
use patch::Selection;
use prometheus::{Histogram, IntCounterVec, IntGauge, Registry};
use review::Outcome;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Concurrent connections per listener; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 1024;

/// A keep-alive connection (the API server's) with nothing in flight is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// The webhook's metric families.
#[derive(Clone)]
pub struct InjectMetrics {
    reviews: IntCounterVec,
    duration: Histogram,
    handshakes_failed: IntCounterVec,
    cert_reloads: IntCounterVec,
    cert_ok: IntGauge,
}

impl InjectMetrics {
    pub fn register(r: &Registry) -> InjectMetrics {
        use crate::metrics as m;
        let reviews = m::counter_vec(
            r,
            "veto_inject_reviews_total",
            "Admission requests answered, by result (injected, already_injected, not_selected, opted_out, ignored, refused, malformed, too_large, timeout)",
            &["result"],
        );
        for o in Outcome::ALL {
            reviews.with_label_values(&[o.label()]);
        }
        let handshakes_failed = m::counter_vec(
            r,
            "veto_inject_tls_handshake_failures_total",
            "TLS handshakes that failed (error) or did not finish within inject.handshake_timeout (timeout)",
            &["reason"],
        );
        for reason in ["error", "timeout"] {
            handshakes_failed.with_label_values(&[reason]);
        }
        let cert_reloads = m::counter_vec(
            r,
            "veto_inject_cert_reloads_total",
            "Changed certificate files loaded (ok) or refused, the previous certificate kept (error)",
            &["result"],
        );
        for result in ["ok", "error"] {
            cert_reloads.with_label_values(&[result]);
        }
        let cert_ok = m::gauge(
            r,
            "veto_inject_cert_last_reload_ok",
            "1 when the certificate files in place are the ones served (their last load succeeded)",
        );
        cert_ok.set(1);
        InjectMetrics {
            reviews,
            duration: m::histogram(
                r,
                "veto_inject_review_duration_seconds",
                "Time from request to answer, body read included",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
                ],
            ),
            handshakes_failed,
            cert_reloads,
            cert_ok,
        }
    }

    fn reload(&self, r: tls::Reload) {
        match r {
            tls::Reload::Loaded => {
                self.cert_reloads.with_label_values(&["ok"]).inc();
                self.cert_ok.set(1);
            }
            tls::Reload::Failed => {
                self.cert_reloads.with_label_values(&["error"]).inc();
                self.cert_ok.set(0);
            }
            tls::Reload::Unchanged => {}
        }
    }
}

/// What the handlers share.
struct Shared {
    cfg: Inject,
    metrics: InjectMetrics,
}

/// The webhook, built once from its settings (the certificate loaded), then [`Webhook::run`].
pub struct Webhook {
    settings: InjectSettings,
    registry: Registry,
    metrics: InjectMetrics,
    readiness: Readiness,
    reloader: tls::CertReloader,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Webhook {
    /// Loads the certificate: a pair that does not load is a configuration error.
    pub fn build(s: &InjectSettings) -> Result<Webhook, tls::CertError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let reloader =
            tls::CertReloader::load(&s.inject.cert_file, &s.inject.key_file, provider.clone())?;
        let registry = Registry::new();
        let metrics = InjectMetrics::register(&registry);
        Ok(Webhook {
            settings: s.clone(),
            registry,
            metrics,
            readiness: Readiness::default(),
            reloader,
            provider,
        })
    }

    /// The `/mutate` and `/mutate/namespace` routes, without TLS (tests call it in-process).
    pub fn router(&self) -> Router {
        router(Arc::new(Shared {
            cfg: self.settings.inject.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    /// Serves HTTPS on `tls` and `/healthz` `/readyz` `/metrics` on `http` until `stop`, then
    /// shuts down in order: unready, keep answering for `shutdown.drain`, close (in-flight
    /// requests finish) within `shutdown.grace`.
    pub async fn run(
        self,
        tls: TcpListener,
        http: TcpListener,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let cfg = self.settings.inject.clone();
        let server_cfg = tls::server_config(self.provider.clone(), self.reloader.store())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let app = self.router();
        let servers_stop = CancellationToken::new();
        let tasks_stop = CancellationToken::new();
        let mut servers: JoinSet<&'static str> = JoinSet::new();
        let mut tasks: JoinSet<&'static str> = JoinSet::new();

        let (reloader, m, sd, every) = (
            self.reloader,
            self.metrics.clone(),
            tasks_stop.clone(),
            cfg.reload_interval,
        );
        tasks.spawn(async move {
            reloader.run(every, move |r| m.reload(r), sd).await;
            "certificate reload"
        });
        let listeners = ListenerMetrics::register(&self.registry);
        // The handler reads the body itself (inject.request_timeout → 408, 413 by
        // inject.max_body_bytes); the listener bounds the rest, one logic for every listener.
        let limits = Limits {
            header_read_timeout: cfg.request_timeout,
            idle_timeout: IDLE_TIMEOUT.max(cfg.request_timeout),
            // the handler's own body timeout answers 408 first
            request_timeout: cfg.request_timeout + Duration::from_secs(5),
            max_connections: MAX_CONNECTIONS,
            // the handler refuses over inject.max_body_bytes itself, with a 413 the API
            // server can read (an AdmissionReview-shaped status)
            max_body_bytes: usize::MAX,
        };
        let webhook = Server::new("webhook", limits, listeners.clone()).with_tls(Tls {
            acceptor,
            handshake_timeout: cfg.handshake_timeout,
            failures: self.metrics.handshakes_failed.clone(),
        });
        let sd = servers_stop.clone();
        servers.spawn(async move {
            webhook.serve(tls, app, sd).await;
            "webhook (HTTPS)"
        });
        let admin = admin_router(Admin {
            registry: self.registry.clone(),
            readiness: self.readiness.clone(),
        });
        let sd = servers_stop.clone();
        let probes = Server::new(
            "http",
            Limits {
                max_connections: MAX_CONNECTIONS,
                ..Limits::default()
            },
            listeners,
        );
        servers.spawn(async move {
            probes.serve(http, admin, sd).await;
            "http"
        });

        // Stop on the signal, or when a server or the reload loop stops unexpectedly (unready,
        // never silently gone).
        let mut gone = false;
        tokio::select! {
            _ = stop.cancelled() => {}
            Some(done) = servers.join_next() => {
                tracing::error!(server = done.unwrap_or("server"), "server stopped unexpectedly");
                gone = true;
            }
            Some(done) = tasks.join_next() => {
                let name = done.unwrap_or("task");
                tracing::error!(task = name, "task stopped unexpectedly");
                self.readiness.latch(Component::Task("certificate reload"), "stopped").unready("stopped");
            }
        }
        let sh = &self.settings.shutdown;
        let started = tokio::time::Instant::now();
        let deadline = started + sh.grace;
        self.readiness
            .latch(Component::Shutdown, "shutting down")
            .unready("shutting down");
        if !gone {
            tracing::info!(drain = ?sh.drain, "shutting down: unready; draining");
            tokio::time::sleep_until(started + sh.drain).await;
        }
        servers_stop.cancel();
        if tokio::time::timeout_at(deadline, async {
            while servers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("connections did not close within shutdown.grace; aborting them");
            servers.abort_all();
        }
        tasks_stop.cancel();
        if tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tasks.abort_all();
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "shut down");
        if gone {
            anyhow::bail!("a listener stopped unexpectedly");
        }
        Ok(())
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(|State(s): State<Arc<Shared>>, req: Request| async move {
                handle(s, Selection::OptIn, req).await
            }),
        )
        .route(
            "/mutate/namespace",
            post(|State(s): State<Arc<Shared>>, req: Request| async move {
                handle(s, Selection::Namespace, req).await
            }),
        )
        .with_state(shared)
}

enum BodyError {
    TooLarge,
    Read,
}

/// Reads at most `limit` bytes of body.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Read)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn handle(s: Arc<Shared>, selection: Selection, req: Request) -> Response {
    let started = Instant::now();
    let limit = s.cfg.max_body_bytes;
    let too_large = || {
        review::http_error(
            413,
            Outcome::TooLarge,
            &format!("the request body exceeds inject.max_body_bytes ({limit} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let answer = if declared.is_some_and(|n| n > limit as u64) {
        // refused before reading a byte of it
        too_large()
    } else {
        match tokio::time::timeout(s.cfg.request_timeout, read_body(req.into_body(), limit)).await {
            Err(_) => review::http_error(
                408,
                Outcome::Timeout,
                "the request body did not arrive within inject.request_timeout",
            ),
            Ok(Err(BodyError::TooLarge)) => too_large(),
            Ok(Err(BodyError::Read)) => review::http_error(
                400,
                Outcome::Malformed,
                "the request body could not be read",
            ),
            Ok(Ok(body)) => review::answer(&body, selection, &s.cfg),
        }
    };
    s.metrics
        .reviews
        .with_label_values(&[answer.outcome.label()])
        .inc();
    s.metrics.duration.observe(started.elapsed().as_secs_f64());
    let d = &answer.detail;
    match answer.outcome {
        Outcome::Injected => tracing::info!(
            uid = %d.uid, namespace = %d.namespace, pod = %d.name, profile = %d.profile,
            "injected"
        ),
        Outcome::Refused => tracing::warn!(
            uid = %d.uid, namespace = %d.namespace, pod = %d.name, why = %d.message,
            "refused"
        ),
        Outcome::Malformed | Outcome::TooLarge | Outcome::Timeout => tracing::warn!(
            status = answer.status, why = %d.message, "bad admission request"
        ),
        other => tracing::debug!(
            uid = %d.uid, namespace = %d.namespace, pod = %d.name, result = other.label(),
            what = %d.message, "left untouched"
        ),
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, axum::Json(answer.body)).into_response();
    if matches!(answer.outcome, Outcome::TooLarge | Outcome::Timeout) {
        // the rest of the body is not read: the connection cannot be reused
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
