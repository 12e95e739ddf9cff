//! The nftables driver against the real kernel, each test in a network
//! namespace of its own so that the host firewall is never touched.
//!
//! Each test runs under [`tests::pair::in_netns`] (the test binary
//! re-executed under `unshare --net`); the traffic tests add its peer
//! namespace ([`tests::pair::Peer`], 10.200.99.1/24 here, 10.200.99.2/24
//! there). No packet leaves these namespaces.
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN), `unshare`, `ip` and `nft`;
//! without root the tests say so and pass.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use spa_nft::{
    BlockPrefixes, FirewallConfig, Mode, NftError, NftSets, Proto, Refresh, Ruleset, SetOp,
    TableName, list,
};
use tests::pair::{
    HERE, PEER, Peer, assert_filtered, assert_open, assert_refused, closed_port, in_netns, sh,
};

fn cfg(mode: Mode) -> FirewallConfig {
    FirewallConfig::new(mode)
}

fn blackhole() -> FirewallConfig {
    cfg(Mode::Blackhole {
        udp_knock_port: None,
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn install_list_remove_and_reinstall() {
    in_netns("install_list_remove_and_reinstall", || {
        let cfg = blackhole();
        Ruleset::install(&cfg).expect("install");
        assert!(Ruleset::exists("spa").expect("list tables"));
        let table = Ruleset::list_table("spa").expect("list table");
        for needle in [
            "set allow4 {",
            "type ipv4_addr . inet_proto . inet_service",
            "set allow6 {",
            "type ipv6_addr . inet_proto . inet_service",
            "set block4 {",
            "set block6 {",
            "flags timeout",
            "type filter hook input priority filter - 10; policy accept;",
            "iif \"lo\" accept",
            "ip saddr . meta l4proto . th dport @allow4 accept",
            "counter packets 0 bytes 0 drop",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
        }
        // Reinstall over itself, with another mode: replaced, not doubled.
        let mut sets = NftSets::open("spa").expect("open sets");
        sets.allow(ip("192.0.2.1"), Proto::Tcp, 22, Duration::from_secs(60))
            .expect("allow");
        let protect = cfg_protect(&[(Proto::Tcp, 22)]);
        Ruleset::install(&protect).expect("reinstall");
        let table = Ruleset::list_table("spa").expect("list table");
        assert_eq!(table.matches("chain input").count(), 1, "{table}");
        assert!(table.contains("tcp dport { 22 }") || table.contains("tcp dport 22"));
        assert!(
            !table
                .lines()
                .any(|l| l.trim() == "counter packets 0 bytes 0 drop"),
            "protect mode has no final drop:\n{table}"
        );
        assert!(
            list("spa").expect("list").allow.is_empty(),
            "reinstalling empties the sets"
        );
        // The open client keeps working on the new table.
        sets.allow(ip("192.0.2.1"), Proto::Tcp, 22, Duration::from_secs(60))
            .expect("allow after reinstall");
        Ruleset::remove("spa").expect("remove");
        assert!(!Ruleset::exists("spa").expect("list tables"));
        Ruleset::remove("spa").expect("removing a missing table is fine");
        // Without the table: precise errors.
        match sets.allow(ip("192.0.2.1"), Proto::Tcp, 22, Duration::from_secs(1)) {
            Err(NftError::MissingSet { table, set }) => {
                assert_eq!((table.as_str(), set.as_str()), ("spa", "allow4"));
            }
            other => panic!("expected MissingSet, got {other:?}"),
        }
        assert!(matches!(
            sets.revoke(ip("192.0.2.1"), Proto::Tcp, 22),
            Err(NftError::MissingSet { .. })
        ));
        assert!(matches!(
            NftSets::open("spa"),
            Err(NftError::MissingSet { .. })
        ));
        // Another table name.
        let mut other = blackhole();
        other.table = TableName::new("gate2").expect("name");
        Ruleset::install(&other).expect("install gate2");
        NftSets::open("gate2").expect("open gate2");
        Ruleset::remove("gate2").expect("remove gate2");
    });
}

fn cfg_protect(ports: &[(Proto, u16)]) -> FirewallConfig {
    cfg(Mode::Protect {
        ports: ports.to_vec(),
    })
}

#[test]
fn coexists_with_other_tables() {
    in_netns("coexists_with_other_tables", || {
        sh("nft -f - <<'EOF'\n\
            table inet other {\n\
              chain c {\n\
                type filter hook input priority 0;\n\
              }\n\
            }\n\
            EOF");
        Ruleset::install(&blackhole()).expect("install");
        Ruleset::install(&blackhole()).expect("reinstall");
        let tables = sh("nft list tables");
        assert!(tables.contains("table inet other") && tables.contains("table inet spa"));
        Ruleset::remove("spa").expect("remove");
        let tables = sh("nft list tables");
        assert!(tables.contains("table inet other"), "{tables}");
        assert!(!tables.contains("table inet spa"), "{tables}");
        assert!(sh("nft list table inet other").contains("chain c"));
    });
}

#[test]
fn elements_via_netlink() {
    in_netns("elements_via_netlink", || {
        Ruleset::install(&blackhole()).expect("install");
        let mut sets = NftSets::open("spa").expect("open");
        println!("refresh strategy of this kernel: {:?}", sets.refresh());
        let v4 = ip("192.0.2.10");
        let v6 = ip("2001:db8::10");
        sets.allow(v4, Proto::Tcp, 22, Duration::from_secs(30))
            .expect("allow v4");
        sets.allow(v6, Proto::Udp, 53, Duration::from_secs(40))
            .expect("allow v6");
        sets.block(ip("198.51.100.7"), Duration::from_secs(50))
            .expect("block v4");
        sets.block(ip("2001:db8::bad"), Duration::from_secs(60))
            .expect("block v6");
        // nft sees them, with their timeouts.
        let allow4 = sh("nft list set inet spa allow4");
        assert!(
            allow4.contains("192.0.2.10 . tcp . 22 timeout 30s expires"),
            "{allow4}"
        );
        let allow6 = sh("nft list set inet spa allow6");
        assert!(
            allow6.contains("2001:db8::10 . udp . 53 timeout 40s expires"),
            "{allow6}"
        );
        let block4 = sh("nft list set inet spa block4");
        assert!(
            block4.contains("198.51.100.7 timeout 50s expires"),
            "{block4}"
        );
        let block6 = sh("nft list set inet spa block6");
        assert!(
            block6.contains("2001:db8::bad timeout 1m expires"),
            "{block6}"
        );
        // And so does our own dump.
        let seen = list("spa").expect("list");
        let e = seen.allowed(v4, Proto::Tcp, 22).expect("v4 listed");
        assert_eq!(e.timeout, Some(Duration::from_secs(30)));
        assert!(e.expires.is_some_and(|x| x <= Duration::from_secs(30)));
        assert!(seen.allowed(v6, Proto::Udp, 53).is_some());
        assert!(seen.allowed(v6, Proto::Tcp, 53).is_none());
        assert!(seen.blocked(ip("198.51.100.7")).is_some());
        assert!(seen.blocked(ip("2001:db8::bad")).is_some());
        assert_eq!((seen.allow.len(), seen.block.len()), (2, 2), "{seen:?}");

        // IPv4-mapped addresses land in allow4.
        sets.allow(
            ip("::ffff:192.0.2.11"),
            Proto::Tcp,
            80,
            Duration::from_secs(9),
        )
        .expect("allow mapped");
        assert!(
            list("spa")
                .expect("list")
                .allowed(ip("192.0.2.11"), Proto::Tcp, 80)
                .is_some()
        );

        // Revoke, unblock; missing elements are fine.
        sets.revoke(v4, Proto::Tcp, 22).expect("revoke");
        sets.revoke(v4, Proto::Tcp, 22).expect("revoke again");
        sets.unblock(ip("198.51.100.7")).expect("unblock");
        sets.unblock(ip("198.51.100.7")).expect("unblock again");
        sets.unblock(ip("2001:db8::bad")).expect("unblock v6");
        let seen = list("spa").expect("list");
        assert!(seen.allowed(v4, Proto::Tcp, 22).is_none());
        assert!(seen.block.is_empty(), "{seen:?}");
        assert!(!sh("nft list set inet spa allow4").contains("192.0.2.10"));

        // Several in one batch, duplicates and both families mixed.
        let many = [
            (ip("203.0.113.1"), Proto::Tcp, 22),
            (ip("203.0.113.1"), Proto::Tcp, 22),
            (ip("203.0.113.1"), Proto::Udp, 500),
            (ip("2001:db8::1:1"), Proto::Tcp, 443),
        ];
        sets.allow_many(&many, Duration::from_secs(20))
            .expect("allow_many");
        let seen = list("spa").expect("list");
        for (a, p, port) in many {
            let e = seen.allowed(a, p, port).expect("listed");
            assert_eq!(e.timeout, Some(Duration::from_secs(20)));
        }
        // 256+ elements (more than one message per set).
        let lots: Vec<_> = (0..600u32)
            .map(|i| (IpAddr::V4(Ipv4Addr::from(0xc633_0000 + i)), Proto::Tcp, 22))
            .collect();
        sets.allow_many(&lots, Duration::from_secs(20))
            .expect("allow_many 600");
        assert!(list("spa").expect("list").allow.len() >= 600);

        // Bad timeouts are refused before the kernel sees them.
        assert!(matches!(
            sets.allow(v4, Proto::Tcp, 22, Duration::ZERO),
            Err(NftError::InvalidTimeout { .. })
        ));
        Ruleset::remove("spa").expect("remove");
    });
}

#[test]
fn refresh_replaces_the_timeout() {
    in_netns("refresh_replaces_the_timeout", || {
        Ruleset::install(&blackhole()).expect("install");
        let mut sets = NftSets::open("spa").expect("open");
        let detected = sets.refresh();
        let a = ip("192.0.2.20");
        let mut strategies = vec![Refresh::Replace];
        if detected == Refresh::Update {
            strategies.push(Refresh::Update);
        }
        for strategy in strategies {
            sets.set_refresh(strategy);
            for (secs, port) in [(10u64, 1000u16), (60, 1000), (5, 1000)] {
                sets.allow(a, Proto::Tcp, port, Duration::from_secs(secs))
                    .expect("allow");
                let e = list("spa")
                    .expect("list")
                    .allowed(a, Proto::Tcp, port)
                    .cloned()
                    .expect("listed");
                assert_eq!(
                    e.timeout,
                    Some(Duration::from_secs(secs)),
                    "{strategy:?}: timeout not refreshed"
                );
                assert!(
                    e.expires
                        .is_some_and(|x| x > Duration::from_secs(secs) - Duration::from_secs(2)),
                    "{strategy:?}: expiry not refreshed: {e:?}"
                );
            }
            sets.block(a, Duration::from_secs(100)).expect("block");
            sets.block(a, Duration::from_secs(7)).expect("block again");
            let b = list("spa")
                .expect("list")
                .blocked(a)
                .cloned()
                .expect("listed");
            assert_eq!(b.timeout, Some(Duration::from_secs(7)), "{strategy:?}");
            sets.unblock(a).expect("unblock");
            sets.revoke(a, Proto::Tcp, 1000).expect("revoke");
        }
    });
}

#[test]
fn elements_expire_in_the_kernel() {
    in_netns("elements_expire_in_the_kernel", || {
        Ruleset::install(&blackhole()).expect("install");
        let mut sets = NftSets::open("spa").expect("open");
        let a = ip("192.0.2.30");
        sets.allow(a, Proto::Udp, 4500, Duration::from_secs(1))
            .expect("allow 1 s");
        sets.block(ip("2001:db8::30"), Duration::from_secs(1))
            .expect("block 1 s");
        let listed = sh("nft list set inet spa allow4");
        assert!(
            listed.contains("192.0.2.30 . udp . 4500 timeout 1s expires"),
            "{listed}"
        );
        assert!(
            list("spa")
                .expect("list")
                .allowed(a, Proto::Udp, 4500)
                .is_some()
        );
        // The kernel removes both elements when their timeout passes.
        assert!(
            tests::wait_until(Duration::from_secs(10), || {
                let seen = list("spa").expect("list");
                seen.allow.is_empty() && seen.block.is_empty()
            }),
            "the elements outlived their 1 s timeout"
        );
        let seen = list("spa").expect("list");
        assert!(seen.allow.is_empty() && seen.block.is_empty(), "{seen:?}");
        assert!(!sh("nft list set inet spa allow4").contains("192.0.2.30"));
    });
}

#[test]
fn block_sets_are_bounded_and_a_full_set_refuses_with_enfile() {
    in_netns(
        "block_sets_are_bounded_and_a_full_set_refuses_with_enfile",
        || {
            let mut cfg = blackhole();
            cfg.block_set_size = 3;
            Ruleset::install(&cfg).expect("install");
            for set in ["block4", "block6", "block6_64"] {
                let listed = sh(&format!("nft list set inet spa {set}"));
                assert!(listed.contains("size 3"), "{listed}");
            }
            let mut sets = NftSets::open("spa").expect("open");
            let hour = Duration::from_secs(3600);
            for i in 1..=3 {
                sets.block(ip(&format!("192.0.2.{i}")), hour)
                    .expect("room in block4");
            }
            // Full: the kernel refuses a fourth element with ENFILE, the
            // error the daemon counts as `blocked.set_full`.
            let e = sets
                .block(ip("192.0.2.4"), hour)
                .expect_err("block4 is full");
            assert_eq!(e.errno(), Some(Errno::ENFILE), "{e}");
            // Refreshing a running block needs no room.
            sets.block(ip("192.0.2.1"), hour)
                .expect("refresh while full");
            // Lifting one makes room.
            sets.unblock(ip("192.0.2.2")).expect("unblock");
            sets.block(ip("192.0.2.4"), hour)
                .expect("room after unblocking");
            let seen = list("spa").expect("list");
            assert_eq!(seen.block.len(), 3, "{seen:?}");
            // The /64 set is bounded the same way.
            for i in 1..=3u16 {
                sets.block_net(net(&format!("2001:db8:{i}::/64")), hour)
                    .expect("room in block6_64");
            }
            let e = sets
                .block_net(net("2001:db8:4::/64"), hour)
                .expect_err("block6_64 is full");
            assert_eq!(e.errno(), Some(Errno::ENFILE), "{e}");
            sets.unblock_net(net("2001:db8:2::/64"))
                .expect("unblock /64");
            sets.block_net(net("2001:db8:4::/64"), hour)
                .expect("room after unblocking the /64");
        },
    );
}

#[test]
fn kernel_errors_are_precise() {
    in_netns("kernel_errors_are_precise", || {
        // A table of that name whose allow4 has another key type: the
        // kernel refuses our 12-byte key with EINVAL.
        sh("nft -f - <<'EOF'\n\
            table inet odd {\n\
              set allow4 { type ipv4_addr; flags timeout; }\n\
              set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }\n\
              set block4 { type ipv4_addr; flags timeout; }\n\
              set block6 { type ipv6_addr; flags timeout; }\n\
            }\n\
            EOF");
        match NftSets::open("odd") {
            Err(NftError::Kernel {
                op: SetOp::Add,
                table,
                set,
                errno: Errno::EINVAL,
            }) => assert_eq!((table.as_str(), set.as_str()), ("odd", "allow4")),
            other => panic!("expected EINVAL on allow4, got {other:?}"),
        }
        assert!(matches!(
            NftSets::open("bad name"),
            Err(NftError::InvalidTableName { .. })
        ));
        assert!(matches!(
            NftSets::open("absent"),
            Err(NftError::MissingSet { .. })
        ));
        let e = list("absent").expect_err("no such table");
        assert!(matches!(e, NftError::MissingSet { .. }), "{e}");
        // An nft failure carries nft's own message.
        let mut bad = blackhole();
        bad.table = TableName::new("counter").expect("passes our check");
        match Ruleset::install(&bad) {
            Err(NftError::Command { stderr, .. }) => assert!(stderr.contains("syntax error")),
            other => panic!("expected nft's syntax error, got {other:?}"),
        }
    });
}

#[test]
fn blackhole_drops_silently_until_allowed() {
    in_netns("blackhole_drops_silently_until_allowed", || {
        let peer = Peer::start();
        let listener = TcpListener::bind((HERE, 0)).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let closed = closed_port();
        // Without our table: open port connects, closed port answers RST.
        drop(assert_open(&peer, port));
        assert_refused(&peer, closed);

        Ruleset::install(&blackhole()).expect("install");
        let mut sets = NftSets::open("spa").expect("open");
        assert_filtered(&peer, port);
        assert_filtered(&peer, closed);

        sets.allow(IpAddr::V4(PEER), Proto::Tcp, port, Duration::from_secs(5))
            .expect("allow");
        let mut stream = assert_open(&peer, port);
        // Only that port: the closed one still answers nothing.
        assert_filtered(&peer, closed);

        // An established session survives a block of its source (the
        // established rule comes first); new connections do not get in.
        let ours = stream.local_addr().expect("peer's address");
        let mut accepted = loop {
            // Earlier, already closed connections wait in the queue too.
            let (conn, from) = listener.accept().expect("accept");
            if from == ours {
                break conn;
            }
        };
        sets.block(IpAddr::V4(PEER), Duration::from_secs(30))
            .expect("block");
        stream.write_all(b"still here").expect("write");
        let mut buf = [0u8; 10];
        accepted
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        accepted
            .read_exact(&mut buf)
            .expect("established flow continues");
        assert_eq!(&buf, b"still here");
        assert_filtered(&peer, port);
        sets.unblock(IpAddr::V4(PEER)).expect("unblock");
        drop(assert_open(&peer, port));

        // Revoked: filtered again.
        sets.revoke(IpAddr::V4(PEER), Proto::Tcp, port)
            .expect("revoke");
        assert_filtered(&peer, port);

        // After the timeout the kernel closes the door by itself.
        sets.allow(IpAddr::V4(PEER), Proto::Tcp, port, Duration::from_secs(1))
            .expect("allow 1 s");
        drop(assert_open(&peer, port));
        assert!(
            tests::wait_until(Duration::from_secs(10), || list("spa")
                .expect("list")
                .allowed(IpAddr::V4(PEER), Proto::Tcp, port)
                .is_none()),
            "the opening outlived its 1 s timeout"
        );
        assert_filtered(&peer, port);

        // Management sources are always accepted, even blocked.
        let mut managed = blackhole();
        managed.management = vec!["10.200.99.0/30".parse().expect("cidr")];
        Ruleset::install(&managed).expect("install with management");
        let mut sets = NftSets::open("spa").expect("open");
        sets.block(IpAddr::V4(PEER), Duration::from_secs(30))
            .expect("block");
        drop(assert_open(&peer, port));
        assert_refused(&peer, closed);
        Ruleset::remove("spa").expect("remove");
        drop(peer);
    });
}

#[test]
fn blackhole_udp_knock_port() {
    in_netns("blackhole_udp_knock_port", || {
        let peer = Peer::start();
        let sock = UdpSocket::bind((HERE, 0)).expect("udp bind");
        let knock = sock.local_addr().expect("addr").port();
        sock.set_read_timeout(Some(Duration::from_millis(800)))
            .expect("timeout");
        let mut buf = [0u8; 16];

        Ruleset::install(&blackhole()).expect("install");
        peer.send_udp(knock, b"knock-1");
        assert!(
            sock.recv_from(&mut buf).is_err(),
            "without the rule the datagram is dropped"
        );
        Ruleset::install(&cfg(Mode::Blackhole {
            udp_knock_port: Some(knock),
        }))
        .expect("install with the knock port");
        peer.send_udp(knock, b"knock-2");
        let (n, from) = sock.recv_from(&mut buf).expect("knock datagram arrives");
        assert_eq!((&buf[..n], from.ip()), (&b"knock-2"[..], IpAddr::V4(PEER)));
        // Other TCP ports stay dark.
        assert_filtered(&peer, closed_port());
    });
}

#[test]
fn protect_drops_only_listed_ports() {
    in_netns("protect_drops_only_listed_ports", || {
        let peer = Peer::start();
        let guarded = TcpListener::bind((HERE, 0)).expect("listen");
        let gport = guarded.local_addr().expect("addr").port();
        let public = TcpListener::bind((HERE, 0)).expect("listen");
        let pport = public.local_addr().expect("addr").port();
        let closed = closed_port();

        Ruleset::install(&cfg_protect(&[(Proto::Tcp, gport), (Proto::Udp, 53)])).expect("install");
        let mut sets = NftSets::open("spa").expect("open");
        assert_filtered(&peer, gport);
        drop(assert_open(&peer, pport));
        assert_refused(&peer, closed);

        sets.allow(IpAddr::V4(PEER), Proto::Tcp, gport, Duration::from_secs(5))
            .expect("allow");
        drop(assert_open(&peer, gport));
        // A UDP allow for the same port number does not open TCP.
        sets.revoke(IpAddr::V4(PEER), Proto::Tcp, gport)
            .expect("revoke");
        sets.allow(IpAddr::V4(PEER), Proto::Udp, gport, Duration::from_secs(5))
            .expect("allow udp");
        assert_filtered(&peer, gport);

        // A blocked source loses even the unprotected ports.
        sets.block(IpAddr::V4(PEER), Duration::from_secs(5))
            .expect("block");
        assert_filtered(&peer, pport);
        sets.unblock(IpAddr::V4(PEER)).expect("unblock");
        drop(assert_open(&peer, pport));
    });
}

/// Whether a UDP datagram sent by the peer from `src` reaches `sock` (bound
/// to `[::]`, both families): up to three tries, so that a neighbour
/// resolution on the way does not count as a drop.
fn arrives(peer: &Peer, sock: &UdpSocket, src: IpAddr, tries: usize) -> bool {
    let port = sock.local_addr().expect("addr").port();
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(HERE),
        IpAddr::V6(_) => IpAddr::V6(HERE6),
    };
    let mut buf = [0u8; 64];
    for _ in 0..tries {
        peer.run(move || {
            let s = UdpSocket::bind((src, 0)).expect("peer UDP socket");
            s.send_to(b"probe", (dst, port)).expect("peer UDP send");
        });
        let deadline = Instant::now() + Duration::from_millis(600);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) if from.ip().to_canonical() == src => return true,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    false
}

const HERE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

#[test]
fn a_prefix_block_drops_every_address_of_the_prefix() {
    in_netns("a_prefix_block_drops_every_address_of_the_prefix", || {
        let peer = Peer::start();
        // Two networks per family on the link: the peer holds two addresses
        // of one IPv6 /64 (and IPv4 /24) and one address of another.
        sh("ip -6 addr add fd00:99::1/64 dev spa0 nodad && \
            ip -6 addr add fd00:98::1/64 dev spa0 nodad && \
            ip addr add 10.200.98.1/24 dev spa0");
        peer.run(|| {
            sh("ip -6 addr add fd00:99::2/64 dev spa1 nodad && \
                ip -6 addr add fd00:99::3/64 dev spa1 nodad && \
                ip -6 addr add fd00:98::2/64 dev spa1 nodad && \
                ip addr add 10.200.99.3/24 dev spa1 && \
                ip addr add 10.200.98.2/24 dev spa1")
        });
        let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("udp bind [::]");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let knock = sock.local_addr().expect("addr").port();
        let mut fw = cfg(Mode::Blackhole {
            udp_knock_port: Some(knock),
        });
        fw.block_prefixes = BlockPrefixes { ipv4: 24, ipv6: 64 };
        Ruleset::install(&fw).expect("install");
        let table = Ruleset::list_table("spa").expect("list table");
        for needle in [
            "set block4_24 {",
            "set block6_64 {",
            "ip saddr & 255.255.255.0 == @block4_24 drop",
            "ip6 saddr & ffff:ffff:ffff:ffff:: == @block6_64 drop",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
        }
        let mut sets = NftSets::open("spa").expect("open");
        let (a6, b6, other6) = (ip("fd00:99::2"), ip("fd00:99::3"), ip("fd00:98::2"));
        let (a4, b4, other4) = (IpAddr::V4(PEER), ip("10.200.99.3"), ip("10.200.98.2"));
        for src in [a6, b6, other6, a4, b4, other4] {
            assert!(arrives(&peer, &sock, src, 3), "{src} before any block");
        }

        // The /64 of a6 is blocked: b6 shares it, other6 does not.
        sets.block_net(net("fd00:99::2/64"), Duration::from_secs(30))
            .expect("block the /64");
        let listed = sh("nft list set inet spa block6_64");
        assert!(listed.contains("fd00:99:: timeout 30s expires"), "{listed}");
        assert!(!sh("nft list set inet spa block6").contains("fd00:99"));
        assert!(!arrives(&peer, &sock, b6, 2), "another address of the /64");
        assert!(!arrives(&peer, &sock, a6, 1), "the offender itself");
        assert!(arrives(&peer, &sock, other6, 3), "another /64");
        assert!(arrives(&peer, &sock, a4, 3), "IPv4 is not affected");
        let seen = list("spa").expect("list");
        let e = seen.blocked(b6).expect("b6 is covered");
        assert_eq!((e.addr, e.prefix_len), (ip("fd00:99::"), 64), "{seen:?}");
        assert_eq!(e.timeout, Some(Duration::from_secs(30)));
        assert!(seen.blocked(other6).is_none(), "{seen:?}");

        // The same for the IPv4 /24.
        sets.block_net(net("10.200.99.2/24"), Duration::from_secs(30))
            .expect("block the /24");
        assert!(sh("nft list set inet spa block4_24").contains("10.200.99.0 timeout 30s"));
        assert!(!arrives(&peer, &sock, b4, 2), "another address of the /24");
        assert!(arrives(&peer, &sock, other4, 3), "another /24");

        // A refresh replaces the timeout; unblocking the prefix lets it in
        // again (unblocking one of its addresses does not).
        sets.block_net(net("fd00:99::3/64"), Duration::from_secs(9))
            .expect("refresh");
        let e = list("spa")
            .expect("list")
            .blocked(a6)
            .cloned()
            .expect("listed");
        assert_eq!(e.timeout, Some(Duration::from_secs(9)));
        sets.unblock(b6)
            .expect("unblock one address: not the prefix");
        assert!(list("spa").expect("list").blocked(b6).is_some());
        sets.unblock_net(net("fd00:99::/64"))
            .expect("unblock the /64");
        sets.unblock_net(net("fd00:99::/64")).expect("again: fine");
        assert!(arrives(&peer, &sock, b6, 3), "unblocked");

        // A prefix block expires in the kernel by itself.
        sets.block_net(net("fd00:99::/64"), Duration::from_secs(1))
            .expect("block 1 s");
        assert!(!arrives(&peer, &sock, b6, 1), "blocked for 1 s");
        assert!(
            tests::wait_until(Duration::from_secs(10), || list("spa")
                .expect("list")
                .blocked_net(net("fd00:99::/64"))
                .is_none()),
            "the prefix block outlived its 1 s timeout"
        );
        assert!(arrives(&peer, &sock, b6, 3), "expired");
        assert!(list("spa").expect("list").blocked(b6).is_none());

        // A prefix length the ruleset has no set for is refused by name.
        match sets.block_net(net("fd00:99::/48"), Duration::from_secs(1)) {
            Err(NftError::MissingSet { set, .. }) => assert_eq!(set, "block6_48"),
            other => panic!("expected MissingSet block6_48, got {other:?}"),
        }
        // Hosts only: no prefix sets, and block_net of a /128 is a plain
        // address block.
        fw.block_prefixes = BlockPrefixes::HOSTS;
        Ruleset::install(&fw).expect("reinstall, hosts only");
        let table = Ruleset::list_table("spa").expect("list table");
        assert!(
            !table.contains("block6_") && !table.contains("block4_"),
            "{table}"
        );
        sets.block_net(net("fd00:99::2/128"), Duration::from_secs(30))
            .expect("block one address");
        assert!(!arrives(&peer, &sock, a6, 1), "the blocked address");
        assert!(arrives(&peer, &sock, b6, 3), "its neighbour in the /64");
        assert_eq!(list("spa").expect("list").block.len(), 1);
        Ruleset::remove("spa").expect("remove");
        drop(peer);
    });
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().expect("test prefix")
}
