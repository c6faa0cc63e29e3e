//! The per-region revocation stream of DESIGN §4: its configuration ([`stream_config`]), its
//! provisioning (`veto nats provision`, and sidecars with `nats.ensure_stream`), and look-ups
//! by sequence.
//!
//! In domain `R` the stream `<base>_R` (base `VETO_REVOCATIONS`: [`stream_name`]) captures
//! `veto.revocations.R.>` with the limits of [`stream_config`] and
//! **sources** every other region `X`'s stream `<base>_X` from domain `X`, filtered to
//! `veto.revocations.X.>`: each region only ever forwards its own origin subjects, so nothing
//! loops however many regions there are.
//!
//! Why a name per region: nats-server 2.9 validates a stream update by looking each source's
//! stream name up *in the local account*, ignoring `external`. With one name everywhere the
//! lookup finds the stream being updated, whose subjects do not overlap the source's filter,
//! and the update is refused ("source ... filter subject ... does not overlap with any origin
//! stream subject"), so no region could ever be added. Creation passes only because the stream
//! does not exist yet.
//!
//! Idempotent: an up-to-date stream is left alone ([`Outcome::Unchanged`]); a stream missing a
//! region's source (a region was added) is updated with `update_stream`. Sources of regions no
//! longer listed are kept unless pruning is asked for: dropping one silently would make this
//! region accept tokens revoked there.
//!
//! A cross-domain source is written with its `external` API prefix (`$JS.X.API`), which is what
//! `Source.domain` means: async-nats translates `domain` into `external` in `create_stream` but
//! not in `update_stream`, and nats-server 2.9 ignores a bare `domain` key, so a source written
//! with `domain` alone would silently point at this domain instead.

use super::names::{api_prefix_domain, domain_api_prefix, origin_subjects, stream_name};
use async_nats::jetstream::{
    self,
    context::{CreateStreamError, CreateStreamErrorKind, GetStreamErrorKind},
    stream::{self, Config, External, Source},
};
use std::time::Duration;

/// The stream a region needs: its origin subjects, entries kept for the longest revocation
/// lifetime, dedup on `Nats-Msg-Id`, and one message per subject — events have unique
/// subjects, heartbeats share one, so only the newest heartbeat is kept.
pub fn stream_config(name: &str, region: &str, retention: Duration) -> Config {
    Config {
        name: name.to_string(),
        subjects: vec![origin_subjects(region)],
        max_age: retention,
        duplicate_window: Duration::from_secs(120).min(retention),
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Whether `stream` holds no message matching `subject` after stream sequence `position` — a
/// look-up by sequence (`STREAM.MSG.GET` with `next_by_subj`), not a counter. `Err` when the
/// server did not say.
pub async fn nothing_after(
    stream: &stream::Stream,
    subject: &str,
    position: u64,
) -> Result<bool, stream::RawMessageError> {
    match stream
        .get_first_raw_message_by_subject(subject, position.saturating_add(1))
        .await
    {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("region {0:?} is not in the region list")]
    RegionNotListed(String),
    #[error("stream base name {0:?}: 1-200 characters of [A-Za-z0-9_-]")]
    BadStreamName(String),
    /// The domain's JetStream API did not answer (no responders, timeout, connection).
    #[error("stream {stream} in domain {domain}: {message}")]
    Unreachable {
        stream: String,
        domain: String,
        message: String,
    },
    /// JetStream answered with an error (e.g. an invalid configuration).
    #[error("stream {stream} in domain {domain}: refused: {message}")]
    Refused {
        stream: String,
        domain: String,
        message: String,
    },
}

/// What [`provision`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// Updated; one human-readable line per change.
    Updated(Vec<String>),
    Unchanged,
}

/// What the stream of one region should look like.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base of the stream names ([`stream_name`]).
    pub base: String,
    /// This region's stream.
    pub stream: String,
    /// The region (and JetStream domain) provisioned.
    pub region: String,
    /// Every region of the topology, including [`Plan::region`].
    pub regions: Vec<String>,
    /// Retention (`max_age`): the longest revocation lifetime.
    pub retention: Duration,
    /// Remove sources of domains that are not in `regions`.
    pub prune: bool,
}

/// The source of region `origin`'s stream, read across domains, filtered to its origin
/// subjects.
pub fn region_source(base: &str, origin: &str) -> Source {
    Source {
        name: stream_name(base, origin),
        filter_subject: Some(origin_subjects(origin)),
        external: Some(External {
            api_prefix: domain_api_prefix(origin),
            delivery_prefix: None,
        }),
        ..Default::default()
    }
}

/// The domain a source reads from, if it is a cross-domain source.
fn source_domain(s: &Source) -> Option<&str> {
    if let Some(d) = &s.domain {
        return Some(d);
    }
    api_prefix_domain(&s.external.as_ref()?.api_prefix)
}

/// Equal for our purposes: same stream, same domain, same filter, no start position. (The
/// server echoes `deliver: ""`, which is no delivery prefix.)
fn same_source(a: &Source, b: &Source) -> bool {
    let deliver = |s: &Source| {
        s.external
            .as_ref()
            .and_then(|e| e.delivery_prefix.clone())
            .filter(|p| !p.is_empty())
    };
    a.name == b.name
        && source_domain(a) == source_domain(b)
        && a.filter_subject == b.filter_subject
        && a.start_sequence == b.start_sequence
        && a.start_time == b.start_time
        && deliver(a) == deliver(b)
}

impl Plan {
    pub fn new(
        base: &str,
        region: &str,
        regions: &[String],
        retention: Duration,
    ) -> Result<Plan, ProvisionError> {
        if !regions.iter().any(|r| r == region) {
            return Err(ProvisionError::RegionNotListed(region.to_string()));
        }
        if !crate::revocation::valid_token_name(base, 200) {
            return Err(ProvisionError::BadStreamName(base.to_string()));
        }
        Ok(Plan {
            base: base.to_string(),
            stream: stream_name(base, region),
            region: region.to_string(),
            regions: regions.to_vec(),
            retention,
            prune: false,
        })
    }

    /// One source per other region, in list order.
    pub fn sources(&self) -> Vec<Source> {
        self.regions
            .iter()
            .filter(|r| **r != self.region)
            .map(|r| region_source(&self.base, r))
            .collect()
    }

    /// The configuration of a new stream.
    pub fn create_config(&self) -> Config {
        let sources = self.sources();
        Config {
            sources: (!sources.is_empty()).then_some(sources),
            ..stream_config(&self.stream, &self.region, self.retention)
        }
    }

    /// `current` brought in line with the plan, and what changed. Settings the plan does not
    /// own (replicas, placement, other subjects, description, ...) are kept.
    pub fn reconcile(&self, current: &Config) -> (Config, Vec<String>) {
        let want = stream_config(&self.stream, &self.region, self.retention);
        let mut cfg = current.clone();
        let mut changes = Vec::new();
        for s in &want.subjects {
            if !cfg.subjects.contains(s) {
                cfg.subjects.push(s.clone());
                changes.push(format!("captures {s}"));
            }
        }
        if cfg.max_age != want.max_age {
            changes.push(format!(
                "max_age {} -> {}",
                humantime::format_duration(cfg.max_age),
                humantime::format_duration(want.max_age)
            ));
            cfg.max_age = want.max_age;
        }
        if cfg.duplicate_window != want.duplicate_window {
            changes.push(format!(
                "duplicate_window {} -> {}",
                humantime::format_duration(cfg.duplicate_window),
                humantime::format_duration(want.duplicate_window)
            ));
            cfg.duplicate_window = want.duplicate_window;
        }
        if cfg.max_messages_per_subject != want.max_messages_per_subject {
            changes.push(format!(
                "max_msgs_per_subject {} -> {}",
                cfg.max_messages_per_subject, want.max_messages_per_subject
            ));
            cfg.max_messages_per_subject = want.max_messages_per_subject;
        }

        let existing = cfg.sources.clone().unwrap_or_default();
        let wanted = self.sources();
        let before = changes.len();
        let mut sources: Vec<Source> = Vec::with_capacity(existing.len().max(wanted.len()));
        // Keep the order the stream has; fix or drop what is out of line.
        for s in &existing {
            match source_domain(s) {
                Some(d) if self.regions.iter().any(|r| r == d) && d != self.region => {
                    let w = region_source(&self.base, d);
                    if same_source(s, &w) {
                        sources.push(s.clone());
                    } else {
                        changes.push(format!("source from {d}: reset to {}", w.name));
                        sources.push(w);
                    }
                }
                d if self.prune => changes.push(format!(
                    "removed source {} ({})",
                    s.name,
                    d.map(|d| format!("domain {d}"))
                        .unwrap_or_else(|| "local".into())
                )),
                _ => sources.push(s.clone()),
            }
        }
        for w in wanted {
            if !sources
                .iter()
                .any(|s| source_domain(s) == source_domain(&w))
            {
                changes.push(format!(
                    "added source from {}",
                    source_domain(&w).unwrap_or_default()
                ));
                sources.push(w);
            }
        }
        if changes.len() > before {
            cfg.sources = (!sources.is_empty()).then_some(sources);
        }
        // Otherwise the server's own rendering of the sources stays as it is.
        (cfg, changes)
    }

    /// Sources kept although their domain is not in the region list (see [`Plan::prune`]).
    pub fn unlisted_sources(&self, current: &Config) -> Vec<String> {
        current
            .sources
            .iter()
            .flatten()
            .filter(|s| !source_domain(s).is_some_and(|d| self.regions.iter().any(|r| r == d)))
            .map(|s| match source_domain(s) {
                Some(d) => format!("{} (domain {d})", s.name),
                None => format!("{} (local)", s.name),
            })
            .collect()
    }
}

/// Creates or updates the stream of `plan.region` through `js`, which must reach domain
/// `plan.region` (e.g. `jetstream::with_domain(client, region)`). Returns what it did and
/// the stream's configuration afterwards.
/// Whether `get_stream` failed because the stream does not exist (as opposed to JetStream
/// being unreachable or refusing).
pub fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

pub async fn provision(
    js: &jetstream::Context,
    plan: &Plan,
) -> Result<(Outcome, Config), ProvisionError> {
    let stream = || plan.stream.clone();
    let domain = || plan.region.clone();
    // Create and update answer with the same error type.
    let write_err = |e: CreateStreamError| match e.kind() {
        CreateStreamErrorKind::JetStream(_) => ProvisionError::Refused {
            stream: stream(),
            domain: domain(),
            message: e.to_string(),
        },
        _ => ProvisionError::Unreachable {
            stream: stream(),
            domain: domain(),
            message: e.to_string(),
        },
    };
    match js.get_stream(&plan.stream).await {
        Ok(s) => {
            let current = &s.cached_info().config;
            let (cfg, changes) = plan.reconcile(current);
            if changes.is_empty() {
                return Ok((Outcome::Unchanged, cfg));
            }
            let info = js.update_stream(&cfg).await.map_err(write_err)?;
            Ok((Outcome::Updated(changes), info.config))
        }
        Err(e) if is_not_found(&e) => {
            let s = js
                .create_stream(plan.create_config())
                .await
                .map_err(write_err)?;
            Ok((Outcome::Created, s.cached_info().config.clone()))
        }
        Err(e) => Err(match e.kind() {
            GetStreamErrorKind::JetStream(_) => ProvisionError::Refused {
                stream: stream(),
                domain: domain(),
                message: e.to_string(),
            },
            _ => ProvisionError::Unreachable {
                stream: stream(),
                domain: domain(),
                message: e.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(regions: &str) -> Plan {
        let regions: Vec<String> = regions.split(',').map(String::from).collect();
        Plan::new(
            "VETO_REVOCATIONS",
            "us",
            &regions,
            Duration::from_secs(86400),
        )
        .unwrap()
    }

    #[test]
    fn sources_every_other_region_filtered_to_its_origin() {
        let cfg = plan("us,eu,ap").create_config();
        assert_eq!(cfg.name, "VETO_REVOCATIONS_us");
        assert_eq!(cfg.subjects, ["veto.revocations.us.>"]);
        let sources = cfg.sources.unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].name, "VETO_REVOCATIONS_eu");
        assert_eq!(
            sources[0].external.as_ref().unwrap().api_prefix,
            "$JS.eu.API"
        );
        assert_eq!(
            sources[1].filter_subject.as_deref(),
            Some("veto.revocations.ap.>")
        );
        assert!(sources.iter().all(|s| s.domain.is_none()));
        assert_eq!(cfg.max_messages_per_subject, 1);
        assert!(cfg.duplicate_window <= cfg.max_age);
    }

    #[test]
    fn reconcile_is_a_no_op_on_the_created_config_and_adds_new_regions() {
        let created = plan("us,eu").create_config();
        // What the server echoes: `deliver: ""`.
        let mut echoed = created.clone();
        for s in echoed.sources.iter_mut().flatten() {
            s.external.as_mut().unwrap().delivery_prefix = Some(String::new());
        }
        assert!(plan("us,eu").reconcile(&echoed).1.is_empty());

        let (cfg, changes) = plan("us,eu,ap").reconcile(&echoed);
        assert_eq!(changes, ["added source from ap"]);
        assert_eq!(cfg.sources.as_ref().unwrap().len(), 2);
        assert!(plan("us,eu,ap").reconcile(&cfg).1.is_empty());
    }

    #[test]
    fn unlisted_sources_are_kept_unless_pruned() {
        let three = plan("us,eu,ap").create_config();
        let mut p = plan("us,eu");
        assert!(p.reconcile(&three).1.is_empty());
        assert_eq!(
            p.unlisted_sources(&three),
            ["VETO_REVOCATIONS_ap (domain ap)"]
        );
        p.prune = true;
        let (cfg, changes) = p.reconcile(&three);
        assert_eq!(changes, ["removed source VETO_REVOCATIONS_ap (domain ap)"]);
        assert_eq!(cfg.sources.unwrap().len(), 1);
    }

    #[test]
    fn limits_are_brought_in_line() {
        let mut cfg = plan("us,eu").create_config();
        cfg.max_age = Duration::from_secs(3600);
        cfg.max_messages_per_subject = -1;
        cfg.sources.as_mut().unwrap()[0].filter_subject = Some("veto.revocations.>".into());
        let (fixed, changes) = plan("us,eu").reconcile(&cfg);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(fixed, plan("us,eu").create_config());
    }

    #[test]
    fn the_region_must_be_listed_and_the_name_valid() {
        let regions = vec!["eu".to_string()];
        assert!(matches!(
            Plan::new("S", "us", &regions, Duration::from_secs(1)),
            Err(ProvisionError::RegionNotListed(_))
        ));
        assert!(matches!(
            Plan::new("S.x", "eu", &regions, Duration::from_secs(1)),
            Err(ProvisionError::BadStreamName(_))
        ));
    }
}
