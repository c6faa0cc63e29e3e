//! A do-nothing Envoy ext_authz v3 gRPC server: allows every request without looking at it.
//! It is the baseline `scripts/bench-envoy.sh` measures veto against, so it is served the
//! same way veto's gRPC listener is (tonic on a multi-threaded tokio runtime, TCP_NODELAY),
//! and the difference between the two is the cost of deciding.
//!
//! With `--rich` it answers every check with a fixed allow shaped like veto's (an `x-user-id`
//! header and the claims of a typical token as dynamic metadata), still deciding nothing:
//! the difference between the two noop modes is what the richer answer costs (encoding here,
//! and above all Envoy applying it), apart from veto's own work.
//!
//! ```text
//! cargo run --release --example noop_authz -- 127.0.0.1:9191 [--rich]
//! ```
//! Prints `listening on <addr>` once bound; stops on SIGTERM or Ctrl-C.

use anyhow::Context as _;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use envoy_types::pb::google::rpc;
use prost::Message;
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

/// The answer to every check.
struct Noop(CheckResponse);

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

/// An allow: bare, or `rich` like veto's answer for the token `scripts/bench-envoy.sh` mints.
fn allow(rich: bool) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    let mut metadata = None;
    if rich {
        #[allow(deprecated)] // `append` is deprecated in favour of `append_action`
        ok.headers.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-user-id".into(),
                value: "user-1".into(),
                raw_value: Vec::new(),
            }),
            append: None,
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            keep_empty_value: false,
        });
        let s = |v: &str| Kind::StringValue(v.into());
        let claims = [
            ("iss", s("https://bench.veto.local")),
            ("aud", s("bench")),
            ("sub", s("user-1")),
            ("sid", s("session-1")),
            ("jti", s("token-1")),
            ("iat", Kind::NumberValue(1.8e9)),
            ("exp", Kind::NumberValue(1.8e9 + 600.0)),
        ];
        let fields = claims
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value { kind: Some(v) }))
            .collect();
        metadata = Some(Struct {
            fields: [(
                "veto".to_string(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields })),
                },
            )]
            .into_iter()
            .collect(),
        });
    }
    CheckResponse {
        status: Some(rpc::Status {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::OkResponse(ok)),
        dynamic_metadata: metadata,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: noop_authz [ADDR:PORT] [--rich]";
    let mut addr: SocketAddr = ([127, 0, 0, 1], 9191).into();
    let mut rich = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--rich" => rich = true,
            a => addr = a.parse().context(usage)?,
        }
    }
    let answer = allow(rich);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    println!(
        "listening on {} (answer: {} bytes)",
        listener.local_addr()?,
        answer.encoded_len()
    );
    tonic::transport::Server::builder()
        .add_service(AuthorizationServer::new(Noop(answer)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            veto::shutdown_signal(),
        )
        .await
        .context("gRPC server failed")
}
