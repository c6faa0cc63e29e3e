//! Local token validation: the order of checks is fixed so that a forged token never gets a
//! more specific answer than `bad_signature`.

use super::claims::{audiences, home_claim, id_claim, numeric_date};
use super::jwk::KeyStore;
use super::jws;
use super::{Alg, Claims, Header, TokenError};
use serde_json::Value;
use std::sync::Arc;

/// What one trusted issuer may sign.
pub struct IssuerPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
    pub session_claim: String,
    /// Longest `exp - iat` accepted, in seconds. Revocations of this issuer are held this
    /// long, so a token living longer could outlive its own revocation: it is refused.
    pub max_token_lifetime: i64,
    /// Extra claims that must be present (beyond `exp`, `iat` and the session claim).
    pub required_claims: Vec<String>,
    /// Claim naming the session's home region (`None`: tokens carry none).
    pub home_claim: Option<String>,
    /// Home of a token without a home claim (`None`: unknown).
    pub home_region: Option<String>,
    pub keys: Arc<KeyStore>,
}

/// A token whose signature and claims passed.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Index of the issuer in the validator's list.
    pub issuer: usize,
    pub alg: Alg,
    pub claims: Claims,
    /// The key that verified it: the token's `kid` and the key's fingerprint, and the
    /// issuer's key-store generation it was found in (see [`Validator::key_still_valid`]).
    pub kid: Option<String>,
    pub key_fingerprint: u128,
    pub key_generation: u64,
}

/// Which checks apply (see [`Validator::validate_for_logout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Access,
    Logout,
}

pub struct Validator {
    pub issuers: Vec<IssuerPolicy>,
    pub max_token_bytes: usize,
}

#[cfg(test)]
impl IssuerPolicy {
    /// The unit tests' issuer: `https://iss`, audience `api`, session claim `sid`, home claim
    /// `veto_home`, 5 s leeway, 1 h lifetime; the given algorithms and keys.
    pub(crate) fn for_tests(algorithms: &[Alg], keys: Arc<KeyStore>) -> IssuerPolicy {
        IssuerPolicy {
            issuer: "https://iss".into(),
            audiences: vec!["api".into()],
            algorithms: algorithms.to_vec(),
            leeway: 5,
            session_claim: "sid".into(),
            max_token_lifetime: 3600,
            required_claims: vec![],
            home_claim: Some("veto_home".into()),
            home_region: None,
            keys,
        }
    }
}

impl Validator {
    /// Validates `token` at `now` (seconds since the epoch).
    pub fn validate(&self, token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        self.validate_as(token, now, Mode::Access)
    }

    /// What logout accepts of the issuer's own tokens: like [`Validator::validate`], but an
    /// expired token passes (a user whose token just expired must still be able to end the
    /// session) and any audience does (the issuer minted it for whichever). Signature,
    /// issuer, `iat`/`nbf`, the lifetime bound and canonical claims are checked.
    pub fn validate_for_logout(&self, token: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        self.validate_as(token, now, Mode::Logout)
    }

    fn validate_as(&self, token: &str, now: i64, mode: Mode) -> Result<VerifiedToken, TokenError> {
        let parsed = jws::parse(token, self.max_token_bytes)?;
        let (idx, policy) = self.issuer(&parsed.claims)?;
        let alg = parsed.header.alg;
        let key = verify_signature(&parsed, &policy.algorithms, &policy.keys)?;
        let claims = check_claims(policy, parsed.claims, now, mode)?;
        Ok(VerifiedToken {
            issuer: idx,
            alg,
            claims,
            kid: parsed.header.kid,
            key_fingerprint: key.fingerprint,
            key_generation: key.generation,
        })
    }

    /// Whether the key that verified `v` is still published by its issuer. Cheap while the
    /// issuer's keys have not changed since (`Some(generation)` it can be re-stamped with
    /// when they changed but still hold the key); `None` once the key was withdrawn or
    /// replaced: the verification must no longer be honoured.
    pub fn key_still_valid(&self, v: &VerifiedToken, checked_generation: u64) -> Option<u64> {
        let store = &self.issuers.get(v.issuer)?.keys;
        let now = store.generation();
        if now == checked_generation {
            return Some(now);
        }
        let set = store.get()?;
        set.still_holds(v.kid.as_deref(), v.alg, v.key_fingerprint)
            .then_some(now)
    }

    /// The issuer a token claims to come from, without verifying anything. Used only to
    /// decide whose JWKS to refetch on an unknown `kid`.
    pub fn unverified_issuer(&self, token: &str) -> Option<usize> {
        let parsed = jws::parse(token, self.max_token_bytes).ok()?;
        self.issuer(&parsed.claims).ok().map(|(i, _)| i)
    }

    fn issuer(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<(usize, &IssuerPolicy), TokenError> {
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s,
            None => return Err(TokenError::MissingClaim("iss")),
            Some(_) => return Err(TokenError::WrongIssuer),
        };
        self.issuers
            .iter()
            .enumerate()
            .find(|(_, p)| &p.issuer == iss)
            .ok_or(TokenError::WrongIssuer)
    }
}

/// The key a signature verified with: its fingerprint, and the key-store generation it was
/// found in.
pub(crate) struct KeyUsed {
    pub fingerprint: u128,
    pub generation: u64,
}

/// The signature half of validation, shared by access tokens ([`Validator::validate`]) and
/// back-channel logout tokens ([`verify_jws`]): `alg` in `algorithms`; the key only from
/// `keys`, by `kid` (embedded `jwk`/`jku`/`x5u`/`x5c` are never read), bound to that very
/// algorithm; HS* only with a configured secret; then the signature.
pub(crate) fn verify_signature(
    parsed: &jws::Parsed<'_>,
    algorithms: &[Alg],
    keys: &KeyStore,
) -> Result<KeyUsed, TokenError> {
    let alg = parsed.header.alg;
    if !algorithms.contains(&alg) {
        return Err(TokenError::UnsupportedAlg);
    }
    // Read before the key set: a replacement racing this validation bumps it past what
    // the token records, so the next cache hit re-checks the key.
    let generation = keys.generation();
    let keys = keys.get().ok_or(TokenError::KeysUnavailable)?;
    let fingerprint;
    let ok = if alg.is_hmac() {
        let secret = keys.hmac_secret().ok_or(TokenError::UnsupportedAlg)?;
        let algo = alg.hmac().ok_or(TokenError::UnsupportedAlg)?;
        fingerprint = keys.hmac_fingerprint().unwrap_or_default();
        let key = aws_lc_rs::hmac::Key::new(algo, secret);
        aws_lc_rs::hmac::verify(&key, parsed.signing_input, &parsed.signature).is_ok()
    } else {
        let jwk = keys
            .find(parsed.header.kid.as_deref(), alg)
            .ok_or(TokenError::UnknownKid)?;
        // The key must be bound to this very algorithm: an RSA or EC key is never fed to
        // another family's verifier, and a key pinned to RS256 never verifies PS256.
        let verifier = jwk.verifier(alg).ok_or(TokenError::UnsupportedAlg)?;
        fingerprint = jwk.fingerprint;
        verifier
            .verify_sig(parsed.signing_input, &parsed.signature)
            .is_ok()
    };
    if !ok {
        return Err(TokenError::BadSignature);
    }
    Ok(KeyUsed {
        fingerprint,
        generation,
    })
}

/// A compact JWS whose signature verified; its claims are not checked yet (that is the
/// caller's: a logout token's rules are not an access token's).
#[derive(Debug, Clone)]
pub struct VerifiedJws {
    pub header: Header,
    pub claims: serde_json::Map<String, Value>,
}

/// Strict compact-JWS parsing ([`jws`]: bounded, duplicate members refused, `crit` refused)
/// and [`verify_signature`], for tokens whose issuer the caller already knows.
pub fn verify_jws(
    token: &str,
    max_len: usize,
    algorithms: &[Alg],
    keys: &KeyStore,
) -> Result<VerifiedJws, TokenError> {
    let parsed = jws::parse(token, max_len)?;
    verify_signature(&parsed, algorithms, keys)?;
    Ok(VerifiedJws {
        header: parsed.header,
        claims: parsed.claims,
    })
}

fn check_claims(
    policy: &IssuerPolicy,
    all: serde_json::Map<String, Value>,
    now: i64,
    mode: Mode,
) -> Result<Claims, TokenError> {
    let exp = match all.get("exp") {
        None => return Err(TokenError::MissingClaim("exp")),
        Some(v) => numeric_date(v).ok_or(TokenError::Malformed("exp is not a NumericDate"))?,
    };
    let iat = match all.get("iat") {
        None => return Err(TokenError::MissingClaim("iat")),
        Some(v) => numeric_date(v).ok_or(TokenError::Malformed("iat is not a NumericDate"))?,
    };
    if mode == Mode::Access && now >= exp + policy.leeway {
        return Err(TokenError::Expired);
    }
    if let Some(v) = all.get("nbf") {
        let nbf = numeric_date(v).ok_or(TokenError::Malformed("nbf is not a NumericDate"))?;
        if now + policy.leeway < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    if now + policy.leeway < iat {
        return Err(TokenError::NotYetValid);
    }
    if exp - iat > policy.max_token_lifetime {
        return Err(TokenError::LifetimeTooLong);
    }
    let aud_ok = match all.get("aud") {
        None => return Err(TokenError::MissingClaim("aud")),
        Some(v) => audiences(v)
            .ok_or(TokenError::InvalidClaim("aud"))?
            .into_iter()
            .any(|a| policy.audiences.iter().any(|x| x == a)),
    };
    if !aud_ok && mode == Mode::Access {
        return Err(TokenError::WrongAudience);
    }
    // Every claim the revoked set keys on is checked for its canonical form before use: a
    // `sub` of 12345 (a number) must not skip the subject check.
    let sid = id_claim(&all, &policy.session_claim, "session")?
        .ok_or(TokenError::MissingClaim("session"))?
        .to_string();
    let sub = id_claim(&all, "sub", "sub")?.map(str::to_string);
    let jti = id_claim(&all, "jti", "jti")?.map(str::to_string);
    let home = match &policy.home_claim {
        Some(c) => home_claim(&all, c)?.map(str::to_string),
        None => None,
    }
    .or_else(|| policy.home_region.clone());
    for c in &policy.required_claims {
        if !all.contains_key(c) {
            return Err(TokenError::MissingClaim("required"));
        }
    }
    Ok(Claims {
        iss: policy.issuer.clone(),
        sub,
        sid,
        jti,
        home,
        iat,
        exp,
        all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::b64;
    use crate::token::jwk::KeySet;
    use crate::token::sign::{jwks, SigningKey};
    use base64::Engine;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn validator(keys: &[&SigningKey], algs: &[Alg]) -> Validator {
        let doc = jwks(keys).to_string();
        let (set, _) = KeySet::from_jwks(doc.as_bytes(), algs).unwrap();
        Validator {
            issuers: vec![IssuerPolicy {
                leeway: 30,
                ..IssuerPolicy::for_tests(algs, Arc::new(KeyStore::new(Some(set))))
            }],
            max_token_bytes: 8192,
        }
    }

    fn claims() -> Value {
        json!({"iss":"https://iss","aud":"api","sub":"u1","sid":"s1","jti":"j1","iat":NOW-10,"exp":NOW+600})
    }

    fn with(mut c: Value, k: &str, v: Value) -> Value {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    }

    #[test]
    fn every_algorithm_round_trips() {
        for alg in [
            Alg::ES256,
            Alg::ES384,
            Alg::RS256,
            Alg::PS256,
            Alg::EdDSA,
            Alg::RS512,
        ] {
            let k = SigningKey::generate(alg, "k1").unwrap();
            let v = validator(&[&k], &[alg]);
            let t = k.sign(&claims()).unwrap();
            let ok = v.validate(&t, NOW).unwrap();
            assert_eq!(ok.claims.sid, "s1", "{alg}");
            assert_eq!(ok.claims.sub.as_deref(), Some("u1"));
            // one flipped bit in the signature
            let mut bad = t.clone().into_bytes();
            let i = bad.len() - 3;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(
                v.validate(&bad, NOW).err(),
                Some(TokenError::BadSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn claim_checks() {
        let k = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let v = validator(&[&k], &[Alg::ES256]);
        let check = |c: Value| v.validate(&k.sign(&c).unwrap(), NOW).err();
        assert_eq!(
            check(with(claims(), "exp", json!(NOW - 31))),
            Some(TokenError::Expired)
        );
        assert_eq!(check(with(claims(), "exp", json!(NOW - 5))), None, "leeway");
        assert_eq!(
            check(with(claims(), "nbf", json!(NOW + 100))),
            Some(TokenError::NotYetValid)
        );
        assert_eq!(
            check(with(claims(), "iat", json!(NOW + 100))),
            Some(TokenError::NotYetValid)
        );
        assert_eq!(
            check(with(claims(), "iss", json!("https://evil"))),
            Some(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(with(claims(), "iss", json!(["https://iss"]))),
            Some(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(with(claims(), "aud", json!("other"))),
            Some(TokenError::WrongAudience)
        );
        assert_eq!(check(with(claims(), "aud", json!(["x", "api"]))), None);
        assert_eq!(
            check(with(claims(), "aud", json!(7))),
            Some(TokenError::InvalidClaim("aud"))
        );
        assert_eq!(
            check(with(claims(), "exp", Value::Null)),
            Some(TokenError::MissingClaim("exp"))
        );
        assert_eq!(
            check(with(claims(), "iat", Value::Null)),
            Some(TokenError::MissingClaim("iat"))
        );
        assert_eq!(
            check(with(claims(), "sid", Value::Null)),
            Some(TokenError::MissingClaim("session"))
        );
        assert_eq!(
            check(with(claims(), "sid", json!(""))),
            Some(TokenError::InvalidClaim("session"))
        );
        assert_eq!(
            check(with(claims(), "sid", json!({"a":1}))),
            Some(TokenError::InvalidClaim("session"))
        );
        assert_eq!(
            check(with(claims(), "exp", json!("soon"))),
            Some(TokenError::Malformed("exp is not a NumericDate"))
        );
        assert_eq!(
            check(with(claims(), "exp", json!(1e300))),
            Some(TokenError::Malformed("exp is not a NumericDate"))
        );
        assert_eq!(
            check(with(claims(), "exp", json!(NOW + 7200))),
            Some(TokenError::LifetimeTooLong)
        );
        assert_eq!(
            check(with(claims(), "exp", json!((NOW + 60) as f64 + 0.5))),
            None
        );
    }

    /// Every claim the revoked set keys on, in every non-canonical shape, is refused: never
    /// validated with the claim treated as absent (which would skip its revocation check).
    #[test]
    fn revocation_keys_in_any_other_shape_are_refused() {
        let k = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let v = validator(&[&k], &[Alg::ES256]);
        let long = "x".repeat(crate::revocation::MAX_ID_BYTES + 1);
        let shapes = [
            json!(12345),
            json!(12345.0),
            json!(7),
            json!(-0.0),
            json!(["12345"]),
            json!([]),
            json!({"id": "12345"}),
            json!(true),
            json!(false),
            json!(null),
            json!(""),
            json!(long),
        ];
        for (claim, what) in [("sub", "sub"), ("jti", "jti"), ("sid", "session")] {
            for shape in &shapes {
                let t = k.sign(&with(claims(), claim, shape.clone())).unwrap();
                // json null is "remove" for `with`: set it explicitly
                let t = if shape.is_null() {
                    let mut c = claims();
                    c[claim] = Value::Null;
                    k.sign(&c).unwrap()
                } else {
                    t
                };
                assert_eq!(
                    v.validate(&t, NOW).err(),
                    Some(TokenError::InvalidClaim(what)),
                    "{claim} = {shape}"
                );
            }
            // the canonical form at the length limit passes and is carried unchanged
            let edge = "é".repeat(crate::revocation::MAX_ID_BYTES / 2);
            let ok = v
                .validate(&k.sign(&with(claims(), claim, json!(edge))).unwrap(), NOW)
                .unwrap();
            let got = match claim {
                "sub" => ok.claims.sub.clone(),
                "jti" => ok.claims.jti.clone(),
                _ => Some(ok.claims.sid.clone()),
            };
            assert_eq!(got.as_deref(), Some(edge.as_str()), "{claim}");
        }
        // absent sub / jti are absent (their checks have nothing to key on); absent sid is not
        for claim in ["sub", "jti"] {
            assert!(v
                .validate(&k.sign(&with(claims(), claim, Value::Null)).unwrap(), NOW)
                .is_ok());
        }
        // aud: an array must hold strings only, even when one member matches
        for aud in [
            json!(["api", 1]),
            json!(["api", null]),
            json!([["api"]]),
            json!({"api": 1}),
        ] {
            assert_eq!(
                v.validate(&k.sign(&with(claims(), "aud", aud.clone())).unwrap(), NOW)
                    .err(),
                Some(TokenError::InvalidClaim("aud")),
                "{aud}"
            );
        }
    }

    #[test]
    fn alg_none_and_confusion_are_refused() {
        let rsa = SigningKey::generate(Alg::RS256, "k1").unwrap();
        let v = validator(&[&rsa], &[Alg::RS256]);
        let body = b64().encode(claims().to_string());
        // alg none, empty and non-empty signature
        for sig in ["", "AAAA"] {
            let t = format!(
                "{}.{}.{}",
                b64().encode(r#"{"alg":"none","kid":"k1"}"#),
                body,
                sig
            );
            assert!(v.validate(&t, NOW).is_err());
        }
        // HS256 signed with the RSA public key (as its JWK JSON and as its modulus) as secret
        let jwk = rsa.public_jwk();
        for secret in [
            jwk.to_string().into_bytes(),
            b64().decode(jwk["n"].as_str().unwrap()).unwrap(),
        ] {
            let hs = SigningKey::from_pkcs8(Alg::HS256, "k1", &secret).unwrap();
            let t = hs.sign(&claims()).unwrap();
            assert_eq!(v.validate(&t, NOW).err(), Some(TokenError::UnsupportedAlg));
        }
        // even if HS256 is allowed, without a configured secret it is refused
        let v2 = validator(&[&rsa], &[Alg::RS256, Alg::HS256]);
        let hs = SigningKey::from_pkcs8(Alg::HS256, "k1", jwk.to_string().as_bytes()).unwrap();
        assert_eq!(
            v2.validate(&hs.sign(&claims()).unwrap(), NOW).err(),
            Some(TokenError::UnsupportedAlg)
        );
        // PS256 with an RS256-pinned key
        let ps = SigningKey::from_pkcs8(Alg::PS256, "k1", rsa.pkcs8_der()).unwrap();
        let v3 = validator(&[&rsa], &[Alg::RS256, Alg::PS256]);
        assert_eq!(
            v3.validate(&ps.sign(&claims()).unwrap(), NOW).err(),
            Some(TokenError::UnsupportedAlg)
        );
        // ES256 header over an RSA kid
        let ec = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let v4 = validator(&[&rsa], &[Alg::RS256, Alg::ES256]);
        assert_eq!(
            v4.validate(&ec.sign(&claims()).unwrap(), NOW).err(),
            Some(TokenError::UnsupportedAlg)
        );
    }

    #[test]
    fn embedded_keys_and_unknown_kids_are_ignored() {
        let trusted = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let attacker = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let v = validator(&[&trusted], &[Alg::ES256]);
        for extra in ["jwk", "jku", "x5u", "x5c"] {
            let mut h = json!({"alg":"ES256","kid":"k1"});
            h[extra] = if extra == "jwk" {
                attacker.public_jwk()
            } else {
                json!("https://evil/keys")
            };
            let t = attacker.sign_with_header(&h, &claims()).unwrap();
            assert_eq!(
                v.validate(&t, NOW).err(),
                Some(TokenError::BadSignature),
                "{extra}"
            );
        }
        for kid in ["nope", "../../etc/passwd", "' OR 1=1 --", "k1\u{0}", ""] {
            let h = json!({"alg":"ES256","kid":kid});
            let t = trusted.sign_with_header(&h, &claims()).unwrap();
            assert_eq!(
                v.validate(&t, NOW).err(),
                Some(TokenError::UnknownKid),
                "{kid:?}"
            );
        }
        // no kid: one anonymous key is not there (keys have kids) -> unknown
        let t = trusted
            .sign_with_header(&json!({"alg":"ES256"}), &claims())
            .unwrap();
        assert_eq!(v.validate(&t, NOW).err(), Some(TokenError::UnknownKid));
    }

    #[test]
    fn hmac_only_with_configured_secret() {
        let hs = SigningKey::generate(Alg::HS256, "h").unwrap();
        let store = KeyStore::new(Some(
            KeySet::default().with_hmac_secret(Some(hs.pkcs8_der().into())),
        ));
        let v = Validator {
            issuers: vec![IssuerPolicy {
                leeway: 0,
                ..IssuerPolicy::for_tests(&[Alg::HS256], Arc::new(store))
            }],
            max_token_bytes: 8192,
        };
        assert!(v.validate(&hs.sign(&claims()).unwrap(), NOW).is_ok());
        let other = SigningKey::generate(Alg::HS256, "h").unwrap();
        assert_eq!(
            v.validate(&other.sign(&claims()).unwrap(), NOW).err(),
            Some(TokenError::BadSignature)
        );
    }

    #[test]
    fn keys_not_loaded_is_not_a_client_error() {
        let k = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let mut v = validator(&[&k], &[Alg::ES256]);
        v.issuers[0].keys = Arc::new(KeyStore::new(None));
        assert_eq!(
            v.validate(&k.sign(&claims()).unwrap(), NOW).err(),
            Some(TokenError::KeysUnavailable)
        );
    }
}
