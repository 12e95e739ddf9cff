//! The replay state the daemon's verification threads use: the store, with
//! the floor condition re-checked at commit under the store's lock (SPEC
//! §7.3), so that two datagrams of one identity verified at the same time
//! on two threads are never both accepted.

use proto_spec::cert::IdentityKey;
use proto_spec::replay::{FloorRule, ReplayState};

use super::{ReplayDb, StoreError};

/// [`ReplayDb`] with check-at-commit: see the module documentation. A
/// commit whose re-check fails is [`StoreError::Replayed`], which the
/// verifier turns into `replayed` ([`ReplayState::is_replay`]).
#[derive(Debug)]
pub struct Sequenced {
    db: ReplayDb,
}

impl Sequenced {
    /// A checked view of `db` (a [`ReplayDb::handle`] on the same store).
    pub fn new(db: &ReplayDb) -> Self {
        Self { db: db.handle() }
    }
}

impl ReplayState for Sequenced {
    type Error = StoreError;

    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        self.db.floor(id)
    }

    fn global_floor(&self) -> Option<u64> {
        self.db.global_floor()
    }

    /// A knock's floor: strict (SPEC §7.2).
    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), StoreError> {
        self.db
            .commit_checked(&[(*id, timestamp_ms, FloorRule::Strict)])
    }

    /// An order's floors: the gateway's strict, the client's at least
    /// (SPEC §7.2), in one step.
    fn commit_pair(
        &mut self,
        first: (&IdentityKey, u64),
        second: (&IdentityKey, u64),
    ) -> Result<(), StoreError> {
        self.db.commit_checked(&[
            (*first.0, first.1, FloorRule::Strict),
            (*second.0, second.1, FloorRule::AtLeast),
        ])
    }

    fn is_replay(error: &StoreError) -> bool {
        matches!(error, StoreError::Replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> IdentityKey {
        IdentityKey([b; 32])
    }

    #[test]
    fn commit_rechecks_the_floor_and_g_under_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, _) = ReplayDb::open(&dir.path().join("r.redb"), 1_000).expect("open");
        let mut a = Sequenced::new(&db);
        let mut b = Sequenced::new(&db);
        // Both threads checked floor None; the first commit wins.
        a.commit(&id(1), 5_000).expect("first");
        let e = b
            .commit(&id(1), 5_000)
            .expect_err("the same timestamp again");
        assert!(Sequenced::is_replay(&e));
        let e = b.commit(&id(1), 4_000).expect_err("lower");
        assert!(Sequenced::is_replay(&e));
        assert!(Sequenced::is_replay(
            &b.commit(&id(2), 1_000).expect_err("at G")
        ));
        b.commit(&id(1), 5_001).expect("higher");
        // Orders: the client floor is at-least, the gateway's strict.
        a.commit_pair((&id(9), 2_000), (&id(1), 5_001))
            .expect("client at its floor");
        assert!(Sequenced::is_replay(
            &a.commit_pair((&id(9), 2_000), (&id(1), 6_000))
                .expect_err("gateway at its floor")
        ));
        assert_eq!(db.floor(&id(9)), Some(2_000));
        assert_eq!(db.floor(&id(1)), Some(5_001), "nothing of a refused pair");
    }
}
