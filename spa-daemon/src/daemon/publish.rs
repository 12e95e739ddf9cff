//! The loop's side of `[metrics]`: counters, gauges and the hooks'
//! sections copied into the Prometheus registry on the sweep timer.

use std::sync::PoisonError;

use proto_spec::UnixMillis;

use super::{Daemon, Hooks};
use crate::gate::Gate;

impl<G: Gate, H: Hooks> Daemon<G, H> {
    /// Publishes the counters, gauges and hooks' sections into the
    /// metrics registry (on the sweep timer, never per knock).
    pub(super) fn publish_metrics(&mut self, now: UnixMillis) {
        let Some(m) = self.metrics.as_mut() else {
            return;
        };
        let mut counters = self.counters.all();
        for (k, v) in self.hooks.counters() {
            *counters.entry(k).or_insert(0) += v;
        }
        if let Some(s) = &self.shared {
            counters.extend(s.counters());
        }
        let mut hooks = serde_json::Map::new();
        self.hooks.status(&mut hooks, now);
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        m.publish(&counters, sessions, self.blocked.len(), &hooks);
    }
}
