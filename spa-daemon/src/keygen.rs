//! `spa-server keygen` and `spa-server pubkey`: green's static X25519 HPKE
//! key (SPEC §2.1) and its Ed25519 order-signing key (SPEC §2.3), written
//! as PKCS#8 PEM with mode 0600; public keys as one line of base64.

use std::path::{Path, PathBuf};

use spa_keys::{
    KeyFileError, PrivateKey, encode_gateway_public_key, encode_public_key, generate_gateway_key,
    generate_receiver_key, read_private_key, write_gateway_key, write_receiver_key,
};

/// Which key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// X25519 receiver (HPKE) key: what clients seal knocks to.
    Receiver,
    /// Ed25519 order-signing key: what red checks orders with.
    Signing,
}

/// Why a key command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeygenError {
    /// Reading or writing the key file.
    #[error(transparent)]
    File(#[from] KeyFileError),
    /// A key without a one-line public form.
    #[error(
        "{}: a P-256 key has no one-line public key; its public key travels in its certificate",
        path.display()
    )]
    NoOneLineForm {
        /// The key file.
        path: PathBuf,
    },
}

/// Generates a key, writes it to `out` (0600; an existing file only with
/// `force`) and returns its public key as one line of base64.
pub fn keygen(out: &Path, kind: KeyKind, force: bool) -> Result<String, KeygenError> {
    Ok(match kind {
        KeyKind::Receiver => {
            let key = generate_receiver_key()?;
            write_receiver_key(out, &key, force)?;
            encode_public_key(&key.public_key())
        }
        KeyKind::Signing => {
            let seed = generate_gateway_key()?;
            write_gateway_key(out, &seed, force)?;
            encode_gateway_public_key(
                &proto_spec::sign::GatewaySigner::from_seed(&seed).public_key(),
            )
        }
    })
}

/// The one-line public key of an existing X25519 or Ed25519 key file, and
/// the key's algorithm.
pub fn pubkey(key: &Path) -> Result<(spa_keys::KeyAlgorithm, String), KeygenError> {
    let k = read_private_key(key)?;
    let alg = k.algorithm();
    match k {
        PrivateKey::P256(_) => Err(KeygenError::NoOneLineForm {
            path: key.to_path_buf(),
        }),
        other => other
            .public_key_line()
            .map(|line| (alg, line))
            .ok_or_else(|| KeygenError::NoOneLineForm {
                path: key.to_path_buf(),
            }),
    }
}
