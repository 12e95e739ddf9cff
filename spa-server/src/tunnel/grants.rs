//! The tunnel's grants: its view of the daemon's one session table (SPEC
//! §8.1.1, §12), and the hooks through which the daemon loop tells it a
//! session ended.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proto_spec::UnixMillis;
use proto_spec::cert::IdentityKey;
use spa_daemon::daemon::Hooks;
use spa_daemon::gate::Decision;
use spa_daemon::sessions::{SessionTable, SharedSessions};
use tracing::info;

/// A served connection's sockets: the client's and the service's.
pub(super) type Sockets = Vec<Arc<TcpStream>>;

/// The tunnel's view of the daemon's session table (SPEC §8.1.1, §12):
/// what is granted is read from the one [`SessionTable`] the daemon loop
/// writes (no second set of rules), and the sockets of the connections each
/// session serves are kept here, shut down when the session ends.
#[derive(Debug, Default)]
pub struct Grants {
    pub(super) table: SharedSessions,
    /// Per session: connection number and its sockets (clones), shut down
    /// when the session ends.
    conns: HashMap<[u8; 16], Vec<(u64, Sockets)>>,
    next_conn: u64,
}

impl Grants {
    /// The grants of `table`.
    pub fn new(table: SharedSessions) -> Self {
        Self {
            table,
            conns: HashMap::new(),
            next_conn: 0,
        }
    }

    fn table(&self) -> MutexGuard<'_, SessionTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shuts down the connections a session served (it ended in the
    /// table). Returns how many connections were cut.
    pub fn close(&mut self, session: &[u8; 16]) -> usize {
        let conns = self.conns.remove(session).unwrap_or_default();
        for (_, socks) in &conns {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        conns.len()
    }

    /// Records a served connection's sockets under `session`; `None` when
    /// the session has ended meanwhile. (Lock order: grants, then table;
    /// the daemon forgets a session in the table before it calls
    /// [`Grants::close`], so a connection is either refused here or cut.)
    pub(super) fn attach(&mut self, session: &[u8; 16], socks: Sockets) -> Option<u64> {
        if !self.table().contains(session) {
            return None;
        }
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.entry(*session).or_default().push((id, socks));
        Some(id)
    }

    /// Forgets a connection that ended.
    pub(super) fn detach(&mut self, session: &[u8; 16], id: u64) {
        if let Some(v) = self.conns.get_mut(session) {
            v.retain(|(c, _)| *c != id);
            if v.is_empty() {
                self.conns.remove(session);
            }
        }
    }

    /// Whether `identity` has an open tunnel for `addr`.
    pub fn tunnel_open(&self, addr: IpAddr, identity: &IdentityKey, now: UnixMillis) -> bool {
        self.table().tunnel_open(addr, identity, now)
    }

    /// Whether `service` was granted to `identity` for `addr`.
    pub fn service_granted(
        &self,
        addr: IpAddr,
        identity: &IdentityKey,
        service: &str,
        now: UnixMillis,
    ) -> bool {
        self.session_for(addr, identity, service, now).is_some()
    }

    /// The session that granted `service` to `identity` for `addr`
    /// (preferring one with an open tunnel).
    pub fn session_for(
        &self,
        addr: IpAddr,
        identity: &IdentityKey,
        service: &str,
        now: UnixMillis,
    ) -> Option<[u8; 16]> {
        self.table().session_for(addr, identity, service, now)
    }

    /// Connections being served (all sessions).
    pub fn connections(&self) -> usize {
        self.conns.values().map(Vec::len).sum()
    }
}

/// The shared session table.
pub type SharedGrants = Arc<Mutex<Grants>>;

/// The daemon side: feeds [`Grants`] from the loop.
#[derive(Debug, Clone)]
pub struct TunnelHooks {
    /// The table.
    pub grants: SharedGrants,
    /// Tunnel connections whose every connect attempt to a service on red
    /// failed (`relay.tunnel_unreachable`): after green relayed the order,
    /// red never opened (SPEC §9, red refused or never got the order).
    pub red_unreachable: Arc<AtomicU64>,
}

impl Hooks for TunnelHooks {
    /// The daemon already wrote the decision into the shared table.
    fn after_decision(&mut self, _: &Decision, _: SocketAddr, _: UnixMillis) {}

    fn counters(&self) -> Vec<(String, u64)> {
        vec![(
            "relay.tunnel_unreachable".to_owned(),
            self.red_unreachable.load(Ordering::Relaxed),
        )]
    }

    fn session_closed(&mut self, session: &[u8; 16], _now: UnixMillis) {
        let cut = self
            .grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close(session);
        if cut > 0 {
            info!(
                session = %hex::encode(session),
                connections = cut,
                "tunnel: session ended, its connections were shut down"
            );
        }
    }
}
