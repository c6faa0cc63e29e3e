//! The subcommands behind `main`.

pub mod inject;
pub mod module;
pub mod nats;

use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use veto::bus::{self, Initial, NatsConnection};
use veto::config::Settings;
use veto::revocation::{valid_region, valid_token_name, Kind, RevocationEvent};
use veto::token::{sign::SigningKey, Alg};

pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn usage(m: impl Into<String>) -> Failure {
    Failure {
        code: 64,
        message: m.into(),
    }
}
fn unavailable(m: impl Into<String>) -> Failure {
    Failure {
        code: 69,
        message: m.into(),
    }
}
/// sysexits EX_NOPERM: the NATS user may not do this.
fn noperm(m: impl Into<String>) -> Failure {
    Failure {
        code: 77,
        message: m.into(),
    }
}

/// The first permissions violation the server reports on this connection.
async fn permission_denied(events: &mut bus::Events) -> String {
    while let Some(ev) = events.recv().await {
        if let async_nats::Event::ServerError(e) = ev {
            let e = e.to_string();
            if e.to_lowercase().contains("permissions violation") {
                return e;
            }
        }
    }
    std::future::pending().await
}

fn other(m: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: m.into(),
    }
}

fn load(config: &Path) -> Result<Settings, Failure> {
    Settings::load(config).map_err(|e| usage(e.to_string()))
}

pub fn check_config(config: &Path) -> Result<(), Failure> {
    load(config)?;
    println!("{}: ok", config.display());
    Ok(())
}

pub async fn sidecar(config: &Path) -> Result<(), Failure> {
    let s = load(config)?;
    veto::telemetry::init(&s.log);
    let grpc = TcpListener::bind(s.grpc.listen)
        .await
        .map_err(|e| usage(format!("grpc.listen: cannot bind {}: {e}", s.grpc.listen)))?;
    let http = TcpListener::bind(s.http.listen)
        .await
        .map_err(|e| usage(format!("http.listen: cannot bind {}: {e}", s.http.listen)))?;
    tracing::info!(
        grpc = %grpc.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "veto sidecar starting"
    );
    let sidecar = veto::sidecar::Sidecar::build(&s).map_err(|e| usage(format!("{e:#}")))?;
    let shutdown = cancel_on_signal();
    sidecar
        .run(grpc, http, shutdown)
        .await
        .map_err(|e| other(format!("{e:#}")))
}

/// A token cancelled on SIGTERM or Ctrl-C: what a long-running command shuts down on.
fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        veto::shutdown_signal().await;
        tracing::info!("shutting down");
        sd.cancel();
    });
    shutdown
}

pub async fn authority(config: &Path) -> Result<(), Failure> {
    let s = load(config)?;
    let Some(a) = s.authority.clone() else {
        return Err(usage(format!(
            "invalid configuration: authority: {} has no [authority] section",
            config.display()
        )));
    };
    veto::telemetry::init(&s.log);
    let http = TcpListener::bind(s.http.listen)
        .await
        .map_err(|e| usage(format!("http.listen: cannot bind {}: {e}", s.http.listen)))?;
    let public = TcpListener::bind(a.listen)
        .await
        .map_err(|e| usage(format!("authority.listen: cannot bind {}: {e}", a.listen)))?;
    tracing::info!(
        api = %public.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "veto authority starting"
    );
    let authority = veto::authority::Authority::build(&s).await.map_err(|e| {
        if e.is::<veto::authority::SetupError>() {
            usage(e.to_string())
        } else {
            other(format!("{e:#}"))
        }
    })?;
    let shutdown = cancel_on_signal();
    authority
        .run(http, public, shutdown)
        .await
        .map_err(|e| other(format!("{e:#}")))
}

#[derive(Args)]
// The ids may begin with `-` (the authority's base64url session ids do, 1 in 64): they are
// values, never options.
#[command(group(clap::ArgGroup::new("what").required(true).args(["session", "token", "subject"])))]
pub struct RevokeArgs {
    /// Revoke every token of this session (`sid`).
    #[arg(long, allow_hyphen_values = true)]
    session: Option<String>,
    /// Revoke the token with this `jti`.
    #[arg(long, allow_hyphen_values = true)]
    token: Option<String>,
    /// Revoke every token of this subject issued before now.
    #[arg(long, allow_hyphen_values = true)]
    subject: Option<String>,
    /// Only tokens of this issuer (default: every issuer).
    #[arg(long, default_value = "")]
    issuer: String,
    #[arg(long, default_value = "admin")]
    reason: String,
    /// Also push the logout to connected clients.
    #[arg(long)]
    urgent: bool,
    #[command(flatten)]
    bus: NatsArgs,
    /// How long the revocation is held: at least the longest token lifetime + leeway.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Publish at these regions' origins instead of `--region`'s (comma-separated): a session
    /// or token revocation belongs in the session's home region; with
    /// `revocation.isolation = "home"` a subject revocation belongs in every region. Each
    /// origin gets its own copy of the event; all must acknowledge.
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// Event id (default: random). Re-using one makes a retry idempotent.
    #[arg(long)]
    event_id: Option<String>,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn random_id() -> String {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn revoke(a: RevokeArgs) -> Result<(), Failure> {
    a.bus.validate()?;
    let (kind, id) = match (a.session, a.token, a.subject) {
        (Some(s), None, None) => (Kind::Session, s),
        (None, Some(t), None) => (Kind::Token, t),
        (None, None, Some(s)) => (Kind::Subject, s),
        _ => return Err(usage("give exactly one of --session, --token, --subject")),
    };
    if id.is_empty() || id.len() > veto::revocation::MAX_ID_BYTES {
        return Err(usage("the revoked id must be 1-1024 bytes"));
    }
    let event_id = a.event_id.unwrap_or_else(random_id);
    let origins = if a.to.is_empty() {
        vec![a.bus.region.clone()]
    } else {
        a.to.clone()
    };
    if let Some(r) = origins.iter().find(|r| !valid_region(r)) {
        return Err(usage(format!("--to: {r:?} is not a valid region name")));
    }
    // One event per origin, all with the same event id (message ids are qualified by origin,
    // so the copies never collide in a stream that sources the others).
    if !valid_token_name(&event_id, 128) {
        return Err(usage("--event-id: 1-128 characters of [A-Za-z0-9_-]"));
    }
    let cfg = a.bus.connection(a.timeout);
    let (client, mut events) = bus::connect(&cfg, "veto-revoke", Initial::Fail)
        .await
        .map_err(|e| unavailable(format!("{e}")))?;
    let js = bus::jetstream(client.clone(), cfg.domain.as_deref());
    // Stamped once connected, so propagation lag measures the bus, not this CLI's start-up.
    let now_us = veto::now_us();
    let mut failed = Vec::new();
    for origin in origins {
        let ev = RevocationEvent {
            issuer: a.issuer.clone(),
            reason: a.reason.clone(),
            urgent: a.urgent,
            ..RevocationEvent::new_at_us(
                event_id.clone(),
                kind,
                id.clone(),
                origin.clone(),
                now_us,
                a.ttl,
            )
        };
        // Another region's origin is reached through the gateways (its stream captures its
        // own subjects); a cut-off region answers no acknowledgement within the timeout.
        // A user that may not publish revocations gets a permissions violation from the
        // server (and no acknowledgement): say so at once rather than time out.
        let published = tokio::select! {
            r = bus::publish_event(&js, &ev, a.timeout) => r,
            denied = permission_denied(&mut events) => {
                return Err(noperm(format!(
                    "origin {origin}: the server refused the revocation: {denied}; publish as \
                     a user allowed to (`veto nats topology`'s `revoker`: --nats-user revoker \
                     --nats-password-file <out>/passwords/revoker)"
                )));
            }
        };
        match published {
            Ok(bus::Ack {
                sequence: seq,
                duplicate: dup,
            }) => println!(
                "revoked {} {:?} at origin {origin} (event {}, stream sequence {seq}{})",
                kind.label(),
                ev.id,
                ev.event_id,
                if dup { ", duplicate" } else { "" }
            ),
            Err(e) => {
                eprintln!("veto: origin {origin}: {e}");
                failed.push(origin);
            }
        }
    }
    let _ = client.flush().await;
    if !failed.is_empty() {
        return Err(unavailable(format!(
            "not acknowledged by {}; retry with the same --event-id (idempotent)",
            failed.join(", ")
        )));
    }
    Ok(())
}

/// How a CLI command reaches its region's JetStream servers.
#[derive(Args)]
pub struct NatsArgs {
    /// NATS server URL(s) of this region's JetStream servers.
    #[arg(long, env = "VETO_NATS_URL")]
    pub(crate) nats: String,
    /// The region (origin of what is published).
    #[arg(long, env = "VETO_REGION")]
    pub(crate) region: String,
    /// JetStream domain, if the servers use one.
    #[arg(long)]
    pub(crate) domain: Option<String>,
    #[arg(long)]
    pub(crate) credentials_file: Option<PathBuf>,
    /// NATS user name (with --nats-password-file), e.g. `operator` of `veto nats topology`.
    #[arg(long = "nats-user", env = "VETO_NATS_USER")]
    pub(crate) user: Option<String>,
    /// File holding the password of --nats-user.
    #[arg(
        long = "nats-password-file",
        env = "VETO_NATS_PASSWORD_FILE",
        requires = "user"
    )]
    pub(crate) password_file: Option<PathBuf>,
    /// CA file to trust for a TLS topology (`veto nats topology --tls`: <out>/tls/ca.pem).
    #[arg(long = "nats-tls-ca-file", env = "VETO_NATS_TLS_CA_FILE")]
    pub(crate) tls_ca_file: Option<PathBuf>,
}

impl NatsArgs {
    fn validate(&self) -> Result<(), Failure> {
        if !valid_region(&self.region) {
            return Err(usage("--region: 1-64 characters of [A-Za-z0-9_-]"));
        }
        self.validate_files()
    }

    /// The files the flags name exist and can be read (exit 64 naming the flag, rather than
    /// a connection error later).
    pub(crate) fn validate_files(&self) -> Result<(), Failure> {
        for (flag, path) in [
            ("--nats-password-file", &self.password_file),
            ("--nats-tls-ca-file", &self.tls_ca_file),
        ] {
            if let Some(p) = path {
                if let Err(e) = std::fs::read(p) {
                    return Err(usage(format!("{flag} {}: {e}", p.display())));
                }
            }
        }
        Ok(())
    }

    /// How CLI commands connect: the flags' URL, domain and credentials, nothing else.
    pub(crate) fn connection(&self, connect_timeout: Duration) -> NatsConnection {
        NatsConnection {
            domain: self.domain.clone(),
            credentials_file: self.credentials_file.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            ..NatsConnection::plain(self.nats.clone(), connect_timeout)
        }
    }
}

#[derive(Args)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    bus: NatsArgs,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

pub async fn heartbeat(a: HeartbeatArgs) -> Result<(), Failure> {
    a.bus.validate()?;
    if a.interval.is_zero() {
        return Err(usage("--interval must be positive"));
    }
    veto::telemetry::init(&veto::config::Log::default());
    let mut cfg = a.bus.connection(Duration::from_secs(5));
    // Heartbeats are user `authority`'s alone, whose inboxes (the streams' acknowledgements)
    // are under its own prefix.
    cfg.inbox_prefix = Some(veto::bus::names::AUTHORITY_INBOX_PREFIX.to_string());
    // Waits for the server rather than failing: a heartbeat publisher is a long-running
    // service, and its absence is what staleness alerts report.
    let (client, _events) = bus::connect(&cfg, "veto-heartbeat", Initial::Retry)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let js = bus::jetstream(client, cfg.domain.as_deref());
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        veto::shutdown_signal().await;
        sd.cancel();
    });
    tracing::info!(region = %a.bus.region, interval = ?a.interval, "publishing heartbeats");
    bus::publish::heartbeats(js, a.bus.region, a.interval, shutdown).await;
    Ok(())
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate a signing key: writes the private key (PKCS#8 DER) to --out and prints the
    /// public JWK.
    Generate {
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Default: from a file --out named <kid>.<alg>.der, else random.
        #[arg(long)]
        kid: Option<String>,
        /// A key directory (writes <kid>.<alg>.der there) or a file.
        #[arg(long)]
        out: PathBuf,
        /// When the key starts signing: RFC 3339 UTC (2026-12-02T10:00:00Z), `now`, or
        /// `+<duration>` from now (`+1h`). Written as <kid>.json next to the key, which must
        /// then be named <kid>.<alg>.der. Without it the key counts as active since the epoch.
        #[arg(long)]
        activate_at: Option<String>,
    },
    /// Print the public JWKS of private keys (PKCS#8 DER files named <kid>.<alg>.der).
    Jwks { files: Vec<PathBuf> },
    /// Mint an access token with a key file (<kid>.<alg>.der): for demos and tests; the
    /// authority is what issues tokens in production.
    Mint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        iss: String,
        #[arg(long, default_value = "api")]
        aud: String,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        sid: String,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The session's home region (claim `veto_home`).
        #[arg(long)]
        home: Option<String>,
    },
}

fn load_key(f: &Path) -> Result<SigningKey, Failure> {
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut parts = name.rsplitn(3, '.');
    let (_ext, alg, kid) = (parts.next(), parts.next(), parts.next());
    let (Some(alg), Some(kid)) = (alg.and_then(Alg::parse), kid) else {
        return Err(usage(format!(
            "{}: expected a file named <kid>.<alg>.der",
            f.display()
        )));
    };
    let der = std::fs::read(f).map_err(|e| usage(format!("{}: {e}", f.display())))?;
    SigningKey::from_pkcs8(alg, kid, &der).map_err(|e| usage(format!("{}: {e}", f.display())))
}

pub fn keys(k: KeysCommand) -> Result<(), Failure> {
    match k {
        KeysCommand::Generate {
            alg,
            kid,
            out,
            activate_at,
        } => generate(&alg, kid, &out, activate_at.as_deref()),
        KeysCommand::Jwks { files } => {
            let keys = files
                .iter()
                .map(|f| load_key(f))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&SigningKey> = keys.iter().collect();
            println!("{}", veto::token::sign::jwks(&refs));
            Ok(())
        }
        KeysCommand::Mint {
            key,
            iss,
            aud,
            sub,
            sid,
            ttl,
            home,
        } => {
            let key = load_key(&key)?;
            let now = veto::now_ms() / 1000;
            let mut claims = serde_json::json!({
                "iss": iss, "aud": aud, "sub": sub, "sid": sid, "jti": random_id(),
                "iat": now, "exp": now + ttl.as_secs() as i64,
            });
            if let Some(h) = home {
                if !valid_region(&h) {
                    return Err(usage("--home: 1-64 characters of [A-Za-z0-9_-]"));
                }
                claims["veto_home"] = serde_json::Value::String(h);
            }
            println!("{}", key.sign(&claims).map_err(|e| other(e.to_string()))?);
            Ok(())
        }
    }
}

/// `veto keys generate`: the key directory format is `veto::authority::keys`'.
fn generate(
    alg: &str,
    kid: Option<String>,
    out: &Path,
    activate_at: Option<&str>,
) -> Result<(), Failure> {
    use veto::authority::keys::{
        activation_file_name, activation_json, key_file_name, parse_activate_at,
        split_key_file_name, valid_name,
    };
    let alg = Alg::parse(alg).filter(|a| !a.is_hmac()).ok_or_else(|| {
        usage("--alg: one of ES256 ES384 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA")
    })?;
    let activate_at = activate_at
        .map(|s| {
            parse_activate_at(s, veto::now_ms()).map_err(|e| usage(format!("--activate-at {e}")))
        })
        .transpose()?;
    let into_dir = out.is_dir();
    // A file named <kid>.<alg>.der names its kid (so the JWK and the key directory agree).
    let named = (!into_dir)
        .then(|| out.file_name().and_then(|n| n.to_str()))
        .flatten()
        .and_then(split_key_file_name)
        .filter(|(_, a)| *a == alg.as_str())
        .map(|(k, _)| k.to_string());
    let kid = kid
        .or_else(|| named.clone())
        .unwrap_or_else(|| random_id()[..16].to_string());
    if (into_dir || activate_at.is_some()) && !valid_name(&kid) {
        return Err(usage("--kid: [-._a-zA-Z0-9]+, not starting with a dot"));
    }
    let key_path = if into_dir {
        out.join(key_file_name(&kid, alg))
    } else {
        if activate_at.is_some() && named.as_deref() != Some(kid.as_str()) {
            return Err(usage(format!(
                "--out {}: with --activate-at, name the file {} (or give a directory)",
                out.display(),
                key_file_name(&kid, alg)
            )));
        }
        out.to_path_buf()
    };
    let key = SigningKey::generate(alg, &kid).map_err(|e| other(e.to_string()))?;
    // The activation file first: a key seen without it would count as active since the epoch.
    let activation = match activate_at {
        Some(at) => {
            let dir = key_path.parent().unwrap_or(Path::new("."));
            let path = dir.join(activation_file_name(&kid));
            write_new(&path, activation_json(at).as_bytes(), 0o644)?;
            eprintln!(
                "veto: {kid} activates at {}",
                veto::authority::keys::format_ms(at)
            );
            Some(path)
        }
        None => None,
    };
    if let Err(f) = write_private(&key_path, key.pkcs8_der()) {
        if let Some(p) = activation {
            let _ = std::fs::remove_file(p);
        }
        return Err(f);
    }
    println!("{}", key.public_jwk());
    Ok(())
}

fn write_private(path: &Path, der: &[u8]) -> Result<(), Failure> {
    write_new(path, der, 0o600)
}

/// Creates `path` (never overwrites) with `mode` and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| usage(format!("--out {}: {e}", path.display())))?;
    f.write_all(bytes)
        .map_err(|e| other(format!("--out {}: {e}", path.display())))
}
