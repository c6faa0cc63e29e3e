//! The middle tier: the sidecar's parts called in-process — the decider, the ext_authz gRPC
//! service and the HTTP router — built from real settings by `Sidecar::build`, with no socket
//! between the test and the code. Every case is asked of all three, which must agree.

mod support;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use serde_json::json;
use std::sync::Arc;
use support::{check_request, Issuer};
use tower::ServiceExt;
use veto::admin::{router, Admin};
use veto::authz::grpc::AuthzService;
use veto::authz::http::ForwardAuth;
use veto::authz::{render, Decider};
use veto::config::Settings;
use veto::decision::{Credential, Decision};
use veto::revocation::{Kind, RevocationEvent};
use veto::sidecar::Sidecar;
use veto::token::Alg;

struct Parts {
    decider: Arc<Decider>,
    grpc: AuthzService,
    http: axum::Router,
    sidecar: Sidecar,
}

/// Builds the sidecar from a config file and loads its keys (a file JWKS: what `run` would
/// do first), without starting any listener.
async fn parts(issuer: &Issuer, extra: &str) -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veto.toml");
    std::fs::write(&path, support::sidecar_config(issuer, None, extra)).unwrap();
    let settings = Settings::load(&path).expect("settings");
    let sidecar = Sidecar::build(&settings).expect("build");
    sidecar.load_keys().await;
    let grpc = AuthzService::new(
        sidecar.decider.clone(),
        sidecar.shape.clone(),
        sidecar.metrics.checks.clone(),
    );
    let http = router(
        ForwardAuth {
            decider: sidecar.decider.clone(),
            identity: sidecar.shape.identity.clone(),
            metrics: sidecar.metrics.checks.clone(),
        },
        Admin {
            registry: sidecar.registry.clone(),
            readiness: sidecar.readiness.clone(),
        },
    );
    Parts {
        decider: sidecar.decider.clone(),
        grpc,
        http,
        sidecar,
    }
}

/// What one transport answered: (HTTP status, reason, x-user-id).
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    reason: String,
    user: Option<String>,
}

async fn via_decider(p: &Parts, authorization: Option<&str>) -> Answer {
    let credential = authorization.map_or(Credential::Absent, Credential::Authorization);
    match p.decider.decide(credential).await {
        Decision::Allow(v) => Answer {
            status: 200,
            reason: "ok".into(),
            user: v.claims.sub.clone(),
        },
        Decision::Deny(d) => Answer {
            status: render::http_status(d.code),
            reason: d.reason.reason().into(),
            user: None,
        },
        Decision::Error(e) => Answer {
            status: 503,
            reason: e.into(),
            user: None,
        },
    }
}

async fn via_grpc(p: &Parts, authorization: Option<&str>) -> Answer {
    let resp = p
        .grpc
        .check(tonic::Request::new(check_request(authorization)))
        .await
        .expect("a decided check is a successful RPC")
        .into_inner();
    match resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            status: 200,
            reason: "ok".into(),
            user: ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-user-id")
                .map(|h| h.value.clone()),
        },
        Some(HttpResponse::DeniedResponse(d)) => {
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            Answer {
                status: d.status.map_or(0, |s| s.code as u16),
                reason: body["reason"].as_str().unwrap_or("").into(),
                user: None,
            }
        }
        other => panic!("unexpected http_response {other:?}"),
    }
}

async fn via_http(p: &Parts, authorization: Option<&str>) -> Answer {
    let mut req = axum::http::Request::get("/check").header("x-user-id", "forged");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = p
        .http
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let user = resp
        .headers()
        .get("x-user-id")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let reason = if status == 200 {
        "ok".to_string()
    } else {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        body["reason"].as_str().unwrap_or("").to_string()
    };
    Answer {
        status,
        reason,
        user,
    }
}

#[tokio::test]
async fn decider_grpc_and_http_agree_on_every_case() {
    let issuer = Issuer::new(Alg::ES256);
    let p = parts(&issuer, "").await;
    let good = issuer.mint("alice", "s-good");
    let revoked = issuer.mint("bob", "s-revoked");
    let mut numeric = issuer.claims("x", "s-num");
    numeric["sub"] = json!(12345);
    let numeric = issuer.key.sign(&numeric).unwrap();
    let mut expired = issuer.claims("x", "s-old");
    expired["exp"] = json!(veto::now_ms() / 1000 - 3600);
    expired["iat"] = json!(veto::now_ms() / 1000 - 3900);
    let expired = issuer.key.sign(&expired).unwrap();
    let forged = veto::token::sign::SigningKey::generate(Alg::ES256, "k1")
        .unwrap()
        .sign(&issuer.claims("alice", "s-good"))
        .unwrap();
    let now = veto::now_ms();
    p.sidecar.revoked.apply(
        &RevocationEvent {
            event_id: "e1".into(),
            kind: Kind::Session as i32,
            id: "s-revoked".into(),
            issuer: String::new(),
            revoked_at: now,
            expires_at: now + 3_600_000,
            origin_region: "us".into(),
            reason: "test".into(),
            urgent: false,
            revoked_at_us: 0,
        },
        now,
    );
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (Some(format!("Bearer {good}")), 200, "ok"),
        (Some(format!("Bearer {revoked}")), 401, "revoked"),
        (Some(format!("Bearer {numeric}")), 401, "invalid_claim"),
        (Some(format!("Bearer {expired}")), 401, "expired"),
        (Some(format!("Bearer {forged}")), 401, "bad_signature"),
        (Some("Bearer not.a.token".into()), 401, "malformed"),
        (Some("Basic dTpw".into()), 401, "missing_token"),
        (None, 401, "missing_token"),
    ];
    for (auth, status, reason) in cases {
        let a = auth.as_deref();
        // twice: the second time from the verified-token cache, where there is one
        for round in 0..2 {
            let d = via_decider(&p, a).await;
            let g = via_grpc(&p, a).await;
            let h = via_http(&p, a).await;
            assert_eq!(
                (d.status, d.reason.as_str()),
                (status, reason),
                "{a:?} #{round}"
            );
            assert_eq!(d, g, "decider vs gRPC for {a:?} #{round}");
            assert_eq!(d, h, "decider vs HTTP for {a:?} #{round}");
        }
    }
    // the identity header is the verified claim, never the client's
    assert_eq!(
        via_grpc(&p, Some(&format!("Bearer {good}")))
            .await
            .user
            .as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn two_authorization_headers_are_refused_not_picked_from() {
    let issuer = Issuer::new(Alg::ES256);
    let p = parts(&issuer, "").await;
    let good = format!("Bearer {}", issuer.mint("alice", "s"));
    let req = axum::http::Request::get("/check")
        .header("authorization", &good)
        .header("authorization", &good)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = p.http.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("malformed"));
}

async fn get(p: &Parts, path: &str) -> axum::response::Response {
    let req = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    p.http.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn readiness_follows_the_keys_through_the_router() {
    let issuer = Issuer::new(Alg::ES256);
    let p = parts(&issuer, "").await;
    let resp = get(&p, "/readyz").await;
    assert_eq!(resp.status(), 200, "keys loaded, no feed configured");
    // a component going unready shows at once: readiness is read when asked
    p.sidecar
        .readiness
        .latch(veto::readiness::Component::Task("test"), "made unready");
    let resp = get(&p, "/readyz").await;
    assert_eq!(resp.status(), 503);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["waiting_for"]["test"], "made unready");
}
