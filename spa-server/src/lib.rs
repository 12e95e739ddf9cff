//! `spa-server`: green, the gateway, assembled on the daemon framework
//! (`spa-daemon`).
//!
//! - Green's own parts: [`green`] (`spa-server run`: the knock verifier,
//!   the relay and the tunnel around the framework's loop), [`relay`]
//!   (green's counter-signed orders to its reds), [`tunnel`] (the mutual-TLS
//!   tunnel endpoint), [`etcd`] (knock floors shared by a fleet of greens,
//!   SPEC §7.6).
//! - Green's first run ([`init`]), the command line definitions ([`cli`])
//!   and what `keygen` prints ([`keygen_cmd`]); the CA tooling and its
//!   `pki` commands are `spa-pki`'s.
//!
//! May depend on: `spa-daemon` (the framework), `spa-nft`, `spa-capture`,
//! `spa-pki` (the `pki` command), `proto-spec`, `spa-keys`, `spa-tunnel`,
//! the TLS crates and the etcd client. Nothing depends on it but its binary
//! and its tests: red-relay never links it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod etcd;
pub mod green;
pub mod init;
pub mod keygen_cmd;
pub mod relay;
pub mod tunnel;
