//! `veto nats ...`: the multi-region NATS topology (config generation) and stream
//! provisioning.

use super::{other, unavailable, usage, Failure, NatsArgs};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use veto::bus::stream::{Outcome, Plan, ProvisionError};
use veto::bus::topology::{
    generate_tls, parse_regions, write_files, write_secrets, NatsUser, Secrets, Topology,
};
use veto::bus::{self, Initial};

#[derive(Subcommand)]
pub enum NatsCommand {
    /// Generate nats-server 2.9 configs: per region a core-NATS hub (gateways to every other
    /// region) and a JetStream server with its own domain, attached to the hub as a leaf node.
    Topology(TopologyArgs),
    /// Create or update a region's revocation stream: it captures the region's own subjects
    /// and sources every other region's stream across domains. Idempotent.
    Provision(ProvisionArgs),
}

#[derive(Args)]
pub struct TopologyArgs {
    /// Comma-separated region names; each is also its JetStream domain and gateway name.
    #[arg(long)]
    regions: String,
    /// Region i (in list order) uses ports base+10*i .. base+10*i+5: hub client, gateway,
    /// leaf node, JetStream client, hub monitoring, JetStream monitoring.
    #[arg(long, default_value_t = 14000)]
    base_port: u16,
    /// JetStream stores live in <store>/<region>.
    #[arg(long)]
    store: PathBuf,
    /// Directory the files are written to (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Address every server listens on and dials.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// One host per server instead of --host (Kubernetes): `{role}` (hub, js) and `{region}`
    /// are replaced, e.g. 'nats-{role}.veto-{region}.svc.cluster.local'. Servers listen on
    /// 0.0.0.0 with nats-server's default ports (client 4222, gateway 7222, leaf node 7422,
    /// monitoring 8222), the leaf remote is `$VETO_NATS_LEAF_URL`, and the files are
    /// <region>/nats/hub.conf and <region>/nats/js.conf (no ports.env, no secrets: the
    /// servers' environment brings them, scripts/k8s-secrets.sh); --base-port, --host and the
    /// passwords are unused.
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["host", "tls"])]
    host_template: Option<String>,
    /// TLS on every client, leaf-node and gateway connection: generates a local CA and a
    /// server certificate for --host, 127.0.0.1 and localhost into <out>/tls (ca.pem,
    /// server.pem, server-key.pem); the URLs become tls:// and clients need
    /// `nats.tls_ca_file = "<out>/tls/ca.pem"` (`--nats-tls-ca-file`). Local use: a
    /// deployment brings its own certificates.
    #[arg(long)]
    tls: bool,
    /// Password of the hubs' leaf-node user ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_LEAF_PASSWORD", hide_env_values = true)]
    leaf_password: Option<String>,
    /// Password of the system-account user ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_SYSTEM_PASSWORD", hide_env_values = true)]
    system_password: Option<String>,
    /// Password of user `sidecar` (the revocation feed only) ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_SIDECAR_PASSWORD", hide_env_values = true)]
    sidecar_password: Option<String>,
    /// Password of user `authority` (refresh traffic, session bucket) ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_AUTHORITY_PASSWORD", hide_env_values = true)]
    authority_password: Option<String>,
    /// Password of user `revoker` (`veto revoke`: revocation events only) ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_REVOKER_PASSWORD", hide_env_values = true)]
    revoker_password: Option<String>,
    /// Password of user `operator` (provisioning, tools; no heartbeats) ([A-Za-z0-9._~-]).
    #[arg(long, env = "VETO_NATS_OPERATOR_PASSWORD", hide_env_values = true)]
    operator_password: Option<String>,
    /// Let clients without credentials in as this user (sidecar, authority, revoker or operator):
    /// local development and tests only. Without it, anonymous connections are refused.
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    no_auth_user: Option<NatsUser>,
}

fn parse_user(s: &str) -> Result<NatsUser, String> {
    s.parse()
        .map_err(|e: veto::bus::topology::TopologyError| e.to_string())
}

#[derive(Args)]
pub struct ProvisionArgs {
    /// URL(s) of region --region's JetStream server.
    #[arg(long, env = "VETO_NATS_URL")]
    nats: String,
    /// The region (and JetStream domain) to provision.
    #[arg(long, env = "VETO_REGION")]
    region: String,
    /// Every region of the topology, --region included.
    #[arg(long)]
    regions: String,
    /// How long revocations are kept: the longest revocation lifetime.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Base of the stream names: region R's stream is <stream>_R (nats-server 2.9 cannot
    /// update a stream that sources a same-named stream from another domain).
    #[arg(long, default_value = "VETO_REVOCATIONS")]
    stream: String,
    /// Also remove sources of domains not in --regions (kept by default: dropping one makes
    /// this region accept tokens revoked there).
    #[arg(long)]
    prune: bool,
    /// After provisioning, watch the stream's sources this long and repair any that stopped
    /// advancing while its origin did not (the nats-server 2.9 duplicate-window wedge,
    /// nats-io/nats-server#4459), as sidecars with `nats.ensure_stream` do all the time. A
    /// source counts as stuck after 10 s, so at least 12s (e.g. `--repair-sources 15s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    repair_sources: Option<Duration>,
    #[arg(long)]
    credentials_file: Option<PathBuf>,
    /// NATS user name (with --nats-password-file), e.g. `operator` of `veto nats topology`.
    #[arg(long = "nats-user", env = "VETO_NATS_USER")]
    user: Option<String>,
    /// File holding the password of --nats-user.
    #[arg(
        long = "nats-password-file",
        env = "VETO_NATS_PASSWORD_FILE",
        requires = "user"
    )]
    password_file: Option<PathBuf>,
    /// CA file to trust for a TLS topology (`veto nats topology --tls`: <out>/tls/ca.pem).
    #[arg(long = "nats-tls-ca-file", env = "VETO_NATS_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn run(cmd: NatsCommand) -> Result<(), Failure> {
    match cmd {
        NatsCommand::Topology(a) => topology(a),
        NatsCommand::Provision(a) => provision(a).await,
    }
}

fn topology(a: TopologyArgs) -> Result<(), Failure> {
    let regions = parse_regions(&a.regions).map_err(|e| usage(format!("--regions: {e}")))?;
    let mut t = match &a.host_template {
        Some(template) => Topology::kubernetes(&regions, template, a.store),
        None => Topology::with_base_port(&regions, a.base_port, a.store),
    }
    .map_err(|e| usage(e.to_string()))?;
    if a.host_template.is_none() {
        t.host = a.host;
    }
    // Passwords not given are random; either way they land in <out>/secrets.env and
    // <out>/passwords/<user>, never in the configs (environment references).
    let random = Secrets::random();
    t.secrets = Secrets {
        leaf_password: a.leaf_password.unwrap_or(random.leaf_password),
        system_password: a.system_password.unwrap_or(random.system_password),
        sidecar_password: a.sidecar_password.unwrap_or(random.sidecar_password),
        authority_password: a.authority_password.unwrap_or(random.authority_password),
        revoker_password: a.revoker_password.unwrap_or(random.revoker_password),
        operator_password: a.operator_password.unwrap_or(random.operator_password),
    };
    t.no_auth_user = a.no_auth_user;
    t.validate().map_err(|e| usage(e.to_string()))?;
    let out_err = |e: std::io::Error| usage(format!("--out {}: {e}", a.out.display()));
    if a.tls {
        let mut sans: Vec<String> = Vec::new();
        for san in [t.host.clone(), "127.0.0.1".into(), "localhost".into()] {
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        t.tls = Some(generate_tls(&a.out.join("tls"), &sans).map_err(out_err)?);
    }
    let mut written = write_files(&t, &a.out).map_err(out_err)?;
    if a.host_template.is_none() {
        written.extend(write_secrets(&t, &a.out).map_err(out_err)?);
    }
    if let Some(tls) = &t.tls {
        written.extend([
            tls.ca_file.clone(),
            tls.cert_file.clone(),
            tls.key_file.clone(),
        ]);
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    for r in &t.regions {
        println!(
            "region {0}: JetStream {1} (domain {0}), hub {2}",
            r.name,
            t.js_url(&r.name).unwrap_or_default(),
            t.hub_url(&r.name).unwrap_or_default()
        );
    }
    Ok(())
}

async fn provision(a: ProvisionArgs) -> Result<(), Failure> {
    let regions = parse_regions(&a.regions).map_err(|e| usage(format!("--regions: {e}")))?;
    let mut plan =
        Plan::new(&a.stream, &a.region, &regions, a.retention).map_err(|e| usage(e.to_string()))?;
    plan.prune = a.prune;
    if a.retention.is_zero() {
        return Err(usage("--retention must be above zero"));
    }
    let watch = veto::source_repair::Settings::default();
    let least = watch.stuck_after + watch.interval;
    if a.repair_sources.is_some_and(|d| d < least) {
        return Err(usage(format!(
            "--repair-sources: at least {} (a source is stuck once it has not moved for {})",
            humantime::format_duration(least),
            humantime::format_duration(watch.stuck_after)
        )));
    }
    // Every request goes to $JS.<region>.API: the stream lands in domain <region> whichever
    // server of the topology the URL names.
    let cfg = NatsArgs {
        nats: a.nats,
        region: a.region.clone(),
        domain: Some(a.region.clone()),
        credentials_file: a.credentials_file,
        user: a.user,
        password_file: a.password_file,
        tls_ca_file: a.tls_ca_file,
    };
    cfg.validate_files()?;
    let cfg = cfg.connection(a.timeout);
    let (client, _events) = bus::connect(&cfg, "veto-nats-provision", Initial::Fail)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut js = bus::jetstream(client.clone(), cfg.domain.as_deref());
    js.set_timeout(a.timeout);
    let (outcome, config) = bus::stream::provision(&js, &plan)
        .await
        .map_err(|e| match e {
            ProvisionError::Unreachable { .. } => unavailable(e.to_string()),
            _ => other(e.to_string()),
        })?;
    let what = format!("stream {} in domain {}", plan.stream, a.region);
    match outcome {
        Outcome::Created => println!("{what}: created"),
        Outcome::Unchanged => println!("{what}: unchanged"),
        Outcome::Updated(changes) => println!("{what}: updated ({})", changes.join("; ")),
    }
    for kept in plan.unlisted_sources(&config) {
        eprintln!("veto: kept source {kept}: not in --regions (--prune removes it)");
    }
    if let Some(d) = a.repair_sources {
        // The repairs' own warnings and errors, on stderr.
        veto::telemetry::init(&veto::config::Log::default());
        let api = bus::names::domain_api_prefix(&a.region);
        let mut repair = veto::source_repair::SourceRepair::new(client, &plan, api);
        repair.settings = veto::source_repair::Settings {
            request_timeout: a.timeout,
            jitter: Duration::ZERO,
            ..watch
        };
        let repairs = repair.watch_for(d).await;
        if repairs.is_empty() {
            println!(
                "{what}: no stuck source in {}",
                humantime::format_duration(d)
            );
        }
        for r in repairs {
            let result = match &r.result {
                Ok(o) => o.label().to_string(),
                Err(e) => format!("error: {e}"),
            };
            println!(
                "{what}: source from {} was stuck at {} (origin at {}): {result}",
                r.origin, r.stuck_at, r.origin_at
            );
        }
    }
    Ok(())
}
