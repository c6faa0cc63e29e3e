//! The sidecar's HTTP listener: forward-auth (`/check`), `/metrics`, `/healthz`, `/readyz`;
//! the last three alone ([`admin_router`]) for programs without forward-auth (`veto inject`).

use crate::authz::http::{check, ForwardAuth};
use crate::readiness::Readiness;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;

#[derive(Clone)]
pub struct Admin {
    pub registry: prometheus::Registry,
    pub readiness: Readiness,
}

pub fn router(auth: ForwardAuth, admin: Admin) -> Router {
    let checks = Router::new()
        .route("/check", any(check))
        .route("/check/", any(check))
        .route("/check/{*rest}", any(check))
        .with_state(auth);
    checks.merge(admin_router(admin))
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(admin)
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&a.registry),
    )
}

async fn readyz(State(a): State<Admin>) -> impl IntoResponse {
    if a.readiness.is_ready() {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"ready":true}"#.to_string(),
        )
    } else {
        let blockers: serde_json::Map<String, serde_json::Value> = a
            .readiness
            .blockers()
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let body = serde_json::json!({"ready": false, "waiting_for": blockers}).to_string();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
    }
}
