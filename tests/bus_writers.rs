//! Who may write to the bus (issue 12 §3), against real nats-server 2.9 topologies in their
//! shipped shape (no `no_auth_user`, random passwords from the servers' environment):
//! a `sidecar` login can publish neither a revocation event nor a heartbeat (the server
//! reports the violation, the stream holds nothing, a real sidecar keeps allowing the token);
//! `veto revoke` as the sidecar fails at once with exit 77; as `revoker` it is enforced;
//! heartbeats are `authority`'s alone (revoker and operator are refused). With `--tls`, three
//! regions carry a revocation from us to eu and ap over TLS gateways and leaf nodes, and a
//! plaintext client is refused.

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::{eventually, nats_section, sidecar_config, veto, Issuer, Sidecar};
use topology_support::{stream, LocalTopology};
use veto::bus::topology::NatsUser;
use veto::bus::{Events, Initial};
use veto::revocation::{Kind, RevocationEvent};
use veto::token::Alg;

/// A client logged in as `user` through `veto::bus::connect`, with its connection events.
async fn login(topo: &LocalTopology, region: &str, user: NatsUser) -> (async_nats::Client, Events) {
    let mut cfg = topo.connection_as(region, user);
    if user == NatsUser::Authority {
        cfg.inbox_prefix = Some(veto::bus::names::AUTHORITY_INBOX_PREFIX.to_string());
    }
    veto::bus::connect(&cfg, &format!("test-{region}-{user}"), Initial::Fail)
        .await
        .unwrap_or_else(|e| panic!("{user} in {region}: {e}"))
}

/// Waits until the server reported a permissions violation mentioning `what`.
async fn wait_violation(events: &mut Events, what: &str) {
    let what = what.to_lowercase();
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        while let Ok(ev) = events.try_recv() {
            if let async_nats::Event::ServerError(e) = ev {
                seen.push(e.to_string().to_lowercase());
            }
        }
        if seen
            .iter()
            .any(|e| e.contains("permissions violation") && e.contains(&what))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no permissions violation for {what} within 5 s; server errors: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn session_event(origin: &str, event_id: &str, session: &str) -> RevocationEvent {
    RevocationEvent::new(
        event_id,
        Kind::Session,
        session,
        origin,
        veto::now_ms(),
        Duration::from_secs(3600),
    )
}

/// `veto revoke --session <session>` in `region` as `user`: (exit code, output, time taken).
fn revoke_as(
    topo: &LocalTopology,
    region: &str,
    user: NatsUser,
    session: &str,
) -> (i32, String, Duration) {
    let url = topo.js_url(region);
    let mut args: Vec<String> = ["revoke", "--session", session, "--nats", &url, "--region"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(region.into());
    args.extend(topo.login_args(user));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let (code, out, err) = veto(&args);
    (code, format!("{out}{err}"), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_authorities_and_revokers_write_revocations_and_only_authorities_heartbeats() {
    let test_start = Instant::now();
    let topo = LocalTopology::start_with(&["us"], None);
    topo.wait_linked(Duration::from_secs(15)).await;
    topo.provision_all().await;
    let _beat = topo.heartbeat("us");

    // A real sidecar, logged in as `sidecar`: ready once the authority's heartbeats arrive.
    let issuer = Issuer::new(Alg::ES256);
    let config = sidecar_config(
        &issuer,
        None,
        &nats_section(
            &topo.js_url("us"),
            "us",
            &["us"],
            &topo.nats_login(NatsUser::Sidecar),
        ),
    );
    let sidecar = Sidecar::start(&config);
    let ready = eventually(Duration::from_secs(20), || sidecar.ready()).await;
    assert!(
        ready.is_some(),
        "sidecar never ready (heartbeats as authority):\n{}\n{}",
        sidecar.log(),
        topo.logs()
    );
    let forged = format!("Bearer {}", issuer.mint("u", "s-forged"));
    assert_eq!(sidecar.check(Some(&forged)).await.status(), 200);

    // The sidecar identity publishes an event (JetStream and core) and a heartbeat: refused.
    let (side, mut side_events) = login(&topo, "us", NatsUser::Sidecar).await;
    let side_js = veto::bus::jetstream(side.clone(), Some("us"));
    let ev = session_event("us", "forged-1", "s-forged");
    let short = Duration::from_millis(800);
    assert!(
        veto::bus::publish_event(&side_js, &ev, short)
            .await
            .is_err(),
        "a sidecar's revocation was acknowledged"
    );
    wait_violation(
        &mut side_events,
        "publish to \"veto.revocations.us.ev.forged-1\"",
    )
    .await;
    side.publish(
        "veto.revocations.us.ev.forged-2",
        prost::Message::encode_to_vec(&session_event("us", "forged-2", "s-forged")).into(),
    )
    .await
    .expect("publish call");
    side.flush().await.expect("flush");
    wait_violation(
        &mut side_events,
        "publish to \"veto.revocations.us.ev.forged-2\"",
    )
    .await;
    assert!(
        veto::bus::publish_heartbeat(&side_js, "us", veto::now_ms(), short)
            .await
            .is_err(),
        "a sidecar's heartbeat was acknowledged"
    );
    wait_violation(&mut side_events, "publish to \"veto.revocations.us.hb\"").await;
    // ... the stream holds neither event, and the sidecar keeps allowing the session.
    let js = topo.jetstream("us").await;
    let s = js.get_stream(stream("us")).await.expect("stream");
    for id in ["forged-1", "forged-2"] {
        let held = s
            .get_last_raw_message_by_subject(&format!("veto.revocations.us.ev.{id}"))
            .await;
        assert!(held.is_err(), "the stream holds the sidecar's {id}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sidecar.check(Some(&forged)).await.status(),
        200,
        "a sidecar identity's revocation was applied"
    );

    // `veto revoke` as the sidecar user: a clean, prompt failure (exit 77 = EX_NOPERM).
    let (code, out, took) = revoke_as(&topo, "us", NatsUser::Sidecar, "s-forged");
    assert_eq!(code, 77, "veto revoke as sidecar: {out}");
    assert!(
        out.to_lowercase().contains("permissions violation") && out.contains("revoker"),
        "{out}"
    );
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} (the timeout is 5 s)"
    );
    println!(
        "veto revoke as sidecar: exit {code} in {took:?}: {}",
        out.trim()
    );

    // As `revoker`: acknowledged and enforced by the sidecar.
    let (code, out, took) = revoke_as(&topo, "us", NatsUser::Revoker, "s-forged");
    assert_eq!(code, 0, "veto revoke as revoker: {out}");
    let denied = eventually(Duration::from_secs(5), || async {
        sidecar.check(Some(&forged)).await.status() == 401
    })
    .await;
    assert!(
        denied.is_some(),
        "the revoker's revocation was not enforced:\n{}",
        sidecar.log()
    );
    println!(
        "veto revoke as revoker: {} in {took:?}; enforced after {denied:?}",
        out.trim()
    );

    // Heartbeats: the authority's alone.
    for user in [NatsUser::Revoker, NatsUser::Operator] {
        let (c, mut events) = login(&topo, "us", user).await;
        let js = veto::bus::jetstream(c, Some("us"));
        assert!(
            veto::bus::publish_heartbeat(&js, "us", veto::now_ms(), short)
                .await
                .is_err(),
            "{user}'s heartbeat was acknowledged"
        );
        wait_violation(&mut events, "publish to \"veto.revocations.us.hb\"").await;
    }
    let (auth, mut auth_events) = login(&topo, "us", NatsUser::Authority).await;
    let auth_js = veto::bus::jetstream(auth, Some("us"));
    veto::bus::publish_heartbeat(&auth_js, "us", veto::now_ms(), Duration::from_secs(5))
        .await
        .expect("the authority's heartbeat is acknowledged");
    // ... and the operator still provisions (the stream update is its to make).
    topo.provision_all().await;
    while let Ok(ev) = auth_events.try_recv() {
        if let async_nats::Event::ServerError(e) = ev {
            panic!("the authority hit a permission wall: {e}");
        }
    }
    assert!(
        !sidecar
            .log()
            .to_lowercase()
            .contains("permissions violation"),
        "{}",
        sidecar.log()
    );
    println!("whole test: {:?}", test_start.elapsed());
}

#[test]
fn missing_tls_files_are_usage_errors_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = Issuer::new(Alg::ES256);
    for (key, expected) in [
        ("tls_ca_file", "nats.tls_ca_file"),
        (
            "tls_cert_file = \"/dev/null\"\ntls_key_file",
            "nats.tls_key_file",
        ),
    ] {
        let cfg = sidecar_config(
            &issuer,
            None,
            &nats_section(
                "tls://127.0.0.1:4222",
                "us",
                &["us"],
                &format!("{key} = \"{}\"", dir.path().join("missing.pem").display()),
            ),
        );
        let path = dir.path().join("veto.toml");
        std::fs::write(&path, cfg).expect("config");
        let (code, out, err) = veto(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{key}: {out}{err}");
        let named = if key.starts_with("tls_cert_file") {
            // /dev/null is no PEM: the cert file is named first.
            err.contains("nats.tls_cert_file")
        } else {
            err.contains(expected)
        };
        assert!(named, "{key}: {err}");
    }
    let (code, _, err) = veto(&[
        "revoke",
        "--session",
        "s",
        "--nats",
        "tls://127.0.0.1:1",
        "--region",
        "us",
        "--nats-tls-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--nats-tls-ca-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_topology_carries_a_revocation_to_every_region_and_refuses_plaintext() {
    let test_start = Instant::now();
    const REGIONS: [&str; 3] = ["us", "eu", "ap"];
    let topo = LocalTopology::start_tls(&REGIONS);
    let linked = topo.wait_linked(Duration::from_secs(30)).await;
    topo.provision_all().await;
    for r in REGIONS {
        assert!(topo.js_url(r).starts_with("tls://"));
    }

    // Plaintext is refused: the server asks for TLS, and a client that does not trust the
    // topology's CA (or speaks plaintext) never gets in.
    let port = topo.topology.region("us").expect("us").ports.js_client;
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("tcp");
    raw.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut info = [0u8; 4096];
    let n = raw.read(&mut info).expect("INFO");
    let info = String::from_utf8_lossy(&info[..n]).to_string();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let pass = topo.topology.secrets.revoker_password.clone();
    let _ = raw.write_all(
        format!(
            "CONNECT {{\"user\":\"revoker\",\"pass\":\"{pass}\",\"verbose\":false}}\r\nPING\r\n"
        )
        .as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        !answer.contains("PONG"),
        "a plaintext client was served: {answer}"
    );
    let untrusting = async_nats::ConnectOptions::with_user_and_password("revoker".into(), pass)
        .connection_timeout(Duration::from_secs(2))
        .connect(topo.js_url("us"))
        .await;
    assert!(untrusting.is_err(), "a client without the CA connected");
    println!("plaintext client answered {answer:?}");

    let _beats: Vec<_> = REGIONS.iter().map(|r| topo.heartbeat(r)).collect();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecars = BTreeMap::new();
    for r in ["eu", "ap"] {
        let config = sidecar_config(
            &issuer,
            None,
            &nats_section(
                &topo.js_url(r),
                r,
                &REGIONS,
                &topo.nats_login(NatsUser::Sidecar),
            ),
        );
        sidecars.insert(r, Sidecar::start(&config));
    }
    for (r, s) in &sidecars {
        let ready = eventually(Duration::from_secs(30), || s.ready()).await;
        assert!(
            ready.is_some(),
            "{r} sidecar never ready over TLS:\n{}\n{}",
            s.log(),
            topo.logs()
        );
    }
    let token = format!("Bearer {}", issuer.mint("u", "s-tls"));
    for s in sidecars.values() {
        assert_eq!(s.check(Some(&token)).await.status(), 200);
    }
    let (code, out, took) = revoke_as(&topo, "us", NatsUser::Revoker, "s-tls");
    assert_eq!(code, 0, "veto revoke over TLS: {out}\n{}", topo.logs());
    let mut enforced = BTreeMap::new();
    for (r, s) in &sidecars {
        let denied = eventually(Duration::from_secs(10), || async {
            s.check(Some(&token)).await.status() == 401
        })
        .await;
        assert!(
            denied.is_some(),
            "revoked in us over TLS, still allowed in {r}:\n{}\n{}",
            s.log(),
            topo.logs()
        );
        enforced.insert(*r, denied.unwrap_or_default());
    }
    println!(
        "TLS topology linked in {linked:?}; veto revoke in us took {took:?}; enforced in {enforced:?}; whole test {:?}",
        test_start.elapsed()
    );
}

/// `veto nats topology` keeps secrets out of the configs: random passwords (new on every run)
/// in `secrets.env` and `passwords/<user>`, mode 0600; the configs the same on every run.
#[test]
fn topology_writes_random_secrets_next_to_configs_that_hold_none() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nats");
    let store = dir.path().join("js");
    let run = || {
        let (code, stdout, err) = veto(&[
            "nats",
            "topology",
            "--regions",
            "us,eu",
            "--base-port",
            "25000",
            "--store",
            store.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tls",
        ]);
        assert_eq!(code, 0, "{stdout}{err}");
        let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
        let configs: Vec<String> = ["us-hub.conf", "us-js.conf", "eu-hub.conf", "eu-js.conf"]
            .iter()
            .map(|n| read(n))
            .collect();
        (configs, read("secrets.env"), read("passwords/revoker"))
    };
    let (configs, env, revoker) = run();
    let (configs2, env2, revoker2) = run();
    assert_eq!(
        configs, configs2,
        "the configs do not depend on the secrets"
    );
    assert_ne!(env, env2, "fresh passwords on every run");
    assert_ne!(revoker, revoker2);
    assert_eq!(revoker2.len(), 32);
    assert!(revoker2.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(env2.contains(&format!("VETO_NATS_REVOKER_PASSWORD={revoker2}\n")));
    for (k, v) in env2.lines().filter_map(|l| l.split_once('=')) {
        if k.ends_with("_PASSWORD") {
            for c in &configs2 {
                assert!(!c.contains(v), "a config holds {k}");
            }
        }
    }
    for c in &configs2 {
        assert!(c.contains("tls {"), "{c}");
    }
    for f in [
        "secrets.env",
        "passwords/sidecar",
        "passwords/authority",
        "passwords/revoker",
        "passwords/operator",
        "tls/server-key.pem",
    ] {
        let mode = std::fs::metadata(out.join(f))
            .expect(f)
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(out.join("tls/ca.pem").exists() && out.join("tls/server.pem").exists());
}
