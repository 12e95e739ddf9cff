//! Replay floors and freshness. SPEC §7.
//!
//! The protocol is *check, verify, commit*: the floor is read before the
//! expensive checks, and committed (durably, by the store) only after every
//! check passed and before the caller acts.

use std::collections::HashMap;

use crate::cert::IdentityKey;
use crate::{Refusal, UnixMillis};

/// Default maximum age of a timestamp, ms. SPEC §7.1.
pub const DEFAULT_MAX_AGE_MS: u64 = 60_000;
/// Default maximum future skew of a timestamp, ms. SPEC §7.1.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: u64 = 10_000;

/// Freshness limits. SPEC §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    /// Oldest accepted timestamp is `now - max_age_ms`.
    pub max_age_ms: u64,
    /// Newest accepted timestamp is `now + max_future_skew_ms`.
    pub max_future_skew_ms: u64,
}

impl Default for TimeLimits {
    fn default() -> Self {
        Self {
            max_age_ms: DEFAULT_MAX_AGE_MS,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
        }
    }
}

impl TimeLimits {
    /// SPEC §7.1.
    pub fn check(&self, timestamp_ms: u64, now: UnixMillis) -> Result<(), Refusal> {
        if timestamp_ms < now.saturating_sub(self.max_age_ms) {
            return Err(Refusal::Stale);
        }
        if timestamp_ms > now.saturating_add(self.max_future_skew_ms) {
            return Err(Refusal::FutureDated);
        }
        Ok(())
    }
}

/// How a timestamp must relate to the floor. SPEC §7.2, §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorRule {
    /// `timestamp > floor` (knocks; orders per gateway).
    Strict,
    /// `timestamp >= floor` (client bodies inside orders, which green may
    /// relay more than once).
    AtLeast,
}

impl FloorRule {
    /// Whether `timestamp` passes `floor`.
    pub fn passes(self, timestamp_ms: u64, floor: Option<u64>) -> bool {
        match (self, floor) {
            (_, None) => true,
            (Self::Strict, Some(f)) => timestamp_ms > f,
            (Self::AtLeast, Some(f)) => timestamp_ms >= f,
        }
    }

    /// The whole replay check of SPEC §7.2: the identity's floor under this
    /// rule, and the global floor `G`, always strictly.
    pub fn admits<R: ReplayState + ?Sized>(
        self,
        timestamp_ms: u64,
        id: &IdentityKey,
        store: &R,
    ) -> bool {
        self.passes(timestamp_ms, store.floor(id))
            && Self::Strict.passes(timestamp_ms, store.global_floor())
    }
}

/// The store of replay floors. Daemons back it with durable storage.
/// SPEC §7.2, §7.3.
pub trait ReplayState {
    /// A storage error.
    type Error: core::fmt::Debug;

    /// The highest timestamp accepted for `id`, or `None`. SPEC §7.2.
    fn floor(&self, id: &IdentityKey) -> Option<u64>;

    /// The global floor `G`: no timestamp at or below it is accepted from
    /// anyone. Set to `now` by a receiver that starts without its durable
    /// state. SPEC §7.2.
    fn global_floor(&self) -> Option<u64> {
        None
    }

    /// Raises `id`'s floor to `timestamp_ms` (never lowers it), and returns
    /// only once the new floor is durable. SPEC §7.3.
    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), Self::Error>;

    /// Whether a failed commit means the timestamp is not above the floor
    /// after all: a store shared by several receivers (SPEC §7.6) learns
    /// only at commit, in its compare-and-set, that another receiver
    /// accepted a timestamp at or above this one; a local store re-checks
    /// at commit when datagrams are verified concurrently (SPEC §7.3). The
    /// verifier then refuses `replayed` instead of `storage_failure`.
    /// Default: never.
    fn is_replay(_error: &Self::Error) -> bool {
        false
    }

    /// Raises both floors in one durable step (red commits the gateway's
    /// order floor and the client's floor together). The default commits
    /// one after the other.
    fn commit_pair(
        &mut self,
        first: (&IdentityKey, u64),
        second: (&IdentityKey, u64),
    ) -> Result<(), Self::Error> {
        self.commit(first.0, first.1)?;
        self.commit(second.0, second.1)
    }
}

/// An in-memory store for tests, simulations and the client. Not durable:
/// a daemon that used it would have to set the global floor to `now` at
/// every start (SPEC §7.2).
#[derive(Debug, Clone, Default)]
pub struct MemoryReplayState {
    floors: HashMap<IdentityKey, u64>,
    global: Option<u64>,
}

impl MemoryReplayState {
    /// An empty store with a global floor (SPEC §7.2).
    pub fn with_global_floor(global: u64) -> Self {
        Self {
            floors: HashMap::new(),
            global: Some(global),
        }
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.floors.len()
    }

    /// True when no identity has a floor.
    pub fn is_empty(&self) -> bool {
        self.floors.is_empty()
    }
}

impl ReplayState for MemoryReplayState {
    type Error = core::convert::Infallible;

    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        self.floors.get(id).copied()
    }

    fn global_floor(&self) -> Option<u64> {
        self.global
    }

    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), Self::Error> {
        let e = self.floors.entry(*id).or_insert(timestamp_ms);
        *e = (*e).max(timestamp_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_bounds() {
        let t = TimeLimits::default();
        let now = 1_000_000;
        assert_eq!(t.check(now, now), Ok(()));
        assert_eq!(t.check(now - 60_000, now), Ok(()));
        assert_eq!(t.check(now - 60_001, now), Err(Refusal::Stale));
        assert_eq!(t.check(now + 10_000, now), Ok(()));
        assert_eq!(t.check(now + 10_001, now), Err(Refusal::FutureDated));
        assert_eq!(t.check(u64::MAX, 0), Err(Refusal::FutureDated));
        assert_eq!(t.check(0, u64::MAX), Err(Refusal::Stale));
    }

    #[test]
    fn floor_never_goes_back_and_global_applies() {
        let id = IdentityKey([1; 32]);
        let mut s = MemoryReplayState::with_global_floor(50);
        assert_eq!(s.floor(&id), None);
        assert!(
            !FloorRule::AtLeast.admits(50, &id, &s),
            "G is strict for every rule"
        );
        assert!(FloorRule::AtLeast.admits(51, &id, &s));
        s.commit(&id, 100).expect("commit");
        s.commit(&id, 70).expect("commit");
        assert_eq!(s.floor(&id), Some(100));
        assert!(!FloorRule::Strict.admits(100, &id, &s));
        assert!(FloorRule::AtLeast.admits(100, &id, &s));
    }
}
