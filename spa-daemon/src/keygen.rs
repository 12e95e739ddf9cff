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
    /// A public file (certificate, public key, CSR, CRL) where a private
    /// key was expected: nothing to protect, so no permission advice.
    #[error(
        "{}: this is {what}, which is public, not a private key: `pubkey --key` takes the key \
         file that `keygen` wrote",
        path.display()
    )]
    NotAPrivateKey {
        /// The file.
        path: PathBuf,
        /// `a certificate`, `a public key`, ...
        what: &'static str,
    },
}

/// Refuses a certificate, public key, CSR or CRL given where a private key
/// file belongs, before the private-key reader would ask to chmod it.
pub fn refuse_public_file(key: &Path) -> Result<(), KeygenError> {
    match public_pem_kind(key) {
        Some(what) => Err(KeygenError::NotAPrivateKey {
            path: key.to_path_buf(),
            what,
        }),
        None => Ok(()),
    }
}

/// What a PEM file that holds no private key is, from its first label:
/// `None` for anything else (a private key, or a file that cannot be read,
/// left to the private-key reader to report).
fn public_pem_kind(path: &Path) -> Option<&'static str> {
    // The bytes may be a private key: wiped after the look.
    let bytes = zeroize::Zeroizing::new(spa_keys::read_public_file(path).ok()?);
    let text = std::str::from_utf8(&bytes).ok()?;
    let label = text.split("-----BEGIN ").nth(1)?.split("-----").next()?;
    match label {
        "CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE" => Some("a certificate"),
        "PUBLIC KEY" => Some("a public key"),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Some("a certificate request"),
        "X509 CRL" => Some("a certificate revocation list"),
        _ => None,
    }
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
    refuse_public_file(key)?;
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
