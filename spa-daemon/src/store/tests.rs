//! The replay store on real files: floors, reservations, lost state.

use super::*;

fn id(b: u8) -> IdentityKey {
    IdentityKey([b; 32])
}

#[test]
fn commit_never_lowers_and_skips_needless_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("replay.redb");
    let (mut db, r) = ReplayDb::open(&p, 1000).expect("open");
    assert_eq!(r.state, OpenState::Created);
    db.commit(&id(1), 5000).expect("commit");
    db.commit(&id(1), 4000).expect("commit lower");
    assert_eq!(db.floor(&id(1)), Some(5000));
    db.commit_many(&[(id(2), 7), (id(2), 9), (id(2), 8)])
        .expect("many");
    assert_eq!(db.floor(&id(2)), Some(9));
    drop(db);
    let (db, r) = ReplayDb::open(&p, 2000).expect("reopen");
    assert_eq!(r.state, OpenState::Reopened);
    assert_eq!(db.floor(&id(1)), Some(5000));
    assert_eq!(db.floor(&id(2)), Some(9));
    assert_eq!(db.global_floor(), Some(1000));
}

#[test]
fn order_reservation_is_durable_never_lowers_and_shares_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("replay.redb");
    let (mut db, _) = ReplayDb::open(&p, 1000).expect("open");
    let clock = db.order_clock();
    assert_eq!(clock.reserved(), 0, "nothing stored yet");
    clock.reserve(5000).expect("reserve");
    clock.reserve(4000).expect("lower is a no-op");
    assert_eq!(clock.reserved(), 5000);
    // Floors and the reservation go through the same handle.
    db.commit(&id(1), 7000).expect("commit");
    clock.reserve(6000).expect("reserve again");
    assert_eq!(db.order_clock().reserved(), 6000);
    drop((db, clock));
    let (db, r) = ReplayDb::open(&p, 2000).expect("reopen");
    assert_eq!(r.state, OpenState::Reopened);
    assert_eq!(db.order_clock().reserved(), 6000);
    assert_eq!(db.floor(&id(1)), Some(7000));
    // The handle keeps the file open: a second open is still locked.
    let clock = db.order_clock();
    drop(db);
    assert!(matches!(
        ReplayDb::open(&p, 3000),
        Err(StoreError::Locked { .. })
    ));
    drop(clock);
    let (db, _) = ReplayDb::open(&p, 3000).expect("open after the last handle");
    assert_eq!(db.order_clock().reserved(), 6000);
}

#[test]
fn lost_store_has_no_order_reservation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("replay.redb");
    let (db, _) = ReplayDb::open(&p, 1000).expect("open");
    db.order_clock().reserve(9000).expect("reserve");
    drop(db);
    fs::write(&p, b"not a database").expect("damage");
    let (db, r) = ReplayDb::open(&p, 2000).expect("recover");
    assert!(matches!(r.state, OpenState::Recovered { .. }), "{r:?}");
    assert_eq!(db.order_clock().reserved(), 0);
}

#[test]
fn second_handle_is_locked_not_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("replay.redb");
    let (_db, _) = ReplayDb::open(&p, 1000).expect("open");
    let err = ReplayDb::open(&p, 2000).expect_err("second open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        fs::read_dir(dir.path()).expect("ls").count() == 1,
        "nothing moved aside"
    );
}
