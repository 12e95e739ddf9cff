//! The replay reservation (SPEC §7.3.1): durable replay floors without an
//! `fsync` per accepted datagram.
//!
//! The store keeps, durably in `meta["reserved"]`, a timestamp `R` ahead of
//! the clock. A commit whose timestamps are all `<= R` raises the floors in
//! memory only and marks them dirty; it returns at once, because a crash
//! cannot lose it: at the next open the store raises `G` to `R`
//! ([`super::ReplayDb::open`]), so every timestamp `<= R` is refused. A
//! commit above `R` first writes the dirty floors, its own, and a new
//! `R = max_ts + lead` in one durable transaction, and returns after it.
//!
//! [`Reserver::tick`], run every [`Reservation::tick_ms`] on a thread of its
//! own, keeps `R` at least `lead / 2` ahead of the clock (rewriting it to
//! `now + lead`), and writes the dirty floors in the same transaction, so
//! the knock path normally never waits for the disk and the file still
//! holds every identity's floor within one tick. [`super::ReplayDb::close`]
//! writes the remaining floors and removes `R` in one transaction: after a
//! clean stop the next start has no reservation to wait out.
//!
//! This module holds the in-memory bookkeeping; the transactions are
//! written by `super::Inner`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use proto_spec::cert::IdentityKey;

use super::{Inner, StoreError};

/// The default lead of the reservation over the clock, ms (the config key
/// `[daemon] replay_reservation_ms`). After a crash, honest datagrams are
/// refused as `replayed` until the clock passes `R`, at most this long
/// (plus the client's clock lead, SPEC §7.3.1).
pub const DEFAULT_LEAD_MS: u64 = 2_000;

/// The largest lead accepted: a reservation is a restart penalty, not a
/// tuning knob to set to hours.
pub const MAX_LEAD_MS: u64 = 60_000;

/// The smallest lead accepted (below it the background writer would run
/// more often than a slow disk can keep up with).
pub const MIN_LEAD_MS: u64 = 100;

/// The reservation's state, inside the store's lock.
#[derive(Debug)]
pub(super) struct Reservation {
    /// How far ahead of the clock `R` is written.
    pub(super) lead_ms: u64,
    /// `R` as it is on stable storage: commits up to it need no write.
    pub(super) durable: u64,
    /// Floors raised in memory and not yet written.
    pub(super) dirty: HashMap<IdentityKey, u64>,
}

impl Reservation {
    /// A reservation with lead `lead_ms`, nothing durable yet.
    pub(super) fn new(lead_ms: u64) -> Self {
        Self {
            lead_ms,
            durable: 0,
            dirty: HashMap::new(),
        }
    }

    /// How often [`Reserver::tick`] should run: four times per lead, so
    /// that `R` is rewritten when half the lead is left, with a quarter
    /// lead of margin for a slow `fsync` before a knock would wait for it.
    pub(super) fn tick_ms(&self) -> u64 {
        (self.lead_ms / 4).max(1)
    }

    /// Whether a commit of timestamps up to `max_ts` is covered by the
    /// durable reservation (no write needed).
    pub(super) fn covers(&self, max_ts: u64) -> bool {
        max_ts <= self.durable
    }

    /// The `R` to write at `now`, if the durable one is running out (less
    /// than half the lead left); `None` when it is far enough ahead.
    pub(super) fn due(&self, now_ms: u64) -> Option<u64> {
        let half = now_ms.saturating_add(self.lead_ms / 2);
        (self.durable < half).then(|| now_ms.saturating_add(self.lead_ms))
    }

    /// Notes floors raised in memory, to be written later.
    pub(super) fn mark_dirty(&mut self, raised: &HashMap<IdentityKey, u64>) {
        for (&id, &ts) in raised {
            let e = self.dirty.entry(id).or_insert(ts);
            *e = (*e).max(ts);
        }
    }

    /// After `written` reached the disk: forgets the dirty entries it
    /// covered (an entry raised again meanwhile stays dirty).
    pub(super) fn written(&mut self, written: &HashMap<IdentityKey, u64>) {
        for (id, ts) in written {
            if self.dirty.get(id).is_some_and(|d| d <= ts) {
                self.dirty.remove(id);
            }
        }
        if self.dirty.capacity() > 1024 && self.dirty.len() < self.dirty.capacity() / 4 {
            self.dirty.shrink_to_fit();
        }
    }
}

/// What one [`Reserver::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickReport {
    /// Dirty floors written.
    pub floors_written: usize,
    /// The new durable `R`, when it was extended.
    pub extended_to: Option<u64>,
}

/// The handle the background writer holds (from
/// [`super::ReplayDb::start_reservation`]). It shares the store's state;
/// ticking it after [`super::ReplayDb::close`] does nothing.
#[derive(Debug, Clone)]
pub struct Reserver {
    pub(super) inner: Arc<Mutex<Inner>>,
    pub(super) tick_ms: u64,
}

impl Reserver {
    /// How often to call [`Self::tick`], ms.
    pub fn tick_ms(&self) -> u64 {
        self.tick_ms
    }

    /// Extends `R` if it is running out at `now_ms` and writes the dirty
    /// floors, in one durable transaction (none if there is nothing to do).
    /// The store's lock is not held during the write: datagrams keep being
    /// accepted from memory meanwhile.
    pub fn tick(&self, now_ms: u64) -> Result<TickReport, StoreError> {
        Inner::reservation_tick(&self.inner, now_ms)
    }
}

/// The background writer: a thread that ticks a [`Reserver`] until stopped.
/// Spawn it after the privilege drop (it inherits the dropped credentials,
/// SPEC §9 "Every thread dropped").
#[derive(Debug)]
pub struct ReserverThread {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ReserverThread {
    /// Starts ticking `reserver` every [`Reserver::tick_ms`] with the wall
    /// clock `now`. A failed tick is logged and retried at the next one:
    /// commits stay covered by the durable `R` meanwhile, and once the clock
    /// reaches it they write (and fail, `storage_failure`) themselves.
    pub fn spawn(reserver: Reserver, now: fn() -> u64) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let period = std::time::Duration::from_millis(reserver.tick_ms());
        let handle = std::thread::Builder::new()
            .name("spa-reserve".into())
            .spawn(move || {
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(period)
                {
                    match reserver.tick(now()) {
                        Ok(r) => {
                            if failing {
                                tracing::info!("replay store: background writes work again");
                                failing = false;
                            }
                            if r.floors_written > 0 || r.extended_to.is_some() {
                                tracing::trace!(floors = r.floors_written, reserved = ?r.extended_to, "replay store: reservation tick");
                            }
                        }
                        Err(e) => {
                            if !failing {
                                tracing::error!(error = %e, "replay store: background write failed; knocks beyond the reservation will fail as storage_failure until it works");
                            }
                            failing = true;
                        }
                    }
                }
            })?;
        Ok(Self {
            stop: Some(tx),
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it (at most one write in progress).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ReserverThread {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
