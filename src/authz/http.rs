//! HTTP forward-auth: `GET /check` (or any path below it) answers 200 with the identity
//! headers, or 401/403/503 with the same challenge and body as the gRPC denial. Fits nginx
//! `auth_request`, Caddy `forward_auth`, Traefik ForwardAuth and Envoy's `http_service`.

use crate::decision::{Decider, Decision, Transport};
use crate::metrics::Metrics;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct ForwardAuth {
    pub decider: Arc<Decider>,
    pub metrics: Metrics,
}

pub async fn check(State(s): State<ForwardAuth>, headers: HeaderMap) -> Response<Body> {
    let started = Instant::now();
    // More than one Authorization header is ambiguous: treat it as malformed rather than
    // pick one.
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let auth = match (values.next(), values.next()) {
        (Some(v), None) => Some(v.to_str().unwrap_or("Bearer \u{1}")),
        (Some(_), Some(_)) => Some("Bearer multiple.authorization.headers"),
        (None, _) => None,
    };
    let d = s.decider.decide(auth).await;
    super::observe(&s.metrics, Transport::Http, started, &d);
    render(&d)
}

fn render(d: &Decision) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match d {
        Decision::Allow(v) => {
            let identity: &Vec<(HeaderName, HeaderValue)> = v.rendered(Transport::Http, || {
                Decider::identity_headers(v)
                    .filter_map(|(name, value)| {
                        Some((
                            HeaderName::try_from(name).ok()?,
                            HeaderValue::try_from(value?).ok()?,
                        ))
                    })
                    .collect()
            });
            for (n, val) in identity {
                h.insert(n.clone(), val.clone());
            }
        }
        Decision::Deny(den) => {
            *resp.status_mut() =
                StatusCode::from_u16(den.http_status).unwrap_or(StatusCode::UNAUTHORIZED);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::try_from(den.www_authenticate.as_str()) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if den.http_status == 503 {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            *resp.body_mut() = Body::from(den.body.clone());
        }
        Decision::Error(_) => {
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *resp.body_mut() = Body::from(r#"{"error":"temporarily_unavailable"}"#);
        }
    }
    resp
}
