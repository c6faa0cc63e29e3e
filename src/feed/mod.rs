//! The revocation feed: the sidecar's subscriber side of the bus. Messages come in through
//! three paths and one [`Applier`] puts them into the revoked set; nothing here publishes
//! (that is [`crate::bus::publish`]).
//!
//! - [`Feed::run`] (`follow`): the durable follower of this region's stream. It replays the
//!   stream from the start, marks the sidecar ready once it has applied everything up to the
//!   stream's last sequence at start ([`replay`]), then follows live; with `nats.ensure_stream`
//!   it provisions the stream first ([`crate::bus::stream`]). On every typed [`Restart`] it
//!   opens a new consumer at `last_sequence + 1`, so nothing is lost or applied twice.
//! - [`run_fast_path`] (`fast`): every region's events over core NATS, before sourcing
//!   brings them durably.
//! - [`CatchUp`] (`catchup`): a direct read of another region's stream while its source lags.
//! - [`Snapshots`] (`snapshot`): the revoked set's local snapshot, written on a schedule and
//!   at shutdown, loaded at start so the follower replays only the stream's tail.
//! - [`Applier`] (`apply`): decodes, applies idempotently, counts by [`Path`], and announces
//!   every newly applied revocation on a broadcast of [`Applied`] ([`Applier::subscribe`]).

mod apply;
mod catchup;
mod fast;
mod follow;
mod metrics;
pub mod replay;
pub mod snapshot;
mod upkeep;

pub use apply::{Applied, Applier, Outcome, Path, APPLIED_CAPACITY};
pub use catchup::CatchUp;
pub use fast::run_fast_path;
pub use follow::{Feed, FeedError, Restart};
pub use metrics::FeedMetrics;
pub use replay::{Progress, Through};
pub use snapshot::{Fallback, Snapshots};
pub use upkeep::{Upkeep, UpkeepMetrics};
