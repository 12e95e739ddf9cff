//! The opt-in Prometheus endpoint (`[metrics] listen`), for both daemons.
//!
//! What it exposes (names as scraped; the Grafana dashboard in
//! `spa-server/dist/grafana-dashboard.json` uses them):
//!
//! | metric | type | labels | from |
//! |---|---|---|---|
//! | `spa_refused_total` | counter | `reason` (SPEC §8.3 code, `.detail`) | `refused.*` |
//! | `spa_accepted_total` | counter | `kind` (open-tunnel, request-service, close, order) | `accepted.*` |
//! | `spa_blocks_total` | counter | | `blocked` (sources the IPS blocked) |
//! | `spa_events_total` | counter | `name` (every `status` counter) | all |
//! | `spa_sessions` | gauge | | live sessions |
//! | `spa_blocked_sources` | gauge | | running blocks |
//! | `spa_replay_commit_seconds` | histogram | | each durable replay commit (SPEC §7.3) |
//! | `spa_relay_orders_total` | counter | `red`, `outcome` (requests, closes, orders_sent, confirmed, unconfirmed, send_failures, store_failures) | green's relay, per red |
//! | `spa_relay_pending` | gauge | `red` | orders being repeated |
//!
//! **Who may scrape.** Only management peers: the listener is bound to
//! one address of the host (its management address or loopback; the
//! configuration refuses the unspecified address, so the protected
//! interface shows no listener), the nftables ruleset drops every packet
//! to its port from a source that is not a management network (before
//! `ct state established`, so not even a knock-opened source reaches it;
//! [`spa_nft::FirewallConfig::metrics_port`]), and the server itself
//! answers a peer outside loopback and the management networks with an
//! empty 403, in case the firewall was removed by hand.
//!
//! **Cost on the knock path.** The daemon's counters are published into
//! the registry by a timer (every 250 ms, [`Metrics::publish`]), not per
//! knock; the knock path gains only the commit timer ([`Timed`]): two
//! clock reads and one histogram observation per accepted knock
//! (BENCHMARKS.md, "Metrics").
//!
//! **Server.** `tiny_http` on its own threads, started after privileges
//! were dropped (the socket is bound before), so a slow scraper never
//! stalls the capture loop.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Instant;

use ipnet::IpNet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use proto_spec::cert::IdentityKey;
use proto_spec::replay::ReplayState;
use serde_json::Value;
use tracing::{debug, info, warn};

/// Label pairs of one series.
type Labels = Vec<(String, String)>;

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `metrics.listen` is not an address.
    #[error("metrics.listen: '{0}' is not ADDRESS:PORT")]
    Address(String),
    /// Binding the listener.
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Starting the HTTP server.
    #[error("metrics: cannot start the HTTP server on {addr}: {why}")]
    Server {
        /// Where.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
}

/// The bound listener, before privileges are dropped.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `listen` (`[metrics] listen`).
    pub fn bind(listen: &str) -> Result<Self, MetricsError> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| MetricsError::Address(listen.to_owned()))?;
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The registry's metric handles, and what was published last.
pub struct Metrics {
    refused: Family<Labels, Counter>,
    accepted: Family<Labels, Counter>,
    blocks: Counter,
    events: Family<Labels, Counter>,
    sessions: Gauge,
    blocked_sources: Gauge,
    /// Durable replay commits, seconds.
    pub commit: Histogram,
    relay_orders: Family<Labels, Counter>,
    relay_pending: Family<Labels, Gauge>,
    /// The last value published of each counter, by series.
    last: HashMap<String, u64>,
    registry: Option<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("series", &self.last.len())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric of the module table.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("spa");
        let refused = Family::<Labels, Counter>::default();
        let accepted = Family::<Labels, Counter>::default();
        let blocks = Counter::default();
        let events = Family::<Labels, Counter>::default();
        let sessions = Gauge::default();
        let blocked_sources = Gauge::default();
        // 50 µs to ~1.6 s: tmpfs commits to a disk stalled by a writer.
        let commit = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        let relay_orders = Family::<Labels, Counter>::default();
        let relay_pending = Family::<Labels, Gauge>::default();
        r.register(
            "refused",
            "Refused datagrams by reason (SPEC 8.3)",
            refused.clone(),
        );
        r.register(
            "accepted",
            "Accepted knocks and orders by kind",
            accepted.clone(),
        );
        r.register("blocks", "Sources blocked by the IPS", blocks.clone());
        r.register(
            "events",
            "Every counter of the daemon's status, by name",
            events.clone(),
        );
        r.register("sessions", "Live sessions", sessions.clone());
        r.register(
            "blocked_sources",
            "Running blocks (addresses or prefixes)",
            blocked_sources.clone(),
        );
        r.register(
            "replay_commit_seconds",
            "Durable replay-store commits (SPEC 7.3), seconds",
            commit.clone(),
        );
        r.register(
            "relay_orders",
            "Green's relay per red: requests, closes, orders and their outcomes",
            relay_orders.clone(),
        );
        r.register(
            "relay_pending",
            "Orders being repeated, per red",
            relay_pending.clone(),
        );
        Self {
            refused,
            accepted,
            blocks,
            events,
            sessions,
            blocked_sources,
            commit,
            relay_orders,
            relay_pending,
            last: HashMap::new(),
            registry: Some(r),
        }
    }

    /// Adds to `counter` what `key` grew since the last publication.
    fn advance(last: &mut HashMap<String, u64>, key: &str, value: u64, counter: &Counter) {
        let before = last.get(key).copied().unwrap_or(0);
        if value > before {
            counter.inc_by(value - before);
            last.insert(key.to_owned(), value);
        }
    }

    /// Publishes the daemon's counters (as `status` reports them), its
    /// gauges, and the hooks' status sections (green's `relay`, one entry
    /// per red). Called on a timer, not per knock.
    pub fn publish(
        &mut self,
        counters: &BTreeMap<String, u64>,
        sessions: usize,
        blocked: usize,
        hooks: &serde_json::Map<String, Value>,
    ) {
        let last = &mut self.last;
        for (name, &v) in counters {
            let label = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
            Self::advance(
                last,
                &format!("e/{name}"),
                v,
                &self.events.get_or_create_owned(&label("name", name)),
            );
            if let Some(reason) = name.strip_prefix("refused.") {
                let c = self.refused.get_or_create_owned(&label("reason", reason));
                Self::advance(last, &format!("r/{name}"), v, &c);
            } else if let Some(kind) = name.strip_prefix("accepted.") {
                let c = self.accepted.get_or_create_owned(&label("kind", kind));
                Self::advance(last, &format!("a/{name}"), v, &c);
            } else if name == "blocked" {
                Self::advance(last, "b", v, &self.blocks);
            }
        }
        self.sessions
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
        self.blocked_sources
            .set(i64::try_from(blocked).unwrap_or(i64::MAX));
        let reds = hooks.get("relay").and_then(Value::as_array);
        for red in reds.into_iter().flatten() {
            let Some(addr) = red["red"].as_str() else {
                continue;
            };
            let pending = red["pending"].as_i64().unwrap_or(0);
            self.relay_pending
                .get_or_create(&vec![("red".to_owned(), addr.to_owned())])
                .set(pending);
            let Some(counters) = red["counters"].as_object() else {
                continue;
            };
            for (name, v) in counters {
                let outcome = name.strip_prefix("relay.").unwrap_or(name);
                let labels = vec![
                    ("red".to_owned(), addr.to_owned()),
                    ("outcome".to_owned(), outcome.to_owned()),
                ];
                let c = self.relay_orders.get_or_create_owned(&labels);
                Self::advance(
                    last,
                    &format!("o/{addr}/{outcome}"),
                    v.as_u64().unwrap_or(0),
                    &c,
                );
            }
        }
    }

    /// The exposition text (OpenMetrics) of a registry.
    pub fn encode(registry: &Registry) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, registry);
        out
    }

    /// Starts the HTTP server on `listener` (after privileges were
    /// dropped): `GET /metrics` from loopback or a `management` network
    /// gets the registry; anything else from there a 404; any other peer
    /// an empty 403.
    pub fn serve(
        &mut self,
        listener: Listener,
        management: Vec<IpNet>,
    ) -> Result<(), MetricsError> {
        let addr = listener.addr;
        let Some(registry) = self.registry.take() else {
            return Err(MetricsError::Server {
                addr,
                why: "already serving".into(),
            });
        };
        let server = tiny_http::Server::from_listener(listener.listener, None).map_err(|e| {
            MetricsError::Server {
                addr,
                why: e.to_string(),
            }
        })?;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for req in server.incoming_requests() {
                    answer(req, &registry, &management);
                }
            })
            .map_err(|e| MetricsError::Server {
                addr,
                why: e.to_string(),
            })?;
        info!(listen = %addr, "metrics endpoint: GET /metrics, management networks only");
        Ok(())
    }

    /// The registry, while it is not being served (tests, benches).
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }
}

/// Whether `peer` may scrape: loopback or a management network.
pub fn may_scrape(peer: IpAddr, management: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || management.iter().any(|n| n.contains(&peer))
}

fn answer(req: tiny_http::Request, registry: &Registry, management: &[IpNet]) {
    let peer = req.remote_addr().map(SocketAddr::ip);
    if !peer.is_some_and(|p| may_scrape(p, management)) {
        warn!(peer = ?peer, "metrics: scrape from outside the management networks refused");
        let _ = req.respond(tiny_http::Response::empty(403));
        return;
    }
    let path = req.url().split('?').next().unwrap_or("");
    if *req.method() != tiny_http::Method::Get || !(path == "/metrics" || path == "/") {
        let _ = req.respond(tiny_http::Response::empty(404));
        return;
    }
    let body = Metrics::encode(registry);
    let mut resp = tiny_http::Response::from_string(body);
    if let Ok(h) = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    ) {
        resp.add_header(h);
    }
    if let Err(e) = req.respond(resp) {
        debug!(error = %e, "metrics: the scraper went away");
    }
}

/// A replay store whose commits are timed into a histogram (SPEC §7.3:
/// the durable commit before the firewall opens). Reads are not timed.
#[derive(Debug)]
pub struct Timed<'a, R> {
    inner: &'a mut R,
    histogram: &'a Histogram,
}

impl<'a, R> Timed<'a, R> {
    /// Times `inner`'s commits into `histogram`.
    pub fn new(inner: &'a mut R, histogram: &'a Histogram) -> Self {
        Self { inner, histogram }
    }
}

impl<R: ReplayState> ReplayState for Timed<'_, R> {
    type Error = R::Error;

    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        self.inner.floor(id)
    }

    fn global_floor(&self) -> Option<u64> {
        self.inner.global_floor()
    }

    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), Self::Error> {
        let start = Instant::now();
        let r = self.inner.commit(id, timestamp_ms);
        self.histogram.observe(start.elapsed().as_secs_f64());
        r
    }

    fn commit_pair(
        &mut self,
        first: (&IdentityKey, u64),
        second: (&IdentityKey, u64),
    ) -> Result<(), Self::Error> {
        let start = Instant::now();
        let r = self.inner.commit_pair(first, second);
        self.histogram.observe(start.elapsed().as_secs_f64());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::replay::MemoryReplayState;

    #[test]
    fn publishes_counter_growth_and_per_red_outcomes() {
        let mut m = Metrics::new();
        let mut c = BTreeMap::new();
        c.insert("refused.mac_mismatch".to_owned(), 3);
        c.insert("refused.malformed.truncated".to_owned(), 1);
        c.insert("accepted.open-tunnel".to_owned(), 2);
        c.insert("blocked".to_owned(), 1);
        let hooks: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"relay":[{"red":"10.0.0.2:62202","pending":1,
                "counters":{"relay.orders_sent":4,"relay.confirmed":1}}]}"#,
        )
        .expect("json");
        m.publish(&c, 2, 1, &hooks);
        c.insert("refused.mac_mismatch".to_owned(), 5);
        m.publish(&c, 1, 0, &hooks);
        let text = Metrics::encode(m.registry().expect("registry"));
        for line in [
            "spa_refused_total{reason=\"mac_mismatch\"} 5",
            "spa_refused_total{reason=\"malformed.truncated\"} 1",
            "spa_accepted_total{kind=\"open-tunnel\"} 2",
            "spa_blocks_total 1",
            "spa_events_total{name=\"refused.mac_mismatch\"} 5",
            "spa_sessions 1",
            "spa_blocked_sources 0",
            "spa_relay_orders_total{red=\"10.0.0.2:62202\",outcome=\"orders_sent\"} 4",
            "spa_relay_pending{red=\"10.0.0.2:62202\"} 1",
            "spa_replay_commit_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn timed_commits_are_observed_and_reads_are_not() {
        let m = Metrics::new();
        let mut state = MemoryReplayState::default();
        let id = IdentityKey([1; 32]);
        let mut t = Timed::new(&mut state, &m.commit);
        t.commit(&id, 10).expect("commit");
        t.commit_pair((&id, 11), (&IdentityKey([2; 32]), 5))
            .expect("pair");
        assert_eq!(t.floor(&id), Some(11));
        let text = Metrics::encode(m.registry().expect("registry"));
        assert!(text.contains("spa_replay_commit_seconds_count 2"), "{text}");
    }

    #[test]
    fn only_loopback_and_management_may_scrape() {
        let mgmt: Vec<IpNet> = vec!["10.200.9.0/24".parse().expect("net")];
        assert!(may_scrape("127.0.0.1".parse().expect("ip"), &mgmt));
        assert!(may_scrape("10.200.9.7".parse().expect("ip"), &mgmt));
        assert!(may_scrape("::ffff:10.200.9.7".parse().expect("ip"), &mgmt));
        assert!(!may_scrape("10.200.8.7".parse().expect("ip"), &mgmt));
    }

    /// Every `spa_…` name the Grafana dashboard queries is one this module
    /// exposes (a renamed metric would leave an empty panel).
    #[test]
    fn the_dashboard_queries_only_exposed_metrics() {
        let dashboard: Value =
            serde_json::from_str(include_str!("../../spa-server/dist/grafana-dashboard.json"))
                .expect("json");
        let mut m = Metrics::new();
        let mut c = BTreeMap::new();
        for name in ["refused.stale", "accepted.close", "blocked"] {
            c.insert(name.to_owned(), 1);
        }
        let hooks: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"relay":[{"red":"r","pending":0,"counters":{"relay.requests":1}}]}"#,
        )
        .expect("json");
        m.publish(&c, 0, 0, &hooks);
        let text = Metrics::encode(m.registry().expect("registry"));
        let exposed: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                for word in expr.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
                    if word.starts_with("spa_") {
                        queried += 1;
                        assert!(exposed.contains(word), "{word} in {expr} is not exposed");
                    }
                }
            }
        }
        assert!(queried >= 10);
    }
}
