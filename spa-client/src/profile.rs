//! Profiles: `~/.config/spa/client.toml` (or `--config`). Command-line flags
//! override what a profile says. Every key, from
//! `spa-client/dist/client.toml.example` (also in `man spa-client`,
//! CONFIGURATION):
//!
//! ```toml
#![doc = include_str!("../dist/client.toml.example")]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::ClientError;

/// The default knock port (the same as fwknop's, so existing firewall
/// exceptions fit).
pub const DEFAULT_PORT: u16 = 62201;
/// The default lifetime asked for, seconds.
pub const DEFAULT_LIFETIME_S: u32 = 30;

/// The example configuration: every key of a profile, commented.
pub const EXAMPLE: &str = include_str!("../dist/client.toml.example");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when `--profile` is not given.
    pub default: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One server and how to knock on it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Host name or address.
    pub server: Option<String>,
    /// UDP port.
    pub port: Option<u16>,
    /// The server's static X25519 public key, base64.
    pub server_key: Option<String>,
    /// The client certificate (PEM or DER).
    pub certificate: Option<PathBuf>,
    /// A software private key (PKCS#8).
    pub key: Option<PathBuf>,
    /// A key on a PKCS#11 token instead.
    pub pkcs11: Option<Pkcs11Profile>,
    /// Default services.
    #[serde(default)]
    pub services: Vec<String>,
    /// "auto", "source" or an address.
    pub allow_ip: Option<String>,
    /// Lifetime to ask for, seconds.
    pub lifetime: Option<u32>,
    /// The CA (PEM) that issued green's tunnel server certificate.
    pub tunnel_ca: Option<PathBuf>,
    /// Green's tunnel TCP port [default: 8443].
    pub tunnel_port: Option<u16>,
    /// The service green's tunnel port is (its `[tunnel] service`), which
    /// `connect`'s open-tunnel knock asks for, whatever `services` says
    /// [default: tunnel].
    pub tunnel_service: Option<String>,
    /// `connect` (standard input and output) sends the close knock when
    /// its stream ends [default: false].
    pub close_on_exit: Option<bool>,
}

/// Green's default tunnel port.
pub const DEFAULT_TUNNEL_PORT: u16 = 8443;

/// The service name of green's tunnel port by default (`[tunnel] service`).
pub const DEFAULT_TUNNEL_SERVICE: &str = "tunnel";

/// A PKCS#11 key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Profile {
    /// The module (`opensc-pkcs11.so`, `libsofthsm2.so`, `libykcs11.so`).
    pub module: PathBuf,
    /// Token label.
    pub token: Option<String>,
    /// Token serial number.
    pub token_serial: Option<String>,
    /// Key label.
    pub key_label: Option<String>,
    /// Key id, hex.
    pub key_id: Option<String>,
    /// "env:VAR", "file:/path" or "prompt".
    pub pin: Option<String>,
}

/// The address to ask the server to open for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowIp {
    /// The local address the datagram leaves from (no NAT assumed).
    Auto,
    /// The datagram's source as the server sees it (weak: SPEC §9).
    Source,
    /// This address.
    Addr(IpAddr),
}

impl AllowIp {
    /// Parses `auto`, `source` or an address.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        match s {
            "auto" => Ok(Self::Auto),
            "source" => Ok(Self::Source),
            other => other.parse().map(Self::Addr).map_err(|_| {
                ClientError::config(format!(
                    "--allow-ip: '{other}' is not an IP address, 'auto' or 'source'"
                ))
            }),
        }
    }
}

/// The default configuration path: `$XDG_CONFIG_HOME/spa/client.toml` or
/// `~/.config/spa/client.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("spa/client.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/spa/client.toml"))
}

/// Expands a leading `~/`.
pub fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    p.to_path_buf()
}

/// Reads a configuration file. A missing default file is an empty
/// configuration; a missing explicit file is an error.
pub fn load_config(path: Option<&Path>) -> Result<(ConfigFile, Option<PathBuf>), ClientError> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => match default_config_path() {
            Some(p) => (p, false),
            None => return Ok((ConfigFile::default(), None)),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok((ConfigFile::default(), None));
        }
        Err(e) => {
            return Err(ClientError::config(format!(
                "cannot read configuration {}: {e}",
                path.display()
            )));
        }
    };
    let cfg: ConfigFile = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or_else(String::new, |span| {
            let (line, col) = line_col(&text, span.start);
            format!(":{line}:{col}")
        });
        ClientError::config(format!(
            "configuration {}{at}: {}",
            path.display(),
            e.message()
        ))
    })?;
    Ok((cfg, Some(path)))
}

/// Where a value missing from flags and profile could have come from, for
/// the error that says so: the profile and its file, or the file that
/// does not exist.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The profile's name.
    pub profile: String,
    /// The configuration file read, `None` when there was none.
    pub file: Option<PathBuf>,
}

impl Origin {
    /// The configuration error for a value found in neither: `flag` is the
    /// command-line flag (`--server-key`), `key` the profile key
    /// (`server_key`).
    pub fn missing(&self, what: &str, flag: &str, key: &str) -> ClientError {
        ClientError::config(match &self.file {
            Some(f) => format!(
                "no {what}: give {flag} or set {key} in profile '{}' of {}",
                self.profile,
                f.display()
            ),
            None => format!(
                "no {what}: give {flag}, or create {} with a profile that sets {key} \
                 (a profile needs server, server_key, certificate, and key or a [pkcs11] \
                 table; the format: `man spa-client`, CONFIGURATION)",
                default_config_path().map_or_else(
                    || "a configuration file (--config; neither XDG_CONFIG_HOME nor HOME is set)"
                        .to_owned(),
                    |p| format!("the configuration file {} (it does not exist)", p.display())
                ),
            ),
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, col)
}

impl ConfigFile {
    /// The named profile, or the default one, or an empty profile when the
    /// file names none and no profile was asked for.
    pub fn select(
        &self,
        name: Option<&str>,
        path: Option<&Path>,
    ) -> Result<(String, Profile), ClientError> {
        let where_ = path.map_or_else(
            || "(no configuration file)".to_owned(),
            |p| p.display().to_string(),
        );
        match name.or(self.default.as_deref()) {
            Some(n) => self
                .profiles
                .get(n)
                .cloned()
                .map(|p| (n.to_owned(), p))
                .ok_or_else(|| ClientError::config(format!("unknown profile '{n}' in {where_}"))),
            None if self.profiles.len() == 1 => Ok(self
                .profiles
                .iter()
                .next()
                .map(|(n, p)| (n.clone(), p.clone()))
                .unwrap_or_default()),
            None => Ok(("default".to_owned(), Profile::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys serde accepts in the table at the end of `prefix`, from
    /// the error that lists them (`deny_unknown_fields`).
    fn accepted_keys(prefix: &str) -> Vec<String> {
        let e = toml::from_str::<ConfigFile>(&format!("{prefix}no_such_key_xyz = 1\n"))
            .expect_err("an unknown key");
        let msg = e.message().to_owned();
        let list = msg
            .split_once("expected one of")
            .or_else(|| msg.split_once("expected"))
            .unwrap_or_else(|| panic!("no list of keys in {msg:?}"))
            .1;
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_example_documents_every_profile_key() {
        let cfg: ConfigFile = toml::from_str(EXAMPLE).expect("the example parses");
        let (name, p) = cfg.select(None, None).expect("its default profile");
        assert_eq!(name, "corp");
        assert!(p.pkcs11.is_some() && p.key.is_some());
        let documented = |key: &str| {
            EXAMPLE.lines().any(|l| {
                let l = l.trim_start().trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[profiles.corp.{key}]"))
            }) || (key == "profiles" && EXAMPLE.contains("[profiles."))
        };
        for (table, prefix) in [
            ("top level", ""),
            ("profile", "[profiles.x]\n"),
            ("pkcs11", "[profiles.x.pkcs11]\nmodule = \"m\"\n"),
        ] {
            let keys = accepted_keys(prefix);
            assert!(keys.len() >= 2, "{table}: {keys:?}");
            for key in &keys {
                assert!(
                    documented(key),
                    "{table} key `{key}` is not in client.toml.example"
                );
            }
        }
        for key in [
            "tunnel_ca",
            "tunnel_port",
            "tunnel_service",
            "close_on_exit",
            "token_serial",
            "key_id",
        ] {
            assert!(documented(key), "{key}");
        }
    }

    #[test]
    fn config_errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "[profiles.x]\nserver = \"a\"\n  lifetme = 30\n").expect("write");
        let e = load_config(Some(&path)).expect_err("unknown key");
        assert!(
            e.message.starts_with(&format!(
                "configuration {}:3:3: unknown field `lifetme`",
                path.display()
            )),
            "{}",
            e.message
        );
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }

    #[test]
    fn parses_a_profile_and_selects_it() {
        let cfg: ConfigFile = toml::from_str(
            r#"
            default = "corp"
            [profiles.corp]
            server = "10.200.0.1"
            server_key = "AAAA"
            services = ["tunnel"]
            allow_ip = "source"
            [profiles.corp.pkcs11]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token = "alice"
            key_label = "spa"
            pin = "env:SPA_PIN"
            "#,
        )
        .expect("toml");
        let (n, p) = cfg.select(None, None).expect("profile");
        assert_eq!(n, "corp");
        assert_eq!(p.services, vec!["tunnel"]);
        assert!(p.pkcs11.is_some());
        assert!(cfg.select(Some("nope"), None).is_err());
    }

    #[test]
    fn allow_ip_values() {
        assert_eq!(AllowIp::parse("auto").expect("auto"), AllowIp::Auto);
        assert_eq!(AllowIp::parse("source").expect("source"), AllowIp::Source);
        assert!(matches!(AllowIp::parse("fd00::1"), Ok(AllowIp::Addr(_))));
        assert!(AllowIp::parse("nope").is_err());
    }
}
