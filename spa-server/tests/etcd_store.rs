//! The shared replay store against a real etcd (SPEC §7.6): one member
//! started by the test inside a network namespace of its own (loopback
//! only), two `EtcdFloors` in this process standing for two greens.
//!
//! - a floor committed by one green refuses the same and lower timestamps
//!   at the other as `replayed`, a higher one is
//!   accepted, and `G` refuses what was sealed before the prefix existed;
//! - two greens racing to commit the same timestamp: exactly one wins,
//!   every round;
//! - etcd stopped: commits fail (not as replays), the store says it is
//!   unavailable; etcd back: commits succeed again.

use std::process::Child;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_spec::cert::IdentityKey;
use spa_daemon::store::shared::{EtcdSettings, SharedFloors};
use spa_server::etcd::{EtcdFloors, SharedStoreError};
use tests::{Netns, TempDir, require_tools, unique_tag, wait_until};

const ROUNDS: u64 = 100;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn start_etcd(ns: &Netns, dir: &TempDir, run: u32) -> Child {
    let log = dir.join(&format!("etcd.{run}.log"));
    let child = ns.spawn(
        &[
            "etcd",
            "--name",
            "solo",
            "--data-dir",
            &dir.s("etcd.data"),
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "solo=http://127.0.0.1:2380",
        ],
        &log,
    );
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("ready to serve client requests"))),
        "etcd did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    child
}

fn floors(prefix: &str) -> EtcdFloors {
    let f = EtcdFloors::start(&EtcdSettings {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        prefix: prefix.into(),
        tls: None,
        timeout: Duration::from_millis(500),
        keep_ms: 70_000,
    })
    .expect("client");
    assert!(wait_until(Duration::from_secs(10), || f.available()));
    f
}

fn replayed(r: Result<(), SharedStoreError>) -> bool {
    matches!(r, Err(SharedStoreError::Replayed))
}

#[test]
fn greens_sharing_the_store_accept_each_timestamp_once_and_fail_closed_without_it() {
    require_tools(&[("ip", "iproute2"), ("etcd", "etcd-server")]);
    let tag = unique_tag();
    let dir = TempDir::new(&tag);
    let ns = Netns::new("etcdst", &tag);
    let mut etcd = start_etcd(&ns, &dir, 0);
    let prefix = format!("/spa/test/{tag}");
    ns.run_in(|| {
        let (mut a, mut b) = (floors(&prefix), floors(&prefix));
        let g = b.global_floor().expect("G set at the prefix's creation");
        assert!(g <= now_ms());
        let id = IdentityKey([7; 32]);
        let ts = now_ms() + 1000;
        a.try_commit(&id, ts).expect("first commit");
        assert!(
            replayed(b.try_commit(&id, ts)),
            "same timestamp at the other green"
        );
        assert!(replayed(b.try_commit(&id, ts - 1)), "lower timestamp");
        assert_eq!(b.floor(&id), Some(ts), "B learned the floor from the CAS");
        b.try_commit(&id, ts + 1).expect("higher timestamp");
        assert!(replayed(a.try_commit(&id, ts + 1)));
        // G refuses a new identity's timestamp sealed before the prefix.
        assert!(replayed(a.try_commit(&IdentityKey([8; 32]), g)));
        a.try_commit(&IdentityKey([8; 32]), g + 1)
            .expect("above G, new identity");

        // Racing greens: one winner per timestamp.
        let race = IdentityKey([9; 32]);
        let base = now_ms() + 5000;
        let barrier = Arc::new(Barrier::new(2));
        let wins: Vec<u64> = std::thread::scope(|s| {
            [a, b]
                .into_iter()
                .map(|mut f| {
                    let barrier = barrier.clone();
                    s.spawn(move || {
                        let mut won = 0;
                        for k in 0..ROUNDS {
                            barrier.wait();
                            match f.try_commit(&race, base + k) {
                                Ok(()) => won += 1,
                                Err(e) => {
                                    assert!(matches!(e, SharedStoreError::Replayed), "{e}");
                                }
                            }
                        }
                        won
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("racer"))
                .collect()
        });
        assert_eq!(wins.iter().sum::<u64>(), ROUNDS, "wins {wins:?}");
        eprintln!("racing greens: wins {wins:?} of {ROUNDS} rounds, one per round");
    });

    // etcd stopped: fail closed; back: accepted again.
    ns.run_in(|| {
        let mut a = floors(&prefix);
        let _ = etcd.kill();
        let _ = etcd.wait();
        let id = IdentityKey([10; 32]);
        let r = a.try_commit(&id, now_ms() + 1000);
        assert!(
            matches!(&r, Err(e) if !matches!(e, SharedStoreError::Replayed)),
            "{r:?}"
        );
        assert!(!a.available());
        let r = a.try_commit(&id, now_ms() + 1001);
        assert!(matches!(&r, Err(SharedStoreError::Unavailable(_))), "{r:?}");
        etcd = start_etcd(&ns, &dir, 1);
        assert!(wait_until(Duration::from_secs(15), || a.available()));
        a.try_commit(&id, now_ms() + 1002).expect("etcd back");
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
}
