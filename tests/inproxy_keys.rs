//! Key rotation in the in-proxy mode with real parts: a real `veto sidecar` fetches its
//! issuer's keys from a `jwks_url` (a tiny JWKS server here, refreshed every 100–200 ms) and
//! publishes them beside its shared-memory file; real Envoy 1.40 with the module decides
//! every request. Under a steady load of valid tokens the JWKS gains a key, the minting
//! switches to it once the sidecar published it, and the old key is withdrawn: no valid
//! request is ever refused, tokens of the withdrawn key are, and Envoy is never restarted.

#[path = "support/inproxy.rs"]
mod inproxy_support;
mod support;

use inproxy_support::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use support::*;
use veto::token::sign::{jwks, SigningKey};
use veto::token::Alg;

/// A JWKS endpoint serving whatever document it is given now, never cached.
async fn jwks_server(doc: Arc<RwLock<String>>) -> (u16, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let doc = doc.read().map(|d| d.clone()).unwrap_or_default();
            async move {
                (
                    [
                        (axum::http::header::CONTENT_TYPE, "application/json"),
                        (axum::http::header::CACHE_CONTROL, "max-age=0"),
                    ],
                    doc,
                )
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (port, h)
}

fn token(key: &SigningKey, sid: &str) -> String {
    let now = veto::now_ms() / 1000;
    let claims = json!({"iss": ISS, "aud": "api", "sub": "load", "sid": sid,
                        "jti": format!("j-{sid}"), "iat": now, "exp": now + 600});
    format!("Bearer {}", key.sign(&claims).expect("sign"))
}

/// The keys generation in the sidecar's shared-memory header now (0: none, or no file).
fn keys_generation(shm: &std::path::Path) -> u64 {
    veto_shm::Mapping::open(shm).map_or(0, |m| m.keys_generation())
}

/// Waits (5 s at most) for the keys generation to pass `after`; returns the new value.
async fn published_after(shm: &std::path::Path, after: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let g = keys_generation(shm);
        if g > after {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not publish new keys (generation {g})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_refuses_no_valid_token() {
    let module_dir = build_module();
    let nats = NatsServer::start();
    let old = Arc::new(SigningKey::generate(Alg::ES256, "old").expect("key"));
    let new = Arc::new(SigningKey::generate(Alg::ES256, "new").expect("key"));
    let doc = Arc::new(RwLock::new(jwks(&[&old]).to_string()));
    let (jwks_port, _jwks) = jwks_server(doc.clone()).await;
    let shm_dir = tempfile::tempdir().expect("tempdir");
    let shm = shm_dir.path().join("veto-revoked");
    // a jwks_url-only issuer: the module gets its keys from the sidecar alone
    let config = format!(
        r#"
[log]
level = "info"
[[issuers]]
issuer = "{ISS}"
audiences = ["api"]
jwks_url = "http://127.0.0.1:{jwks_port}/jwks.json"
jwks_refresh_interval = "200ms"
jwks_min_refetch_interval = "100ms"
leeway = "5s"
[nats]
url = "{nats}"
region = "us"
{inproxy}
"#,
        nats = nats.url(),
        inproxy = inproxy_section(&shm, "2s"),
    );
    let sidecar = Sidecar::start(&config);
    sidecar.wait_ready(Duration::from_secs(10)).await;
    wait_shm(&shm).await;
    let first = published_after(&shm, 0).await;
    let keys_file = veto::jwks::published_keys_path(&shm);
    let published = std::fs::read_to_string(&keys_file).expect("the keys file");
    assert!(published.contains("\"old\"") && !published.contains("\"d\""));
    let (up, _h) = upstream().await;
    let mut envoy = inproxy_envoy(
        &module_dir,
        &sidecar.dir.path().join("veto.toml"),
        up.port(),
    );
    let envoy_pid = envoy.pid();
    let http = client();
    let url = envoy.url("/orders/7");

    // the jwks_url-only issuer works in-proxy; `cached` is verified (and cached) by the
    // module under the old key, and must be refused once that key is withdrawn
    let cached = token(&old, "cached");
    let r = see(&http, url.clone(), Some(&cached)).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", envoy.log());
    assert_eq!(r.body["x-user-id"], "load");
    let early_new = token(&new, "early");
    let r = see(&http, url.clone(), Some(&early_new)).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("unknown_kid")),
        "not published yet"
    );

    // the load: WORKERS loops, each minting a fresh token per request with the key of the
    // current phase (0: old, 1: new) and recording every answer
    const WORKERS: usize = 8;
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<Vec<(usize, u16, String)>>> = Arc::default();
    // per worker: the last phase whose request it has seen answered
    let done: Arc<Vec<AtomicUsize>> = Arc::new((0..WORKERS).map(|_| AtomicUsize::new(0)).collect());
    let mut load = Vec::new();
    for w in 0..WORKERS {
        let (phase, stop, ok, refused, done) = (
            phase.clone(),
            stop.clone(),
            ok.clone(),
            refused.clone(),
            done.clone(),
        );
        let (old, new, http, url) = (old.clone(), new.clone(), http.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let p = phase.load(Ordering::Acquire);
                let key = if p == 0 { &old } else { &new };
                let t = token(key, &format!("w{w}-{n}"));
                let status = match http.get(&url).header("authorization", &t).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        (s, body)
                    }
                    Err(e) => (0, e.to_string()),
                };
                if status.0 == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut v) = refused.lock() {
                    v.push((p, status.0, status.1));
                }
                done[w].store(p, Ordering::Release);
            }
        }));
    }
    let all_done = |p: usize| done.iter().all(|d| d.load(Ordering::Acquire) >= p);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_rotation = ok.load(Ordering::Relaxed);

    // 1. the JWKS gains the new key; minting switches once the sidecar published it
    *doc.write().expect("doc") = jwks(&[&old, &new]).to_string();
    let rotated = Instant::now();
    let second = published_after(&shm, first).await;
    let published_in = rotated.elapsed();
    phase.store(1, Ordering::Release);
    let switched = Instant::now();
    while !all_done(1) {
        assert!(
            switched.elapsed() < Duration::from_secs(5),
            "a load worker is stuck"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = ok.load(Ordering::Relaxed) - before_rotation;

    // 2. the old key is withdrawn (every request minted with it has been answered)
    *doc.write().expect("doc") = jwks(&[&new]).to_string();
    let third = published_after(&shm, second).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await.expect("load worker");
    }
    let total = ok.load(Ordering::Relaxed);
    let refused = refused.lock().map(|v| v.clone()).unwrap_or_default();
    eprintln!(
        "key rotation under load: {total} valid requests answered 200 ({before_rotation} before the rotation, \
         {during} while both keys were published), {} refused; keys generations {first} -> {second} -> {third}; \
         new key published {published_in:?} after the JWKS changed",
        refused.len()
    );
    assert!(
        refused.is_empty(),
        "valid requests refused (phase, status, body): {:?}",
        &refused[..refused.len().min(10)]
    );
    assert!(total > 100, "too little load: {total}");
    assert!(during > 0, "no load while both keys were published");

    // tokens of the withdrawn key are refused, the one the module had cached included
    for t in [cached, token(&old, "late")] {
        let r = see(&http, url.clone(), Some(&t)).await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = see(&http, url.clone(), Some(&token(&old, "late-2"))).await;
    assert_eq!(r.body["reason"], "unknown_kid", "{r:?}");
    assert_eq!(see(&http, url.clone(), Some(&early_new)).await.status, 200);
    let published = std::fs::read_to_string(&keys_file).expect("the keys file");
    assert!(!published.contains("\"old\"") && published.contains("\"new\""));

    // the sidecar's account of it: three writes, the generation the module loaded, no
    // failed reload in the module
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "veto_inproxy_keys_published_total{result=\"ok\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "veto_inproxy_keys_published_total{result=\"error\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "veto_inproxy_keys_generation"),
        Some(third as f64)
    );
    assert_eq!(
        metric(&m, "veto_inproxy_key_reload_failures_total"),
        Some(0.0)
    );

    // one Envoy throughout
    assert_eq!(envoy.pid(), envoy_pid);
    assert!(envoy.running(), "Envoy exited:\n{}", envoy.log());
    assert!(!envoy.log().contains("panic"), "{}", envoy.log());
}
