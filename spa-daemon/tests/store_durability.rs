//! The durable replay store (SPEC §7.2-§7.4): floors survive reopening and
//! crashes, pairs commit atomically, lost or corrupt state sets `G = now`,
//! pruning keeps refusing through `G`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use proto_spec::cert::IdentityKey;
use proto_spec::replay::{FloorRule, ReplayState};
use spa_daemon::store::{OpenState, ReplayDb, StoreError};

fn id(n: u32) -> IdentityKey {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[31] = 0xa5;
    IdentityKey(k)
}

fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("replay.redb")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn missing_file_sets_global_floor_to_now() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let (db, r) = ReplayDb::open(&p, 1_700_000_000_000).unwrap();
    assert_eq!(r.state, OpenState::Created);
    assert!(r.state.lost_state());
    assert_eq!(r.identities, 0);
    assert_eq!(r.global_floor, 1_700_000_000_000);
    assert_eq!(db.global_floor(), Some(1_700_000_000_000));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Nothing sealed at or before the start is accepted, from anyone.
    let anyone = id(1);
    assert!(!FloorRule::Strict.admits(1_700_000_000_000, &anyone, &db));
    assert!(!FloorRule::AtLeast.admits(1_700_000_000_000, &anyone, &db));
    assert!(FloorRule::Strict.admits(1_700_000_000_001, &anyone, &db));
    drop(db);
    // G was stored: a reopen later keeps it rather than taking the new now.
    let (db, r) = ReplayDb::open(&p, 1_800_000_000_000).unwrap();
    assert_eq!(r.state, OpenState::Reopened);
    assert!(!r.state.lost_state());
    assert_eq!(db.global_floor(), Some(1_700_000_000_000));
}

#[test]
fn floors_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
    for n in 0..50 {
        db.commit(&id(n), 10_000 + u64::from(n)).unwrap();
    }
    db.commit(&id(7), 99_999).unwrap();
    db.commit(&id(7), 50_000).unwrap(); // never lowers
    assert_eq!(db.len(), 50);
    drop(db);
    let (db, r) = ReplayDb::open(&p, 2_000).unwrap();
    assert_eq!(r.state, OpenState::Reopened);
    assert_eq!(r.identities, 50);
    assert_eq!(r.global_floor, 1_000);
    for n in 0..50 {
        let want = if n == 7 {
            99_999
        } else {
            10_000 + u64::from(n)
        };
        assert_eq!(db.floor(&id(n)), Some(want), "identity {n}");
    }
    assert!(!FloorRule::Strict.admits(99_999, &id(7), &db));
    assert!(FloorRule::Strict.admits(100_000, &id(7), &db));
    assert_eq!(db.floor(&id(1_000)), None);
}

/// A "crash" at the API level: the handle is dropped right after the last
/// commit, with no shutdown call (there is none: every commit is durable on
/// its own). The child-process test below does the same with abort().
#[test]
fn crash_after_commit_keeps_every_floor() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    {
        let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
        db.commit(&id(1), 5_000).unwrap();
        db.commit_pair((&id(2), 6_000), (&id(3), 7_000)).unwrap();
    }
    let (db, _) = ReplayDb::open(&p, 2_000).unwrap();
    assert_eq!(db.floor(&id(1)), Some(5_000));
    assert_eq!(db.floor(&id(2)), Some(6_000));
    assert_eq!(db.floor(&id(3)), Some(7_000));
}

#[test]
fn commit_pair_is_one_atomic_step() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
    let (gw, client) = (id(100), id(200));
    db.commit_pair((&gw, 10_000), (&client, 9_000)).unwrap();
    // Red raises the client floor to max(floor, client_ts): a lower client
    // timestamp in a later order leaves it, the gateway floor still moves.
    db.commit_pair((&gw, 10_001), (&client, 8_000)).unwrap();
    assert_eq!(db.floor(&gw), Some(10_001));
    assert_eq!(db.floor(&client), Some(9_000));
    // The same identity twice: the larger timestamp wins.
    db.commit_pair((&id(300), 5), (&id(300), 4)).unwrap();
    assert_eq!(db.floor(&id(300)), Some(5));
}

const PAIR_CHILD_ENV: &str = "SPA_STORE_TEST_PAIR_CHILD";

/// Atomicity under kill -9: a child commits pairs `(gw, i), (client, i)` in
/// a loop and is killed (SIGKILL) at some point; whatever made it to disk,
/// the two floors are equal: a pair is never half written.
#[test]
fn commit_pair_survives_sigkill_whole_or_not_at_all() {
    if let Ok(path) = std::env::var(PAIR_CHILD_ENV) {
        let (mut db, _) = ReplayDb::open(Path::new(&path), 1_000).unwrap();
        for i in 1.. {
            db.commit_pair((&id(100), i), (&id(200), i)).unwrap();
            if i == 1 {
                println!("child: first pair committed");
            }
        }
        return;
    }
    for delay_ms in [30, 120] {
        let dir = tempfile::tempdir().unwrap();
        let p = store_path(&dir);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "commit_pair_survives_sigkill_whole_or_not_at_all",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PAIR_CHILD_ENV, &p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the first commit, then let it run a little.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
                "child ended before committing"
            );
            if line.contains("first pair committed") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (db, r) = ReplayDb::open(&p, 2_000).unwrap();
        assert_eq!(r.state, OpenState::Reopened, "{r:?}");
        let (gw, client) = (db.floor(&id(100)), db.floor(&id(200)));
        assert!(gw.is_some_and(|g| g >= 1), "{gw:?}");
        assert_eq!(gw, client, "half a pair after kill -9 ({delay_ms} ms)");
    }
}

#[test]
fn garbage_file_is_moved_aside_and_global_floor_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    fs::write(&p, b"this is not a redb file, not at all; ".repeat(200)).unwrap();
    let (db, r) = ReplayDb::open(&p, 123_456).unwrap();
    let OpenState::Recovered { moved_to, reason } = &r.state else {
        panic!("expected Recovered, got {r:?}");
    };
    assert!(r.state.lost_state());
    assert!(!reason.is_empty());
    assert_eq!(
        moved_to.file_name().unwrap().to_string_lossy(),
        "replay.redb.corrupt-123456"
    );
    assert!(moved_to.exists());
    assert_eq!(r.global_floor, 123_456);
    assert_eq!(db.global_floor(), Some(123_456));
    assert_eq!(r.identities, 0);
    drop(db);
    // The fresh store is good; a second corrupt file the same millisecond
    // gets its own name.
    fs::write(&p, b"").unwrap();
    let (_db, r) = ReplayDb::open(&p, 123_456).unwrap();
    assert!(matches!(r.state, OpenState::Recovered { .. }), "{r:?}");
    assert_eq!(
        entries(dir.path()),
        [
            "replay.redb",
            "replay.redb.corrupt-123456",
            "replay.redb.corrupt-123456-1"
        ]
    );
}

/// Damage a real store at many offsets. Whatever redb makes of it, the store
/// never comes back with floors missing unless it also set `G = now`: either
/// every floor is intact, or the state counts as lost.
#[test]
fn damaged_store_either_keeps_all_floors_or_resets_global_floor() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let n = 2_000u32;
    {
        let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
        let all: Vec<_> = (0..n).map(|i| (id(i), 50_000 + u64::from(i))).collect();
        db.commit_many(&all).unwrap();
    }
    let pristine = fs::read(&p).unwrap();
    let len = pristine.len() as u64;
    let mut outcomes = (0, 0);
    let mut offset = 0u64;
    let mut step = 0u64;
    while offset < len {
        fs::write(&p, &pristine).unwrap();
        {
            let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(&[0x5a; 64]).unwrap();
        }
        let now = 9_000_000 + step;
        let (db, r) = ReplayDb::open(&p, now).unwrap();
        if r.state.lost_state() {
            assert_eq!(db.global_floor(), Some(now), "offset {offset}: {r:?}");
            outcomes.1 += 1;
        } else {
            assert_eq!(db.global_floor(), Some(1_000));
            for i in 0..n {
                assert_eq!(
                    db.floor(&id(i)),
                    Some(50_000 + u64::from(i)),
                    "offset {offset}: floor {i} lost without G = now"
                );
            }
            outcomes.0 += 1;
        }
        drop(db);
        // Clear the moved-aside files between rounds.
        for e in entries(dir.path()) {
            if e != "replay.redb" {
                fs::remove_file(dir.path().join(e)).unwrap();
            }
        }
        offset += 4096 / 2 + 17 * step;
        step += 1;
    }
    eprintln!("intact, lost (G = now): {outcomes:?}");
    assert!(outcomes.1 > 0, "some damage must be detected: {outcomes:?}");
}

#[test]
fn database_without_replay_state_gets_global_floor_now() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    // A redb file with no tables, as a crash between creating the file and
    // the first commit would leave.
    drop(redb::Database::create(&p).unwrap());
    let (db, r) = ReplayDb::open(&p, 777).unwrap();
    assert_eq!(r.state, OpenState::Uninitialized);
    assert_eq!(db.global_floor(), Some(777));
    drop(db);
    let (db, r) = ReplayDb::open(&p, 888).unwrap();
    assert_eq!(r.state, OpenState::Reopened);
    assert_eq!(db.global_floor(), Some(777));
}

#[test]
fn directory_in_the_way_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    fs::create_dir(&p).unwrap();
    let err = ReplayDb::open(&p, 1).unwrap_err();
    assert!(matches!(err, StoreError::NotAFile { .. }), "{err}");
    assert!(p.is_dir());
}

#[test]
fn prune_removes_old_floors_and_g_still_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let max_age = 60_000;
    let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
    let (old, older, young) = (id(1), id(2), id(3));
    db.commit(&older, 100_000).unwrap();
    db.commit(&old, 130_000).unwrap();
    db.commit(&young, 200_000).unwrap();
    let now = 200_000;
    // Cutoff 140_000: old and older go, young stays.
    let r = db.prune(now, max_age).unwrap();
    assert_eq!(r.removed, 2);
    assert_eq!(r.global_floor, 130_000);
    assert_eq!(db.global_floor(), Some(130_000));
    assert_eq!(db.floor(&old), None);
    assert_eq!(db.floor(&older), None);
    assert_eq!(db.floor(&young), Some(200_000));
    assert_eq!(db.len(), 1);
    // A timestamp at or below a pruned floor is still refused, through G,
    // under either rule; one above it passes the floor checks (and would be
    // stale, since it is older than now - max_age).
    assert!(!FloorRule::Strict.admits(130_000, &old, &db));
    assert!(!FloorRule::AtLeast.admits(130_000, &old, &db));
    assert!(!FloorRule::Strict.admits(100_000, &older, &db));
    assert!(FloorRule::Strict.admits(130_001, &old, &db));
    // A floor exactly at the cutoff is kept.
    db.commit(&id(4), 150_000).unwrap();
    assert_eq!(db.prune(210_000, max_age).unwrap().removed, 0);
    // Pruning never lowers G.
    db.commit(&id(5), 140_001).unwrap();
    assert_eq!(db.prune(1_000_000, max_age).unwrap().global_floor, 200_000);
    assert!(db.is_empty());
    drop(db);
    // G and the removals are durable.
    let (db, r) = ReplayDb::open(&p, 5).unwrap();
    assert_eq!(r.identities, 0);
    assert_eq!(db.global_floor(), Some(200_000));
    assert!(!FloorRule::Strict.admits(200_000, &young, &db));
}

const CHILD_ENV: &str = "SPA_STORE_TEST_ABORT_CHILD";

/// kill -9 without the signal: a child process (this test binary re-run with
/// an environment variable) commits and then aborts, so no destructor runs
/// and redb never closes the file. The parent reopens it and finds the floors.
#[test]
fn child_aborting_after_commit_keeps_the_floor() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let (mut db, _) = ReplayDb::open(Path::new(&path), 1_000).unwrap();
        db.commit(&id(42), 4_242_424).unwrap();
        db.commit_pair((&id(43), 1), (&id(44), 2)).unwrap();
        // Say we got here, then die without unwinding or closing anything.
        println!("child: committed");
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "child_aborting_after_commit_keeps_the_floor",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("child: committed"),
        "child did not commit: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the child must have aborted");
    let (db, r) = ReplayDb::open(&p, 2_000).unwrap();
    assert_eq!(r.state, OpenState::Reopened, "{r:?}");
    assert_eq!(db.floor(&id(42)), Some(4_242_424));
    assert_eq!(db.floor(&id(43)), Some(1));
    assert_eq!(db.floor(&id(44)), Some(2));
    assert_eq!(db.global_floor(), Some(1_000));
}

const FULL_CHILD_ENV: &str = "SPA_STORE_TEST_FULL_CHILD";

/// A write that fails (here: the file may not grow past a size limit, as on
/// a full disk) returns an error and leaves memory as it was; what was
/// committed before stays; the store recovers for later writes once they fit.
#[test]
fn failed_write_returns_an_error_and_changes_nothing() {
    const BATCH: u32 = 200;
    if let Ok(path) = std::env::var(FULL_CHILD_ENV) {
        let (mut db, _) = ReplayDb::open(Path::new(&path), 1_000).unwrap();
        let mut ok = 0;
        let mut failed = None;
        for i in 0..10_000 {
            let batch: Vec<_> = (0..BATCH).map(|j| (id(i * BATCH + j), 5_000)).collect();
            match db.commit_many(&batch) {
                Ok(()) => ok = i + 1,
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = failed.expect("the file size limit must stop a write");
        for j in 0..BATCH {
            assert_eq!(db.floor(&id(i * BATCH + j)), None, "failed batch in memory");
        }
        assert_eq!(db.len(), (ok * BATCH) as usize);
        // Raising an existing floor needs no new space in the file once the
        // database is reopened; either way memory follows the outcome.
        let after = db.commit(&id(0), 6_000);
        match &after {
            Ok(()) => assert_eq!(db.floor(&id(0)), Some(6_000)),
            Err(_) => assert_eq!(db.floor(&id(0)), Some(5_000)),
        }
        println!("child: ok={ok} error={e} then={after:?}");
        std::process::exit(0);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    drop(ReplayDb::open(&p, 1_000).unwrap());
    // The shell ignores SIGXFSZ (inherited across exec), so exceeding the
    // limit fails the write with EFBIG instead of killing the child.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 2048 && exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "failed_write_returns_an_error_and_changes_nothing",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FULL_CHILD_ENV, &p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // libtest prints "test <name> ... " before the child's own output.
    let line = stdout
        .lines()
        .find_map(|l| l.find("child: ok=").map(|i| &l[i..]))
        .unwrap_or_else(|| {
            panic!(
                "child failed: {:?}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("{line}");
    assert!(out.status.success(), "{line}");
    let ok: u32 = line["child: ok=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok > 0, "{line}");
    let (db, r) = ReplayDb::open(&p, 2_000).unwrap();
    assert_eq!(r.state, OpenState::Reopened, "{r:?}");
    for n in 1..ok * BATCH {
        assert_eq!(db.floor(&id(n)), Some(5_000), "identity {n}");
    }
    assert!(db.floor(&id(0)) >= Some(5_000));
}
