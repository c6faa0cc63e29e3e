//! The `veto` binary's contract: exit codes, messages, env overrides, metrics lint.

mod support;

use std::time::Duration;
use support::*;
use veto::token::Alg;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"
[[issuers]]
issuer = "https://auth.test"
audiences = ["api"]
jwks_file = "/dev/null"
"#;

#[test]
fn check_config_exit_codes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", GOOD);
    let (code, out, _) = veto(&["check-config", "--config", &good]);
    assert_eq!(code, 0, "{out}");

    let cases = [
        (
            "alg.toml",
            GOOD.replace("jwks_file", "algorithms = [\"none\"]\njwks_file"),
            "issuers[0].algorithms",
        ),
        (
            "aud.toml",
            GOOD.replace("[\"api\"]", "[]"),
            "issuers[0].audiences",
        ),
        (
            "key.toml",
            format!("{GOOD}\n[grpc]\nlisten = \"not an address\""),
            "grpc.listen",
        ),
        (
            "unknown.toml",
            format!("{GOOD}\n[revocation]\nmax_stalenes = \"1s\""),
            "max_stalenes",
        ),
        (
            "verify_queue.toml",
            format!("{GOOD}\n[verify]\nqueue = 0"),
            "verify.queue",
        ),
        (
            "verify_nice.toml",
            format!("{GOOD}\n[verify]\nnice = -5"),
            "verify.nice",
        ),
        (
            "verify_wait.toml",
            format!("{GOOD}\n[verify]\nmax_wait = \"0s\""),
            "verify.max_wait",
        ),
        ("toml.toml", "[[issuers]\nbroken".to_string(), "config"),
        ("empty.toml", String::new(), "issuers"),
    ];
    for (name, text, key) in cases {
        let p = write(&dir, name, &text);
        let (code, _, err) = veto(&["check-config", "--config", &p]);
        assert_eq!(code, 64, "{name}: {err}");
        assert!(
            err.contains(key),
            "{name}: message should name {key}: {err}"
        );
    }
    let (code, _, err) = veto(&["check-config", "--config", "/nonexistent.toml"]);
    assert_eq!(code, 64, "{err}");
    let (code, _, _) = veto(&["no-such-command"]);
    assert_eq!(code, 64);
}

#[test]
fn env_overrides_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good.toml", GOOD);
    let run = |k: &str, v: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_veto"))
            .args(["check-config", "--config", &good])
            .env(k, v)
            .output()
            .unwrap()
    };
    assert_eq!(
        run("VETO__REVOCATION__ON_STALE", "allow").status.code(),
        Some(0)
    );
    let bad = run("VETO__REVOCATION__ON_STALE", "sometimes");
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("on_stale"));
    assert_eq!(run("VETO__GRPC__LISTEN", "nope").status.code(), Some(64));
}

#[test]
fn revoke_fails_clearly_without_nats() {
    let port = free_port();
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        "s1",
        "--nats",
        &format!("nats://127.0.0.1:{port}"),
        "--region",
        "us",
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("NATS"), "{err}");
    let (code, _, err) = veto(&["revoke", "--nats", "nats://127.0.0.1:1", "--region", "us"]);
    assert_eq!(
        code, 64,
        "one of --session/--token/--subject is required: {err}"
    );
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        "s",
        "--nats",
        "nats://127.0.0.1:1",
        "--region",
        "u.s",
    ]);
    assert_eq!(code, 64, "{err}");
}

#[test]
fn keys_generate_and_jwks_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k7.ES256.der");
    let (code, jwk, err) = veto(&[
        "keys",
        "generate",
        "--alg",
        "ES256",
        "--kid",
        "k7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let jwk: serde_json::Value = serde_json::from_str(&jwk).unwrap();
    assert_eq!(jwk["kid"], "k7");
    assert!(jwk.get("d").is_none(), "public JWK only");
    let (code, set, err) = veto(&["keys", "jwks", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let set: serde_json::Value = serde_json::from_str(&set).unwrap();
    assert_eq!(set["keys"][0], jwk);
    // refuses to overwrite a key
    let (code, _, _) = veto(&["keys", "generate", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 64);
}

#[test]
fn keys_generate_activate_at_writes_what_the_authority_loads() {
    use veto::authority::keys::{KeyState, Keyring};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let gen = |args: &[&str]| {
        let (code, jwk, err) = veto(&[&["keys", "generate"], args].concat());
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&jwk).unwrap()
    };
    // into the directory: <kid>.<alg>.der + <kid>.json
    let cur = gen(&["--kid", "cur", "--out", d, "--activate-at", "now"]);
    let next = gen(&[
        "--alg",
        "EdDSA",
        "--kid",
        "next",
        "--out",
        d,
        "--activate-at",
        "+1h",
    ]);
    // a file named <kid>.<alg>.der: the kid comes from the name
    let old_file = dir.path().join("old.RS256.der");
    let old = gen(&[
        "--alg",
        "RS256",
        "--out",
        old_file.to_str().unwrap(),
        "--activate-at",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(old["kid"], "old");
    assert!(dir.path().join("cur.ES256.der").is_file());
    assert!(dir.path().join("next.json").is_file());

    let cfg: veto::authority::config::Authority = serde_json::from_value(serde_json::json!({
        "issuer": "https://auth.test",
        "audiences": ["api"],
        "keys_dir": d,
        "admin_token_file": "/dev/null",
        "refresh_key_file": "/dev/null",
    }))
    .unwrap();
    let ring = Keyring::load(&cfg, veto::now_ms()).unwrap();
    assert_eq!(ring.current().kid, "cur");
    let states: Vec<(String, KeyState)> =
        ring.keys().into_iter().map(|k| (k.kid, k.state)).collect();
    assert_eq!(
        states,
        vec![
            ("cur".into(), KeyState::Current),
            ("next".into(), KeyState::Next),
            ("old".into(), KeyState::Retired),
        ],
        "old is published until cur's activation + retire_after"
    );
    let doc: serde_json::Value = serde_json::from_slice(&ring.jwks_json()).unwrap();
    assert_eq!(doc["keys"], serde_json::json!([cur, next, old]));

    // refused: an unusable activation time, a file name the directory cannot pair, a kid
    // that is not a file name, an existing key
    for args in [
        vec!["--out", d, "--activate-at", "tomorrow"],
        vec!["--out", d, "--activate-at", "2026-12-02T10:00:00+01:00"],
        vec![
            "--kid",
            "x",
            "--out",
            &format!("{d}/y.ES256.der"),
            "--activate-at",
            "+1h",
        ],
        vec!["--kid", "../x", "--out", d],
        vec!["--kid", "cur", "--out", d, "--activate-at", "+2h"],
    ] {
        let (code, _, err) = veto(&[&["keys", "generate"], &args[..]].concat());
        assert_eq!(code, 64, "{args:?}: {err}");
    }
    let ring2 = Keyring::load(&cfg, veto::now_ms()).unwrap();
    assert_eq!(ring2.jwks_json(), ring.jwks_json(), "nothing half-written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), ""));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let t = issuer.mint("u", "s");
    sidecar.check(Some(&format!("Bearer {t}"))).await;
    sidecar.check(Some("Bearer junk")).await;
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        "s",
        "--nats",
        &nats.url(),
        "--region",
        "us",
    ]);
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = sidecar.metrics().await;
    for name in [
        "veto_checks_total",
        "veto_check_duration_seconds_bucket",
        "veto_revocation_propagation_seconds_bucket",
        "veto_feed_staleness_seconds",
        "veto_revocations_held",
        "veto_revocation_events_total",
        "veto_feed_connected",
        "veto_feed_ready",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (source scripts/env.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
