//! `spa-daemon`: the framework both gateway daemons run, green
//! (`spa-server`) and red (`red-relay`): receive a datagram, run the cheap
//! checks, verify it through a [`gate::Gate`], open the firewall for what
//! it grants, and keep the state that makes that safe.
//!
//! - The loop: [`daemon`] (receive, rate-limit, verify, open, expire;
//!   [`daemon::Hooks`] for what a daemon adds), [`gate`] (what is
//!   verified, and the [`gate::Decision`] it returns), [`sessions`] (the
//!   one session table and who owns each firewall element),
//!   [`revocation`] (closing the sessions of a revoked certificate).
//! - Durable and defensive state: [`store`] (replay floors, durable
//!   before the firewall opens, with the reservation of SPEC §7.3.1),
//!   [`workers`] (verification threads), [`ips`] (rate limits, offenses, scans),
//!   [`blocked`] (running blocks for the early drop).
//! - Operating it: [`config`] (the configuration file both daemons read,
//!   and its checks), [`start`] (set up, drop privileges, run, clean up),
//!   [`ctl`] (control socket) and [`admin`] (the `status`,
//!   `revoke-session` and `check-config` commands), [`privdrop`] and
//!   [`access`] (what the dropped user can still read), [`logging`],
//!   [`metrics`] (the opt-in Prometheus endpoint),
//!   [`counters`], [`keygen`] (receiver and order-signing keys), [`cli`]
//!   (the arguments both command lines share), [`preflight`] (what
//!   `check-config` checks of `run`'s start beyond the values), [`init`]
//!   (the first run's layout both daemons share, and red's).
//!
//! May depend on: `proto-spec` (the protocol core), `spa-keys` (key and
//! trust files), `spa-nft` (the kernel firewall), `spa-capture` (the
//! capture), and general-purpose crates. Never on `spa-server` or
//! `red-relay`, on the TLS tunnel (`spa-tunnel`, `rustls`) or on the CA
//! tooling (`rcgen`): red links this crate and nothing of green's.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod blocked;
pub mod cli;
pub mod config;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod gate;
pub mod init;
pub mod ips;
pub mod keygen;
pub mod logging;
pub mod metrics;
pub mod preflight;
pub mod privdrop;
pub mod revocation;
pub mod sessions;
pub mod start;
pub mod store;
pub mod workers;
