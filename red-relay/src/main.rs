//! `red-relay`: red, the hidden server that verifies green's orders and
//! opens its firewall for green's address and the services they carry;
//! never answers. This file only dispatches: the work is in the library
//! (and in the daemon framework, `spa-daemon`, which green shares).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use red_relay::{Cli, Command};
use spa_daemon::config::Role;

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("red-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(a) => red_relay::run(&a.config)?,
        Command::CheckConfig(a) => {
            return Ok(spa_daemon::admin::check_config(&a, Role::Red));
        }
        Command::Status(c) => return spa_daemon::admin::status(&c),
        Command::RevokeSession { session, control } => {
            return spa_daemon::admin::revoke_session(&control, &session);
        }
        Command::Keygen(a) => {
            let line = red_relay::keygen(&a.out, a.force)?;
            eprintln!(
                "wrote red's X25519 receiver key to {} (mode 0600); public key:",
                a.out.display()
            );
            println!("{line}");
        }
        Command::Pubkey(a) => println!("{}", red_relay::pubkey(&a.key)?),
        Command::Init(a) => spa_daemon::init::print(&red_relay::init(&a)?),
        Command::Man(a) => spa_daemon::cli::man(Cli::command(), &a)?,
        Command::Completions { shell } => spa_daemon::cli::completions(Cli::command(), shell)?,
    }
    Ok(ExitCode::SUCCESS)
}
