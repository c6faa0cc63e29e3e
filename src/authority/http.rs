//! The authority's public HTTP API. Bodies are read and parsed here (never by an axum
//! extractor), so every refusal is this API's own JSON: RFC 6749 §5.2 errors with
//! `Cache-Control: no-store`, not a framework's 415/422.
//!
//! | endpoint | who | answers |
//! |---|---|---|
//! | `POST /v1/sessions` (JSON) | the app's login handler, admin bearer | 201 token response · 400 · 401 · 503 |
//! | `POST /v1/token` (form, `grant_type=refresh_token`) | clients, any region | 200 token response · 400 · 503 + Retry-After |
//! | `POST /v1/logout` (form, `token=`) | clients | 200 (also for unknown tokens, RFC 7009) · 400 · 503 |
//! | `POST /v1/revocations` (JSON) | admin bearer | 202 · 400 · 401 · 503 |

use super::oauth::{no_store, OAuthError};
use super::service::{NewSession, RevocationRequest, Service};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest form body (`/v1/token`, `/v1/logout`).
pub const MAX_FORM_BYTES: usize = 8 * 1024;
/// Largest JSON body (`/v1/sessions`, `/v1/revocations`).
pub const MAX_JSON_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct Api {
    pub service: Arc<Service>,
    /// The admin bearer secret.
    pub admin_token: Arc<[u8]>,
    pub cors_origins: Arc<[String]>,
    /// The authority's own origin (`scheme://host[:port]` of `public_url`): same-origin pages.
    pub own_origin: Arc<str>,
}

pub fn router(api: Api) -> Router {
    let post = MethodFilter::POST.or(MethodFilter::OPTIONS);
    Router::new()
        .route(
            "/v1/sessions",
            on(MethodFilter::POST, sessions).fallback(method_not_allowed),
        )
        .route("/v1/token", on(post, token).fallback(method_not_allowed))
        .route("/v1/logout", on(post, logout).fallback(method_not_allowed))
        .route(
            "/v1/revocations",
            on(MethodFilter::POST, revocations).fallback(method_not_allowed),
        )
        .fallback(not_found)
        .with_state(api)
}

async fn not_found() -> Response {
    OAuthError::not_found().into_response()
}

async fn method_not_allowed() -> Response {
    let mut r = OAuthError::method_not_allowed().into_response();
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// Reads at most `limit` bytes of body.
async fn body(req: Request, limit: usize) -> Result<(HeaderMap, Bytes), OAuthError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > limit {
            return Err(OAuthError::too_large(limit));
        }
    }
    let bytes = axum::body::to_bytes(Body::new(body), limit)
        .await
        .map_err(|_| OAuthError::too_large(limit))?;
    Ok((parts.headers, bytes))
}

fn media_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A form body as name → value, each name at most once (RFC 6749 §3.2: "request and response
/// parameters MUST NOT be included more than once"). Empty values count as absent (§3.1).
/// Public for the fuzz targets (`fuzz/`).
pub fn form(h: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    if media_type(h) != "application/x-www-form-urlencoded" {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| OAuthError::invalid_request("the body is not a valid form (UTF-8)"))?;
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        if out.iter().any(|(o, _)| *o == k) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {} given more than once",
                printable(&k)
            )));
        }
        if !v.is_empty() {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// A parameter name safe to echo (never a value: values may be tokens).
fn printable(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    if s.is_empty() {
        "(unnamed)".into()
    } else {
        s
    }
}

fn param<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn json_body<T: serde::de::DeserializeOwned>(h: &HeaderMap, body: &[u8]) -> Result<T, OAuthError> {
    if media_type(h) != "application/json" {
        return Err(OAuthError::invalid_request(
            "the body must be application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| OAuthError::invalid_request(format!("body: {}", json_problem(&e))))
}

/// What is wrong with a JSON body, without echoing any of its values.
fn json_problem(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde's messages name fields ("unknown field `x`", "missing field `sub`") and types;
    // they quote values only for `invalid value`/`invalid type` — keep the category there.
    match e.classify() {
        serde_json::error::Category::Data => {
            if text.starts_with("unknown field") || text.starts_with("missing field") {
                text.split(" at line")
                    .next()
                    .unwrap_or("invalid")
                    .to_string()
            } else {
                "a field has the wrong type or value".into()
            }
        }
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            "not valid JSON".into()
        }
        serde_json::error::Category::Io => "unreadable".into(),
    }
}

/// Constant-time check of the admin bearer.
fn admin(h: &HeaderMap, secret: &[u8]) -> Result<(), OAuthError> {
    let presented = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or("");
    let ok = presented.len() == secret.len() && bool::from(presented.as_bytes().ct_eq(secret));
    if ok {
        Ok(())
    } else {
        Err(OAuthError::invalid_client(
            "admin credential missing or wrong",
        ))
    }
}

/// CORS for browser clients: only listed origins get the headers; a preflight is answered
/// here. Everything else about the request is unchanged.
fn cors(api: &Api, h: &HeaderMap, mut r: Response) -> Response {
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return r;
    };
    if !api.cors_origins.iter().any(|o| o == origin) {
        return r;
    }
    let headers = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    // a browser client may honour the 503's Retry-After
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    r
}

fn preflight(api: &Api, h: &HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let listed = h
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| api.cors_origins.iter().any(|x| x == o));
    if listed {
        let headers = r.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    cors(api, h, r)
}

fn json_ok<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    no_store((status, axum::Json(v)).into_response())
}

fn answer(r: Result<Response, OAuthError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn sessions(State(api): State<Api>, req: Request) -> Response {
    answer(
        async {
            admin(req.headers(), &api.admin_token)?;
            let (h, b) = body(req, MAX_JSON_BYTES).await?;
            let new: NewSession = json_body(&h, &b)?;
            let t = api.service.create_session(new).await?;
            Ok(json_ok(StatusCode::CREATED, &t))
        }
        .await,
    )
}

/// A browser-facing form endpoint: preflight answered here, CORS headers for listed
/// origins, the form parsed, `f` given the parameters.
async fn browser_form<F, Fut>(api: Api, req: Request, f: F) -> Response
where
    F: FnOnce(Api, Vec<(String, String)>) -> Fut,
    Fut: std::future::Future<Output = Result<Response, OAuthError>>,
{
    if req.method() == Method::OPTIONS {
        return preflight(&api, req.headers());
    }
    // A browser page of an origin not allowed could still send a simple form POST (no
    // preflight) and rotate the refresh token without being able to read the answer: refuse
    // it before anything happens. Requests without `Origin` are not browsers' (or same-origin
    // GET-like navigations) and are judged by their body alone.
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| api.cors_origins.iter().any(|x| x == o) || o == api.own_origin.as_ref());
        if !ok {
            return OAuthError::new(
                403,
                "invalid_request",
                "this origin may not call the authority",
            )
            .into_response();
        }
    }
    let headers = req.headers().clone();
    let r = async {
        let (h, b) = body(req, MAX_FORM_BYTES).await?;
        let params = form(&h, &b)?;
        f(api.clone(), params).await
    }
    .await;
    cors(&api, &headers, answer(r))
}

/// The refresh token of a `/v1/token` form (RFC 6749 §6): `grant_type=refresh_token` and a
/// `refresh_token`. Public for the fuzz targets (`fuzz/`).
pub fn refresh_grant(f: &[(String, String)]) -> Result<&str, OAuthError> {
    match param(f, "grant_type") {
        None => return Err(OAuthError::invalid_request("grant_type is missing")),
        Some("refresh_token") => {}
        Some(_) => return Err(OAuthError::unsupported_grant_type()),
    }
    param(f, "refresh_token").ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))
}

/// The `token` of a `/v1/logout` form. Public for the fuzz targets (`fuzz/`).
pub fn logout_token(f: &[(String, String)]) -> Result<&str, OAuthError> {
    param(f, "token").ok_or_else(|| OAuthError::invalid_request("token is missing"))
}

async fn token(State(api): State<Api>, req: Request) -> Response {
    browser_form(api, req, |api, f| async move {
        let t = api.service.refresh(refresh_grant(&f)?).await?;
        Ok(json_ok(StatusCode::OK, &t))
    })
    .await
}

async fn logout(State(api): State<Api>, req: Request) -> Response {
    browser_form(api, req, |api, f| async move {
        api.service.logout(logout_token(&f)?).await?;
        Ok(no_store(StatusCode::OK.into_response()))
    })
    .await
}

async fn revocations(State(api): State<Api>, req: Request) -> Response {
    answer(
        async {
            admin(req.headers(), &api.admin_token)?;
            let (h, b) = body(req, MAX_JSON_BYTES).await?;
            let r: RevocationRequest = json_body(&h, &b)?;
            let p = api.service.revoke(r).await?;
            Ok(json_ok(StatusCode::ACCEPTED, &p))
        }
        .await,
    )
}
