//! Green's mutual-TLS tunnel endpoint (`[tunnel]`).
//!
//! A TLS 1.3 listener (rustls, ring) on `[tunnel] listen_port`, on threads
//! of its own: the capture loop never waits for it. The port is the
//! `[[services]]` entry `[tunnel] service`, which nftables opens only for
//! the address of an accepted open-tunnel knock.
//!
//! A connection is served when:
//!
//! 1. the client certificate validates against the `[trust]` anchors and
//!    CRLs (rustls's `WebPkiClientVerifier`; the files are read again for
//!    every connection, so a new CRL applies at once), and
//! 2. the SHA-256 of its SPKI ([`IdentityKey`]) is the identity of an open
//!    tunnel session for the connection's source address: an open-tunnel
//!    knock of that identity for that address, not expired and not closed
//!    ([`Grants`], fed by [`TunnelHooks`] from the daemon loop).
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
//! A served connection belongs to the session that granted its service:
//! when that session ends (a close knock, `revoke-session`, or its
//! openings expire; [`Hooks::session_closed`]), both of its sockets (the
//! client's and the service's) are shut down, which ends the splice.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use proto_spec::UnixMillis;
use proto_spec::body::MessageType;
use proto_spec::cert::{ExpiredCrl, IdentityKey, UnknownRevocation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ConnectionCommon, RootCertStore, ServerConfig, ServerConnection, SideData};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use crate::config::{Config, RelayService, ServiceProto, parse_proto};
use crate::daemon::{Hooks, now_ms, trust_files};
use crate::gate::Decision;
use crate::pki::TrustFiles;

/// How long green keeps trying to reach a service (red opens after the
/// order arrives).
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// How long a CONNECT waits for its request-service knock to be accepted.
pub const GRANT_PATIENCE: Duration = Duration::from_secs(3);

/// Connections served at once; beyond, new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Handshake and request-line timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_LINE: usize = 256;
const MAX_BUFFERED: usize = 64 * 1024;

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

/// One session the tunnel knows of.
#[derive(Debug, Clone)]
struct Grant {
    addr: IpAddr,
    identity: IdentityKey,
    /// Expiry of the open-tunnel (0: none yet).
    tunnel_until: UnixMillis,
    /// Granted services and their expiry.
    services: HashMap<String, UnixMillis>,
}

/// Sessions as the daemon accepted them, shared with the tunnel threads,
/// and the sockets of the connections each session serves.
#[derive(Debug, Default)]
pub struct Grants {
    sessions: HashMap<[u8; 16], Grant>,
    /// Per session: connection number and its sockets (clones), shut down
    /// when the session ends.
    conns: HashMap<[u8; 16], Vec<(u64, Vec<TcpStream>)>>,
    next_conn: u64,
}

impl Grants {
    /// Records an accepted decision.
    pub fn apply(&mut self, d: &Decision, now: UnixMillis) {
        let expired: Vec<[u8; 16]> = self
            .sessions
            .iter()
            .filter(|(_, g)| g.tunnel_until <= now && g.services.values().all(|t| *t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.close(id);
        }
        match d {
            Decision::Open {
                kind,
                session,
                identity_key,
                addr,
                services,
                lifetime_s,
                ..
            } => {
                let until = now.saturating_add(u64::from(*lifetime_s) * 1000);
                let g = self.sessions.entry(*session).or_insert_with(|| Grant {
                    addr: *addr,
                    identity: *identity_key,
                    tunnel_until: 0,
                    services: HashMap::new(),
                });
                if g.identity != *identity_key || g.addr != *addr {
                    return;
                }
                if *kind == MessageType::OpenTunnel.name() {
                    g.tunnel_until = until;
                }
                for s in services {
                    g.services.insert(s.clone(), until);
                }
            }
            Decision::Close {
                session,
                identity_key,
                ..
            } => {
                if self
                    .sessions
                    .get(session)
                    .is_some_and(|g| g.identity == *identity_key)
                {
                    self.close(session);
                }
            }
        }
    }

    /// Forgets a session and shuts down the connections it serves.
    /// Returns how many connections were cut.
    pub fn close(&mut self, session: &[u8; 16]) -> usize {
        self.sessions.remove(session);
        let conns = self.conns.remove(session).unwrap_or_default();
        for (_, socks) in &conns {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        conns.len()
    }

    /// Records a served connection's sockets under `session`; `None` when
    /// the session has ended meanwhile.
    fn attach(&mut self, session: &[u8; 16], socks: Vec<TcpStream>) -> Option<u64> {
        if !self.sessions.contains_key(session) {
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
        self.sessions
            .values()
            .any(|g| g.addr == addr && g.identity == *identity && g.tunnel_until > now)
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
        self.sessions
            .iter()
            .filter(|(_, g)| {
                g.addr == addr
                    && g.identity == *identity
                    && g.services.get(service).is_some_and(|t| *t > now)
            })
            .max_by_key(|(_, g)| g.tunnel_until > now)
            .map(|(id, _)| *id)
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
}

impl Hooks for TunnelHooks {
    fn after_decision(&mut self, decision: &Decision, _source: SocketAddr, now: UnixMillis) {
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(decision, now);
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
    /// Local address to connect from (`[relay] source`).
    pub bind: Option<IpAddr>,
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
    if let Some(r) = &cfg.relay
        && let Ok(red) = r.red.parse::<SocketAddr>()
    {
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
    Ok(Arc::new(cfg))
}

/// The running endpoint's shared state.
struct Shared {
    id: Identity,
    trust: TrustFiles,
    /// The last configuration built: used when the trust files cannot be
    /// read again (e.g. after privileges were dropped).
    config: Mutex<Arc<ServerConfig>>,
    grants: SharedGrants,
    targets: HashMap<String, Target>,
    active: AtomicUsize,
}

impl Shared {
    /// A configuration from the trust files as they are now, else the last
    /// one.
    fn current_config(&self) -> Arc<ServerConfig> {
        let mut last = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        match server_config(&self.id, &self.trust) {
            Ok(c) => *last = c,
            Err(e) => debug!(error = %e, "tunnel: trust files not reloaded, using the last ones"),
        }
        Arc::clone(&last)
    }
}

/// Opens the listener and reads the server key (both before privileges
/// are dropped), then serves on a thread of its own. Returns the hooks the
/// daemon loop runs.
pub fn start(cfg: &Config) -> Result<Option<TunnelHooks>, TunnelError> {
    let Some(t) = &cfg.tunnel else {
        return Ok(None);
    };
    let id = read_identity(&t.certificate, &t.key)?;
    let trust = trust_files(cfg);
    let config = server_config(&id, &trust).map_err(TunnelError::Config)?;
    let listener = listen(t.listen_port).map_err(|source| TunnelError::Listen {
        port: t.listen_port,
        source,
    })?;
    let grants = SharedGrants::default();
    let shared = Arc::new(Shared {
        id,
        trust,
        config: Mutex::new(config),
        grants: grants.clone(),
        targets: targets(cfg),
        active: AtomicUsize::new(0),
    });
    info!(port = t.listen_port, services = %{
        let mut v: Vec<_> = shared.targets.keys().cloned().collect();
        v.sort();
        v.join(",")
    }, "tunnel listening");
    std::thread::Builder::new()
        .name("tunnel-accept".into())
        .spawn(move || accept_loop(&listener, &shared))
        .map_err(|e| TunnelError::Config(format!("tunnel thread: {e}")))?;
    Ok(Some(TunnelHooks { grants }))
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
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            warn!(src = %peer.ip().to_canonical(), "tunnel: too many connections, closed");
            continue;
        }
        let s = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("tunnel-conn".into())
            .spawn(move || {
                let ip = peer.ip().to_canonical();
                match serve(&s, stream, ip) {
                    Ok(()) => debug!(src = %ip, "tunnel: connection ended"),
                    Err(e) => info!(src = %ip, reason = %e, "tunnel: connection closed"),
                }
                s.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn serve(shared: &Shared, mut tcp: TcpStream, ip: IpAddr) -> io::Result<()> {
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let config = shared.current_config();
    let mut conn = ServerConnection::new(config).map_err(|e| other(e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| other("no client certificate"))?;
    let identity = identity_of(cert).ok_or_else(|| other("unreadable client certificate"))?;
    let granted = |f: &dyn Fn(&Grants) -> bool| {
        f(&shared.grants.lock().unwrap_or_else(PoisonError::into_inner))
    };
    if !granted(&|g| g.tunnel_open(ip, &identity, now_ms())) {
        let _ = refuse(
            &mut conn,
            &mut tcp,
            "no open tunnel session for this identity and address",
        );
        return Err(other(format!(
            "identity {} has no open tunnel session for this address",
            hex::encode(&identity.0[..8])
        )));
    }
    let (line, rest) = read_line(&mut conn, &mut tcp)?;
    let service = line
        .strip_prefix("CONNECT ")
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.contains(' '))
        .ok_or_else(|| other("not a CONNECT line"))?
        .to_owned();
    // The request-service knock is one UDP datagram sent just before the
    // connection: give the capture loop a moment to accept it.
    let deadline = Instant::now() + GRANT_PATIENCE;
    while !granted(&|g| g.service_granted(ip, &identity, &service, now_ms()))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !granted(&|g| g.service_granted(ip, &identity, &service, now_ms())) {
        let _ = refuse(&mut conn, &mut tcp, "service not granted");
        return Err(other(format!("service '{service}' not granted")));
    }
    let Some(target) = shared.targets.get(&service).copied() else {
        let _ = refuse(&mut conn, &mut tcp, "unknown service");
        return Err(other(format!("service '{service}' has no tunnel target")));
    };
    let mut upstream = match connect(target) {
        Ok(s) => s,
        Err(e) => {
            let _ = refuse(&mut conn, &mut tcp, "service unreachable");
            return Err(other(format!(
                "service '{service}' at {}: {e}",
                target.addr
            )));
        }
    };
    let session = granted_session(shared, ip, &identity, &service);
    let registered = match session {
        Some(sid) => {
            let socks = vec![tcp.try_clone()?, upstream.try_clone()?];
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
        }
        None => None,
    };
    let Some(_registered) = registered else {
        let _ = refuse(&mut conn, &mut tcp, "session ended");
        return Err(other(format!(
            "service '{service}': the session ended meanwhile"
        )));
    };
    conn.writer().write_all(b"OK\n")?;
    info!(src = %ip, service = %service, target = %target.addr, "tunnel: connected");
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    let mut up_r = upstream.try_clone()?;
    splice(
        &mut conn,
        &mut tcp,
        &mut up_r,
        &mut upstream,
        rest,
        Vec::new(),
        |w: &mut TcpStream| {
            let _ = w.shutdown(Shutdown::Write);
        },
    )
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

fn refuse(conn: &mut ServerConnection, tcp: &mut TcpStream, why: &str) -> io::Result<()> {
    conn.writer().write_all(format!("ERR {why}\n").as_bytes())?;
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    // A lingering close: closing with unread input would reset the
    // connection and could discard the answer at the client.
    tcp.shutdown(Shutdown::Write)?;
    tcp.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut sink = [0u8; 4096];
    let mut left = MAX_BUFFERED;
    while left > 0 {
        match tcp.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// The SPKI hash of a DER certificate.
pub fn identity_of(cert: &[u8]) -> Option<IdentityKey> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(IdentityKey::from_spki_der(
        c.tbs_certificate.subject_pki.raw,
    ))
}

/// Reads one `\n`-terminated line (blocking socket); returns it and the
/// bytes that followed it.
pub fn read_line<S: SideData>(
    conn: &mut ConnectionCommon<S>,
    tcp: &mut TcpStream,
) -> io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if let Some(i) = got.iter().position(|b| *b == b'\n') {
            let rest = got.split_off(i + 1);
            got.pop();
            let line = String::from_utf8(got).map_err(|_| other("line is not UTF-8"))?;
            return Ok((line, rest));
        }
        if got.len() > MAX_LINE {
            return Err(other("line too long"));
        }
        match conn.reader().read(&mut buf) {
            Ok(0) => return Err(other("closed before a full line")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.complete_io(&mut *tcp)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn connect(t: Target) -> io::Result<TcpStream> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        let attempt = || -> io::Result<TcpStream> {
            let s = Socket::new(
                Domain::for_address(t.addr),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            if let Some(b) = t.bind {
                s.bind(&SockAddr::from(SocketAddr::new(b, 0)))?;
            }
            s.connect_timeout(&SockAddr::from(t.addr), Duration::from_millis(700))?;
            s.set_tcp_nodelay(true)?;
            Ok(s.into())
        };
        match attempt() {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Copies between a TLS connection (over `tls`) and a plaintext pair
/// (`plain_r`, `plain_w`; one socket or two pipes) on one thread with
/// poll(2), until both directions have ended. `to_plain` and `to_tls` are
/// bytes already read and not yet forwarded. `shut_w` half-closes the
/// plaintext writer when the TLS peer has finished.
#[allow(clippy::too_many_arguments)]
pub fn splice<S, R, W>(
    conn: &mut ConnectionCommon<S>,
    tls: &mut TcpStream,
    plain_r: &mut R,
    plain_w: &mut W,
    mut to_plain: Vec<u8>,
    to_tls: Vec<u8>,
    mut shut_w: impl FnMut(&mut W),
) -> io::Result<()>
where
    S: SideData,
    R: Read + AsFd,
    W: Write + AsFd,
{
    if !to_tls.is_empty() {
        conn.writer().write_all(&to_tls)?;
    }
    tls.set_nonblocking(true)?;
    set_nonblocking(plain_r.as_fd(), true)?;
    set_nonblocking(plain_w.as_fd(), true)?;
    let mut tcp_eof = false; // the TLS socket hit EOF
    let mut tls_eof = false; // no more plaintext from the TLS peer
    let mut plain_eof = false; // no more plaintext from the plain side
    let mut plain_shut = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while !tls_eof && to_plain.len() < MAX_BUFFERED {
            match conn.reader().read(&mut buf) {
                Ok(0) => tls_eof = true,
                Ok(n) => to_plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => tls_eof = true,
                Err(e) => return Err(e),
            }
        }
        while !to_plain.is_empty() {
            match plain_w.write(&to_plain) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    to_plain.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if tls_eof && to_plain.is_empty() && !plain_shut {
            let _ = plain_w.flush();
            shut_w(plain_w);
            plain_shut = true;
        }
        while conn.wants_write() {
            match conn.write_tls(tls) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if plain_shut && plain_eof && !conn.wants_write() {
            return Ok(());
        }
        if tcp_eof && !tls_eof {
            tls_eof = true;
            continue;
        }
        let mut tls_ev = PollFlags::empty();
        if !tcp_eof && conn.wants_read() && to_plain.len() < MAX_BUFFERED {
            tls_ev |= PollFlags::POLLIN;
        }
        if conn.wants_write() {
            tls_ev |= PollFlags::POLLOUT;
        }
        let pr = if !plain_eof && !conn.wants_write() {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let pw = if to_plain.is_empty() {
            PollFlags::empty()
        } else {
            PollFlags::POLLOUT
        };
        if tls_ev.is_empty() && pr.is_empty() && pw.is_empty() {
            return Ok(());
        }
        let mut fds = [
            PollFd::new(tls.as_fd(), tls_ev),
            PollFd::new(plain_r.as_fd(), pr),
            PollFd::new(plain_w.as_fd(), pw),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |f: &PollFd| {
            f.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let tls_ready = !tls_ev.is_empty() && ready(&fds[0]);
        let plain_ready = !pr.is_empty() && ready(&fds[1]);
        if tls_ready && tls_ev.contains(PollFlags::POLLIN) {
            match conn.read_tls(tls) {
                Ok(0) => tcp_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = conn.process_new_packets() {
                let _ = conn.write_tls(tls);
                return Err(other(format!("TLS: {e}")));
            }
        }
        if plain_ready {
            match plain_r.read(&mut buf) {
                Ok(0) => {
                    plain_eof = true;
                    conn.send_close_notify();
                }
                Ok(n) => conn.writer().write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let new = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(new))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, CaAlgorithm, InitOptions, IssueRequest, SubjectKey, Usage};
    use proto_spec::cert::{ExpiredCrl, UnknownRevocation};
    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection};

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
        let trust = TrustFiles {
            cas: vec![dir.path().join("ca").join(pki::CA_CERT)],
            intermediates: vec![],
            crls: vec![],
            unknown_revocation: UnknownRevocation::Allow,
            expired_crl: ExpiredCrl::Refuse,
        };
        let config = Mutex::new(server_config(&id, &trust).expect("config"));
        let shared = Arc::new(Shared {
            id,
            trust,
            config,
            grants: SharedGrants::default(),
            targets,
            active: AtomicUsize::new(0),
        });
        Pki {
            ca_der: ca.cert_der().to_vec(),
            _dir: dir,
            shared,
        }
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
        grants.lock().expect("lock").apply(
            &Decision::Open {
                kind: kind.name(),
                session: [session; 16],
                identity: "cn:alice".into(),
                identity_key: id,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                services: services.iter().map(|s| (*s).to_owned()).collect(),
                lifetime_s: 30,
                body: Vec::new(),
            },
            now_ms(),
        );
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
        let echo = echo_server();
        let targets = HashMap::from([(
            "echo".to_owned(),
            Target {
                addr: echo,
                bind: None,
            },
        )]);
        let p = setup(targets);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::clone(&p.shared);
        std::thread::spawn(move || accept_loop(&listener, &shared));

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
        p.shared.grants.lock().expect("lock").apply(
            &Decision::Close {
                session: [1; 16],
                identity: "cn:alice".into(),
                identity_key: alice,
                body: Vec::new(),
            },
            now_ms(),
        );
        let got = exchange(port, cfg, "echo", b"x");
        assert!(got.starts_with(b"ERR "), "{got:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.shared.active.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.shared.active.load(Ordering::SeqCst), 0, "threads ended");
    }

    #[test]
    fn a_closed_session_cuts_its_live_connections() {
        let echo = echo_server();
        let targets = HashMap::from([(
            "echo".to_owned(),
            Target {
                addr: echo,
                bind: None,
            },
        )]);
        let p = setup(targets);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::clone(&p.shared);
        std::thread::spawn(move || accept_loop(&listener, &shared));
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
}
