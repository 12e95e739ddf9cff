//! Host-side key handling shared by `spa-client`, `spa-server` and
//! `red-relay`.
//!
//! - Secret files ([`read_secret_file`], [`write_secret_file`]) are read
//!   only when nobody else can read or write them, and written 0600.
//! - Private keys are PKCS#8 (PEM `PRIVATE KEY` or DER), as
//!   `openssl genpkey` writes them: X25519 receiver keys
//!   ([`read_receiver_key`]), Ed25519 gateway order-signing keys
//!   ([`read_gateway_signer`]) and Ed25519 or P-256 client keys paired with
//!   their certificate ([`load_software_signer`]).
//! - Certificates and CRLs are PEM (one or many blocks) or DER
//!   ([`read_certificates`], [`read_crls`]).
//! - Public keys of receivers and gateways travel as one line of base64
//!   ([`encode_public_key`], [`decode_public_key`]), like WireGuard's.
//!
//! - Trust files (CA certificates, intermediates, CRLs) load into the
//!   verifier's trust store as both daemons and `pki verify` load them
//!   ([`trust`]).
//!
//! Every error names the file and the cause in one line.
#![forbid(unsafe_code)]

mod error;
mod file;
mod pem;
mod private;
mod public;
mod signer;
pub mod trust;

pub use error::{KeyFileError, PublicKeyError};
pub use file::{
    MAX_KEY_FILE_LEN, read_public_file, read_secret_file, write_public_file, write_secret_file,
};
pub use pem::{pem_encode, read_certificates, read_crls, read_csr, read_public_key_spki};
pub use private::{
    KeyAlgorithm, PrivateKey, decode_private_key, ed25519_key_to_pem, generate_gateway_key,
    generate_receiver_key, random_32, read_gateway_signer, read_private_key, read_receiver_key,
    receiver_key_to_pem, write_gateway_key, write_receiver_key,
};
pub use public::{
    decode_gateway_public_key, decode_public_key, encode_gateway_public_key, encode_public_key,
};
pub use signer::{SoftwareSigner, load_software_signer};
