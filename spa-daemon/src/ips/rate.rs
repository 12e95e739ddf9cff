//! The per-source rate limiter: a token bucket per aggregated source, in
//! a bounded LRU table (see [`super`]).

use std::net::IpAddr;

use super::lru::Lru;
use super::*;

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
