//! JWKS document parsing. Never panics; every key accepted has the `kty` it claims, serves
//! only algorithms of its family (and only its pinned `alg`), carries no private material,
//! is for signatures, and re-serialised from its public components parses to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use veto::token::{Alg, Jwk, KeySet};
use veto_fuzz::FIXTURE;

const ASYMMETRIC: [Alg; 9] = [
    Alg::ES256,
    Alg::ES384,
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::EdDSA,
];

fn seeds(fx: &veto_fuzz::Fixture) -> Vec<(String, Vec<u8>)> {
    let doc = fx.jwks_doc.clone();
    let keys = doc["keys"].as_array().unwrap().clone();
    let mut out = vec![("fixture".to_string(), doc.to_string().into_bytes())];
    for (i, k) in keys.iter().enumerate() {
        out.push((
            format!("one-{i}"),
            json!({ "keys": [k] }).to_string().into_bytes(),
        ));
        let mut pinned = k.clone();
        pinned["alg"] = json!(if k["kty"] == "RSA" { "PS256" } else { "ES384" });
        out.push((
            format!("mispinned-{i}"),
            json!({ "keys": [pinned] }).to_string().into_bytes(),
        ));
        let mut private = k.clone();
        private["d"] = json!("AAAA");
        out.push((
            format!("private-{i}"),
            json!({ "keys": [private] }).to_string().into_bytes(),
        ));
        let mut enc = k.clone();
        enc["use"] = json!("enc");
        enc["key_ops"] = json!(["verify"]);
        out.push((
            format!("enc-{i}"),
            json!({ "keys": [enc, k] }).to_string().into_bytes(),
        ));
    }
    out.push((
        "dup-kid".into(),
        json!({ "keys": [keys[0], keys[0]] })
            .to_string()
            .into_bytes(),
    ));
    out.push((
        "oct".into(),
        br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#.to_vec(),
    ));
    out.push(("empty".into(), br#"{"keys":[]}"#.to_vec()));
    out.push((
        "numeric-alg".into(),
        br#"{"keys":[{"kty":"EC","alg":7}]}"#.to_vec(),
    ));
    out
}

fn family_ok(kty: &str, crv: Option<&str>, alg: Alg) -> bool {
    match (kty, alg) {
        ("EC", Alg::ES256) => crv == Some("P-256"),
        ("EC", Alg::ES384) => crv == Some("P-384"),
        ("RSA", Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512) => {
            true
        }
        ("OKP", Alg::EdDSA) => crv == Some("Ed25519"),
        _ => false,
    }
}

/// The key's public components only, in a fresh object.
fn reserialised(o: &Map<String, Value>) -> Value {
    let mut r = Map::new();
    for m in ["kty", "crv", "x", "y", "n", "e", "alg", "kid"] {
        if let Some(v) = o.get(m) {
            r.insert(m.into(), v.clone());
        }
    }
    Value::Object(r)
}

fuzz_target!(init: veto_fuzz::init(seeds), |data: &[u8]| {
    let _ = &*FIXTURE;
    let result = KeySet::from_jwks(data, &ASYMMETRIC);
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        assert!(result.is_err(), "accepted a document that is not JSON");
        return;
    };
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        assert!(result.is_err(), "accepted a document without a keys array");
        return;
    };
    let mut usable = 0;
    for k in keys {
        let Some(jwk) = Jwk::from_json(k, &ASYMMETRIC) else {
            continue;
        };
        usable += 1;
        let o = k.as_object().expect("accepted a key that is not an object");
        let kty = o.get("kty").and_then(Value::as_str).expect("accepted a key without kty");
        assert_eq!(jwk.kty, kty, "kty changed");
        let crv = o.get("crv").and_then(Value::as_str);
        assert!(!o.contains_key("d") && !o.contains_key("k"), "private material accepted");
        assert!(o.get("use").is_none_or(|u| u == "sig"), "non-signature key accepted");
        let algs: Vec<Alg> = jwk.algs().collect();
        assert!(!algs.is_empty());
        for a in &algs {
            assert!(family_ok(kty, crv, *a), "{kty}/{crv:?} key serves {a}");
        }
        if let Some(pinned) = o.get("alg") {
            let pinned = pinned.as_str().and_then(Alg::parse).expect("bad alg accepted");
            assert_eq!(algs, [pinned], "pinned key serves other algorithms");
        }
        assert_eq!(jwk.kid.as_deref(), o.get("kid").and_then(Value::as_str));
        let again = Jwk::from_json(&reserialised(o), &ASYMMETRIC)
            .expect("the key's public components alone no longer parse");
        assert_eq!(again.fingerprint, jwk.fingerprint, "re-serialised key differs");
    }
    match result {
        Ok((set, skipped)) => {
            assert!(usable > 0, "a set from no usable key");
            assert!(set.len() <= usable && set.len() + skipped == keys.len());
        }
        Err(_) => assert_eq!(usable, 0, "usable keys, yet the document was refused"),
    }
});
