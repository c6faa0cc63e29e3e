//! Refresh tokens: `vrt1.<home>.<sid>.<gen>.<kid>.<secret>.<tag>`.
//!
//! - `secret`: 32 random bytes (base64url), the only part that proves possession; the home
//!   stores SHA-256 of it, never the secret.
//! - `tag`: HMAC-SHA-256 under the MAC key `kid` (shared by every region's authorities) of
//!   everything before it, truncated to 16 bytes. Any region refuses a forged or garbled token
//!   before any lookup or cross-region hop, so knowing a `sid` (it is in every access token)
//!   never lets anyone touch a session, and a valid tag on an old generation proves genuine
//!   reuse.
//!
//! The MAC key file holds one `kid=secret` per line (secret base64url, ≥ 32 bytes; `#`
//! comments and blank lines ignored): the first signs, every line verifies, so a key is
//! rotated by adding the new one on top and removing the old one after the longest session.

use crate::token::b64;
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use base64::Engine;
use std::path::Path;
use subtle::ConstantTimeEq;

const PREFIX: &str = "vrt1";
const TAG_BYTES: usize = 16;
/// Random bytes of a refresh secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Longest refresh token accepted, in bytes (far above any token this module mints).
pub const MAX_TOKEN_BYTES: usize = 512;
/// Longest session id, in bytes (ours are 22; the bound keeps garbage cheap).
const MAX_SID_BYTES: usize = 64;

/// The shared MAC keys.
pub struct MacKeys {
    keys: Vec<(String, hmac::Key)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacKeyError {
    #[error("cannot read the refresh key file: {0}")]
    Unreadable(String),
    #[error("line {0}: expected kid=secret with a base64url secret of at least 32 bytes")]
    BadLine(usize),
    #[error("line {0}: duplicate kid")]
    DuplicateKid(usize),
    #[error("no key in the file")]
    Empty,
}

impl MacKeys {
    pub fn load(path: &Path) -> Result<MacKeys, MacKeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MacKeyError::Unreadable(e.kind().to_string()))?;
        MacKeys::parse(&text)
    }

    pub fn parse(text: &str) -> Result<MacKeys, MacKeyError> {
        let mut keys: Vec<(String, hmac::Key)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kid, secret) = line.split_once('=').ok_or(MacKeyError::BadLine(n + 1))?;
            let secret = b64()
                .decode(secret.trim())
                .map_err(|_| MacKeyError::BadLine(n + 1))?;
            let kid = kid.trim();
            let kid_ok = !kid.is_empty()
                && kid.len() <= 16
                && kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !kid_ok || secret.len() < 32 {
                return Err(MacKeyError::BadLine(n + 1));
            }
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(MacKeyError::DuplicateKid(n + 1));
            }
            keys.push((kid.to_string(), hmac::Key::new(hmac::HMAC_SHA256, &secret)));
        }
        if keys.is_empty() {
            return Err(MacKeyError::Empty);
        }
        Ok(MacKeys { keys })
    }

    fn signing(&self) -> &(String, hmac::Key) {
        &self.keys[0]
    }

    fn key(&self, kid: &str) -> Option<&hmac::Key> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }
}

/// A refresh token whose tag verified: genuine, minted by an authority holding the MAC key.
/// Says nothing yet about whether it is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub home: String,
    pub sid: String,
    pub generation: u64,
    pub secret: [u8; SECRET_BYTES],
}

impl Presented {
    pub fn secret_hash(&self) -> [u8; 32] {
        secret_hash(&self.secret)
    }
}

/// Why a refresh token was refused before any lookup. Deliberately coarse: the answer is
/// `invalid_grant` whatever the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Garbled {
    #[error("not a refresh token")]
    Format,
    #[error("unknown MAC key")]
    UnknownKey,
    #[error("bad tag")]
    Tag,
}

/// SHA-256 of a secret: what the session record stores.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two hashes.
pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A fresh 256-bit secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    let mut s = [0u8; SECRET_BYTES];
    // aws-lc's CSPRNG does not fail on supported platforms; a zero secret is never used
    // because `fill` is checked.
    if aws_lc_rs::rand::fill(&mut s).is_err() {
        rand::Rng::fill(&mut rand::rng(), &mut s[..]);
    }
    s
}

/// Is `s` usable as a home region or session id inside a refresh token (one dot-free,
/// subject- and KV-key-safe token)?
fn valid_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Mints the refresh token of generation `generation` of session `sid` homed in `home`.
pub fn mint(keys: &MacKeys, home: &str, sid: &str, generation: u64, secret: &[u8]) -> String {
    let (kid, key) = keys.signing();
    let body = format!(
        "{PREFIX}.{home}.{sid}.{generation}.{kid}.{}",
        b64().encode(secret)
    );
    let tag = hmac::sign(key, body.as_bytes());
    format!("{body}.{}", b64().encode(&tag.as_ref()[..TAG_BYTES]))
}

/// Checks the format and the tag, in constant time for the tag. Nothing is looked up.
pub fn parse(keys: &MacKeys, token: &str) -> Result<Presented, Garbled> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Garbled::Format);
    }
    let (body, tag) = token.rsplit_once('.').ok_or(Garbled::Format)?;
    let mut parts = body.split('.');
    let (Some(prefix), Some(home), Some(sid), Some(generation), Some(kid), Some(secret), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Garbled::Format);
    };
    if prefix != PREFIX || !valid_part(home, 64) || !valid_part(sid, MAX_SID_BYTES) {
        return Err(Garbled::Format);
    }
    // canonical decimal only: "01" or "+1" would be a second spelling of one token; up to
    // 20 digits, as `mint` writes every u64 (u64::MAX has 20; overflow fails the parse)
    if generation.is_empty()
        || generation.len() > 20
        || !generation.bytes().all(|b| b.is_ascii_digit())
        || (generation.len() > 1 && generation.starts_with('0'))
    {
        return Err(Garbled::Format);
    }
    let generation: u64 = generation.parse().map_err(|_| Garbled::Format)?;
    let key = keys.key(kid).ok_or(Garbled::UnknownKey)?;
    let tag = b64().decode(tag).map_err(|_| Garbled::Format)?;
    if tag.len() != TAG_BYTES {
        return Err(Garbled::Format);
    }
    let expected = hmac::sign(key, body.as_bytes());
    if !bool::from(expected.as_ref()[..TAG_BYTES].ct_eq(&tag)) {
        return Err(Garbled::Tag);
    }
    let raw = b64().decode(secret).map_err(|_| Garbled::Format)?;
    let secret: [u8; SECRET_BYTES] = raw.try_into().map_err(|_| Garbled::Format)?;
    Ok(Presented {
        home: home.to_string(),
        sid: sid.to_string(),
        generation,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> MacKeys {
        MacKeys::parse(&format!(
            "# shared\nk2={}\nk1={}\n",
            b64().encode([7u8; 32]),
            b64().encode([9u8; 32])
        ))
        .unwrap()
    }

    /// Found by `fuzz/fuzz_targets/refresh_token.rs`: a generation of 20 digits (≥ 10^19)
    /// was minted but refused by the parser.
    #[test]
    fn every_u64_generation_round_trips() {
        let k = keys();
        for generation in [
            0,
            9_999_999_999_999_999_999,
            10_000_000_000_000_000_000,
            u64::MAX,
        ] {
            let t = mint(&k, "us", "s", generation, &[1u8; 32]);
            assert_eq!(parse(&k, &t).map(|p| p.generation), Ok(generation), "{t}");
        }
        let over = mint(&k, "us", "s", u64::MAX, &[1u8; 32])
            .replace(".18446744073709551615.", ".18446744073709551616.");
        assert_eq!(parse(&k, &over), Err(Garbled::Format));
    }

    #[test]
    fn round_trip_and_every_byte_matters() {
        let k = keys();
        let secret = new_secret();
        let t = mint(&k, "us", "abc_DEF-1", 3, &secret);
        let p = parse(&k, &t).unwrap();
        assert_eq!(p.home, "us");
        assert_eq!(p.sid, "abc_DEF-1");
        assert_eq!(p.generation, 3);
        assert_eq!(p.secret, secret);
        // flip one character anywhere: never accepted
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let Ok(s) = String::from_utf8(b) else {
                continue;
            };
            if s != t {
                assert!(parse(&k, &s).is_err(), "accepted a change at byte {i}: {s}");
            }
        }
    }

    #[test]
    fn forged_fields_fail_the_tag() {
        let k = keys();
        let t = mint(&k, "us", "sid1", 1, &[1u8; 32]);
        // another session, home or generation under the same tag
        for (from, to) in [(".sid1.", ".sid2."), (".us.", ".eu."), (".1.k2.", ".2.k2.")] {
            let forged = t.replacen(from, to, 1);
            assert_ne!(forged, t);
            assert_eq!(parse(&k, &forged), Err(Garbled::Tag), "{from}");
        }
        let other = MacKeys::parse(&format!("k2={}", b64().encode([8u8; 32]))).unwrap();
        assert_eq!(parse(&other, &t), Err(Garbled::Tag));
        let unknown = MacKeys::parse(&format!("k9={}", b64().encode([7u8; 32]))).unwrap();
        assert_eq!(parse(&unknown, &t), Err(Garbled::UnknownKey));
    }

    #[test]
    fn verifying_keys_beyond_the_first() {
        let old = MacKeys::parse(&format!("k1={}", b64().encode([9u8; 32]))).unwrap();
        let t = mint(&old, "us", "s", 0, &[2u8; 32]);
        assert!(
            parse(&keys(), &t).is_ok(),
            "k1 still verifies after k2 took over"
        );
        assert!(mint(&keys(), "us", "s", 0, &[2u8; 32]).contains(".k2."));
    }

    #[test]
    fn garbage_is_format() {
        let k = keys();
        let good = mint(&k, "us", "s", 5, &[3u8; 32]);
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        let cases = [
            "",
            ".",
            "vrt1",
            "vrt1.us.s.5.k2.x",
            "vrt2.us.s.5.k2.AAAA.AAAA",
            "vrt1.u s.s.5.k2.AAAA.AAAA",
            long.as_str(),
        ];
        for c in cases {
            assert_eq!(parse(&k, c), Err(Garbled::Format), "{c:?}");
        }
        for g in ["05", "+5", "-5", "5 ", "99999999999999999999"] {
            let t = good.replacen(".5.", &format!(".{g}."), 1);
            assert!(parse(&k, &t).is_err(), "{g}");
        }
        // a truncated token
        assert!(parse(&k, &good[..good.len() - 3]).is_err());
    }

    #[test]
    fn key_file_errors_name_the_line() {
        assert_eq!(MacKeys::parse("").err(), Some(MacKeyError::Empty));
        assert_eq!(
            MacKeys::parse("k1=short").err(),
            Some(MacKeyError::BadLine(1))
        );
        let s = b64().encode([1u8; 32]);
        assert_eq!(
            MacKeys::parse(&format!("k1={s}\nk1={s}")).err(),
            Some(MacKeyError::DuplicateKid(2))
        );
        assert_eq!(
            MacKeys::parse(&format!("\nbad kid={s}")).err(),
            Some(MacKeyError::BadLine(2))
        );
    }
}
