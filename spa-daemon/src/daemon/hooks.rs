//! What a daemon adds to the shared loop ([`Hooks`]): green's relay and
//! tunnel; red adds nothing ([`NoHooks`]).

use std::net::SocketAddr;

use proto_spec::UnixMillis;
use serde_json::Value;

use crate::gate::Decision;

/// Hooks a daemon adds to the shared loop (green relays orders to red).
pub trait Hooks {
    /// Called after an accepted decision was applied to the firewall; not
    /// for one the session table refused (another identity's session id,
    /// SPEC §8.1.1).
    fn after_decision(&mut self, decision: &Decision, source: SocketAddr, now: UnixMillis);
    /// Called when a session ends: closed by its client, revoked by the
    /// operator, or every opening expired.
    fn session_closed(&mut self, _session: &[u8; 16], _now: UnixMillis) {}
    /// Called on every loop turn (timers).
    fn tick(&mut self, _now: UnixMillis) {}
    /// The hooks' own counters, reported by `status` beside the daemon's.
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// The hooks' own sections of `status` (green's relay: `relay`, one
    /// entry per red).
    fn status(&self, _out: &mut serde_json::Map<String, Value>, _now: UnixMillis) {}
}

/// No hooks.
#[derive(Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn after_decision(&mut self, _: &Decision, _: SocketAddr, _: UnixMillis) {}
}

impl<H: Hooks> Hooks for Option<H> {
    fn after_decision(&mut self, d: &Decision, source: SocketAddr, now: UnixMillis) {
        if let Some(h) = self {
            h.after_decision(d, source, now);
        }
    }
    fn session_closed(&mut self, session: &[u8; 16], now: UnixMillis) {
        if let Some(h) = self {
            h.session_closed(session, now);
        }
    }
    fn tick(&mut self, now: UnixMillis) {
        if let Some(h) = self {
            h.tick(now);
        }
    }
    fn counters(&self) -> Vec<(String, u64)> {
        self.as_ref().map(Hooks::counters).unwrap_or_default()
    }
    fn status(&self, out: &mut serde_json::Map<String, Value>, now: UnixMillis) {
        if let Some(h) = self {
            h.status(out, now);
        }
    }
}

/// Two sets of hooks, in order.
impl<A: Hooks, B: Hooks> Hooks for (A, B) {
    fn after_decision(&mut self, d: &Decision, source: SocketAddr, now: UnixMillis) {
        self.0.after_decision(d, source, now);
        self.1.after_decision(d, source, now);
    }
    fn session_closed(&mut self, session: &[u8; 16], now: UnixMillis) {
        self.0.session_closed(session, now);
        self.1.session_closed(session, now);
    }
    fn tick(&mut self, now: UnixMillis) {
        self.0.tick(now);
        self.1.tick(now);
    }
    fn counters(&self) -> Vec<(String, u64)> {
        let mut v = self.0.counters();
        v.extend(self.1.counters());
        v
    }
    fn status(&self, out: &mut serde_json::Map<String, Value>, now: UnixMillis) {
        self.0.status(out, now);
        self.1.status(out, now);
    }
}
