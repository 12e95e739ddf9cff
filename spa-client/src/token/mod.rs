//! Signing knocks with a key that never leaves a smart card or other token.
//!
//! - [`pkcs11`]: any PKCS#11 module (OpenSC for smart cards, ykcs11 for
//!   YubiKeys, SoftHSM2 in tests): [`pkcs11::Pkcs11Signer`] signs knocks,
//!   [`pkcs11::generate_key_pair`] makes a key on the token and
//!   [`pkcs11::csr`] a certificate request signed by it.
//! - `piv` (cargo feature `yubikey`): a YubiKey's PIV slot 9a through
//!   PC/SC, without a PKCS#11 module.
//! - [`tls`]: any of these signers as the client-authentication key of a
//!   rustls TLS 1.3 client.
//! - [`PinSource`]: where a PIN comes from (never the command line).
//!
//! Every signer implements [`proto_spec::sign::Signer`] and checks, before it
//! signs anything, that the key matches the certificate; every signature is
//! verified against the certificate before it is returned, because green
//! never answers a knock with a bad signature: the client would only see a
//! port that stays closed. See `README.md` beside this file for setup.

use std::path::PathBuf;

use proto_spec::body::SIGNATURE_LEN;
use proto_spec::sign::{ClientPublicKey, SignatureAlgorithm, SignerError};

mod der;
mod pin;
pub mod pkcs11;
pub mod tls;

#[cfg(feature = "yubikey")]
pub mod piv;

pub use pin::PinSource;

/// Where a signer's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// A PEM (`-----BEGIN CERTIFICATE-----`) or DER file.
    File(PathBuf),
    /// The token itself: for PKCS#11 a `CKO_CERTIFICATE` object with the
    /// key's label or id; for PIV the certificate in the key's slot.
    Token,
}

/// Why a token operation failed. Every message is one line and names the
/// module, token, key or file concerned, then the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The module path does not exist.
    #[error(
        "PKCS#11 module {} does not exist (smart cards: install opensc for \
         /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so, or give the card vendor's module)",
        module.display()
    )]
    ModuleNotFound {
        /// The path given.
        module: PathBuf,
    },
    /// The file exists but is not a loadable PKCS#11 library.
    #[error("{} is not a PKCS#11 module: {cause}", module.display())]
    NotAModule {
        /// The path given.
        module: PathBuf,
        /// What the loader said.
        cause: String,
    },
    /// A module-level call failed (before any token was selected).
    #[error("PKCS#11 module {}: {cause}", module.display())]
    Module {
        /// The path given.
        module: PathBuf,
        /// The failed call and its return value.
        cause: String,
    },
    /// No token matches the selector.
    #[error("no token with {token} in PKCS#11 module {} (tokens present: {present})", module.display())]
    TokenNotFound {
        /// The module searched.
        module: PathBuf,
        /// The selector, e.g. `label 'spa'`.
        token: String,
        /// The labels and serials of the tokens that are present.
        present: String,
    },
    /// Several tokens match the selector.
    #[error(
        "{count} tokens have {token} in PKCS#11 module {}; select the token by serial",
        module.display()
    )]
    TokenAmbiguous {
        /// The module searched.
        module: PathBuf,
        /// The selector.
        token: String,
        /// How many tokens match.
        count: usize,
    },
    /// No private key matches the selector.
    #[error("no private key with {key} on token '{token}'")]
    KeyNotFound {
        /// The token's label.
        token: String,
        /// The selector, e.g. `label 'knock'`.
        key: String,
    },
    /// Several private keys match the selector.
    #[error("{count} private keys have {key} on token '{token}'; select the key by id")]
    KeyAmbiguous {
        /// The token's label.
        token: String,
        /// The selector.
        key: String,
        /// How many keys match.
        count: usize,
    },
    /// Key generation would create a second key with the same label or id.
    #[error("token '{token}' already has a key with {key}; choose another label and id")]
    KeyExists {
        /// The token's label.
        token: String,
        /// The label or id that is taken.
        key: String,
    },
    /// The key is of a kind spa cannot use (RSA, P-384, Ed448, no signing
    /// permission, PIN for every signature, ...).
    #[error("key with {key} on token '{token}' is not usable: {cause}")]
    UnsupportedKey {
        /// The token's label.
        token: String,
        /// The key selector.
        key: String,
        /// Why.
        cause: String,
    },
    /// `CKR_PIN_INCORRECT` or the PIV equivalent.
    #[error("wrong PIN for token '{token}'")]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The PIN is blocked.
    #[error(
        "the PIN of token '{token}' is locked (too many wrong PINs); unblock it with the SO PIN or PUK"
    )]
    PinLocked {
        /// The token's label.
        token: String,
    },
    /// The PIN environment variable is missing.
    #[error("PIN environment variable {var} is not set or not valid UTF-8")]
    PinEnv {
        /// The variable's name.
        var: String,
    },
    /// The PIN file cannot be read.
    #[error("cannot read PIN file {}: {cause}", path.display())]
    PinFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The PIN file can be read or written by group or others.
    #[error(
        "PIN file {} is accessible by group or others (mode {mode:03o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    PinFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PIN is empty.
    #[error("the PIN from {source_name} is empty")]
    PinEmpty {
        /// `environment variable X` or `file Y`.
        source_name: String,
    },
    /// A prompt was asked for but standard input is not a terminal.
    #[error(
        "cannot prompt for the PIN of {what}: standard input is not a terminal; \
         put the PIN in an environment variable (`--pin env:VARIABLE`, or `pin = \"env:VARIABLE\"` \
         in the profile's token section) or in a file only you can read (`--pin file:/path`, \
         or `pin = \"file:/path\"`)"
    )]
    PinNoTerminal {
        /// The token the PIN is for.
        what: String,
    },
    /// The terminal prompt failed.
    #[error("cannot read the PIN of {what} from the terminal: {cause}")]
    PinPrompt {
        /// The token the PIN is for.
        what: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The certificate file cannot be read.
    #[error("cannot read certificate file {}: {cause}", path.display())]
    CertificateFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The certificate does not parse or carries a key spa does not take.
    #[error("certificate {certificate} is not usable: {cause}")]
    CertificateInvalid {
        /// The file, or the token object.
        certificate: String,
        /// Why.
        cause: String,
    },
    /// `CertificateSource::Token` but there is no certificate object.
    #[error("no certificate object with {key} on token '{token}'")]
    CertificateNotOnToken {
        /// The token's label.
        token: String,
        /// The key selector.
        key: String,
    },
    /// The key on the token is not the certificate's key.
    #[error("key on token '{token}' ({key}) does not match certificate {certificate}: {detail}")]
    KeyMismatch {
        /// The token's label.
        token: String,
        /// The key selector.
        key: String,
        /// The file, or the token object.
        certificate: String,
        /// What differs.
        detail: String,
    },
    /// A PKCS#11 call on a token failed.
    #[error("token '{token}': {cause}")]
    Pkcs11 {
        /// The token's label.
        token: String,
        /// The failed call and its return value.
        cause: String,
    },
    /// The token returned a signature that cannot be right.
    #[error("token '{token}' returned a bad signature for key with {key}: {cause}")]
    BadSignature {
        /// The token's label.
        token: String,
        /// The key selector.
        key: String,
        /// Why it is refused.
        cause: String,
    },
    /// A certificate request could not be built.
    #[error("cannot build a certificate request for key with {key} on token '{token}': {cause}")]
    Csr {
        /// The token's label.
        token: String,
        /// The key selector.
        key: String,
        /// Why.
        cause: String,
    },
    /// A YubiKey PIV operation failed.
    #[error("{yubikey}: {operation} failed: {cause}")]
    Piv {
        /// `YubiKey` or `YubiKey 12345678`.
        yubikey: String,
        /// What was being done.
        operation: &'static str,
        /// The error.
        cause: String,
    },
}

/// A public key read from a token, normalized: Ed25519 as 32 raw bytes,
/// P-256 as the 65-byte uncompressed SEC1 point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPublicKey {
    /// Ed25519.
    Ed25519([u8; 32]),
    /// ECDSA P-256, uncompressed SEC1 point.
    P256([u8; 65]),
}

impl TokenPublicKey {
    /// The algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            Self::Ed25519(_) => SignatureAlgorithm::Ed25519,
            Self::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }

    /// The raw key: 32 bytes (Ed25519) or the 65-byte SEC1 point (P-256).
    pub fn raw(&self) -> &[u8] {
        match self {
            Self::Ed25519(k) => k,
            Self::P256(k) => k,
        }
    }

    /// The DER SubjectPublicKeyInfo, as in a certificate.
    pub fn spki_der(&self) -> Vec<u8> {
        der::spki(self)
    }

    /// From a certificate's key (spa takes only Ed25519 and P-256).
    pub fn from_client_key(key: &ClientPublicKey) -> Self {
        match key {
            ClientPublicKey::Ed25519(vk) => Self::Ed25519(vk.to_bytes()),
            ClientPublicKey::P256(pk) => {
                let mut out = [0u8; 65];
                let bytes = pk.as_sec1_bytes();
                if bytes.len() == 65 {
                    out.copy_from_slice(bytes);
                }
                Self::P256(out)
            }
        }
    }

    /// A short fingerprint for messages: the first 8 bytes of the raw key in
    /// hex (the SEC1 prefix byte skipped for P-256).
    pub fn short_hex(&self) -> String {
        let raw = match self {
            Self::Ed25519(k) => &k[..8],
            Self::P256(k) => &k[1..9],
        };
        hex::encode(raw)
    }
}

fn algorithm_name(alg: SignatureAlgorithm) -> &'static str {
    match alg {
        SignatureAlgorithm::Ed25519 => "Ed25519",
        SignatureAlgorithm::EcdsaP256Sha256 => "ECDSA P-256",
    }
}

/// A certificate read for a signer: DER, its key, and a name for messages.
#[derive(Debug, Clone)]
struct LoadedCertificate {
    der: Vec<u8>,
    key: ClientPublicKey,
    name: String,
}

impl LoadedCertificate {
    /// Checks a signature made on `token` with `key` against this
    /// certificate's key: a token that signs with another key than the
    /// certificate's is refused before its signature is used.
    fn check_signature(
        &self,
        token: &str,
        key: &str,
        transcript: &[u8],
        sig: &[u8; SIGNATURE_LEN],
    ) -> Result<(), SignerError> {
        if self.key.verify(transcript, sig) {
            return Ok(());
        }
        Err(SignerError(
            TokenError::BadSignature {
                token: token.to_owned(),
                key: key.to_owned(),
                cause: format!("it does not verify with certificate {}", self.name),
            }
            .to_string(),
        ))
    }

    /// Parses PEM or DER bytes; `name` is the file or object, for messages.
    fn parse(bytes: &[u8], name: String) -> Result<Self, TokenError> {
        let der = der::certificate_from_pem_or_der(bytes).map_err(|cause| {
            TokenError::CertificateInvalid {
                certificate: name.clone(),
                cause,
            }
        })?;
        let parsed = proto_spec::cert::parse_client_cert(&der).map_err(|e| {
            TokenError::CertificateInvalid {
                certificate: name.clone(),
                cause: match e {
                    proto_spec::CertificateError::BadDer => {
                        "not a DER or PEM X.509 certificate".to_owned()
                    }
                    proto_spec::CertificateError::UnsupportedKey => {
                        "its key is neither Ed25519 nor P-256 (spa takes only those)".to_owned()
                    }
                    other => format!("refused ({})", other.code()),
                },
            }
        })?;
        Ok(Self {
            der,
            key: parsed.public_key,
            name,
        })
    }

    fn from_file(path: &std::path::Path) -> Result<Self, TokenError> {
        let bytes = std::fs::read(path).map_err(|cause| TokenError::CertificateFile {
            path: path.to_owned(),
            cause,
        })?;
        Self::parse(&bytes, path.display().to_string())
    }

    /// Compares with the token's key; `Err(detail)` if they differ.
    fn check_key(&self, token_key: &TokenPublicKey) -> Result<(), String> {
        let cert_key = TokenPublicKey::from_client_key(&self.key);
        if cert_key.algorithm() != token_key.algorithm() {
            return Err(format!(
                "the token key is {}, the certificate's is {}",
                algorithm_name(token_key.algorithm()),
                algorithm_name(cert_key.algorithm())
            ));
        }
        if cert_key != *token_key {
            return Err(format!(
                "token key {}..., certificate key {}...",
                token_key.short_hex(),
                cert_key.short_hex()
            ));
        }
        Ok(())
    }
}

/// The message signed to prove a key matches a certificate when the token
/// does not show its public key. It cannot be taken for a knock transcript
/// (those start with `spa/v1 knock signature`) nor for TLS (64 spaces).
const KEY_CHECK_MESSAGE: &[u8] = b"spa/v1 token key check: does this key match its certificate?";

/// Verifies a 64-byte signature with a token public key (SPEC §4.4 rules).
fn verify(public: &TokenPublicKey, message: &[u8], sig: &[u8; 64]) -> bool {
    let key = match public {
        TokenPublicKey::Ed25519(k) => ed25519_dalek::VerifyingKey::from_bytes(k)
            .ok()
            .map(ClientPublicKey::Ed25519),
        TokenPublicKey::P256(k) => {
            proto_spec::sign::P256PublicKey::from_sec1_bytes(k).map(ClientPublicKey::P256)
        }
    };
    key.is_some_and(|k| k.verify(message, sig))
}
