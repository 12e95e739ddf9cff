//! Whether the daemon's user can still reach its files after the privilege
//! drop ([`crate::privdrop`]). The daemon re-reads its trust files (trust
//! anchors, intermediates, CRLs) while it runs and reopens its replay store
//! after a failed write; both happen as `daemon.user`, not as root. A file
//! that only root can read would make every later trust reload fail (a
//! revoked certificate would keep opening the firewall until a restart), so
//! `check-config` and startup refuse it up front, naming the file and the
//! fix.
//!
//! The check walks the path as the kernel would for that user: every
//! directory on the way needs search (`x`) permission, the file itself read
//! (and write, where asked) permission, judged by the owner, group and
//! other bits against the user's uid and primary group (the only group the
//! daemon keeps, see [`crate::privdrop::drop_privileges`]). POSIX ACLs are
//! not consulted: grant access through owner, group or mode. Symbolic links
//! are resolved first and the resolved path is walked.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, Problem};

/// The account the daemon runs as after the drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Primary (and only) group id.
    pub gid: u32,
}

/// What the daemon does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Opens and reads the file.
    Read,
    /// Looks up names in the directory (the replay store reopens its file).
    Search,
}

/// Why the daemon's user cannot reach a path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The path cannot be resolved (missing, or root cannot read it either).
    #[error("{}: {cause}", path.display())]
    Resolve {
        /// The path.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A directory on the way, or the file itself, denies the user.
    #[error(
        "{path} is not {what} by the daemon user (uid {uid}, gid {gid}): {blocked} is owner {owner}, group {group}, mode {mode:04o}; {fix}",
        path = path.display(), blocked = blocked.display()
    )]
    Denied {
        /// The path asked about.
        path: PathBuf,
        /// `readable` or `searchable`.
        what: &'static str,
        /// The component that denies access.
        blocked: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its group.
        group: u32,
        /// Its permission bits.
        mode: u32,
        /// The user.
        uid: u32,
        /// The user's group.
        gid: u32,
        /// What to change.
        fix: String,
    },
}

/// Checks that `account` can do `need` on `path`. Root (uid 0) can always.
pub fn check(path: &Path, account: Account, need: Need) -> Result<(), AccessError> {
    if account.uid == 0 {
        return Ok(());
    }
    let resolved = std::fs::canonicalize(path).map_err(|cause| AccessError::Resolve {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut walked = PathBuf::new();
    let mut components = resolved.components().peekable();
    while let Some(c) = components.next() {
        walked.push(c);
        let last = components.peek().is_none();
        let meta = std::fs::metadata(&walked).map_err(|cause| AccessError::Resolve {
            path: walked.clone(),
            cause,
        })?;
        // Directories on the way need search; the target what was asked.
        let (bit, letter) = match (last, need) {
            (true, Need::Read) => (0o4, "r"),
            _ => (0o1, "x"),
        };
        if !allows(meta.uid(), meta.gid(), meta.mode(), account, bit) {
            let what = if need == Need::Read {
                "readable"
            } else {
                "searchable"
            };
            return Err(AccessError::Denied {
                path: path.to_path_buf(),
                what,
                blocked: walked.clone(),
                owner: meta.uid(),
                group: meta.gid(),
                mode: meta.mode() & 0o7777,
                uid: account.uid,
                gid: account.gid,
                fix: fix(&walked, letter, meta.is_dir(), last, need),
            });
        }
    }
    Ok(())
}

/// Whether the permission `bit` (4 read, 2 write, 1 search) is granted to
/// `account` on a file with this owner, group and mode.
pub fn allows(owner: u32, group: u32, mode: u32, account: Account, bit: u32) -> bool {
    let shift = if owner == account.uid {
        6
    } else if group == account.gid {
        3
    } else {
        0
    };
    (mode >> shift) & bit == bit
}

fn fix(blocked: &Path, letter: &str, is_dir: bool, last: bool, need: Need) -> String {
    let b = blocked.display();
    if last && need == Need::Read {
        format!(
            "make it readable (chmod o+{letter} {b}, or chgrp it to the daemon's group and chmod g+{letter})"
        )
    } else if is_dir {
        format!(
            "let the user through (chmod o+x {b}), or keep the file in a directory the daemon user can search \
             (e.g. pki init --cert-out /etc/spa/ca.pem, pki crl --out /etc/spa/crl.pem)"
        )
    } else {
        format!("{b} is not a directory")
    }
}

/// The problems of `daemon.user` and of what that user must reach, for
/// [`Config::check`](crate::config::Config::check): `daemon.user` is
/// required (`"root"` keeps root, with only the two capabilities, and is
/// not recommended); the trust files must be readable and the replay
/// store's directory searchable by it.
pub fn config_problems(cfg: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let Some(user) = &cfg.daemon.user else {
        p.push(Problem {
            key: "daemon.user".into(),
            problem: "required: the unprivileged user the daemon runs as after setup \
                      (e.g. user = \"spa\"; user = \"root\" keeps root, not recommended)"
                .into(),
        });
        return p;
    };
    let Ok((uid, gid)) = crate::privdrop::lookup(user) else {
        p.push(Problem {
            key: "daemon.user".into(),
            problem: format!("no such user '{user}'"),
        });
        return p;
    };
    let account = Account {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
    };
    let t = &cfg.trust;
    for (list, name) in [
        (&t.anchors, "trust.anchors"),
        (&t.intermediates, "trust.intermediates"),
        (&t.crls, "trust.crls"),
    ] {
        for (i, f) in list.iter().enumerate() {
            // A missing file is reported by the check that reads it.
            if let Err(e @ AccessError::Denied { .. }) = check(f, account, Need::Read) {
                p.push(Problem {
                    key: format!("{name}[{i}]"),
                    problem: format!("{e} (the daemon re-reads it after dropping privileges)"),
                });
            }
        }
    }
    if let Some(dir) = cfg.daemon.replay_db.parent().filter(|d| d.is_dir())
        && let Err(e) = check(dir, account, Need::Search)
    {
        p.push(Problem {
            key: "daemon.replay_db".into(),
            problem: format!("{e} (the store reopens its file after a failed write)"),
        });
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const USER: Account = Account {
        uid: 1000,
        gid: 1000,
    };

    #[test]
    fn owner_group_and_other_bits_are_judged_in_that_order() {
        // The owner's bits decide for the owner, even when other has more.
        assert!(!allows(1000, 0, 0o044, USER, 4));
        assert!(allows(1000, 0, 0o400, USER, 4));
        assert!(allows(0, 1000, 0o040, USER, 4));
        assert!(!allows(0, 1000, 0o004, USER, 4));
        assert!(allows(0, 0, 0o004, USER, 4));
        assert!(!allows(0, 0, 0o700, USER, 1));
        assert!(allows(0, 0, 0o711, USER, 1));
    }

    #[test]
    fn root_needs_no_check_and_missing_paths_are_named() {
        let root = Account { uid: 0, gid: 0 };
        assert!(check(Path::new("/nonexistent/x"), root, Need::Read).is_ok());
        let e = check(Path::new("/nonexistent/x"), USER, Need::Read).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn a_closed_directory_on_the_way_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        let pem = ca.join("ca.pem");
        std::fs::write(&pem, "x").unwrap();
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        set(dir.path(), 0o755);
        set(&pem, 0o644);
        // A user that owns none of it: judged by the other bits.
        let other = Account {
            uid: 4_000_000_001,
            gid: 4_000_000_001,
        };
        set(&ca, 0o755);
        check(&pem, other, Need::Read).unwrap();
        check(&ca, other, Need::Search).unwrap();
        set(&ca, 0o700);
        let e = check(&pem, other, Need::Read).unwrap_err();
        let AccessError::Denied { blocked, mode, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!((blocked.as_path(), *mode), (ca.as_path(), 0o700));
        assert!(e.to_string().contains("chmod o+x"), "{e}");
        set(&ca, 0o755);
        set(&pem, 0o600);
        let e = check(&pem, other, Need::Read).unwrap_err();
        assert!(e.to_string().contains("not readable"), "{e}");
    }
}
