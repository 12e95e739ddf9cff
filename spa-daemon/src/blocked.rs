//! Blocked sources as the daemon keeps them for its own early drop (the
//! firewall holds the same blocks in its `block*` sets): single addresses
//! and prefixes (an IPv6 /64 by default, [`crate::ips`]).
//!
//! # Bounds
//!
//! At most `max_blocks` blocks run at once (`[ips] max_blocks`, default
//! [`DEFAULT_MAX_BLOCKS`]; the kernel sets get the same `size`). When full,
//! ended blocks are forgotten first; if none ended, the **new** block is
//! refused ([`TableFull`]) and running ones are kept. Evicting a running
//! block instead would let anyone who can spoof many sources (SYNs are
//! cheap) push a real scanner out of the table; refusing new ones costs
//! only the blocks of newcomers while the table is full, which the daemon
//! logs and counts (`blocked.table_full`).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use proto_spec::UnixMillis;
use serde_json::{Value, json};

/// Blocked sources, as the firewall has them: single addresses (a /32 or
/// /128) and prefixes (an IPv6 /64), each with its end. The daemon's own
/// early drop asks [`Blocked::covers`], which tries each prefix length in
/// use (usually two) with one hash lookup each: no allocation per datagram.
#[derive(Debug)]
pub struct Blocked {
    nets: HashMap<IpNet, BlockedNet>,
    /// The prefix lengths in `nets`, IPv4 then IPv6, each sorted.
    lens: [Vec<u8>; 2],
    max_blocks: usize,
}

/// Default largest number of running blocks.
pub const DEFAULT_MAX_BLOCKS: usize = 65_536;

/// A block refused because `max_blocks` blocks are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the block table is full ({max_blocks} running blocks)")]
pub struct TableFull {
    /// The limit.
    pub max_blocks: usize,
}

impl Default for Blocked {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BLOCKS)
    }
}

/// One block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockedNet {
    /// The address whose offenses caused it.
    source: IpAddr,
    /// Its end, ms.
    until_ms: UnixMillis,
}

impl Blocked {
    /// No blocks; at most `max_blocks` (at least 1) at once.
    pub fn new(max_blocks: usize) -> Self {
        Self {
            nets: HashMap::new(),
            lens: [Vec::new(), Vec::new()],
            max_blocks: max_blocks.max(1),
        }
    }

    /// The largest number of running blocks.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Whether a block of `net` can be recorded at `now`: it replaces one,
    /// or there is room (after forgetting the ended ones).
    pub fn has_room(&mut self, net: IpNet, now: UnixMillis) -> Result<(), TableFull> {
        if self.nets.contains_key(&net.trunc()) || self.nets.len() < self.max_blocks {
            return Ok(());
        }
        self.expire(now);
        if self.nets.len() < self.max_blocks {
            Ok(())
        } else {
            Err(TableFull {
                max_blocks: self.max_blocks,
            })
        }
    }

    /// Records a block of `net` caused by `source` until `until_ms`
    /// (replacing an earlier one of the same network), if
    /// [`Blocked::has_room`].
    pub fn insert(
        &mut self,
        net: IpNet,
        source: IpAddr,
        until_ms: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), TableFull> {
        self.has_room(net, now)?;
        let net = net.trunc();
        self.nets.insert(
            net,
            BlockedNet {
                source: source.to_canonical(),
                until_ms,
            },
        );
        let lens = &mut self.lens[usize::from(matches!(net, IpNet::V6(_)))];
        if let Err(at) = lens.binary_search(&net.prefix_len()) {
            lens.insert(at, net.prefix_len());
        }
        Ok(())
    }

    /// Forgets the block of exactly `net`; whether there was one.
    pub fn remove(&mut self, net: IpNet) -> bool {
        let gone = self.nets.remove(&net.trunc()).is_some();
        if gone {
            self.relist_lens();
        }
        gone
    }

    /// Whether a block running at `now` covers `ip` (its address or a
    /// prefix holding it).
    pub fn covers(&self, ip: IpAddr, now: UnixMillis) -> bool {
        self.covering(ip, now).is_some()
    }

    /// The block running at `now` that covers `ip`, if any.
    pub fn covering(&self, ip: IpAddr, now: UnixMillis) -> Option<IpNet> {
        let ip = ip.to_canonical();
        let lens = &self.lens[usize::from(ip.is_ipv6())];
        lens.iter().rev().find_map(|&len| {
            let net = IpNet::new(ip, len).ok()?.trunc();
            self.nets
                .get(&net)
                .is_some_and(|b| b.until_ms > now)
                .then_some(net)
        })
    }

    /// Forgets the blocks that ended by `now`.
    pub fn expire(&mut self, now: UnixMillis) {
        self.nets.retain(|_, b| b.until_ms > now);
        self.relist_lens();
    }

    fn relist_lens(&mut self) {
        for (i, lens) in self.lens.iter_mut().enumerate() {
            lens.retain(|&len| {
                self.nets
                    .keys()
                    .any(|n| usize::from(matches!(n, IpNet::V6(_))) == i && n.prefix_len() == len)
            });
        }
    }

    /// How many blocks are recorded (ended ones until the next
    /// [`Blocked::expire`]).
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// True when nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The `blocked` list of `status`: `address` is the address of a
    /// single-address block and `network/length` of a prefix block,
    /// `prefix` its length, `source` the address that caused it.
    pub fn status(&self, now: UnixMillis) -> Vec<Value> {
        let mut list: Vec<(&IpNet, &BlockedNet)> = self.nets.iter().collect();
        list.sort_unstable_by_key(|(n, _)| **n);
        list.into_iter()
            .map(|(net, b)| {
                let address = if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                };
                json!({
                    "address": address,
                    "prefix": net.prefix_len(),
                    "source": b.source.to_string(),
                    "expires_in_s": b.until_ms.saturating_sub(now).div_ceil(1000),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    #[test]
    fn a_prefix_block_covers_every_address_of_the_prefix() {
        let mut b = Blocked::default();
        assert!(!b.covers(ip("fd00:200:2::2"), 0));
        b.insert(net("fd00:200:2::2/64"), ip("fd00:200:2::2"), 3000, 0)
            .expect("room");
        b.insert(net("10.200.2.2/32"), ip("10.200.2.2"), 5000, 0)
            .expect("room");
        for covered in ["fd00:200:2::2", "fd00:200:2::3", "fd00:200:2:0:ffff::1"] {
            assert_eq!(
                b.covering(ip(covered), 1000),
                Some(net("fd00:200:2::/64")),
                "{covered}"
            );
        }
        assert!(!b.covers(ip("fd00:200:3::2"), 1000), "another /64");
        assert!(b.covers(ip("10.200.2.2"), 1000));
        assert!(b.covers(ip("::ffff:10.200.2.2"), 1000), "IPv4-mapped");
        assert!(!b.covers(ip("10.200.2.3"), 1000), "IPv4 per address");
        // Ended blocks cover nothing, and expire forgets them.
        assert!(!b.covers(ip("fd00:200:2::3"), 3000));
        b.expire(3000);
        assert_eq!(b.len(), 1);
        assert_eq!(b.lens, [vec![32], vec![]]);
        b.expire(5000);
        assert!(b.is_empty());
    }

    #[test]
    fn status_shows_prefix_blocks_with_their_length_and_source() {
        let mut b = Blocked::default();
        b.insert(net("fd00:200:2::7/64"), ip("fd00:200:2::7"), 10_000, 0)
            .expect("room");
        b.insert(net("10.200.2.2/32"), ip("10.200.2.2"), 2_500, 0)
            .expect("room");
        let st = b.status(1000);
        assert_eq!(
            st,
            [
                json!({"address": "10.200.2.2", "prefix": 32, "source": "10.200.2.2", "expires_in_s": 2}),
                json!({"address": "fd00:200:2::/64", "prefix": 64, "source": "fd00:200:2::7", "expires_in_s": 9}),
            ]
        );
    }

    #[test]
    fn a_full_table_keeps_running_blocks_and_refuses_new_ones() {
        let mut b = Blocked::new(2);
        b.insert(net("10.200.2.2/32"), ip("10.200.2.2"), 1_000, 0)
            .expect("room");
        b.insert(net("10.200.2.3/32"), ip("10.200.2.3"), 5_000, 0)
            .expect("room");
        // Full: a newcomer is refused, the running blocks stay.
        assert_eq!(
            b.insert(net("10.200.2.4/32"), ip("10.200.2.4"), 9_000, 10),
            Err(TableFull { max_blocks: 2 })
        );
        assert!(b.covers(ip("10.200.2.2"), 10) && b.covers(ip("10.200.2.3"), 10));
        assert!(!b.covers(ip("10.200.2.4"), 10));
        // Renewing a running block needs no room.
        b.insert(net("10.200.2.2/32"), ip("10.200.2.2"), 2_000, 10)
            .expect("renewal");
        // Once a block ended, its room goes to the newcomer.
        b.insert(net("10.200.2.4/32"), ip("10.200.2.4"), 9_000, 2_000)
            .expect("room after an end");
        assert_eq!(b.len(), 2);
        // Lifting frees room too.
        assert!(b.remove(net("10.200.2.3/32")));
        assert!(!b.remove(net("10.200.2.3/32")));
        assert!(!b.covers(ip("10.200.2.3"), 2_000));
        assert_eq!(b.lens, [vec![32], vec![]]);
        b.insert(net("fd00::1/64"), ip("fd00::1"), 9_000, 2_000)
            .expect("room after a lift");
        assert_eq!(b.lens, [vec![32], vec![64]]);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_blocks() {
        let mut b = Blocked::new(100);
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0ac8_0000 + i));
            let _ = b.insert(IpNet::from(a), a, 600_000, u64::from(i));
            assert!(b.len() <= 100);
        }
    }
}
