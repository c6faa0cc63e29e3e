//! Token signing: used by `veto keys`, the authority, tests and benchmarks. The sidecar never
//! signs.

use super::jws::b64;
use super::Alg;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::Engine;
use serde_json::{json, Value};

#[allow(clippy::large_enum_variant)] // a handful of keys per process; boxing buys nothing
enum Inner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(aws_lc_rs::hmac::Key),
}

/// A private signing key with its algorithm and `kid`.
pub struct SigningKey {
    pub alg: Alg,
    pub kid: String,
    inner: Inner,
    pkcs8: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create or load a {0} signing key")]
pub struct SignError(pub Alg);

impl SigningKey {
    /// Generates a fresh key. RSA keys are 2048-bit.
    pub fn generate(alg: Alg, kid: &str) -> Result<SigningKey, SignError> {
        let err = |_| SignError(alg);
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Alg::ES256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(err)?
                .as_ref()
                .to_vec(),
            Alg::ES384 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                .map_err(err)?
                .as_ref()
                .to_vec(),
            Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(err)?
                .as_ref()
                .to_vec(),
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                let mut k = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut k).map_err(err)?;
                k
            }
            _ => RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(err)?
                .as_der()
                .map_err(err)?
                .as_ref()
                .to_vec(),
        };
        SigningKey::from_pkcs8(alg, kid, &pkcs8)
    }

    /// Loads a key from PKCS#8 DER (for HS* algorithms: the raw secret).
    pub fn from_pkcs8(alg: Alg, kid: &str, der: &[u8]) -> Result<SigningKey, SignError> {
        let err = |_| SignError(alg);
        let inner = match alg {
            Alg::ES256 => Inner::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(err)?,
            ),
            Alg::ES384 => Inner::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der).map_err(err)?,
            ),
            Alg::EdDSA => Inner::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(err)?),
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Inner::Hmac(aws_lc_rs::hmac::Key::new(
                alg.hmac().ok_or(SignError(alg))?,
                der,
            )),
            _ => Inner::Rsa(RsaKeyPair::from_pkcs8(der).map_err(err)?),
        };
        Ok(SigningKey {
            alg,
            kid: kid.to_string(),
            inner,
            pkcs8: der.to_vec(),
        })
    }

    /// The private key as PKCS#8 DER (HS*: the secret). Handle as a secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public JWK (with `kid`, `alg`, `use: sig`). HMAC keys have no public form.
    pub fn public_jwk(&self) -> Value {
        let e = |b: &[u8]| b64().encode(b);
        let mut v = match &self.inner {
            Inner::Ec(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = if self.alg == Alg::ES256 {
                    "P-256"
                } else {
                    "P-384"
                };
                json!({"kty":"EC","crv":crv,"x":e(&p[1..1 + n]),"y":e(&p[1 + n..])})
            }
            Inner::Rsa(k) => {
                let c: PublicKeyComponents<Vec<u8>> = k.public_key().into();
                json!({"kty":"RSA","n":e(&c.n),"e":e(&c.e)})
            }
            Inner::Ed(k) => json!({"kty":"OKP","crv":"Ed25519","x":e(k.public_key().as_ref())}),
            Inner::Hmac(_) => return Value::Null,
        };
        v["kid"] = json!(self.kid);
        v["alg"] = json!(self.alg.as_str());
        v["use"] = json!("sig");
        v
    }

    /// Signs `claims` into a compact JWS with header `{alg, typ: JWT, kid}`.
    pub fn sign(&self, claims: &Value) -> Result<String, SignError> {
        let header = json!({"alg": self.alg.as_str(), "typ": "JWT", "kid": self.kid});
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-supplied header (tests use it to forge hostile headers).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, SignError> {
        let mut out = String::with_capacity(512);
        b64().encode_string(header.to_string(), &mut out);
        out.push('.');
        b64().encode_string(claims.to_string(), &mut out);
        let sig = self.sign_bytes(out.as_bytes())?;
        out.push('.');
        b64().encode_string(sig, &mut out);
        Ok(out)
    }

    pub fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        let err = |_| SignError(self.alg);
        Ok(match &self.inner {
            Inner::Ec(k) => k.sign(&rng, msg).map_err(err)?.as_ref().to_vec(),
            Inner::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Inner::Hmac(k) => aws_lc_rs::hmac::sign(k, msg).as_ref().to_vec(),
            Inner::Rsa(k) => {
                let pad: &'static dyn aws_lc_rs::signature::RsaEncoding = match self.alg {
                    Alg::RS256 => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    Alg::RS384 => &aws_lc_rs::signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &aws_lc_rs::signature::RSA_PKCS1_SHA512,
                    Alg::PS256 => &aws_lc_rs::signature::RSA_PSS_SHA256,
                    Alg::PS384 => &aws_lc_rs::signature::RSA_PSS_SHA384,
                    Alg::PS512 => &aws_lc_rs::signature::RSA_PSS_SHA512,
                    _ => return Err(SignError(self.alg)),
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, msg, &mut sig).map_err(err)?;
                sig
            }
        })
    }
}

/// A JWKS document for a set of signing keys.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.public_jwk()).filter(|v| !v.is_null()).collect::<Vec<_>>()})
}
