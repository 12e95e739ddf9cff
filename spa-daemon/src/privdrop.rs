//! Dropping privileges once the daemon is set up (boringtun keeps this in a
//! module of its own too). After setup the daemon needs only CAP_NET_ADMIN
//! (nftables set elements over netlink) and CAP_NET_RAW (the already open
//! capture socket needs none, but a re-attached filter would): it keeps
//! those two, drops every other capability from all sets and the bounding
//! set, switches to an unprivileged user and sets no_new_privs.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

/// Why privileges could not be dropped. The daemon refuses to run on.
#[derive(Debug, thiserror::Error)]
pub enum PrivDropError {
    /// Other threads run already: capabilities, the bounding set and
    /// no_new_privs are per thread, so they would keep what this one drops.
    #[error(
        "{0} threads run before the privilege drop; threads must start after it (they would keep root's capabilities)"
    )]
    Threads(usize),
    /// No such user.
    #[error("no such user '{0}'")]
    NoUser(String),
    /// A system call failed.
    #[error("{step}: {cause}")]
    Sys {
        /// What was being done.
        step: &'static str,
        /// The error.
        cause: String,
    },
}

fn sys(step: &'static str) -> impl Fn(String) -> PrivDropError {
    move |cause| PrivDropError::Sys { step, cause }
}

/// The capabilities kept.
pub fn kept() -> CapsHashSet {
    [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]
        .into_iter()
        .collect()
}

/// Looks up a user: `(uid, gid)`.
pub fn lookup(user: &str) -> Result<(Uid, Gid), PrivDropError> {
    let u = User::from_name(user)
        .map_err(|e| sys("looking up the user")(e.to_string()))?
        .ok_or_else(|| PrivDropError::NoUser(user.to_owned()))?;
    Ok((u.uid, u.gid))
}

/// Switches to `user`, keeping only CAP_NET_ADMIN and CAP_NET_RAW.
/// Without a user (None) it stays root but still drops every other
/// capability. The process must have one thread: what this changes is the
/// calling thread's, so any thread started earlier would keep root's
/// capabilities ([`PrivDropError::Threads`]); threads start after it and
/// inherit the dropped state.
pub fn drop_privileges(user: Option<&str>) -> Result<(), PrivDropError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(|e| sys("listing /proc/self/task")(e.to_string()))?
        .count();
    if threads != 1 {
        return Err(PrivDropError::Threads(threads));
    }
    let keep = kept();
    // The bounding set first, while CAP_SETPCAP is still held.
    for c in caps::all() {
        if !keep.contains(&c) {
            let _ = caps::drop(None, CapSet::Bounding, c);
        }
    }
    if let Some(user) = user {
        let (uid, gid) = lookup(user)?;
        nix::sys::prctl::set_keepcaps(true).map_err(|e| sys("PR_SET_KEEPCAPS")(e.to_string()))?;
        setgroups(&[gid]).map_err(|e| sys("setgroups")(e.to_string()))?;
        setgid(gid).map_err(|e| sys("setgid")(e.to_string()))?;
        setuid(uid).map_err(|e| sys("setuid")(e.to_string()))?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| sys("PR_SET_KEEPCAPS")(e.to_string()))?;
    }
    // Effective first: the kernel refuses a permitted set smaller than the
    // effective one (the case when staying root without `daemon.user`).
    caps::set(None, CapSet::Effective, &keep)
        .map_err(|e| sys("effective capabilities")(e.to_string()))?;
    caps::set(None, CapSet::Permitted, &keep)
        .map_err(|e| sys("permitted capabilities")(e.to_string()))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| sys("inheritable capabilities")(e.to_string()))?;
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_no_new_privs().map_err(|e| sys("PR_SET_NO_NEW_PRIVS")(e.to_string()))?;
    Ok(())
}

/// The current effective capabilities, for the status line and tests.
pub fn effective() -> Vec<String> {
    let mut v: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|s| s.into_iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
