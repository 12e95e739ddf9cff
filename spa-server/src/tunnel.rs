//! Green's mutual-TLS tunnel endpoint (`[tunnel]`, SPEC §12).
//!
//! Three parts: this file is the endpoint (listener, TLS, serving a
//! connection); `tunnel/grants.rs` is what the daemon's session table
//! grants ([`Grants`], [`TunnelHooks`]); `tunnel/targets.rs` is where a
//! service is reached ([`Target`], [`targets`]).
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
//! openings expire; [`Hooks::session_closed`](spa_daemon::daemon::Hooks::session_closed)), both of its sockets (the
//! client's and the service's) are shut down, which ends the splice.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use proto_spec::cert::{ExpiredCrl, IdentityKey, UnknownRevocation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use spa_tunnel::TlsPipe;
use tracing::{debug, info, warn};

use spa_daemon::config::Config;
use spa_daemon::daemon::{now_ms, trust_files};
use spa_daemon::sessions::SharedSessions;
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

mod grants;
mod targets;

pub use grants::{Grants, SharedGrants, TunnelHooks};
use targets::connect;
pub use targets::{Target, targets};

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

/// The TLS configuration, the trust files' state it was built from, and
/// the state a rebuild last failed on (see [`Shared::current_config`]).
type TlsState = (Arc<ServerConfig>, Vec<FileStamp>, Option<Vec<FileStamp>>);

/// The running endpoint's shared state.
struct Shared {
    id: Identity,
    trust: TrustFiles,
    /// The last configuration built, and the trust files' state it was
    /// built from: rebuilt when a file changes; kept when the files cannot
    /// be read again (e.g. after privileges were dropped). The third part
    /// is the state a rebuild last failed on: not tried (nor logged) again
    /// until the files change once more.
    config: Mutex<TlsState>,
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
        let config = Mutex::new((server_config(&id, &trust)?, stamps(&trust), None));
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
        if stamps != last.1 && last.2.as_ref() != Some(&stamps) {
            match server_config(&self.id, &self.trust) {
                Ok(c) => *last = (c, stamps, None),
                Err(e) => {
                    // Once per change of the files (the daemon's own reload
                    // logs its failure at error level and counts it).
                    warn!(error = %e, "tunnel: trust files changed but did not load; the tunnel keeps the last ones");
                    last.2 = Some(stamps);
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
mod tests;
