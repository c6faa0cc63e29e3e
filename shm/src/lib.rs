//! Veto's revoked set in shared memory: one writer (the sidecar, which stays the only
//! JetStream consumer) mirrors its revoked set into a file (`inproxy.shm_path`, on a tmpfs:
//! `/dev/shm` or a `medium: Memory` emptyDir), and any number of readers (the in-proxy Envoy
//! module's workers) look revocations up in it without locks and without IPC.
//!
//! The file knows nothing of tokens: it holds 128-bit digests the writer computed with the
//! revoked set's own key derivation under the hash keys it also stores here, so a reader that
//! derives keys the same way (the `veto` crate's `ShmRevocations`) finds what the writer put.
//!
//! # Layout (all integers little-endian, as the host: both sides run on one machine)
//!
//! ```text
//! 0      magic "VETOSHM1"          8   format version (2)
//! 16     generation                24  superseded (0, then 1 once a newer file replaced this one)
//! 32     hash keys [u64; 4]: id k0, id k1, issuer k0, issuer k1
//! 64     heartbeat (writer's clock, Unix ms; 0 = never)
//! 72     feed position (the sidecar's last applied stream sequence)
//! 80     changes written          88  ready (1 once the sidecar's feed has replayed)
//! 96     origins held             104 file length
//! 112    keys generation (0 = no keys published; see below)     120 (free)
//! 128    6 table descriptors of 32 bytes: slots offset, slots (a power of two),
//!        not-before offset (0: none), entries
//! 384    64 origins of 72 bytes: name (64 bytes, zero-padded), last fresh (Unix ms)
//! 8192   the tables: per table `slots` × 16-byte slots, then (subject tables) `slots` × u32
//! ```
//!
//! A slot is two words: `lo` = the digest's first 64 bits, `hi` = the next 32 bits of the
//! digest in its low half and the expiry (Unix seconds, never 0 for a live entry) in its high
//! half; `hi == 0` is an empty slot. 96 digest bits are kept: a false match needs a 2^-96
//! coincidence and could only ever deny. Open addressing, linear probing from `lo & (slots -
//! 1)`, load kept ≤ 0.7 by the writer.
//!
//! # Keys generation
//!
//! The writer also publishes the issuers' verification keys to readers, in a file of their
//! own beside this one (the `veto` crate owns its name and format: `<path>.jwks`); this file
//! only carries the *keys generation*, a counter the writer bumps (Release) after it renamed
//! a new keys file into place, so that a reader that loads it (Acquire) and sees a value
//! it has not loaded yet finds at least those keys in the keys file. 0 means the writer never
//! published keys. The counter is carried into every new file: a rebuilt (grown, pruned)
//! generation starts with the current value, and a new writer starts from the previous
//! writer's value, so the counter never goes back while the path holds a valid file and a
//! reader switching files never mistakes an older set of keys for the current one. The word
//! was free (zero) space in version 1, so it needed no layout change of its own.
//!
//! # Concurrency
//!
//! Single writer, lock-free readers, release/acquire: the writer stores `lo` (and a subject's
//! not-before) and then `hi` with Release; a reader loads `hi` with Acquire and only then
//! `lo`. An entry is only ever made stronger in place (a later expiry or not-before: both
//! monotonic, so any mix a reader sees is a state that existed or a weaker one that is
//! overwritten within the same write). Nothing is removed in place: growing and pruning
//! build a new file beside the old, rename it over the path and then set the old file's
//! `superseded` flag; a reader that sees the flag (or, after a writer crash, a heartbeat that
//! stopped) opens the path again. Old mappings stay valid until their readers drop them.
//!
//! Beside the file, [`counters`] keeps the module's check counts (`<path>.counters`), which
//! the sidecar exports.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `"VETOSHM1"` as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VETOSHM1");
/// The layout version this crate reads and writes. 2: the digest's words are the revoked
/// set's key words 1–3 first (version 1 files held word 0 first; a module and a sidecar of
/// different versions must not share a file, so a reader refuses another version's file and
/// stays stale until its own writer replaces it).
pub const VERSION: u64 = 2;
/// Tables in a file: one per kind of revocation (session, token, subject) and scope (its
/// issuer, any issuer), numbered as the revoked set numbers them: `kind * 2 + any_issuer`.
pub const TABLES: usize = 6;
/// Which tables carry not-before values (the subject tables, 4 and 5).
pub const fn has_not_before(table: usize) -> bool {
    table >= 4
}
/// Most origins a file names.
pub const MAX_ORIGINS: usize = 64;
/// Longest origin name (region names are 1–64 characters of `[A-Za-z0-9_-]`).
pub const MAX_ORIGIN_BYTES: usize = 64;
/// Bytes before the first table.
pub const HEADER_BYTES: usize = 8192;
/// The fewest slots a table has.
pub const MIN_SLOTS: u64 = 1024;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_GENERATION: usize = 16;
const OFF_SUPERSEDED: usize = 24;
const OFF_KEYS: usize = 32;
const OFF_HEARTBEAT: usize = 64;
const OFF_FEED_POSITION: usize = 72;
const OFF_CHANGES: usize = 80;
const OFF_READY: usize = 88;
const OFF_ORIGINS: usize = 96;
const OFF_FILE_LEN: usize = 104;
const OFF_KEYS_GENERATION: usize = 112;
const OFF_TABLES: usize = 128;
const TABLE_DESC: usize = 32;
const OFF_ORIGIN_LIST: usize = 384;
const ORIGIN_DESC: usize = 72;

// The header's parts fit in it and do not overlap.
const _: () = assert!(OFF_KEYS_GENERATION + 8 <= OFF_TABLES);
const _: () = assert!(OFF_TABLES + TABLES * TABLE_DESC <= OFF_ORIGIN_LIST);
const _: () = assert!(OFF_ORIGIN_LIST + MAX_ORIGINS * ORIGIN_DESC <= HEADER_BYTES);

/// A revocation as stored: until when (Unix seconds, rounded up) and, for subjects, the
/// issued-at before which tokens are dead (Unix seconds; 0 elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub expires: u32,
    pub not_before: u32,
}

/// A 128-bit digest as two words (the revoked set's key).
pub type Digest = [u64; 2];

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A shared mapping of a whole file; unmapped on drop.
struct Map {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory shared between processes; every access to it after
// construction goes through atomics (`word`, `half`) or through immutable reads of bytes the
// writer wrote before publishing the file (origin names), so sharing it across threads is
// sound.
unsafe impl Send for Map {}
// SAFETY: as above.
unsafe impl Sync for Map {}

impl Map {
    /// Maps all of `file`, read-write (the writer) or read-only (readers).
    fn new(file: &std::fs::File, len: usize, writable: bool) -> io::Result<Map> {
        if len < HEADER_BYTES {
            return Err(bad("file shorter than the header"));
        }
        Map::any(file, len, writable)
    }

    /// Maps all of `file` (`len` > 0 bytes, its length), of whatever layout.
    fn any(file: &std::fs::File, len: usize, writable: bool) -> io::Result<Map> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Err(bad("empty file"));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of a file descriptor we
        // hold open for the call; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The 8-byte word at `off` as an atomic. `off` must be 8-aligned and in bounds: every
    /// caller passes an offset checked at open (header constants, validated table bounds) and
    /// this re-checks, so a bad offset is a panic, never a wild access.
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && off + 8 <= self.len,
            "word offset {off}"
        );
        // SAFETY: in bounds and aligned (checked above; the mapping is page-aligned), valid
        // for the lifetime of `&self` (unmapped only on drop); AtomicU64 has u64's layout and
        // every party touches these bytes only atomically. A read-only mapping is only ever
        // loaded from (the store paths are on the writer's read-write map).
        unsafe { &*(self.ptr.add(off) as *const AtomicU64) }
    }

    /// The 4-byte word at `off` as an atomic (a subject's not-before).
    fn half(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "half offset {off}"
        );
        // SAFETY: as for `word`, with AtomicU32.
        unsafe { &*(self.ptr.add(off) as *const AtomicU32) }
    }

    fn load(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::Acquire)
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows from the map
        // any more (borrows are tied to `&self`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Where one table lives in a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Layout {
    offset: usize,
    slots: u64,
    /// 0: no not-before array.
    nb_offset: usize,
}

/// The tables of one file: layouts read (and checked) once.
struct Tables {
    map: Map,
    layout: [Layout; TABLES],
}

impl Tables {
    fn count(&self, table: usize) -> u64 {
        self.map.load(OFF_TABLES + table * TABLE_DESC + 24)
    }

    fn lookup(&self, table: usize, d: Digest) -> Option<Entry> {
        let l = self.layout.get(table)?;
        let mask = l.slots - 1;
        let mut i = d[0] & mask;
        for _ in 0..l.slots {
            let at = l.offset + (i as usize) * 16;
            let hi = self.map.word(at + 8).load(Ordering::Acquire);
            if hi == 0 {
                return None;
            }
            let lo = self.map.word(at).load(Ordering::Relaxed);
            if lo == d[0] && hi as u32 == d[1] as u32 {
                let not_before = if l.nb_offset != 0 {
                    self.map
                        .half(l.nb_offset + (i as usize) * 4)
                        .load(Ordering::Acquire)
                } else {
                    0
                };
                return Some(Entry {
                    expires: (hi >> 32) as u32,
                    not_before,
                });
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Every occupied slot (the writer's rebuilds).
    fn entries(&self, table: usize) -> impl Iterator<Item = (Digest, Entry)> + '_ {
        let l = self.layout[table];
        (0..l.slots as usize).filter_map(move |i| {
            let at = l.offset + i * 16;
            let hi = self.map.word(at + 8).load(Ordering::Acquire);
            if hi == 0 {
                return None;
            }
            let lo = self.map.word(at).load(Ordering::Relaxed);
            let not_before = if l.nb_offset != 0 {
                self.map.half(l.nb_offset + i * 4).load(Ordering::Acquire)
            } else {
                0
            };
            Some((
                [lo, hi & 0xFFFF_FFFF],
                Entry {
                    expires: (hi >> 32) as u32,
                    not_before,
                },
            ))
        })
    }
}

/// The layouts of a file with these table sizes, and its length.
fn plan(slots: [u64; TABLES]) -> ([Layout; TABLES], usize) {
    let mut at = HEADER_BYTES;
    let mut layout = [Layout::default(); TABLES];
    for (t, l) in layout.iter_mut().enumerate() {
        let n = slots[t] as usize;
        l.offset = at;
        l.slots = slots[t];
        at += n * 16;
        if has_not_before(t) {
            l.nb_offset = at;
            at += n * 4;
        }
        at = at.div_ceil(64) * 64;
    }
    (layout, at)
}

/// Slots for a table that must hold `entries`: load ≤ 0.7, a power of two, at least
/// [`MIN_SLOTS`].
pub fn slots_for(entries: u64) -> u64 {
    (entries.saturating_mul(10) / 7 + 1)
        .max(MIN_SLOTS)
        .checked_next_power_of_two()
        .unwrap_or(1 << 62)
}

/// A file opened for reading: what a reader holds until the writer replaces the file.
pub struct Mapping {
    tables: Tables,
    generation: u64,
    keys: [u64; 4],
    origins: Vec<String>,
}

impl Mapping {
    /// Opens and checks the file at `path` (magic, version, length, every table inside it).
    pub fn open(path: &Path) -> io::Result<Mapping> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| bad("file too large"))?;
        let map = Map::new(&file, len, false)?;
        if map.load(OFF_MAGIC) != MAGIC {
            return Err(bad("not a veto shared-memory file (magic)"));
        }
        if map.load(OFF_VERSION) != VERSION {
            return Err(bad(format!(
                "layout version {} (this build reads {VERSION})",
                map.load(OFF_VERSION)
            )));
        }
        if map.load(OFF_FILE_LEN) != len as u64 {
            return Err(bad("file length differs from the header's"));
        }
        let mut layout = [Layout::default(); TABLES];
        let mut end = HEADER_BYTES;
        for (t, l) in layout.iter_mut().enumerate() {
            let d = OFF_TABLES + t * TABLE_DESC;
            let (offset, slots, nb) = (map.load(d), map.load(d + 8), map.load(d + 16));
            let ok_slots = slots.is_power_of_two() && slots <= (len as u64) / 16;
            if !ok_slots || !offset.is_multiple_of(64) || (offset as usize) < end {
                return Err(bad(format!("table {t}: bad layout")));
            }
            let (offset, n) = (offset as usize, slots as usize);
            let slots_end = offset.checked_add(n * 16).ok_or_else(|| bad("overflow"))?;
            let table_end = if has_not_before(t) {
                if nb as usize != slots_end {
                    return Err(bad(format!("table {t}: bad not-before layout")));
                }
                slots_end + n * 4
            } else {
                if nb != 0 {
                    return Err(bad(format!("table {t}: unexpected not-before array")));
                }
                slots_end
            };
            if table_end > len {
                return Err(bad(format!("table {t}: past the end of the file")));
            }
            *l = Layout {
                offset,
                slots,
                nb_offset: nb as usize,
            };
            end = table_end;
        }
        let n_origins = map.load(OFF_ORIGINS) as usize;
        if n_origins > MAX_ORIGINS {
            return Err(bad("too many origins"));
        }
        let mut origins = Vec::with_capacity(n_origins);
        for i in 0..n_origins {
            let at = OFF_ORIGIN_LIST + i * ORIGIN_DESC;
            let mut name = Vec::with_capacity(MAX_ORIGIN_BYTES);
            for w in 0..MAX_ORIGIN_BYTES / 8 {
                name.extend_from_slice(&map.load(at + w * 8).to_le_bytes());
            }
            while name.last() == Some(&0) {
                name.pop();
            }
            let name = String::from_utf8(name).map_err(|_| bad("origin name not text"))?;
            origins.push(name);
        }
        let keys = [0, 1, 2, 3].map(|i| map.load(OFF_KEYS + i * 8));
        let generation = map.load(OFF_GENERATION);
        Ok(Mapping {
            tables: Tables { map, layout },
            generation,
            keys,
            origins,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True once a newer file replaced this one at the path: open the path again.
    pub fn superseded(&self) -> bool {
        self.tables.map.load(OFF_SUPERSEDED) != 0
    }

    /// The hash keys the digests were computed under: id k0, id k1, issuer k0, issuer k1.
    pub fn keys(&self) -> [u64; 4] {
        self.keys
    }

    /// The writer's last heartbeat (Unix ms; 0 = never).
    pub fn heartbeat_ms(&self) -> i64 {
        self.tables.map.load(OFF_HEARTBEAT) as i64
    }

    /// The sidecar's feed position (its last applied stream sequence).
    pub fn feed_position(&self) -> u64 {
        self.tables.map.load(OFF_FEED_POSITION)
    }

    /// Changes the writer has made to the tables (inserts and strengthenings).
    pub fn changes(&self) -> u64 {
        self.tables.map.load(OFF_CHANGES)
    }

    /// True once the sidecar's feed has replayed its stream (what its readiness waits for).
    pub fn ready(&self) -> bool {
        self.tables.map.load(OFF_READY) == 1
    }

    /// The keys generation (see the crate doc): bumped each time the writer publishes new
    /// verification keys beside this file; 0 = none published. One Acquire load, cheap
    /// enough for every request.
    pub fn keys_generation(&self) -> u64 {
        self.tables.map.load(OFF_KEYS_GENERATION)
    }

    /// The origins named in the file, in the writer's order.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// When origin `i` was last known fresh (Unix ms; 0 = never, or no such origin).
    pub fn origin_fresh_ms(&self, i: usize) -> i64 {
        if i >= self.origins.len() {
            return 0;
        }
        self.tables
            .map
            .load(OFF_ORIGIN_LIST + i * ORIGIN_DESC + MAX_ORIGIN_BYTES) as i64
    }

    /// Entries in `table` (0 for a table that does not exist).
    pub fn count(&self, table: usize) -> u64 {
        if table >= TABLES {
            return 0;
        }
        self.tables.count(table)
    }

    /// The entry stored under `digest` in `table`, if any.
    pub fn lookup(&self, table: usize, digest: Digest) -> Option<Entry> {
        self.tables.lookup(table, digest)
    }
}

/// The writer's view of the status fields.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub heartbeat_ms: i64,
    pub feed_position: u64,
    pub ready: bool,
    /// Last fresh time per origin, in the order the writer was created with.
    pub origins_fresh_ms: Vec<i64>,
}

/// The one writer of a path.
pub struct Writer {
    path: PathBuf,
    /// Where the current file is: a temporary name beside `path` until the first ready
    /// status is published, then `path`.
    file: PathBuf,
    /// True once the file was renamed to `path` (readers can see it).
    published: bool,
    /// The previous writer's file, flagged superseded when this one is published.
    previous: Option<Map>,
    tables: Tables,
    generation: u64,
    keys: [u64; 4],
    origins: Vec<String>,
    /// Entries per table as this writer counts them (the file's counts mirror these).
    counts: [u64; TABLES],
    changes: u64,
    /// The keys generation (see the crate doc), written into every file this writer builds.
    keys_generation: u64,
    status: Status,
}

impl Writer {
    /// Starts a new generation for `path`, empty, under `keys`, naming `origins` (at most
    /// [`MAX_ORIGINS`] names of at most [`MAX_ORIGIN_BYTES`] bytes, no NUL). It is built
    /// under a temporary name and only renamed to `path` when the first ready status is
    /// published ([`Writer::publish`]): a restarted sidecar does not replace the previous
    /// one's file (which readers keep using until its heartbeat is too old) with an empty
    /// table before its feed has replayed. The previous file is then flagged superseded.
    pub fn create(path: &Path, keys: [u64; 4], origins: &[String]) -> io::Result<Writer> {
        if origins.len() > MAX_ORIGINS
            || origins
                .iter()
                .any(|o| o.is_empty() || o.len() > MAX_ORIGIN_BYTES || o.contains('\0'))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "at most 64 origins of 1-64 bytes without NUL",
            ));
        }
        let previous = previous(path);
        let generation = previous.as_ref().map_or(0, |(_, g, _)| *g) + 1;
        // continued, never restarted: a reader that loaded the previous writer's keys must
        // see a change when this one publishes
        let keys_generation = previous.as_ref().map_or(0, |(_, _, k)| *k);
        let status = Status {
            origins_fresh_ms: vec![0; origins.len()],
            ..Status::default()
        };
        let file = tmp_path(path, generation);
        let tables = build(
            &file,
            generation,
            keys,
            origins,
            [MIN_SLOTS; TABLES],
            &status,
            Carried {
                changes: 0,
                keys_generation,
            },
        )?;
        Ok(Writer {
            path: path.to_path_buf(),
            file,
            published: false,
            previous: previous.map(|(m, _, _)| m),
            tables,
            generation,
            keys,
            origins: origins.to_vec(),
            counts: [0; TABLES],
            changes: 0,
            keys_generation,
            status,
        })
    }

    /// True once the file is at the path (the first ready status was published).
    pub fn published(&self) -> bool {
        self.published
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys generation this writer publishes (see the crate doc; 0 = none yet).
    pub fn keys_generation(&self) -> u64 {
        self.keys_generation
    }

    /// Announces that new verification keys are in place beside the file (the caller has
    /// already renamed the keys file into place): bumps the keys generation (Release) and
    /// returns it. Rebuilt files carry it.
    pub fn bump_keys_generation(&mut self) -> u64 {
        self.keys_generation += 1;
        self.tables
            .map
            .word(OFF_KEYS_GENERATION)
            .store(self.keys_generation, Ordering::Release);
        self.keys_generation
    }

    /// Entries held, every table.
    pub fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in `table`.
    pub fn count(&self, table: usize) -> u64 {
        self.counts.get(table).copied().unwrap_or(0)
    }

    /// Slots of `table` in the current file.
    pub fn slots(&self, table: usize) -> u64 {
        self.tables.layout.get(table).map_or(0, |l| l.slots)
    }

    /// Bytes of the current file.
    pub fn file_bytes(&self) -> usize {
        self.tables.map.len
    }

    /// The entry stored under `digest` in `table` (tests, diagnostics).
    pub fn lookup(&self, table: usize, digest: Digest) -> Option<Entry> {
        self.tables.lookup(table, digest)
    }

    /// Stores a revocation, merging with what is there (the later expiry, the later
    /// not-before): true when something changed. Grows the table (a new generation) before
    /// it would pass 0.7 load. An entry with `expires == 0` is never live and is not stored.
    pub fn upsert(&mut self, table: usize, digest: Digest, e: Entry) -> io::Result<bool> {
        if table >= TABLES {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such table"));
        }
        if e.expires == 0 {
            return Ok(false);
        }
        if self.tables.lookup(table, digest).is_none()
            && slots_for(self.counts[table] + 1) > self.tables.layout[table].slots
        {
            let mut slots = self.current_slots();
            slots[table] = slots_for(self.counts[table] + 1);
            self.rebuild(slots, None)?;
        }
        let changed = put(&self.tables, table, digest, e, &mut self.counts[table]);
        if changed {
            self.changes += 1;
            self.tables
                .map
                .word(OFF_CHANGES)
                .store(self.changes, Ordering::Release);
        }
        Ok(changed)
    }

    /// Forgets entries whose expiry has passed at `now_ms` — by building a new generation,
    /// and only once at least a quarter of the entries are dead (a dead entry never revokes
    /// anything, it only takes a slot). Returns how many were dropped.
    pub fn prune(&mut self, now_ms: i64) -> io::Result<u64> {
        let dead: u64 = (0..TABLES)
            .map(|t| {
                self.tables
                    .entries(t)
                    .filter(|(_, e)| !live(e.expires, now_ms))
                    .count() as u64
            })
            .sum();
        if dead == 0 || dead * 4 < self.len() {
            return Ok(0);
        }
        let before = self.len();
        let live_per_table: Vec<u64> = (0..TABLES)
            .map(|t| {
                self.tables
                    .entries(t)
                    .filter(|(_, e)| live(e.expires, now_ms))
                    .count() as u64
            })
            .collect();
        let mut slots = [MIN_SLOTS; TABLES];
        for (s, n) in slots.iter_mut().zip(&live_per_table) {
            *s = slots_for(*n);
        }
        self.rebuild(slots, Some(now_ms))?;
        Ok(before - self.len())
    }

    /// Publishes the status fields (heartbeat last, so a reader that sees a fresh heartbeat
    /// sees the rest as fresh). The first ready status also moves the file to the path and
    /// flags the previous writer's file superseded.
    pub fn publish(&mut self, status: &Status) -> io::Result<()> {
        let m = &self.tables.map;
        m.word(OFF_FEED_POSITION)
            .store(status.feed_position, Ordering::Release);
        m.word(OFF_READY)
            .store(u64::from(status.ready), Ordering::Release);
        for (i, at) in status
            .origins_fresh_ms
            .iter()
            .take(self.origins.len())
            .enumerate()
        {
            m.word(OFF_ORIGIN_LIST + i * ORIGIN_DESC + MAX_ORIGIN_BYTES)
                .store(*at as u64, Ordering::Release);
        }
        m.word(OFF_HEARTBEAT)
            .store(status.heartbeat_ms as u64, Ordering::Release);
        self.status = status.clone();
        if status.ready && !self.published {
            std::fs::rename(&self.file, &self.path)?;
            self.file = self.path.clone();
            self.published = true;
            if let Some(old) = self.previous.take() {
                // its readers move over to this file
                old.word(OFF_SUPERSEDED).store(1, Ordering::Release);
            }
        }
        Ok(())
    }

    fn current_slots(&self) -> [u64; TABLES] {
        self.tables.layout.map(|l| l.slots)
    }

    /// Builds the next generation with `slots` per table from the current entries (without
    /// those dead at `prune_at`, if given) and, once published, renames it over the path and
    /// flags the current file superseded.
    fn rebuild(&mut self, slots: [u64; TABLES], prune_at: Option<i64>) -> io::Result<()> {
        let generation = self.generation + 1;
        let file = tmp_path(&self.path, generation);
        let next = build(
            &file,
            generation,
            self.keys,
            &self.origins,
            slots,
            &self.status,
            Carried {
                changes: self.changes,
                keys_generation: self.keys_generation,
            },
        )?;
        let mut counts = [0; TABLES];
        for (t, count) in counts.iter_mut().enumerate() {
            for (d, e) in self.tables.entries(t) {
                if prune_at.is_some_and(|now| !live(e.expires, now)) {
                    continue;
                }
                put(&next, t, d, e, count);
            }
        }
        if self.published {
            std::fs::rename(&file, &self.path)?;
            // readers of the old file move over now
            self.tables
                .map
                .word(OFF_SUPERSEDED)
                .store(1, Ordering::Release);
        } else {
            let _ = std::fs::remove_file(&self.file);
            self.file = file;
        }
        self.tables = next;
        self.generation = generation;
        self.counts = counts;
        Ok(())
    }
}

/// Is an entry with expiry `expires` (seconds) live at `now_ms`? Live strictly before it
/// (the revoked set's rule).
fn live(expires: u32, now_ms: i64) -> bool {
    i64::from(expires) * 1000 > now_ms
}

/// Inserts or strengthens `digest` in `table` of `t` (which has room: the caller grew it).
fn put(t: &Tables, table: usize, d: Digest, e: Entry, count: &mut u64) -> bool {
    let l = t.layout[table];
    let mask = l.slots - 1;
    let mut i = d[0] & mask;
    let low = d[1] & 0xFFFF_FFFF;
    for _ in 0..l.slots {
        let at = l.offset + (i as usize) * 16;
        let hi_word = t.map.word(at + 8);
        let hi = hi_word.load(Ordering::Acquire);
        let nb = (l.nb_offset != 0).then(|| t.map.half(l.nb_offset + (i as usize) * 4));
        if hi == 0 {
            // counted first: a reader that skips empty tables never skips this one once the
            // entry is visible
            *count += 1;
            t.map
                .word(OFF_TABLES + table * TABLE_DESC + 24)
                .store(*count, Ordering::Release);
            if let Some(nb) = nb {
                nb.store(e.not_before, Ordering::Relaxed);
            }
            t.map.word(at).store(d[0], Ordering::Relaxed);
            hi_word.store(low | u64::from(e.expires) << 32, Ordering::Release);
            return true;
        }
        if t.map.word(at).load(Ordering::Relaxed) == d[0] && hi & 0xFFFF_FFFF == low {
            let mut changed = false;
            if let Some(nb) = nb {
                if e.not_before > nb.load(Ordering::Relaxed) {
                    nb.store(e.not_before, Ordering::Release);
                    changed = true;
                }
            }
            if u64::from(e.expires) > hi >> 32 {
                hi_word.store(low | u64::from(e.expires) << 32, Ordering::Release);
                changed = true;
            }
            return changed;
        }
        i = (i + 1) & mask;
    }
    // unreachable while load ≤ 0.7; refusing is the safe answer
    false
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// The temporary name generation `generation` is built under, beside `path`.
fn tmp_path(path: &Path, generation: u64) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{generation}"));
    PathBuf::from(tmp)
}

/// The counters a new file carries over from the one it replaces.
#[derive(Debug, Clone, Copy, Default)]
struct Carried {
    changes: u64,
    keys_generation: u64,
}

/// Writes a complete file of generation `generation` (header, status, empty tables) at
/// `file` (a temporary name; the caller renames it).
fn build(
    file: &Path,
    generation: u64,
    keys: [u64; 4],
    origins: &[String],
    slots: [u64; TABLES],
    status: &Status,
    carried: Carried,
) -> io::Result<Tables> {
    use std::os::unix::fs::OpenOptionsExt;
    let (layout, len) = plan(slots);
    let path = file;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    file.set_len(len as u64)?;
    let map = Map::new(&file, len, true)?;
    let w = |off: usize, v: u64| map.word(off).store(v, Ordering::Relaxed);
    w(OFF_MAGIC, MAGIC);
    w(OFF_VERSION, VERSION);
    w(OFF_GENERATION, generation);
    for (i, k) in keys.iter().enumerate() {
        w(OFF_KEYS + i * 8, *k);
    }
    w(OFF_FEED_POSITION, status.feed_position);
    w(OFF_CHANGES, carried.changes);
    w(OFF_READY, u64::from(status.ready));
    w(OFF_ORIGINS, origins.len() as u64);
    w(OFF_FILE_LEN, len as u64);
    w(OFF_KEYS_GENERATION, carried.keys_generation);
    for (t, l) in layout.iter().enumerate() {
        let d = OFF_TABLES + t * TABLE_DESC;
        w(d, l.offset as u64);
        w(d + 8, l.slots);
        w(d + 16, l.nb_offset as u64);
    }
    for (i, o) in origins.iter().enumerate() {
        let at = OFF_ORIGIN_LIST + i * ORIGIN_DESC;
        let mut name = [0u8; MAX_ORIGIN_BYTES];
        name[..o.len()].copy_from_slice(o.as_bytes());
        for (j, chunk) in name.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w(at + j * 8, u64::from_le_bytes(b));
        }
        let fresh = status.origins_fresh_ms.get(i).copied().unwrap_or(0);
        w(at + MAX_ORIGIN_BYTES, fresh as u64);
    }
    // the heartbeat last, with Release: the header is complete when it is seen
    map.word(OFF_HEARTBEAT)
        .store(status.heartbeat_ms as u64, Ordering::Release);
    Ok(Tables { map, layout })
}

/// The previous writer's file at `path`, mapped read-write so that it can be flagged
/// superseded once the new one is in place, with its generation and keys generation
/// (`None`: no valid file).
fn previous(path: &Path) -> Option<(Map, u64, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let map = Map::new(&file, len, true).ok()?;
    let valid = map.load(OFF_MAGIC) == MAGIC
        && map.load(OFF_VERSION) == VERSION
        && map.load(OFF_FILE_LEN) == len as u64;
    let generation = map.load(OFF_GENERATION);
    let keys_generation = map.load(OFF_KEYS_GENERATION);
    valid.then_some((map, generation, keys_generation))
}

pub mod counters;

/// A file beside the shared-memory file `shm`: its path with `suffix` appended (the module's
/// counters, the published keys).
pub fn beside(shm: &Path, suffix: &str) -> PathBuf {
    let mut p = shm.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[cfg(test)]
mod tests;
