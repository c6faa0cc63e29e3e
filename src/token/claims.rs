//! Claims and their canonical forms.
//!
//! A claim that revocation keys on (the session claim, `jti`, `sub`) or that is copied into
//! an identity header has exactly one accepted shape. A token whose such claim is present in
//! another shape is refused (`invalid_claim`): never "treat it as absent", because an absent
//! claim skips its revocation check while the upstream may still read the raw value.

use super::TokenError;
use crate::revocation::MAX_ID_BYTES;
use serde_json::{Map, Value};

/// Longest identity-header value Veto sets, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// The verified claims of a token: the registered ones Veto acts on, typed, plus the whole
/// claim set for header mapping and Envoy dynamic metadata.
#[derive(Debug, Clone)]
pub struct Claims {
    pub iss: String,
    pub sub: Option<String>,
    /// The session id (from the issuer's configured session claim, default `sid`).
    pub sid: String,
    pub jti: Option<String>,
    /// The region the session is homed in: the home claim, else the issuer's configured
    /// `home_region`, else unknown.
    pub home: Option<String>,
    /// Seconds since the epoch.
    pub iat: i64,
    pub exp: i64,
    pub all: Map<String, Value>,
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional. Non-finite,
/// negative or absurd values are refused.
pub(crate) fn numeric_date(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    let secs = if let Some(i) = n.as_i64() {
        i
    } else {
        let f = n.as_f64()?;
        if !f.is_finite() {
            return None;
        }
        f.floor() as i64
    };
    // 0 ..= year 9999: keeps arithmetic with leeway far from overflow.
    (0..=253_402_300_799).contains(&secs).then_some(secs)
}

/// A claim revocation keys on, in its canonical form: a JSON string of 1 to
/// [`MAX_ID_BYTES`] bytes, compared byte for byte (no trimming, no case or Unicode folding),
/// exactly as `veto revoke` and revocation events carry it. `Ok(None)` when absent; any other
/// shape (number, array, object, bool, null, empty or over-long string) is an error naming
/// `what`.
pub(crate) fn id_claim<'a>(
    all: &'a Map<String, Value>,
    name: &str,
    what: &'static str,
) -> Result<Option<&'a str>, TokenError> {
    match all.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaim(what)),
    }
}

/// The home-region claim in its canonical form: a region name (1–64 of `[A-Za-z0-9_-]`, as
/// `nats.regions` are written). `Ok(None)` when absent.
pub(crate) fn home_claim<'a>(
    all: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, TokenError> {
    match all.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if crate::revocation::valid_region(s) => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaim("home")),
    }
}

/// `aud` (RFC 7519 §4.1.3): a string, or an array of strings. `None` for any other shape,
/// including an array with a non-string member.
pub(crate) fn audiences(v: &Value) -> Option<Vec<&str>> {
    match v {
        Value::String(s) => Some(vec![s.as_str()]),
        Value::Array(list) => list.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// The identity-header rendering of a claim, in its one canonical form:
///
/// - a string of visible ASCII and spaces, 1 to [`MAX_HEADER_VALUE_BYTES`] bytes → itself;
/// - an array of such strings, none containing `,` → the members joined with `,` (an empty
///   array → no header, like an absent claim);
/// - absent → no header.
///
/// Anything else (numbers, booleans, objects, null, empty strings, control or non-ASCII
/// characters, members with commas, an over-long result) is `Err`: the token is refused
/// rather than the header dropped or the value mangled.
pub fn header_value(all: &Map<String, Value>, claim: &str) -> Result<Option<String>, TokenError> {
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let value = match all.get(claim) {
        None => return Ok(None),
        Some(Value::String(s)) if visible(s) => s.clone(),
        Some(Value::Array(list)) => {
            let mut parts = Vec::with_capacity(list.len());
            for m in list {
                match m.as_str() {
                    Some(s) if visible(s) && !s.contains(',') => parts.push(s),
                    _ => return Err(TokenError::InvalidClaim("header")),
                }
            }
            if parts.is_empty() {
                return Ok(None);
            }
            parts.join(",")
        }
        Some(_) => return Err(TokenError::InvalidClaim("header")),
    };
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(TokenError::InvalidClaim("header"));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn id_claims_are_non_empty_bounded_strings_only() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let edge = "x".repeat(MAX_ID_BYTES);
        let c = map(json!({"s": "12345", "edge": edge, "u": "ü 1"}));
        assert_eq!(id_claim(&c, "s", "sub"), Ok(Some("12345")));
        assert_eq!(id_claim(&c, "u", "sub"), Ok(Some("ü 1")));
        assert_eq!(
            id_claim(&c, "edge", "sub").unwrap().map(str::len),
            Some(MAX_ID_BYTES)
        );
        assert_eq!(id_claim(&c, "absent", "sub"), Ok(None));
        for bad in [
            json!(12345),
            json!(12345.0),
            json!(-1),
            json!(["12345"]),
            json!({"id": "12345"}),
            json!(true),
            json!(null),
            json!(""),
            json!(long),
        ] {
            let c = map(json!({ "sub": bad }));
            assert_eq!(
                id_claim(&c, "sub", "sub"),
                Err(TokenError::InvalidClaim("sub")),
                "{bad}"
            );
        }
    }

    #[test]
    fn audiences_are_strings_or_arrays_of_strings() {
        assert_eq!(audiences(&json!("a")), Some(vec!["a"]));
        assert_eq!(audiences(&json!(["a", "b"])), Some(vec!["a", "b"]));
        assert_eq!(audiences(&json!([])), Some(vec![]));
        for bad in [
            json!(["a", 1]),
            json!(["a", null]),
            json!([["a"]]),
            json!(7),
            json!({}),
        ] {
            assert_eq!(audiences(&bad), None, "{bad}");
        }
    }

    #[test]
    fn header_values_have_one_form() {
        let c = map(json!({
            "s": "u-1 x", "roles": ["a", "b"], "none": [],
            "n": 12345, "f": 1.5, "b": true, "o": {"a": 1}, "z": null, "e": "",
            "ctl": "a\nb", "uni": "josé", "comma": ["a,b"], "mixed": ["a", 1],
            "long": "x".repeat(MAX_HEADER_VALUE_BYTES + 1),
        }));
        assert_eq!(header_value(&c, "s"), Ok(Some("u-1 x".into())));
        assert_eq!(header_value(&c, "roles"), Ok(Some("a,b".into())));
        assert_eq!(header_value(&c, "none"), Ok(None));
        assert_eq!(header_value(&c, "absent"), Ok(None));
        for bad in [
            "n", "f", "b", "o", "z", "e", "ctl", "uni", "comma", "mixed", "long",
        ] {
            assert_eq!(
                header_value(&c, bad),
                Err(TokenError::InvalidClaim("header")),
                "{bad}"
            );
        }
    }
}
