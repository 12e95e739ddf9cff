//! The session table against the real kernel firewall: owners of a
//! shared element re-set its timeout up and down without a gap (in a
//! network namespace of its own, [`tests::pair`]).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use spa_nft::{FirewallConfig, Mode, NftSets, Proto, Refresh, Ruleset};
use tests::pair::{HERE, PEER, Peer, assert_filtered, assert_open, in_netns};

fn blackhole() -> FirewallConfig {
    FirewallConfig::new(Mode::Blackhole {
        udp_knock_port: None,
    })
}

/// SPEC §8.1.1: the session table re-sets a shared element's kernel
/// timeout up (a longer owner arrives) and down (the longest owner closes),
/// with either refresh strategy, and deletes it with its last owner; while
/// it re-sets the timeout over and over, new connections of the remaining
/// owner's address never meet a missing element.
#[test]
fn owners_reset_the_kernel_timeout_up_and_down_without_a_gap() {
    // Fails, rather than passes, where it cannot run (`in_netns`).
    in_netns(
        "owners_reset_the_kernel_timeout_up_and_down_without_a_gap",
        || {
            use spa_daemon::gate::{Decision, OpenKind};
            use spa_daemon::sessions::SessionTable;
            use std::collections::HashMap;
            use std::sync::Arc;
            use std::sync::atomic::{AtomicBool, Ordering};

            let peer = Peer::start();
            let listener = TcpListener::bind((HERE, 0)).expect("listen");
            let port = listener.local_addr().expect("addr").port();
            thread::spawn(move || {
                for c in listener.incoming() {
                    drop(c);
                }
            });
            Ruleset::install(&blackhole()).expect("install");
            let mut sets = NftSets::open("spa").expect("open");
            let mut strategies = vec![Refresh::Replace];
            if sets.refresh() == Refresh::Update {
                strategies.push(Refresh::Update);
            }
            let local = HashMap::from([("web".to_owned(), (Proto::Tcp, port))]);
            let knock = |session: u8, lifetime_s: u32| Decision::Open {
                kind: OpenKind::RequestService,
                session: [session; 16],
                identity: format!("id{session}"),
                identity_key: proto_spec::cert::IdentityKey([session; 32]),
                addr: IpAddr::V4(PEER),
                services: vec!["web".into()],
                lifetime_s,
                certificate: Vec::new(),
                body: Vec::new(),
            };
            let timeout = |sets: &mut NftSets| {
                sets.list()
                    .expect("list")
                    .allowed(IpAddr::V4(PEER), Proto::Tcp, port)
                    .and_then(|e| e.timeout)
            };
            let t0 = 1_000_000;
            for strategy in strategies {
                sets.set_refresh(strategy);
                let mut table = SessionTable::default();
                table
                    .open(&knock(1, 300), &local, t0, &mut sets)
                    .expect("alice");
                table
                    .open(&knock(2, 50), &local, t0, &mut sets)
                    .expect("carol");
                assert_eq!(
                    timeout(&mut sets),
                    Some(Duration::from_secs(300)),
                    "{strategy:?}"
                );
                // Down: alice closes, carol's 50 s remains.
                table.close(&[1; 16], t0, &mut sets).expect("alice closes");
                assert_eq!(
                    timeout(&mut sets),
                    Some(Duration::from_secs(50)),
                    "{strategy:?}"
                );
                drop(assert_open(&peer, port));
                // Up: a longer owner arrives.
                table
                    .open(&knock(3, 600), &local, t0, &mut sets)
                    .expect("dave");
                assert_eq!(
                    timeout(&mut sets),
                    Some(Duration::from_secs(600)),
                    "{strategy:?}"
                );
                // Down again, then gone with the last owner.
                table.close(&[3; 16], t0, &mut sets).expect("dave closes");
                assert_eq!(
                    timeout(&mut sets),
                    Some(Duration::from_secs(50)),
                    "{strategy:?}"
                );
                table.close(&[2; 16], t0, &mut sets).expect("carol closes");
                assert_eq!(timeout(&mut sets), None, "{strategy:?}");
                assert_filtered(&peer, port);
            }

            // No gap: one owner stays while another comes and goes (each
            // time the timeout goes up, then down) as fast as the kernel
            // takes it; every new connection of the peer gets in.
            let strategies = if sets.refresh() == Refresh::Update {
                vec![Refresh::Replace, Refresh::Update]
            } else {
                vec![Refresh::Replace]
            };
            for strategy in strategies {
                sets.set_refresh(strategy);
                let mut table = SessionTable::default();
                table
                    .open(&knock(1, 60), &local, t0, &mut sets)
                    .expect("alice");
                let stop = Arc::new(AtomicBool::new(false));
                let churn = {
                    let stop = Arc::clone(&stop);
                    let local = local.clone();
                    thread::spawn(move || {
                        let mut turns = 0u32;
                        while !stop.load(Ordering::Relaxed) {
                            table
                                .open(&knock(2, 600), &local, t0, &mut sets)
                                .expect("up");
                            table.close(&[2; 16], t0, &mut sets).expect("down");
                            turns += 1;
                        }
                        table.close(&[1; 16], t0, &mut sets).expect("alice closes");
                        (turns, sets)
                    })
                };
                let failed = peer.run(move || {
                    (0..300)
                        .filter(|_| {
                            TcpStream::connect_timeout(
                                &SocketAddr::from((HERE, port)),
                                Duration::from_secs(2),
                            )
                            .is_err()
                        })
                        .count()
                });
                stop.store(true, Ordering::Relaxed);
                let (turns, back) = churn.join().expect("churn thread");
                sets = back;
                println!("{strategy:?}: {turns} up/down re-sets during 300 connections");
                assert!(turns > 10, "{strategy:?}: re-set only {turns} times");
                assert_eq!(failed, 0, "{strategy:?}: connections met a missing element");
            }
            Ruleset::remove("spa").expect("remove");
            drop(peer);
        },
    );
}
