//! `veto`: parse the command line, load config, init telemetry, run, map errors to exit codes
//! (64 = bad configuration or usage, 69 = a service it needs is unavailable, 1 = other).

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(
    name = "veto",
    version,
    about = "Regional auth sidecar: local JWT validation, global revocation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: Envoy ext_authz gRPC + HTTP forward-auth + metrics/health.
    Sidecar {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the regional authority: sessions, refresh rotation, logout and revocations,
    /// signing keys and JWKS, back-channel logout, the region's heartbeat.
    Authority {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; exit 0, or 64 naming the bad key.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the sidecar-injection admission webhook (HTTPS, AdmissionReview v1).
    Inject {
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the configuration and load the certificate; exit 0 or 64.
        #[arg(long)]
        check: bool,
    },
    /// Publish a revocation event.
    Revoke(Box<cli::RevokeArgs>),
    /// Publish this region's heartbeat every interval until stopped (the regional authority
    /// does this itself; this runs it on its own).
    Heartbeat(cli::HeartbeatArgs),
    /// Signing keys.
    #[command(subcommand)]
    Keys(cli::KeysCommand),
    /// Multi-region NATS: topology configs and stream provisioning.
    #[command(subcommand)]
    Nats(cli::nats::NatsCommand),
    /// Copy the in-proxy Envoy module (libvetoinproxy.so) the image carries into a directory
    /// Envoy reads (ENVOY_DYNAMIC_MODULES_SEARCH_PATH): a Kubernetes init container's job.
    InstallModule {
        /// The directory to write libvetoinproxy.so into (a volume shared with Envoy).
        #[arg(long)]
        to: PathBuf,
        /// The module to copy.
        #[arg(long, default_value = cli::module::IMAGE_MODULE)]
        from: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Sidecar { config } => cli::sidecar(&config).await,
            Command::Authority { config } => cli::authority(&config).await,
            Command::CheckConfig { config } => cli::check_config(&config),
            Command::Inject { config, check } => cli::inject::run(&config, check).await,
            Command::Revoke(args) => cli::revoke(*args).await,
            Command::Heartbeat(args) => cli::heartbeat(args).await,
            Command::Keys(k) => cli::keys(k),
            Command::Nats(n) => cli::nats::run(n).await,
            Command::InstallModule { to, from } => cli::module::install(&from, &to).map(|_| ()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
