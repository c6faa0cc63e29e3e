//! Benchmarks of the request path and of the revoked set (run: `scripts/bench-decision.sh`,
//! or `cargo bench --bench decision`).
//!
//! - `cold/<alg>/*`: a token seen for the first time. `validate` is
//!   [`Validator::validate`] (parse, key lookup, signature, claims); `decide_miss` is the whole
//!   [`Decider::decide`] on a token not in the cache (adds the cache insert, the revocation
//!   and freshness checks). Both sit next to two baselines verifying the very same token:
//!   `raw_unparsed` = `UnparsedPublicKey::new(alg, public_key).verify(signing_input, sig)`
//!   (parses the key on every call) and `raw_parsed` = `ParsedPublicKey::verify_sig` (what
//!   the validator uses, with the key parsed once). Target: cold ≤ 1.15× raw verify.
//! - `warm/*`: a repeat token, answered from the verified-token cache, with the revocation
//!   check against a set of 1M entries (and, for ES256, an empty set and through the async
//!   `decide` on a current-thread runtime).
//! - `grpc/*`: the rest of an ext_authz check in process (metrics, response building and
//!   protobuf encoding), next to what the do-nothing server of `scripts/bench-envoy.sh` does.
//! - `revoked_set_1M/*`, `revoked_set_10M/*`: [`RevokedSet::check`] on hits and misses, keys
//!   rotating over 64Ki random ids so the table is not all in cache. Target ≤ 50 ns.
//!   `miss_full` (session, token and subject, each under the issuer and "any issuer": six
//!   digests and lookups) is what every allowed request pays.
//! - Bytes per revoked entry at 1M and 10M, counted by the global allocator below (live heap
//!   after filling ÷ entries), printed as `bytes_per_entry:` lines when the sets are built.
//!   Target ≤ 64 B.
//!
//! Under `cargo test --all-targets` (no `--bench` flag) criterion runs every benchmark once;
//! the sets and token pools are then tiny so the debug build stays quick.

use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair, UnparsedPublicKey,
    VerificationAlgorithm,
};
use base64::Engine;
use criterion::{criterion_group, Criterion};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use veto::authz::grpc::AllowShape;
use veto::authz::{Answers, Decider, Identity};
use veto::config::{DenyStatus, Isolation, OnStale};
use veto::decision::{Credential, DeciderConfig, Decision, IssuerHooks};
use veto::revocation::{Freshness, Kind, RevocationEvent, RevokedSet};
use veto::sidecar::Metrics;
use veto::token::sign::{jwks, SigningKey};
use veto::token::{b64, Alg, IssuerPolicy, KeySet, KeyStore, Validator};

/// Counts live heap bytes, so the revoked set's footprint is measured, not estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ISS: &str = "https://bench.veto.local";
const AUD: &str = "bench";
/// Revocations are held this long in the filled sets (all live for the whole run).
const HOLD_MS: i64 = 24 * 3600 * 1000;
/// Rotating key sets for lookups: a power of two.
const ROTATE: usize = 1 << 16;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not (criterion then runs
/// each benchmark once, and so should the setup be small).
fn full_run() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn scaled(n: usize) -> usize {
    if full_run() {
        n
    } else {
        (n / 1000).max(16)
    }
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}K", n / 1_000),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Tokens, keys, validators, deciders

struct AlgFixture {
    alg: Alg,
    key: SigningKey,
    /// The public key in the form `UnparsedPublicKey` wants (EC point, Ed25519 bytes, or
    /// RSAPublicKey DER).
    public: Vec<u8>,
    verification: &'static dyn VerificationAlgorithm,
    store: Arc<KeyStore>,
}

impl AlgFixture {
    fn new(alg: Alg) -> AlgFixture {
        let key = SigningKey::generate(alg, "bench").expect("key generation");
        let der = key.pkcs8_der();
        let (public, verification): (Vec<u8>, &'static dyn VerificationAlgorithm) = match alg {
            Alg::ES256 => (
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .expect("pkcs8")
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::ECDSA_P256_SHA256_FIXED,
            ),
            Alg::ES384 => (
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .expect("pkcs8")
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::ECDSA_P384_SHA384_FIXED,
            ),
            Alg::EdDSA => (
                Ed25519KeyPair::from_pkcs8(der)
                    .expect("pkcs8")
                    .public_key()
                    .as_ref()
                    .to_vec(),
                &signature::ED25519,
            ),
            Alg::RS256 | Alg::PS256 => (
                RsaKeyPair::from_pkcs8(der)
                    .expect("pkcs8")
                    .public_key()
                    .as_ref()
                    .to_vec(),
                if alg == Alg::RS256 {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                },
            ),
            other => panic!("{other} is not benchmarked"),
        };
        let doc = jwks(&[&key]).to_string();
        let (set, _) = KeySet::from_jwks(doc.as_bytes(), &[alg]).expect("jwks");
        AlgFixture {
            alg,
            key,
            public,
            verification,
            store: Arc::new(KeyStore::new(Some(set))),
        }
    }

    /// A validator like the sidecar builds for one issuer with this key's JWKS.
    fn validator(&self) -> Validator {
        Validator {
            issuers: vec![IssuerPolicy {
                issuer: ISS.into(),
                audiences: vec![AUD.into()],
                algorithms: vec![self.alg],
                leeway: 30,
                session_claim: "sid".into(),
                max_token_lifetime: 900,
                required_claims: vec![],
                home_claim: Some("veto_home".into()),
                home_region: None,
                keys: self.store.clone(),
            }],
            max_token_bytes: 8192,
        }
    }

    /// A typical access token, as the authority issues it, valid for 10 minutes from now.
    fn token(&self, n: usize) -> String {
        let now = veto::now_ms() / 1000;
        self.key
            .sign(&json!({
                "iss": ISS, "aud": AUD, "sub": format!("user-{n}"),
                "sid": format!("session-{n}"), "jti": format!("token-{n}"),
                "iat": now, "exp": now + 600, "scope": "read write",
            }))
            .expect("sign")
    }
}

fn decider(validator: Validator, revoked: Arc<RevokedSet>, metrics: &Metrics) -> Decider {
    // As the sidecar wires it: x-user-id from sub.
    // A live feed: one expected origin, fresh; the check runs on every request as in prod.
    let freshness = Arc::new(Freshness::expecting(["bench"]));
    freshness.mark("bench", veto::now_ms() + 3_600_000);
    Decider::new(
        validator,
        revoked,
        freshness,
        vec![IssuerHooks {
            leeway: 30,
            refetch: None,
        }],
        DeciderConfig {
            header_claims: identity().claims(),
            revoked_status: DenyStatus::Unauthenticated,
            on_stale: OnStale::Deny,
            isolation: Isolation::Home,
            own_region: Some("bench".into()),
            max_staleness: Duration::from_secs(30),
            cache_capacity: 100_000,
        },
        metrics.decision.clone(),
    )
}

fn metrics() -> Metrics {
    Metrics::register(&prometheus::Registry::new())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The allow answers' shape the sidecar uses by default.
fn shape() -> Arc<AllowShape> {
    Arc::new(AllowShape {
        identity: Arc::new(identity()),
        remove_authorization: false,
        metadata_namespace: "veto".into(),
    })
}

fn identity() -> Identity {
    Identity::new(BTreeMap::from([(
        "x-user-id".to_string(),
        "sub".to_string(),
    )]))
}

fn assert_allowed(d: &Decision<Answers>) {
    assert!(matches!(d, Decision::Allow(_)), "expected allow, got {d:?}");
}

// ---------------------------------------------------------------------------------------
// Revoked sets

/// What a filled set holds: `i % 20` in 0..16 → session `s{i}`, 16..19 → token `j{i}`,
/// 19 → subject `u{i}` (`mixed`); or only sessions.
#[derive(Clone, Copy, PartialEq)]
enum Mix {
    SessionsOnly,
    Mixed,
}

fn kind_of(mix: Mix, i: usize) -> Kind {
    match (mix, i % 20) {
        (Mix::SessionsOnly, _) | (Mix::Mixed, 0..=15) => Kind::Session,
        (Mix::Mixed, 16..=18) => Kind::Token,
        _ => Kind::Subject,
    }
}

fn id_of(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Token => format!("j{i}"),
        Kind::Subject => format!("u{i}"),
        _ => format!("s{i}"),
    }
}

/// `revoked_at` of every filled entry; tokens checked against it have `iat` before it.
fn t0() -> i64 {
    static T0: OnceLock<i64> = OnceLock::new();
    *T0.get_or_init(veto::now_ms)
}

/// Fills a set with `n` revocations and prints its live heap bytes per entry.
fn filled(n: usize, mix: Mix) -> RevokedSet {
    let mut ev = RevocationEvent {
        event_id: "bench".into(),
        kind: 0,
        id: String::with_capacity(16),
        issuer: ISS.into(),
        revoked_at: t0(),
        expires_at: t0() + HOLD_MS,
        origin_region: "bench".into(),
        reason: String::new(),
        urgent: false,
        revoked_at_us: 0,
    };
    // The event is reused, so the only allocations that stay are the set's own.
    let started = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    // sized for what it will hold, as the sidecar sizes it from revocation.max_entries
    let set = RevokedSet::with_max_entries(n);
    let empty = LIVE.load(Ordering::Relaxed);
    for i in 0..n {
        let kind = kind_of(mix, i);
        ev.kind = kind as i32;
        ev.id.clear();
        use std::fmt::Write;
        let _ = match kind {
            Kind::Token => write!(ev.id, "j{i}"),
            Kind::Subject => write!(ev.id, "u{i}"),
            _ => write!(ev.id, "s{i}"),
        };
        set.apply(&ev, t0());
    }
    let took = started.elapsed();
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(set.len(), n);
    let bytes = (after - before) as f64;
    let est = set.stats().table_bytes as f64;
    println!(
        "bytes_per_entry: revoked_set {} entries ({}): {:.1} B/entry live heap \
         ({:.1} MiB; empty set {} B); set's own table estimate {:.1} B/entry; fill {:.2} s \
         ({:.0} ns/apply)",
        human(n),
        if mix == Mix::Mixed {
            "80% session, 15% token, 5% subject"
        } else {
            "sessions only"
        },
        bytes / n as f64,
        bytes / (1024.0 * 1024.0),
        empty - before,
        est / n as f64,
        took.as_secs_f64(),
        took.as_nanos() as f64 / n as f64,
    );
    set
}

/// The sets lookups run against, built once (and measured as they are built).
fn set_1m() -> Arc<RevokedSet> {
    static S: OnceLock<Arc<RevokedSet>> = OnceLock::new();
    S.get_or_init(|| {
        // Sessions only, measured and dropped: the footprint of the commonest kind.
        drop(filled(scaled(1_000_000), Mix::SessionsOnly));
        Arc::new(filled(scaled(1_000_000), Mix::Mixed))
    })
    .clone()
}

fn set_10m() -> Arc<RevokedSet> {
    static S: OnceLock<Arc<RevokedSet>> = OnceLock::new();
    S.get_or_init(|| {
        drop(filled(scaled(10_000_000), Mix::SessionsOnly));
        Arc::new(filled(scaled(10_000_000), Mix::Mixed))
    })
    .clone()
}

/// Claim triples (sid, jti, sub) to look up, rotating over [`ROTATE`] pseudo-random ids.
struct Lookups {
    sid: Vec<String>,
    jti: Vec<String>,
    sub: Vec<String>,
}

#[derive(Clone, Copy)]
enum Case {
    /// The session is revoked under the token's issuer: found by the first lookup.
    HitSession,
    /// Only the subject is revoked: found by the third lookup.
    HitSubject,
    /// Nothing revoked, token with `sid` only: two lookups.
    MissSidOnly,
    /// Nothing revoked, token with `sid`, `jti`, `sub`: six lookups (every allowed request).
    MissFull,
}

fn lookups(n: usize, mix: Mix, case: Case) -> Lookups {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let mut pick = |want: Kind| loop {
        let i = next() % n;
        if kind_of(mix, i) == want {
            return i;
        }
    };
    let mut l = Lookups {
        sid: Vec::with_capacity(ROTATE),
        jti: Vec::with_capacity(ROTATE),
        sub: Vec::with_capacity(ROTATE),
    };
    for k in 0..ROTATE {
        let miss = |p: &str| format!("{p}-miss-{k}");
        let (sid, sub) = match case {
            Case::HitSession => (id_of(Kind::Session, pick(Kind::Session)), miss("u")),
            Case::HitSubject => (miss("s"), id_of(Kind::Subject, pick(Kind::Subject))),
            Case::MissSidOnly | Case::MissFull => (miss("s"), miss("u")),
        };
        l.sid.push(sid);
        l.jti.push(miss("j"));
        l.sub.push(sub);
    }
    l
}

fn bench_lookups(c: &mut Criterion, group: &str, set: impl Fn() -> Arc<RevokedSet>, n: usize) {
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let iat = t0() / 1000 - 60; // before every subject revocation
    let now = t0() + 1000;
    // `_hot`: the same claims on every iteration, so the entry and its table lines stay in
    // cache: what is left is hashing and locking, not memory latency.
    let cases: &[(&str, Case, bool)] = if !(1_000_000..10_000_000).contains(&n) {
        &[
            ("hit_session", Case::HitSession, false),
            ("miss_full", Case::MissFull, false),
        ]
    } else {
        &[
            ("hit_session", Case::HitSession, false),
            ("hit_subject", Case::HitSubject, false),
            ("miss_sid_only", Case::MissSidOnly, false),
            ("miss_full", Case::MissFull, false),
            ("hit_session_hot", Case::HitSession, true),
            ("miss_sid_only_hot", Case::MissSidOnly, true),
            ("miss_full_hot", Case::MissFull, true),
        ]
    };
    for &(name, case, hot) in cases {
        g.bench_function(name, |b| {
            let set = set();
            let l = lookups(set.len(), Mix::Mixed, case);
            let (jti, sub) = match case {
                Case::MissSidOnly => (false, false),
                _ => (true, true),
            };
            let expect_hit = matches!(case, Case::HitSession | Case::HitSubject);
            for k in 0..ROTATE {
                let got = set.check(
                    ISS,
                    &l.sid[k],
                    jti.then_some(l.jti[k].as_str()),
                    sub.then_some(l.sub[k].as_str()),
                    iat,
                    now,
                );
                assert_eq!(got.is_some(), expect_hit, "{name}");
            }
            let step = usize::from(!hot);
            let mut k = 0;
            b.iter(|| {
                k = (k + step) & (ROTATE - 1);
                black_box(set.check(
                    black_box(ISS),
                    &l.sid[k],
                    jti.then_some(l.jti[k].as_str()),
                    sub.then_some(l.sub[k].as_str()),
                    iat,
                    now,
                ))
            });
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Benchmarks

const ALGS: [Alg; 5] = [Alg::ES256, Alg::ES384, Alg::RS256, Alg::PS256, Alg::EdDSA];

fn cold(c: &mut Criterion) {
    let mut g = c.benchmark_group("cold");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let metrics = metrics();
    for alg in ALGS {
        let fx = AlgFixture::new(alg);
        let validator = fx.validator();
        let token = fx.token(0);
        let (signing_input, sig) = token.rsplit_once('.').expect("compact JWS");
        let sig = b64().decode(sig).expect("base64url");
        let now = veto::now_ms() / 1000;

        // The same token through each path; all must accept it.
        assert!(validator.validate(&token, now).is_ok());
        let raw = UnparsedPublicKey::new(fx.verification, &fx.public);
        assert!(raw.verify(signing_input.as_bytes(), &sig).is_ok());
        let parsed = ParsedPublicKey::new(fx.verification, &fx.public).expect("public key");
        assert!(parsed.verify_sig(signing_input.as_bytes(), &sig).is_ok());

        g.bench_function(format!("{alg}/raw_unparsed"), |b| {
            b.iter(|| {
                UnparsedPublicKey::new(fx.verification, black_box(&fx.public))
                    .verify(black_box(signing_input.as_bytes()), black_box(&sig))
            })
        });
        g.bench_function(format!("{alg}/raw_parsed"), |b| {
            b.iter(|| parsed.verify_sig(black_box(signing_input.as_bytes()), black_box(&sig)))
        });
        let paired = std::sync::Once::new();
        g.bench_function(format!("{alg}/validate"), |b| {
            // Selected by the same filter as this benchmark, measured once before it.
            paired.call_once(|| {
                paired_ratios(
                    alg,
                    &|| assert!(validator.validate(black_box(&token), now).is_ok()),
                    &|| {
                        assert!(parsed
                            .verify_sig(black_box(signing_input.as_bytes()), &sig)
                            .is_ok())
                    },
                    &|| {
                        let k = UnparsedPublicKey::new(fx.verification, black_box(&fx.public));
                        assert!(k.verify(signing_input.as_bytes(), &sig).is_ok())
                    },
                )
            });
            b.iter(|| validator.validate(black_box(&token), now))
        });

        // The whole decision on first sight: a pool of distinct tokens, and a fresh decider
        // (empty cache) each time the pool is used up, outside the timed section.
        let pool: Vec<String> = (0..scaled(1000))
            .map(|i| format!("Bearer {}", fx.token(i + 1)))
            .collect();
        let rt = runtime();
        let revoked = set_1m();
        let d = decider(fx.validator(), revoked.clone(), &metrics);
        for h in &pool {
            assert_allowed(&rt.block_on(d.decide(Credential::Authorization(h))));
        }
        drop(d);
        g.bench_function(format!("{alg}/decide_miss"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let d = decider(fx.validator(), revoked.clone(), &metrics);
                    let batch = (left as usize).min(pool.len());
                    let started = Instant::now();
                    for h in &pool[..batch] {
                        black_box(rt.block_on(d.decide(Credential::Authorization(h))));
                    }
                    total += started.elapsed();
                    left -= batch as u64;
                }
                total
            })
        });
    }
    g.finish();
}

/// `validate` against both raw verifies, interleaved in batches of ~0.5 ms (the order
/// rotating every round), so drift in the load of the (shared) machine hits all three alike.
/// Prints the median and quartiles of the per-round ratios as a `paired:` line.
fn paired_ratios(alg: Alg, validate: &dyn Fn(), parsed: &dyn Fn(), unparsed: &dyn Fn()) {
    let time = |f: &dyn Fn(), n: u32| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    let batch = ((0.0005 / (time(validate, 20) / 20.0)) as u32).max(1);
    let rounds = if full_run() { 600 } else { 3 };
    let (mut vp, mut vu) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut t = [0.0; 3];
        for i in 0..3 {
            let which = (i + r) % 3;
            t[which] = time([validate, parsed, unparsed][which], batch);
        }
        vp.push(t[0] / t[1]);
        vu.push(t[0] / t[2]);
    }
    let q = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        format!("{:.3} (IQR {:.3}-{:.3})", at(0.5), at(0.25), at(0.75))
    };
    println!(
        "paired: cold/{alg}: validate/raw_parsed {}, validate/raw_unparsed {}; \
         {rounds} interleaved rounds of {batch} calls each",
        q(&mut vp),
        q(&mut vu)
    );
}

fn warm(c: &mut Criterion) {
    let mut g = c.benchmark_group("warm");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let metrics = metrics();
    let rt = runtime();
    let revoked = set_1m();
    for alg in ALGS {
        let fx = AlgFixture::new(alg);
        let header = format!("Bearer {}", fx.token(0));
        let mut variants = vec![("decide_cached_1M", revoked.clone())];
        if alg == Alg::ES256 {
            variants.push(("decide_cached_empty", Arc::new(RevokedSet::new())));
        }
        for (name, set) in variants {
            let d = decider(fx.validator(), set, &metrics);
            assert_allowed(&rt.block_on(d.decide(Credential::Authorization(&header)))); // fills the cache
            assert_allowed(
                &d.decide_cached(Credential::Authorization(&header))
                    .expect("cached"),
            );
            g.bench_function(format!("{alg}/{name}"), |b| {
                b.iter(|| d.decide_cached(black_box(Credential::Authorization(header.as_str()))))
            });
            if alg == Alg::ES256 && name == "decide_cached_1M" {
                g.bench_function(format!("{alg}/decide_async_1M"), |b| {
                    b.iter(|| {
                        rt.block_on(d.decide(black_box(Credential::Authorization(header.as_str()))))
                    })
                });
            }
        }
    }
    g.finish();
}

/// Where the rest of a gRPC check goes, in process: the whole `Authorization::check` of
/// veto (decide on a cached token + metrics + response), building and encoding veto's allow
/// response, and the same for the do-nothing server `scripts/bench-envoy.sh` compares with.
fn grpc(c: &mut Criterion) {
    use envoy_types::ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, HttpResponse, OkHttpResponse,
    };
    use envoy_types::pb::envoy::service::auth::v3::{attribute_context, AttributeContext};
    use prost::Message;
    use veto::authz::grpc::AuthzService;

    let mut g = c.benchmark_group("grpc");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let metrics = metrics();
    let rt = runtime();
    let fx = AlgFixture::new(Alg::ES256);
    let token = fx.token(0);
    let d = Arc::new(decider(fx.validator(), set_1m(), &metrics));
    let svc = AuthzService::new(d.clone(), shape(), metrics.checks.clone());
    // What Envoy sends for `GET /` from wrk with a bearer token (headers only; Envoy adds
    // addresses and ids as well).
    let headers = [
        (":authority", "127.0.0.1:10000"),
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "http"),
        ("authorization", &*format!("Bearer {token}")),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f0e4c1a-53b5-4d8e-9c2b-6d0f5f1b2a77"),
    ];
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "1234567890".into(),
                    method: "GET".into(),
                    path: "/".into(),
                    host: "127.0.0.1:10000".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let allow = rt.block_on(d.decide(Credential::Authorization(&format!("Bearer {token}"))));
    assert_allowed(&allow);
    let noop = || CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        dynamic_metadata: None,
    };
    let veto_len = svc.respond(&allow).expect("allow").encode_to_vec().len();
    println!(
        "grpc: CheckRequest {} B; CheckResponse on allow: veto {veto_len} B, noop {} B",
        req.encoded_len(),
        noop().encode_to_vec().len()
    );

    g.bench_function("veto_check", |b| {
        b.iter_batched(
            || tonic::Request::new(req.clone()),
            |r| rt.block_on(svc.check(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("veto_respond_encode", |b| {
        b.iter(|| {
            svc.respond(black_box(&allow))
                .expect("allow")
                .encode_to_vec()
        })
    });
    g.bench_function("noop_respond_encode", |b| {
        b.iter(|| black_box(noop()).encode_to_vec())
    });
    g.bench_function("check_request_decode", |b| {
        let bytes = req.encode_to_vec();
        b.iter(|| CheckRequest::decode(black_box(bytes.as_slice())))
    });
    g.finish();
}

/// The lookups at 1M and 10M entries (the targets), and at 10k and 100k for the curve of
/// check time and bytes against entries (scripts/curves.sh); each set is built only when a
/// benchmark of its group runs.
fn revoked_set(c: &mut Criterion) {
    for n in [10_000, 100_000] {
        let set: OnceLock<Arc<RevokedSet>> = OnceLock::new();
        let make = || {
            set.get_or_init(|| {
                drop(filled(scaled(n), Mix::SessionsOnly));
                Arc::new(filled(scaled(n), Mix::Mixed))
            })
            .clone()
        };
        bench_lookups(c, &format!("revoked_set_{}", human(n)), make, n);
    }
    bench_lookups(c, "revoked_set_1M", set_1m, 1_000_000);
    bench_lookups(c, "revoked_set_10M", set_10m, 10_000_000);
}

/// What one claim's 128-bit keyed digest costs: the set's XXH3-128 under a secret, against
/// the SipHash-1-3-128 it used before and foldhash (two seeds for 128 bits), for a
/// 22-character session id (the authority's) and a 58-character one.
fn claim_hash(c: &mut Criterion) {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::{BuildHasher, Hasher};
    let mut g = c.benchmark_group("claim_hash");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(2));
    let (k0, k1) = (0x0123_4567_89ab_cdef_u64, 0xfedc_ba98_7654_3210_u64);
    let fold = (
        foldhash::fast::SeedableRandomState::with_seed(k0, foldhash::SharedSeed::global_random()),
        foldhash::fast::SeedableRandomState::with_seed(k1, foldhash::SharedSeed::global_random()),
    );
    // the revoked set's hash: XXH3-128 under a 192-byte secret (src/revocation/set/key.rs)
    let secret: Vec<u8> = (0..192u32)
        .map(|i| (i.wrapping_mul(0x9e37_79b1) >> 13) as u8)
        .collect();
    for id in [
        "c2Vzc2lvbi1pZC0wMDAwMQ",
        "c2Vzc2lvbi1pZC0wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMQ",
    ] {
        let n = id.len();
        g.bench_function(format!("siphash13_128/{n}"), |b| {
            b.iter(|| {
                let mut h = SipHasher13::new_with_keys(k0, k1);
                h.write(black_box(id).as_bytes());
                let d = h.finish128();
                (d.h1, d.h2)
            })
        });
        g.bench_function(format!("xxh3_128_secret/{n}"), |b| {
            b.iter(|| xxhash_rust::xxh3::xxh3_128_with_secret(black_box(id).as_bytes(), &secret))
        });
        g.bench_function(format!("foldhash_2x64/{n}"), |b| {
            b.iter(|| {
                let id = black_box(id).as_bytes();
                let (mut a, mut b) = (fold.0.build_hasher(), fold.1.build_hasher());
                a.write(id);
                b.write(id);
                (a.finish(), b.finish())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, warm, grpc, cold, revoked_set, claim_hash);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
