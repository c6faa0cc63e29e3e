//! nginx (`auth_request`) and Caddy (`forward_auth`) in front of veto's HTTP forward-auth, for
//! real: the configs shipped in `deploy/nginx/veto.conf` and `deploy/caddy/Caddyfile` (not
//! copies) run by Debian's nginx and Caddy on free loopback ports, between an HTTP client and
//! an upstream that echoes the headers it received, with a real `veto sidecar` and
//! nats-server carrying revocations.
//!
//! Between the proxy and the sidecar sits a byte-for-byte TCP relay that records what the
//! proxy sends to `/check` (the body and a forged identity header must not be in it); killing
//! the sidecar behind it, then closing the relay, gives both ways a sidecar can be down (a
//! connection that closes, a connection refused).
//!
//! The binaries: `VETO_NGINX_BIN` (else /usr/sbin/nginx) and `VETO_CADDY_BIN` (else `caddy`
//! on PATH); a missing one fails the test, it is never skipped.

mod support;

use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veto::token::Alg;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `var` if set, else the first of `fallbacks` that exists; a missing proxy fails the test.
fn proxy_bin(var: &str, fallbacks: &[PathBuf], what: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{var}={} does not exist", p.display());
        return p;
    }
    fallbacks
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{what} not found (looked at {fallbacks:?}): install it (scripts/install-deps.sh) \
                 or set {var}"
            )
        })
}

fn nginx_bin() -> PathBuf {
    proxy_bin(
        "VETO_NGINX_BIN",
        &[PathBuf::from("/usr/sbin/nginx")],
        "nginx (Debian package nginx-light or nginx)",
    )
}

fn caddy_bin() -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("caddy")).collect())
        .unwrap_or_default();
    proxy_bin("VETO_CADDY_BIN", &on_path, "caddy (Debian package caddy)")
}

/// Runs `cmd` to completion, failing the test with its output unless it succeeds.
fn succeeds(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Nginx,
    Caddy,
}

/// A proxy process started from the shipped config, with its own tempdir as prefix/home.
struct Front {
    kind: Kind,
    port: u16,
    child: Proc,
    dir: tempfile::TempDir,
}

impl Front {
    fn start(kind: Kind, veto_port: u16, upstream_port: u16) -> Front {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log");
        let child = match kind {
            Kind::Nginx => Self::nginx(dir.path(), port, veto_port, upstream_port),
            Kind::Caddy => Self::caddy(dir.path(), port, veto_port, upstream_port),
        }
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {kind:?}: {e}"));
        let f = Front {
            kind,
            port,
            child: Proc(Some(child)),
            dir,
        };
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "{kind:?} did not listen:\n{}",
            f.log()
        );
        f
    }

    /// `deploy/nginx/veto.conf` rendered (the placeholders only) inside a minimal `http {}`
    /// whose every path is in `dir`; `nginx -t` must accept it. Returns the foreground command.
    fn nginx(dir: &Path, port: u16, veto_port: u16, upstream_port: u16) -> Command {
        let shipped = std::fs::read_to_string(repo_file("deploy/nginx/veto.conf")).unwrap();
        let rendered = shipped
            .replace("${LISTEN_HOST}", "127.0.0.1")
            .replace("${LISTEN_PORT}", &port.to_string())
            .replace("${VETO_ADDR}", &format!("127.0.0.1:{veto_port}"))
            .replace("${UPSTREAM_ADDR}", &format!("127.0.0.1:{upstream_port}"));
        assert!(!rendered.contains("${"), "an unknown placeholder left");
        std::fs::write(dir.join("veto.conf"), rendered).unwrap();
        let d = dir.display();
        // As root the workers would run as `nobody`, who cannot enter this 0700 tempdir.
        let root = std::fs::metadata(dir).unwrap().uid() == 0;
        let conf = format!(
            "{user}worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             access_log {d}/access.log;\ninclude {d}/veto.conf;\n}}\n",
            user = if root { "user root;\n" } else { "" },
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let globals = format!("daemon off; pid {d}/nginx.pid; error_log stderr;");
        let cmd = |test: bool| {
            let mut c = Command::new(nginx_bin());
            if test {
                c.arg("-t");
            }
            c.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-e", "stderr", "-g", &globals]);
            c
        };
        succeeds(&mut cmd(true), "nginx -t of deploy/nginx/veto.conf");
        cmd(false)
    }

    /// `deploy/caddy/Caddyfile` as shipped, its `{$NAME}`s from the environment; `caddy
    /// validate` must accept it without a formatting warning.
    fn caddy(dir: &Path, port: u16, veto_port: u16, upstream_port: u16) -> Command {
        let cmd = |sub: &str| {
            let mut c = Command::new(caddy_bin());
            c.args([sub, "--adapter", "caddyfile", "--config"])
                .arg(repo_file("deploy/caddy/Caddyfile"))
                .current_dir(dir)
                .env("HOME", dir)
                .env("XDG_DATA_HOME", dir.join("data"))
                .env("XDG_CONFIG_HOME", dir.join("config"))
                .env("CADDY_ADMIN", "off")
                .env("LISTEN_HOST", "127.0.0.1")
                .env("LISTEN_PORT", port.to_string())
                .env("VETO_ADDR", format!("127.0.0.1:{veto_port}"))
                .env("UPSTREAM_ADDR", format!("127.0.0.1:{upstream_port}"));
            c
        };
        let out = succeeds(
            &mut cmd("validate"),
            "caddy validate of deploy/caddy/Caddyfile",
        );
        assert!(!out.contains("not formatted"), "run `caddy fmt`:\n{out}");
        cmd("run")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default();
        if let Ok(a) = std::fs::read_to_string(self.dir.path().join("access.log")) {
            s.push_str(&a);
        }
        s
    }
}

impl Drop for Front {
    /// SIGTERM first: nginx's master then stops its worker, which a SIGKILL to the master
    /// would leave running (orphaned, still listening).
    fn drop(&mut self) {
        self.child.terminate();
        if self.child.wait_exit(Duration::from_secs(5)).is_none() {
            self.child.kill();
        }
    }
}

/// A TCP relay to the sidecar that records the bytes the proxy sends it.
struct Relay {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let port = free_port();
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind relay");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let (rec, set) = (sent.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let rec = rec.clone();
                set.lock().unwrap().spawn(async move {
                    // The sidecar gone: the proxy's connection closes at once.
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 8192];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { port, sent, tasks }
    }

    /// Everything sent to the sidecar so far, lowercased.
    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent.lock().unwrap()).to_lowercase()
    }

    /// Closes the listener and every relayed connection: connections are refused from now.
    fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One answer through the proxy.
struct Answer {
    status: u16,
    www: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    /// The headers the upstream saw, when the request reached it (the echo's JSON).
    fn upstream_saw(&self) -> Option<serde_json::Map<String, Value>> {
        match serde_json::from_str(&self.body) {
            Ok(Value::Object(m)) if m.contains_key("host") => Some(m),
            _ => None,
        }
    }

    /// veto's JSON `reason`, where the proxy passes veto's body on (Caddy, not nginx).
    fn reason(&self) -> Option<String> {
        let v: Value = serde_json::from_str(&self.body).ok()?;
        v["reason"].as_str().map(str::to_string)
    }
}

async fn send(
    http: &reqwest::Client,
    front: &Front,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut r = match body {
        Some(b) => http.post(front.url("/orders/7?x=1")).body(b.to_string()),
        None => http.get(front.url("/orders/7?x=1")),
    };
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e}\n{}", front.kind, front.log()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let www = headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        www,
        headers,
        body,
    }
}

/// The proxy's and the sidecar's logs, for a failing assertion.
fn logs(front: &Front, sidecar: &Sidecar, what: &str) -> String {
    format!(
        "{:?} {what}\n{}\nveto:\n{}",
        front.kind,
        front.log(),
        sidecar.log()
    )
}

/// The whole story through one proxy; `revoked` is the status veto gives a revoked token
/// (`authz.revoked_status`: 401, or 403 for `permissiondenied`).
async fn exercise(kind: Kind, revoked: u16) {
    let started = Instant::now();
    let mut nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    // A short freshness bound, so that a lost feed turns into veto's 503 within the test.
    let mut extra = "[revocation]\nmax_staleness = \"2s\"\non_stale = \"deny\"\n".to_string();
    if revoked == 403 {
        extra.push_str("[authz]\nrevoked_status = \"permissiondenied\"\n");
    }
    let mut sidecar = Sidecar::start(&sidecar_config(&issuer, Some(&nats.url()), &extra));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let (up, _up) = upstream().await;
    let relay = Relay::start(sidecar.http).await;
    let front = Front::start(kind, relay.port, up.port());
    let http = reqwest::Client::new();
    let spoof = [
        ("x-user-id", "admin"),
        ("x-veto-roles", "admin"),
        ("cookie", "session=cookie-for-the-app-only"),
    ];

    // valid token: 200, the upstream sees veto's identity, not the client's
    let token = issuer.mint("alice", "sess-1");
    let a = send(&http, &front, Some(&token), &spoof, None).await;
    assert_eq!(a.status, 200, "{}", logs(&front, &sidecar, "valid token"));
    let seen = a.upstream_saw().expect("the upstream answered");
    assert_eq!(seen["x-user-id"], "alice", "{seen:?}");
    if kind == Kind::Caddy {
        // nginx cannot drop headers by prefix: there each configured header is overwritten.
        assert!(!seen.contains_key("x-veto-roles"), "{seen:?}");
    }

    // a token without `sub`: allowed, and the forged identity still does not get through
    let mut c = issuer.claims("x", "sess-nosub");
    c.as_object_mut().unwrap().remove("sub");
    let nosub = issuer.key.sign(&c).unwrap();
    let a = send(&http, &front, Some(&nosub), &spoof, None).await;
    assert_eq!(
        a.status,
        200,
        "{}",
        logs(&front, &sidecar, "token without sub")
    );
    let seen = a.upstream_saw().expect("the upstream answered");
    assert!(
        !seen.contains_key("x-user-id"),
        "a client-sent x-user-id reached the upstream: {seen:?}"
    );

    // the body goes to the upstream, never to /check; nor does the forged header
    let marker = "veto-body-marker-0123456789";
    let a = send(&http, &front, Some(&token), &spoof, Some(marker)).await;
    assert_eq!(a.status, 200, "{}", logs(&front, &sidecar, "POST"));
    let seen = a.upstream_saw().expect("the upstream answered");
    assert_eq!(seen["content-length"], marker.len().to_string(), "{seen:?}");
    let sent = relay.sent();
    assert!(sent.contains("get /check"), "{sent}");
    assert!(sent.contains(&format!("authorization: bearer {}", token.to_lowercase())));
    assert!(
        !sent.contains(marker),
        "the body was sent to /check:\n{sent}"
    );
    assert!(
        !sent.contains("x-user-id"),
        "x-user-id sent to /check:\n{sent}"
    );
    assert!(
        !sent.contains("cookie-for-the-app-only"),
        "cookie sent to /check"
    );

    // two Authorization headers: refused, by nginx itself (400) or by veto (401)
    let second = format!("Bearer {}", issuer.mint("mallory", "sess-m"));
    let a = send(
        &http,
        &front,
        Some(&token),
        &[("authorization", &second)],
        None,
    )
    .await;
    let want = match kind {
        Kind::Nginx => 400,
        Kind::Caddy => 401,
    };
    assert_eq!(a.status, want, "{}", logs(&front, &sidecar, "two tokens"));
    assert!(a.upstream_saw().is_none(), "{}", a.body);
    if kind == Kind::Caddy {
        assert_eq!(a.reason().as_deref(), Some("malformed"), "{}", a.body);
    }

    // no token: 401 with veto's challenge (no error attribute), never the upstream
    let a = send(&http, &front, None, &spoof, None).await;
    assert_eq!(a.status, 401, "{}", logs(&front, &sidecar, "no token"));
    assert_eq!(
        a.www.as_deref(),
        Some("Bearer realm=\"veto\""),
        "{}",
        logs(&front, &sidecar, "no token")
    );
    assert_eq!(a.headers["cache-control"], "no-store");
    assert!(a.upstream_saw().is_none(), "{}", a.body);

    // garbage, forged and wrong-audience tokens: 401 invalid_token
    let forged = veto::token::sign::SigningKey::generate(Alg::ES256, "k1")
        .unwrap()
        .sign(&issuer.claims("alice", "sess-2"))
        .unwrap();
    let mut c = issuer.claims("alice", "sess-3");
    c["aud"] = "other".into();
    let wrong_aud = issuer.key.sign(&c).unwrap();
    for (t, reason) in [
        ("not.a.jwt", "malformed"),
        (forged.as_str(), "bad_signature"),
        (wrong_aud.as_str(), "wrong_audience"),
    ] {
        let a = send(&http, &front, Some(t), &[], None).await;
        assert_eq!(a.status, 401, "{}", logs(&front, &sidecar, reason));
        let www = a.www.clone().unwrap_or_default();
        assert!(
            www.starts_with("Bearer realm=\"veto\", error=\"invalid_token\""),
            "{reason}: {www}"
        );
        assert!(a.upstream_saw().is_none(), "{}", a.body);
        if kind == Kind::Caddy {
            assert_eq!(a.reason().as_deref(), Some(reason), "{}", a.body);
        }
    }

    // revoke the session: the same token is refused through the proxy within 2 s, with the
    // status veto gives it
    revoke(&nats.url(), &["--session", "sess-1"]);
    let took = eventually(Duration::from_secs(2), || async {
        send(&http, &front, Some(&token), &[], None).await.status == revoked
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{}",
            logs(&front, &sidecar, "revocation not enforced within 2 s")
        )
    });
    let a = send(&http, &front, Some(&token), &[], None).await;
    assert_eq!(a.status, revoked);
    assert!(a.upstream_saw().is_none(), "{}", a.body);
    let www = a.www.as_deref().unwrap_or_default();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    if kind == Kind::Caddy {
        assert_eq!(a.reason().as_deref(), Some("revoked"), "{}", a.body);
    }
    let other = issuer.mint("alice", "sess-9");
    let a = send(&http, &front, Some(&other), &[], None).await;
    assert_eq!(
        a.status,
        200,
        "{}",
        logs(&front, &sidecar, "another session")
    );

    // the feed lost: veto answers 503 feed_stale, and so does the proxy, with Retry-After
    nats.kill();
    let stale = eventually(Duration::from_secs(8), || async {
        send(&http, &front, Some(&other), &[], None).await.status == 503
    })
    .await
    .unwrap_or_else(|| panic!("{}", logs(&front, &sidecar, "feed never went stale")));
    let a = send(&http, &front, Some(&other), &spoof, None).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "1");
    assert!(a.upstream_saw().is_none(), "{}", a.body);
    if kind == Kind::Caddy {
        assert_eq!(a.reason().as_deref(), Some("feed_stale"), "{}", a.body);
    }

    // the sidecar down: first behind a relay that closes the connection, then refused
    sidecar.kill();
    let mut down = Vec::new();
    for stage in ["connection closed", "connection refused"] {
        if stage == "connection refused" {
            relay.stop();
        }
        let a = send(&http, &front, Some(&other), &spoof, None).await;
        assert!(a.upstream_saw().is_none(), "{stage}: reached the upstream");
        let want = match kind {
            Kind::Nginx => 503,
            Kind::Caddy => 502,
        };
        assert_eq!(a.status, want, "{}", logs(&front, &sidecar, stage));
        if kind == Kind::Nginx {
            assert_eq!(a.headers["retry-after"], "1");
        }
        down.push(a.status);
    }
    println!(
        "{kind:?}: allow 200 with x-user-id=alice at the upstream, forged x-user-id dropped, \
         body not sent to /check; missing/garbage/forged/wrong-aud 401 with veto's challenge; \
         revoked -> {revoked} after {took:?}; feed lost -> 503 after {stale:?}; \
         sidecar down -> {down:?}; whole run {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_veto() {
    exercise(Kind::Nginx, 401).await;
}

/// `authz.revoked_status = "permissiondenied"`: nginx's own 403 carries veto's challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_veto_403_for_revoked_tokens() {
    exercise(Kind::Nginx, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_in_front_of_veto() {
    exercise(Kind::Caddy, 401).await;
}
