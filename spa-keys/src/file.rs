//! Reading and writing files: secrets only from files nobody else can read
//! or write, written 0600; public files replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use zeroize::Zeroizing;

use crate::error::KeyFileError;

/// The largest secret (key) file read: keys are a few hundred bytes.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The largest public file (certificates, CRLs) read.
const MAX_PUBLIC_FILE_LEN: u64 = 256 * 1024 * 1024;

pub(crate) fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> KeyFileError {
    let path = path.to_path_buf();
    move |err| KeyFileError::Io { path, op, err }
}

/// Opens for reading without blocking on a FIFO and without acquiring a
/// controlling terminal; checks happen on the opened file (`fstat`), so a
/// symlink or a rename between check and read cannot swap the file.
fn open_for_reading(path: &Path) -> Result<(File, std::fs::Metadata), KeyFileError> {
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(path)
        .map_err(io_err(path, "open"))?;
    let meta = file.metadata().map_err(io_err(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta))
}

fn read_limited(
    path: &Path,
    file: File,
    len: u64,
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<(), KeyFileError> {
    if len > limit {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len,
            limit,
        });
    }
    file.take(limit.saturating_add(1))
        .read_to_end(buf)
        .map_err(io_err(path, "read"))?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > limit {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: u64::try_from(buf.len()).unwrap_or(u64::MAX),
            limit,
        });
    }
    Ok(())
}

/// Reads a secret file (a private key).
///
/// Refuses a file that group or others may read or write (`mode & 0o077`),
/// one owned by another user than the effective user or root, and anything
/// but a regular file. The checks use the metadata of the opened file, so
/// a symlink is followed once and its target is what is checked and read.
/// The contents are zeroized when dropped.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let (file, meta) = open_for_reading(path)?;
    let mode = meta.mode();
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let owner = meta.uid();
    let user = rustix::process::geteuid().as_raw();
    if owner != user && owner != 0 {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            owner,
            user,
        });
    }
    // Allocate once, so the secret is not left behind by a reallocation.
    let cap = usize::try_from(meta.len().min(MAX_KEY_FILE_LEN)).unwrap_or(0);
    let mut buf = Zeroizing::new(Vec::with_capacity(cap.saturating_add(1)));
    read_limited(path, file, meta.len(), MAX_KEY_FILE_LEN, &mut buf)?;
    Ok(buf)
}

/// Reads a public file (certificates, CRLs, public keys): a regular file of
/// at most 256 MiB, whatever its permissions.
pub fn read_public_file(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let (file, meta) = open_for_reading(path)?;
    let mut buf = Vec::new();
    read_limited(path, file, meta.len(), MAX_PUBLIC_FILE_LEN, &mut buf)?;
    Ok(buf)
}

static TEMP_COUNTER: AtomicU32 = AtomicU32::new(0);

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename or a creation in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))
}

/// Creates `path` with `mode` (new files only), writes and fsyncs it.
fn create_and_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| {
            if err.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyFileError::Io {
                    path: path.to_path_buf(),
                    op: "create",
                    err,
                }
            }
        })?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(path, "write"));
    if written.is_err() {
        // Best effort: do not leave a truncated file behind.
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Writes `bytes` to `temp`, then renames it over `path`: readers see the
/// old file or the new one, never half of one.
fn replace_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let temp = temp_path(path);
    create_and_write(&temp, bytes, mode)?;
    if let Err(err) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(KeyFileError::Io {
            path: path.to_path_buf(),
            op: "replace",
            err,
        });
    }
    sync_dir(parent_dir(path))
}

/// Writes a secret file with mode 0600 and fsyncs it.
///
/// Without `force` the file must not exist (`O_CREAT|O_EXCL`). With `force`
/// an existing file is replaced atomically (write to a temporary file in
/// the same directory, then rename), so the new file is 0600 whatever the
/// old one's mode was.
pub fn write_secret_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), KeyFileError> {
    if force {
        replace_atomically(path, bytes, 0o600)
    } else {
        create_and_write(path, bytes, 0o600)?;
        sync_dir(parent_dir(path))
    }
}

/// Writes a public file (certificate, CRL) with mode 0644, replacing any
/// existing file atomically, and fsyncs it.
pub fn write_public_file(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    replace_atomically(path, bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn writes_0600_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pem");
        write_secret_file(&p, b"secret", false).expect("write");
        let mode = std::fs::metadata(&p).expect("stat").mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_secret_file(&p).expect("read").as_slice(), b"secret");
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pem");
        write_secret_file(&p, b"one", false).expect("write");
        let e = write_secret_file(&p, b"two", false).expect_err("exists");
        assert!(matches!(e, KeyFileError::Exists { .. }));
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(read_secret_file(&p).expect("read").as_slice(), b"one");
    }

    #[test]
    fn force_replaces_and_fixes_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"old").expect("write");
        set_mode(&p, 0o644);
        write_secret_file(&p, b"new", true).expect("force");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o600);
        assert_eq!(read_secret_file(&p).expect("read").as_slice(), b"new");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn refuses_group_or_other_access_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("y.pem");
        std::fs::write(&p, b"x").expect("write");
        for (mode, word) in [
            (0o644, "readable"),
            (0o640, "readable"),
            (0o620, "writable"),
            (0o666, "readable and writable"),
            (0o610, "accessible"),
        ] {
            set_mode(&p, mode);
            let e = read_secret_file(&p).expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!(
                    "key file {} is {word} by others (mode {mode:04o}): run chmod 600 {}",
                    p.display(),
                    p.display()
                )
            );
        }
        set_mode(&p, 0o400);
        read_secret_file(&p).expect("0400 is fine");
    }

    #[test]
    fn checks_the_target_of_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("real.pem");
        let link = dir.path().join("link.pem");
        std::fs::write(&target, b"x").expect("write");
        set_mode(&target, 0o600);
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(read_secret_file(&link).expect("read").as_slice(), b"x");
        set_mode(&target, 0o644);
        let e = read_secret_file(&link).expect_err("target is world-readable");
        assert!(matches!(e, KeyFileError::Permissions { .. }), "{e}");
    }

    #[test]
    fn refuses_directories_and_fifos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read_secret_file(dir.path()).expect_err("directory");
        assert!(matches!(e, KeyFileError::NotRegularFile { .. }), "{e}");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if made {
            set_mode(&fifo, 0o600);
            let e = read_secret_file(&fifo).expect_err("fifo");
            assert!(matches!(e, KeyFileError::NotRegularFile { .. }), "{e}");
        }
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = read_secret_file(Path::new("/nonexistent/k.pem")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("cannot open /nonexistent/k.pem: "),
            "{e}"
        );
        let e = read_public_file(Path::new("/nonexistent/c.pem")).expect_err("missing");
        assert!(matches!(e, KeyFileError::Io { op: "open", .. }), "{e}");
    }

    #[test]
    fn refuses_too_large() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big.pem");
        std::fs::write(&p, vec![b'a'; 70_000]).expect("write");
        set_mode(&p, 0o600);
        let e = read_secret_file(&p).expect_err("too large");
        assert!(matches!(e, KeyFileError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn refuses_a_file_of_another_user() {
        // Only root can give a file away. Elsewhere the test fails unless
        // skips are allowed explicitly (the policy of `tests::cannot_run`;
        // that crate depends on this one).
        if rustix::process::geteuid().as_raw() != 0 {
            assert!(
                std::env::var_os("SPA_TEST_ALLOW_SKIP").is_some_and(|v| v == "1"),
                "refuses_a_file_of_another_user: cannot run here: needs root to chown. Run \
                 the tests as root, or set SPA_TEST_ALLOW_SKIP=1 to skip such tests explicitly \
                 (a skip is not a pass)"
            );
            eprintln!(
                "refuses_a_file_of_another_user: SKIPPED (SPA_TEST_ALLOW_SKIP=1; not a pass)"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"x").expect("write");
        set_mode(&p, 0o600);
        std::os::unix::fs::chown(&p, Some(12345), None).expect("chown");
        let e = read_secret_file(&p).expect_err("other owner");
        assert!(
            e.to_string()
                .contains("is owned by uid 12345, not by this user"),
            "{e}"
        );
    }

    #[test]
    fn public_files_are_replaced_0644() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("crl.pem");
        write_public_file(&p, b"one").expect("write");
        write_public_file(&p, b"two").expect("replace");
        assert_eq!(read_public_file(&p).expect("read"), b"two");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o777, 0o644);
    }
}
