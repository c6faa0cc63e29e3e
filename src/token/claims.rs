use serde_json::{Map, Value};

/// The verified claims of a token: the registered ones Veto acts on, typed, plus the whole
/// claim set for header mapping and Envoy dynamic metadata.
#[derive(Debug, Clone)]
pub struct Claims {
    pub iss: String,
    pub sub: Option<String>,
    /// The session id (from the issuer's configured session claim, default `sid`).
    pub sid: String,
    pub jti: Option<String>,
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

/// A claim that must be a non-empty string of bounded length.
pub(crate) fn string_claim<'a>(all: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match all.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Some(s),
        _ => None,
    }
}
