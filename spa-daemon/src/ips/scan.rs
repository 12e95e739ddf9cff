//! Port-scan detection per source (see the [`super`] documentation). Pure:
//! every call takes `now_ms`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    BlockDecision, BlockReason, DEFAULT_BLOCK_MS, DEFAULT_MAX_SOURCES, DEFAULT_SCAN_PORTS,
    DEFAULT_SCAN_WINDOW_MS, IpsError, Lru, MAX_ALLOWED_PORTS_PER_SOURCE, MAX_SCAN_PORTS,
    SourceAggregation, allowlisted, block_target, check_sources, check_window,
};

/// The transport of a probe or an allowance: the crate's one protocol type.
pub use spa_nft::Proto as Transport;

fn port_key(t: Transport, port: u16) -> u32 {
    let hi = match t {
        Transport::Tcp => 0,
        Transport::Udp => 1,
    };
    (hi << 16) | u32::from(port)
}

/// [`ScanDetector`] settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanConfig {
    /// Distinct closed ports within `window_ms` that make a scan (1..=1024).
    pub distinct_ports: usize,
    /// The counting window, ms (at least 1).
    pub window_ms: u64,
    /// Block duration, ms (at least 1).
    pub block_ms: u64,
    /// Sources tracked at most, for probes and for allowances each (LRU).
    pub max_sources: usize,
    /// How addresses are grouped into sources.
    pub aggregation: SourceAggregation,
    /// Networks never counted nor blocked.
    pub allowlist: Vec<IpNet>,
    /// Ports never counted, e.g. the knock port if the capture reports it.
    pub ignored_ports: Vec<(Transport, u16)>,
    /// Whether a source with any current allowance is exempt altogether
    /// (default `true`: a spoofed scan cannot lock out a client that has
    /// just knocked).
    pub exempt_allowed_sources: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            distinct_ports: DEFAULT_SCAN_PORTS,
            window_ms: DEFAULT_SCAN_WINDOW_MS,
            block_ms: DEFAULT_BLOCK_MS,
            max_sources: DEFAULT_MAX_SOURCES,
            aggregation: SourceAggregation::default(),
            allowlist: Vec::new(),
            ignored_ports: Vec::new(),
            exempt_allowed_sources: true,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct ScanEntry {
    /// (port key, last probe time), at most `distinct_ports`.
    pub(super) ports: Vec<(u32, u64)>,
    blocked_until: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    port: u32,
    until_ms: u64,
}

/// Detects port scans per source. See the module documentation.
#[derive(Debug)]
pub struct ScanDetector {
    cfg: ScanConfig,
    pub(super) probes: Lru<IpNet, ScanEntry>,
    /// Per exact address (openings are per address).
    pub(super) allowed: Lru<IpAddr, Vec<Allowance>>,
}

impl ScanDetector {
    /// A detector with no sources yet.
    pub fn new(cfg: ScanConfig) -> Result<Self, IpsError> {
        if cfg.distinct_ports == 0 || cfg.distinct_ports > MAX_SCAN_PORTS {
            return Err(IpsError::BadSetting {
                name: "distinct_ports",
                why: "must be between 1 and 1024",
            });
        }
        check_window("window_ms", cfg.window_ms)?;
        check_window("block_ms", cfg.block_ms)?;
        check_sources(cfg.max_sources)?;
        cfg.aggregation.validate()?;
        Ok(Self {
            probes: Lru::new(cfg.max_sources),
            allowed: Lru::new(cfg.max_sources),
            cfg,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ScanConfig {
        &self.cfg
    }

    /// Replaces the allowlist (on a configuration reload); counts kept.
    pub fn set_allowlist(&mut self, allowlist: Vec<IpNet>) {
        self.cfg.allowlist = allowlist;
    }

    /// Tells the detector that `src` may use `port` until `until_ms` (the
    /// daemon opened it): probes of it do not count. At most
    /// [`MAX_ALLOWED_PORTS_PER_SOURCE`] are kept per address.
    pub fn note_allowed(
        &mut self,
        src: IpAddr,
        transport: Transport,
        port: u16,
        now_ms: u64,
        until_ms: u64,
    ) {
        let pk = port_key(transport, port);
        let list = self
            .allowed
            .get_or_insert_with(src.to_canonical(), Vec::new);
        list.retain(|a| now_ms < a.until_ms);
        if let Some(a) = list.iter_mut().find(|a| a.port == pk) {
            a.until_ms = a.until_ms.max(until_ms);
            return;
        }
        if list.len() >= MAX_ALLOWED_PORTS_PER_SOURCE
            && let Some((i, _)) = list.iter().enumerate().min_by_key(|(_, a)| a.until_ms)
        {
            list.swap_remove(i);
        }
        list.push(Allowance { port: pk, until_ms });
    }

    /// Withdraws `src`'s allowance for `port` (the opening was closed).
    pub fn forget_allowed(&mut self, src: IpAddr, transport: Transport, port: u16) {
        let src = src.to_canonical();
        let pk = port_key(transport, port);
        if let Some(list) = self.allowed.get_mut(&src) {
            list.retain(|a| a.port != pk);
            if list.is_empty() {
                self.allowed.remove(&src);
            }
        }
    }

    /// Withdraws every allowance of `src`.
    pub fn forget_source(&mut self, src: IpAddr) {
        self.allowed.remove(&src.to_canonical());
    }

    /// Whether `src` may use `port` at `now_ms`.
    pub fn is_allowed(&self, src: IpAddr, transport: Transport, port: u16, now_ms: u64) -> bool {
        let pk = port_key(transport, port);
        self.allowed
            .peek(&src.to_canonical())
            .is_some_and(|l| l.iter().any(|a| a.port == pk && now_ms < a.until_ms))
    }

    fn has_allowance(&self, src: IpAddr, now_ms: u64) -> bool {
        self.allowed
            .peek(&src)
            .is_some_and(|l| l.iter().any(|a| now_ms < a.until_ms))
    }

    /// Records a probe of a closed port from `src`, and returns a block when
    /// it makes `distinct_ports` within the window.
    pub fn record_probe(
        &mut self,
        src: IpAddr,
        transport: Transport,
        port: u16,
        now_ms: u64,
    ) -> Option<BlockDecision> {
        let src = src.to_canonical();
        if self.cfg.ignored_ports.contains(&(transport, port))
            || allowlisted(&self.cfg.allowlist, src)
            || self.is_allowed(src, transport, port, now_ms)
            || (self.cfg.exempt_allowed_sources && self.has_allowance(src, now_ms))
        {
            return None;
        }
        let key = self.cfg.aggregation.key(src);
        let (threshold, window, block) = (
            self.cfg.distinct_ports,
            self.cfg.window_ms,
            self.cfg.block_ms,
        );
        let e = self
            .probes
            .get_or_insert_scored(key, ScanEntry::default, |e| {
                if now_ms < e.blocked_until {
                    u64::MAX
                } else {
                    e.ports.len() as u64
                }
            });
        if now_ms < e.blocked_until {
            return None;
        }
        e.ports.retain(|&(_, t)| now_ms.saturating_sub(t) < window);
        let pk = port_key(transport, port);
        match e.ports.iter_mut().find(|(p, _)| *p == pk) {
            Some(p) => p.1 = p.1.max(now_ms),
            None => e.ports.push((pk, now_ms)),
        }
        if e.ports.len() < threshold {
            return None;
        }
        let ports = e.ports.len();
        e.ports.clear();
        let until_ms = now_ms.saturating_add(block);
        e.blocked_until = until_ms;
        Some(BlockDecision {
            target: block_target(&self.cfg.allowlist, key, src),
            until_ms,
            duration_ms: block,
            reason: BlockReason::Scan { ports },
        })
    }

    /// Forgets the probes counted against `src`'s source (its aggregate),
    /// a running block included (see [`super::Offenses::forgive`]).
    pub fn forgive(&mut self, src: IpAddr) {
        let key = self.cfg.aggregation.key(src);
        self.probes.remove(&key);
    }

    /// Sources tracked (probes, allowances).
    pub fn len(&self) -> (usize, usize) {
        (self.probes.len(), self.allowed.len())
    }

    /// Forgets expired allowances and sources with no recent probe and no
    /// running block; returns how many entries went. Optional: the tables
    /// are bounded anyway.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let window = self.cfg.window_ms;
        let a = self.allowed.retain(|_, l| {
            l.retain(|a| now_ms < a.until_ms);
            !l.is_empty()
        });
        let p = self.probes.retain(|_, e| {
            e.ports.retain(|&(_, t)| now_ms.saturating_sub(t) < window);
            !e.ports.is_empty() || now_ms < e.blocked_until
        });
        a + p
    }
}
