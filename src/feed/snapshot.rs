//! The local snapshot of the revoked set (`[revocation.snapshot]`): written every `interval`
//! and at shutdown, loaded at start, so a restarted sidecar replays only the stream's tail.
//!
//! - **Start** ([`Snapshots::open`], before the follower runs): the file is read and checked
//!   (magic, version, checksum, every length: [`crate::revocation::snapshot`]) and the set is
//!   built under the snapshot's hash keys. Its entries go into the set only once the follower
//!   has looked at the stream ([`Snapshots::adopt`]): a snapshot of a stream that was
//!   recreated, or whose events after the snapshot were already deleted, is dropped and the
//!   whole stream replayed. Every such fallback is counted by reason
//!   (`veto_revocation_snapshot_fallbacks_total`) and logged; none is ever an error.
//! - **Follow**: the follower starts at the snapshot's sequence + 1 and publishes every
//!   sequence it applied ([`Snapshots::advanced`]). Readiness is decided as before
//!   ([`super::Progress`]): everything up to the stream's last sequence at start.
//! - **Write** ([`Snapshots::run`]): the position is read first, then the set is copied
//!   (shard by shard, under each shard's read lock), so every event up to the position is in
//!   it; events applied meanwhile may be too, and replaying them again is a duplicate. The
//!   file is written to `.<name>.tmp` in the same directory (mode 0600), fsynced, renamed over
//!   the old one and the directory fsynced: a crash at any point leaves the old snapshot or
//!   the new one, and a leftover temp file is never read.

use super::FeedMetrics;
use crate::revocation::snapshot::{self as format, Header, Image, Invalid};
use crate::revocation::RevokedSet;
use parking_lot::Mutex;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a start replays the whole stream instead of loading the snapshot: the `reason` label
/// of `veto_revocation_snapshot_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No snapshot file (the first start with this path).
    Missing,
    /// The file exists but could not be read.
    Unreadable,
    /// Larger than any set this sidecar would write.
    TooLarge,
    /// Not a snapshot, truncated, or its checksum does not match.
    Corrupt,
    /// Another format version.
    Version,
    /// A snapshot of another stream.
    WrongStream,
    /// The stream was deleted and created again since the snapshot.
    Recreated,
    /// Events after the snapshot's sequence were already deleted from the stream.
    TooOld,
    /// The snapshot's sequence is past the stream's last one (the stream was recreated).
    Ahead,
}

impl Fallback {
    pub const ALL: [Fallback; 9] = [
        Fallback::Missing,
        Fallback::Unreadable,
        Fallback::TooLarge,
        Fallback::Corrupt,
        Fallback::Version,
        Fallback::WrongStream,
        Fallback::Recreated,
        Fallback::TooOld,
        Fallback::Ahead,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fallback::Missing => "missing",
            Fallback::Unreadable => "unreadable",
            Fallback::TooLarge => "too_large",
            Fallback::Corrupt => "corrupt",
            Fallback::Version => "version",
            Fallback::WrongStream => "wrong_stream",
            Fallback::Recreated => "recreated",
            Fallback::TooOld => "too_old",
            Fallback::Ahead => "ahead",
        }
    }
}

/// Bytes per stored entry at most (a subject entry), and the file's fixed overhead: a file
/// larger than `max(revocation.max_entries, 1M) × 4` entries' worth is refused unread.
const ENTRY_BYTES_MAX: u64 = 24;
const OVERHEAD: u64 = 1 << 20;

/// Is a snapshot at `h` usable against the stream as it is now (its first and last
/// sequence, its creation time in Unix ns, 0 if unknown)?
pub fn against_stream(h: &Header, first: u64, last: u64, created_ns: i64) -> Result<(), Fallback> {
    if h.stream_created_ns != 0 && created_ns != 0 && h.stream_created_ns != created_ns {
        return Err(Fallback::Recreated);
    }
    if h.seq > last {
        return Err(Fallback::Ahead);
    }
    // `first` is the oldest message still held (last + 1 when empty): everything between
    // our sequence and it was deleted without us
    if h.seq.saturating_add(1) < first {
        return Err(Fallback::TooOld);
    }
    Ok(())
}

/// Reads and checks the snapshot at `path` for `stream`, allocating at most `cap` bytes.
pub fn read(path: &Path, stream: &str, cap: u64) -> Result<Image, (Fallback, String)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err((Fallback::Missing, "no snapshot file".into()))
        }
        Err(e) => return Err((Fallback::Unreadable, e.to_string())),
    };
    let len = file
        .metadata()
        .map_err(|e| (Fallback::Unreadable, e.to_string()))?
        .len();
    if len > cap {
        return Err((
            Fallback::TooLarge,
            format!("{len} bytes, more than the {cap} this sidecar reads"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // never more than `cap`, even if the file grows meanwhile
    file.take(cap)
        .read_to_end(&mut bytes)
        .map_err(|e| (Fallback::Unreadable, e.to_string()))?;
    let image = format::decode(bytes).map_err(|e| {
        let reason = match e {
            Invalid::Version(_) => Fallback::Version,
            _ => Fallback::Corrupt,
        };
        (reason, e.to_string())
    })?;
    if image.header().stream != stream {
        return Err((
            Fallback::WrongStream,
            format!(
                "snapshot of stream {:?}, this sidecar follows {stream:?}",
                image.header().stream
            ),
        ));
    }
    Ok(image)
}

/// Writes a file atomically: `write` fills `.<name>.tmp` beside `path` (with `mode`), which
/// is fsynced and renamed over `path`, and the directory fsynced. On an error the temporary
/// file is removed (best effort) and `path` is untouched. (The snapshot, the in-proxy keys
/// file and `veto install-module` all write through this.)
pub fn write_atomically<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<T>,
) -> io::Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| -> io::Result<T> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // a leftover temporary file keeps the mode it was created with
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let out = write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One sidecar's snapshot: the file, the set, and the follower's position.
pub struct Snapshots {
    path: PathBuf,
    interval: Duration,
    stream: String,
    revoked: Arc<RevokedSet>,
    metrics: FeedMetrics,
    /// The highest durable stream sequence applied: every event up to it is in the set.
    position: AtomicU64,
    /// The stream's creation time (Unix ns) as the follower last saw it.
    stream_created_ns: AtomicI64,
    /// The sequence of the last snapshot written or loaded.
    written: AtomicU64,
    /// The file read at start, until the follower has compared it with the stream.
    pending: Mutex<Option<Image>>,
}

impl Snapshots {
    /// Reads the snapshot at `cfg.path` (if any) for `stream` and builds the set: under the
    /// snapshot's hash keys when the file is good, else a fresh one (the fallback counted).
    /// Returns `None` for the store when snapshots are off.
    pub fn open(
        cfg: &crate::config::Snapshot,
        stream: &str,
        max_entries: usize,
        metrics: &FeedMetrics,
    ) -> (Arc<RevokedSet>, Option<Arc<Snapshots>>) {
        let Some(path) = cfg.path.clone() else {
            return (Arc::new(RevokedSet::with_max_entries(max_entries)), None);
        };
        // every reason exported at 0, for alerts on any increase
        for reason in Fallback::ALL {
            metrics.snapshot_fallback(reason);
        }
        let cap = (max_entries.max(1_000_000) as u64)
            .saturating_mul(4 * ENTRY_BYTES_MAX)
            .saturating_add(OVERHEAD);
        let started = Instant::now();
        let (revoked, pending) = match read(&path, stream, cap) {
            Ok(image) => {
                tracing::info!(
                    path = %path.display(),
                    seq = image.header().seq,
                    entries = image.entries(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "revocation snapshot read"
                );
                let set = RevokedSet::for_image(&image, max_entries);
                (Arc::new(set), Some(image))
            }
            Err((reason, detail)) => {
                metrics.snapshot_fallback(reason).inc();
                tracing::warn!(
                    path = %path.display(),
                    reason = reason.label(),
                    detail,
                    "revocation snapshot not used; replaying the whole stream"
                );
                (Arc::new(RevokedSet::with_max_entries(max_entries)), None)
            }
        };
        let store = Snapshots {
            path,
            interval: cfg.interval,
            stream: stream.to_string(),
            revoked: revoked.clone(),
            metrics: metrics.clone(),
            position: AtomicU64::new(0),
            stream_created_ns: AtomicI64::new(0),
            written: AtomicU64::new(0),
            pending: Mutex::new(pending),
        };
        (revoked, Some(Arc::new(store)))
    }

    /// The follower saw the stream (first and last sequence, creation time): with a snapshot
    /// read at start and not yet used, loads it when it is usable against this stream and
    /// returns the sequence it covers (the follower starts after it); otherwise counts the
    /// fallback and returns `None` (a full replay).
    pub async fn adopt(&self, first: u64, last: u64, created_ns: i64) -> Option<u64> {
        self.stream_created_ns.store(created_ns, Ordering::Relaxed);
        let image = self.pending.lock().take()?;
        let h = image.header().clone();
        if let Err(reason) = against_stream(&h, first, last, created_ns) {
            self.metrics.snapshot_fallback(reason).inc();
            tracing::warn!(
                path = %self.path.display(),
                reason = reason.label(),
                snapshot_seq = h.seq,
                stream_first = first,
                stream_last = last,
                "revocation snapshot does not fit the stream; replaying the whole stream"
            );
            return None;
        }
        let started = Instant::now();
        let revoked = self.revoked.clone();
        let loaded =
            tokio::task::spawn_blocking(move || revoked.load_snapshot(&image, crate::now_ms()))
                .await;
        let loaded = match loaded {
            Ok(Ok(n)) => n,
            // the set was built under the snapshot's keys at start: neither can happen
            Ok(Err(e)) => {
                self.metrics.snapshot_fallback(Fallback::Corrupt).inc();
                tracing::error!(error = %e, "revocation snapshot not loaded; replaying the whole stream");
                return None;
            }
            Err(e) => {
                self.metrics.snapshot_fallback(Fallback::Corrupt).inc();
                tracing::error!(error = %e, "revocation snapshot load failed; replaying the whole stream");
                return None;
            }
        };
        self.metrics.snapshot_loaded.set(loaded as i64);
        self.metrics.snapshot_sequence.set(h.seq as i64);
        self.written.store(h.seq, Ordering::Relaxed);
        self.advanced(h.seq);
        tracing::info!(
            loaded,
            snapshot_seq = h.seq,
            stream_last = last,
            took_ms = started.elapsed().as_millis() as u64,
            "revocation snapshot loaded; replaying the tail"
        );
        Some(h.seq)
    }

    /// Every event of the stream up to `seq` is in the set.
    pub fn advanced(&self, seq: u64) {
        self.position.store(seq, Ordering::Release);
    }

    /// Writes a snapshot every `interval` while anything new was applied, and once more when
    /// `shutdown` is cancelled (the ordered shutdown bounds it with `shutdown.grace`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.write_if_new().await,
            }
        }
        self.write_if_new().await;
    }

    /// Writes a snapshot if the position moved since the last one.
    async fn write_if_new(self: &Arc<Self>) {
        // read before the set is copied: see the module docs
        let seq = self.position.load(Ordering::Acquire);
        if seq == 0 || seq <= self.written.load(Ordering::Relaxed) {
            return;
        }
        let me = self.clone();
        let started = Instant::now();
        let done = tokio::task::spawn_blocking(move || me.write(seq)).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match done {
            Ok(Ok(entries)) => {
                self.written.store(seq, Ordering::Relaxed);
                self.metrics.snapshot_sequence.set(seq as i64);
                self.metrics.snapshot_writes("ok").inc();
                tracing::info!(seq, entries, took_ms, "revocation snapshot written");
            }
            Ok(Err(e)) => {
                self.metrics.snapshot_writes("error").inc();
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write revocation snapshot");
            }
            Err(e) => {
                self.metrics.snapshot_writes("error").inc();
                tracing::warn!(error = %e, "revocation snapshot writer failed");
            }
        }
    }

    /// Writes the set as covering `seq`; returns the entries written.
    fn write(&self, seq: u64) -> io::Result<usize> {
        let now = crate::now_ms();
        let header = Header {
            stream: self.stream.clone(),
            stream_created_ns: self.stream_created_ns.load(Ordering::Relaxed),
            seq,
            written_at_ms: now,
        };
        write_atomically(&self.path, 0o600, |w| {
            self.revoked.write_snapshot(&header, now, w)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::{Kind, RevocationEvent};

    const STREAM: &str = "VETO_REVOCATIONS_us";

    fn set_with(n: usize) -> RevokedSet {
        let s = RevokedSet::new();
        let now = crate::now_ms();
        for i in 0..n {
            s.apply(
                &RevocationEvent {
                    event_id: format!("e{i}"),
                    kind: Kind::Session as i32,
                    id: format!("s{i}"),
                    issuer: "iss".into(),
                    revoked_at: now,
                    expires_at: now + 600_000,
                    origin_region: "us".into(),
                    reason: String::new(),
                    urgent: false,
                    revoked_at_us: 0,
                },
                now,
            );
        }
        s
    }

    fn header(seq: u64) -> Header {
        Header {
            stream: STREAM.into(),
            stream_created_ns: 5,
            seq,
            written_at_ms: crate::now_ms(),
        }
    }

    fn write(path: &Path, set: &RevokedSet, h: &Header) {
        write_atomically(path, 0o600, |w| set.write_snapshot(h, crate::now_ms(), w)).unwrap();
    }

    #[test]
    fn written_0600_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.snap");
        let set = set_with(100);
        write(&path, &set, &header(77));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // only the snapshot is left: the temporary file was renamed
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("revoked.snap")]);
        let image = read(&path, STREAM, 1 << 30).unwrap();
        assert_eq!(image.header().seq, 77);
        assert_eq!(image.entries(), 100);
        // a leftover temporary file of a writer killed mid-write: ignored by readers, and
        // the next write replaces it (with mode 0600 whatever it had)
        let tmp = dir.path().join(".revoked.snap.tmp");
        fs::write(&tmp, b"VETOSNAP half of a file").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(&path, STREAM, 1 << 30).unwrap().header().seq, 77);
        write(&path, &set, &header(78));
        assert!(!tmp.exists());
        assert_eq!(read(&path, STREAM, 1 << 30).unwrap().header().seq, 78);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.snap");
        write(&path, &set_with(10), &header(5));
        let r: io::Result<()> = write_atomically(&path, 0o600, |w| {
            use std::io::Write;
            w.write_all(b"VETOSNAP partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(read(&path, STREAM, 1 << 30).unwrap().header().seq, 5);
        assert!(!dir.path().join(".revoked.snap.tmp").exists());
    }

    #[test]
    fn every_file_level_fallback_has_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked.snap");
        let reason = |cap: u64| read(&path, STREAM, cap).err().map(|e| e.0);
        assert_eq!(reason(1 << 30), Some(Fallback::Missing));
        fs::create_dir(&path).unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Unreadable));
        fs::remove_dir(&path).unwrap();
        write(&path, &set_with(50), &header(9));
        let good = fs::read(&path).unwrap();
        assert_eq!(reason(10), Some(Fallback::TooLarge));
        // truncated (a writer without the rename would leave this), garbage, a flipped bit
        fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Corrupt));
        fs::write(&path, b"").unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Corrupt));
        fs::write(&path, b"not a snapshot at all").unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Corrupt));
        let mut b = good.clone();
        b[good.len() / 2] ^= 1;
        fs::write(&path, &b).unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Corrupt));
        let mut b = good.clone();
        b[8] = 9;
        fs::write(&path, &b).unwrap();
        assert_eq!(reason(1 << 30), Some(Fallback::Version));
        fs::write(&path, &good).unwrap();
        assert!(read(&path, STREAM, 1 << 30).is_ok());
        let err = read(&path, "VETO_REVOCATIONS_eu", 1 << 30).err().unwrap();
        assert_eq!(err.0, Fallback::WrongStream);
    }

    #[test]
    fn every_stream_level_fallback_has_its_reason() {
        let h = header(100);
        // the tail is still all there: from 1, from 101 (everything up to 100 deleted), empty
        assert_eq!(against_stream(&h, 1, 150, 5), Ok(()));
        assert_eq!(against_stream(&h, 101, 150, 5), Ok(()));
        assert_eq!(against_stream(&h, 101, 100, 5), Ok(()));
        assert_eq!(against_stream(&h, 1, 100, 5), Ok(()));
        // unknown creation times are not compared
        assert_eq!(against_stream(&h, 1, 150, 0), Ok(()));
        assert_eq!(
            against_stream(
                &Header {
                    stream_created_ns: 0,
                    ..h.clone()
                },
                1,
                150,
                7
            ),
            Ok(())
        );
        assert_eq!(against_stream(&h, 102, 150, 5), Err(Fallback::TooOld));
        assert_eq!(against_stream(&h, 1, 99, 5), Err(Fallback::Ahead));
        assert_eq!(against_stream(&h, 0, 0, 5), Err(Fallback::Ahead));
        assert_eq!(against_stream(&h, 1, 150, 6), Err(Fallback::Recreated));
    }

    fn store(dir: &Path) -> (Arc<RevokedSet>, Arc<Snapshots>, FeedMetrics) {
        let metrics = FeedMetrics::register(&prometheus::Registry::new());
        let cfg = crate::config::Snapshot {
            path: Some(dir.join("revoked.snap")),
            interval: Duration::from_secs(1),
        };
        let (set, store) = Snapshots::open(&cfg, STREAM, 1000, &metrics);
        (set, store.unwrap(), metrics)
    }

    #[tokio::test]
    async fn a_written_snapshot_is_adopted_by_the_next_start_and_misfits_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (set, s, m) = store(dir.path());
        assert_eq!(m.snapshot_fallback(Fallback::Missing).get(), 1);
        // nothing applied yet: nothing written (an empty file would cover nothing)
        assert_eq!(s.adopt(1, 0, 5).await, None);
        s.write_if_new().await;
        assert!(!dir.path().join("revoked.snap").exists());
        let now = crate::now_ms();
        let ev = |i: usize| RevocationEvent {
            event_id: format!("e{i}"),
            kind: Kind::Token as i32,
            id: format!("j{i}"),
            issuer: String::new(),
            revoked_at: now,
            expires_at: now + 600_000,
            origin_region: "us".into(),
            reason: String::new(),
            urgent: false,
            revoked_at_us: 0,
        };
        for i in 0..40 {
            set.apply(&ev(i), now);
        }
        s.advanced(40);
        s.write_if_new().await;
        assert_eq!(m.snapshot_writes("ok").get(), 1);
        // nothing new: not written again
        s.write_if_new().await;
        assert_eq!(m.snapshot_writes("ok").get(), 1);

        // the next start: loaded once the stream is seen to still hold the tail
        let (set2, s2, m2) = store(dir.path());
        assert_eq!(m2.snapshot_fallback(Fallback::Missing).get(), 0);
        assert!(set2.is_empty());
        assert_eq!(s2.adopt(1, 60, 5).await, Some(40));
        assert_eq!(set2.len(), 40);
        assert_eq!(m2.snapshot_loaded.get(), 40);
        assert_eq!(
            set2.check("x", "s", Some("j7"), None, 0, crate::now_ms()),
            Some(crate::revocation::RevokedBy::Token)
        );
        // only once
        assert_eq!(s2.adopt(1, 60, 5).await, None);

        // a start against a stream whose events 41.. were deleted: a full replay, counted
        let (set3, s3, m3) = store(dir.path());
        assert_eq!(s3.adopt(45, 60, 5).await, None);
        assert!(set3.is_empty());
        assert_eq!(m3.snapshot_fallback(Fallback::TooOld).get(), 1);
        let (_, s4, m4) = store(dir.path());
        assert_eq!(s4.adopt(1, 60, 6).await, None);
        assert_eq!(m4.snapshot_fallback(Fallback::Recreated).get(), 1);
        let (_, s5, m5) = store(dir.path());
        assert_eq!(s5.adopt(1, 39, 5).await, None);
        assert_eq!(m5.snapshot_fallback(Fallback::Ahead).get(), 1);
    }
}
