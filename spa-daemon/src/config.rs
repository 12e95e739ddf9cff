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
use std::path::Path;

use serde::Deserialize;

mod check;
mod green;
mod relays;
mod sections;

pub use green::{RelayPort, RelaySection, RelayService, TunnelSection};
pub use relays::{MAX_REDS, MetricsSection, Relays};
pub use sections::{
    DaemonSection, FirewallSection, GatewayEntry, IpsSection, PolicySection, RuleEntry,
    ServiceEntry, TimeSection, TrustSection,
};

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
mod tests;
