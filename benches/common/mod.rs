//! What every load harness under `benches/` shares: sizes from the environment, which parts
//! to run, load and CPU readings from `/proc`. Each harness includes this file with
//! `#[path = "../common/mod.rs"]` (a directory without `main.rs` is not a bench target).
#![allow(dead_code)]

use std::sync::OnceLock;

pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// `--parts`, else `BENCH_PARTS`, else everything.
pub static PARTS: OnceLock<Option<String>> = OnceLock::new();

pub fn wants(part: &str) -> bool {
    match PARTS.get_or_init(|| std::env::var("BENCH_PARTS").ok()) {
        Some(p) if !p.trim().is_empty() => p.split(',').any(|x| x.trim() == part),
        _ => true,
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// System-wide CPU jiffies from /proc/stat: (busy, total).
pub fn system_cpu() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// A system-wide CPU sample: what fraction of all CPUs was busy since.
pub struct CpuSample(u64, u64);

impl CpuSample {
    pub fn now() -> CpuSample {
        let (busy, total) = system_cpu();
        CpuSample(busy, total)
    }

    /// Fraction of all CPUs busy since this sample.
    pub fn busy(&self) -> f64 {
        let now = CpuSample::now();
        let total = now.1.saturating_sub(self.1);
        if total == 0 {
            return 0.0;
        }
        now.0.saturating_sub(self.0) as f64 / total as f64
    }
}
