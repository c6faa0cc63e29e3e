//! The one HTTP/1 server every veto HTTP listener runs on (sidecar forward-auth and admin,
//! the authority's public API and probes, `veto inject` behind TLS): what a connection may
//! hold and for how long.
//!
//! Per connection, [`serve`] enforces:
//! - **a connection cap** (`max_connections`): a connection accepted over it is closed at
//!   once, without a byte read, and counted (`veto_listener_connections_refused_total`).
//!   Accept-and-close rather than leaving it in the kernel backlog: a flood then costs the
//!   attacker a connection each time and the server nothing, and the refusal is visible.
//! - **a header read timeout**: from the first byte of a request (or from the connection's
//!   opening, for the first one) to its complete head. A client that sends half a request
//!   line, or nothing at all, is disconnected when it runs out (`kind="header"`).
//! - **an idle timeout**: a keep-alive connection with no request in flight and no byte of a
//!   new one is closed gracefully after `idle_timeout` (`kind="idle"`). Longer than the
//!   header read timeout on purpose: hyper's own `header_read_timeout` would also close idle
//!   keep-alive connections at 5 s, under a proxy that keeps them pooled for much longer.
//! - **a request timeout**: a request whose handler has not answered within
//!   `request_timeout` (a body that trickles in) has its connection closed (`kind="request"`).
//! - **a body limit**: a `Content-Length` over `max_body_bytes` is answered 413 before a byte
//!   of the body is read (and the connection closed); extractors are limited to it too
//!   (`DefaultBodyLimit`).
//!
//! An upgraded connection (the authority's WebSocket push) leaves the server: it is no longer
//! under these timeouts or the cap; the push has its own ping and socket limits.

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What one listener enforces (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    Header,
    Idle,
    Request,
}

impl Timeout {
    pub const ALL: [Timeout; 3] = [Timeout::Header, Timeout::Idle, Timeout::Request];

    pub fn label(self) -> &'static str {
        match self {
            Timeout::Header => "header",
            Timeout::Idle => "idle",
            Timeout::Request => "request",
        }
    }
}

/// The listeners' metric families, labelled by listener name.
#[derive(Clone)]
pub struct ListenerMetrics {
    refused: IntCounterVec,
    timeouts: IntCounterVec,
    too_large: IntCounterVec,
    open: IntGaugeVec,
}

impl ListenerMetrics {
    pub fn register(r: &Registry) -> ListenerMetrics {
        use crate::metrics as m;
        ListenerMetrics {
            refused: m::counter_vec(
                r,
                "veto_listener_connections_refused_total",
                "Connections accepted and closed at once because the listener held max_connections.",
                &["listener"],
            ),
            timeouts: m::counter_vec(
                r,
                "veto_listener_timeouts_total",
                "Connections closed by the server, by listener and timeout (header, idle, request).",
                &["kind", "listener"],
            ),
            too_large: m::counter_vec(
                r,
                "veto_listener_body_too_large_total",
                "Requests answered 413 because their Content-Length exceeded max_body_bytes.",
                &["listener"],
            ),
            open: m::gauge_vec(
                r,
                "veto_listener_connections",
                "Connections open on the listener (upgraded ones excluded).",
                &["listener"],
            ),
        }
    }

    /// Gives `listener`'s every series a value, so dashboards see zeros rather than gaps.
    pub fn touch(&self, listener: &str) {
        self.refused.with_label_values(&[listener]);
        self.too_large.with_label_values(&[listener]);
        self.open.with_label_values(&[listener]);
        for t in Timeout::ALL {
            self.timeouts.with_label_values(&[t.label(), listener]);
        }
    }
}

/// TLS in front of the HTTP server (`veto inject`): the handshake gets its own deadline.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
    /// Counts failed handshakes by reason (`error`, `timeout`).
    pub failures: IntCounterVec,
}

/// One listener: its name (the `listener` label), limits and metrics.
#[derive(Clone)]
pub struct Server {
    pub name: &'static str,
    pub limits: Limits,
    pub metrics: ListenerMetrics,
    pub tls: Option<Tls>,
}

impl Server {
    pub fn new(name: &'static str, limits: Limits, metrics: ListenerMetrics) -> Server {
        metrics.touch(name);
        Server {
            name,
            limits,
            metrics,
            tls: None,
        }
    }

    pub fn with_tls(mut self, tls: Tls) -> Server {
        self.tls = Some(tls);
        self
    }

    /// Serves `router` on `listener` until `stop`; then stops accepting, closes idle
    /// connections, lets in-flight requests finish and returns once every connection is
    /// closed (the caller bounds that with its grace period).
    pub async fn serve(self, listener: TcpListener, router: Router, stop: CancellationToken) {
        let router = router.layer(DefaultBodyLimit::max(self.limits.max_body_bytes));
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.limits.max_connections));
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let tcp = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning
                        tracing::warn!(error = %e, listener = this.name, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                this.metrics.refused.with_label_values(&[this.name]).inc();
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (this, router, stop) = (this.clone(), router.clone(), stop.clone());
            conns.spawn(async move {
                let open = this.metrics.open.with_label_values(&[this.name]);
                open.inc();
                this.connection(tcp, router, stop).await;
                open.dec();
                drop(permit);
            });
        }
        while conns.join_next().await.is_some() {}
    }

    async fn connection(
        &self,
        tcp: tokio::net::TcpStream,
        router: Router,
        stop: CancellationToken,
    ) {
        match &self.tls {
            None => self.http(tcp, router, stop).await,
            Some(tls) => {
                let stream =
                    match tokio::time::timeout(tls.handshake_timeout, tls.acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            // plaintext HTTP, garbage, an untrusting client: dropped
                            tracing::debug!(error = %e, "TLS handshake failed");
                            tls.failures.with_label_values(&["error"]).inc();
                            return;
                        }
                        Err(_) => {
                            tls.failures.with_label_values(&["timeout"]).inc();
                            return;
                        }
                    };
                self.http(stream, router, stop).await
            }
        }
    }

    async fn http<T>(&self, io: T, router: Router, stop: CancellationToken)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(ConnState::new());
        let io = hyper_util::rt::TokioIo::new(Tracked {
            inner: io,
            state: state.clone(),
        });
        let service = Guarded {
            inner: hyper_util::service::TowerToHyperService::new(router),
            state: state.clone(),
            max_body: self.limits.max_body_bytes,
            too_large: self.metrics.too_large.with_label_values(&[self.name]),
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            let woken = state.wake.notified();
            let deadline = state.deadline(&self.limits);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, listener = self.name, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = woken => {}
                // an idle connection told to close needs no second count
                _ = tokio::time::sleep_until(deadline.0), if !(stopping && deadline.1 == Timeout::Idle) => {
                    // recheck: a request may have begun since the deadline was computed
                    let (at, kind) = state.deadline(&self.limits);
                    if at > Instant::now() {
                        continue;
                    }
                    self.metrics
                        .timeouts
                        .with_label_values(&[kind.label(), self.name])
                        .inc();
                    if kind == Timeout::Idle && !stopping {
                        // nothing in flight: hyper closes it at once, cleanly
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        return;
                    }
                }
            }
        }
    }
}

/// What the connection's watchdog reads: whether a request is being handled, when the first
/// byte of the next one arrived, when the last one finished. Milliseconds since `epoch`,
/// 0 for none.
struct ConnState {
    epoch: Instant,
    in_flight: AtomicUsize,
    request_since: AtomicU64,
    partial_since: AtomicU64,
    idle_since: AtomicU64,
    wake: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        let s = ConnState {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            request_since: AtomicU64::new(0),
            partial_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            wake: Notify::new(),
        };
        // the first request's head is due from the connection's opening
        s.partial_since.store(s.now(), Ordering::Relaxed);
        s
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64, plus: Duration) -> Instant {
        self.epoch + Duration::from_millis(ms - 1) + plus
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.partial_since.load(Ordering::Relaxed) == 0
        {
            self.partial_since.store(self.now(), Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    fn begin(&self) {
        self.partial_since.store(0, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.request_since.store(self.now(), Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// The next deadline and what runs out then.
    fn deadline(&self, l: &Limits) -> (Instant, Timeout) {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let since = self.request_since.load(Ordering::Relaxed).max(1);
            return (self.at(since, l.request_timeout), Timeout::Request);
        }
        let partial = self.partial_since.load(Ordering::Relaxed);
        if partial != 0 {
            return (self.at(partial, l.header_read_timeout), Timeout::Header);
        }
        let idle = self.idle_since.load(Ordering::Relaxed).max(1);
        (self.at(idle, l.idle_timeout), Timeout::Idle)
    }
}

/// The connection's I/O, noting when bytes of a new request arrive.
struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read();
        }
        r
    }
}

/// The `AsyncWrite` methods of a wrapper that only watches reads: every write goes straight
/// to `self.inner`.
macro_rules! writes_through_inner {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    };
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    writes_through_inner!();
}

/// The router behind the Content-Length precheck, marking each request in flight.
struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    max_body: usize,
    too_large: prometheus::IntCounter,
}

/// Marks the request finished however its future ends (answered or dropped).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> hyper::service::Service<Request<Incoming>> for Guarded<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFut<Result<Response<Body>, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.begin();
        let guard = InFlight(self.state.clone());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            self.too_large.inc();
            // RFC 6749 §5.2's shape, which every listener's JSON errors share (the authority's
            // OAuth endpoints are behind this check too)
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("request body over {} bytes", self.max_body),
            });
            let mut r = Response::new(Body::from(body.to_string()));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            // the body is not read: the connection cannot be reused
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Box::pin(async move {
                drop(guard);
                Ok(r)
            });
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}

/// The gRPC listener's connections, for tonic's `serve_with_incoming_shutdown`: the same
/// connection cap (accepted and closed over it), and a deadline for the HTTP/2 preface — a
/// client that connects and sends nothing, or half a preface, is disconnected at
/// `header_read_timeout` (`kind="header"`). After the preface, HTTP/2 keepalive pings (see
/// the tonic builder in `sidecar`) find dead peers.
pub fn grpc_incoming(
    incoming: tonic::transport::server::TcpIncoming,
    name: &'static str,
    limits: Limits,
    metrics: ListenerMetrics,
) -> impl futures::Stream<Item = std::io::Result<Preface>> + Send + 'static {
    use futures::StreamExt;
    metrics.touch(name);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    incoming.filter_map(move |r| {
        let out = match r {
            Err(e) => Some(Err(e)),
            Ok(tcp) => match slots.clone().try_acquire_owned() {
                Err(_) => {
                    metrics.refused.with_label_values(&[name]).inc();
                    None
                }
                Ok(permit) => {
                    let open = metrics.open.with_label_values(&[name]);
                    open.inc();
                    Some(Ok(Preface {
                        inner: tcp,
                        seen: 0,
                        deadline: Box::pin(tokio::time::sleep(limits.header_read_timeout)),
                        timeouts: metrics
                            .timeouts
                            .with_label_values(&[Timeout::Header.label(), name]),
                        _slot: Slot {
                            _permit: permit,
                            open,
                        },
                    }))
                }
            },
        };
        std::future::ready(out)
    })
}

/// A connection slot: the cap's permit and the open-connections gauge.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The HTTP/2 connection preface.
const PREFACE_LEN: usize = 24;

/// A gRPC connection whose reads fail once its preface is overdue.
pub struct Preface {
    inner: tokio::net::TcpStream,
    seen: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeouts: prometheus::IntCounter,
    _slot: Slot,
}

impl tonic::transport::server::Connected for Preface {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Preface {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.seen < PREFACE_LEN {
            if matches!(r, Poll::Ready(Ok(()))) {
                self.seen += buf.filled().len() - before;
            }
            if self.seen < PREFACE_LEN && self.deadline.as_mut().poll(cx).is_ready() {
                self.timeouts.inc();
                self.seen = usize::MAX; // count once; the error ends the connection
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        r
    }
}

impl AsyncWrite for Preface {
    writes_through_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_millis(1000),
            max_connections: 4,
            max_body_bytes: 1024,
        }
    }

    async fn start(l: Limits) -> (u16, Registry, CancellationToken) {
        let r = Registry::new();
        let m = ListenerMetrics::register(&r);
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/echo",
            post(|b: axum::body::Bytes| async move { b.len().to_string() }),
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let sd = stop.clone();
        tokio::spawn(Server::new("t", l, m).serve(tcp, router, sd));
        (port, r, stop)
    }

    /// Reads until EOF or reset; `None` if the server kept it open past `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
            Ok(_) => Some(buf),
            Err(_) => None,
        }
    }

    fn series(r: &Registry, needle: &str) -> bool {
        crate::metrics::render(r).contains(needle)
    }

    #[tokio::test]
    async fn header_timeout_closes_a_half_sent_request_and_a_silent_one() {
        let (port, r, _stop) = start(limits()).await;
        let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed_within(&mut half, Duration::from_secs(2))
            .await
            .is_some());
        assert!(closed_within(&mut silent, Duration::from_secs(2))
            .await
            .is_some());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(series(
            &r,
            r#"veto_listener_timeouts_total{kind="header",listener="t"} 2"#
        ));
    }

    #[tokio::test]
    async fn keep_alive_outlives_the_header_timeout_until_idle() {
        let (port, r, _stop) = start(limits()).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            // longer than the header timeout, shorter than idle: still usable
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let started = std::time::Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(3))
            .await
            .is_some());
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(series(
            &r,
            r#"veto_listener_timeouts_total{kind="idle",listener="t"} 1"#
        ));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413_before_it_is_read() {
        let (port, r, _stop) = start(limits()).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n")
            .await
            .unwrap();
        let got = closed_within(&mut s, Duration::from_secs(2)).await.unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        assert!(series(
            &r,
            r#"veto_listener_body_too_large_total{listener="t"} 1"#
        ));
        // chunked, no length: the extractor's limit
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req =
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(format!("{:x}\r\n", 2000).as_bytes());
        req.extend_from_slice(&[b'a'; 2000]);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
        s.write_all(&req).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 413"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    #[tokio::test]
    async fn a_trickling_body_is_cut_at_the_request_timeout() {
        let (port, r, _stop) = start(limits()).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
            .await
            .unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(3))
            .await
            .is_some());
        assert!(series(
            &r,
            r#"veto_listener_timeouts_total{kind="request",listener="t"} 1"#
        ));
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let (port, r, _stop) = start(limits()).await;
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut over = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed_within(&mut over, Duration::from_millis(250))
            .await
            .is_some());
        assert!(started.elapsed() < Duration::from_millis(250));
        assert!(series(
            &r,
            r#"veto_listener_connections_refused_total{listener="t"} 1"#
        ));
        // the held ones time out; the slots come back
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
}
