//! `veto inject --config FILE`: the sidecar-injection admission webhook.

use super::{cancel_on_signal, other, usage, Failure};
use std::path::Path;
use tokio::net::TcpListener;
use veto::inject::config::InjectSettings;

pub async fn run(config: &Path, check: bool) -> Result<(), Failure> {
    let s = InjectSettings::load(config).map_err(|e| usage(e.to_string()))?;
    // the certificate belongs to the configuration: a pair that does not load is exit 64
    let webhook = veto::inject::Webhook::build(&s)
        .map_err(|e| usage(format!("invalid configuration: {e}")))?;
    if check {
        println!("{}: ok", config.display());
        return Ok(());
    }
    veto::telemetry::init(&s.log);
    let tls = TcpListener::bind(s.inject.listen).await.map_err(|e| {
        usage(format!(
            "inject.listen: cannot bind {}: {e}",
            s.inject.listen
        ))
    })?;
    let http = TcpListener::bind(s.http.listen)
        .await
        .map_err(|e| usage(format!("http.listen: cannot bind {}: {e}", s.http.listen)))?;
    tracing::info!(
        webhook = %tls.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        profiles = %s.profile_names().join(","),
        "veto inject starting"
    );
    let shutdown = cancel_on_signal();
    webhook
        .run(tls, http, shutdown)
        .await
        .map_err(|e| other(format!("{e:#}")))
}
