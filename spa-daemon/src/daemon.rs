//! The receive-verify-open loop shared by spa-server (green) and red-relay
//! (red): capture, cheap checks, rate limit, verification (which commits the
//! replay floor durably), firewall, sessions, intrusion prevention, logs,
//! counters, control socket, trust reloads, clean stop.
//!
//! Nothing here ever sends a byte toward a knock's source.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use proto_spec::verify::{Refused, Stage};
use proto_spec::{Refusal, UnixMillis};
use serde_json::{Value, json};
use tracing::{debug, error, info, warn};

pub use crate::blocked::Blocked;
use crate::config::ServiceProto;
use crate::counters::Counters;
use crate::ctl::ControlSocket;
use crate::gate::{Decision, Gate};
use crate::ips::{
    BlockDecision, FailureKind, Lockout, Offenses, RateLimiter, ScanDetector, Transport,
};
pub use crate::sessions::{Opening, Session};
use crate::sessions::{SessionTable, SharedSessions};
use crate::store::{ReplayDb, Sequenced};
use crate::workers::{Done, Job, Pool};
use spa_capture::{Capture, Event};
use spa_nft::{NftError, NftSets};

mod hooks;
mod publish;
mod watch;

pub use hooks::{Hooks, NoHooks};
pub use watch::{Flags, ReloadFailure, TrustWatch, trust_files};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The daemon's state and its loop.
pub struct Daemon<G: Gate, H: Hooks> {
    /// The verifier.
    pub gate: G,
    /// Durable replay floors.
    pub db: ReplayDb,
    /// The floors as the verifier sees them: re-checked at commit (SPEC
    /// §7.3), the same store as `db`.
    replay: Sequenced,
    /// Verification threads (`[daemon] workers` > 1); `None`: the loop
    /// verifies itself. Never together with `shared`.
    pub pool: Option<Pool>,
    /// Knock floors shared by a fleet of greens (`[replay] backend =
    /// "etcd"`, SPEC §7.6): when set, knocks commit there and not to `db`,
    /// on the loop's thread (no `pool`).
    pub shared: Option<Box<dyn crate::store::shared::SharedFloors>>,
    /// The firewall's sets.
    pub fw: NftSets,
    /// Capture (taken out while a batch is handled, so events are handled
    /// straight from the capture buffer without copying).
    pub capture: Option<Capture>,
    /// Services by name.
    pub services: HashMap<String, (ServiceProto, u16)>,
    /// Open sessions and the owners of each firewall element, shared
    /// with the tunnel (SPEC §8.1.1).
    pub sessions: SharedSessions,
    /// Per-source token bucket.
    pub limiter: RateLimiter,
    /// Invalid knocks per source.
    pub offenses: Offenses,
    /// Port scans per source.
    pub scans: ScanDetector,
    /// Decision counters.
    pub counters: Counters,
    /// Blocked sources (addresses or prefixes) and until when.
    pub blocked: Blocked,
    /// Sources with a recent accepted datagram (SPEC §9 lock-out defence).
    pub lockout: Lockout,
    /// Trust files.
    pub trust: TrustWatch,
    /// Control socket.
    pub control: Option<ControlSocket>,
    /// Signals.
    pub flags: Flags,
    /// Daemon-specific hooks.
    pub hooks: H,
    /// Start time.
    pub started_ms: UnixMillis,
    /// The Prometheus endpoint's registry (`[metrics]`), if enabled.
    pub metrics: Option<crate::metrics::Metrics>,
    /// Pre-MAC refusals since the last summary line.
    quiet_refusals: u64,
    /// `capture.reassembly_dropped` as of the last summary line.
    reassembly_dropped_logged: u64,
    last_summary_ms: UnixMillis,
    last_stamp_check_ms: UnixMillis,
    last_sweep_ms: UnixMillis,
    last_prune_ms: UnixMillis,
    last_full_warn_ms: UnixMillis,
    /// Floors older than this (the freshness window) may be pruned.
    pub prune_max_age_ms: u64,
}

/// How often the replay store is pruned (SPEC §7.4), ms.
pub const PRUNE_EVERY_MS: u64 = 600_000;

/// How often the trust files' modification times are compared, ms: a new
/// CRL is in force this long after it is written, at most (plus one loop
/// turn). A few `stat` calls each time.
pub const TRUST_POLL_MS: u64 = 250;

impl<G: Gate, H: Hooks> std::fmt::Debug for Daemon<G, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("sessions", &self.table().len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn hex16(s: &[u8; 16]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parts of a daemon that the constructor takes.
#[allow(missing_debug_implementations)]
pub struct Parts<G: Gate, H: Hooks> {
    /// Verifier.
    pub gate: G,
    /// Replay DB.
    pub db: ReplayDb,
    /// Firewall.
    pub fw: NftSets,
    /// Capture.
    pub capture: Capture,
    /// Services.
    pub services: HashMap<String, (ServiceProto, u16)>,
    /// IPS.
    pub limiter: RateLimiter,
    /// IPS.
    pub offenses: Offenses,
    /// IPS.
    pub scans: ScanDetector,
    /// Trust files.
    pub trust: TrustWatch,
    /// Control socket.
    pub control: Option<ControlSocket>,
    /// Signals.
    pub flags: Flags,
    /// Hooks.
    pub hooks: H,
    /// The session table (shared with the tunnel, if any).
    pub sessions: SharedSessions,
}

impl<G: Gate, H: Hooks> Daemon<G, H> {
    /// Assembles a daemon.
    pub fn new(p: Parts<G, H>, now: UnixMillis) -> Self {
        let replay = Sequenced::new(&p.db);
        Self {
            gate: p.gate,
            db: p.db,
            replay,
            pool: None,
            shared: None,
            fw: p.fw,
            capture: Some(p.capture),
            services: p.services,
            sessions: p.sessions,
            limiter: p.limiter,
            offenses: p.offenses,
            scans: p.scans,
            counters: Counters::default(),
            blocked: Blocked::default(),
            lockout: Lockout::default(),
            trust: p.trust,
            control: p.control,
            flags: p.flags,
            hooks: p.hooks,
            started_ms: now,
            metrics: None,
            quiet_refusals: 0,
            reassembly_dropped_logged: 0,
            last_summary_ms: now,
            last_stamp_check_ms: now,
            last_sweep_ms: now,
            // The first prune runs at the first turn after the start.
            last_prune_ms: now.saturating_sub(PRUNE_EVERY_MS),
            last_full_warn_ms: 0,
            prune_max_age_ms: proto_spec::replay::DEFAULT_MAX_AGE_MS,
        }
    }

    /// Runs until SIGTERM/SIGINT.
    pub fn run(&mut self) -> Result<(), spa_capture::CaptureError> {
        while !self.flags.stop.load(Ordering::Relaxed) {
            let Some(mut capture) = self.capture.take() else {
                break;
            };
            let polled = if self.pool.is_some() && self.shared.is_none() {
                // Cheap checks here, the rest of each knock on the workers
                // (crate::workers), verdicts applied in arrival order.
                let mut jobs = Vec::new();
                let polled = capture.poll(|ev| match ev {
                    Event::Knock { src, payload, .. } => {
                        let now = now_ms();
                        if let Some((ip, blocked)) = self.admit(src, payload, now) {
                            jobs.push(Job {
                                src,
                                ip,
                                blocked,
                                now,
                                payload: payload.to_vec(),
                            });
                        }
                    }
                    Event::Probe {
                        src,
                        dst_port,
                        proto,
                    } => self.handle_probe(src, proto, dst_port, now_ms()),
                });
                self.verify_on_workers(jobs);
                polled
            } else {
                capture.poll(|ev| match ev {
                    Event::Knock { src, payload, .. } => {
                        self.handle_datagram(src, payload, now_ms());
                    }
                    Event::Probe {
                        src,
                        dst_port,
                        proto,
                    } => self.handle_probe(src, proto, dst_port, now_ms()),
                })
            };
            self.capture = Some(capture);
            polled?;
            self.housekeeping(now_ms());
        }
        Ok(())
    }

    /// One datagram to the knock port, verified on this thread. SPEC §8:
    /// cheap checks first.
    pub fn handle_datagram(&mut self, src: SocketAddr, payload: &[u8], now: UnixMillis) {
        let Some((ip, blocked)) = self.admit(src, payload, now) else {
            return;
        };
        // With [metrics], the durable commit is timed (SPEC §7.3), nothing
        // else on this path.
        let timer = self.metrics.as_ref().map(|m| &m.commit);
        let result = match (self.shared.as_mut(), timer) {
            (Some(shared), Some(h)) => {
                self.gate
                    .verify(payload, ip, now, &mut crate::metrics::Timed::new(shared, h))
            }
            (Some(shared), None) => self.gate.verify(payload, ip, now, shared),
            (None, Some(h)) => self.gate.verify(
                payload,
                ip,
                now,
                &mut crate::metrics::Timed::new(&mut self.replay, h),
            ),
            (None, None) => self.gate.verify(payload, ip, now, &mut self.replay),
        };
        self.conclude(Done {
            src,
            ip,
            blocked,
            now,
            result,
        });
    }

    /// Verifies `jobs` on the workers and applies the verdicts in order.
    fn verify_on_workers(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let Some(pool) = self.pool.as_ref() else {
            return;
        };
        let sent = jobs.len();
        let done = pool.verify_batch(jobs);
        if done.len() < sent {
            // A worker is gone (it panicked): its datagrams are lost,
            // nothing was opened for them.
            let lost = (sent - done.len()) as u64;
            self.counters.add("refused.worker_lost", lost);
            error!(lost, "verification worker gone; datagrams dropped");
        }
        for d in done {
            self.conclude(d);
        }
    }

    /// The cheap checks of one datagram (block list, pre-check MAC, rate
    /// limit), on the loop's thread: `Some((source, blocked))` when it is
    /// to be verified; otherwise it was counted and logged here.
    fn admit(
        &mut self,
        src: SocketAddr,
        payload: &[u8],
        now: UnixMillis,
    ) -> Option<(IpAddr, bool)> {
        let ip = src.ip().to_canonical();
        // A blocked source: the capture sees packets before the firewall
        // drops them. What fails the MAC is dropped here before any other
        // work; what passes it is still verified (after the rate limit), so
        // that a block somebody provoked with the client's address cannot
        // keep the client out (SPEC §9).
        let blocked = self.blocked.covers(ip, now);
        if let Err(r) = self.gate.precheck(payload) {
            if blocked {
                self.counters.bump("refused.blocked_source");
                return None;
            }
            // Before the MAC: the sender showed no knowledge of our public
            // key. Counted, logged at debug only (a flood must not flood the
            // logs), summarized every 10 s, never used to block (SPEC §9).
            self.counters.refusal(&r);
            self.quiet_refusals += 1;
            debug!(src = %ip, reason = %r, "refused");
            return None;
        }
        if !self.limiter.check(ip, now) {
            self.counters.bump("refused.rate_limited");
            debug!(src = %ip, reason = "rate_limited", "refused");
            return None;
        }
        Some((ip, blocked))
    }

    /// Counts, logs and applies one verdict.
    fn conclude(&mut self, done: Done) {
        let Done {
            src,
            ip,
            blocked,
            now,
            result,
        } = done;
        match result {
            Err(refused) => {
                let r = refused.reason;
                self.counters.refusal(&r);
                if refused.stage != Stage::Knock {
                    self.counters
                        .bump(&format!("refused_stage.{}", refused.stage));
                }
                let stage = refused.stage;
                match &refused.identity {
                    Some(id) => {
                        warn!(src = %ip, reason = %r, %stage, identity = %id.display_name(), "refused");
                    }
                    None => warn!(src = %ip, reason = %r, %stage, "refused"),
                }
                if !blocked {
                    self.count_failure(ip, &refused, now);
                }
            }
            Ok(d) => {
                if self.apply(&d, now) {
                    self.accepted_from(ip, &d, now);
                    self.hooks.after_decision(&d, src, now);
                }
            }
        }
    }

    /// Counts a refusal against its source, unless the gate says the
    /// source is not to blame (red: a client's fault inside green's order)
    /// or the source is shielded by a recent accepted datagram and the
    /// refusal is one anybody could forge with its address (SPEC §9).
    fn count_failure(&mut self, ip: IpAddr, refused: &Refused, now: UnixMillis) {
        let Some(kind) = FailureKind::of_refused(refused) else {
            return;
        };
        if !self.gate.blames_source(refused) {
            self.counters.bump("ips.not_blamed");
            return;
        }
        if kind.forgeable() && self.lockout.shields(ip, now) {
            self.counters.bump("ips.shielded");
            return;
        }
        if let Some(b) = self.offenses.record_failure(ip, now, kind) {
            self.block(ip, &b, now, "invalid knocks");
        }
    }

    /// A fully verified datagram from `ip`: shield it from forgeable
    /// failures and lift any block covering it (SPEC §9: nothing forgeable
    /// without the client's key may keep the client out).
    fn accepted_from(&mut self, ip: IpAddr, d: &Decision, now: UnixMillis) {
        let opened_until = match d {
            Decision::Open { lifetime_s, .. } => {
                now.saturating_add(u64::from(*lifetime_s).saturating_mul(1000))
            }
            Decision::Close { .. } => now,
        };
        self.lockout.note_accepted(ip, now, opened_until);
        self.offenses.forgive(ip);
        self.scans.forgive(ip);
        while let Some(net) = self.blocked.covering(ip, now) {
            self.blocked.remove(net);
            match self.fw.unblock_net(net) {
                Ok(()) => {
                    self.counters.bump("blocked.lifted");
                    info!(src = %ip, blocked = %net, "block lifted: a verified datagram came from it");
                }
                Err(e) => {
                    warn!(src = %ip, blocked = %net, error = %e, "firewall: could not lift a block")
                }
            }
        }
    }

    /// Applies an accepted decision through the session table; `false`
    /// when the table refused it (nothing was touched, and the hooks are
    /// not told: green relays nothing for it).
    fn apply(&mut self, d: &Decision, now: UnixMillis) -> bool {
        match d {
            Decision::Open {
                kind,
                session,
                identity,
                addr,
                services,
                lifetime_s,
                ..
            } => {
                let opened = {
                    let mut table = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
                    table.open(d, &self.services, now, &mut self.fw)
                };
                let opened = match opened {
                    Ok(o) => o,
                    Err(e) => {
                        // SPEC §8.1.1: a session id belongs to its first
                        // identity; silent on the wire like any refusal.
                        self.counters.bump(e.counter());
                        warn!(src = %addr, identity = %identity, session = %hex16(session),
                            reason = %e, "refused: nothing opened");
                        return false;
                    }
                };
                for (_, key, expires_ms) in &opened.elements {
                    self.scans
                        .note_allowed(key.addr, key.proto, key.port, now, *expires_ms);
                }
                for (name, e) in &opened.failed {
                    warn!(src = %addr, identity = %identity, error = %e, "firewall: could not open {name}");
                }
                self.counters.bump(&format!("accepted.{kind}"));
                info!(
                    src = %addr, identity = %identity, session = %hex16(session), kind = kind.name(),
                    services = %services.join(","), lifetime_s = *lifetime_s, "accepted"
                );
                true
            }
            Decision::Close {
                session,
                identity,
                identity_key,
                ..
            } => {
                let owned = self.table().check_owner(session, identity_key);
                if let Err(e) = owned {
                    // SPEC §8.1.1: another identity's close closes nothing,
                    // and green relays nothing for it (nor drops the
                    // owner's pending orders).
                    self.counters.bump(e.counter());
                    warn!(identity = %identity, session = %hex16(session), reason = %e,
                        "refused: nothing closed");
                    return false;
                }
                self.counters.bump("accepted.close");
                let found = self.close_session(session, "closed by the client");
                info!(identity = %identity, session = %hex16(session), found, "accepted close");
                true
            }
        }
    }

    fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends a session: every element it owns, at every address, loses this
    /// owner (deleted if no other session owns it, else kept at the latest
    /// expiry of the others; SPEC §8.1.1), the connections of the elements
    /// deleted end (SPEC §9, "What revocation ends"), and the session is
    /// forgotten.
    pub fn close_session(&mut self, session: &[u8; 16], why: &str) -> bool {
        let now = now_ms();
        let closed = {
            let mut table = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            table.close(session, now, &mut self.fw)
        };
        let Some(closed) = closed else {
            return false;
        };
        let s = &closed.session;
        for (key, e) in &closed.errors {
            warn!(src = %key.addr, error = %e, "firewall: could not close {}/{}", key.proto, key.port);
        }
        // Only the elements no other session owns: the others' flows are
        // someone else's.
        for key in &closed.removed {
            self.end_flows(*key);
        }
        info!(src = %s.addr, identity = %s.identity, session = %hex16(session), "session closed: {why}");
        self.hooks.session_closed(session, now);
        true
    }

    fn handle_probe(&mut self, src: IpAddr, proto: Transport, port: u16, now: UnixMillis) {
        let ip = src.to_canonical();
        self.counters.bump("probes");
        // A SYN or UDP probe is trivially spoofed: a source with a recent
        // accepted datagram is not counted (SPEC §9).
        if self.lockout.shields(ip, now) {
            self.counters.bump("ips.shielded_probes");
            return;
        }
        if let Some(b) = self.scans.record_probe(ip, proto, port, now) {
            self.counters.bump("blocked.scan");
            self.block(ip, &b, now, "port scan");
        }
    }

    /// Blocks what the decision names: the offender's aggregate (an IPv6
    /// /64 by default, so that rotating addresses inside it does not get
    /// past the block), or the address alone when the aggregate overlaps the
    /// allowlist. Should the firewall have no set for that prefix length
    /// (its [`spa_nft::BlockPrefixes`] differ from the IPS aggregation),
    /// the address alone is blocked and a warning says so.
    fn block(&mut self, ip: IpAddr, b: &BlockDecision, now: UnixMillis, why: &str) {
        let until = b.until_ms;
        let secs = until.saturating_sub(now).div_ceil(1000).max(1);
        let timeout = Duration::from_secs(secs);
        let mut target = b.target;
        // SPEC §9: an off-path sender can forge any address of a client's
        // /64; a prefix holding a shielded client gets the offender alone.
        if target.prefix_len() < target.max_prefix_len() && self.lockout.shields_net(target, now) {
            debug!(src = %ip, prefix = %target, "a shielded client is in the prefix: blocking the address alone");
            target = IpNet::from(ip);
        }
        if let Err(e) = self.blocked.has_room(target, now) {
            self.block_refused("blocked.table_full", ip, target, &e, now);
            return;
        }
        let mut result = self.fw.block_net(target, timeout);
        if let Err(NftError::MissingSet { set, .. }) = &result
            && target != IpNet::from(ip)
        {
            warn!(src = %ip, prefix = %target, set = %set,
                "firewall: no set for blocks of this prefix length; blocking the address alone");
            target = IpNet::from(ip);
            result = self.fw.block_net(target, timeout);
        }
        match result {
            Ok(()) => match self.blocked.insert(target, ip, until, now) {
                Ok(()) => {
                    self.counters.bump("blocked");
                    warn!(src = %ip, blocked = %target, reason = why, block_s = secs, "blocked");
                }
                Err(e) => {
                    // The kernel has it; it ends on its own timeout.
                    self.block_refused("blocked.table_full", ip, target, &e, now);
                }
            },
            // The kernel set is full (its `size`, `[ips] max_blocks`):
            // nf_tables says ENFILE.
            Err(e) if e.errno() == Some(nix::errno::Errno::ENFILE) => {
                self.block_refused("blocked.set_full", ip, target, &e, now);
            }
            Err(e) => warn!(src = %ip, error = %e, "firewall: could not block"),
        }
    }

    /// A block that did not fit: counted every time, logged at warn at
    /// most every 10 s (a spoofed flood of scans must not flood the logs).
    fn block_refused(
        &mut self,
        counter: &str,
        ip: IpAddr,
        target: IpNet,
        e: &dyn std::fmt::Display,
        now: UnixMillis,
    ) {
        self.counters.bump(counter);
        if now.saturating_sub(self.last_full_warn_ms) >= 10_000 {
            self.last_full_warn_ms = now;
            warn!(src = %ip, blocked = %target, error = %e, max_blocks = self.blocked.max_blocks(),
                "not blocked: the block table is full; running blocks are kept");
        } else {
            debug!(src = %ip, blocked = %target, error = %e, "not blocked: the block table is full");
        }
    }

    fn housekeeping(&mut self, now: UnixMillis) {
        // Timers, not per batch: under a flood this runs after every
        // receive batch, and scanning every session or accepting on the
        // control socket each time would cost more than the datagrams.
        if now.saturating_sub(self.last_sweep_ms) >= 250 {
            self.last_sweep_ms = now;
            // Sessions whose every opening expired (the kernel already
            // removed the elements: an element's timeout is its latest
            // owner's, SPEC §8.1.1).
            let expired = self.table().expire(now);
            for id in &expired {
                debug!(session = %hex16(id), "session expired");
                self.hooks.session_closed(id, now);
            }
            self.blocked.expire(now);
            self.publish_metrics(now);
            if let Some(ctl) = self.control.take() {
                ctl.serve_pending(|req| self.control_request(req, now));
                self.control = Some(ctl);
            }
        }
        // SPEC §7.4: floors older than the freshness window are pruned (G is
        // raised first, durably), so the store does not grow forever.
        if now.saturating_sub(self.last_prune_ms) >= PRUNE_EVERY_MS {
            self.last_prune_ms = now;
            match self.db.prune(now, self.prune_max_age_ms) {
                Ok(r) if r.removed > 0 => info!(removed = r.removed, "replay store pruned"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "replay store pruning failed"),
            }
        }
        let dropped = self
            .capture
            .as_ref()
            .map_or(0, |c| c.stats().reassembly_dropped);
        let summary_due = now.saturating_sub(self.last_summary_ms) >= 10_000;
        if summary_due && dropped > self.reassembly_dropped_logged {
            // Fragments that never made a datagram: a knock sent over a
            // small-MTU path may be among them, so the loss is visible.
            warn!(
                count = dropped - self.reassembly_dropped_logged,
                "fragmented datagrams dropped unreassembled (timeout, overlap, size or table limit) in the last period"
            );
            self.reassembly_dropped_logged = dropped;
            self.last_summary_ms = now;
        }
        if self.quiet_refusals > 0 && summary_due {
            info!(
                count = self.quiet_refusals,
                "refused datagrams before the pre-check MAC in the last period"
            );
            self.quiet_refusals = 0;
            self.last_summary_ms = now;
        }
        let hup = self.flags.reload.swap(false, Ordering::Relaxed);
        let changed = now.saturating_sub(self.last_stamp_check_ms) >= TRUST_POLL_MS && {
            self.last_stamp_check_ms = now;
            self.counters.bump("trust.checks");
            self.trust.changed()
        };
        if hup || changed {
            self.reload_trust(if hup {
                "SIGHUP"
            } else {
                "a trust file changed"
            });
        }
        self.hooks.tick(now);
    }

    /// Reloads anchors, intermediates and CRLs; on error keeps the old ones,
    /// counts `trust.reload_failures`, logs at error level and keeps the
    /// failure for `status` until a reload succeeds.
    pub fn reload_trust(&mut self, why: &str) {
        // One trust store per verifier (the loop's and each worker's),
        // all read before any is replaced: all or none.
        let copies = 1 + self.pool.as_ref().map_or(0, Pool::len);
        let loaded: Result<Vec<_>, _> = (0..copies).map(|_| self.trust.load()).collect();
        match loaded.map(|mut v| (v.pop(), v)) {
            Ok((Some(store), rest)) => {
                if let Some(pool) = self.pool.as_ref() {
                    pool.replace_trust(rest);
                }
                self.gate.replace_trust(store);
                self.counters.bump("trust.reloads");
                self.trust.last_failure = None;
                info!(trigger = why, "trust anchors and CRLs reloaded");
                self.close_revoked(now_ms());
            }
            Ok((None, _)) => {}
            Err(e) => {
                self.counters.bump("trust.reload_failures");
                let file = e.path().map(Path::to_path_buf);
                error!(trigger = why, file = ?file, error = %e,
                    "trust reload failed; keeping the previous trust store (revocations since are NOT applied)");
                self.trust.last_failure = Some(ReloadFailure {
                    file,
                    error: e.to_string(),
                    at_ms: now_ms(),
                    trigger: why.to_owned(),
                });
            }
        }
    }

    /// The status report.
    pub fn status(&self, now: UnixMillis) -> Value {
        let (sessions, openings) = self.table().status(now);
        let mut counters = self.counters.all();
        counters.extend(self.hooks.counters());
        if let Some(s) = &self.shared {
            counters.extend(s.counters());
        }
        let mut status = json!({
            "uptime_s": now.saturating_sub(self.started_ms) / 1000,
            "sessions": sessions,
            "openings": openings,
            "blocked": self.blocked.status(now),
            "counters": counters,
            "replay": self.shared.as_ref().map_or_else(
                || json!({"backend": "local"}),
                |s| s.status(now),
            ),
            "trust": {
                "last_reload_failure": self.trust.last_failure.as_ref().map(|f| json!({
                    "file": f.file.as_ref().map(|p| p.display().to_string()),
                    "error": f.error,
                    "trigger": f.trigger,
                    "at_ms": f.at_ms,
                    "age_s": now.saturating_sub(f.at_ms) / 1000,
                })),
            },
            // SPEC §7.3.1: the durable reservation (null: every knock
            // synced) and the floors accepted but not yet written.
            "replay_store": {
                "identities": self.db.len(),
                "global_floor": self.db.global(),
                "reserved": self.db.reservation(),
                "unwritten_floors": self.db.dirty(),
            },
            "capture": self.capture.as_ref().map(|c| {
                let st = c.stats();
                json!({
                    "frames": st.frames,
                    "knocks": st.knocks,
                    "probes": st.probes,
                    "malformed": st.malformed,
                    "kernel_drops": st.kernel_drops,
                    "fragments": st.fragments,
                    "reassembled": st.reassembled,
                    "reassembly_dropped": st.reassembly_dropped,
                })
            }),
        });
        if let Value::Object(map) = &mut status {
            self.hooks.status(map, now);
        }
        status
    }

    fn control_request(&mut self, req: &Value, now: UnixMillis) -> Value {
        match req["cmd"].as_str() {
            Some("status") => json!({"ok": true, "status": self.status(now)}),
            Some("revoke-session") => {
                let id = req["session"]
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| <[u8; 16]>::try_from(b).ok());
                match id {
                    Some(id) if self.close_session(&id, "revoked by the operator") => {
                        self.counters.bump("sessions.revoked");
                        json!({"ok": true})
                    }
                    Some(_) => json!({"ok": false, "error": "no such session"}),
                    None => json!({"ok": false, "error": "session must be 32 hex digits"}),
                }
            }
            _ => json!({"ok": false, "error": "unknown command"}),
        }
    }

    /// Refusal counter value (tests).
    pub fn refusals(&self, r: &Refusal) -> u64 {
        self.counters.get_refusal(r)
    }
}
