//! What `check-config` says about `run`'s start beyond the configuration's
//! own values, by the code `run` uses: the replay store's directory (which
//! `run` creates, as root, when it is missing: [`ensure_state_dir`]) and
//! the CRLs' `nextUpdate` (a lapsed CRL refuses every client of its CA
//! under `[trust] expired_crl = "refuse"`, the default; SPEC §6.1), and the
//! capabilities `run`'s root phase needs ([`capabilities`]).

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use caps::{CapSet, Capability};
use time::OffsetDateTime;

use crate::config::{Config, Problem};

/// The mode of a state directory `run` creates: root's, searchable by the
/// daemon user (it reopens its replay store by path after a failed write),
/// listable by nobody else.
pub const STATE_DIR_MODE: u32 = 0o711;

/// How long before a CRL's `nextUpdate` `check-config` warns: a week, so
/// that a weekly renewal job that failed once is noticed in time.
pub const CRL_WARNING: time::Duration = time::Duration::days(7);

/// What `check-config` reports: problems make it exit 1, warnings and notes
/// are printed and it still exits 0.
#[derive(Debug, Default)]
pub struct Findings {
    /// What makes `run` fail or refuse every client.
    pub problems: Vec<Problem>,
    /// CRLs past their `nextUpdate` under `expired_crl = "refuse"`: every
    /// client of their CA is refused. A problem for `check-config`, a
    /// warning for the unit's `check-config --at-start`.
    pub lapsed_crls: Vec<Problem>,
    /// What will go wrong soon (a CRL close to its `nextUpdate`).
    pub warnings: Vec<Problem>,
    /// What `run` will do that the operator may not expect (a directory it
    /// creates).
    pub notes: Vec<Problem>,
}

/// Creates the replay store's directory (and missing parents) with
/// [`STATE_DIR_MODE`] when it is missing; `run` calls it as root before it
/// opens the store. Returns whether it created anything.
pub fn ensure_state_dir(replay_db: &Path) -> std::io::Result<bool> {
    let Some(dir) = replay_db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(false);
    };
    if dir.is_dir() {
        return Ok(false);
    }
    // Set explicitly after creation: the umask (the unit's UMask=0077)
    // would close the directory to the daemon user.
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)?;
    for d in missing {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(STATE_DIR_MODE))?;
    }
    Ok(true)
}

/// The replay store's directory as `run` will find it: present, to be
/// created by `run` ([`ensure_state_dir`], a note), or impossible (a
/// problem: a file in the way).
pub fn state_dir(cfg: &Config, out: &mut Findings) {
    let db = &cfg.daemon.replay_db;
    let key = || "daemon.replay_db".to_owned();
    if db.is_dir() {
        out.problems.push(Problem {
            key: key(),
            problem: format!("{} is a directory; name the store's file", db.display()),
        });
        return;
    }
    let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    if dir.is_dir() {
        return;
    }
    // The nearest existing ancestor must be a directory for create_dir_all.
    let mut up = dir;
    while !up.exists() {
        match up.parent() {
            Some(p) => up = p,
            None => break,
        }
    }
    if up.exists() && !up.is_dir() {
        out.problems.push(Problem {
            key: key(),
            problem: format!(
                "{} cannot be created: {} is not a directory",
                dir.display(),
                up.display()
            ),
        });
    } else {
        out.notes.push(Problem {
            key: key(),
            problem: format!(
                "{} does not exist: run creates it as root, mode {STATE_DIR_MODE:04o} \
                 (the systemd unit's StateDirectory= does so too)",
                dir.display()
            ),
        });
    }
}

/// The capabilities `run`'s root phase uses, with what for: the nftables
/// table and its elements (CAP_NET_ADMIN), the packet socket
/// (CAP_NET_RAW, `capture = "packet"` only), handing the replay store and
/// control socket to `daemon.user` (CAP_CHOWN), opening the store that user
/// owns after an earlier start (CAP_DAC_OVERRIDE) and switching to it
/// (CAP_SETUID, CAP_SETGID).
pub fn needed_capabilities(cfg: &Config) -> Vec<(Capability, &'static str)> {
    let mut v = vec![(
        Capability::CAP_NET_ADMIN,
        "the nftables table and its elements (netlink)",
    )];
    if cfg.daemon.capture == "packet" {
        v.push((Capability::CAP_NET_RAW, "the packet capture socket"));
    }
    v.push((
        Capability::CAP_CHOWN,
        "giving the replay store and control socket to daemon.user",
    ));
    // After the first start the store is daemon.user's (0600): root opens
    // it only with CAP_DAC_OVERRIDE.
    let euid = nix::unistd::geteuid().as_raw();
    if std::fs::metadata(&cfg.daemon.replay_db).is_ok_and(|m| m.uid() != euid) {
        v.push((
            Capability::CAP_DAC_OVERRIDE,
            "opening the replay store daemon.user owns (every start after the first)",
        ));
    }
    v.push((Capability::CAP_SETUID, "switching to daemon.user"));
    v.push((Capability::CAP_SETGID, "switching to daemon.user's group"));
    v
}

/// What `run` started like this process (as root, with this process's
/// capabilities) would lack: each a problem. The systemd unit runs
/// `check-config --at-start` with the unit's own bounding set, so a drop-in
/// or a container that takes CAP_NET_ADMIN away is named here, before
/// `run` fails in the middle of its setup. Not root: nothing is checked
/// (run as another user, `check-config` checks the file only).
pub fn capabilities(cfg: &Config, out: &mut Findings) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Ok(have) = caps::read(None, CapSet::Permitted) else {
        return;
    };
    for (cap, what) in needed_capabilities(cfg) {
        if !have.contains(&cap) {
            out.problems.push(Problem {
                key: "daemon".to_owned(),
                problem: format!(
                    "{cap} is not available to this process ({what} needs it): \
                     a systemd drop-in's CapabilityBoundingSet=, or a container that \
                     drops it (systemd-nspawn: --capability={cap})"
                ),
            });
        }
    }
}

/// Every CRL of `[trust] crls` against `now`: lapsed is a problem (a
/// warning under `expired_crl = "ignore"`), within [`CRL_WARNING`] of its
/// `nextUpdate` a warning. A file that cannot be read is
/// [`Config::check`]'s problem, not repeated here.
pub fn crl_expiry(cfg: &Config, now: OffsetDateTime, out: &mut Findings) {
    for (i, path) in cfg.trust.crls.iter().enumerate() {
        let Ok(crls) = spa_keys::read_crls(path) else {
            continue;
        };
        for der in crls {
            let key = format!("trust.crls[{i}]");
            let Ok((_, crl)) = x509_parser::parse_x509_crl(&der) else {
                out.problems.push(Problem {
                    key,
                    problem: format!("{}: not a CRL", path.display()),
                });
                continue;
            };
            let Some(next) = crl
                .next_update()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
            else {
                continue;
            };
            let renew = format!(
                "renew it: spa-server pki crl --dir CA-DIR --out {} (e.g. weekly from a \
                 systemd timer or cron)",
                path.display()
            );
            let when = next
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| next.to_string());
            if next <= now {
                let refuse = cfg.trust.expired_crl != "ignore";
                let (list, effect) = if refuse {
                    (
                        &mut out.lapsed_crls,
                        "every client certificate of its CA is refused",
                    )
                } else {
                    (
                        &mut out.warnings,
                        "ignored (expired_crl = \"ignore\"): revocations it lists still apply, \
                         newer ones are unknown",
                    )
                };
                list.push(Problem {
                    key,
                    problem: format!(
                        "{}: lapsed at {when} (nextUpdate): {effect}; {renew}",
                        path.display()
                    ),
                });
            } else if next - now < CRL_WARNING {
                let hours = (next - now).whole_hours();
                out.warnings.push(Problem {
                    key,
                    problem: format!(
                        "{}: nextUpdate {when}, in {hours} h; after it every client \
                         certificate of its CA is refused; {renew}",
                        path.display()
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ensure_state_dir_creates_missing_parents_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a/b/replay.redb");
        assert!(ensure_state_dir(&db).unwrap());
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, STATE_DIR_MODE);
        assert!(!ensure_state_dir(&db).unwrap());
    }
}
