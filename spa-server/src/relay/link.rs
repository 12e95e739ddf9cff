//! One red of green's relay: its address, key and services, the socket
//! orders leave from, the orders being repeated, and its own counters
//! (SPEC §5.1). [`super::Relay`] picks the red of each service and hands
//! out the order timestamps.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};

use proto_spec::UnixMillis;
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::order::OrderFields;
use proto_spec::seal::seal_order;
use proto_spec::sign::GatewaySigner;
use serde_json::{Value, json};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use super::{MAX_PENDING, OrderStamp, RelayError, bad};
use spa_daemon::config::{RelayPort, RelaySection, RelayService, ServiceProto, parse_proto};
use spa_daemon::counters::Counters;

/// What an order tells red.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Open,
    Close,
}

/// A non-blocking TCP connect from `source` to a service on red.
struct Probe {
    sock: Socket,
}

enum ProbeState {
    Pending,
    Connected,
    Failed,
}

impl Probe {
    fn start(source: IpAddr, target: SocketAddr) -> std::io::Result<Self> {
        let sock = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        sock.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
        match sock.connect(&SockAddr::from(target)) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS)
                    || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(Self { sock })
    }

    /// Without blocking: a pending error means the connect failed; a peer
    /// address means it completed (`getpeername` is `ENOTCONN` while the
    /// SYN is unanswered).
    fn state(&self) -> ProbeState {
        match self.sock.take_error() {
            Ok(Some(_)) | Err(_) => return ProbeState::Failed,
            Ok(None) => {}
        }
        match self.sock.peer_addr() {
            Ok(_) => ProbeState::Connected,
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => ProbeState::Pending,
            Err(_) => ProbeState::Failed,
        }
    }
}

/// An order being repeated until confirmed or out of copies.
pub(super) struct Pending {
    pub(super) action: Action,
    pub(super) session: [u8; 16],
    pub(super) identity: String,
    /// This red's services of the request (for logs).
    pub(super) services: Vec<String>,
    pub(super) lifetime_s: u32,
    pub(super) body: Vec<u8>,
    pub(super) body_ts: UnixMillis,
    /// Orders sent so far.
    pub(super) sent: u32,
    /// Copies allowed after the first.
    pub(super) copies: u32,
    pub(super) last_sent_ms: UnixMillis,
    /// What to probe; `None`: blind repeats.
    pub(super) target: Option<SocketAddr>,
    probe: Option<Probe>,
    probed_this_round: bool,
}

impl Pending {
    /// A fresh order for `session`, nothing sent yet.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        action: Action,
        session: [u8; 16],
        identity: String,
        services: Vec<String>,
        lifetime_s: u32,
        body: Vec<u8>,
        body_ts: UnixMillis,
        copies: u32,
        target: Option<SocketAddr>,
        now: UnixMillis,
    ) -> Self {
        Self {
            action,
            session,
            identity,
            services,
            lifetime_s,
            body,
            body_ts,
            sent: 0,
            copies,
            last_sent_ms: now,
            target,
            probe: None,
            probed_this_round: false,
        }
    }
}

/// One red.
pub(super) struct RedLink {
    pub(super) red: SocketAddr,
    red_key: ReceiverPublicKey,
    signer: GatewaySigner,
    pub(super) source: IpAddr,
    /// This red's services: their probe target, if TCP with a port.
    pub(super) services: HashMap<String, Option<u16>>,
    /// The names in file order (status).
    names: Vec<String>,
    pub(super) resend_ms: u64,
    pub(super) resends: u32,
    max_age_ms: u64,
    socket: UdpSocket,
    pub(super) pending: Vec<Pending>,
    /// `relay.*` counters of this red alone.
    pub(super) counters: Counters,
    /// When a probe last connected.
    last_confirmed_ms: Option<UnixMillis>,
}

impl RedLink {
    /// Reads the signing key and binds the sending socket (to `source`,
    /// with `IP_FREEBIND`, so that green may start before the interface
    /// toward red has its address).
    pub(super) fn new(r: &RelaySection, max_age_ms: u64) -> Result<Self, RelayError> {
        let red: SocketAddr = r
            .red
            .parse()
            .map_err(|_| bad("red")(format!("'{}' is not ADDRESS:PORT", r.red)))?;
        let red_key =
            spa_keys::decode_public_key(&r.red_key).map_err(|e| bad("red_key")(e.to_string()))?;
        let signer = spa_keys::read_gateway_signer(&r.signing_key)
            .map_err(|e| bad("signing_key")(e.to_string()))?;
        let source: IpAddr = r
            .source
            .parse()
            .map_err(|_| bad("source")(format!("'{}' is not an IP address", r.source)))?;
        if source.is_ipv4() != red.is_ipv4() {
            return Err(bad("source")("not of relay.red's address family".into()));
        }
        let mut services = HashMap::new();
        let mut names = Vec::new();
        for s in &r.services {
            let target = match s {
                RelayService::Name(_) => None,
                RelayService::Port(RelayPort { proto, port, .. }) => match parse_proto(proto) {
                    Some(ServiceProto::Tcp) => Some(*port),
                    Some(_) => None,
                    None => return Err(bad("services")(format!("unknown protocol '{proto}'"))),
                },
            };
            services.insert(s.name().to_owned(), target);
            names.push(s.name().to_owned());
        }
        let socket = bind_udp(source).map_err(|source_err| RelayError::Socket {
            addr: source,
            source: source_err,
        })?;
        Ok(Self {
            red,
            red_key,
            signer,
            source,
            services,
            names,
            resend_ms: r.resend_ms.max(1),
            resends: r.resends,
            max_age_ms,
            socket,
            pending: Vec::new(),
            counters: Counters::default(),
            last_confirmed_ms: None,
        })
    }

    /// Green's order-signing public key for this red.
    pub(super) fn gateway_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// The first TCP service of `names` on this red, to probe.
    pub(super) fn probe_target(&self, names: &[String]) -> Option<SocketAddr> {
        names
            .iter()
            .find_map(|s| self.services.get(s).copied().flatten())
            .map(|port| SocketAddr::new(self.red.ip(), port))
    }

    /// Forgets the orders of `session` still being repeated (a close
    /// supersedes them: a later copy would reopen what it closes).
    pub(super) fn drop_session(&mut self, session: &[u8; 16]) {
        self.pending.retain(|p| p.session != *session);
    }

    /// Seals a fresh order for `p` and sends it.
    fn send(&mut self, p: &Pending, now: UnixMillis, stamp: &mut OrderStamp) -> Result<(), String> {
        let ikm = spa_keys::random_32().map_err(|e| e.to_string())?;
        // Durable before the datagram exists, so before it is sent.
        let order_timestamp_ms = stamp.next(now).inspect_err(|_| {
            self.counters.bump("relay.store_failures");
        })?;
        let fields = OrderFields {
            order_timestamp_ms,
            session_id: p.session,
            lifetime_s: p.lifetime_s,
            open_for: self.source,
            client_body: &p.body,
        };
        let datagram =
            seal_order(&self.signer, &self.red_key, &fields, *ikm).map_err(|e| e.to_string())?;
        self.socket
            .send_to(&datagram, self.red)
            .map_err(|e| format!("sending to {}: {e}", self.red))?;
        self.counters.bump("relay.orders_sent");
        Ok(())
    }

    /// Sends `p`'s first order and keeps it for repeats.
    pub(super) fn begin(&mut self, mut p: Pending, now: UnixMillis, stamp: &mut OrderStamp) {
        let what = match p.action {
            Action::Open => "request",
            Action::Close => "close",
        };
        match self.send(&p, now, stamp) {
            Ok(()) => info!(
                red = %self.red, identity = %p.identity, session = %hex::encode(p.session),
                services = %p.services.join(","), lifetime_s = p.lifetime_s,
                "order sent to red ({what})"
            ),
            Err(e) => {
                self.counters.bump("relay.send_failures");
                warn!(red = %self.red, session = %hex::encode(p.session), error = %e,
                    "order to red ({what}) not sent; retrying");
            }
        }
        p.sent = 1;
        p.last_sent_ms = now;
        if p.copies == 0 && p.target.is_none() {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            debug!(
                red = %self.red, session = %hex::encode(p.session),
                "relay: too many orders being repeated; this one is sent once"
            );
            return;
        }
        self.pending.push(p);
    }

    /// One repeat round of every pending order.
    pub(super) fn tick(&mut self, now: UnixMillis, stamp: &mut OrderStamp) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if let Some(p) = self.turn(p, now, stamp) {
                self.pending.push(p);
            }
        }
    }

    /// One repeat round of `p`: `Some(p)` to keep it.
    fn turn(&mut self, mut p: Pending, now: UnixMillis, stamp: &mut OrderStamp) -> Option<Pending> {
        let elapsed = now.saturating_sub(p.last_sent_ms);
        if let Some(probe) = &p.probe {
            match probe.state() {
                ProbeState::Connected => {
                    self.counters.bump("relay.confirmed");
                    self.last_confirmed_ms = Some(now);
                    info!(
                        red = %self.red, identity = %p.identity,
                        session = %hex::encode(p.session), services = %p.services.join(","),
                        orders = p.sent, "red opened for green (probe connected)"
                    );
                    return None;
                }
                ProbeState::Failed => p.probe = None,
                ProbeState::Pending => {}
            }
        }
        if let Some(target) = p.target
            && !p.probed_this_round
            && elapsed >= (self.resend_ms / 6).clamp(1, 100)
        {
            p.probed_this_round = true;
            match Probe::start(self.source, target) {
                Ok(probe) => p.probe = Some(probe),
                Err(e) => debug!(target = %target, error = %e, "relay probe not started"),
            }
        }
        if elapsed < self.resend_ms {
            return Some(p);
        }
        // The round is over: a fresh copy, or give up.
        p.probe = None;
        p.probed_this_round = false;
        let too_old = now > p.body_ts.saturating_add(self.max_age_ms);
        if p.sent > p.copies || too_old {
            if p.target.is_some() {
                self.counters.bump("relay.unconfirmed");
                warn!(
                    red = %self.red, identity = %p.identity, session = %hex::encode(p.session),
                    services = %p.services.join(","), orders = p.sent,
                    reason = if too_old { "the client's knock is older than max_age" } else { "no more copies" },
                    "red did not open for green: refused, lost, or the service is down"
                );
            }
            return None;
        }
        match self.send(&p, now, stamp) {
            Ok(()) => {
                debug!(red = %self.red, session = %hex::encode(p.session), copy = p.sent, "order resent to red")
            }
            Err(e) => {
                self.counters.bump("relay.send_failures");
                warn!(red = %self.red, error = %e, "order to red not sent");
            }
        }
        p.sent += 1;
        p.last_sent_ms = now;
        Some(p)
    }

    /// This red in `status`: where, what it hosts, the sessions that
    /// touched it, what is being repeated, and its own counters.
    pub(super) fn status(&self, sessions: usize, now: UnixMillis) -> Value {
        let counters: BTreeMap<String, u64> = self.counters.all();
        json!({
            "red": self.red.to_string(),
            "source": self.source.to_string(),
            "services": self.names,
            "sessions": sessions,
            "pending": self.pending.len(),
            "last_confirmed_age_s": self.last_confirmed_ms.map(|t| now.saturating_sub(t) / 1000),
            "counters": counters,
        })
    }
}

fn bind_udp(source: IpAddr) -> std::io::Result<UdpSocket> {
    let sock = Socket::new(
        Domain::for_address(SocketAddr::new(source, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if source.is_ipv4() {
        sock.set_freebind_v4(true)?;
    } else {
        sock.set_freebind_v6(true)?;
    }
    sock.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    Ok(sock.into())
}
