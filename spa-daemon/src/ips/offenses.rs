//! Repeat offenders: weighted failures per aggregated source in a window,
//! and the block they earn (see [`super`], SPEC §9).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use proto_spec::Refusal;
use proto_spec::verify::Refused;

use super::lru::Lru;
use super::*;

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

#[derive(Debug, Default)]
pub(super) struct OffenseEntry {
    /// Failure times and weights within the window (at most `threshold`
    /// entries: weights are at least 1 and reaching `threshold` clears
    /// them).
    pub(super) times: Vec<(u64, u32)>,
    blocked_until: u64,
}

/// Counts failures after the pre-check MAC per source and decides blocks.
/// See the module documentation.
#[derive(Debug)]
pub struct Offenses {
    cfg: OffenseConfig,
    pub(super) table: Lru<IpNet, OffenseEntry>,
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
