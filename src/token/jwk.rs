//! JWK / JWKS handling: public keys parsed once into aws-lc-rs verifiers, bound to the
//! algorithms they may serve.

use super::alg::{Alg, Family};
use super::jws::b64;
use aws_lc_rs::signature::{ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use parking_lot::RwLock;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The JWK `kty` ("EC", "RSA", "OKP").
    pub kty: &'static str,
    /// Identifies the key material and the algorithms it serves (SHA-256, truncated), so a
    /// cached verification can tell whether its key is still published after a refresh.
    pub fingerprint: u128,
    verifiers: Vec<(Alg, ParsedPublicKey)>,
    /// The key as a JWK of its public members only ([`PUBLIC_MEMBERS`]), for whoever is
    /// handed the keys this process trusts (the in-proxy module, `crate::jwks`): parsing it
    /// again gives the same key, and nothing else of the published object is repeated.
    public: serde_json::Map<String, Value>,
}

/// The JWK members a verification key is made of and used by: what
/// [`KeySet::public_jwks`] hands on. Private members (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`,
/// `k`) are never among them (and a key carrying `d` or `k` is refused anyway).
pub const PUBLIC_MEMBERS: &[&str] = &[
    "kty", "kid", "use", "key_ops", "alg", "crv", "x", "y", "n", "e",
];

/// A truncated SHA-256 over length-prefixed parts: equality of keys (and of the
/// back-channel receiver's `(iss, jti)`), not a secret.
pub(crate) fn fingerprint(parts: &[&[u8]]) -> u128 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(b)
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
        // RFC 7517 §4: `use`, `alg`, `kid` are strings and `key_ops` an array of strings. A
        // member of another JSON type makes the key unusable; it is never read as "absent"
        // (a numeric `alg` must not leave the key unpinned).
        for member in ["use", "alg", "kid", "kty", "crv"] {
            if o.get(member).is_some_and(|m| !m.is_string()) {
                return None;
            }
        }
        if s("use").is_some_and(|u| u != "sig") {
            return None;
        }
        // A JWKS carrying private material is a misconfiguration; refuse the key rather than
        // risk treating a secret as public.
        if o.contains_key("d") || o.contains_key("k") {
            return None;
        }
        if let Some(ops) = o.get("key_ops") {
            let ok = ops.as_array().is_some_and(|a| {
                a.iter().all(Value::is_string) && a.iter().any(|op| op.as_str() == Some("verify"))
            });
            if !ok {
                return None;
            }
        }
        let pinned = match s("alg") {
            Some(a) => Some(Alg::parse(a)?),
            None => None,
        };
        let kid = s("kid").map(str::to_string);
        let candidates: Vec<Alg> = allowed
            .iter()
            .copied()
            .filter(|a| !a.is_hmac() && pinned.is_none_or(|p| p == *a))
            .collect();
        let dec = |k: &str| s(k).and_then(|x| b64().decode(x).ok());
        let mut verifiers = Vec::new();
        let kty = s("kty")?;
        let material: Vec<u8>;
        match kty {
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
                material = point.clone();
                verifiers.push((
                    crv_alg,
                    ParsedPublicKey::new(crv_alg.verification()?, &point).ok()?,
                ));
            }
            "RSA" => {
                let (n, e) = (dec("n")?, dec("e")?);
                material = [&(n.len() as u64).to_be_bytes()[..], &n, &e].concat();
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
                material = x.clone();
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
        let algs: Vec<u8> = verifiers
            .iter()
            .flat_map(|(a, _)| a.as_str().bytes().chain([0]))
            .collect();
        let fingerprint = fingerprint(&[kty.as_bytes(), &material, &algs]);
        let kty = match kty {
            "EC" => "EC",
            "RSA" => "RSA",
            _ => "OKP",
        };
        let public = PUBLIC_MEMBERS
            .iter()
            .filter_map(|m| o.get(*m).map(|v| (m.to_string(), v.clone())))
            .collect();
        Some(Jwk {
            kid,
            kty,
            fingerprint,
            verifiers,
            public,
        })
    }
}

/// An issuer's verification keys at one point in time.
#[derive(Debug, Default)]
pub struct KeySet {
    /// By `kid`: one key per (`kid`, `kty`). RFC 7517 §4.5 allows one `kid` for keys of
    /// different types; two keys of the same type under one `kid` are a duplicate, and the
    /// first in document order wins (the later ones are skipped and reported).
    by_kid: HashMap<String, Vec<Arc<Jwk>>>,
    /// Keys published without a `kid`; used only for tokens without a `kid`.
    anonymous: Vec<Arc<Jwk>>,
    /// Shared secret for HS* algorithms, only when explicitly configured.
    hmac_secret: Option<Arc<[u8]>>,
    /// `kid`s that appeared more than once with the same `kty` (each listed once).
    duplicate_kids: Vec<String>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot be used are skipped (and counted in the
    /// returned number, duplicates included), so one exotic key does not take the issuer's
    /// other keys down.
    pub fn from_jwks(doc: &[u8], allowed: &[Alg]) -> Result<(KeySet, usize), JwkError> {
        let v: Value = serde_json::from_slice(doc).map_err(|_| JwkError::NotAJwks)?;
        KeySet::from_jwks_value(&v, allowed)
    }

    /// [`KeySet::from_jwks`] of a document already parsed as JSON (a JWKS inside another
    /// document: the in-proxy keys file).
    pub fn from_jwks_value(v: &Value, allowed: &[Alg]) -> Result<(KeySet, usize), JwkError> {
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwkError::NotAJwks)?;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for k in keys {
            match Jwk::from_json(k, allowed) {
                Some(jwk) => {
                    if !set.insert(jwk) {
                        skipped += 1;
                    }
                }
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

    /// Adds a key. A key whose (`kid`, `kty`) is already present is not added (the first one
    /// wins) and is recorded in [`KeySet::duplicate_kids`]; returns whether it was added.
    pub fn insert(&mut self, jwk: Jwk) -> bool {
        match jwk.kid.clone() {
            Some(kid) => {
                let same = self.by_kid.entry(kid.clone()).or_default();
                if same.iter().any(|k| k.kty == jwk.kty) {
                    if !self.duplicate_kids.contains(&kid) {
                        self.duplicate_kids.push(kid);
                    }
                    return false;
                }
                same.push(Arc::new(jwk));
            }
            None => self.anonymous.push(Arc::new(jwk)),
        }
        true
    }

    /// The keys of this set as a JWKS document (`{"keys": [...]}`), public members only —
    /// never the HMAC secret — in a stable order (by `kid`, then key type; keys without a
    /// `kid` last, in document order), so that the same keys always give the same bytes.
    /// [`KeySet::from_jwks`] of it under the same algorithms gives the same keys.
    pub fn public_jwks(&self) -> Value {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        let keys: Vec<Value> = kids
            .into_iter()
            .flat_map(|kid| {
                let mut same: Vec<&Arc<Jwk>> = self.by_kid[kid].iter().collect();
                same.sort_by_key(|k| k.kty);
                same
            })
            .chain(&self.anonymous)
            .map(|k| Value::Object(k.public.clone()))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// `kid`s published more than once for the same key type (only the first one is used).
    pub fn duplicate_kids(&self) -> &[String] {
        &self.duplicate_kids
    }

    pub fn len(&self) -> usize {
        self.by_kid.values().map(Vec::len).sum::<usize>()
            + self.anonymous.len()
            + usize::from(self.hmac_secret.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn hmac_secret(&self) -> Option<&[u8]> {
        self.hmac_secret.as_deref()
    }

    /// Fingerprint of the HMAC secret (for [`KeySet::still_holds`]).
    pub fn hmac_fingerprint(&self) -> Option<u128> {
        self.hmac_secret
            .as_deref()
            .map(|s| fingerprint(&[b"oct", s]))
    }

    /// Finds the key for a token: by `kid` when the token has one (the key of that `kid`
    /// serving `alg`, else the first of that `kid`, whose verifier then refuses `alg`);
    /// without a `kid`, only if exactly one anonymous key serves `alg` (never a guess among
    /// several).
    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Option<&Jwk> {
        match kid {
            Some(kid) => {
                let same = self.by_kid.get(kid)?;
                same.iter()
                    .find(|k| k.verifier(alg).is_some())
                    .or_else(|| same.first())
                    .map(|k| &**k)
            }
            None => {
                let mut it = self.anonymous.iter().filter(|k| k.verifier(alg).is_some());
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }

    /// Whether a token verified earlier with key `fingerprint` (found by `kid` for `alg`)
    /// would still find that very key here: false once the key was withdrawn or replaced.
    pub fn still_holds(&self, kid: Option<&str>, alg: Alg, fingerprint: u128) -> bool {
        if alg.is_hmac() {
            return self.hmac_fingerprint() == Some(fingerprint);
        }
        self.find(kid, alg)
            .is_some_and(|k| k.fingerprint == fingerprint && k.verifier(alg).is_some())
    }
}

/// An issuer's current keys, swapped atomically when a refresh succeeds. `None` until the
/// first successful load, which is how "never loaded" differs from "loaded, kid unknown".
#[derive(Default)]
pub struct KeyStore {
    current: RwLock<Option<Arc<KeySet>>>,
    /// Bumped on every replacement: a cached verification older than the current generation
    /// re-checks that its key is still published (one atomic load on the request path).
    generation: AtomicU64,
}

impl KeyStore {
    pub fn new(initial: Option<KeySet>) -> KeyStore {
        KeyStore {
            current: RwLock::new(initial.map(Arc::new)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.current.read().clone()
    }

    pub fn replace(&self, set: KeySet) {
        let mut cur = self.current.write();
        *cur = Some(Arc::new(set));
        // Under the write lock: whoever reads the new generation finds the new set.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current key set's generation (see [`KeyStore::replace`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
    fn members_of_the_wrong_json_type_make_a_key_unusable() {
        let good = SigningKey::generate(Alg::ES256, "k").unwrap().public_jwk();
        let bad = |member: &str, v: Value| {
            let mut k = good.clone();
            k[member] = v;
            k
        };
        for k in [
            bad("alg", serde_json::json!(256)),
            bad("alg", serde_json::json!(["ES256"])),
            bad("alg", Value::Null),
            bad("use", serde_json::json!(true)),
            bad("use", serde_json::json!(["sig"])),
            bad("key_ops", serde_json::json!("verify")),
            bad("key_ops", serde_json::json!(["verify", 1])),
            bad("kid", serde_json::json!(5)),
            bad("kty", serde_json::json!(["EC"])),
            bad("crv", serde_json::json!(256)),
        ] {
            assert!(Jwk::from_json(&k, &[Alg::ES256]).is_none(), "{k}");
        }
        assert!(Jwk::from_json(
            &bad("key_ops", serde_json::json!(["verify"])),
            &[Alg::ES256]
        )
        .is_some());
        assert!(Jwk::from_json(&good, &[Alg::ES256]).is_some());
    }

    #[test]
    fn duplicate_kids_first_wins_per_key_type() {
        let first = SigningKey::generate(Alg::ES256, "dup").unwrap();
        let second = SigningKey::generate(Alg::ES256, "dup").unwrap();
        let rsa = SigningKey::generate(Alg::RS256, "dup").unwrap();
        let doc = serde_json::json!({"keys": [first.public_jwk(), second.public_jwk(), rsa.public_jwk()]});
        let (set, skipped) =
            KeySet::from_jwks(doc.to_string().as_bytes(), &[Alg::ES256, Alg::RS256]).unwrap();
        assert_eq!(skipped, 1, "the second EC key under the same kid");
        assert_eq!(set.duplicate_kids(), ["dup".to_string()]);
        let ec = Jwk::from_json(&first.public_jwk(), &[Alg::ES256]).unwrap();
        let ec2 = Jwk::from_json(&second.public_jwk(), &[Alg::ES256]).unwrap();
        assert_eq!(
            set.find(Some("dup"), Alg::ES256).unwrap().fingerprint,
            ec.fingerprint
        );
        assert_ne!(ec.fingerprint, ec2.fingerprint);
        // a different key type under the same kid is a legitimate alternative (RFC 7517 §4.5)
        assert!(set
            .find(Some("dup"), Alg::RS256)
            .unwrap()
            .verifier(Alg::RS256)
            .is_some());
        assert!(set.still_holds(Some("dup"), Alg::ES256, ec.fingerprint));
        assert!(!set.still_holds(Some("dup"), Alg::ES256, ec2.fingerprint));
        assert!(!set.still_holds(Some("gone"), Alg::ES256, ec.fingerprint));
    }

    #[test]
    fn fingerprints_follow_the_material_and_the_store_counts_replacements() {
        let k = SigningKey::generate(Alg::ES256, "k").unwrap();
        let a = Jwk::from_json(&k.public_jwk(), &[Alg::ES256]).unwrap();
        let b = Jwk::from_json(&k.public_jwk(), &[Alg::ES256]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "same key parsed twice");
        let store = KeyStore::new(None);
        assert_eq!(store.generation(), 0);
        store.replace(KeySet::default());
        store.replace(KeySet::default());
        assert_eq!(store.generation(), 2);
    }

    #[test]
    fn public_jwks_round_trips_without_secrets_or_extra_members() {
        let ec = SigningKey::generate(Alg::ES256, "b").unwrap();
        let rsa = SigningKey::generate(Alg::RS256, "a").unwrap();
        let ed = SigningKey::generate(Alg::EdDSA, "c").unwrap();
        let mut anon = SigningKey::generate(Alg::ES256, "x").unwrap().public_jwk();
        anon.as_object_mut().unwrap().remove("kid");
        let mut extra = ed.public_jwk();
        extra["x5u"] = serde_json::json!("https://example.test/cert");
        extra["p"] = serde_json::json!("AAAA");
        let doc = serde_json::json!({"keys": [ec.public_jwk(), anon, rsa.public_jwk(), extra]});
        let algs = [Alg::ES256, Alg::RS256, Alg::EdDSA, Alg::HS256];
        let (set, _) = KeySet::from_jwks(doc.to_string().as_bytes(), &algs).unwrap();
        let set = set.with_hmac_secret(Some(b"0123456789abcdef0123456789abcdef".as_slice().into()));
        let public = set.public_jwks();
        let text = public.to_string();
        assert!(!text.contains("x5u") && !text.contains("\"p\"") && !text.contains("\"k\""));
        assert!(!text.contains("MDEyMzQ1"), "never the HMAC secret");
        let kids: Vec<Option<&str>> = public["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(
            kids,
            [Some("a"), Some("b"), Some("c"), None],
            "stable order"
        );
        let (again, skipped) = KeySet::from_jwks(text.as_bytes(), &algs).unwrap();
        assert_eq!((again.len(), skipped), (4, 0));
        for (kid, alg) in [("a", Alg::RS256), ("b", Alg::ES256), ("c", Alg::EdDSA)] {
            let k = set.find(Some(kid), alg).unwrap();
            assert!(again.still_holds(Some(kid), alg, k.fingerprint), "{kid}");
        }
        assert!(again.find(None, Alg::ES256).is_some());
        assert_eq!(again.public_jwks(), public, "same keys, same document");
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
