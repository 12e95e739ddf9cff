//! Where a PIN comes from. Never the command line: arguments are visible to
//! every user through `/proc/<pid>/cmdline` and end up in shell histories.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::TokenError;

/// Where a token's PIN comes from. The PIN is held in a [`SecretString`]
/// (zeroized on drop) from the moment it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable, e.g. `SPA_PIN`.
    Env(String),
    /// A file holding the PIN (one trailing newline is ignored). It must not
    /// be accessible by group or others (mode `600` or `400`).
    File(PathBuf),
    /// Ask on the terminal (`rpassword`, no echo). Only if standard input is
    /// a terminal; otherwise an error tells to use `Env` or `File`.
    Prompt,
}

impl PinSource {
    /// Reads the PIN. `what` names the token for the prompt and messages,
    /// e.g. `token 'spa'`.
    pub fn read(&self, what: &str) -> Result<SecretString, TokenError> {
        match self {
            Self::Env(var) => {
                let value =
                    std::env::var_os(var).ok_or_else(|| TokenError::PinEnv { var: var.clone() })?;
                let value = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| TokenError::PinEnv { var: var.clone() })?,
                );
                non_empty(&value, || format!("environment variable {var}"))
            }
            Self::File(path) => {
                let bytes = read_pin_file(path)?;
                let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::PinFile {
                    path: path.clone(),
                    cause: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the PIN is not valid UTF-8",
                    ),
                })?;
                non_empty(text, || format!("file {}", path.display()))
            }
            Self::Prompt => {
                if !std::io::stdin().is_terminal() {
                    return Err(TokenError::PinNoTerminal {
                        what: what.to_owned(),
                    });
                }
                let entered = Zeroizing::new(
                    rpassword::prompt_password(format!("PIN for {what}: ")).map_err(|cause| {
                        TokenError::PinPrompt {
                            what: what.to_owned(),
                            cause,
                        }
                    })?,
                );
                non_empty(&entered, || "the terminal".to_owned())
            }
        }
    }
}

/// Drops one trailing `\n` or `\r\n`, refuses an empty PIN.
fn non_empty(value: &str, source: impl FnOnce() -> String) -> Result<SecretString, TokenError> {
    let pin = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(value);
    if pin.is_empty() {
        return Err(TokenError::PinEmpty {
            source_name: source(),
        });
    }
    Ok(SecretString::from(pin))
}

/// A PIN is short; a larger file is not a PIN file.
const MAX_PIN_FILE: u64 = 4096;

/// Opens the PIN file once and checks and reads that one descriptor: the
/// type and mode checked are those of the file read (no window between a
/// check by path and an open by path in which the file could be swapped).
/// Opened non-blocking, so that a FIFO put in its place is refused instead
/// of blocking.
fn read_pin_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    use std::io::Read as _;
    let err = |cause| TokenError::PinFile {
        path: path.to_owned(),
        cause,
    };
    let mut file = open_pin_file(path).map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    check_pin_file(path, &meta)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.by_ref()
        .take(MAX_PIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_PIN_FILE {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "too large for a PIN file",
        )));
    }
    Ok(bytes)
}

#[cfg(unix)]
fn open_pin_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_pin_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// The checks on the opened file: a regular file, not accessible by group
/// or others.
#[cfg(unix)]
fn check_pin_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt as _;
    if !meta.is_file() {
        return Err(TokenError::PinFile {
            path: path.to_owned(),
            cause: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::PinFilePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_pin_file(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), TokenError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn trailing_newline_only() {
        assert_eq!(
            non_empty("1234\n", String::new).unwrap().expose_secret(),
            "1234"
        );
        assert_eq!(
            non_empty("1234\r\n", String::new).unwrap().expose_secret(),
            "1234"
        );
        assert_eq!(
            non_empty(" 12 34 ", String::new).unwrap().expose_secret(),
            " 12 34 "
        );
        assert!(matches!(
            non_empty("\n", || "file x".into()),
            Err(TokenError::PinEmpty { source_name }) if source_name == "file x"
        ));
    }

    #[cfg(unix)]
    #[test]
    fn pin_file_is_checked_and_read_through_one_descriptor() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "4321\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let src = PinSource::File(p.clone());
        assert_eq!(src.read("t").unwrap().expose_secret(), "4321");
        // The mode checked is the opened file's: the descriptor's metadata,
        // not a second lookup by path.
        let file = open_pin_file(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            check_pin_file(&p, &file.metadata().unwrap()),
            Err(TokenError::PinFilePermissions { mode: 0o640, .. })
        ));
        assert!(matches!(
            src.read("t"),
            Err(TokenError::PinFilePermissions { mode: 0o640, .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn pin_file_that_is_a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            PinSource::File(p).read("t"),
            Err(TokenError::PinFile { cause, .. }) if cause.kind() == std::io::ErrorKind::InvalidInput
        ));
    }

    #[cfg(unix)]
    #[test]
    fn pin_file_that_is_too_large_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, vec![b'1'; 5000]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            PinSource::File(p).read("t"),
            Err(TokenError::PinFile { cause, .. }) if cause.kind() == std::io::ErrorKind::InvalidData
        ));
    }
}
