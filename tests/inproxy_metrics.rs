//! The in-proxy module's metrics and dynamic metadata with real parts: real Envoy 1.40 loads
//! the module, a real `veto sidecar` follows a real nats-server and mirrors into shared
//! memory. N allowed and M denied requests (several reasons) through Envoy must show as
//! exactly those counts by result and reason on Envoy's `/stats/prometheus` (the ABI's
//! counters) and on the sidecar's `/metrics` (the counters file beside the shared memory);
//! the gauges show the table generation and feed position the module sees; and an allowed
//! request's verified claims are in Envoy's dynamic metadata, where a later filter (the
//! router's `request_headers_to_add`) and the access log read them.

#[path = "support/inproxy.rs"]
mod inproxy_support;
mod support;

use inproxy_support::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::*;
use veto::token::Alg;

/// The shipped in-proxy template, plus what reads the metadata: an access log of
/// `%DYNAMIC_METADATA(veto:…)%` into `${ACCESS_LOG}` and a request header the router adds
/// from it.
fn template_reading_metadata(dir: &Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/envoy/inproxy/envoy-inproxy.yaml.tmpl"),
    )
    .expect("template");
    let access_log = r#"          stat_prefix: ingress_http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: ${ACCESS_LOG}
              log_format:
                text_format_source:
                  inline_string: "%RESPONSE_CODE% sub=%DYNAMIC_METADATA(veto:sub)% sid=%DYNAMIC_METADATA(veto:sid)% iss=%DYNAMIC_METADATA(veto:iss)% aud=%DYNAMIC_METADATA(veto:aud)% exp=%DYNAMIC_METADATA(veto:exp)% mfa=%DYNAMIC_METADATA(veto:mfa)%\n"
"#;
    let route = r#"                route: { cluster: upstream }
                request_headers_to_add:
                - header: { key: x-veto-sub, value: "%DYNAMIC_METADATA(veto:sub)%" }
"#;
    let t = shipped
        .replacen("          stat_prefix: ingress_http\n", access_log, 1)
        .replacen("                route: { cluster: upstream }\n", route, 1);
    assert!(
        t.contains("ACCESS_LOG") && t.contains("x-veto-sub"),
        "template changed shape"
    );
    let path = dir.join("envoy-inproxy-metadata.yaml.tmpl");
    std::fs::write(&path, t).expect("write template");
    path
}

/// The value of the Envoy stat sample whose name contains `name` and whose labels are
/// exactly `labels` (Envoy's Prometheus names carry its own prefix).
fn envoy_sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            n.contains(name) && rest.trim_end_matches('}') == labels
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_counted_in_envoy_and_on_the_sidecar_and_claims_reach_the_metadata() {
    let module_dir = build_module();
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let shm_dir = tempfile::tempdir().expect("tempdir");
    let shm = shm_dir.path().join("veto-revoked");
    let sidecar = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&nats.url()),
        &inproxy_section(&shm, "5s"),
    ));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    wait_shm(&shm).await;
    // the feed moves to sequence 1: a revoked session
    revoke(&nats.url(), &["--session", "sess-r"]);
    let revoked = format!("Bearer {}", issuer.mint("bob", "sess-r"));
    assert!(
        sidecar_answers(&sidecar, &revoked, 401, Duration::from_secs(2)).await,
        "the sidecar did not apply the revocation:\n{}",
        sidecar.log()
    );
    // the sidecar's own checks above are its own (veto_checks_total), not in-proxy ones
    let (up, _h) = upstream().await;
    let work = tempfile::tempdir().expect("tempdir");
    let access_log = work.path().join("access.log");
    let envoy = Envoy::from_template(
        template_reading_metadata(work.path())
            .to_str()
            .expect("utf-8 path"),
        &[
            ("UPSTREAM_PORT", up.port().to_string()),
            (
                "VETO_CONFIG",
                sidecar.dir.path().join("veto.toml").display().to_string(),
            ),
            ("ACCESS_LOG", access_log.display().to_string()),
        ],
        &[("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", &module_dir)],
        "info",
    );
    let http = client();
    let url = envoy.url("/orders/7");

    let good_claims = issuer.claims("alice", "sess-1");
    let good = format!("Bearer {}", issuer.key.sign(&good_claims).expect("sign"));
    // a list claim and a boolean one: the metadata's other value types
    let mut listed_claims = issuer.claims("alice", "sess-3");
    listed_claims["aud"] = json!(["api", "other"]);
    listed_claims["mfa"] = json!(true);
    let listed = format!("Bearer {}", issuer.key.sign(&listed_claims).expect("sign"));
    let mut expired = issuer.claims("alice", "sess-2");
    expired["iat"] = json!(expired["iat"].as_i64().unwrap_or(0) - 1200);
    expired["exp"] = json!(expired["iat"].as_i64().unwrap_or(0) + 600);
    let expired = format!("Bearer {}", issuer.key.sign(&expired).expect("sign"));
    // (authorization, how many times, status, reason)
    let plan: Vec<(Option<&str>, usize, u16, &str)> = vec![
        (Some(&good), 4, 200, "ok"),
        (None, 3, 401, "missing_token"),
        (Some("Bearer abc"), 2, 401, "malformed"),
        (Some(&expired), 1, 401, "expired"),
        (Some(&revoked), 2, 401, "revoked"),
    ];
    for (auth, times, status, reason) in &plan {
        for _ in 0..*times {
            let seen = see(&http, url.clone(), *auth).await;
            assert_eq!(seen.status, *status, "{reason}: {seen:?}\n{}", envoy.log());
            if *status == 200 {
                // a later filter (the router) read the module's metadata
                assert_eq!(seen.body["x-veto-sub"], "alice", "{seen:?}");
                assert_eq!(seen.body["x-user-id"], "alice", "{seen:?}");
            } else {
                assert_eq!(seen.body["reason"], *reason, "{seen:?}");
            }
        }
    }
    // the gauges refresh at most once a second: one more allowed request after that
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(see(&http, url.clone(), Some(&listed)).await.status, 200);
    let want: Vec<(&str, &str, f64)> = vec![
        ("allow", "ok", 5.0),
        ("deny", "missing_token", 3.0),
        ("deny", "malformed", 2.0),
        ("deny", "expired", 1.0),
        ("deny", "revoked", 2.0),
    ];

    // Envoy's own stats (the ABI's counters and gauges)
    let stats = http
        .get(format!("http://127.0.0.1:{}/stats/prometheus", envoy.admin))
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("stats");
    let veto_lines: Vec<&str> = stats
        .lines()
        .filter(|l| l.contains("veto_inproxy"))
        .collect();
    for (result, reason, n) in &want {
        let labels = format!("result=\"{result}\",reason=\"{reason}\"");
        assert_eq!(
            envoy_sample(&stats, "veto_inproxy_checks", &labels),
            Some(*n),
            "{labels} in Envoy's stats:\n{}",
            veto_lines.join("\n")
        );
    }
    let total: f64 = stats
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("veto_inproxy_checks{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        total,
        13.0,
        "no other outcome counted:\n{}",
        veto_lines.join("\n")
    );
    assert_eq!(
        envoy_sample(&stats, "veto_inproxy_panics", ""),
        Some(0.0),
        "{}",
        veto_lines.join("\n")
    );
    assert_eq!(
        envoy_sample(&stats, "veto_inproxy_table_generation", ""),
        Some(1.0),
        "{}",
        veto_lines.join("\n")
    );
    assert_eq!(
        envoy_sample(&stats, "veto_inproxy_feed_position", ""),
        Some(1.0),
        "{}",
        veto_lines.join("\n")
    );

    // the same counts on the sidecar's /metrics, from the counters file
    let text = sidecar.metrics().await;
    for (result, reason, n) in &want {
        assert_eq!(
            metric_sum(
                &text,
                "veto_inproxy_checks_total",
                &[
                    &format!("result=\"{result}\""),
                    &format!("reason=\"{reason}\"")
                ]
            ),
            *n,
            "{result}/{reason} on the sidecar:\n{text}"
        );
    }
    assert_eq!(metric_sum(&text, "veto_inproxy_checks_total", &[]), 13.0);
    assert_eq!(metric(&text, "veto_inproxy_panics_total"), Some(0.0));
    assert_eq!(
        metric(&text, "veto_inproxy_key_reload_failures_total"),
        Some(0.0)
    );
    // and the sidecar's own view of the mirror the module reads
    assert_eq!(metric(&text, "veto_inproxy_mirror_healthy"), Some(1.0));
    let file = std::fs::metadata(&shm).map(|m| m.len() as f64).ok();
    assert_eq!(metric(&text, "veto_inproxy_mirror_bytes"), file);
    assert!(metric(&text, "veto_inproxy_mirror_generation").is_some_and(|g| g >= 1.0));

    // the access log read the metadata of the allowed requests, and none of the denied
    // (Envoy flushes access log files on a timer, 10 s by default)
    let logged = eventually(Duration::from_secs(15), || async {
        std::fs::read_to_string(&access_log)
            .map(|l| l.lines().count() >= 13)
            .unwrap_or(false)
    })
    .await;
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    assert!(logged.is_some(), "access log:\n{log}");
    let iss = good_claims["iss"].as_str().unwrap_or("");
    let allowed_line = format!(
        "200 sub=alice sid=sess-1 iss={iss} aud=api exp={} mfa=-",
        good_claims["exp"]
    );
    assert_eq!(
        log.lines().filter(|l| *l == allowed_line).count(),
        4,
        "access log:\n{log}"
    );
    let listed_line = format!(
        "200 sub=alice sid=sess-3 iss={iss} aud=[\"api\",\"other\"] exp={} mfa=true",
        listed_claims["exp"]
    );
    assert!(
        log.lines().any(|l| l == listed_line),
        "{listed_line}\naccess log:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.starts_with("401"))
            .all(|l| l == "401 sub=- sid=- iss=- aud=- exp=- mfa=-"),
        "a denial carries no metadata:\n{log}"
    );
    assert!(!envoy.log().contains("panic"), "{}", envoy.log());
}
