//! Unit tests of [`super`].

use super::*;
use proto_spec::Refusal;
use proto_spec::verify::Refused;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn cidr(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

// -- Prefixes

#[test]
fn prefixes_and_overlap() {
    assert_eq!(prefix_net(ip("192.0.2.77"), 24), cidr("192.0.2.0/24"));
    assert_eq!(prefix_net(ip("192.0.2.77"), 40), cidr("192.0.2.77/32"));
    assert_eq!(
        prefix_net(ip("2001:db8:aa:bb:1::4"), 64),
        cidr("2001:db8:aa:bb::/64")
    );
    assert_eq!(host_net(ip("::ffff:10.1.2.3")), cidr("10.1.2.3/32"));
    assert!(allowlisted(&[cidr("10.0.0.0/8")], ip("::ffff:10.9.9.9")));
    assert!(!allowlisted(&[cidr("10.0.0.0/8")], ip("11.0.0.1")));
    assert!(!allowlisted(&[cidr("0.0.0.0/0")], ip("2001:db8::1")));
    assert!(overlaps(&cidr("10.0.0.0/8"), &cidr("10.2.0.0/16")));
    assert!(overlaps(&cidr("10.2.0.0/16"), &cidr("10.0.0.0/8")));
    assert!(!overlaps(&cidr("10.0.0.0/16"), &cidr("10.1.0.0/16")));
    assert!(!overlaps(&cidr("0.0.0.0/0"), &cidr("::/0")));
}

#[test]
fn aggregation_groups_ipv6_by_64() {
    let a = SourceAggregation::default();
    assert_eq!(
        a.key(ip("2001:db8:1:2::1")),
        a.key(ip("2001:db8:1:2:ffff::9"))
    );
    assert_ne!(a.key(ip("2001:db8:1:2::1")), a.key(ip("2001:db8:1:3::1")));
    assert_ne!(a.key(ip("192.0.2.1")), a.key(ip("192.0.2.2")));
    assert_eq!(a.key(ip("::ffff:192.0.2.1")), a.key(ip("192.0.2.1")));
}

// -- LRU

#[test]
fn lru_evicts_least_recently_used_and_stays_consistent() {
    let mut l: Lru<u32, u32> = Lru::new(3);
    for k in 1..=3 {
        *l.get_or_insert_with(k, || 0) = k * 10;
    }
    assert_eq!(l.keys_mru_first(), vec![3, 2, 1]);
    assert!(l.get_mut(&1).is_some()); // 1 is now most recent
    l.get_or_insert_with(4, || 40); // evicts 2
    assert_eq!(l.keys_mru_first(), vec![4, 1, 3]);
    assert!(l.peek(&2).is_none());
    assert_eq!(l.remove(&1), Some(10));
    assert_eq!(l.keys_mru_first(), vec![4, 3]);
    assert_eq!(l.retain(|k, _| *k != 4), 1);
    assert_eq!(l.keys_mru_first(), vec![3]);
    for k in 100..1000 {
        l.get_or_insert_with(k, || k);
        assert!(l.len() <= 3);
    }
    assert_eq!(l.keys_mru_first(), vec![999, 998, 997]);
    assert_eq!(l.map.len(), 3);
    for (i, s) in l.slots.iter().enumerate() {
        assert_eq!(l.map[&s.key], i);
    }
}

// -- Rate limiter

#[test]
fn token_bucket_burst_then_rate() {
    let mut r = RateLimiter::new(RateLimitConfig {
        rate_per_s: 20,
        burst: 40,
        ..Default::default()
    })
    .expect("cfg");
    let a = ip("198.51.100.7");
    let t = 1_000_000;
    for i in 0..40 {
        assert!(r.check(a, t), "burst {i}");
    }
    assert!(!r.check(a, t));
    // 20/s = one token per 50 ms.
    assert!(!r.check(a, t + 49));
    assert!(r.check(a, t + 50));
    assert!(!r.check(a, t + 50));
    // Another source is unaffected.
    assert!(r.check(ip("198.51.100.8"), t));
    // A long pause refills to the burst, not beyond.
    let later = t + 3_600_000;
    let passed = (0..100).filter(|_| r.check(a, later)).count();
    assert_eq!(passed, 40);
    // The clock going back refills nothing and does not panic.
    assert!(!r.check(a, t));
}

#[test]
fn ipv6_rotation_within_64_shares_a_bucket() {
    let mut r = RateLimiter::new(RateLimitConfig {
        rate_per_s: 1,
        burst: 3,
        ..Default::default()
    })
    .expect("cfg");
    let t = 5_000;
    let passed = (0..50u16)
        .filter(|i| {
            r.check(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 7, *i, 0, 0, 1)),
                t,
            )
        })
        .count();
    assert_eq!(passed, 3);
    assert_eq!(r.len(), 1);
    assert!(
        r.check(ip("2001:db8:0:8::1"), t),
        "next /64 is another source"
    );
    // A /128 configuration separates them.
    let mut r = RateLimiter::new(RateLimitConfig {
        rate_per_s: 1,
        burst: 1,
        aggregation: SourceAggregation {
            ipv4_prefix: 32,
            ipv6_prefix: 128,
        },
        ..Default::default()
    })
    .expect("cfg");
    assert!(r.check(ip("2001:db8::1"), t));
    assert!(r.check(ip("2001:db8::2"), t));
}

#[test]
fn rate_limiter_memory_is_bounded_and_prunes() {
    let mut r = RateLimiter::new(RateLimitConfig {
        max_sources: 100,
        ..Default::default()
    })
    .expect("cfg");
    let t = 10_000;
    for i in 0..10_000u32 {
        assert!(r.check(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t));
        assert!(r.len() <= 100);
    }
    assert_eq!(r.len(), 100);
    // One token (50 ms at 20/s) later every bucket is full again: prune
    // forgets them.
    assert_eq!(r.prune(t + 49), 0);
    assert_eq!(r.prune(t + 50), 100);
    assert!(r.is_empty());
}

#[test]
fn rate_limiter_rejects_bad_config() {
    for cfg in [
        RateLimitConfig {
            rate_per_s: 0,
            ..Default::default()
        },
        RateLimitConfig {
            burst: 0,
            ..Default::default()
        },
        RateLimitConfig {
            max_sources: 0,
            ..Default::default()
        },
        RateLimitConfig {
            aggregation: SourceAggregation {
                ipv4_prefix: 33,
                ipv6_prefix: 64,
            },
            ..Default::default()
        },
    ] {
        assert!(RateLimiter::new(cfg).is_err());
    }
}

// -- Offenses

#[test]
fn refusal_classification_ignores_pre_mac_failures() {
    for r in [
        Refusal::TooShort,
        Refusal::TooLong,
        Refusal::BadVersion,
        Refusal::MacMismatch,
        Refusal::StorageFailure,
    ] {
        assert_eq!(FailureKind::of_refusal(&r), None, "{r:?}");
    }
    assert_eq!(
        FailureKind::of_refusal(&Refusal::Replayed),
        Some(FailureKind::Replayed)
    );
    assert_eq!(
        FailureKind::of_refusal(&Refusal::OpenFailed),
        Some(FailureKind::OpenFailed)
    );
    assert_eq!(
        FailureKind::of_refusal(&Refusal::Stale),
        Some(FailureKind::Replayed)
    );
    for r in [
        Refusal::BadSignature,
        Refusal::UnknownIdentity,
        Refusal::FutureDated,
        Refusal::BadGatewaySignature,
    ] {
        assert_eq!(
            FailureKind::of_refusal(&r),
            Some(FailureKind::Invalid),
            "{r:?}"
        );
    }
}

#[test]
fn five_failures_in_window_block_for_ten_minutes() {
    let mut o = Offenses::new(OffenseConfig::default()).expect("cfg");
    let a = ip("203.0.113.9");
    let t = 1_000_000;
    for i in 0..4 {
        assert_eq!(
            o.record_failure(a, t + i * 10_000, FailureKind::Invalid),
            None
        );
    }
    let d = o
        .record_failure(a, t + 40_000, FailureKind::OpenFailed)
        .expect("blocked at the 5th");
    assert_eq!(d.target, cidr("203.0.113.9/32"));
    assert_eq!(d.duration_ms, 600_000);
    assert_eq!(d.until_ms, t + 640_000);
    assert_eq!(
        d.reason,
        BlockReason::Failures {
            count: 5,
            last: FailureKind::OpenFailed
        }
    );
    assert_eq!(o.blocked_until(a, t + 40_001), Some(t + 640_000));
    // While blocked, failures are not counted and no new decision comes.
    for i in 0..10 {
        assert_eq!(
            o.record_failure(a, t + 50_000 + i, FailureKind::Invalid),
            None
        );
    }
    // After the block, counting starts over.
    let after = t + 640_000;
    assert_eq!(o.blocked_until(a, after), None);
    for i in 0..4 {
        assert_eq!(o.record_failure(a, after + i, FailureKind::Invalid), None);
    }
    assert!(
        o.record_failure(a, after + 4, FailureKind::Invalid)
            .is_some()
    );
}

#[test]
fn failures_outside_the_window_do_not_add_up() {
    let mut o = Offenses::new(OffenseConfig::default()).expect("cfg");
    let a = ip("203.0.113.10");
    // One failure every 15 s: at most 4 within any 60 s window.
    for i in 0..100 {
        assert_eq!(o.record_failure(a, i * 15_000, FailureKind::Invalid), None);
    }
    // A failure counts while less than 60 s old.
    for (fifth, blocks) in [(100 + 59_999, true), (100 + 60_000, false)] {
        let mut o = Offenses::new(OffenseConfig::default()).expect("cfg");
        for i in 0..4 {
            assert_eq!(o.record_failure(a, 100 + i, FailureKind::Invalid), None);
        }
        assert_eq!(
            o.record_failure(a, fifth, FailureKind::Invalid).is_some(),
            blocks
        );
    }
}

#[test]
fn allowlist_is_never_counted_or_blocked() {
    let mut o = Offenses::new(OffenseConfig {
        allowlist: vec![cidr("10.0.0.0/8"), cidr("2001:db8:0:1::5/128")],
        ..Default::default()
    })
    .expect("cfg");
    for i in 0..100 {
        assert_eq!(
            o.record_failure(ip("10.9.8.7"), i, FailureKind::Invalid),
            None
        );
        assert_eq!(
            o.record_failure(ip("::ffff:10.9.8.7"), i, FailureKind::Invalid),
            None
        );
        assert_eq!(
            o.record_failure(ip("2001:db8:0:1::5"), i, FailureKind::Invalid),
            None
        );
    }
    assert!(o.is_empty());
    // A neighbour in the allowlisted host's /64 is blocked alone, not
    // the whole /64.
    let n = ip("2001:db8:0:1::6");
    let d = (0..5)
        .find_map(|i| o.record_failure(n, i, FailureKind::Invalid))
        .expect("blocked");
    assert_eq!(d.target, cidr("2001:db8:0:1::6/128"));
    // Elsewhere the /64 is the target.
    let d = (0..5)
        .find_map(|i| o.record_failure(ip("2001:db8:0:2::1"), i, FailureKind::Invalid))
        .expect("blocked");
    assert_eq!(d.target, cidr("2001:db8:0:2::/64"));
    // Reload the allowlist.
    o.set_allowlist(vec![cidr("192.0.2.0/24")]);
    assert!(o.is_allowlisted(ip("192.0.2.200")));
    assert!(!o.is_allowlisted(ip("10.9.8.7")));
}

#[test]
fn replays_weigh_nothing_by_default() {
    let mut o = Offenses::new(OffenseConfig::default()).expect("cfg");
    let a = ip("198.51.100.1");
    for i in 0..50 {
        assert_eq!(o.record_failure(a, i, FailureKind::Replayed), None);
    }
    assert!(o.is_empty());
}

#[test]
fn weights_add_up_and_are_configurable() {
    let mut o = Offenses::new(OffenseConfig {
        weights: FailureWeights {
            open_failed: 0,
            replayed: 2,
            invalid: 1,
            proven: 5,
        },
        ..Default::default()
    })
    .expect("cfg");
    let a = ip("198.51.100.2");
    for i in 0..100 {
        assert_eq!(o.record_failure(a, i, FailureKind::OpenFailed), None);
    }
    assert!(o.is_empty(), "a weight of 0 is not even recorded");
    // 2 + 2 + 1 = 5.
    assert_eq!(o.record_failure(a, 1, FailureKind::Replayed), None);
    assert_eq!(o.record_failure(a, 2, FailureKind::Replayed), None);
    let d = o
        .record_failure(a, 3, FailureKind::Invalid)
        .expect("weight 5 reached");
    assert_eq!(
        d.reason,
        BlockReason::Failures {
            count: 5,
            last: FailureKind::Invalid
        }
    );
    // One proven refusal weighs the whole threshold here.
    let b = ip("198.51.100.3");
    assert!(o.record_failure(b, 1, FailureKind::Proven).is_some());
    // Weights above the largest threshold are refused.
    assert!(
        Offenses::new(OffenseConfig {
            weights: FailureWeights {
                proven: 65,
                ..Default::default()
            },
            ..Default::default()
        })
        .is_err()
    );
}

#[test]
fn only_refusals_after_the_client_was_proven_are_unforgeable() {
    use proto_spec::verify::Stage;
    let forged = Refused::at(Stage::Knock)(Refusal::BadSignature);
    assert_eq!(FailureKind::of_refused(&forged), Some(FailureKind::Invalid));
    assert!(FailureKind::Invalid.forgeable());
    for k in [FailureKind::OpenFailed, FailureKind::Replayed] {
        assert!(k.forgeable(), "{k}");
    }
    assert!(!FailureKind::Proven.forgeable());
    let pre_mac = Refused::at(Stage::Knock)(Refusal::MacMismatch);
    assert_eq!(FailureKind::of_refused(&pre_mac), None);
}

#[test]
fn forgiving_a_source_lifts_its_block_and_its_counts() {
    let mut o = Offenses::new(OffenseConfig::default()).expect("cfg");
    let a = ip("2001:db8:7:7::1");
    let d = (0..5)
        .find_map(|i| o.record_failure(a, i, FailureKind::Invalid))
        .expect("blocked");
    assert!(o.blocked_until(a, 10).is_some());
    // Forgiving any address of the /64 forgives the /64.
    o.forgive(ip("2001:db8:7:7::2"));
    assert_eq!(o.blocked_until(a, 10), None);
    assert!(o.is_empty());
    // It can be blocked again afterwards.
    assert!(
        (0..5)
            .find_map(|i| o.record_failure(a, 20 + i, FailureKind::Invalid))
            .is_some_and(|d2| d2.target == d.target)
    );

    let mut s = ScanDetector::new(ScanConfig::default()).expect("cfg");
    let b = ip("198.51.100.70");
    assert!(
        (0..10u16)
            .find_map(|p| s.record_probe(b, Transport::Tcp, p, 1))
            .is_some()
    );
    assert_eq!(s.record_probe(b, Transport::Tcp, 500, 2), None, "blocked");
    s.forgive(b);
    assert_eq!(s.len(), (0, 0));
    assert!(
        (0..10u16)
            .find_map(|p| s.record_probe(b, Transport::Tcp, p, 3))
            .is_some()
    );
}

#[test]
fn offenses_memory_is_bounded_and_prunes() {
    let mut o = Offenses::new(OffenseConfig {
        max_sources: 64,
        ..Default::default()
    })
    .expect("cfg");
    for i in 0..5_000u32 {
        let _ = o.record_failure(
            IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i)),
            1_000,
            FailureKind::Invalid,
        );
        assert!(o.len() <= 64);
    }
    for e in &o.table.slots {
        assert!(e.val.times.len() <= 5);
    }
    assert_eq!(o.prune(1_000 + 59_999), 0);
    assert_eq!(o.prune(1_000 + 60_000), 64);
    // A blocked source survives pruning until its block ends.
    let a = ip("192.0.2.1");
    let d = (0..5)
        .find_map(|i| o.record_failure(a, 2_000 + i, FailureKind::Invalid))
        .expect("blocked");
    assert_eq!(o.prune(d.until_ms - 1), 0);
    assert_eq!(o.prune(d.until_ms), 1);
}

#[test]
fn offenses_rejects_bad_config() {
    for cfg in [
        OffenseConfig {
            threshold: 0,
            ..Default::default()
        },
        OffenseConfig {
            threshold: 65,
            ..Default::default()
        },
        OffenseConfig {
            window_ms: 0,
            ..Default::default()
        },
        OffenseConfig {
            block_ms: 0,
            ..Default::default()
        },
    ] {
        assert!(Offenses::new(cfg).is_err());
    }
}

// -- Scans

#[test]
fn ten_distinct_ports_in_ten_seconds_is_a_scan() {
    let mut s = ScanDetector::new(ScanConfig::default()).expect("cfg");
    let a = ip("198.51.100.50");
    let t = 50_000;
    // The same port again and again is not a scan.
    for i in 0..100 {
        assert_eq!(s.record_probe(a, Transport::Tcp, 23, t + i), None);
    }
    for p in 1..9u16 {
        assert_eq!(
            s.record_probe(a, Transport::Tcp, 1000 + p, t + u64::from(p)),
            None
        );
    }
    // 23 + 8 ports = 9 distinct; a UDP port of the same number is distinct.
    let d = s
        .record_probe(a, Transport::Udp, 1001, t + 100)
        .expect("10th distinct port");
    assert_eq!(d.reason, BlockReason::Scan { ports: 10 });
    assert_eq!(d.target, cidr("198.51.100.50/32"));
    assert_eq!(d.until_ms, t + 100 + DEFAULT_BLOCK_MS);
    assert_eq!(
        s.record_probe(a, Transport::Tcp, 9999, t + 101),
        None,
        "already blocked"
    );
}

#[test]
fn slow_scans_fall_out_of_the_window() {
    let mut s = ScanDetector::new(ScanConfig::default()).expect("cfg");
    let a = ip("198.51.100.51");
    // One new port every 1.2 s: never 10 within 10 s.
    for p in 0..200u16 {
        assert_eq!(
            s.record_probe(a, Transport::Tcp, p, u64::from(p) * 1_200),
            None
        );
    }
    let (probes, _) = s.len();
    assert_eq!(probes, 1);
    assert!(s.probes.slots.iter().all(|e| e.val.ports.len() < 10));
}

#[test]
fn allowed_ports_and_sources_do_not_count() {
    let mut s = ScanDetector::new(ScanConfig {
        exempt_allowed_sources: false,
        ..Default::default()
    })
    .expect("cfg");
    let a = ip("198.51.100.60");
    let t = 100_000;
    s.note_allowed(a, Transport::Tcp, 22, t, t + 60_000);
    for p in 0..9u16 {
        assert_eq!(s.record_probe(a, Transport::Tcp, 2000 + p, t), None);
    }
    // The allowed port does not make the 10th.
    assert_eq!(s.record_probe(a, Transport::Tcp, 22, t + 1), None);
    assert!(s.is_allowed(a, Transport::Tcp, 22, t + 1));
    assert!(!s.is_allowed(a, Transport::Udp, 22, t + 1));
    // Once withdrawn, it does.
    s.forget_allowed(a, Transport::Tcp, 22);
    assert!(s.record_probe(a, Transport::Tcp, 22, t + 2).is_some());

    // Default: a source with any current allowance is exempt; expiry ends it.
    let mut s = ScanDetector::new(ScanConfig::default()).expect("cfg");
    let b = ip("198.51.100.61");
    s.note_allowed(b, Transport::Tcp, 443, t, t + 1_000);
    for p in 0..50u16 {
        assert_eq!(s.record_probe(b, Transport::Tcp, p, t + 10), None);
    }
    let d = (0..10u16).find_map(|p| s.record_probe(b, Transport::Tcp, p, t + 1_000));
    assert!(d.is_some(), "after the allowance expires, scans count");
    s.note_allowed(b, Transport::Tcp, 443, t, t + 1_000);
    s.forget_source(b);
    assert!(!s.is_allowed(b, Transport::Tcp, 443, t));
}

#[test]
fn scan_allowlist_and_ignored_ports() {
    let mut s = ScanDetector::new(ScanConfig {
        allowlist: vec![cidr("192.0.2.0/24")],
        ignored_ports: vec![(Transport::Udp, 62201)],
        ..Default::default()
    })
    .expect("cfg");
    for p in 0..100u16 {
        assert_eq!(s.record_probe(ip("192.0.2.3"), Transport::Tcp, p, 1), None);
    }
    let c = ip("203.0.113.70");
    for _ in 0..20 {
        assert_eq!(s.record_probe(c, Transport::Udp, 62201, 1), None);
    }
    assert_eq!(s.len(), (0, 0));
}

#[test]
fn ipv6_scanner_rotating_addresses_is_one_source() {
    let mut s = ScanDetector::new(ScanConfig::default()).expect("cfg");
    let d = (0..10u16).find_map(|p| {
        let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 5, 5, p, p, p, p));
        s.record_probe(src, Transport::Tcp, 100 + p, 7)
    });
    assert_eq!(d.map(|d| d.target), Some(cidr("2001:db8:5:5::/64")));
}

#[test]
fn a_flood_of_forged_sources_does_not_evict_a_scanner_in_progress() {
    let mut s = ScanDetector::new(ScanConfig {
        max_sources: 64,
        ..Default::default()
    })
    .expect("cfg");
    let scanner = ip("198.51.100.99");
    for p in 0..9u16 {
        assert_eq!(s.record_probe(scanner, Transport::Tcp, p, 1_000), None);
    }
    // 10,000 forged sources, one probe each: the scanner goes least
    // recently used at once, but has the most evidence.
    for i in 0..10_000u32 {
        let _ = s.record_probe(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            Transport::Tcp,
            1,
            1_001,
        );
        assert!(s.len().0 <= 64);
    }
    let d = s.record_probe(scanner, Transport::Tcp, 9, 1_002);
    assert!(d.is_some(), "the scanner's 9 ports were forgotten");

    // The same for failures.
    let mut o = Offenses::new(OffenseConfig {
        max_sources: 64,
        ..Default::default()
    })
    .expect("cfg");
    let a = ip("198.51.100.98");
    for i in 0..4 {
        assert_eq!(o.record_failure(a, 1_000 + i, FailureKind::Invalid), None);
    }
    for i in 0..10_000u32 {
        let _ = o.record_failure(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            1_010,
            FailureKind::OpenFailed,
        );
    }
    assert!(o.record_failure(a, 1_020, FailureKind::Invalid).is_some());
}

#[test]
fn lru_evicts_the_weakest_of_its_oldest_entries() {
    let mut l: Lru<u32, u64> = Lru::new(4);
    for (k, score) in [(1, 5), (2, 1), (3, 7), (4, 2)] {
        *l.get_or_insert_with(k, || 0) = score;
    }
    // Full: 2 has the least evidence among the oldest.
    l.get_or_insert_scored(5, || 3, |v| *v);
    assert!(l.peek(&2).is_none());
    assert_eq!(l.len(), 4);
    // Plain LRU eviction ignores the scores.
    l.get_or_insert_with(6, || 0);
    assert!(l.peek(&1).is_none());
}

#[test]
fn scan_memory_is_bounded() {
    let mut s = ScanDetector::new(ScanConfig {
        max_sources: 50,
        ..Default::default()
    })
    .expect("cfg");
    for i in 0..5_000u32 {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let _ = s.record_probe(src, Transport::Tcp, (i % 9) as u16, 1_000);
        s.note_allowed(src, Transport::Tcp, 22, 1_000, 2_000);
        let (p, a) = s.len();
        assert!(p <= 50 && a <= 50);
    }
    let src = ip("10.200.0.1");
    for p in 0..1_000u16 {
        s.note_allowed(src, Transport::Udp, p, 1_000, 5_000 + u64::from(p));
    }
    assert!(
        s.allowed
            .peek(&src)
            .is_some_and(|l| l.len() == MAX_ALLOWED_PORTS_PER_SOURCE)
    );
    // The ones expiring last were kept.
    assert!(s.is_allowed(src, Transport::Udp, 999, 1_000));
    assert!(!s.is_allowed(src, Transport::Udp, 0, 1_000));
    assert!(s.prune(1_000 + 10_000) > 0);
    assert_eq!(s.len(), (0, 0));
}
