//! The revoked set's local snapshot (`[revocation.snapshot]`) against a real nats-server and
//! real `veto sidecar` processes: a restart loads the snapshot and replays only the tail; a
//! corrupt or truncated snapshot falls back to a full replay (counted); SIGKILL mid-write and
//! mid-replay never leave a start that is wrong or unready.

mod support;

use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use veto::bus::names::event_subject;
use veto::revocation::{Kind, RevocationEvent};
use veto::token::Alg;

async fn denied(s: &Sidecar, token: &str) -> bool {
    s.check(Some(&format!("Bearer {token}"))).await.status() == 401
}

/// Publishes `n` session revocations (session ids `s-<prefix>-<i>`, any issuer), pipelined.
async fn publish_many(js: &async_nats::jetstream::Context, prefix: &str, n: usize) {
    let now = veto::now_ms();
    let mut i = 0;
    while i < n {
        let end = (i + 2_000).min(n);
        let mut acks = Vec::with_capacity(end - i);
        for k in i..end {
            let id = format!("{prefix}-{k}");
            let ev = RevocationEvent {
                event_id: id.clone(),
                kind: Kind::Session as i32,
                id: format!("s-{id}"),
                issuer: String::new(),
                revoked_at: now,
                expires_at: now + 600_000,
                origin_region: "us".into(),
                reason: "test".into(),
                urgent: false,
                revoked_at_us: 0,
            };
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            acks.push(
                js.publish_with_headers(event_subject("us", &id), h, ev.encode_to_vec().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
        i = end;
    }
}

fn config(issuer: &Issuer, nats: &NatsServer, snap: &Path, interval: &str) -> String {
    sidecar_config(
        issuer,
        Some(&nats.url()),
        &format!(
            "[revocation.snapshot]\npath = \"{}\"\ninterval = \"{interval}\"\n\
             [shutdown]\ndrain = \"100ms\"\ngrace = \"10s\"\n",
            snap.display()
        ),
    )
}

/// Every one of `ids` (session ids) is refused, and a session nobody revoked is not.
async fn all_refused(s: &Sidecar, issuer: &Issuer, ids: &[String]) {
    for sid in ids {
        assert!(
            denied(s, &issuer.mint("u", sid)).await,
            "{sid} not refused:\n{}",
            s.log()
        );
    }
    assert!(!denied(s, &issuer.mint("u", "never-revoked")).await);
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    // the first, the last and a spread in between
    let mut v: Vec<String> = (0..n)
        .step_by((n / 50).max(1))
        .map(|i| format!("s-{prefix}-{i}"))
        .collect();
    v.push(format!("s-{prefix}-{}", n - 1));
    v
}

/// SIGTERM, and the exit within the grace.
fn stop(s: &mut Sidecar) {
    s.process().terminate();
    let status = s.process().wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "sidecar did not exit:\n{}", s.log());
}

fn fallbacks(m: &str) -> f64 {
    metric_sum(m, "veto_revocation_snapshot_fallbacks_total", &[])
}

fn durable(m: &str, result: &str) -> f64 {
    metric_sum(
        m,
        "veto_revocation_events_total",
        &["path=\"durable\"", &format!("result=\"{result}\"")],
    )
}

fn snap_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoked.snap");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_snapshot_and_replays_only_the_tail() {
    const OLD: usize = 3_000;
    const TAIL: usize = 400;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let (_dir, snap) = snap_dir();
    let issuer = Issuer::new(Alg::ES256);
    // ensure_stream (the default) creates the stream; publish once it exists
    let mut s = Sidecar::start(&config(&issuer, &nats, &snap, "1h"));
    s.wait_ready(Duration::from_secs(10)).await;
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "veto_revocation_snapshot_fallbacks_total{reason=\"missing\"}"
        ),
        Some(1.0),
        "{m}"
    );
    publish_many(&js, "old", OLD).await;
    let old = ids("old", OLD);
    let newest = issuer.mint("u", old.last().unwrap());
    assert!(
        eventually(Duration::from_secs(10), || denied(&s, &newest))
            .await
            .is_some(),
        "{}",
        s.log()
    );
    // stopped: the snapshot is written within the ordered shutdown
    stop(&mut s);
    assert!(snap.exists(), "no snapshot at shutdown:\n{}", s.log());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&snap).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    publish_many(&js, "tail", TAIL).await;
    s.restart();
    s.wait_ready(Duration::from_secs(10)).await;
    all_refused(&s, &issuer, &old).await;
    all_refused(&s, &issuer, &ids("tail", TAIL)).await;
    let m = s.metrics().await;
    assert_eq!(fallbacks(&m), 0.0, "{m}");
    assert_eq!(
        metric(&m, "veto_revocation_snapshot_loaded_entries"),
        Some(OLD as f64),
        "{m}"
    );
    // the tail only: nothing the snapshot held came through the stream again
    assert_eq!(durable(&m, "applied"), TAIL as f64, "{m}");
    assert_eq!(durable(&m, "duplicate"), 0.0, "{m}");
    assert_eq!(
        metric(&m, "veto_revocation_snapshot_sequence"),
        Some(OLD as f64),
        "{m}"
    );
    assert!(
        s.log()
            .contains("revocation snapshot loaded; replaying the tail"),
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_snapshot_or_a_leftover_temp_file_never_gives_a_wrong_answer() {
    const OLD: usize = 2_000;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let (dir, snap) = snap_dir();
    let issuer = Issuer::new(Alg::ES256);
    let mut s = Sidecar::start(&config(&issuer, &nats, &snap, "1h"));
    s.wait_ready(Duration::from_secs(10)).await;
    publish_many(&js, "old", OLD).await;
    let old = ids("old", OLD);
    let newest = issuer.mint("u", old.last().unwrap());
    assert!(eventually(Duration::from_secs(10), || denied(&s, &newest))
        .await
        .is_some());
    stop(&mut s);
    let good = std::fs::read(&snap).unwrap();

    // truncated (what a writer without fsync + rename could leave): a full replay, counted
    std::fs::write(&snap, &good[..good.len() * 2 / 3]).unwrap();
    s.restart();
    s.wait_ready(Duration::from_secs(10)).await;
    all_refused(&s, &issuer, &old).await;
    let m = s.metrics().await;
    assert_eq!(
        metric(
            &m,
            "veto_revocation_snapshot_fallbacks_total{reason=\"corrupt\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(fallbacks(&m), 1.0, "{m}");
    assert_eq!(
        metric(&m, "veto_revocation_snapshot_loaded_entries"),
        Some(0.0)
    );
    assert_eq!(durable(&m, "applied"), OLD as f64, "{m}");
    // the replayed set is written again at shutdown
    stop(&mut s);
    assert!(std::fs::read(&snap).unwrap().len() >= good.len() - 64);

    // a writer killed mid-write leaves its temp file beside a good snapshot: ignored
    std::fs::write(
        dir.path().join(".revoked.snap.tmp"),
        &good[..good.len() / 2],
    )
    .unwrap();
    s.restart();
    s.wait_ready(Duration::from_secs(10)).await;
    all_refused(&s, &issuer, &old).await;
    let m = s.metrics().await;
    assert_eq!(fallbacks(&m), 0.0, "{m}");
    assert_eq!(
        metric(&m, "veto_revocation_snapshot_loaded_entries"),
        Some(OLD as f64)
    );
    assert_eq!(durable(&m, "applied"), 0.0, "{m}");

    // garbage of the same size, and a file that is not ours at all
    for bytes in [vec![0x5au8; good.len()], b"hello".to_vec()] {
        s.kill();
        std::fs::write(&snap, &bytes).unwrap();
        s.restart();
        s.wait_ready(Duration::from_secs(10)).await;
        all_refused(&s, &issuer, &old).await;
        let m = s.metrics().await;
        assert_eq!(fallbacks(&m), 1.0, "{m}");
    }
}

/// SIGKILL while the snapshot is being written (the temp file is there) and while the
/// stream is being replayed: the next start is ready and refuses every revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_snapshot_write_and_mid_replay_the_next_start_is_correct() {
    const OLD: usize = 60_000;
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let (dir, snap) = snap_dir();
    let tmp = dir.path().join(".revoked.snap.tmp");
    let issuer = Issuer::new(Alg::ES256);
    let mut s = Sidecar::start(&config(&issuer, &nats, &snap, "1s"));
    s.wait_ready(Duration::from_secs(10)).await;
    publish_many(&js, "old", OLD).await;
    let old = ids("old", OLD);

    // mid-write: a new event every 100 ms keeps a write due every second; kill the moment
    // the temp file appears
    let mut killed_mid_write = 0;
    let mut published = 0;
    for round in 0..6 {
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        let mut next_event = std::time::Instant::now();
        while !tmp.exists() && std::time::Instant::now() < deadline {
            if std::time::Instant::now() >= next_event {
                publish_many(&js, &format!("live{published}"), 1).await;
                published += 1;
                next_event = std::time::Instant::now() + Duration::from_millis(100);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        s.kill();
        if tmp.exists() {
            killed_mid_write += 1;
        }
        println!(
            "round {round}: killed, temp file left: {}, snapshot: {}",
            tmp.exists(),
            snap.exists()
        );
        s.restart();
        s.wait_ready(Duration::from_secs(20)).await;
        all_refused(&s, &issuer, &old).await;
        let m = s.metrics().await;
        // a killed writer leaves the old snapshot (or none): never a corrupt one
        assert_eq!(
            metric(
                &m,
                "veto_revocation_snapshot_fallbacks_total{reason=\"corrupt\"}"
            ),
            Some(0.0),
            "{m}"
        );
        if killed_mid_write >= 2 {
            break;
        }
    }
    assert!(
        killed_mid_write >= 1,
        "never killed while the temp file was there"
    );
    for i in 0..published {
        assert!(denied(&s, &issuer.mint("u", &format!("s-live{i}-0"))).await);
    }

    // mid-replay: the snapshot gone, a full replay of 60k killed after 300 ms
    s.kill();
    std::fs::remove_file(&snap).ok();
    s.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let was_ready = s.ready().await;
    s.kill();
    println!("killed mid-replay (ready already: {was_ready})");
    s.restart();
    s.wait_ready(Duration::from_secs(20)).await;
    all_refused(&s, &issuer, &old).await;
}
