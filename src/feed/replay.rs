//! When a read of a stream counts as "through": the durable follower's readiness, and the
//! catch-up reader's "nothing left to read".
//!
//! A read is through once every message the stream held up to its last sequence **when the
//! read started** has been applied. That is decided by stream sequence, which the server
//! cannot get wrong, and never by the server's `pending` counter alone: nats-server 2.9 keeps
//! reporting a small non-zero pending at the tail of a stream whose older heartbeats were
//! deleted (one message per subject) while the consumer was still behind them, so a replay
//! waiting for `pending == 0` can wait forever while heartbeats keep arriving.
//!
//! The read is through when any of these holds:
//! - the stream held nothing past our position when we looked (empty, or its last sequence
//!   is at or below what we applied): at the start, and when a quiet read re-checks;
//! - a message at or past the target was applied (`>=`: the message at exactly the target may
//!   since have been deleted by a per-subject limit, replaced by a newer one);
//! - a look-up found no message at all after our position (the target was deleted — by
//!   `max_age` or by hand — and nothing newer came): the bounded path when a read goes quiet;
//! - the server reported nothing pending (an extra, sufficient signal; never a necessary one).

/// Why a read counts as through (logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// The stream held no message past our position when we looked.
    NothingAfter,
    /// A message at or past the target was applied.
    ReachedTarget,
    /// The server reported nothing pending.
    NothingPending,
}

/// One read of a stream against its target: the stream's last sequence when it started.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    target: Option<u64>,
    through: bool,
}

impl Progress {
    /// The stream's last sequence when the read started, once known.
    pub fn target(&self) -> Option<u64> {
        self.target
    }

    pub fn is_through(&self) -> bool {
        self.through
    }

    fn finish(&mut self, why: Through) -> Option<Through> {
        if self.through {
            return None;
        }
        self.through = true;
        Some(why)
    }

    /// The stream's state as just fetched (`messages`, `last_sequence`); `position` is the
    /// highest stream sequence applied so far. The first call fixes the target. Returns
    /// `Some` when this makes the read through (once).
    pub fn on_stream_state(
        &mut self,
        position: u64,
        messages: u64,
        last_sequence: u64,
    ) -> Option<Through> {
        if self.through {
            return None;
        }
        let target = *self.target.get_or_insert(last_sequence);
        if messages == 0 || position >= last_sequence || position >= target {
            return self.finish(Through::NothingAfter);
        }
        None
    }

    /// A message at stream sequence `seq` was applied; `pending` is what the server said was
    /// still pending after it, if it said. Returns `Some` when this makes the read through.
    pub fn on_applied(&mut self, seq: u64, pending: Option<u64>) -> Option<Through> {
        if self.through {
            return None;
        }
        if self.target.is_some_and(|t| seq >= t) {
            return self.finish(Through::ReachedTarget);
        }
        if pending == Some(0) {
            return self.finish(Through::NothingPending);
        }
        None
    }

    /// A look-up found no message after our position. Returns `Some` when this makes the
    /// read through.
    pub fn on_nothing_after(&mut self) -> Option<Through> {
        match self.target {
            Some(_) => self.finish(Through::NothingAfter),
            // never looked at the stream: nothing is known about it
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_stream_or_nothing_past_us_is_through_at_once() {
        let mut p = Progress::default();
        assert_eq!(p.on_stream_state(0, 0, 0), Some(Through::NothingAfter));
        assert!(p.is_through());
        // an emptied stream (everything expired) keeps its last sequence
        let mut p = Progress::default();
        assert_eq!(p.on_stream_state(0, 0, 500), Some(Through::NothingAfter));
        // a restart of the consumer at our position, already past the stream's end
        let mut p = Progress::default();
        assert_eq!(p.on_stream_state(900, 40, 900), Some(Through::NothingAfter));
        // reported once
        assert_eq!(p.on_stream_state(900, 40, 900), None);
        assert_eq!(p.on_applied(901, Some(0)), None);
    }

    #[test]
    fn a_pending_counter_stuck_above_zero_does_not_hold_readiness() {
        // nats-server 2.9: pending 6,5,4,3,3,3,... on every later heartbeat
        let mut p = Progress::default();
        assert_eq!(p.on_stream_state(0, 50_003, 50_100), None);
        assert_eq!(p.target(), Some(50_100));
        assert_eq!(p.on_applied(1, Some(50_099)), None);
        assert_eq!(p.on_applied(50_099, Some(6)), None);
        assert_eq!(p.on_applied(50_100, Some(3)), Some(Through::ReachedTarget));
        assert!(p.is_through());
    }

    #[test]
    fn the_target_itself_may_be_gone_anything_past_it_will_do() {
        // the heartbeat at the target was replaced by a newer one
        let mut p = Progress::default();
        p.on_stream_state(0, 1_000, 1_000);
        assert_eq!(p.on_applied(998, Some(4)), None);
        assert_eq!(p.on_applied(1_003, Some(3)), Some(Through::ReachedTarget));
    }

    #[test]
    fn the_target_is_the_stream_end_at_start_not_at_a_later_recreate() {
        let mut p = Progress::default();
        p.on_stream_state(0, 100, 100);
        // the consumer is recreated mid-replay; the stream has grown meanwhile
        assert_eq!(p.on_stream_state(60, 150, 150), None);
        assert_eq!(p.target(), Some(100));
        assert_eq!(p.on_applied(100, Some(50)), Some(Through::ReachedTarget));
    }

    #[test]
    fn pending_zero_is_sufficient() {
        let mut p = Progress::default();
        p.on_stream_state(0, 10, 10);
        assert_eq!(p.on_applied(7, Some(0)), Some(Through::NothingPending));
        // no counter at all is no signal
        let mut p = Progress::default();
        p.on_stream_state(0, 10, 10);
        assert_eq!(p.on_applied(7, None), None);
    }

    #[test]
    fn a_deleted_target_with_nothing_newer_ends_at_the_quiet_check() {
        // the target expired (max_age) or was deleted, nothing newer came, pending stuck at 2
        let mut p = Progress::default();
        p.on_stream_state(0, 10, 10);
        assert_eq!(p.on_applied(9, Some(2)), None);
        // quiet: the stream still names 10 as its last sequence (a deleted tail keeps it)...
        assert_eq!(p.on_stream_state(9, 9, 10), None);
        // ...but a look-up finds nothing after 9
        assert_eq!(p.on_nothing_after(), Some(Through::NothingAfter));
        // or the stream says so itself
        let mut p = Progress::default();
        p.on_stream_state(0, 10, 10);
        p.on_applied(9, Some(2));
        assert_eq!(p.on_stream_state(9, 0, 10), Some(Through::NothingAfter));
    }

    #[test]
    fn nothing_known_before_the_stream_was_looked_at() {
        let mut p = Progress::default();
        assert_eq!(p.on_applied(5, Some(3)), None);
        assert_eq!(p.on_nothing_after(), None);
        assert!(!p.is_through());
    }
}
