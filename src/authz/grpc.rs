//! `envoy.service.auth.v3.Authorization/Check`.
//!
//! allow → OK with identity headers (overwriting client-sent ones), optional removal of
//! `authorization`, and the verified claims as dynamic metadata; deny → a *successful* RPC
//! whose status is UNAUTHENTICATED / PERMISSION_DENIED / UNAVAILABLE with a denied HTTP
//! response; cannot decide → a gRPC error, so Envoy's `failure_mode_allow` governs.

use super::CheckMetrics;
use super::{render, Answers, Decider, Identity, Transport};
use crate::decision::{Credential, Decision, DenyCode, Verified};
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use envoy_types::pb::google::rpc;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// What the allow answers carry besides the decision (`authz.*` settings).
pub struct AllowShape {
    pub identity: Arc<Identity>,
    /// Remove `authorization` before the upstream.
    pub remove_authorization: bool,
    /// Envoy dynamic-metadata key under which verified claims are put ("" = top level).
    pub metadata_namespace: String,
}

pub struct AuthzService {
    decider: Arc<Decider>,
    shape: Arc<AllowShape>,
    metrics: CheckMetrics,
}

impl AuthzService {
    pub fn new(
        decider: Arc<Decider>,
        shape: Arc<AllowShape>,
        metrics: CheckMetrics,
    ) -> AuthzService {
        AuthzService {
            decider,
            shape,
            metrics,
        }
    }
}

/// The `authorization` header of the checked request, from `headers` (Envoy lowercases keys)
/// or, when Envoy sends raw headers, from `header_map`. Public for the fuzz targets (`fuzz/`).
pub fn credential(req: &CheckRequest) -> Credential<'_> {
    let Some(http) = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return Credential::Absent;
    };
    if let Some(v) = http.headers.get("authorization") {
        return Credential::Authorization(v);
    }
    if let Some((_, v)) = http
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        return Credential::Authorization(v);
    }
    let Some(map) = http.header_map.as_ref() else {
        return Credential::Absent;
    };
    let mut found = map
        .headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case("authorization"));
    match (found.next(), found.next()) {
        (None, _) => Credential::Absent,
        (Some(_), Some(_)) => Credential::Ambiguous,
        (Some(h), None) if !h.value.is_empty() => Credential::Authorization(&h.value),
        (Some(h), None) => match std::str::from_utf8(&h.raw_value) {
            Ok(v) => Credential::Authorization(v),
            Err(_) => Credential::NotText,
        },
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: action.into(),
        keep_empty_value: false,
    }
}

fn status(code: tonic::Code, message: &str) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

/// serde_json → google.protobuf.Value (depth is already bounded by the JSON parser).
fn pb_value(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(pb_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

impl AuthzService {
    /// The allow answer for a verified token (built once per cached token).
    fn allow_response(&self, v: &Verified<Answers>) -> CheckResponse {
        let mut ok = OkHttpResponse::default();
        for (h, value) in self.shape.identity.headers(&v.claims) {
            match value {
                Some(value) => ok.headers.push(header(
                    h,
                    &value,
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                )),
                None => ok.headers_to_remove.push(h.to_string()),
            }
        }
        if self.shape.remove_authorization {
            ok.headers_to_remove.push("authorization".into());
        }
        let claims = Struct {
            fields: v
                .claims
                .all
                .iter()
                .map(|(k, v)| (k.clone(), pb_value(v)))
                .collect(),
        };
        let ns = &self.shape.metadata_namespace;
        let metadata = if ns.is_empty() {
            claims
        } else {
            Struct {
                fields: [(
                    ns.clone(),
                    PbValue {
                        kind: Some(Kind::StructValue(claims)),
                    },
                )]
                .into_iter()
                .collect(),
            }
        };
        CheckResponse {
            status: status(tonic::Code::Ok, ""),
            http_response: Some(HttpResponse::OkResponse(ok)),
            dynamic_metadata: Some(metadata),
        }
    }

    pub fn respond(&self, d: &Decision<Answers>) -> Result<CheckResponse, Status> {
        match d {
            Decision::Allow(v) => Ok(v
                .answers
                .grpc
                .get_or_init(|| self.allow_response(v))
                .clone()),
            Decision::Deny(den) => {
                let code = match den.code {
                    DenyCode::Unauthenticated => tonic::Code::Unauthenticated,
                    DenyCode::PermissionDenied => tonic::Code::PermissionDenied,
                    DenyCode::Unavailable => tonic::Code::Unavailable,
                };
                let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
                let mut headers = vec![
                    header("www-authenticate", &render::challenge(den), overwrite),
                    header("content-type", "application/json", overwrite),
                    header("cache-control", "no-store", overwrite),
                ];
                if let Some(after) = render::retry_after(den.code) {
                    headers.push(header("retry-after", after, overwrite));
                }
                let denied = DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(render::http_status(den.code)),
                    }),
                    headers,
                    body: render::body(den),
                };
                Ok(CheckResponse {
                    status: status(code, den.reason.reason()),
                    http_response: Some(HttpResponse::DeniedResponse(denied)),
                    dynamic_metadata: None,
                })
            }
            Decision::Error(_) => Err(Status::unavailable("authorization temporarily unavailable")),
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let d = self.decider.decide(credential(&req)).await;
        self.metrics.observe(Transport::Grpc, started, &d);
        self.respond(&d).map(Response::new)
    }
}
