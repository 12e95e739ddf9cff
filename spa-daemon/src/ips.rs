//! Intrusion prevention decisions: rate limiting, blocking repeat offenders
//! and port scanners. Pure: no I/O, no clock (every call takes `now_ms`); the
//! daemon applies the [`BlockDecision`]s to nftables and logs them.
//!
//! # The three parts
//!
//! Each in a file of its own (`ips/rate.rs`, `ips/offenses.rs`,
//! `ips/scan.rs`), over one bounded table (`ips/lru.rs`); the lock-out
//! shield that spares recently proven sources is `ips/lockout.rs`.
//!
//! - [`RateLimiter`]: a token bucket per source, consulted after the
//!   pre-check MAC and before any asymmetric cryptography (SPEC §8.1 step K4,
//!   §8.2 step O4). It never blocks; an over-limit datagram is dropped.
//! - [`Offenses`]: a source whose datagrams fail verification `threshold`
//!   times within `window` is blocked for `block`. Only failures **after the
//!   pre-check MAC passed** may be recorded (SPEC §9): producing a MAC-valid
//!   datagram needs the receiver's public key, so a spoofer who only knows
//!   the address cannot get a client blocked by sending garbage from it.
//!   [`FailureKind::of_refusal`] returns `None` for the pre-MAC refusals (and
//!   for `storage_failure`, which is the receiver's fault), so a daemon that
//!   feeds every refusal through it gets this right. Pre-MAC garbage is only
//!   rate limited.
//! - [`ScanDetector`]: `distinct_ports` distinct closed ports (TCP SYN or UDP,
//!   as the capture reports them) probed by one source within `window` gets it
//!   blocked for `block`. Ports the source is currently allowed to use
//!   ([`ScanDetector::note_allowed`]) do not count, and by default a source
//!   with any current allowance is not counted at all.
//!
//! # Sources
//!
//! Sources are aggregated by prefix ([`SourceAggregation`]): IPv4 per /32 and
//! IPv6 per /64 by default, since one IPv6 host usually holds a whole /64 and
//! could otherwise rotate addresses to dodge every per-source limit. IPv4-
//! mapped IPv6 addresses count as IPv4. A block covers the aggregate, except
//! when the aggregate overlaps the allowlist, in which case only the offending
//! address is blocked. The firewall enforces it the same way: the daemon
//! adds [`BlockDecision::target`] whole (a /64 goes to the prefix set
//! `block6_64` of the ruleset, whose widths come from
//! [`SourceAggregation::block_prefixes`]), and its own early drop of blocked
//! sources matches on the prefix too, so another address of a blocked /64
//! is dropped like the offender.
//!
//! # Memory and eviction
//!
//! Every table holds at most `max_sources` entries (`[ips] max_sources`,
//! 65,536 by default) and a bounded amount per entry (`threshold` failure
//! times, `distinct_ports` ports, [`MAX_ALLOWED_PORTS_PER_SOURCE`]
//! allowances), kept in a slab with an intrusive recency list (O(1)). When
//! the rate limiter is full, the **least recently used** entry is evicted:
//! in practice it is idle and its bucket already full again (eviction
//! loses nothing unless more than `max_sources` sources were active within
//! `burst / rate` seconds, a flood no per-source limit can stop anyway).
//! When the offense or scan table is full, the entry with the **least
//! evidence** (failure weight or ports counted; a running block counts
//! most) among the 8 least recently used goes. Source addresses are cheap
//! to forge, so plain LRU would let a flood of fresh forged sources (one
//! count each) push a real scanner's partial count out; with the sample,
//! evicting it takes 8 stale entries with at least as much evidence, each
//! as costly to build as the scanner's own. Eviction never blocks anybody,
//! and running blocks live in [`crate::blocked::Blocked`], which never
//! evicts them. Hash maps use std's randomly keyed SipHash, so crafted
//! source addresses cannot degrade them.
//!
//! # Defaults, chosen for spoofed sources (SPEC §9)
//!
//! | Setting | Default | Why |
//! |---|---|---|
//! | rate | 20 knocks/s, burst 40 per source | A client sends a few knocks per session (open, requests, close) and retries; 20/s bounds one source to about 2 ms of HPKE work per second. |
//! | failures | weight 5 within 60 s → block 10 min | Counted only after the MAC passed; `open_failed`, invalid and proven refusals weigh 1, replays 0. 60 s matches `MAX_AGE`; 10 min is short, so a block a spoofer with the public key provokes (SPEC §9: every client knows `pkR`) costs the victim little. |
//! | scans | 10 distinct closed ports within 10 s → block 10 min | A SYN or UDP probe is trivially spoofed, so the threshold is well above what a client that mistypes a port does, blocks are short, allowed ports and (by default) sources with an opening do not count, and allowlisted networks are never blocked. |
//! | tables | 65,536 sources each; IPv4 /32, IPv6 /64 | About 6 MB per table at most. |
//!
//! # Lock-out defence (SPEC §9)
//!
//! Nothing a sender can forge without a client's key may deny service to
//! that client. A SYN, MAC-valid garbage (`open_failed`, needs only the
//! receiver's public key, which every client holds) and a captured knock
//! sent again (`replayed`, `stale`) can all carry the client's source
//! address. So:
//!
//! - each [`FailureKind`] weighs what [`FailureWeights`] says (`[ips]
//!   weight_*`); replays weigh 0 by default;
//! - a source with a recent accepted datagram ([`Lockout`]) is shielded:
//!   forgeable failures ([`FailureKind::forgeable`]) and probes from it are
//!   not counted at all;
//! - the daemon still verifies MAC-valid datagrams of a blocked source
//!   (after the rate limit), and a fully verified one lifts the block
//!   ([`Offenses::forgive`], [`ScanDetector::forgive`]).
//!
//! Scanners and senders of invalid knocks from their own addresses are
//! still blocked: they have no accepted knock.

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
#[cfg(test)]
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use lockout::{Lockout, LockoutConfig};
pub use offenses::{FailureKind, FailureWeights, OffenseConfig, Offenses};
pub use rate::{RateLimitConfig, RateLimiter};
pub use scan::{ScanConfig, ScanDetector, Transport};

use lru::Lru;

pub mod lockout;
mod lru;
mod offenses;
mod rate;
mod scan;

/// Default knocks per second per source.
pub const DEFAULT_RATE_PER_S: u32 = 20;
/// Default bucket size per source.
pub const DEFAULT_BURST: u32 = 40;
/// Default capacity of each table, in sources.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;
/// Default IPv4 and IPv6 aggregation prefixes (the firewall's block
/// prefixes agree).
pub use spa_nft::{DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX};
/// Default number of failures that gets a source blocked.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Default window for counting failures, ms.
pub const DEFAULT_FAILURE_WINDOW_MS: u64 = 60_000;
/// Default block duration, ms (offenses and scans).
pub const DEFAULT_BLOCK_MS: u64 = 600_000;
/// Default number of distinct closed ports that makes a scan.
pub const DEFAULT_SCAN_PORTS: usize = 10;
/// Default window for counting probed ports, ms.
pub const DEFAULT_SCAN_WINDOW_MS: u64 = 10_000;
/// Largest accepted failure threshold (the failure times of a source are
/// kept individually).
pub const MAX_FAILURE_THRESHOLD: u32 = 64;
/// Largest accepted scan threshold (the probed ports of a source are kept
/// individually).
pub const MAX_SCAN_PORTS: usize = 1024;
/// Allowances kept per source by [`ScanDetector::note_allowed`]; past it the
/// one expiring first is dropped.
pub const MAX_ALLOWED_PORTS_PER_SOURCE: usize = 64;

/// A configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpsError {
    /// A prefix length beyond the address size.
    #[error("prefix length /{prefix} is too long for {family}")]
    BadPrefix {
        /// The prefix length.
        prefix: u8,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// A setting out of range.
    #[error("invalid setting {name}: {why}")]
    BadSetting {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

// ---------------------------------------------------------------------------
// Prefixes and aggregation

/// The single address `ip` as a /32 or /128 (IPv4-mapped counts as IPv4).
pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

/// The prefix of length `prefix` (clamped to the address size) holding
/// `ip`, host bits cleared.
fn prefix_net(ip: IpAddr, prefix: u8) -> IpNet {
    let net = match ip {
        IpAddr::V4(a) => Ipv4Net::new(a, prefix.min(32)).map(|n| IpNet::V4(n.trunc())),
        IpAddr::V6(a) => Ipv6Net::new(a, prefix.min(128)).map(|n| IpNet::V6(n.trunc())),
    };
    // Unreachable with a clamped prefix; the host itself is the safe answer.
    net.unwrap_or_else(|_| IpNet::from(ip))
}

/// Whether two prefixes share an address.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// How sources are grouped: every address in one prefix counts as one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAggregation {
    /// IPv4 prefix length (32 = per address).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length (64 = per subnet, the usual allocation to a host).
    pub ipv6_prefix: u8,
}

impl Default for SourceAggregation {
    fn default() -> Self {
        Self {
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl SourceAggregation {
    /// The prefix `src` counts under (IPv4-mapped counts as IPv4).
    pub fn key(&self, src: IpAddr) -> IpNet {
        let src = src.to_canonical();
        let prefix = match src {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        prefix_net(src, prefix)
    }

    /// The firewall's block widths for this grouping: a block then covers
    /// the whole aggregate (`block6_64` for IPv6 /64, see [`spa_nft`]).
    pub fn block_prefixes(&self) -> spa_nft::BlockPrefixes {
        spa_nft::BlockPrefixes {
            ipv4: self.ipv4_prefix,
            ipv6: self.ipv6_prefix,
        }
    }

    fn validate(&self) -> Result<(), IpsError> {
        if self.ipv4_prefix > 32 {
            return Err(IpsError::BadPrefix {
                prefix: self.ipv4_prefix,
                family: "IPv4",
            });
        }
        if self.ipv6_prefix > 128 {
            return Err(IpsError::BadPrefix {
                prefix: self.ipv6_prefix,
                family: "IPv6",
            });
        }
        Ok(())
    }
}

fn allowlisted(list: &[IpNet], src: IpAddr) -> bool {
    let src = src.to_canonical();
    list.iter().any(|c| c.contains(&src))
}

/// The block target: the aggregate, or the single address when the
/// aggregate overlaps the allowlist (never block an allowlisted address).
fn block_target(list: &[IpNet], key: IpNet, src: IpAddr) -> IpNet {
    if list.iter().any(|c| overlaps(c, &key)) {
        host_net(src)
    } else {
        key
    }
}

fn check_sources(max_sources: usize) -> Result<(), IpsError> {
    if max_sources == 0 {
        return Err(IpsError::BadSetting {
            name: "max_sources",
            why: "must be at least 1",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Decisions

/// A source to block. The daemon adds `target` to its block set for
/// `duration_ms` (e.g. an nftables set element with a timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDecision {
    /// What to block: the source's aggregate prefix (or the single address,
    /// see the module documentation).
    pub target: IpNet,
    /// When the block ends, ms.
    pub until_ms: u64,
    /// How long it lasts, ms.
    pub duration_ms: u64,
    /// Why.
    pub reason: BlockReason,
}

/// Why a source is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// Too many failures after the pre-check MAC.
    Failures {
        /// Failures within the window.
        count: u32,
        /// The kind of the last one.
        last: FailureKind,
    },
    /// Too many distinct closed ports probed.
    Scan {
        /// Distinct ports within the window.
        ports: usize,
    },
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failures { count, last } => {
                write!(f, "{count} failed datagrams (last: {last})")
            }
            Self::Scan { ports } => write!(f, "port scan ({ports} closed ports)"),
        }
    }
}

fn check_window(name: &'static str, v: u64) -> Result<(), IpsError> {
    if v == 0 {
        return Err(IpsError::BadSetting {
            name,
            why: "must be at least 1 ms",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
