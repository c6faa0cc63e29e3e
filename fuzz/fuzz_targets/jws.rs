//! Compact JWS parse + full validation through the decider (fixed ES256/EdDSA/RS256 keys,
//! the fixture's issuer policy). Oracle: an allow verifies independently (aws-lc-rs over the
//! exact signing input, under the key its `kid` names, `alg` allowed and that key's) and
//! meets the policy (iss, aud, exp/nbf/iat with leeway, lifetime, sid, not revoked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veto::decision::{Credential, Decision};
use veto_fuzz::{access_token_seeds, assert_access_policy, verify_independently, ALLOWED, FIXTURE};

fuzz_target!(init: veto_fuzz::init(access_token_seeds), |data: &[u8]| {
    let fx = &*FIXTURE;
    let Some(token) = fx.token_from_input(data) else {
        return;
    };
    let header = format!("Bearer {token}");
    let now_lo = veto::now_ms().div_euclid(1000);
    let d = fx.rt.block_on(fx.decider.decide(Credential::Authorization(&header)));
    let now_hi = veto::now_ms().div_euclid(1000);
    match d {
        Decision::Allow(v) => {
            let (_, claims) = verify_independently(fx, &token, &ALLOWED)
                .unwrap_or_else(|e| panic!("allowed but does not verify independently: {e}"));
            assert_access_policy(&claims, now_lo, now_hi);
            assert_eq!(claims.get("sid").and_then(|s| s.as_str()), Some(v.claims.sid.as_str()));
            assert_eq!(claims.get("sub").and_then(|s| s.as_str()), v.claims.sub.as_deref());
        }
        Decision::Deny(_) => {}
        Decision::Error(e) => panic!("the fixture's keys are loaded, yet error {e}"),
    }
});
