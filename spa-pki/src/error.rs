//! Errors of the CA tooling.

use std::path::PathBuf;

use spa_keys::KeyFileError;

use super::CA_CERT;

/// Why a CA operation failed. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A key, certificate or CRL file (see [`KeyFileError`]).
    #[error(transparent)]
    File(#[from] KeyFileError),
    /// An operating system error on a CA file.
    #[error("cannot {op} {}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        err: std::io::Error,
    },
    /// `init` on a directory that already holds a CA.
    #[error("{} already holds a CA ({} exists); refusing to overwrite it", dir.display(), file.display())]
    AlreadyInitialised {
        /// The directory.
        dir: PathBuf,
        /// The file found.
        file: PathBuf,
    },
    /// The directory holds no CA.
    #[error("{} holds no CA ({} is missing): run spa-server pki init --dir {}", dir.display(), CA_CERT, dir.display())]
    NotInitialised {
        /// The directory.
        dir: PathBuf,
    },
    /// The CA key is not the key of the CA certificate.
    #[error("the CA key {} does not match the CA certificate {}", key.display(), cert.display())]
    CaKeyMismatch {
        /// Key file.
        key: PathBuf,
        /// Certificate file.
        cert: PathBuf,
    },
    /// The CA key is of an algorithm that cannot sign certificates here.
    #[error("{}: a CA key must be Ed25519 or P-256, this is {found}", path.display())]
    UnsupportedCaKey {
        /// Key file.
        path: PathBuf,
        /// What it is.
        found: String,
    },
    /// The CA certificate is past its notAfter.
    #[error("the CA certificate {} expired at {not_after}: refusing to issue from it (make a new CA with pki init)", cert.display())]
    CaExpired {
        /// Certificate file.
        cert: PathBuf,
        /// Its notAfter, RFC 3339.
        not_after: String,
    },
    /// The CA certificate is not valid yet (clock?).
    #[error("the CA certificate {} is not valid before {not_before}: refusing to issue from it (check the clock)", cert.display())]
    CaNotYetValid {
        /// Certificate file.
        cert: PathBuf,
        /// Its notBefore, RFC 3339.
        not_before: String,
    },
    /// A certificate request that does not parse or whose signature does
    /// not verify.
    #[error("{}: {reason}", path.display())]
    BadCsr {
        /// The request file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A subject key spa clients cannot use.
    #[error("{}: {reason}", path.display())]
    UnsupportedSubjectKey {
        /// The CSR or public key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A bad name, e-mail, DNS name or option value.
    #[error("invalid {what} {value:?}: {reason}")]
    BadValue {
        /// Which value.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A corrupt CA file (index, serial, CRL number).
    #[error("{}:{line}: {reason}", path.display())]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A serial the index does not know.
    #[error("serial {serial} was not issued by this CA (not in {})", index.display())]
    UnknownSerial {
        /// The serial.
        serial: u64,
        /// The index file.
        index: PathBuf,
    },
    /// A certificate from another CA.
    #[error("{} was not issued by this CA", path.display())]
    NotIssuedHere {
        /// The certificate file.
        path: PathBuf,
    },
    /// Revoking twice.
    #[error("serial {serial} is already revoked (at {at})")]
    AlreadyRevoked {
        /// The serial.
        serial: u64,
        /// When, RFC 3339.
        at: String,
    },
    /// rcgen could not build or sign something.
    #[error("cannot {what}: {reason}")]
    Build {
        /// What.
        what: &'static str,
        /// rcgen's message.
        reason: String,
    },
    /// Trust files that do not load ([`spa_keys::trust`]).
    #[error(transparent)]
    Trust(#[from] spa_keys::trust::TrustFileError),
}

impl PkiError {
    /// The file a trust-loading error is about, if it names one (for
    /// `status` after a failed reload).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::File(e) => e.path(),
            Self::Io { path, .. } => Some(path),
            Self::Trust(e) => e.path(),
            _ => None,
        }
    }
}
