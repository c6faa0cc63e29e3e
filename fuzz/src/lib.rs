//! What the fuzz targets share: fixed test keys (`fuzz/keys/`, test-only material, made on
//! first use), the issuer policy and decider they run against, the independent oracles
//! (aws-lc-rs straight over the signing input; the policy re-read from the JSON), and the
//! seed corpus each target writes when `VETO_FUZZ_SEEDS=DIR` is set (see [`init`]).
//!
//! Input format shared by `jws` and `logout_token` (so seeds are easy to write and the
//! fuzzer reaches the claim checks with valid signatures):
//! - `0x00 | token`: the token as sent (mutations hit parsing and the signature);
//! - `0x01 | signer | header JSON | 0x00 | payload JSON`: the harness signs the two parts
//!   with [`Fixture::signer`] (a trusted key, a same-`kid` attacker key, or HS256 keyed with
//!   the RSA public key), so the fuzzer explores headers and claims under real signatures.

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use veto::config::{DenyStatus, Isolation, OnStale};
use veto::decision::{Decider, DeciderConfig, DecisionMetrics, IssuerHooks, KeyRefetch};
use veto::revocation::{Freshness, Kind, RevocationEvent, RevokedSet};
use veto::token::sign::{jwks, SigningKey};
use veto::token::{Alg, IssuerPolicy, KeySet, KeyStore, Validator};

pub const ISSUER: &str = "https://issuer.fuzz";
pub const AUDIENCE: &str = "api";
pub const LEEWAY: i64 = 5;
/// Long enough that the seed tokens (iat 2023, exp 2096) stay valid on the real clock the
/// decider reads.
pub const MAX_LIFETIME: i64 = 3_000_000_000;
pub const SEED_IAT: i64 = 1_700_000_000;
pub const SEED_EXP: i64 = 4_000_000_000;
/// A session the fixture's revoked set holds: an allow for it is a finding.
pub const REVOKED_SID: &str = "revoked-sid";
/// The algorithms the issuer (and the back-channel upstream) allow.
pub const ALLOWED: [&str; 3] = ["ES256", "EdDSA", "RS256"];

/// One trusted public key, derived from the PKCS#8 with aws-lc-rs alone (not through
/// `veto::token`): what the oracles verify with.
pub struct TrustedKey {
    pub kid: &'static str,
    pub alg: &'static str,
    pub public: Vec<u8>,
    pub verification: &'static dyn signature::VerificationAlgorithm,
}

pub struct Fixture {
    /// Trusted signers: ES256 `es`, EdDSA `ed`, RS256 `rs`.
    pub trusted_signers: Vec<SigningKey>,
    pub trusted: Vec<TrustedKey>,
    /// An ES256 key under the trusted `kid` `es` that nobody trusts.
    pub attacker: SigningKey,
    /// HS256 keyed with the RSA public JWK's JSON (algorithm confusion).
    pub confusion: SigningKey,
    pub jwks_doc: Value,
    pub decider: Decider<()>,
    /// The same issuer and keys, for `Validator::validate_for_logout`.
    pub validator: Validator,
    pub rt: tokio::runtime::Runtime,
}

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys")
}

/// A fixed test key: read from `fuzz/keys/<file>`, made and written there the first time.
fn fixed_key(alg: Alg, kid: &str, file: &str) -> SigningKey {
    let path = keys_dir().join(file);
    match std::fs::read(&path) {
        Ok(der) => SigningKey::from_pkcs8(alg, kid, &der).expect("fuzz/keys: bad key file"),
        Err(_) => {
            let k = SigningKey::generate(alg, kid).expect("key generation");
            let _ = std::fs::create_dir_all(keys_dir());
            std::fs::write(&path, k.pkcs8_der()).expect("write fuzz/keys");
            k
        }
    }
}

fn trusted_key(k: &SigningKey) -> TrustedKey {
    let der = k.pkcs8_der();
    let (alg, public, verification): (_, Vec<u8>, &'static dyn signature::VerificationAlgorithm) =
        match k.alg {
            Alg::ES256 => (
                "ES256",
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .unwrap()
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::ECDSA_P256_SHA256_FIXED,
            ),
            Alg::EdDSA => (
                "EdDSA",
                Ed25519KeyPair::from_pkcs8(der)
                    .unwrap()
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::ED25519,
            ),
            Alg::RS256 => (
                "RS256",
                RsaKeyPair::from_pkcs8(der)
                    .unwrap()
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::RSA_PKCS1_2048_8192_SHA256,
            ),
            other => panic!("no fixture key for {other}"),
        };
    let kid = match k.kid.as_str() {
        "es" => "es",
        "ed" => "ed",
        _ => "rs",
    };
    TrustedKey {
        kid,
        alg,
        public,
        verification,
    }
}

/// Never brings keys: an unknown `kid` costs one call and stays unknown.
struct NoRefetch;

impl KeyRefetch for NoRefetch {
    fn refetch_for_unknown_kid(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async { false })
    }
}

pub fn allowed_algs() -> Vec<Alg> {
    ALLOWED.iter().map(|a| Alg::parse(a).unwrap()).collect()
}

fn policy(keys: Arc<KeyStore>) -> IssuerPolicy {
    IssuerPolicy {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: allowed_algs(),
        leeway: LEEWAY,
        session_claim: "sid".into(),
        max_token_lifetime: MAX_LIFETIME,
        required_claims: vec![],
        home_claim: None,
        home_region: None,
        keys,
    }
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let es = fixed_key(Alg::ES256, "es", "es256.pk8");
    let ed = fixed_key(Alg::EdDSA, "ed", "eddsa.pk8");
    let rs = fixed_key(Alg::RS256, "rs", "rs256.pk8");
    let attacker = fixed_key(Alg::ES256, "es", "attacker-es256.pk8");
    let confusion =
        SigningKey::from_pkcs8(Alg::HS256, "rs", rs.public_jwk().to_string().as_bytes()).unwrap();
    let jwks_doc = jwks(&[&es, &ed, &rs]);
    let (set, _) = KeySet::from_jwks(jwks_doc.to_string().as_bytes(), &allowed_algs()).unwrap();
    let store = Arc::new(KeyStore::new(Some(set)));
    let revoked = Arc::new(RevokedSet::new());
    let now = veto::now_ms();
    revoked.apply(
        &RevocationEvent::new(
            "fuzz-1",
            Kind::Session,
            REVOKED_SID,
            "fz",
            now,
            Duration::from_secs(100 * 365 * 86_400),
        ),
        now,
    );
    let decider = Decider::new(
        Validator {
            issuers: vec![policy(store.clone())],
            max_token_bytes: 8192,
        },
        revoked,
        Arc::new(Freshness::default()),
        vec![IssuerHooks {
            leeway: LEEWAY,
            refetch: Some(Arc::new(NoRefetch)),
        }],
        DeciderConfig {
            header_claims: vec!["sub".into()],
            revoked_status: DenyStatus::Unauthenticated,
            on_stale: OnStale::Deny,
            isolation: Isolation::Global,
            own_region: None,
            max_staleness: Duration::from_secs(30),
            cache_capacity: 1024,
        },
        DecisionMetrics::register(&prometheus::Registry::new()),
    );
    let trusted = [&es, &ed, &rs].into_iter().map(trusted_key).collect();
    Fixture {
        trusted_signers: vec![es, ed, rs],
        trusted,
        attacker,
        confusion,
        jwks_doc,
        decider,
        validator: Validator {
            issuers: vec![policy(store)],
            max_token_bytes: 8192,
        },
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    }
});

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

impl Fixture {
    /// Signer `i` (mod 5): es, ed, rs, the attacker, the HS256 confusion key.
    pub fn signer(&self, i: u8) -> &SigningKey {
        match i % 5 {
            0..=2 => &self.trusted_signers[usize::from(i % 5)],
            3 => &self.attacker,
            _ => &self.confusion,
        }
    }

    /// `b64(header).b64(payload).b64(sig)` with signer `i`, over the raw bytes as given.
    pub fn sign_raw(&self, i: u8, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = self.signer(i).sign_bytes(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig))
    }

    /// A token from the shared input format (module docs); `None` for input of neither form.
    pub fn token_from_input(&self, data: &[u8]) -> Option<String> {
        let (&mode, rest) = data.split_first()?;
        if mode & 1 == 0 {
            return std::str::from_utf8(rest).ok().map(str::to_string);
        }
        let (&signer, rest) = rest.split_first()?;
        let cut = rest.iter().position(|b| *b == 0)?;
        Some(self.sign_raw(signer, &rest[..cut], &rest[cut + 1..]))
    }
}

/// The shared input format's two forms, for seeds.
pub fn raw_input(token: &str) -> Vec<u8> {
    [&[0u8][..], token.as_bytes()].concat()
}

pub fn signed_input(signer: u8, header: &Value, payload: &Value) -> Vec<u8> {
    let mut v = vec![1u8, signer];
    v.extend_from_slice(header.to_string().as_bytes());
    v.push(0);
    v.extend_from_slice(payload.to_string().as_bytes());
    v
}

/// Independently of `veto::token`: the token is three base64url parts, its header a JSON
/// object with an `alg` in `allowed`, no `crit`, a `kid` naming a trusted key of exactly that
/// algorithm, and the signature verifies under that key over the exact signing input.
/// Returns (header, claims) or why not.
pub fn verify_independently(
    fx: &Fixture,
    token: &str,
    allowed: &[&str],
) -> Result<(Map<String, Value>, Map<String, Value>), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return Err(format!("{} parts", parts.len()));
    };
    let header: Map<String, Value> =
        serde_json::from_slice(&unb64(h).ok_or("header b64")?).map_err(|e| e.to_string())?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&unb64(p).ok_or("payload b64")?).map_err(|e| e.to_string())?;
    let sig = unb64(s).ok_or("signature b64")?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or("no alg")?;
    if !allowed.contains(&alg) {
        return Err(format!("alg {alg} not allowed"));
    }
    if header.contains_key("crit") {
        return Err("crit".into());
    }
    let kid = header.get("kid").and_then(Value::as_str).ok_or("no kid")?;
    let key = fx
        .trusted
        .iter()
        .find(|k| k.kid == kid)
        .ok_or("kid not trusted")?;
    if key.alg != alg {
        return Err(format!("alg {alg} with a {} key", key.alg));
    }
    signature::UnparsedPublicKey::new(key.verification, &key.public)
        .verify(&token.as_bytes()[..h.len() + 1 + p.len()], &sig)
        .map_err(|_| "signature does not verify".to_string())?;
    Ok((header, claims))
}

/// A NumericDate as RFC 7519 reads it (seconds, fractions floored), in 0..=year 9999.
pub fn numeric_date(v: &Value) -> Option<i64> {
    let f = v.as_f64()?;
    (f.is_finite() && (0.0..253_402_300_800.0).contains(&f)).then(|| f.floor() as i64)
}

/// A revocation-keyed id claim in its one accepted form.
pub fn id_ok(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::String(s)) => !s.is_empty() && s.len() <= 1024,
        Some(_) => false,
    }
}

pub fn audience_contains(v: Option<&Value>, want: &str) -> bool {
    match v {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().all(Value::is_string) && a.iter().any(|x| x == want),
        _ => false,
    }
}

/// The issuer policy an allowed access token must satisfy, for any `now` in
/// `[now_lo, now_hi]` (the decision read the clock in between). Panics with the reason.
pub fn assert_access_policy(c: &Map<String, Value>, now_lo: i64, now_hi: i64) {
    assert_eq!(
        c.get("iss"),
        Some(&json!(ISSUER)),
        "allowed with another iss"
    );
    assert!(
        audience_contains(c.get("aud"), AUDIENCE),
        "allowed without our audience: {:?}",
        c.get("aud")
    );
    let exp = c
        .get("exp")
        .and_then(numeric_date)
        .expect("allowed without a valid exp");
    let iat = c
        .get("iat")
        .and_then(numeric_date)
        .expect("allowed without a valid iat");
    assert!(
        exp + LEEWAY > now_lo,
        "allowed an expired token (exp {exp})"
    );
    assert!(
        iat <= now_hi + LEEWAY,
        "allowed a token issued in the future"
    );
    if let Some(nbf) = c.get("nbf") {
        let nbf = numeric_date(nbf).expect("allowed with an invalid nbf");
        assert!(nbf <= now_hi + LEEWAY, "allowed before nbf");
    }
    assert!(exp - iat <= MAX_LIFETIME, "allowed a too-long lifetime");
    let sid = c
        .get("sid")
        .and_then(Value::as_str)
        .expect("allowed without sid");
    assert!(id_ok(c.get("sid")), "allowed a non-canonical sid");
    assert!(
        id_ok(c.get("sub")) && id_ok(c.get("jti")),
        "non-canonical sub/jti"
    );
    assert_ne!(sid, REVOKED_SID, "allowed a revoked session");
}

/// Runs once per process: writes this target's seeds to `$VETO_FUZZ_SEEDS` when set.
pub fn init(seeds: fn(&Fixture) -> Vec<(String, Vec<u8>)>) {
    let fx = &*FIXTURE;
    let Some(dir) = std::env::var_os("VETO_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    for (name, bytes) in seeds(fx) {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

/// Access-token claims of the seeds, with `k` set to `v` (`null`: removed).
pub fn claims_with(pairs: &[(&str, Value)]) -> Value {
    let mut c = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "sid": "s1", "jti": "j1",
        "iat": SEED_IAT, "exp": SEED_EXP,
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

/// The access-token seed set shared by `jws` and `bearer`: (name, token or input).
pub fn access_token_seeds(fx: &Fixture) -> Vec<(String, Vec<u8>)> {
    let variants: Vec<(&str, Value)> = vec![
        ("valid", claims_with(&[])),
        ("expired", claims_with(&[("exp", json!(SEED_IAT + 60))])),
        ("nbf-future", claims_with(&[("nbf", json!(SEED_EXP - 10))])),
        ("iat-future", claims_with(&[("iat", json!(SEED_EXP - 10))])),
        ("wrong-aud", claims_with(&[("aud", json!("other"))])),
        ("aud-array", claims_with(&[("aud", json!(["x", AUDIENCE]))])),
        ("wrong-iss", claims_with(&[("iss", json!("https://evil"))])),
        ("no-sid", claims_with(&[("sid", Value::Null)])),
        ("revoked", claims_with(&[("sid", json!(REVOKED_SID))])),
        ("numeric-sub", claims_with(&[("sub", json!(12345))])),
        ("float-exp", claims_with(&[("exp", json!(3_999_999_999.5))])),
        (
            "too-long",
            claims_with(&[("iat", json!(1)), ("exp", json!(SEED_EXP))]),
        ),
    ];
    let mut out = Vec::new();
    for (i, signer) in [0u8, 1, 2].into_iter().enumerate() {
        let kid = fx.signer(signer).kid.clone();
        let alg = fx.signer(signer).alg.as_str();
        for (name, claims) in &variants {
            let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
            if i == 0 || *name == "valid" {
                out.push((
                    format!("{alg}-{name}-signed"),
                    signed_input(signer, &header, claims),
                ));
            }
            let t = fx.sign_raw(
                signer,
                header.to_string().as_bytes(),
                claims.to_string().as_bytes(),
            );
            out.push((format!("{alg}-{name}-raw"), raw_input(&t)));
        }
    }
    let c = claims_with(&[]);
    for (name, header, signer) in [
        ("attacker", json!({"alg":"ES256","kid":"es"}), 3u8),
        ("hs-confusion", json!({"alg":"HS256","kid":"rs"}), 4),
        ("alg-none", json!({"alg":"none","kid":"es"}), 0),
        ("unknown-kid", json!({"alg":"ES256","kid":"nope"}), 0),
        ("no-kid", json!({"alg":"ES256"}), 0),
        ("crit", json!({"alg":"ES256","kid":"es","crit":["exp"]}), 0),
        (
            "b64-false",
            json!({"alg":"ES256","kid":"es","b64":false}),
            0,
        ),
        ("es-as-rs", json!({"alg":"RS256","kid":"es"}), 2),
        (
            "embedded-jwk",
            json!({"alg":"ES256","kid":"es","jwk":fx.attacker.public_jwk()}),
            3,
        ),
    ] {
        out.push((name.to_string(), signed_input(signer, &header, &c)));
    }
    // duplicate members, textually
    let mut dup = vec![1u8, 0];
    dup.extend_from_slice(br#"{"alg":"ES256","kid":"es"}"#);
    dup.push(0);
    dup.extend_from_slice(
        format!(
            r#"{{"iss":"{ISSUER}","aud":"api","sid":"s1","sid":"{REVOKED_SID}","iat":{SEED_IAT},"exp":{SEED_EXP}}}"#
        )
        .as_bytes(),
    );
    out.push(("duplicate-sid".into(), dup));
    out.push(("garbage".into(), raw_input("a.b.c")));
    out
}
