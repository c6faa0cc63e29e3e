//! An in-process sidecar (`Sidecar::build` + `run`, port-0 listeners) on its own named
//! thread with a current-thread runtime, its applied stream followed by a recorder
//! ([`crate::arrivals`]).

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use veto::config::Settings;
use veto::readiness::Readiness;
use veto::revocation::RevokedSet;
use veto::sidecar::Metrics;

pub struct InProc {
    pub label: String,
    pub revoked: Arc<RevokedSet>,
    pub readiness: Readiness,
    pub metrics: Metrics,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    recorder: Option<std::thread::JoinHandle<()>>,
}

impl InProc {
    pub fn start(label: &str, toml: &str) -> InProc {
        let settings = Settings::from_toml(toml).expect("sidecar settings");
        let sc = veto::sidecar::Sidecar::build(&settings).expect("build sidecar");
        let (revoked, readiness, metrics) =
            (sc.revoked.clone(), sc.readiness.clone(), sc.metrics.clone());
        let recorder = crate::arrivals::follow(label.to_string(), sc.applied());
        let shutdown = CancellationToken::new();
        let sd = shutdown.clone();
        let name = label.to_string();
        let thread = on_own_thread(label, move || async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let http = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            if let Err(e) = sc.run(grpc, http, sd).await {
                eprintln!("{name}: sidecar stopped: {e:#}");
            }
        });
        InProc {
            label: label.to_string(),
            revoked,
            readiness,
            metrics,
            shutdown,
            thread: Some(thread),
            recorder: Some(recorder),
        }
    }

    /// Direct reads of `origin`'s stream so far (`veto_feed_catchup_reads_total`).
    pub fn catchup_reads(&self, origin: &str) -> u64 {
        self.metrics.feed.catchup_reads(origin).get()
    }

    pub fn stop(&mut self) {
        self.shutdown.cancel();
        for t in [self.thread.take(), self.recorder.take()]
            .into_iter()
            .flatten()
        {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                eprintln!("{}: did not stop within 10 s; left behind", self.label);
            }
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs what `task` returns on a thread named `name` with its own current-thread runtime, so
/// no receiver's work waits for another's (and the thread name tells them apart in logs).
pub fn on_own_thread<F, Fut>(name: &str, task: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(task())
        })
        .expect("thread")
}

pub async fn wait_all_ready(sidecars: &[&InProc], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: Vec<String> = sidecars
            .iter()
            .filter(|s| !s.readiness.is_ready())
            .map(|s| format!("{} {:?}", s.label, s.readiness.blockers()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready after {timeout:?}: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
