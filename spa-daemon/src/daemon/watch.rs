//! What the loop watches besides the capture: the trust files (reloaded
//! when one changes, [`TrustWatch`]) and the signals ([`Flags`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use proto_spec::UnixMillis;
use proto_spec::cert::TrustStore;
use spa_keys::trust::{TrustFileError, TrustFiles, load_trust};

use crate::config::Config;

/// Trust files and their modification times, for reloads, and the last
/// reload failure (shown by `status` until a reload succeeds).
#[derive(Debug)]
pub struct TrustWatch {
    files: TrustFiles,
    stamps: Vec<Option<SystemTime>>,
    /// The last failed reload, cleared by a successful one.
    pub last_failure: Option<ReloadFailure>,
}

/// A trust reload that failed: the previous trust store stays in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    /// The file concerned, when the error names one.
    pub file: Option<PathBuf>,
    /// The error.
    pub error: String,
    /// When, ms since the epoch.
    pub at_ms: UnixMillis,
    /// What triggered the reload.
    pub trigger: String,
}

/// The `[trust]` section as files to load.
pub fn trust_files(c: &Config) -> TrustFiles {
    TrustFiles {
        cas: c.trust.anchors.clone(),
        intermediates: c.trust.intermediates.clone(),
        crls: c.trust.crls.clone(),
        unknown_revocation: if c.trust.unknown_revocation == "deny" {
            proto_spec::cert::UnknownRevocation::Deny
        } else {
            proto_spec::cert::UnknownRevocation::Allow
        },
        expired_crl: if c.trust.expired_crl == "ignore" {
            proto_spec::cert::ExpiredCrl::Ignore
        } else {
            proto_spec::cert::ExpiredCrl::Refuse
        },
    }
}

impl TrustWatch {
    /// Records the current modification times.
    pub fn new(files: TrustFiles) -> Self {
        let stamps = Self::read_stamps(&files);
        Self {
            files,
            stamps,
            last_failure: None,
        }
    }

    fn read_stamps(f: &TrustFiles) -> Vec<Option<SystemTime>> {
        f.cas
            .iter()
            .chain(&f.intermediates)
            .chain(&f.crls)
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Whether any file changed since the last call.
    pub fn changed(&mut self) -> bool {
        let now = Self::read_stamps(&self.files);
        if now != self.stamps {
            self.stamps = now;
            true
        } else {
            false
        }
    }

    /// Loads the files (errors name the file).
    pub fn load(&self) -> Result<TrustStore, TrustFileError> {
        load_trust(&self.files)
    }
}

/// Signals the loop watches.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// SIGTERM / SIGINT.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP.
    pub reload: Arc<AtomicBool>,
}

impl Flags {
    /// Registers SIGTERM, SIGINT and SIGHUP.
    pub fn register() -> std::io::Result<Self> {
        let f = Self::default();
        signal_hook::flag::register(signal_hook::consts::SIGTERM, f.stop.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGINT, f.stop.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGHUP, f.reload.clone())?;
        Ok(f)
    }
}
