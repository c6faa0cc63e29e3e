//! `veto inject`'s settings: the webhook's own listener, certificate and limits, and the named
//! profiles a pod picks with `veto.dev/config`. Read through the same layering as every other
//! command (defaults → TOML file → `VETO__SECTION__KEY`); every error names the key.

use crate::config::{bad, ConfigError, Http, Log, Shutdown};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file of `veto inject --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSettings {
    /// `/healthz`, `/readyz`, `/metrics` (plain HTTP, as the sidecar's).
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub log: Log,
    /// The webhook's own drain on SIGTERM: unready at once, keeps answering for `drain`.
    #[serde(default)]
    pub shutdown: Shutdown,
    pub inject: Inject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    /// The HTTPS listener kube-apiserver calls (the Service's targetPort).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) and PEM private key (PKCS#8, SEC1 or PKCS#1): a
    /// `kubernetes.io/tls` Secret's `tls.crt` / `tls.key`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often both files are re-read; a changed content is loaded (a broken one is
    /// logged, counted and ignored: the last good certificate stays).
    #[serde(default = "default_reload", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Largest request body read; larger → 413. kube-apiserver itself refuses requests over
    /// 3 MiB, so a review of a pod it accepted always fits.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Bound on a client's TLS handshake.
    #[serde(default = "default_handshake", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Bound on reading a request's headers, and again on reading its body.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The profile of pods without a `veto.dev/config` annotation.
    #[serde(default = "default_profile_name")]
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

/// Where the injected containers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Native sidecars (Kubernetes ≥ 1.29): `initContainers` with `restartPolicy: Always`,
    /// started before the app (veto first, then Envoy) and stopped after it (Envoy, then veto).
    #[default]
    Native,
    /// Ordinary `containers`, started and stopped together with the app (older clusters).
    Containers,
}

/// What one profile injects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub veto_image: String,
    /// ConfigMap in the pod's namespace holding `veto.toml` (mounted at /etc/veto).
    pub veto_config_map: String,
    pub envoy_image: String,
    /// ConfigMap in the pod's namespace holding `envoy.yaml` (mounted at /etc/envoy): the
    /// ext_authz filter → 127.0.0.1:<veto_grpc_port>, listener on `envoy_port`, /ready on
    /// `envoy_ready_port`, upstream 127.0.0.1:<the app's port>.
    pub envoy_config_map: String,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default = "default_veto_http_port")]
    pub veto_http_port: u16,
    #[serde(default = "default_envoy_port")]
    pub envoy_port: u16,
    #[serde(default = "default_envoy_ready_port")]
    pub envoy_ready_port: u16,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    #[serde(default = "default_veto_resources")]
    pub veto_resources: Resources,
    #[serde(default = "default_envoy_resources")]
    pub envoy_resources: Resources,
    /// The pod's `terminationGracePeriodSeconds` is raised to at least this (never lowered):
    /// the app's own shutdown, then Envoy's, then veto's `shutdown.grace` (10 s by default).
    #[serde(default = "default_termination_grace", with = "humantime_serde")]
    pub termination_grace: Duration,
    #[serde(default = "default_veto_uid")]
    pub veto_run_as_user: i64,
    #[serde(default = "default_envoy_uid")]
    pub envoy_run_as_user: i64,
}

/// A container's `resources` (quantities as Kubernetes writes them: `50m`, `64Mi`).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 8443).into()
}
fn default_reload() -> Duration {
    Duration::from_secs(10)
}
/// kube-apiserver's own request body limit (3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY
}
fn default_handshake() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_profile_name() -> String {
    "default".into()
}
fn default_veto_http_port() -> u16 {
    9192
}
fn default_envoy_port() -> u16 {
    8080
}
fn default_envoy_ready_port() -> u16 {
    9902
}
fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn res(cpu: &str, memory: &str, limit: &str) -> Resources {
    Resources {
        requests: BTreeMap::from([
            ("cpu".to_string(), cpu.to_string()),
            ("memory".to_string(), memory.to_string()),
        ]),
        limits: BTreeMap::from([("memory".to_string(), limit.to_string())]),
    }
}
fn default_veto_resources() -> Resources {
    res("50m", "64Mi", "256Mi")
}
fn default_envoy_resources() -> Resources {
    res("50m", "64Mi", "256Mi")
}
fn default_termination_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_veto_uid() -> i64 {
    65532
}
fn default_envoy_uid() -> i64 {
    101
}

/// The sidecar's default `shutdown.grace`; `termination_grace` must leave room above it.
const SIDECAR_GRACE: Duration = Duration::from_secs(10);

impl InjectSettings {
    pub fn load(path: &Path) -> Result<InjectSettings, ConfigError> {
        let s: InjectSettings = crate::config::layered(path, &[])?;
        s.validate()?;
        Ok(s)
    }

    pub fn from_toml(text: &str) -> Result<InjectSettings, ConfigError> {
        let s: InjectSettings = crate::config::from_toml_text(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let i = &self.inject;
        for (key, p) in [
            ("inject.cert_file", &i.cert_file),
            ("inject.key_file", &i.key_file),
        ] {
            if p.as_os_str().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        if i.reload_interval < Duration::from_millis(100) {
            return Err(bad("inject.reload_interval", "must be at least 100ms"));
        }
        if i.max_body_bytes < 64 * 1024 || i.max_body_bytes > 64 * 1024 * 1024 {
            return Err(bad(
                "inject.max_body_bytes",
                "must be between 65536 and 67108864",
            ));
        }
        if i.handshake_timeout.is_zero() {
            return Err(bad("inject.handshake_timeout", "must be positive"));
        }
        if i.request_timeout.is_zero() {
            return Err(bad("inject.request_timeout", "must be positive"));
        }
        if i.profiles.is_empty() {
            return Err(bad(
                "inject.profiles",
                "define at least one [inject.profiles.<name>]",
            ));
        }
        if !i.profiles.contains_key(&i.default_profile) {
            return Err(bad(
                "inject.default_profile",
                format!(
                    "{:?} is not a profile (known: {})",
                    i.default_profile,
                    self.profile_names().join(", ")
                ),
            ));
        }
        for (name, p) in &i.profiles {
            let k = |f: &str| format!("inject.profiles.{name}.{f}");
            if !valid_profile_name(name) {
                return Err(bad(
                    format!("inject.profiles.{name}"),
                    "a profile name is 1-63 characters of [a-z0-9-]",
                ));
            }
            for (f, v) in [
                ("veto_image", &p.veto_image),
                ("envoy_image", &p.envoy_image),
            ] {
                if v.trim().is_empty() || v.contains(char::is_whitespace) {
                    return Err(bad(k(f), "must be an image reference"));
                }
            }
            for (f, v) in [
                ("veto_config_map", &p.veto_config_map),
                ("envoy_config_map", &p.envoy_config_map),
            ] {
                if !valid_dns_subdomain(v) {
                    return Err(bad(k(f), "must be a ConfigMap name (DNS subdomain)"));
                }
            }
            if !matches!(
                p.image_pull_policy.as_str(),
                "Always" | "IfNotPresent" | "Never"
            ) {
                return Err(bad(k("image_pull_policy"), "Always, IfNotPresent or Never"));
            }
            let ports = [
                ("veto_http_port", p.veto_http_port),
                ("envoy_port", p.envoy_port),
                ("envoy_ready_port", p.envoy_ready_port),
            ];
            for (f, port) in ports {
                if port == 0 {
                    return Err(bad(k(f), "must be a port (1-65535)"));
                }
                if [
                    crate::inject::patch::VETO_GRPC_PORT,
                    crate::inject::patch::ENVOY_ADMIN_PORT,
                ]
                .contains(&port)
                {
                    return Err(bad(
                        k(f),
                        "9191 (veto's gRPC) and 9901 (Envoy's admin) are taken on loopback",
                    ));
                }
            }
            if ports[0].1 == ports[1].1 || ports[0].1 == ports[2].1 || ports[1].1 == ports[2].1 {
                return Err(bad(k("envoy_port"), "the three ports must differ"));
            }
            if p.termination_grace < SIDECAR_GRACE + Duration::from_secs(5) {
                return Err(bad(
                    k("termination_grace"),
                    "must be at least 15s: veto's shutdown.grace (10s) plus Envoy's and the app's stop",
                ));
            }
            for (f, r) in [
                ("veto_resources", &p.veto_resources),
                ("envoy_resources", &p.envoy_resources),
            ] {
                if let Some((n, v)) = r
                    .requests
                    .iter()
                    .chain(&r.limits)
                    .find(|(n, v)| n.is_empty() || !valid_quantity(v))
                {
                    return Err(bad(k(f), format!("{n} = {v:?} is not a quantity")));
                }
            }
            for (f, uid) in [
                ("veto_run_as_user", p.veto_run_as_user),
                ("envoy_run_as_user", p.envoy_run_as_user),
            ] {
                if uid <= 0 {
                    return Err(bad(k(f), "must be a non-root uid (> 0)"));
                }
            }
        }
        Ok(())
    }

    pub fn profile_names(&self) -> Vec<String> {
        self.inject.profiles.keys().cloned().collect()
    }
}

pub fn valid_profile_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A Kubernetes quantity, loosely: digits (with an optional fraction) and a known suffix.
fn valid_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
[inject]
cert_file = "/tls/tls.crt"
key_file = "/tls/tls.key"
[inject.profiles.default]
veto_image = "registry.example.com/veto:0.1.0"
veto_config_map = "veto-sidecar"
envoy_image = "envoyproxy/envoy:v1.40.0"
envoy_config_map = "veto-envoy"
"#;

    #[test]
    fn defaults() {
        let s = InjectSettings::from_toml(GOOD).unwrap();
        assert_eq!(s.inject.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(s.inject.max_body_bytes, 3 * 1024 * 1024);
        let p = &s.inject.profiles["default"];
        assert_eq!(p.placement, Placement::Native);
        assert_eq!(p.veto_http_port, 9192);
        assert_eq!(p.termination_grace, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("key_file = \"/tls/tls.key\"\n", ""), "key_file"),
            (
                format!("{GOOD}\n[inject.profiles.Bad]\nveto_image = \"a\"\nveto_config_map = \"a\"\nenvoy_image = \"b\"\nenvoy_config_map = \"b\""),
                "inject.profiles.Bad",
            ),
            (
                GOOD.replace("[inject.profiles.default]", "[inject.profiles.other]"),
                "inject.default_profile",
            ),
            (
                GOOD.replace("\"veto-sidecar\"", "\"Veto_Sidecar\""),
                "inject.profiles.default.veto_config_map",
            ),
            (
                format!("{GOOD}termination_grace = \"5s\"\n"),
                "inject.profiles.default.termination_grace",
            ),
            (
                format!("{GOOD}envoy_port = 9192\n"),
                "inject.profiles.default.envoy_port",
            ),
            (
                format!("{GOOD}veto_http_port = 9191\n"),
                "inject.profiles.default.veto_http_port",
            ),
            (
                format!("{GOOD}placement = \"sideways\"\n"),
                "placement",
            ),
            (
                format!("{GOOD}veto_resources = {{ requests = {{ cpu = \"lots\" }} }}\n"),
                "inject.profiles.default.veto_resources",
            ),
            (
                GOOD.replace("[inject]", "[inject]\nmax_body_bytes = 10"),
                "inject.max_body_bytes",
            ),
            (
                GOOD.replace("[inject]", "[inject]\nreload_interval = \"1ms\""),
                "inject.reload_interval",
            ),
            (GOOD.replace("[inject]", "[inject]\nbogus = 1"), "bogus"),
            ("[log]\nlevel = \"info\"\n".to_string(), "inject"),
        ];
        for (text, key) in cases {
            let err = InjectSettings::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["50m", "64Mi", "1", "0.5", "1Gi", "2k"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for no in ["", "m", "lots", "1.2.3", "5mi", "-1"] {
            assert!(!valid_quantity(no), "{no}");
        }
    }
}
