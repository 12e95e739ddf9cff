//! Green's sections of the configuration file, `[relay]` and `[tunnel]`,
//! and the checks of `[relay]`. They are data of the one file format both
//! daemons parse (red refuses them, [`super::Role`]); green's relay and
//! tunnel (`spa-server`) are what use them.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::parse_proto;
use super::sections::default_tcp;

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

pub(super) fn default_tunnel_port() -> u16 {
    8443
}
pub(super) fn default_tunnel_service() -> String {
    "tunnel".into()
}
pub(super) fn default_max_connections() -> usize {
    4096
}
pub(super) fn default_max_connections_per_source() -> usize {
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

pub(super) fn default_resend_ms() -> u64 {
    300
}
pub(super) fn default_resends() -> u32 {
    5
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
