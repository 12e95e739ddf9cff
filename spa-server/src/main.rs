//! `spa-server`: green, the gateway that verifies knocks, opens its firewall
//! and relays counter-signed orders to red, and never answers; also the CA
//! and key commands. This file only dispatches: the work is in the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser as _;
use spa_daemon::config::Role;
use spa_daemon::keygen::pubkey;
use spa_pki::cmd::pki_command;
use spa_server::cli::{Cli, Command};
use spa_server::keygen_cmd::keygen_command;
use time::OffsetDateTime;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spa-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    match command {
        Command::Keygen(a) => keygen_command(&a)?,
        Command::Pubkey(a) => println!("{}", pubkey(&a.key)?.1),
        Command::Run(a) => spa_server::green::run(&a.config)?,
        Command::CheckConfig(a) => {
            return Ok(spa_daemon::admin::check_config(&a.config, Role::Green));
        }
        Command::Status(c) => return spa_daemon::admin::status(&c),
        Command::RevokeSession { session, control } => {
            return spa_daemon::admin::revoke_session(&control, &session);
        }
        Command::Pki { command } => return pki_command(command, now),
    }
    Ok(ExitCode::SUCCESS)
}
