//! `red-relay`: red, the hidden server that verifies green's orders and
//! opens its firewall for the services they carry. For now this library
//! holds the command line definitions ([`Cli`], so a man page and
//! completions can be generated from them) and key generation; the daemon
//! arrives with its issue (see README.md, Status).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use spa_keys::{
    KeyFileError, encode_public_key, generate_receiver_key, read_receiver_key, write_receiver_key,
};

/// red, the hidden spa server: verifies green's orders and opens its
/// firewall for the services they carry.
#[derive(Debug, Parser)]
#[command(name = "red-relay", version, about, long_about = None)]
pub struct Cli {
    /// What to do. Without a command: run red (not implemented yet).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate red's X25519 receiver key (what green seals orders to) and
    /// print its public key.
    Keygen(KeygenArgs),
    /// Print the one-line public key of red's existing key file.
    Pubkey(PubkeyArgs),
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

/// `red-relay pubkey`.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The private key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// Generates red's X25519 receiver key, writes it to `out` (0600; an
/// existing file only with `force`) and returns its public key as one line
/// of base64, for green's configuration.
pub fn keygen(out: &Path, force: bool) -> Result<String, KeyFileError> {
    let key = generate_receiver_key()?;
    write_receiver_key(out, &key, force)?;
    Ok(encode_public_key(&key.public_key()))
}

/// The one-line public key of red's X25519 key file.
pub fn pubkey(key: &Path) -> Result<String, KeyFileError> {
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
    fn keygen_then_pubkey() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("red.pem");
        let line = keygen(&out, false).expect("keygen");
        assert_eq!(line.len(), 44);
        assert_eq!(pubkey(&out).expect("pubkey"), line);
        assert!(matches!(
            keygen(&out, false),
            Err(KeyFileError::Exists { .. })
        ));
        assert_ne!(keygen(&out, true).expect("force"), line);
    }
}
