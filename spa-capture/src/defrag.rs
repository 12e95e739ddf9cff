//! Reassembly of fragmented UDP datagrams to the knock port (SPEC §3.2).
//!
//! A knock is at most 1088 bytes of UDP payload, an order 1232: over an
//! IPv4 path whose MTU is below that (576 is legal) the sender's kernel
//! fragments it, and a packet socket sees the fragments, not the
//! datagram. The kernel's own reassembly happens later, in the IP layer,
//! and only for datagrams delivered to a socket: the capture binds none.
//! So the capture reassembles them itself, under bounds strict enough that
//! reassembly is not a cheaper lever against the daemon than the datagrams
//! themselves:
//!
//! * at most [`Limits::max_datagram`] bytes of UDP datagram (header
//!   included) — the largest datagram the protocol has, so a buffer per
//!   reassembly is fixed and allocated once, in [`Reassembler::new`];
//! * at most [`Limits::max_entries`] reassemblies at once, and at most
//!   [`Limits::max_per_source`] per source address; when full, the oldest
//!   goes (among the source's own when its cap is reached), preferring
//!   reassemblies whose first fragment has not been seen (the kernel
//!   filter passes every later fragment of any UDP datagram, since those
//!   carry no port, but a first fragment only when it names the knock
//!   port);
//! * [`Limits::timeout`] from the first fragment to the last;
//! * overlapping fragments abandon the datagram (RFC 5722, RFC 8200
//!   §4.5): two readings of the same bytes are never chosen between. A
//!   fragment that repeats bytes already held, byte for byte, is a
//!   duplicate from the network and is ignored;
//! * a fragment other than the last must carry a multiple of 8 bytes, and
//!   no fragment may reach past the end the last one set; a fragment that
//!   fails the checks needing no state (size, alignment) takes no slot
//!   and evicts nothing.
//!
//! `etherparse` has a reassembler (`defrag::IpDefragPool`), but it states
//! that it is not safe against memory exhaustion (no bound on concurrent
//! reassemblies or their age), it merges overlapping fragments (the later
//! bytes win) instead of refusing them, and each buffer grows to whatever
//! offset a fragment claims (up to 64 KiB). This one is written here for
//! those three reasons; it parses nothing (the caller hands it the
//! fragment fields `etherparse` read) and allocates nothing after
//! [`Reassembler::new`].
//!
//! Time is passed in (`now`), as everywhere else in the workspace.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The largest UDP datagram reassembled, header included: the protocol's
/// largest datagram (`MAX_DATAGRAM`, an order, SPEC §3.2) plus the
/// 8-byte UDP header.
pub(crate) const MAX_DATAGRAM: usize = proto_spec::wire::MAX_DATAGRAM + 8;

/// 8-byte blocks of a [`MAX_DATAGRAM`] buffer, and the `u64` words of the
/// bitmap that marks which are held.
const BLOCKS: usize = MAX_DATAGRAM.div_ceil(8);
const WORDS: usize = BLOCKS.div_ceil(64);

/// Bounds of the capture's reassembly of fragmented datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Reassemblies held at once (each holds a buffer of the largest
    /// datagram, 1240 bytes, allocated when the capture opens).
    pub max_entries: usize,
    /// Reassemblies held at once for one source address.
    pub max_per_source: usize,
    /// From the first fragment seen to the last.
    pub timeout: Duration,
}

impl Default for Limits {
    /// 64 reassemblies (80 KiB of buffers), 4 per source, 5 s.
    fn default() -> Self {
        Self {
            max_entries: 64,
            max_per_source: 4,
            timeout: Duration::from_secs(5),
        }
    }
}

/// One IP fragment of a UDP datagram, as the packet parser read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fragment<'a> {
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// IPv4 identification (16 bits) or IPv6 Fragment header
    /// identification (32 bits).
    pub id: u32,
    /// Byte offset of `payload` in the datagram (a multiple of 8).
    pub offset: usize,
    /// More fragments follow (IPv4 MF, IPv6 M).
    pub more: bool,
    /// The fragment's bytes of the UDP datagram (the first fragment starts
    /// with the UDP header).
    pub payload: &'a [u8],
}

/// Why a reassembly was abandoned by the fragment in hand (timeouts and
/// evictions of others are counted by [`Reassembler::expire`] and
/// [`Reassembler::add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Two fragments claim different bytes for the same offsets.
    Overlap,
    /// The datagram would exceed [`MAX_DATAGRAM`].
    TooLarge,
    /// A non-last fragment whose length is not a multiple of 8, or
    /// fragments that disagree on where the datagram ends.
    Inconsistent,
    /// Evicted to make room (table or per-source limit).
    Evicted,
}

/// What one fragment did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome<'r> {
    /// Held; the datagram is not complete yet (or the fragment was an
    /// exact duplicate).
    Pending,
    /// The whole UDP datagram (header included), borrowed until the next
    /// call.
    Complete(&'r [u8]),
    /// This fragment's datagram was abandoned.
    Dropped(Dropped),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    id: u32,
}

/// One reassembly in progress.
#[derive(Debug)]
struct Slot {
    /// `None`: free.
    key: Option<Key>,
    started: Instant,
    /// Whether the first fragment (offset 0) is held.
    first_seen: bool,
    /// The datagram's length, once the last fragment is held.
    end: Option<usize>,
    /// 8-byte blocks held.
    held: [u64; WORDS],
    buf: Box<[u8]>,
}

impl Slot {
    fn free(&mut self) {
        self.key = None;
    }

    fn is_held(&self, block: usize) -> bool {
        self.held
            .get(block / 64)
            .is_some_and(|w| w & (1 << (block % 64)) != 0)
    }

    fn hold(&mut self, block: usize) {
        if let Some(w) = self.held.get_mut(block / 64) {
            *w |= 1 << (block % 64);
        }
    }
}

/// Fragments in, whole datagrams out, within [`Limits`].
#[derive(Debug)]
pub(crate) struct Reassembler {
    limits: Limits,
    slots: Vec<Slot>,
}

impl Reassembler {
    /// Allocates every buffer: `limits.max_entries` × [`MAX_DATAGRAM`].
    pub(crate) fn new(limits: Limits) -> Self {
        let limits = Limits {
            max_entries: limits.max_entries.max(1),
            max_per_source: limits.max_per_source.max(1),
            ..limits
        };
        let now = Instant::now();
        let slots = (0..limits.max_entries)
            .map(|_| Slot {
                key: None,
                started: now,
                first_seen: false,
                end: None,
                held: [0; WORDS],
                buf: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
            })
            .collect();
        Self { limits, slots }
    }

    /// Reassemblies in progress.
    #[cfg(test)]
    pub(crate) fn in_progress(&self) -> usize {
        self.slots.iter().filter(|s| s.key.is_some()).count()
    }

    /// Abandons the reassemblies older than the timeout; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> u64 {
        let mut n = 0;
        for s in &mut self.slots {
            if s.key.is_some() && now.saturating_duration_since(s.started) >= self.limits.timeout {
                s.free();
                n += 1;
            }
        }
        n
    }

    /// Adds one fragment. Returns the whole datagram once its last gap is
    /// filled, and how many other reassemblies were abandoned to make room
    /// (evicted, or this datagram's own older fragments, timed out).
    pub(crate) fn add(&mut self, f: &Fragment<'_>, now: Instant) -> (Outcome<'_>, u64) {
        let key = Key {
            src: f.src,
            dst: f.dst,
            id: f.id,
        };
        let mut evicted = 0;
        let existing = self.slots.iter().position(|s| s.key == Some(key));
        // A fragment no datagram could hold never takes a slot (or evicts
        // one); it abandons its own datagram, if one is in progress.
        if let Err(d) = shape(f) {
            if let Some(s) = existing.and_then(|i| self.slots.get_mut(i)) {
                s.free();
            }
            return (Outcome::Dropped(d), evicted);
        }
        let idx = match existing {
            Some(i)
                if now.saturating_duration_since(self.slots[i].started) >= self.limits.timeout =>
            {
                // Its time is up: the old fragments go, this one starts anew.
                self.slots[i].free();
                evicted += 1;
                self.claim(key, now, &mut evicted)
            }
            Some(i) => i,
            None => self.claim(key, now, &mut evicted),
        };
        let Some(slot) = self.slots.get_mut(idx) else {
            return (Outcome::Dropped(Dropped::Evicted), evicted);
        };
        match place(slot, f) {
            Ok(true) => {
                let len = slot.end.unwrap_or(0);
                slot.free();
                (
                    Outcome::Complete(slot.buf.get(..len).unwrap_or_default()),
                    evicted,
                )
            }
            Ok(false) => (Outcome::Pending, evicted),
            Err(d) => {
                slot.free();
                (Outcome::Dropped(d), evicted)
            }
        }
    }

    /// A free slot for `key`, evicting if needed: the oldest of the
    /// source's own when it is at its cap, else a free slot, else the
    /// oldest of all; reassemblies without their first fragment go first.
    fn claim(&mut self, key: Key, now: Instant, evicted: &mut u64) -> usize {
        let order = |s: &Slot| (s.first_seen, s.started);
        let own = self
            .slots
            .iter()
            .filter(|s| s.key.is_some_and(|k| k.src == key.src))
            .count();
        let victim = if own >= self.limits.max_per_source {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.key.is_some_and(|k| k.src == key.src))
                .min_by_key(|(_, s)| order(s))
                .map(|(i, _)| i)
        } else {
            None
        };
        let idx = victim
            .or_else(|| self.slots.iter().position(|s| s.key.is_none()))
            .or_else(|| {
                self.slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| order(s))
                    .map(|(i, _)| i)
            })
            .unwrap_or(0);
        if let Some(s) = self.slots.get_mut(idx) {
            if s.key.is_some() {
                *evicted += 1;
            }
            s.key = Some(key);
            s.started = now;
            s.first_seen = false;
            s.end = None;
            s.held = [0; WORDS];
        }
        idx
    }
}

/// The checks that need no slot: within [`MAX_DATAGRAM`], 8-byte aligned,
/// and a non-last fragment a non-empty multiple of 8 bytes. Returns the
/// fragment's end.
fn shape(f: &Fragment<'_>) -> Result<usize, Dropped> {
    let end = f
        .offset
        .checked_add(f.payload.len())
        .ok_or(Dropped::TooLarge)?;
    if end > MAX_DATAGRAM {
        return Err(Dropped::TooLarge);
    }
    if !f.offset.is_multiple_of(8)
        || (f.more && (f.payload.is_empty() || !f.payload.len().is_multiple_of(8)))
    {
        return Err(Dropped::Inconsistent);
    }
    Ok(end)
}

/// Copies a fragment into its slot. `Ok(true)`: the datagram is complete.
fn place(slot: &mut Slot, f: &Fragment<'_>) -> Result<bool, Dropped> {
    let start = f.offset;
    let end = shape(f)?;
    // The end: set by the last fragment, and nothing may reach past it.
    match (f.more, slot.end) {
        (false, Some(e)) if e != end => return Err(Dropped::Inconsistent),
        (true, Some(e)) if end > e => return Err(Dropped::Inconsistent),
        _ => {}
    }
    let blocks = start / 8..end.div_ceil(8);
    if !f.more {
        // No block held so far may lie past this end.
        let last = end.div_ceil(8);
        if (last..BLOCKS).any(|b| slot.is_held(b)) {
            return Err(Dropped::Inconsistent);
        }
    }
    let held = blocks.clone().filter(|&b| slot.is_held(b)).count();
    let target = slot.buf.get_mut(start..end).ok_or(Dropped::TooLarge)?;
    if held > 0 {
        // Bytes already held for these offsets: an exact duplicate is
        // ignored, anything else is an overlap. SPEC §3.2, RFC 5722.
        if held == blocks.len() && *target == *f.payload && (f.more || slot.end == Some(end)) {
            return Ok(false);
        }
        return Err(Dropped::Overlap);
    }
    target.copy_from_slice(f.payload);
    for b in blocks {
        slot.hold(b);
    }
    if start == 0 {
        slot.first_seen = true;
    }
    if !f.more {
        slot.end = Some(end);
    }
    Ok(match slot.end {
        Some(e) => (0..e.div_ceil(8)).all(|b| slot.is_held(b)),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 4] = [10, 200, 0, 2];
    const B: [u8; 4] = [10, 200, 0, 1];

    fn datagram(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn frag(d: &[u8], id: u32, start: usize, end: usize) -> Fragment<'_> {
        Fragment {
            src: IpAddr::from(A),
            dst: IpAddr::from(B),
            id,
            offset: start,
            more: end < d.len(),
            payload: &d[start..end],
        }
    }

    fn complete(o: &(Outcome<'_>, u64)) -> Option<Vec<u8>> {
        match &o.0 {
            Outcome::Complete(d) => Some(d.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn reassembles_in_order_and_out_of_order() {
        let d = datagram(1096);
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.add(&frag(&d, 1, 0, 552), now).0, Outcome::Pending);
        assert_eq!(
            complete(&r.add(&frag(&d, 1, 552, 1096), now)),
            Some(d.clone())
        );
        assert_eq!(r.in_progress(), 0);
        // Last first, then the middle, then the first.
        for (i, (s, e)) in [(1000, 1096), (496, 1000), (0, 496)]
            .into_iter()
            .enumerate()
        {
            let o = r.add(&frag(&d, 2, s, e), now);
            if i < 2 {
                assert_eq!(o.0, Outcome::Pending);
            } else {
                assert_eq!(complete(&o), Some(d.clone()));
            }
        }
    }

    #[test]
    fn fragments_of_different_datagrams_do_not_mix() {
        let d1 = datagram(600);
        let d2: Vec<u8> = datagram(600).iter().map(|b| !b).collect();
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.add(&frag(&d1, 1, 0, 304), now).0, Outcome::Pending);
        assert_eq!(r.add(&frag(&d2, 2, 0, 304), now).0, Outcome::Pending);
        assert_eq!(complete(&r.add(&frag(&d2, 2, 304, 600), now)), Some(d2));
        assert_eq!(complete(&r.add(&frag(&d1, 1, 304, 600), now)), Some(d1));
    }

    #[test]
    fn an_exact_duplicate_is_ignored() {
        let d = datagram(700);
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.add(&frag(&d, 1, 0, 352), now).0, Outcome::Pending);
        assert_eq!(r.add(&frag(&d, 1, 0, 352), now).0, Outcome::Pending);
        assert_eq!(complete(&r.add(&frag(&d, 1, 352, 700), now)), Some(d));
    }

    #[test]
    fn refuses_overlapping_fragments() {
        let d = datagram(700);
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        // Same offsets, other bytes.
        let mut other = d.clone();
        other[10] ^= 0xff;
        assert_eq!(r.add(&frag(&d, 1, 0, 352), now).0, Outcome::Pending);
        assert_eq!(
            r.add(&frag(&other, 1, 0, 352), now).0,
            Outcome::Dropped(Dropped::Overlap)
        );
        assert_eq!(r.in_progress(), 0);
        // Partly overlapping, even with the same bytes.
        assert_eq!(r.add(&frag(&d, 2, 0, 352), now).0, Outcome::Pending);
        assert_eq!(
            r.add(&frag(&d, 2, 344, 700), now).0,
            Outcome::Dropped(Dropped::Overlap)
        );
        // The datagram is gone: its remaining fragment starts anew and
        // never completes alone.
        assert_eq!(r.add(&frag(&d, 2, 352, 700), now).0, Outcome::Pending);
    }

    #[test]
    fn refuses_inconsistent_and_oversized_fragments() {
        let now = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        let d = datagram(MAX_DATAGRAM + 8);
        // Past the largest datagram.
        assert_eq!(
            r.add(&frag(&d, 1, 1200, MAX_DATAGRAM + 8), now).0,
            Outcome::Dropped(Dropped::TooLarge)
        );
        // A non-last fragment of 100 bytes (not a multiple of 8).
        let d = datagram(500);
        let mut f = frag(&d, 2, 0, 100);
        f.more = true;
        assert_eq!(r.add(&f, now).0, Outcome::Dropped(Dropped::Inconsistent));
        // Two different ends.
        assert_eq!(r.add(&frag(&d, 3, 400, 500), now).0, Outcome::Pending);
        let mut short = frag(&d, 3, 0, 200);
        short.more = false;
        assert_eq!(
            r.add(&short, now).0,
            Outcome::Dropped(Dropped::Inconsistent)
        );
        // A fragment past the end already set.
        assert_eq!(r.add(&frag(&d, 4, 400, 500), now).0, Outcome::Pending);
        let longer = datagram(600);
        let mut past = frag(&longer, 4, 496, 600);
        past.more = true;
        past.payload = &longer[496..592];
        assert_eq!(r.add(&past, now).0, Outcome::Dropped(Dropped::Inconsistent));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn a_misshapen_fragment_takes_no_slot_and_evicts_nothing() {
        let limits = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        let now = Instant::now();
        let mut r = Reassembler::new(limits);
        let d = datagram(700);
        assert_eq!(r.add(&frag(&d, 1, 0, 352), now), (Outcome::Pending, 0));
        let big = datagram(MAX_DATAGRAM + 8);
        assert_eq!(
            r.add(&frag(&big, 2, 1200, MAX_DATAGRAM + 8), now),
            (Outcome::Dropped(Dropped::TooLarge), 0)
        );
        let mut odd = frag(&d, 3, 0, 100);
        odd.more = true;
        assert_eq!(
            r.add(&odd, now),
            (Outcome::Dropped(Dropped::Inconsistent), 0)
        );
        assert_eq!(complete(&r.add(&frag(&d, 1, 352, 700), now)), Some(d));
    }

    #[test]
    fn times_out() {
        let d = datagram(700);
        let t0 = Instant::now();
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.add(&frag(&d, 1, 0, 352), t0).0, Outcome::Pending);
        assert_eq!(r.expire(t0 + Duration::from_millis(4999)), 0);
        assert_eq!(r.expire(t0 + Duration::from_secs(5)), 1);
        assert_eq!(r.in_progress(), 0);
        // A late last fragment does not complete anything.
        assert_eq!(
            r.add(&frag(&d, 1, 352, 700), t0 + Duration::from_secs(6)).0,
            Outcome::Pending
        );
        // Timed out but not yet expired: the next fragment starts anew.
        let mut r = Reassembler::new(Limits::default());
        assert_eq!(r.add(&frag(&d, 2, 0, 352), t0).0, Outcome::Pending);
        let (o, evicted) = r.add(&frag(&d, 2, 352, 700), t0 + Duration::from_secs(5));
        assert_eq!((o, evicted), (Outcome::Pending, 1));
    }

    #[test]
    fn table_and_per_source_limits_evict_oldest_first() {
        let limits = Limits {
            max_entries: 4,
            max_per_source: 2,
            timeout: Duration::from_secs(5),
        };
        let d = datagram(700);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = Reassembler::new(limits);
        // One source: its third reassembly evicts its oldest.
        assert_eq!(r.add(&frag(&d, 1, 0, 352), ms(0)), (Outcome::Pending, 0));
        assert_eq!(r.add(&frag(&d, 2, 0, 352), ms(1)), (Outcome::Pending, 0));
        assert_eq!(r.add(&frag(&d, 3, 0, 352), ms(2)), (Outcome::Pending, 1));
        assert_eq!(r.in_progress(), 2);
        assert_eq!(
            complete(&r.add(&frag(&d, 2, 352, 700), ms(3))),
            Some(d.clone())
        );
        assert_eq!(r.add(&frag(&d, 1, 352, 700), ms(3)).0, Outcome::Pending);
        // The table: four sources fill it; a fifth evicts the oldest
        // reassembly, one without its first fragment before any with.
        let mut r = Reassembler::new(limits);
        for (i, n) in [1u8, 2, 3, 4].into_iter().enumerate() {
            let mut f = frag(&d, 9, 0, 352);
            f.src = IpAddr::from([10, 200, 1, n]);
            if n == 3 {
                f = frag(&d, 9, 352, 700);
                f.src = IpAddr::from([10, 200, 1, n]);
            }
            assert_eq!(r.add(&f, ms(i as u64)), (Outcome::Pending, 0));
        }
        let mut f = frag(&d, 9, 0, 352);
        f.src = IpAddr::from([10, 200, 1, 5]);
        assert_eq!(r.add(&f, ms(10)), (Outcome::Pending, 1));
        // Source 3 (no first fragment) was evicted, source 1 (oldest) was not.
        let mut last1 = frag(&d, 9, 352, 700);
        last1.src = IpAddr::from([10, 200, 1, 1]);
        assert_eq!(complete(&r.add(&last1, ms(11))), Some(d.clone()));
        let mut first3 = frag(&d, 9, 0, 352);
        first3.src = IpAddr::from([10, 200, 1, 3]);
        assert_eq!(r.add(&first3, ms(12)).0, Outcome::Pending);
    }

    #[test]
    fn memory_is_fixed_at_creation() {
        let r = Reassembler::new(Limits::default());
        assert_eq!(r.slots.len(), 64);
        assert!(r.slots.iter().all(|s| s.buf.len() == MAX_DATAGRAM));
        assert_eq!(BLOCKS, 155);
        assert_eq!(WORDS, 3);
    }
}
