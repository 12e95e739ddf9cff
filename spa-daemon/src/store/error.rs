//! Why the replay store failed, and what opening or pruning it found.

use std::io;
use std::path::PathBuf;

/// A failure of the replay store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("replay store {}: {source}", path.display())]
    Db {
        /// The store's file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A file system operation around the database failed.
    #[error("replay store {}: {op}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is open elsewhere (another daemon, or another handle in this
    /// process).
    #[error("replay store {} is already open (another process or handle holds its lock)", path.display())]
    Locked {
        /// The store's file.
        path: PathBuf,
    },
    /// The floor condition failed at commit (SPEC §7.3): another datagram
    /// of the identity was accepted since the check. Nothing was written.
    #[error("replay floor raised since the check (a concurrent datagram of the same identity)")]
    Replayed,
    /// The path exists but is not a regular file; it is never moved aside.
    #[error("replay store {} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
}

/// What [`ReplayDb::open`](super::ReplayDb::open) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenState {
    /// A store written earlier: its floors and `G` are in force.
    Reopened,
    /// No file (first start): created with `G = now`.
    Created,
    /// A database without replay state (e.g. a crash during the first
    /// start): `G = now` was stored in it.
    Uninitialized,
    /// The file was unreadable or corrupt: moved aside, a new store created
    /// with `G = now`.
    Recovered {
        /// Where the old file went.
        moved_to: PathBuf,
        /// Why it was not usable.
        reason: String,
    },
}

impl OpenState {
    /// True when the state was lost and `G` was set to `now` (SPEC §7.2).
    pub fn lost_state(&self) -> bool {
        !matches!(self, Self::Reopened)
    }
}

/// The outcome of [`ReplayDb::open`](super::ReplayDb::open), for the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Which case happened.
    pub state: OpenState,
    /// Identities with a floor, loaded into memory.
    pub identities: usize,
    /// The global floor `G` now in force.
    pub global_floor: u64,
    /// A reservation `R` left by a run that did not close the store (a
    /// crash, SPEC §7.3.1): `G` was raised to it. `None` after a clean stop.
    pub reservation_applied: Option<u64>,
}

/// The outcome of [`ReplayDb::prune`](super::ReplayDb::prune).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries removed.
    pub removed: usize,
    /// `G` after the prune.
    pub global_floor: u64,
}
