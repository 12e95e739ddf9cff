//! Errors: each names the file and the cause in one line, so a daemon or a
//! command line tool can print it as it is.

use std::io;
use std::path::PathBuf;

/// Why a key, certificate or CRL file could not be read or written.
///
/// The I/O and parser causes are part of the message (not a
/// [`std::error::Error::source`]), so `{}` prints the whole story once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// An operating system error.
    #[error("cannot {op} {}: {err}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done: "open", "read", "write", …
        op: &'static str,
        /// The cause.
        err: io::Error,
    },
    /// A secret file is readable or writable by group or others.
    #[error(
        "key file {} is {} by others (mode {:04o}): run chmod 600 {}",
        path.display(),
        access_word(*mode),
        mode & 0o7777,
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A secret file belongs to another user (not root, not us).
    #[error(
        "key file {} is owned by uid {owner}, not by this user (uid {user}) or root: \
         run chown {user} {}",
        path.display(),
        path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        user: u32,
    },
    /// Not a regular file (a directory, a device, a FIFO, …).
    #[error("{} is not a regular file", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// Larger than any key, certificate or CRL file this tool reads.
    #[error("{} is too large ({len} bytes, at most {limit})", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Writing would replace an existing file.
    #[error("{} already exists; refusing to overwrite it (--force replaces it)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// PEM framing or base64 is broken.
    #[error("{}: malformed PEM: {reason}", path.display())]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The DER content does not parse as what the file should hold.
    #[error("{}: {what} is malformed: {reason}", path.display())]
    MalformedDer {
        /// The file.
        path: PathBuf,
        /// What was expected, e.g. "certificate #1".
        what: String,
        /// Parser message.
        reason: String,
    },
    /// The file holds none of what was asked for.
    #[error("{}: no {what} found", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// A PEM block of the wrong kind.
    #[error("{}: expected a PEM \"{expected}\" block, found \"{found}\"", path.display())]
    WrongPemLabel {
        /// The file.
        path: PathBuf,
        /// The label expected.
        expected: &'static str,
        /// The label found.
        found: String,
    },
    /// A key format spa does not read, with the conversion to use.
    #[error("{}: {format} is not supported: {hint}", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The format found.
        format: &'static str,
        /// How to convert it.
        hint: &'static str,
    },
    /// A private key of another algorithm than the one needed.
    #[error("{}: expected {expected} private key, found {found}", path.display())]
    WrongKeyType {
        /// The file.
        path: PathBuf,
        /// What was needed, with its article: "an X25519".
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// A private key and a certificate that do not belong together.
    #[error(
        "the private key {} does not match the certificate {}{}",
        key.display(),
        cert.display(),
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )]
    KeyCertificateMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// E.g. "the key is P-256, the certificate's key Ed25519".
        detail: String,
    },
    /// The certificate's key cannot sign knocks (SPEC §2.2).
    #[error("{}: {reason}", path.display())]
    UnsupportedCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key could not be encoded (a bug, not bad input).
    #[error("cannot encode the key as PKCS#8: {0}")]
    Encoding(String),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

impl KeyFileError {
    /// The file the error is about (the key file, for a key and certificate
    /// that do not match), if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Io { path, .. }
            | Self::Permissions { path, .. }
            | Self::Owner { path, .. }
            | Self::NotRegularFile { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Exists { path, .. }
            | Self::MalformedPem { path, .. }
            | Self::MalformedDer { path, .. }
            | Self::Empty { path, .. }
            | Self::WrongPemLabel { path, .. }
            | Self::UnsupportedFormat { path, .. }
            | Self::WrongKeyType { path, .. }
            | Self::UnsupportedCertificate { path, .. } => Some(path),
            Self::KeyCertificateMismatch { key, .. } => Some(key),
            Self::Encoding(_) | Self::Random(_) => None,
        }
    }
}

fn access_word(mode: u32) -> &'static str {
    match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    }
}

/// Why a one-line public key does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublicKeyError {
    /// Not standard base64 (with `=` padding).
    #[error(
        "public key {shown:?} is not valid base64: expected 44 characters of standard base64 \
         ending in '=' (as printed by keygen)"
    )]
    Base64 {
        /// The input, truncated for display.
        shown: String,
    },
    /// Decodes to another length than 32 bytes.
    #[error(
        "public key {shown:?} decodes to {len} bytes; a public key is 32 bytes (44 base64 characters)"
    )]
    Length {
        /// The input, truncated for display.
        shown: String,
        /// The decoded length.
        len: usize,
    },
    /// 32 bytes that are not a valid Ed25519 point.
    #[error("public key {shown:?} is not a valid Ed25519 public key")]
    NotEd25519 {
        /// The input, truncated for display.
        shown: String,
    },
}
