//! Where the tunnel connects for a service: red's address for the
//! relayed services (from `[relay] source`), `127.0.0.1` for green's own,
//! retried while red opens ([`CONNECT_PATIENCE`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use spa_daemon::config::{Config, RelayService, ServiceProto, parse_proto};

use super::{CONNECT_PATIENCE, FIRST_CONNECT_TIMEOUT};

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

/// Connects to a service. Red opens for green a moment after the order
/// reached it, and drops SYNs until then: attempts start with a short
/// timeout that doubles each time (so a slow path still gets long ones),
/// until [`CONNECT_PATIENCE`].
pub(super) fn connect(t: Target) -> io::Result<TcpStream> {
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
