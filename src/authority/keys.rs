//! Signing keys: the key directory, next/current/retired, the JWKS document.
//!
//! # The key directory (`authority.keys_dir`)
//!
//! A flat directory, so a Kubernetes Secret mounted as a volume works as is:
//!
//! - `<kid>.<alg>.der`: a private key, PKCS#8 DER (what `veto keys generate` writes). `alg` is
//!   one of the authority's signing algorithms (`ES256`, `EdDSA`, `RS256`); keys of different
//!   algorithms may be mixed (that is how an algorithm migration is rolled out). HS* and
//!   unknown algorithms are refused.
//! - `<kid>.json`: optional, `{"activate_at":"2026-12-02T10:00:00Z"}` (RFC 3339, UTC). A key
//!   without one has been active since the epoch, so key files written before activation
//!   times existed keep working. An activation file without its key is an error: it is what a
//!   misspelt kid looks like, and ignoring it would make that key active at once.
//!
//! Names match `[-._a-zA-Z0-9]+`. Entries starting with `.` are ignored (Kubernetes keeps the
//! real files under `..data` and `..<timestamp>` and links the visible names to them), and so
//! are subdirectories and files not ending in `.der` or `.json`. A kid appears once.
//!
//! # States, from the clock
//!
//! Every replica derives the same states from (directory, now), keys ordered by
//! (activation time, kid):
//!
//! - **current**: the last key whose activation time is ≤ now. It signs.
//! - **next**: keys activating after now. Published in the JWKS, never signing.
//! - **retired**: older activated keys, published until their successor's activation time +
//!   `retire_after`, then dropped (`now ≥ successor + retire_after`). `retire_after` is
//!   derived: `max_token_lifetime + leeway + jwks_max_age` (default 15m + 30s + 5m = 20m30s),
//!   so every token the key signed has expired everywhere, clock skew and cached JWKS
//!   documents included, before its key leaves the document.
//!
//! No activated key at all is an error: [`Keyring::load`] fails (the caller exits 64), and a
//! reload keeps the last good keys. The [`Keyring::run`] loop re-reads the directory every
//! `keys_reload`, and also wakes at the next state change (an activation or a retirement), so
//! a key starts signing within milliseconds of its activation time, not at the next reload.
//! Bad material at a reload keeps the last good keys serving, counts
//! `veto_authority_key_load_errors_total`, sets `veto_authority_keys_last_load_ok` to 0 and
//! logs a warning naming the file (never key bytes).
//!
//! # Timings
//!
//! A next key must be published longer than the sidecars can cache a JWKS without it:
//! `jwks_max_age` + the sidecars' `jwks_refresh_interval` (5m) + a margin; publish it 1h ahead.
//! The authority cannot know the sidecars' refresh interval, so it only checks what it knows
//! ([`check_lead`]): a key first seen less than `jwks_max_age` before its activation is logged
//! as a warning. Sidecars also refetch once on an unknown `kid`, so this is defence in depth.

use crate::authority::config::{Authority, SIGNING_ALGS};
use crate::metrics;
use crate::token::sign::SigningKey;
use crate::token::{Alg, Jwk, KeySet, KeyStore};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Registry};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Largest key or activation file read (an RSA-4096 PKCS#8 is ~2.4 KB).
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The extension of private key files.
const KEY_EXT: &str = ".der";
/// The extension of activation files.
const ACTIVATION_EXT: &str = ".json";

// ---------------------------------------------------------------------------------------------
// Names and file format (shared with `veto keys generate`)
// ---------------------------------------------------------------------------------------------

/// Whether `name` is a valid key directory entry name or kid: `[-._a-zA-Z0-9]+`, not
/// starting with `.` (those are Kubernetes' own entries or hidden files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `<kid>.<alg>.der`.
pub fn key_file_name(kid: &str, alg: Alg) -> String {
    format!("{kid}.{alg}{KEY_EXT}")
}

/// `<kid>.json`.
pub fn activation_file_name(kid: &str) -> String {
    format!("{kid}{ACTIVATION_EXT}")
}

/// The activation file's content: `{"activate_at":"<RFC 3339 UTC>"}`.
pub fn activation_json(activate_at_ms: i64) -> String {
    json!({ "activate_at": format_ms(activate_at_ms) }).to_string() + "\n"
}

/// Splits `<kid>.<alg>.der` (the kid may contain dots). `None` when the name has no
/// `.<alg>.der` ending; the algorithm is returned as written, unparsed.
pub fn split_key_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(KEY_EXT)?;
    let (kid, alg) = stem.rsplit_once('.')?;
    (!kid.is_empty() && !alg.is_empty()).then_some((kid, alg))
}

/// Parses `--activate-at`: an RFC 3339 UTC time (`2026-12-02T10:00:00Z`), `now`, or `+` and a
/// duration from now (`+1h`, `+7d`).
pub fn parse_activate_at(s: &str, now_ms: i64) -> Result<i64, String> {
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(d) = s.strip_prefix('+') {
        let d = humantime::parse_duration(d).map_err(|e| format!("{s:?}: {e}"))?;
        return Ok(now_ms.saturating_add(duration_ms(d)));
    }
    parse_rfc3339_ms(s)
}

fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| format!("{s:?}: {e} (an RFC 3339 UTC time such as 2026-12-02T10:00:00Z)"))?;
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?}: before the epoch"))?;
    Ok(duration_ms(d))
}

/// RFC 3339, UTC, to the millisecond when there are any.
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    if ms % 1000 == 0 {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivationFile {
    activate_at: String,
}

fn parse_activation(bytes: &[u8]) -> Result<i64, String> {
    let f: ActivationFile = serde_json::from_slice(bytes)
        .map_err(|e| format!("expected {{\"activate_at\":\"<RFC 3339>\"}}: {e}"))?;
    parse_rfc3339_ms(&f.activate_at)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the key directory cannot be used. Every variant names the file (or the directory);
/// none carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: cannot read the key directory: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_KEY_FILE_BYTES} bytes", file.display())]
    TooLarge { file: PathBuf },
    #[error("{}: {reason}", file.display())]
    BadName { file: PathBuf, reason: &'static str },
    #[error("{}: algorithm {alg:?} cannot sign for the authority (ES256, EdDSA or RS256, as listed in authority.algorithms)", file.display())]
    Alg { file: PathBuf, alg: String },
    #[error("{}: not a PKCS#8 DER {alg} private key", file.display())]
    Material { file: PathBuf, alg: Alg },
    #[error("{}: bad activation file: {reason}", file.display())]
    Activation { file: PathBuf, reason: String },
    #[error("{}: activation time for kid {kid:?}, but no {kid}.<alg>.der", file.display())]
    Orphan { file: PathBuf, kid: String },
    #[error("{}: kid {kid:?} is also {}", file.display(), other.display())]
    DuplicateKid {
        file: PathBuf,
        other: PathBuf,
        kid: String,
    },
    #[error("{}: no signing key is active at {} (first activation: {})", dir.display(), format_ms(*now_ms), first.as_deref().unwrap_or("none, the directory holds no key"))]
    NoCurrentKey {
        dir: PathBuf,
        now_ms: i64,
        first: Option<String>,
    },
}

impl KeyError {
    /// A stable label for the variant.
    pub fn label(&self) -> &'static str {
        match self {
            KeyError::Dir { .. } => "dir",
            KeyError::Read { .. } => "read",
            KeyError::TooLarge { .. } => "too_large",
            KeyError::BadName { .. } => "bad_name",
            KeyError::Alg { .. } => "alg",
            KeyError::Material { .. } => "material",
            KeyError::Activation { .. } => "activation",
            KeyError::Orphan { .. } => "orphan",
            KeyError::DuplicateKid { .. } => "duplicate_kid",
            KeyError::NoCurrentKey { .. } => "no_current_key",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// States (pure)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Published, activating later; never signs.
    Next,
    /// The newest activated key; signs.
    Current,
    /// Replaced, still published until its successor's activation + `retire_after`.
    Retired,
}

impl KeyState {
    pub const ALL: [KeyState; 3] = [KeyState::Next, KeyState::Current, KeyState::Retired];

    /// The `state` label of `veto_authority_signing_keys`.
    pub fn label(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }
}

/// The states of a key list at one instant (see [`derive`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    /// Aligned with the input; `None`: dropped (retired past `retire_after`).
    pub states: Vec<Option<KeyState>>,
    /// Index of the current key in the input.
    pub current: usize,
    /// The next instant (ms) at which a state changes: the first next key's activation or a
    /// retired key's drop time. `None`: nothing changes without a new key.
    pub next_change_ms: Option<i64>,
}

/// Derives each key's state from `(kid, activate_at_ms)` pairs at `now_ms`. Pure and
/// deterministic: equal activation times are ordered by kid. `None` when no key has activated.
pub fn derive(keys: &[(&str, i64)], now_ms: i64, retire_after: Duration) -> Option<Derived> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| (keys[a].1, keys[a].0).cmp(&(keys[b].1, keys[b].0)));
    // Activated keys are a prefix of `order`; the current key is its last.
    let activated = order.iter().take_while(|&&i| keys[i].1 <= now_ms).count();
    let cur_pos = activated.checked_sub(1)?;
    let retire_ms = duration_ms(retire_after);
    let mut states = vec![None; keys.len()];
    let mut next_change: Option<i64> = None;
    let mut soonest = |t: i64| next_change = Some(next_change.map_or(t, |c| c.min(t)));
    for (pos, &i) in order.iter().enumerate() {
        if pos > cur_pos {
            states[i] = Some(KeyState::Next);
            if pos == cur_pos + 1 {
                soonest(keys[i].1);
            }
        } else if pos == cur_pos {
            states[i] = Some(KeyState::Current);
        } else {
            let successor = keys[order[pos + 1]].1;
            let drop_at = successor.saturating_add(retire_ms);
            if now_ms < drop_at {
                states[i] = Some(KeyState::Retired);
                soonest(drop_at);
            }
        }
    }
    Some(Derived {
        states,
        current: order[cur_pos],
        next_change_ms: next_change,
    })
}

/// A key whose publish lead [`check_lead`] judges: when this process first published it, and
/// when it activates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lead {
    pub kid: String,
    pub published_at_ms: i64,
    pub activate_at_ms: i64,
}

/// A key that starts signing less than `jwks_max_age` after it was first published: a
/// sidecar holding a JWKS cached just before it appeared does not know it when its first
/// tokens arrive (and falls back to its refetch on an unknown `kid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeadWarning {
    pub kid: String,
    /// Activation − first publication; negative: it signed before it was published.
    pub lead_ms: i64,
    /// What it should at least have been: `jwks_max_age` (plus the sidecars' refresh interval,
    /// which the authority cannot know).
    pub needed_ms: i64,
}

/// Pure: the keys of `keys` whose lead (activation − first publication) is below
/// `jwks_max_age`. The [`Keyring`] passes the keys it sees for the first time that will sign
/// (next, or a new current), never the keys it found already active at start-up (when they
/// were published is unknowable, and they are old news).
pub fn check_lead(keys: &[Lead], jwks_max_age: Duration) -> Vec<LeadWarning> {
    let needed_ms = duration_ms(jwks_max_age);
    keys.iter()
        .filter_map(|k| {
            let lead_ms = k.activate_at_ms.saturating_sub(k.published_at_ms);
            (lead_ms < needed_ms).then(|| LeadWarning {
                kid: k.kid.clone(),
                lead_ms,
                needed_ms,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// One key of the directory, parsed.
struct KeyFile {
    kid: String,
    alg: Alg,
    activate_at_ms: i64,
    /// The `.der` file (named in errors and logs).
    file: PathBuf,
    key: Arc<SigningKey>,
}

fn read_small(file: &Path) -> Result<Vec<u8>, KeyError> {
    let read = |source| KeyError::Read {
        file: file.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(file).map_err(read)?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(KeyError::TooLarge {
            file: file.to_path_buf(),
        });
    }
    Ok(buf)
}

/// Reads and parses the directory. A key whose bytes equal a key of `previous` (same kid and
/// algorithm) reuses its parsed form, so reloads every few seconds cost a read, not a parse.
fn read_dir(dir: &Path, previous: &[KeyFile], allowed: &[Alg]) -> Result<Vec<KeyFile>, KeyError> {
    let rd = std::fs::read_dir(dir).map_err(|source| KeyError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| KeyError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            // Not UTF-8: cannot be one of ours; judge it by whether it looks like one.
            let lossy = entry.file_name().to_string_lossy().into_owned();
            if !lossy.starts_with('.')
                && (lossy.ends_with(KEY_EXT) || lossy.ends_with(ACTIVATION_EXT))
            {
                return Err(KeyError::BadName {
                    file: path,
                    reason: "names are [-._a-zA-Z0-9]+",
                });
            }
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(KEY_EXT) || name.ends_with(ACTIVATION_EXT)) {
            continue;
        }
        // Follows symlinks: Kubernetes' visible names link into `..data/`.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if !valid_name(&name) {
            return Err(KeyError::BadName {
                file: path,
                reason: "names are [-._a-zA-Z0-9]+",
            });
        }
        names.push((name, path));
    }
    names.sort();
    let mut activations: HashMap<String, (i64, PathBuf)> = HashMap::new();
    let mut keys: Vec<KeyFile> = Vec::new();
    for (name, path) in names {
        if let Some(kid) = name.strip_suffix(ACTIVATION_EXT) {
            let bytes = read_small(&path)?;
            let at = parse_activation(&bytes).map_err(|reason| KeyError::Activation {
                file: path.clone(),
                reason,
            })?;
            activations.insert(kid.to_string(), (at, path));
            continue;
        }
        let Some((kid, alg_name)) = split_key_file_name(&name) else {
            return Err(KeyError::BadName {
                file: path,
                reason: "expected <kid>.<alg>.der",
            });
        };
        let alg = Alg::parse(alg_name)
            .filter(|a| SIGNING_ALGS.contains(a) && allowed.contains(a))
            .ok_or_else(|| KeyError::Alg {
                file: path.clone(),
                alg: alg_name.to_string(),
            })?;
        if let Some(other) = keys.iter().find(|k| k.kid == kid) {
            return Err(KeyError::DuplicateKid {
                file: path,
                other: other.file.clone(),
                kid: kid.to_string(),
            });
        }
        let der = read_small(&path)?;
        let key = match previous
            .iter()
            .find(|p| p.kid == kid && p.alg == alg && p.key.pkcs8_der() == der.as_slice())
        {
            Some(p) => p.key.clone(),
            None => Arc::new(SigningKey::from_pkcs8(alg, kid, &der).map_err(|_| {
                KeyError::Material {
                    file: path.clone(),
                    alg,
                }
            })?),
        };
        keys.push(KeyFile {
            kid: kid.to_string(),
            alg,
            activate_at_ms: 0,
            file: path,
            key,
        });
    }
    for k in &mut keys {
        if let Some((at, _)) = activations.remove(&k.kid) {
            k.activate_at_ms = at;
        }
    }
    // Deterministic: the first orphan by name.
    if let Some((kid, (_, file))) = activations.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(KeyError::Orphan { file, kid });
    }
    Ok(keys)
}

/// The public members a JWK may carry; everything else is left out of the document, so no
/// private member can ever reach it.
const PUBLIC_MEMBERS: [&str; 9] = ["kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"];

fn public_only(jwk: Value) -> Value {
    match jwk {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| PUBLIC_MEMBERS.contains(&k.as_str()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// What one derivation serves.
#[derive(Clone)]
struct Snapshot {
    /// The last good directory contents.
    material: Arc<Vec<KeyFile>>,
    /// Published keys (indices into `material`) in document order: current, next by
    /// activation, retired newest first.
    published: Vec<(usize, KeyState)>,
    current: usize,
    next_change_ms: Option<i64>,
    jwks: Bytes,
}

impl Snapshot {
    fn build(
        material: Arc<Vec<KeyFile>>,
        now_ms: i64,
        retire_after: Duration,
        dir: &Path,
    ) -> Result<Snapshot, KeyError> {
        let pairs: Vec<(&str, i64)> = material
            .iter()
            .map(|k| (k.kid.as_str(), k.activate_at_ms))
            .collect();
        let Some(d) = derive(&pairs, now_ms, retire_after) else {
            return Err(KeyError::NoCurrentKey {
                dir: dir.to_path_buf(),
                now_ms,
                first: material
                    .iter()
                    .map(|k| k.activate_at_ms)
                    .min()
                    .map(format_ms),
            });
        };
        let mut published: Vec<(usize, KeyState)> = d
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        let rank = |s: KeyState| match s {
            KeyState::Current => 0,
            KeyState::Next => 1,
            KeyState::Retired => 2,
        };
        published.sort_by(|&(a, sa), &(b, sb)| {
            let (ka, kb) = (&material[a], &material[b]);
            let by_time = (ka.activate_at_ms, &ka.kid).cmp(&(kb.activate_at_ms, &kb.kid));
            rank(sa).cmp(&rank(sb)).then(if sa == KeyState::Retired {
                by_time.reverse()
            } else {
                by_time
            })
        });
        let keys: Vec<Value> = published
            .iter()
            .map(|&(i, _)| public_only(material[i].key.public_jwk()))
            .filter(|v| !v.is_null())
            .collect();
        let jwks = Bytes::from(json!({ "keys": keys }).to_string());
        Ok(Snapshot {
            current: d.current,
            next_change_ms: d.next_change_ms,
            published,
            material,
            jwks,
        })
    }

    fn current_key(&self) -> &KeyFile {
        &self.material[self.current]
    }

    /// What a change is: another current key, or another document.
    fn same_as(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.current_key().key, &other.current_key().key) && self.jwks == other.jwks
    }

    fn info(&self) -> Vec<KeyInfo> {
        self.published
            .iter()
            .map(|&(i, state)| {
                let k = &self.material[i];
                KeyInfo {
                    kid: k.kid.clone(),
                    alg: k.alg,
                    activate_at_ms: k.activate_at_ms,
                    state,
                }
            })
            .collect()
    }
}

/// A published key, for callers and tests (no key material).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: Alg,
    pub activate_at_ms: i64,
    pub state: KeyState,
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The key ring's metric families. The gauges are set at start and at every reload (every
/// `keys_reload` and at each state change), so ages move in `keys_reload` steps.
#[derive(Clone)]
pub struct KeyMetrics {
    keys: IntGaugeVec,
    /// `veto_authority_next_key_activates_in_seconds`: until the earliest next key
    /// activates; -1 when no next key is published.
    pub next_activates_in: IntGauge,
    /// `veto_authority_current_key_age_seconds`: since the current key activated (a key
    /// without an activation file counts from the epoch).
    pub current_age: IntGauge,
    /// `veto_authority_key_load_errors_total`.
    pub load_errors: IntCounter,
    /// `veto_authority_keys_last_load_ok`: 1 when the last directory read was usable.
    pub last_load_ok: IntGauge,
}

impl KeyMetrics {
    pub fn register(r: &Registry) -> KeyMetrics {
        let m = KeyMetrics {
            keys: metrics::gauge_vec(
                r,
                "veto_authority_signing_keys",
                "Signing keys published in the JWKS, by state (next/current/retired).",
                &["state"],
            ),
            next_activates_in: metrics::gauge(
                r,
                "veto_authority_next_key_activates_in_seconds",
                "Seconds until the earliest next signing key activates; -1 when none is published.",
            ),
            current_age: metrics::gauge(
                r,
                "veto_authority_current_key_age_seconds",
                "Seconds since the current signing key activated.",
            ),
            load_errors: metrics::counter(
                r,
                "veto_authority_key_load_errors_total",
                "Key directory loads that failed (bad key material, no usable key); the last good keys stay in use.",
            ),
            last_load_ok: metrics::gauge(
                r,
                "veto_authority_keys_last_load_ok",
                "1 when the last key directory load succeeded, 0 when it failed.",
            ),
        };
        for s in KeyState::ALL {
            m.keys(s).set(0);
        }
        m.next_activates_in.set(-1);
        m
    }

    /// `veto_authority_signing_keys{state}`.
    pub fn keys(&self, state: KeyState) -> IntGauge {
        self.keys.with_label_values(&[state.label()])
    }

    fn observe(&self, snap: &Snapshot, now_ms: i64) {
        for s in KeyState::ALL {
            let n = snap.published.iter().filter(|(_, st)| *st == s).count();
            self.keys(s).set(n as i64);
        }
        let next = snap
            .published
            .iter()
            .filter(|(_, s)| *s == KeyState::Next)
            .map(|&(i, _)| snap.material[i].activate_at_ms)
            .min();
        self.next_activates_in
            .set(next.map_or(-1, |t| t.saturating_sub(now_ms).max(0) / 1000));
        self.current_age.set(
            now_ms
                .saturating_sub(snap.current_key().activate_at_ms)
                .max(0)
                / 1000,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The key ring
// ---------------------------------------------------------------------------------------------

/// The authority's signing keys: the directory's keys in their states, the current key for
/// minting, the JWKS for publishing, reloaded in the background by [`Keyring::run`].
pub struct Keyring {
    dir: PathBuf,
    /// `authority.algorithms`: what the directory may hold.
    allowed: Vec<Alg>,
    reload: Duration,
    retire_after: Duration,
    jwks_max_age: Duration,
    /// What is served; replaced whole, so a reader sees one consistent derivation.
    snap: RwLock<Arc<Snapshot>>,
    /// What reloads remember; the lock also serialises them.
    reloads: Mutex<Reloads>,
    metrics: KeyMetrics,
    /// The authority's own validator's keys, replaced after every change so it verifies
    /// exactly what the JWKS publishes.
    store: Option<Arc<KeyStore>>,
    /// Bumped on every change of the current key or the document.
    generation: AtomicU64,
}

impl Keyring {
    /// Reads `cfg.keys_dir` and derives the states at `now_ms`. Bad key material or no
    /// activated key is an error naming the file (the caller exits 64).
    pub fn load(cfg: &Authority, now_ms: i64) -> Result<Keyring, KeyError> {
        let retire_after = retire_after(cfg);
        let allowed = cfg
            .allowed_algorithms()
            .unwrap_or_else(|_| SIGNING_ALGS.to_vec());
        let material = Arc::new(read_dir(&cfg.keys_dir, &[], &allowed)?);
        let snap = Snapshot::build(material, now_ms, retire_after, &cfg.keys_dir)?;
        // Keys already active at start-up were published whenever they were; only the next
        // keys' lead can be judged, from now.
        let leads: Vec<Lead> = snap
            .published
            .iter()
            .filter(|(_, s)| *s == KeyState::Next)
            .map(|&(i, _)| Lead {
                kid: snap.material[i].kid.clone(),
                published_at_ms: now_ms,
                activate_at_ms: snap.material[i].activate_at_ms,
            })
            .collect();
        warn_leads(&check_lead(&leads, cfg.jwks_max_age));
        let reloads = Reloads {
            first_seen: snap
                .material
                .iter()
                .map(|k| (k.kid.clone(), now_ms))
                .collect(),
            last_error: None,
        };
        let ring = Keyring {
            dir: cfg.keys_dir.clone(),
            allowed,
            reload: cfg.keys_reload,
            retire_after,
            jwks_max_age: cfg.jwks_max_age,
            snap: RwLock::new(Arc::new(snap)),
            reloads: Mutex::new(reloads),
            metrics: KeyMetrics::register(&Registry::new()),
            store: None,
            generation: AtomicU64::new(0),
        };
        ring.log_states("signing keys loaded");
        Ok(ring)
    }

    /// Reports into `m` (registered on the caller's registry) from now on.
    pub fn with_metrics(mut self, m: KeyMetrics) -> Keyring {
        m.last_load_ok.set(1);
        m.observe(&self.snap.read(), crate::now_ms());
        self.metrics = m;
        self
    }

    /// Keeps `store` holding [`Keyring::public_keyset`]: replaced now and after every change.
    pub fn with_store(mut self, store: Arc<KeyStore>) -> Keyring {
        store.replace(self.public_keyset());
        self.store = Some(store);
        self
    }

    /// The key that signs now: as of the last reload, which [`Keyring::run`] performs at
    /// every activation instant. Cheap: one uncontended read lock and an `Arc` clone.
    pub fn current(&self) -> Arc<SigningKey> {
        self.snap.read().current_key().key.clone()
    }

    /// The JWKS document (next, current and retired public keys; never a private member).
    pub fn jwks_json(&self) -> Bytes {
        self.snap.read().jwks.clone()
    }

    /// The published keys as a verification key set, for the authority's own validator.
    pub fn public_keyset(&self) -> KeySet {
        let snap = self.snap.read().clone();
        let mut set = KeySet::default();
        for &(i, _) in &snap.published {
            let k = &snap.material[i];
            if let Some(jwk) = Jwk::from_json(&k.key.public_jwk(), &[k.alg]) {
                set.insert(jwk);
            }
        }
        set
    }

    /// The published keys and their states, in document order.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.snap.read().info()
    }

    /// The distinct algorithms of the published keys (discovery's
    /// `id_token_signing_alg_values_supported`).
    pub fn algorithms(&self) -> Vec<Alg> {
        let mut out = Vec::new();
        for k in self.keys() {
            if !out.contains(&k.alg) {
                out.push(k.alg);
            }
        }
        out
    }

    /// `Cache-Control: max-age` of the JWKS.
    pub fn jwks_max_age(&self) -> Duration {
        self.jwks_max_age
    }

    /// How long a replaced key stays published (`max_token_lifetime + leeway + jwks_max_age`).
    pub fn retire_after(&self) -> Duration {
        self.retire_after
    }

    /// Bumped on every change of the current key or of the document.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The next instant (ms) at which a state changes by the clock alone.
    pub fn next_change_ms(&self) -> Option<i64> {
        self.snap.read().next_change_ms
    }

    /// Re-reads the directory and re-derives the states at `now_ms`. On bad material (or no
    /// activated key) the last good keys keep serving, re-derived at `now_ms` so activations
    /// and retirements still happen; the error is counted, logged and returned. Returns
    /// whether anything served changed.
    pub fn reload(&self, now_ms: i64) -> Result<bool, KeyError> {
        let mut reloads = self.reloads.lock();
        let Reloads {
            first_seen,
            last_error,
        } = &mut *reloads;
        let old = self.snap.read().clone();
        let fresh = read_dir(&self.dir, &old.material, &self.allowed)
            .and_then(|m| Snapshot::build(Arc::new(m), now_ms, self.retire_after, &self.dir));
        let (snap, result) = match fresh {
            Ok(s) => {
                self.metrics.last_load_ok.set(1);
                if last_error.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "signing keys: the key directory loads again");
                }
                (s, Ok(()))
            }
            Err(e) => {
                self.metrics.load_errors.inc();
                self.metrics.last_load_ok.set(0);
                // Warned once per distinct error, not every `keys_reload`.
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "signing keys: cannot load the key directory; the last good keys stay in use");
                    *last_error = Some(text);
                }
                // A clock stepped back before every activation leaves no current key: keep
                // serving the old derivation then.
                let again =
                    Snapshot::build(old.material.clone(), now_ms, self.retire_after, &self.dir)
                        .unwrap_or_else(|_| (*old).clone());
                (again, Err(e))
            }
        };
        // New keys that will sign: judge how early they were published.
        let leads: Vec<Lead> = snap
            .published
            .iter()
            .filter(|(_, s)| *s != KeyState::Retired)
            .map(|&(i, _)| &snap.material[i])
            .filter(|k| !first_seen.contains_key(&k.kid))
            .map(|k| Lead {
                kid: k.kid.clone(),
                published_at_ms: now_ms,
                activate_at_ms: k.activate_at_ms,
            })
            .collect();
        warn_leads(&check_lead(&leads, self.jwks_max_age));
        for k in snap.material.iter() {
            first_seen.entry(k.kid.clone()).or_insert(now_ms);
        }
        first_seen.retain(|kid, _| snap.material.iter().any(|k| &k.kid == kid));
        let changed = !snap.same_as(&old);
        self.metrics.observe(&snap, now_ms);
        // Installed even when nothing served changed: an edited activation time of a next
        // key moves the next wake-up.
        *self.snap.write() = Arc::new(snap);
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
            if let Some(store) = &self.store {
                store.replace(self.public_keyset());
            }
            self.log_states("signing keys changed");
        }
        drop(reloads);
        result.map(|()| changed)
    }

    fn log_states(&self, what: &str) {
        let snap = self.snap.read().clone();
        let current = snap.current_key();
        let list: Vec<String> = snap
            .info()
            .iter()
            .map(|k| {
                format!(
                    "{}:{}:{}@{}",
                    k.kid,
                    k.alg,
                    k.state.label(),
                    format_ms(k.activate_at_ms)
                )
            })
            .collect();
        tracing::info!(
            dir = %self.dir.display(),
            current = %current.kid,
            keys = %list.join(" "),
            next_change = %snap.next_change_ms.map(format_ms).unwrap_or_else(|| "none".into()),
            "{what}"
        );
    }

    /// How long to sleep at `now_ms`: until the next reload or the next state change,
    /// whichever is first (a few ms past the change, never less than 10 ms).
    fn wait(&self, now_ms: i64) -> Duration {
        match self.next_change_ms() {
            Some(t) => {
                let until = u64::try_from(t.saturating_sub(now_ms).saturating_add(5)).unwrap_or(0);
                self.reload
                    .min(Duration::from_millis(until))
                    .max(Duration::from_millis(10))
            }
            None => self.reload,
        }
    }

    /// Re-reads the directory every `keys_reload` and at every state change until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = self.wait(crate::now_ms());
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let ring = self.clone();
            // File reads and key parsing off the async workers.
            let joined = tokio::task::spawn_blocking(move || ring.reload(crate::now_ms())).await;
            if let Err(e) = joined {
                tracing::error!(error = %e, "signing keys: reload task failed");
            }
        }
    }
}

/// What [`Keyring::reload`] carries from one reload to the next.
struct Reloads {
    /// When each kid was first seen by this process (for [`check_lead`]).
    first_seen: HashMap<String, i64>,
    /// The last reload's error, so a lasting problem is logged once, not every reload.
    last_error: Option<String>,
}

/// `max_token_lifetime + leeway + jwks_max_age`: a token signed by a key just before its
/// successor activated is valid this long (with clock skew), and sidecars may hold a JWKS
/// this much older.
pub fn retire_after(cfg: &Authority) -> Duration {
    cfg.max_token_lifetime + cfg.leeway + cfg.jwks_max_age
}

fn warn_leads(warnings: &[LeadWarning]) {
    for w in warnings {
        tracing::warn!(
            kid = %w.kid,
            lead_s = w.lead_ms / 1000,
            needed_s = w.needed_ms / 1000,
            "signing key activates less than authority.jwks_max_age (+ the sidecars' jwks_refresh_interval) after it was first published; sidecars with a cached JWKS will refetch on its unknown kid. Publish next keys earlier (1h ahead)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// What the discovery document says about this authority.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// `iss` of the tokens.
    pub issuer: String,
    /// Base of the endpoint URLs (no trailing slash).
    pub public_url: String,
}

impl Discovery {
    pub fn from_config(cfg: &Authority) -> Discovery {
        Discovery {
            issuer: cfg.issuer.clone(),
            public_url: cfg.public_url().to_string(),
        }
    }

    /// The OpenID Provider metadata. Signing algorithms come from the published keys.
    pub fn document(&self, algs: &[Alg]) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.public_url),
            "token_endpoint": format!("{}/v1/token", self.public_url),
            "id_token_signing_alg_values_supported":
                algs.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "grant_types_supported": ["refresh_token"],
        })
    }
}

#[derive(Clone)]
struct Wellknown {
    keyring: Arc<Keyring>,
    discovery: Arc<Discovery>,
    cache_control: HeaderValue,
}

/// `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`, both
/// `Cache-Control: public, max-age=<jwks_max_age>, must-revalidate`.
pub fn routes(keyring: Arc<Keyring>, discovery: Discovery) -> Router {
    let cache_control = HeaderValue::from_str(&format!(
        "public, max-age={}, must-revalidate",
        keyring.jwks_max_age().as_secs()
    ))
    .unwrap_or(HeaderValue::from_static("no-cache"));
    Router::new()
        .route("/.well-known/jwks.json", get(jwks_handler))
        .route("/.well-known/openid-configuration", get(discovery_handler))
        .with_state(Wellknown {
            keyring,
            discovery: Arc::new(discovery),
            cache_control,
        })
}

/// `application/json`, as the large IdPs serve it (RFC 7517's `application/jwk-set+json` is
/// unknown to some clients' content checks).
async fn jwks_handler(State(w): State<Wellknown>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, w.cache_control.clone()),
        ],
        w.keyring.jwks_json(),
    )
        .into_response()
}

async fn discovery_handler(State(w): State<Wellknown>) -> Response {
    let doc = w.discovery.document(&w.keyring.algorithms());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, w.cache_control.clone()),
        ],
        doc.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
