//! Intrusion prevention decisions: rate limiting, blocking repeat offenders
//! and port scanners. Pure: no I/O, no clock (every call takes `now_ms`); the
//! daemon applies the [`BlockDecision`]s to nftables and logs them.
//!
//! # The three parts
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
use proto_spec::Refusal;
use proto_spec::verify::Refused;

pub use lockout::{Lockout, LockoutConfig};
pub use scan::{ScanConfig, ScanDetector, Transport};

use lru::Lru;

pub mod lockout;
mod lru;
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

// ---------------------------------------------------------------------------
// Rate limiter

/// [`RateLimiter`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained datagrams per second per source (at least 1).
    pub rate_per_s: u32,
    /// Bucket size: datagrams a quiet source may send at once (at least 1).
    pub burst: u32,
    /// Sources tracked at most (LRU eviction).
    pub max_sources: usize,
    /// How addresses are grouped into sources.
    pub aggregation: SourceAggregation,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rate_per_s: DEFAULT_RATE_PER_S,
            burst: DEFAULT_BURST,
            max_sources: DEFAULT_MAX_SOURCES,
            aggregation: SourceAggregation::default(),
        }
    }
}

/// Tokens are counted in thousandths, so a rate of `r` per second refills
/// exactly `r` milli-tokens per millisecond.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    last_ms: u64,
}

/// A token bucket per source, checked before any asymmetric cryptography
/// (SPEC §8.1 K4, §8.2 O4). See the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateLimitConfig,
    buckets: Lru<IpNet, Bucket>,
}

impl RateLimiter {
    /// A limiter with no sources yet.
    pub fn new(cfg: RateLimitConfig) -> Result<Self, IpsError> {
        if cfg.rate_per_s == 0 {
            return Err(IpsError::BadSetting {
                name: "rate_per_s",
                why: "must be at least 1",
            });
        }
        if cfg.burst == 0 {
            return Err(IpsError::BadSetting {
                name: "burst",
                why: "must be at least 1",
            });
        }
        check_sources(cfg.max_sources)?;
        cfg.aggregation.validate()?;
        Ok(Self {
            buckets: Lru::new(cfg.max_sources),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    fn capacity_milli(&self) -> u64 {
        u64::from(self.cfg.burst) * MILLI
    }

    /// Takes one token from `src`'s bucket: `true` lets the datagram through,
    /// `false` drops it (before HPKE).
    pub fn check(&mut self, src: IpAddr, now_ms: u64) -> bool {
        let cap = self.capacity_milli();
        let rate = u64::from(self.cfg.rate_per_s);
        let key = self.cfg.aggregation.key(src);
        let mut fresh = false;
        let b = self.buckets.get_or_insert_with(key, || {
            fresh = true;
            Bucket {
                milli_tokens: cap,
                last_ms: now_ms,
            }
        });
        if !fresh {
            // A clock that goes back refills nothing.
            let elapsed = now_ms.saturating_sub(b.last_ms);
            b.milli_tokens = b
                .milli_tokens
                .saturating_add(elapsed.saturating_mul(rate))
                .min(cap);
            b.last_ms = b.last_ms.max(now_ms);
        }
        if b.milli_tokens >= MILLI {
            b.milli_tokens -= MILLI;
            true
        } else {
            false
        }
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.len() == 0
    }

    /// Forgets the sources whose bucket has refilled (they behave exactly as
    /// unknown ones); returns how many. Optional: the table is bounded anyway.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let cap = self.capacity_milli();
        let rate = u64::from(self.cfg.rate_per_s);
        self.buckets.retain(|_, b| {
            let refill = now_ms.saturating_sub(b.last_ms).saturating_mul(rate);
            b.milli_tokens.saturating_add(refill) < cap
        })
    }
}

// ---------------------------------------------------------------------------
// Offenses

/// A failure that counts toward a block. Only failures after the pre-check
/// MAC passed may be recorded (SPEC §9); each kind weighs what
/// [`FailureWeights`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// `open_failed`: MAC-valid garbage. Anyone holding the receiver's
    /// public key (every client profile does) can send it from any address.
    OpenFailed,
    /// `replayed` or `stale`: what a captured datagram sent again yields,
    /// from the client's own address if the sender spoofs it.
    Replayed,
    /// Any other refusal before the client was proven (parsing, freshness
    /// in the future, certificate, signature): forgeable with the receiver's
    /// public key alone.
    Invalid,
    /// A refusal after the client's signature verified (address rules,
    /// authorization): nobody without the client's key can produce it.
    Proven,
}

impl FailureKind {
    /// How a refusal counts, the client not proven: `None` for the
    /// refusals that must not count, the ones before or at the MAC
    /// (`too_short`, `too_long`, `bad_version`, `mac_mismatch`: anybody can
    /// produce them with any source address) and `storage_failure` (the
    /// receiver's own fault).
    pub fn of_refusal(r: &Refusal) -> Option<Self> {
        match r {
            Refusal::TooShort
            | Refusal::TooLong
            | Refusal::BadVersion
            | Refusal::MacMismatch
            | Refusal::StorageFailure => None,
            Refusal::OpenFailed => Some(Self::OpenFailed),
            Refusal::Replayed | Refusal::Stale => Some(Self::Replayed),
            _ => Some(Self::Invalid),
        }
    }

    /// How a refusal counts: as [`FailureKind::of_refusal`], but
    /// [`FailureKind::Proven`] when the verifier had proven the client.
    pub fn of_refused(r: &Refused) -> Option<Self> {
        let kind = Self::of_refusal(&r.reason)?;
        Some(if r.identity.is_some() {
            Self::Proven
        } else {
            kind
        })
    }

    /// Whether someone without the client's key can produce it with the
    /// client's source address (SPEC §9): every kind but
    /// [`FailureKind::Proven`].
    pub fn forgeable(self) -> bool {
        self != Self::Proven
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OpenFailed => "open_failed",
            Self::Invalid => "invalid",
            Self::Replayed => "replayed",
            Self::Proven => "proven",
        })
    }
}

/// How much each [`FailureKind`] adds toward [`OffenseConfig::threshold`]
/// (`[ips] weight_*`); 0 means it never counts. The defaults are safe
/// behind a NAT: replays, which anyone who captured a knock can send from
/// its client's address and which attack nothing, weigh 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWeights {
    /// [`FailureKind::OpenFailed`].
    pub open_failed: u32,
    /// [`FailureKind::Replayed`].
    pub replayed: u32,
    /// [`FailureKind::Invalid`].
    pub invalid: u32,
    /// [`FailureKind::Proven`].
    pub proven: u32,
}

impl Default for FailureWeights {
    fn default() -> Self {
        Self {
            open_failed: 1,
            replayed: 0,
            invalid: 1,
            proven: 1,
        }
    }
}

impl FailureWeights {
    /// The weight of `kind`.
    pub fn of(&self, kind: FailureKind) -> u32 {
        match kind {
            FailureKind::OpenFailed => self.open_failed,
            FailureKind::Replayed => self.replayed,
            FailureKind::Invalid => self.invalid,
            FailureKind::Proven => self.proven,
        }
    }

    fn validate(&self) -> Result<(), IpsError> {
        let max = [self.open_failed, self.replayed, self.invalid, self.proven]
            .into_iter()
            .max()
            .unwrap_or(0);
        if max > MAX_FAILURE_THRESHOLD {
            return Err(IpsError::BadSetting {
                name: "weights",
                why: "each weight must be between 0 and 64",
            });
        }
        Ok(())
    }
}

/// [`Offenses`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffenseConfig {
    /// Failures within `window_ms` that get a source blocked (1..=64).
    pub threshold: u32,
    /// The counting window, ms (at least 1).
    pub window_ms: u64,
    /// Block duration, ms (at least 1).
    pub block_ms: u64,
    /// Sources tracked at most (LRU eviction).
    pub max_sources: usize,
    /// How addresses are grouped into sources.
    pub aggregation: SourceAggregation,
    /// Networks never counted nor blocked.
    pub allowlist: Vec<IpNet>,
    /// What each kind of failure adds toward `threshold`.
    pub weights: FailureWeights,
}

impl Default for OffenseConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_FAILURE_THRESHOLD,
            window_ms: DEFAULT_FAILURE_WINDOW_MS,
            block_ms: DEFAULT_BLOCK_MS,
            max_sources: DEFAULT_MAX_SOURCES,
            aggregation: SourceAggregation::default(),
            allowlist: Vec::new(),
            weights: FailureWeights::default(),
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

#[derive(Debug, Default)]
struct OffenseEntry {
    /// Failure times and weights within the window (at most `threshold`
    /// entries: weights are at least 1 and reaching `threshold` clears
    /// them).
    times: Vec<(u64, u32)>,
    blocked_until: u64,
}

/// Counts failures after the pre-check MAC per source and decides blocks.
/// See the module documentation.
#[derive(Debug)]
pub struct Offenses {
    cfg: OffenseConfig,
    table: Lru<IpNet, OffenseEntry>,
}

impl Offenses {
    /// A tracker with no sources yet.
    pub fn new(cfg: OffenseConfig) -> Result<Self, IpsError> {
        if cfg.threshold == 0 || cfg.threshold > MAX_FAILURE_THRESHOLD {
            return Err(IpsError::BadSetting {
                name: "threshold",
                why: "must be between 1 and 64",
            });
        }
        check_window("window_ms", cfg.window_ms)?;
        check_window("block_ms", cfg.block_ms)?;
        check_sources(cfg.max_sources)?;
        cfg.aggregation.validate()?;
        cfg.weights.validate()?;
        Ok(Self {
            table: Lru::new(cfg.max_sources),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OffenseConfig {
        &self.cfg
    }

    /// Replaces the allowlist (on a configuration reload); counts kept.
    pub fn set_allowlist(&mut self, allowlist: Vec<IpNet>) {
        self.cfg.allowlist = allowlist;
    }

    /// Whether `src` is in the allowlist.
    pub fn is_allowlisted(&self, src: IpAddr) -> bool {
        allowlisted(&self.cfg.allowlist, src)
    }

    /// Records a failure of a datagram from `src` **that passed the pre-check
    /// MAC**, and returns a block when this one reaches the threshold. A
    /// source already blocked (datagrams that raced the firewall) and an
    /// allowlisted one are not counted.
    pub fn record_failure(
        &mut self,
        src: IpAddr,
        now_ms: u64,
        kind: FailureKind,
    ) -> Option<BlockDecision> {
        let weight = self.cfg.weights.of(kind);
        if weight == 0 {
            return None;
        }
        let src = src.to_canonical();
        if self.is_allowlisted(src) {
            return None;
        }
        let key = self.cfg.aggregation.key(src);
        let (threshold, window, block) =
            (self.cfg.threshold, self.cfg.window_ms, self.cfg.block_ms);
        let e = self
            .table
            .get_or_insert_scored(key, OffenseEntry::default, |e| {
                if now_ms < e.blocked_until {
                    u64::MAX
                } else {
                    e.times.iter().map(|&(_, w)| u64::from(w)).sum()
                }
            });
        if now_ms < e.blocked_until {
            return None;
        }
        e.times.retain(|&(t, _)| now_ms.saturating_sub(t) < window);
        e.times.push((now_ms, weight));
        let count = e
            .times
            .iter()
            .fold(0u32, |sum, &(_, w)| sum.saturating_add(w));
        if count < threshold {
            return None;
        }
        e.times.clear();
        let until_ms = now_ms.saturating_add(block);
        e.blocked_until = until_ms;
        Some(BlockDecision {
            target: block_target(&self.cfg.allowlist, key, src),
            until_ms,
            duration_ms: block,
            reason: BlockReason::Failures { count, last: kind },
        })
    }

    /// Forgets everything counted against `src`'s source (its aggregate),
    /// a running block included: the daemon lifts the block after a fully
    /// verified datagram from it (SPEC §9).
    pub fn forgive(&mut self, src: IpAddr) {
        let key = self.cfg.aggregation.key(src);
        self.table.remove(&key);
    }

    /// When `src`'s block (decided here) ends, if it is blocked at `now_ms`.
    pub fn blocked_until(&self, src: IpAddr, now_ms: u64) -> Option<u64> {
        let key = self.cfg.aggregation.key(src);
        self.table
            .peek(&key)
            .map(|e| e.blocked_until)
            .filter(|&u| now_ms < u)
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Forgets sources with no failure in the window and no running block;
    /// returns how many. Optional: the table is bounded anyway.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let window = self.cfg.window_ms;
        self.table.retain(|_, e| {
            e.times.retain(|&(t, _)| now_ms.saturating_sub(t) < window);
            !e.times.is_empty() || now_ms < e.blocked_until
        })
    }
}

#[cfg(test)]
mod tests;
