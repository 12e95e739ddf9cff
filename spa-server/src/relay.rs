//! Green's relay to its reds (SPEC §5, §8.1.1): the [`Hooks`] green runs
//! when its configuration has a `[relay]` table or `[[relay]]` entries,
//! one per red (`link::RedLink`), each with its own address, key and
//! services; a service lives on one red (checked by the configuration).
//!
//! - After an accepted **request-service** that names at least one
//!   service of a red, green seals an order to that red
//!   ([`proto_spec::seal::seal_order`]): a fresh `order_timestamp_ms`
//!   (strictly increasing, `max(now, last + 1)`, SPEC §7.5), the client's
//!   session id, the lifetime green granted, `addr` = that red's `source`
//!   (green's own address toward it, which red opens for), and the
//!   client's body verbatim. A request naming services of two reds goes
//!   to both, the same body to each: each red judges only the names it
//!   hosts (SPEC §5.2). Green records which reds each session touched.
//! - After every accepted **close**, green sends a close order (lifetime
//!   0) with the client's close body to every red the session touched,
//!   and only to those, and stops repeating that session's requests. A
//!   session green does not know (ended long ago, or green restarted: the
//!   record is in memory) is closed at every red: a close must not be
//!   lost for want of a record (SPEC §5).
//! - A session that ends without a client's close (expiry, the operator's
//!   `revoke-session`, a CRL revocation) sends nothing: green holds no
//!   close body signed by the client, and red verifies that signature
//!   (SPEC §5.1). Red's openings end with their granted lifetime (red
//!   grants at most what green granted), or by red's own CRL and
//!   `revoke-session` (SPEC §9).
//!
//! Red never answers. To survive loss, green confirms a request by
//! connecting to the first TCP service of the request on that red, from
//! `source`, with a non-blocking connect checked on every loop turn
//! ([`Hooks::tick`]; the capture loop never waits for it). Until a probe
//! connects, a fresh copy of the order (new timestamp and `ikmE`, SPEC
//! §5.1) goes out every `resend_ms`, at most `resends` times, and never
//! once the client's body is older than `[time] max_age_ms`. A request
//! without a TCP service to probe, and a close, are repeated
//! [`BLIND_COPIES`] times (capped by `resends`) without confirmation.
//!
//! The order timestamp is durable (SPEC §7.5: red's floor for green is
//! strict) and shared by every red ([`OrderStamp`]: strictly increasing
//! across all of them, so per red too). Once [`Relay::use_store`] attached
//! green's replay store, every order timestamp is covered by a
//! *reservation* stored in that store ([`spa_daemon::store::OrderClock`]) and
//! synced before the order leaves: when a timestamp would pass the stored
//! bound, green first stores `timestamp + ORDER_RESERVE_MS`
//! ([`ORDER_RESERVE_MS`]), then sends. On start the relay resumes from the
//! stored bound (`last = bound`), so its next timestamp is
//! `max(now, bound + 1)`: above everything sent before, also after a crash
//! or with the clock set back. If the store cannot be written, the order is
//! not sent (counted as `relay.store_failures`) and is retried with the
//! next copy. Without a store (before `use_store`, and in unit tests) the
//! timestamp is kept in memory only.

mod link;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use proto_spec::UnixMillis;
use proto_spec::body::parse_body;
use serde_json::{Map, Value};
use tracing::{debug, info};

use link::{Action, Pending, RedLink};
use spa_daemon::config::{Config, RelaySection};
use spa_daemon::counters::Counters;
use spa_daemon::daemon::Hooks;
use spa_daemon::gate::{Decision, OpenKind};
use spa_daemon::store::{OrderClock, ReplayDb};

/// Unconfirmed copies after the first order of a close, or of a request
/// with nothing to probe.
pub const BLIND_COPIES: u32 = 2;

/// Orders being repeated at once, per red; beyond, an order is sent once.
pub const MAX_PENDING: usize = 1024;

/// Sessions whose reds green remembers after the session ended (so that a
/// client's close that comes later still goes to those reds only); beyond,
/// the oldest are forgotten and their close goes to every red.
pub const MAX_ENDED: usize = 4096;

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
    /// One red's entry (`[[relay]]` number `index`).
    #[error("relay[{index}] ({red}): {error}")]
    Red {
        /// Its place in the file.
        index: usize,
        /// Its `red` value.
        red: String,
        /// What is wrong.
        error: Box<RelayError>,
    },
}

fn bad(key: &'static str) -> impl Fn(String) -> RelayError {
    move |problem| RelayError::Config { key, problem }
}

/// The order timestamps of every red (SPEC §7.5): strictly increasing,
/// reserved durably before use once a store is attached.
#[derive(Debug, Default)]
pub struct OrderStamp {
    /// The last order timestamp handed out.
    last_order_ms: UnixMillis,
    /// Where `last_order_ms` is reserved durably; `None`: memory only.
    clock: Option<OrderClock>,
}

impl OrderStamp {
    /// `max(now, last + 1)` (SPEC §7.5), durably reserved first when a
    /// store is attached: on error no timestamp is handed out, and the
    /// order must not be sent.
    pub fn next(&mut self, now: UnixMillis) -> Result<UnixMillis, String> {
        let ts = now.max(self.last_order_ms.saturating_add(1));
        if let Some(clock) = &self.clock
            && ts > clock.reserved()
            && let Err(e) = clock.reserve(ts.saturating_add(ORDER_RESERVE_MS))
        {
            return Err(format!("order timestamp not stored, order not sent: {e}"));
        }
        self.last_order_ms = ts;
        Ok(ts)
    }
}

/// The relay hooks: every red, and which reds each session touched.
pub struct Relay {
    links: Vec<RedLink>,
    /// Service name to the red that hosts it.
    by_service: HashMap<String, usize>,
    stamp: OrderStamp,
    /// Live sessions: the reds they touched, one bit per link.
    touched: HashMap<[u8; 16], u64>,
    /// Ended sessions (expired, revoked, closed): their reds, and when,
    /// for a client's close that comes after the end.
    ended: HashMap<[u8; 16], (u64, UnixMillis)>,
    /// `ended` in the order of the ends, oldest first.
    ended_order: VecDeque<([u8; 16], UnixMillis)>,
    max_age_ms: u64,
    /// Per knock, not per red: `relay.requests`, `relay.closes`.
    counters: Counters,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reds: Vec<String> = self.links.iter().map(|l| l.red.to_string()).collect();
        f.debug_struct("Relay")
            .field("reds", &reds)
            .field("sessions", &self.touched.len())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of a configuration, if it has `[relay]` or `[[relay]]`.
    pub fn from_config(cfg: &Config) -> Result<Option<Self>, RelayError> {
        if cfg.relay.is_empty() {
            return Ok(None);
        }
        Self::many(&cfg.relay, cfg.time.max_age_ms).map(Some)
    }

    /// A relay to one red.
    pub fn new(r: &RelaySection, max_age_ms: u64) -> Result<Self, RelayError> {
        Self::many(std::slice::from_ref(r), max_age_ms)
    }

    /// A relay to every red of `reds`, in order. A service listed by two
    /// reds goes to the first (the configuration check refuses it).
    pub fn many(reds: &[RelaySection], max_age_ms: u64) -> Result<Self, RelayError> {
        let mut links = Vec::with_capacity(reds.len());
        let mut by_service = HashMap::new();
        for (index, r) in reds.iter().enumerate() {
            if index >= spa_daemon::config::MAX_REDS {
                return Err(bad("red")("at most 64 reds".into()));
            }
            let link = RedLink::new(r, max_age_ms).map_err(|e| RelayError::Red {
                index,
                red: r.red.clone(),
                error: Box::new(e),
            })?;
            for name in link.services.keys() {
                by_service.entry(name.clone()).or_insert(index);
            }
            links.push(link);
        }
        Ok(Self {
            links,
            by_service,
            stamp: OrderStamp::default(),
            touched: HashMap::new(),
            ended: HashMap::new(),
            max_age_ms,
            ended_order: VecDeque::new(),
            counters: Counters::default(),
        })
    }

    /// Green's order-signing public key toward the first red (what red's
    /// `[[gateways]]` `signing_key` holds).
    pub fn gateway_key(&self) -> [u8; 32] {
        self.links.first().map_or([0; 32], RedLink::gateway_key)
    }

    /// Orders being repeated, every red together.
    pub fn pending(&self) -> usize {
        self.links.iter().map(|l| l.pending.len()).sum()
    }

    /// The reds (`red` addresses) `session` touched and is live at.
    pub fn reds_of(&self, session: &[u8; 16]) -> Vec<SocketAddr> {
        let mask = self.touched.get(session).copied().unwrap_or(0);
        self.reds_in(mask).map(|i| self.links[i].red).collect()
    }

    /// A counter as `status` shows it: `relay.requests` and
    /// `relay.closes` count knocks (a request to two reds is one), the
    /// others orders, summed over every red.
    pub fn counter(&self, name: &str) -> u64 {
        if PER_KNOCK.contains(&name) {
            self.counters.get(name)
        } else {
            self.links.iter().map(|l| l.counters.get(name)).sum()
        }
    }

    fn reds_in(&self, mask: u64) -> impl Iterator<Item = usize> + '_ {
        (0..self.links.len()).filter(move |i| mask & (1u64 << i) != 0)
    }

    /// Keeps the order timestamps durable in green's replay store (SPEC
    /// §7.5): resumes above the bound stored before the restart, and
    /// reserves every later timestamp there before its order is sent.
    pub fn use_store(&mut self, db: &ReplayDb) {
        let clock = db.order_clock();
        let stored = clock.reserved();
        if stored > self.stamp.last_order_ms {
            info!(
                reserved_ms = stored,
                "relay: order timestamps resume above the stored reservation"
            );
        }
        self.stamp.last_order_ms = self.stamp.last_order_ms.max(stored);
        self.stamp.clock = Some(clock);
    }

    /// A request: an order to each red that hosts one of its services.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        session: &[u8; 16],
        identity: &str,
        services: &[String],
        lifetime_s: u32,
        body: &[u8],
        now: UnixMillis,
    ) {
        let mut per_red: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for s in services {
            if let Some(&i) = self.by_service.get(s.as_str()) {
                per_red.entry(i).or_default().push(s.clone());
            }
        }
        if per_red.is_empty() {
            return;
        }
        if per_red.values().map(Vec::len).sum::<usize>() != services.len() || per_red.len() > 1 {
            // SPEC §5.2: each red considers only the names it hosts and
            // ignores the others, which green (or another red) judges.
            debug!(
                identity = %identity, session = %hex::encode(session),
                services = %services.join(","), reds = per_red.len(),
                "a request spans several hosts: each red judges only its own services"
            );
        }
        self.counters.bump("relay.requests");
        let body_ts = body_timestamp(body, now);
        for (i, names) in per_red {
            *self.touched.entry(*session).or_insert(0) |= 1u64 << i;
            let link = &mut self.links[i];
            let target = link.probe_target(&names);
            let copies = if target.is_some() {
                link.resends
            } else {
                link.resends.min(BLIND_COPIES)
            };
            link.counters.bump("relay.requests");
            let p = Pending::new(
                Action::Open,
                *session,
                identity.to_owned(),
                names,
                lifetime_s,
                body.to_vec(),
                body_ts,
                copies,
                target,
                now,
            );
            link.begin(p, now, &mut self.stamp);
        }
    }

    /// Forgets ended sessions beyond [`MAX_ENDED`], and those ended more
    /// than twice `max_age_ms` ago: a client's close is fresh for
    /// `max_age_ms` at most (SPEC §7.1). Amortized O(1).
    fn forget_ended(&mut self, now: UnixMillis) {
        let keep = self.max_age_ms.saturating_mul(2);
        while let Some(&(session, at)) = self.ended_order.front() {
            if self.ended_order.len() <= MAX_ENDED && now.saturating_sub(at) <= keep {
                break;
            }
            self.ended_order.pop_front();
            // Only if not ended again since (a later entry is queued).
            if self.ended.get(&session).is_some_and(|&(_, t)| t == at) {
                self.ended.remove(&session);
            }
        }
    }

    /// A client's close: a close order to every red the session touched
    /// (every red if green has no record of the session).
    fn close(&mut self, session: &[u8; 16], identity: &str, body: &[u8], now: UnixMillis) {
        let known = self
            .touched
            .remove(session)
            .or_else(|| self.ended.remove(session).map(|(m, _)| m));
        let mask = match known {
            Some(m) => m,
            None => {
                debug!(session = %hex::encode(session),
                    "close of a session green has no record of: relayed to every red");
                u64::MAX
            }
        };
        self.counters.bump("relay.closes");
        let body_ts = body_timestamp(body, now);
        let reds: Vec<usize> = self.reds_in(mask).collect();
        for i in reds {
            let link = &mut self.links[i];
            link.drop_session(session);
            link.counters.bump("relay.closes");
            let p = Pending::new(
                Action::Close,
                *session,
                identity.to_owned(),
                Vec::new(),
                0,
                body.to_vec(),
                body_ts,
                link.resends.min(BLIND_COPIES),
                None,
                now,
            );
            link.begin(p, now, &mut self.stamp);
        }
    }
}

/// The counters [`Relay`] keeps per knock; each red keeps its own too.
const PER_KNOCK: [&str; 2] = ["relay.requests", "relay.closes"];

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
                self.request(session, identity, services, *lifetime_s, body, now);
            }
            Decision::Open { .. } => {}
            Decision::Close {
                session,
                identity,
                body,
                ..
            } => self.close(session, identity, body, now),
        }
    }

    /// The session's reds move to `ended`: the daemon ends a session
    /// (including for a client's close, just before
    /// [`Hooks::after_decision`]) before the close is relayed.
    /// Every ended session is recorded, also one that touched no red
    /// (an open-tunnel only): its close then goes to no red.
    fn session_closed(&mut self, session: &[u8; 16], now: UnixMillis) {
        let mask = self.touched.remove(session).unwrap_or(0);
        self.ended.insert(*session, (mask, now));
        self.ended_order.push_back((*session, now));
        self.forget_ended(now);
    }

    fn tick(&mut self, now: UnixMillis) {
        for link in &mut self.links {
            link.tick(now, &mut self.stamp);
        }
        self.forget_ended(now);
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut all = self.counters.all();
        for l in &self.links {
            for (k, v) in l.counters.all() {
                if !PER_KNOCK.contains(&k.as_str()) {
                    *all.entry(k).or_insert(0) += v;
                }
            }
        }
        all.into_iter().collect()
    }

    fn status(&self, out: &mut Map<String, Value>, now: UnixMillis) {
        let reds: Vec<Value> = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let sessions = self
                    .touched
                    .values()
                    .filter(|m| *m & (1u64 << i) != 0)
                    .count();
                l.status(sessions, now)
            })
            .collect();
        out.insert("relay".into(), Value::Array(reds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::body::MessageType;
    use proto_spec::body::OpenFor;
    use proto_spec::cert::{TrustConfig, TrustStore};
    use proto_spec::keys::ReceiverPublicKey;
    use proto_spec::keys::ReceiverSecretKey;
    use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
    use proto_spec::replay::{MemoryReplayState, TimeLimits};
    use proto_spec::seal::{KnockRequest, seal_knock};
    use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa, VECTOR_NOW};
    use proto_spec::verify::{Gateway, KnockVerifier, OrderAction, OrderVerifier};
    use spa_daemon::config::{RelayPort, RelayService};
    use std::net::UdpSocket;

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
        assert_eq!(r.stamp.next(1000), Ok(1000));
        assert_eq!(r.stamp.next(1000), Ok(1001));
        assert_eq!(r.stamp.next(900), Ok(1002));
        assert_eq!(r.stamp.next(5000), Ok(5000));
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
        assert_eq!(r.stamp.next(10_000), Ok(10_000));
        assert_eq!(db.order_clock().reserved(), 10_000 + ORDER_RESERVE_MS);
        // Inside the reservation: handed out without a write.
        assert_eq!(r.stamp.next(10_500), Ok(10_500));
        assert_eq!(r.stamp.next(10_500), Ok(10_501));
        assert_eq!(db.order_clock().reserved(), 11_000);
        // Past it: a new reservation first.
        assert_eq!(r.stamp.next(11_200), Ok(11_200));
        assert_eq!(db.order_clock().reserved(), 12_200);
        drop((r, db));

        let (db, _) = ReplayDb::open(&db_path, 2).expect("reopen");
        let mut r = Relay::new(&sec, 60_000).expect("relay after the restart");
        r.use_store(&db);
        let first = r.stamp.next(5_000).expect("timestamp");
        assert!(first > 11_200, "{first} is not above what was sent");
        assert_eq!(first, 12_201);
        assert_eq!(db.order_clock().reserved(), 12_201 + ORDER_RESERVE_MS);
        // Once the clock passes the bound, it leads again.
        assert_eq!(r.stamp.next(20_000), Ok(20_000));
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
        assert_eq!(relay.counter("relay.orders_sent"), 0);

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
        assert_eq!(relay.counter("relay.orders_sent"), 5);
        assert_eq!(relay.counter("relay.closes"), 1);
    }

    /// Two reds: a request goes to the red of each service it names; a
    /// close goes to the reds the session touched and only those; a close
    /// of a session green has no record of goes to every red.
    #[test]
    fn routes_each_service_to_its_red_and_closes_only_touched_reds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let red_a = testkit::receiver_key("red");
        let red_b = testkit::receiver_key("red b");
        let rx_a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx_b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for rx in [&rx_a, &rx_b] {
            rx.set_nonblocking(true).expect("nonblocking");
        }
        let mut a = section(
            dir.path(),
            &red_a.public_key(),
            rx_a.local_addr().expect("a"),
        );
        a.services = vec![RelayService::Name("web".into())];
        let mut b = a.clone();
        b.red = rx_b.local_addr().expect("b").to_string();
        b.red_key = spa_keys::encode_public_key(&red_b.public_key());
        b.services = vec![RelayService::Name("db".into())];
        let mut relay = Relay::many(&[a, b], 60_000).expect("relay");
        let from = SocketAddr::new(CLIENT, 5555);
        let now = VECTOR_NOW;
        let drain = |rx: &UdpSocket| {
            let mut buf = [0u8; 2048];
            std::iter::from_fn(|| rx.recv_from(&mut buf).ok()).count()
        };
        let open = |session: u8, services: &[&str]| Decision::Open {
            kind: OpenKind::RequestService,
            session: [session; 16],
            identity: "cn:alice".into(),
            identity_key: proto_spec::cert::IdentityKey([7; 32]),
            addr: CLIENT,
            services: services.iter().map(|s| s.to_string()).collect(),
            lifetime_s: 30,
            certificate: Vec::new(),
            body: vec![0x5a; 200],
        };
        let close = |session: u8| Decision::Close {
            session: [session; 16],
            identity: "cn:alice".into(),
            identity_key: proto_spec::cert::IdentityKey([7; 32]),
            body: vec![0x5a; 200],
        };
        relay.after_decision(&open(1, &["web", "db"]), from, now);
        relay.after_decision(&open(2, &["web", "tunnel"]), from, now);
        assert_eq!(relay.reds_of(&[1; 16]).len(), 2);
        assert_eq!(relay.reds_of(&[2; 16]), vec![rx_a.local_addr().expect("a")]);
        assert_eq!((drain(&rx_a), drain(&rx_b)), (2, 1));
        assert_eq!(relay.counter("relay.requests"), 2);
        // Session 2 touched red A only: its close goes there alone, also
        // once the daemon ended it first (as it does for a client's close).
        relay.session_closed(&[2; 16], now);
        relay.after_decision(&close(2), from, now + 1);
        assert_eq!((drain(&rx_a), drain(&rx_b)), (1, 0));
        relay.after_decision(&close(1), from, now + 2);
        assert_eq!((drain(&rx_a), drain(&rx_b)), (1, 1));
        // A session that touched no red (an open-tunnel only), once the
        // daemon ended it: its close goes nowhere.
        relay.session_closed(&[3; 16], now);
        relay.after_decision(&close(3), from, now + 2);
        assert_eq!((drain(&rx_a), drain(&rx_b)), (0, 0));
        // No record (say, green restarted): every red.
        relay.after_decision(&close(9), from, now + 3);
        assert_eq!((drain(&rx_a), drain(&rx_b)), (1, 1));
        let mut status = Map::new();
        relay.status(&mut status, now);
        let reds = status["relay"].as_array().expect("per red");
        assert_eq!(reds.len(), 2);
        assert_eq!(reds[1]["services"], serde_json::json!(["db"]));
        assert_eq!(reds[0]["counters"]["relay.closes"], 3);
        assert_eq!(reds[1]["counters"]["relay.closes"], 2);
    }
}
