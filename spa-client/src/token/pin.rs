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
                check_pin_file(path)?;
                let bytes =
                    Zeroizing::new(std::fs::read(path).map_err(|cause| TokenError::PinFile {
                        path: path.clone(),
                        cause,
                    })?);
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

#[cfg(unix)]
fn check_pin_file(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|cause| TokenError::PinFile {
        path: path.to_owned(),
        cause,
    })?;
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
fn check_pin_file(_path: &Path) -> Result<(), TokenError> {
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
}
