//! PURE: what to do with one pod, and the RFC 6902 JSON Patch that does it. No I/O, no
//! transport: a pod (`serde_json::Value`, as kube-apiserver sends it after defaulting) and the
//! settings in, a [`Verdict`] out.
//!
//! The patch only ever uses `add`, and is computed against the pod it was asked about:
//! a missing `initContainers`, `volumes`, `annotations` or `labels` is added whole, an
//! existing one is appended to (`/-`, or an index for the sidecars that go first), and every
//! map key is escaped as a JSON Pointer (`/` → `~1`, `~` → `~0`).

use super::config::{Inject, Placement, Profile, Resources};
use serde_json::{json, Map, Value};

/// `"true"` opts a pod in (on `/mutate`), `"false"` opts it out (on `/mutate/namespace`).
/// Read from the pod's annotations, else its labels (the webhook's objectSelector can only
/// see labels).
pub const INJECT: &str = "veto.dev/inject";
/// The profile (`[inject.profiles.<name>]`) a pod wants; default `inject.default_profile`.
pub const CONFIG: &str = "veto.dev/config";
/// Written by the patch (the injector's version): a pod carrying it is never injected again.
pub const INJECTED: &str = "veto.dev/injected";
/// The label k8s/podmonitor.yaml selects, added to injected pods.
pub const MONITOR_LABEL: &str = "veto/sidecar";

/// The injected containers' and volumes' names.
pub const VETO: &str = "veto";
pub const ENVOY: &str = "envoy";
pub const VETO_VOLUME: &str = "veto-config";
pub const ENVOY_VOLUME: &str = "veto-envoy-config";
/// Port names the probes, the Service and k8s/podmonitor.yaml refer to.
pub const VETO_HTTP_PORT_NAME: &str = "veto-http";
pub const ENVOY_PORT_NAME: &str = "envoy-http";
pub const ENVOY_READY_PORT_NAME: &str = "envoy-ready";
/// Loopback-only ports, never declared, that the app must not use either.
pub const VETO_GRPC_PORT: u16 = 9191;
pub const ENVOY_ADMIN_PORT: u16 = 9901;

/// How the webhook entry that called us selected the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// `/mutate`: only pods that say `veto.dev/inject: "true"`.
    OptIn,
    /// `/mutate/namespace`: the namespace opted in (`veto.dev/injection=enabled`); every pod
    /// unless it says `veto.dev/inject: "false"`.
    Namespace,
}

/// Why a pod is left alone (allowed, no patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It already has a `veto` container or the `veto.dev/injected` annotation.
    AlreadyInjected,
    /// `/mutate` and the pod did not opt in.
    NotSelected,
    /// `veto.dev/inject: "false"`.
    OptedOut,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::AlreadyInjected => "already_injected",
            Skip::NotSelected => "not_selected",
            Skip::OptedOut => "opted_out",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Inject {
        profile: String,
        patch: Vec<Value>,
    },
    Skip(Skip),
    /// `allowed: false` with this message (status code 400): the pod asked for something
    /// that cannot be given (an unknown profile, a name or port the sidecars need).
    Refuse(String),
}

/// Decides about `pod` and computes its patch.
pub fn decide(pod: &Value, selection: Selection, cfg: &Inject) -> Verdict {
    let Some(pod) = pod.as_object() else {
        return Verdict::Refuse("the object is not a Pod (not a JSON object)".into());
    };
    let metadata = pod.get("metadata").and_then(Value::as_object);
    let annotations = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    let labels = metadata
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object);
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Verdict::Refuse("the Pod has no spec".into());
    };
    let Some(containers) = spec.get("containers").and_then(Value::as_array) else {
        return Verdict::Refuse("the Pod has no spec.containers".into());
    };
    let init = match spec.get("initContainers") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(a),
        Some(_) => return Verdict::Refuse("spec.initContainers is not an array".into()),
    };
    let all: Vec<&Value> = containers
        .iter()
        .chain(init.into_iter().flatten())
        .collect();

    let already = annotations.is_some_and(|a| a.contains_key(INJECTED))
        || all
            .iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(VETO));
    if already {
        return Verdict::Skip(Skip::AlreadyInjected);
    }

    let wish = annotations
        .and_then(|a| a.get(INJECT))
        .or_else(|| labels.and_then(|l| l.get(INJECT)));
    let wish = match wish {
        None => None,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(other) => {
            return Verdict::Refuse(format!(
                "{INJECT} must be \"true\" or \"false\", not {}",
                short(other)
            ))
        }
    };
    match (selection, wish) {
        (_, Some(false)) => return Verdict::Skip(Skip::OptedOut),
        (Selection::OptIn, None) => return Verdict::Skip(Skip::NotSelected),
        _ => {}
    }

    let profile_name = match annotations.and_then(|a| a.get(CONFIG)) {
        None => cfg.default_profile.as_str(),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Verdict::Refuse(format!(
                "annotation {CONFIG} must be a string, not {}",
                short(other)
            ))
        }
    };
    let Some(profile) = cfg.profiles.get(profile_name) else {
        let known: Vec<&str> = cfg.profiles.keys().map(String::as_str).collect();
        return Verdict::Refuse(format!(
            "annotation {CONFIG}: unknown profile {}; known profiles: {}",
            short(&Value::String(profile_name.to_string())),
            known.join(", ")
        ));
    };

    if let Some(why) = conflicts(&all, spec, profile) {
        return Verdict::Refuse(format!("cannot inject profile {profile_name:?}: {why}"));
    }

    let mut patch = Vec::new();
    let sidecars = [veto_container(profile), envoy_container(profile)];
    match profile.placement {
        Placement::Native => match init {
            None => patch.push(add("/spec/initContainers", Value::Array(sidecars.to_vec()))),
            Some(_) => {
                // first, in start order: veto, then Envoy, then the pod's own init containers
                for (i, c) in sidecars.into_iter().enumerate() {
                    patch.push(add(&format!("/spec/initContainers/{i}"), c));
                }
            }
        },
        Placement::Containers => {
            for c in sidecars {
                patch.push(add("/spec/containers/-", c));
            }
        }
    }
    let volumes = [
        volume(VETO_VOLUME, &profile.veto_config_map),
        volume(ENVOY_VOLUME, &profile.envoy_config_map),
    ];
    match spec.get("volumes") {
        Some(Value::Array(_)) => {
            for v in volumes {
                patch.push(add("/spec/volumes/-", v));
            }
        }
        _ => patch.push(add("/spec/volumes", Value::Array(volumes.to_vec()))),
    }
    let grace = profile.termination_grace.as_secs();
    let current = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64);
    if current.is_none_or(|g| g < grace) {
        // `add` of an existing member replaces it (RFC 6902 §4.1)
        patch.push(add("/spec/terminationGracePeriodSeconds", json!(grace)));
    }
    let version = env!("CARGO_PKG_VERSION");
    match metadata {
        None => patch.push(add(
            "/metadata",
            json!({"annotations": {INJECTED: version}, "labels": {MONITOR_LABEL: "enabled"}}),
        )),
        Some(m) => {
            add_member(
                &mut patch,
                "/metadata",
                m,
                "annotations",
                INJECTED,
                json!(version),
            );
            add_member(
                &mut patch,
                "/metadata",
                m,
                "labels",
                MONITOR_LABEL,
                json!("enabled"),
            );
        }
    }
    Verdict::Inject {
        profile: profile_name.to_string(),
        patch,
    }
}

/// Escapes one reference token of a JSON Pointer (RFC 6901 §3): `~` → `~0`, `/` → `~1`.
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// `add` of `key: value` into the map `parent.<map>`: the whole map when it is absent (or
/// null), one member otherwise.
fn add_member(
    patch: &mut Vec<Value>,
    parent_ptr: &str,
    parent: &Map<String, Value>,
    map: &str,
    key: &str,
    value: Value,
) {
    match parent.get(map) {
        Some(Value::Object(_)) => patch.push(add(
            &format!("{parent_ptr}/{}/{}", escape(map), escape(key)),
            value,
        )),
        _ => {
            let mut m = Map::new();
            m.insert(key.to_string(), value);
            patch.push(add(
                &format!("{parent_ptr}/{}", escape(map)),
                Value::Object(m),
            ))
        }
    }
}

/// A name, volume or declared port of the pod that the sidecars need.
fn conflicts(all: &[&Value], spec: &Map<String, Value>, p: &Profile) -> Option<String> {
    for c in all {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        if name == ENVOY {
            return Some(format!("the pod already has a container named {ENVOY:?}"));
        }
        let ports = c.get("ports").and_then(Value::as_array);
        for port in ports.into_iter().flatten() {
            let pname = port.get("name").and_then(Value::as_str);
            if let Some(n) = pname.filter(|n| {
                [VETO_HTTP_PORT_NAME, ENVOY_PORT_NAME, ENVOY_READY_PORT_NAME].contains(n)
            }) {
                return Some(format!(
                    "container {name:?} already declares a port named {n:?}"
                ));
            }
            let number = port.get("containerPort").and_then(Value::as_u64);
            let taken = [
                (p.veto_http_port, "veto's HTTP (veto_http_port)"),
                (p.envoy_port, "Envoy's listener (envoy_port)"),
                (p.envoy_ready_port, "Envoy's readiness (envoy_ready_port)"),
                (VETO_GRPC_PORT, "veto's gRPC on loopback"),
                (ENVOY_ADMIN_PORT, "Envoy's admin on loopback"),
            ];
            if let Some((n, what)) = taken.iter().find(|(n, _)| number == Some(u64::from(*n))) {
                return Some(format!(
                    "container {name:?} declares port {n}, which is {what}; the app must listen elsewhere (on 127.0.0.1, behind Envoy)"
                ));
            }
        }
    }
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        let n = v.get("name").and_then(Value::as_str);
        if let Some(n) = n.filter(|n| [VETO_VOLUME, ENVOY_VOLUME].contains(n)) {
            return Some(format!("the pod already has a volume named {n:?}"));
        }
    }
    None
}

/// A short, printable rendering of a value for a refusal message (never the whole object).
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 64 {
        let cut: String = s.chars().take(64).collect();
        format!("{cut}…")
    } else {
        s
    }
}

fn resources(r: &Resources) -> Value {
    let mut m = Map::new();
    if !r.requests.is_empty() {
        m.insert("requests".into(), json!(r.requests));
    }
    if !r.limits.is_empty() {
        m.insert("limits".into(), json!(r.limits));
    }
    Value::Object(m)
}

fn security_context(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    })
}

fn http_probe(path: &str, port: &str, period: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 1
    })
}

fn native(c: &mut Value, p: &Profile) {
    if p.placement == Placement::Native {
        if let Some(m) = c.as_object_mut() {
            m.insert("restartPolicy".into(), json!("Always"));
        }
    }
}

/// The veto sidecar, as in k8s/base/sidecar/deployment.yaml: its listeners pinned by environment
/// (gRPC on loopback for Envoy, HTTP on the pod IP for kubelet and Prometheus) whatever the
/// ConfigMap says, so the probes and Envoy's cluster always match.
fn veto_container(p: &Profile) -> Value {
    let mut c = json!({
        "name": VETO,
        "image": p.veto_image,
        "imagePullPolicy": p.image_pull_policy,
        "args": ["sidecar", "--config", "/etc/veto/veto.toml"],
        "env": [
            {"name": "VETO__GRPC__LISTEN", "value": format!("127.0.0.1:{VETO_GRPC_PORT}")},
            {"name": "VETO__HTTP__LISTEN", "value": format!("0.0.0.0:{}", p.veto_http_port)}
        ],
        "ports": [{"name": VETO_HTTP_PORT_NAME, "containerPort": p.veto_http_port, "protocol": "TCP"}],
        // alive once it serves HTTP; JWKS fetch and replay may take a while
        "startupProbe": http_probe("/healthz", VETO_HTTP_PORT_NAME, 1, 30),
        "livenessProbe": http_probe("/healthz", VETO_HTTP_PORT_NAME, 10, 3),
        // keys loaded, replay done, feed fresh
        "readinessProbe": http_probe("/readyz", VETO_HTTP_PORT_NAME, 2, 2),
        "resources": resources(&p.veto_resources),
        "securityContext": security_context(p.veto_run_as_user),
        "volumeMounts": [{"name": VETO_VOLUME, "mountPath": "/etc/veto", "readOnly": true}],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    native(&mut c, p);
    c
}

/// Envoy with the ext_authz filter (its bootstrap is the profile's ConfigMap).
fn envoy_container(p: &Profile) -> Value {
    let mut c = json!({
        "name": ENVOY,
        "image": p.envoy_image,
        "imagePullPolicy": p.image_pull_policy,
        "args": ["-c", "/etc/envoy/envoy.yaml", "--log-level", "info"],
        "ports": [
            {"name": ENVOY_PORT_NAME, "containerPort": p.envoy_port, "protocol": "TCP"},
            {"name": ENVOY_READY_PORT_NAME, "containerPort": p.envoy_ready_port, "protocol": "TCP"}
        ],
        // as a native sidecar, the app starts only once Envoy listens
        "startupProbe": {"tcpSocket": {"port": ENVOY_PORT_NAME}, "periodSeconds": 1, "failureThreshold": 30},
        "livenessProbe": {"tcpSocket": {"port": ENVOY_PORT_NAME}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": http_probe("/ready", ENVOY_READY_PORT_NAME, 5, 2),
        "resources": resources(&p.envoy_resources),
        "securityContext": security_context(p.envoy_run_as_user),
        "volumeMounts": [{"name": ENVOY_VOLUME, "mountPath": "/etc/envoy", "readOnly": true}],
        "terminationMessagePolicy": "FallbackToLogsOnError"
    });
    native(&mut c, p);
    c
}

fn volume(name: &str, config_map: &str) -> Value {
    json!({"name": name, "configMap": {"name": config_map}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::config::InjectSettings;

    fn cfg(extra: &str) -> Inject {
        let text = format!(
            r#"
[inject]
cert_file = "/tls/tls.crt"
key_file = "/tls/tls.key"
[inject.profiles.default]
veto_image = "veto:1"
veto_config_map = "veto-sidecar"
envoy_image = "envoy:1"
envoy_config_map = "veto-envoy"
{extra}
[inject.profiles.strict]
veto_image = "veto:1"
veto_config_map = "veto-strict"
envoy_image = "envoy:1"
envoy_config_map = "veto-envoy"
"#
        );
        InjectSettings::from_toml(&text).unwrap().inject
    }

    fn pod(annotations: Option<Value>) -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "app-", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "ports": [{"containerPort": 8081}]}]}
        });
        if let Some(a) = annotations {
            p["metadata"]["annotations"] = a;
        }
        p
    }

    fn ops(v: &Verdict) -> &Vec<Value> {
        match v {
            Verdict::Inject { patch, .. } => patch,
            other => panic!("not injected: {other:?}"),
        }
    }

    fn paths(v: &Verdict) -> Vec<String> {
        ops(v)
            .iter()
            .map(|o| o["path"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn escapes_pointer_tokens() {
        assert_eq!(escape("veto.dev/injected"), "veto.dev~1injected");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(escape("~1"), "~01");
    }

    #[test]
    fn bare_pod_gets_whole_arrays_and_maps() {
        let v = decide(&pod(None), Selection::Namespace, &cfg(""));
        assert_eq!(
            paths(&v),
            [
                "/spec/initContainers",
                "/spec/volumes",
                "/spec/terminationGracePeriodSeconds",
                "/metadata/annotations",
                "/metadata/labels"
            ]
        );
        let p = ops(&v);
        let init = p[0]["value"].as_array().unwrap();
        assert_eq!(init[0]["name"], "veto");
        assert_eq!(init[1]["name"], "envoy");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(init[0]["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(p[1]["value"][0]["configMap"]["name"], "veto-sidecar");
        assert_eq!(p[2]["value"], 30);
        assert_eq!(p[3]["value"][INJECTED], env!("CARGO_PKG_VERSION"));
        assert_eq!(p[4]["value"][MONITOR_LABEL], "enabled");
    }

    #[test]
    fn existing_arrays_and_maps_are_appended_to() {
        let mut p = pod(Some(json!({"veto.dev/inject": "true", "a/b~c": "x"})));
        p["metadata"]["labels"] = json!({"app": "shop"});
        p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
        p["spec"]["terminationGracePeriodSeconds"] = json!(60);
        let v = decide(&p, Selection::OptIn, &cfg(""));
        assert_eq!(
            paths(&v),
            [
                "/spec/initContainers/0",
                "/spec/initContainers/1",
                "/spec/volumes/-",
                "/spec/volumes/-",
                "/metadata/annotations/veto.dev~1injected",
                "/metadata/labels/veto~1sidecar"
            ],
            "a longer grace is kept"
        );
    }

    #[test]
    fn containers_placement_appends_to_containers() {
        let v = decide(
            &pod(None),
            Selection::Namespace,
            &cfg("placement = \"containers\""),
        );
        let p = ops(&v);
        assert_eq!(p[0]["path"], "/spec/containers/-");
        assert_eq!(p[1]["path"], "/spec/containers/-");
        assert!(p[0]["value"].get("restartPolicy").is_none());
    }

    #[test]
    fn selection_and_idempotence() {
        let c = cfg("");
        assert_eq!(
            decide(&pod(None), Selection::OptIn, &c),
            Verdict::Skip(Skip::NotSelected)
        );
        let out = pod(Some(json!({"veto.dev/inject": "false"})));
        assert_eq!(
            decide(&out, Selection::Namespace, &c),
            Verdict::Skip(Skip::OptedOut)
        );
        let mut by_label = pod(None);
        by_label["metadata"]["labels"] = json!({"veto.dev/inject": "true"});
        assert!(matches!(
            decide(&by_label, Selection::OptIn, &c),
            Verdict::Inject { .. }
        ));
        let done = pod(Some(json!({INJECTED: "0.1.0", "veto.dev/inject": "true"})));
        assert_eq!(
            decide(&done, Selection::OptIn, &c),
            Verdict::Skip(Skip::AlreadyInjected)
        );
        let mut by_hand = pod(Some(json!({"veto.dev/inject": "true"})));
        by_hand["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "veto", "image": "veto:1"}));
        assert_eq!(
            decide(&by_hand, Selection::OptIn, &c),
            Verdict::Skip(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn profiles_by_annotation() {
        let c = cfg("");
        let strict = pod(Some(json!({CONFIG: "strict"})));
        match decide(&strict, Selection::Namespace, &c) {
            Verdict::Inject { profile, patch } => {
                assert_eq!(profile, "strict");
                assert_eq!(patch[1]["value"][0]["configMap"]["name"], "veto-strict");
            }
            other => panic!("{other:?}"),
        }
        let unknown = pod(Some(json!({CONFIG: "nope"})));
        let Verdict::Refuse(why) = decide(&unknown, Selection::Namespace, &c) else {
            panic!("not refused")
        };
        assert!(why.contains(CONFIG) && why.contains("\"nope\""), "{why}");
        assert!(why.contains("default, strict"), "{why}");
        let odd = pod(Some(json!({INJECT: "maybe"})));
        assert!(matches!(
            decide(&odd, Selection::Namespace, &c),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn conflicts_and_malformed_pods_are_refused() {
        let c = cfg("");
        let mut on_8080 = pod(None);
        on_8080["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}]);
        let Verdict::Refuse(why) = decide(&on_8080, Selection::Namespace, &c) else {
            panic!()
        };
        assert!(why.contains("8080"), "{why}");
        let mut vol = pod(None);
        vol["spec"]["volumes"] = json!([{"name": "veto-config", "emptyDir": {}}]);
        assert!(matches!(
            decide(&vol, Selection::Namespace, &c),
            Verdict::Refuse(_)
        ));
        for bad in [json!(1), json!({"metadata": {}}), json!({"spec": {}})] {
            assert!(matches!(
                decide(&bad, Selection::Namespace, &c),
                Verdict::Refuse(_)
            ));
        }
        // null maps count as absent
        let mut nulls = pod(None);
        nulls["metadata"]["annotations"] = Value::Null;
        nulls["spec"]["volumes"] = Value::Null;
        assert_eq!(
            paths(&decide(&nulls, Selection::Namespace, &c))[1..2],
            ["/spec/volumes"]
        );
    }
}
