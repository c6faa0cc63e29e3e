//! Differential test: Veto's decider against an independent JWT library (PyJWT).
//!
//! A deterministic corpus (seeded RNG) of mutations of valid tokens — header, payload,
//! encoding, sizes — for every algorithm the issuer allows, asked of the decider in-process
//! (the sidecar built from real settings, as in `tests/inprocess.rs`) and of PyJWT through
//! ONE long-lived `tests/differential/pyjwt_oracle.py` over JSON lines, with the same issuer
//! policy. Every mutation class has one expected outcome pair in [`EXPECTED`] (documented in
//! `tests/differential/README.md`); any case off its class's expectation fails, and a case
//! PyJWT refuses but Veto allows is reported as a security finding.
//!
//! PyJWT is found through `VETO_VENV` (default `<repo>/.venv`); without it the test fails
//! (`scripts/install-deps.sh` installs it). `VETO_DIFF_SEED` replays another corpus.

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use veto::config::Settings;
use veto::decision::{Credential, Decision};
use veto::sidecar::Sidecar;
use veto::token::sign::{jwks, SigningKey};
use veto::token::{b64, Alg};

const DEFAULT_SEED: u64 = 0x7e70_d1ff;
/// Each mutation is drawn this many times per key (with fresh random choices).
const ROUNDS: usize = 6;
const ISS: &str = "https://auth.test";
const AUDIENCES: [&str; 2] = ["api", "api2"];
const LEEWAY: i64 = 30;
const MAX_LIFETIME: i64 = 900;
const MAX_TOKEN_BYTES: usize = 8192;
/// The issuer's allow-list, as configured for Veto and passed to PyJWT.
const ALGS: [Alg; 6] = [
    Alg::ES256,
    Alg::ES384,
    Alg::RS256,
    Alg::PS256,
    Alg::EdDSA,
    Alg::HS256,
];

/// Both answers for one case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    BothAccept,
    BothReject,
    /// Veto is stricter: PyJWT accepts.
    VetoOnlyReject,
    /// PyJWT is stricter: Veto accepts what PyJWT refuses — a security finding unless
    /// explained here.
    PyjwtOnlyReject,
}

use Outcome::*;

impl Outcome {
    fn of(veto_ok: bool, pyjwt_ok: bool) -> Outcome {
        match (veto_ok, pyjwt_ok) {
            (true, true) => BothAccept,
            (false, false) => BothReject,
            (false, true) => VetoOnlyReject,
            (true, false) => PyjwtOnlyReject,
        }
    }
}

/// The expected outcome of every mutation class, and why. A class not listed, or a case
/// whose outcome differs from its class's, fails the test.
const EXPECTED: &[(&str, Outcome, &str)] = &[
    ("valid", BothAccept, "the unmutated token"),
    // ---- header
    ("hdr.alg_none", BothReject, "alg none/None/NONE/nOnE is no algorithm to either"),
    ("hdr.alg_hs256_pubkey_secret", BothReject, "algorithm confusion: HS256 signed with the public key (PEM, JWK JSON or raw bytes) as secret; both verify HS* only with the configured secret"),
    ("hdr.alg_not_allowed", BothReject, "an algorithm outside the issuer's allow-list (RS384, PS512, HS384, ...) properly signed"),
    ("hdr.alg_unknown", BothReject, "ES512, ES256K, HS1, Ed25519, es256, 'ES256 ', ''"),
    ("hdr.alg_family_swap", BothReject, "a header alg of another family or padding than the kid's key (PS256 on an RS256 key): both bind the key to its JWK alg"),
    ("hdr.alg_missing_or_not_string", BothReject, "no alg, or null/5/[\"ES256\"]"),
    ("hdr.kid_missing", BothReject, "every JWKS key has a kid; neither guesses"),
    ("hdr.kid_unknown", BothReject, "a kid not in the JWKS"),
    ("hdr.kid_not_string", BothReject, "kid 5, null, [..], {..}"),
    ("hdr.kid_of_other_key", BothReject, "the kid of another family's key"),
    ("hdr.hs_kid_ignored", BothAccept, "HS*: the configured secret is used whatever the kid (both)"),
    ("hdr.crit_unknown", BothReject, "crit naming an unknown extension, empty, or not a list"),
    ("hdr.crit_b64_true", VetoOnlyReject, "veto refuses any crit; PyJWT understands b64 and accepts crit [\"b64\"] with b64: true (a no-op)"),
    ("hdr.b64_false", BothReject, "RFC 7797 unencoded payload: neither accepts it here"),
    ("hdr.dup_alg", VetoOnlyReject, "duplicate header members: veto refuses them, PyJWT (Python json) takes the last"),
    ("hdr.dup_kid", VetoOnlyReject, "duplicate kid: veto refuses, PyJWT takes the last"),
    ("hdr.dup_same", VetoOnlyReject, "an identical duplicate member: veto refuses any duplicate"),
    ("hdr.typ", BothAccept, "typ JWT/jwt/at+jwt/application/jwt/''/7/null/absent: access tokens are not typed by either"),
    ("hdr.non_object", BothReject, "header is an array, string, number, null or empty"),
    ("hdr.whitespace", BothAccept, "JSON whitespace inside the header"),
    ("hdr.unicode_escape", BothAccept, "\\u escapes in member names and values decode the same in both"),
    ("hdr.embedded_key", BothReject, "signed by an attacker naming its key in jwk/jku/x5u/x5c: both take keys only from the JWKS"),
    ("hdr.extra_members", BothAccept, "unknown header members are ignored by both"),
    ("hdr.trailing_garbage", BothReject, "text after the header object"),
    ("hdr.dup_escaped_name", VetoOnlyReject, "a duplicate spelled differently (\\u0061lg and alg): veto compares decoded names, PyJWT takes the last"),
    ("hdr.bom", VetoOnlyReject, "a UTF-8 BOM before the header JSON: Python's json.loads(bytes) strips it, serde_json refuses"),
    // ---- payload: dates
    ("pl.exp_missing", BothReject, "exp required by both"),
    ("pl.iat_missing", BothReject, "iat required by both (PyJWT require=[.., iat])"),
    ("pl.exp_past", BothReject, "expired beyond the leeway"),
    ("pl.exp_within_leeway", BothAccept, "expired less than the leeway ago"),
    ("pl.nbf_past", BothAccept, "nbf in the past"),
    ("pl.nbf_within_leeway", BothAccept, "nbf less than the leeway ahead"),
    ("pl.nbf_future", BothReject, "nbf beyond the leeway"),
    ("pl.iat_future", BothReject, "iat beyond the leeway (PyJWT 2.10+ checks it too)"),
    ("pl.iat_within_leeway", BothAccept, "iat less than the leeway ahead"),
    ("pl.date_float", BothAccept, "fractional NumericDates (RFC 7519 allows them)"),
    ("pl.date_exponent", BothAccept, "a NumericDate written with an exponent (1765000000E0)"),
    ("pl.exp_huge", VetoOnlyReject, "exp beyond year 9999 (1e20, 1e300): veto bounds NumericDates (and exp - iat), PyJWT takes any int()"),
    ("pl.exp_negative", BothReject, "a negative exp is long expired"),
    ("pl.exp_bool", BothReject, "exp true: PyJWT's int(True) = 1 is expired, veto refuses the type"),
    ("pl.date_null", BothReject, "exp/iat/nbf null"),
    ("pl.date_string_digits", VetoOnlyReject, "exp/iat/nbf as a string of digits: PyJWT's int(\"1765000000\") accepts it, veto wants a JSON number"),
    ("pl.date_string_text", BothReject, "exp/iat/nbf \"soon\""),
    ("pl.nbf_iat_bool", VetoOnlyReject, "nbf or iat true: PyJWT's int(True) = 1 (1970, in the past), veto wants a JSON number"),
    ("pl.nbf_iat_negative", VetoOnlyReject, "negative nbf or iat: a past date to PyJWT, not a NumericDate to veto (and iat < 0 breaks the lifetime bound)"),
    ("pl.date_non_json_number", BothReject, "exp/iat/nbf NaN, Infinity, -Infinity, 1e400: not JSON to veto; PyJWT parses them and int() fails"),
    ("pl.lifetime_too_long", VetoOnlyReject, "exp - iat above max_token_lifetime: veto bounds a token's life (revocations are held that long); PyJWT has no such rule"),
    // ---- payload: iss, aud, identity claims
    ("pl.iss_mismatch", BothReject, "another issuer, a case or trailing-slash variant, whitespace"),
    ("pl.iss_missing_or_not_string", BothReject, "no iss, or an array/number/null"),
    ("pl.iss_unicode_escape", BothAccept, "iss written with \\u escapes is the same string"),
    ("pl.aud_mismatch", BothReject, "an audience not configured"),
    ("pl.aud_array_match", BothAccept, "an array holding a configured audience"),
    ("pl.aud_array_non_string", BothReject, "an array with a non-string member, even next to a match"),
    ("pl.aud_empty_or_missing", BothReject, "aud absent, \"\", [] or null"),
    ("pl.aud_not_string", BothReject, "aud a number, object or bool"),
    ("pl.sub_not_string", BothReject, "sub 12345, 12345.0, [..], true: PyJWT checks sub is a string too"),
    ("pl.sub_empty", VetoOnlyReject, "sub \"\": veto's revocation keys are 1-1024 bytes; PyJWT takes any string"),
    ("pl.sub_not_header_safe", VetoOnlyReject, "sub with non-ASCII or control characters: it is copied to x-user-id, whose one form is visible ASCII"),
    ("pl.sub_missing", BothAccept, "sub is optional to both (the identity header is then removed)"),
    ("pl.jti_not_string", BothReject, "jti a number, array or bool: both check it is a string"),
    ("pl.jti_empty", VetoOnlyReject, "jti \"\": veto's revocation keys are 1-1024 bytes; PyJWT takes any string"),
    ("pl.sid_missing", BothReject, "the session claim is required by both (PyJWT require=[.., sid])"),
    ("pl.sid_not_string", VetoOnlyReject, "sid a number, array, object or bool: veto keys session revocation on a string; PyJWT only requires presence"),
    ("pl.home_invalid", VetoOnlyReject, "veto_home not a region name: a veto-specific claim rule"),
    ("pl.extra_claims", BothAccept, "unknown claims of any JSON type"),
    ("pl.extra_non_json_number", VetoOnlyReject, "NaN, Infinity, -Infinity or 1e400 in an unrelated claim: not JSON (RFC 8259) to veto, PyJWT's parser takes them"),
    ("pl.lone_surrogate", VetoOnlyReject, "a lone UTF-16 surrogate escape (\\ud800) in a claim: serde_json refuses it, Python keeps it"),
    ("pl.nul_in_claim", BothAccept, "\\u0000 inside an unrelated string claim"),
    // ---- payload: JSON structure
    ("pl.dup_hostile_first", VetoOnlyReject, "a duplicate claim, hostile value first (expired exp, evil iss, other aud, numeric sub): veto refuses, PyJWT takes the last (valid) one"),
    ("pl.dup_hostile_last", BothReject, "a duplicate claim, hostile value last: PyJWT takes it and refuses; veto refuses any duplicate"),
    ("pl.dup_same", VetoOnlyReject, "an identical duplicate claim: veto refuses any duplicate"),
    ("pl.dup_escaped_name", VetoOnlyReject, "a duplicate claim spelled differently (\\u0065xp expired, then exp): veto compares decoded names, PyJWT takes the last"),
    ("pl.dup_nested", BothAccept, "a duplicate inside a nested object of an unrelated claim: both keep the last; veto acts only on top-level claims (headers, revocation) and forwards its own parsed claims"),
    ("pl.big_integer_claim", BothAccept, "an integer beyond 64 bits in an unrelated claim"),
    ("pl.invalid_utf8", BothReject, "payload bytes that are not UTF-8 (a lone continuation byte, an overlong encoding, 0xff)"),
    ("pl.utf8_encoded_surrogate", VetoOnlyReject, "a UTF-16 surrogate encoded as UTF-8 bytes (ED A0 80, invalid UTF-8): Python's json.loads(bytes) decodes with surrogatepass and keeps it, serde_json refuses"),
    ("pl.non_object", BothReject, "the payload is an array, string, number or null"),
    ("pl.trailing_garbage", BothReject, "text after the payload object"),
    ("pl.whitespace", BothAccept, "JSON whitespace inside the payload"),
    ("pl.unicode_escape", BothAccept, "claim names written with \\u escapes (\\u0065xp is exp) in both"),
    ("pl.bom", VetoOnlyReject, "a UTF-8 BOM before the payload JSON: Python strips it, serde_json refuses"),
    ("enc.json_utf16", VetoOnlyReject, "header or payload JSON encoded as UTF-16 (LE or BE): Python's json.loads(bytes) detects the encoding, veto wants UTF-8 (RFC 8259 §8.1)"),
    // ---- encoding
    ("enc.pad_header_payload", VetoOnlyReject, "base64url padding '=' on the (signed) header or payload: PyJWT accepts trailing '=' (AWS ALB compatibility), veto's base64url is unpadded (RFC 7515 §2)"),
    ("enc.pad_signature", VetoOnlyReject, "padding on the signature segment of an issued token: PyJWT accepts the altered token string, veto does not"),
    ("enc.sig_noncanonical_bits", BothReject, "non-zero unused bits in the signature's last base64url character (the same bytes to a lenient decoder, another token string): refused by both (PyJWT: 'Invalid crypto padding')"),
    ("enc.ed25519_s_plus_l", BothReject, "Ed25519 (R, S + L): the non-canonical twin of a valid signature (RFC 8032 §5.1.7 requires S < L)"),
    ("enc.std_alphabet", BothReject, "standard base64 '+' '/' instead of '-' '_'"),
    ("enc.whitespace_in_segment", BothReject, "space, tab, CR or LF inside a segment"),
    ("enc.segment_count", BothReject, "two or four segments, a trailing or leading dot, an empty header or payload"),
    ("enc.sig_empty", BothReject, "an empty signature"),
    ("enc.sig_bitflip", BothReject, "one flipped bit in the signature"),
    ("enc.sig_truncated", BothReject, "signature bytes removed"),
    ("enc.sig_extended", BothReject, "bytes appended to the signature"),
    ("enc.sig_all_zero", BothReject, "an all-zero signature of the right length (ECDSA r = s = 0, CVE-2022-21449)"),
    ("enc.sig_spliced", BothReject, "the signature of another valid token"),
    ("enc.rsa_sig_short", BothReject, "an RS256 signature whose leading zero byte is dropped (255 bytes for a 2048-bit key, the same integer): both want the modulus length"),
    ("enc.pss_sig_short", VetoOnlyReject, "a PS256 signature whose leading zero byte is dropped: OpenSSL's PSS verify (PyJWT via cryptography) takes the shorter string for the same integer, veto (aws-lc) wants the modulus length (RFC 8017 §8.1.2 step 1) — another token string for the same token"),
    ("enc.pss_salt_length", BothReject, "PS256 signed by the issuer's key with a salt of 0, 20, 48, 64 bytes or the maximum: RFC 7518 §3.5 fixes it at the hash length, and both enforce that"),
    ("enc.rsa_sig_zero_prefixed", BothReject, "an RSA signature with a zero byte put in front (257 bytes, the same integer)"),
    ("enc.ecdsa_der", BothReject, "an ECDSA signature in DER instead of JWS's fixed r||s"),
    ("enc.ecdsa_s_negated", BothAccept, "ECDSA (r, n - s): the other valid signature of the same token. Neither enforces low-S; a different token string for the same claims — harmless to veto, whose revocations key on claims (sid/jti/sub), never on the token string"),
    // ---- sizes
    ("size.near_limit", BothAccept, "a token just under authz.max_token_bytes"),
    ("size.at_limit", BothAccept, "a token of exactly authz.max_token_bytes (8192) bytes"),
    ("size.limit_plus_one", VetoOnlyReject, "a token of 8193 bytes: one over veto's bound"),
    ("size.over_limit", VetoOnlyReject, "a token over authz.max_token_bytes (8192): veto bounds what it parses, PyJWT has no limit"),
    ("size.nesting_ok", BothAccept, "a claim nested 20-100 deep"),
    ("size.nesting_deep", VetoOnlyReject, "a claim nested 200-600 deep: serde_json's recursion limit (128) refuses, Python's (1000) does not"),
    ("size.many_claims", BothAccept, "200 extra claims"),
];

/// Every mutation the generator draws, in order.
const MUTATIONS: &[&str] = &[
    "valid",
    "hdr.alg_none",
    "hdr.alg_hs256_pubkey_secret",
    "hdr.alg_not_allowed",
    "hdr.alg_unknown",
    "hdr.alg_family_swap",
    "hdr.alg_missing_or_not_string",
    "hdr.kid_missing",
    "hdr.kid_unknown",
    "hdr.kid_not_string",
    "hdr.kid_of_other_key",
    "hdr.hs_kid_ignored",
    "hdr.crit_unknown",
    "hdr.crit_b64_true",
    "hdr.b64_false",
    "hdr.dup_alg",
    "hdr.dup_kid",
    "hdr.dup_same",
    "hdr.typ",
    "hdr.non_object",
    "hdr.whitespace",
    "hdr.unicode_escape",
    "hdr.embedded_key",
    "hdr.extra_members",
    "hdr.trailing_garbage",
    "hdr.dup_escaped_name",
    "hdr.bom",
    "pl.exp_missing",
    "pl.iat_missing",
    "pl.exp_past",
    "pl.exp_within_leeway",
    "pl.nbf_past",
    "pl.nbf_within_leeway",
    "pl.nbf_future",
    "pl.iat_future",
    "pl.iat_within_leeway",
    "pl.date_float",
    "pl.date_exponent",
    "pl.exp_huge",
    "pl.exp_negative",
    "pl.exp_bool",
    "pl.date_null",
    "pl.date_string_digits",
    "pl.date_string_text",
    "pl.nbf_iat_bool",
    "pl.nbf_iat_negative",
    "pl.date_non_json_number",
    "pl.lifetime_too_long",
    "pl.iss_mismatch",
    "pl.iss_missing_or_not_string",
    "pl.iss_unicode_escape",
    "pl.aud_mismatch",
    "pl.aud_array_match",
    "pl.aud_array_non_string",
    "pl.aud_empty_or_missing",
    "pl.aud_not_string",
    "pl.sub_not_string",
    "pl.sub_empty",
    "pl.sub_not_header_safe",
    "pl.sub_missing",
    "pl.jti_not_string",
    "pl.jti_empty",
    "pl.sid_missing",
    "pl.sid_not_string",
    "pl.home_invalid",
    "pl.extra_claims",
    "pl.extra_non_json_number",
    "pl.lone_surrogate",
    "pl.nul_in_claim",
    "pl.dup_hostile_first",
    "pl.dup_hostile_last",
    "pl.dup_same",
    "pl.dup_escaped_name",
    "pl.dup_nested",
    "pl.big_integer_claim",
    "pl.invalid_utf8",
    "pl.utf8_encoded_surrogate",
    "pl.non_object",
    "pl.trailing_garbage",
    "pl.whitespace",
    "pl.unicode_escape",
    "pl.bom",
    "enc.json_utf16",
    "enc.pad_header_payload",
    "enc.pad_signature",
    "enc.sig_noncanonical_bits",
    "enc.ed25519_s_plus_l",
    "enc.std_alphabet",
    "enc.whitespace_in_segment",
    "enc.segment_count",
    "enc.sig_empty",
    "enc.sig_bitflip",
    "enc.sig_truncated",
    "enc.sig_extended",
    "enc.sig_all_zero",
    "enc.sig_spliced",
    "enc.ecdsa_der",
    "enc.rsa_sig_short",
    "enc.pss_sig_short",
    "enc.rsa_sig_zero_prefixed",
    "enc.pss_salt_length",
    "enc.ecdsa_s_negated",
    "size.near_limit",
    "size.at_limit",
    "size.limit_plus_one",
    "size.over_limit",
    "size.nesting_ok",
    "size.nesting_deep",
    "size.many_claims",
];

fn enc(bytes: impl AsRef<[u8]>) -> String {
    b64().encode(bytes)
}

fn kid_of(alg: Alg) -> String {
    alg.as_str().to_ascii_lowercase()
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// `{"member":…,` + the rest of `obj` (a non-empty JSON object's text).
fn with_front(obj: &str, member: &str) -> String {
    assert!(obj.starts_with('{') && obj.len() > 2, "{obj}");
    format!("{{{member},{}", &obj[1..])
}

/// `obj` with `member` appended as its last member.
fn with_back(obj: &str, member: &str) -> String {
    assert!(obj.ends_with('}') && obj.len() > 2, "{obj}");
    format!("{},{member}}}", &obj[..obj.len() - 1])
}

/// The SubjectPublicKeyInfo PEM of a key: what a naive HS256 verifier is fed as the secret
/// in the classic algorithm-confusion attack.
fn public_pem(key: &SigningKey) -> Option<String> {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::signature::{self, KeyPair};
    let der = key.pkcs8_der();
    let spki: PublicKeyX509Der<'static> = match key.alg {
        Alg::ES256 | Alg::ES384 => {
            let a = if key.alg == Alg::ES256 {
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            signature::EcdsaKeyPair::from_pkcs8(a, der)
                .ok()?
                .public_key()
                .as_der()
                .ok()?
        }
        Alg::EdDSA => signature::Ed25519KeyPair::from_pkcs8(der)
            .ok()?
            .public_key()
            .as_der()
            .ok()?,
        Alg::RS256 | Alg::PS256 => signature::RsaKeyPair::from_pkcs8(der)
            .ok()?
            .public_key()
            .as_der()
            .ok()?,
        _ => return None,
    };
    let body = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    Some(format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    ))
}

/// The order of the curve of an ECDSA algorithm, big-endian.
fn curve_order(alg: Alg) -> Option<Vec<u8>> {
    let hex = match alg {
        Alg::ES256 => "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551",
        Alg::ES384 => "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        _ => return None,
    };
    Some(
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect(),
    )
}

/// `a - b` for equal-length big-endian numbers with `a > b`.
fn sub_be(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i16;
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i16 - b[i] as i16 - borrow;
        borrow = if d < 0 {
            d += 256;
            1
        } else {
            0
        };
        out[i] = d as u8;
    }
    out
}

/// A DER INTEGER of a big-endian unsigned number.
fn der_int(n: &[u8]) -> Vec<u8> {
    let mut n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
    if n.is_empty() || n[0] & 0x80 != 0 {
        n.insert(0, 0);
    }
    let mut out = vec![0x02, n.len() as u8];
    out.extend(n);
    out
}

struct Keys {
    /// One signing key per allowed algorithm, kid = the algorithm in lowercase.
    by_alg: Vec<SigningKey>,
    /// Keys nobody trusts, per algorithm (same kids).
    attackers: Vec<SigningKey>,
    hmac_secret: Vec<u8>,
}

impl Keys {
    fn new() -> Keys {
        let hmac_secret: Vec<u8> = (0..32).map(|i| (i * 37 + 11) as u8).collect();
        let mut by_alg = Vec::new();
        let mut attackers = Vec::new();
        for alg in ALGS {
            let kid = kid_of(alg);
            by_alg.push(if alg.is_hmac() {
                SigningKey::from_pkcs8(alg, &kid, &hmac_secret).unwrap()
            } else {
                SigningKey::generate(alg, &kid).unwrap()
            });
            attackers.push(SigningKey::generate(alg, &kid).unwrap());
        }
        Keys {
            by_alg,
            attackers,
            hmac_secret,
        }
    }

    fn jwks(&self) -> Value {
        jwks(&self.by_alg.iter().collect::<Vec<_>>())
    }

    fn get(&self, alg: Alg) -> &SigningKey {
        self.by_alg.iter().find(|k| k.alg == alg).unwrap()
    }
}

/// One generated token and the class it belongs to.
struct Case {
    class: &'static str,
    alg: Alg,
    token: String,
}

struct Gen<'a> {
    keys: &'a Keys,
    now: i64,
    rng: StdRng,
    serial: u64,
    round: usize,
}

impl Gen<'_> {
    fn claims(&mut self) -> Map<String, Value> {
        self.serial += 1;
        let n = self.serial;
        let iat = self.now - self.rng.random_range(0..60);
        let exp = self.now + self.rng.random_range(120..800);
        let aud = if self.rng.random_bool(0.5) {
            json!(pick(&mut self.rng, &AUDIENCES))
        } else {
            json!(["other", pick(&mut self.rng, &AUDIENCES)])
        };
        let mut c = json!({
            "iss": ISS, "aud": aud, "sub": format!("user-{n}"), "sid": format!("s-{n}"),
            "jti": format!("j-{n}"), "iat": iat, "exp": exp,
        });
        if self.rng.random_bool(0.3) {
            c["roles"] = json!(["reader", "writer"]);
        }
        if self.rng.random_bool(0.2) {
            c["veto_home"] = json!("us");
        }
        c.as_object().unwrap().clone()
    }

    fn header(key: &SigningKey) -> Map<String, Value> {
        json!({"alg": key.alg.as_str(), "typ": "JWT", "kid": key.kid})
            .as_object()
            .unwrap()
            .clone()
    }

    /// Signs raw segment text (already base64url or deliberately not) with `key`.
    fn sign_segments(key: &SigningKey, h: &str, p: &str) -> String {
        let input = format!("{h}.{p}");
        let sig = key.sign_bytes(input.as_bytes()).unwrap();
        format!("{input}.{}", enc(sig))
    }

    fn sign_json(key: &SigningKey, h: &str, p: &str) -> String {
        Self::sign_segments(key, &enc(h), &enc(p))
    }

    fn sign(key: &SigningKey, h: &Map<String, Value>, p: &Map<String, Value>) -> String {
        Self::sign_json(
            key,
            &Value::from(h.clone()).to_string(),
            &Value::from(p.clone()).to_string(),
        )
    }

    /// A valid token of `key` with the claims edited by `f`.
    fn with_claims(
        &mut self,
        key: &SigningKey,
        f: impl FnOnce(&mut Map<String, Value>, &mut StdRng),
    ) -> String {
        let mut c = self.claims();
        f(&mut c, &mut self.rng);
        Self::sign(key, &Self::header(key), &c)
    }

    /// A valid token of `key` whose raw payload text is `f(payload text)`.
    fn with_raw_payload(
        &mut self,
        key: &SigningKey,
        f: impl FnOnce(&str, &mut StdRng) -> String,
    ) -> String {
        let c = Value::from(self.claims()).to_string();
        let p = f(&c, &mut self.rng);
        Self::sign_json(key, &Value::from(Self::header(key)).to_string(), &p)
    }

    /// A valid token of `key` whose raw header text is `f(header text)`.
    fn with_raw_header(
        &mut self,
        key: &SigningKey,
        f: impl FnOnce(&str, &mut StdRng) -> String,
    ) -> String {
        let h = Value::from(Self::header(key)).to_string();
        let h = f(&h, &mut self.rng);
        let c = Value::from(self.claims()).to_string();
        Self::sign_json(key, &h, &c)
    }

    fn valid(&mut self, key: &SigningKey) -> String {
        self.with_claims(key, |_, _| {})
    }

    /// A valid token with its signature bytes replaced by `f(signature)`.
    fn with_sig(
        &mut self,
        key: &SigningKey,
        f: impl FnOnce(Vec<u8>, &mut StdRng) -> Option<Vec<u8>>,
    ) -> Option<String> {
        let t = self.valid(key);
        let (input, sig) = t.rsplit_once('.').unwrap();
        let sig = f(b64().decode(sig).unwrap(), &mut self.rng)?;
        Some(format!("{input}.{}", enc(sig)))
    }

    fn date_claim(rng: &mut StdRng) -> &'static str {
        ["exp", "iat", "nbf"][rng.random_range(0..3)]
    }

    fn mutate(&mut self, m: &'static str, key: &SigningKey) -> Option<String> {
        let alg = key.alg;
        let now = self.now;
        let hmac = alg.is_hmac();
        let ec = matches!(alg, Alg::ES256 | Alg::ES384);
        Some(match m {
            "valid" => self.valid(key),
            "hdr.alg_none" => {
                let t = self.valid(key);
                let parts: Vec<&str> = t.split('.').collect();
                let none = *pick(&mut self.rng, &["none", "None", "NONE", "nOnE"]);
                let h = enc(json!({"alg": none, "typ": "JWT", "kid": key.kid}).to_string());
                let sig = if self.rng.random_bool(0.5) {
                    ""
                } else {
                    parts[2]
                };
                format!("{h}.{}.{sig}", parts[1])
            }
            "hdr.alg_hs256_pubkey_secret" => {
                if hmac {
                    return None;
                }
                let secret = match self.rng.random_range(0..3) {
                    0 => public_pem(key)?.into_bytes(),
                    1 => key.public_jwk().to_string().into_bytes(),
                    _ => {
                        let jwk = key.public_jwk();
                        let x = jwk.get("n").or_else(|| jwk.get("x")).unwrap();
                        b64().decode(x.as_str().unwrap()).unwrap()
                    }
                };
                let hs = SigningKey::from_pkcs8(Alg::HS256, &key.kid, &secret).unwrap();
                let mut h = Self::header(key);
                h.insert("alg".into(), json!("HS256"));
                let c = self.claims();
                Self::sign(&hs, &h, &c)
            }
            "hdr.alg_not_allowed" => {
                let other = match alg {
                    Alg::RS256 | Alg::PS256 => *pick(
                        &mut self.rng,
                        &[Alg::RS384, Alg::RS512, Alg::PS384, Alg::PS512],
                    ),
                    Alg::HS256 => *pick(&mut self.rng, &[Alg::HS384, Alg::HS512]),
                    _ => return None,
                };
                let k = SigningKey::from_pkcs8(other, &key.kid, key.pkcs8_der()).unwrap();
                let mut h = Self::header(key);
                h.insert("alg".into(), json!(other.as_str()));
                let c = self.claims();
                Self::sign(&k, &h, &c)
            }
            "hdr.alg_unknown" => {
                let a = *pick(
                    &mut self.rng,
                    &[
                        "ES512", "ES256K", "HS1", "Ed25519", "Ed448", "es256", "ES256 ", "",
                        "RSA-OAEP", "dir",
                    ],
                );
                self.with_raw_header(key, |h, _| {
                    let mut v: Value = serde_json::from_str(h).unwrap();
                    v["alg"] = json!(a);
                    v.to_string()
                })
            }
            "hdr.alg_family_swap" => {
                let (header_alg, signer) = match alg {
                    Alg::RS256 => (Alg::PS256, Some(Alg::PS256)),
                    Alg::PS256 => (Alg::RS256, Some(Alg::RS256)),
                    Alg::ES256 => (Alg::ES384, None),
                    Alg::ES384 => (Alg::ES256, None),
                    Alg::EdDSA => (Alg::ES256, None),
                    _ => return None,
                };
                let k = match signer {
                    Some(s) => SigningKey::from_pkcs8(s, &key.kid, key.pkcs8_der()).unwrap(),
                    None => SigningKey::from_pkcs8(alg, &key.kid, key.pkcs8_der()).unwrap(),
                };
                let mut h = Self::header(key);
                h.insert("alg".into(), json!(header_alg.as_str()));
                let c = self.claims();
                Self::sign(&k, &h, &c)
            }
            "hdr.alg_missing_or_not_string" => {
                let v = pick(
                    &mut self.rng,
                    &[
                        None,
                        Some(json!(null)),
                        Some(json!(5)),
                        Some(json!([alg.as_str()])),
                        Some(json!({"name": alg.as_str()})),
                    ],
                )
                .clone();
                let mut h = Self::header(key);
                match v {
                    None => h.remove("alg"),
                    Some(v) => h.insert("alg".into(), v),
                };
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.kid_missing"
            | "hdr.kid_unknown"
            | "hdr.kid_not_string"
            | "hdr.kid_of_other_key" => {
                if hmac {
                    return None;
                }
                let mut h = Self::header(key);
                match m {
                    "hdr.kid_missing" => {
                        h.remove("kid");
                    }
                    "hdr.kid_unknown" => {
                        let kid = pick(
                            &mut self.rng,
                            &[
                                "nope",
                                "../../etc/passwd",
                                "' OR 1=1 --",
                                "",
                                "RS256",
                                "es256\u{0}",
                                " es256",
                            ],
                        )
                        .to_string();
                        let kid = if kid == " es256" {
                            format!(" {}", key.kid)
                        } else {
                            kid
                        };
                        h.insert("kid".into(), json!(kid));
                    }
                    "hdr.kid_not_string" => {
                        let v = pick(
                            &mut self.rng,
                            &[
                                json!(5),
                                json!(null),
                                json!([key.kid.clone()]),
                                json!({"kid": key.kid.clone()}),
                                json!(true),
                            ],
                        )
                        .clone();
                        h.insert("kid".into(), v);
                    }
                    _ => {
                        let other = self
                            .keys
                            .by_alg
                            .iter()
                            .filter(|k| k.alg.family() != alg.family() && !k.alg.is_hmac())
                            .collect::<Vec<_>>();
                        let o = pick(&mut self.rng, &other);
                        h.insert("kid".into(), json!(o.kid));
                    }
                }
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.hs_kid_ignored" => {
                if !hmac {
                    return None;
                }
                let mut h = Self::header(key);
                match self.rng.random_range(0..3) {
                    0 => {
                        h.remove("kid");
                    }
                    1 => {
                        h.insert("kid".into(), json!("rs256"));
                    }
                    _ => {
                        h.insert(
                            "kid".into(),
                            json!(format!("k-{}", self.rng.random::<u32>())),
                        );
                    }
                }
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.crit_unknown" => {
                let crit = pick(
                    &mut self.rng,
                    &[
                        json!(["exp"]),
                        json!(["x-veto"]),
                        json!([]),
                        json!("exp"),
                        json!(null),
                        json!([5]),
                    ],
                )
                .clone();
                let mut h = Self::header(key);
                h.insert("crit".into(), crit);
                h.insert("exp".into(), json!(now + 100));
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.crit_b64_true" => {
                let mut h = Self::header(key);
                h.insert("b64".into(), json!(true));
                h.insert("crit".into(), json!(["b64"]));
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.b64_false" => {
                let mut h = Self::header(key);
                h.insert("b64".into(), json!(false));
                if self.rng.random_bool(0.5) {
                    h.insert("crit".into(), json!(["b64"]));
                }
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.dup_alg" => self.with_raw_header(key, |h, rng| {
                let first = pick(rng, &["none", "HS256", "ES512", "RS256"]);
                with_front(h, &format!("\"alg\":\"{first}\""))
            }),
            "hdr.dup_kid" => self.with_raw_header(key, |h, rng| {
                let first = pick(rng, &["nope", "rs256", "attacker"]);
                with_front(h, &format!("\"kid\":\"{first}\""))
            }),
            "hdr.dup_same" => self.with_raw_header(key, |h, _| with_back(h, "\"typ\":\"JWT\"")),
            "hdr.typ" => {
                let typ = pick(
                    &mut self.rng,
                    &[
                        None,
                        Some(json!("JWT")),
                        Some(json!("jwt")),
                        Some(json!("at+jwt")),
                        Some(json!("application/jwt")),
                        Some(json!("")),
                        Some(json!(7)),
                        Some(json!(null)),
                    ],
                )
                .clone();
                let mut h = Self::header(key);
                match typ {
                    None => h.remove("typ"),
                    Some(t) => h.insert("typ".into(), t),
                };
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.non_object" => {
                let h = pick(
                    &mut self.rng,
                    &["[]", "[\"ES256\"]", "\"ES256\"", "5", "null", "", "true"],
                )
                .to_string();
                let h = if h == "[\"ES256\"]" {
                    format!("[{}]", Value::from(Self::header(key)))
                } else {
                    h
                };
                let c = Value::from(self.claims()).to_string();
                Self::sign_json(key, &h, &c)
            }
            "hdr.whitespace" => self.with_raw_header(key, |h, rng| {
                let v: Value = serde_json::from_str(h).unwrap();
                let ws = *pick(rng, &[" ", "\n", "\t", "\r\n", "  \n  "]);
                let pretty = serde_json::to_string_pretty(&v).unwrap();
                format!("{ws}{}{ws}", pretty.replace(':', &format!("{ws}:{ws}")))
            }),
            "hdr.unicode_escape" => self.with_raw_header(key, |h, rng| {
                if rng.random_bool(0.5) {
                    h.replacen("\"alg\"", "\"\\u0061lg\"", 1)
                } else {
                    let a = alg.as_str();
                    h.replacen(
                        &format!("\"{a}\""),
                        &format!("\"\\u{:04x}{}\"", a.as_bytes()[0], &a[1..]),
                        1,
                    )
                }
            }),
            "hdr.embedded_key" => {
                let attacker = self.keys.attackers.iter().find(|k| k.alg == alg).unwrap();
                let mut h = Self::header(key);
                match self.rng.random_range(0..4) {
                    0 if !hmac => {
                        h.insert("jwk".into(), attacker.public_jwk());
                    }
                    0 => {
                        h.insert(
                            "jwk".into(),
                            json!({"kty": "oct", "k": enc(attacker.pkcs8_der())}),
                        );
                    }
                    1 => {
                        h.insert("jku".into(), json!("https://evil.test/jwks.json"));
                    }
                    2 => {
                        h.insert("x5u".into(), json!("https://evil.test/cert.pem"));
                    }
                    _ => {
                        h.insert("x5c".into(), json!([enc(b"not a certificate")]));
                    }
                }
                let c = self.claims();
                Self::sign(attacker, &h, &c)
            }
            "hdr.extra_members" => {
                let mut h = Self::header(key);
                for i in 0..self.rng.random_range(1..6) {
                    let v = pick(
                        &mut self.rng,
                        &[
                            json!("x"),
                            json!(1),
                            json!(null),
                            json!([1, "a"]),
                            json!({"a": {"b": 1}}),
                            json!(false),
                        ],
                    )
                    .clone();
                    h.insert(format!("x-{i}"), v);
                }
                if self.rng.random_bool(0.3) {
                    h.insert("cty".into(), json!("JWT"));
                }
                let c = self.claims();
                Self::sign(key, &h, &c)
            }
            "hdr.trailing_garbage" => self.with_raw_header(key, |h, rng| {
                format!("{h}{}", pick(rng, &[" x", "}", ",", "{}", "\u{0}", "//"]))
            }),
            "hdr.bom" => self.with_raw_header(key, |h, _| format!("\u{feff}{h}")),
            "hdr.dup_escaped_name" => {
                self.with_raw_header(key, |h, _| with_front(h, "\"\\u0061lg\":\"none\""))
            }
            "pl.exp_missing" => self.with_claims(key, |c, _| {
                c.remove("exp");
            }),
            "pl.iat_missing" => self.with_claims(key, |c, _| {
                c.remove("iat");
            }),
            "pl.exp_past" => self.with_claims(key, |c, rng| {
                let exp = now - rng.random_range(LEEWAY + 10..100_000);
                c.insert("exp".into(), json!(exp));
                c.insert("iat".into(), json!(exp - 300));
            }),
            "pl.exp_within_leeway" => self.with_claims(key, |c, rng| {
                let exp = now - rng.random_range(1..LEEWAY - 10);
                c.insert("exp".into(), json!(exp));
                c.insert("iat".into(), json!(exp - 300));
            }),
            "pl.nbf_past" => self.with_claims(key, |c, rng| {
                c.insert("nbf".into(), json!(now - rng.random_range(0..100_000)));
            }),
            "pl.nbf_within_leeway" => self.with_claims(key, |c, rng| {
                c.insert("nbf".into(), json!(now + rng.random_range(1..LEEWAY - 10)));
            }),
            "pl.nbf_future" => self.with_claims(key, |c, rng| {
                c.insert(
                    "nbf".into(),
                    json!(now + rng.random_range(LEEWAY + 10..100_000)),
                );
            }),
            "pl.iat_future" => self.with_claims(key, |c, rng| {
                let iat = now + rng.random_range(LEEWAY + 10..500);
                c.insert("iat".into(), json!(iat));
                c.insert("exp".into(), json!(iat + 300));
            }),
            "pl.iat_within_leeway" => self.with_claims(key, |c, rng| {
                let iat = now + rng.random_range(1..LEEWAY - 10);
                c.insert("iat".into(), json!(iat));
                c.insert("exp".into(), json!(iat + 300));
            }),
            "pl.date_float" => self.with_claims(key, |c, rng| {
                let name = Self::date_claim(rng);
                let base = match name {
                    "exp" => now + 300,
                    _ => now - 30,
                };
                c.insert(
                    name.into(),
                    json!(base as f64 + rng.random_range(0.0..0.999)),
                );
            }),
            "pl.date_exponent" => self.with_raw_payload(key, |p, rng| {
                let name = Self::date_claim(rng);
                let v = if name == "exp" { now + 300 } else { now - 30 };
                let mut o: Value = serde_json::from_str(p).unwrap();
                o.as_object_mut().unwrap().remove(name);
                with_back(&o.to_string(), &format!("\"{name}\":{v}E0"))
            }),
            "pl.exp_huge" => self.with_raw_payload(key, |p, rng| {
                let mut o: Value = serde_json::from_str(p).unwrap();
                o.as_object_mut().unwrap().remove("exp");
                let v = *pick(
                    rng,
                    &[
                        "100000000000000000000",
                        "1e300",
                        "253402300800",
                        "9223372036854775807",
                    ],
                );
                with_back(&o.to_string(), &format!("\"exp\":{v}"))
            }),
            "pl.exp_negative" => self.with_claims(key, |c, rng| {
                c.insert("exp".into(), json!(-rng.random_range(1..2_000_000_000i64)));
            }),
            "pl.exp_bool" => self.with_claims(key, |c, _| {
                c.insert("exp".into(), json!(true));
            }),
            "pl.date_null" => self.with_claims(key, |c, rng| {
                c.insert(Self::date_claim(rng).into(), Value::Null);
            }),
            "pl.date_string_digits" => self.with_claims(key, |c, rng| {
                let name = Self::date_claim(rng);
                let v = match name {
                    "exp" => now + 300,
                    _ => now - 30,
                };
                c.insert(name.into(), json!(v.to_string()));
            }),
            "pl.date_string_text" => self.with_claims(key, |c, rng| {
                let name = Self::date_claim(rng);
                c.insert(
                    name.into(),
                    json!(*pick(rng, &["soon", "", "1e9x", "tomorrow"])),
                );
            }),
            "pl.nbf_iat_bool" => self.with_claims(key, |c, rng| {
                c.insert((*pick(rng, &["nbf", "iat"])).into(), json!(true));
            }),
            "pl.nbf_iat_negative" => self.with_claims(key, |c, rng| {
                c.insert(
                    (*pick(rng, &["nbf", "iat"])).into(),
                    json!(-rng.random_range(1..1_000_000i64)),
                );
            }),
            "pl.date_non_json_number" => self.with_raw_payload(key, |p, rng| {
                let name = Self::date_claim(rng);
                let v = *pick(rng, &["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]);
                let mut o: Value = serde_json::from_str(p).unwrap();
                o.as_object_mut().unwrap().remove(name);
                with_back(&o.to_string(), &format!("\"{name}\":{v}"))
            }),
            "pl.lifetime_too_long" => self.with_claims(key, |c, rng| {
                let iat = now - rng.random_range(0..60);
                c.insert("iat".into(), json!(iat));
                c.insert(
                    "exp".into(),
                    json!(iat + MAX_LIFETIME + rng.random_range(1..100_000)),
                );
            }),
            "pl.iss_mismatch" => self.with_claims(key, |c, rng| {
                let iss = *pick(
                    rng,
                    &[
                        "https://evil.test",
                        "HTTPS://AUTH.TEST",
                        "https://auth.test/",
                        " https://auth.test",
                        "https://auth.test ",
                        "https://auth.tеst",
                        "http://auth.test",
                        "",
                    ],
                );
                c.insert("iss".into(), json!(iss));
            }),
            "pl.iss_missing_or_not_string" => {
                self.with_claims(key, |c, rng| match rng.random_range(0..4) {
                    0 => {
                        c.remove("iss");
                    }
                    1 => {
                        c.insert("iss".into(), json!([ISS]));
                    }
                    2 => {
                        c.insert("iss".into(), json!(5));
                    }
                    _ => {
                        c.insert("iss".into(), Value::Null);
                    }
                })
            }
            "pl.iss_unicode_escape" => self.with_raw_payload(key, |p, _| {
                p.replacen(
                    &format!("\"{ISS}\""),
                    "\"\\u0068ttps:\\/\\/auth.t\\u0065st\"",
                    1,
                )
            }),
            "pl.aud_mismatch" => self.with_claims(key, |c, rng| {
                let aud = pick(
                    rng,
                    &[
                        json!("other"),
                        json!("API"),
                        json!(["other", "x"]),
                        json!("api "),
                        json!(" api"),
                    ],
                )
                .clone();
                c.insert("aud".into(), aud);
            }),
            "pl.aud_array_match" => self.with_claims(key, |c, rng| {
                let a = *pick(rng, &AUDIENCES);
                let aud = pick(
                    rng,
                    &[
                        json!([a]),
                        json!(["x", a]),
                        json!([a, "y", "z"]),
                        json!(AUDIENCES),
                    ],
                )
                .clone();
                c.insert("aud".into(), aud);
            }),
            "pl.aud_array_non_string" => self.with_claims(key, |c, rng| {
                let aud = pick(
                    rng,
                    &[
                        json!(["api", 1]),
                        json!(["api", null]),
                        json!([["api"]]),
                        json!(["api2", {"a": 1}]),
                        json!([true, "api"]),
                    ],
                )
                .clone();
                c.insert("aud".into(), aud);
            }),
            "pl.aud_empty_or_missing" => {
                self.with_claims(key, |c, rng| match rng.random_range(0..4) {
                    0 => {
                        c.remove("aud");
                    }
                    1 => {
                        c.insert("aud".into(), json!(""));
                    }
                    2 => {
                        c.insert("aud".into(), json!([]));
                    }
                    _ => {
                        c.insert("aud".into(), Value::Null);
                    }
                })
            }
            "pl.aud_not_string" => self.with_claims(key, |c, rng| {
                let aud = pick(rng, &[json!(7), json!({"api": true}), json!(true)]).clone();
                c.insert("aud".into(), aud);
            }),
            "pl.sub_not_string" => self.with_claims(key, |c, rng| {
                let v = pick(
                    rng,
                    &[
                        json!(12345),
                        json!(12345.0),
                        json!(["12345"]),
                        json!(true),
                        json!({"id": "u"}),
                    ],
                )
                .clone();
                c.insert("sub".into(), v);
            }),
            "pl.sub_empty" => self.with_claims(key, |c, _| {
                c.insert("sub".into(), json!(""));
            }),
            "pl.sub_not_header_safe" => self.with_claims(key, |c, rng| {
                let v = *pick(
                    rng,
                    &["josé", "a\nb", "tab\there", "\u{7f}", "ünïcode", "x\u{0}y"],
                );
                c.insert("sub".into(), json!(v));
            }),
            "pl.sub_missing" => self.with_claims(key, |c, _| {
                c.remove("sub");
            }),
            "pl.jti_not_string" => self.with_claims(key, |c, rng| {
                let v = pick(rng, &[json!(7), json!(["j"]), json!(false), json!(1.5)]).clone();
                c.insert("jti".into(), v);
            }),
            "pl.jti_empty" => self.with_claims(key, |c, _| {
                c.insert("jti".into(), json!(""));
            }),
            "pl.sid_missing" => self.with_claims(key, |c, rng| {
                if rng.random_bool(0.5) {
                    c.remove("sid");
                } else {
                    c.insert("sid".into(), Value::Null);
                }
            }),
            "pl.sid_not_string" => self.with_claims(key, |c, rng| {
                let v = pick(
                    rng,
                    &[
                        json!(42),
                        json!(["s"]),
                        json!({"s": 1}),
                        json!(true),
                        json!(""),
                    ],
                )
                .clone();
                c.insert("sid".into(), v);
            }),
            "pl.home_invalid" => self.with_claims(key, |c, rng| {
                let v = pick(
                    rng,
                    &[
                        json!("e.u"),
                        json!(5),
                        json!(""),
                        json!(["us"]),
                        json!("a b"),
                    ],
                )
                .clone();
                c.insert("veto_home".into(), v);
            }),
            "pl.extra_claims" => self.with_claims(key, |c, rng| {
                for i in 0..rng.random_range(1..8) {
                    let v = pick(
                        rng,
                        &[
                            json!("x"),
                            json!(-1),
                            json!(1.5e10),
                            json!(null),
                            json!([1, [2, [3]]]),
                            json!({"a": {"b": "c"}}),
                            json!(true),
                            json!("josé ✓"),
                        ],
                    )
                    .clone();
                    c.insert(format!("c{i}"), v);
                }
            }),
            "pl.extra_non_json_number" => self.with_raw_payload(key, |p, rng| {
                let v = *pick(rng, &["NaN", "Infinity", "-Infinity", "1e400"]);
                with_back(p, &format!("\"score\":{v}"))
            }),
            "pl.lone_surrogate" => self.with_raw_payload(key, |p, rng| {
                let v = *pick(rng, &["\\ud800", "\\udfff", "a\\ud83d"]);
                with_back(p, &format!("\"name\":\"{v}\""))
            }),
            "pl.nul_in_claim" => {
                self.with_raw_payload(key, |p, _| with_back(p, "\"name\":\"a\\u0000b\""))
            }
            "pl.dup_hostile_first" | "pl.dup_hostile_last" => {
                let m2 = m;
                self.with_raw_payload(key, move |p, rng| {
                    let hostile = match rng.random_range(0..4) {
                        0 => format!("\"exp\":{}", now - 100_000),
                        1 => "\"iss\":\"https://evil.test\"".to_string(),
                        2 => "\"aud\":\"other\"".to_string(),
                        _ => "\"sub\":12345".to_string(),
                    };
                    if m2 == "pl.dup_hostile_first" {
                        with_front(p, &hostile)
                    } else {
                        with_back(p, &hostile)
                    }
                })
            }
            "pl.dup_escaped_name" => self.with_raw_payload(key, |p, _| {
                with_front(p, &format!("\"\\u0065xp\":{}", now - 100_000))
            }),
            "pl.dup_nested" => self.with_raw_payload(key, |p, _| {
                with_back(p, "\"ctx\":{\"role\":\"admin\",\"role\":\"user\"}")
            }),
            "pl.big_integer_claim" => self.with_raw_payload(key, |p, rng| {
                let v = *pick(
                    rng,
                    &[
                        "123456789012345678901234567890",
                        "-18446744073709551617",
                        "18446744073709551616",
                    ],
                );
                with_back(p, &format!("\"big\":{v}"))
            }),
            "pl.utf8_encoded_surrogate" => {
                let c = Value::from(self.claims()).to_string();
                let mut p = c.as_bytes()[..c.len() - 1].to_vec();
                p.extend_from_slice(b",\"name\":\"\xed\xa0\x80\"}");
                Self::sign_segments(
                    key,
                    &enc(Value::from(Self::header(key)).to_string()),
                    &enc(p),
                )
            }
            "pl.invalid_utf8" => {
                let c = Value::from(self.claims()).to_string();
                let bad: [&[u8]; 3] = [b"\x80", b"\xc0\xaf", b"\xff"];
                let bad = bad[self.rng.random_range(0..bad.len())];
                let mut p = c.as_bytes()[..c.len() - 1].to_vec();
                p.extend_from_slice(b",\"name\":\"");
                p.extend_from_slice(bad);
                p.extend_from_slice(b"\"}");
                Self::sign_segments(
                    key,
                    &enc(Value::from(Self::header(key)).to_string()),
                    &enc(p),
                )
            }
            "pl.dup_same" => {
                self.with_raw_payload(key, |p, _| with_back(p, &format!("\"iss\":\"{ISS}\"")))
            }
            "pl.non_object" => {
                let c = Value::from(self.claims());
                let p = match self.rng.random_range(0..4) {
                    0 => format!("[{c}]"),
                    1 => json!(c.to_string()).to_string(),
                    2 => "12345".into(),
                    _ => "null".into(),
                };
                Self::sign_json(key, &Value::from(Self::header(key)).to_string(), &p)
            }
            "pl.trailing_garbage" => self.with_raw_payload(key, |p, rng| {
                format!("{p}{}", pick(rng, &[" x", "}", ",", "{}", "]"]))
            }),
            "pl.whitespace" => self.with_raw_payload(key, |p, rng| {
                let v: Value = serde_json::from_str(p).unwrap();
                let ws = *pick(rng, &[" ", "\n", "\t", "\r\n"]);
                format!("{ws}{}{ws}", serde_json::to_string_pretty(&v).unwrap())
            }),
            "pl.unicode_escape" => self.with_raw_payload(key, |p, rng| {
                let (from, to) = *pick(
                    rng,
                    &[
                        ("\"exp\"", "\"\\u0065xp\""),
                        ("\"sid\"", "\"\\u0073id\""),
                        ("\"aud\"", "\"\\u0061ud\""),
                        ("\"iss\"", "\"\\u0069ss\""),
                    ],
                );
                p.replacen(from, to, 1)
            }),
            "pl.bom" => self.with_raw_payload(key, |p, _| format!("\u{feff}{p}")),
            "enc.json_utf16" => {
                let h = Value::from(Self::header(key)).to_string();
                let c = Value::from(self.claims()).to_string();
                let utf16 = |s: &str, be: bool| -> Vec<u8> {
                    s.encode_utf16()
                        .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
                        .collect()
                };
                let be = self.rng.random_bool(0.5);
                let (h, p) = match self.rng.random_range(0..3) {
                    0 => (enc(utf16(&h, be)), enc(&c)),
                    1 => (enc(&h), enc(utf16(&c, be))),
                    _ => (enc(utf16(&h, be)), enc(utf16(&c, be))),
                };
                Self::sign_segments(key, &h, &p)
            }
            "enc.pad_header_payload" => {
                let h = enc(Value::from(Self::header(key)).to_string());
                let mut c = self.claims();
                // make the payload's length not a multiple of 3 so it has padding
                let mut p = Value::from(c.clone()).to_string();
                while p.len().is_multiple_of(3) {
                    c.insert("x".into(), json!("y".repeat(p.len() % 7 + 1)));
                    p = Value::from(c.clone()).to_string();
                }
                let pad = |s: String| {
                    let n = (4 - s.len() % 4) % 4;
                    format!("{s}{}", "=".repeat(n))
                };
                let p = enc(p);
                let (h, p) = match self.rng.random_range(0..3) {
                    0 if !h.len().is_multiple_of(4) => (pad(h), p),
                    1 => (h, pad(p)),
                    _ => (pad(h), pad(p)),
                };
                Self::sign_segments(key, &h, &p)
            }
            "enc.pad_signature" => {
                let t = self.valid(key);
                let sig = t.rsplit('.').next().unwrap();
                if sig.len().is_multiple_of(4) {
                    return None;
                }
                format!("{t}{}", "=".repeat((4 - sig.len() % 4) % 4))
            }
            "enc.sig_noncanonical_bits" => {
                let t = self.valid(key);
                let (input, sig) = t.rsplit_once('.').unwrap();
                let unused = match sig.len() % 4 {
                    2 => 4,
                    3 => 2,
                    _ => return None,
                };
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let last = *sig.as_bytes().last().unwrap();
                let i = ALPHABET.iter().position(|c| *c == last).unwrap();
                let j = i | self.rng.random_range(1..(1usize << unused));
                format!("{input}.{}{}", &sig[..sig.len() - 1], ALPHABET[j] as char)
            }
            "enc.std_alphabet" => {
                // six "~" and six "?" hold a whole base64 group of each, "fn5-" and "Pz8_": every segment the
                // mutation touches has a character the two alphabets spell differently
                let mut h = Self::header(key);
                h.insert("x".into(), json!("~~~~~~??????"));
                let mut c = self.claims();
                c.insert("x".into(), json!("~~~~~~??????"));
                let std = |s: &str| s.replace('-', "+").replace('_', "/");
                let h = enc(Value::from(h).to_string());
                let p = enc(Value::from(c).to_string());
                match self.rng.random_range(0..3) {
                    0 => Self::sign_segments(key, &std(&h), &p),
                    1 => Self::sign_segments(key, &h, &std(&p)),
                    _ => {
                        let t = Self::sign_segments(key, &std(&h), &std(&p));
                        let (input, sig) = t.rsplit_once('.').unwrap();
                        format!("{input}.{}", std(sig))
                    }
                }
            }
            "enc.whitespace_in_segment" => {
                let ws = *pick(&mut self.rng, &[" ", "\t", "\n", "\r\n", "\r"]);
                let h = enc(Value::from(Self::header(key)).to_string());
                let p = enc(Value::from(self.claims()).to_string());
                let ins = |s: &str, at: usize| format!("{}{ws}{}", &s[..at], &s[at..]);
                match self.rng.random_range(0..3) {
                    0 => {
                        let at = self.rng.random_range(1..h.len());
                        Self::sign_segments(key, &ins(&h, at), &p)
                    }
                    1 => {
                        let at = self.rng.random_range(1..p.len());
                        Self::sign_segments(key, &h, &ins(&p, at))
                    }
                    _ => {
                        let t = Self::sign_segments(key, &h, &p);
                        let (input, sig) = t.rsplit_once('.').unwrap();
                        let at = self.rng.random_range(1..sig.len());
                        format!("{input}.{}", ins(sig, at))
                    }
                }
            }
            "enc.segment_count" => {
                let t = self.valid(key);
                let p: Vec<&str> = t.split('.').collect();
                match self.rng.random_range(0..7) {
                    0 => format!("{}.{}", p[0], p[1]),
                    1 => format!("{t}.{}", p[2]),
                    2 => format!("{t}."),
                    3 => format!(".{t}"),
                    4 => format!("{}..{}", p[0], p[2]),
                    5 => format!(".{}.{}", p[1], p[2]),
                    _ => format!("{}.{}.{}.{}", p[0], p[1], p[1], p[2]),
                }
            }
            "enc.sig_empty" => {
                let t = self.valid(key);
                let (input, _) = t.rsplit_once('.').unwrap();
                format!("{input}.")
            }
            "enc.sig_bitflip" => self.with_sig(key, |mut s, rng| {
                let bit = rng.random_range(0..s.len() * 8);
                s[bit / 8] ^= 1 << (bit % 8);
                Some(s)
            })?,
            "enc.sig_truncated" => self.with_sig(key, |mut s, rng| {
                let n = rng.random_range(1..s.len());
                s.truncate(s.len() - n);
                Some(s)
            })?,
            "enc.sig_extended" => self.with_sig(key, |mut s, rng| {
                for _ in 0..rng.random_range(1..5) {
                    s.push(rng.random());
                }
                Some(s)
            })?,
            "enc.sig_all_zero" => self.with_sig(key, |s, _| Some(vec![0; s.len()]))?,
            "enc.sig_spliced" => {
                let other = self.valid(key);
                let t = self.valid(key);
                let (input, _) = t.rsplit_once('.').unwrap();
                format!("{input}.{}", other.rsplit('.').next().unwrap())
            }
            "enc.ecdsa_der" => {
                if !ec {
                    return None;
                }
                self.with_sig(key, |s, _| {
                    let (r, s) = s.split_at(s.len() / 2);
                    let mut body = der_int(r);
                    body.extend(der_int(s));
                    let mut out = vec![0x30, body.len() as u8];
                    out.extend(body);
                    Some(out)
                })?
            }
            "enc.ecdsa_s_negated" => {
                let n = curve_order(alg)?;
                self.with_sig(key, move |sig, _| {
                    let (r, s) = sig.split_at(sig.len() / 2);
                    let mut out = r.to_vec();
                    out.extend(sub_be(&n, s));
                    Some(out)
                })?
            }
            "enc.rsa_sig_short" | "enc.pss_sig_short" => {
                let want = if m == "enc.rsa_sig_short" {
                    Alg::RS256
                } else {
                    Alg::PS256
                };
                // ~256 signatures per case: two rounds are enough
                if alg != want || self.round >= 2 {
                    return None;
                }
                // about one signature in 256 starts with a zero byte
                let mut c = self.claims();
                for nonce in 0..20_000u32 {
                    c.insert("nonce".into(), json!(nonce));
                    let t = Self::sign(key, &Self::header(key), &c);
                    let (input, sig) = t.rsplit_once('.').unwrap();
                    let sig = b64().decode(sig).unwrap();
                    if sig[0] == 0 {
                        return Some(format!("{input}.{}", enc(&sig[1..])));
                    }
                }
                panic!("no RSA signature with a leading zero byte in 20000")
            }
            "enc.pss_salt_length" => {
                use aws_lc_rs::signature::{
                    RsaKeyPair, RsaPssSaltLength, RsaSignatureEncoding, RSA_PSS_SHA256,
                };
                static SALTS: [RsaSignatureEncoding; 5] = [
                    RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(0)),
                    RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(20)),
                    RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(48)),
                    RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Custom(64)),
                    RSA_PSS_SHA256.with_pss_salt_length(RsaPssSaltLength::Max),
                ];
                if alg != Alg::PS256 {
                    return None;
                }
                let pair = RsaKeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
                let encoding = &SALTS[self.rng.random_range(0..SALTS.len())];
                let input = format!(
                    "{}.{}",
                    enc(Value::from(Self::header(key)).to_string()),
                    enc(Value::from(self.claims()).to_string())
                );
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    encoding,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                format!("{input}.{}", enc(sig))
            }
            "enc.rsa_sig_zero_prefixed" => {
                if !matches!(alg, Alg::RS256 | Alg::PS256) {
                    return None;
                }
                self.with_sig(key, |sig, _| {
                    let mut out = vec![0];
                    out.extend(sig);
                    Some(out)
                })?
            }
            "enc.ed25519_s_plus_l" => {
                if alg != Alg::EdDSA {
                    return None;
                }
                // L = 2^252 + 27742317777372353535851937790883648493, little-endian
                const L: [u8; 32] = [
                    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde,
                    0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
                ];
                self.with_sig(key, |mut sig, _| {
                    let mut carry = 0u16;
                    for (i, l) in L.iter().enumerate() {
                        let v = sig[32 + i] as u16 + *l as u16 + carry;
                        sig[32 + i] = v as u8;
                        carry = v >> 8;
                    }
                    (carry == 0).then_some(sig)
                })?
            }
            "size.at_limit" | "size.limit_plus_one" => {
                let target = MAX_TOKEN_BYTES + usize::from(m == "size.limit_plus_one");
                let sig_len = enc(key.sign_bytes(b"x").unwrap()).len();
                let c = self.claims();
                // a header member of 0-3 bytes so that the payload's base64url length is one
                // a payload can have (never 1 mod 4)
                for extra in 0..4 {
                    let mut h = Self::header(key);
                    h.insert("x".into(), json!("y".repeat(extra)));
                    let hl = enc(Value::from(h.clone()).to_string()).len();
                    let Some(pl) = target.checked_sub(hl + sig_len + 2) else {
                        continue;
                    };
                    let json_len = match pl % 4 {
                        0 => pl / 4 * 3,
                        2 => pl / 4 * 3 + 1,
                        3 => pl / 4 * 3 + 2,
                        _ => continue,
                    };
                    let mut c = c.clone();
                    c.insert("pad".into(), json!(""));
                    let base = Value::from(c.clone()).to_string().len();
                    c.insert("pad".into(), json!("x".repeat(json_len - base)));
                    let t = Self::sign(key, &h, &c);
                    assert_eq!(t.len(), target, "{m} for {alg}");
                    return Some(t);
                }
                panic!("{m}: no header length fits")
            }
            "size.near_limit" | "size.over_limit" => {
                let near = m == "size.near_limit";
                self.with_claims(key, |c, rng| {
                    let n = if near {
                        rng.random_range(4000..5300)
                    } else {
                        rng.random_range(6400..12000)
                    };
                    c.insert("pad".into(), json!("x".repeat(n)));
                })
            }
            "size.nesting_ok" | "size.nesting_deep" => {
                let deep = m == "size.nesting_deep";
                self.with_raw_payload(key, |p, rng| {
                    let d = if deep {
                        rng.random_range(200..600)
                    } else {
                        rng.random_range(20..100)
                    };
                    with_back(p, &format!("\"nest\":{}{}", "[".repeat(d), "]".repeat(d)))
                })
            }
            "size.many_claims" => self.with_claims(key, |c, rng| {
                for i in 0..200 {
                    c.insert(format!("k{i}"), json!(rng.random::<u16>()));
                }
            }),
            other => panic!("no generator for mutation {other}"),
        })
    }
}

/// The venv's python, or a clear failure: the differential test never skips.
fn python() -> PathBuf {
    let venv = std::env::var_os("VETO_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "differential test: no python at {} (VETO_VENV={}). Run scripts/install-deps.sh, or \
         `{}/bin/pip install 'pyjwt[crypto]'`",
        py.display(),
        venv.display(),
        venv.display()
    );
    py
}

/// Asks PyJWT about every token through one oracle process; `Ok(())` or PyJWT's refusal.
fn ask_pyjwt(config: &Value, tokens: &[String]) -> (String, Vec<Result<(), String>>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/pyjwt_oracle.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the PyJWT oracle");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    writeln!(stdin, "{config}").unwrap();
    stdin.flush().unwrap();
    let ready: Value = serde_json::from_str(&lines.next().expect("oracle said nothing").unwrap())
        .expect("oracle's first line");
    assert_eq!(
        ready["ready"], true,
        "PyJWT oracle not ready: {ready}. Install PyJWT into the venv (scripts/install-deps.sh, \
         or `$VETO_VENV/bin/pip install 'pyjwt[crypto]'`)"
    );
    let version = ready["pyjwt"].as_str().unwrap_or("?").to_string();
    let requests: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "token": t}).to_string())
        .collect();
    let writer = std::thread::spawn(move || {
        for r in requests {
            writeln!(stdin, "{r}").unwrap();
        }
        // stdin dropped here: the oracle ends after the last answer
    });
    let mut answers = vec![None; tokens.len()];
    for line in lines {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("oracle answer");
        let id = v["id"].as_u64().unwrap() as usize;
        answers[id] = Some(if v["ok"] == true {
            Ok(())
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        });
    }
    writer.join().unwrap();
    assert!(child.wait().unwrap().success(), "PyJWT oracle failed");
    let answers = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.unwrap_or_else(|| panic!("no oracle answer for case {i}")))
        .collect();
    (version, answers)
}

fn short(t: &str) -> String {
    if t.len() > 600 {
        format!("{}...({} bytes)", &t[..600], t.len())
    } else {
        t.to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veto_and_pyjwt_disagree_only_as_the_table_says() {
    let started = std::time::Instant::now();
    python(); // fail before the corpus is built when PyJWT's venv is missing
    let seed = std::env::var("VETO_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    let secret_path = dir.path().join("hmac.secret");
    std::fs::write(&jwks_path, keys.jwks().to_string()).unwrap();
    std::fs::write(&secret_path, &keys.hmac_secret).unwrap();
    let algs: Vec<String> = ALGS.iter().map(|a| format!("\"{a}\"")).collect();
    let config = format!(
        r#"
[log]
level = "warn"
[authz]
max_token_bytes = {MAX_TOKEN_BYTES}
[[issuers]]
issuer = "{ISS}"
audiences = ["api", "api2"]
algorithms = [{algs}]
jwks_file = "{jwks}"
hmac_secret_file = "{secret}"
leeway = "{LEEWAY}s"
max_token_lifetime = "{MAX_LIFETIME}s"
"#,
        algs = algs.join(", "),
        jwks = jwks_path.display(),
        secret = secret_path.display(),
    );
    let path = dir.path().join("veto.toml");
    std::fs::write(&path, config).unwrap();
    let settings = Settings::load(&path).expect("settings");
    let sidecar = Sidecar::build(&settings).expect("build");
    sidecar.load_keys().await;
    let decider = sidecar.decider.clone();

    // the corpus
    let mut gen = Gen {
        keys: &keys,
        now: veto::now_ms() / 1000,
        rng: StdRng::seed_from_u64(seed),
        serial: 0,
        round: 0,
    };
    let mut cases = Vec::new();
    for round in 0..ROUNDS {
        gen.round = round;
        for alg in ALGS {
            let key = keys.get(alg);
            for m in MUTATIONS {
                if let Some(token) = gen.mutate(m, key) {
                    cases.push(Case {
                        class: m,
                        alg,
                        token,
                    });
                }
            }
        }
    }
    let generated = started.elapsed();

    // PyJWT, with the same policy
    let oracle_config = json!({
        "issuer": ISS,
        "audiences": AUDIENCES,
        "algorithms": ALGS.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "leeway": LEEWAY,
        "require": ["exp", "iat", "iss", "aud", "sid"],
        "jwks": keys.jwks(),
        "hmac_secret_b64": base64::engine::general_purpose::URL_SAFE.encode(&keys.hmac_secret),
    });
    let tokens: Vec<String> = cases.iter().map(|c| c.token.clone()).collect();
    let (pyjwt_version, pyjwt) = ask_pyjwt(&oracle_config, &tokens);

    // Veto's decider, in-process; twice, the second answer from its verified-token cache
    let mut veto = Vec::with_capacity(cases.len());
    for c in &cases {
        let auth = format!("Bearer {}", c.token);
        let mut answers = Vec::with_capacity(2);
        for _ in 0..2 {
            answers.push(
                match decider.decide(Credential::Authorization(&auth)).await {
                    Decision::Allow(_) => Ok(()),
                    Decision::Deny(d) => Err(d.reason.reason().to_string()),
                    Decision::Error(e) => panic!("{}: veto could not decide: {e}", c.class),
                },
            );
        }
        assert_eq!(
            answers[0],
            answers[1],
            "{} ({}): the cached answer differs\n  token: {}",
            c.class,
            c.alg,
            short(&c.token)
        );
        veto.push(answers.swap_remove(0));
    }

    // compare against the table
    let expected: BTreeMap<&str, (Outcome, &str)> =
        EXPECTED.iter().map(|(c, o, r)| (*c, (*o, *r))).collect();
    assert_eq!(expected.len(), EXPECTED.len(), "a class listed twice");
    struct Row {
        count: usize,
        outcomes: BTreeMap<Outcome, usize>,
        veto_reasons: BTreeSet<String>,
        pyjwt_errors: BTreeSet<String>,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    let mut failures = Vec::new();
    for ((c, v), p) in cases.iter().zip(&veto).zip(&pyjwt) {
        let got = Outcome::of(v.is_ok(), p.is_ok());
        let row = rows.entry(c.class).or_insert_with(|| Row {
            count: 0,
            outcomes: BTreeMap::new(),
            veto_reasons: BTreeSet::new(),
            pyjwt_errors: BTreeSet::new(),
        });
        row.count += 1;
        *row.outcomes.entry(got).or_default() += 1;
        if let Err(r) = v {
            row.veto_reasons.insert(r.clone());
        }
        if let Err(e) = p {
            row.pyjwt_errors
                .insert(e.split(':').next().unwrap_or(e).to_string());
        }
        let want = expected.get(c.class).map(|(o, _)| *o);
        if want != Some(got) {
            let finding = if got == PyjwtOnlyReject {
                "SECURITY FINDING: veto accepts what PyJWT refuses"
            } else {
                "unexpected disagreement"
            };
            failures.push(format!(
                "{finding}\n  class {} ({}), expected {want:?}, got {got:?}\n  veto:  {v:?}\n  pyjwt: {p:?}\n  token: {}",
                c.class,
                c.alg,
                short(&c.token)
            ));
        }
    }

    let mut summary = format!(
        "differential: {} cases ({} classes), seed {seed:#x}, PyJWT {pyjwt_version}, {:.1?} (generation {:.1?})\n{:<32} {:>5}  {:<16} {:<40} pyjwt\n",
        cases.len(),
        rows.len(),
        started.elapsed(),
        generated,
        "class",
        "cases",
        "outcome",
        "veto reasons",
    );
    let mut totals: BTreeMap<Outcome, usize> = BTreeMap::new();
    for (class, row) in &rows {
        let outcomes: Vec<String> = row
            .outcomes
            .iter()
            .map(|(o, n)| format!("{o:?}:{n}"))
            .collect();
        for (o, n) in &row.outcomes {
            *totals.entry(*o).or_default() += n;
        }
        let reasons: Vec<&str> = row.veto_reasons.iter().map(String::as_str).collect();
        let errors: Vec<&str> = row.pyjwt_errors.iter().map(String::as_str).collect();
        summary += &format!(
            "{class:<32} {:>5}  {:<16} {:<40} {}\n",
            row.count,
            outcomes.join(","),
            reasons.join(","),
            errors.join(",")
        );
    }
    summary += &format!("totals: {totals:?}\n");
    println!("{summary}");

    // the table and the corpus describe the same classes, and the README lists them all
    let unexercised: Vec<&str> = expected
        .keys()
        .filter(|c| !rows.contains_key(*c))
        .copied()
        .collect();
    let unlisted_mutations: Vec<&str> = MUTATIONS
        .iter()
        .filter(|m| !expected.contains_key(*m))
        .copied()
        .collect();
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/README.md"),
    )
    .expect("tests/differential/README.md");
    let undocumented: Vec<&str> = expected
        .keys()
        .filter(|c| !readme.contains(&format!("`{c}`")))
        .copied()
        .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) off the expected-disagreement table:\n\n{}\n\n{summary}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n\n")
    );
    assert!(
        unexercised.is_empty(),
        "table classes no case exercised: {unexercised:?}"
    );
    assert!(
        unlisted_mutations.is_empty(),
        "mutations without a table entry: {unlisted_mutations:?}"
    );
    assert!(
        undocumented.is_empty(),
        "classes missing from tests/differential/README.md: {undocumented:?}"
    );
    assert!(cases.len() >= 2000, "corpus too small: {}", cases.len());
}
