//! The client end of green's mutual-TLS tunnel (`spa-client connect`).
//!
//! TLS 1.3 to green's tunnel port with the client certificate (its key in a
//! file or on a PKCS#11 token, through [`crate::token::tls`]), green's
//! server certificate verified against the profile's `tunnel_ca`. Inside:
//! the line `CONNECT <service>\n`, green's answer `OK\n` or `ERR
//! <reason>\n`, then the service's bytes both ways.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto_spec::sign::Signer;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::exit::ClientError;

const MAX_LINE: usize = 256;

/// The TLS client configuration: roots from `ca`, the signer's certificate
/// and key for client authentication.
pub fn client_config(
    ca: &Path,
    signer: Arc<dyn Signer + Send + Sync>,
) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for der in spa_keys::read_certificates(ca)? {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| ClientError::config(format!("tunnel_ca {}: {e}", ca.display())))?;
    }
    let key = crate::token::tls::certified_key(signer, Vec::new())
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
    conn: ClientConnection,
    tcp: TcpStream,
    early: Vec<u8>,
}

/// Connects to green, authenticates, asks for `service`.
pub fn open(
    addr: SocketAddr,
    name: ServerName<'static>,
    cfg: Arc<ClientConfig>,
    service: &str,
) -> Result<Tunnel, ClientError> {
    let net = |e: io::Error| ClientError::network(format!("tunnel {addr}: {e}"));
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(net)?;
    tcp.set_nodelay(true).map_err(net)?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(net)?;
    let mut conn =
        ClientConnection::new(cfg, name).map_err(|e| ClientError::failure(e.to_string()))?;
    conn.writer()
        .write_all(format!("CONNECT {service}\n").as_bytes())
        .map_err(net)?;
    let (line, early) = read_line(&mut conn, &mut tcp).map_err(net)?;
    if line != "OK" {
        let why = line.strip_prefix("ERR ").unwrap_or(&line);
        return Err(ClientError::network(format!(
            "green refused the tunnel to '{service}': {why}"
        )));
    }
    tcp.set_read_timeout(None).map_err(net)?;
    Ok(Tunnel { conn, tcp, early })
}

fn read_line(conn: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if let Some(i) = got.iter().position(|b| *b == b'\n') {
            let rest = got.split_off(i + 1);
            got.pop();
            let line = String::from_utf8(got)
                .map_err(|_| io::Error::other("green's answer is not UTF-8"))?;
            return Ok((line, rest));
        }
        if got.len() > MAX_LINE {
            return Err(io::Error::other("green's answer is too long"));
        }
        match conn.reader().read(&mut buf) {
            Ok(0) => return Err(io::Error::other("green closed the connection")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.complete_io(&mut *tcp)?;
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::other(
                    "green closed the connection (no open tunnel session for this identity and address?)",
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Tunnel {
    /// Relays `input` into the tunnel (a thread of its own) and the tunnel
    /// into `output` (this thread) until green has finished sending; then
    /// calls `finish` on the output (a half-close). The input thread ends
    /// at the input's EOF.
    pub fn relay<R, W>(
        self,
        mut input: R,
        mut output: W,
        finish: impl FnOnce(&mut W),
    ) -> io::Result<()>
    where
        R: Read + Send + 'static,
        W: Write,
    {
        let Self { conn, tcp, early } = self;
        let conn = Arc::new(Mutex::new(conn));
        let mut tcp_in = tcp.try_clone()?;
        let mut tcp_out = tcp.try_clone()?;
        let mut tcp_r = tcp;
        let c2 = Arc::clone(&conn);
        std::thread::spawn(move || -> io::Result<()> {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = input.read(&mut buf).unwrap_or(0);
                let mut c = c2.lock().unwrap_or_else(PoisonError::into_inner);
                if n == 0 {
                    c.send_close_notify();
                } else {
                    c.writer().write_all(&buf[..n])?;
                }
                while c.wants_write() {
                    c.write_tls(&mut tcp_in)?;
                }
                if n == 0 {
                    return Ok(());
                }
            }
        });
        output.write_all(&early)?;
        output.flush()?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut plain = vec![0u8; 16 * 1024];
        loop {
            let n = tcp_r.read(&mut buf)?;
            let mut out = Vec::new();
            let mut done = n == 0;
            {
                let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
                let mut slice = &buf[..n];
                while !slice.is_empty() {
                    c.read_tls(&mut slice)?;
                    c.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    loop {
                        match c.reader().read(&mut plain) {
                            Ok(0) => {
                                done = true;
                                break;
                            }
                            Ok(k) => out.extend_from_slice(&plain[..k]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                }
                while c.wants_write() {
                    c.write_tls(&mut tcp_out)?;
                }
            }
            output.write_all(&out)?;
            output.flush()?;
            if done {
                finish(&mut output);
                return Ok(());
            }
        }
    }
}
