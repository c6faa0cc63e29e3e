//! The NATS users of the generated topology, black-box, against a real two-region topology in
//! its shipped shape (no `no_auth_user`): a `sidecar` login follows the revocation feed — a real
//! sidecar process becomes ready and enforces revocations from both regions — but cannot read
//! the authorities' refresh traffic, their reply inbox or the session bucket; two `authority`
//! logins in different regions talk request-reply on `_VETO_AUTHORITY_INBOX`; anonymous
//! connections are refused.

#[path = "support/authority.rs"]
mod authority_support;
mod support;
#[path = "support/topology.rs"]
mod topology_support;

use futures::StreamExt;
use std::time::{Duration, Instant};
use support::{eventually, nats_section, sidecar_config, veto, Issuer, Sidecar};
use topology_support::{stream, LocalTopology};
use veto::bus::names::{refresh_subject, AUTHORITY_INBOX_PREFIX, AUTHORITY_QUEUE, SESSION_BUCKET};
use veto::bus::topology::NatsUser;
use veto::bus::{Events, Initial};
use veto::token::Alg;

/// A client logged in as `user` (through `veto::bus::connect`, as the sidecar and the
/// authority do), with its connection events; authorities use their own inbox prefix.
async fn login(topo: &LocalTopology, region: &str, user: NatsUser) -> (async_nats::Client, Events) {
    let mut cfg = topo.connection_as(region, user);
    if user == NatsUser::Authority {
        cfg.inbox_prefix = Some(AUTHORITY_INBOX_PREFIX.to_string());
    }
    veto::bus::connect(&cfg, &format!("test-{region}-{user}"), Initial::Fail)
        .await
        .unwrap_or_else(|e| panic!("{user} in {region}: {e}"))
}

/// The permission violations the server reported so far (`-ERR 'Permissions Violation ...'`,
/// which async-nats hands to the event callback), lower-cased.
fn violations(events: &mut Events, seen: &mut Vec<String>) -> Vec<String> {
    while let Ok(ev) = events.try_recv() {
        if let async_nats::Event::ServerError(e) = ev {
            seen.push(e.to_string().to_lowercase());
        }
    }
    seen.iter()
        .filter(|e| e.contains("permissions violation"))
        .cloned()
        .collect()
}

/// Waits until a violation mentioning `what` (e.g. `subscription to "veto.authority.>"`)
/// was reported.
async fn wait_violation(events: &mut Events, seen: &mut Vec<String>, what: &str) {
    let what = what.to_lowercase();
    let start = Instant::now();
    loop {
        if violations(events, seen).iter().any(|v| v.contains(&what)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no permissions violation for {what} within 5 s; server errors: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `sub` receives nothing within `bound`.
async fn silent(sub: &mut async_nats::Subscriber, what: &str, bound: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(bound, sub.next()).await {
        panic!("{what} received {:?}", m.subject);
    }
}

fn revoke(topo: &LocalTopology, region: &str, session: &str) {
    let mut args: Vec<String> = ["revoke", "--session", session, "--nats"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([topo.js_url(region), "--region".into(), region.into()]);
    args.extend(topo.login_args(NatsUser::Revoker));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = veto(&args);
    assert_eq!(code, 0, "veto revoke in {region}: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_users_follow_the_feed_but_never_see_authority_traffic_or_sessions() {
    let test_start = Instant::now();
    let topo = LocalTopology::start_with(&["us", "eu"], None);
    topo.wait_linked(Duration::from_secs(15)).await;
    topo.provision_all().await;

    // Anonymous connections are refused, on the JetStream servers and on the hubs.
    for url in [topo.js_url("us"), topo.topology.hub_url("eu").expect("eu")] {
        let anon = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await;
        assert!(anon.is_err(), "anonymous connection to {url} accepted");
    }
    let wrong = async_nats::ConnectOptions::with_user_and_password(
        "sidecar".into(),
        topo.topology.secrets.operator_password.clone(),
    )
    .connect(topo.js_url("us"))
    .await;
    assert!(wrong.is_err(), "sidecar logged in with another's password");

    let _beats: Vec<_> = ["us", "eu"].iter().map(|r| topo.heartbeat(r)).collect();

    // A real sidecar in us, logged in as `sidecar`, ensure_stream on (stream info + update):
    // it replays a revocation made before it started and then enforces one made in eu.
    let issuer = Issuer::new(Alg::ES256);
    revoke(&topo, "us", "s-before");
    let config = sidecar_config(
        &issuer,
        None,
        &nats_section(
            &topo.js_url("us"),
            "us",
            &["us", "eu"],
            &topo.nats_login(NatsUser::Sidecar),
        ),
    );
    let sidecar = Sidecar::start(&config);
    let ready = eventually(Duration::from_secs(20), || sidecar.ready()).await;
    assert!(
        ready.is_some(),
        "a sidecar logged in as `sidecar` never became ready:\n{}\n{}",
        sidecar.log(),
        topo.logs()
    );
    let before = format!("Bearer {}", issuer.mint("u", "s-before"));
    assert_eq!(sidecar.check(Some(&before)).await.status(), 401, "replay");
    let after = format!("Bearer {}", issuer.mint("u", "s-after"));
    assert_eq!(sidecar.check(Some(&after)).await.status(), 200);
    revoke(&topo, "eu", "s-after");
    let denied = eventually(Duration::from_secs(5), || async {
        sidecar.check(Some(&after)).await.status() == 401
    })
    .await;
    assert!(
        denied.is_some(),
        "revoked in eu, still allowed by the us sidecar:\n{}",
        sidecar.log()
    );
    println!("sidecar ready {ready:?} after start; eu's revocation enforced in {denied:?}");

    // Sidecar logins in both regions: the revocation subjects are theirs to read ...
    let (us_side, mut us_events) = login(&topo, "us", NatsUser::Sidecar).await;
    let (eu_side, mut eu_events) = login(&topo, "eu", NatsUser::Sidecar).await;
    let mut us_seen = Vec::new();
    let mut eu_seen = Vec::new();
    let mut feed = us_side
        .subscribe("veto.revocations.*.ev.>")
        .await
        .expect("subscribe");
    // ... the authorities' subjects and inbox, and everything, are refused.
    let mut spies = Vec::new();
    for (client, region) in [(&us_side, "us"), (&eu_side, "eu")] {
        for subject in ["veto.authority.>", "_VETO_AUTHORITY_INBOX.>", ">", "$KV.>"] {
            let sub = client.subscribe(subject).await.expect("subscribe call");
            spies.push((format!("sidecar in {region} on {subject}"), sub));
        }
        client.flush().await.expect("flush");
    }
    // `_INBOX.>` is a sidecar's to read (every sidecar's JetStream replies pass there), but
    // the authorities' replies never go there.
    let mut inbox_spies = Vec::new();
    for region in ["us", "eu"] {
        let (spy, _) = login(&topo, region, NatsUser::Sidecar).await;
        let sub = spy.subscribe("_INBOX.>").await.expect("subscribe");
        spy.flush().await.expect("flush");
        inbox_spies.push((region, spy, sub));
    }
    for subject in ["veto.authority.>", "_VETO_AUTHORITY_INBOX.>", ">", "$KV.>"] {
        let what = format!("subscription to \"{subject}\"");
        wait_violation(&mut us_events, &mut us_seen, &what).await;
        wait_violation(&mut eu_events, &mut eu_seen, &what).await;
    }
    let (eu_op, _) = login(&topo, "eu", NatsUser::Operator).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // interest crosses the gateways
    eu_op
        .publish("veto.revocations.eu.ev.core-1", "x".into())
        .await
        .expect("publish");
    eu_op.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the sidecar login reads veto.revocations.> across regions")
        .expect("open");
    assert_eq!(got.subject.as_str(), "veto.revocations.eu.ev.core-1");

    // The session bucket: made by an operator, written and read by an authority (with its
    // own inbox prefix: JetStream replies and KV reads never use _INBOX) ...
    let us_op = topo.jetstream("us").await;
    // (The bucket's stream, made the way a KV bucket is: async-nats 0.51's create_key_value
    // does not parse nats-server 2.9's answer.)
    us_op
        .create_stream(async_nats::jetstream::stream::Config {
            name: format!("KV_{SESSION_BUCKET}"),
            subjects: vec![format!("$KV.{SESSION_BUCKET}.>")],
            max_messages_per_subject: 1,
            allow_direct: true,
            allow_rollup: true,
            deny_delete: true,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("create the session bucket");
    let (us_auth, mut us_auth_events) = login(&topo, "us", NatsUser::Authority).await;
    let auth_js = veto::bus::jetstream(us_auth.clone(), Some("us"));
    let kv = auth_js
        .get_key_value(SESSION_BUCKET)
        .await
        .expect("authority opens the bucket");
    kv.put("s1", "refresh-token-1".into())
        .await
        .expect("authority writes the bucket");
    assert_eq!(
        kv.get("s1").await.expect("authority reads").as_deref(),
        Some(&b"refresh-token-1"[..])
    );

    // ... and out of a sidecar's reach, in its own domain and across domains, by stream
    // API, direct get, KV API and core publish.
    let kv_stream = format!("KV_{SESSION_BUCKET}");
    for (client, domain, from) in [(&us_side, "us", "us"), (&eu_side, "us", "eu")] {
        let mut js = veto::bus::jetstream(client.clone(), Some(domain));
        js.set_timeout(Duration::from_millis(800));
        assert!(
            js.get_stream(&kv_stream).await.is_err(),
            "sidecar in {from} got {kv_stream}'s info"
        );
        assert!(
            js.get_key_value(SESSION_BUCKET).await.is_err(),
            "sidecar in {from} opened the bucket"
        );
        // Its own region's revocation stream is fine (the control).
        let own = js.get_stream(stream("us")).await;
        assert!(own.is_ok(), "sidecar in {from}: {:?}", own.err());
        let api = veto::bus::names::domain_api_prefix(domain);
        for subject in [
            format!("{api}.STREAM.MSG.GET.{kv_stream}"),
            format!("{api}.DIRECT.GET.{kv_stream}.$KV.{SESSION_BUCKET}.s1"),
            format!("$JS.API.DIRECT.GET.{kv_stream}.$KV.{SESSION_BUCKET}.s1"),
            format!("{api}.CONSUMER.CREATE.{kv_stream}"),
        ] {
            let r = tokio::time::timeout(
                Duration::from_millis(800),
                client.request(
                    subject.clone(),
                    r#"{"last_by_subj":"$KV.VETO_SESSIONS.s1"}"#.into(),
                ),
            )
            .await;
            assert!(
                !matches!(r, Ok(Ok(_))),
                "sidecar in {from} got an answer on {subject}"
            );
        }
        client
            .publish(format!("$KV.{SESSION_BUCKET}.s1"), "overwritten".into())
            .await
            .expect("publish call");
        client.flush().await.expect("flush");
    }
    wait_violation(
        &mut us_events,
        &mut us_seen,
        // (The server checks its own domain's `$JS.us.API` as the `$JS.API` it maps to.)
        &format!("api.stream.msg.get.{kv_stream}\""),
    )
    .await;
    for what in [
        format!("publish to \"$js.us.api.stream.msg.get.{kv_stream}\""),
        format!("publish to \"$js.us.api.direct.get.{kv_stream}."),
        format!("publish to \"$kv.{SESSION_BUCKET}.s1\""),
    ] {
        wait_violation(&mut eu_events, &mut eu_seen, &what).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        kv.get("s1").await.expect("authority reads").as_deref(),
        Some(&b"refresh-token-1"[..]),
        "a sidecar overwrote a session"
    );

    // Request-reply between authorities in different regions, replies on their inbox.
    let mut responder = us_auth
        .queue_subscribe(refresh_subject("us"), AUTHORITY_QUEUE.into())
        .await
        .expect("authority serves refresh");
    us_auth.flush().await.expect("flush");
    let served = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let serving = tokio::spawn({
        let (us_auth, served) = (us_auth.clone(), served.clone());
        async move {
            while let Some(m) = responder.next().await {
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                if let Some(reply) = m.reply.clone() {
                    if let Ok(mut s) = served.lock() {
                        s.push((payload.clone(), reply.to_string()));
                    }
                    let _ = us_auth
                        .publish(reply, format!("refreshed:{payload}").into())
                        .await;
                }
            }
        }
    });
    let (eu_auth, mut eu_auth_events) = login(&topo, "eu", NatsUser::Authority).await;
    let start = Instant::now();
    let answer = loop {
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            eu_auth.request(refresh_subject("us"), "rt-1".into()),
        )
        .await;
        match r {
            Ok(Ok(m)) => break m,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no answer from us's authority: {other:?}\n{}",
                    topo.logs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(&answer.payload[..], b"refreshed:rt-1");
    assert!(
        answer
            .subject
            .as_str()
            .starts_with(&format!("{AUTHORITY_INBOX_PREFIX}.")),
        "reply on {}",
        answer.subject
    );
    // A sidecar login cannot ask the authorities anything.
    us_side
        .publish(refresh_subject("us"), "from-a-sidecar".into())
        .await
        .expect("publish call");
    eu_side
        .publish(refresh_subject("us"), "from-a-sidecar".into())
        .await
        .expect("publish call");
    us_side.flush().await.expect("flush");
    eu_side.flush().await.expect("flush");
    wait_violation(
        &mut eu_events,
        &mut eu_seen,
        "publish to \"veto.authority.us.refresh\"",
    )
    .await;
    // None of it reached any sidecar subscription.
    for (what, sub) in &mut spies {
        silent(sub, what, Duration::from_millis(100)).await;
    }
    for (region, _spy, sub) in &mut inbox_spies {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            let body = String::from_utf8_lossy(&m.payload);
            assert!(
                !body.contains("rt-1") && !body.contains("refresh-token"),
                "sidecar in {region} read {} on _INBOX.>: {body}",
                m.subject
            );
        }
    }
    serving.abort();
    let served = served.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(!served.is_empty());
    for (payload, reply) in &served {
        assert_eq!(payload, "rt-1", "only the authority's requests are served");
        assert!(reply.contains(AUTHORITY_INBOX_PREFIX), "{reply}");
    }
    println!("refresh requests served (payload, reply): {served:?}");
    // The authorities and the sidecar process never hit a permission wall.
    let mut seen = Vec::new();
    assert_eq!(
        violations(&mut us_auth_events, &mut seen),
        Vec::<String>::new()
    );
    assert_eq!(
        violations(&mut eu_auth_events, &mut seen),
        Vec::<String>::new()
    );
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

/// The real `veto authority` in the shipped shape: each logs in as `authority` (its feed too,
/// with its own inbox prefix), serves a login in us, a refresh of that session in eu (forwarded
/// to us over request-reply), a logout in eu — and the servers report no permission violation
/// for any of it.
#[tokio::test]
async fn real_authorities_work_as_the_authority_user() {
    use authority_support::{Authority, Kit};
    let topo = LocalTopology::start_with(&["us", "eu"], None);
    topo.wait_linked(Duration::from_secs(20)).await;
    let kit = Kit::new();
    let start = |region: &str| {
        let cfg = Authority::config(&kit, &topo.js_url(region), region, &["us", "eu"], "")
            .replacen(
                "[authority]\n",
                &format!("{}[authority]\n", topo.nats_login(NatsUser::Authority)),
                1,
            );
        Authority::start(&cfg)
    };
    let (us, eu) = (start("us"), start("eu"));
    us.wait_ready(Duration::from_secs(40)).await;
    eu.wait_ready(Duration::from_secs(40)).await;
    let (st, t) = us.login(serde_json::json!({"sub": "alice"})).await;
    assert_eq!(st, 201, "{t}");
    let rt = t["refresh_token"].as_str().unwrap().to_string();
    let (st, t1) = eu.refresh(&rt).await;
    assert_eq!(
        st,
        200,
        "cross-region refresh as the authority user: {t1}\n{}",
        eu.log()
    );
    let rt1 = t1["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(eu.logout(&rt1).await.0, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            us.refresh(&rt1).await.0 == 400
        })
        .await
        .is_some(),
        "the logout in eu did not end the session at its home"
    );
    for (name, a) in [("us", &us), ("eu", &eu)] {
        let log = a.log().to_lowercase();
        assert!(
            !log.contains("permissions violation"),
            "authority {name}:\n{}",
            a.log()
        );
    }
    let logs = topo.logs().to_lowercase();
    assert!(
        !logs.contains("violation"),
        "a server reported a violation:\n{}",
        topo.logs()
    );
}
