//! `spa-client`: the client that seals a smart-card-signed knock and sends it over UDP.
//!
//! Placeholder: this binary does nothing yet and says so. It arrives with its
//! issue; see README.md (Status).
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "{} {}: not implemented yet; see README.md (Status)",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
