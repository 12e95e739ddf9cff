//! The lock-out shield (SPEC §9): sources with a recent accepted datagram,
//! whose forgeable failures and probes are not counted. Pure: every call
//! takes `now_ms`.
//!
//! Only a fully verified datagram puts a source here, so nobody without a
//! client's key can add an entry, nor evict one: eviction is least recently
//! used, and pushing a client out takes `max_sources` other sources with
//! accepted datagrams of their own.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{DEFAULT_MAX_SOURCES, IpsError, Lru, SourceAggregation, check_sources};

/// Default time a source stays shielded after an accepted datagram, ms.
pub const DEFAULT_GRACE_MS: u64 = 3_600_000;

/// [`Lockout`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutConfig {
    /// How long after an accepted datagram (or after the end of the
    /// opening it granted, if later) a source stays shielded, ms. 0 turns
    /// the shield off.
    pub grace_ms: u64,
    /// Sources remembered at most (LRU eviction), for addresses and for
    /// their aggregates each.
    pub max_sources: usize,
    /// How addresses are grouped into sources (the IPS's): a block of an
    /// aggregate holding a shielded address is narrowed to the offender
    /// ([`Lockout::shields_net`]).
    pub aggregation: SourceAggregation,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            grace_ms: DEFAULT_GRACE_MS,
            max_sources: DEFAULT_MAX_SOURCES,
            aggregation: SourceAggregation::default(),
        }
    }
}

/// Sources with a recent accepted datagram, per exact address (an accepted
/// knock proves one address, not its /64).
#[derive(Debug)]
pub struct Lockout {
    cfg: LockoutConfig,
    /// Address → end of its shield, ms.
    shielded: Lru<IpAddr, u64>,
    /// Aggregate (an IPv6 /64 by default) → end of the last shield of an
    /// address in it, ms.
    nets: Lru<IpNet, u64>,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            shielded: Lru::new(DEFAULT_MAX_SOURCES),
            nets: Lru::new(DEFAULT_MAX_SOURCES),
            cfg: LockoutConfig::default(),
        }
    }
}

impl Lockout {
    /// A shield with no sources yet.
    pub fn new(cfg: LockoutConfig) -> Result<Self, IpsError> {
        check_sources(cfg.max_sources)?;
        cfg.aggregation.validate()?;
        Ok(Self {
            shielded: Lru::new(cfg.max_sources),
            nets: Lru::new(cfg.max_sources),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &LockoutConfig {
        &self.cfg
    }

    /// Records a fully verified datagram from `src` at `now_ms` whose
    /// opening (if any) lasts until `opened_until_ms`.
    pub fn note_accepted(&mut self, src: IpAddr, now_ms: u64, opened_until_ms: u64) {
        if self.cfg.grace_ms == 0 {
            return;
        }
        let until = now_ms
            .saturating_add(self.cfg.grace_ms)
            .max(opened_until_ms);
        let e = self
            .shielded
            .get_or_insert_with(src.to_canonical(), || until);
        *e = (*e).max(until);
        let n = self
            .nets
            .get_or_insert_with(self.cfg.aggregation.key(src), || until);
        *n = (*n).max(until);
    }

    /// Whether `net` (a block target wider than one address) holds an
    /// address shielded at `now_ms`: an off-path sender can forge any
    /// address of a client's /64, so the daemon then blocks the offending
    /// address alone (SPEC §9).
    pub fn shields_net(&self, net: IpNet, now_ms: u64) -> bool {
        self.nets
            .peek(&net.trunc())
            .is_some_and(|&until| now_ms < until)
    }

    /// Whether `src` had an accepted datagram recently enough that what
    /// anybody can forge with its address must not count against it.
    pub fn shields(&self, src: IpAddr, now_ms: u64) -> bool {
        self.shielded
            .peek(&src.to_canonical())
            .is_some_and(|&until| now_ms < until)
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.shielded.len()
    }

    /// True when no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.shielded.len() == 0
    }

    /// Forgets the shields that ended; returns how many addresses went.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        self.nets.retain(|_, &mut until| now_ms < until);
        self.shielded.retain(|_, &mut until| now_ms < until)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_accepted_source_is_shielded_for_the_grace_or_its_opening() {
        let mut l = Lockout::new(LockoutConfig {
            grace_ms: 1_000,
            ..Default::default()
        })
        .expect("cfg");
        let a = ip("203.0.113.5");
        assert!(!l.shields(a, 0));
        l.note_accepted(a, 10_000, 10_500);
        assert!(l.shields(a, 10_999));
        assert!(l.shields(ip("::ffff:203.0.113.5"), 10_999), "IPv4-mapped");
        assert!(!l.shields(a, 11_000));
        assert!(!l.shields(ip("203.0.113.6"), 10_000), "per address");
        // An opening longer than the grace shields until it ends; a later
        // accept never shortens a shield.
        l.note_accepted(a, 20_000, 90_000);
        l.note_accepted(a, 20_001, 0);
        assert!(l.shields(a, 89_999));
        assert!(!l.shields(a, 90_000));
        assert_eq!(l.prune(89_999), 0);
        assert_eq!(l.prune(90_000), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn a_prefix_holding_a_shielded_address_is_shielded_as_a_prefix() {
        let mut l = Lockout::new(LockoutConfig::default()).expect("cfg");
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        l.note_accepted(ip("2001:db8:1:2::10"), 1_000, 0);
        assert!(l.shields_net(net("2001:db8:1:2::/64"), 1_000));
        assert!(
            !l.shields(ip("2001:db8:1:2::11"), 1_000),
            "not its neighbour"
        );
        assert!(!l.shields_net(net("2001:db8:1:3::/64"), 1_000));
        let end = 1_000 + DEFAULT_GRACE_MS;
        assert!(!l.shields_net(net("2001:db8:1:2::/64"), end));
        // IPv4 per address by default.
        l.note_accepted(ip("10.200.1.2"), 1_000, 0);
        assert!(l.shields_net(net("10.200.1.2/32"), 1_000));
        assert!(!l.shields_net(net("10.200.1.0/24"), 1_000));
    }

    #[test]
    fn a_grace_of_zero_shields_nobody() {
        let mut l = Lockout::new(LockoutConfig {
            grace_ms: 0,
            ..Default::default()
        })
        .expect("cfg");
        l.note_accepted(ip("203.0.113.5"), 0, 60_000);
        assert!(!l.shields(ip("203.0.113.5"), 1));
        assert!(l.is_empty());
    }

    #[test]
    fn shield_memory_is_bounded() {
        let mut l = Lockout::new(LockoutConfig {
            max_sources: 10,
            ..Default::default()
        })
        .expect("cfg");
        for i in 0..1_000u32 {
            l.note_accepted(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 5, 0);
            assert!(l.len() <= 10);
        }
        assert!(
            Lockout::new(LockoutConfig {
                max_sources: 0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
