//! Daemon configuration (TOML), shared by `spa-server` (green) and
//! `red-relay` (red). `check` names the key and the problem for every error
//! it finds, all at once.
//!
//! ```toml
//! [daemon]
//! knock_port = 62201
//! capture = "packet"            # "packet" (AF_PACKET, nothing bound) or "udp"
//! interface = "eth0"            # packet capture on one interface (default: all)
//! keys = ["/etc/spa/green.key"] # X25519 receiver keys, current first (rotation)
//! replay_db = "/var/lib/spa/replay.redb"
//! control_socket = "/run/spa/control.sock"
//! user = "spa"                  # required: drop privileges to this user after setup;
//!                               # it must be able to read the [trust] files and
//!                               # search replay_db's directory ("root": stay root)
//! log_format = "plain"          # or "json"
//! replay_reservation_ms = 2000  # SPEC §7.3.1: no fsync per knock; after a crash
//!                               # knocks wait up to this long (0: fsync each knock)
//! workers = 2                   # verification threads (default: available cores)
//!
//! [trust]
//! anchors = ["/etc/spa/ca.pem"]
//! intermediates = []
//! crls = ["/etc/spa/crl.pem"]
//! unknown_revocation = "allow"  # or "deny"
//! expired_crl = "refuse"        # or "ignore"
//!
//! [firewall]
//! table = "spa"
//! mode = "blackhole"            # or "protect" (only protect_ports are closed;
//!                               # every [[services]] port must be among them)
//! protect_ports = ["tcp/22"]
//! management = ["192.0.2.0/24"] # always accepted, never blocked
//! force = false                 # install blackhole even if it cuts this SSH session
//! remove_on_exit = true
//! forward = "accept"            # routed traffic: "accept" (default) or "drop"
//! forward_allow = ["10.0.3.0/24 tcp/22", "from 10.0.3.0/24"] # crosses under "drop"
//!
//! [time]
//! max_age_ms = 60000
//! max_future_skew_ms = 10000
//!
//! [policy]
//! allow_source_mode = false
//! require_source_match = true
//! max_lifetime = 3600
//!
//! [[services]]
//! name = "ssh"
//! proto = "tcp"
//! port = 22
//!
//! [[rules]]
//! identity = "cn:alice"         # or email:…, dns:…, uri:…, "*"
//! services = ["ssh"]            # or ["*"]
//!
//! [ips]
//! rate = 20                     # knocks per second per source (IPv6: per /64)
//! burst = 40
//! failures = 5                  # invalid knocks (after the MAC) …
//! failure_window = 60           # … within this many seconds …
//! block = 600                   # … block the source (IPv6: its /64) this many seconds
//! scan_ports = 10               # distinct closed ports …
//! scan_window = 10              # … within this many seconds: block
//! weight_open_failed = 1        # what each refusal adds toward `failures`:
//! weight_replayed = 0           #   MAC-valid garbage, replayed/stale copies,
//! weight_invalid = 1            #   other refusals before the client is proven,
//! weight_proven = 1             #   refusals after its signature verified (0..=64)
//! accepted_grace = 3600         # seconds a source with an accepted knock is
//!                               #   shielded from forgeable failures and scans
//! max_sources = 65536           # sources each IPS table tracks (LRU)
//! max_blocks = 65536            # running blocks at most (also the nft set size)
//!
//! [relay]                       # spa-server only: services that live on red
//!                               # (several reds: [[relay]] entries, see relays.rs)
//! red = "10.200.60.2:62202"     # red's order port
//! red_key = "base64…"           # red's X25519 public key (red-relay pubkey)
//! signing_key = "/etc/spa/green-signing.key" # spa-server keygen --signing
//! source = "10.200.60.1"        # green's address toward red: red opens for it
//! services = [                  # a name, or a table with the port green probes
//!   { name = "web", proto = "tcp", port = 80 },
//!   "red-dns",                  # no probe: the order is repeated blindly
//! ]
//! resend_ms = 300               # resend a fresh order this often …
//! resends = 5                   # … at most this many times, until the probe connects
//!
//! [tunnel]                      # spa-server only: the mutual-TLS endpoint
//! listen_port = 8443            # must be the tcp port of [[services]] `service`
//! certificate = "/etc/spa/green-tls.pem" # spa-server pki issue --server
//! key = "/etc/spa/green-tls.key"
//! service = "tunnel"            # opened by open-tunnel knocks
//! max_connections = 4096        # streams served at once (default 4096) …
//! max_connections_per_source = 1024 # … and per client address (default 1024)
//! ```
//!
//! red-relay takes the same file without `[relay]` and with, for each
//! green whose orders it accepts:
//!
//! ```toml
//! [[gateways]]
//! signing_key = "base64…"       # green's Ed25519 public key (spa-server pubkey)
//! receiver_keys = ["base64…"]   # green's X25519 public key(s), current first
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod relays;

pub use relays::{MAX_REDS, MetricsSection, Relays};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process and capture settings.
    pub daemon: DaemonSection,
    /// Trust anchors and CRLs.
    pub trust: TrustSection,
    /// Firewall.
    #[serde(default)]
    pub firewall: FirewallSection,
    /// Freshness.
    #[serde(default)]
    pub time: TimeSection,
    /// Address rules and lifetime.
    #[serde(default)]
    pub policy: PolicySection,
    /// Services this host opens.
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    /// Who may use what.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
    /// Intrusion prevention.
    #[serde(default)]
    pub ips: IpsSection,
    /// red-relay only: the gateways whose orders are accepted.
    #[serde(default)]
    pub gateways: Vec<GatewayEntry>,
    /// spa-server only: relaying request-service and close knocks to red:
    /// one `[relay]` table, or one `[[relay]]` entry per red.
    #[serde(default)]
    pub relay: Relays,
    /// spa-server only: the mutual-TLS tunnel endpoint.
    #[serde(default)]
    pub tunnel: Option<TunnelSection>,
    /// The opt-in Prometheus endpoint, for management networks only.
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// Where the knock floors live: the local file or a store shared by a
    /// fleet of greens (SPEC §7.6).
    #[serde(default)]
    pub replay: crate::store::shared::ReplaySection,
}

/// `[daemon]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// UDP port knocks (or orders) arrive on.
    #[serde(default = "default_knock_port")]
    pub knock_port: u16,
    /// "packet" or "udp".
    #[serde(default = "default_capture")]
    pub capture: String,
    /// Interface for packet capture.
    pub interface: Option<String>,
    /// Receiver keys, current first.
    pub keys: Vec<PathBuf>,
    /// The replay database.
    pub replay_db: PathBuf,
    /// The control socket.
    #[serde(default = "default_control")]
    pub control_socket: PathBuf,
    /// Unprivileged user to run as after setup. Required (`check` says so
    /// when it is missing); `"root"` keeps root with only CAP_NET_ADMIN
    /// and CAP_NET_RAW.
    pub user: Option<String>,
    /// "plain" or "json".
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// The replay reservation's lead over the clock, ms (SPEC §7.3.1);
    /// 0: every accepted datagram's floor is written and synced before
    /// the verdict.
    #[serde(default = "default_reservation")]
    pub replay_reservation_ms: u64,
    /// Verification threads; default (absent or 0): the available cores.
    #[serde(default)]
    pub workers: usize,
}

impl DaemonSection {
    /// The number of verification threads in force.
    pub fn workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }
}

/// `[trust]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// Root CA certificates.
    pub anchors: Vec<PathBuf>,
    /// Intermediate CA certificates.
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    /// CRLs.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// "allow" or "deny".
    #[serde(default = "default_allow")]
    pub unknown_revocation: String,
    /// "refuse" or "ignore".
    #[serde(default = "default_refuse")]
    pub expired_crl: String,
}

/// `[firewall]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallSection {
    /// nftables table name (family inet).
    #[serde(default = "default_table")]
    pub table: String,
    /// "blackhole" or "protect".
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Ports closed in protect mode: "tcp/22", "udp/53".
    #[serde(default)]
    pub protect_ports: Vec<String>,
    /// CIDRs always accepted and never blocked.
    #[serde(default)]
    pub management: Vec<String>,
    /// Install blackhole even if it would cut the current SSH session.
    #[serde(default)]
    pub force: bool,
    /// Remove the table on a clean stop.
    #[serde(default = "default_true")]
    pub remove_on_exit: bool,
    /// Routed traffic (the forward chain): "accept" (the default: only
    /// blocked sources are dropped) or "drop" (only management sources,
    /// established flows and `forward_allow` cross).
    #[serde(default = "default_forward")]
    pub forward: String,
    /// What crosses under `forward = "drop"`: `"[from] CIDR [tcp/PORT]"`
    /// (destination, or with `from` source, network).
    #[serde(default)]
    pub forward_allow: Vec<String>,
}

fn default_forward() -> String {
    "accept".into()
}

impl Default for FirewallSection {
    fn default() -> Self {
        Self {
            table: default_table(),
            mode: default_mode(),
            protect_ports: Vec::new(),
            management: Vec::new(),
            force: false,
            remove_on_exit: true,
            forward: default_forward(),
            forward_allow: Vec::new(),
        }
    }
}

/// `[time]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// SPEC §7.1.
    #[serde(default = "default_max_age")]
    pub max_age_ms: u64,
    /// SPEC §7.1.
    #[serde(default = "default_skew")]
    pub max_future_skew_ms: u64,
}

impl Default for TimeSection {
    fn default() -> Self {
        Self {
            max_age_ms: default_max_age(),
            max_future_skew_ms: default_skew(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// SPEC §4.3.
    #[serde(default)]
    pub allow_source_mode: bool,
    /// SPEC §4.3.
    #[serde(default = "default_true")]
    pub require_source_match: bool,
    /// Seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: u32,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            allow_source_mode: false,
            require_source_match: true,
            max_lifetime: default_max_lifetime(),
        }
    }
}

/// `[[services]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Name used in knocks.
    pub name: String,
    /// "tcp" or "udp".
    #[serde(default = "default_tcp")]
    pub proto: String,
    /// Port.
    pub port: u16,
}

/// `[[rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// `cn:…`, `email:…`, `dns:…`, `uri:…` or `*`.
    pub identity: String,
    /// Service names or `*`.
    pub services: Vec<String>,
}

/// `[ips]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpsSection {
    /// Knocks per second per source.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Bucket size.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Failures before a block.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Seconds.
    #[serde(default = "default_failure_window")]
    pub failure_window: u64,
    /// Seconds a source stays blocked.
    #[serde(default = "default_block")]
    pub block: u64,
    /// Distinct probed ports before a block; 0 disables scan detection.
    #[serde(default = "default_scan_ports")]
    pub scan_ports: u32,
    /// Seconds.
    #[serde(default = "default_scan_window")]
    pub scan_window: u64,
    /// Weight of an `open_failed` refusal (MAC-valid garbage).
    #[serde(default = "default_weight_one")]
    pub weight_open_failed: u32,
    /// Weight of a `replayed` or `stale` refusal (a captured knock sent
    /// again); 0 by default.
    #[serde(default)]
    pub weight_replayed: u32,
    /// Weight of any other refusal before the client was proven.
    #[serde(default = "default_weight_one")]
    pub weight_invalid: u32,
    /// Weight of a refusal after the client's signature verified.
    #[serde(default = "default_weight_one")]
    pub weight_proven: u32,
    /// Seconds after an accepted datagram (or the end of its opening) during
    /// which the source's forgeable failures and probes are not counted; 0
    /// turns the shield off. SPEC §9.
    #[serde(default = "default_accepted_grace")]
    pub accepted_grace: u64,
    /// Sources each IPS table (rate limiter, failures, scans, shield)
    /// tracks at most; the least recently seen is forgotten.
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// Blocks running at once at most; also the `size` of the nftables
    /// block sets. When full, new blocks are refused (logged, counted as
    /// `blocked.table_full` / `blocked.set_full`); running ones are kept.
    #[serde(default = "default_max_blocks")]
    pub max_blocks: usize,
}

impl Default for IpsSection {
    fn default() -> Self {
        Self {
            rate: default_rate(),
            burst: default_burst(),
            failures: default_failures(),
            failure_window: default_failure_window(),
            block: default_block(),
            scan_ports: default_scan_ports(),
            scan_window: default_scan_window(),
            weight_open_failed: default_weight_one(),
            weight_replayed: 0,
            weight_invalid: default_weight_one(),
            weight_proven: default_weight_one(),
            accepted_grace: default_accepted_grace(),
            max_sources: default_max_sources(),
            max_blocks: default_max_blocks(),
        }
    }
}

/// `[[gateways]]` (red-relay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    /// Green's Ed25519 order-signing public key, base64.
    pub signing_key: String,
    /// Green's X25519 knock public keys, base64 (current and previous).
    pub receiver_keys: Vec<String>,
}

/// `[relay]` (spa-server): where red is and which services live there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Red's order port, `address:port` (no host names: no DNS in the
    /// daemon).
    pub red: String,
    /// Red's X25519 public key, base64.
    pub red_key: String,
    /// Green's Ed25519 order-signing key file.
    pub signing_key: PathBuf,
    /// Green's address toward red: orders leave from it, and red opens for
    /// it (SPEC §5.1 `addr`).
    pub source: String,
    /// The services that live on red.
    pub services: Vec<RelayService>,
    /// Milliseconds between fresh copies of an order while red's service
    /// does not answer.
    #[serde(default = "default_resend_ms")]
    pub resend_ms: u64,
    /// How many fresh copies at most, after the first order.
    #[serde(default = "default_resends")]
    pub resends: u32,
}

/// `[tunnel]` (spa-server): green's mutual-TLS endpoint. Its port is the
/// `[[services]]` entry named `service` (tcp), which an open-tunnel knock
/// opens for the client's address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// TCP port of the TLS listener.
    #[serde(default = "default_tunnel_port")]
    pub listen_port: u16,
    /// Green's server certificate (PEM, chain allowed), from
    /// `spa-server pki issue --server`.
    pub certificate: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// The `[[services]]` name of the tunnel port.
    #[serde(default = "default_tunnel_service")]
    pub service: String,
    /// Connections (streams) served at once, handshakes included; beyond,
    /// a new connection is closed at once. Each costs a thread and about
    /// 50 KiB while idle (BENCHMARKS.md, "Tunnel").
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of those, at most this many from one client address, so that one
    /// client cannot take them all.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
}

fn default_tunnel_port() -> u16 {
    8443
}
fn default_tunnel_service() -> String {
    "tunnel".into()
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_connections_per_source() -> usize {
    1024
}

/// One service on red: a bare name, or a name with the port green probes
/// (through red's firewall, from `source`) to confirm that red opened.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RelayService {
    /// A name; no probe.
    Name(String),
    /// A name and its port.
    Port(RelayPort),
}

/// A service on red with its port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayPort {
    /// Name used in knocks.
    pub name: String,
    /// "tcp" or "udp" (only TCP is probed).
    #[serde(default = "default_tcp")]
    pub proto: String,
    /// Port on red.
    pub port: u16,
}

impl RelayService {
    /// The service name.
    pub fn name(&self) -> &str {
        match self {
            Self::Name(n) => n,
            Self::Port(p) => &p.name,
        }
    }
}

fn default_resend_ms() -> u64 {
    300
}
fn default_resends() -> u32 {
    5
}
fn default_knock_port() -> u16 {
    62201
}
fn default_capture() -> String {
    "packet".into()
}
fn default_control() -> PathBuf {
    PathBuf::from("/run/spa/control.sock")
}
fn default_reservation() -> u64 {
    crate::store::DEFAULT_LEAD_MS
}
fn default_log_format() -> String {
    "plain".into()
}
fn default_allow() -> String {
    "allow".into()
}
fn default_refuse() -> String {
    "refuse".into()
}
fn default_table() -> String {
    "spa".into()
}
fn default_mode() -> String {
    "blackhole".into()
}
fn default_true() -> bool {
    true
}
fn default_max_age() -> u64 {
    proto_spec::replay::DEFAULT_MAX_AGE_MS
}
fn default_skew() -> u64 {
    proto_spec::replay::DEFAULT_MAX_FUTURE_SKEW_MS
}
fn default_max_lifetime() -> u32 {
    proto_spec::policy::DEFAULT_MAX_LIFETIME_S
}
fn default_tcp() -> String {
    "tcp".into()
}
fn default_rate() -> u32 {
    20
}
fn default_burst() -> u32 {
    40
}
fn default_failures() -> u32 {
    5
}
fn default_failure_window() -> u64 {
    60
}
fn default_block() -> u64 {
    600
}
fn default_scan_ports() -> u32 {
    10
}
fn default_scan_window() -> u64 {
    10
}
fn default_weight_one() -> u32 {
    1
}
fn default_accepted_grace() -> u64 {
    crate::ips::lockout::DEFAULT_GRACE_MS / 1000
}
fn default_max_sources() -> usize {
    crate::ips::DEFAULT_MAX_SOURCES
}
fn default_max_blocks() -> usize {
    crate::blocked::DEFAULT_MAX_BLOCKS
}

/// One problem found in a configuration: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `trust.anchors[0]`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Parses `a.b.c.d/n`, `x::/n`, or a bare address (a host prefix).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// A service's transport protocol: the crate's one protocol type.
pub use spa_nft::Proto as ServiceProto;

/// Parses "tcp" or "udp".
pub fn parse_proto(s: &str) -> Option<ServiceProto> {
    s.parse().ok()
}

/// Parses "tcp/22".
pub fn parse_port_spec(s: &str) -> Option<(ServiceProto, u16)> {
    let (p, n) = s.split_once('/')?;
    Some((parse_proto(p)?, n.parse().ok().filter(|&n| n != 0)?))
}

/// Reads and parses a file; a TOML error names the line and column.
pub fn load(path: &Path) -> Result<Config, Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            key: path.display().to_string(),
            problem: format!("cannot read: {e}"),
        }]
    })?;
    parse(&text, path)
}

/// Parses configuration text.
pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<Problem>> {
    toml::from_str(text).map_err(|e| {
        let key = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{} line {line}", path.display())
            }
            None => path.display().to_string(),
        };
        vec![Problem {
            key,
            problem: e.message().to_owned(),
        }]
    })
}

/// The role a configuration is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// spa-server.
    Green,
    /// red-relay.
    Red,
}

impl Config {
    /// Every semantic problem: files that cannot be read (keys with their
    /// permissions), values out of range, unknown names. `ssh_connection` is
    /// `$SSH_CONNECTION` (client address, client port, server address,
    /// server port) for the management-connection check.
    pub fn check(&self, role: Role, ssh_connection: Option<&str>) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: String, problem: String| p.push(Problem { key, problem });
        let d = &self.daemon;
        if d.knock_port == 0 {
            bad("daemon.knock_port".into(), "must be 1..=65535".into());
        }
        if !matches!(d.capture.as_str(), "packet" | "udp") {
            bad(
                "daemon.capture".into(),
                format!("'{}': use \"packet\" or \"udp\"", d.capture),
            );
        }
        if !matches!(d.log_format.as_str(), "plain" | "json") {
            bad(
                "daemon.log_format".into(),
                format!("'{}': use \"plain\" or \"json\"", d.log_format),
            );
        }
        let r = d.replay_reservation_ms;
        if r != 0 && !(crate::store::MIN_LEAD_MS..=crate::store::MAX_LEAD_MS).contains(&r) {
            bad(
                "daemon.replay_reservation_ms".into(),
                format!(
                    "{r}: use 0 (sync every knock) or {}..={}",
                    crate::store::MIN_LEAD_MS,
                    crate::store::MAX_LEAD_MS
                ),
            );
        }
        if d.workers > 256 {
            bad(
                "daemon.workers".into(),
                format!("{}: at most 256", d.workers),
            );
        }
        if d.keys.is_empty() {
            bad(
                "daemon.keys".into(),
                "at least one receiver key is needed".into(),
            );
        }
        for (i, k) in d.keys.iter().enumerate() {
            if let Err(e) = spa_keys::read_receiver_key(k) {
                bad(format!("daemon.keys[{i}]"), e.to_string());
            }
        }
        for x in crate::access::config_problems(self) {
            bad(x.key, x.problem);
        }
        for x in crate::store::shared::config_problems(self, role) {
            bad(x.key, x.problem);
        }
        let t = &self.trust;
        if t.anchors.is_empty() {
            bad(
                "trust.anchors".into(),
                "at least one trust anchor is needed".into(),
            );
        }
        for (i, a) in t.anchors.iter().enumerate() {
            if let Err(e) = spa_keys::read_certificates(a) {
                bad(format!("trust.anchors[{i}]"), e.to_string());
            }
        }
        for (i, a) in t.intermediates.iter().enumerate() {
            if let Err(e) = spa_keys::read_certificates(a) {
                bad(format!("trust.intermediates[{i}]"), e.to_string());
            }
        }
        for (i, c) in t.crls.iter().enumerate() {
            if let Err(e) = spa_keys::read_crls(c) {
                bad(format!("trust.crls[{i}]"), e.to_string());
            }
        }
        if !matches!(t.unknown_revocation.as_str(), "allow" | "deny") {
            bad(
                "trust.unknown_revocation".into(),
                format!("'{}': use \"allow\" or \"deny\"", t.unknown_revocation),
            );
        }
        if !matches!(t.expired_crl.as_str(), "refuse" | "ignore") {
            bad(
                "trust.expired_crl".into(),
                format!("'{}': use \"refuse\" or \"ignore\"", t.expired_crl),
            );
        }
        let f = &self.firewall;
        // The rule the firewall driver applies when it installs the table.
        if let Err(e) = spa_nft::TableName::new(&f.table) {
            bad("firewall.table".into(), e.to_string());
        }
        if !matches!(f.mode.as_str(), "blackhole" | "protect") {
            bad(
                "firewall.mode".into(),
                format!("'{}': use \"blackhole\" or \"protect\"", f.mode),
            );
        }
        for (i, s) in f.protect_ports.iter().enumerate() {
            if parse_port_spec(s).is_none() {
                bad(
                    format!("firewall.protect_ports[{i}]"),
                    format!("'{s}': use tcp/PORT or udp/PORT"),
                );
            }
        }
        if f.mode == "protect" && f.protect_ports.is_empty() {
            bad(
                "firewall.protect_ports".into(),
                "protect mode needs at least one port".into(),
            );
        }
        let mut mgmt = Vec::new();
        for (i, s) in f.management.iter().enumerate() {
            match parse_cidr(s) {
                Some(c) => mgmt.push(c),
                None => bad(
                    format!("firewall.management[{i}]"),
                    format!("'{s}' is not an address or CIDR"),
                ),
            }
        }
        if let Err(e) = f.forward.parse::<spa_nft::ForwardPolicy>() {
            bad("firewall.forward".into(), e);
        }
        for (i, s) in f.forward_allow.iter().enumerate() {
            if let Err(e) = s.parse::<spa_nft::ForwardAllow>() {
                bad(format!("firewall.forward_allow[{i}]"), e);
            }
        }
        if f.mode == "blackhole"
            && !f.force
            && let Some(conn) = ssh_connection
            && let Some(cut) = management_cut(conn, &mgmt)
        {
            bad("firewall.mode".into(), cut);
        }
        if self.time.max_age_ms == 0 || self.time.max_age_ms > 3_600_000 {
            bad("time.max_age_ms".into(), "must be 1..=3600000".into());
        }
        if self.time.max_future_skew_ms > 3_600_000 {
            bad(
                "time.max_future_skew_ms".into(),
                "must be at most 3600000".into(),
            );
        }
        if self.policy.max_lifetime == 0
            || self.policy.max_lifetime > proto_spec::body::MAX_LIFETIME_S
        {
            bad(
                "policy.max_lifetime".into(),
                format!("must be 1..={}", proto_spec::body::MAX_LIFETIME_S),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !proto_spec::body::is_valid_service_name(s.name.as_bytes()) {
                bad(
                    format!("services[{i}].name"),
                    format!("'{}': 1-32 of a-z 0-9 . _ -", s.name),
                );
            }
            if !names.insert(s.name.clone()) {
                bad(
                    format!("services[{i}].name"),
                    format!("'{}' is defined twice", s.name),
                );
            }
            if parse_proto(&s.proto).is_none() {
                bad(
                    format!("services[{i}].proto"),
                    format!("'{}': use \"tcp\" or \"udp\"", s.proto),
                );
            }
            if s.port == 0 {
                bad(format!("services[{i}].port"), "must be 1..=65535".into());
            }
            // Protect mode closes only protect_ports: a service port outside
            // them would be open to everyone while a knock "opens" it.
            if f.mode == "protect"
                && s.port != 0
                && let Some(proto) = parse_proto(&s.proto)
                && !f
                    .protect_ports
                    .iter()
                    .any(|p| parse_port_spec(p) == Some((proto, s.port)))
            {
                bad(
                    format!("services[{i}].port"),
                    format!(
                        "{}/{} is not in firewall.protect_ports: in protect mode it would be open to everyone",
                        s.proto, s.port
                    ),
                );
            }
        }
        let relay_names: std::collections::HashSet<&str> = self
            .relay
            .iter()
            .flat_map(|r| r.services.iter().map(RelayService::name))
            .collect();
        for (i, r) in self.rules.iter().enumerate() {
            let valid_id = r.identity == "*"
                || ["cn:", "email:", "dns:", "uri:"]
                    .iter()
                    .any(|p| r.identity.starts_with(p) && r.identity.len() > p.len());
            if !valid_id {
                bad(
                    format!("rules[{i}].identity"),
                    format!(
                        "'{}': use cn:NAME, email:ADDR, dns:NAME, uri:URI or *",
                        r.identity
                    ),
                );
            }
            for (j, s) in r.services.iter().enumerate() {
                if s != "*" && !names.contains(s) && !relay_names.contains(s.as_str()) {
                    bad(
                        format!("rules[{i}].services[{j}]"),
                        format!("unknown service '{s}'"),
                    );
                }
            }
        }
        if self.rules.is_empty() {
            bad(
                "rules".into(),
                "no rule: every knock would be refused".into(),
            );
        }
        // What run's constructors reject, by the same code.
        if let Err(x) = crate::start::ips_state(self) {
            bad(x.key, x.problem);
        }
        for (key, w) in [
            ("ips.weight_open_failed", self.ips.weight_open_failed),
            ("ips.weight_replayed", self.ips.weight_replayed),
            ("ips.weight_invalid", self.ips.weight_invalid),
            ("ips.weight_proven", self.ips.weight_proven),
        ] {
            if w > crate::ips::MAX_FAILURE_THRESHOLD {
                bad(key.into(), "a weight must be between 0 and 64".into());
            }
        }
        if self.ips.max_sources == 0 {
            bad("ips.max_sources".into(), "must be at least 1".into());
        }
        if self.ips.max_blocks == 0 || u32::try_from(self.ips.max_blocks).is_err() {
            bad(
                "ips.max_blocks".into(),
                "must be between 1 and 4294967295".into(),
            );
        }
        match role {
            Role::Red if self.gateways.is_empty() => {
                bad(
                    "gateways".into(),
                    "red-relay needs at least one gateway".into(),
                );
            }
            Role::Green if !self.gateways.is_empty() => {
                bad("gateways".into(), "only red-relay takes gateways".into());
            }
            _ => {}
        }
        if !self.relay.is_empty() && role == Role::Red {
            bad(
                "relay".into(),
                "only spa-server relays to red; red-relay takes [[gateways]]".into(),
            );
        } else {
            for (key, problem) in self.relay.check(&names, self.time.max_age_ms) {
                bad(key, problem);
            }
        }
        if let Some(m) = &self.metrics {
            for (key, problem) in m.check(&self.firewall.management) {
                bad(key, problem);
            }
        }
        if let Some(t) = &self.tunnel {
            if role == Role::Red {
                bad("tunnel".into(), "only spa-server ends the tunnel".into());
            }
            if t.listen_port == 0 {
                bad("tunnel.listen_port".into(), "must be 1..=65535".into());
            }
            if !(1..=65_536).contains(&t.max_connections) {
                bad("tunnel.max_connections".into(), "must be 1..=65536".into());
            }
            if t.max_connections_per_source == 0 || t.max_connections_per_source > t.max_connections
            {
                bad(
                    "tunnel.max_connections_per_source".into(),
                    "must be 1..=max_connections".into(),
                );
            }
            let entry = self.services.iter().find(|s| s.name == t.service);
            match entry {
                Some(s) if s.proto == "tcp" && s.port == t.listen_port => {}
                _ => bad(
                    "tunnel.service".into(),
                    format!(
                        "needs a [[services]] entry name = \"{}\", proto = \"tcp\", port = {}",
                        t.service, t.listen_port
                    ),
                ),
            }
            if let Err(e) = spa_keys::read_certificates(&t.certificate) {
                bad("tunnel.certificate".into(), e.to_string());
            }
            if let Err(e) = spa_keys::read_secret_file(&t.key) {
                bad("tunnel.key".into(), e.to_string());
            }
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Err(e) = spa_keys::decode_gateway_public_key(&g.signing_key) {
                bad(format!("gateways[{i}].signing_key"), e.to_string());
            }
            if g.receiver_keys.is_empty() {
                bad(
                    format!("gateways[{i}].receiver_keys"),
                    "at least one key".into(),
                );
            }
            for (j, k) in g.receiver_keys.iter().enumerate() {
                if let Err(e) = spa_keys::decode_public_key(k) {
                    bad(format!("gateways[{i}].receiver_keys[{j}]"), e.to_string());
                }
            }
        }
        p
    }
}

impl RelaySection {
    /// Problems of `[relay]`, keys included. `local` are the names of
    /// `[[services]]`; `max_age_ms` is `[time] max_age_ms`.
    ///
    /// `at` is how the file names this section: `relay` for a single
    /// `[relay]` table, `relay[N]` for an entry of `[[relay]]`.
    pub fn check(
        &self,
        at: &str,
        local: &std::collections::HashSet<String>,
        max_age_ms: u64,
    ) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let red = match self.red.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                p.push((format!("{at}.red"), "the port must be 1..=65535".into()));
                None
            }
            Ok(a) if a.ip().is_unspecified() || a.ip().is_multicast() => {
                p.push((
                    format!("{at}.red"),
                    format!("'{}': not a unicast address", self.red),
                ));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                p.push((
                    format!("{at}.red"),
                    format!(
                        "'{}': use ADDRESS:PORT, e.g. 10.0.0.2:62202 or [fd00::2]:62202",
                        self.red
                    ),
                ));
                None
            }
        };
        if let Err(e) = spa_keys::decode_public_key(&self.red_key) {
            p.push((format!("{at}.red_key"), e.to_string()));
        }
        if let Err(e) = spa_keys::read_gateway_signer(&self.signing_key) {
            p.push((format!("{at}.signing_key"), e.to_string()));
        }
        match self.source.parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.to_canonical() != a => {
                p.push((
                    format!("{at}.source"),
                    format!(
                        "'{}': green's own unicast address toward red (not IPv4-mapped)",
                        self.source
                    ),
                ));
            }
            Ok(a) if red.is_some_and(|r| r.is_ipv4() != a.is_ipv4()) => p.push((
                format!("{at}.source"),
                format!("'{}' and {at}.red are of different families", self.source),
            )),
            Ok(_) => {}
            Err(_) => p.push((
                format!("{at}.source"),
                format!("'{}' is not an IP address", self.source),
            )),
        }
        if self.services.is_empty() {
            p.push((
                format!("{at}.services"),
                "at least one service on red".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let name = s.name();
            if !proto_spec::body::is_valid_service_name(name.as_bytes()) {
                p.push((
                    format!("{at}.services[{i}]"),
                    format!("'{name}': 1-32 of a-z 0-9 . _ -"),
                ));
            }
            if !seen.insert(name) {
                p.push((
                    format!("{at}.services[{i}]"),
                    format!("'{name}' is listed twice"),
                ));
            }
            if local.contains(name) {
                p.push((
                    format!("{at}.services[{i}]"),
                    format!("'{name}' is also a local service in [[services]]: name it once"),
                ));
            }
            if let RelayService::Port(RelayPort { proto, port, .. }) = s {
                if parse_proto(proto).is_none() {
                    p.push((
                        format!("{at}.services[{i}].proto"),
                        format!("'{proto}': use \"tcp\" or \"udp\""),
                    ));
                }
                if *port == 0 {
                    p.push((
                        format!("{at}.services[{i}].port"),
                        "must be 1..=65535".into(),
                    ));
                }
            }
        }
        if !(10..=10_000).contains(&self.resend_ms) {
            p.push((format!("{at}.resend_ms"), "must be 10..=10000".into()));
        }
        if self.resends > 20 {
            p.push((format!("{at}.resends"), "must be 0..=20".into()));
        }
        // SPEC §5.1: green stops repeating a body once it is older than
        // MAX_AGE; every copy should still be fresh at red.
        if self.resend_ms.saturating_mul(u64::from(self.resends)) >= max_age_ms {
            p.push((
                format!("{at}.resends"),
                format!("resends × resend_ms must stay below time.max_age_ms ({max_age_ms} ms)"),
            ));
        }
        p
    }
}

/// If a blackhole firewall would cut the SSH session described by
/// `$SSH_CONNECTION`, the reason.
pub fn management_cut(ssh_connection: &str, management: &[ipnet::IpNet]) -> Option<String> {
    let mut parts = ssh_connection.split_whitespace();
    let client: IpAddr = parts.next()?.parse().ok()?;
    let _client_port = parts.next()?;
    let _server = parts.next()?;
    let server_port = parts.next()?;
    let client = client.to_canonical();
    if client.is_loopback() || management.iter().any(|c| c.contains(&client)) {
        return None;
    }
    Some(format!(
        "blackhole would cut your SSH session from {client} to port {server_port} once it is re-established: add {client} to firewall.management, or set firewall.force = true"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_and_bare_addresses() {
        let h = parse_cidr("fd00::1").expect("host");
        assert_eq!(h.prefix_len(), 128);
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(
            parse_cidr("10.200.0.0/16")
                .expect("net")
                .contains(&"10.200.3.4".parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn management_connection_check() {
        let mg = [parse_cidr("192.0.2.0/24").expect("c")];
        assert!(management_cut("192.0.2.9 5555 10.0.0.1 22", &mg).is_none());
        assert!(
            management_cut("198.51.100.7 5555 10.0.0.1 22", &mg)
                .expect("cut")
                .contains("198.51.100.7")
        );
    }

    #[test]
    fn protect_mode_refuses_a_service_port_outside_protect_ports() {
        let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[firewall]
mode = "protect"
protect_ports = ["tcp/22", "udp/53"]
[[services]]
name = "ssh"
port = 22
[[services]]
name = "web"
port = 443
[[services]]
name = "dns"
proto = "udp"
port = 53
[[services]]
name = "dnstcp"
port = 53
"#;
        let cfg = parse(text, Path::new("t.toml")).expect("parses");
        let keys: Vec<String> = cfg
            .check(Role::Green, None)
            .into_iter()
            .filter(|p| p.key.starts_with("services["))
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["services[1].port", "services[3].port"]);
        let mut blackhole = cfg.clone();
        blackhole.firewall.mode = "blackhole".into();
        assert!(
            !blackhole
                .check(Role::Green, None)
                .iter()
                .any(|p| p.key.starts_with("services["))
        );
    }

    #[test]
    fn tunnel_section_problems() {
        let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[[services]]
name = "tunnel"
port = 8444
[[rules]]
identity = "*"
services = ["tunnel"]
[tunnel]
certificate = "/nonexistent/c.pem"
key = "/nonexistent/c.key"
max_connections = 10
max_connections_per_source = 11
"#;
        let cfg = parse(text, Path::new("t.toml")).expect("parses");
        let t = cfg.tunnel.as_ref().expect("tunnel");
        assert_eq!((t.listen_port, t.service.as_str()), (8443, "tunnel"));
        assert_eq!((t.max_connections, t.max_connections_per_source), (10, 11));
        let keys: Vec<String> = cfg
            .check(Role::Green, None)
            .into_iter()
            .map(|p| p.key)
            .collect();
        for k in [
            "tunnel.service",
            "tunnel.certificate",
            "tunnel.key",
            "tunnel.max_connections_per_source",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        let red: Vec<String> = cfg
            .check(Role::Red, None)
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert!(red.iter().any(|x| x == "tunnel"), "{red:?}");
    }

    #[test]
    fn ips_lockout_keys_have_safe_defaults_and_are_checked() {
        let base = "[daemon]\nkeys = [\"/k\"]\nreplay_db = \"/r\"\n[trust]\nanchors = [\"/a\"]\n\
                    [[rules]]\nidentity = \"*\"\nservices = [\"*\"]\n";
        let cfg = parse(base, Path::new("t.toml")).expect("parses");
        let i = &cfg.ips;
        assert_eq!(
            (
                i.weight_open_failed,
                i.weight_replayed,
                i.weight_invalid,
                i.weight_proven
            ),
            (1, 0, 1, 1),
            "replays weigh nothing by default"
        );
        assert_eq!(
            (i.accepted_grace, i.max_sources, i.max_blocks),
            (3600, 65_536, 65_536)
        );
        let text = format!(
            "{base}[ips]\nweight_invalid = 65\nweight_replayed = 2\nmax_sources = 0\nmax_blocks = 0\n"
        );
        let cfg = parse(&text, Path::new("t.toml")).expect("parses");
        let keys: Vec<String> = cfg
            .check(Role::Green, None)
            .into_iter()
            .map(|p| p.key)
            .collect();
        for k in ["ips.weight_invalid", "ips.max_sources", "ips.max_blocks"] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        assert!(!keys.iter().any(|x| x == "ips.weight_replayed"), "{keys:?}");
    }

    #[test]
    fn relay_section_parses_names_and_ports() {
        let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[relay]
red = "10.200.60.2:62202"
red_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
signing_key = "/etc/spa/green-signing.key"
source = "10.200.60.1"
services = ["red-dns", { name = "web", port = 80 }]
"#;
        let cfg = parse(text, Path::new("x.toml")).expect("parses");
        let r = &cfg.relay[0];
        assert_eq!(r.services[0].name(), "red-dns");
        assert!(
            matches!(&r.services[1], RelayService::Port(p) if p.port == 80 && p.proto == "tcp")
        );
        assert_eq!((r.resend_ms, r.resends), (300, 5));
        let typo = text.replace("port = 80", "prot = 80");
        assert!(parse(&typo, Path::new("x.toml")).is_err());
        // red-relay refuses the section; spa-server checks it (here: the
        // key file is missing), and its services count as known in rules.
        let with_rule = format!("{text}\n[[rules]]\nidentity = \"*\"\nservices = [\"web\"]\n");
        let cfg = parse(&with_rule, Path::new("x.toml")).expect("parses");
        let red = cfg.check(Role::Red, None);
        assert!(red.iter().any(|p| p.key == "relay"), "{red:?}");
        let green = cfg.check(Role::Green, None);
        assert!(
            green.iter().any(|p| p.key == "relay.signing_key"),
            "{green:?}"
        );
        assert!(
            !green.iter().any(|p| p.key.starts_with("rules")),
            "{green:?}"
        );
    }

    #[test]
    fn relay_problems_name_their_keys() {
        let r = RelaySection {
            red: "red.example:62202".into(),
            red_key: "short".into(),
            signing_key: PathBuf::from("/nonexistent/green-signing.key"),
            source: "fd00:200::1".into(),
            services: vec![
                RelayService::Name("ssh".into()),
                RelayService::Name("Web".into()),
                RelayService::Port(RelayPort {
                    name: "db".into(),
                    proto: "sctp".into(),
                    port: 0,
                }),
                RelayService::Name("db".into()),
            ],
            resend_ms: 5,
            resends: 30,
        };
        let local = ["ssh".to_owned()].into_iter().collect();
        let keys: Vec<String> = r
            .check("relay", &local, 60_000)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in [
            "relay.red",
            "relay.red_key",
            "relay.signing_key",
            "relay.services[0]",
            "relay.services[1]",
            "relay.services[2].proto",
            "relay.services[2].port",
            "relay.services[3]",
            "relay.resend_ms",
            "relay.resends",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
        let mixed = RelaySection {
            red: "10.200.60.2:62202".into(),
            ..r.clone()
        };
        let problems = mixed.check("relay", &local, 60_000);
        assert!(
            problems
                .iter()
                .any(|(k, p)| k == "relay.source" && p.contains("families")),
            "{problems:?}"
        );
        let slow = RelaySection {
            resend_ms: 10_000,
            resends: 6,
            ..mixed
        };
        assert!(
            slow.check("relay", &local, 60_000)
                .iter()
                .any(|(k, p)| k == "relay.resends" && p.contains("max_age_ms"))
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse(
            "[daemon]\nknock_port = \"x\"\n",
            Path::new("/etc/spa/x.toml"),
        )
        .expect_err("bad");
        assert!(e[0].key.contains("line 2"), "{e:?}");
    }
}
