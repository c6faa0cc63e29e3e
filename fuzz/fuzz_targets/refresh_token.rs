//! The `vrt1` refresh-token parser and its MAC. Never panics; a token accepted is canonical
//! (re-minting its fields under its `kid` gives the very same string) and its tag verifies
//! independently (HMAC-SHA-256 with aws-lc-rs); a token minted from valid fields is accepted
//! with exactly those fields.
//!
//! Input: `0x00 | token`, or `0x01 | key | flip | home 0x00 sid 0x00 generation 0x00 secret`
//! (minted under key `k2` or `k1`, then byte `flip` changed when it is inside the token).
#![no_main]

use aws_lc_rs::hmac;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use veto::authority::refresh::{mint, parse, MacKeys};
use veto_fuzz::b64;

const K2: [u8; 32] = [7; 32];
const K1: [u8; 32] = [9; 32];

fn keys_text(order: &[(&str, [u8; 32])]) -> String {
    order
        .iter()
        .map(|(k, s)| format!("{k}={}\n", b64(s)))
        .collect()
}

static BOTH: LazyLock<MacKeys> = LazyLock::new(|| {
    MacKeys::parse(&format!("# fuzz\n{}", keys_text(&[("k2", K2), ("k1", K1)]))).unwrap()
});
static ONLY_K2: LazyLock<MacKeys> =
    LazyLock::new(|| MacKeys::parse(&keys_text(&[("k2", K2)])).unwrap());
static ONLY_K1: LazyLock<MacKeys> =
    LazyLock::new(|| MacKeys::parse(&keys_text(&[("k1", K1)])).unwrap());

fn seeds(_: &veto_fuzz::Fixture) -> Vec<(String, Vec<u8>)> {
    let good = mint(&BOTH, "us-east", "sess_0123456789abcdefgh", 7, &[3u8; 32]);
    let old = mint(&ONLY_K1, "eu", "s", 0, &[1u8; 32]);
    let mut out = vec![
        ("k2".to_string(), [&[0u8][..], good.as_bytes()].concat()),
        ("k1".to_string(), [&[0u8][..], old.as_bytes()].concat()),
        (
            "leading-zero".to_string(),
            [&[0u8][..], good.replace(".7.", ".07.").as_bytes()].concat(),
        ),
        (
            "short-tag".to_string(),
            [&[0u8][..], &good.as_bytes()[..good.len() - 2]].concat(),
        ),
        (
            "unknown-kid".to_string(),
            [&[0u8][..], good.replace(".k2.", ".k9.").as_bytes()].concat(),
        ),
        ("garbage".to_string(), b"\0vrt1.a.b.c".to_vec()),
    ];
    for (name, key, home, sid, generation, secret) in [
        (
            "mint-k2",
            0u8,
            "ap",
            "abc",
            "18446744073709551615",
            vec![0u8; 32],
        ),
        ("mint-k1", 1, "us_1", "x-y", "0", vec![5u8; 32]),
        ("mint-short-secret", 0, "us", "s", "1", vec![5u8; 31]),
        ("mint-dotted", 0, "u.s", "s", "1", vec![5u8; 32]),
    ] {
        let mut v = vec![1u8, key, 255];
        for part in [home.as_bytes(), sid.as_bytes(), generation.as_bytes()] {
            v.extend_from_slice(part);
            v.push(0);
        }
        v.extend_from_slice(&secret);
        out.push((name.to_string(), v));
    }
    out
}

fn valid_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fuzz_target!(init: veto_fuzz::init(seeds), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (token, minted) = if mode & 1 == 0 {
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        (t.to_string(), None)
    } else {
        let [key, flip, rest @ ..] = rest else {
            return;
        };
        let mut parts = rest.splitn(4, |b| *b == 0);
        let (Some(home), Some(sid), Some(generation), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Ok(home), Ok(sid), Ok(generation)) = (
            std::str::from_utf8(home),
            std::str::from_utf8(sid),
            std::str::from_utf8(generation),
        ) else {
            return;
        };
        let Ok(generation) = generation.parse::<u64>() else {
            return;
        };
        let keys = if key & 1 == 0 { &*ONLY_K2 } else { &*ONLY_K1 };
        let mut t = mint(keys, home, sid, generation, secret).into_bytes();
        let flipped = usize::from(*flip) < t.len();
        if flipped {
            t[usize::from(*flip)] ^= 0x01;
        }
        let Ok(t) = String::from_utf8(t) else {
            return;
        };
        let fields_ok = valid_part(home, 64) && valid_part(sid, 64) && secret.len() == 32;
        (t, (!flipped && fields_ok).then(|| (home.to_string(), sid.to_string(), generation, secret.to_vec())))
    };
    let result = parse(&BOTH, &token);
    if let Some((home, sid, generation, secret)) = minted {
        let p = result.clone().unwrap_or_else(|e| panic!("a token minted from valid fields is refused: {e}"));
        assert_eq!((p.home, p.sid, p.generation, p.secret.to_vec()), (home, sid, generation, secret));
    }
    let Ok(p) = result else {
        return;
    };
    assert!(token.len() <= 512);
    let (body, tag) = token.rsplit_once('.').unwrap();
    let kid = body.split('.').nth(4).unwrap();
    let (keys, secret) = match kid {
        "k2" => (&*ONLY_K2, K2),
        "k1" => (&*ONLY_K1, K1),
        other => panic!("accepted under unknown kid {other:?}"),
    };
    assert_eq!(mint(keys, &p.home, &p.sid, p.generation, &p.secret), token, "not canonical");
    let expect = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), body.as_bytes());
    assert_eq!(b64(&expect.as_ref()[..16]), tag, "tag does not verify independently");
});
