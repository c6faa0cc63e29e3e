//! In-proxy test helpers: the module built by cargo, Envoy loading it from
//! `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, a sidecar mirroring into shared memory, and what a
//! client sees of an answer. Included with `#[path = "support/inproxy.rs"]` next to `mod
//! support;`.
#![allow(dead_code)]

use super::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds the module (a no-op when `cargo test --all-targets` already did, as in
/// scripts/test.sh) and returns the directory holding `libvetoinproxy.so`.
pub fn build_module() -> PathBuf {
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
    // tests run from <target>/debug/deps/
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

/// Envoy with the in-proxy template (deploy/envoy/inproxy/) deciding with `veto_config`.
pub fn inproxy_envoy(module_dir: &Path, veto_config: &Path, upstream_port: u16) -> Envoy {
    let e = Envoy::from_template(
        "deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl",
        &[
            ("UPSTREAM_PORT", upstream_port.to_string()),
            ("VETO_CONFIG", veto_config.display().to_string()),
        ],
        &[("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir)],
        "info",
    );
    assert!(
        e.log()
            .contains("Dynamic module ABI version v0.2.0 matched."),
        "the module's ABI is not Envoy's:\n{}",
        e.log()
    );
    e
}

/// The `[revocation]` and `[inproxy]` sections of a sidecar mirroring into `shm`.
pub fn inproxy_section(shm: &Path, max_staleness: &str) -> String {
    format!(
        "[revocation]\nmax_staleness = \"{max_staleness}\"\n[inproxy]\nshm_path = \"{}\"\nheartbeat_interval = \"100ms\"\n",
        shm.display()
    )
}

/// Waits (2 s at most) for the sidecar to publish its shared-memory file.
pub async fn wait_shm(shm: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !shm.is_file() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        shm.is_file(),
        "the sidecar did not publish {}",
        shm.display()
    );
}

/// Polls the sidecar until `auth` gets `status` from it (the sidecar applied a change);
/// false after `timeout`.
pub async fn sidecar_answers(
    sidecar: &Sidecar,
    auth: &str,
    status: u16,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if sidecar.check(Some(auth)).await.status() == status {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP client whose every request is bounded (10 s): a load loop or a probe through a
/// stuck proxy fails instead of hanging the test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// What a client sees of a denial (or of an allow): status, challenge, JSON body.
#[derive(Debug, PartialEq)]
pub struct Seen {
    pub status: u16,
    pub www: Option<String>,
    pub body: serde_json::Value,
}

/// GET `url` with `authorization: auth` and a forged `x-user-id` the proxy must replace.
pub async fn see(http: &reqwest::Client, url: String, auth: Option<&str>) -> Seen {
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

/// One in-proxy set-up with real parts: nats-server, a `veto sidecar` mirroring into shared
/// memory, Envoy with the module, and an ext_authz Envoy in front of the same sidecar (the
/// reference), both routing to one echoing upstream.
pub struct Rig {
    pub inproxy: Envoy,
    pub reference: Envoy,
    pub sidecar: Sidecar,
    pub issuer: Issuer,
    pub nats: NatsServer,
    /// The shared-memory file the sidecar writes and the module reads.
    pub shm: PathBuf,
    _shm_dir: tempfile::TempDir,
    _upstream: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// Starts everything (ES256 issuer, region `us`, `revocation.max_staleness`) and waits
    /// until the sidecar is ready and has published its file.
    pub async fn start(max_staleness: &str) -> Rig {
        let module_dir = build_module();
        let nats = NatsServer::start();
        let issuer = Issuer::new(veto::token::Alg::ES256);
        let shm_dir = tempfile::tempdir().expect("tempdir");
        let shm = shm_dir.path().join("veto-revoked");
        let extra = inproxy_section(&shm, max_staleness);
        let sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), &extra));
        sidecar.wait_ready(Duration::from_secs(10)).await;
        // the file appears at its path with the first heartbeat after the replay
        wait_shm(&shm).await;
        let (up, upstream) = upstream().await;
        let inproxy = inproxy_envoy(
            &module_dir,
            &sidecar.dir.path().join("veto.toml"),
            up.port(),
        );
        let reference = Envoy::start(sidecar.grpc, up.port());
        Rig {
            inproxy,
            reference,
            sidecar,
            issuer,
            nats,
            shm,
            _shm_dir: shm_dir,
            _upstream: upstream,
        }
    }

    /// `veto revoke <what> --nats .. --region us`; panics unless it exits 0.
    pub fn revoke(&self, what: &[&str]) {
        revoke(&self.nats.url(), what);
    }

    /// Revokes with the CLI, waits until the sidecar refuses `bearer` (it applied the
    /// revocation, and so mirrored it), and returns what the module and the reference
    /// answer to the very next request with it.
    pub async fn revoke_then_see(
        &self,
        what: &[&str],
        http: &reqwest::Client,
        path: &str,
        bearer: &str,
    ) -> (Seen, Seen) {
        self.revoke(what);
        assert!(
            sidecar_answers(&self.sidecar, bearer, 401, Duration::from_secs(2)).await,
            "the sidecar did not apply {what:?}:\n{}",
            self.sidecar.log()
        );
        let ours = see(http, self.inproxy.url(path), Some(bearer)).await;
        let theirs = see(http, self.reference.url(path), Some(bearer)).await;
        (ours, theirs)
    }
}
