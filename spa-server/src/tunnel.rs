//! Green's mutual-TLS tunnel endpoint (`[tunnel]`, SPEC §12).
//!
//! A TLS 1.3 listener (rustls, ring) on `[tunnel] listen_port`, on threads
//! of its own: the capture loop never waits for it. The port is the
//! `[[services]]` entry `[tunnel] service`, which nftables opens only for
//! the address of an accepted open-tunnel knock.
//!
//! A connection is served when:
//!
//! 1. the client certificate validates against the `[trust]` anchors and
//!    CRLs (rustls's `WebPkiClientVerifier`; each connection checks the
//!    files' modification time, size and inode and reads them again when
//!    one changed, so a new CRL applies at once), and
//! 2. the SHA-256 of its SPKI ([`IdentityKey`]) is the identity of an open
//!    tunnel session for the connection's source address: an open-tunnel
//!    knock of that identity for that address, not expired and not closed
//!    (read from the daemon's own session table through [`Grants`]: one
//!    table, so a close, expiry or revoke there is one here; SPEC §8.1.1).
//!
//! Framing inside the tunnel: the client sends one line `CONNECT
//! <service>\n`; green answers `OK\n` or `ERR <reason>\n`. The service must
//! have been granted to the same identity and address by an accepted
//! request-service (or open-tunnel) knock, at most [`GRANT_PATIENCE`]
//! after the line arrived (the knock and the connection race). Its target is a TCP service of
//! `[relay] services` with a port (red's address and that port, connected
//! from `[relay] source`, which red opened for) or a green-local
//! `[[services]]` TCP entry (`127.0.0.1:port`). Red may open a moment after
//! the knock: the connect is retried for [`CONNECT_PATIENCE`]. Then both
//! directions are spliced until both ends have closed.
//!
//! The TLS data path is [`spa_tunnel::TlsPipe`] (rustls's unbuffered API
//! over poll(2), shared with `spa-client connect`): one thread per
//! connection, at most `[tunnel] max_connections` at once and
//! `max_connections_per_source` per client address; beyond, a new
//! connection is closed at once.
//!
//! A served connection belongs to the session that granted its service:
//! when that session ends (a close knock, `revoke-session`, or its
//! openings expire; [`Hooks::session_closed`]), both of its sockets (the
//! client's and the service's) are shut down, which ends the splice.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use proto_spec::UnixMillis;
use proto_spec::cert::{ExpiredCrl, IdentityKey, UnknownRevocation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use spa_tunnel::TlsPipe;
use tracing::{debug, info, warn};

use spa_daemon::config::{Config, RelayService, ServiceProto, parse_proto};
use spa_daemon::daemon::{Hooks, now_ms, trust_files};
use spa_daemon::gate::Decision;
use spa_daemon::sessions::{SessionTable, SharedSessions};
use spa_pki::TrustFiles;

/// How long green keeps trying to reach a service (red opens after the
/// order arrives).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// How long a CONNECT waits for its request-service knock to be accepted.
pub const GRANT_PATIENCE: Duration = Duration::from_secs(3);

/// Handshake and request-line timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read (and dropped) from a refused client so that closing does not
/// reset the connection before it has read the answer.
const MAX_DRAINED: usize = 64 * 1024;

/// Stack of a connection thread: the handshake (certificate path and CRL
/// checks) and the splice need far less; Rust's default is 2 MiB.
const CONNECTION_STACK: usize = 512 * 1024;

/// First attempt's timeout to reach a service; it doubles per attempt.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Why the tunnel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A file or value of `[tunnel]` or `[trust]`.
    #[error("{0}")]
    Config(String),
    /// The listener.
    #[error("cannot listen on tcp port {port}: {source}")]
    Listen {
        /// Port.
        port: u16,
        /// Why.
        source: io::Error,
    },
}

/// A served connection's sockets: the client's and the service's.
type Sockets = Vec<Arc<TcpStream>>;

/// The tunnel's view of the daemon's session table (SPEC §8.1.1, §12):
/// what is granted is read from the one [`SessionTable`] the daemon loop
/// writes (no second set of rules), and the sockets of the connections each
/// session serves are kept here, shut down when the session ends.
#[derive(Debug, Default)]
pub struct Grants {
    table: SharedSessions,
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
    fn attach(&mut self, session: &[u8; 16], socks: Sockets) -> Option<u64> {
        if !self.table().contains(session) {
            return None;
        }
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.entry(*session).or_default().push((id, socks));
        Some(id)
    }

    /// Forgets a connection that ended.
    fn detach(&mut self, session: &[u8; 16], id: u64) {
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

/// Where a service is reached from green.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Address and port.
    pub addr: SocketAddr,
    /// Local address to connect from (`[relay] source`); set exactly for
    /// the services on red.
    pub bind: Option<IpAddr>,
}

impl Target {
    /// Whether the service is on red (reached from `[relay] source`).
    pub fn on_red(&self) -> bool {
        self.bind.is_some()
    }
}

/// The services the tunnel reaches: `[relay]` TCP services with a port,
/// then green-local `[[services]]` TCP entries (not the tunnel's own).
pub fn targets(cfg: &Config) -> HashMap<String, Target> {
    let mut m = HashMap::new();
    let tunnel_service = cfg.tunnel.as_ref().map(|t| t.service.as_str());
    for s in &cfg.services {
        if Some(s.name.as_str()) != tunnel_service
            && parse_proto(&s.proto) == Some(ServiceProto::Tcp)
        {
            m.insert(
                s.name.clone(),
                Target {
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), s.port),
                    bind: None,
                },
            );
        }
    }
    // Each red's services, reached from green's own address toward that red.
    for r in cfg.relay.iter() {
        let Ok(red) = r.red.parse::<SocketAddr>() else {
            continue;
        };
        let source = r.source.parse::<IpAddr>().ok();
        for s in &r.services {
            if let RelayService::Port(p) = s
                && parse_proto(&p.proto) == Some(ServiceProto::Tcp)
            {
                m.insert(
                    p.name.clone(),
                    Target {
                        addr: SocketAddr::new(red.ip(), p.port),
                        bind: source,
                    },
                );
            }
        }
    }
    m
}

/// The server's certificate chain and key, read once (before privileges
/// are dropped).
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn read_identity(cert: &Path, key: &Path) -> Result<Identity, TunnelError> {
    let chain: Vec<CertificateDer<'static>> = spa_keys::read_certificates(cert)
        .map_err(|e| TunnelError::Config(format!("tunnel.certificate: {e}")))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if chain.is_empty() {
        return Err(TunnelError::Config(format!(
            "tunnel.certificate: {}: no certificate",
            cert.display()
        )));
    }
    let bytes = spa_keys::read_secret_file(key)
        .map_err(|e| TunnelError::Config(format!("tunnel.key: {e}")))?;
    let key = if bytes.starts_with(b"-----") {
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| TunnelError::Config(format!("tunnel.key: {}: {e}", key.display())))?
    } else {
        PrivateKeyDer::Pkcs8(bytes.to_vec().into())
    };
    Ok(Identity { chain, key })
}

/// A TLS 1.3 server configuration verifying clients against the trust
/// files.
fn server_config(id: &Identity, trust: &TrustFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for p in &trust.cas {
        for der in spa_keys::read_certificates(p).map_err(|e| e.to_string())? {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let mut crls = Vec::new();
    for p in &trust.crls {
        for der in spa_keys::read_crls(p).map_err(|e| e.to_string())? {
            crls.push(CertificateRevocationListDer::from(der));
        }
    }
    let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls);
    if trust.unknown_revocation == UnknownRevocation::Allow {
        b = b.allow_unknown_revocation_status();
    }
    if trust.expired_crl == ExpiredCrl::Refuse {
        b = b.enforce_revocation_expiration();
    }
    let verifier = b.build().map_err(|e| e.to_string())?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| format!("tunnel certificate and key: {e}"))?;
    // Nothing resumes (each `connect` is a new process), and tickets
    // would be post-handshake messages for nothing.
    let mut cfg = cfg;
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// A trust file's modification time, size and inode (`None`: unreadable).
type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The state of every trust file, in order.
fn stamps(trust: &TrustFiles) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    trust
        .cas
        .iter()
        .chain(&trust.intermediates)
        .chain(&trust.crls)
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        })
        .collect()
}

/// The running endpoint's shared state.
struct Shared {
    id: Identity,
    trust: TrustFiles,
    /// The last configuration built, and the trust files' state it was
    /// built from: rebuilt when a file changes; kept when the files cannot
    /// be read again (e.g. after privileges were dropped).
    config: Mutex<(Arc<ServerConfig>, Vec<FileStamp>)>,
    grants: SharedGrants,
    targets: HashMap<String, Target>,
    active: AtomicUsize,
    /// See [`TunnelHooks::red_unreachable`].
    red_unreachable: Arc<AtomicU64>,
    /// Connections per client address.
    per_source: Mutex<HashMap<IpAddr, usize>>,
    max_connections: usize,
    max_per_source: usize,
}

impl Shared {
    /// The endpoint's state: the first TLS configuration built from the
    /// trust files, no sessions, no connections.
    fn new(
        id: Identity,
        trust: TrustFiles,
        targets: HashMap<String, Target>,
        max_connections: usize,
        max_per_source: usize,
        sessions: SharedSessions,
    ) -> Result<Self, String> {
        let config = Mutex::new((server_config(&id, &trust)?, stamps(&trust)));
        Ok(Self {
            id,
            trust,
            config,
            grants: Arc::new(Mutex::new(Grants::new(sessions))),
            targets,
            active: AtomicUsize::new(0),
            red_unreachable: Arc::default(),
            per_source: Mutex::default(),
            max_connections,
            max_per_source,
        })
    }

    /// A configuration from the trust files as they are now, else the last
    /// one.
    /// Counts a new connection from `ip`, unless a cap is reached.
    fn admit(&self, ip: IpAddr) -> bool {
        let mut per = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = per.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return false;
        }
        if self.active.fetch_add(1, Ordering::SeqCst) >= self.max_connections {
            self.active.fetch_sub(1, Ordering::SeqCst);
            if *n == 0 {
                per.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets a connection counted by [`Self::admit`].
    fn release(&self, ip: IpAddr) {
        let mut per = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&ip);
            }
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn current_config(&self) -> Arc<ServerConfig> {
        let mut last = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let stamps = stamps(&self.trust);
        if stamps != last.1 {
            match server_config(&self.id, &self.trust) {
                Ok(c) => *last = (c, stamps),
                Err(e) => {
                    debug!(error = %e, "tunnel: trust files not reloaded, using the last ones");
                }
            }
        }
        Arc::clone(&last.0)
    }
}

/// The tunnel, bound but not serving yet: [`bind`] opens the listener and
/// reads the server key before privileges are dropped; [`Bound::serve`]
/// starts its threads after the drop, so that every thread that reads TLS
/// from the network runs with the dropped privileges (capabilities and
/// no_new_privs are per thread).
pub struct Bound {
    listener: TcpListener,
    shared: Arc<Shared>,
    port: u16,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Reads the server key and opens the listener (both need privileges),
/// without starting any thread. `None` without a `[tunnel]` section.
pub fn bind(cfg: &Config, sessions: &SharedSessions) -> Result<Option<Bound>, TunnelError> {
    let Some(t) = &cfg.tunnel else {
        return Ok(None);
    };
    let shared = Arc::new(
        Shared::new(
            read_identity(&t.certificate, &t.key)?,
            trust_files(cfg),
            targets(cfg),
            t.max_connections,
            t.max_connections_per_source,
            Arc::clone(sessions),
        )
        .map_err(TunnelError::Config)?,
    );
    let listener = listen(t.listen_port).map_err(|source| TunnelError::Listen {
        port: t.listen_port,
        source,
    })?;
    raise_fd_limit(t.max_connections);
    Ok(Some(Bound {
        listener,
        shared,
        port: t.listen_port,
    }))
}

impl Bound {
    /// Serves on a thread of its own (call it after the privilege drop).
    /// Returns the hooks the daemon loop runs.
    pub fn serve(self) -> Result<TunnelHooks, TunnelError> {
        let Self {
            listener,
            shared,
            port,
        } = self;
        let grants = shared.grants.clone();
        let red_unreachable = Arc::clone(&shared.red_unreachable);
        info!(port, services = %{
            let mut v: Vec<_> = shared.targets.keys().cloned().collect();
            v.sort();
            v.join(",")
        }, "tunnel listening");
        std::thread::Builder::new()
            .name("tunnel-accept".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|e| TunnelError::Config(format!("tunnel thread: {e}")))?;
        Ok(TunnelHooks {
            grants,
            red_unreachable,
        })
    }
}

fn listen(port: u16) -> io::Result<TcpListener> {
    let v6 = || -> io::Result<TcpListener> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(SocketAddr::from(([0u16; 8], port))))?;
        s.listen(128)?;
        Ok(s.into())
    };
    v6().or_else(|_| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "tunnel: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if !shared.admit(ip) {
            warn!(src = %ip, "tunnel: too many connections, closed");
            continue;
        }
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("tunnel-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                match serve(&s, stream, ip) {
                    Ok(()) => debug!(src = %ip, "tunnel: connection ended"),
                    Err(e) => info!(src = %ip, reason = %e, "tunnel: connection closed"),
                }
                s.release(ip);
            });
        if let Err(e) = spawned {
            warn!(src = %ip, error = %e, "tunnel: no thread for the connection, closed");
            shared.release(ip);
        }
    }
}

/// Why a tunnel connection was closed (logged with the client's address).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    /// The TLS connection (handshake, certificate, I/O, timeouts).
    #[error("{0}")]
    Pipe(#[from] spa_tunnel::Error),
    /// Socket set-up.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The client certificate could not be parsed for its identity.
    #[error("unreadable client certificate")]
    Certificate,
    /// No open-tunnel session of this identity for this address.
    #[error("identity {0} has no open tunnel session for this address")]
    NoSession(String),
    /// The first line is not `CONNECT <service>`.
    #[error("not a CONNECT line")]
    BadLine,
    /// The service was not granted in time.
    #[error("service '{0}' not granted")]
    NotGranted(String),
    /// The service has no target.
    #[error("service '{0}' has no tunnel target")]
    UnknownService(String),
    /// The service could not be reached.
    #[error("service '{service}' at {addr}: {source}")]
    Unreachable {
        /// Service.
        service: String,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The session ended before the service was connected.
    #[error("service '{0}': the session ended meanwhile")]
    SessionEnded(String),
}

fn serve(shared: &Shared, tcp: TcpStream, ip: IpAddr) -> Result<(), ServeError> {
    tcp.set_nodelay(true)?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let conn = UnbufferedServerConnection::new(shared.current_config())
        .map_err(spa_tunnel::Error::from)?;
    let mut pipe = TlsPipe::new(conn, tcp)?;
    pipe.handshake(deadline)?;
    let identity = pipe
        .connection()
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|cert| identity_of(cert))
        .ok_or(ServeError::Certificate)?;
    let granted = |f: &dyn Fn(&Grants) -> bool| {
        f(&shared.grants.lock().unwrap_or_else(PoisonError::into_inner))
    };
    if !granted(&|g| g.tunnel_open(ip, &identity, now_ms())) {
        refuse(
            &mut pipe,
            "no open tunnel session for this identity and address",
        );
        return Err(ServeError::NoSession(hex::encode(&identity.0[..8])));
    }
    let line = pipe.read_line(deadline)?;
    let Some(service) = line
        .strip_prefix("CONNECT ")
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .map(str::to_owned)
    else {
        refuse(&mut pipe, "not a CONNECT line");
        return Err(ServeError::BadLine);
    };
    // The request-service knock is one UDP datagram sent just before the
    // connection: give the capture loop a moment to accept it.
    let patience = Instant::now() + GRANT_PATIENCE;
    while !granted(&|g| g.service_granted(ip, &identity, &service, now_ms()))
        && Instant::now() < patience
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !granted(&|g| g.service_granted(ip, &identity, &service, now_ms())) {
        refuse(&mut pipe, "service not granted");
        return Err(ServeError::NotGranted(service));
    }
    let Some(target) = shared.targets.get(&service).copied() else {
        refuse(&mut pipe, "unknown service");
        return Err(ServeError::UnknownService(service));
    };
    let upstream = match connect(target) {
        Ok(s) => Arc::new(s),
        Err(source) => {
            if target.on_red() {
                // Green relayed the order, yet red never opened: red
                // refused it (or never got it), or the service is down.
                shared.red_unreachable.fetch_add(1, Ordering::Relaxed);
                warn!(src = %ip, service = %service, red = %target.addr, error = %source,
                    "tunnel: red never opened the service for green (a probe that never opens)");
            }
            refuse(&mut pipe, "service unreachable");
            return Err(ServeError::Unreachable {
                service,
                addr: target.addr,
                source,
            });
        }
    };
    let registered = granted_session(shared, ip, &identity, &service).and_then(|sid| {
        let socks = vec![Arc::clone(pipe.socket()), Arc::clone(&upstream)];
        shared
            .grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attach(&sid, socks)
            .map(|id| Registered {
                grants: &shared.grants,
                session: sid,
                id,
            })
    });
    let Some(_registered) = registered else {
        refuse(&mut pipe, "session ended");
        return Err(ServeError::SessionEnded(service));
    };
    pipe.write_all(b"OK\n", deadline)?;
    info!(src = %ip, service = %service, target = %target.addr, "tunnel: connected");
    upstream.set_nonblocking(true)?;
    let mut up_r: &TcpStream = &upstream;
    let mut up_w: &TcpStream = &upstream;
    pipe.splice(&mut up_r, &mut up_w, false, |w| {
        let _ = w.shutdown(Shutdown::Write);
    })?;
    Ok(())
}

fn granted_session(
    shared: &Shared,
    ip: IpAddr,
    identity: &IdentityKey,
    service: &str,
) -> Option<[u8; 16]> {
    shared
        .grants
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .session_for(ip, identity, service, now_ms())
}

/// A connection's entry in [`Grants`], removed when it ends.
struct Registered<'a> {
    grants: &'a SharedGrants,
    session: [u8; 16],
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .detach(&self.session, self.id);
    }
}

/// Answers `ERR <why>` and closes, best effort, within a second.
fn refuse(pipe: &mut TlsPipe<UnbufferedServerConnection>, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    if pipe
        .write_all(format!("ERR {why}\n").as_bytes(), deadline)
        .is_err()
    {
        return;
    }
    pipe.close(deadline);
    // A lingering close: closing with unread input would reset the
    // connection and could discard the answer at the client.
    let sock = Arc::clone(pipe.socket());
    if sock.set_nonblocking(false).is_err()
        || sock.set_read_timeout(Some(Duration::from_secs(1))).is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = MAX_DRAINED;
    while left > 0 {
        match (&*sock).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The SPKI hash of a DER certificate.
pub fn identity_of(cert: &[u8]) -> Option<IdentityKey> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(IdentityKey::from_spki_der(
        c.tbs_certificate.subject_pki.raw,
    ))
}

/// Connects to a service. Red opens for green a moment after the order
/// reached it, and drops SYNs until then: attempts start with a short
/// timeout that doubles each time (so a slow path still gets long ones),
/// until [`CONNECT_PATIENCE`].
fn connect(t: Target) -> io::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    let mut timeout = FIRST_CONNECT_TIMEOUT;
    loop {
        let attempt = |timeout: Duration| -> io::Result<TcpStream> {
            let s = Socket::new(
                Domain::for_address(t.addr),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            if let Some(b) = t.bind {
                s.bind(&SockAddr::from(SocketAddr::new(b, 0)))?;
            }
            s.connect_timeout(&SockAddr::from(t.addr), timeout)?;
            s.set_tcp_nodelay(true)?;
            Ok(s.into())
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match attempt(timeout.min(left).max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Red answers RSTs only when its firewall lets the SYN
                // in and nothing listens: wait a little before the next.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => {}
        }
        timeout = (timeout * 2).min(Duration::from_secs(2));
    }
}

/// Raises the soft limit on open files to the hard limit when the
/// connection cap needs more (two sockets per connection).
fn raise_fd_limit(max_connections: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    match spa_tunnel::raise_open_file_limit(want) {
        Ok((old, new)) => {
            if new > old {
                debug!(from = old, to = new, "tunnel: open-file limit raised");
            }
            if new < want {
                warn!(
                    limit = new,
                    max_connections,
                    "tunnel: the open-file limit is below what max_connections needs"
                );
            }
        }
        Err(e) => warn!(error = %e, "tunnel: cannot raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::body::MessageType;
    use proto_spec::cert::{ExpiredCrl, UnknownRevocation};
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection};
    use spa_daemon::sessions::NoFirewall;
    use spa_pki::{self as pki, CaAlgorithm, InitOptions, IssueRequest, SubjectKey, Usage};
    use std::io::Write;
    use std::path::PathBuf;

    struct Pki {
        _dir: tempfile::TempDir,
        ca_der: Vec<u8>,
        shared: Arc<Shared>,
    }

    fn issue(ca: &pki::Ca, key: &KeyPair, name: &str, usage: Usage) -> Vec<u8> {
        let csr = CertificateParams::new(vec![])
            .expect("params")
            .serialize_request(key)
            .expect("csr");
        let now = time::OffsetDateTime::now_utc();
        ca.issue(
            &IssueRequest {
                key: SubjectKey::Csr {
                    path: "req.csr".into(),
                    der: csr.der().to_vec(),
                },
                name: name.into(),
                emails: vec![],
                dns: vec![],
                ips: if usage == Usage::Server {
                    vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
                } else {
                    vec![]
                },
                days: 1,
                usage,
            },
            now,
        )
        .expect("issue")
        .der
    }

    fn setup(targets: HashMap<String, Target>) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = pki::init(
            &dir.path().join("ca"),
            &InitOptions {
                name: "tunnel test CA".into(),
                algorithm: CaAlgorithm::Ed25519,
                days: 10,
            },
            time::OffsetDateTime::now_utc() - time::Duration::hours(1),
        )
        .expect("ca");
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let server_cert = issue(&ca, &server_key, "green", Usage::Server);
        let id = Identity {
            chain: vec![CertificateDer::from(server_cert)],
            key: PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        };
        let shared = shared(id, dir.path().join("ca").join(pki::CA_CERT), targets);
        Pki {
            ca_der: ca.cert_der().to_vec(),
            _dir: dir,
            shared,
        }
    }

    /// The endpoint's state for tests: one trust anchor, caps of 64.
    fn shared(id: Identity, anchor: PathBuf, targets: HashMap<String, Target>) -> Arc<Shared> {
        let trust = TrustFiles {
            cas: vec![anchor],
            intermediates: vec![],
            crls: vec![],
            unknown_revocation: UnknownRevocation::Allow,
            expired_crl: ExpiredCrl::Refuse,
        };
        Arc::new(
            Shared::new(id, trust, targets, 64, 64, SharedSessions::default()).expect("shared"),
        )
    }

    /// One service, `echo`, on a local echo server.
    fn echo_targets() -> HashMap<String, Target> {
        HashMap::from([(
            "echo".to_owned(),
            Target {
                addr: echo_server(),
                bind: None,
            },
        )])
    }

    /// Serves `shared` on a local port; returns the port.
    fn serve_locally(shared: &Arc<Shared>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::clone(shared);
        std::thread::spawn(move || accept_loop(&listener, &shared));
        port
    }

    fn client(p: &Pki, cert: Vec<u8>, key: &KeyPair) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(p.ca_der.clone()))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from(cert)],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .expect("client auth"),
        )
    }

    fn open(
        grants: &SharedGrants,
        kind: MessageType,
        session: u8,
        id: IdentityKey,
        services: &[&str],
    ) {
        let table = Arc::clone(&grants.lock().expect("lock").table);
        let mut table = table.lock().expect("lock");
        table
            .open(
                &Decision::Open {
                    kind: kind.name(),
                    session: [session; 16],
                    identity: "cn:alice".into(),
                    identity_key: id,
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    services: services.iter().map(|s| (*s).to_owned()).collect(),
                    lifetime_s: 30,
                    certificate: Vec::new(),
                    body: Vec::new(),
                },
                &HashMap::new(),
                now_ms(),
                &mut NoFirewall,
            )
            .expect("own session");
    }

    /// Connects, sends `CONNECT service` and `payload`, half-closes, and
    /// returns everything green sent back.
    fn exchange(port: u16, cfg: Arc<ClientConfig>, service: &str, payload: &[u8]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let mut conn = ClientConnection::new(cfg, name).expect("client");
        let mut out = Vec::new();
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        if tls
            .write_all(format!("CONNECT {service}\n").as_bytes())
            .and_then(|()| tls.write_all(payload))
            .is_err()
        {
            return out;
        }
        conn.send_close_notify();
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        let _ = tls.read_to_end(&mut out);
        out
    }

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().expect("clone");
                    let _ = io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    #[test]
    fn serves_only_open_sessions_and_granted_services() {
        let p = setup(echo_targets());
        let port = serve_locally(&p.shared);

        let ca = pki::Ca::open(&p._dir.path().join("ca")).expect("ca");
        let alice_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let alice_cert = issue(&ca, &alice_key, "alice", Usage::Client);
        let alice = identity_of(&alice_cert).expect("identity");
        let mallory_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mallory_cert = issue(&ca, &mallory_key, "mallory", Usage::Client);
        let cfg = client(&p, alice_cert, &alice_key);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        // No session yet: refused.
        let got = exchange(port, cfg.clone(), "echo", b"x");
        assert!(
            got.starts_with(b"ERR "),
            "{}",
            String::from_utf8_lossy(&got)
        );

        // A tunnel, but the service not granted.
        open(
            &p.shared.grants,
            MessageType::OpenTunnel,
            1,
            alice,
            &["tunnel"],
        );
        let got = exchange(port, cfg.clone(), "echo", b"x");
        assert!(got.starts_with(b"ERR service not granted"), "{got:?}");

        // Granted: spliced both ways, a large payload intact, then EOF.
        open(
            &p.shared.grants,
            MessageType::RequestService,
            1,
            alice,
            &["echo"],
        );
        let got = exchange(port, cfg.clone(), "echo", &big);
        assert_eq!(&got[..3], b"OK\n");
        assert!(got[3..] == big[..], "echoed {} bytes", got.len() - 3);

        // Another identity of the same CA, same address: refused.
        let got = exchange(port, client(&p, mallory_cert, &mallory_key), "echo", b"x");
        assert!(got.starts_with(b"ERR "), "{got:?}");

        // After the close, refused again.
        let table = Arc::clone(&p.shared.grants.lock().expect("lock").table);
        let closed = table
            .lock()
            .expect("lock")
            .close(&[1; 16], now_ms(), &mut NoFirewall);
        assert!(closed.is_some());
        let got = exchange(port, cfg, "echo", b"x");
        assert!(got.starts_with(b"ERR "), "{got:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.shared.active.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.shared.active.load(Ordering::SeqCst), 0, "threads ended");
    }

    #[test]
    fn connections_are_capped_in_total_and_per_source() {
        let mut p = setup(HashMap::new());
        let shared = Arc::get_mut(&mut p.shared).expect("unshared");
        shared.max_connections = 3;
        shared.max_per_source = 2;
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let c = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
        assert!(shared.admit(a) && shared.admit(a));
        assert!(!shared.admit(a), "per-source cap");
        assert!(shared.admit(b));
        assert!(!shared.admit(c), "total cap");
        shared.release(a);
        assert!(shared.admit(c), "a slot freed");
        assert!(!shared.admit(b), "total cap again");
        for ip in [a, b, c] {
            shared.release(ip);
        }
        assert_eq!(shared.active.load(Ordering::SeqCst), 0);
        assert!(shared.per_source.lock().expect("lock").is_empty());
    }

    #[test]
    fn changed_trust_files_are_read_for_the_next_connection() {
        let p = setup(HashMap::new());
        let first = p.shared.current_config();
        assert!(Arc::ptr_eq(&first, &p.shared.current_config()), "cached");
        // A CA file rewritten (new inode): the next connection rebuilds.
        let ca = &p.shared.trust.cas[0];
        let bytes = std::fs::read(ca).expect("read");
        let tmp = ca.with_extension("new");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, ca).expect("rename");
        assert!(!Arc::ptr_eq(&first, &p.shared.current_config()), "rebuilt");
    }

    /// SPEC §12.2: intermediates come from the client's TLS chain.
    #[test]
    fn a_client_chain_through_an_intermediate_is_served_only_with_the_intermediate() {
        use rcgen::{BasicConstraints, CertifiedIssuer, IsCa, KeyUsagePurpose};
        let ca_params = |name: &str| {
            let mut p = CertificateParams::new(vec![]).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name
                .push(rcgen::DnType::CommonName, name.to_owned());
            p
        };
        let root = CertifiedIssuer::self_signed(
            ca_params("root"),
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
        )
        .expect("root");
        let inter = CertifiedIssuer::signed_by(
            ca_params("intermediate"),
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
            &root,
        )
        .expect("intermediate");
        let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&server_key, &root)
            .expect("server");
        let alice_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut leaf = CertificateParams::new(vec![]).expect("params");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let alice = leaf.signed_by(&alice_key, &inter).expect("alice");

        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root.pem");
        std::fs::write(&root_path, root.as_ref().pem()).expect("write");
        let id = Identity {
            chain: vec![server.der().clone()],
            key: PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        };
        let shared = shared(id, root_path, echo_targets());
        let port = serve_locally(&shared);
        let identity = identity_of(alice.der()).expect("identity");
        open(
            &shared.grants,
            MessageType::OpenTunnel,
            3,
            identity,
            &["tunnel", "echo"],
        );
        let client_with = |chain: Vec<CertificateDer<'static>>| {
            let mut roots = RootCertStore::empty();
            roots.add(root.as_ref().der().clone()).expect("root");
            Arc::new(
                ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    chain,
                    PrivateKeyDer::Pkcs8(alice_key.serialize_der().into()),
                )
                .expect("client auth"),
            )
        };
        let got = exchange(
            port,
            client_with(vec![alice.der().clone(), inter.as_ref().der().clone()]),
            "echo",
            b"ping",
        );
        assert_eq!(got, b"OK\nping");
        let got = exchange(
            port,
            client_with(vec![alice.der().clone()]),
            "echo",
            b"ping",
        );
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }

    #[test]
    fn a_closed_session_cuts_its_live_connections() {
        let p = setup(echo_targets());
        let port = serve_locally(&p.shared);
        let ca = pki::Ca::open(&p._dir.path().join("ca")).expect("ca");
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let cert = issue(&ca, &key, "alice", Usage::Client);
        let alice = identity_of(&cert).expect("identity");
        let cfg = client(&p, cert, &key);
        open(
            &p.shared.grants,
            MessageType::OpenTunnel,
            7,
            alice,
            &["tunnel", "echo"],
        );

        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        let mut conn = ClientConnection::new(cfg, name).expect("client");
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"CONNECT echo\nping").expect("write");
        let mut got = [0u8; 7];
        tls.read_exact(&mut got).expect("echo");
        assert_eq!(&got, b"OK\nping");
        assert_eq!(p.shared.grants.lock().expect("lock").connections(), 1);

        // The session ends while the connection is idle: green cuts it.
        let started = Instant::now();
        let table = Arc::clone(&p.shared.grants.lock().expect("lock").table);
        let closed = table
            .lock()
            .expect("lock")
            .close(&[7; 16], now_ms(), &mut NoFirewall);
        assert!(closed.is_some());
        assert_eq!(p.shared.grants.lock().expect("lock").close(&[7; 16]), 1);
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "cut at once");
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.shared.active.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.shared.active.load(Ordering::SeqCst), 0, "thread ended");
        assert_eq!(p.shared.grants.lock().expect("lock").connections(), 0);
    }

    /// The tunnel reads the daemon's table: two identities behind one address
    /// each have their own tunnel grant, and one's close is the end of its
    /// grant alone, for the tunnel too.
    #[test]
    fn the_tunnel_sees_the_daemons_sessions() {
        const ALICE: IdentityKey = IdentityKey([0xa1; 32]);
        const CAROL: IdentityKey = IdentityKey([0xca; 32]);
        const NAT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));
        let local = HashMap::from([("ssh".to_owned(), (ServiceProto::Tcp, 22))]);
        let table = SessionTable::shared();
        let grants = Grants::new(Arc::clone(&table));
        for (id, who) in [(1, ALICE), (2, CAROL)] {
            let d = Decision::Open {
                kind: "open-tunnel",
                session: [id; 16],
                identity: format!("{who:?}"),
                identity_key: who,
                addr: NAT,
                services: vec!["ssh".to_owned()],
                lifetime_s: 60,
                certificate: Vec::new(),
                body: Vec::new(),
            };
            let mut t = table.lock().expect("lock");
            t.open(&d, &local, 0, &mut NoFirewall).expect("own id");
        }
        assert!(grants.tunnel_open(NAT, &ALICE, 1) && grants.tunnel_open(NAT, &CAROL, 1));
        assert_eq!(grants.session_for(NAT, &CAROL, "ssh", 1), Some([2; 16]));
        let closed = table
            .lock()
            .expect("lock")
            .close(&[1; 16], 1, &mut NoFirewall);
        assert!(closed.is_some());
        assert!(!grants.tunnel_open(NAT, &ALICE, 2));
        assert!(grants.tunnel_open(NAT, &CAROL, 2));
        assert!(!grants.tunnel_open(NAT, &CAROL, 60_000), "expired");
    }
}
