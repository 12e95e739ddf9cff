//! Green's relay to red (SPEC §5, §8.1.1): the [`Hooks`] green runs when
//! its configuration has a `[relay]` section.
//!
//! - After an accepted **request-service** that names at least one service
//!   of `[relay] services`, green seals an order to red
//!   ([`proto_spec::seal::seal_order`]): a fresh `order_timestamp_ms`
//!   (strictly increasing, `max(now, last + 1)`, SPEC §7.5), the client's
//!   session id, the lifetime green granted, `addr` = `[relay] source`
//!   (green's own address toward red, which red opens for), and the
//!   client's body verbatim. It goes out as one UDP datagram from `source`
//!   to `[relay] red`.
//! - After every accepted **close**, green sends a close order (lifetime
//!   0) with the client's close body, and stops repeating that session's
//!   requests. Closes are relayed whether or not the session used red:
//!   green keeps no durable record of which sessions did.
//!
//! Red never answers. To survive loss, green confirms a request by
//! connecting to the first TCP service of the request on red, from
//! `source`, with a non-blocking connect checked on every loop turn
//! ([`Hooks::tick`]; the capture loop never waits for it). Until a probe
//! connects, a fresh copy of the order (new timestamp and `ikmE`, SPEC
//! §5.1) goes out every `resend_ms`, at most `resends` times, and never
//! once the client's body is older than `[time] max_age_ms`. A request
//! without a TCP service to probe, and a close, are repeated
//! [`BLIND_COPIES`] times (capped by `resends`) without confirmation.
//!
//! The order timestamp is durable (SPEC §7.5: red's floor for green is
//! strict). Once [`Relay::use_store`] attached green's replay store, every
//! order timestamp is covered by a *reservation* stored in that store
//! ([`spa_daemon::store::OrderClock`]) and synced before the order leaves: when
//! a timestamp would pass the stored bound, green first stores
//! `timestamp + ORDER_RESERVE_MS` ([`ORDER_RESERVE_MS`]), then sends. On
//! start the relay resumes from the stored bound (`last = bound`), so its
//! next timestamp is `max(now, bound + 1)`: above everything sent before,
//! also after a crash or with the clock set back. If the store cannot be
//! written, the order is not sent (counted as `relay.store_failures`) and
//! is retried with the next copy. Without a store (before `use_store`, and
//! in unit tests) the timestamp is kept in memory only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use proto_spec::UnixMillis;
use proto_spec::body::parse_body;
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::order::OrderFields;
use proto_spec::seal::seal_order;
use proto_spec::sign::GatewaySigner;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use spa_daemon::config::{
    Config, RelayPort, RelaySection, RelayService, ServiceProto, parse_proto,
};
use spa_daemon::counters::Counters;
use spa_daemon::daemon::Hooks;
use spa_daemon::gate::{Decision, OpenKind};
use spa_daemon::store::{OrderClock, ReplayDb};

/// Unconfirmed copies after the first order of a close, or of a request
/// with nothing to probe.
pub const BLIND_COPIES: u32 = 2;

/// Orders being repeated at once; beyond, an order is sent once.
pub const MAX_PENDING: usize = 1024;

/// How far past an order's timestamp green reserves timestamps durably
/// (SPEC §7.5), ms. One synced write then covers an order and the copies
/// and other orders of the following second, instead of one `fsync` per
/// datagram: a request's first order writes, its resends (every
/// `resend_ms`, 300 ms by default) usually do not. The price is that after
/// a crash green may resume up to this far ahead of its clock; that stays
/// far below red's `max_future_skew_ms` (10 s by default), so red still
/// accepts those orders.
pub const ORDER_RESERVE_MS: u64 = 1_000;

/// Why the relay could not be set up. Each names its key.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A value of `[relay]` is unusable.
    #[error("relay.{key}: {problem}")]
    Config {
        /// The key under `[relay]`.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The socket orders leave from.
    #[error("relay.source: cannot bind a UDP socket to {addr}: {source}")]
    Socket {
        /// The address.
        addr: IpAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn bad(key: &'static str) -> impl Fn(String) -> RelayError {
    move |problem| RelayError::Config { key, problem }
}

/// What an order tells red.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
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
struct Pending {
    action: Action,
    session: [u8; 16],
    identity: String,
    /// Red's services of the request (for logs).
    services: Vec<String>,
    lifetime_s: u32,
    body: Vec<u8>,
    body_ts: UnixMillis,
    /// Orders sent so far.
    sent: u32,
    /// Copies allowed after the first.
    copies: u32,
    last_sent_ms: UnixMillis,
    /// What to probe; `None`: blind repeats.
    target: Option<SocketAddr>,
    probe: Option<Probe>,
    probed_this_round: bool,
}

/// The relay hooks.
pub struct Relay {
    red: SocketAddr,
    red_key: ReceiverPublicKey,
    signer: GatewaySigner,
    source: IpAddr,
    /// Red's services: their probe target, if TCP with a port.
    services: HashMap<String, Option<u16>>,
    resend_ms: u64,
    resends: u32,
    max_age_ms: u64,
    socket: UdpSocket,
    /// The last order timestamp handed out. SPEC §7.5.
    last_order_ms: UnixMillis,
    /// Where `last_order_ms` is reserved durably; `None`: memory only.
    clock: Option<OrderClock>,
    pending: Vec<Pending>,
    counters: Counters,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("red", &self.red)
            .field("source", &self.source)
            .field("services", &self.services)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of a configuration, if it has a `[relay]` section.
    pub fn from_config(cfg: &Config) -> Result<Option<Self>, RelayError> {
        cfg.relay
            .as_ref()
            .map(|r| Self::new(r, cfg.time.max_age_ms))
            .transpose()
    }

    /// Reads the signing key and binds the sending socket (to `source`,
    /// with `IP_FREEBIND`, so that green may start before the interface
    /// toward red has its address).
    pub fn new(r: &RelaySection, max_age_ms: u64) -> Result<Self, RelayError> {
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
            resend_ms: r.resend_ms.max(1),
            resends: r.resends,
            max_age_ms,
            socket,
            last_order_ms: 0,
            clock: None,
            pending: Vec::new(),
            counters: Counters::default(),
        })
    }

    /// Green's order-signing public key (what red's `[[gateways]]`
    /// `signing_key` holds).
    pub fn gateway_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// Orders being repeated.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Keeps the order timestamps durable in green's replay store (SPEC
    /// §7.5): resumes above the bound stored before the restart, and
    /// reserves every later timestamp there before its order is sent.
    pub fn use_store(&mut self, db: &ReplayDb) {
        let clock = db.order_clock();
        let stored = clock.reserved();
        if stored > self.last_order_ms {
            info!(
                reserved_ms = stored,
                "relay: order timestamps resume above the stored reservation"
            );
        }
        self.last_order_ms = self.last_order_ms.max(stored);
        self.clock = Some(clock);
    }

    /// `max(now, last + 1)` (SPEC §7.5), durably reserved first when a store
    /// is attached: on error no timestamp is handed out, and the order must
    /// not be sent.
    fn next_timestamp(&mut self, now: UnixMillis) -> Result<UnixMillis, String> {
        let ts = now.max(self.last_order_ms.saturating_add(1));
        if let Some(clock) = &self.clock
            && ts > clock.reserved()
            && let Err(e) = clock.reserve(ts.saturating_add(ORDER_RESERVE_MS))
        {
            self.counters.bump("relay.store_failures");
            return Err(format!("order timestamp not stored, order not sent: {e}"));
        }
        self.last_order_ms = ts;
        Ok(ts)
    }

    /// Seals a fresh order for `p` and sends it.
    fn send(&mut self, p: &Pending, now: UnixMillis) -> Result<(), String> {
        let ikm = spa_keys::random_32().map_err(|e| e.to_string())?;
        // Durable before the datagram exists, so before it is sent.
        let order_timestamp_ms = self.next_timestamp(now)?;
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
    fn begin(&mut self, mut p: Pending, now: UnixMillis) {
        let what = match p.action {
            Action::Open => "request",
            Action::Close => "close",
        };
        match self.send(&p, now) {
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
                session = %hex::encode(p.session),
                "relay: too many orders being repeated; this one is sent once"
            );
            return;
        }
        self.pending.push(p);
    }

    /// One repeat round of `p`: `Some(p)` to keep it.
    fn turn(&mut self, mut p: Pending, now: UnixMillis) -> Option<Pending> {
        let elapsed = now.saturating_sub(p.last_sent_ms);
        if let Some(probe) = &p.probe {
            match probe.state() {
                ProbeState::Connected => {
                    self.counters.bump("relay.confirmed");
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
        match self.send(&p, now) {
            Ok(()) => {
                debug!(session = %hex::encode(p.session), copy = p.sent, "order resent to red")
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

fn body_timestamp(body: &[u8], now: UnixMillis) -> UnixMillis {
    parse_body(body).map_or(now, |b| b.timestamp_ms)
}

impl Hooks for Relay {
    fn after_decision(&mut self, decision: &Decision, _source: SocketAddr, now: UnixMillis) {
        match decision {
            Decision::Open {
                kind,
                session,
                identity,
                services,
                lifetime_s,
                body,
                ..
            } if *kind == OpenKind::RequestService => {
                let red: Vec<String> = services
                    .iter()
                    .filter(|s| self.services.contains_key(s.as_str()))
                    .cloned()
                    .collect();
                if red.is_empty() {
                    return;
                }
                if red.len() != services.len() {
                    // SPEC §5.2: red considers only the names it hosts and
                    // ignores the others, which green judged.
                    debug!(
                        identity = %identity, session = %hex::encode(session),
                        services = %services.join(","),
                        "a request mixes green's and red's services: red judges only its own"
                    );
                }
                let target = red
                    .iter()
                    .find_map(|s| self.services.get(s).copied().flatten())
                    .map(|port| SocketAddr::new(self.red.ip(), port));
                self.counters.bump("relay.requests");
                let p = Pending {
                    action: Action::Open,
                    session: *session,
                    identity: identity.clone(),
                    services: red,
                    lifetime_s: *lifetime_s,
                    body_ts: body_timestamp(body, now),
                    body: body.clone(),
                    sent: 0,
                    copies: if target.is_some() {
                        self.resends
                    } else {
                        self.resends.min(BLIND_COPIES)
                    },
                    last_sent_ms: now,
                    target,
                    probe: None,
                    probed_this_round: false,
                };
                self.begin(p, now);
            }
            Decision::Open { .. } => {}
            Decision::Close {
                session,
                identity,
                body,
                ..
            } => {
                // A close supersedes the session's requests still being
                // repeated: a later copy would reopen what it closes.
                self.pending.retain(|p| p.session != *session);
                self.counters.bump("relay.closes");
                let p = Pending {
                    action: Action::Close,
                    session: *session,
                    identity: identity.clone(),
                    services: Vec::new(),
                    lifetime_s: 0,
                    body_ts: body_timestamp(body, now),
                    body: body.clone(),
                    sent: 0,
                    copies: self.resends.min(BLIND_COPIES),
                    last_sent_ms: now,
                    target: None,
                    probe: None,
                    probed_this_round: false,
                };
                self.begin(p, now);
            }
        }
    }

    fn tick(&mut self, now: UnixMillis) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if let Some(p) = self.turn(p, now) {
                self.pending.push(p);
            }
        }
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.counters
            .all()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::body::{MessageType, OpenFor};
    use proto_spec::cert::{TrustConfig, TrustStore};
    use proto_spec::keys::ReceiverSecretKey;
    use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
    use proto_spec::replay::{MemoryReplayState, TimeLimits};
    use proto_spec::seal::{KnockRequest, seal_knock};
    use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa, VECTOR_NOW};
    use proto_spec::verify::{Gateway, KnockVerifier, OrderAction, OrderVerifier};

    use spa_daemon::gate::Gate;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 200, 1, 2));
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn section(dir: &std::path::Path, red_pk: &ReceiverPublicKey, red: SocketAddr) -> RelaySection {
        let key = dir.join("signing.key");
        let seed = spa_keys::generate_gateway_key().expect("seed");
        spa_keys::write_gateway_key(&key, &seed, false).expect("write");
        RelaySection {
            red: red.to_string(),
            red_key: spa_keys::encode_public_key(red_pk),
            signing_key: key,
            source: "127.0.0.1".into(),
            services: vec![
                RelayService::Port(RelayPort {
                    name: "web".into(),
                    proto: "tcp".into(),
                    port: 1,
                }),
                RelayService::Name("dns".into()),
            ],
            resend_ms: 300,
            resends: 5,
        }
    }

    fn policy(services: &[&str]) -> Policy {
        Policy {
            rules: vec![Rule {
                identity: IdentityPattern::parse("cn:alice"),
                services: ServiceSet::Named(services.iter().map(|s| s.to_string()).collect()),
            }],
            ..Policy::default()
        }
    }

    #[test]
    fn timestamps_strictly_increase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let red = testkit::receiver_key("red");
        let mut r = Relay::new(
            &section(
                dir.path(),
                &red.public_key(),
                "127.0.0.1:9".parse().expect("addr"),
            ),
            60_000,
        )
        .expect("relay");
        assert_eq!(r.next_timestamp(1000), Ok(1000));
        assert_eq!(r.next_timestamp(1000), Ok(1001));
        assert_eq!(r.next_timestamp(900), Ok(1002));
        assert_eq!(r.next_timestamp(5000), Ok(5000));
    }

    /// SPEC §7.5: each timestamp is covered by a stored reservation before
    /// it is handed out; one write covers the next `ORDER_RESERVE_MS`; after
    /// a reopen (a restart, here with the clock set back) the relay resumes
    /// above every timestamp sent before.
    #[test]
    fn timestamps_are_reserved_in_the_store_and_resume_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let red = testkit::receiver_key("red");
        let sec = section(
            dir.path(),
            &red.public_key(),
            "127.0.0.1:9".parse().expect("addr"),
        );
        let db_path = dir.path().join("replay.redb");
        let (db, _) = ReplayDb::open(&db_path, 1).expect("open");
        let mut r = Relay::new(&sec, 60_000).expect("relay");
        r.use_store(&db);
        assert_eq!(r.next_timestamp(10_000), Ok(10_000));
        assert_eq!(db.order_clock().reserved(), 10_000 + ORDER_RESERVE_MS);
        // Inside the reservation: handed out without a write.
        assert_eq!(r.next_timestamp(10_500), Ok(10_500));
        assert_eq!(r.next_timestamp(10_500), Ok(10_501));
        assert_eq!(db.order_clock().reserved(), 11_000);
        // Past it: a new reservation first.
        assert_eq!(r.next_timestamp(11_200), Ok(11_200));
        assert_eq!(db.order_clock().reserved(), 12_200);
        drop((r, db));

        let (db, _) = ReplayDb::open(&db_path, 2).expect("reopen");
        let mut r = Relay::new(&sec, 60_000).expect("relay after the restart");
        r.use_store(&db);
        let first = r.next_timestamp(5_000).expect("timestamp");
        assert!(first > 11_200, "{first} is not above what was sent");
        assert_eq!(first, 12_201);
        assert_eq!(db.order_clock().reserved(), 12_201 + ORDER_RESERVE_MS);
        // Once the clock passes the bound, it leads again.
        assert_eq!(r.next_timestamp(20_000), Ok(20_000));
    }

    /// The order that leaves the socket is one red accepts, opening for the
    /// relay source and the red service of a request that also names one of
    /// green's; copies are refreshes; a close supersedes the repeats.
    #[test]
    fn relays_a_request_red_accepts_and_a_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("relay test root").expect("ca");
        let trust = || {
            TrustStore::new(&TrustConfig {
                anchors: vec![ca.cert_der().to_vec()],
                ..TrustConfig::default()
            })
            .expect("trust")
        };
        let alice = ca
            .signer(&ClientCertSpec::new("alice", KeyAlg::Ed25519, 7))
            .expect("alice");
        let green_key: ReceiverSecretKey = testkit::receiver_key("green");
        let green_pk = green_key.public_key();
        let red_key = testkit::receiver_key("red");
        let red_pk = red_key.public_key();
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("timeout");
        let mut relay = Relay::new(
            &section(dir.path(), &red_pk, rx.local_addr().expect("addr")),
            60_000,
        )
        .expect("relay");
        let mut green = KnockVerifier::new(
            vec![green_key],
            trust(),
            policy(&["tunnel", "web", "dns"]),
            TimeLimits::default(),
        );
        let mut red = OrderVerifier::new(
            vec![red_key],
            vec![Gateway {
                signing_key: relay.gateway_key(),
                receiver_keys: vec![green_pk],
            }],
            trust(),
            policy(&["web"]),
            TimeLimits::default(),
            TimeLimits::default(),
        )
        .expect("red");
        // Red hosts web only (SPEC §5.2): green's "tunnel" is not red's to judge.
        red.hosted_services = Some(vec!["web".into()]);
        let now = VECTOR_NOW;
        let knock = |msg_type, ts, services: &[&str]| {
            let req = KnockRequest {
                msg_type,
                timestamp_ms: ts,
                nonce: [0x11; 16],
                session_id: [0x22; 16],
                lifetime_s: if msg_type == MessageType::Close {
                    0
                } else {
                    30
                },
                open_for: OpenFor::Addr(CLIENT),
                services,
            };
            seal_knock(alice.as_ref(), &green_pk, &req, [0x33; 32]).expect("knock")
        };
        let mut floors = MemoryReplayState::default();
        let mut red_floors = MemoryReplayState::default();
        let from = SocketAddr::new(CLIENT, 5555);

        // An open-tunnel is never relayed.
        let d = Gate::verify(
            &mut green,
            &knock(MessageType::OpenTunnel, now - 5, &["web"]),
            CLIENT,
            now,
            &mut floors,
        )
        .expect("open");
        relay.after_decision(&d, from, now);
        assert_eq!(relay.counters.get("relay.orders_sent"), 0);

        let d = Gate::verify(
            &mut green,
            &knock(MessageType::RequestService, now - 4, &["tunnel", "web"]),
            CLIENT,
            now,
            &mut floors,
        )
        .expect("green accepts");
        relay.after_decision(&d, from, now);
        assert_eq!(relay.pending(), 1, "a probed request is repeated");
        let mut buf = [0u8; 2048];
        let (n, src) = rx.recv_from(&mut buf).expect("order");
        assert_eq!(src.ip(), LOCAL);
        let order = red
            .verify(&buf[..n], src.ip(), now, &mut red_floors)
            .expect("red accepts");
        assert_eq!(order.action, OrderAction::Open);
        assert_eq!(order.open_for, LOCAL);
        assert_eq!(order.services, vec!["web".to_owned()]);
        assert_eq!(order.session_id, [0x22; 16]);

        // A fresh copy once resend_ms passed, with a later timestamp.
        relay.tick(now + 350);
        let (n2, _) = rx.recv_from(&mut buf).expect("copy");
        let copy = red
            .verify(&buf[..n2], src.ip(), now + 1, &mut red_floors)
            .expect("a copy is a refresh");
        assert!(copy.order_timestamp_ms > order.order_timestamp_ms);

        let d = Gate::verify(
            &mut green,
            &knock(MessageType::Close, now - 3, &[]),
            CLIENT,
            now + 2,
            &mut floors,
        )
        .expect("close");
        relay.after_decision(&d, from, now + 2);
        assert_eq!(
            relay.pending(),
            1,
            "the close replaced the request's repeats"
        );
        let (n3, _) = rx.recv_from(&mut buf).expect("close order");
        let c = red
            .verify(&buf[..n3], src.ip(), now + 3, &mut red_floors)
            .expect("red accepts the close");
        assert_eq!(c.action, OrderAction::Close);
        assert_eq!(c.lifetime_s, 0);
        // Two blind copies, then done.
        for k in 1..=3 {
            relay.tick(now + 2 + 300 * k);
        }
        assert_eq!(relay.pending(), 0);
        assert_eq!(relay.counters.get("relay.orders_sent"), 5);
        assert_eq!(relay.counters.get("relay.closes"), 1);
    }
}
