//! What revocation ends (SPEC §9, "What revocation ends"): when a session
//! closes (its client's close, the operator's `revoke-session`, or a CRL
//! that revokes its certificate), the connections its openings admitted
//! end too, and a trust reload closes every session whose certificate no
//! longer validates.
//!
//! The firewall's `ct state established,related accept` keeps an ongoing
//! connection alive after its set element is gone; that is what a knock's
//! expiry should do, but not what a revocation should do. So a close
//! deletes the connection-tracking entries of the flows the opening
//! admitted (source = the session's address, that protocol and destination
//! port): the next packet of such a connection is no longer
//! `established`, finds no element, and is dropped by the blackhole.

use std::sync::PoisonError;

use proto_spec::UnixMillis;
use tracing::{info, warn};

use crate::daemon::{Daemon, Hooks};
use crate::gate::Gate;
use crate::sessions::{ElemKey, SessionId};

/// The reason logged for sessions a trust reload closes.
pub const CERTIFICATE_REVOKED: &str = "certificate revoked";

impl<G: Gate, H: Hooks> Daemon<G, H> {
    /// Ends the connections an element admitted: called by the close path
    /// for every element it actually deleted (an element another live
    /// session still owns keeps its flows, SPEC §8.1.1).
    pub(crate) fn end_flows(&mut self, key: ElemKey) {
        let ElemKey { addr, proto, port } = key;
        match self.fw.end_flows(addr, proto, port) {
            Ok(0) => {}
            Ok(n) => {
                self.counters.add("sessions.flows_ended", n as u64);
                info!(src = %addr, proto = %proto, port, flows = n, "connections ended");
            }
            Err(e) => {
                self.counters.bump("sessions.flow_end_failures");
                warn!(src = %addr, proto = %proto, port, error = %e,
                    "conntrack: could not end the connections of a closed opening");
            }
        }
    }

    /// After a successful trust reload: closes every session whose client
    /// certificate no longer validates (revoked by a new CRL, or its chain
    /// gone), with reason [`CERTIFICATE_REVOKED`]. Returns how many.
    pub fn close_revoked(&mut self, now: UnixMillis) -> usize {
        let stale: Vec<(SessionId, String)> = {
            let table = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            table
                .iter()
                .filter_map(|(id, s)| {
                    self.gate
                        .revalidate(&s.certificate, now)
                        .err()
                        .map(|e| (*id, e.code().to_owned()))
                })
                .collect()
        };
        for (id, reason) in &stale {
            if let Some(s) = self
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(id)
            {
                warn!(src = %s.addr, identity = %s.identity, certificate = %reason,
                    "closing a session whose certificate no longer validates");
            }
            if self.close_session(id, CERTIFICATE_REVOKED) {
                self.counters.bump("sessions.revoked_by_trust");
            }
        }
        stale.len()
    }
}
