//! Errors of the nftables driver.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;

/// What was being done to a set when the kernel said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOp {
    /// `NFT_MSG_NEWSETELEM`: adding or refreshing elements.
    Add,
    /// `NFT_MSG_DELSETELEM`: deleting elements.
    Delete,
    /// `NFT_MSG_GETSETELEM` dump: listing elements.
    List,
    /// `NFT_MSG_GETSET`: checking that the set exists.
    Lookup,
}

impl fmt::Display for SetOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetOp::Add => "add elements to",
            SetOp::Delete => "delete elements from",
            SetOp::List => "list the elements of",
            SetOp::Lookup => "look up",
        })
    }
}

/// Everything that can go wrong in [`crate`].
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The table name is not one nft accepts unquoted (or is too long).
    #[error("invalid nftables table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An element timeout of zero (which the kernel would read as "no
    /// timeout" or refuse) or beyond what the kernel takes.
    #[error("invalid element timeout {timeout:?}: it must be between 1 ms and {max:?}")]
    InvalidTimeout {
        /// The timeout given.
        timeout: Duration,
        /// The largest timeout accepted.
        max: Duration,
    },

    /// The `nft` binary could not be started or fed.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program (path or name) that was run.
        program: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// `nft` ran and failed; its standard error says why.
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    Command {
        /// The program that was run.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// A system call on the netlink socket failed.
    #[error("netlink socket: {call} failed: {errno}")]
    Socket {
        /// The call (`socket`, `bind`, `send`, `recv`, `setsockopt`).
        call: &'static str,
        /// The error number.
        #[source]
        errno: Errno,
    },

    /// The table or the set does not exist: the ruleset is not installed
    /// (or was removed under us).
    #[error("set {set} of table inet {table} does not exist (is the ruleset installed?)")]
    MissingSet {
        /// The table.
        table: String,
        /// The set.
        set: String,
    },

    /// The kernel refused an operation on a set, with this error number.
    #[error("the kernel refused to {op} set {set} of table inet {table}: {errno}")]
    Kernel {
        /// What was being done.
        op: SetOp,
        /// The table.
        table: String,
        /// The set.
        set: String,
        /// The kernel's error number.
        #[source]
        errno: Errno,
    },

    /// The kernel refused the batch as a whole (its `NFNL_MSG_BATCH_BEGIN`),
    /// for example `EPERM` without `CAP_NET_ADMIN`.
    #[error("the kernel refused the nf_tables batch: {errno}")]
    Batch {
        /// The kernel's error number.
        #[source]
        errno: Errno,
    },

    /// The kernel did not acknowledge a request in time.
    #[error("no answer from the kernel within {0:?}")]
    NoReply(Duration),

    /// A reply from the kernel did not parse.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),

    /// A request would not fit a netlink message.
    #[error("netlink request too large ({0} bytes)")]
    TooLarge(usize),
}

impl NftError {
    /// The kernel's or the system's error number, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NftError::Socket { errno, .. }
            | NftError::Kernel { errno, .. }
            | NftError::Batch { errno } => Some(*errno),
            _ => None,
        }
    }
}
