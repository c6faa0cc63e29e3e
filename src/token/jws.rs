//! Compact JWS parsing (RFC 7515 §7.1) with strict, bounded decoding.

use super::{Alg, TokenError};
use base64::Engine;
use serde::de::{self, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};

/// base64url without padding, strict: rejects padding, non-alphabet bytes and non-canonical
/// trailing bits.
pub fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The protected header fields Veto acts on. Everything else (`jwk`, `jku`, `x5u`, `x5c`,
/// ...) is ignored on purpose: keys come only from the issuer's configured JWKS.
#[derive(Debug, Clone)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `typ` (RFC 7515 §4.1.9) as sent, any JSON type: only the back-channel logout receiver
    /// acts on it (explicit typing, RFC 8725 §3.11); access-token validation ignores it, as
    /// it always did, so a token with an odd `typ` is not newly refused there.
    pub typ: Option<Value>,
}

/// A compact token split into its parts, with the header and claims decoded but nothing
/// verified yet.
pub struct Parsed<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

pub(crate) fn parse(token: &str, max_len: usize) -> Result<Parsed<'_>, TokenError> {
    if token.len() > max_len {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(TokenError::Malformed("empty part"));
    }
    let header_bytes = b64()
        .decode(h)
        .map_err(|_| TokenError::Malformed("header is not base64url"))?;
    let payload = b64()
        .decode(p)
        .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    let signature = b64()
        .decode(s)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;

    let header =
        parse_object(&header_bytes).ok_or(TokenError::Malformed("header is not a JSON object"))?;
    let header = parse_header(&header)?;
    let claims =
        parse_object(&payload).ok_or(TokenError::Malformed("payload is not a JSON object"))?;
    Ok(Parsed {
        header,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

fn parse_header(h: &Map<String, Value>) -> Result<Header, TokenError> {
    let alg = match h.get("alg") {
        Some(Value::String(s)) => Alg::parse(s).ok_or(TokenError::UnsupportedAlg)?,
        _ => return Err(TokenError::Malformed("header has no alg")),
    };
    // RFC 7515 §4.1.11: a recipient must reject a token with `crit` names it does not
    // understand. Veto understands none, so any `crit` is refused (this also refuses
    // RFC 7797 `b64: false`, which must be listed in `crit`).
    if h.contains_key("crit") {
        return Err(TokenError::UnsupportedCrit);
    }
    if h.get("b64").is_some_and(|v| v != &Value::Bool(true)) {
        return Err(TokenError::UnsupportedCrit);
    }
    let kid = match h.get("kid") {
        None => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => return Err(TokenError::Malformed("kid is not a short string")),
    };
    let typ = h.get("typ").cloned();
    Ok(Header { alg, kid, typ })
}

/// Parses a JSON object, refusing duplicate top-level member names (two parsers that pick
/// different duplicates are how claims get smuggled past a validator). Nesting depth is
/// bounded by serde_json's recursion limit.
pub(crate) fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let map = (&mut de).deserialize_map(StrictObject).ok()?;
    de.end().ok()?;
    Some(map)
}

struct StrictObject;

impl<'de> Visitor<'de> for StrictObject {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object without duplicate members")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some((k, v)) = access.next_entry::<String, Value>()? {
            if map.contains_key(&k) {
                return Err(de::Error::custom("duplicate member"));
            }
            map.insert(k, v);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        b64().encode(s)
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.{}", enc(h), enc(p), enc("sig"))
    }

    #[test]
    fn structure_errors_are_malformed() {
        let good_h = r#"{"alg":"ES256"}"#;
        for t in [
            "".to_string(),
            "abc".to_string(),
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            "a.b.c.d.e".to_string(),
            "..".to_string(),
            format!("{}.{}.", enc(good_h), enc("{}")),
            format!("{}.!!!.{}", enc(good_h), enc("s")),
            format!("{}=.{}.{}", enc(good_h), enc("{}"), enc("s")),
            tok("not json", "{}"),
            tok(good_h, "[1,2]"),
            tok(good_h, "123"),
            tok(good_h, r#"{"a":1} trailing"#),
            tok(good_h, r#"{"sub":"a","sub":"b"}"#),
            tok(r#"{"alg":"ES256","alg":"none"}"#, "{}"),
            tok("{}", "{}"),
            tok(r#"{"alg":"ES256","kid":5}"#, "{}"),
        ] {
            assert!(
                matches!(parse(&t, 8192), Err(TokenError::Malformed(_))),
                "{t:?} gave {:?}",
                parse(&t, 8192).err()
            );
        }
    }

    #[test]
    fn none_and_unknown_algs_are_refused() {
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS1"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":null}"#,
        ] {
            let err = parse(&tok(h, "{}"), 8192).err();
            assert!(
                matches!(
                    err,
                    Some(TokenError::UnsupportedAlg) | Some(TokenError::Malformed(_))
                ),
                "{h}: {err:?}"
            );
        }
    }

    #[test]
    fn crit_is_refused_and_b64_false_too() {
        let t = tok(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#, "{}");
        assert_eq!(parse(&t, 8192).err(), Some(TokenError::UnsupportedCrit));
        let t = tok(r#"{"alg":"ES256","b64":false}"#, "{}");
        assert_eq!(parse(&t, 8192).err(), Some(TokenError::UnsupportedCrit));
    }

    #[test]
    fn size_limit_is_checked_first() {
        let t = "a".repeat(9000);
        assert_eq!(parse(&t, 8192).err(), Some(TokenError::TooLarge));
    }

    #[test]
    fn deep_nesting_is_malformed_not_a_crash() {
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let t = tok(r#"{"alg":"ES256"}"#, &deep);
        assert!(matches!(
            parse(&t, usize::MAX),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn signing_input_is_first_two_parts() {
        let t = tok(
            r#"{"alg":"ES256","kid":"k1","jwk":{"kty":"EC"}}"#,
            r#"{"a":1}"#,
        );
        let p = parse(&t, 8192).unwrap();
        let dot2 = t.rfind('.').unwrap();
        assert_eq!(p.signing_input, &t.as_bytes()[..dot2]);
        assert_eq!(p.header.kid.as_deref(), Some("k1"));
        assert_eq!(p.signature, b"sig");
        assert_eq!(p.header.typ, None);
    }

    #[test]
    fn typ_is_carried_as_sent_and_never_refused_here() {
        for (h, want) in [
            (
                r#"{"alg":"ES256","typ":"logout+jwt"}"#,
                Some(Value::from("logout+jwt")),
            ),
            (r#"{"alg":"ES256","typ":7}"#, Some(Value::from(7))),
            (r#"{"alg":"ES256"}"#, None),
        ] {
            let t = tok(h, "{}");
            let p = parse(&t, 8192).unwrap();
            assert_eq!(p.header.typ, want, "{h}");
        }
    }
}
