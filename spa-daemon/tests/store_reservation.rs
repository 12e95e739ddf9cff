//! The replay reservation (SPEC §7.3.1): commits below the durable `R` are
//! kept in memory, a crash raises `G` to `R`, a clean close writes every
//! floor and releases `R`, and a process killed (SIGKILL) at random points
//! while it accepts never lets an accepted timestamp be accepted again.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_spec::cert::IdentityKey;
use proto_spec::replay::ReplayState;
use spa_daemon::store::{OpenState, ReplayDb, ReserverThread};

fn id(n: u32) -> IdentityKey {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k[31] = 0x5a;
    IdentityKey(k)
}

fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("replay.redb")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap())
}

/// SPEC §7.2's knock rule: `ts` would be accepted again.
fn acceptable(db: &ReplayDb, who: &IdentityKey, ts: u64) -> bool {
    ts > db.global_floor().unwrap_or(0) && db.floor(who).is_none_or(|f| ts > f)
}

#[test]
fn commit_below_reservation_stays_in_memory_and_a_crash_raises_g_to_r() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    {
        let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
        let r = db.start_reservation(2_000, 10_000).unwrap();
        assert_eq!(db.reservation(), Some(12_000));
        assert_eq!(r.tick_ms(), 500);
        db.commit(&id(1), 11_000).unwrap();
        db.commit(&id(2), 12_000).unwrap();
        assert_eq!(db.floor(&id(1)), Some(11_000));
        assert_eq!(db.dirty(), 2, "below R: nothing written");
        // Dropped without close: a crash.
    }
    let (db, report) = ReplayDb::open(&p, 5_000).unwrap();
    assert_eq!(report.state, OpenState::Reopened);
    assert_eq!(report.reservation_applied, Some(12_000));
    assert_eq!(db.global_floor(), Some(12_000));
    assert_eq!(db.floor(&id(1)), None, "the floor was never written");
    assert!(!acceptable(&db, &id(1), 11_000));
    assert!(!acceptable(&db, &id(2), 12_000));
    assert!(acceptable(&db, &id(2), 12_001));
    drop(db);
    // Applied once: G stays, the reservation is gone.
    let (db, report) = ReplayDb::open(&p, 5_000).unwrap();
    assert_eq!(report.reservation_applied, None);
    assert_eq!(db.global_floor(), Some(12_000));
}

#[test]
fn commit_above_reservation_is_written_with_a_new_reservation_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    {
        let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
        db.start_reservation(2_000, 10_000).unwrap();
        db.commit(&id(1), 11_000).unwrap();
        // A client clock 8 s ahead: beyond R.
        db.commit(&id(2), 18_000).unwrap();
        assert_eq!(db.reservation(), Some(20_000));
        assert_eq!(db.dirty(), 0, "the dirty floor went with it");
    }
    let (db, report) = ReplayDb::open(&p, 5_000).unwrap();
    assert_eq!(report.reservation_applied, Some(20_000));
    assert_eq!(db.floor(&id(1)), Some(11_000));
    assert_eq!(db.floor(&id(2)), Some(18_000));
    assert_eq!(db.global_floor(), Some(20_000));
}

#[test]
fn clean_close_writes_every_floor_and_releases_the_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    {
        let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
        db.start_reservation(2_000, 10_000).unwrap();
        db.commit(&id(1), 11_000).unwrap();
        db.commit_pair((&id(2), 11_500), (&id(3), 11_400)).unwrap();
        assert_eq!(db.close().unwrap(), 3);
        assert_eq!(db.reservation(), None);
        // After close every commit is synced again.
        db.commit(&id(4), 11_600).unwrap();
    }
    let (db, report) = ReplayDb::open(&p, 5_000).unwrap();
    assert_eq!(
        report.reservation_applied, None,
        "no wait after a clean stop"
    );
    assert_eq!(db.global_floor(), Some(1_000));
    assert_eq!(db.floor(&id(1)), Some(11_000));
    assert_eq!(db.floor(&id(2)), Some(11_500));
    assert_eq!(db.floor(&id(3)), Some(11_400));
    assert_eq!(db.floor(&id(4)), Some(11_600));
}

#[test]
fn tick_extends_the_reservation_before_it_runs_out_and_writes_the_floors() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
    let r = db.start_reservation(2_000, 10_000).unwrap();
    db.commit(&id(1), 10_500).unwrap();
    // More than half the lead left: floors written, R kept.
    let t = r.tick(10_900).unwrap();
    assert_eq!(t.floors_written, 1);
    assert_eq!(t.extended_to, None);
    assert_eq!(db.dirty(), 0);
    // Nothing to do.
    assert_eq!(r.tick(10_950).unwrap(), Default::default());
    // Less than half left: R = now + lead.
    let t = r.tick(11_100).unwrap();
    assert_eq!(t.extended_to, Some(13_100));
    assert_eq!(db.reservation(), Some(13_100));
    // A commit raised again after its snapshot stays dirty (here: in turn).
    db.commit(&id(1), 12_000).unwrap();
    db.commit(&id(1), 12_500).unwrap();
    assert_eq!(db.dirty(), 1);
    r.tick(11_200).unwrap();
    drop((db, r));
    let (db, report) = ReplayDb::open(&p, 5_000).unwrap();
    assert_eq!(db.floor(&id(1)), Some(12_500));
    assert_eq!(report.reservation_applied, Some(13_100));
}

#[test]
fn prune_forgets_dirty_floors_it_covers_with_g() {
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let (mut db, _) = ReplayDb::open(&p, 1_000).unwrap();
    db.start_reservation(60_000, 2_000).unwrap();
    db.commit(&id(1), 2_500).unwrap();
    let r = db.prune(100_000, 60_000).unwrap();
    assert_eq!(r.removed, 1);
    assert_eq!(db.dirty(), 0);
    assert!(!acceptable(&db, &id(1), 2_500));
}

const CHILD_ENV: &str = "SPA_RESERVATION_KILL_CHILD";

/// A tiny xorshift: the delays and the clock leads vary per run, the seed
/// is printed so a failure can be replayed (`SPA_RESERVATION_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The child: the daemon's store set-up (reservation with a short lead, its
/// writer thread on the wall clock), then commits as fast as it can for 16
/// identities, each timestamp `max(now + lead_i, last + 1)` with client
/// clock leads from 0 to 0.6 s (so some commits land beyond `R` and write
/// synchronously), and prints every commit once it returned: each printed
/// line is a datagram the daemon would have accepted (the firewall opened).
fn child(path: &Path, seed: u64) {
    let (mut db, _) = ReplayDb::open(path, now_ms()).unwrap();
    let r = db.start_reservation(200, now_ms()).unwrap();
    let _writer = ReserverThread::spawn(r, now_ms).unwrap();
    let mut rng = Rng(seed | 1);
    let mut last = [0u64; 16];
    let leads: Vec<u64> = (0..16).map(|_| rng.next() % 600).collect();
    let mut out = std::io::stdout().lock();
    println!("child: started");
    loop {
        let i = usize::try_from(rng.next() % 16).unwrap();
        let n = u32::try_from(i).unwrap();
        // Mostly honest clocks; a few far ahead.
        let lead = if i < 12 { 0 } else { leads[i] };
        let ts = (now_ms() + lead).max(last[i] + 1);
        // The verifier's check (SPEC §7.3 step 1): after a crash, G refuses
        // every client until its clock passes the old R.
        if !acceptable(&db, &id(n), ts) {
            continue;
        }
        db.commit(&id(n), ts).unwrap();
        last[i] = ts;
        std::io::Write::write_all(&mut out, format!("ok {n} {ts}\n").as_bytes()).unwrap();
        std::io::Write::flush(&mut out).unwrap();
    }
}

/// kill -9 at random points while commits are being accepted, many times
/// over the same file: after each restart every accepted (identity,
/// timestamp) is refused (SPEC §7.3.1), and the file is never corrupt.
#[test]
fn sigkill_at_random_points_never_lets_an_accepted_timestamp_in_again() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let seed = std::env::var("SPA_RESERVATION_CHILD_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        child(Path::new(&path), seed);
        return;
    }
    let seed = std::env::var("SPA_RESERVATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() ^ u64::from(std::process::id()) << 20);
    eprintln!("seed {seed} (SPA_RESERVATION_SEED to repeat)");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let p = store_path(&dir);
    let mut accepted: Vec<(u32, u64)> = Vec::new();
    let mut crashes_with_reservation = 0;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_at_random_points_never_lets_an_accepted_timestamp_in_again",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &p)
            .env("SPA_RESERVATION_CHILD_SEED", rng.next().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // A reader thread drains the pipe all along, so that the child is
        // never stopped on a full pipe and the kill lands wherever it is.
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Some(a) = parse(&line) {
                    if got.is_empty() {
                        let _ = first_tx.send(());
                    }
                    got.push(a);
                }
            }
            got
        });
        // Wait for the child's first accepted commit (an event), then let
        // it run for a random 0-400 ms before SIGKILL.
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child accepted nothing");
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // What the child printed before it died was accepted.
        let got = reader.join().unwrap();
        let before = got.len();
        accepted.extend(got);
        let (db, report) = ReplayDb::open(&p, now_ms()).unwrap();
        assert_eq!(
            report.state,
            OpenState::Reopened,
            "round {round}: {report:?}"
        );
        if report.reservation_applied.is_some() {
            crashes_with_reservation += 1;
        }
        for &(n, ts) in &accepted {
            assert!(
                !acceptable(&db, &id(n), ts),
                "round {round} (seed {seed}): identity {n} timestamp {ts} accepted before the kill \
                 would be accepted again (floor {:?}, G {:?})",
                db.floor(&id(n)),
                db.global_floor()
            );
        }
        eprintln!(
            "round {round}: {before} accepted, G {:?}, reservation applied {:?}",
            db.global_floor(),
            report.reservation_applied
        );
    }
    assert!(accepted.len() > 100, "too few commits to mean anything");
    assert_eq!(crashes_with_reservation, 8, "every kill left a reservation");
}

fn parse(line: &str) -> Option<(u32, u64)> {
    let mut w = line.split_whitespace();
    (w.next()? == "ok").then_some(())?;
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}
