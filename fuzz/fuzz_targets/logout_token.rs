//! Back-channel logout-token validation (`backchannel::Receiver::validate`, one upstream
//! with a JWKS file of the fixture's keys) and the authority's own-token logout check
//! (`Validator::validate_for_logout`). Never panics. Oracle for an accepted logout token: the
//! signature verifies independently under the key its `kid` names, and the claims are a
//! logout token's (iss, aud, iat age, exp, jti, the back-channel `events` member an object,
//! no `nonce`, `sid` or `sub`, typ `logout+jwt` or absent), the order carries them, and the
//! same token again is a replay. For `validate_for_logout`: verified, issuer, not issued in
//! the future, lifetime bound.
//!
//! Input: the shared format of `veto_fuzz` (raw token, or header + payload signed here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::LazyLock;
use veto::authority::backchannel::{
    BackchannelMetrics, Receiver, Refusal, BACKCHANNEL_LOGOUT_EVENT,
};
use veto::authority::config::Upstream;
use veto::jwks::JwksMetrics;
use veto_fuzz::{
    audience_contains, claims_with, numeric_date, raw_input, signed_input, verify_independently,
    ALLOWED, FIXTURE, ISSUER, LEEWAY, MAX_LIFETIME,
};

const IDP_ISSUER: &str = "https://idp.fuzz";
const CLIENT_ID: &str = "veto-client";
const MAX_AGE: i64 = 120;
const IDP_LEEWAY: i64 = 5;
const NOW: i64 = 1_800_000_000;

static RECEIVER: LazyLock<Receiver> = LazyLock::new(|| {
    let fx = &*FIXTURE;
    let path = std::env::temp_dir().join(format!("veto-fuzz-jwks-{}.json", std::process::id()));
    std::fs::write(&path, fx.jwks_doc.to_string()).unwrap();
    let upstream: Upstream = serde_json::from_value(json!({
        "name": "idp",
        "issuer": IDP_ISSUER,
        "client_id": CLIENT_ID,
        "jwks_file": path,
        "algorithms": ALLOWED,
        "max_age": format!("{MAX_AGE}s"),
        "leeway": format!("{IDP_LEEWAY}s"),
        "jwks_min_refetch_interval": "1h",
    }))
    .unwrap();
    let r = prometheus::Registry::new();
    let receiver = Receiver::new(
        &[upstream],
        JwksMetrics::register(&r),
        BackchannelMetrics::register(&r),
    )
    .unwrap();
    assert!(
        fx.rt.block_on(receiver.load_now()),
        "upstream JWKS file did not load"
    );
    receiver
});

fn logout_claims(pairs: &[(&str, Value)]) -> Value {
    let mut c = json!({
        "iss": IDP_ISSUER, "aud": CLIENT_ID, "iat": NOW - 10, "exp": NOW + 100, "jti": "j-1",
        "sid": "upstream-sid", "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    });
    for (k, v) in pairs {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

fn seeds(fx: &veto_fuzz::Fixture) -> Vec<(String, Vec<u8>)> {
    let variants: Vec<(&str, Value)> = vec![
        ("valid", logout_claims(&[])),
        (
            "sub-only",
            logout_claims(&[("sid", Value::Null), ("sub", json!("u1"))]),
        ),
        ("no-subject", logout_claims(&[("sid", Value::Null)])),
        ("nonce", logout_claims(&[("nonce", json!("n"))])),
        ("no-events", logout_claims(&[("events", Value::Null)])),
        (
            "events-not-object",
            logout_claims(&[("events", json!({ BACKCHANNEL_LOGOUT_EVENT: "x" }))]),
        ),
        ("too-old", logout_claims(&[("iat", json!(NOW - 1000))])),
        ("expired", logout_claims(&[("exp", json!(NOW - 100))])),
        (
            "wrong-aud",
            logout_claims(&[("aud", json!([CLIENT_ID, 1]))]),
        ),
        ("no-jti", logout_claims(&[("jti", Value::Null)])),
        // an access token of the fixture's issuer: validate_for_logout's input
        ("access-token", claims_with(&[])),
        (
            "access-expired",
            claims_with(&[("exp", json!(veto_fuzz::SEED_IAT + 60))]),
        ),
    ];
    let mut out = Vec::new();
    for signer in [0u8, 1, 2] {
        let s = fx.signer(signer);
        for (name, claims) in &variants {
            for (tn, header) in [
                (
                    "typed",
                    json!({"alg": s.alg.as_str(), "kid": s.kid, "typ": "logout+jwt"}),
                ),
                ("untyped", json!({"alg": s.alg.as_str(), "kid": s.kid})),
            ] {
                if signer > 0 && tn == "untyped" {
                    continue;
                }
                out.push((
                    format!("{}-{name}-{tn}", s.alg),
                    signed_input(signer, &header, claims),
                ));
            }
        }
        let t = fx.sign_raw(
            signer,
            json!({"alg": s.alg.as_str(), "kid": s.kid, "typ": "logout+jwt"})
                .to_string()
                .as_bytes(),
            logout_claims(&[]).to_string().as_bytes(),
        );
        out.push((format!("{}-raw", s.alg), raw_input(&t)));
    }
    for (name, header, signer) in [
        (
            "typ-jwt",
            json!({"alg":"ES256","kid":"es","typ":"JWT"}),
            0u8,
        ),
        ("attacker", json!({"alg":"ES256","kid":"es"}), 3),
        ("hs", json!({"alg":"HS256","kid":"rs"}), 4),
    ] {
        out.push((
            name.into(),
            signed_input(signer, &header, &logout_claims(&[])),
        ));
    }
    out.push(("jwe".into(), raw_input("a.b.c.d.e")));
    out
}

fuzz_target!(init: veto_fuzz::init(seeds), |data: &[u8]| {
    let fx = &*FIXTURE;
    let receiver = &*RECEIVER;
    let Some(token) = fx.token_from_input(data) else {
        return;
    };
    match fx.rt.block_on(receiver.validate("idp", &token, NOW)) {
        Ok(order) => {
            let (header, c) = verify_independently(fx, &token, &ALLOWED)
                .unwrap_or_else(|e| panic!("logout token accepted but does not verify: {e}"));
            match header.get("typ") {
                None => {}
                Some(Value::String(t)) => {
                    let t = t.to_ascii_lowercase();
                    assert!(t == "logout+jwt" || t == "application/logout+jwt", "typ {t}");
                }
                Some(other) => panic!("typ {other}"),
            }
            assert_eq!(c.get("iss"), Some(&json!(IDP_ISSUER)));
            assert!(audience_contains(c.get("aud"), CLIENT_ID), "aud");
            let iat = c.get("iat").and_then(numeric_date).expect("iat");
            assert!(iat <= NOW + IDP_LEEWAY && NOW - iat <= MAX_AGE + IDP_LEEWAY, "iat {iat}");
            let exp = c.get("exp").and_then(numeric_date).expect("exp required");
            assert!(NOW < exp + IDP_LEEWAY, "expired");
            let events = c.get("events").and_then(Value::as_object).expect("events");
            assert!(events.get(BACKCHANNEL_LOGOUT_EVENT).is_some_and(Value::is_object), "event member");
            assert!(!c.contains_key("nonce"), "nonce accepted");
            let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
            assert!(order.sid.is_some() || order.sub.is_some(), "neither sid nor sub");
            assert_eq!((order.sid, order.sub, Some(order.jti), order.iat), (s("sid"), s("sub"), s("jti"), iat));
            assert_eq!(
                fx.rt.block_on(receiver.validate("idp", &token, NOW)).err(),
                Some(Refusal::Replay),
                "accepted twice"
            );
        }
        Err(Refusal::Unavailable) => panic!("the upstream's keys are loaded, yet unavailable"),
        Err(_) => {}
    }
    if let Ok(v) = fx.validator.validate_for_logout(&token, NOW) {
        let (_, c) = verify_independently(fx, &token, &ALLOWED)
            .unwrap_or_else(|e| panic!("validate_for_logout accepted an unverified token: {e}"));
        assert_eq!(c.get("iss"), Some(&json!(ISSUER)));
        let iat = c.get("iat").and_then(numeric_date).expect("iat");
        let exp = c.get("exp").and_then(numeric_date).expect("exp");
        assert!(iat <= NOW + LEEWAY, "issued in the future");
        assert!(exp - iat <= MAX_LIFETIME, "lifetime");
        assert_eq!(c.get("sid").and_then(Value::as_str), Some(v.claims.sid.as_str()));
    }
});
