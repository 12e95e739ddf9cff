//! `spa-server`: green, the gateway. This library holds what its binary
//! does besides the daemon (which arrives with its own issue): the CA
//! tooling ([`pki`]), key generation ([`keygen`]) and the command line
//! definitions ([`cli`]).
#![forbid(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod ips;
pub mod keygen;
pub mod nft;
pub mod pki;
pub mod store;
