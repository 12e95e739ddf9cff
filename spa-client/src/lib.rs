//! `spa-client`: the client side of spa.
//!
//! - [`cli`] defines the command line (clap), from which the man page and
//!   shell completions are generated;
//! - [`profile`] reads `~/.config/spa/client.toml`;
//! - [`knock`] builds, sends and confirms knocks (`--wait`);
//! - [`state`] keeps the session id and last timestamp between runs;
//! - [`token`] signs with a key on a smart card or other token;
//! - [`exit`] lists the documented exit codes.
#![forbid(unsafe_code)]

pub mod cli;
pub mod exit;
pub mod knock;
pub mod profile;
pub mod run;
pub mod state;
pub mod token;
pub mod tunnel;
