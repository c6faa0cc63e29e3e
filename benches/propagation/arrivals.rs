//! When each in-process sidecar applied each revocation, from its typed applied stream
//! (`veto::sidecar::Sidecar::applied`): one recorder thread per sidecar, so recording never
//! runs on the sidecar's own runtime, and the time kept is the `instant` the `Applier` took
//! right after the insert. Also: the sidecars' warnings and errors, kept for the report
//! (shown, never matched).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::LazyLock;
use std::time::Instant;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use veto::feed::Applied;

pub const OFF: u8 = 0;
/// Keep every application (time, sidecar, event id, path).
pub const RECORD: u8 = 1;
/// Count applications per (sidecar, path), with first and last time.
pub const COUNT: u8 = 2;

pub struct Arrival {
    pub at: Instant,
    pub who: String,
    pub event_id: String,
    pub path: &'static str,
}

#[derive(Clone)]
pub struct Tally {
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

#[derive(Default)]
pub struct State {
    pub mode: AtomicU8,
    pub applied: Mutex<Vec<Arrival>>,
    pub counts: Mutex<BTreeMap<(String, &'static str), Tally>>,
    /// Announcements a recorder fell too far behind to receive.
    missed: AtomicU64,
}

pub static STATE: LazyLock<State> = LazyLock::new(State::default);

pub fn set_mode(mode: u8) {
    STATE.mode.store(mode, Ordering::Relaxed);
}

pub fn missed() -> u64 {
    STATE.missed.load(Ordering::Relaxed)
}

fn record(who: &str, a: Applied) {
    let st = &*STATE;
    match st.mode.load(Ordering::Relaxed) {
        RECORD => st.applied.lock().push(Arrival {
            at: a.instant,
            who: who.to_string(),
            event_id: a.event_id,
            path: a.path.label(),
        }),
        COUNT => {
            st.counts
                .lock()
                .entry((who.to_string(), a.path.label()))
                .and_modify(|t| {
                    t.count += 1;
                    t.last = a.instant;
                })
                .or_insert(Tally {
                    count: 1,
                    first: a.instant,
                    last: a.instant,
                });
        }
        _ => {}
    }
}

/// Records what sidecar `who` announces until its applied stream closes (the sidecar is
/// gone).
pub fn follow(who: String, mut rx: Receiver<Applied>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("{who}/applied"))
        .spawn(move || loop {
            match rx.blocking_recv() {
                Ok(a) => record(&who, a),
                Err(RecvError::Lagged(n)) => {
                    STATE.missed.fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => return,
            }
        })
        .expect("recorder thread")
}

// ---------------------------------------------------------------------------------------
// Warnings and errors of the in-process sidecars, for the report.

static LOG: LazyLock<Mutex<Vec<String>>> = LazyLock::new(Mutex::default);

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut log = LOG.lock();
        if log.len() < 100_000 {
            log.push(String::from_utf8_lossy(buf).trim_end().to_string());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps veto's warnings and errors (with the thread, which names the sidecar).
pub fn install_log() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_thread_names(true)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .try_init();
}

/// How many warnings and errors were logged, and the first `max`.
pub fn warnings(max: usize) -> (usize, Vec<String>) {
    let log = LOG.lock();
    (log.len(), log.iter().take(max).cloned().collect())
}
