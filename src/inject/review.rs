//! PURE: one AdmissionReview (admission.k8s.io/v1) in, the HTTP status and body out.
//!
//! - Not JSON, not an `admission.k8s.io/v1` `AdmissionReview`, or no `request.uid` → HTTP 400
//!   with `{"error": ...}` (there is no uid to answer to).
//! - A review for anything but a Pod `CREATE` (another kind, a subresource, another
//!   operation) → `allowed: true`, no patch: not ours, left untouched.
//! - A Pod the webhook cannot inject as asked (unknown profile, malformed, conflicts) →
//!   `allowed: false` with `status.code` 400 and a message saying why.
//! - Otherwise `allowed: true`, with a base64 `JSONPatch` when something is injected.

use super::config::Inject;
use super::patch::{decide, Selection, Verdict};
use base64::Engine;
use serde_json::{json, Value};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What became of a review: the `result` label of `veto_inject_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    AlreadyInjected,
    NotSelected,
    OptedOut,
    /// Not a Pod CREATE.
    Ignored,
    /// `allowed: false`.
    Refused,
    /// HTTP 400: not a review.
    Malformed,
    /// HTTP 413.
    TooLarge,
    /// HTTP 408: the body did not arrive within `inject.request_timeout`.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Injected,
        Outcome::AlreadyInjected,
        Outcome::NotSelected,
        Outcome::OptedOut,
        Outcome::Ignored,
        Outcome::Refused,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::NotSelected => "not_selected",
            Outcome::OptedOut => "opted_out",
            Outcome::Ignored => "ignored",
            Outcome::Refused => "refused",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::Timeout => "timeout",
        }
    }
}

/// The answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub outcome: Outcome,
    /// For the log: namespace, name (or generateName), uid, profile, refusal.
    pub detail: Detail,
}

#[derive(Debug, Default, Clone)]
pub struct Detail {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub profile: String,
    pub message: String,
}

/// An HTTP error without a review (400, 408, 413).
pub fn http_error(status: u16, outcome: Outcome, message: &str) -> Answer {
    Answer {
        status,
        body: json!({"error": message}),
        outcome,
        detail: Detail {
            message: message.to_string(),
            ..Detail::default()
        },
    }
}

/// Answers the review in `body` for a webhook entry with `selection`.
pub fn answer(body: &[u8], selection: Selection, cfg: &Inject) -> Answer {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return http_error(
                400,
                Outcome::Malformed,
                &format!("the body is not JSON ({e}); expected an {API_VERSION} AdmissionReview"),
            )
        }
    };
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
        return http_error(
            400,
            Outcome::Malformed,
            &format!(
                "not an {API_VERSION} AdmissionReview (apiVersion {}, kind {}); this webhook speaks admissionReviewVersions [\"v1\"] only",
                shown(api_version),
                shown(kind)
            ),
        );
    }
    let Some(request) = review.get("request").and_then(Value::as_object) else {
        return http_error(
            400,
            Outcome::Malformed,
            "the AdmissionReview has no request object",
        );
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(u) if !u.is_empty() && u.len() <= 256 => u.to_string(),
        _ => {
            return http_error(
                400,
                Outcome::Malformed,
                "the AdmissionReview's request has no uid",
            )
        }
    };
    let str_at = |v: Option<&Value>, key: &str| {
        v.and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let field = |key: &str| {
        request
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut detail = Detail {
        uid: uid.clone(),
        namespace: field("namespace"),
        ..Detail::default()
    };
    let gvk = request.get("kind");
    let (group, version, kind) = (
        str_at(gvk, "group"),
        str_at(gvk, "version"),
        str_at(gvk, "kind"),
    );
    let resource = str_at(request.get("resource"), "resource");
    let sub = field("subResource");
    let operation = field("operation");
    if kind.is_empty() || operation.is_empty() {
        return refuse(
            &uid,
            detail,
            "the AdmissionReview's request lacks kind or operation",
        );
    }
    let is_pod = group.is_empty() && version == "v1" && kind == "Pod" && resource == "pods";
    if !is_pod || !sub.is_empty() || operation != "CREATE" {
        detail.message = format!("{group}/{version} {kind} {resource}/{sub} {operation}");
        return allowed(&uid, None, Outcome::Ignored, detail);
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return refuse(&uid, detail, "the review of a Pod CREATE has no object");
    };
    let meta = pod.get("metadata");
    detail.name = match str_at(meta, "name") {
        n if n.is_empty() => format!("{}*", str_at(meta, "generateName")),
        n => n,
    };
    if detail.namespace.is_empty() {
        detail.namespace = str_at(meta, "namespace");
    }
    match decide(pod, selection, cfg) {
        Verdict::Inject { profile, patch } => {
            detail.profile = profile;
            let bytes = serde_json::to_vec(&Value::Array(patch)).unwrap_or_default();
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            allowed(&uid, Some(b64), Outcome::Injected, detail)
        }
        Verdict::Skip(s) => {
            let outcome = match s {
                super::patch::Skip::AlreadyInjected => Outcome::AlreadyInjected,
                super::patch::Skip::NotSelected => Outcome::NotSelected,
                super::patch::Skip::OptedOut => Outcome::OptedOut,
            };
            allowed(&uid, None, outcome, detail)
        }
        Verdict::Refuse(why) => refuse(&uid, detail, &why),
    }
}

fn shown(v: Option<&str>) -> String {
    match v {
        None => "missing".into(),
        Some(s) => {
            let cut: String = s.chars().take(64).collect();
            format!("{cut:?}")
        }
    }
}

fn allowed(uid: &str, patch: Option<String>, outcome: Outcome, detail: Detail) -> Answer {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(p) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(p);
    }
    Answer {
        status: 200,
        body: json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}),
        outcome,
        detail,
    }
}

fn refuse(uid: &str, mut detail: Detail, message: &str) -> Answer {
    detail.message = message.to_string();
    Answer {
        status: 200,
        body: json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "response": {
                "uid": uid,
                "allowed": false,
                "status": {"code": 400, "reason": "BadRequest", "message": format!("veto inject: {message}")}
            }
        }),
        outcome: Outcome::Refused,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::config::InjectSettings;

    fn cfg() -> Inject {
        InjectSettings::from_toml(
            r#"
[inject]
cert_file = "c"
key_file = "k"
[inject.profiles.default]
veto_image = "veto:1"
veto_config_map = "veto-sidecar"
envoy_image = "envoy:1"
envoy_config_map = "veto-envoy"
"#,
        )
        .unwrap()
        .inject
    }

    fn review(kind: &str, resource: &str, op: &str, object: Value) -> Vec<u8> {
        json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
                        "resource": {"group": "", "version": "v1", "resource": resource},
                        "operation": op, "namespace": "shop", "object": object}
        })
        .to_string()
        .into_bytes()
    }

    fn pod() -> Value {
        json!({"metadata": {"generateName": "app-"}, "spec": {"containers": [{"name": "app"}]}})
    }

    #[test]
    fn injects_with_a_base64_patch() {
        let a = answer(
            &review("Pod", "pods", "CREATE", pod()),
            Selection::Namespace,
            &cfg(),
        );
        assert_eq!((a.status, a.outcome), (200, Outcome::Injected));
        let r = &a.body["response"];
        assert_eq!(r["uid"], "u-1");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(ops[0]["op"], "add");
        assert_eq!(a.detail.name, "app-*");
        assert_eq!(a.detail.namespace, "shop");
    }

    #[test]
    fn other_kinds_and_operations_are_left_alone() {
        for (kind, res, op) in [
            ("Deployment", "deployments", "CREATE"),
            ("Pod", "pods", "UPDATE"),
            ("Pod", "pods", "DELETE"),
        ] {
            let a = answer(&review(kind, res, op, pod()), Selection::Namespace, &cfg());
            assert_eq!(
                (a.status, a.outcome),
                (200, Outcome::Ignored),
                "{kind} {op}"
            );
            assert_eq!(a.body["response"]["allowed"], true);
            assert!(a.body["response"].get("patch").is_none());
        }
    }

    #[test]
    fn malformed_reviews_are_400_or_refused() {
        let c = cfg();
        for body in [
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#.to_vec(),
            br#"[1,2]"#.to_vec(),
        ] {
            let a = answer(&body, Selection::Namespace, &c);
            assert_eq!((a.status, a.outcome), (400, Outcome::Malformed));
            assert!(a.body["error"].as_str().unwrap().contains("AdmissionReview"));
        }
        let a = answer(
            &review("Pod", "pods", "CREATE", json!("a string")),
            Selection::Namespace,
            &c,
        );
        assert_eq!((a.status, a.outcome), (200, Outcome::Refused));
        assert_eq!(a.body["response"]["uid"], "u-1");
        assert_eq!(a.body["response"]["allowed"], false);
        assert_eq!(a.body["response"]["status"]["code"], 400);
    }
}
