//! The multi-region NATS topology of DESIGN §4, as nats-server 2.9 configuration text.
//!
//! Per region:
//! - a core-NATS **hub** (`<region>-hub`, no JetStream): a gateway to every other region's hub
//!   (together, the super-cluster) and a leaf-node listener;
//! - a **JetStream server** (`<region>-js`) with `jetstream { domain: <region> }`, attached to
//!   its hub as a leaf node. Sidecars, authorities, `veto revoke` and `veto nats provision` of
//!   that region connect here, each as its own user (see [`NatsUser`] for what each may do).
//!
//! Regions share no JetStream meta group: each domain keeps working when cut off, and streams
//! source each other across domains through `$JS.<domain>.API` (see [`crate::bus::stream`]).
//!
//! This module is pure: it renders text; the caller writes files and starts servers. Every
//! server has the accounts in its config: `SYS` (explicit system account, which 2.9 requires
//! on a server with both gateways and leaf nodes) and `VETO` (the application account, the only
//! one bridged over the leaf connection). Only keys nats-server 2.9 accepts are emitted.
//!
//! Account `VETO` has three users with passwords ([`Secrets`]) and subject permissions
//! ([`sidecar_permissions`], [`authority_permissions`]; `operator` may do anything). A sidecar's
//! credentials therefore cannot read or answer the authorities' refresh traffic
//! (`veto.authority.>`, replies on `_VETO_AUTHORITY_INBOX.>`) nor touch the session bucket
//! (`KV_VETO_SESSIONS`). The generated configs have no `no_auth_user` unless asked for
//! ([`Topology::no_auth_user`], local development and tests only).

use crate::bus::names::{AUTHORITY_INBOX_PREFIX, AUTHORITY_SUBJECTS, SESSION_BUCKET, SUBJECT_ROOT};
use crate::revocation::valid_region;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The ports of one region. The caller fills them (tests use free ports;
/// [`Topology::with_base_port`] packs them from a base port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionPorts {
    /// The hub's client port (core NATS only; for tools and debugging).
    pub hub_client: u16,
    /// The hub's gateway port: the other regions' hubs connect here.
    pub hub_gateway: u16,
    /// The hub's leaf-node port: this region's JetStream server connects here.
    pub hub_leafnode: u16,
    /// The JetStream server's client port: what the region's sidecars connect to.
    pub js_client: u16,
    /// HTTP monitoring (`/varz`, `/gatewayz`, `/leafz`) of the hub, if wanted.
    pub hub_monitor: Option<u16>,
    /// HTTP monitoring (`/varz`, `/jsz`) of the JetStream server, if wanted.
    pub js_monitor: Option<u16>,
}

impl RegionPorts {
    fn all(&self) -> impl Iterator<Item = u16> {
        [
            self.hub_client,
            self.hub_gateway,
            self.hub_leafnode,
            self.js_client,
        ]
        .into_iter()
        .chain(self.hub_monitor)
        .chain(self.js_monitor)
    }
}

/// How many ports [`Topology::with_base_port`] reserves per region (six used, four spare).
pub const PORTS_PER_REGION: u16 = 10;

/// One region of the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Region name: also the gateway name and the JetStream domain.
    pub name: String,
    pub ports: RegionPorts,
}

/// Passwords of the topology's users. Random unless given ([`Secrets::random`]); the
/// generated configs reference them as environment variables ([`Topology::password_env`], the
/// default) and [`Topology::secrets_env`] renders that environment, so no config file holds a
/// password. They are limited to URL-safe characters (a leaf remote carries its password in
/// its URL) and must differ from each other (a shared password would let one user log in as
/// another).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    /// Password of user `leaf` (account `VETO`) on the hubs' leaf-node listeners. Whoever has it
    /// can attach a leaf node with no permissions at all: never give it to a sidecar.
    pub leaf_password: String,
    /// Password of user `sys` (account `SYS`) on every server, for `$SYS` monitoring.
    pub system_password: String,
    /// Password of user `sidecar` (account `VETO`): follows the revocation feed, nothing else.
    pub sidecar_password: String,
    /// Password of user `authority` (account `VETO`): refresh traffic, session bucket,
    /// revocations and heartbeats.
    pub authority_password: String,
    /// Password of user `revoker` (account `VETO`): `veto revoke` (revocation events only).
    pub revoker_password: String,
    /// Password of user `operator` (account `VETO`): provisioning, tools; no heartbeats.
    pub operator_password: String,
}

/// Length of a password [`random_password`] makes.
pub const RANDOM_PASSWORD_LEN: usize = 32;

/// `RANDOM_PASSWORD_LEN` characters of `[A-Za-z0-9]`, the first a letter (nats-server parses a
/// `$VAR`'s value like config text: a leading digit could make it a number or a size).
pub fn random_password() -> String {
    use rand::distr::Alphanumeric;
    use rand::Rng;
    const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let first = LETTERS[rng.random_range(0..LETTERS.len())] as char;
    std::iter::once(first)
        .chain(
            (&mut rng)
                .sample_iter(Alphanumeric)
                .take(RANDOM_PASSWORD_LEN - 1)
                .map(char::from),
        )
        .collect()
}

impl Secrets {
    /// Fresh random passwords for every user ([`random_password`]).
    pub fn random() -> Self {
        Secrets {
            leaf_password: random_password(),
            system_password: random_password(),
            sidecar_password: random_password(),
            authority_password: random_password(),
            revoker_password: random_password(),
            operator_password: random_password(),
        }
    }

    /// The password of an application user.
    pub fn password(&self, user: NatsUser) -> &str {
        match user {
            NatsUser::Sidecar => &self.sidecar_password,
            NatsUser::Authority => &self.authority_password,
            NatsUser::Revoker => &self.revoker_password,
            NatsUser::Operator => &self.operator_password,
        }
    }

    /// Every password, to check that a file holds none of them.
    pub fn all_passwords(&self) -> [&str; 6] {
        self.all().map(|(_, p)| p)
    }

    /// Every password with the name [`TopologyError::BadSecret`] gives it.
    fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("leaf password", &self.leaf_password),
            ("system password", &self.system_password),
            ("sidecar password", &self.sidecar_password),
            ("authority password", &self.authority_password),
            ("revoker password", &self.revoker_password),
            ("operator password", &self.operator_password),
        ]
    }
}

/// The application users of account `VETO`. Who may write to the bus: revocation events —
/// `authority` and `revoker`, and `operator`; heartbeats (`veto.revocations.<region>.hb`) —
/// `authority` only; `sidecar` publishes nothing but JetStream API requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatsUser {
    /// `sidecar`: the revocation feed (JetStream API of every domain, its own inboxes, the
    /// revocation subjects); no publishing of revocations or heartbeats, no authority subjects
    /// or replies, no session bucket.
    Sidecar,
    /// `authority`: serves and sends refresh requests, publishes revocations and heartbeats
    /// (the authority's own and `veto heartbeat`'s), owns the session bucket; its inbox prefix
    /// is `_VETO_AUTHORITY_INBOX`.
    Authority,
    /// `revoker`: `veto revoke`: publishes revocation events (`veto.revocations.*.ev.>`) and
    /// reads their acknowledgements on `_INBOX`; nothing else (no heartbeats).
    Revoker,
    /// `operator`: `veto nats provision` and tools: anything but heartbeats.
    Operator,
}

impl NatsUser {
    pub const ALL: [NatsUser; 4] = [
        NatsUser::Sidecar,
        NatsUser::Authority,
        NatsUser::Revoker,
        NatsUser::Operator,
    ];

    /// The user name in the configs (`sidecar`, `authority`, `revoker`, `operator`).
    pub fn name(self) -> &'static str {
        match self {
            NatsUser::Sidecar => "sidecar",
            NatsUser::Authority => "authority",
            NatsUser::Revoker => "revoker",
            NatsUser::Operator => "operator",
        }
    }

    /// The user's `permissions` block.
    pub fn permissions(self) -> Option<Permissions> {
        match self {
            NatsUser::Sidecar => Some(sidecar_permissions()),
            NatsUser::Authority => Some(authority_permissions()),
            NatsUser::Revoker => Some(revoker_permissions()),
            NatsUser::Operator => Some(operator_permissions()),
        }
    }
}

impl std::fmt::Display for NatsUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for NatsUser {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatsUser::ALL
            .into_iter()
            .find(|u| u.name() == s)
            .ok_or_else(|| TopologyError::UnknownUser(s.to_string()))
    }
}

/// Every region's heartbeat subject (`veto.revocations.*.hb`): the authority's alone.
pub fn heartbeat_subjects() -> String {
    format!("{SUBJECT_ROOT}.*.hb")
}

/// What user `revoker` (`veto revoke`) may do: publish revocation events of any origin
/// (`veto.revocations.*.ev.>`; `--to` publishes at other regions' origins) and read the
/// streams' acknowledgements on its `_INBOX`. No heartbeats, no JetStream API, no authority
/// subjects, no session bucket.
pub fn revoker_permissions() -> Permissions {
    Permissions {
        publish_allow: vec![format!("{SUBJECT_ROOT}.*.ev.>")],
        publish_deny: vec![heartbeat_subjects()],
        subscribe_allow: vec!["_INBOX.>".into()],
        subscribe_deny: vec![],
        allow_responses: false,
    }
}

/// What user `operator` may do: anything (stream provisioning over `$JS.API`, tools, even
/// revocation events) except publish heartbeats: a heartbeat says "this region has nothing
/// more to tell", which only the region's authority may say.
pub fn operator_permissions() -> Permissions {
    Permissions {
        publish_deny: vec![heartbeat_subjects()],
        ..Default::default()
    }
}

/// One user's subject permissions, as nats-server 2.9 reads them: a deny wins over an allow;
/// with an allow list, whatever it does not name is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
    pub subscribe_deny: Vec<String>,
    /// `allow_responses: true`: may also publish one reply to each request it received.
    pub allow_responses: bool,
}

/// Every JetStream API subject that names the session bucket's stream (`KV_VETO_SESSIONS`),
/// under the API prefix `api` (`$JS.API` or `$JS.*.API`). The stream name is the third or
/// fourth token after the prefix: `STREAM.<op>.S`, `CONSUMER.<op>.S[.<consumer>...]`,
/// `DIRECT.GET.S[.<subject>]`, `STREAM.MSG.GET.S`, `CONSUMER.DURABLE.CREATE.S.<durable>`,
/// `CONSUMER.MSG.NEXT.S.<consumer>`.
fn session_stream_api(api: &str) -> [String; 4] {
    let stream = format!("KV_{SESSION_BUCKET}");
    [
        format!("{api}.*.*.{stream}"),
        format!("{api}.*.*.{stream}.>"),
        format!("{api}.*.*.*.{stream}"),
        format!("{api}.*.*.*.{stream}.>"),
    ]
}

/// What user `sidecar` may do: JetStream API requests in its own and other domains (stream
/// info, create/update of its region's stream with `nats.ensure_stream`, source repair, pull
/// consumers, catch-up reads of other regions' streams), replies on its `_INBOX`, the
/// revocation subjects (fast path). It publishes nothing else: no revocation events or
/// heartbeats (`veto revoke` and `veto heartbeat` run as `operator`), no refresh requests. It
/// can neither subscribe to the authorities' subjects and inbox nor address the session
/// bucket in any way (`$KV.>`, every API subject naming `KV_VETO_SESSIONS`, in any domain).
pub fn sidecar_permissions() -> Permissions {
    let mut publish_deny = vec![
        "$KV.>".to_string(),
        AUTHORITY_SUBJECTS.to_string(),
        format!("{AUTHORITY_INBOX_PREFIX}.>"),
        format!("{SUBJECT_ROOT}.>"),
    ];
    publish_deny.extend(session_stream_api("$JS.API"));
    publish_deny.extend(session_stream_api("$JS.*.API"));
    Permissions {
        publish_allow: vec!["$JS.API.>".into(), "$JS.*.API.>".into()],
        publish_deny,
        subscribe_allow: vec![format!("{SUBJECT_ROOT}.>"), "_INBOX.>".into()],
        subscribe_deny: vec![
            AUTHORITY_SUBJECTS.to_string(),
            format!("{AUTHORITY_INBOX_PREFIX}.>"),
            "$KV.>".into(),
        ],
        allow_responses: false,
    }
}

/// What user `authority` may do: serve (`veto.authority.>`, replies with `allow_responses`) and
/// send refresh requests, with replies on its own inbox prefix `_VETO_AUTHORITY_INBOX` (set by
/// `NatsConnection::inbox_prefix`; async-nats uses it for every inbox, JetStream consumers'
/// included, so no `_INBOX` subscription is allowed), publish revocations and heartbeats, use
/// the JetStream API of every domain and the session bucket (`$KV.VETO_SESSIONS.>`, acks and
/// flow control of its consumers).
pub fn authority_permissions() -> Permissions {
    let inbox = format!("{AUTHORITY_INBOX_PREFIX}.>");
    Permissions {
        publish_allow: vec![
            format!("{SUBJECT_ROOT}.>"),
            AUTHORITY_SUBJECTS.to_string(),
            "$JS.API.>".into(),
            "$JS.*.API.>".into(),
            "$JS.ACK.>".into(),
            "$JS.FC.>".into(),
            format!("$KV.{SESSION_BUCKET}.>"),
            inbox.clone(),
        ],
        publish_deny: vec![],
        subscribe_allow: vec![
            AUTHORITY_SUBJECTS.to_string(),
            format!("{SUBJECT_ROOT}.>"),
            inbox,
        ],
        subscribe_deny: vec![],
        allow_responses: true,
    }
}

impl Permissions {
    /// The `permissions: { ... }` value, indented for a user entry of the accounts block.
    fn render(&self, out: &mut String) {
        fn list(out: &mut String, key: &str, subjects: &[String]) {
            if subjects.is_empty() {
                return;
            }
            let _ = writeln!(out, "            {key}: [");
            for s in subjects {
                // Quoted: an unquoted `$JS...` would be read as a variable reference.
                let _ = writeln!(out, "              \"{s}\"");
            }
            let _ = writeln!(out, "            ]");
        }
        for (what, allow, deny) in [
            ("publish", &self.publish_allow, &self.publish_deny),
            ("subscribe", &self.subscribe_allow, &self.subscribe_deny),
        ] {
            if allow.is_empty() && deny.is_empty() {
                continue;
            }
            let _ = writeln!(out, "          {what}: {{");
            list(out, "allow", allow);
            list(out, "deny", deny);
            let _ = writeln!(out, "          }}");
        }
        if self.allow_responses {
            let _ = writeln!(out, "          allow_responses: true");
        }
    }
}

/// A whole multi-region topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub regions: Vec<Region>,
    /// Each JetStream server stores under `<store_dir>/<region>`.
    pub store_dir: PathBuf,
    /// Address every server listens on and dials (one host for a local topology).
    pub host: String,
    pub secrets: Secrets,
    /// The user a client without credentials is taken to be (`no_auth_user`). `None` (the
    /// default, and the shipped `deploy/nats/`): anonymous connections are refused. Local
    /// development and tests only.
    pub no_auth_user: Option<NatsUser>,
    /// One host per server (Kubernetes, or any multi-host placement) instead of [`Self::host`]
    /// for all; `None` for a local topology.
    pub hosts: Option<Hosts>,
    /// Passwords as nats-server environment-variable references (`password:
    /// $VETO_NATS_SIDECAR_PASSWORD`, the leaf remote's whole URL as `$VETO_NATS_LEAF_URL`, or
    /// `$VETO_NATS_<REGION>_LEAF_URL` on one host) instead of literals: the config holds no
    /// secret; the server's environment does ([`Self::secrets_env`]). On by default; off, the
    /// passwords are written into the configs.
    pub password_env: bool,
    /// TLS on every client, leaf-node and gateway connection, with these files
    /// ([`generate_tls`] makes them for local use). `None`: plaintext.
    pub tls: Option<TlsFiles>,
}

/// The certificate files of a TLS topology, as the configs name them (absolute paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA every server and client trusts (`nats.tls_ca_file` of veto).
    pub ca_file: PathBuf,
    /// The servers' certificate (server and client auth: gateways and leaf remotes present it
    /// when they dial).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Where [`generate_tls`] writes, under a directory: `ca.pem`, `server.pem`, `server-key.pem`.
pub fn tls_files_in(dir: &Path) -> TlsFiles {
    TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server-key.pem"),
    }
}

/// Generates a local CA and one server certificate signed by it (ECDSA P-256, SANs `sans`:
/// IP addresses or DNS names) into `dir` ([`tls_files_in`]); the keys are mode 0600 and the
/// CA's private key is not kept (regenerate to reissue). For local use and tests: a deployment
/// brings its own PKI (cert-manager on Kubernetes).
pub fn generate_tls(dir: &Path, sans: &[String]) -> std::io::Result<TlsFiles> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| std::io::Error::other(e.to_string());
    std::fs::create_dir_all(dir)?;
    let dir = std::path::absolute(dir)?;
    let files = tls_files_in(&dir);
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "veto nats local CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(sans.to_vec()).map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "veto nats server");
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = server.signed_by(&key, &issuer).map_err(err)?;
    std::fs::write(&files.ca_file, ca_cert.pem())?;
    std::fs::write(&files.cert_file, cert.pem())?;
    write_private(&files.key_file, &key.serialize_pem())?;
    Ok(files)
}

/// Writes a file only its owner may read (0600 on Unix).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())
}

/// Every server on its own host: what [`Topology::kubernetes`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Host name of a server: `{role}` (`hub` or `js`) and `{region}` are replaced, e.g.
    /// `nats-{role}.veto-{region}.svc.cluster.local`.
    pub template: String,
    /// The address every server listens on (`0.0.0.0`).
    pub listen: String,
}

/// The ports of every server of a [`Topology::kubernetes`] topology (nats-server's defaults).
pub const K8S_PORTS: RegionPorts = RegionPorts {
    hub_client: 4222,
    hub_gateway: 7222,
    hub_leafnode: 7422,
    js_client: 4222,
    hub_monitor: Some(8222),
    js_monitor: Some(8222),
};

/// The environment variable a server's config reads a password from with
/// [`Topology::password_env`].
pub fn password_var(what: &str) -> String {
    format!("VETO_NATS_{}_PASSWORD", env_key(what))
}

/// The environment variable holding the JetStream server's leaf remote URL
/// (`nats://leaf:<password>@<hub>:<port>`) with [`Topology::password_env`] and one host per
/// server (each server has its own environment).
pub const LEAF_URL_VAR: &str = "VETO_NATS_LEAF_URL";

/// The file [`write_secrets`] writes next to the configs: the servers' environment.
pub const SECRETS_ENV: &str = "secrets.env";

/// The directory [`write_secrets`] writes one password file per application user into
/// (`passwords/<user>`, for `nats.password_file` and `--nats-password-file`).
pub const PASSWORDS_DIR: &str = "passwords";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("no regions given")]
    NoRegions,
    #[error("region {0:?}: 1-64 characters of [A-Za-z0-9_-]")]
    BadRegion(String),
    #[error("region {0:?} is listed twice")]
    DuplicateRegion(String),
    #[error("port {0} is used twice")]
    DuplicatePort(u16),
    #[error("port 0 is not a port (region {0})")]
    ZeroPort(String),
    #[error("base port {base}: {regions} regions need ports up to {needed}, above 65535")]
    PortsExhausted {
        base: u16,
        regions: usize,
        needed: u32,
    },
    #[error("{0}: use only [A-Za-z0-9._~-], 1-128 characters")]
    BadSecret(&'static str),
    #[error("{0} and {1} are the same: every user needs its own password")]
    SharedSecret(&'static str, &'static str),
    #[error("unknown NATS user {0:?} (sidecar, authority, revoker or operator)")]
    UnknownUser(String),
    #[error("host {0:?} is not a plain host name or address")]
    BadHost(String),
    #[error("store directory {0:?} contains a quote, backslash or control character")]
    BadStoreDir(PathBuf),
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    #[error("TLS file {0:?} contains a quote, backslash or control character")]
    BadTlsPath(PathBuf),
}

/// The name of a region's hub server.
pub fn hub_server_name(region: &str) -> String {
    format!("{region}-hub")
}

/// The name of a region's JetStream server.
pub fn js_server_name(region: &str) -> String {
    format!("{region}-js")
}

/// Parses a comma-separated region list (`us,eu,ap`), trimming blanks.
pub fn parse_regions(list: &str) -> Result<Vec<String>, TopologyError> {
    let regions: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    check_regions(&regions)?;
    Ok(regions)
}

fn check_regions(names: &[String]) -> Result<(), TopologyError> {
    if names.is_empty() {
        return Err(TopologyError::NoRegions);
    }
    let mut seen = HashSet::new();
    for n in names {
        if !valid_region(n) {
            return Err(TopologyError::BadRegion(n.clone()));
        }
        if !seen.insert(n.as_str()) {
            return Err(TopologyError::DuplicateRegion(n.clone()));
        }
    }
    Ok(())
}

fn valid_secret(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

impl Topology {
    /// Regions with explicit ports, local defaults for host and secrets.
    pub fn new(regions: Vec<Region>, store_dir: impl Into<PathBuf>) -> Result<Self, TopologyError> {
        let t = Self::new_unchecked(regions, store_dir.into());
        t.validate()?;
        Ok(t)
    }

    /// One server per host, named by `host_template` (`{role}`, `{region}`), listening on
    /// 0.0.0.0 with [`K8S_PORTS`], passwords from the environment ([`Self::password_env`]):
    /// the shape `k8s/` runs. Stores under `<store_dir>/<region>`.
    pub fn kubernetes(
        regions: &[String],
        host_template: &str,
        store_dir: impl Into<PathBuf>,
    ) -> Result<Self, TopologyError> {
        check_regions(regions)?;
        let regions = regions
            .iter()
            .map(|name| Region {
                name: name.clone(),
                ports: K8S_PORTS,
            })
            .collect();
        let mut t = Self::new_unchecked(regions, store_dir.into());
        t.hosts = Some(Hosts {
            template: host_template.to_string(),
            listen: "0.0.0.0".into(),
        });
        t.password_env = true;
        t.validate()?;
        Ok(t)
    }

    fn new_unchecked(regions: Vec<Region>, store_dir: PathBuf) -> Self {
        Topology {
            regions,
            store_dir,
            host: "127.0.0.1".into(),
            secrets: Secrets::random(),
            no_auth_user: None,
            hosts: None,
            password_env: true,
            tls: None,
        }
    }

    /// Region `i` (in list order) gets ports `base + 10*i + 0..6`: hub client, hub gateway,
    /// hub leaf node, JetStream client, hub monitoring, JetStream monitoring. Appending a
    /// region to the list keeps every existing region's ports.
    pub fn with_base_port(
        regions: &[String],
        base: u16,
        store_dir: impl Into<PathBuf>,
    ) -> Result<Self, TopologyError> {
        check_regions(regions)?;
        let needed = u32::from(base) + u32::from(PORTS_PER_REGION) * regions.len() as u32;
        if base == 0 || needed > 65536 {
            return Err(TopologyError::PortsExhausted {
                base,
                regions: regions.len(),
                needed: needed.saturating_sub(1),
            });
        }
        let regions = regions
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let p = base + PORTS_PER_REGION * i as u16;
                Region {
                    name: name.clone(),
                    ports: RegionPorts {
                        hub_client: p,
                        hub_gateway: p + 1,
                        hub_leafnode: p + 2,
                        js_client: p + 3,
                        hub_monitor: Some(p + 4),
                        js_monitor: Some(p + 5),
                    },
                }
            })
            .collect();
        Self::new(regions, store_dir)
    }

    /// Checks names, ports, host, secrets and store path.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let names: Vec<String> = self.regions.iter().map(|r| r.name.clone()).collect();
        check_regions(&names)?;
        let mut ports = HashSet::new();
        for r in &self.regions {
            for p in r.ports.all() {
                if p == 0 {
                    return Err(TopologyError::ZeroPort(r.name.clone()));
                }
                // One host: every port once. One host per server: the template is checked.
                if self.hosts.is_none() && !ports.insert(p) {
                    return Err(TopologyError::DuplicatePort(p));
                }
            }
        }
        let host_ok = !self.host.is_empty()
            && self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !host_ok {
            return Err(TopologyError::BadHost(self.host.clone()));
        }
        if let Some(h) = &self.hosts {
            let probe = h.template.replace("{role}", "js").replace("{region}", "r");
            let ok = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
            };
            if !h.template.contains("{region}") || !h.template.contains("{role}") || !ok(&probe) {
                return Err(TopologyError::BadHost(h.template.clone()));
            }
            if !ok(&h.listen) {
                return Err(TopologyError::BadHost(h.listen.clone()));
            }
        }
        let secrets = self.secrets.all();
        for (i, (what, secret)) in secrets.iter().enumerate() {
            if !valid_secret(secret) {
                return Err(TopologyError::BadSecret(what));
            }
            if let Some((other, _)) = secrets[..i].iter().find(|(_, s)| s == secret) {
                return Err(TopologyError::SharedSecret(other, what));
            }
        }
        let store = self.store_dir.to_string_lossy();
        if store.is_empty()
            || store
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(TopologyError::BadStoreDir(self.store_dir.clone()));
        }
        if let Some(t) = &self.tls {
            for p in [&t.ca_file, &t.cert_file, &t.key_file] {
                let text = p.to_string_lossy();
                if text.is_empty()
                    || text
                        .chars()
                        .any(|c| c == '"' || c == '\\' || c.is_control())
                {
                    return Err(TopologyError::BadTlsPath(p.clone()));
                }
            }
        }
        Ok(())
    }

    pub fn region(&self, name: &str) -> Result<&Region, TopologyError> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| TopologyError::UnknownRegion(name.to_string()))
    }

    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// `host:port`, with IPv6 literals bracketed.
    fn addr(&self, port: u16) -> String {
        join_host_port(&self.host, port)
    }

    /// What a server listens on.
    fn listen_addr(&self, port: u16) -> String {
        match &self.hosts {
            Some(h) => join_host_port(&h.listen, port),
            None => self.addr(port),
        }
    }

    /// Where others dial a server of `region` (`role`: `hub` or `js`).
    fn dial_addr(&self, role: &str, region: &str, port: u16) -> String {
        match &self.hosts {
            Some(h) => join_host_port(
                &h.template
                    .replace("{role}", role)
                    .replace("{region}", region),
                port,
            ),
            None => self.addr(port),
        }
    }

    /// A password as a config value: quoted, or a `$VAR` reference ([`Self::password_env`]).
    fn password_value(&self, what: &str, literal: &str) -> String {
        if self.password_env {
            format!("${}", password_var(what))
        } else {
            format!("\"{literal}\"")
        }
    }

    /// `tls` with [`Self::tls`], else `nats`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "tls"
        } else {
            "nats"
        }
    }

    /// The variable holding `region`'s leaf remote URL ([`Self::password_env`]):
    /// [`LEAF_URL_VAR`] with one host per server, `VETO_NATS_<REGION>_LEAF_URL` on one host.
    pub fn leaf_url_var(&self, region: &str) -> String {
        if self.hosts.is_some() {
            LEAF_URL_VAR.to_string()
        } else {
            format!("VETO_NATS_{}_LEAF_URL", env_key(region))
        }
    }

    /// `region`'s leaf remote URL, password included.
    fn leaf_url(&self, region: &str) -> Result<String, TopologyError> {
        let r = self.region(region)?;
        Ok(format!(
            "{}://leaf:{}@{}",
            self.scheme(),
            self.secrets.leaf_password,
            self.dial_addr("hub", region, r.ports.hub_leafnode)
        ))
    }

    /// The environment every server of a [`Self::password_env`] topology needs: `(name,
    /// value)` of each password variable and each region's leaf URL variable.
    pub fn secret_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (password_var("system"), self.secrets.system_password.clone()),
            (password_var("leaf"), self.secrets.leaf_password.clone()),
        ];
        for u in NatsUser::ALL {
            vars.push((password_var(u.name()), self.secrets.password(u).to_string()));
        }
        if self.hosts.is_none() {
            for r in &self.regions {
                if let Ok(url) = self.leaf_url(&r.name) {
                    vars.push((self.leaf_url_var(&r.name), url));
                }
            }
        }
        vars
    }

    /// [`Self::secret_vars`] as a shell-sourceable file (`set -a; . secrets.env; set +a`
    /// before starting nats-server).
    pub fn secrets_env(&self) -> String {
        let mut out = String::from(
            "# Veto NATS topology: the servers' secrets. Generated by `veto nats topology`.\n\
             # Keep private (mode 0600, never committed). nats-server reads them from its\n\
             # environment: set -a; . ./secrets.env; set +a; nats-server -c <region>-js.conf\n",
        );
        for (k, v) in self.secret_vars() {
            let _ = writeln!(out, "{k}={v}");
        }
        out
    }

    /// The `tls { ... }` block of a listener (or a dialing gateway), `indent` spaces deep.
    fn tls_block(&self, out: &mut String, indent: usize) {
        if let Some(t) = &self.tls {
            let pad = " ".repeat(indent);
            let _ = write!(
                out,
                "{pad}tls {{\n{pad}  cert_file: \"{}\"\n{pad}  key_file: \"{}\"\n{pad}  ca_file: \"{}\"\n{pad}  timeout: 2\n{pad}}}\n",
                t.cert_file.display(),
                t.key_file.display(),
                t.ca_file.display(),
            );
        }
    }

    /// URL of a region's JetStream server: what its sidecars use as `nats.url`.
    pub fn js_url(&self, region: &str) -> Result<String, TopologyError> {
        Ok(format!(
            "{}://{}",
            self.scheme(),
            self.dial_addr("js", region, self.region(region)?.ports.js_client)
        ))
    }

    /// URL of a region's hub (core NATS only).
    pub fn hub_url(&self, region: &str) -> Result<String, TopologyError> {
        Ok(format!(
            "{}://{}",
            self.scheme(),
            self.dial_addr("hub", region, self.region(region)?.ports.hub_client)
        ))
    }

    /// Where a region's JetStream server keeps its store.
    pub fn store_of(&self, region: &str) -> PathBuf {
        self.store_dir.join(region)
    }

    /// The accounts block shared by every server: SYS (system) and VETO (application, users
    /// `sidecar`, `authority`, `operator` with their permissions), and the `no_auth_user` if
    /// one is configured.
    fn accounts(&self, out: &mut String, jetstream: bool) {
        let _ = write!(
            out,
            "accounts {{\n  SYS {{ users: [ {{ user: \"sys\", password: {sys} }} ] }}\n  \
             VETO {{\n",
            sys = self.password_value("system", &self.secrets.system_password),
        );
        if jetstream {
            out.push_str("    jetstream: enabled\n");
        }
        out.push_str("    users: [\n");
        for user in NatsUser::ALL {
            let _ = write!(
                out,
                "      {{\n        user: \"{}\"\n        password: {}\n",
                user.name(),
                self.password_value(user.name(), self.secrets.password(user))
            );
            if let Some(p) = user.permissions() {
                out.push_str("        permissions: {\n");
                p.render(out);
                out.push_str("        }\n");
            }
            out.push_str("      }\n");
        }
        out.push_str("    ]\n  }\n}\nsystem_account: SYS\n");
        match self.no_auth_user {
            Some(u) => {
                let _ = writeln!(
                    out,
                    "# Clients without credentials are user {u}: local development only.\n\
                     no_auth_user: \"{u}\""
                );
            }
            None => {
                out.push_str("# Anonymous clients are refused (no no_auth_user): each logs in as a user above.\n")
            }
        }
    }

    /// The client listener's `tls` block, if any.
    fn client_tls(&self, out: &mut String) {
        if self.tls.is_some() {
            out.push_str("\n# Clients (sidecars, authorities, CLI) must use TLS and trust the topology's CA.\n");
            self.tls_block(out, 0);
        }
    }

    fn header(out: &mut String, what: &str, region: &str) {
        let _ = write!(
            out,
            "# Veto NATS topology, region {region:?}: {what}.\n\
             # Generated by `veto nats topology`; regenerate, do not edit.\n\
             # nats-server 2.9: only 2.9 keys here; check with `nats-server -t -c FILE`.\n\n",
        );
    }

    /// The hub of `region`: core NATS, gateways to every other region, a leaf-node listener
    /// that binds its user to account VETO.
    pub fn hub_config(&self, region: &str) -> Result<String, TopologyError> {
        let r = self.region(region)?;
        let mut out = String::new();
        Self::header(
            &mut out,
            "core-NATS hub (gateways + leaf-node listener)",
            region,
        );
        let _ = writeln!(out, "server_name: \"{}\"", hub_server_name(region));
        let _ = writeln!(out, "listen: \"{}\"", self.listen_addr(r.ports.hub_client));
        if let Some(m) = r.ports.hub_monitor {
            let _ = writeln!(out, "http: \"{}\"", self.listen_addr(m));
        }
        self.client_tls(&mut out);
        out.push('\n');
        self.accounts(&mut out, false);
        let _ = write!(
            out,
            "\n# The super-cluster: one gateway per region, named after it.\n\
             gateway {{\n  name: \"{region}\"\n  listen: \"{}\"\n",
            self.listen_addr(r.ports.hub_gateway)
        );
        self.tls_block(&mut out, 2);
        out.push_str("  gateways: [\n");
        for other in self.regions.iter().filter(|o| o.name != region) {
            let _ = writeln!(
                out,
                "    {{ name: \"{}\", urls: [ \"{}://{}\" ] }}",
                other.name,
                self.scheme(),
                self.dial_addr("hub", &other.name, other.ports.hub_gateway)
            );
        }
        let _ = write!(
            out,
            "  ]\n}}\n\n\
             # This region's JetStream server (domain {region:?}) attaches here.\n\
             leafnodes {{\n  listen: \"{}\"\n",
            self.listen_addr(r.ports.hub_leafnode),
        );
        self.tls_block(&mut out, 2);
        let _ = write!(
            out,
            "  authorization {{\n    users: [\n      \
             {{ user: \"leaf\", password: {}, account: \"VETO\" }}\n    ]\n  }}\n}}\n",
            self.password_value("leaf", &self.secrets.leaf_password),
        );
        Ok(out)
    }

    /// The JetStream server of `region`: its own domain, leaf node of the region's hub.
    pub fn js_config(&self, region: &str) -> Result<String, TopologyError> {
        let r = self.region(region)?;
        let mut out = String::new();
        Self::header(&mut out, "JetStream server (leaf node of the hub)", region);
        let _ = writeln!(out, "server_name: \"{}\"", js_server_name(region));
        let _ = writeln!(out, "listen: \"{}\"", self.listen_addr(r.ports.js_client));
        if let Some(m) = r.ports.js_monitor {
            let _ = writeln!(out, "http: \"{}\"", self.listen_addr(m));
        }
        self.client_tls(&mut out);
        out.push('\n');
        self.accounts(&mut out, true);
        let hub = self.dial_addr("hub", region, r.ports.hub_leafnode);
        // The remote trusts the topology's CA (and presents the server certificate).
        let remote_tls = match &self.tls {
            Some(t) => format!(
                ",\n      tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", timeout: 2 }}\n    ",
                t.cert_file.display(),
                t.key_file.display(),
                t.ca_file.display()
            ),
            None => " ".into(),
        };
        let remote = if self.password_env {
            // A URL carries its password: the whole URL comes from the environment.
            let var = self.leaf_url_var(region);
            format!(
                "# ${var} = {}://leaf:<{}>@{hub}\n    {{ url: ${var}, account: \"VETO\"{remote_tls}}}",
                self.scheme(),
                password_var("leaf")
            )
        } else {
            format!(
                "{{ url: \"{}://leaf:{}@{hub}\", account: \"VETO\"{remote_tls}}}",
                self.scheme(),
                self.secrets.leaf_password
            )
        };
        let _ = write!(
            out,
            "\n# Its own domain: no meta group shared with other regions.\n\
             jetstream {{\n  domain: \"{region}\"\n  store_dir: \"{}\"\n}}\n\n\
             # Only the application account is bridged to the hub.\n\
             leafnodes {{\n  remotes: [\n    {remote}\n  ]\n}}\n",
            self.store_of(region).display(),
        );
        Ok(out)
    }

    /// Every file of the topology: `(file name, text)`, `<region>-hub.conf`,
    /// `<region>-js.conf` per region, then `ports.env`; with [`Self::hosts`] (one host per
    /// server) `<region>/nats/hub.conf` and `<region>/nats/js.conf` per region only (the
    /// layout of `k8s/overlays/`).
    pub fn files(&self) -> Result<Vec<(String, String)>, TopologyError> {
        self.validate()?;
        let mut files = Vec::with_capacity(self.regions.len() * 2 + 1);
        for r in &self.regions {
            let (hub, js) = if self.hosts.is_some() {
                (
                    format!("{}/nats/hub.conf", r.name),
                    format!("{}/nats/js.conf", r.name),
                )
            } else {
                (
                    format!("{}-hub.conf", r.name),
                    format!("{}-js.conf", r.name),
                )
            };
            files.push((hub, self.hub_config(&r.name)?));
            files.push((js, self.js_config(&r.name)?));
        }
        if self.hosts.is_none() {
            files.push(("ports.env".into(), self.ports_env()));
        }
        Ok(files)
    }

    /// A shell-sourceable list of the ports and URLs, one region per block.
    pub fn ports_env(&self) -> String {
        let mut out = String::from(
            "# Veto NATS topology: ports and URLs. Generated by `veto nats topology`.\n\
             # VETO_NATS_<REGION>_URL is the region's JetStream server: sidecars, `veto revoke`\n\
             # and `veto nats provision` connect there.\n",
        );
        let _ = writeln!(out, "VETO_NATS_REGIONS={}", self.region_names().join(","));
        let _ = writeln!(out, "VETO_NATS_STORE_DIR={}", self.store_dir.display());
        if let Some(t) = &self.tls {
            let _ = writeln!(out, "VETO_NATS_TLS_CA_FILE={}", t.ca_file.display());
        }
        let mut seen = BTreeSet::new();
        for r in &self.regions {
            let key = env_key(&r.name);
            // `a-b` and `a_b` would share a key; the first keeps it, the README says so.
            if !seen.insert(key.clone()) {
                continue;
            }
            let p = &r.ports;
            let _ = write!(
                out,
                "\n# region {name}\nVETO_NATS_{key}_URL={scheme}://{js}\nVETO_NATS_{key}_HUB_URL={scheme}://{hub}\n\
                 VETO_NATS_{key}_GATEWAY_PORT={gw}\nVETO_NATS_{key}_LEAFNODE_PORT={leaf}\n",
                name = r.name,
                scheme = self.scheme(),
                js = self.addr(p.js_client),
                hub = self.addr(p.hub_client),
                gw = p.hub_gateway,
                leaf = p.hub_leafnode,
            );
            if let Some(m) = p.hub_monitor {
                let _ = writeln!(out, "VETO_NATS_{key}_HUB_MONITOR=http://{}", self.addr(m));
            }
            if let Some(m) = p.js_monitor {
                let _ = writeln!(out, "VETO_NATS_{key}_JS_MONITOR=http://{}", self.addr(m));
            }
        }
        out
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn env_key(region: &str) -> String {
    region
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Writes [`Topology::files`] into `dir` (created if missing); returns the paths written.
pub fn write_files(t: &Topology, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let files = t
        .files()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    std::fs::create_dir_all(dir)?;
    files
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text).map(|()| path)
        })
        .collect()
}

/// Writes the secrets of a [`Topology::password_env`] topology into `dir`: [`SECRETS_ENV`]
/// (the servers' environment) and [`PASSWORDS_DIR`]`/<user>` per application user, all mode
/// 0600; returns the paths written.
pub fn write_secrets(t: &Topology, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let passwords = dir.join(PASSWORDS_DIR);
    std::fs::create_dir_all(&passwords)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passwords, std::fs::Permissions::from_mode(0o700))?;
    }
    let env = dir.join(SECRETS_ENV);
    write_private(&env, &t.secrets_env())?;
    let mut written = vec![env];
    for u in NatsUser::ALL {
        let p = passwords.join(u.name());
        write_private(&p, t.secrets.password(u))?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Topology {
        let regions = parse_regions("us, eu,ap").unwrap();
        Topology::with_base_port(&regions, 14000, "/tmp/veto-nats").unwrap()
    }

    #[test]
    fn base_port_packs_regions_in_list_order() {
        let t = three();
        let eu = t.region("eu").unwrap().ports;
        assert_eq!(
            (eu.hub_client, eu.hub_gateway, eu.hub_leafnode, eu.js_client),
            (14010, 14011, 14012, 14013)
        );
        assert_eq!((eu.hub_monitor, eu.js_monitor), (Some(14014), Some(14015)));
        assert_eq!(t.js_url("ap").unwrap(), "nats://127.0.0.1:14023");
        // Appending a region keeps the others' ports.
        let four = Topology::with_base_port(
            &parse_regions("us,eu,ap,sa").unwrap(),
            14000,
            "/tmp/veto-nats",
        )
        .unwrap();
        assert_eq!(four.regions[..3], t.regions[..]);
        // ... and every existing JetStream server's file: only the hubs need a restart.
        for r in ["us", "eu", "ap"] {
            assert_eq!(four.js_config(r).unwrap(), t.js_config(r).unwrap());
        }
        assert_ne!(four.hub_config("us").unwrap(), t.hub_config("us").unwrap());
    }

    #[test]
    fn hub_gateways_reach_every_other_region_and_bind_the_leaf_to_veto() {
        let t = three();
        let hub = t.hub_config("eu").unwrap();
        assert!(hub.contains("server_name: \"eu-hub\""));
        assert!(hub.contains("name: \"eu\"\n  listen: \"127.0.0.1:14011\""));
        assert!(hub.contains("{ name: \"us\", urls: [ \"nats://127.0.0.1:14001\" ] }"));
        assert!(hub.contains("{ name: \"ap\", urls: [ \"nats://127.0.0.1:14021\" ] }"));
        assert!(!hub.contains("{ name: \"eu\", urls"));
        assert!(hub.contains("account: \"VETO\""));
        assert!(hub.contains("system_account: SYS"));
        assert!(!hub.contains("jetstream"));
    }

    #[test]
    fn js_server_has_its_own_domain_and_attaches_to_its_hub() {
        let t = three();
        let js = t.js_config("ap").unwrap();
        assert!(js.contains("server_name: \"ap-js\""));
        assert!(js.contains("domain: \"ap\""));
        assert!(js.contains("store_dir: \"/tmp/veto-nats/ap\""));
        assert!(js.contains("{ url: $VETO_NATS_AP_LEAF_URL, account: \"VETO\" }"));
        assert!(t.secrets_env().contains(&format!(
            "\nVETO_NATS_AP_LEAF_URL=nats://leaf:{}@127.0.0.1:14022\n",
            t.secrets.leaf_password
        )));
        let mut literal = t.clone();
        literal.password_env = false;
        assert!(literal.js_config("ap").unwrap().contains(&format!(
            "url: \"nats://leaf:{}@127.0.0.1:14022\"",
            t.secrets.leaf_password
        )));
        assert!(
            !js.contains("\nno_auth_user:"),
            "the shipped shape has no anonymous user"
        );
        assert!(js.contains("jetstream: enabled"));
        for key in ["compression", "pool_size", "sync_interval"] {
            assert!(!js.contains(key), "2.10+ key {key}");
        }
    }

    #[test]
    fn files_are_named_per_region_and_role() {
        let names: Vec<String> = three().files().unwrap().into_iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            [
                "us-hub.conf",
                "us-js.conf",
                "eu-hub.conf",
                "eu-js.conf",
                "ap-hub.conf",
                "ap-js.conf",
                "ports.env"
            ]
        );
        let env = three().ports_env();
        assert!(env.contains("VETO_NATS_EU_URL=nats://127.0.0.1:14013\n"));
        assert!(env.contains("VETO_NATS_REGIONS=us,eu,ap\n"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(parse_regions(" , "), Err(TopologyError::NoRegions));
        assert_eq!(
            parse_regions("us,eu,us"),
            Err(TopologyError::DuplicateRegion("us".into()))
        );
        assert_eq!(
            parse_regions("us,e.u"),
            Err(TopologyError::BadRegion("e.u".into()))
        );
        let regions = parse_regions("us,eu").unwrap();
        assert!(matches!(
            Topology::with_base_port(&regions, 65530, "/tmp/x"),
            Err(TopologyError::PortsExhausted { .. })
        ));
        let mut t = three();
        t.regions[1].ports.js_client = t.regions[0].ports.hub_client;
        assert_eq!(t.validate(), Err(TopologyError::DuplicatePort(14000)));
        let mut t = three();
        t.secrets.leaf_password = "a@b".into();
        assert_eq!(t.validate(), Err(TopologyError::BadSecret("leaf password")));
        let mut t = three();
        t.secrets.sidecar_password = "a b".into();
        assert_eq!(
            t.validate(),
            Err(TopologyError::BadSecret("sidecar password"))
        );
        let mut t = three();
        t.secrets.operator_password = t.secrets.sidecar_password.clone();
        assert_eq!(
            t.validate(),
            Err(TopologyError::SharedSecret(
                "sidecar password",
                "operator password"
            ))
        );
        assert_eq!(
            "root".parse::<NatsUser>(),
            Err(TopologyError::UnknownUser("root".into()))
        );
        let mut t = three();
        t.store_dir = PathBuf::from("/tmp/a\"b");
        assert!(matches!(t.validate(), Err(TopologyError::BadStoreDir(_))));
        assert!(t.hub_config("sa").is_err());
    }

    #[test]
    fn four_users_with_permissions_no_password_and_no_anonymous_user_unless_asked() {
        let mut t = three();
        for text in [t.hub_config("us").unwrap(), t.js_config("us").unwrap()] {
            for u in NatsUser::ALL {
                let entry = format!(
                    "user: \"{u}\"\n        password: $VETO_NATS_{}_PASSWORD\n",
                    u.name().to_uppercase()
                );
                assert!(text.contains(&entry), "{u}:\n{text}");
            }
            for p in t.secrets.all_passwords() {
                assert!(!text.contains(p), "a password in the config");
            }
            assert!(!text.contains("\nno_auth_user:"));
            assert_eq!(text.matches("permissions: {").count(), 4);
            assert_eq!(text.matches("allow_responses: true").count(), 1);
        }
        let env = t.secrets_env();
        for u in NatsUser::ALL {
            let line = format!(
                "\nVETO_NATS_{}_PASSWORD={}\n",
                u.name().to_uppercase(),
                t.secrets.password(u)
            );
            assert!(env.contains(&line), "{line}");
        }
        t.no_auth_user = Some(NatsUser::Operator);
        assert!(t
            .js_config("eu")
            .unwrap()
            .contains("\nno_auth_user: \"operator\"\n"));
        assert_eq!("sidecar".parse::<NatsUser>(), Ok(NatsUser::Sidecar));
        assert_eq!("revoker".parse::<NatsUser>(), Ok(NatsUser::Revoker));
    }

    #[test]
    fn random_passwords_are_32_alphanumerics_starting_with_a_letter_and_differ() {
        let a = Secrets::random();
        let b = Secrets::random();
        for p in a.all_passwords() {
            assert_eq!(p.len(), RANDOM_PASSWORD_LEN);
            assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()), "{p}");
            assert!(p.as_bytes()[0].is_ascii_alphabetic(), "{p}");
        }
        assert_ne!(a, b);
        assert!(
            three().validate().is_ok(),
            "random passwords are valid and distinct"
        );
    }

    #[test]
    fn only_the_authority_publishes_heartbeats_and_only_writers_publish_events() {
        fn matches(pattern: &str, subject: &str) -> bool {
            let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
            loop {
                match (p.next(), s.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        // nats-server: a deny wins; with an allow list, only what it names.
        let may_publish = |u: NatsUser, subject: &str| {
            let p = u.permissions().unwrap();
            (p.publish_allow.is_empty() || p.publish_allow.iter().any(|a| matches(a, subject)))
                && !p.publish_deny.iter().any(|d| matches(d, subject))
        };
        let (ev, hb) = ("veto.revocations.us.ev.e1", "veto.revocations.eu.hb");
        assert!(may_publish(NatsUser::Authority, ev) && may_publish(NatsUser::Authority, hb));
        assert!(may_publish(NatsUser::Revoker, ev) && !may_publish(NatsUser::Revoker, hb));
        assert!(may_publish(NatsUser::Operator, ev) && !may_publish(NatsUser::Operator, hb));
        assert!(may_publish(
            NatsUser::Operator,
            "$JS.API.STREAM.CREATE.VETO_REVOCATIONS_us"
        ));
        assert!(!may_publish(NatsUser::Sidecar, ev) && !may_publish(NatsUser::Sidecar, hb));
        assert!(!may_publish(
            NatsUser::Revoker,
            "$JS.API.STREAM.DELETE.VETO_REVOCATIONS_us"
        ));
        assert!(!may_publish(NatsUser::Revoker, "veto.authority.us.refresh"));
    }

    #[test]
    fn tls_topology_has_tls_on_clients_leafs_and_gateways() {
        let mut t = three();
        t.tls = Some(tls_files_in(Path::new("/x/tls")));
        let hub = t.hub_config("us").unwrap();
        assert_eq!(
            hub.matches("tls {").count(),
            3,
            "client, gateway, leaf listener:\n{hub}"
        );
        assert!(hub.contains("  ca_file: \"/x/tls/ca.pem\"\n"));
        assert!(hub.contains("{ name: \"eu\", urls: [ \"tls://127.0.0.1:14011\" ] }"));
        let js = t.js_config("us").unwrap();
        assert_eq!(js.matches("tls {").count(), 2, "client, leaf remote:\n{js}");
        assert!(t
            .secrets_env()
            .contains("VETO_NATS_US_LEAF_URL=tls://leaf:"));
        assert_eq!(t.js_url("eu").unwrap(), "tls://127.0.0.1:14013");
        assert!(t
            .ports_env()
            .contains("VETO_NATS_TLS_CA_FILE=/x/tls/ca.pem\n"));
    }

    #[test]
    fn a_sidecar_cannot_address_the_session_bucket_or_the_authorities() {
        let p = sidecar_permissions();
        assert_eq!(p.publish_allow, ["$JS.API.>", "$JS.*.API.>"]);
        assert!(!p.allow_responses);
        for denied in [
            "$KV.>",
            "veto.authority.>",
            "_VETO_AUTHORITY_INBOX.>",
            "veto.revocations.>",
            "$JS.API.*.*.KV_VETO_SESSIONS",
            "$JS.API.*.*.KV_VETO_SESSIONS.>",
            "$JS.API.*.*.*.KV_VETO_SESSIONS",
            "$JS.API.*.*.*.KV_VETO_SESSIONS.>",
            "$JS.*.API.*.*.KV_VETO_SESSIONS",
            "$JS.*.API.*.*.*.KV_VETO_SESSIONS.>",
        ] {
            assert!(p.publish_deny.iter().any(|d| d == denied), "{denied}");
        }
        assert_eq!(p.subscribe_allow, ["veto.revocations.>", "_INBOX.>"]);
        assert_eq!(
            p.subscribe_deny,
            ["veto.authority.>", "_VETO_AUTHORITY_INBOX.>", "$KV.>"]
        );
        // Every API subject naming the bucket's stream falls under one of the deny patterns
        // (token-wise match, as nats-server does).
        fn matches(pattern: &str, subject: &str) -> bool {
            let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
            loop {
                match (p.next(), s.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        for api in ["$JS.API", "$JS.eu.API"] {
            for op in [
                "STREAM.INFO.KV_VETO_SESSIONS",
                "STREAM.UPDATE.KV_VETO_SESSIONS",
                "STREAM.DELETE.KV_VETO_SESSIONS",
                "STREAM.PURGE.KV_VETO_SESSIONS",
                "STREAM.MSG.GET.KV_VETO_SESSIONS",
                "STREAM.MSG.DELETE.KV_VETO_SESSIONS",
                "DIRECT.GET.KV_VETO_SESSIONS",
                "DIRECT.GET.KV_VETO_SESSIONS.$KV.VETO_SESSIONS.s1",
                "CONSUMER.CREATE.KV_VETO_SESSIONS",
                "CONSUMER.CREATE.KV_VETO_SESSIONS.c.$KV.VETO_SESSIONS.>",
                "CONSUMER.DURABLE.CREATE.KV_VETO_SESSIONS.c",
                "CONSUMER.MSG.NEXT.KV_VETO_SESSIONS.c",
                "CONSUMER.INFO.KV_VETO_SESSIONS.c",
                "CONSUMER.NAMES.KV_VETO_SESSIONS",
            ] {
                let subject = format!("{api}.{op}");
                assert!(
                    p.publish_deny.iter().any(|d| matches(d, &subject)),
                    "{subject} is not denied"
                );
            }
        }
        // ... and none of what the feed needs is.
        for needed in [
            "$JS.API.STREAM.INFO.VETO_REVOCATIONS_us",
            "$JS.API.STREAM.UPDATE.VETO_REVOCATIONS_us",
            "$JS.API.CONSUMER.CREATE.VETO_REVOCATIONS_us",
            "$JS.API.CONSUMER.MSG.NEXT.VETO_REVOCATIONS_us.c",
            "$JS.eu.API.STREAM.MSG.GET.VETO_REVOCATIONS_eu",
            "$JS.eu.API.CONSUMER.CREATE.VETO_REVOCATIONS_eu",
        ] {
            assert!(
                p.publish_allow.iter().any(|a| matches(a, needed)),
                "{needed}"
            );
            assert!(
                !p.publish_deny.iter().any(|d| matches(d, needed)),
                "{needed}"
            );
        }
    }
}
