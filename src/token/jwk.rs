//! JWK / JWKS handling: public keys parsed once into aws-lc-rs verifiers, bound to the
//! algorithms they may serve.

use super::alg::{Alg, Family};
use super::jws::b64;
use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use parking_lot::RwLock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwkError {
    #[error("JWKS is not a JSON object with a `keys` array")]
    NotAJwks,
    #[error("JWKS holds no usable key for the configured algorithms")]
    NoUsableKeys,
}

/// One public key, with one parsed verifier per algorithm it may be used with.
pub struct Jwk {
    pub kid: Option<String>,
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.verifiers.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("algs", &algs)
            .finish()
    }
}

impl Jwk {
    pub fn verifier(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| k)
    }

    pub fn algs(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    /// Builds a key from one JWK object. Returns `None` for keys that are private, meant for
    /// encryption, of an unsupported type, malformed, or usable by none of `allowed`.
    pub fn from_json(v: &Value, allowed: &[Alg]) -> Option<Jwk> {
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str);
        if s("use").is_some_and(|u| u != "sig") {
            return None;
        }
        // A JWKS carrying private material is a misconfiguration; refuse the key rather than
        // risk treating a secret as public.
        if o.contains_key("d") || o.contains_key("k") {
            return None;
        }
        if let Some(ops) = o.get("key_ops") {
            let ok = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|op| op.as_str() == Some("verify")));
            if !ok {
                return None;
            }
        }
        let pinned = match s("alg") {
            Some(a) => Some(Alg::parse(a)?),
            None => None,
        };
        let kid = match o.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return None,
        };
        let candidates: Vec<Alg> = allowed
            .iter()
            .copied()
            .filter(|a| !a.is_hmac() && pinned.is_none_or(|p| p == *a))
            .collect();
        let dec = |k: &str| s(k).and_then(|x| b64().decode(x).ok());
        let mut verifiers = Vec::new();
        match s("kty")? {
            "EC" => {
                let (x, y) = (dec("x")?, dec("y")?);
                let (crv_alg, len) = match s("crv")? {
                    "P-256" => (Alg::ES256, 32),
                    "P-384" => (Alg::ES384, 48),
                    _ => return None,
                };
                if x.len() != len || y.len() != len || !candidates.contains(&crv_alg) {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                verifiers.push((
                    crv_alg,
                    ParsedPublicKey::new(crv_alg.verification()?, &point).ok()?,
                ));
            }
            "RSA" => {
                let (n, e) = (dec("n")?, dec("e")?);
                let comps = RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                };
                for a in candidates.iter().filter(|a| a.family() == Family::Rsa) {
                    let params = match a {
                        Alg::RS256 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                        Alg::RS384 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA384,
                        Alg::RS512 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA512,
                        Alg::PS256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
                        Alg::PS384 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA384,
                        Alg::PS512 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA512,
                        _ => continue,
                    };
                    verifiers.push((*a, comps.to_parsed_public_key(params).ok()?));
                }
            }
            "OKP" => {
                let x = dec("x")?;
                if s("crv")? != "Ed25519" || x.len() != 32 || !candidates.contains(&Alg::EdDSA) {
                    return None;
                }
                verifiers.push((
                    Alg::EdDSA,
                    ParsedPublicKey::new(Alg::EdDSA.verification()?, &x).ok()?,
                ));
            }
            _ => return None,
        }
        if verifiers.is_empty() {
            return None;
        }
        Some(Jwk { kid, verifiers })
    }
}

/// An issuer's verification keys at one point in time.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Jwk>>,
    /// Keys published without a `kid`; used only for tokens without a `kid`.
    anonymous: Vec<Arc<Jwk>>,
    /// Shared secret for HS* algorithms, only when explicitly configured.
    hmac_secret: Option<Arc<[u8]>>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot be used are skipped (and counted in the
    /// returned number), so one exotic key does not take the issuer's other keys down.
    pub fn from_jwks(doc: &[u8], allowed: &[Alg]) -> Result<(KeySet, usize), JwkError> {
        let v: Value = serde_json::from_slice(doc).map_err(|_| JwkError::NotAJwks)?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwkError::NotAJwks)?;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for k in keys {
            match Jwk::from_json(k, allowed) {
                Some(jwk) => set.insert(jwk),
                None => skipped += 1,
            }
        }
        if set.is_empty() {
            return Err(JwkError::NoUsableKeys);
        }
        Ok((set, skipped))
    }

    pub fn with_hmac_secret(mut self, secret: Option<Arc<[u8]>>) -> KeySet {
        self.hmac_secret = secret;
        self
    }

    pub fn insert(&mut self, jwk: Jwk) {
        match jwk.kid.clone() {
            Some(kid) => {
                self.by_kid.insert(kid, Arc::new(jwk));
            }
            None => self.anonymous.push(Arc::new(jwk)),
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len() + usize::from(self.hmac_secret.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hmac_secret(&self) -> Option<&[u8]> {
        self.hmac_secret.as_deref()
    }

    /// Finds the key for a token: by `kid` when the token has one; without a `kid`, only if
    /// exactly one anonymous key serves `alg` (never a guess among several).
    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Option<&Jwk> {
        match kid {
            Some(kid) => self.by_kid.get(kid).map(|k| &**k),
            None => {
                let mut it = self.anonymous.iter().filter(|k| k.verifier(alg).is_some());
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }
}

/// An issuer's current keys, swapped atomically when a refresh succeeds. `None` until the
/// first successful load, which is how "never loaded" differs from "loaded, kid unknown".
#[derive(Default)]
pub struct KeyStore {
    current: RwLock<Option<Arc<KeySet>>>,
}

impl KeyStore {
    pub fn new(initial: Option<KeySet>) -> KeyStore {
        KeyStore {
            current: RwLock::new(initial.map(Arc::new)),
        }
    }

    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.current.read().clone()
    }

    pub fn replace(&self, set: KeySet) {
        *self.current.write() = Some(Arc::new(set));
    }

    pub fn is_loaded(&self) -> bool {
        self.current.read().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::sign::SigningKey;

    #[test]
    fn skips_private_encryption_and_unknown_keys() {
        let good = SigningKey::generate(Alg::ES256, "good")
            .unwrap()
            .public_jwk();
        let doc = serde_json::json!({"keys": [
            good,
            {"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"short"},
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"EC","crv":"P-256","use":"enc","x":good["x"],"y":good["y"],"kid":"enc"},
            {"kty":"EC","crv":"P-256","d":"AA","x":good["x"],"y":good["y"],"kid":"priv"},
            {"kty":"XYZ","kid":"weird"},
            "not an object"
        ]});
        let (set, skipped) = KeySet::from_jwks(doc.to_string().as_bytes(), &[Alg::ES256]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped, 6);
        assert!(set.find(Some("good"), Alg::ES256).is_some());
        assert!(set.find(Some("hmac"), Alg::HS256).is_none());
    }

    #[test]
    fn rsa_key_gets_only_allowed_algs_and_pinned_alg_wins() {
        let k = SigningKey::generate(Alg::RS256, "r").unwrap();
        let mut jwk = k.public_jwk();
        let (set, _) = KeySet::from_jwks(
            serde_json::json!({"keys":[jwk.clone()]})
                .to_string()
                .as_bytes(),
            &[Alg::RS256, Alg::PS256, Alg::ES256],
        )
        .unwrap();
        let key = set.find(Some("r"), Alg::RS256).unwrap();
        assert_eq!(key.algs().collect::<Vec<_>>(), vec![Alg::RS256]); // pinned by "alg"
        jwk.as_object_mut().unwrap().remove("alg");
        let (set, _) = KeySet::from_jwks(
            serde_json::json!({"keys":[jwk]}).to_string().as_bytes(),
            &[Alg::RS256, Alg::PS256],
        )
        .unwrap();
        let key = set.find(Some("r"), Alg::RS256).unwrap();
        assert_eq!(key.algs().collect::<Vec<_>>(), vec![Alg::RS256, Alg::PS256]);
    }

    #[test]
    fn garbage_jwks_is_an_error() {
        for doc in [
            &b"nope"[..],
            b"{}",
            b"{\"keys\":{}}",
            b"{\"keys\":[]}",
            b"[]",
        ] {
            assert!(KeySet::from_jwks(doc, &[Alg::ES256]).is_err());
        }
    }
}
