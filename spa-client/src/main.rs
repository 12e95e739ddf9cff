//! `spa-client`: send single-packet-authorization knocks. See `spa-client --help`.
#![forbid(unsafe_code)]

use clap::Parser;
use spa_client::cli::Cli;
use spa_client::exit::ExitCode;
use std::io::Write;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match spa_client::run::run(&cli) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            if let Some(raw) = &report.raw {
                let _ = stdout.write_all(raw);
            } else if cli.json {
                let _ = writeln!(stdout, "{}", report.json);
            } else if report.code != ExitCode::Ok {
                eprintln!("spa-client: {}", report.human);
            } else if !cli.quiet && !report.human.is_empty() {
                let _ = writeln!(stdout, "{}", report.human);
            }
            report.code
        }
        Err(e) => {
            eprintln!("spa-client: error: {e}");
            if cli.json {
                let obj = serde_json::json!({"ok": false, "error": e.to_string(), "exit_code": e.code as u8});
                println!("{obj}");
            }
            e.code
        }
    };
    std::process::ExitCode::from(code as u8)
}
