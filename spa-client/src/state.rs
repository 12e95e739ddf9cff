//! Per-profile client state: the current session id (a request and a close
//! must carry their open's, SPEC §4.1) and the last timestamp sent (sender
//! timestamps are strictly increasing, SPEC §7.5).
//!
//! Stored in `$XDG_STATE_HOME/spa/<profile>.state` (default
//! `~/.local/state/spa/`), written atomically with mode 0600.
//!
//! Parallel runs of one profile (two `connect`s, a `send` while a
//! `connect` knocks) would otherwise read the same last timestamp, send
//! the same or a smaller one, and refuse each other as `replayed` (which
//! counts toward a block). A [`StateLock`] is held from reading the last
//! timestamp to writing the next, so their timestamps strictly increase.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::exit::ClientError;

/// What the client remembers between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientState {
    /// The session of the last open-tunnel, if any.
    pub session_id: Option<[u8; 16]>,
    /// The last timestamp sent, ms.
    pub last_timestamp_ms: u64,
}

/// The state directory.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("spa"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/spa"))
}

/// The state file of a profile.
pub fn state_path(profile: &str) -> Option<PathBuf> {
    let safe: String = profile
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir().map(|d| d.join(format!("{safe}.state")))
}

/// An exclusive lock on one profile's state: `flock(2)` (std's
/// [`File::lock`]) on `<profile>.state.lock` beside the state file. Not
/// the state file itself: [`ClientState::save`] replaces that by a rename,
/// and a lock on the old file would not exclude a run that opened the new
/// one. Released on drop, and by the kernel if the process dies.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    state: PathBuf,
}

impl StateLock {
    /// Waits for the lock of the state file `path` (creating its directory
    /// and the lock file, mode 0600, if needed).
    pub fn acquire(path: &Path) -> Result<Self, ClientError> {
        let fail = |e: std::io::Error| {
            ClientError::config(format!("cannot lock client state {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.with_extension("state.lock"))
            .map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(Self {
            _file: file,
            state: path.to_path_buf(),
        })
    }

    /// Reads the state under the lock.
    pub fn load(&self) -> ClientState {
        ClientState::load(&self.state)
    }

    /// Writes the state under the lock.
    pub fn save(&self, st: &ClientState) -> Result<(), ClientError> {
        st.save(&self.state)
    }
}

impl ClientState {
    /// Reads the state; a missing or unreadable file is an empty state (the
    /// timestamp rule still holds: the clock is used).
    pub fn load(path: &Path) -> Self {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Self::default();
        };
        let mut s = Self::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("session_id=") {
                s.session_id = hex::decode(v.trim()).ok().and_then(|b| b.try_into().ok());
            } else if let Some(v) = line.strip_prefix("last_timestamp_ms=") {
                s.last_timestamp_ms = v.trim().parse().unwrap_or(0);
            }
        }
        s
    }

    /// Writes the state atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let fail = |e: std::io::Error| {
            ClientError::config(format!("cannot write client state {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = path.with_extension("state.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        let mut text = String::new();
        if let Some(sid) = self.session_id {
            text.push_str(&format!("session_id={}\n", hex::encode(sid)));
        }
        text.push_str(&format!("last_timestamp_ms={}\n", self.last_timestamp_ms));
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// The next timestamp: `max(now, last + 1)`. SPEC §7.5.
    pub fn next_timestamp(&mut self, now_ms: u64) -> u64 {
        let ts = now_ms.max(self.last_timestamp_ms.saturating_add(1));
        self.last_timestamp_ms = ts;
        ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_strictly_increase_and_state_round_trips() {
        let mut s = ClientState::default();
        assert_eq!(s.next_timestamp(100), 100);
        assert_eq!(s.next_timestamp(100), 101);
        assert_eq!(s.next_timestamp(50), 102);
        s.session_id = Some([7; 16]);
        let dir = std::env::temp_dir().join(format!("spa-state-test-{}", std::process::id()));
        let p = dir.join("x.state");
        s.save(&p).expect("save");
        assert_eq!(ClientState::load(&p), s);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Threads stand in for processes: `flock` locks belong to the open
    /// file description, and each [`StateLock::acquire`] opens its own.
    #[test]
    fn parallel_lockers_take_distinct_increasing_timestamps() {
        let dir = std::env::temp_dir().join(format!("spa-state-lock-{}", std::process::id()));
        let p = dir.join("x.state");
        let now = 1_000;
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        let lock = StateLock::acquire(&p).expect("lock");
                        let mut st = lock.load();
                        // The same clock for every run: without the lock
                        // they would collide.
                        let ts = st.next_timestamp(now);
                        std::thread::yield_now();
                        lock.save(&st).expect("save");
                        drop(lock);
                        taken.lock().expect("taken").push(ts);
                    }
                });
            }
        });
        let mut taken = taken.into_inner().expect("taken");
        taken.sort_unstable();
        let want: Vec<u64> = (now..now + 200).collect();
        assert_eq!(taken, want);
        assert_eq!(ClientState::load(&p).last_timestamp_ms, now + 199);
        let _ = std::fs::remove_dir_all(dir);
    }
}
