//! Knock floors shared by a fleet of greens in etcd (SPEC §7.6):
//! `[replay] backend = "etcd"` ([`spa_daemon::store::shared`]), the
//! [`SharedFloors`] the daemon loop commits through.
//!
//! # Layout
//!
//! Under the configured prefix `P`:
//!
//! - `P/g` → `G` (SPEC §7.2), `P/format` → `1`;
//! - `P/f/<identity key, hex>` → the identity's floor.
//!
//! Values are decimal milliseconds zero-padded to 20 digits, so that etcd's
//! byte-wise value comparison is the numeric one and `etcdctl get` shows
//! them as they are.
//!
//! # Commit
//!
//! [`SharedFloors::commit`] is one etcd transaction, a linearizable
//! compare-and-set (SPEC §7.3, §7.6): *if* the stored floor is below `ts`
//! *and* `G` is below `ts`, *then* put the floor `ts`, *else* read both. etcd
//! answers once the write is committed by a majority of its members (each
//! syncs its log), so the floor is durable before the verdict, and
//! before the firewall opens. When the *else* branch shows a floor or `G` at
//! or above `ts`, another green accepted this knock (or a later one): the
//! commit fails with [`SharedCommitError::Replayed`], which the verifier
//! refuses as `replayed` (`ReplayState::is_replay`). An identity without a
//! floor is committed with "the key does not exist" as the condition.
//!
//! # Failing closed
//!
//! A commit that gets no answer within `timeout_ms`, or any error, fails
//! with another [`SharedStoreError`]: the knock is refused as
//! `storage_failure`, the failure logged at error level, counted, and kept
//! for `status`. From then on the store is *unavailable*: commits fail at
//! once (a flood of valid knocks cannot hold the daemon in timeouts) until a
//! probe on the store's own thread reaches etcd again; then knocks are
//! accepted again. There is no fallback to the local file (SPEC §7.6).
//! A transaction that timed out may still be applied by etcd: the knock was
//! refused and its floor raised all the same, which costs the client one
//! retry (its next knock carries a later timestamp, SPEC §7.5), never a
//! replay.
//!
//! # Reads
//!
//! [`SharedFloors::floor`] and [`SharedFloors::global_floor`] (the cheap check
//! before the signature, SPEC §7.3 step 1) read a local cache of the values
//! this green committed or saw. The cache can only be behind etcd (floors
//! never decrease), so it never refuses a knock etcd would accept; the
//! compare-and-set decides.
//!
//! # Threads
//!
//! The etcd client is asynchronous: it runs on a tokio runtime with one
//! worker thread (`spa-etcd`), built by [`EtcdFloors::start`], which the
//! daemon calls after dropping privileges, so the thread has none. The
//! daemon loop blocks on each commit (bounded by the timeout).
//!
//! # Pruning
//!
//! SPEC §7.4 on the shared store: every [`PRUNE_EVERY`], the store's thread
//! removes floors below `now - keep_ms` in transactions that also raise `G`
//! to at least the largest floor removed, each conditioned on the
//! revisions it read (a floor raised meanwhile is left alone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use proto_spec::cert::IdentityKey;
use serde_json::{Value, json};
use spa_daemon::store::shared::{EtcdSettings, SharedCommitError, SharedFloors};
use tracing::{error, info, warn};

/// How often the store's thread prunes old floors (SPEC §7.4).
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often an unavailable store is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The layout version stored at `P/format`.
pub const FORMAT: &str = "1";
/// Floors removed per pruning transaction (etcd's default limit is 128
/// operations per transaction).
const PRUNE_BATCH: usize = 50;
/// Compare-and-set rounds before a commit gives up (another green raced
/// for the same identity each time).
const CAS_ROUNDS: usize = 4;

/// Why a commit to the shared store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedStoreError {
    /// The stored floor or `G` is at or above the timestamp: another green
    /// accepted this knock or a later one (SPEC §7.6).
    #[error("the shared floor is at or above the knock's timestamp (accepted by another green)")]
    Replayed,
    /// The store was unavailable at the last attempt; commits fail until a
    /// probe reaches it again.
    #[error("shared replay store unavailable (fail closed): {0}")]
    Unavailable(String),
    /// No answer within the configured bound.
    #[error("shared replay store: no answer within {0} ms")]
    Timeout(u64),
    /// The client or the server reported an error.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value that is not a floor, or another layout version.
    #[error("shared replay store: unexpected value under {0}")]
    BadValue(String),
    /// The prefix holds no `G` (wiped): it is set again (`G = now`) by the
    /// next probe.
    #[error("shared replay store: no global floor under the prefix (wiped?)")]
    NoGlobalFloor,
    /// Other greens raised the same floor in every round.
    #[error("shared replay store: compare-and-set lost {CAS_ROUNDS} rounds in a row")]
    Contended,
    /// The runtime or client could not be built.
    #[error("shared replay store: {0}")]
    Start(String),
}

/// Knock floors in etcd. See the module documentation.
pub struct EtcdFloors {
    rt: tokio::runtime::Runtime,
    kv: KvClient,
    keys: Keys,
    timeout: Duration,
    health: Arc<Health>,
    cache: HashMap<IdentityKey, u64>,
    cache_pruned_at: u64,
    keep_ms: u64,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdFloors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFloors")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// What the daemon thread and the store's thread share.
#[derive(Debug, Default)]
struct Health {
    available: AtomicBool,
    /// `G` as last seen; 0 before.
    global: AtomicU64,
    last_error: Mutex<Option<(String, u64)>>,
    commits: AtomicU64,
    replayed: AtomicU64,
    failures: AtomicU64,
    recoveries: AtomicU64,
    pruned: AtomicU64,
}

impl Health {
    fn fail(&self, e: &SharedStoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let was = self.available.swap(false, Ordering::AcqRel);
        record(self, e);
        if was {
            error!(error = %e, "shared replay store unreachable: knock refused (storage_failure), and every knock until it answers again");
        }
    }
}

#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn global(&self) -> String {
        format!("{}/g", self.prefix)
    }
    fn format(&self) -> String {
        format!("{}/format", self.prefix)
    }
    fn floors(&self) -> String {
        format!("{}/f/", self.prefix)
    }
    fn floor(&self, id: &IdentityKey) -> String {
        format!("{}/f/{}", self.prefix, hex::encode(id.0))
    }
}

fn encode(v: u64) -> String {
    format!("{v:020}")
}

fn decode(key: &str, v: &[u8]) -> Result<u64, SharedStoreError> {
    std::str::from_utf8(v)
        .ok()
        .filter(|s| s.len() == 20)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SharedStoreError::BadValue(key.to_owned()))
}

/// The wall clock in ms: the store's own thread needs `now` for `G = now`
/// (SPEC §7.2) and for pruning; nothing on the knock path reads it here.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl EtcdFloors {
    /// Builds the runtime (one worker thread: call this after dropping
    /// privileges), the client, and makes a first attempt to reach the
    /// store (setting `G = now` under a new prefix, SPEC §7.2). An
    /// unreachable store is logged and the daemon runs failing closed until
    /// it is reachable; only a setting the client refuses is an error.
    pub fn start(s: &EtcdSettings) -> Result<Self, SharedStoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("spa-etcd")
            .enable_all()
            .build()
            .map_err(|e| SharedStoreError::Start(format!("runtime: {e}")))?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(s.timeout)
            .with_timeout(s.timeout)
            .with_keep_alive(Duration::from_secs(10), s.timeout)
            .with_require_leader(true);
        if let Some(t) = &s.tls {
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &*t.key_pem));
            if let Some(n) = &t.server_name {
                tls = tls.domain_name(n.clone());
            }
            opts = opts.with_tls(tls);
        }
        // The client connects lazily: this fails only on settings.
        let client = rt.block_on(Client::connect(&s.endpoints, Some(opts)))?;
        let me = Self {
            rt,
            kv: client.kv_client(),
            keys: Keys {
                prefix: s.prefix.clone(),
            },
            timeout: s.timeout,
            health: Arc::new(Health::default()),
            cache: HashMap::new(),
            cache_pruned_at: 0,
            keep_ms: s.keep_ms,
            endpoints: s.endpoints.clone(),
        };
        // The timer is made inside the runtime (block_on's future).
        let first = init(me.kv.clone(), me.keys.clone(), wall_ms());
        match me
            .rt
            .block_on(async { tokio::time::timeout(me.timeout, first).await })
        {
            Ok(Ok(g)) => {
                me.health.global.fetch_max(g, Ordering::AcqRel);
                me.health.available.store(true, Ordering::Release);
                info!(endpoints = ?me.endpoints, prefix = %me.keys.prefix, global_floor = g,
                    "shared replay store (etcd) reached");
            }
            Ok(Err(e)) => me.health.fail(&e),
            Err(_) => me
                .health
                .fail(&SharedStoreError::Timeout(timeout_ms(me.timeout))),
        }
        if !me.health.available.load(Ordering::Acquire) {
            error!(endpoints = ?me.endpoints, "shared replay store unreachable at start: every knock is refused (storage_failure) until it answers");
        }
        me.rt.spawn(background(
            me.kv.clone(),
            me.keys.clone(),
            me.health.clone(),
            me.timeout,
            me.keep_ms,
        ));
        Ok(me)
    }

    /// Whether the last attempt reached the store.
    pub fn available(&self) -> bool {
        self.health.available.load(Ordering::Acquire)
    }

    /// For `status`: backend, endpoints, availability, last error.
    fn status_json(&self, now_ms: u64) -> Value {
        let last = self
            .health
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        json!({
            "backend": "etcd",
            "endpoints": self.endpoints,
            "prefix": self.keys.prefix,
            "available": self.available(),
            "global_floor": self.health.global.load(Ordering::Acquire),
            "cached_identities": self.cache.len(),
            "last_error": last.map(|(e, at)| json!({
                "error": e,
                "at_ms": at,
                "age_s": now_ms.saturating_sub(at) / 1000,
            })),
        })
    }

    /// Counters for `status` (`replay.etcd.*`).
    fn counter_values(&self) -> Vec<(String, u64)> {
        let h = &self.health;
        [
            ("replay.etcd.commits", &h.commits),
            ("replay.etcd.replayed", &h.replayed),
            ("replay.etcd.failures", &h.failures),
            ("replay.etcd.recoveries", &h.recoveries),
            ("replay.etcd.pruned", &h.pruned),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.load(Ordering::Relaxed)))
        .collect()
    }

    /// Drops cached floors that pruning may have removed from etcd (they
    /// only make the cheap check weaker, never wrong), at most once a
    /// minute; `ts` is the committed knock's timestamp, close to now.
    fn prune_cache(&mut self, ts: u64) {
        if ts.saturating_sub(self.cache_pruned_at) < 60_000 {
            return;
        }
        self.cache_pruned_at = ts;
        let cutoff = ts.saturating_sub(self.keep_ms);
        self.cache.retain(|_, f| *f >= cutoff);
    }

    /// The compare-and-set, with the precise error (tests, benches).
    pub fn try_commit(
        &mut self,
        id: &IdentityKey,
        timestamp_ms: u64,
    ) -> Result<(), SharedStoreError> {
        if !self.available() {
            let last = self
                .health
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map_or_else(|| "not reached yet".to_owned(), |(e, _)| e.clone());
            self.health.failures.fetch_add(1, Ordering::Relaxed);
            let e = SharedStoreError::Unavailable(last);
            error!(error = %e, "knock refused: its floor cannot be committed to the shared replay store");
            return Err(e);
        }
        let attempt = cas(self.kv.clone(), self.keys.clone(), *id, timestamp_ms);
        let timeout = self.timeout;
        let outcome = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, attempt).await });
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(CasError::Error(SharedStoreError::Timeout(timeout_ms(
                self.timeout,
            )))),
        };
        match result {
            Ok(()) => {
                self.health.commits.fetch_add(1, Ordering::Relaxed);
                self.cache.insert(*id, timestamp_ms);
                self.prune_cache(timestamp_ms);
                Ok(())
            }
            Err(Seen { floor, global }) => {
                // The else branch's values: the knock is at or below them.
                if let Some(f) = floor {
                    let e = self.cache.entry(*id).or_insert(f);
                    *e = (*e).max(f);
                }
                if let Some(g) = global {
                    self.health.global.fetch_max(g, Ordering::AcqRel);
                }
                self.health.replayed.fetch_add(1, Ordering::Relaxed);
                Err(SharedStoreError::Replayed)
            }
            Err(e) => {
                // Logged at error level by `fail` (available → unavailable).
                let e = e.into_error();
                self.health.fail(&e);
                Err(e)
            }
        }
    }
}

impl SharedFloors for EtcdFloors {
    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        self.cache.get(id).copied()
    }

    fn global_floor(&self) -> Option<u64> {
        match self.health.global.load(Ordering::Acquire) {
            0 => None,
            g => Some(g),
        }
    }

    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), SharedCommitError> {
        self.try_commit(id, timestamp_ms).map_err(|e| match e {
            SharedStoreError::Replayed => SharedCommitError::Replayed,
            e => SharedCommitError::Unavailable(e.to_string()),
        })
    }

    fn status(&self, now_ms: u64) -> Value {
        self.status_json(now_ms)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.counter_values()
    }
}

fn timeout_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A failed compare-and-set that read the floor and `G`, or an error.
enum CasError {
    Seen {
        floor: Option<u64>,
        global: Option<u64>,
    },
    Error(SharedStoreError),
}
use CasError::Seen;

impl CasError {
    fn into_error(self) -> SharedStoreError {
        match self {
            Self::Error(e) => e,
            Seen { .. } => SharedStoreError::Replayed,
        }
    }
}

impl<E: Into<SharedStoreError>> From<E> for CasError {
    fn from(e: E) -> Self {
        Self::Error(e.into())
    }
}

/// The compare-and-set of SPEC §7.6 (see the module documentation).
async fn cas(mut kv: KvClient, keys: Keys, id: IdentityKey, ts: u64) -> Result<(), CasError> {
    let (fk, gk, v) = (keys.floor(&id), keys.global(), encode(ts));
    // First as if the identity had a floor (the common case); a missing
    // key fails a value comparison, and the else branch shows it.
    let mut exists = true;
    for _ in 0..CAS_ROUNDS {
        let floor_cond = if exists {
            Compare::value(fk.clone(), CompareOp::Less, v.clone())
        } else {
            Compare::version(fk.clone(), CompareOp::Equal, 0)
        };
        let txn = Txn::new()
            .when([
                floor_cond,
                Compare::value(gk.clone(), CompareOp::Less, v.clone()),
            ])
            .and_then([TxnOp::put(fk.clone(), v.clone(), None)])
            .or_else([TxnOp::get(fk.clone(), None), TxnOp::get(gk.clone(), None)]);
        let resp = kv.txn(txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let (floor, global) = read_two(&resp, &fk, &gk)?;
        let Some(g) = global else {
            return Err(SharedStoreError::NoGlobalFloor.into());
        };
        if g >= ts || floor.is_some_and(|f| f >= ts) {
            return Err(Seen {
                floor,
                global: Some(g),
            });
        }
        // Both below ts: the key's existence changed, or a race; again.
        exists = floor.is_some();
    }
    Err(SharedStoreError::Contended.into())
}

/// The two gets of a failed transaction's else branch.
fn read_two(
    resp: &TxnResponse,
    fk: &str,
    gk: &str,
) -> Result<(Option<u64>, Option<u64>), SharedStoreError> {
    let mut out = [None, None];
    for (slot, (r, key)) in out.iter_mut().zip(resp.op_responses().iter().zip([fk, gk])) {
        if let TxnOpResponse::Get(g) = r
            && let Some(kv) = g.kvs().first()
        {
            *slot = Some(decode(key, kv.value())?);
        }
    }
    Ok((out[0], out[1]))
}

/// Reads `G`, setting `G = now` and the format first under a new prefix
/// (SPEC §7.2, §7.6). Returns `G`.
async fn init(mut kv: KvClient, keys: Keys, now: u64) -> Result<u64, SharedStoreError> {
    let (gk, fk) = (keys.global(), keys.format());
    let txn = Txn::new()
        .when([Compare::version(gk.clone(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(gk.clone(), encode(now), None),
            TxnOp::put(fk.clone(), FORMAT, None),
        ])
        .or_else([TxnOp::get(gk.clone(), None), TxnOp::get(fk.clone(), None)]);
    let resp = kv.txn(txn).await?;
    if resp.succeeded() {
        warn!(prefix = %keys.prefix, global_floor = now,
            "shared replay store: no state under the prefix; set G = now (knocks sealed before now are refused)");
        return Ok(now);
    }
    let rs = resp.op_responses();
    let value = |i: usize| match rs.get(i) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    };
    match value(1) {
        Some(f) if f == FORMAT.as_bytes() => {}
        _ => return Err(SharedStoreError::BadValue(fk)),
    }
    let g = value(0).ok_or(SharedStoreError::NoGlobalFloor)?;
    decode(&gk, &g)
}

/// The store's thread: probes an unavailable store until it answers, and
/// prunes (SPEC §7.4).
async fn background(kv: KvClient, keys: Keys, health: Arc<Health>, timeout: Duration, keep: u64) {
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if !health.available.load(Ordering::Acquire) {
            let probe = tokio::time::timeout(timeout, init(kv.clone(), keys.clone(), wall_ms()));
            match probe.await {
                Ok(Ok(g)) => {
                    health.global.fetch_max(g, Ordering::AcqRel);
                    health.available.store(true, Ordering::Release);
                    health.recoveries.fetch_add(1, Ordering::Relaxed);
                    info!(
                        global_floor = g,
                        "shared replay store reachable again: knocks are accepted"
                    );
                }
                Ok(Err(e)) => record(&health, &e),
                Err(_) => record(&health, &SharedStoreError::Timeout(timeout_ms(timeout))),
            }
            continue;
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let cutoff = wall_ms().saturating_sub(keep);
            match tokio::time::timeout(
                timeout.saturating_mul(20),
                prune(kv.clone(), keys.clone(), cutoff),
            )
            .await
            {
                Ok(Ok(n)) => {
                    health.pruned.fetch_add(n, Ordering::Relaxed);
                    if n > 0 {
                        info!(removed = n, "shared replay store pruned");
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "shared replay store pruning failed"),
                Err(_) => warn!("shared replay store pruning timed out"),
            }
        }
    }
}

/// Keeps `e` for `status`.
fn record(health: &Health, e: &SharedStoreError) {
    *health
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some((e.to_string(), wall_ms()));
}

/// Removes floors below `cutoff`, raising `G` to at least each removed
/// floor in the same transaction (SPEC §7.4). Returns how many went.
async fn prune(mut kv: KvClient, keys: Keys, cutoff: u64) -> Result<u64, SharedStoreError> {
    let resp = kv
        .get(keys.floors(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut old = Vec::new();
    for e in resp.kvs() {
        let key = String::from_utf8_lossy(e.key()).into_owned();
        let f = decode(&key, e.value())?;
        if f < cutoff {
            old.push((key, e.mod_revision(), f));
        }
    }
    let gk = keys.global();
    let mut removed = 0;
    for batch in old.chunks(PRUNE_BATCH) {
        let g = kv.get(gk.clone(), None).await?;
        let Some(gkv) = g.kvs().first() else {
            return Err(SharedStoreError::NoGlobalFloor);
        };
        let (g_now, g_rev) = (decode(&gk, gkv.value())?, gkv.mod_revision());
        let top = batch.iter().map(|(_, _, f)| *f).max().unwrap_or(0);
        let mut when = vec![Compare::mod_revision(gk.clone(), CompareOp::Equal, g_rev)];
        let mut then = vec![TxnOp::put(gk.clone(), encode(g_now.max(top)), None)];
        for (k, rev, _) in batch {
            when.push(Compare::mod_revision(k.clone(), CompareOp::Equal, *rev));
            then.push(TxnOp::delete(k.clone(), None));
        }
        if kv
            .txn(Txn::new().when(when).and_then(then))
            .await?
            .succeeded()
        {
            removed += u64::try_from(batch.len()).unwrap_or(u64::MAX);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_compare_as_numbers() {
        let (a, b) = (encode(999), encode(1000));
        assert!(a.as_bytes() < b.as_bytes());
        assert_eq!(encode(u64::MAX).len(), 20);
        assert_eq!(decode("k", b.as_bytes()).ok(), Some(1000));
        assert!(decode("k", b"1000").is_err());
        assert!(decode("k", b"0000000000000000000x").is_err());
    }
}
