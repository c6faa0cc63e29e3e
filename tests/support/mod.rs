//! Test helpers that run the real things on free loopback ports: nats-server, Envoy, the
//! `veto` binary, a tiny upstream. Every process is killed (and its store removed) on drop.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use veto::token::sign::{jwks, SigningKey};
use veto::token::Alg;

/// A loopback port free now and never handed out before by this test process: the kernel
/// may give a just-released ephemeral port again, and two servers of one topology must never
/// be configured on the same port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn tool(var: &str, fallback: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(fallback);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{fallback} not found: set {var} (`source scripts/env.sh` after scripts/install-deps.sh)"
    );
}

/// The nats-server binary: `VETO_NATS_SERVER_BIN`, else the usual install places.
pub fn nats_server_bin() -> PathBuf {
    tool("VETO_NATS_SERVER_BIN", "nats-server")
}

/// A child process that is killed and reaped when killed or dropped.
#[derive(Default)]
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (what Kubernetes sends first), without waiting.
    pub fn terminate(&self) {
        if let Some(c) = &self.0 {
            let status = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success(), "kill -TERM failed");
        }
    }

    /// The exit status once the process has exited, or `None` while it still runs after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            let c = self.0.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                self.0 = None;
                return Some(status);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `veto heartbeat` for `region` against the JetStream server at `url`, every 250 ms: what
/// keeps that origin fresh for the sidecars that expect it.
pub fn heartbeat(url: &str, region: &str) -> Proc {
    heartbeat_with(url, region, &[])
}

/// [`heartbeat`] with more arguments (e.g. `--nats-user`, `--nats-password-file`).
pub fn heartbeat_with(url: &str, region: &str, extra: &[String]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_veto"))
        .args(["heartbeat", "--nats", url, "--region", region])
        .args(["--interval", "250ms"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("veto heartbeat");
    Proc(Some(child))
}

/// A real nats-server with JetStream, on a free port, with its own store directory.
pub struct NatsServer {
    pub port: u16,
    child: Proc,
    store: tempfile::TempDir,
    log: PathBuf,
    extra: String,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with("")
    }

    /// `extra` is appended to the generated config file.
    pub fn start_with(extra: &str) -> NatsServer {
        Self::start_full(free_port(), extra)
    }

    pub fn start_on(port: u16) -> NatsServer {
        Self::start_full(port, "")
    }

    fn start_full(port: u16, extra: &str) -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir");
        let log = store.path().join("nats.log");
        let mut s = NatsServer {
            port,
            child: Proc::default(),
            store,
            log,
            extra: extra.to_string(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let conf = self.store.path().join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{}\nserver_name: test_{}\njetstream {{ store_dir: \"{}\" }}\n{}\n",
            self.port,
            self.port,
            self.store.path().join("js").display(),
            self.extra
        );
        std::fs::write(&conf, text).expect("write nats.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Proc(Some(child));
        assert!(
            wait_port(self.port, Duration::from_secs(10)),
            "nats-server did not listen"
        );
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Kill and start again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// Signing keys of one test issuer, its JWKS file, and a token minter.
pub struct Issuer {
    pub iss: String,
    pub key: SigningKey,
    pub dir: tempfile::TempDir,
}

pub const ISS: &str = "https://auth.test";

impl Issuer {
    pub fn new(alg: Alg) -> Issuer {
        let key = SigningKey::generate(alg, "k1").expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let me = Issuer {
            iss: ISS.into(),
            key,
            dir,
        };
        std::fs::write(me.jwks_path(), jwks(&[&me.key]).to_string()).expect("jwks");
        me
    }

    pub fn jwks_path(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    pub fn claims(&self, sub: &str, sid: &str) -> Value {
        let now = veto::now_ms() / 1000;
        json!({"iss": self.iss, "aud": "api", "sub": sub, "sid": sid, "jti": format!("j-{sid}"),
               "iat": now, "exp": now + 600})
    }

    pub fn mint(&self, sub: &str, sid: &str) -> String {
        self.key.sign(&self.claims(sub, sid)).expect("sign")
    }
}

/// A running `veto sidecar` process.
pub struct Sidecar {
    pub grpc: u16,
    pub http: u16,
    child: Proc,
    pub dir: tempfile::TempDir,
    config: String,
}

pub fn sidecar_config(issuer: &Issuer, nats: Option<&str>, extra: &str) -> String {
    let nats = nats
        .map(|u| format!("[nats]\nurl = \"{u}\"\nregion = \"us\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[log]
level = "info"
[[issuers]]
issuer = "{iss}"
audiences = ["api"]
algorithms = ["ES256", "RS256", "EdDSA"]
jwks_file = "{jwks}"
leeway = "5s"
{nats}
{extra}
"#,
        iss = issuer.iss,
        jwks = issuer.jwks_path().display(),
    )
}

/// The `[nats]` section of a sidecar in `region` that follows the streams of `regions`
/// (its own included), with `extra` lines of `[nats]` keys (e.g. `fast_path = false`):
/// append it to [`sidecar_config`]'s `extra`.
pub fn nats_section(url: &str, region: &str, regions: &[&str], extra: &str) -> String {
    let regions: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "[nats]\nurl = \"{url}\"\nregion = \"{region}\"\nregions = [{}]\n{extra}\n",
        regions.join(", ")
    )
}

impl Sidecar {
    /// Starts the binary with `config` (TOML, without [grpc]/[http]: ports are chosen here).
    pub fn start(config: &str) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Sidecar {
            grpc: free_port(),
            http: free_port(),
            child: Proc::default(),
            dir,
            config: config.into(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let path = self.dir.path().join("veto.toml");
        let text = format!(
            "[grpc]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n{}",
            self.grpc, self.http, self.config
        );
        std::fs::write(&path, text).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("veto.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_veto"))
            .args(["sidecar", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start veto");
        self.child = Proc(Some(child));
        assert!(
            wait_port(self.http, Duration::from_secs(10)),
            "veto did not listen:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("veto.log")).unwrap_or_default()
    }

    /// The process id while it runs (for /proc readings).
    pub fn pid(&self) -> Option<u32> {
        self.child.0.as_ref().map(|c| c.id())
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(format!("{}/readyz", self.base()))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sidecar not ready after {timeout:?}:\n{}", self.log());
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// `GET /check` with an optional Authorization header value.
    pub async fn check(&self, auth: Option<&str>) -> reqwest::Response {
        let mut r = reqwest::Client::new().get(format!("{}/check", self.base()));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().await.expect("check")
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// The process, for signals and its exit.
    pub fn process(&mut self) -> &mut Proc {
        &mut self.child
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// Real Envoy in front of a sidecar and an upstream.
pub struct Envoy {
    pub port: u16,
    pub admin: u16,
    child: Proc,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy with the ext_authz template (deploy/envoy/envoy-sidecar.yaml.tmpl).
    pub fn start(authz_port: u16, upstream_port: u16) -> Envoy {
        Envoy::from_template(
            "deploy/envoy/envoy-sidecar.yaml.tmpl",
            &[
                ("AUTHZ_PORT", authz_port.to_string()),
                ("UPSTREAM_PORT", upstream_port.to_string()),
            ],
            &[],
            "warning",
        )
    }

    /// Envoy rendered from `template` (relative to the repository) with `LISTEN_PORT` and
    /// `ADMIN_PORT` on free ports and `vars` replacing the other `${NAME}`s, one worker,
    /// `env` added to its environment; waits until it listens.
    pub fn from_template(
        template: &str,
        vars: &[(&str, String)],
        env: &[(&str, &Path)],
        level: &str,
    ) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin) = (free_port(), free_port());
        let mut cfg = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(template))
            .expect("template")
            .replace("${LISTEN_PORT}", &port.to_string())
            .replace("${ADMIN_PORT}", &admin.to_string());
        for (name, value) in vars {
            cfg = cfg.replace(&format!("${{{name}}}"), value);
        }
        assert!(!cfg.contains("${"), "{template}: a placeholder is left");
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, cfg).expect("write envoy.yaml");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log");
        let mut cmd = Command::new(tool("VETO_ENVOY_BIN", "envoy"));
        cmd.arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "-l", level, "--concurrency", "1"])
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start envoy");
        let e = Envoy {
            port,
            admin,
            child: Proc(Some(child)),
            dir,
        };
        assert!(
            wait_port(e.port, Duration::from_secs(30)),
            "envoy did not listen:\n{}",
            e.log()
        );
        e
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Envoy's process id while it runs (a test that must not restart it compares them).
    pub fn pid(&self) -> Option<u32> {
        self.child.0.as_ref().map(|c| c.id())
    }

    /// True while the process runs (not exited, not a zombie).
    pub fn running(&mut self) -> bool {
        self.child
            .0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id while Envoy still runs (`None` once it exited: a crash).
    pub fn running_pid(&mut self) -> Option<u32> {
        let c = self.child.0.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }
}

/// A tiny upstream that echoes the request headers it received as JSON.
pub async fn upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::http::HeaderMap;
    let app = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::String(v.to_str().unwrap_or("").to_string()),
                )
            })
            .collect();
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            Value::Object(map).to_string(),
        )
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, h)
}

/// `veto revoke <what..> --nats <nats_url> --region us --reason test`; panics unless it
/// exits 0.
pub fn revoke(nats_url: &str, what: &[&str]) {
    let mut args = vec!["revoke"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["--nats", nats_url, "--region", "us", "--reason", "test"]);
    let (code, out, err) = veto(&args);
    assert_eq!(code, 0, "veto {args:?}: {out}{err}");
}

/// Runs `veto` with `args`, returning (exit code, stdout, stderr).
pub fn veto(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_veto"))
        .args(args)
        .output()
        .expect("run veto");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns true or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// A metric sample value from a text exposition (first line starting with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of `name` whose labels contain all of `labels` (e.g. `result="applied"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// An ext_authz `CheckRequest` for `GET /x` with `authorization` (if any) and a forged
/// `x-user-id` that an allow must overwrite.
pub fn check_request(
    authorization: Option<&str>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let mut headers = std::collections::HashMap::new();
    if let Some(a) = authorization {
        headers.insert("authorization".to_string(), a.to_string());
    }
    headers.insert("x-user-id".to_string(), "forged".to_string());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/x".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `veto check-config` of a config given as text: (exit code, stdout, stderr).
pub fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("veto.toml");
    std::fs::write(&p, text).expect("write config");
    veto(&["check-config", "--config", &p.display().to_string()])
}

/// Publishes `events` through JetStream with at most `inflight` acknowledgements
/// outstanding (the fast way to fill a stream: one ack awaited per send, not per event);
/// stops sending after `deadline`. Returns (time, acked, failed); the unsent count as failed.
pub async fn publish_bulk(
    js: &async_nats::jetstream::Context,
    events: impl ExactSizeIterator<Item = veto::revocation::RevocationEvent>,
    inflight: usize,
    deadline: Duration,
) -> (Duration, usize, usize) {
    let start = Instant::now();
    let n = events.len();
    let mut acks = std::collections::VecDeque::with_capacity(inflight + 1);
    let (mut ok, mut failed) = (0usize, 0usize);
    for (i, ev) in events.enumerate() {
        if start.elapsed() > deadline {
            failed += n - i;
            break;
        }
        match veto::bus::publish::send_event(js, &ev).await {
            Ok(f) => acks.push_back(f),
            Err(_) => failed += 1,
        }
        if acks.len() >= inflight {
            if let Some(f) = acks.pop_front() {
                match f.await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
        }
    }
    for f in acks {
        match f.await {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (start.elapsed(), ok, failed)
}
