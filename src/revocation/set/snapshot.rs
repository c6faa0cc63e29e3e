//! The revoked set's snapshot format: the set's entries (digests with expiries and subject
//! not-before values), the hash keys they are digests under, and where in its stream the
//! snapshot stands. The feed writes and loads it ([`crate::feed::snapshot`]); this module
//! only encodes and decodes, and never trusts a byte it reads.
//!
//! Why digests and their keys, not claims: the set never holds the ids it was given (only
//! 128-bit keyed digests, by design: 20 bytes a session entry), so a snapshot of claims would
//! need a second copy of every id in memory. Storing the keys instead makes the file as
//! secret as the keys are: whoever reads it can craft digest collisions (which could only
//! ever deny a token, never allow one) and learn nothing else (ids are not recoverable from
//! their digests). It is written with mode 0600.
//!
//! Layout, every integer little-endian:
//!
//! ```text
//! magic "VETOSNAP" | version u32 | reserved u32 (0)
//! stream name: len u16, UTF-8 | stream created (Unix ns, i64; 0 unknown) | sequence u64
//! written at (Unix ms, i64) | hash keys: 4 × u64 (id k0 k1, issuer k0 k1)
//! chunks: table u8 (0–5) | count u32 | count × (key 4 × u32, expires u32[, not_before u32])
//! end marker 0xFF | checksum u64: SipHash-1-3 (zero key) of every byte before it
//! ```
//!
//! Tables are [`RevokedBy::table`]'s numbering; subject tables (4, 5) carry `not_before`.
//! Decoding checks the magic, the version, the checksum, then every length against what is
//! left of the file: nothing is allocated beyond the file's own bytes.

use super::key::{HashSecret, Hashers, Key};
use super::{live, RevokedBy, RevokedSet, Scope};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;
use std::io::{self, Write};

pub const MAGIC: &[u8; 8] = b"VETOSNAP";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
const END: u8 = 0xFF;
const TABLES: u8 = 6;
/// Entries per chunk written (a chunk's count is read as u32 whatever it says); small in
/// tests, so that splitting is exercised without millions of entries.
const CHUNK: usize = if cfg!(test) { 16 } else { 1 << 16 };
const HEADER_FIXED: usize = 8 + 4 + 4;
const CHECKSUM: usize = 8;

/// Where a snapshot stands in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The stream's name.
    pub stream: String,
    /// The stream's creation time, Unix ns (0: unknown): a stream deleted and created again
    /// under the same name is another stream.
    pub stream_created_ns: i64,
    /// Every event of the stream up to this sequence is in the snapshot.
    pub seq: u64,
    /// When it was written, Unix ms.
    pub written_at_ms: i64,
}

/// Why bytes are not a snapshot this build can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a snapshot file (bad magic)")]
    Magic,
    #[error("format version {0}; this build reads version {VERSION}")]
    Version(u32),
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// A decoded and checked snapshot, not loaded into a set yet.
pub struct Image {
    header: Header,
    secret: HashSecret,
    /// The whole file.
    bytes: Vec<u8>,
    /// Where the chunks start, and the end marker's offset.
    chunks: (usize, usize),
    entries: usize,
}

impl Image {
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Entries stored (some may have expired since).
    pub fn entries(&self) -> usize {
        self.entries
    }

    fn chunks(&self) -> Chunks<'_> {
        Chunks {
            r: Reader {
                buf: &self.bytes[..self.chunks.1],
                pos: self.chunks.0,
            },
        }
    }
}

/// The set holds its digests under other hash keys than the snapshot's: build the set with
/// [`RevokedSet::for_image`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the set's hash keys are not the snapshot's")]
pub struct OtherKeys;

fn entry_size(table: u8) -> usize {
    if table >= 4 {
        24
    } else {
        20
    }
}

fn table_of(t: u8) -> (RevokedBy, Scope) {
    let kind = RevokedBy::ALL[usize::from(t / 2) % 3];
    let scope = if t % 2 == 1 {
        Scope::AnyIssuer
    } else {
        Scope::Issuer
    };
    (kind, scope)
}

/// A writer that hashes what passes through it.
struct Summing<W> {
    inner: W,
    sum: SipHasher13,
}

impl<W: Write> Summing<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sum.write(bytes);
        self.inner.write_all(bytes)
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(0, 0);
    h.write(bytes);
    h.finish()
}

fn push_entry(buf: &mut Vec<u8>, key: Key, expires: u32, not_before: Option<u32>) {
    for w in key.words() {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.extend_from_slice(&expires.to_le_bytes());
    if let Some(nb) = not_before {
        buf.extend_from_slice(&nb.to_le_bytes());
    }
}

/// Appends chunks of `table` holding `entries` (already encoded, `size` bytes each).
fn push_chunks(out: &mut Vec<u8>, table: u8, entries: &[u8], size: usize) {
    for part in entries.chunks(CHUNK * size) {
        out.push(table);
        out.extend_from_slice(&((part.len() / size) as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
}

impl RevokedSet {
    /// Writes a snapshot of the set's entries live at `now_ms` under `header` to `out`;
    /// returns how many entries it wrote. Each shard is copied under its read lock (applies
    /// to that shard wait meanwhile, checks do not), then written without it.
    ///
    /// Consistency is the caller's: read the stream position **before** calling this (every
    /// event up to it was applied before the position was published), then everything up to
    /// `header.seq` is in the snapshot; anything applied meanwhile may be in it too, and
    /// replaying it again later is a duplicate ([`RevokedSet::apply`] is idempotent).
    pub fn write_snapshot(
        &self,
        header: &Header,
        now_ms: i64,
        out: impl Write,
    ) -> io::Result<usize> {
        let mut w = Summing {
            inner: out,
            sum: SipHasher13::new_with_keys(0, 0),
        };
        let stream = header.stream.as_bytes();
        let stream_len = u16::try_from(stream.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "stream name too long"))?;
        let secret = self.hashers.secret();
        let mut head = Vec::with_capacity(64 + stream.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&stream_len.to_le_bytes());
        head.extend_from_slice(stream);
        head.extend_from_slice(&header.stream_created_ns.to_le_bytes());
        head.extend_from_slice(&header.seq.to_le_bytes());
        head.extend_from_slice(&header.written_at_ms.to_le_bytes());
        for k in [secret.id.0, secret.id.1, secret.issuer.0, secret.issuer.1] {
            head.extend_from_slice(&k.to_le_bytes());
        }
        w.put(&head)?;
        let mut written = 0;
        let (mut entries, mut out) = (Vec::new(), Vec::new());
        for cell in self.shards.iter() {
            out.clear();
            {
                let shard = cell.tables.read();
                for scope in Scope::ALL {
                    for kind in RevokedBy::ALL {
                        entries.clear();
                        let t = kind.table(scope) as u8;
                        match kind {
                            RevokedBy::Session | RevokedBy::Token => {
                                let table = match kind {
                                    RevokedBy::Session => shard.session.get(scope),
                                    _ => shard.token.get(scope),
                                };
                                for (k, e) in table.entries().filter(|(_, e)| live(e.0, now_ms)) {
                                    push_entry(&mut entries, k, e.0, None);
                                }
                            }
                            RevokedBy::Subject => {
                                let live_entries = shard
                                    .subject
                                    .get(scope)
                                    .entries()
                                    .filter(|(_, e)| live(e.expires, now_ms));
                                for (k, e) in live_entries {
                                    push_entry(&mut entries, k, e.expires, Some(e.not_before));
                                }
                            }
                        }
                        let size = entry_size(t);
                        written += entries.len() / size;
                        push_chunks(&mut out, t, &entries, size);
                    }
                }
            }
            w.put(&out)?;
        }
        w.put(&[END])?;
        let sum = w.sum.finish();
        w.inner.write_all(&sum.to_le_bytes())?;
        w.inner.flush()?;
        Ok(written)
    }

    /// An empty set under the snapshot's hash keys, ready for [`RevokedSet::load_snapshot`].
    pub fn for_image(image: &Image, max_entries: usize) -> RevokedSet {
        RevokedSet::with_hashers(max_entries, Hashers::from_secret(image.secret))
    }

    /// Puts the snapshot's entries still live at `now_ms` into the set, as applying their
    /// events would (idempotent: entries already held are merged); returns how many. The set
    /// must be under the snapshot's hash keys ([`RevokedSet::for_image`]).
    pub fn load_snapshot(&self, image: &Image, now_ms: i64) -> Result<usize, OtherKeys> {
        if self.hashers.secret() != image.secret {
            return Err(OtherKeys);
        }
        // The entries come in table order: size each shard's tables for their whole share
        // first (Table::reserve says why), counted over every chunk (a table's entries may
        // span several).
        let mut counts = vec![[0usize; 6]; self.shards.len()];
        for (table, body) in image.chunks() {
            for e in body.chunks_exact(entry_size(table)) {
                let w0 = e
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_le_bytes);
                counts[Key::from_words([w0, 0, 0, 0]).shard()][usize::from(table) % 6] += 1;
            }
        }
        for (cell, per_table) in self.shards.iter().zip(counts) {
            let mut tables = cell.tables.write();
            for (table, n) in (0u8..).zip(per_table) {
                if n > 0 {
                    let (kind, scope) = table_of(table);
                    tables.reserve(kind, scope, n);
                }
            }
        }
        let mut loaded = 0;
        for (table, body) in image.chunks() {
            let (kind, scope) = table_of(table);
            for e in body.chunks_exact(entry_size(table)) {
                let word = |i: usize| {
                    e.get(i * 4..i * 4 + 4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u32::from_le_bytes)
                };
                let (expires, not_before) = (word(4), word(5));
                if !live(expires, now_ms) {
                    continue;
                }
                let key = Key::from_words([word(0), word(1), word(2), word(3)]);
                self.put(kind, scope, key, expires, not_before);
                loaded += 1;
            }
        }
        Ok(loaded)
    }
}

/// Bounds-checked reads over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self.pos.checked_add(n).ok_or(Invalid::Truncated)?;
        let b = self.buf.get(self.pos..end).ok_or(Invalid::Truncated)?;
        self.pos = end;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Invalid> {
        self.take(N)?.try_into().map_err(|_| Invalid::Truncated)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, Invalid> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Invalid> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, Invalid> {
        self.array().map(i64::from_le_bytes)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// The chunks of a checked image: `(table, entries' bytes)`.
struct Chunks<'a> {
    r: Reader<'a>,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        next_chunk(&mut self.r).ok().flatten()
    }
}

/// The next chunk; `None` at the end marker (or the end of the slice).
fn next_chunk<'a>(r: &mut Reader<'a>) -> Result<Option<(u8, &'a [u8])>, Invalid> {
    if r.at_end() {
        return Ok(None);
    }
    let table = r.u8()?;
    if table == END {
        return Ok(None);
    }
    if table >= TABLES {
        return Err(Invalid::Malformed("unknown table"));
    }
    let count = r.u32()? as usize;
    let len = count
        .checked_mul(entry_size(table))
        .ok_or(Invalid::Truncated)?;
    Ok(Some((table, r.take(len)?)))
}

/// Decodes and checks a snapshot file's bytes: magic, version, checksum, every length.
pub fn decode(bytes: Vec<u8>) -> Result<Image, Invalid> {
    let mut r = Reader {
        buf: &bytes,
        pos: 0,
    };
    let magic: [u8; 8] = r.array().map_err(|_| {
        if MAGIC.starts_with(&bytes) {
            Invalid::Truncated
        } else {
            Invalid::Magic
        }
    })?;
    if &magic != MAGIC {
        return Err(Invalid::Magic);
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(Invalid::Version(version));
    }
    let body_len = bytes
        .len()
        .checked_sub(CHECKSUM)
        .filter(|&n| n > HEADER_FIXED)
        .ok_or(Invalid::Truncated)?;
    let (body, sum) = bytes.split_at(body_len);
    let stored = sum
        .try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| Invalid::Truncated)?;
    if checksum(body) != stored {
        return Err(Invalid::Checksum);
    }
    let mut r = Reader {
        buf: body,
        pos: r.pos,
    };
    if r.u32()? != 0 {
        return Err(Invalid::Malformed("reserved field set"));
    }
    let stream_len = usize::from(r.u16()?);
    let stream = std::str::from_utf8(r.take(stream_len)?)
        .map_err(|_| Invalid::Malformed("stream name is not UTF-8"))?
        .to_string();
    let header = Header {
        stream,
        stream_created_ns: r.i64()?,
        seq: r.u64()?,
        written_at_ms: r.i64()?,
    };
    let secret = HashSecret {
        id: (r.u64()?, r.u64()?),
        issuer: (r.u64()?, r.u64()?),
    };
    let start = r.pos;
    let mut entries = 0usize;
    loop {
        let before = r.pos;
        match next_chunk(&mut r)? {
            Some((table, b)) => entries += b.len() / entry_size(table),
            None => {
                // the end marker, and nothing after it
                if r.pos == before || !r.at_end() {
                    return Err(if r.pos == before {
                        Invalid::Truncated
                    } else {
                        Invalid::Malformed("data after the end marker")
                    });
                }
                let end = before;
                return Ok(Image {
                    header,
                    secret,
                    chunks: (start, end),
                    entries,
                    bytes,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::set::tests::ev;
    use crate::revocation::Kind;

    const T: i64 = 1_800_000_000_000;

    fn header(seq: u64) -> Header {
        Header {
            stream: "VETO_REVOCATIONS_us".into(),
            stream_created_ns: 1_700_000_000_123_456_789,
            seq,
            written_at_ms: T,
        }
    }

    /// A set with every kind and scope, a subject not-before, and an expired entry.
    fn sample() -> RevokedSet {
        let s = RevokedSet::new();
        for i in 0..300 {
            s.apply(
                &ev(Kind::Session, &format!("s{i}"), "iss", T, T + 60_000),
                T,
            );
        }
        s.apply(&ev(Kind::Session, "any", "", T, T + 60_000), T);
        s.apply(&ev(Kind::Token, "j1", "iss", T, T + 90_000), T);
        s.apply(&ev(Kind::Token, "j2", "", T, T + 90_000), T);
        s.apply(&ev(Kind::Subject, "u1", "iss", T, T + 120_000), T);
        s.apply(&ev(Kind::Subject, "u2", "", T - 5_000, T + 120_000), T);
        s.apply(&ev(Kind::Session, "short", "iss", T, T + 1_000), T);
        s
    }

    fn encode(s: &RevokedSet, seq: u64, now: i64) -> Vec<u8> {
        let mut out = Vec::new();
        s.write_snapshot(&header(seq), now, &mut out).unwrap();
        out
    }

    /// A snapshot's entries come in table order; loading them costs no more slot visits
    /// than applying the same keys in random order did, and the very same entries put in
    /// that order without the room made first cost many times more — the check can fail.
    #[test]
    fn a_snapshot_loads_without_walking_clusters() {
        use super::super::table::PROBES;
        let probes = |f: &dyn Fn()| {
            PROBES.with(|p| p.set(0));
            f();
            PROBES.with(|p| p.get())
        };
        let n = 200_000;
        let s = RevokedSet::new();
        let replayed = probes(&|| {
            for i in 0..n {
                s.apply(
                    &ev(Kind::Session, &format!("s{i}"), "iss", T, T + 60_000),
                    T,
                );
            }
        });
        let image = decode(encode(&s, 1, T)).unwrap();
        let t = RevokedSet::for_image(&image, 1000);
        let loaded = probes(&|| assert_eq!(t.load_snapshot(&image, T).unwrap(), n));
        // the old load: the same entries, in the same order, into tables that grow as they go
        let naive = RevokedSet::for_image(&image, 1000);
        let sorted = probes(&|| {
            for (table, body) in image.chunks() {
                let (kind, scope) = table_of(table);
                for e in body.chunks_exact(entry_size(table)) {
                    let w = |i: usize| {
                        e.get(i * 4..i * 4 + 4)
                            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
                    };
                    naive.put(
                        kind,
                        scope,
                        Key::from_words([w(0), w(1), w(2), w(3)]),
                        w(4),
                        w(5),
                    );
                }
            }
        });
        println!("slots visited for {n}: replayed {replayed}, loaded {loaded}, loaded without room {sorted}");
        assert!(loaded <= replayed, "loaded {loaded} vs replayed {replayed}");
        assert!(sorted > 10 * loaded, "the naive load {sorted} vs {loaded}");
    }

    #[test]
    fn round_trip_keeps_every_answer_and_drops_what_expired() {
        let s = sample();
        let bytes = encode(&s, 42, T + 2_000);
        let image = decode(bytes).unwrap();
        assert_eq!(image.header(), &header(42));
        // "short" had expired when written
        assert_eq!(image.entries(), s.len() - 1);
        let t = RevokedSet::for_image(&image, 1000);
        assert_eq!(t.load_snapshot(&image, T + 2_000).unwrap(), s.len() - 1);
        let iat = T / 1000 - 1;
        let now = T + 3_000;
        for i in 0..300 {
            let sid = format!("s{i}");
            assert_eq!(
                t.check("iss", &sid, None, None, iat, now),
                Some(RevokedBy::Session)
            );
        }
        assert_eq!(
            t.check("other", "any", None, None, iat, now),
            Some(RevokedBy::Session)
        );
        assert_eq!(
            t.check("iss", "x", Some("j1"), None, iat, now),
            Some(RevokedBy::Token)
        );
        assert_eq!(t.check("other", "x", Some("j1"), None, iat, now), None);
        assert_eq!(
            t.check("other", "x", Some("j2"), None, iat, now),
            Some(RevokedBy::Token)
        );
        // subject not-before survives: tokens issued before it only
        assert_eq!(
            t.check("iss", "x", None, Some("u1"), iat, now),
            Some(RevokedBy::Subject)
        );
        assert_eq!(t.check("iss", "x", None, Some("u1"), T / 1000, now), None);
        assert_eq!(
            t.check("o", "x", None, Some("u2"), (T - 6_000) / 1000, now),
            Some(RevokedBy::Subject)
        );
        assert_eq!(t.check("o", "x", None, Some("u2"), T / 1000 - 4, now), None);
        assert_eq!(t.check("iss", "not-revoked", None, None, iat, now), None);
        // expiries survive: nothing after the latest one
        assert_eq!(t.check("iss", "s1", None, None, iat, T + 60_000), None);
        let st = t.stats();
        assert_eq!((st.sessions, st.tokens, st.subjects), (301, 2, 2));
        // loading again is harmless; the same events applied on top are duplicates
        assert_eq!(t.load_snapshot(&image, T + 2_000).unwrap(), s.len() - 1);
        assert_eq!(t.len(), s.len() - 1);
        assert_eq!(
            t.apply(&ev(Kind::Session, "s7", "iss", T, T + 60_000), T + 2_000),
            super::super::Applied::Duplicate
        );
    }

    #[test]
    fn loading_into_a_set_under_other_keys_is_refused() {
        let image = decode(encode(&sample(), 1, T)).unwrap();
        let other = RevokedSet::new();
        assert!(other.load_snapshot(&image, T).is_err());
        assert!(other.is_empty());
    }

    #[test]
    fn an_empty_set_round_trips() {
        let image = decode(encode(&RevokedSet::new(), 0, T)).unwrap();
        assert_eq!(image.entries(), 0);
        assert_eq!(image.header().seq, 0);
    }

    #[test]
    fn large_tables_are_split_into_chunks() {
        let s = RevokedSet::new();
        for i in 0..(CHUNK * 64 * 3) {
            s.apply(&ev(Kind::Token, &format!("j{i}"), "iss", T, T + 60_000), T);
        }
        let image = decode(encode(&s, 9, T)).unwrap();
        assert_eq!(image.entries(), s.len());
        assert!(image.chunks().count() > 64);
        let t = RevokedSet::for_image(&image, 0);
        assert_eq!(t.load_snapshot(&image, T).unwrap(), s.len());
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&sample(), 7, T);
        for n in 0..bytes.len() {
            let r = decode(bytes[..n].to_vec());
            assert!(
                matches!(r, Err(Invalid::Truncated | Invalid::Checksum)),
                "prefix of {n} bytes: {:?}",
                r.err()
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            let r = decode(b);
            assert!(r.is_err(), "byte {i} flipped, still decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(longer).is_err());
    }

    /// Rewrites the checksum so a structural defect is what the decoder must catch.
    fn resum(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - CHECKSUM;
        let sum = checksum(&b[..n]);
        b[n..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn lengths_are_checked_even_under_a_good_checksum() {
        let good = encode(&RevokedSet::new(), 3, T);
        let chunks_at = HEADER_FIXED + 2 + "VETO_REVOCATIONS_us".len() + 8 + 8 + 8 + 32;
        assert_eq!(good[chunks_at], END);
        // a chunk claiming 4G entries in a tiny file: refused, nothing allocated for it
        let mut b = good[..chunks_at].to_vec();
        b.push(0);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.push(END);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(decode(resum(b)).err(), Some(Invalid::Truncated));
        // an unknown table
        let mut b = good[..chunks_at].to_vec();
        b.push(9);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.push(END);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(resum(b)).err(),
            Some(Invalid::Malformed("unknown table"))
        );
        // no end marker
        let mut b = good[..chunks_at].to_vec();
        b.extend_from_slice(&[0; 8]);
        assert_eq!(decode(resum(b)).err(), Some(Invalid::Truncated));
        // bytes after the end marker
        let mut b = good[..=chunks_at].to_vec();
        b.push(0);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(resum(b)).err(),
            Some(Invalid::Malformed("data after the end marker"))
        );
        // a stream name longer than the file
        let mut b = good.clone();
        b[HEADER_FIXED..HEADER_FIXED + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode(resum(b)).err(), Some(Invalid::Truncated));
        // a name that is not UTF-8
        let mut b = good.clone();
        b[HEADER_FIXED + 2] = 0xff;
        assert_eq!(
            decode(resum(b)).err(),
            Some(Invalid::Malformed("stream name is not UTF-8"))
        );
    }

    #[test]
    fn foreign_magic_and_versions_are_named() {
        let good = encode(&RevokedSet::new(), 3, T);
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(decode(b).err(), Some(Invalid::Magic));
        assert_eq!(decode(b"hello world".to_vec()).err(), Some(Invalid::Magic));
        assert_eq!(decode(b"VETO".to_vec()).err(), Some(Invalid::Truncated));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode(b).err(), Some(Invalid::Version(2)));
        let mut b = good.clone();
        b[12] = 1;
        assert_eq!(
            decode(resum(b)).err(),
            Some(Invalid::Malformed("reserved field set"))
        );
    }
}
