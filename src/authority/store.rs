//! The home's session bucket: JetStream KV `VETO_SESSIONS` in this region's domain.
//!
//! Keys: `s.<sid>` the session record; `nb.<h>` a subject's not-before (Unix ms), `h` =
//! base64url SHA-256 of `iss \0 sub`; `u.<h>` the sessions created under one upstream
//! session, `h` of `iss \0 sid`. History 1; the bucket's `max_age` is the idle timeout: every
//! rotation rewrites `s.<sid>`, so a session nobody refreshes ages out (2.9 has no per-key
//! TTL). Every write is a compare-and-set on the revision.
//!
//! nats-server 2.9.10 + async-nats 0.51: `create_key_value` fails (2.9's account info lacks
//! fields 0.51 requires), so the bucket's stream is created with `create_stream` in the KV
//! layout and opened with `get_key_value`.

use super::session::Record;
use crate::bus::names::SESSION_BUCKET;
use crate::token::b64;
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::{self, kv, stream};
use aws_lc_rs::digest;
use base64::Engine;
use bytes::Bytes;
use std::time::Duration;

/// Longest list of sessions kept under one upstream session.
pub const MAX_UPSTREAM_SESSIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone wrote first: re-read and decide again.
    #[error("revision conflict")]
    Conflict,
    /// JetStream did not answer (or answered an error): nothing is known to be written.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("stored value is not valid: {0}")]
    Corrupt(String),
}

/// The bucket's stream config in the KV layout (what `create_key_value` would make).
pub fn bucket_config(idle: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{SESSION_BUCKET}"),
        description: Some("veto sessions of this home region".into()),
        subjects: vec![format!("$KV.{SESSION_BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: idle,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

pub fn session_key(sid: &str) -> String {
    format!("s.{sid}")
}

fn hashed(a: &str, b: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(a.as_bytes());
    ctx.update(&[0]);
    ctx.update(b.as_bytes());
    b64().encode(ctx.finish().as_ref())
}

pub fn not_before_key(iss: &str, sub: &str) -> String {
    format!("nb.{}", hashed(iss, sub))
}

pub fn upstream_key(iss: &str, sid: &str) -> String {
    format!("u.{}", hashed(iss, sid))
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Every subject's not-before (`nb.<h>` keys), kept in memory from a watch of the bucket so a
/// refresh at the home costs one KV read, not two. Until the watch has delivered every key
/// (and after it fails) it answers "not known" and the caller reads the KV.
#[derive(Default)]
pub struct NotBefores {
    map: parking_lot::RwLock<std::collections::HashMap<String, i64>>,
    ready: std::sync::atomic::AtomicBool,
}

impl NotBefores {
    /// `Some(not_before)` once complete; `None`: ask the bucket.
    pub fn get(&self, iss: &str, sub: &str) -> Option<Option<i64>> {
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        Some(self.map.read().get(&not_before_key(iss, sub)).copied())
    }

    fn set_ready(&self, ready: bool) {
        self.ready
            .store(ready, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The watcher's own key: written before each watch starts, so its arrival marks the end of
/// the keys that existed (its value parses as a not-before of 0, which restricts nothing).
const WATCH_MARK: &str = "nb._watch";

#[derive(Clone)]
pub struct Sessions {
    kv: kv::Store,
    /// Bound of every KV call.
    timeout: Duration,
}

impl Sessions {
    /// Creates the bucket if missing (updating its idle timeout if it changed), then opens it.
    pub async fn open(
        js: &jetstream::Context,
        idle: Duration,
        timeout: Duration,
    ) -> Result<Sessions, StoreError> {
        let want = bucket_config(idle, 1);
        let limit = |e: tokio::time::error::Elapsed| unavailable(e);
        match tokio::time::timeout(timeout, js.get_stream(&want.name))
            .await
            .map_err(limit)?
        {
            Ok(stream) => {
                let current = &stream.cached_info().config;
                if current.max_age != idle {
                    let mut cfg = current.clone();
                    cfg.max_age = idle;
                    tokio::time::timeout(timeout, js.update_stream(&cfg))
                        .await
                        .map_err(limit)?
                        .map_err(unavailable)?;
                }
            }
            Err(e) if crate::bus::stream::is_not_found(&e) => {
                match tokio::time::timeout(timeout, js.create_stream(want))
                    .await
                    .map_err(limit)?
                {
                    Ok(_) => {}
                    // another replica created it meanwhile: opened below
                    Err(e)
                        if matches!(
                            e.kind(),
                            CreateStreamErrorKind::JetStream(ref j)
                                if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST
                        ) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
        let kv = tokio::time::timeout(timeout, js.get_key_value(SESSION_BUCKET))
            .await
            .map_err(limit)?
            .map_err(unavailable)?;
        Ok(Sessions { kv, timeout })
    }

    async fn entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        let e = tokio::time::timeout(self.timeout, self.kv.entry(key))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        Ok(e.and_then(|e| match e.operation {
            kv::Operation::Put => Some((e.value, e.revision)),
            _ => None,
        }))
    }

    /// The session and its revision.
    pub async fn get(&self, sid: &str) -> Result<Option<(Record, u64)>, StoreError> {
        match self.entry(&session_key(sid)).await? {
            None => Ok(None),
            Some((v, rev)) => serde_json::from_slice(&v)
                .map(|r| Some((r, rev)))
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    async fn create_raw(&self, key: &str, body: Vec<u8>) -> Result<u64, StoreError> {
        match tokio::time::timeout(self.timeout, self.kv.create(key, body.into()))
            .await
            .map_err(unavailable)?
        {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StoreError::Conflict),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Writes a new session; `Conflict` if the id exists.
    pub async fn create(&self, sid: &str, rec: &Record) -> Result<u64, StoreError> {
        let body = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.create_raw(&session_key(sid), body).await
    }

    async fn update_raw(&self, key: &str, body: Vec<u8>, revision: u64) -> Result<u64, StoreError> {
        match tokio::time::timeout(self.timeout, self.kv.update(key, body.into(), revision))
            .await
            .map_err(unavailable)?
        {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Read-modify-write of `key` by compare-and-set: `change` gets the current value and
    /// answers the new one (`None`: nothing to write). Retried on conflicts.
    async fn modify(
        &self,
        key: &str,
        change: impl Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<(), StoreError> {
        for _ in 0..8 {
            let current = self.entry(key).await?;
            let Some(body) = change(current.as_ref().map(|(v, _)| v.as_ref()))? else {
                return Ok(());
            };
            let result = match current {
                Some((_, rev)) => self.update_raw(key, body, rev).await,
                None => self.create_raw(key, body).await,
            };
            match result {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{key}: too many write conflicts"
        )))
    }

    /// Replaces the session at `revision` (compare-and-set).
    pub async fn update(&self, sid: &str, rec: &Record, revision: u64) -> Result<u64, StoreError> {
        let body = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.update_raw(&session_key(sid), body, revision).await
    }

    /// A subject's not-before, Unix ms.
    pub async fn not_before(&self, iss: &str, sub: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .entry(&not_before_key(iss, sub))
            .await?
            .and_then(|(v, _)| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Raises a subject's not-before to `at` (never lowers it).
    pub async fn raise_not_before(&self, iss: &str, sub: &str, at: i64) -> Result<(), StoreError> {
        self.modify(&not_before_key(iss, sub), |old| {
            let old: i64 = old
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(i64::MIN);
            Ok((old < at).then(|| at.to_string().into_bytes()))
        })
        .await
    }

    /// Keeps `cache` equal to the bucket's `nb.` keys until `stop`: one watch (last value per
    /// key, then every change); on any failure the cache is "not known" again and the watch
    /// restarts.
    pub async fn follow_not_befores(
        &self,
        cache: &NotBefores,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        use futures::StreamExt;
        let mut wait = Duration::from_millis(200);
        loop {
            cache.set_ready(false);
            let started = async {
                let mark = tokio::time::timeout(self.timeout, self.kv.put(WATCH_MARK, "0".into()))
                    .await
                    .map_err(unavailable)?
                    .map_err(unavailable)?;
                let watch = tokio::time::timeout(self.timeout, self.kv.watch_with_history("nb.>"))
                    .await
                    .map_err(unavailable)?
                    .map_err(unavailable)?;
                Ok::<_, StoreError>((mark, watch))
            }
            .await;
            match started {
                Ok((mark, mut watch)) => {
                    cache.map.write().clear();
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => return,
                            n = watch.next() => n,
                        };
                        let Some(Ok(e)) = next else {
                            tracing::warn!("not-before watch ended; restarting");
                            break;
                        };
                        let value = match e.operation {
                            kv::Operation::Put => std::str::from_utf8(&e.value)
                                .ok()
                                .and_then(|v| v.parse::<i64>().ok()),
                            _ => None,
                        };
                        {
                            let mut map = cache.map.write();
                            match value {
                                Some(v) => map.insert(e.key.clone(), v),
                                None => map.remove(&e.key),
                            };
                        }
                        if e.key == WATCH_MARK && e.revision >= mark {
                            cache.set_ready(true);
                            wait = Duration::from_millis(200);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "not-before watch not started"),
            }
            cache.set_ready(false);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// The sessions created under upstream session `(iss, sid)`.
    pub async fn upstream_sessions(&self, iss: &str, sid: &str) -> Result<Vec<String>, StoreError> {
        match self.entry(&upstream_key(iss, sid)).await? {
            None => Ok(vec![]),
            Some((v, _)) => {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
        }
    }

    /// Adds `ours` to the sessions of upstream session `(iss, sid)` (bounded: the oldest
    /// entries give way; each still ends at its own expiry).
    pub async fn link_upstream(&self, iss: &str, sid: &str, ours: &str) -> Result<(), StoreError> {
        self.modify(&upstream_key(iss, sid), |old| {
            let mut list: Vec<String> = match old {
                Some(v) => {
                    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))?
                }
                None => vec![],
            };
            if list.iter().any(|s| s == ours) {
                return Ok(None);
            }
            list.push(ours.to_string());
            if list.len() > MAX_UPSTREAM_SESSIONS {
                list.remove(0);
            }
            serde_json::to_vec(&list)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
    }
}
