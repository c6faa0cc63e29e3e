use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const KEYS: [u64; 4] = [1, 2, 3, 4];

fn digest(i: u64) -> Digest {
    // spread like a keyed hash would (the tables index by the low bits of word 0)
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    [x, x.rotate_left(17) | 1]
}

fn origins() -> Vec<String> {
    vec!["us".into(), "eu".into()]
}

/// A writer whose file is at the path (published ready).
fn writer(path: &Path, keys: [u64; 4]) -> Writer {
    let mut w = Writer::create(path, keys, &origins()).unwrap();
    assert!(
        Mapping::open(path).is_err() || w.generation() > 1,
        "not visible before ready"
    );
    w.publish(&Status {
        ready: true,
        origins_fresh_ms: vec![0, 0],
        ..Status::default()
    })
    .unwrap();
    assert!(w.published());
    w
}

fn e(expires: u32, not_before: u32) -> Entry {
    Entry {
        expires,
        not_before,
    }
}

#[test]
fn a_reader_finds_what_the_writer_stored_and_merges_are_max() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    let r = Mapping::open(&path).unwrap();
    assert_eq!(r.keys(), KEYS);
    assert_eq!(r.origins(), ["us", "eu"]);
    assert_eq!(r.count(0), 0);
    assert!(w.upsert(0, digest(1), e(100, 0)).unwrap());
    assert_eq!(r.lookup(0, digest(1)), Some(e(100, 0)));
    assert_eq!(r.lookup(1, digest(1)), None, "another table");
    assert_eq!(r.lookup(0, digest(2)), None);
    // only the low 32 bits of the second word are kept
    let mut near = digest(1);
    near[1] ^= 1;
    assert_eq!(r.lookup(0, near), None);
    assert!(
        !w.upsert(0, digest(1), e(90, 0)).unwrap(),
        "weaker: unchanged"
    );
    assert!(w.upsert(0, digest(1), e(200, 0)).unwrap());
    assert_eq!(r.lookup(0, digest(1)), Some(e(200, 0)));
    // subjects keep a not-before, merged by max as well
    assert!(w.upsert(4, digest(7), e(100, 50)).unwrap());
    assert!(w.upsert(4, digest(7), e(90, 60)).unwrap());
    assert_eq!(r.lookup(4, digest(7)), Some(e(100, 60)));
    assert!(!w.upsert(0, digest(3), e(0, 0)).unwrap(), "never live");
    assert_eq!(r.count(0), 1);
    assert_eq!(r.count(4), 1);
    assert_eq!(r.changes(), 4);
    assert!(w.upsert(9, digest(1), e(1, 0)).is_err());
}

#[test]
fn status_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    let r = Mapping::open(&path).unwrap();
    assert_eq!(r.heartbeat_ms(), 0);
    w.publish(&Status {
        heartbeat_ms: 1234,
        feed_position: 77,
        ready: true,
        origins_fresh_ms: vec![1000, 999],
    })
    .unwrap();
    assert_eq!(r.heartbeat_ms(), 1234);
    assert_eq!(r.feed_position(), 77);
    assert!(r.ready());
    assert_eq!((r.origin_fresh_ms(0), r.origin_fresh_ms(1)), (1000, 999));
    assert_eq!(r.origin_fresh_ms(2), 0, "no such origin");
}

#[test]
fn growth_is_a_new_generation_readers_notice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    w.publish(&Status {
        heartbeat_ms: 5,
        feed_position: 9,
        ready: true,
        origins_fresh_ms: vec![1, 2],
    })
    .unwrap();
    let first = Mapping::open(&path).unwrap();
    let g = first.generation();
    for i in 0..5000 {
        w.upsert(2, digest(i), e(100 + i as u32, 0)).unwrap();
    }
    assert!(w.generation() > g);
    assert!(first.superseded(), "the old file is flagged");
    assert!(w.slots(2) >= slots_for(5000));
    let now = Mapping::open(&path).unwrap();
    assert!(!now.superseded());
    assert_eq!(now.generation(), w.generation());
    assert_eq!(now.count(2), 5000);
    for i in 0..5000 {
        assert_eq!(now.lookup(2, digest(i)), Some(e(100 + i as u32, 0)), "{i}");
    }
    // the status came along
    assert_eq!((now.heartbeat_ms(), now.feed_position()), (5, 9));
    assert!(now.ready());
    assert_eq!(now.origin_fresh_ms(1), 2);
    // no temporary file is left behind
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn prune_drops_the_dead_once_a_quarter_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    for i in 0..100 {
        // 10 dead at t = 50 s
        let exp = if i < 10 { 40 } else { 100 };
        w.upsert(0, digest(i), e(exp, 0)).unwrap();
    }
    assert_eq!(w.prune(50_000).unwrap(), 0, "a tenth dead: kept");
    for i in 100..140 {
        w.upsert(5, digest(i), e(45, 30)).unwrap();
    }
    let g = w.generation();
    assert_eq!(w.prune(50_000).unwrap(), 50);
    assert!(w.generation() > g);
    let r = Mapping::open(&path).unwrap();
    assert_eq!(r.count(0) + r.count(5), 90);
    assert_eq!(r.lookup(0, digest(3)), None);
    assert_eq!(r.lookup(0, digest(30)), Some(e(100, 0)));
    assert_eq!(r.lookup(5, digest(120)), None);
    // an expiry is live strictly before it
    assert_eq!(w.prune(100_000).unwrap(), 90);
    assert!(w.is_empty());
}

#[test]
fn a_new_writer_supersedes_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    w.upsert(0, digest(1), e(100, 0)).unwrap();
    let old = Mapping::open(&path).unwrap();
    drop(w);
    let mut w2 = Writer::create(&path, [9, 9, 9, 9], &origins()).unwrap();
    assert!(!old.superseded(), "not before the new one is ready");
    assert_eq!(Mapping::open(&path).unwrap().generation(), old.generation());
    w2.publish(&Status {
        ready: true,
        ..Status::default()
    })
    .unwrap();
    assert!(old.superseded());
    assert_eq!(w2.generation(), old.generation() + 1);
    let new = Mapping::open(&path).unwrap();
    assert_eq!(new.keys(), [9, 9, 9, 9]);
    assert_eq!(
        new.lookup(0, digest(1)),
        None,
        "starts empty (the feed replays)"
    );
    assert!(new.ready());
}

#[test]
fn growth_before_ready_stays_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = Writer::create(&path, KEYS, &origins()).unwrap();
    for i in 0..3000 {
        w.upsert(0, digest(i), e(100, 0)).unwrap();
    }
    assert!(Mapping::open(&path).is_err(), "nothing at the path yet");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "one temporary file"
    );
    w.publish(&Status {
        ready: true,
        ..Status::default()
    })
    .unwrap();
    let r = Mapping::open(&path).unwrap();
    assert_eq!(r.count(0), 3000);
    assert!(r.ready());
    drop(w);
    assert!(
        Mapping::open(&path).is_ok(),
        "a published file outlives its writer"
    );
    // an unpublished writer leaves nothing behind
    let dir2 = tempfile::tempdir().unwrap();
    drop(Writer::create(&dir2.path().join("t"), KEYS, &origins()).unwrap());
    assert_eq!(std::fs::read_dir(dir2.path()).unwrap().count(), 0);
}

#[test]
fn bad_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    assert!(Mapping::open(&path).is_err(), "missing");
    std::fs::write(&path, b"short").unwrap();
    assert!(Mapping::open(&path).is_err(), "short");
    std::fs::write(&path, vec![0u8; HEADER_BYTES * 2]).unwrap();
    assert!(Mapping::open(&path).is_err(), "no magic");
    writer(&path, KEYS);
    let good = std::fs::read(&path).unwrap();
    assert!(Mapping::open(&path).is_ok());
    // truncated
    std::fs::write(&path, &good[..good.len() - 64]).unwrap();
    assert!(Mapping::open(&path).is_err());
    // a table pointing outside the file
    let mut bent = good.clone();
    bent[OFF_TABLES + 8..OFF_TABLES + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&path, &bent).unwrap();
    assert!(Mapping::open(&path).is_err());
    // a newer layout
    let mut newer = good;
    newer[OFF_VERSION..OFF_VERSION + 8].copy_from_slice(&(VERSION + 1).to_le_bytes());
    std::fs::write(&path, &newer).unwrap();
    assert!(Mapping::open(&path).is_err());
    assert!(Writer::create(&path, KEYS, &["x".repeat(65)]).is_err());
}

#[test]
fn slots_keep_load_at_most_seven_tenths() {
    assert_eq!(slots_for(0), MIN_SLOTS);
    assert_eq!(slots_for(716), 1024);
    assert_eq!(slots_for(717), 2048);
    for n in [1u64, 1000, 10_000_000] {
        let s = slots_for(n);
        assert!(s.is_power_of_two() && n * 10 <= s * 7, "{n}");
    }
}

/// A reader polling while the writer inserts (and grows, switching generations) sees every
/// entry the writer has announced done, in whichever generation it maps.
#[test]
fn concurrent_reader_sees_every_announced_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done, stop) = (path.clone(), done.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut m = Mapping::open(&path).unwrap();
            let mut checks = 0u64;
            while !stop.load(Ordering::Acquire) {
                // announced first, then the generation checked: an entry announced after a
                // switch is looked up in the new file
                let n = done.load(Ordering::Acquire);
                if m.superseded() {
                    m = Mapping::open(&path).unwrap();
                }
                if n > 0 {
                    let i = n - 1;
                    assert_eq!(m.lookup(1, digest(i)), Some(e(1000, 0)), "entry {i}");
                    checks += 1;
                }
            }
            checks
        })
    };
    for i in 0..20_000 {
        w.upsert(1, digest(i), e(1000, 0)).unwrap();
        done.store(i + 1, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    let checks = reader.join().unwrap();
    assert!(checks > 0);
    assert!(w.generation() > 1, "it grew meanwhile");
}

#[test]
fn the_keys_generation_is_carried_across_rebuilds_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let mut w = writer(&path, KEYS);
    let first = Mapping::open(&path).unwrap();
    assert_eq!(first.keys_generation(), 0, "none published yet");
    assert_eq!(w.bump_keys_generation(), 1);
    assert_eq!(w.bump_keys_generation(), 2);
    assert_eq!(first.keys_generation(), 2, "seen in place");
    // growth: a new generation of the file starts with the current value
    for i in 0..3000 {
        w.upsert(0, digest(i), e(100, 0)).unwrap();
    }
    assert!(first.superseded());
    let grown = Mapping::open(&path).unwrap();
    assert!(grown.generation() > first.generation());
    assert_eq!(grown.keys_generation(), 2);
    assert_eq!(w.bump_keys_generation(), 3);
    assert_eq!(grown.keys_generation(), 3);
    // pruning too
    assert!(w.prune(200_000).unwrap() > 0);
    let pruned = Mapping::open(&path).unwrap();
    assert!(pruned.generation() > grown.generation());
    assert_eq!(pruned.keys_generation(), 3);
    // a restarted writer continues from the previous one's value, before and after it is
    // published, so a reader never sees the counter go back
    drop(w);
    let mut w2 = Writer::create(&path, KEYS, &origins()).unwrap();
    assert_eq!(w2.keys_generation(), 3);
    w2.publish(&Status {
        ready: true,
        ..Status::default()
    })
    .unwrap();
    assert_eq!(Mapping::open(&path).unwrap().keys_generation(), 3);
    assert_eq!(w2.bump_keys_generation(), 4);
    assert_eq!(Mapping::open(&path).unwrap().keys_generation(), 4);
}
