//! How a denial is answered, the same over both transports: the HTTP status, the RFC 6750
//! `WWW-Authenticate` challenge, `Retry-After` for a stale feed, and the JSON body
//! `{"error":...,"reason":...}` whose `reason` is the stable contract.

use crate::decision::{Denial, DenyCode, DenyReason};

/// The HTTP status of a denial.
pub fn http_status(code: DenyCode) -> u16 {
    match code {
        DenyCode::Unauthenticated => 401,
        DenyCode::PermissionDenied => 403,
        DenyCode::Unavailable => 503,
    }
}

/// `Retry-After` (seconds) for denials that are worth retrying.
pub fn retry_after(code: DenyCode) -> Option<&'static str> {
    (code == DenyCode::Unavailable).then_some("1")
}

/// The RFC 6750 challenge: no `error` attribute when no token was sent (§3.1).
pub fn challenge(d: &Denial) -> String {
    match &d.reason {
        DenyReason::MissingToken => "Bearer realm=\"veto\"".to_string(),
        other => format!(
            "Bearer realm=\"veto\", error=\"invalid_token\", error_description=\"{}\"",
            other.description().replace(['"', '\\'], "")
        ),
    }
}

/// The JSON body.
pub fn body(d: &Denial) -> String {
    let error = match d.reason {
        DenyReason::MissingToken => "unauthorized",
        _ => "invalid_token",
    };
    serde_json::json!({"error": error, "reason": d.reason.reason()}).to_string()
}

/// The body of an answer Veto could not decide (no internal detail).
pub const UNAVAILABLE_BODY: &str = r#"{"error":"temporarily_unavailable"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::RevokedBy;
    use crate::token::TokenError;

    #[test]
    fn denials_render_per_rfc_6750() {
        let missing = Denial {
            reason: DenyReason::MissingToken,
            code: DenyCode::Unauthenticated,
        };
        assert_eq!(challenge(&missing), "Bearer realm=\"veto\"");
        assert_eq!(
            body(&missing),
            r#"{"error":"unauthorized","reason":"missing_token"}"#
        );
        let forged = Denial {
            reason: DenyReason::Token(TokenError::Malformed("a \"quoted\\ part")),
            code: DenyCode::Unauthenticated,
        };
        assert_eq!(
            challenge(&forged),
            "Bearer realm=\"veto\", error=\"invalid_token\", error_description=\"malformed token: a quoted part\""
        );
        let revoked = Denial {
            reason: DenyReason::Revoked(RevokedBy::Session),
            code: DenyCode::PermissionDenied,
        };
        assert_eq!(http_status(revoked.code), 403);
        assert_eq!(
            body(&revoked),
            r#"{"error":"invalid_token","reason":"revoked"}"#
        );
        assert_eq!(retry_after(DenyCode::Unavailable), Some("1"));
        assert_eq!(retry_after(DenyCode::Unauthenticated), None);
        assert_eq!(http_status(DenyCode::Unavailable), 503);
    }
}
