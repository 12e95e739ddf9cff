//! `red-relay`: red, the hidden server that verifies green's orders (SPEC
//! §5, §8.2) and opens its firewall for green's address and the services
//! they carry. Red never answers an order.
//!
//! The daemon is the framework's receive-verify-open loop
//! ([`spa_daemon::daemon::Daemon`]) around red's
//! [`OrderVerifier`]: the same configuration file format as green (checked for
//! [`Role::Red`]: `[[gateways]]` instead of `[relay]`), capture, replay
//! store, firewall, sessions, intrusion prevention, control socket and
//! trust reloads. This library holds the command line definitions ([`Cli`],
//! so that a man page and completions can be generated from them), the
//! verifier's assembly ([`verifier`]; red judges only the services it hosts,
//! [`hosted_services`]), [`run`], and key generation.
//!
//! May depend on: `spa-daemon` (the framework), `spa-nft`, `spa-capture`,
//! `proto-spec` and `spa-keys`. Never on `spa-server`: red links none of
//! green's tunnel, relay or CA code.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use proto_spec::verify::{Gateway, OrderVerifier};
use spa_daemon::cli::{CheckArgs, ConfigArg, ControlArgs, PubkeyArgs};
use spa_daemon::config::{Config, Role};
use spa_daemon::daemon::{NoHooks, TrustWatch, trust_files};
use spa_daemon::keygen::{KeyKind, KeygenError};
use spa_daemon::start::{self, StartError};
use spa_keys::{encode_public_key, read_receiver_key};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/spa/red-relay.toml";

/// red, the hidden spa server: verifies green's orders and opens its
/// firewall for green's address and the services they carry; never
/// answers.
#[derive(Debug, Parser)]
#[command(name = "red-relay", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run red (as root; it drops to `daemon.user` once set up).
    #[command(mut_arg("config", red_config))]
    Run(ConfigArg),
    /// Check a configuration as `run` would start with it: every problem,
    /// with its key, one per line (exit 1), then warnings (a CRL close to
    /// or past its nextUpdate) and notes (a directory `run` creates).
    #[command(mut_arg("config", red_config))]
    CheckConfig(CheckArgs),
    /// Show active openings (client identity, green's address, service,
    /// expiry) and the counters of every decision, from the running daemon.
    #[command(mut_arg("config", red_config))]
    Status(ControlArgs),
    /// Close a session now: its firewall elements are removed.
    #[command(mut_arg("config", red_config))]
    RevokeSession {
        /// The session id (32 hex digits, as `status` shows it).
        session: String,
        /// How to reach the daemon.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Generate red's X25519 receiver key (what green seals orders to) and
    /// print its public key.
    Keygen(KeygenArgs),
    /// Print the one-line public key of red's existing key file.
    Pubkey(PubkeyArgs),
    /// First run: lay out /etc/spa for red (copies of the CA certificate
    /// and CRL, red's key, a configuration with green as its gateway that
    /// passes check-config) and print the next steps, green's `[relay]`
    /// section among them. Refuses to replace existing files unless --force.
    #[command(mut_arg("knock_port", |a| a.default_value("62202")))]
    Init(InitArgs),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man(spa_daemon::cli::ManArgs),
}

/// `red-relay init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// What both daemons' init asks.
    #[command(flatten)]
    pub common: spa_daemon::cli::DaemonInitArgs,
    /// The CA certificate (green's /etc/spa/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// The CA's CRL (green's /etc/spa/crl.pem).
    #[arg(long, value_name = "FILE")]
    pub crl: Option<PathBuf>,
    /// Green's order-signing public key (`spa-server pubkey --key
    /// /etc/spa/green-signing.key`; `spa-server init` prints it).
    #[arg(long, value_name = "BASE64")]
    pub green_signing_key: String,
    /// Green's receiver public key (`spa-server pubkey --key
    /// /etc/spa/green.key`); repeatable, current first.
    #[arg(long, value_name = "BASE64", required = true)]
    pub green_receiver_key: Vec<String>,
}

/// `red-relay init`.
pub fn init(a: &InitArgs) -> Result<spa_daemon::init::Report, spa_daemon::init::InitError> {
    spa_daemon::init::red(&spa_daemon::init::RedOptions {
        common: a.common.common(),
        ca_cert: a.ca_cert.clone(),
        crl: a.crl.clone(),
        green_signing_key: a.green_signing_key.clone(),
        green_receiver_keys: a.green_receiver_key.clone(),
    })
}

/// spa-server's `--config` (in [`ConfigArg`] and [`ControlArgs`]), with
/// red's default file.
fn red_config(arg: clap::Arg) -> clap::Arg {
    arg.default_value(DEFAULT_CONFIG)
}

fn step(step: &'static str) -> impl Fn(String) -> StartError {
    move |cause| StartError::Step { step, cause }
}

/// Red's verifier from a checked configuration: red's receiver keys
/// (`[daemon] keys`), the greens of `[[gateways]]`, the trust files, the
/// policy of `[[rules]]` and `[policy]`, and `[time]` for both the order
/// and the client body. SPEC §5.2, §8.2.
pub fn verifier(cfg: &Config) -> Result<OrderVerifier, StartError> {
    let mut keys = Vec::new();
    for k in &cfg.daemon.keys {
        keys.push(read_receiver_key(k).map_err(|e| step("receiver key")(e.to_string()))?);
    }
    let mut gateways = Vec::new();
    for (i, g) in cfg.gateways.iter().enumerate() {
        let signing_key = spa_keys::decode_gateway_public_key(&g.signing_key)
            .map_err(|e| step("gateways")(format!("gateways[{i}].signing_key: {e}")))?;
        let receiver_keys = g
            .receiver_keys
            .iter()
            .enumerate()
            .map(|(j, k)| {
                spa_keys::decode_public_key(k)
                    .map_err(|e| step("gateways")(format!("gateways[{i}].receiver_keys[{j}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        gateways.push(Gateway {
            signing_key,
            receiver_keys,
        });
    }
    let trust = TrustWatch::new(trust_files(cfg))
        .load()
        .map_err(|e| step("trust")(e.to_string()))?;
    let limits = start::limits(cfg);
    let mut verifier =
        OrderVerifier::new(keys, gateways, trust, start::policy(cfg), limits, limits)
            .map_err(|e| step("gateways")(e.to_string()))?;
    verifier.hosted_services = Some(hosted_services(cfg));
    Ok(verifier)
}

/// The services red hosts, its `[[services]]`: the only names of a relayed
/// request red judges and opens; the others (green's own) it ignores, and
/// a request naming none of them is `unauthorized_service`. SPEC §5.2.
pub fn hosted_services(cfg: &Config) -> Vec<String> {
    cfg.services.iter().map(|s| s.name.clone()).collect()
}

/// `red-relay run`: loads and checks the configuration, builds the
/// verifier, sets up (store, firewall, capture, control socket, privilege
/// drop) and runs until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let cfg = start::load_config(config_path, Role::Red)?;
    spa_daemon::logging::init(&cfg.daemon.log_format);
    let gate = verifier(&cfg)?;
    // One verifier per verification thread ([daemon] workers > 1).
    let n = cfg.daemon.workers();
    let workers = if n > 1 {
        (0..n)
            .map(|_| verifier(&cfg))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let s = start::setup(cfg)?;
    start::run_daemon(s, gate, workers, NoHooks)
}

/// `red-relay keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The private key file to write (PKCS#8 PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Generates red's X25519 receiver key, writes it to `out` (0600; an
/// existing file only with `force`) and returns its public key as one line
/// of base64, for green's configuration.
pub fn keygen(out: &Path, force: bool) -> Result<String, KeygenError> {
    spa_daemon::keygen::keygen(out, KeyKind::Receiver, force)
}

/// The one-line public key of red's X25519 key file.
pub fn pubkey(key: &Path) -> Result<String, KeygenError> {
    spa_daemon::keygen::refuse_public_file(key)?;
    Ok(encode_public_key(&read_receiver_key(key)?.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_default_to_reds_configuration() {
        for args in [
            &["red-relay", "run"][..],
            &["red-relay", "check-config"],
            &["red-relay", "status"],
            &["red-relay", "revoke-session", "00"],
        ] {
            let config = match Cli::try_parse_from(args).expect("parses").command {
                Command::Run(a) => a.config,
                Command::CheckConfig(a) => a.config,
                Command::Status(c) | Command::RevokeSession { control: c, .. } => c.config,
                _ => unreachable!(),
            };
            assert_eq!(config, Path::new(DEFAULT_CONFIG), "{args:?}");
        }
    }

    #[test]
    fn example_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/red-relay.toml.example");
        let text = std::fs::read_to_string(&path).expect("example");
        let cfg = spa_daemon::config::parse(&text, &path).expect("parses");
        assert_eq!(cfg.gateways.len(), 1);
        assert!(cfg.relay.is_empty());
        assert_eq!(hosted_services(&cfg), vec!["web".to_owned()]);
    }

    #[test]
    fn keygen_then_pubkey() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("red.pem");
        let line = keygen(&out, false).expect("keygen");
        assert_eq!(line.len(), 44);
        assert_eq!(pubkey(&out).expect("pubkey"), line);
        assert!(matches!(
            keygen(&out, false),
            Err(KeygenError::File(spa_keys::KeyFileError::Exists { .. }))
        ));
        assert_ne!(keygen(&out, true).expect("force"), line);
    }

    /// A certificate is public: refused as not a key, with no advice to
    /// chmod it.
    #[test]
    fn pubkey_of_a_certificate_says_what_it_is() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("green.crt");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = pubkey(&cert).expect_err("a certificate");
        assert!(
            matches!(
                e,
                KeygenError::NotAPrivateKey {
                    what: "a certificate",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.to_string().contains("chmod"), "{e}");
    }
}
