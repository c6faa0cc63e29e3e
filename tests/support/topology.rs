//! The multi-region NATS topology of DESIGN §4, for real: per region a core-NATS hub and a
//! JetStream server (its own domain) attached to it as a leaf node, rendered by
//! `veto::bus::topology` on free loopback ports. Every process is killed and every store removed
//! on drop.
//!
//! Use it from a test crate that also has the common helpers:
//! ```ignore
//! mod support;
//! #[path = "support/topology.rs"]
//! mod topology_support;
//! ```
#![allow(dead_code)]

use crate::support::{free_port, nats_server_bin, wait_port};
use async_nats::jetstream;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use veto::bus::stream::{Outcome, Plan};
use veto::bus::topology::{
    hub_server_name, js_server_name, NatsUser, Region, RegionPorts, Topology,
};

/// Base of the stream names: region R's stream is `VETO_REVOCATIONS_R`.
pub const STREAM_BASE: &str = "VETO_REVOCATIONS";

/// The stream of `region`.
pub fn stream(region: &str) -> String {
    veto::bus::names::stream_name(STREAM_BASE, region)
}

/// Six (or 2 × n) running nats-server processes.
pub struct LocalTopology {
    pub topology: Topology,
    /// Configs, logs and JetStream stores; removed on drop.
    dir: tempfile::TempDir,
    /// Running servers by server name (`us-hub`, `us-js`, ...).
    procs: BTreeMap<String, Child>,
}

impl LocalTopology {
    /// Renders the topology for `regions` on free ports and starts every server: hubs first,
    /// then the JetStream servers. Returns once every server listens (links may still be
    /// forming: see [`LocalTopology::wait_linked`]). Clients without credentials are user
    /// `operator` (`veto nats topology --no-auth-user operator`).
    pub fn start(regions: &[&str]) -> LocalTopology {
        Self::start_with(regions, Some(NatsUser::Operator))
    }

    /// [`LocalTopology::start`] with another `no_auth_user`; `None` is the shipped shape:
    /// every client must log in.
    pub fn start_with(regions: &[&str], no_auth_user: Option<NatsUser>) -> LocalTopology {
        Self::start_full(regions, no_auth_user, false)
    }

    /// The shipped shape with TLS (`veto nats topology --tls`): a local CA, every client,
    /// leaf-node and gateway connection over TLS, no `no_auth_user`.
    pub fn start_tls(regions: &[&str]) -> LocalTopology {
        Self::start_full(regions, None, true)
    }

    /// Like `veto nats topology`: random passwords that the configs reference as environment
    /// variables (each server is started with [`Topology::secret_vars`]), password files per
    /// user; with `tls`, certificates of a fresh local CA.
    pub fn start_full(
        regions: &[&str],
        no_auth_user: Option<NatsUser>,
        tls: bool,
    ) -> LocalTopology {
        let dir = tempfile::tempdir().expect("tempdir");
        let regions = regions
            .iter()
            .map(|name| Region {
                name: name.to_string(),
                ports: RegionPorts {
                    hub_client: free_port(),
                    hub_gateway: free_port(),
                    hub_leafnode: free_port(),
                    js_client: free_port(),
                    hub_monitor: None,
                    js_monitor: None,
                },
            })
            .collect();
        let mut topology = Topology::new(regions, dir.path().join("store")).expect("topology");
        topology.no_auth_user = no_auth_user;
        if tls {
            topology.tls = Some(
                veto::bus::topology::generate_tls(
                    &dir.path().join("tls"),
                    &["127.0.0.1".into(), "localhost".into()],
                )
                .expect("certificates"),
            );
        }
        veto::bus::topology::write_files(&topology, &dir.path().join("conf"))
            .expect("write configs");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        std::fs::create_dir_all(dir.path().join("secrets")).expect("secrets dir");
        for u in NatsUser::ALL {
            std::fs::write(
                dir.path().join("secrets").join(u.name()),
                topology.secrets.password(u),
            )
            .expect("password file");
        }
        let mut t = LocalTopology {
            topology,
            dir,
            procs: BTreeMap::new(),
        };
        for r in t.regions() {
            t.start_server(&hub_server_name(&r));
        }
        for r in t.regions() {
            t.start_server(&js_server_name(&r));
        }
        t
    }

    pub fn regions(&self) -> Vec<String> {
        self.topology.region_names()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn port_of(&self, server: &str) -> u16 {
        let (region, role) = server.rsplit_once('-').expect("<region>-<role>");
        let ports = self.topology.region(region).expect("region").ports;
        match role {
            "hub" => ports.hub_client,
            "js" => ports.js_client,
            _ => panic!("unknown server {server}"),
        }
    }

    /// Starts (or restarts, after [`LocalTopology::kill`]) a server by name, same ports and
    /// store as before.
    pub fn start_server(&mut self, server: &str) {
        assert!(!self.procs.contains_key(server), "{server} is running");
        let conf = self.dir.path().join("conf").join(format!("{server}.conf"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(server))
            .expect("log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .envs(self.topology.secret_vars())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (set VETO_NATS_SERVER_BIN)");
        self.procs.insert(server.to_string(), child);
        let port = self.port_of(server);
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "{server} did not listen on {port}:\n{}",
            self.log(server)
        );
    }

    /// Kills a server (SIGKILL); its store stays for a restart.
    pub fn kill(&mut self, server: &str) {
        if let Some(mut c) = self.procs.remove(server) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self, server: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{server}.log"))
    }

    pub fn log(&self, server: &str) -> String {
        std::fs::read_to_string(self.log_path(server)).unwrap_or_default()
    }

    /// Every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for r in self.regions() {
            for s in [hub_server_name(&r), js_server_name(&r)] {
                out.push_str(&format!("--- {s}\n{}", self.log(&s)));
            }
        }
        out
    }

    /// URL of a region's JetStream server (where its sidecars connect).
    pub fn js_url(&self, region: &str) -> String {
        self.topology.js_url(region).expect("region")
    }

    /// A file holding `user`'s password (for `nats.password_file`, `--nats-password-file`).
    pub fn password_file(&self, user: NatsUser) -> PathBuf {
        self.dir.path().join("secrets").join(user.name())
    }

    /// How `user` connects to `region`'s JetStream server (user + password file), for
    /// `veto::bus::connect`.
    pub fn connection_as(&self, region: &str, user: NatsUser) -> veto::bus::NatsConnection {
        veto::bus::NatsConnection {
            user: Some(user.name().to_string()),
            password_file: Some(self.password_file(user)),
            tls_ca_file: self.ca_file(),
            ..veto::bus::NatsConnection::plain(self.js_url(region), Duration::from_secs(5))
        }
    }

    /// The CA of a TLS topology.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.topology.tls.as_ref().map(|t| t.ca_file.clone())
    }

    /// `[nats]` lines that make a sidecar log in as `user`.
    pub fn nats_login(&self, user: NatsUser) -> String {
        let mut login = format!(
            "user = \"{}\"\npassword_file = \"{}\"\n",
            user.name(),
            self.password_file(user).display()
        );
        if let Some(ca) = self.ca_file() {
            login.push_str(&format!("tls_ca_file = \"{}\"\n", ca.display()));
        }
        login
    }

    /// A client of `region`'s JetStream server logged in as `user` (password login).
    pub async fn client_as(&self, region: &str, user: NatsUser) -> async_nats::Client {
        let mut opts = async_nats::ConnectOptions::with_user_and_password(
            user.name().to_string(),
            self.topology.secrets.password(user).to_string(),
        )
        .name(format!("test-{region}-{user}"));
        if let Some(ca) = self.ca_file() {
            opts = opts.add_root_certificates(ca);
        }
        if user == NatsUser::Authority {
            opts = opts.custom_inbox_prefix(veto::bus::names::AUTHORITY_INBOX_PREFIX);
        }
        opts.connect(self.js_url(region))
            .await
            .unwrap_or_else(|e| panic!("connect to {region} as {user}: {e}"))
    }

    /// A client of `region`'s JetStream server, logged in as `operator` (works with or
    /// without a `no_auth_user`).
    pub async fn client(&self, region: &str) -> async_nats::Client {
        self.client_as(region, NatsUser::Operator).await
    }

    /// `--nats-user operator --nats-password-file <file>`: what `veto revoke`, `veto heartbeat`
    /// and `veto nats provision` need without a `no_auth_user`.
    pub fn operator_args(&self) -> Vec<String> {
        self.login_args(NatsUser::Operator)
    }

    /// `--nats-user <user> --nats-password-file <file>` (and `--nats-tls-ca-file` with TLS):
    /// how a CLI command logs in as `user` (`veto revoke`: revoker; `veto heartbeat`:
    /// authority).
    pub fn login_args(&self, user: NatsUser) -> Vec<String> {
        let mut args = vec![
            "--nats-user".into(),
            user.name().into(),
            "--nats-password-file".into(),
            self.password_file(user).display().to_string(),
        ];
        if let Some(ca) = self.ca_file() {
            args.extend(["--nats-tls-ca-file".into(), ca.display().to_string()]);
        }
        args
    }

    /// `veto heartbeat` for `region` every 250 ms, logged in as `authority` (the only user
    /// allowed to publish heartbeats).
    pub fn heartbeat(&self, region: &str) -> crate::support::Proc {
        crate::support::heartbeat_with(
            &self.js_url(region),
            region,
            &self.login_args(NatsUser::Authority),
        )
    }

    /// JetStream of `region` as `user` (heartbeats: `authority`), addressed by domain.
    pub async fn jetstream_as(&self, region: &str, user: NatsUser) -> jetstream::Context {
        jetstream::with_domain(self.client_as(region, user).await, region)
    }

    /// JetStream of `region`, addressed by domain like `veto nats provision` does.
    pub async fn jetstream(&self, region: &str) -> jetstream::Context {
        jetstream::with_domain(self.client(region).await, region)
    }

    /// Waits until a core message published in any region reaches every other region (leaf
    /// nodes attached, gateways up, interest propagated). Returns how long it took.
    pub async fn wait_linked(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let regions = self.regions();
        let mut clients = Vec::new();
        let mut responders = Vec::new();
        for r in &regions {
            let c = self.client(r).await;
            let mut sub = c.subscribe(format!("veto.probe.{r}")).await.expect("sub");
            let rc = c.clone();
            responders.push(tokio::spawn(async move {
                use futures::StreamExt;
                while let Some(m) = sub.next().await {
                    if let Some(reply) = m.reply {
                        let _ = rc.publish(reply, "pong".into()).await;
                    }
                }
            }));
            clients.push(c);
        }
        for (i, from) in regions.iter().enumerate() {
            for to in regions.iter().filter(|t| *t != from) {
                loop {
                    let probe = tokio::time::timeout(
                        Duration::from_millis(250),
                        clients[i].request(format!("veto.probe.{to}"), "ping".into()),
                    )
                    .await;
                    if matches!(probe, Ok(Ok(_))) {
                        break;
                    }
                    assert!(
                        start.elapsed() < timeout,
                        "{from} -> {to} not linked after {timeout:?}:\n{}",
                        self.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        for r in responders {
            r.abort();
        }
        start.elapsed()
    }

    /// Provisions `region`'s stream, sourcing `regions`, the way `veto nats provision` does.
    pub async fn provision(&self, region: &str, regions: &[String]) -> Outcome {
        let plan = Plan::new(STREAM_BASE, region, regions, Duration::from_secs(3600))
            .expect("region plan");
        let (outcome, _) = veto::bus::stream::provision(&self.jetstream(region).await, &plan)
            .await
            .unwrap_or_else(|e| panic!("provision {region}: {e}\n{}", self.logs()));
        outcome
    }

    /// Provisions every region with the full region list.
    pub async fn provision_all(&self) -> Vec<(String, Outcome)> {
        let regions = self.regions();
        let mut out = Vec::new();
        for r in &regions {
            out.push((r.clone(), self.provision(r, &regions).await));
        }
        out
    }
}

/// The state of `region`'s stream behind `js`.
pub async fn stream_state(js: &jetstream::Context, region: &str) -> jetstream::stream::State {
    let mut s = js.get_stream(stream(region)).await.expect("stream");
    s.info().await.expect("stream info").state.clone()
}

impl Drop for LocalTopology {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `dir` (configs, logs, stores) is removed when the TempDir drops, after this.
    }
}
