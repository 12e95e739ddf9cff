//! `spa-server`: green, the gateway, as a library that red-relay shares.
//!
//! - The daemon: [`config`], [`capture`] (passive AF_PACKET or UDP),
//!   [`gate`] (what is verified), [`daemon`] (the receive-verify-open loop),
//!   [`nft`] (the kernel firewall), [`store`] (durable replay floors),
//!   [`ips`] (rate limits, blocks, scans), [`blocked`] (blocks for the
//!   early drop), [`ctl`] (control socket),
//!   [`privdrop`] (and [`access`], what the dropped user can still
//!   read), [`logging`], [`green`] (assembly), [`relay`] (green's
//!   orders to its reds), [`metrics`] (the opt-in Prometheus endpoint).
//! - The CA tooling ([`pki`]), key generation ([`keygen`]), the command
//!   line definitions ([`cli`]) and what the `pki` and `keygen` commands
//!   print ([`pki_cmd`]).
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod blocked;
pub mod capture;
pub mod cli;
pub mod config;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod gate;
pub mod green;
pub mod ips;
pub mod keygen;
pub mod logging;
pub mod metrics;
pub mod nft;
pub mod pki;
pub mod pki_cmd;
pub mod privdrop;
pub mod relay;
pub mod revocation;
pub mod sessions;
pub mod store;
pub mod tunnel;
