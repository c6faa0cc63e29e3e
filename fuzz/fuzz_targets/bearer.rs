//! Raw request headers through bearer extraction and the whole decision, over both
//! transports' credential readers (forward-auth `HeaderMap`, ext_authz `CheckRequest`).
//! Never panics; malformed framing gets the reason RFC 6750 and the README say (absent or a
//! non-Bearer scheme: `missing_token`; two headers, non-text, an empty token: `malformed`);
//! an allow verifies independently and meets the issuer policy.
//!
//! Input: header lines `name:value` separated by `\n`; the first byte picks the ext_authz
//! form (even: the `headers` map, odd: `header_map` with raw values).
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use libfuzzer_sys::fuzz_target;
use veto::decision::{Credential, Decision};
use veto_fuzz::{access_token_seeds, assert_access_policy, verify_independently, ALLOWED, FIXTURE};

fn seeds(fx: &veto_fuzz::Fixture) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, input) in access_token_seeds(fx) {
        if let Some(t) = fx.token_from_input(&input) {
            out.push((
                name.clone(),
                format!("\0authorization:Bearer {t}").into_bytes(),
            ));
            if name.ends_with("valid-raw") {
                out.push((
                    format!("{name}-raw-map"),
                    format!("\x01Authorization: bearer\t{t} ").into_bytes(),
                ));
                out.push((
                    format!("{name}-twice"),
                    format!("\0authorization:Bearer {t}\nAuthorization:Bearer {t}").into_bytes(),
                ));
            }
        }
    }
    for (name, h) in [
        ("absent", "\0x-user-id:forged"),
        ("basic", "\0authorization:Basic dXNlcjpwYXNz"),
        ("empty-bearer", "\0authorization:Bearer "),
        ("no-space", "\0authorization:Bearerabc"),
        ("not-text", "\0authorization:Bearer \u{e9}t\u{e9}"),
        ("raw-not-text", "\x01authorization:Bearer \u{ff}"),
    ] {
        out.push((name.to_string(), h.as_bytes().to_vec()));
    }
    out
}

/// The reason the framing alone decides, or `None` when a token goes on to validation.
fn framing(auth: &[&[u8]], text: fn(&[u8]) -> Option<&str>) -> Option<&'static str> {
    let v = match auth {
        [] => return Some("missing_token"),
        [v] => *v,
        _ => return Some("malformed"),
    };
    let Some(v) = text(v) else {
        return Some("malformed");
    };
    let v = v.trim_matches([' ', '\t']);
    let (scheme, rest) = v.split_once([' ', '\t']).unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Some("missing_token");
    }
    if rest.trim_start_matches([' ', '\t']).is_empty() {
        return Some("malformed");
    }
    None
}

fn judge(d: Decision<()>, want: Option<&'static str>, token: Option<&str>, now_lo: i64) {
    let now_hi = veto::now_ms().div_euclid(1000);
    match (&d, want) {
        (Decision::Allow(_), None) => {
            let t = token.expect("allowed without a token");
            let (_, claims) = verify_independently(&FIXTURE, t, &ALLOWED)
                .unwrap_or_else(|e| panic!("allowed but does not verify independently: {e}"));
            assert_access_policy(&claims, now_lo, now_hi);
        }
        (Decision::Deny(denial), Some(reason)) => {
            assert_eq!(
                denial.reason.reason(),
                reason,
                "wrong reason for the framing"
            )
        }
        (Decision::Deny(denial), None) => assert_ne!(denial.reason.reason(), "missing_token"),
        (d, want) => panic!("{d:?} where the framing says {want:?}"),
    }
}

fn token_of(v: &str) -> Option<&str> {
    let v = v.trim_matches([' ', '\t']);
    let (_, rest) = v.split_once([' ', '\t'])?;
    Some(rest.trim_start_matches([' ', '\t']))
}

fuzz_target!(init: veto_fuzz::init(seeds), |data: &[u8]| {
    let fx = &*FIXTURE;
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let lines: Vec<(&[u8], &[u8])> = data
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b':')?;
            Some((&l[..i], &l[i + 1..]))
        })
        .take(16)
        .collect();

    // forward-auth: what hyper would have built (invalid names/values never arrive)
    let mut map = HeaderMap::new();
    for (n, v) in &lines {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            map.append(n, v);
        }
    }
    let auth: Vec<&[u8]> = map.get_all("authorization").iter().map(HeaderValue::as_bytes).collect();
    // `HeaderValue::to_str`: visible ASCII and tabs only
    let want = framing(&auth, |v| {
        v.iter()
            .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
            .then(|| std::str::from_utf8(v).unwrap())
    });
    let now_lo = veto::now_ms().div_euclid(1000);
    let credential = veto::authz::http::credential(&map);
    if let (Credential::Authorization(v), None) = (credential, want) {
        let d = fx.rt.block_on(fx.decider.decide(credential));
        judge(d, None, token_of(v), now_lo);
    } else {
        let d = fx.rt.block_on(fx.decider.decide(credential));
        judge(d, want, None, now_lo);
    }

    // ext_authz
    let mut http = HttpRequest { method: "GET".into(), path: "/".into(), ..Default::default() };
    let mut raw_auth: Vec<Vec<u8>> = Vec::new();
    if mode & 1 == 0 {
        for (n, v) in &lines {
            let n = String::from_utf8_lossy(n).to_ascii_lowercase();
            http.headers.insert(n, String::from_utf8_lossy(v).into_owned());
        }
        if let Some(v) = http.headers.get("authorization") {
            raw_auth.push(v.clone().into_bytes());
        }
    } else {
        let mut hm = core::HeaderMap::default();
        for (n, v) in &lines {
            let key = String::from_utf8_lossy(n).into_owned();
            if key.eq_ignore_ascii_case("authorization") {
                raw_auth.push(v.to_vec());
            }
            hm.headers.push(core::HeaderValue { key, value: String::new(), raw_value: v.to_vec() });
        }
        http.header_map = Some(hm);
    }
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    };
    let refs: Vec<&[u8]> = raw_auth.iter().map(Vec::as_slice).collect();
    let want = framing(&refs, |v| std::str::from_utf8(v).ok());
    let credential = veto::authz::grpc::credential(&req);
    let token = match credential {
        Credential::Authorization(v) => token_of(v),
        _ => None,
    };
    let d = fx.rt.block_on(fx.decider.decide(credential));
    judge(d, want, token, now_lo);
});
