//! `red-relay`: red, the hidden server that verifies green's orders and opens its
//! firewall for the services they carry.
//!
//! Only the key commands exist yet; the daemon arrives with its issue (see
//! README.md, Status). This file only dispatches.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use red_relay::{Cli, Command};

fn main() -> ExitCode {
    let Some(command) = Cli::parse().command else {
        eprintln!(
            "{} {}: not implemented yet; see README.md (Status). Key commands: red-relay --help",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::from(2);
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("red-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen(a) => {
            let line = red_relay::keygen(&a.out, a.force)?;
            eprintln!(
                "wrote red's X25519 receiver key to {} (mode 0600); public key:",
                a.out.display()
            );
            println!("{line}");
        }
        Command::Pubkey(a) => println!("{}", red_relay::pubkey(&a.key)?),
    }
    Ok(())
}
