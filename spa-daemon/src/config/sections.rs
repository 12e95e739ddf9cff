//! The sections of the configuration file both daemons read (see the
//! example in [`super`]), with their defaults.

use std::path::PathBuf;

use serde::Deserialize;

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

pub(super) fn default_forward() -> String {
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

pub(super) fn default_knock_port() -> u16 {
    62201
}
pub(super) fn default_capture() -> String {
    "packet".into()
}
pub(super) fn default_control() -> PathBuf {
    PathBuf::from("/run/spa/control.sock")
}
pub(super) fn default_reservation() -> u64 {
    crate::store::DEFAULT_LEAD_MS
}
pub(super) fn default_log_format() -> String {
    "plain".into()
}
pub(super) fn default_allow() -> String {
    "allow".into()
}
pub(super) fn default_refuse() -> String {
    "refuse".into()
}
pub(super) fn default_table() -> String {
    "spa".into()
}
pub(super) fn default_mode() -> String {
    "blackhole".into()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_max_age() -> u64 {
    proto_spec::replay::DEFAULT_MAX_AGE_MS
}
pub(super) fn default_skew() -> u64 {
    proto_spec::replay::DEFAULT_MAX_FUTURE_SKEW_MS
}
pub(super) fn default_max_lifetime() -> u32 {
    proto_spec::policy::DEFAULT_MAX_LIFETIME_S
}
pub(super) fn default_tcp() -> String {
    "tcp".into()
}
pub(super) fn default_rate() -> u32 {
    20
}
pub(super) fn default_burst() -> u32 {
    40
}
pub(super) fn default_failures() -> u32 {
    5
}
pub(super) fn default_failure_window() -> u64 {
    60
}
pub(super) fn default_block() -> u64 {
    600
}
pub(super) fn default_scan_ports() -> u32 {
    10
}
pub(super) fn default_scan_window() -> u64 {
    10
}
pub(super) fn default_weight_one() -> u32 {
    1
}
pub(super) fn default_accepted_grace() -> u64 {
    crate::ips::lockout::DEFAULT_GRACE_MS / 1000
}
pub(super) fn default_max_sources() -> usize {
    crate::ips::DEFAULT_MAX_SOURCES
}
pub(super) fn default_max_blocks() -> usize {
    crate::blocked::DEFAULT_MAX_BLOCKS
}
