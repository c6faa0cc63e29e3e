//! The authority's form handling for `/v1/token` and `/v1/logout`: the body parser (content
//! type, UTF-8, repeated names) and each endpoint's parameters. Never panics; every refusal
//! is an RFC 6749 §5.2 error (400 `invalid_request` / `unsupported_grant_type`; a refresh
//! token that fails its MAC: `invalid_grant`) whose description echoes no value; an accepted
//! form has unique names and non-empty values and survives re-encoding.
//!
//! Input: `content-type selector | endpoint selector | body`.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use veto::authority::http::{form, logout_token, refresh_grant};
use veto::authority::oauth::OAuthError;
use veto::authority::refresh::{mint, parse, MacKeys};
use veto_fuzz::b64;

const TYPES: [&str; 6] = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=utf-8",
    "Application/X-WWW-Form-Urlencoded",
    "application/json",
    "",
    "multipart/form-data; boundary=x",
];

fn keys() -> MacKeys {
    MacKeys::parse(&format!("k1={}\n", b64([9u8; 32]))).unwrap()
}

fn seeds(_: &veto_fuzz::Fixture) -> Vec<(String, Vec<u8>)> {
    let rt = mint(&keys(), "us", "sess1", 1, &[1u8; 32]);
    let enc = |s: &str| serde_urlencoded::to_string([("refresh_token", s)]).unwrap();
    let bodies: Vec<(&str, u8, String)> = vec![
        (
            "refresh",
            0,
            format!("grant_type=refresh_token&{}", enc(&rt)),
        ),
        (
            "refresh-charset",
            1,
            format!("grant_type=refresh_token&{}", enc(&rt)),
        ),
        ("no-grant", 0, enc(&rt)),
        (
            "password-grant",
            0,
            "grant_type=password&username=a&password=b".into(),
        ),
        (
            "repeated",
            0,
            "grant_type=refresh_token&grant_type=refresh_token".into(),
        ),
        (
            "empty-value",
            0,
            "grant_type=refresh_token&refresh_token=".into(),
        ),
        (
            "percent",
            0,
            "grant_type=refresh%5Ftoken&refresh_token=vrt1%2Ex".into(),
        ),
        ("bad-utf8", 0, "grant_type=%FF%FE".into()),
        ("json", 3, r#"{"grant_type":"refresh_token"}"#.into()),
        ("logout", 0, "token=eyJhbGciOiJFUzI1NiJ9.e30.c2ln".into()),
    ];
    let mut out = Vec::new();
    for (name, ty, body) in bodies {
        for endpoint in [0u8, 1] {
            let mut v = vec![ty, endpoint];
            v.extend_from_slice(body.as_bytes());
            out.push((format!("{name}-{endpoint}"), v));
        }
    }
    out
}

fn assert_rfc6749(e: &OAuthError, body: &[u8]) {
    let w = e.to_wire();
    assert!(
        matches!(
            (w.status, w.error.as_str()),
            (
                400,
                "invalid_request" | "unsupported_grant_type" | "invalid_grant"
            )
        ),
        "not an RFC 6749 error: {} {}",
        w.status,
        w.error
    );
    if let Some(d) = &w.error_description {
        // RFC 6749 §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E
        assert!(
            d.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
            "description outside the RFC 6749 character set: {d:?}"
        );
        // Values are never echoed: the description is one of the fixed texts, or the
        // refusal of a repeated name, which names a name of this body (filtered as the
        // service filters it) and nothing else.
        let fixed = [
            "the body must be application/x-www-form-urlencoded",
            "the body is not a valid form (UTF-8)",
            "only grant_type=refresh_token is served here",
            "grant_type is missing",
            "refresh_token is missing",
            "token is missing",
            "refresh token not recognised",
        ];
        let repeated_name = d
            .strip_prefix("parameter ")
            .and_then(|r| r.strip_suffix(" given more than once"));
        let names_a_name = repeated_name.is_some_and(|name| {
            serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
                .is_ok_and(|pairs| pairs.iter().any(|(k, _)| echoes(name, k)))
        });
        assert!(
            fixed.contains(&d.as_str()) || names_a_name,
            "a description that is neither a fixed text nor a name of the body: {d:?}"
        );
    }
}

/// Is `echoed` what may be said of the name `k`: its first 32 ASCII letters, digits and
/// underscores, or "(unnamed)" when it has none?
fn echoes(echoed: &str, k: &str) -> bool {
    let mut kept = k.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_');
    if echoed == "(unnamed)" {
        kept.next().is_none()
    } else {
        kept.take(32).eq(echoed.chars())
    }
}

fuzz_target!(init: veto_fuzz::init(seeds), |data: &[u8]| {
    let [ty, endpoint, body @ ..] = data else {
        return;
    };
    let mut h = HeaderMap::new();
    let ty = TYPES[usize::from(*ty) % TYPES.len()];
    if !ty.is_empty() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    }
    let params = match form(&h, body) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.to_wire().error, "invalid_request");
            assert_rfc6749(&e, body);
            return;
        }
    };
    assert!(ty.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    for (i, (k, v)) in params.iter().enumerate() {
        assert!(!v.is_empty(), "empty value kept");
        assert!(params[..i].iter().all(|(o, _)| o != k), "repeated name accepted");
    }
    let again = serde_urlencoded::to_string(&params).unwrap();
    assert_eq!(form(&h, again.as_bytes()).ok().as_ref(), Some(&params), "re-encoding differs");
    if endpoint & 1 == 0 {
        match refresh_grant(&params) {
            Ok(rt) => {
                assert!(params.iter().any(|(k, v)| k == "grant_type" && v == "refresh_token"));
                if parse(&keys(), rt).is_err() {
                    // what the service answers before any lookup
                    assert_rfc6749(&OAuthError::invalid_grant("refresh token not recognised"), body);
                }
            }
            Err(e) => assert_rfc6749(&e, body),
        }
    } else {
        match logout_token(&params) {
            Ok(t) => assert!(!t.is_empty()),
            Err(e) => assert_rfc6749(&e, body),
        }
    }
});
