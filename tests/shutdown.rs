//! The ordered, bounded shutdown of `veto sidecar` on SIGTERM (what Kubernetes sends while it
//! still routes traffic for a moment): readiness and gRPC health go NOT_SERVING at once, checks
//! keep getting answers for `shutdown.drain`, then the listeners close and the process exits,
//! all within `shutdown.grace`.

mod support;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use std::time::{Duration, Instant};
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use veto::token::Alg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_within_the_grace() {
    let nats = NatsServer::start();
    let issuer = Issuer::new(Alg::ES256);
    let mut sidecar = Sidecar::start(&sidecar_config(
        &issuer,
        Some(&nats.url()),
        "[shutdown]\ndrain = \"2s\"\ngrace = \"4s\"\n",
    ));
    sidecar.wait_ready(Duration::from_secs(10)).await;
    let token = issuer.mint("u", "s");
    let auth = format!("Bearer {token}");
    let endpoint = format!("http://127.0.0.1:{}", sidecar.grpc);
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = AuthorizationClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let serving = |h: &mut HealthClient<tonic::transport::Channel>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
        }
    };
    // gRPC health follows readiness within one housekeeping tick
    let h = &health;
    let up = eventually(Duration::from_secs(2), || async {
        serving(&mut h.clone()).await == ServingStatus::Serving as i32
    })
    .await;
    assert!(up.is_some(), "gRPC health never SERVING");
    assert_eq!(sidecar.check(Some(&auth)).await.status(), 200);

    let sent = Instant::now();
    sidecar.process().terminate();
    // during the drain: not ready, NOT_SERVING, and every check still gets its answer
    let mut checks = 0;
    let mut last_check_started = Duration::ZERO;
    let mut saw_unready = false;
    while sent.elapsed() < Duration::from_millis(1500) {
        last_check_started = sent.elapsed();
        let ready = reqwest::get(format!("{}/readyz", sidecar.base()))
            .await
            .expect("the HTTP listener stays open during the drain");
        if ready.status() == 503 {
            saw_unready = true;
        }
        assert_eq!(
            sidecar.check(Some(&auth)).await.status(),
            200,
            "HTTP check during the drain"
        );
        let r = grpc
            .check(check_request(Some(&auth)))
            .await
            .expect("gRPC check during the drain");
        assert_eq!(r.into_inner().status.unwrap().code, 0);
        checks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_unready, "/readyz never said 503 during the drain");
    let body: serde_json::Value = reqwest::get(format!("{}/readyz", sidecar.base()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["waiting_for"]["shutdown"].is_string(), "{body}");
    assert_eq!(serving(&mut health).await, ServingStatus::NotServing as i32);
    // Served through the drain, not just at its start (a count alone would measure the box:
    // each round trip is tens of ms on a loaded 2-core CI machine).
    assert!(checks >= 3, "only {checks} checks during the drain");
    assert!(
        last_check_started >= Duration::from_millis(1000),
        "the last check of the drain started at {last_check_started:?}"
    );

    // after the drain the listeners close and the process exits 0, within the grace
    let status =
        tokio::task::block_in_place(|| sidecar.process().wait_exit(Duration::from_secs(6)));
    let took = sent.elapsed();
    let status = status
        .unwrap_or_else(|| panic!("still running {took:?} after SIGTERM:\n{}", sidecar.log()));
    assert!(status.success(), "exit {status:?}:\n{}", sidecar.log());
    assert!(
        took >= Duration::from_secs(2),
        "closed before the drain ended: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4) + Duration::from_millis(500),
        "took {took:?}"
    );
    println!("SIGTERM -> exit in {took:?} (drain 2 s, grace 4 s)");
    assert!(
        reqwest::get(format!("{}/healthz", sidecar.base()))
            .await
            .is_err(),
        "HTTP listener still open after exit"
    );
}

#[test]
fn a_drain_not_shorter_than_the_grace_is_refused() {
    let (code, _, err) = check_config(
        "[[issuers]]\nissuer = \"https://a\"\naudiences = [\"api\"]\njwks_file = \"/dev/null\"\n\
         [shutdown]\ndrain = \"10s\"\ngrace = \"10s\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("shutdown.drain"), "{err}");
}
