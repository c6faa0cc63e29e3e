//! The module against a fake Envoy (the three callbacks it calls, recorded per thread) and a
//! real shared-memory file written by a real `RevokedSet` mirror; and differentially against
//! the sidecar's own decider.

use super::*;
use filter::{Meta, Metadata};
use serde_json::json;
use std::cell::RefCell;
use std::sync::Arc;
use veto::revocation::{Freshness, Kind, RevocationEvent, RevokedSet, ShmMirror};
use veto::token::sign::{jwks, SigningKey};
use veto::token::Alg;

/// A local reply as sent: status, headers, body, details.
type Sent = (u32, Vec<(String, String)>, String, String);

#[derive(Default)]
struct FakeStream {
    request: Vec<(String, String)>,
    sent: Option<Sent>,
    /// Dynamic metadata set: (namespace, key, value as JSON).
    metadata: Vec<(String, String, serde_json::Value)>,
    /// Counter increments: (id, label values).
    counted: Vec<(usize, Vec<String>)>,
    /// Gauges set: (id, value).
    gauges: Vec<(usize, u64)>,
}

thread_local! {
    /// Metrics defined on a configuration: (name, label names, gauge).
    static DEFINED: RefCell<Vec<(String, Vec<String>, bool)>> = const { RefCell::new(Vec::new()) };
}

fn texts(b: *mut ModuleBuffer, n: usize) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    // SAFETY: the module passes `n` buffers at `b`.
    let bs = unsafe { std::slice::from_raw_parts(b, n) };
    bs.iter().map(|b| text(b.ptr, b.length)).collect()
}

fn define(
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
    gauge: bool,
) -> u32 {
    DEFINED.with(|d| {
        let mut d = d.borrow_mut();
        d.push((text(name.ptr, name.length), texts(labels, n), gauge));
        // SAFETY: the module passes a valid out-pointer.
        unsafe { *id = d.len() - 1 };
    });
    METRICS_SUCCESS
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _c: EnvoyPtr,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
) -> u32 {
    define(name, labels, n, id, false)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    _c: EnvoyPtr,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
) -> u32 {
    define(name, labels, n, id, true)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _f: EnvoyPtr,
    id: usize,
    values: *mut ModuleBuffer,
    n: usize,
    by: u64,
) -> u32 {
    assert_eq!(by, 1);
    let values = texts(values, n);
    STREAM.with(|s| s.borrow_mut().counted.push((id, values)));
    METRICS_SUCCESS
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_set_gauge(
    _f: EnvoyPtr,
    id: usize,
    _values: *mut ModuleBuffer,
    n: usize,
    v: u64,
) -> u32 {
    assert_eq!(n, 0);
    STREAM.with(|s| s.borrow_mut().gauges.push((id, v)));
    METRICS_SUCCESS
}

fn set_meta(ns: ModuleBuffer, key: ModuleBuffer, v: serde_json::Value, list: bool) {
    let (ns, key) = (text(ns.ptr, ns.length), text(key.ptr, key.length));
    STREAM.with(|s| {
        let mut s = s.borrow_mut();
        let existing = s
            .metadata
            .iter_mut()
            .find(|(n, k, _)| *n == ns && *k == key);
        match (existing, list) {
            (Some((_, _, serde_json::Value::Array(a))), true) => a.push(v),
            (Some(e), false) => e.2 = v,
            (None, true) => s.metadata.push((ns, key, json!([v]))),
            (None, false) => s.metadata.push((ns, key, v)),
            (Some(_), true) => panic!("appending to a non-list"),
        }
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: ModuleBuffer,
) {
    set_meta(ns, key, json!(text(v.ptr, v.length)), false)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_dynamic_metadata_number(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: f64,
) {
    set_meta(ns, key, json!(v), false)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_dynamic_metadata_bool(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: bool,
) {
    set_meta(ns, key, json!(v), false)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_string(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: ModuleBuffer,
) -> bool {
    set_meta(ns, key, json!(text(v.ptr, v.length)), true);
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_number(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: f64,
) -> bool {
    set_meta(ns, key, json!(v), true);
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_dynamic_metadata_list_bool(
    _f: EnvoyPtr,
    ns: ModuleBuffer,
    key: ModuleBuffer,
    v: bool,
) -> bool {
    set_meta(ns, key, json!(v), true);
    true
}

thread_local! {
    static STREAM: RefCell<FakeStream> = RefCell::new(FakeStream::default());
}

fn text(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the module passes buffers valid for the call.
    let b = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(b).into_owned()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _f: EnvoyPtr,
    _t: u32,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    size: *mut usize,
) -> bool {
    let key = text(key.ptr, key.length);
    STREAM.with(|s| {
        let s = s.borrow();
        let values: Vec<&String> = s
            .request
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect();
        // SAFETY: the module passes valid out-pointers.
        unsafe {
            *size = values.len();
            match values.get(index) {
                Some(v) => {
                    // the fake keeps the value alive in the thread-local until the next call
                    *result = EnvoyBuffer {
                        ptr: v.as_ptr().cast(),
                        length: v.len(),
                    };
                    true
                }
                None => false,
            }
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _f: EnvoyPtr,
    _t: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    let key = text(key.ptr, key.length);
    STREAM.with(|s| {
        let mut s = s.borrow_mut();
        s.request.retain(|(k, _)| *k != key);
        if !value.ptr.is_null() {
            s.request.push((key, text(value.ptr, value.length)));
        }
    });
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _f: EnvoyPtr,
    status: u32,
    headers: *mut ModuleHeader,
    n: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    // SAFETY: the module passes `n` headers at `headers`.
    let hs = unsafe { std::slice::from_raw_parts(headers, n) };
    let hs = hs
        .iter()
        .map(|h| {
            (
                text(h.key_ptr, h.key_length),
                text(h.value_ptr, h.value_length),
            )
        })
        .collect();
    STREAM.with(|s| {
        s.borrow_mut().sent = Some((
            status,
            hs,
            text(body.ptr, body.length),
            text(details.ptr, details.length),
        ))
    });
}

const ISS: &str = "https://auth.test";

/// A sidecar's state (its revoked set mirrored into a file), its config file, its key.
struct World {
    dir: tempfile::TempDir,
    key: SigningKey,
    set: Arc<RevokedSet>,
    mirror: Arc<ShmMirror>,
    freshness: Freshness,
}

impl World {
    fn new(extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(Alg::ES256, "k1").unwrap();
        let jwks_path = dir.path().join("jwks.json");
        std::fs::write(&jwks_path, jwks(&[&key]).to_string()).unwrap();
        let shm = dir.path().join("shm");
        let toml = format!(
            r#"
[[issuers]]
issuer = "{ISS}"
audiences = ["api"]
jwks_file = "{jwks}"
leeway = "5s"
[nats]
url = "nats://127.0.0.1:1"
region = "us"
[inproxy]
shm_path = "{shm}"
[revocation]
max_staleness = "2s"
{extra}
"#,
            jwks = jwks_path.display(),
            shm = shm.display()
        );
        std::fs::write(dir.path().join("veto.toml"), toml).unwrap();
        let set = Arc::new(RevokedSet::new());
        let mirror = set.mirror_to(&shm, &["us".to_string()]).unwrap();
        let w = World {
            dir,
            key,
            set,
            mirror,
            freshness: Freshness::expecting(["us"]),
        };
        w.heartbeat(veto::now_ms());
        w
    }

    fn heartbeat(&self, at_ms: i64) {
        self.freshness.mark("us", at_ms);
        self.mirror.publish(&self.freshness, 1, true, at_ms);
    }

    fn config_json(&self) -> Vec<u8> {
        json!({"veto_config": self.dir.path().join("veto.toml")})
            .to_string()
            .into_bytes()
    }

    /// Rewrites the issuer's `jwks_file = ..` line of its veto.toml as `with`.
    fn replace_jwks_line(&self, with: &str) {
        let path = self.dir.path().join("veto.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        let jwks_line = toml.lines().find(|l| l.starts_with("jwks_file")).unwrap();
        std::fs::write(&path, toml.replace(jwks_line, with)).unwrap();
    }

    fn filter(&self) -> InProxy {
        InProxy::from_json(&self.config_json()).unwrap()
    }

    fn token(&self, sub: &str, sid: &str, iat_offset: i64) -> String {
        let now = veto::now_ms() / 1000 + iat_offset;
        self.key
            .sign(&json!({"iss": ISS, "aud": "api", "sub": sub, "sid": sid,
                          "jti": format!("j-{sid}"), "iat": now, "exp": now + 600}))
            .unwrap()
    }

    fn revoke(&self, kind: Kind, id: &str, issuer: &str) {
        let now = veto::now_ms();
        self.set.apply(
            &RevocationEvent {
                event_id: format!("e-{id}-{now}"),
                kind: kind as i32,
                id: id.into(),
                issuer: issuer.into(),
                revoked_at: now,
                expires_at: now + 3_600_000,
                origin_region: "us".into(),
                reason: "test".into(),
                urgent: false,
                revoked_at_us: 0,
            },
            now,
        );
    }
}

fn reason(v: &Verdict) -> String {
    match v {
        Verdict::Allow(..) => "ok".into(),
        Verdict::Respond { details, .. } => details.trim_start_matches("veto_").to_string(),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn allows_with_identity_and_denies_like_the_sidecar() {
    let w = World::new("");
    let f = w.filter();
    let t = bearer(&w.token("alice", "s1", 0));
    let v = f.decide(Some((1, t.as_bytes())));
    let Verdict::Allow(headers, Some(allowed)) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(
        headers,
        &vec![("x-user-id".to_string(), Some("alice".to_string()))]
    );
    let metadata = allowed.metadata().expect("rendered");
    assert_eq!(&*metadata.namespace, "veto");
    assert!(metadata
        .entries
        .contains(&("sub".into(), Meta::Str("alice".into()))));
    let v = f.decide(None);
    let Verdict::Respond {
        status,
        headers,
        body,
        ..
    } = &v
    else {
        panic!("{v:?}")
    };
    assert_eq!(*status, 401);
    assert_eq!(
        headers[0],
        ("www-authenticate", "Bearer realm=\"veto\"".into())
    );
    assert_eq!(body, r#"{"error":"unauthorized","reason":"missing_token"}"#);
    assert_eq!(reason(&f.decide(Some((2, t.as_bytes())))), "malformed");
    assert_eq!(reason(&f.decide(Some((1, b"Bearer \xff")))), "malformed");
    // revoked in the sidecar's set: refused by the module on the next request
    w.revoke(Kind::Session, "s1", ISS);
    assert_eq!(reason(&f.decide(Some((1, t.as_bytes())))), "revoked");
    let other = bearer(&w.token("alice", "s2", 0));
    assert_eq!(reason(&f.decide(Some((1, other.as_bytes())))), "ok");
    // a subject revocation kills tokens issued before it, not after
    w.revoke(Kind::Subject, "alice", "");
    assert_eq!(reason(&f.decide(Some((1, other.as_bytes())))), "revoked");
    let later = bearer(&w.token("alice", "s3", 5));
    assert_eq!(reason(&f.decide(Some((1, later.as_bytes())))), "ok");
}

#[test]
fn a_silent_sidecar_is_stale() {
    let w = World::new("");
    let f = w.filter();
    let t = bearer(&w.token("bob", "s1", 0));
    assert_eq!(reason(&f.decide(Some((1, t.as_bytes())))), "ok");
    // the heartbeat and the origin stop 3 s ago (max_staleness = 2 s)
    w.heartbeat(veto::now_ms() - 3000);
    let v = f.decide(Some((1, t.as_bytes())));
    assert_eq!(reason(&v), "feed_stale", "{v:?}");
    let Verdict::Respond {
        status, headers, ..
    } = v
    else {
        unreachable!()
    };
    assert_eq!(status, 503);
    assert!(headers.contains(&("retry-after", "1".into())));
}

#[test]
fn on_stale_allow_and_a_missing_file() {
    let w = World::new("on_stale = \"allow\"");
    std::fs::remove_file(w.dir.path().join("shm")).unwrap();
    let f = w.filter();
    let t = bearer(&w.token("bob", "s1", 0));
    assert_eq!(
        reason(&f.decide(Some((1, t.as_bytes())))),
        "ok",
        "allowed when stale"
    );
    let w = World::new("");
    std::fs::remove_file(w.dir.path().join("shm")).unwrap();
    let f = w.filter();
    let t = bearer(&w.token("bob", "s1", 0));
    assert_eq!(reason(&f.decide(Some((1, t.as_bytes())))), "feed_stale");
}

#[test]
fn configurations_are_checked() {
    let w = World::new("");
    assert!(InProxy::from_json(b"{}").is_err());
    assert!(InProxy::from_json(b"not json").is_err());
    let e = InProxy::from_json(br#"{"veto_config": "/nonexistent/veto.toml"}"#)
        .err()
        .unwrap_or_default();
    assert!(e.contains("--config"), "{e}");
    let toml = std::fs::read_to_string(w.dir.path().join("veto.toml")).unwrap();
    std::fs::write(
        w.dir.path().join("veto.toml"),
        toml.replace("[inproxy]\n", "[inproxy_off]\n")
            .replace("shm_path", "# shm_path"),
    )
    .unwrap();
    let e = InProxy::from_json(&w.config_json())
        .err()
        .unwrap_or_default();
    assert!(
        e.contains("inproxy_off") || e.contains("inproxy.shm_path"),
        "{e}"
    );
}

/// Through the C hooks: the configuration, a forged identity header overwritten, a denial
/// sent as Envoy's local reply.
#[test]
fn the_hooks_drive_envoy() {
    let w = World::new("");
    let json = w.config_json();
    let buf = |b: &[u8]| EnvoyBuffer {
        ptr: b.as_ptr().cast(),
        length: b.len(),
    };
    // SAFETY: valid buffers for the call.
    let cfg = unsafe {
        envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            buf(b"veto"),
            buf(&json),
        )
    };
    assert!(!cfg.is_null());
    // SAFETY: as above.
    let refused = unsafe {
        envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            buf(b"veto"),
            buf(b"{"),
        )
    };
    assert!(refused.is_null());
    let filter = envoy_dynamic_module_on_http_filter_new(cfg, std::ptr::null_mut());
    let t = bearer(&w.token("carol", "s1", 0));
    STREAM.with(|s| {
        *s.borrow_mut() = FakeStream {
            request: vec![
                ("authorization".into(), t.clone()),
                ("x-user-id".into(), "admin".into()),
            ],
            ..FakeStream::default()
        }
    });
    // SAFETY: the fake stream stands for Envoy's; `filter` is the configuration.
    let status = unsafe {
        envoy_dynamic_module_on_http_filter_request_headers(std::ptr::null_mut(), filter, true)
    };
    assert_eq!(status, CONTINUE);
    STREAM.with(|s| {
        let s = s.borrow();
        assert!(s.sent.is_none());
        let ids: Vec<_> = s.request.iter().filter(|(k, _)| k == "x-user-id").collect();
        assert_eq!(ids, [&("x-user-id".to_string(), "carol".to_string())]);
    });
    STREAM.with(|s| {
        *s.borrow_mut() = FakeStream {
            request: vec![("authorization".into(), "Bearer nope".into())],
            ..FakeStream::default()
        }
    });
    // SAFETY: as above.
    let status = unsafe {
        envoy_dynamic_module_on_http_filter_request_headers(std::ptr::null_mut(), filter, true)
    };
    assert_eq!(status, STOP_ITERATION);
    STREAM.with(|s| {
        let s = s.borrow();
        let (code, headers, body, details) = s.sent.clone().unwrap();
        assert_eq!(code, 401);
        assert!(headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.contains("invalid_token")));
        assert_eq!(body, r#"{"error":"invalid_token","reason":"malformed"}"#);
        assert_eq!(details, "veto_malformed");
    });
    // SAFETY: made by config_new above, destroyed once.
    unsafe { envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
    assert_eq!(PANICS.load(Ordering::Relaxed), 0);
}

/// Through the C hooks with a configuration pointer: the metrics are defined at
/// configuration, each check is counted once in Envoy (by result and reason) and once in the
/// counters file the sidecar exports, the gauges are set, and an allow (only) puts the
/// verified claims into the dynamic metadata.
#[test]
fn the_hooks_count_and_set_metadata() {
    let w = World::new("");
    let json = w.config_json();
    let buf = |b: &[u8]| EnvoyBuffer {
        ptr: b.as_ptr().cast(),
        length: b.len(),
    };
    let mut envoy_config = 0u8;
    let config_ptr: EnvoyPtr = (&mut envoy_config as *mut u8).cast();
    // SAFETY: valid buffers for the call; the fake ignores the configuration pointer.
    let cfg = unsafe {
        envoy_dynamic_module_on_http_filter_config_new(config_ptr, buf(b"veto"), buf(&json))
    };
    assert!(!cfg.is_null());
    let defined = DEFINED.with(|d| d.borrow().clone());
    let names: Vec<(&str, bool)> = defined.iter().map(|(n, _, g)| (n.as_str(), *g)).collect();
    assert_eq!(
        names,
        [
            ("veto_inproxy_checks", false),
            ("veto_inproxy_panics", false),
            ("veto_inproxy_key_reload_failures", false),
            ("veto_inproxy_table_generation", true),
            ("veto_inproxy_feed_position", true),
        ]
    );
    assert_eq!(defined[0].1, ["result", "reason"]);
    let filter = envoy_dynamic_module_on_http_filter_new(cfg, std::ptr::null_mut());
    let run = |auth: Option<String>| {
        STREAM.with(|s| {
            *s.borrow_mut() = FakeStream {
                request: auth
                    .map(|a| ("authorization".to_string(), a))
                    .into_iter()
                    .collect(),
                ..FakeStream::default()
            }
        });
        // SAFETY: the fake stream stands for Envoy's; `filter` is the configuration.
        unsafe {
            envoy_dynamic_module_on_http_filter_request_headers(std::ptr::null_mut(), filter, true)
        };
        STREAM.with(|s| std::mem::take(&mut *s.borrow_mut()))
    };
    let allowed = run(Some(bearer(&w.token("dora", "s9", 0))));
    assert_eq!(
        allowed.counted,
        [(0, vec!["allow".to_string(), "ok".to_string()])]
    );
    // the first check refreshes the gauges: generation 1, feed position 1 (World's heartbeat)
    assert_eq!(allowed.gauges, [(3, 1), (4, 1)]);
    let meta: std::collections::BTreeMap<String, serde_json::Value> = allowed
        .metadata
        .iter()
        .map(|(ns, k, v)| {
            assert_eq!(ns, "veto");
            (k.clone(), v.clone())
        })
        .collect();
    assert_eq!(meta["sub"], "dora");
    assert_eq!(meta["sid"], "s9");
    assert_eq!(meta["iss"], ISS);
    assert_eq!(meta["aud"], "api");
    assert!(meta["exp"].is_number());
    let denied = run(None);
    assert_eq!(
        denied.counted,
        [(0, vec!["deny".to_string(), "missing_token".to_string()])]
    );
    assert!(denied.metadata.is_empty(), "no metadata on a denial");
    assert!(denied.gauges.is_empty(), "gauges at most once a second");
    let malformed = run(Some("Bearer nope".into()));
    assert_eq!(malformed.counted[0].1, ["deny", "malformed"]);
    // a keys generation whose file is corrupt: counted once, on the request that found it
    let keys = veto::jwks::published_keys_path(&w.dir.path().join("shm"));
    std::fs::write(&keys, "{\"format\": 1, \"issuers\": {").unwrap();
    w.mirror.bump_keys_generation();
    let first = run(None);
    assert_eq!(first.counted[0], (2, vec![]), "{:?}", first.counted);
    assert_eq!(first.counted[1].1, ["deny", "missing_token"]);
    assert_eq!(run(None).counted.len(), 1, "once per generation");
    // the same counts in the file beside the shared memory, as the sidecar reads it
    let file =
        veto_shm::counters::read(&veto_shm::counters::path_beside(&w.dir.path().join("shm")))
            .unwrap();
    let count = |r: &str, s: &str| {
        file.checks
            .iter()
            .find(|(fr, fs, _)| fr == r && fs == s)
            .map(|c| c.2)
    };
    assert_eq!(count("allow", "ok"), Some(1));
    assert_eq!(count("deny", "missing_token"), Some(3));
    assert_eq!(count("deny", "malformed"), Some(1));
    assert_eq!(count("deny", "revoked"), Some(0));
    assert_eq!(count("error", "panic"), Some(0));
    assert_eq!(count("error", "pending"), Some(0));
    assert_eq!(file.panics, 0);
    assert_eq!(file.key_reload_failures, 1);
    assert_eq!(file.checks.len(), veto::decision::outcomes().len());
    // SAFETY: made by config_new above, destroyed once.
    unsafe { envoy_dynamic_module_on_http_filter_config_destroy(cfg) };
}

/// An empty `authz.metadata_namespace` sets no dynamic metadata; an array claim is a list.
#[test]
fn metadata_follows_the_namespace_setting() {
    let w = World::new("[authz]\nmetadata_namespace = \"\"\n");
    let f = w.filter();
    let t = bearer(&w.token("erin", "s2", 0));
    let Verdict::Allow(_, m) = f.decide(Some((1, t.as_bytes()))) else {
        panic!("allowed")
    };
    assert!(m.is_none());
    let claims = json!({"aud": ["a", 1, true, {"x": 1}], "sub": "s", "n": null, "o": {"k": "v"}});
    let m = Metadata::of(&Arc::from("veto"), claims.as_object().unwrap());
    assert_eq!(
        m.entries,
        [
            (
                "aud".to_string(),
                Meta::List(vec![
                    Meta::Str("a".into()),
                    Meta::Num(1.0),
                    Meta::Bool(true),
                    Meta::Str(r#"{"x":1}"#.into())
                ])
            ),
            ("o".to_string(), Meta::Str(r#"{"k":"v"}"#.into())),
            ("sub".to_string(), Meta::Str("s".into())),
        ]
    );
}

/// The module's decision and the sidecar's agree on every token of a generated population
/// under generated revocations (session, token, subject; one issuer or any).
#[test]
fn agrees_with_the_sidecar_decider() {
    use veto::decision::{Credential, Decider, DecisionMetrics};
    let w = World::new("");
    let module = w.filter();
    let settings = veto::config::Settings::load(&w.dir.path().join("veto.toml")).unwrap();
    // the sidecar's decider over the very set the mirror copies, with the same freshness
    let iss = &settings.issuers[0];
    let (keys, _) = veto::token::KeySet::from_jwks(
        jwks(&[&w.key]).to_string().as_bytes(),
        &iss.parsed_algorithms().unwrap(),
    )
    .unwrap();
    let store = Arc::new(veto::token::KeyStore::new(Some(keys)));
    let identity = veto::authz::Identity::new(settings.authz.headers.clone());
    let freshness = Arc::new(veto::sidecar::expected_origins(&settings));
    freshness.mark("us", veto::now_ms());
    let sidecar: Decider<(), RevokedSet> = Decider::new(
        veto::token::Validator {
            issuers: vec![veto::sidecar::issuer_policy(
                iss,
                iss.parsed_algorithms().unwrap(),
                store,
            )],
            max_token_bytes: settings.authz.max_token_bytes,
        },
        w.set.clone(),
        freshness,
        vec![veto::decision::IssuerHooks {
            leeway: 5,
            refetch: None,
        }],
        veto::sidecar::decider_config(&settings, &identity),
        DecisionMetrics::register(&prometheus::Registry::new()),
    );
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let tokens: Vec<String> = (0..600)
        .map(|i| {
            let sub = format!("u{}", next(40));
            bearer(&w.token(&sub, &format!("s{i}"), -(next(3) as i64)))
        })
        .collect();
    let kinds = [Kind::Session, Kind::Token, Kind::Subject];
    let (mut allowed, mut revoked) = (0, 0);
    for round in 0..4 {
        for _ in 0..60 {
            let kind = kinds[next(3) as usize];
            let id = match kind {
                Kind::Session => format!("s{}", next(600)),
                Kind::Token => format!("j-s{}", next(600)),
                _ => format!("u{}", next(40)),
            };
            let issuer = if next(2) == 0 { ISS } else { "" };
            w.revoke(kind, &id, issuer);
        }
        w.heartbeat(veto::now_ms());
        for t in &tokens {
            let theirs = sidecar
                .decide_cached(Credential::Authorization(t))
                .map(|d| d.reason_label().to_string());
            let theirs = match theirs {
                Some(r) => r,
                None => now_or_never_label(&sidecar, t),
            };
            let ours = reason(&module.decide(Some((1, t.as_bytes()))));
            assert_eq!(ours, theirs, "round {round}");
            match ours.as_str() {
                "ok" => allowed += 1,
                "revoked" => revoked += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert!(
        allowed > 100 && revoked > 100,
        "{allowed} allowed, {revoked} revoked"
    );
}

fn now_or_never_label(d: &veto::decision::Decider<(), RevokedSet>, t: &str) -> String {
    use std::future::Future as _;
    let mut f = std::pin::pin!(d.decide(veto::decision::Credential::Authorization(t)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v.reason_label().to_string(),
        std::task::Poll::Pending => "pending".into(),
    }
}

/// Growth switches the file's generation: a revocation written into the new generation is
/// refused on the very next decision (no rate limit on following a superseded file).
#[test]
fn a_revocation_right_after_growth_is_seen() {
    let w = World::new("");
    let f = w.filter();
    let t = bearer(&w.token("dave", "target", 0));
    assert_eq!(reason(&f.decide(Some((1, t.as_bytes())))), "ok");
    let before = w.mirror.generation();
    for i in 0..2000 {
        w.revoke(Kind::Session, &format!("filler-{i}"), ISS);
    }
    assert!(w.mirror.generation() > before, "the table grew");
    w.revoke(Kind::Session, "target", ISS);
    assert_eq!(reason(&f.decide(Some((1, t.as_bytes())))), "revoked");
}

/// The sidecar's side of the keys: its store for the issuer, published beside the mirror.
struct Sidecar {
    store: Arc<veto::token::KeyStore>,
    publisher: veto::jwks::KeysPublisher,
}

impl Sidecar {
    fn new(w: &World) -> Sidecar {
        let store = Arc::new(veto::token::KeyStore::new(None));
        let publisher = veto::jwks::KeysPublisher::new(
            &w.dir.path().join("shm"),
            vec![(ISS.into(), store.clone())],
            veto::jwks::PublishedMetrics::register(&prometheus::Registry::new()),
        );
        Sidecar { store, publisher }
    }

    /// Loads `keys` (as a refresh would) and publishes them as the heartbeat does.
    fn trust(&mut self, w: &World, keys: &[&SigningKey]) {
        let doc = jwks(keys).to_string();
        let set = veto::token::KeySet::from_jwks(doc.as_bytes(), &[Alg::ES256])
            .unwrap()
            .0;
        self.store.replace(set);
        assert!(self.publisher.publish_if_changed().unwrap());
        w.mirror.bump_keys_generation();
    }
}

fn signed(key: &SigningKey, sub: &str, sid: &str) -> String {
    let now = veto::now_ms() / 1000;
    bearer(
        &key.sign(&json!({"iss": ISS, "aud": "api", "sub": sub, "sid": sid,
                          "jti": format!("j-{sid}"), "iat": now, "exp": now + 600}))
            .unwrap(),
    )
}

/// A `jwks_url`-only issuer is accepted; its tokens are `unknown_kid` until the sidecar
/// publishes keys, then a rotation (a key added, then the old one withdrawn) is followed on
/// the next request, a cached token of the withdrawn key included.
#[test]
fn a_jwks_url_issuer_follows_the_keys_the_sidecar_publishes() {
    let w = World::new("");
    w.replace_jwks_line("jwks_url = \"http://127.0.0.1:9/jwks.json\"");
    let f = w.filter();
    let t1 = signed(&w.key, "erin", "s1");
    let decide = |t: &str| reason(&f.decide(Some((1, t.as_bytes())))).to_string();
    assert_eq!(decide(&t1), "unknown_kid", "no keys published yet");
    assert_eq!(f.keys_generation(), 0);
    let mut sidecar = Sidecar::new(&w);
    sidecar.trust(&w, &[&w.key]);
    assert_eq!(decide(&t1), "ok");
    assert_eq!(f.keys_generation(), 1);
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    let t2 = signed(&k2, "erin", "s2");
    assert_eq!(decide(&t2), "unknown_kid");
    sidecar.trust(&w, &[&w.key, &k2]);
    assert_eq!(decide(&t2), "ok", "the new key, on the next request");
    assert_eq!(decide(&t1), "ok");
    sidecar.trust(&w, &[&k2]);
    let v = f.decide(Some((1, t1.as_bytes())));
    assert!(
        matches!(v, Verdict::Respond { status: 401, .. }),
        "a cached token of a withdrawn key: {v:?}"
    );
    assert_eq!(decide(&signed(&w.key, "erin", "s3")), "unknown_kid");
    assert_eq!(decide(&t2), "ok");
    assert_eq!((f.keys_generation(), f.key_reload_failures()), (3, 0));
    // a filter configured now starts with the published keys
    let g = w.filter();
    assert_eq!(reason(&g.decide(Some((1, t2.as_bytes())))), "ok");
    assert_eq!(g.keys_generation(), 3);
}

/// A keys file that is corrupt or missing keeps the keys in use; each bad generation is
/// tried (and counted) once; the next good one is loaded.
#[test]
fn a_bad_keys_file_keeps_the_keys_in_use() {
    let w = World::new("");
    let f = w.filter();
    let t1 = signed(&w.key, "fay", "s1");
    let decide = |t: &str| reason(&f.decide(Some((1, t.as_bytes())))).to_string();
    assert_eq!(decide(&t1), "ok", "the configured jwks_file");
    let path = veto::jwks::published_keys_path(&w.dir.path().join("shm"));
    for bad in [Some("{\"format\": 1, \"issuers\": {"), None] {
        match bad {
            Some(doc) => std::fs::write(&path, doc).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let g = w.mirror.bump_keys_generation();
        let before = f.key_reload_failures();
        let mut flagged = 0;
        for i in 0..20 {
            let t = signed(&w.key, "fay", &format!("b{g}-{i}"));
            let c = f.check(Some((1, t.as_bytes())));
            assert_eq!(reason(&c.verdict), "ok");
            flagged += usize::from(c.key_reload_failed);
        }
        assert_eq!(f.key_reload_failures(), before + 1, "once per generation");
        assert_eq!(
            flagged, 1,
            "one request carries the failure to Envoy's counter"
        );
        assert_eq!(f.keys_generation(), g);
    }
    assert_eq!(f.key_reload_failures(), 2);
    // and the counters file the sidecar exports says so
    let counters = veto_shm::counters::path_beside(&w.dir.path().join("shm"));
    assert_eq!(
        veto_shm::counters::read(&counters)
            .unwrap()
            .key_reload_failures,
        2
    );
    // the next good publication replaces the configured keys
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    Sidecar::new(&w).trust(&w, &[&k2]);
    assert_eq!(decide(&signed(&k2, "fay", "s2")), "ok");
    assert_eq!(decide(&signed(&w.key, "fay", "s3")), "unknown_kid");
    assert_eq!(f.key_reload_failures(), 2);
}

/// Growth switches the file: the keys generation comes along (no reload, nothing lost), and
/// a publication after it is seen on the new file.
#[test]
fn the_keys_generation_survives_growth() {
    let w = World::new("");
    let f = w.filter();
    let mut sidecar = Sidecar::new(&w);
    sidecar.trust(&w, &[&w.key]);
    let t1 = signed(&w.key, "gus", "s1");
    assert_eq!(reason(&f.decide(Some((1, t1.as_bytes())))), "ok");
    let before = w.mirror.generation();
    for i in 0..2000 {
        w.revoke(Kind::Session, &format!("filler-{i}"), ISS);
    }
    assert!(w.mirror.generation() > before, "the table grew");
    assert_eq!(reason(&f.decide(Some((1, t1.as_bytes())))), "ok");
    assert_eq!(f.keys_generation(), 1);
    let k2 = SigningKey::generate(Alg::ES256, "k2").unwrap();
    sidecar.trust(&w, &[&k2]);
    assert_eq!(w.mirror.keys_generation(), 2);
    let t2 = signed(&k2, "gus", "s2");
    assert_eq!(reason(&f.decide(Some((1, t2.as_bytes())))), "ok");
    assert_eq!((f.keys_generation(), f.key_reload_failures()), (2, 0));
}

/// An issuer with both a JWKS and an HMAC secret: the published file never holds the secret,
/// and the module keeps its own (read from `hmac_secret_file`) across every reload, a cached
/// HS256 token included.
#[test]
fn an_hmac_secret_is_never_published_and_survives_reloads() {
    let w = World::new("");
    let hs = SigningKey::generate(Alg::HS256, "hs").unwrap();
    let secret_path = w.dir.path().join("hs.secret");
    std::fs::write(&secret_path, hs.pkcs8_der()).unwrap();
    w.replace_jwks_line(&format!(
                "jwks_url = \"http://127.0.0.1:9/jwks.json\"\nalgorithms = [\"ES256\", \"HS256\"]\nhmac_secret_file = \"{}\"",
                secret_path.display()
            ),);
    let f = w.filter();
    let decide = |t: &str| reason(&f.decide(Some((1, t.as_bytes())))).to_string();
    let hs_token = signed(&hs, "hal", "s1");
    assert_eq!(decide(&hs_token), "ok", "before any publication");
    let mut sidecar = Sidecar::new(&w);
    // the sidecar's store holds the secret too, as its refresher puts it there
    let doc = jwks(&[&w.key]).to_string();
    let set = veto::token::KeySet::from_jwks(doc.as_bytes(), &[Alg::ES256, Alg::HS256])
        .unwrap()
        .0
        .with_hmac_secret(Some(hs.pkcs8_der().into()));
    sidecar.store.replace(set);
    assert!(sidecar.publisher.publish_if_changed().unwrap());
    w.mirror.bump_keys_generation();
    let published =
        std::fs::read(veto::jwks::published_keys_path(&w.dir.path().join("shm"))).unwrap();
    let published: serde_json::Value = serde_json::from_slice(&published).unwrap();
    let keys = published["issuers"][ISS]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "the EC key alone: {published}");
    for k in keys {
        let members = k.as_object().unwrap().keys();
        assert!(members
            .into_iter()
            .all(|m| veto::token::PUBLIC_MEMBERS.contains(&m.as_str())));
        assert_eq!(k["kty"], "EC");
    }
    assert_eq!(decide(&hs_token), "ok", "cached, after the reload");
    assert_eq!(
        decide(&signed(&hs, "hal", "s2")),
        "ok",
        "verified after the reload"
    );
    assert_eq!(decide(&signed(&w.key, "hal", "s3")), "ok");
    assert_eq!((f.keys_generation(), f.key_reload_failures()), (1, 0));
}
