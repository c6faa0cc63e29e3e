//! OAuth 2.0 answers: the token response (RFC 6749 §5.1) and the error response (§5.2), both
//! with `Cache-Control: no-store` and `Pragma: no-cache`. Every refusal of the authority's
//! OAuth endpoints is one of these, never a framework's own 4xx body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// A successful token answer. `refresh_token` is the session's current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
    /// Veto's session id (also the access token's `sid`).
    pub session_id: String,
    /// The session's home region.
    pub home_region: String,
}

/// An RFC 6749 §5.2 error (also used for the authority's own JSON endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    #[serde(skip, default = "bad_request")]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error_description: Option<String>,
    /// Seconds, for 503.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

fn bad_request() -> u16 {
    400
}

impl OAuthError {
    /// Any status and error code (the named constructors below cover the usual ones).
    pub fn new(status: u16, error: &str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status,
            error: error.into(),
            error_description: Some(description.into()),
            retry_after: None,
        }
    }
    pub fn invalid_request(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_request", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> OAuthError {
        OAuthError::new(400, "invalid_grant", d)
    }
    pub fn unsupported_grant_type() -> OAuthError {
        OAuthError::new(
            400,
            "unsupported_grant_type",
            "only grant_type=refresh_token is served here",
        )
    }
    pub fn invalid_client(d: impl Into<String>) -> OAuthError {
        OAuthError::new(401, "invalid_client", d)
    }
    pub fn unavailable(d: impl Into<String>) -> OAuthError {
        OAuthError {
            retry_after: Some(2),
            ..OAuthError::new(503, "temporarily_unavailable", d)
        }
    }
    pub fn server_error(d: impl Into<String>) -> OAuthError {
        OAuthError::new(500, "server_error", d)
    }
    pub fn not_found() -> OAuthError {
        OAuthError::new(404, "not_found", "no such endpoint")
    }
    pub fn method_not_allowed() -> OAuthError {
        OAuthError::new(405, "invalid_request", "method not allowed")
    }
    pub fn too_large(limit: usize) -> OAuthError {
        OAuthError::new(
            413,
            "invalid_request",
            format!("request body over {limit} bytes"),
        )
    }

    /// The wire form between authorities (status kept).
    pub fn to_wire(&self) -> WireError {
        WireError {
            status: self.status,
            error: self.error.clone(),
            error_description: self.error_description.clone(),
        }
    }
}

/// An error as one authority answers another over NATS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub status: u16,
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
}

impl From<WireError> for OAuthError {
    fn from(w: WireError) -> OAuthError {
        let status = match w.status {
            400..=599 => w.status,
            _ => 500,
        };
        OAuthError {
            status,
            retry_after: (status == 503).then_some(2),
            error: w.error,
            error_description: w.error_description,
        }
    }
}

/// Adds the no-store headers of RFC 6749 §5.1.
pub fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, axum::Json(&self)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == 401 {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"veto-authority\""),
            );
        }
        no_store(r)
    }
}
