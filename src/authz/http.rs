//! HTTP forward-auth: `GET /check` (or any path below it) answers 200 with the identity
//! headers, or 401/403/503 with the same challenge and body as the gRPC denial. Fits nginx
//! `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth and Envoy's `http_service`.

use super::{render, Answers, CheckMetrics, Decider, Identity, Transport};
use crate::decision::{Credential, Decision};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct ForwardAuth {
    pub decider: Arc<Decider>,
    pub identity: Arc<Identity>,
    pub metrics: CheckMetrics,
}

pub async fn check(State(s): State<ForwardAuth>, headers: HeaderMap) -> Response<Body> {
    let started = Instant::now();
    let d = s.decider.decide(credential(&headers)).await;
    s.metrics.observe(Transport::Http, started, &d);
    respond(&s.identity, &d)
}

/// The credential of a forward-auth request. More than one `Authorization` header is
/// ambiguous: refused rather than picked from. Public for the fuzz targets (`fuzz/`).
pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => match v.to_str() {
            Ok(v) => Credential::Authorization(v),
            Err(_) => Credential::NotText,
        },
        (Some(_), Some(_)) => Credential::Ambiguous,
        (None, _) => Credential::Absent,
    }
}

fn respond(identity: &Identity, d: &Decision<Answers>) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match d {
        Decision::Allow(v) => {
            let set = v.answers.http.get_or_init(|| {
                identity
                    .headers(&v.claims)
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::try_from(name).ok()?,
                            HeaderValue::try_from(value?).ok()?,
                        ))
                    })
                    .collect()
            });
            for (n, val) in set {
                h.insert(n.clone(), val.clone());
            }
        }
        Decision::Deny(den) => {
            *resp.status_mut() = StatusCode::from_u16(render::http_status(den.code))
                .unwrap_or(StatusCode::UNAUTHORIZED);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::try_from(render::challenge(den)) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(after) = render::retry_after(den.code) {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static(after));
            }
            *resp.body_mut() = Body::from(render::body(den));
        }
        Decision::Error(_) => {
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *resp.body_mut() = Body::from(render::UNAVAILABLE_BODY);
        }
    }
    resp
}
