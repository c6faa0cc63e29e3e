//! The in-proxy mode end to end with real parts: real Envoy 1.40 loads the dynamic module
//! (`envoy-module/`, built here) from `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`; a real `veto
//! sidecar` follows a real nats-server and mirrors its revoked set into shared memory
//! (`inproxy.shm_path`); the module decides every request inside Envoy. A second Envoy in
//! front of the same sidecar over ext_authz is the reference: the module must answer every
//! token of the catalogue with the same status, challenge and body.

mod support;

use base64::Engine as _;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use veto::token::Alg;

/// Builds the module (a no-op when `cargo test --all-targets` already did, as in
/// scripts/test.sh) and returns the directory holding `libvetoinproxy.so`.
fn build_module() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["build", "--quiet", "-p", "veto-envoy-module"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .spawn()
        .expect("cargo build -p veto-envoy-module");
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for cargo") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("building the module took over 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "cargo build -p veto-envoy-module failed");
    // this test runs from <target>/debug/deps/
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    assert!(
        dir.join("libvetoinproxy.so").is_file(),
        "no libvetoinproxy.so in {}",
        dir.display()
    );
    dir
}

/// Envoy with the in-proxy template (deploy/envoy/inproxy/).
struct InproxyEnvoy {
    port: u16,
    _child: Proc,
    dir: tempfile::TempDir,
}

impl InproxyEnvoy {
    fn start(module_dir: &Path, veto_config: &Path, upstream_port: u16) -> InproxyEnvoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin) = (free_port(), free_port());
        let tmpl = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl"),
        )
        .expect("template");
        let cfg = tmpl
            .replace("${LISTEN_PORT}", &port.to_string())
            .replace("${ADMIN_PORT}", &admin.to_string())
            .replace("${UPSTREAM_PORT}", &upstream_port.to_string())
            .replace("${VETO_CONFIG}", &veto_config.display().to_string());
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, cfg).expect("write envoy.yaml");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log");
        let envoy = std::env::var("VETO_ENVOY_BIN").unwrap_or_else(|_| "envoy".into());
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "-l", "info", "--concurrency", "1"])
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let e = InproxyEnvoy {
            port,
            _child: Proc(Some(child)),
            dir,
        };
        assert!(
            wait_port(e.port, Duration::from_secs(30)),
            "envoy did not listen:\n{}",
            e.log()
        );
        e
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// What a client sees of a denial (or of an allow): status, challenge, JSON body.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    www: Option<String>,
    body: serde_json::Value,
}

async fn see(http: &reqwest::Client, url: String, auth: Option<&str>) -> Seen {
    let mut r = http.get(url).header("x-user-id", "admin");
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Seen { status, www, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_decides_like_the_sidecar_inside_envoy() {
    let module_dir = build_module();
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let shm_dir = tempfile::tempdir().expect("tempdir");
    let shm = shm_dir.path().join("veto-revoked");
    let extra = format!(
        "[revocation]\nmax_staleness = \"2s\"\n[inproxy]\nshm_path = \"{}\"\nheartbeat_interval = \"100ms\"\n",
        shm.display()
    );
    let mut sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), &extra));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    // the file appears at its path with the first heartbeat after the replay
    let deadline = Instant::now() + Duration::from_secs(2);
    while !shm.is_file() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        shm.is_file(),
        "the sidecar did not publish {}",
        shm.display()
    );
    let (up, _h) = upstream().await;
    let inproxy = InproxyEnvoy::start(
        &module_dir,
        &sidecar.dir.path().join("veto.toml"),
        up.port(),
    );
    let reference = Envoy::start(sidecar.grpc, up.port());
    assert!(
        inproxy
            .log()
            .contains("Dynamic module ABI version v0.2.0 matched."),
        "the module's ABI is not Envoy's:\n{}",
        inproxy.log()
    );
    let http = reqwest::Client::new();
    let path = "/orders/7";

    // valid token: 200, identity set from the token, the client's forged x-user-id gone
    let token = issuer.mint("alice", "sess-1");
    let r = http
        .get(inproxy.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("x-user-id", "admin")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "{}", inproxy.log());
    let seen: serde_json::Value = r.json().await.expect("echo");
    assert_eq!(seen["x-user-id"], "alice");

    // the hostile catalogue: the same answer as the ext_authz path
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let mut expired = issuer.claims("alice", "sess-2");
    expired["iat"] = json!(expired["iat"].as_i64().unwrap_or(0) - 1200);
    expired["exp"] = json!(expired["iat"].as_i64().unwrap_or(0) + 600);
    let expired = issuer.key.sign(&expired).expect("sign");
    let forged = veto::token::sign::SigningKey::generate(Alg::ES256, "k1")
        .expect("key")
        .sign(&issuer.claims("alice", "sess-3"))
        .expect("sign");
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(issuer.claims("alice", "sess-4"))
    );
    let mut wrong_aud = issuer.claims("alice", "sess-5");
    wrong_aud["aud"] = json!("other");
    let wrong_aud = issuer.key.sign(&wrong_aud).expect("sign");
    let mut no_sid = issuer.claims("alice", "x");
    no_sid.as_object_mut().map(|o| o.remove("sid"));
    let no_sid = issuer.key.sign(&no_sid).expect("sign");
    let catalogue: Vec<(Option<String>, &str)> = vec![
        (None, "missing_token"),
        (Some("Basic YWxhZGRpbjpvcGVu".into()), "missing_token"),
        (Some("Bearer ".into()), "malformed"),
        (Some("Bearer abc".into()), "malformed"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {forged}")), "bad_signature"),
        (Some(format!("Bearer {alg_none}")), ""),
        (Some(format!("Bearer {wrong_aud}")), ""),
        (Some(format!("Bearer {no_sid}")), ""),
        (Some(format!("Bearer {token}")), "ok"),
    ];
    for (auth, reason) in &catalogue {
        let ours = see(&http, inproxy.url(path), auth.as_deref()).await;
        let theirs = see(&http, reference.url(path), auth.as_deref()).await;
        if ours.status == 200 {
            // the upstream's echo: compare the identity it was given
            assert_eq!(ours.body["x-user-id"], theirs.body["x-user-id"], "{auth:?}");
            assert_eq!(theirs.status, 200, "{auth:?}");
        } else {
            assert_eq!(ours, theirs, "{auth:?}");
        }
        if !reason.is_empty() && *reason != "ok" {
            assert_eq!(ours.body["reason"], *reason, "{auth:?}: {ours:?}");
        }
        if reason.is_empty() {
            assert_eq!(ours.status, 401, "{auth:?}: {ours:?}");
        }
    }

    // revoke the session with the CLI: once the sidecar has applied it, the very next
    // request through the module is refused
    let (code, out, err) = veto(&[
        "revoke",
        "--session",
        "sess-1",
        "--nats",
        &nats.url(),
        "--region",
        "us",
        "--reason",
        "test",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let bearer = format!("Bearer {token}");
    let applied = {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if sidecar.check(Some(&bearer)).await.status() == 401 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(
        applied,
        "the sidecar did not apply the revocation:\n{}",
        sidecar.log()
    );
    let r = see(&http, inproxy.url(path), Some(&bearer)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body["reason"], "revoked");
    assert_eq!(r, see(&http, reference.url(path), Some(&bearer)).await);
    let other = format!("Bearer {}", issuer.mint("alice", "sess-9"));
    assert_eq!(
        see(&http, inproxy.url(path), Some(&other)).await.status,
        200
    );

    // sidecar killed: allowed until the freshness bound (2 s), then on_stale = deny applies
    sidecar.kill();
    let killed = Instant::now();
    assert_eq!(
        see(&http, inproxy.url(path), Some(&other)).await.status,
        200,
        "within the bound"
    );
    let stale_at = loop {
        let r = see(&http, inproxy.url(path), Some(&other)).await;
        if r.status != 200 {
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(r.body["reason"], "feed_stale", "{r:?}");
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6),
            "still allowed 6 s after the sidecar died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stale_at >= Duration::from_millis(1500),
        "stale too early: {stale_at:?}"
    );
    assert!(
        !inproxy.log().contains("panic"),
        "the module panicked:\n{}",
        inproxy.log()
    );
}
