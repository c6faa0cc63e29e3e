//! Connecting to NATS: URLs, credentials, TLS, and the JetStream context of a domain. The
//! sidecar, the CLI commands and (later) the authority connect the same way.

use async_nats::jetstream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How to reach one region's NATS servers: the connection part of `[nats]` (see
/// [`NatsConnection::from_settings`]); CLI commands build it from their flags.
#[derive(Debug, Clone, Default)]
pub struct NatsConnection {
    /// Comma-separated server URLs.
    pub url: String,
    /// JetStream domain of the region, if the servers use one.
    pub domain: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_required: bool,
    pub connect_timeout: Duration,
    /// Prefix of every inbox the client makes (request replies and JetStream consumers'
    /// deliveries alike; async-nats `custom_inbox_prefix`). `None`: async-nats's `_INBOX`. The
    /// authority sets [`crate::bus::names::AUTHORITY_INBOX_PREFIX`], which sidecar users may
    /// not subscribe to; not a `[nats]` key of the sidecar.
    pub inbox_prefix: Option<String>,
}

impl NatsConnection {
    /// The connection settings of a `[nats]` section (same keys, nothing renamed).
    pub fn from_settings(n: &crate::config::Nats) -> NatsConnection {
        NatsConnection {
            url: n.url.clone(),
            domain: n.domain.clone(),
            credentials_file: n.credentials_file.clone(),
            token_file: n.token_file.clone(),
            user: n.user.clone(),
            password_file: n.password_file.clone(),
            nkey_seed_file: n.nkey_seed_file.clone(),
            tls_ca_file: n.tls_ca_file.clone(),
            tls_cert_file: n.tls_cert_file.clone(),
            tls_key_file: n.tls_key_file.clone(),
            tls_required: n.tls_required,
            connect_timeout: n.connect_timeout,
            inbox_prefix: n.inbox_prefix.clone(),
        }
    }

    /// A plain connection to `url` (CLI commands, tests): no credentials, no TLS.
    pub fn plain(url: impl Into<String>, connect_timeout: Duration) -> NatsConnection {
        NatsConnection {
            url: url.into(),
            connect_timeout,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read {what}: {source}")]
    Credentials {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: nats.url is not a valid server URL")]
    BadUrl,
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Connection events (connected, disconnected, ...), as the client reports them: the
/// follower recreates its consumer after a reconnect.
pub type Events = mpsc::UnboundedReceiver<async_nats::Event>;

/// Whether [`connect`] waits for an unreachable server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// Return at once and keep trying in the background (a sidecar starts unready rather
    /// than crashing; a heartbeat publisher waits for its server).
    Retry,
    /// An unreachable server is an error (one-shot CLI commands).
    Fail,
}

fn read_secret(path: &Path, what: &'static str) -> Result<String, ConnectError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| ConnectError::Credentials { what, source })
}

/// Connects to NATS as client `name`.
pub async fn connect(
    cfg: &NatsConnection,
    name: &str,
    initial: Initial,
) -> Result<(async_nats::Client, Events), ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(cfg.connect_timeout)
        .ping_interval(Duration::from_secs(5))
        .require_tls(cfg.tls_required)
        .event_callback(move |ev| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ev);
            }
        });
    if initial == Initial::Retry {
        opts = opts.retry_on_initial_connect();
    }
    if let Some(prefix) = &cfg.inbox_prefix {
        opts = opts.custom_inbox_prefix(prefix);
    }
    if let Some(p) = &cfg.credentials_file {
        opts = opts
            .credentials_file(p)
            .await
            .map_err(|source| ConnectError::Credentials {
                what: "nats.credentials_file",
                source,
            })?;
    }
    if let Some(p) = &cfg.token_file {
        opts = opts.token(read_secret(p, "nats.token_file")?);
    }
    if let Some(user) = &cfg.user {
        let pass = match &cfg.password_file {
            Some(p) => read_secret(p, "nats.password_file")?,
            None => String::new(),
        };
        opts = opts.user_and_password(user.clone(), pass);
    }
    if let Some(p) = &cfg.nkey_seed_file {
        opts = opts.nkey(read_secret(p, "nats.nkey_seed_file")?);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse().map_err(|_| ConnectError::BadUrl))
        .collect::<Result<_, _>>()?;
    let client = opts.connect(addrs).await?;
    Ok((client, rx))
}

/// The JetStream context of `domain` (`None`: the servers' own, no domain).
pub fn jetstream(client: async_nats::Client, domain: Option<&str>) -> jetstream::Context {
    match domain {
        Some(d) => jetstream::with_domain(client, d),
        None => jetstream::new(client),
    }
}
