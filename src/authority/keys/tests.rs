use super::*;
use crate::token::{IssuerPolicy, Validator};

const S: i64 = 1000;
const R: Duration = Duration::from_secs(100);

// --- pure state derivation ---------------------------------------------------------------

/// (states, current kid, next change) of a derivation.
type Seen = Option<(Vec<Option<KeyState>>, String, Option<i64>)>;

/// (what, keys, now, expected (states, current kid, next change)).
type Row<'a> = (
    &'a str,
    &'a [(&'a str, i64)],
    i64,
    Option<(Vec<Option<KeyState>>, &'a str, Option<i64>)>,
);

fn states(keys: &[(&str, i64)], now: i64) -> Seen {
    derive(keys, now, R).map(|d| (d.states, keys[d.current].0.to_string(), d.next_change_ms))
}

#[test]
fn states_follow_the_clock() {
    use KeyState::{Current as C, Next as N, Retired as Rt};
    let two = [("a", 100 * S), ("b", 200 * S)];
    let three = [("a", 0), ("b", 100 * S), ("c", 200 * S)];
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("nothing at all", &[], 0, None),
        ("before the first activation", &two, 99 * S, None),
        ("exactly at the first activation", &two, 100 * S, Some((vec![Some(C), Some(N)], "a", Some(200 * S)))),
        ("just before the second", &two, 200 * S - 1, Some((vec![Some(C), Some(N)], "a", Some(200 * S)))),
        ("exactly at the second", &two, 200 * S, Some((vec![Some(Rt), Some(C)], "b", Some(300 * S)))),
        ("last ms of retirement", &two, 300 * S - 1, Some((vec![Some(Rt), Some(C)], "b", Some(300 * S)))),
        ("exactly at the retirement boundary", &two, 300 * S, Some((vec![None, Some(C)], "b", None))),
        ("long after", &two, 10_000 * S, Some((vec![None, Some(C)], "b", None))),
        ("two nexts: the earlier is the next change", &three, 50 * S, Some((vec![Some(C), Some(N), Some(N)], "a", Some(100 * S)))),
        // a's successor is b (activated at 100): a drops at 200, exactly when c takes over
        ("chain, at the third activation", &three, 200 * S, Some((vec![None, Some(Rt), Some(C)], "c", Some(300 * S)))),
        ("chain, a dropped, b retired", &three, 250 * S, Some((vec![None, Some(Rt), Some(C)], "c", Some(300 * S)))),
        ("epoch keys (no activation file)", &[("a", 0)], 0, Some((vec![Some(C)], "a", None))),
    ];
    for (what, keys, now, want) in table {
        let want = want.map(|(s, cur, next)| (s, cur.to_string(), next));
        assert_eq!(states(keys, now), want, "{what}");
    }
}

#[test]
fn equal_activation_times_are_ordered_by_kid_in_any_input_order() {
    for keys in [
        [("a", 10 * S), ("b", 10 * S)],
        [("b", 10 * S), ("a", 10 * S)],
    ] {
        let d = derive(&keys, 10 * S, R).unwrap();
        assert_eq!(keys[d.current].0, "b");
        let a = keys.iter().position(|k| k.0 == "a").unwrap();
        assert_eq!(d.states[a], Some(KeyState::Retired));
        assert_eq!(d.next_change_ms, Some(10 * S + 100 * S));
    }
}

#[test]
fn lead_is_judged_against_jwks_max_age() {
    let lead = |kid: &str, published: i64, activate: i64| Lead {
        kid: kid.into(),
        published_at_ms: published,
        activate_at_ms: activate,
    };
    let max_age = Duration::from_secs(300);
    let w = check_lead(
        &[
            lead("hour", 0, 3600 * S),
            lead("exact", 0, 300 * S),
            lead("short", 0, 299 * S),
            lead("late", 100 * S, 0),
        ],
        max_age,
    );
    assert_eq!(
        w,
        vec![
            LeadWarning {
                kid: "short".into(),
                lead_ms: 299 * S,
                needed_ms: 300 * S
            },
            LeadWarning {
                kid: "late".into(),
                lead_ms: -100 * S,
                needed_ms: 300 * S
            },
        ]
    );
}

#[test]
fn activation_times_parse_and_round_trip() {
    let now = 1_800_000_000 * S;
    assert_eq!(parse_activate_at("now", now), Ok(now));
    assert_eq!(parse_activate_at("+1h", now), Ok(now + 3600 * S));
    assert_eq!(
        parse_activate_at("2026-12-02T10:00:00Z", now),
        Ok(1_796_205_600 * S)
    );
    for bad in [
        "tomorrow",
        "+",
        "+1 fortnight",
        "2026-12-02T10:00:00+01:00",
        "2026-12-02",
        "",
    ] {
        assert!(parse_activate_at(bad, now).is_err(), "{bad:?}");
    }
    for at in [0, 1_796_205_600 * S, 1_796_205_600 * S + 250] {
        assert_eq!(parse_activation(activation_json(at).as_bytes()), Ok(at));
    }
    assert_eq!(format_ms(1_796_205_600 * S), "2026-12-02T10:00:00Z");
    assert!(parse_activation(br#"{"activate_at":"2026-12-02T10:00:00Z","x":1}"#).is_err());
    assert!(parse_activation(b"2026-12-02T10:00:00Z").is_err());
}

#[test]
fn names() {
    assert_eq!(split_key_file_name("k1.ES256.der"), Some(("k1", "ES256")));
    assert_eq!(
        split_key_file_name("2026.12.k.EdDSA.der"),
        Some(("2026.12.k", "EdDSA"))
    );
    assert_eq!(split_key_file_name("ES256.der"), None);
    assert_eq!(split_key_file_name("k1.ES256.pem"), None);
    assert!(valid_name("k-1_a.ES256.der"));
    for bad in ["", ".k.ES256.der", "..data", "k 1.der", "k/1.der", "ké.der"] {
        assert!(!valid_name(bad), "{bad:?}");
    }
}

// --- loading -----------------------------------------------------------------------------

/// A config whose key directory is `dir` (R = 15m + 30s + 5m by default).
fn cfg(dir: &Path) -> Authority {
    serde_json::from_value(json!({
        "issuer": "https://iss",
        "audiences": ["api"],
        "keys_dir": dir,
        "keys_reload": "1h",
        "admin_token_file": "/dev/null",
        "refresh_key_file": "/dev/null",
    }))
    .unwrap()
}

fn put_key(dir: &Path, kid: &str, alg: Alg, activate_at: Option<i64>) -> SigningKey {
    let k = SigningKey::generate(alg, kid).unwrap();
    std::fs::write(dir.join(key_file_name(kid, alg)), k.pkcs8_der()).unwrap();
    if let Some(at) = activate_at {
        std::fs::write(dir.join(activation_file_name(kid)), activation_json(at)).unwrap();
    }
    k
}

const NOW: i64 = 1_800_000_000 * S;

#[test]
fn loads_a_directory_with_mixed_algorithms_and_activation_files() {
    let d = tempfile::tempdir().unwrap();
    put_key(d.path(), "old", Alg::ES256, None);
    put_key(d.path(), "cur", Alg::EdDSA, Some(NOW - 60 * S));
    put_key(d.path(), "new", Alg::RS256, Some(NOW + 3600 * S));
    let ring = Keyring::load(&cfg(d.path()), NOW).unwrap();
    assert_eq!(ring.retire_after(), Duration::from_secs(900 + 30 + 300));
    assert_eq!(ring.current().kid, "cur");
    assert_eq!(ring.current().alg, Alg::EdDSA);
    let keys = ring.keys();
    let view: Vec<(&str, KeyState, i64)> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.state, k.activate_at_ms))
        .collect();
    // old's successor (cur) activated 60 s ago: well within retire_after
    assert_eq!(
        view,
        vec![
            ("cur", KeyState::Current, NOW - 60 * S),
            ("new", KeyState::Next, NOW + 3600 * S),
            ("old", KeyState::Retired, 0),
        ]
    );
    assert_eq!(ring.algorithms(), vec![Alg::EdDSA, Alg::RS256, Alg::ES256]);
    assert_eq!(ring.next_change_ms(), Some(NOW - 60 * S + 1230 * S));
}

#[cfg(unix)]
#[test]
fn kubernetes_secret_layout_dotfiles_and_other_files_are_ignored() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("..2026_12_02_10_00_00.123");
    std::fs::create_dir(&real).unwrap();
    put_key(&real, "k1", Alg::ES256, Some(NOW - S));
    std::os::unix::fs::symlink("..2026_12_02_10_00_00.123", d.path().join("..data")).unwrap();
    for f in ["k1.ES256.der", "k1.json"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), d.path().join(f)).unwrap();
    }
    // garbage that must not be read
    std::fs::write(d.path().join(".hidden.ES256.der"), b"junk").unwrap();
    std::fs::write(d.path().join("README.txt"), b"junk").unwrap();
    std::fs::create_dir(d.path().join("sub.der")).unwrap();
    let ring = Keyring::load(&cfg(d.path()), NOW).unwrap();
    assert_eq!(ring.current().kid, "k1");
    assert_eq!(ring.keys().len(), 1);
}

fn load_err(setup: impl FnOnce(&Path)) -> (KeyError, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let e = Keyring::load(&cfg(d.path()), NOW)
        .err()
        .expect("load must fail");
    (e, d.path().to_path_buf())
}

#[test]
fn bad_material_is_an_error_naming_the_file() {
    let (e, dir) = load_err(|d| {
        put_key(d, "good", Alg::ES256, None);
        std::fs::write(d.join("bad.ES256.der"), b"\x30\x03\x02\x01\x00").unwrap();
    });
    assert!(
        matches!(
            e,
            KeyError::Material {
                alg: Alg::ES256,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&dir.join("bad.ES256.der").display().to_string()),
        "{e}"
    );

    // an EdDSA key under an ES256 name is bad material too
    let (e, _) = load_err(|d| {
        let k = SigningKey::generate(Alg::EdDSA, "x").unwrap();
        std::fs::write(d.join("x.ES256.der"), k.pkcs8_der()).unwrap();
    });
    assert!(matches!(e, KeyError::Material { .. }), "{e}");
}

#[test]
fn hmac_and_unknown_algorithms_are_refused() {
    for alg in ["HS256", "ES384", "none", "es256"] {
        let (e, dir) = load_err(|d| {
            put_key(d, "good", Alg::ES256, None);
            std::fs::write(d.join(format!("k.{alg}.der")), [0u8; 32]).unwrap();
        });
        assert!(
            matches!(&e, KeyError::Alg { alg: a, .. } if a == alg),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains(&dir.join(format!("k.{alg}.der")).display().to_string()));
    }
}

#[test]
fn only_the_configured_algorithms_are_loaded() {
    let dir = tempfile::tempdir().unwrap();
    put_key(dir.path(), "a", Alg::ES256, None);
    put_key(dir.path(), "b", Alg::EdDSA, Some(NOW - 10 * S));
    let mut c = cfg(dir.path());
    assert!(
        Keyring::load(&c, NOW).is_ok(),
        "every signing algorithm by default"
    );
    c.algorithms = vec!["ES256".into()];
    let e = Keyring::load(&c, NOW)
        .err()
        .expect("an EdDSA key where only ES256 is allowed");
    assert!(
        matches!(&e, KeyError::Alg { alg, .. } if alg == "EdDSA"),
        "{e}"
    );
    c.algorithms = vec!["ES256".into(), "EdDSA".into()];
    assert_eq!(Keyring::load(&c, NOW).unwrap().current().alg, Alg::EdDSA);
}

#[test]
fn directory_errors() {
    let (e, _) = load_err(|d| {
        put_key(d, "k", Alg::ES256, Some(NOW + 3600 * S));
    });
    assert!(
        matches!(e, KeyError::NoCurrentKey { first: Some(_), .. }),
        "{e}"
    );
    let (e, _) = load_err(|_| {});
    assert!(
        matches!(e, KeyError::NoCurrentKey { first: None, .. }),
        "{e}"
    );
    let (e, _) = load_err(|d| {
        put_key(d, "k", Alg::ES256, None);
        std::fs::write(d.join(activation_file_name("kk")), activation_json(0)).unwrap();
    });
    assert!(
        matches!(&e, KeyError::Orphan { kid, .. } if kid == "kk"),
        "{e}"
    );
    let (e, _) = load_err(|d| {
        put_key(d, "k", Alg::ES256, None);
        put_key(d, "k", Alg::RS256, None);
    });
    assert!(matches!(e, KeyError::DuplicateKid { .. }), "{e}");
    let (e, _) = load_err(|d| {
        put_key(d, "k", Alg::ES256, None);
        std::fs::write(d.join("k.json"), br#"{"activate_at":"soon"}"#).unwrap();
    });
    assert!(matches!(e, KeyError::Activation { .. }), "{e}");
    let (e, _) = load_err(|d| {
        put_key(d, "k", Alg::ES256, None);
        std::fs::write(d.join("k 2.ES256.der"), b"").unwrap();
    });
    assert!(matches!(e, KeyError::BadName { .. }), "{e}");
    let (e, _) = load_err(|d| {
        std::fs::write(
            d.join("big.ES256.der"),
            vec![0u8; MAX_KEY_FILE_BYTES as usize + 1],
        )
        .unwrap();
    });
    assert!(matches!(e, KeyError::TooLarge { .. }), "{e}");
    let e = Keyring::load(&cfg(Path::new("/nonexistent/veto-keys")), NOW)
        .err()
        .unwrap();
    assert!(matches!(e, KeyError::Dir { .. }), "{e}");
}

#[test]
fn errors_never_carry_key_bytes() {
    // a DER file that is almost a key: the error names the file and the algorithm only
    let d = tempfile::tempdir().unwrap();
    let k = SigningKey::generate(Alg::ES256, "k").unwrap();
    let mut der = k.pkcs8_der().to_vec();
    der.truncate(der.len() - 3);
    std::fs::write(d.path().join("k.ES256.der"), &der).unwrap();
    let e = Keyring::load(&cfg(d.path()), NOW).err().unwrap();
    let text = format!("{e} {e:?}");
    use base64::Engine;
    for enc in [
        crate::token::b64().encode(&der[..16]),
        base64::engine::general_purpose::STANDARD.encode(&der[..16]),
        der[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ] {
        assert!(!text.contains(&enc), "{text}");
    }
}

// --- JWKS and verification ---------------------------------------------------------------

#[test]
fn jwks_has_no_private_members_and_verifies_tokens_of_the_current_key() {
    let d = tempfile::tempdir().unwrap();
    put_key(d.path(), "ec", Alg::ES256, Some(NOW - 2000 * S));
    put_key(d.path(), "rsa", Alg::RS256, Some(NOW - 10 * S));
    put_key(d.path(), "ed", Alg::EdDSA, Some(NOW + 3600 * S));
    let store = Arc::new(KeyStore::new(None));
    let ring = Keyring::load(&cfg(d.path()), NOW)
        .unwrap()
        .with_store(store.clone());
    let doc: Value = serde_json::from_slice(&ring.jwks_json()).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    // ec is retired: its successor (rsa) activated 10 s ago, so it is still published
    assert_eq!(keys.len(), 3);
    for k in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(k.get(private).is_none(), "{private} in {k}");
        }
        assert_eq!(k["use"], "sig");
    }
    assert_eq!(keys[0]["kid"], "rsa", "current first");
    let (set, skipped) = KeySet::from_jwks(&ring.jwks_json(), &SIGNING_ALGS).unwrap();
    assert_eq!((set.len(), skipped), (3, 0));
    assert_eq!(ring.public_keyset().len(), 3);

    let claims = json!({"iss":"https://iss","aud":"api","sub":"u","sid":"s",
        "iat": NOW / 1000, "exp": NOW / 1000 + 600});
    let token = ring.current().sign(&claims).unwrap();
    for keys in [Arc::new(KeyStore::new(Some(set))), store.clone()] {
        let v = Validator {
            issuers: vec![IssuerPolicy::for_tests(&SIGNING_ALGS, keys)],
            max_token_bytes: 8192,
        };
        let ok = v.validate(&token, NOW / 1000).unwrap();
        assert_eq!(ok.kid.as_deref(), Some("rsa"));
    }
    // a token signed by a key that is not in the directory does not verify
    let stranger = SigningKey::generate(Alg::RS256, "rsa").unwrap();
    let v = Validator {
        issuers: vec![IssuerPolicy::for_tests(&SIGNING_ALGS, store)],
        max_token_bytes: 8192,
    };
    assert!(v
        .validate(&stranger.sign(&claims).unwrap(), NOW / 1000)
        .is_err());
}

// --- reloads -----------------------------------------------------------------------------

#[test]
fn reload_follows_the_clock_and_the_directory_and_keeps_last_good_keys() {
    let d = tempfile::tempdir().unwrap();
    put_key(d.path(), "a", Alg::ES256, Some(NOW - 3600 * S));
    let reg = Registry::new();
    let m = KeyMetrics::register(&reg);
    let store = Arc::new(KeyStore::new(None));
    let ring = Keyring::load(&cfg(d.path()), NOW)
        .unwrap()
        .with_metrics(m.clone())
        .with_store(store.clone());
    assert_eq!(m.keys(KeyState::Current).get(), 1);
    assert_eq!(m.next_activates_in.get(), -1);
    assert_eq!(m.last_load_ok.get(), 1);
    let g0 = (ring.generation(), store.generation());

    // nothing changed
    assert!(!ring.reload(NOW + S).unwrap());
    assert_eq!((ring.generation(), store.generation()), g0);
    assert_eq!(m.current_age.get(), 3601);

    // a next key appears: published, not signing
    put_key(d.path(), "b", Alg::ES256, Some(NOW + 3600 * S));
    assert!(ring.reload(NOW + 2 * S).unwrap());
    assert_eq!(ring.current().kid, "a");
    assert_eq!(store.get().unwrap().len(), 2);
    assert_eq!(store.generation(), g0.1 + 1);
    assert_eq!(m.keys(KeyState::Next).get(), 1);
    assert_eq!(m.next_activates_in.get(), 3598);

    // bad material: counted, last good keys keep serving
    std::fs::write(d.path().join("c.ES256.der"), b"junk").unwrap();
    let e = ring.reload(NOW + 3 * S).unwrap_err();
    assert!(e.to_string().contains("c.ES256.der"), "{e}");
    assert_eq!((m.load_errors.get(), m.last_load_ok.get()), (1, 0));
    assert_eq!(ring.current().kid, "a");
    assert_eq!(ring.keys().len(), 2);

    // ... and still turn over at the activation time
    assert!(ring.reload(NOW + 3600 * S).is_err());
    assert_eq!(ring.current().kid, "b");
    assert_eq!(m.keys(KeyState::Retired).get(), 1);
    assert_eq!(m.load_errors.get(), 2);

    // fixed: recovers
    std::fs::remove_file(d.path().join("c.ES256.der")).unwrap();
    assert!(!ring.reload(NOW + 3601 * S).unwrap());
    assert_eq!(m.last_load_ok.get(), 1);

    // a's successor activated at NOW+3600: a is dropped at NOW+3600+1230
    let cfg = cfg(d.path());
    let drop_at = NOW + 3600 * S + duration_ms(retire_after(&cfg));
    assert_eq!(ring.next_change_ms(), Some(drop_at));
    assert!(!ring.reload(drop_at - 1).unwrap());
    assert_eq!(ring.keys().len(), 2);
    assert!(ring.reload(drop_at).unwrap());
    assert_eq!(ring.keys().len(), 1);
    assert_eq!(store.get().unwrap().len(), 1);
    assert_eq!(m.keys(KeyState::Retired).get(), 0);
    assert_eq!(ring.next_change_ms(), None);

    // an unusable directory (every key in the future) keeps the last good keys
    std::fs::remove_file(d.path().join("b.ES256.der")).unwrap();
    std::fs::remove_file(d.path().join("b.json")).unwrap();
    std::fs::remove_file(d.path().join("a.json")).unwrap();
    std::fs::remove_file(d.path().join("a.ES256.der")).unwrap();
    put_key(d.path(), "z", Alg::ES256, Some(NOW + 99_999 * S));
    assert!(matches!(
        ring.reload(drop_at + S),
        Err(KeyError::NoCurrentKey { .. })
    ));
    assert_eq!(ring.current().kid, "b");
}

#[tokio::test]
async fn run_switches_at_the_activation_time_not_at_the_next_reload() {
    let d = tempfile::tempdir().unwrap();
    let now = crate::now_ms();
    put_key(d.path(), "a", Alg::ES256, Some(now - 3600 * S));
    let at = now + 1200;
    put_key(d.path(), "b", Alg::ES256, Some(at));
    let store = Arc::new(KeyStore::new(None));
    let ring = Arc::new(
        Keyring::load(&cfg(d.path()), now) // keys_reload = 1h
            .unwrap()
            .with_store(store.clone()),
    );
    let g = store.generation();
    let stop = CancellationToken::new();
    let task = tokio::spawn(ring.clone().run(stop.clone()));
    while ring.current().kid != "b" {
        assert!(
            crate::now_ms() < at + 1000,
            "not switched within 1 s of activation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(crate::now_ms() >= at, "switched before the activation time");
    assert!(store.generation() > g, "the store was refreshed");
    stop.cancel();
    task.await.unwrap();
}

// --- HTTP --------------------------------------------------------------------------------

#[tokio::test]
async fn well_known_routes() {
    use tower::ServiceExt;
    let d = tempfile::tempdir().unwrap();
    put_key(d.path(), "a", Alg::ES256, None);
    put_key(d.path(), "b", Alg::EdDSA, Some(crate::now_ms() + 3_600_000));
    let mut c = cfg(d.path());
    c.public_url = Some("https://auth.example/".into());
    let ring = Arc::new(Keyring::load(&c, crate::now_ms()).unwrap());
    let app = routes(ring.clone(), Discovery::from_config(&c));
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let resp = app
        .clone()
        .oneshot(get("/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=300, must-revalidate"
    );
    assert_eq!(
        crate::jwks::cache_control_max_age(resp.headers()["cache-control"].to_str().unwrap()),
        Some(Duration::from_secs(300)),
        "what the sidecar reads"
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(body, ring.jwks_json());

    let resp = app
        .clone()
        .oneshot(get("/.well-known/openid-configuration"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        doc,
        json!({
            "issuer": "https://iss",
            "jwks_uri": "https://auth.example/.well-known/jwks.json",
            "token_endpoint": "https://auth.example/v1/token",
            "id_token_signing_alg_values_supported": ["ES256", "EdDSA"],
            "grant_types_supported": ["refresh_token"],
        })
    );

    let post = axum::http::Request::post("/.well-known/jwks.json")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(post).await.unwrap().status(), 405);
}
