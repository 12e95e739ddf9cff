//! Exit codes and the client's error type. The codes are part of the
//! interface scripts rely on; `spa-client --help` lists them.

use std::fmt;

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success (with `--wait`: the port opened).
    Ok = 0,
    /// An unexpected internal failure.
    Failure = 1,
    /// Usage or configuration error: unknown profile, bad server key,
    /// unreadable or unsafe key file, certificate/key mismatch, bad service
    /// name, datagram too large.
    Config = 2,
    /// Signer or PIN error: token missing, wrong PIN, signing failed.
    Signer = 3,
    /// Network error: unresolvable host, no route, send failed.
    Network = 4,
    /// `--wait`: the port did not open before the timeout.
    WaitTimeout = 5,
}

/// The exit-code table as printed in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (with --wait: the port accepted a connection)
  1  internal failure
  2  usage or configuration error (profile, keys, certificate, service names, size)
  3  signer or PIN error (token, PIN, signing)
  4  network error (resolution, sending)
  5  --wait timed out: the port did not open";

/// An error with the exit code it maps to. Its Display is one line.
#[derive(Debug)]
pub struct ClientError {
    /// Exit code.
    pub code: ExitCode,
    /// One-line message.
    pub message: String,
}

impl ClientError {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Config,
            message: message.into(),
        }
    }

    /// A signer or PIN error.
    pub fn signer(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Signer,
            message: message.into(),
        }
    }

    /// A network error.
    pub fn network(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Network,
            message: message.into(),
        }
    }

    /// An internal failure.
    pub fn failure(message: impl Into<String>) -> Self {
        Self {
            code: ExitCode::Failure,
            message: message.into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it one line whatever the underlying error printed.
        f.write_str(&self.message.replace('\n', "; "))
    }
}

impl std::error::Error for ClientError {}

impl From<spa_keys::KeyFileError> for ClientError {
    fn from(e: spa_keys::KeyFileError) -> Self {
        Self::config(e.to_string())
    }
}
