//! The command-line definitions. The man page and shell completions are
//! generated from these same definitions (`spa-client man`,
//! `spa-client completions SHELL`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_CODES_HELP;

/// Send single-packet-authorization knocks to an spa gateway.
///
/// Each knock is one UDP datagram: signed by your key (a file or a smart
/// card), sealed to the server's public key, never answered. Settings come
/// from a profile in ~/.config/spa/client.toml; flags override them.
#[derive(Debug, Parser)]
#[command(name = "spa-client", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Configuration file [default: ~/.config/spa/client.toml].
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Profile to use [default: the file's `default`, or its only profile].
    #[arg(short = 'p', long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print results (and errors) as one JSON object on standard output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one knock: open the tunnel, request a service, or close.
    #[command(after_help = SEND_EXAMPLES)]
    Send(SendArgs),
    /// Reach a service through green's mutual-TLS tunnel (knocking first).
    #[command(after_help = CONNECT_EXAMPLES)]
    Connect(ConnectArgs),
    /// Generate a software client key (PKCS#8, mode 0600) and optionally a CSR.
    #[command(after_help = KEYGEN_EXAMPLES)]
    Keygen(KeygenArgs),
    /// Smart cards and other PKCS#11 tokens: list, generate a key on the token, make a CSR.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write every page into a directory.
    Man {
        /// Write spa-client.1 and a page per subcommand (spa-client-send.1,
        /// spa-client-token-list.1, ...) into DIR, created if missing,
        /// instead of printing spa-client.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

const SEND_EXAMPLES: &str = "\
Examples:
  spa-client send open                         # open the tunnel (profile defaults)
  spa-client send --wait 22 request ssh        # ask for ssh, wait until port 22 opens
  spa-client -p lab send --allow-ip 198.51.100.7 open
  spa-client send --dry-run --json open        # show the datagram, send nothing
  spa-client send close                        # close the session everywhere";

const CONNECT_EXAMPLES: &str = "\
Examples:
  ssh -o ProxyCommand='spa-client connect ssh' host   # stdin/stdout through the tunnel
  spa-client connect web --listen 127.0.0.1:8080      # forward local connections

The profile needs tunnel_ca (the CA of green's TLS certificate) and, unless it
is 8443, tunnel_port. Without an open session in the state file, an
open-tunnel knock for the tunnel (tunnel_service, default \"tunnel\"; not the
profile's services) is sent first; then a request-service knock for SERVICE.
With close_on_exit = true in the profile, a close knock is sent when the
standard input/output stream ends (not with --listen, which runs until
stopped).";

/// `connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The service to reach (as named in green's configuration).
    pub service: String,
    /// Listen here and forward each local TCP connection through a new
    /// tunnel connection, instead of relaying standard input and output.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Server host name or address (overrides the profile).
    #[arg(long, value_name = "HOST")]
    pub server: Option<String>,
    /// Server UDP port [default: 62201].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Server public key, base64 (overrides the profile).
    #[arg(long, value_name = "BASE64")]
    pub server_key: Option<String>,
    /// Client certificate, PEM or DER (overrides the profile).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key, PKCS#8 (overrides the profile's key or token).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Address to open for (see `send --allow-ip`).
    #[arg(long, value_name = "IP|auto|source")]
    pub allow_ip: Option<String>,
    /// Seconds the openings should last [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub lifetime: Option<u32>,
    /// How long to wait for the tunnel port, seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub wait_timeout: f64,
    /// How many fresh open-tunnel knocks may be resent while waiting.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub resend: u32,
}

const KEYGEN_EXAMPLES: &str = "\
Examples:
  spa-client keygen --out ~/.config/spa/alice.key --csr alice.csr --name alice --email alice@example.org";

/// `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server host name or address (overrides the profile).
    #[arg(long, global = true, value_name = "HOST")]
    pub server: Option<String>,
    /// Server UDP port [default: 62201].
    #[arg(long, global = true, value_name = "PORT")]
    pub port: Option<u16>,
    /// Server public key, base64 (overrides the profile).
    #[arg(long, global = true, value_name = "BASE64")]
    pub server_key: Option<String>,
    /// Client certificate, PEM or DER (overrides the profile).
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key, PKCS#8 (overrides the profile's key or token).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Address to open for: an IP address, `auto` (the address the knock
    /// leaves from) or `source` (whatever source the server sees: weaker, a
    /// captured knock can be resent from elsewhere).
    #[arg(long, global = true, value_name = "IP|auto|source")]
    pub allow_ip: Option<String>,
    /// Seconds the opening should last [default: 30].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub lifetime: Option<u32>,
    /// Session id (hex, 32 digits) instead of the one remembered from `open`.
    #[arg(long, global = true, value_name = "HEX")]
    pub session: Option<String>,
    /// After sending, probe this TCP port on the server until it accepts a
    /// connection, resending a fresh knock on loss; exit 5 on timeout.
    #[arg(long, global = true, value_name = "PORT")]
    pub wait: Option<u16>,
    /// How long --wait probes, seconds.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    pub wait_timeout: f64,
    /// How many fresh knocks --wait may resend.
    #[arg(long, global = true, default_value_t = 3, value_name = "N")]
    pub resend: u32,
    /// Print the datagram (hex) and what it contains; send nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// The knock.
    #[command(subcommand)]
    pub kind: SendKind,
}

/// The three knocks.
#[derive(Debug, Subcommand)]
pub enum SendKind {
    /// Open the tunnel (a new session).
    Open {
        /// Services to open [default: the profile's, else `tunnel`].
        services: Vec<String>,
    },
    /// Request services in the current session.
    Request {
        /// Services to request.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Close the current session on every hop.
    Close,
}

/// Key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256.
    P256,
}

/// `keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t = Algorithm::Ed25519)]
    pub algorithm: Algorithm,
    /// Also write a certificate signing request here (for `spa-server pki issue --csr`).
    #[arg(long, value_name = "FILE", requires = "name")]
    pub csr: Option<PathBuf>,
    /// Identity for the CSR's subject common name.
    #[arg(long)]
    pub name: Option<String>,
    /// E-mail address for the CSR's subjectAltName.
    #[arg(long)]
    pub email: Option<String>,
    /// Overwrite an existing key file.
    #[arg(long)]
    pub force: bool,
}

/// Where a token is.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// PKCS#11 module (e.g. /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so).
    #[arg(long, value_name = "FILE")]
    pub module: PathBuf,
    /// Token label.
    #[arg(long, value_name = "LABEL", conflicts_with = "token_serial")]
    pub token: Option<String>,
    /// Token serial number.
    #[arg(long, value_name = "SERIAL")]
    pub token_serial: Option<String>,
    /// PIN source: env:VARIABLE, file:/path or prompt (never the PIN itself).
    #[arg(long, default_value = "prompt", value_name = "SOURCE")]
    pub pin: String,
}

/// `token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List the tokens of a module.
    List {
        /// PKCS#11 module.
        #[arg(long, value_name = "FILE")]
        module: PathBuf,
    },
    /// Generate a key pair on the token (the private key never leaves it).
    Keygen {
        /// The token.
        #[command(flatten)]
        token: TokenArgs,
        /// Key label.
        #[arg(long)]
        label: String,
        /// Key id, hex.
        #[arg(long, default_value = "")]
        id: String,
        /// Algorithm.
        #[arg(long, value_enum, default_value_t = Algorithm::Ed25519)]
        algorithm: Algorithm,
    },
    /// Write a CSR signed by the token's key.
    Csr {
        /// The token.
        #[command(flatten)]
        token: TokenArgs,
        /// Key label.
        #[arg(long, conflicts_with = "id")]
        label: Option<String>,
        /// Key id, hex.
        #[arg(long)]
        id: Option<String>,
        /// Subject common name.
        #[arg(long)]
        name: String,
        /// E-mail subjectAltName.
        #[arg(long)]
        email: Option<String>,
        /// Output file (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}
