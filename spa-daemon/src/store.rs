//! The durable replay store: the daemons' implementation of
//! [`proto_spec::replay::ReplayState`] (SPEC §7.2-§7.4), used by green
//! (knock floors) and red (gateway and client floors).
//!
//! # Layout
//!
//! One [`redb`] file with two tables:
//!
//! - `floors`: identity key (32 bytes) → floor (`u64`, ms);
//! - `meta`: `"global_floor"` → `G` (ms), `"format"` → [`FORMAT_VERSION`],
//!   and on green `"order_reserved"` → the bound of its order timestamps
//!   ([`OrderClock`], SPEC §7.5; absent until green's relay sends an order).
//!
//! Every floor is mirrored in a `HashMap` loaded at open, so
//! [`ReplayState::floor`] and [`ReplayState::global_floor`] never touch the
//! disk. Without a reservation, writes go to the file first, in one write transaction committed with
//! [`Durability::Immediate`] (an `fsync` before `commit` returns), and only
//! then to the mirror: a failed write leaves the mirror as it was and returns
//! an error (the verifier turns it into `storage_failure`, SPEC §7.3).
//!
//! # The reservation
//!
//! SPEC §7.3.1: after [`ReplayDb::start_reservation`] the store keeps
//! `meta["reserved"]` = `R` durably ahead of the clock; a commit at or below
//! it raises the mirror only, and the floors are written in the background
//! by a [`Reserver`] (see `reservation`). [`ReplayDb::open`] raises `G` to an
//! `R` it finds (the last run did not [`ReplayDb::close`]) and removes it.
//!
//! # Losing state
//!
//! SPEC §7.2: a receiver that starts without its durable state sets `G = now`
//! and stores it durably before accepting anything. [`ReplayDb::open`] does
//! this when the file is missing, when it exists but holds no replay state,
//! and when it is unreadable or corrupt; a corrupt file is first moved aside
//! to `<path>.corrupt-<now>` (kept for inspection, never reused).
//! [`OpenReport`] tells the daemon which case happened so it can log it.
//!
//! Errors that say nothing about the file's contents (another process holds
//! the lock, permission denied, an I/O error) are returned instead: the
//! daemon refuses to start rather than throw away a good store.
//!
//! A knock accepted just before the state was lost may carry a timestamp up
//! to `MAX_FUTURE_SKEW` ahead of the clock; `G = now` refuses it only once the
//! clock passes it. A daemon that wants to close that window passes
//! `now + max_future_skew_ms` as `now_ms` to [`ReplayDb::open`], at the cost of
//! refusing honest knocks for that long after a loss.
//!
//! # Pruning
//!
//! SPEC §7.4: [`ReplayDb::prune`] removes the entries whose floor is below
//! `now - max_age` and, in the same transaction, raises `G` to at least the
//! largest floor it removed; memory and file size stay proportional to the
//! identities accepted within the last `max_age`.
//!
//! # Green's order timestamps
//!
//! SPEC §7.5: green keeps the `last_sent` of its order timestamps durably,
//! because red's floor for green is strict. [`ReplayDb::order_clock`] hands
//! green's relay an [`OrderClock`]: a handle on the same file (redb allows
//! one handle per file), writing `meta["order_reserved"]` with the same
//! durable transactions. The relay decides what to store (see
//! green's relay, `spa_server::relay`); this module only keeps the value, never lowering it.
//!
//! # Ownership
//!
//! After a failed write the file is reopened by path, by then as the
//! daemon's unprivileged user: the daemons give the file to that user
//! ([`ReplayDb::chown`]) before they drop privileges, and `check-config`
//! checks that the user can search its directory.
//!
//! No function here reads the clock: every time comes in as `now_ms`.

pub mod shared;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use proto_spec::cert::IdentityKey;

mod error;
mod file;
mod reservation;
mod sequenced;

pub use error::{OpenReport, OpenState, PruneReport, StoreError};
use file::*;
use proto_spec::replay::ReplayState;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use reservation::Reservation;
pub use reservation::{
    DEFAULT_LEAD_MS, MAX_LEAD_MS, MIN_LEAD_MS, Reserver, ReserverThread, TickReport,
};
pub use sequenced::Sequenced;

/// Per-identity floors.
const FLOORS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("floors");
/// `G` and the format version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEY_GLOBAL: &str = "global_floor";
const KEY_FORMAT: &str = "format";
/// Green's order timestamp bound (SPEC §7.5), see [`OrderClock`].
const KEY_ORDER: &str = "order_reserved";
/// The replay reservation `R` (SPEC §7.3.1), see [`Reserver`].
const KEY_RESERVED: &str = "reserved";

/// The layout version written in `meta`. A file with another version is
/// treated as unreadable (moved aside, `G = now`).
pub const FORMAT_VERSION: u64 = 1;

/// redb's page cache. Reads are served from the in-memory mirror, so the cache
/// only holds the pages a commit rewrites; redb's default (1 GiB) would let it
/// grow far beyond what the store needs.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The durable replay store. See the module documentation.
#[derive(Debug)]
pub struct ReplayDb {
    path: PathBuf,
    /// Shared with the [`OrderClock`]s and the [`Reserver`] handed out, so
    /// that all write through one database handle and one reopen path. The
    /// lock is held for memory updates; only synchronous commits hold it
    /// during a write.
    inner: Arc<Mutex<Inner>>,
}

/// Green's durable order timestamp record (SPEC §7.5), kept in the replay
/// store's file: a handle from [`ReplayDb::order_clock`].
///
/// It stores one value, the *reservation*: a bound at or above every order
/// timestamp green has sent. What bound to store, and when, is the relay's
/// choice (green's relay, `spa_server::relay`); this handle only makes it durable and never
/// lowers it.
#[derive(Debug, Clone)]
pub struct OrderClock {
    inner: Arc<Mutex<Inner>>,
}

/// The store's state, behind [`ReplayDb`]'s lock.
#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// `None` after a write failed: redb then refuses further writes until
    /// the file is reopened, which the next write does. Shared so that the
    /// reservation's background write runs without the lock.
    db: Option<Arc<Database>>,
    floors: HashMap<IdentityKey, u64>,
    global: u64,
    /// `meta["order_reserved"]`, 0 if absent.
    order_reserved: u64,
    /// Set by [`ReplayDb::start_reservation`]: commits below `R` stay in
    /// memory (SPEC §7.3.1). `None`: every commit is written and synced.
    reservation: Option<Reservation>,
}

/// How opening an existing file failed.
enum LoadError {
    /// The contents are unusable: move aside and start fresh.
    Corrupt(String),
    /// Anything else: report it, touch nothing.
    Fatal(StoreError),
}

/// What a readable file holds.
struct Loaded {
    db: Database,
    floors: HashMap<IdentityKey, u64>,
    global: Option<u64>,
    order_reserved: Option<u64>,
    reserved: Option<u64>,
}

impl ReplayDb {
    /// Opens the store at `path`, creating it on first start. See the module
    /// documentation for the cases; `now_ms` becomes `G` whenever the state
    /// was lost (and names the moved-aside file of a corrupt one).
    pub fn open(path: &Path, now_ms: u64) -> Result<(Self, OpenReport), StoreError> {
        let (inner, report) = Inner::open(path, now_ms)?;
        let store = Self {
            path: inner.path.clone(),
            inner: Arc::new(Mutex::new(inner)),
        };
        Ok((store, report))
    }

    /// Gives the store's file to `uid:gid` (before the privilege drop):
    /// after a failed write the store reopens the file by path, as the
    /// daemon's user.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), StoreError> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
            .map_err(|e| io_err(&self.path, "chown", e))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of identities with a floor.
    pub fn len(&self) -> usize {
        self.lock().floors.len()
    }

    /// True when no identity has a floor.
    pub fn is_empty(&self) -> bool {
        self.lock().floors.is_empty()
    }

    /// The global floor `G` (always set in this store).
    pub fn global(&self) -> u64 {
        self.lock().global
    }

    /// Raises every listed floor (never lowers one) in one durable
    /// transaction. [`ReplayState::commit`] and [`ReplayState::commit_pair`]
    /// are this with one and two entries; an identity listed twice gets the
    /// larger timestamp. Returns once the write is on stable storage; on error
    /// nothing changed in memory.
    pub fn commit_many(&mut self, entries: &[(IdentityKey, u64)]) -> Result<(), StoreError> {
        self.lock().commit_many(entries)
    }

    /// [`Self::commit_many`] after re-checking, under the same lock, that
    /// every entry still passes its floor rule and `G` (SPEC §7.3: a
    /// receiver that verifies concurrently re-checks at commit). If one
    /// does not, nothing is committed and the error is
    /// [`StoreError::Replayed`].
    pub fn commit_checked(
        &mut self,
        entries: &[(IdentityKey, u64, proto_spec::replay::FloorRule)],
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let ok = entries
            .iter()
            .all(|(id, ts, rule)| rule.passes(*ts, g.floors.get(id).copied()) && *ts > g.global);
        if !ok {
            return Err(StoreError::Replayed);
        }
        let plain: Vec<(IdentityKey, u64)> = entries.iter().map(|&(id, ts, _)| (id, ts)).collect();
        g.commit_many(&plain)
    }

    /// Another handle on the same store (the same state, lock and file),
    /// for verification threads.
    pub fn handle(&self) -> Self {
        Self {
            path: self.path.clone(),
            inner: Arc::clone(&self.inner),
        }
    }

    /// Removes the entries whose floor is below `now_ms - max_age_ms`, after
    /// raising `G` to at least the largest of them, in one durable
    /// transaction (SPEC §7.4). A timestamp at or below a pruned floor is
    /// then refused by `G`; one above it is older than `max_age` and stale.
    pub fn prune(&mut self, now_ms: u64, max_age_ms: u64) -> Result<PruneReport, StoreError> {
        self.lock().prune(now_ms, max_age_ms)
    }

    /// Switches the store to the replay reservation (SPEC §7.3.1): writes
    /// `R = now + lead_ms` durably, after which a commit at or below the
    /// durable `R` is kept in memory and returns at once. The returned
    /// [`Reserver`] must be ticked every [`Reserver::tick_ms`] (on a thread
    /// of its own) to keep `R` ahead of the clock and write the floors.
    pub fn start_reservation(&mut self, lead_ms: u64, now_ms: u64) -> Result<Reserver, StoreError> {
        let lead_ms = lead_ms.clamp(MIN_LEAD_MS, MAX_LEAD_MS);
        let mut g = self.lock();
        g.start_reservation(lead_ms, now_ms)?;
        let tick_ms = g.reservation.as_ref().map_or(1, Reservation::tick_ms);
        drop(g);
        Ok(Reserver {
            inner: Arc::clone(&self.inner),
            tick_ms,
        })
    }

    /// The durable reservation `R`, if the reservation is in force.
    pub fn reservation(&self) -> Option<u64> {
        self.lock().reservation.as_ref().map(|r| r.durable)
    }

    /// Floors accepted but not yet written (reservation mode).
    pub fn dirty(&self) -> usize {
        self.lock()
            .reservation
            .as_ref()
            .map_or(0, |r| r.dirty.len())
    }

    /// A clean stop: writes the floors kept in memory and removes `R` in one
    /// durable transaction, so the next start has no reservation to wait
    /// out (SPEC §7.3.1). Later commits are written one by one again.
    /// Returns the number of floors written. On error `R` stays on disk
    /// (the next start then raises `G` to it: safe, only slower).
    pub fn close(&mut self) -> Result<usize, StoreError> {
        self.lock().close()
    }

    /// A handle on green's order timestamp record in this store (SPEC §7.5),
    /// for the relay. It shares this store's database handle.
    pub fn order_clock(&self) -> OrderClock {
        OrderClock {
            inner: Arc::clone(&self.inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

impl OrderClock {
    /// The stored reservation: at or above every order timestamp sent while
    /// it was in force; 0 if green never stored one (or the store was lost,
    /// SPEC §7.2: green then resumes from its clock).
    pub fn reserved(&self) -> u64 {
        lock(&self.inner).order_reserved
    }

    /// Raises the reservation to `bound` (never lowers it) in one durable
    /// transaction; returns once it is on stable storage. On error nothing
    /// changed in memory, and the relay must not send the order.
    pub fn reserve(&self, bound: u64) -> Result<(), StoreError> {
        lock(&self.inner).reserve_order(bound)
    }
}

/// The lock of the shared state (the daemon loop, its verification
/// workers and the reservation's writer). A panic while it was held leaves
/// the state consistent: memory changes only after a successful write, or,
/// under the reservation, after the durable `R` covers the change.
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// [`ReplayDb::open`].
    fn open(path: &Path, now_ms: u64) -> Result<(Self, OpenReport), StoreError> {
        let path = path.to_path_buf();
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Self::create_fresh(path, now_ms, OpenState::Created);
            }
            Err(e) => return Err(io_err(&path, "stat", e)),
            Ok(m) if !m.file_type().is_file() => return Err(StoreError::NotAFile { path }),
            Ok(_) => {}
        }
        match load(&path) {
            Ok(Loaded {
                db,
                floors,
                global: Some(global),
                order_reserved,
                reserved,
            }) => {
                let mut store = Self {
                    path,
                    db: Some(Arc::new(db)),
                    floors,
                    global,
                    order_reserved: order_reserved.unwrap_or(0),
                    reservation: None,
                };
                let reservation_applied = store.apply_reservation(reserved)?;
                let report = OpenReport {
                    state: OpenState::Reopened,
                    identities: store.floors.len(),
                    global_floor: store.global,
                    reservation_applied,
                };
                Ok((store, report))
            }
            Ok(Loaded {
                db,
                floors,
                global: None,
                order_reserved,
                reserved,
            }) => {
                // A database without G: whatever floors it holds are kept (they
                // only refuse more), and G = now is stored before anything is
                // accepted.
                let mut store = Self {
                    path,
                    db: Some(Arc::new(db)),
                    floors,
                    global: 0,
                    order_reserved: order_reserved.unwrap_or(0),
                    reservation: None,
                };
                store.write(|_, meta| {
                    meta.insert(KEY_GLOBAL, now_ms)?;
                    meta.insert(KEY_FORMAT, FORMAT_VERSION)?;
                    Ok(())
                })?;
                store.global = now_ms;
                let reservation_applied = store.apply_reservation(reserved)?;
                let report = OpenReport {
                    state: OpenState::Uninitialized,
                    identities: store.floors.len(),
                    global_floor: store.global,
                    reservation_applied,
                };
                Ok((store, report))
            }
            Err(LoadError::Fatal(e)) => Err(e),
            Err(LoadError::Corrupt(reason)) => {
                let moved_to = move_aside(&path, now_ms)?;
                Self::create_fresh(path, now_ms, OpenState::Recovered { moved_to, reason })
            }
        }
    }

    /// Creates a new store at `path` (which must not exist) with `G = now`.
    fn create_fresh(
        path: PathBuf,
        now_ms: u64,
        state: OpenState,
    ) -> Result<(Self, OpenReport), StoreError> {
        // create_new: never initialise over a file that appeared meanwhile.
        // 0600: the floors tell which identities knocked, and when.
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, "create", e))?;
        let db = builder()
            .create(&path)
            .map_err(|e| db_err(&path, e.into()))?;
        let mut store = Self {
            path,
            db: Some(Arc::new(db)),
            floors: HashMap::new(),
            global: 0,
            order_reserved: 0,
            reservation: None,
        };
        store.write(|floors, meta| {
            // Create both tables now, so a later open finds them.
            let _ = floors.len()?;
            meta.insert(KEY_GLOBAL, now_ms)?;
            meta.insert(KEY_FORMAT, FORMAT_VERSION)?;
            Ok(())
        })?;
        store.global = now_ms;
        // The file's directory entry must be durable too.
        sync_parent(&store.path)?;
        let report = OpenReport {
            state,
            identities: 0,
            global_floor: now_ms,
            reservation_applied: None,
        };
        Ok((store, report))
    }

    /// [`ReplayDb::commit_many`].
    fn commit_many(&mut self, entries: &[(IdentityKey, u64)]) -> Result<(), StoreError> {
        let mut raise: HashMap<IdentityKey, u64> = HashMap::new();
        for &(id, ts) in entries {
            if self.floors.get(&id).is_some_and(|&f| f >= ts) {
                continue; // already durable at or above ts
            }
            let e = raise.entry(id).or_insert(ts);
            *e = (*e).max(ts);
        }
        if raise.is_empty() {
            return Ok(());
        }
        let max_ts = raise.values().copied().max().unwrap_or(0);
        // SPEC §7.3.1: covered by the durable reservation, the commit is
        // in memory only (a crash raises G to R).
        let mut extend = None;
        if let Some(res) = self.reservation.as_mut() {
            if res.covers(max_ts) {
                res.mark_dirty(&raise);
                self.raise_mirror(&raise);
                return Ok(());
            }
            // Above R: the dirty floors, these and a new R in one durable
            // transaction, before the verdict.
            let mut batch = res.dirty.clone();
            for (&id, &ts) in &raise {
                let e = batch.entry(id).or_insert(ts);
                *e = (*e).max(ts);
            }
            let target = res.durable.max(max_ts.saturating_add(res.lead_ms));
            extend = Some((batch, target));
        }
        if let Some((batch, target)) = extend {
            let mut written_r = target;
            self.write(|floors, meta| {
                write_floors(floors, &batch)?;
                written_r = raise_key(meta, KEY_RESERVED, target)?;
                Ok(())
            })?;
            if let Some(res) = self.reservation.as_mut() {
                res.durable = res.durable.max(written_r);
                res.written(&batch);
            }
            self.raise_mirror(&raise);
            return Ok(());
        }
        self.write(|floors, _| write_floors(floors, &raise))?;
        self.raise_mirror(&raise);
        Ok(())
    }

    /// Raises the in-memory floors (never lowers one).
    fn raise_mirror(&mut self, raise: &HashMap<IdentityKey, u64>) {
        for (&id, &ts) in raise {
            let e = self.floors.entry(id).or_insert(ts);
            *e = (*e).max(ts);
        }
    }

    /// At open: a reservation left on disk by a run that did not close the
    /// store raises `G` to it, durably, and is removed in the same
    /// transaction (SPEC §7.3.1, recovery). Returns the value applied.
    fn apply_reservation(&mut self, reserved: Option<u64>) -> Result<Option<u64>, StoreError> {
        let Some(r) = reserved else {
            return Ok(None);
        };
        let new_global = self.global.max(r);
        self.write(|_, meta| {
            meta.insert(KEY_GLOBAL, new_global)?;
            meta.remove(KEY_RESERVED)?;
            Ok(())
        })?;
        self.global = new_global;
        Ok(Some(r))
    }

    /// [`ReplayDb::start_reservation`].
    fn start_reservation(&mut self, lead_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        let mut res = Reservation::new(lead_ms);
        let target = now_ms.saturating_add(lead_ms);
        let mut written = target;
        self.write(|_, meta| {
            written = raise_key(meta, KEY_RESERVED, target)?;
            Ok(())
        })?;
        res.durable = written;
        self.reservation = Some(res);
        Ok(())
    }

    /// [`ReplayDb::close`].
    fn close(&mut self) -> Result<usize, StoreError> {
        let Some(res) = self.reservation.as_ref() else {
            return Ok(0);
        };
        let batch = res.dirty.clone();
        self.write(|floors, meta| {
            write_floors(floors, &batch)?;
            meta.remove(KEY_RESERVED)?;
            Ok(())
        })?;
        self.reservation = None;
        Ok(batch.len())
    }

    /// [`Reserver::tick`]: snapshot under the lock, write without it,
    /// account under it again.
    fn reservation_tick(inner: &Mutex<Inner>, now_ms: u64) -> Result<TickReport, StoreError> {
        let (db, path, batch, target) = {
            let mut g = lock(inner);
            let Some(res) = g.reservation.as_ref() else {
                return Ok(TickReport::default());
            };
            let target = res.due(now_ms);
            if target.is_none() && res.dirty.is_empty() {
                return Ok(TickReport::default());
            }
            let batch = res.dirty.clone();
            g.ensure_open()?;
            let Some(db) = g.db.clone() else {
                return Err(db_err(&g.path, redb::Error::DatabaseClosed));
            };
            (db, g.path.clone(), batch, target)
        };
        let mut written_r = None;
        let result = write_txn(&db, |floors, meta| {
            write_floors(floors, &batch)?;
            if let Some(t) = target {
                written_r = Some(raise_key(meta, KEY_RESERVED, t)?);
            }
            Ok(())
        });
        let mut g = lock(inner);
        if let Err(e) = result {
            if g.db.as_ref().is_some_and(|d| Arc::ptr_eq(d, &db)) {
                g.db = None;
            }
            return Err(db_err(&path, e));
        }
        let Some(res) = g.reservation.as_mut() else {
            // Closed meanwhile: what was written only refuses more.
            return Ok(TickReport::default());
        };
        res.written(&batch);
        if let Some(r) = written_r {
            res.durable = res.durable.max(r);
        }
        Ok(TickReport {
            floors_written: batch.len(),
            extended_to: written_r,
        })
    }

    /// [`ReplayDb::prune`].
    fn prune(&mut self, now_ms: u64, max_age_ms: u64) -> Result<PruneReport, StoreError> {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let victims: Vec<(IdentityKey, u64)> = self
            .floors
            .iter()
            .filter(|&(_, &f)| f < cutoff)
            .map(|(k, &f)| (*k, f))
            .collect();
        if victims.is_empty() {
            return Ok(PruneReport {
                removed: 0,
                global_floor: self.global,
            });
        }
        let new_global = victims.iter().map(|&(_, f)| f).fold(self.global, u64::max);
        self.write(|floors, meta| {
            meta.insert(KEY_GLOBAL, new_global)?;
            for (id, _) in &victims {
                floors.remove(&id.0)?;
            }
            Ok(())
        })?;
        self.global = new_global;
        for (id, _) in &victims {
            self.floors.remove(id);
            // G now refuses what the dirty entry would have.
            if let Some(res) = self.reservation.as_mut() {
                res.dirty.remove(id);
            }
        }
        if self.floors.capacity() > 64 && self.floors.len() < self.floors.capacity() / 4 {
            self.floors.shrink_to_fit();
        }
        Ok(PruneReport {
            removed: victims.len(),
            global_floor: new_global,
        })
    }

    /// [`OrderClock::reserve`]: the value on disk may be higher than the
    /// mirror (a commit that reported failure may have reached the disk), so
    /// the larger one is written.
    fn reserve_order(&mut self, bound: u64) -> Result<(), StoreError> {
        if bound <= self.order_reserved {
            return Ok(());
        }
        let mut written = bound;
        self.write(|_, meta| {
            let old = meta.get(KEY_ORDER)?.map(|v| v.value());
            written = old.map_or(bound, |o| o.max(bound));
            meta.insert(KEY_ORDER, written)?;
            Ok(())
        })?;
        self.order_reserved = written;
        Ok(())
    }

    /// Runs `f` in one write transaction committed with immediate durability.
    /// After a failure the database is dropped and reopened by the next call.
    fn write<F>(&mut self, f: F) -> Result<(), StoreError>
    where
        F: FnOnce(
            &mut redb::Table<'_, &'static [u8; 32], u64>,
            &mut redb::Table<'_, &'static str, u64>,
        ) -> Result<(), redb::Error>,
    {
        self.ensure_open()?;
        let Some(db) = self.db.as_ref() else {
            return Err(db_err(&self.path, redb::Error::DatabaseClosed));
        };
        write_txn(db, f).map_err(|e| {
            // redb refuses further writes after a failed commit until the
            // file is reopened; dropping it here makes the next write do so.
            self.db = None;
            db_err(&self.path, e)
        })
    }

    /// Reopens the database after a failed write. The floors on disk are
    /// merged into the mirror (they can only be higher: a commit that
    /// reported failure may still have reached the disk).
    fn ensure_open(&mut self) -> Result<(), StoreError> {
        if self.db.is_some() {
            return Ok(());
        }
        let loaded = match load(&self.path) {
            Ok(l) => l,
            Err(LoadError::Fatal(e)) => return Err(e),
            Err(LoadError::Corrupt(reason)) => {
                return Err(db_err(&self.path, redb::Error::Corrupted(reason)));
            }
        };
        for (id, f) in loaded.floors {
            let e = self.floors.entry(id).or_insert(f);
            *e = (*e).max(f);
        }
        if let Some(g) = loaded.global {
            self.global = self.global.max(g);
        }
        if let Some(o) = loaded.order_reserved {
            self.order_reserved = self.order_reserved.max(o);
        }
        if let (Some(r), Some(res)) = (loaded.reserved, self.reservation.as_mut()) {
            res.durable = res.durable.max(r);
        }
        self.db = Some(Arc::new(loaded.db));
        Ok(())
    }
}

impl ReplayState for ReplayDb {
    type Error = StoreError;

    fn floor(&self, id: &IdentityKey) -> Option<u64> {
        self.lock().floors.get(id).copied()
    }

    fn global_floor(&self) -> Option<u64> {
        Some(self.lock().global)
    }

    fn commit(&mut self, id: &IdentityKey, timestamp_ms: u64) -> Result<(), StoreError> {
        self.commit_many(&[(*id, timestamp_ms)])
    }

    fn commit_pair(
        &mut self,
        first: (&IdentityKey, u64),
        second: (&IdentityKey, u64),
    ) -> Result<(), StoreError> {
        self.commit_many(&[(*first.0, first.1), (*second.0, second.1)])
    }
}

#[cfg(test)]
mod tests;
