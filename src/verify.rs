//! The verification pool (`[verify]`): where a token the verified-token cache does not hold
//! is verified, beside the request path rather than on it.
//!
//! A signature check costs tens of microseconds; a cache hit, well under one. Verified on
//! the runtime's threads, a flood of unique forged tokens (none can be cached: each fails)
//! would keep every runtime thread busy, and the cache hits of real users would queue behind
//! it until the proxy timed them out. Here:
//!
//! - verification runs on threads of its own, at a raised nice value, so when the CPU is
//!   short the scheduler runs the runtime's threads (cache hits, revocation checks) first;
//! - the queue is bounded in length (`verify.queue`: one more is refused at once) and in
//!   wait (`verify.max_wait`: a job that waited longer is refused, not started), so a flood
//!   is answered "cannot decide" quickly instead of holding connection slots past the
//!   proxy's timeout;
//! - a job whose caller went away (the proxy reset the stream) is dropped unstarted.
//!
//! Jobs run first in, first out. The pool's threads end when it is dropped.

use crate::metrics;
use parking_lot::{Condvar, Mutex};
use prometheus::{Histogram, IntCounter, IntGauge, Registry};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a job was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full when it was submitted.
    QueueFull,
    /// It waited longer than `verify.max_wait`.
    TimedOut,
    /// It panicked, or the pool stopped before running it.
    Lost,
}

/// The pool's metric families (every child resolved once).
#[derive(Clone)]
pub struct PoolMetrics {
    depth: IntGauge,
    ran: IntCounter,
    queue_full: IntCounter,
    timed_out: IntCounter,
    abandoned: IntCounter,
    panicked: IntCounter,
    wait: Histogram,
}

impl PoolMetrics {
    pub fn register(r: &Registry) -> PoolMetrics {
        let jobs = metrics::counter_vec(
            r,
            "veto_verify_jobs_total",
            "Token verifications submitted to the pool, by how they ended: ran; refused as the queue was full (queue_full) or after waiting verify.max_wait (timed_out); dropped unstarted as the caller had gone (abandoned); panicked.",
            &["result"],
        );
        PoolMetrics {
            depth: metrics::gauge(
                r,
                "veto_verify_queue_depth",
                "Token verifications waiting for a pool thread.",
            ),
            ran: jobs.with_label_values(&["ran"]),
            queue_full: jobs.with_label_values(&["queue_full"]),
            timed_out: jobs.with_label_values(&["timed_out"]),
            abandoned: jobs.with_label_values(&["abandoned"]),
            panicked: jobs.with_label_values(&["panicked"]),
            wait: metrics::histogram(
                r,
                "veto_verify_queue_wait_seconds",
                "Time a token verification waited in the queue before a pool thread took it.",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ],
            ),
        }
    }
}

struct Job {
    queued: Instant,
    /// `true`: run it; `false`: it waited too long, answer [`Shed::TimedOut`]. Counts how it
    /// ended before it answers, so a caller that reads the metrics after its answer sees it
    /// (a panic is the exception: the caller's `Lost` may come before `panicked` counts).
    work: Work,
}

/// A queued job's body: `run`, and the metrics it counts itself in.
type Work = Box<dyn FnOnce(bool, &PoolMetrics) + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    max_wait: Duration,
    metrics: PoolMetrics,
}

/// A bounded pool of verifying threads.
pub struct Pool {
    shared: Arc<Shared>,
    threads: usize,
}

impl Pool {
    /// Starts the threads (`settings.threads`, 0: one per CPU the process may use).
    pub fn start(settings: &crate::config::Verify, metrics: PoolMetrics) -> std::io::Result<Pool> {
        let threads = match settings.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: settings.queue,
            max_wait: settings.max_wait,
            metrics,
        });
        let pool = Pool {
            shared: shared.clone(),
            threads,
        };
        for i in 0..threads {
            let shared = shared.clone();
            let nice = settings.nice;
            // On failure `pool` drops here, which stops the threads already started.
            std::thread::Builder::new()
                .name(format!("veto-verify-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    work(&shared)
                })?;
        }
        Ok(pool)
    }

    /// The number of verifying threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread and waits for its answer; refused at once if the queue is
    /// full, after `max_wait` queued if no thread took it by then. Dropping the returned
    /// future withdraws the job (a thread that reaches it skips it).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Shed> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, Shed>>();
        let work = Box::new(move |start: bool, m: &PoolMetrics| {
            if tx.is_closed() {
                m.abandoned.inc();
            } else if !start {
                m.timed_out.inc();
                let _ = tx.send(Err(Shed::TimedOut));
            } else {
                let answer = f();
                m.ran.inc();
                let _ = tx.send(Ok(answer));
            }
        });
        self.submit(Job {
            queued: Instant::now(),
            work,
        })?;
        // A dropped sender without an answer: the job panicked, or the pool stopped.
        rx.await.unwrap_or(Err(Shed::Lost))
    }

    fn submit(&self, job: Job) -> Result<(), Shed> {
        let s = &self.shared;
        let mut q = s.queue.lock();
        if q.closed {
            return Err(Shed::Lost);
        }
        if q.jobs.len() >= s.capacity {
            drop(q);
            s.metrics.queue_full.inc();
            return Err(Shed::QueueFull);
        }
        q.jobs.push_back(job);
        s.metrics.depth.set(q.jobs.len() as i64);
        drop(q);
        s.ready.notify_one();
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        // Jobs still queued are withdrawn ones (a waiting `run` borrows the pool): the
        // threads return without reaching them, and they drop, uncounted, with the queue.
        q.closed = true;
        drop(q);
        self.shared.ready.notify_all();
    }
}

/// A pool thread: takes jobs until the pool is dropped.
fn work(s: &Shared) {
    loop {
        let job = {
            let mut q = s.queue.lock();
            loop {
                if q.closed {
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    s.metrics.depth.set(q.jobs.len() as i64);
                    break j;
                }
                s.ready.wait(&mut q);
            }
        };
        let waited = job.queued.elapsed();
        s.metrics.wait.observe(waited.as_secs_f64());
        let start = waited <= s.max_wait;
        // A panic is a bug, not an answer: the caller gets `Shed::Lost` (its sender drops
        // in the unwind) and the thread lives on.
        if catch_unwind(AssertUnwindSafe(|| (job.work)(start, &s.metrics))).is_err() {
            s.metrics.panicked.inc();
        }
    }
}

/// Raises this thread's nice value by `inc` (Linux keeps one per thread; `nice(2)` changes
/// the caller's). Needs no privilege; a failure leaves the thread at the process's priority.
fn lower_priority(inc: i32) {
    if inc == 0 {
        return;
    }
    if let Err(e) = rustix::process::nice(inc) {
        tracing::warn!(error = %e, inc, "verify: cannot raise the pool thread's nice value");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn pool(threads: usize, queue: usize, max_wait: Duration) -> (Arc<Pool>, PoolMetrics) {
        let m = PoolMetrics::register(&Registry::new());
        let settings = crate::config::Verify {
            threads,
            queue,
            max_wait,
            nice: 0,
        };
        (Arc::new(Pool::start(&settings, m.clone()).unwrap()), m)
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "never: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Holds the pool's one thread until opened.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
        entered: AtomicBool,
    }

    impl Gate {
        /// Submits the holding job and returns once a thread runs it.
        async fn hold(
            self: &Arc<Self>,
            p: &Arc<Pool>,
        ) -> tokio::task::JoinHandle<Result<(), Shed>> {
            let (g, p) = (self.clone(), p.clone());
            let held = tokio::spawn(async move {
                p.run(move || {
                    g.entered.store(true, Ordering::SeqCst);
                    let mut open = g.open.lock();
                    while !*open {
                        g.cv.wait(&mut open);
                    }
                })
                .await
            });
            until("the thread holds the gate", || {
                self.entered.load(Ordering::SeqCst)
            })
            .await;
            held
        }

        fn open(&self) {
            *self.open.lock() = true;
            self.cv.notify_all();
        }
    }

    fn spawn_run<T: Send + 'static>(
        p: &Arc<Pool>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T, Shed>> {
        let p = p.clone();
        tokio::spawn(async move { p.run(f).await })
    }

    #[tokio::test]
    async fn runs_jobs_and_returns_their_answers() {
        let (p, m) = pool(2, 16, Duration::from_secs(5));
        assert_eq!(p.threads(), 2);
        let answers = futures::future::join_all((0..8u64).map(|i| p.run(move || i * i))).await;
        let got: Vec<u64> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![0, 1, 4, 9, 16, 25, 36, 49]);
        assert_eq!(m.ran.get(), 8);
        assert_eq!(m.depth.get(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_runs_what_it_holds() {
        let (p, m) = pool(1, 2, Duration::from_secs(5));
        let gate = Arc::new(Gate::default());
        let held = gate.hold(&p).await;
        let a = spawn_run(&p, || 1);
        let b = spawn_run(&p, || 2);
        until("two queued", || m.depth.get() == 2).await;
        let t = Instant::now();
        assert_eq!(p.run(|| 3).await, Err(Shed::QueueFull));
        assert!(t.elapsed() < Duration::from_millis(100), "refused at once");
        assert_eq!(m.queue_full.get(), 1);
        gate.open();
        held.await.unwrap().unwrap();
        assert_eq!(a.await.unwrap(), Ok(1));
        assert_eq!(b.await.unwrap(), Ok(2));
        assert_eq!(m.ran.get(), 3);
    }

    #[tokio::test]
    async fn a_job_that_waited_too_long_is_refused_unstarted() {
        let (p, m) = pool(1, 16, Duration::from_millis(30));
        let gate = Arc::new(Gate::default());
        let held = gate.hold(&p).await;
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let late = spawn_run(&p, move || s.fetch_add(1, Ordering::SeqCst));
        until("queued", || m.depth.get() == 1).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        gate.open();
        held.await.unwrap().unwrap();
        assert_eq!(late.await.unwrap(), Err(Shed::TimedOut));
        assert_eq!(started.load(Ordering::SeqCst), 0, "never started");
        assert_eq!(m.timed_out.get(), 1);
        assert_eq!(m.wait.get_sample_count(), 2);
    }

    #[tokio::test]
    async fn a_withdrawn_job_is_skipped() {
        let (p, m) = pool(1, 16, Duration::from_secs(5));
        let gate = Arc::new(Gate::default());
        let held = gate.hold(&p).await;
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let withdrawn = tokio::time::timeout(
            Duration::from_millis(20),
            p.run(move || s.fetch_add(1, Ordering::SeqCst)),
        )
        .await;
        assert!(withdrawn.is_err(), "still queued when its caller gave up");
        gate.open();
        held.await.unwrap().unwrap();
        until("the withdrawn job is reached", || m.abandoned.get() == 1).await;
        assert_eq!(started.load(Ordering::SeqCst), 0);
        assert_eq!(m.ran.get(), 1);
    }

    #[tokio::test]
    async fn a_panicking_job_is_lost_and_the_thread_lives_on() {
        let (p, m) = pool(1, 16, Duration::from_secs(5));
        let r: Result<(), Shed> = p.run(|| panic!("a bug")).await;
        assert_eq!(r, Err(Shed::Lost));
        assert_eq!(p.run(|| 7).await, Ok(7));
        until("counted", || m.panicked.get() == 1 && m.ran.get() == 1).await;
    }

    #[tokio::test]
    async fn a_dropped_pool_ends_its_threads() {
        let (p, _m) = pool(3, 16, Duration::from_secs(5));
        assert_eq!(p.run(|| 1).await, Ok(1));
        let shared = Arc::downgrade(&p.shared);
        drop(p);
        // each thread holds the shared state until it returns
        until("every thread ended", || shared.upgrade().is_none()).await;
    }

    #[test]
    fn pool_threads_run_at_the_raised_nice_value() {
        let m = PoolMetrics::register(&Registry::new());
        let settings = crate::config::Verify {
            threads: 1,
            queue: 4,
            max_wait: Duration::from_secs(5),
            nice: 5,
        };
        let p = Pool::start(&settings, m).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = rustix::process::getpriority_process(None).unwrap();
        let there = rt
            .block_on(p.run(|| rustix::process::getpriority_process(None).unwrap()))
            .unwrap();
        assert_eq!(there, (here + 5).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), here);
    }
}
