//! Running `veto authority` for real: the shared secrets of every region (signing keys, the
//! refresh MAC key, the admin token) and one process per authority replica.
#![allow(dead_code)]

use crate::support::{free_port, wait_port, Proc};
use base64::Engine;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use veto::token::sign::SigningKey;
use veto::token::Alg;

pub const ISSUER: &str = "https://auth.veto.test";
pub const ADMIN_TOKEN: &str = "admin-secret-for-tests-0123456789abcdef";

/// What every region's authorities share.
pub struct Kit {
    pub dir: tempfile::TempDir,
}

impl Kit {
    pub fn new() -> Kit {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("keys")).expect("keys dir");
        let key = SigningKey::generate(Alg::ES256, "k1").expect("key");
        std::fs::write(dir.path().join("keys/k1.ES256.der"), key.pkcs8_der()).expect("key");
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([42u8; 32]);
        std::fs::write(dir.path().join("refresh.keys"), format!("r1={mac}\n")).expect("mac");
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).expect("admin");
        Kit { dir }
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Adds signing key `kid` to the shared key directory, activating at `activate_at`
    /// (whole seconds, RFC 3339 UTC). The activation file lands first, then the key, each by
    /// an atomic rename from a dotfile (ignored by the keyring): a reload between the two sees
    /// an activation without its key (refused, last good keys kept), never the key alone
    /// (which would be active since the epoch).
    pub fn add_key(&self, kid: &str, alg: Alg, activate_at: std::time::SystemTime) -> SigningKey {
        let key = SigningKey::generate(alg, kid).expect("key");
        let dir = self.keys_dir();
        let at = humantime::format_rfc3339_seconds(activate_at);
        let json = dir.join(format!("{kid}.json"));
        let der = dir.join(format!("{kid}.{}.der", alg.as_str()));
        for (path, bytes) in [
            (json, format!("{{\"activate_at\":\"{at}\"}}").into_bytes()),
            (der, key.pkcs8_der().to_vec()),
        ] {
            let tmp = dir.join(format!(
                ".{}.tmp",
                path.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&tmp, bytes).expect("write key file");
            std::fs::rename(&tmp, &path).expect("rename key file");
        }
        key
    }

    /// The `[authority]` section (without `listen`), with `extra` lines of its keys.
    pub fn section(&self, extra: &str) -> String {
        format!(
            "[authority]\nissuer = \"{ISSUER}\"\naudiences = [\"api\"]\nkeys_dir = \"{}\"\n\
             admin_token_file = \"{}\"\nrefresh_key_file = \"{}\"\n{extra}\n",
            self.keys_dir().display(),
            self.dir.path().join("admin.token").display(),
            self.dir.path().join("refresh.keys").display(),
        )
    }
}

impl Default for Kit {
    fn default() -> Self {
        Kit::new()
    }
}

/// One `veto authority` process.
pub struct Authority {
    pub api: u16,
    pub http: u16,
    child: Proc,
    pub dir: tempfile::TempDir,
    config: String,
}

impl Authority {
    /// `config`: everything but `[http]` and `authority.listen` (chosen here).
    pub fn start(config: &str) -> Authority {
        let mut a = Authority {
            api: free_port(),
            http: free_port(),
            child: Proc::default(),
            dir: tempfile::tempdir().expect("tempdir"),
            config: config.to_string(),
        };
        a.spawn();
        a
    }

    /// A config for `region` following `regions` on `nats_url`, with `[authority]` `extra`.
    pub fn config(
        kit: &Kit,
        nats_url: &str,
        region: &str,
        regions: &[&str],
        extra: &str,
    ) -> String {
        let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        format!(
            "[log]\nlevel = \"info,veto=debug\"\n[shutdown]\ndrain = \"100ms\"\ngrace = \"3s\"\n\
             [nats]\nurl = \"{nats_url}\"\nregion = \"{region}\"\nregions = [{}]\n{}",
            regions.join(", "),
            kit.section(&format!("heartbeat_interval = \"250ms\"\n{extra}"))
        )
    }

    fn spawn(&mut self) {
        let path = self.dir.path().join("authority.toml");
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n{}",
            self.http,
            self.config.replacen(
                "[authority]\n",
                &format!("[authority]\nlisten = \"127.0.0.1:{}\"\n", self.api),
                1
            )
        );
        std::fs::write(&path, text).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("authority.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_veto"))
            .args(["authority", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start veto authority");
        self.child = Proc(Some(child));
        assert!(
            wait_port(self.api, Duration::from_secs(10)),
            "authority did not listen:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("authority.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn jwks_url(&self) -> String {
        self.url("/.well-known/jwks.json")
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(self.admin_url("/readyz")).await {
                if r.status().is_success() {
                    return;
                }
                last = r.text().await.unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "authority not ready after {timeout:?}: {last}\n{}",
            self.log()
        );
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    pub fn process(&mut self) -> &mut Proc {
        &mut self.child
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `POST /v1/sessions` with the admin token; the status and JSON body.
    pub async fn login(&self, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url("/v1/sessions"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("sessions");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/token` with a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        form(
            &self.url("/v1/token"),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// `POST /v1/logout` with a refresh or access token.
    pub async fn logout(&self, token: &str) -> (u16, Value) {
        form(&self.url("/v1/logout"), &[("token", token)]).await
    }
}

pub async fn form(url: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let body = serde_urlencoded::to_string(params).expect("form");
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The config lines of a sidecar trusting the authority at `jwks_url`.
pub fn sidecar_issuer(jwks_url: &str) -> String {
    format!(
        "[[issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\", \"EdDSA\", \"RS256\"]\n\
         jwks_url = \"{jwks_url}\"\nleeway = \"5s\"\n"
    )
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
