//! `[replay]`: where green keeps its knock floors (SPEC §7.2, §7.6).
//!
//! ```toml
//! [replay]
//! backend = "etcd"            # "local" (default): the replay_db file
//! endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379", "https://10.0.0.7:2379"]
//! ca = "/etc/spa/etcd/ca.pem"         # the etcd servers' CA
//! cert = "/etc/spa/etcd/green-a.pem"  # this green's client certificate
//! key = "/etc/spa/etcd/green-a.key"   # its key: mode 0600, owned by root
//! prefix = "/spa/replay/gw1"  # one prefix per receiver key shared by the fleet
//! timeout_ms = 1000           # a commit not answered in time: storage_failure
//! # server_name = "etcd.example" # the name in the servers' certificates, if
//! #                              # not the endpoints' host
//! ```
//!
//! Greens that share a receiver key MUST share the store (SPEC §7.6), so
//! the etcd settings are the same on every member of the fleet except the
//! client certificate. `https://` endpoints need `ca`, `cert` and `key`
//! (mutual TLS: whoever can write the floors can replay or refuse knocks,
//! SPEC §9). A plain `http://` endpoint is accepted only on a loopback
//! address (a local proxy).
//!
//! The TLS files are read here, as root, before the privilege drop, with
//! the rules of every other key file (the key: a regular file, not readable
//! by group or others, owned by root or the daemon's user).
//!
//! # The seam
//!
//! The daemon loop checks and commits floors through
//! [`proto_spec::replay::ReplayState`]: the local [`super::ReplayDb`]
//! implements it, and so does a [`SharedFloors`] store (boxed), whose
//! compare-and-set failures are refused as `replayed` and whose other
//! failures as `storage_failure` (fail closed). The etcd implementation
//! lives with green (`spa_server::etcd`), the only daemon that uses it, so
//! red-relay does not link the etcd client.

use std::net::IpAddr;
use std::path::PathBuf;

use proto_spec::cert::IdentityKey;
use proto_spec::replay::ReplayState;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::{Config, Problem, Role};

/// Knock floors kept in a store shared by the greens that hold one
/// receiver key (SPEC §7.6).
pub trait SharedFloors: Send + std::fmt::Debug {
    /// The identity's floor as last seen by this green (SPEC §7.3 step 1:
    /// it may be behind the store, never ahead of it).
    fn floor(&self, id: &IdentityKey) -> Option<u64>;
    /// `G` as last seen.
    fn global_floor(&self) -> Option<u64>;
    /// The linearizable compare-and-set of SPEC §7.6: raises the floor to
    /// `timestamp_ms` only if the stored floor and `G` are below it, and
    /// returns once that is durable in the store.
    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), SharedCommitError>;
    /// For `status` (`replay`).
    fn status(&self, now_ms: u64) -> Value;
    /// Counters for `status`.
    fn counters(&self) -> Vec<(String, u64)>;
}

/// Why [`SharedFloors::commit`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedCommitError {
    /// The stored floor or `G` is at or above the timestamp: another green
    /// accepted this knock or a later one (`replayed`).
    #[error("the shared floor is at or above the knock's timestamp (accepted by another green)")]
    Replayed,
    /// The store did not answer, in time or at all (`storage_failure`).
    #[error("shared replay store unavailable: {0}")]
    Unavailable(String),
}

impl ReplayState for Box<dyn SharedFloors> {
    type Error = SharedCommitError;

    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        (**self).floor(id)
    }

    fn global_floor(&self) -> Option<u64> {
        (**self).global_floor()
    }

    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), SharedCommitError> {
        (**self).commit(id, timestamp_ms)
    }

    fn is_replay(error: &SharedCommitError) -> bool {
        matches!(error, SharedCommitError::Replayed)
    }
}

/// `[replay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySection {
    /// `"local"` (the `daemon.replay_db` file) or `"etcd"`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// etcd endpoints, `https://HOST:PORT` (or `http://` on loopback).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The key prefix of this fleet's floors.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The CA certificate(s) of the etcd servers (PEM).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This green's client certificate chain (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// This green's client key (PEM, PKCS#8 or SEC1).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the servers' certificates are checked against, when it is
    /// not the endpoints' host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The bound on one commit (connect, transaction, answer), ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            endpoints: Vec::new(),
            prefix: default_prefix(),
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_backend() -> String {
    "local".into()
}

fn default_prefix() -> String {
    "/spa/replay".into()
}

fn default_timeout_ms() -> u64 {
    1000
}

/// The bounds of `timeout_ms`.
pub const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// The TLS material read from `ca`, `cert` and `key`.
#[derive(Clone)]
pub struct TlsFiles {
    /// `ca`, as read.
    pub ca_pem: Vec<u8>,
    /// `cert`, as read.
    pub cert_pem: Vec<u8>,
    /// `key`, as read (zeroized on drop).
    pub key_pem: Zeroizing<Vec<u8>>,
    /// `server_name`.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A checked `[replay] backend = "etcd"`, its files read.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// Endpoints.
    pub endpoints: Vec<String>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
    /// TLS, for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// Bound on one commit.
    pub timeout: std::time::Duration,
    /// Floors older than this (`MAX_AGE + MAX_FUTURE_SKEW`) are pruned,
    /// SPEC §7.4.
    pub keep_ms: u64,
}

/// The etcd settings of `cfg`, files read, or `None` for the local store.
/// The problems are those [`config_problems`] reports.
pub fn etcd_settings(cfg: &Config) -> Result<Option<EtcdSettings>, Vec<Problem>> {
    let r = &cfg.replay;
    if r.backend != "etcd" {
        return Ok(None);
    }
    let mut problems = Vec::new();
    let mut bad = |key: &str, problem: String| {
        problems.push(Problem {
            key: format!("replay.{key}"),
            problem,
        });
    };
    if r.endpoints.is_empty() {
        bad("endpoints", "at least one etcd endpoint is needed".into());
    }
    let (mut https, mut plain) = (0, 0);
    for (i, e) in r.endpoints.iter().enumerate() {
        match endpoint_scheme(e) {
            Ok(Scheme::Https) => https += 1,
            Ok(Scheme::LoopbackHttp) => plain += 1,
            Err(why) => bad(&format!("endpoints[{i}]"), format!("'{e}': {why}")),
        }
    }
    if https > 0 && plain > 0 {
        bad(
            "endpoints",
            "mixes https:// and http:// endpoints: use one scheme".into(),
        );
    }
    if !r.prefix.starts_with('/')
        || r.prefix.len() > 200
        || r.prefix.trim_end_matches('/').is_empty()
        || !r.prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        bad(
            "prefix",
            format!(
                "'{}': an absolute key prefix of printable ASCII, e.g. \"/spa/replay/gw1\"",
                r.prefix
            ),
        );
    }
    if !TIMEOUT_RANGE_MS.contains(&r.timeout_ms) {
        bad(
            "timeout_ms",
            format!(
                "{}: use {}..={}",
                r.timeout_ms,
                TIMEOUT_RANGE_MS.start(),
                TIMEOUT_RANGE_MS.end()
            ),
        );
    }
    let tls = if https > 0 {
        read_tls(r, &mut bad)
    } else {
        for (k, set) in [
            ("ca", r.ca.is_some()),
            ("cert", r.cert.is_some()),
            ("key", r.key.is_some()),
            ("server_name", r.server_name.is_some()),
        ] {
            if set {
                bad(k, "only with https:// endpoints".into());
            }
        }
        None
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Some(EtcdSettings {
        endpoints: r.endpoints.clone(),
        prefix: r.prefix.trim_end_matches('/').to_owned(),
        tls,
        timeout: std::time::Duration::from_millis(r.timeout_ms),
        keep_ms: cfg
            .time
            .max_age_ms
            .saturating_add(cfg.time.max_future_skew_ms),
    }))
}

/// The problems of `[replay]`, for [`Config::check`] (`check-config` and
/// the start accept exactly the same settings).
pub fn config_problems(cfg: &Config, role: Role) -> Vec<Problem> {
    let r = &cfg.replay;
    match r.backend.as_str() {
        "local" => {
            let set = !r.endpoints.is_empty()
                || r.ca.is_some()
                || r.cert.is_some()
                || r.key.is_some()
                || r.server_name.is_some();
            if set {
                vec![Problem {
                    key: "replay.backend".into(),
                    problem: "etcd settings are given but backend is \"local\": set backend = \"etcd\" or remove them".into(),
                }]
            } else {
                Vec::new()
            }
        }
        "etcd" if role == Role::Red => vec![Problem {
            key: "replay.backend".into(),
            problem: "\"etcd\" is for greens that share a receiver key; red-relay keeps its floors in daemon.replay_db".into(),
        }],
        "etcd" => etcd_settings(cfg).err().unwrap_or_default(),
        other => vec![Problem {
            key: "replay.backend".into(),
            problem: format!("'{other}': use \"local\" or \"etcd\""),
        }],
    }
}

enum Scheme {
    Https,
    LoopbackHttp,
}

fn endpoint_scheme(e: &str) -> Result<Scheme, &'static str> {
    let (scheme, rest) = if let Some(rest) = e.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = e.strip_prefix("http://") {
        (Scheme::LoopbackHttp, rest)
    } else {
        return Err("use https://HOST:PORT");
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("use https://HOST:PORT (the port is required)")?;
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("the port must be 1..=65535");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err("use https://HOST:PORT");
    }
    if matches!(scheme, Scheme::LoopbackHttp) {
        let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
        if !loopback {
            return Err(
                "plain http:// only on loopback: the floors need mutual TLS on a network (SPEC §9)",
            );
        }
    }
    Ok(scheme)
}

fn read_tls(r: &ReplaySection, bad: &mut impl FnMut(&str, String)) -> Option<TlsFiles> {
    let (Some(ca), Some(cert), Some(key)) = (&r.ca, &r.cert, &r.key) else {
        for (k, set) in [
            ("ca", r.ca.is_some()),
            ("cert", r.cert.is_some()),
            ("key", r.key.is_some()),
        ] {
            if !set {
                bad(
                    k,
                    "required with https:// endpoints (mutual TLS to etcd)".into(),
                );
            }
        }
        return None;
    };
    let mut ok = true;
    let ca_pem = spa_keys::read_public_file(ca).unwrap_or_else(|e| {
        bad("ca", e.to_string());
        ok = false;
        Vec::new()
    });
    let cert_pem = spa_keys::read_public_file(cert).unwrap_or_else(|e| {
        bad("cert", e.to_string());
        ok = false;
        Vec::new()
    });
    for (k, path, pem) in [("ca", ca, &ca_pem), ("cert", cert, &cert_pem)] {
        if !pem.is_empty() {
            match spa_keys::read_certificates(path) {
                Ok(c) if !c.is_empty() => {}
                Ok(_) => {
                    bad(k, format!("{}: no PEM certificate", path.display()));
                    ok = false;
                }
                Err(e) => {
                    bad(k, e.to_string());
                    ok = false;
                }
            }
        }
    }
    let key_pem = match spa_keys::read_secret_file(key) {
        Ok(k) if contains_private_key(&k) => k,
        Ok(_) => {
            bad("key", format!("{}: no PEM private key", key.display()));
            return None;
        }
        Err(e) => {
            bad("key", e.to_string());
            return None;
        }
    };
    if let Some(n) = &r.server_name
        && (n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
    {
        bad("server_name", format!("'{n}': a DNS name or address"));
        ok = false;
    }
    ok.then(|| TlsFiles {
        ca_pem,
        cert_pem,
        key_pem,
        server_name: r.server_name.clone(),
    })
}

fn contains_private_key(pem: &[u8]) -> bool {
    pem.windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(replay: &str) -> Config {
        toml::from_str(&format!(
            "[daemon]\nkeys = []\nreplay_db = \"/var/lib/spa/replay.redb\"\n\
             [trust]\nanchors = []\n[replay]\n{replay}"
        ))
        .expect("config")
    }

    fn keys(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn local_is_the_default_and_takes_no_etcd_settings() {
        let c = config("");
        assert_eq!(c.replay.backend, "local");
        assert!(config_problems(&c, Role::Green).is_empty());
        let c = config("endpoints = [\"https://10.0.0.5:2379\"]");
        assert_eq!(keys(&config_problems(&c, Role::Green)), ["replay.backend"]);
        let c = config("backend = \"zookeeper\"");
        assert_eq!(keys(&config_problems(&c, Role::Green)), ["replay.backend"]);
    }

    #[test]
    fn red_refuses_etcd() {
        let c = config("backend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]");
        assert!(config_problems(&c, Role::Green).is_empty());
        assert_eq!(keys(&config_problems(&c, Role::Red)), ["replay.backend"]);
    }

    #[test]
    fn etcd_needs_endpoints_mutual_tls_and_a_bounded_timeout() {
        let c = config("backend = \"etcd\"");
        assert_eq!(
            keys(&config_problems(&c, Role::Green)),
            ["replay.endpoints"]
        );
        let c = config(
            "backend = \"etcd\"\nendpoints = [\"https://10.0.0.5:2379\", \"http://10.0.0.6:2379\"]\n\
             timeout_ms = 0\nprefix = \"spa\"",
        );
        assert_eq!(
            keys(&config_problems(&c, Role::Green)),
            [
                "replay.endpoints[1]",
                "replay.prefix",
                "replay.timeout_ms",
                "replay.ca",
                "replay.cert",
                "replay.key"
            ]
        );
    }

    #[test]
    fn endpoints_need_https_unless_loopback() {
        assert!(matches!(
            endpoint_scheme("https://10.0.0.5:2379"),
            Ok(Scheme::Https)
        ));
        assert!(matches!(
            endpoint_scheme("https://[fd00::5]:2379"),
            Ok(Scheme::Https)
        ));
        assert!(matches!(
            endpoint_scheme("http://127.0.0.1:2379"),
            Ok(Scheme::LoopbackHttp)
        ));
        assert!(matches!(
            endpoint_scheme("http://[::1]:2379"),
            Ok(Scheme::LoopbackHttp)
        ));
        assert!(endpoint_scheme("http://10.0.0.5:2379").is_err());
        assert!(endpoint_scheme("10.0.0.5:2379").is_err());
        assert!(endpoint_scheme("https://10.0.0.5").is_err());
        assert!(endpoint_scheme("https://10.0.0.5:0").is_err());
        assert!(endpoint_scheme("https://:2379").is_err());
    }
}
