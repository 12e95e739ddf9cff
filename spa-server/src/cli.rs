//! The command line of `spa-server`, as clap definitions only, so that a
//! man page and shell completions can be generated from [`Cli`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use spa_daemon::cli::{ConfigArg, ControlArgs, PubkeyArgs};
use spa_pki::cli::PkiCommand;

/// green, the spa gateway: verifies knocks, opens its firewall and relays
/// counter-signed orders to red; never answers. Also the CA tooling.
#[derive(Debug, Parser)]
#[command(name = "spa-server", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon (as root; it drops to `daemon.user` once set up).
    Run(ConfigArg),
    /// Check a configuration: every problem, with its key, one per line.
    CheckConfig(ConfigArg),
    /// Show active openings (identity, address, service, expiry) and the
    /// counters of every decision, from the running daemon.
    Status(ControlArgs),
    /// Close a session now: its firewall elements are removed.
    RevokeSession {
        /// The session id (32 hex digits, as `status` shows it).
        session: String,
        /// How to reach the daemon.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Certificate authority: make a CA, issue and revoke client
    /// certificates, publish CRLs, check certificates.
    Pki {
        /// The CA command.
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Generate green's X25519 receiver key (or with --signing its Ed25519
    /// order-signing key) and print its public key.
    Keygen(KeygenArgs),
    /// Print the one-line public key of an existing key file.
    Pubkey(PubkeyArgs),
}

/// `spa-server keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The private key file to write (PKCS#8 PEM, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Make the Ed25519 order-signing key instead of the X25519 receiver
    /// key.
    #[arg(long)]
    pub signing: bool,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }
}
