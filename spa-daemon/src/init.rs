//! The first run both daemons share (`spa-server init`, `red-relay init`):
//! lay out `/etc/spa` (or another directory) so that `check-config` passes
//! as written and the systemd unit starts. This module holds what both
//! write (the options, the checks that come before any write, the common
//! configuration sections, [`print()`]) and red's [`red`]: copies of the CA
//! certificate (and CRL) it is given, red's receiver key ([`crate::keygen`],
//! 0600) and `red-relay.toml` with green's public keys as its
//! `[[gateways]]` entry. Green's (the CA, green's keys) is
//! `spa_server::init`, on top of this.
//!
//! Everything is owned by root; only the replay store becomes the daemon
//! user's, when `run` gives it away before the privilege drop. Nothing is
//! overwritten without `force`, and even then an existing CA is kept (a CA
//! cannot be replaced without reissuing every client certificate).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use crate::config::{parse_cidr, parse_port_spec};
use crate::keygen::{KeyKind, keygen};

/// What both roles are told.
#[derive(Debug, Clone)]
pub struct Common {
    /// The configuration directory (`/etc/spa`).
    pub dir: PathBuf,
    /// Where the replay store goes (`/var/lib/spa`; `run` creates it).
    pub state_dir: PathBuf,
    /// Where the control socket goes (`/run/spa`).
    pub run_dir: PathBuf,
    /// `daemon.user`: must exist.
    pub user: String,
    /// The knock (or order) port.
    pub knock_port: u16,
    /// `[firewall] management`; when empty and `ssh_connection` names a
    /// client, that client's address (so the blackhole does not cut the
    /// session init runs in).
    pub management: Vec<String>,
    /// `$SSH_CONNECTION`.
    pub ssh_connection: Option<String>,
    /// `[[services]]` as `NAME=tcp/PORT`.
    pub services: Vec<String>,
    /// `[[rules]]` identities, each granted every service; empty means
    /// `*`, every certificate the CA issued.
    pub allow: Vec<String>,
    /// Replace existing files (never the CA).
    pub force: bool,
}

/// `red-relay init`.
#[derive(Debug, Clone)]
pub struct RedOptions {
    /// Shared options.
    pub common: Common,
    /// The CA certificate (green's `ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA's CRL (green's `crl.pem`), if any.
    pub crl: Option<PathBuf>,
    /// Green's order-signing public key (`spa-server pubkey --key
    /// green-signing.key`).
    pub green_signing_key: String,
    /// Green's receiver public key(s) (`spa-server pubkey --key green.key`).
    pub green_receiver_keys: Vec<String>,
}

/// Why init stopped. Nothing is written when it stops before its first
/// write (every check comes first).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// Files that exist, without `--force`.
    #[error(
        "{} already exist(s); nothing was written (give --force to replace them; an existing CA is kept)",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Exists(Vec<PathBuf>),
    /// `daemon.user` does not exist.
    #[error(
        "no user '{0}': create it first (the packages do; otherwise \
         `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`)"
    )]
    NoUser(String),
    /// A flag's value.
    #[error("{flag}: {why}")]
    Bad {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing a file.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A key.
    #[error(transparent)]
    Key(#[from] crate::keygen::KeygenError),
    /// A key file.
    #[error(transparent)]
    KeyFile(#[from] spa_keys::KeyFileError),
}

/// What init wrote and what to do next, for the operator.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration file.
    pub config: PathBuf,
    /// One line per file written or kept.
    pub files: Vec<String>,
    /// Next steps.
    pub next: String,
}

pub fn bad(flag: &'static str, why: impl Into<String>) -> InitError {
    InitError::Bad {
        flag,
        why: why.into(),
    }
}

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |cause| InitError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The checked `[[services]]`, `[[rules]]` and management lines.
#[derive(Debug)]
pub struct Policy {
    /// `(name, proto, port)`.
    pub services: Vec<(String, String, u16)>,
    /// `[[rules]]` identities.
    pub allow: Vec<String>,
    /// `[firewall] management`.
    pub management: Vec<String>,
    /// The address taken from `$SSH_CONNECTION`, if any.
    pub from_ssh: Option<IpAddr>,
}

/// Checks the options both roles share (the user exists, services,
/// identities, management addresses) before anything is written.
pub fn policy(c: &Common) -> Result<Policy, InitError> {
    crate::privdrop::lookup(&c.user).map_err(|_| InitError::NoUser(c.user.clone()))?;
    if c.knock_port == 0 {
        return Err(bad("--knock-port", "must be 1..=65535"));
    }
    let mut services = Vec::new();
    for s in &c.services {
        let (name, spec) = s
            .split_once('=')
            .ok_or_else(|| bad("--service", format!("'{s}': use NAME=tcp/PORT")))?;
        if !proto_spec::body::is_valid_service_name(name.as_bytes()) {
            return Err(bad("--service", format!("'{name}': 1-32 of a-z 0-9 . _ -")));
        }
        let (proto, port) = parse_port_spec(spec)
            .filter(|(_, p)| *p != 0)
            .ok_or_else(|| bad("--service", format!("'{spec}': use tcp/PORT or udp/PORT")))?;
        let proto = if proto == spa_nft::Proto::Udp {
            "udp"
        } else {
            "tcp"
        };
        services.push((name.to_owned(), proto.to_owned(), port));
    }
    if services.is_empty() {
        return Err(bad("--service", "at least one service"));
    }
    let allow = if c.allow.is_empty() {
        vec!["*".to_owned()]
    } else {
        c.allow.clone()
    };
    for a in &c.allow {
        let ok = ["cn:", "email:", "dns:", "uri:"]
            .iter()
            .any(|p| a.starts_with(p) && a.len() > p.len());
        if !ok && a != "*" {
            return Err(bad(
                "--allow",
                format!("'{a}': use cn:NAME, email:ADDR, dns:NAME, uri:URI or *"),
            ));
        }
    }
    let mut management = c.management.clone();
    for m in &management {
        if parse_cidr(m).is_none() {
            return Err(bad(
                "--management",
                format!("'{m}' is not an address or CIDR"),
            ));
        }
    }
    let mut from_ssh = None;
    if management.is_empty()
        && let Some(addr) = c
            .ssh_connection
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.parse::<IpAddr>().ok())
    {
        management.push(addr.to_string());
        from_ssh = Some(addr);
    }
    Ok(Policy {
        services,
        allow,
        management,
        from_ssh,
    })
}

/// Refuses, before anything is written, when a file exists and `force` is
/// not given. Files whose content would be the same are not in the way.
pub fn check_free(force: bool, files: &[(&Path, Option<&[u8]>)]) -> Result<(), InitError> {
    if force {
        return Ok(());
    }
    let taken: Vec<PathBuf> = files
        .iter()
        .filter(|(p, same)| match same {
            Some(bytes) => std::fs::read(p).is_ok_and(|b| b != *bytes),
            None => p.exists(),
        })
        .map(|(p, _)| p.to_path_buf())
        .collect();
    if taken.is_empty() {
        Ok(())
    } else {
        Err(InitError::Exists(taken))
    }
}

/// Creates the configuration directory (0755) and its parents.
pub fn make_dir(dir: &Path) -> Result<(), InitError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io(dir))
}

/// `s` as a TOML string.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `items` as a TOML array of strings.
pub fn toml_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

/// The sections both roles write the same way.
pub fn common_sections(
    out: &mut String,
    c: &Common,
    p: &Policy,
    keys: &[PathBuf],
    db: &Path,
    socket: &Path,
    crls: &[PathBuf],
) {
    let path = |p: &Path| toml_str(&p.display().to_string());
    let _ = writeln!(out, "[daemon]");
    let _ = writeln!(out, "knock_port = {}", c.knock_port);
    let _ = writeln!(out, "capture = \"packet\"");
    let _ = writeln!(
        out,
        "keys = [{}]",
        keys.iter().map(|k| path(k)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(out, "replay_db = {}", path(db));
    let _ = writeln!(out, "control_socket = {}", path(socket));
    let _ = writeln!(out, "user = {}", toml_str(&c.user));
    let _ = writeln!(out, "log_format = \"plain\"\n");
    let _ = writeln!(
        out,
        "[trust]                              # re-read as `user`: keep them readable by it"
    );
    let _ = writeln!(out, "anchors = [{}]", path(&c.dir.join("ca.pem")));
    let _ = writeln!(
        out,
        "# Renew each CRL before its nextUpdate (spa-server pki crl): past it every\n\
         # client of the CA is refused (expired_crl = \"refuse\", the default).\n\
         crls = [{}]",
        crls.iter().map(|k| path(k)).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(out, "\n[firewall]");
    let _ = writeln!(
        out,
        "mode = \"blackhole\"                   # drop every new inbound connection but these"
    );
    let _ = writeln!(out, "management = {}", toml_list(&p.management));
    let _ = writeln!(
        out,
        "forward = \"accept\"                   # \"drop\" on a gateway that routes (README)\n"
    );
    let _ = writeln!(out, "[policy]\nmax_lifetime = 3600\n");
    for (name, proto, port) in &p.services {
        let _ = writeln!(
            out,
            "[[services]]\nname = {}\nproto = \"{proto}\"\nport = {port}\n",
            toml_str(name)
        );
    }
    let names: Vec<String> = p.services.iter().map(|s| s.0.clone()).collect();
    for id in &p.allow {
        if id == "*" {
            let _ = writeln!(
                out,
                "# Every client certificate of the CA in [trust] anchors; narrow it with\n\
                 # identity = \"email:alice@example.org\" (or cn:, dns:, uri:)."
            );
        }
        let _ = writeln!(
            out,
            "[[rules]]\nidentity = {}\nservices = {}\n",
            toml_str(id),
            toml_list(&names)
        );
    }
}

/// `red-relay init`: copies of the CA certificate (and CRL), red's key
/// and `red-relay.toml` with green as its gateway.
pub fn red(o: &RedOptions) -> Result<Report, InitError> {
    let c = &o.common;
    let p = policy(c)?;
    spa_keys::decode_gateway_public_key(&o.green_signing_key)
        .map_err(|e| bad("--green-signing-key", e.to_string()))?;
    if o.green_receiver_keys.is_empty() {
        return Err(bad("--green-receiver-key", "at least one"));
    }
    for k in &o.green_receiver_keys {
        spa_keys::decode_public_key(k).map_err(|e| bad("--green-receiver-key", e.to_string()))?;
    }
    // Parsed as the daemon will parse them.
    spa_keys::read_certificates(&o.ca_cert)?;
    let ca_bytes = std::fs::read(&o.ca_cert).map_err(io(&o.ca_cert))?;
    let crl_bytes = match &o.crl {
        Some(f) => {
            spa_keys::read_crls(f)?;
            Some(std::fs::read(f).map_err(io(f))?)
        }
        None => None,
    };
    let ca_pem = c.dir.join("ca.pem");
    let crl_pem = c.dir.join("crl.pem");
    let key = c.dir.join("red.key");
    let config = c.dir.join("red-relay.toml");
    // The copies may already be there (red on green's host, or a second
    // run): the same bytes are not in the way.
    let mut wanted: Vec<(&Path, Option<&[u8]>)> =
        vec![(&ca_pem, Some(&ca_bytes)), (&key, None), (&config, None)];
    if let Some(b) = &crl_bytes {
        wanted.push((&crl_pem, Some(b)));
    }
    check_free(c.force, &wanted)?;
    make_dir(&c.dir)?;
    let mut files = Vec::new();
    let same = |path: &Path, bytes: &[u8]| std::fs::read(path).is_ok_and(|b| b == bytes);
    if !same(&ca_pem, &ca_bytes) {
        spa_keys::write_public_file(&ca_pem, &ca_bytes)?;
    }
    files.push(format!(
        "{} (the CA certificate, 0644: [trust] anchors)",
        ca_pem.display()
    ));
    let mut crls = Vec::new();
    if let Some(b) = &crl_bytes {
        if !same(&crl_pem, b) {
            spa_keys::write_public_file(&crl_pem, b)?;
        }
        files.push(format!("{} (the CA's CRL, 0644)", crl_pem.display()));
        crls.push(crl_pem.clone());
    }
    let public = keygen(&key, KeyKind::Receiver, c.force)?;
    files.push(format!(
        "{} (red's X25519 receiver key, 0600)",
        key.display()
    ));
    let mut text = format!(
        "# {} — red, written by `red-relay init`. `red-relay check-config` checks it;\n\
         # every key is documented in red-relay.toml.example (/usr/share/doc/red-relay/).\n",
        config.display()
    );
    if crls.is_empty() {
        text.push_str(
            "# No CRL was given: revocations reach red only once [trust] crls names the CA's CRL.\n",
        );
    }
    common_sections(
        &mut text,
        c,
        &p,
        std::slice::from_ref(&key),
        &c.state_dir.join("red-replay.redb"),
        &c.run_dir.join("red-relay.sock"),
        &crls,
    );
    let _ = writeln!(
        text,
        "[[gateways]]                         # green: orders signed with this key, sealed to red's\n\
         signing_key = {}\nreceiver_keys = {}",
        toml_str(&o.green_signing_key),
        toml_list(&o.green_receiver_keys)
    );
    spa_keys::write_public_file(&config, text.as_bytes())?;
    files.push(format!("{} (the configuration, 0644)", config.display()));
    let names: Vec<String> = p
        .services
        .iter()
        .map(|(n, _, port)| format!("{{ name = \"{n}\", port = {port} }}"))
        .collect();
    let next = format!(
        "next steps:\n\
         1. on green, add to its configuration (then restart spa-server):\n   \
            [relay]\n   red = \"RED-ADDRESS:{port}\"\n   red_key = \"{public}\"\n   \
            signing_key = \"/etc/spa/green-signing.key\"\n   source = \"GREEN-ADDRESS-TOWARD-RED\"\n   \
            services = [{services}]\n   \
            and let the relayed services' names into green's [[rules]].\n\
         2. check and start: red-relay check-config --config {cfg}\n   \
            systemctl enable --now red-relay   (or: red-relay run --config {cfg})\n\
         3. copy green's crl.pem here after each `pki crl` (red reloads it by itself).",
        port = c.knock_port,
        services = names.join(", "),
        cfg = config.display(),
    );
    Ok(Report {
        config,
        files,
        next,
    })
}

/// What `spa-server init` and `red-relay init` print.
pub fn print(r: &Report) {
    println!("wrote:");
    for f in &r.files {
        println!("  {f}");
    }
    println!("{}", r.next);
}
