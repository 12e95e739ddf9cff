//! The command-line arguments both daemons share (`--config`, how to reach
//! a running daemon, `pubkey`), as clap definitions: `spa-server` and
//! `red-relay` flatten them into their own commands.

use std::path::PathBuf;

use clap::Args;

/// `pubkey`: print the public key of a key file.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The private key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// `--config`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/spa/spa-server.toml"
    )]
    pub config: PathBuf,
}

/// How to reach a running daemon.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The control socket [default: from the configuration file].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The configuration file (for its control socket path).
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/spa/spa-server.toml"
    )]
    pub config: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}
