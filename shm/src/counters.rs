//! The in-proxy module's check counters, in a small file beside the revoked-set file
//! ([`path_beside`]: `<shm_path>.counters`), so the sidecar's `/metrics` shows what the
//! modules decided without Envoy's stats. Every Envoy process running the module maps it
//! read-write and adds to it with one relaxed atomic add per check (no lock); the sidecar
//! maps it read-only at scrape time. The file knows no reasons: each slot carries its own
//! `result` and `reason` names, written once at creation, so a reader never mislabels a
//! count whatever build of the module made the file.
//!
//! # Layout (little-endian, as the host)
//!
//! ```text
//! 0    magic "VETOCNT1"      8   format version (1)
//! 16   slots (n ≤ 127)       24  panics caught by the module(s)
//! 32   reloads of the sidecar's keys file that failed (the module kept its keys)
//! 40   reserved (0) up to 64
//! 64 + i·64, slot i: count (u64) · result name (16 bytes, NUL-padded) · reason name
//!      (40 bytes, NUL-padded)
//! ```
//!
//! The file is exactly `64 + n·64` bytes. One slot per cache line, so workers counting
//! different outcomes do not contend. Counts only grow (they restart from zero only if the
//! file is deleted, which Prometheus sees as a counter reset).
//!
//! # Creation
//!
//! The first module to find no file builds a complete one under a temporary name and links
//! it to the path (`link(2)` fails if the path exists): a reader or another module never sees
//! a half-written file, and of two modules racing, one file wins and both count in it.

use super::{bad, Map};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// `"VETOCNT1"` as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VETOCNT1");
/// The layout version this crate reads and writes.
pub const VERSION: u64 = 1;
/// Most slots in a file.
pub const MAX_SLOTS: usize = 127;
/// Longest `result` name.
pub const MAX_RESULT_BYTES: usize = 16;
/// Longest `reason` name.
pub const MAX_REASON_BYTES: usize = 40;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_SLOTS: usize = 16;
const OFF_PANICS: usize = 24;
/// Was reserved (0) in the first files of this version: an older module's file reads 0.
const OFF_KEY_RELOAD_FAILURES: usize = 32;
const SLOT: usize = 64;
const OFF_RESULT: usize = 8;
const OFF_REASON: usize = OFF_RESULT + MAX_RESULT_BYTES;

const _: () = assert!(OFF_REASON + MAX_REASON_BYTES == SLOT);

/// The counters file beside the revoked-set file at `shm_path`.
pub fn path_beside(shm_path: &Path) -> PathBuf {
    super::beside(shm_path, ".counters")
}

fn len_for(slots: usize) -> usize {
    SLOT + slots * SLOT
}

/// A module's handle: adds to the slots of its outcomes.
pub struct Counters {
    map: Map,
    /// Per outcome of the caller's list: its slot's offset in the file (`None`: the file, made
    /// by another build, has no such slot; that outcome is then counted in Envoy only).
    slot_of: Vec<Option<usize>>,
}

impl Counters {
    /// Opens the file at `path` read-write, creating it with one slot per `(result, reason)`
    /// of `outcomes` if there is none. A file of another layout is refused (never
    /// overwritten: its counts may be another module's).
    pub fn open_or_create(path: &Path, outcomes: &[(&str, &str)]) -> io::Result<Counters> {
        if outcomes.len() > MAX_SLOTS
            || outcomes
                .iter()
                .any(|(r, s)| !name_ok(r, MAX_RESULT_BYTES) || !name_ok(s, MAX_REASON_BYTES))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at most 127 outcomes with names of 1-16 and 1-40 bytes, without NUL",
            ));
        }
        for attempt in 0..2 {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
            {
                Ok(file) => return Counters::attach(&file, outcomes),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                    create(path, outcomes)?
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "counters file vanished while being created",
        ))
    }

    fn attach(file: &std::fs::File, outcomes: &[(&str, &str)]) -> io::Result<Counters> {
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| bad("file too large"))?;
        let map = Map::any(file, len, true)?;
        let names = check(&map, len)?;
        let slot_of = outcomes
            .iter()
            .map(|(r, s)| {
                names
                    .iter()
                    .position(|(fr, fs)| fr == r && fs == s)
                    .map(|i| SLOT + i * SLOT)
            })
            .collect();
        Ok(Counters { map, slot_of })
    }

    /// Counts one check of outcome `i` (its index in the list given at open): one relaxed
    /// atomic add.
    #[inline]
    pub fn add(&self, i: usize) {
        if let Some(Some(off)) = self.slot_of.get(i) {
            self.map.word(*off).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one panic caught.
    pub fn add_panic(&self) {
        self.map.word(OFF_PANICS).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed reload of the sidecar's keys file.
    pub fn add_key_reload_failure(&self) {
        self.map
            .word(OFF_KEY_RELOAD_FAILURES)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How many of the caller's outcomes have a slot in the file.
    pub fn slots_found(&self) -> usize {
        self.slot_of.iter().filter(|s| s.is_some()).count()
    }
}

fn name_ok(n: &str, max: usize) -> bool {
    !n.is_empty() && n.len() <= max && !n.contains('\0')
}

/// Builds a complete file under a temporary name and links it to `path`; an existing file
/// at `path` (another module won the race) is left as it is.
fn create(path: &Path, outcomes: &[(&str, &str)]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    tmp.push(format!(".tmp-{}-{nonce}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let len = len_for(outcomes.len());
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.set_len(len as u64)?;
        let map = Map::any(&file, len, true)?;
        let w = |off: usize, v: u64| map.word(off).store(v, Ordering::Relaxed);
        w(OFF_MAGIC, MAGIC);
        w(OFF_VERSION, VERSION);
        w(OFF_SLOTS, outcomes.len() as u64);
        for (i, (r, s)) in outcomes.iter().enumerate() {
            let at = SLOT + i * SLOT;
            put_name(&map, at + OFF_RESULT, r, MAX_RESULT_BYTES);
            put_name(&map, at + OFF_REASON, s, MAX_REASON_BYTES);
        }
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

fn put_name(map: &Map, at: usize, name: &str, max: usize) {
    let mut b = vec![0u8; max];
    b[..name.len()].copy_from_slice(name.as_bytes());
    for (j, chunk) in b.chunks_exact(8).enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        map.word(at + j * 8)
            .store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
}

fn get_name(map: &Map, at: usize, max: usize) -> io::Result<String> {
    let mut b = Vec::with_capacity(max);
    for j in 0..max / 8 {
        b.extend_from_slice(&map.load(at + j * 8).to_le_bytes());
    }
    while b.last() == Some(&0) {
        b.pop();
    }
    String::from_utf8(b).map_err(|_| bad("slot name not text"))
}

/// Checks the header against the file's length and returns every slot's names.
fn check(map: &Map, len: usize) -> io::Result<Vec<(String, String)>> {
    if len < SLOT || map.load(OFF_MAGIC) != MAGIC {
        return Err(bad("not a veto counters file (magic)"));
    }
    if map.load(OFF_VERSION) != VERSION {
        return Err(bad(format!(
            "counters layout version {} (this build reads {VERSION})",
            map.load(OFF_VERSION)
        )));
    }
    let n = map.load(OFF_SLOTS);
    if n > MAX_SLOTS as u64 || len != len_for(n as usize) {
        return Err(bad("counters file length differs from its slots"));
    }
    (0..n as usize)
        .map(|i| {
            let at = SLOT + i * SLOT;
            Ok((
                get_name(map, at + OFF_RESULT, MAX_RESULT_BYTES)?,
                get_name(map, at + OFF_REASON, MAX_REASON_BYTES)?,
            ))
        })
        .collect()
}

/// What a file holds now (the sidecar's scrape).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// `(result, reason, count)` per slot, in file order.
    pub checks: Vec<(String, String, u64)>,
    pub panics: u64,
    pub key_reload_failures: u64,
}

/// Reads the file at `path` read-only. Any error (no file, a foreign or truncated one) is
/// the caller's to ignore: the reader exports no series then.
pub fn read(path: &Path) -> io::Result<Snapshot> {
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| bad("file too large"))?;
    let map = Map::any(&file, len, false)?;
    let names = check(&map, len)?;
    let checks = names
        .into_iter()
        .enumerate()
        .map(|(i, (r, s))| (r, s, map.word(SLOT + i * SLOT).load(Ordering::Relaxed)))
        .collect();
    Ok(Snapshot {
        checks,
        panics: map.word(OFF_PANICS).load(Ordering::Relaxed),
        key_reload_failures: map.word(OFF_KEY_RELOAD_FAILURES).load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTCOMES: &[(&str, &str)] = &[
        ("allow", "ok"),
        ("deny", "missing_token"),
        ("deny", "revoked"),
    ];

    #[test]
    fn layout_is_as_documented() {
        let d = tempfile::tempdir().unwrap();
        let p = path_beside(&d.path().join("shm"));
        assert_eq!(p, d.path().join("shm.counters"));
        let c = Counters::open_or_create(&p, OUTCOMES).unwrap();
        c.add(2);
        c.add(2);
        c.add_panic();
        c.add_key_reload_failure();
        c.add_key_reload_failure();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), 64 + 3 * 64);
        assert_eq!(&bytes[0..8], b"VETOCNT1");
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        assert_eq!(word(8), 1);
        assert_eq!(word(16), 3);
        assert_eq!(word(24), 1);
        assert_eq!(word(32), 2);
        let slot = 64 + 2 * 64;
        assert_eq!(word(slot), 2);
        assert_eq!(&bytes[slot + 8..slot + 12], b"deny");
        assert_eq!(bytes[slot + 12], 0);
        assert_eq!(&bytes[slot + 24..slot + 31], b"revoked");
        assert_eq!(
            read(&p).unwrap(),
            Snapshot {
                checks: vec![
                    ("allow".into(), "ok".into(), 0),
                    ("deny".into(), "missing_token".into(), 0),
                    ("deny".into(), "revoked".into(), 2),
                ],
                panics: 1,
                key_reload_failures: 2,
            }
        );
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_adds_from_several_openers_all_count() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm.counters");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    // each thread its own mapping, as separate Envoy processes have
                    let c = Counters::open_or_create(&p, OUTCOMES).unwrap();
                    for i in 0..10_000 {
                        c.add(i % 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = read(&p).unwrap();
        assert_eq!(s.checks[0].2, 20_000);
        assert_eq!(s.checks[1].2, 20_000);
        assert_eq!(s.checks[2].2, 0);
    }

    #[test]
    fn another_builds_file_is_used_by_name_and_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm.counters");
        let old = Counters::open_or_create(&p, &[("deny", "revoked"), ("allow", "ok")]).unwrap();
        old.add(0);
        let new = Counters::open_or_create(&p, OUTCOMES).unwrap();
        assert_eq!(new.slots_found(), 2);
        new.add(0); // allow/ok: the file's slot 1
        new.add(1); // missing_token: no slot here, not counted
        new.add(2); // revoked: the file's slot 0
        new.add(99); // out of the list: ignored
        let s = read(&p).unwrap();
        assert_eq!(
            s.checks,
            vec![
                ("deny".into(), "revoked".into(), 2),
                ("allow".into(), "ok".into(), 1)
            ]
        );
    }

    #[test]
    fn missing_foreign_or_truncated_files_are_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shm.counters");
        assert_eq!(read(&p).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::write(&p, b"").unwrap();
        assert!(read(&p).is_err());
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        assert!(read(&p).is_err());
        assert!(Counters::open_or_create(&p, OUTCOMES).is_err());
        // the revoked-set file is not a counters file either
        let c = Counters::open_or_create(&d.path().join("ok"), OUTCOMES).unwrap();
        drop(c);
        let mut bytes = std::fs::read(d.path().join("ok")).unwrap();
        bytes[8] = 2; // another version
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p).is_err());
        bytes[8] = 1;
        bytes.truncate(100); // shorter than its slots
        std::fs::write(&p, &bytes).unwrap();
        assert!(read(&p).is_err());
        assert!(Counters::open_or_create(&d.path().join("x"), &[("", "ok")]).is_err());
    }
}
