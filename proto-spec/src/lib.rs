//! `proto-spec`: the wire format, cryptography and verification rules of spa.
//!
//! This crate is the pure protocol core. It performs no I/O, never reads a
//! clock and never draws from a global random number generator: every call
//! that depends on time takes `now`, and every random value is passed in by
//! the caller. Daemons (`spa-server`, `red-relay`) turn its decisions into
//! firewall changes; the client (`spa-client`) turns its datagrams into UDP.
//!
//! `SPEC.md` beside this crate is the single source of truth for bytes and
//! rules; the code cites its sections as `SPEC §N.M`.
//!
//! The main entry points:
//! - [`seal::seal_knock`] and [`seal::seal_order`]: build datagrams.
//! - [`verify::KnockVerifier`] (green) and [`verify::OrderVerifier`] (red):
//!   turn a datagram, its source address and `now` into a typed decision or a
//!   typed [`Refusal`].
//! - [`replay::ReplayState`]: the replay floor store the daemons back with
//!   durable storage.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod body;
pub mod cert;
pub mod error;
pub mod hpke_suite;
pub mod keys;
pub mod order;
pub mod policy;
pub mod replay;
pub mod seal;
pub mod sign;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod verify;
pub mod wire;

pub use error::{CertificateError, MalformedReason, Refusal};

/// Milliseconds since the Unix epoch (UTC). SPEC §1.
pub type UnixMillis = u64;
