//! `veto inject` black-box: the real binary over real TLS (a CA and serving certificate made
//! by scripts/inject-cert.sh at test time, a client trusting only that CA and checking the
//! name), real AdmissionReview v1 fixtures in the shape kube-apiserver sends
//! (tests/fixtures/admission/), the returned JSONPatch applied to the pod and the result
//! validated with `kubernetes-validate --strict`.

mod support;

use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{free_port, wait_port, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Value {
    let p = repo().join("tests/fixtures/admission").join(name);
    serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("fixture JSON")
}

/// `scripts/inject-cert.sh --out dir` with the names the tests connect by.
fn make_certs(dir: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/inject-cert.sh"))
        .args(["--out"])
        .arg(dir)
        .args(["--san", "DNS:localhost", "--san", "IP:127.0.0.1"])
        .output()
        .expect("run scripts/inject-cert.sh (needs openssl)");
    assert!(
        out.status.success(),
        "inject-cert.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("caBundle: LS0t"), "{stdout}");
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .expect("a PEM certificate")
        .to_vec()
}

/// The webhook process, its certificate files laid out as a Kubernetes Secret volume
/// (`tls.crt -> ..data/tls.crt`, `..data -> ..<version>`), and clients for it.
struct Webhook {
    tls: u16,
    http: u16,
    proc: Proc,
    dir: tempfile::TempDir,
    ca: Vec<u8>,
    versions: u32,
}

const CONFIG: &str = r#"
[log]
level = "debug"
[shutdown]
drain = "1s"
grace = "4s"
[inject]
reload_interval = "100ms"
handshake_timeout = "1s"
request_timeout = "2s"
[inject.profiles.default]
veto_image = "registry.example.com/veto:0.1.0"
veto_config_map = "veto-sidecar"
envoy_image = "envoyproxy/envoy:v1.40.0"
envoy_config_map = "veto-envoy"
[inject.profiles.strict]
veto_image = "registry.example.com/veto:0.1.0"
veto_config_map = "veto-sidecar-strict"
envoy_image = "envoyproxy/envoy:v1.40.0"
envoy_config_map = "veto-envoy"
"#;

impl Webhook {
    fn start() -> Webhook {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        make_certs(&certs);
        let ca = std::fs::read(certs.join("ca.crt")).expect("ca.crt");
        let mut w = Webhook {
            tls: free_port(),
            http: free_port(),
            proc: Proc::default(),
            dir,
            ca,
            versions: 0,
        };
        let secret = w.dir.path().join("secret");
        std::fs::create_dir(&secret).expect("mkdir");
        w.publish(false);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).expect("symlink");
        }
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n{}",
            w.http,
            CONFIG.replace(
                "[inject]\n",
                &format!(
                    "[inject]\nlisten = \"127.0.0.1:{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    w.tls,
                    secret.join("tls.crt").display(),
                    secret.join("tls.key").display()
                )
            )
        );
        let path = w.dir.path().join("inject.toml");
        std::fs::write(&path, config).expect("config");
        let log = std::fs::File::create(w.dir.path().join("inject.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_veto"))
            .args(["inject", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start veto inject");
        w.proc = Proc(Some(child));
        assert!(
            wait_port(w.tls, Duration::from_secs(10)) && wait_port(w.http, Duration::from_secs(5)),
            "veto inject did not listen:\n{}",
            w.log()
        );
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("inject.log")).unwrap_or_default()
    }

    /// Copies certs/tls.{crt,key} into a new `..<n>` directory and swaps `..data` to it by
    /// rename, as the kubelet updates a Secret volume. `broken`: a garbage certificate.
    fn publish(&mut self, broken: bool) {
        self.versions += 1;
        let secret = self.dir.path().join("secret");
        let version = format!("..v{}", self.versions);
        let vdir = secret.join(&version);
        std::fs::create_dir(&vdir).expect("mkdir");
        let certs = self.dir.path().join("certs");
        if broken {
            std::fs::write(
                vdir.join("tls.crt"),
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            )
            .expect("write");
        } else {
            std::fs::copy(certs.join("tls.crt"), vdir.join("tls.crt")).expect("copy");
        }
        std::fs::copy(certs.join("tls.key"), vdir.join("tls.key")).expect("copy");
        let tmp = secret.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, secret.join("..data")).expect("swap ..data");
    }

    /// A new serving certificate from the same CA (inject-cert.sh keeps ca.key), published.
    fn rotate(&mut self) -> Vec<u8> {
        make_certs(&self.dir.path().join("certs"));
        self.publish(false);
        pem_der(&std::fs::read(self.dir.path().join("certs/tls.crt")).expect("tls.crt"))
    }

    /// reqwest trusting only the test CA, verifying the name `localhost`.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.ca).expect("CA")])
            .resolve(
                "localhost",
                std::net::SocketAddr::from(([127, 0, 0, 1], self.tls)),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls)
    }

    async fn review(&self, path: &str, review: &Value) -> Value {
        let r = self
            .client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
            .await
            .expect("review");
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.expect("AdmissionReview JSON")
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    async fn readyz(&self) -> u16 {
        match reqwest::get(format!("http://127.0.0.1:{}/readyz", self.http)).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.readyz().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not ready:\n{}", self.log());
    }

    /// A raw TLS connection (tokio-rustls, trusting the test CA, verifying `localhost`),
    /// with or without SNI.
    async fn tls_stream(
        &self,
        sni: bool,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(&self.ca).expect("CA"))
            .expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.enable_sni = sni;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.tls)).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
    }

    /// The DER of the certificate a new connection is served.
    async fn served_cert(&self) -> Vec<u8> {
        let s = self.tls_stream(true).await.expect("handshake");
        s.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    }

    /// One request over a raw TLS stream (HTTP/1.1, `Connection: close`): (status, body).
    async fn raw_post(&self, sni: bool, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = self.tls_stream(sni).await.expect("handshake");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body).await.expect("write");
        read_response(&mut s).await
    }

    /// The server answers a good review (after whatever the test did to it).
    async fn still_serves(&self) {
        let r = self.review("/mutate", &fixture("pod-create.json")).await;
        assert_eq!(r["response"]["allowed"], true, "{r}");
        assert_eq!(r["response"]["patchType"], "JSONPatch");
    }
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u16, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The patch of a review response, decoded.
fn patch_of(response: &Value) -> Vec<Value> {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("patch"))
        .expect("base64 patch");
    serde_json::from_slice(&raw).expect("patch JSON")
}

fn apply(pod: &Value, ops: &[Value]) -> Value {
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(ops.to_vec())).expect("an RFC 6902 patch");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).expect("the patch applies to the pod");
    out
}

fn kubernetes_validate() -> PathBuf {
    let venv = std::env::var("VETO_VENV")
        .ok()
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv"));
    let bin = venv.join("bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} not found: run scripts/install-deps.sh, or set VETO_VENV to a venv with kubernetes-validate",
        bin.display()
    );
    bin
}

/// `kubernetes-validate --strict` of `pod` against 1.29 (the first with native sidecars by
/// default) and 1.37.
fn validate_pod(pod: &Value, dir: &Path, name: &str) {
    let mut pod = pod.clone();
    // a generateName pod gets its name after admission; the validator wants one to print
    pod["metadata"]["name"] = json!(name);
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, pod.to_string()).expect("write pod");
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "-k", "1.29.0", "-k", "1.37.0"])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", text.trim_end());
    assert!(
        out.status.success() && text.matches("passed").count() == 2,
        "the patched pod does not validate:\n{text}\n{}",
        serde_json::to_string_pretty(&pod).unwrap_or_default()
    );
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_real_pods_once_and_the_result_validates() {
    let w = Webhook::start();
    w.wait_ready().await;

    // an opted-in pod from a ReplicaSet, with a service-account volume and annotations
    let review = fixture("pod-create.json");
    let uid = review["request"]["uid"].clone();
    let r = w.review("/mutate", &review).await;
    assert_eq!(r["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(r["kind"], "AdmissionReview");
    assert_eq!(r["response"]["uid"], uid);
    assert_eq!(r["response"]["allowed"], true);
    let ops = patch_of(&r["response"]);
    let pod = &review["request"]["object"];
    let patched = apply(pod, &ops);
    let init = &patched["spec"]["initContainers"];
    assert_eq!(init[0]["name"], "veto", "veto starts first");
    assert_eq!(init[1]["name"], "envoy");
    let veto = container(init, "veto");
    assert_eq!(veto["restartPolicy"], "Always");
    assert_eq!(veto["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(veto["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        veto["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let vols: Vec<&str> = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vols,
        ["kube-api-access-x7k2p", "veto-config", "veto-envoy-config"]
    );
    assert_eq!(
        patched["metadata"]["annotations"]["veto.dev/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        patched["metadata"]["annotations"]["veto.dev/inject"],
        "true"
    );
    assert_eq!(patched["metadata"]["labels"]["veto/sidecar"], "enabled");
    assert_eq!(patched["spec"]["containers"], pod["spec"]["containers"]);
    let dir = tempfile::tempdir().expect("tempdir");
    validate_pod(&patched, dir.path(), "app-annotated");

    // the second time (reinvocation, or a re-run): allowed, no patch
    let mut again = review.clone();
    again["request"]["object"] = patched.clone();
    let r2 = w.review("/mutate", &again).await;
    assert_eq!(r2["response"]["allowed"], true);
    assert!(r2["response"].get("patch").is_none(), "{r2}");

    // a bare pod (no annotations, no volumes, a short grace) of an opted-in namespace
    let bare = fixture("pod-create-bare.json");
    let r3 = w.review("/mutate/namespace", &bare).await;
    assert_eq!(r3["response"]["uid"], bare["request"]["uid"]);
    let ops3 = patch_of(&r3["response"]);
    let paths: Vec<&str> = ops3.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/metadata/annotations"), "{paths:?}");
    assert!(paths.contains(&"/spec/volumes"), "{paths:?}");
    assert!(
        paths.contains(&"/metadata/labels/veto~1sidecar"),
        "{paths:?}"
    );
    let patched3 = apply(&bare["request"]["object"], &ops3);
    assert_eq!(patched3["spec"]["terminationGracePeriodSeconds"], 30);
    validate_pod(&patched3, dir.path(), "app-bare");

    // the same bare pod on the opt-in entry: not asked for, untouched
    let r4 = w.review("/mutate", &bare).await;
    assert_eq!(r4["response"]["allowed"], true);
    assert!(r4["response"].get("patch").is_none(), "{r4}");

    // a pod that opts out of its namespace's injection
    let mut out = review.clone();
    out["request"]["object"]["metadata"]["annotations"]["veto.dev/inject"] = json!("false");
    let r5 = w.review("/mutate/namespace", &out).await;
    assert!(r5["response"].get("patch").is_none(), "{r5}");

    // another profile by annotation
    let mut strict = review.clone();
    strict["request"]["object"]["metadata"]["annotations"]["veto.dev/config"] = json!("strict");
    let r6 = w.review("/mutate", &strict).await;
    let p6 = apply(&strict["request"]["object"], &patch_of(&r6["response"]));
    let cm = p6["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "veto-config")
        .unwrap();
    assert_eq!(cm["configMap"]["name"], "veto-sidecar-strict");

    // a Deployment: not a kind the webhook handles, allowed untouched
    let dep = fixture("deployment-create.json");
    let r7 = w.review("/mutate", &dep).await;
    assert_eq!(r7["response"]["uid"], dep["request"]["uid"]);
    assert_eq!(r7["response"]["allowed"], true);
    assert!(r7["response"].get("patch").is_none(), "{r7}");

    // an unknown profile: refused, naming the annotation and the known profiles
    let mut unknown = review.clone();
    unknown["request"]["object"]["metadata"]["annotations"]["veto.dev/config"] = json!("nope");
    let r8 = w.review("/mutate", &unknown).await;
    assert_eq!(r8["response"]["uid"], uid);
    assert_eq!(r8["response"]["allowed"], false);
    assert_eq!(r8["response"]["status"]["code"], 400);
    let msg = r8["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("veto.dev/config")
            && msg.contains("\"nope\"")
            && msg.contains("default, strict"),
        "{msg}"
    );

    let m = w.metrics().await;
    for (result, n) in [
        ("injected", 3.0),
        ("already_injected", 1.0),
        ("not_selected", 1.0),
        ("opted_out", 1.0),
        ("ignored", 1.0),
        ("refused", 1.0),
    ] {
        let got = support::metric_sum(
            &m,
            "veto_inject_reviews_total",
            &[&format!("result=\"{result}\"")],
        );
        assert_eq!(got, n, "{result}:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_cleanly_and_the_server_keeps_serving() {
    let w = Webhook::start();
    w.wait_ready().await;
    let c = w.client();
    let post = |body: Vec<u8>| {
        c.post(w.url("/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // not JSON; JSON that is not a review; a review of another version
    let not_json = post(b"hello".to_vec()).await.expect("send");
    assert_eq!(not_json.status(), 400);
    let e: Value = not_json.json().await.expect("JSON error");
    assert!(e["error"].as_str().unwrap().contains("not JSON"), "{e}");
    let not_review = post(br#"{"hello":"world"}"#.to_vec()).await.expect("send");
    assert_eq!(not_review.status(), 400);
    let mut v1beta1 = fixture("pod-create.json");
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let old = post(v1beta1.to_string().into_bytes()).await.expect("send");
    assert_eq!(old.status(), 400);
    let e: Value = old.json().await.expect("JSON error");
    assert!(e["error"].as_str().unwrap().contains("v1beta1"), "{e}");
    // a review whose uid is readable but whose pod is not an object: an answer with the uid
    let mut broken = fixture("pod-create.json");
    broken["request"]["object"] = json!([1, 2, 3]);
    let r = w.review("/mutate", &broken).await;
    assert_eq!(r["response"]["uid"], broken["request"]["uid"]);
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["status"]["code"], 400);
    // wrong method, wrong path
    assert_eq!(
        c.get(w.url("/mutate")).send().await.expect("get").status(),
        405
    );
    assert_eq!(
        c.post(w.url("/nope"))
            .body("{}")
            .send()
            .await
            .expect("post")
            .status(),
        404
    );
    w.still_serves().await;

    // 10 MiB: declared and refused before a byte of it is read ...
    let mut s = w.tls_stream(true).await.expect("handshake");
    s.write_all(
        b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 10485760\r\n\r\n",
    )
    .await
    .expect("write");
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_body_bytes"), "{body}");
    // ... and sent for real by reqwest: depending on timing it reads the 413 or sees the
    // connection closed under its upload (the server does not read what it refuses)
    let big = vec![b' '; 10 * 1024 * 1024];
    match post(big).await {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => println!("10 MiB upload cut off by the server: {e}"),
    }
    // chunked, without a length: read up to the limit, then refused
    let mut s = w.tls_stream(true).await.expect("handshake");
    s.write_all(
        b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .expect("write");
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    for _ in 0..160 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (status, _) = read_response(&mut s).await;
    assert!(status == 413 || status == 0, "{status}");
    w.still_serves().await;

    // plaintext HTTP and garbage to the TLS port: dropped
    for bytes in [
        b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x00, 0x00],
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", w.tls))
            .await
            .expect("connect");
        tcp.write_all(&bytes).await.expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server did not drop the connection");
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    }
    // a client that connects and says nothing: dropped at inject.handshake_timeout (1s)
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", w.tls))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("dropped within the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // headers that never finish: closed at inject.request_timeout (2s)
    let mut slow = w.tls_stream(true).await.expect("handshake");
    slow.write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .expect("write");
    let (status, _) = read_response(&mut slow).await;
    assert!(status == 0 || status == 408, "{status}");
    w.still_serves().await;

    // no SNI: tokio-rustls with enable_sni = false, and reqwest by IP address (which sends
    // none); both get the one certificate, verified, and an answer
    let review = fixture("pod-create.json").to_string();
    let (status, body) = w.raw_post(false, "/mutate", review.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).expect("review JSON");
    assert_eq!(r["response"]["allowed"], true);
    let by_ip = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&w.ca).expect("CA")])
        .build()
        .expect("client")
        .post(format!("https://127.0.0.1:{}/mutate", w.tls))
        .body(review)
        .send()
        .await
        .expect("by IP, no SNI");
    assert_eq!(by_ip.status(), 200);

    w.still_serves().await;
    let m = w.metrics().await;
    assert!(
        support::metric_sum(&m, "veto_inject_reviews_total", &["result=\"malformed\""]) >= 3.0,
        "{m}"
    );
    assert!(
        support::metric_sum(&m, "veto_inject_reviews_total", &["result=\"too_large\""]) >= 1.0,
        "{m}"
    );
    assert!(
        support::metric_sum(&m, "veto_inject_tls_handshake_failures_total", &[]) >= 3.0,
        "{m}"
    );
    assert!(
        support::metric_sum(
            &m,
            "veto_inject_tls_handshake_failures_total",
            &["reason=\"timeout\""]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_and_a_broken_one_ignored() {
    let mut w = Webhook::start();
    w.wait_ready().await;
    let first = w.served_cert().await;
    assert_eq!(
        first,
        pem_der(&std::fs::read(w.dir.path().join("certs/tls.crt")).unwrap())
    );

    let second = w.rotate();
    assert_ne!(first, second);
    let took = support::eventually(Duration::from_secs(5), || async {
        w.served_cert().await == second
    })
    .await
    .unwrap_or_else(|| panic!("the new certificate was not served:\n{}", w.log()));
    println!("new certificate served {took:?} after the swap");
    w.still_serves().await;

    // a broken certificate: logged, counted, the previous one kept
    w.publish(true);
    let counted = support::eventually(Duration::from_secs(5), || async {
        let m = w.metrics().await;
        support::metric_sum(&m, "veto_inject_cert_reloads_total", &["result=\"error\""]) == 1.0
    })
    .await;
    assert!(counted.is_some(), "{}", w.metrics().await);
    assert_eq!(w.served_cert().await, second);
    let m = w.metrics().await;
    assert_eq!(
        support::metric(&m, "veto_inject_cert_last_reload_ok"),
        Some(0.0)
    );
    w.still_serves().await;

    // fixed again
    let third = w.rotate();
    support::eventually(Duration::from_secs(5), || async {
        w.served_cert().await == third
    })
    .await
    .expect("the fixed certificate is served");
    let m = w.metrics().await;
    assert_eq!(
        support::metric(&m, "veto_inject_cert_last_reload_ok"),
        Some(1.0)
    );
    assert_eq!(
        support::metric_sum(&m, "veto_inject_cert_reloads_total", &["result=\"ok\""]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits() {
    let mut w = Webhook::start();
    w.wait_ready().await;
    w.proc.terminate();
    let unready =
        support::eventually(Duration::from_secs(2), || async { w.readyz().await == 503 }).await;
    assert!(unready.is_some(), "not unready after SIGTERM");
    // still answering during shutdown.drain (1s)
    w.still_serves().await;
    let status = w
        .proc
        .wait_exit(Duration::from_secs(6))
        .expect("exited within the grace");
    assert!(status.success(), "{status:?}\n{}", w.log());
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    make_certs(&certs);
    let cfg = |extra: &str, cert: &str, key: &str| {
        let p = dir.path().join("c.toml");
        let text = CONFIG.replace(
            "[inject]\n",
            &format!("[inject]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n{extra}"),
        );
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let crt = certs.join("tls.crt").display().to_string();
    let key = certs.join("tls.key").display().to_string();
    let ca_key = certs.join("ca.key").display().to_string();

    let ok = cfg("", &crt, &key);
    let (code, out, err) = support::veto(&["inject", "--config", &ok, "--check"]);
    assert_eq!(code, 0, "{out}{err}");
    for (extra, cert, k, want) in [
        ("", "/nonexistent/tls.crt", key.as_str(), "inject.cert_file"),
        ("", crt.as_str(), ca_key.as_str(), "inject.key_file"),
        ("", key.as_str(), key.as_str(), "inject.cert_file"),
        (
            "default_profile = \"nope\"\n",
            crt.as_str(),
            key.as_str(),
            "inject.default_profile",
        ),
        (
            "max_body_bytes = 1\n",
            crt.as_str(),
            key.as_str(),
            "inject.max_body_bytes",
        ),
        (
            "listen = \"nope\"\n",
            crt.as_str(),
            key.as_str(),
            "inject.listen",
        ),
    ] {
        let p = cfg(extra, cert, k);
        let (code, out, err) = support::veto(&["inject", "--config", &p]);
        assert_eq!(code, 64, "{want}: {out}{err}");
        assert!(err.contains(want), "{want}: {err}");
    }

    // the configuration shipped in k8s/inject/configmap.yaml loads (its certificate paths
    // pointed at the test's)
    let manifest =
        std::fs::read_to_string(repo().join("k8s/inject/configmap.yaml")).expect("configmap");
    let toml: String = manifest
        .split_once("inject.toml: |\n")
        .expect("inject.toml in the ConfigMap")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let p = dir.path().join("shipped.toml");
    std::fs::write(&p, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_veto"))
        .args(["inject", "--check", "--config"])
        .arg(&p)
        .env("VETO__INJECT__CERT_FILE", &crt)
        .env("VETO__INJECT__KEY_FILE", &key)
        .output()
        .expect("veto inject --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
