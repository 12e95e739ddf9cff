//! The client end of green's mutual-TLS tunnel (`spa-client connect`).
//!
//! TLS 1.3 to green's tunnel port with the client certificate (its key in a
//! file or on a PKCS#11 token, through [`crate::token::tls`]), green's
//! server certificate verified against the profile's `tunnel_ca`. Inside:
//! the line `CONNECT <service>\n`, green's answer `OK\n` or `ERR
//! <reason>\n`, then the service's bytes both ways, through
//! [`spa_tunnel::TlsPipe`] (the data path shared with green).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto_spec::sign::Signer;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore};
use spa_tunnel::TlsPipe;

use crate::exit::ClientError;

/// The TLS client configuration: roots from `ca`, the signer's certificate
/// (then `intermediates`, DER, sent as its chain) and key for client
/// authentication.
pub fn client_config(
    ca: &Path,
    signer: Arc<dyn Signer + Send + Sync>,
    intermediates: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for der in spa_keys::read_certificates(ca)? {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| ClientError::config(format!("tunnel_ca {}: {e}", ca.display())))?;
    }
    let intermediates = intermediates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = crate::token::tls::certified_key(signer, intermediates)
        .map_err(|e| ClientError::signer(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::failure(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
    Ok(Arc::new(cfg))
}

/// An established tunnel connection to a service.
#[derive(Debug)]
pub struct Tunnel {
    pipe: TlsPipe<UnbufferedClientConnection>,
}

/// How long the TLS handshake and green's answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to green, authenticates, asks for `service`.
pub fn open(
    addr: SocketAddr,
    name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
    service: &str,
) -> Result<Tunnel, ClientError> {
    let net = |e: io::Error| ClientError::network(format!("tunnel {addr}: {e}"));
    raise_fd_limit();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(net)?;
    tcp.set_nodelay(true).map_err(net)?;
    let conn = UnbufferedClientConnection::new(cfg, name)
        .map_err(|e| ClientError::failure(e.to_string()))?;
    let mut pipe = TlsPipe::new(conn, tcp).map_err(net)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let tls = |e: spa_tunnel::Error| match e {
        spa_tunnel::Error::Closed(_) => ClientError::network(format!(
            "tunnel {addr}: green closed the connection (no open tunnel session for this identity and address?)"
        )),
        e => ClientError::network(format!("tunnel {addr}: {e}")),
    };
    pipe.handshake(deadline).map_err(tls)?;
    pipe.write_all(format!("CONNECT {service}\n").as_bytes(), deadline)
        .map_err(tls)?;
    let line = pipe.read_line(deadline).map_err(tls)?;
    if line != "OK" {
        let why = line.strip_prefix("ERR ").unwrap_or(&line);
        return Err(ClientError::network(format!(
            "green refused the tunnel to '{service}': {why}"
        )));
    }
    Ok(Tunnel { pipe })
}

impl Tunnel {
    /// Relays `input` into the tunnel and the tunnel into `output` on this
    /// thread ([`TlsPipe::splice`]) until green has finished sending; then
    /// calls `finish` on the output (a half-close). At the input's EOF
    /// green gets close_notify (its service sees a half-close).
    ///
    /// Both are used through duplicates of their descriptors, so that
    /// e.g. stdout's line buffer is bypassed; their blocking mode is left
    /// as it is.
    pub fn relay<R, W>(
        mut self,
        input: R,
        mut output: W,
        finish: impl FnOnce(&mut W),
    ) -> io::Result<()>
    where
        R: Read + AsFd,
        W: Write + AsFd,
    {
        output.flush()?;
        let mut r = File::from(input.as_fd().try_clone_to_owned()?);
        let mut w = File::from(output.as_fd().try_clone_to_owned()?);
        grow_pipe(&r);
        self.pipe
            .splice(&mut r, &mut w, true, |_| {})
            .map_err(|e| match e {
                spa_tunnel::Error::Io(e) => e,
                e => io::Error::other(e.to_string()),
            })?;
        finish(&mut output);
        Ok(())
    }
}

/// A pipe on `f` (ssh's ProxyCommand stdin) gets a larger kernel buffer,
/// so that each read moves more (best effort).
fn grow_pipe(f: &File) {
    use nix::fcntl::{FcntlArg, fcntl};
    if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        let _ = fcntl(f, FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

/// `connect --listen` serves each local connection with a tunnel
/// connection (about four descriptors while it relays): the soft limit on
/// open files is raised to the hard limit once.
fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = spa_tunnel::raise_open_file_limit(u64::MAX);
    });
}
