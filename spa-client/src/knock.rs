//! Building, sending and confirming knocks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto_spec::body::{MAX_SERVICE_NAME, MessageType, OpenFor, is_valid_service_name};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, SealKnockError, seal_knock};
use proto_spec::sign::Signer;

use crate::exit::ClientError;
use crate::profile::AllowIp;
use crate::token::pkcs11::{KeySelector, Pkcs11Config, Pkcs11Signer, TokenSelector};
use crate::token::{CertificateSource, PinSource};

/// Where the signing key is.
#[derive(Debug, Clone)]
pub enum SignerSpec {
    /// A PKCS#8 key file and a certificate file.
    Software {
        /// Key file (mode 0600 or stricter).
        key: PathBuf,
        /// Certificate file.
        certificate: PathBuf,
    },
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

impl SignerSpec {
    /// Opens the signer. Software key problems are configuration errors
    /// (exit 2); token and PIN problems are signer errors (exit 3).
    pub fn open(&self) -> Result<Box<dyn Signer>, ClientError> {
        match self {
            Self::Software { key, certificate } => {
                Ok(Box::new(spa_keys::load_software_signer(key, certificate)?))
            }
            Self::Pkcs11(cfg) => Pkcs11Signer::open(cfg)
                .map(|s| Box::new(s) as Box<dyn Signer>)
                .map_err(|e| ClientError::signer(e.to_string())),
        }
    }
}

impl SignerSpec {
    /// Opens the signer for sharing between threads (the TLS client key).
    pub fn open_shared(&self) -> Result<std::sync::Arc<dyn Signer + Send + Sync>, ClientError> {
        match self {
            Self::Software { key, certificate } => Ok(std::sync::Arc::new(
                spa_keys::load_software_signer(key, certificate)?,
            )),
            Self::Pkcs11(cfg) => Pkcs11Signer::open(cfg)
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn Signer + Send + Sync>)
                .map_err(|e| ClientError::signer(e.to_string())),
        }
    }
}

/// Parses a PIN source: `env:VAR`, `file:/path` or `prompt`. Anything else
/// is refused without echoing it: it may well be the PIN itself.
pub fn parse_pin_source(s: &str) -> Result<PinSource, ClientError> {
    if let Some(v) = s.strip_prefix("env:") {
        Ok(PinSource::Env(v.to_owned()))
    } else if let Some(p) = s.strip_prefix("file:") {
        Ok(PinSource::File(crate::profile::expand_home(
            std::path::Path::new(p),
        )))
    } else if s == "prompt" {
        Ok(PinSource::Prompt)
    } else {
        Err(ClientError::config(
            "the PIN source (not shown) is not env:VARIABLE, file:/path or prompt (a PIN is never given on the command line)",
        ))
    }
}

/// Builds a PKCS#11 configuration from profile fields.
pub fn pkcs11_config(
    p: &crate::profile::Pkcs11Profile,
    certificate: Option<PathBuf>,
) -> Result<Pkcs11Config, ClientError> {
    let token = match (&p.token, &p.token_serial) {
        (Some(l), None) => TokenSelector::Label(l.clone()),
        (None, Some(s)) => TokenSelector::Serial(s.clone()),
        _ => {
            return Err(ClientError::config(
                "pkcs11: give exactly one of token (label) or token_serial",
            ));
        }
    };
    let key = match (&p.key_label, &p.key_id) {
        (Some(l), None) => KeySelector::Label(l.clone()),
        (None, Some(id)) => KeySelector::id_hex(id)
            .map_err(|e| ClientError::config(format!("pkcs11: key_id '{id}' is not hex: {e}")))?,
        _ => {
            return Err(ClientError::config(
                "pkcs11: give exactly one of key_label or key_id",
            ));
        }
    };
    let pin = parse_pin_source(p.pin.as_deref().unwrap_or("prompt"))?;
    Ok(Pkcs11Config {
        module: crate::profile::expand_home(&p.module),
        token,
        key,
        pin,
        certificate: certificate.map_or(CertificateSource::Token, CertificateSource::File),
    })
}

/// Checks service names before anything is signed.
pub fn check_services(services: &[String]) -> Result<(), ClientError> {
    for s in services {
        if !is_valid_service_name(s.as_bytes()) {
            return Err(ClientError::config(format!(
                "service name '{s}' is invalid: 1 to {MAX_SERVICE_NAME} characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            )));
        }
    }
    if services.len() > proto_spec::body::MAX_SERVICES {
        return Err(ClientError::config(format!(
            "{} services requested; at most {} fit in one knock",
            services.len(),
            proto_spec::body::MAX_SERVICES
        )));
    }
    Ok(())
}

/// Resolves `host:port` to one socket address.
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClientError> {
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| ClientError::network(format!("cannot resolve server '{host}': {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ClientError::network(format!("server '{host}' has no address")))
}

/// A UDP socket connected to the server: its local address is the address
/// the knock leaves from.
pub fn connect_udp(server: SocketAddr) -> Result<UdpSocket, ClientError> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)
        .map_err(|e| ClientError::network(format!("cannot open a UDP socket: {e}")))?;
    sock.connect(server)
        .map_err(|e| ClientError::network(format!("no route to {server}: {e}")))?;
    Ok(sock)
}

/// The open-for field for an `--allow-ip` choice.
pub fn open_for(allow: AllowIp, sock: &UdpSocket) -> Result<OpenFor, ClientError> {
    Ok(match allow {
        AllowIp::Source => OpenFor::Source,
        AllowIp::Addr(a) => OpenFor::Addr(a),
        AllowIp::Auto => {
            let local = sock
                .local_addr()
                .map_err(|e| ClientError::network(format!("cannot read the local address: {e}")))?;
            OpenFor::Addr(local.ip().to_canonical())
        }
    })
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What one knock says.
#[derive(Debug, Clone)]
pub struct KnockPlan {
    /// Type.
    pub msg_type: MessageType,
    /// Services (empty for close).
    pub services: Vec<String>,
    /// Lifetime (0 for close).
    pub lifetime_s: u32,
    /// Address to open for.
    pub open_for: OpenFor,
    /// Session id.
    pub session_id: [u8; 16],
    /// Timestamp.
    pub timestamp_ms: u64,
}

/// Seals a knock with fresh randomness.
pub fn seal(
    signer: &dyn Signer,
    server_key: &ReceiverPublicKey,
    plan: &KnockPlan,
) -> Result<Vec<u8>, ClientError> {
    let random = spa_keys::random_32()?;
    let ikm = spa_keys::random_32()?;
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&random[..16]);
    let services: Vec<&str> = plan.services.iter().map(String::as_str).collect();
    let req = KnockRequest {
        msg_type: plan.msg_type,
        timestamp_ms: plan.timestamp_ms,
        nonce,
        session_id: plan.session_id,
        lifetime_s: plan.lifetime_s,
        open_for: plan.open_for,
        services: &services,
    };
    seal_knock(signer, server_key, &req, *ikm).map_err(|e| match e {
        SealKnockError::Signer(e) => ClientError::signer(format!("signing failed: {e}")),
        SealKnockError::Encode(proto_spec::body::EncodeError::TooLarge(n)) => ClientError::config(format!(
            "the knock would be {} bytes, over the {}-byte limit: use a certificate with fewer extensions or fewer services",
            n + proto_spec::wire::OVERHEAD,
            proto_spec::wire::DatagramKind::Knock.max_datagram()
        )),
        other => ClientError::config(format!("cannot build the knock: {other}")),
    })
}

/// Sends one datagram.
pub fn send(sock: &UdpSocket, datagram: &[u8]) -> Result<(), ClientError> {
    sock.send(datagram)
        .map(|_| ())
        .map_err(|e| ClientError::network(format!("sending the knock failed: {e}")))
}

/// `--wait`: probes `ip:port` with TCP connects until one succeeds or
/// `timeout` passes. Calls `resend` after each `resend_every` without
/// success, at most `max_resends` times (a lost datagram is the usual cause).
/// Returns the number of resends when the port opened.
pub fn wait_for_port(
    ip: IpAddr,
    port: u16,
    timeout: Duration,
    resend_every: Duration,
    max_resends: u32,
    mut resend: impl FnMut() -> Result<(), ClientError>,
) -> Result<Option<u32>, ClientError> {
    let start = Instant::now();
    let target = SocketAddr::new(ip, port);
    let mut resends = 0;
    let mut last_send = Instant::now();
    let probe = Duration::from_millis(250);
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        let attempt = Instant::now();
        if TcpStream::connect_timeout(&target, probe.min(left)).is_ok() {
            return Ok(Some(resends));
        }
        if last_send.elapsed() >= resend_every && resends < max_resends {
            resend()?;
            resends += 1;
            last_send = Instant::now();
        }
        // A refused connect returns at once: pace the probes.
        let spent = attempt.elapsed();
        if spent < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(50) - spent);
        }
    }
}
