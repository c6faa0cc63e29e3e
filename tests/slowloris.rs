//! Slowloris against real processes: `veto sidecar` (forward-auth and gRPC) and
//! `veto authority` (public API) with a small connection cap, flooded with connections that
//! trickle half a request (one byte a second) or send nothing, more of them than the cap.
//! Real requests on an established keep-alive connection (what Envoy's pool is) keep
//! succeeding with bounded latency; the flood's connections are closed by the server, those
//! over the cap as soon as it sees them (its refused count), the others at
//! `limits.header_read_timeout` (its timeout count).

#[path = "support/authority.rs"]
mod authority_support;
mod support;

use authority_support::{Authority, Kit, ADMIN_TOKEN};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use veto::token::Alg;

/// Connections per flood: half trickle, half silent.
const FLOOD: usize = 1500;
const CAP: usize = 1000;
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the header timeout a closed connection may take to be noticed.
const SLACK: Duration = Duration::from_secs(2);

fn limits() -> String {
    format!(
        "[limits]\nmax_connections = {CAP}\nheader_read_timeout = \"{}s\"\n",
        HEADER_TIMEOUT.as_secs()
    )
}

/// Opens flood connections `from..to` against `port`; each reports how long after its
/// opening the server closed it (`None`: still open at the end).
async fn flood(
    port: u16,
    trickle: &'static [u8],
    from: usize,
    to: usize,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut out = Vec::with_capacity(to - from);
    for i in from..to {
        let s = match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(e) => panic!("connection {i}: {e}"),
        };
        // from the established connection, not the SYN (see `closed`)
        let started = Instant::now();
        let slow = i % 2 == 0;
        out.push(tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                if !slow {
                    return std::future::pending::<()>().await;
                }
                for b in trickle.iter().cycle() {
                    if wr.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            let mut buf = [0u8; 256];
            let deadline = HEADER_TIMEOUT + SLACK + Duration::from_secs(2);
            let closed = tokio::time::timeout(deadline, async {
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            writer.abort();
            closed.ok().map(|_| started.elapsed())
        }));
    }
    out
}

/// Closed by the server within the header timeout + slack of their opening; of them, closed
/// well before the header timeout (¾ of it): refused, not timed out.
async fn closed(conns: Vec<tokio::task::JoinHandle<Option<Duration>>>) -> (usize, usize, Duration) {
    let (mut within, mut at_once, mut last) = (0, 0, Duration::ZERO);
    for c in conns {
        let got = c.await.expect("flood task");
        if let Some(t) = got {
            if t <= HEADER_TIMEOUT + SLACK {
                within += 1;
            }
            if t < HEADER_TIMEOUT * 3 / 4 {
                at_once += 1;
            }
            last = last.max(t);
        }
    }
    (within, at_once, last)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Where the server's open-connection gauge of a listener is read: a keep-alive client
/// already connected to the `/metrics` URL (where that is the flooded listener, its
/// connection holds a slot there), the URL, the listener's name, and how many connections
/// the test holds on the flooded listener (the probe's, and the metrics client's if there).
struct Open<'a> {
    client: &'a reqwest::Client,
    url: &'a str,
    listener: &'a str,
    held: usize,
}

/// Waits (10 s at most) until the listener holds `n` connections.
async fn full(open: &Open<'_>, n: usize) {
    let (client, url) = (open.client, open.url);
    let sel = format!(
        "veto_listener_connections{{listener=\"{}\"}}",
        open.listener
    );
    let until = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < until {
        if let Ok(r) = client.get(url).send().await {
            seen = metric(&r.text().await.unwrap_or_default(), &sel);
            if seen.is_some_and(|v| v >= n as f64) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sel} never reached {n} (last {seen:?})");
}

/// Calls `one` back to back for `for_`; every call must succeed. Latencies, sorted.
async fn probe<F, Fut>(for_: Duration, mut one: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut lat = Vec::new();
    let until = Instant::now() + for_;
    while Instant::now() < until {
        let t = Instant::now();
        assert!(one().await, "a real request failed during the flood");
        lat.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat
}

/// The whole scenario against one listener: baseline, flood + probe, what was closed.
async fn scenario<F, Fut>(what: &str, port: u16, open: Open<'_>, trickle: &'static [u8], mut one: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut base = probe(Duration::from_millis(800), &mut one).await;
    // The flood in two steps: first what fills the cap (with the probe's connection), then,
    // once the server holds all of those, the rest. Opened in one go, the flood can outrun
    // the server's accept loop and overflow the kernel's accept queue (1024); Linux then
    // drops the handshake's last ACK, the client holds an established connection the server
    // learns of only at a SYN-ACK retransmit 1–3 s later, by when slots have freed: seen in
    // CI as 0 and 132 of 501 refused, all of the flood still closed within the bound.
    let mut conns = flood(port, trickle, 0, CAP - open.held).await;
    full(&open, CAP).await;
    conns.extend(flood(port, trickle, CAP - open.held, FLOOD).await);
    let mut during = probe(HEADER_TIMEOUT + Duration::from_secs(1), &mut one).await;
    let (within, at_once, last) = closed(conns).await;
    println!(
        "{what}: baseline p50 {:?} p99 {:?} (n={}); flood of {FLOOD} (cap {CAP}): p50 {:?} p99 {:?} \
         (n={}); closed by the server: {within} within {:?} ({at_once} at once), last at {last:?}",
        pct(&mut base, 0.5),
        pct(&mut base, 0.99),
        base.len(),
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        during.len(),
        HEADER_TIMEOUT + SLACK,
    );
    assert_eq!(
        within, FLOOD,
        "{what}: every flood connection closed by the server"
    );
    assert!(
        at_once >= FLOOD - CAP,
        "{what}: connections over the cap closed at once ({at_once})"
    );
    let p99 = pct(&mut during, 0.99);
    assert!(p99 < Duration::from_millis(150), "{what}: p99 {p99:?}");
    // the slots are back: a new connection is served
    assert!(one().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_forward_auth_or_grpc_checks() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), &limits()));
    sidecar.wait_ready(Duration::from_secs(20)).await;
    let bearer = format!("Bearer {}", issuer.mint("u", "s"));

    // forward-auth: one keep-alive client, as a proxy's pool
    let client = reqwest::Client::new();
    let url = format!("{}/check", sidecar.base());
    let check = || {
        let r = client.get(&url).header("authorization", &bearer).send();
        async move { r.await.is_ok_and(|r| r.status() == 200) }
    };
    let metrics = format!("{}/metrics", sidecar.base());
    // on the flooded listener itself: connected (and holding a slot) before the flood
    let watcher = reqwest::Client::new();
    assert!(watcher.get(&metrics).send().await.is_ok());
    scenario(
        "forward-auth",
        sidecar.http,
        Open {
            client: &watcher,
            url: &metrics,
            listener: "http",
            held: 2,
        },
        b"GET /check HTTP/1.1\r\nx-a: b\r\n",
        check,
    )
    .await;

    // gRPC: an HTTP/2 connection, then half a preface from the flood
    let grpc = AuthorizationClient::connect(format!("http://127.0.0.1:{}", sidecar.grpc))
        .await
        .expect("grpc");
    let req = check_request(Some(&bearer));
    let check = || {
        let (mut c, req) = (grpc.clone(), req.clone());
        async move {
            c.check(req)
                .await
                .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0))
        }
    };
    scenario(
        "grpc",
        sidecar.grpc,
        Open {
            client: &watcher,
            url: &metrics,
            listener: "grpc",
            held: 1,
        },
        b"PRI * HTTP/2.0\r\n",
        check,
    )
    .await;

    let m = sidecar.metrics().await;
    for listener in ["http", "grpc"] {
        refused_and_timed_out(&m, listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_the_authority_api() {
    let nats = NatsServer::start();
    let kit = Kit::new();
    let a = Authority::start(&format!(
        "{}\n{}",
        Authority::config(&kit, &nats.url(), "us", &["us"], ""),
        limits()
    ));
    a.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let login: Value = client
        .post(a.url("/v1/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"sub": "alice"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    // each refresh rotates: the next call uses the token the last one returned
    let rt = Arc::new(std::sync::Mutex::new(
        login["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
    ));
    let url = a.url("/v1/token");
    let refresh = || {
        let (client, rt, url) = (client.clone(), rt.clone(), url.clone());
        async move {
            let token = rt.lock().unwrap().clone();
            let Ok(r) = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    serde_urlencoded::to_string([
                        ("grant_type", "refresh_token"),
                        ("refresh_token", token.as_str()),
                    ])
                    .expect("form"),
                )
                .send()
                .await
            else {
                return false;
            };
            if r.status() != 200 {
                return false;
            }
            let body: Value = r.json().await.unwrap_or_default();
            match body["refresh_token"].as_str() {
                Some(next) => {
                    *rt.lock().unwrap() = next.to_string();
                    true
                }
                None => false,
            }
        }
    };
    let metrics = a.admin_url("/metrics");
    scenario(
        "authority",
        a.api,
        Open {
            client: &reqwest::Client::new(),
            url: &metrics,
            listener: "api",
            held: 1,
        },
        b"POST /v1/token HTTP/1.1\r\nx-a: b\r\n",
        refresh,
    )
    .await;
    refused_and_timed_out(&a.metrics().await, "api");
}

/// The server's own count: the connections over the cap refused, the others timed out on
/// their header.
fn refused_and_timed_out(m: &str, listener: &str) {
    let sel = format!("veto_listener_timeouts_total{{kind=\"header\",listener=\"{listener}\"}}");
    let n = metric(m, &sel).unwrap_or(0.0);
    // the flood's connections within the cap (the test holds one or two slots itself)
    assert!(n >= (CAP - 2) as f64, "{sel} {n}");
    let sel = format!("veto_listener_connections_refused_total{{listener=\"{listener}\"}}");
    let n = metric(m, &sel).unwrap_or(0.0);
    assert!(n >= (FLOOD - CAP) as f64, "{sel} {n}");
}
