//! A bounded map that evicts the least recently used entry: the memory
//! bound of every IPS table (see the [`super`] documentation, "Memory and
//! eviction").

use std::collections::HashMap;
use std::hash::Hash;

const NIL: usize = usize::MAX;

/// How many of the least recently used entries a full table compares
/// before evicting one ([`Lru::get_or_insert_scored`]).
pub(super) const EVICTION_SAMPLE: usize = 8;

#[derive(Debug)]
pub(super) struct Slot<K, V> {
    pub(super) key: K,
    pub(super) val: V,
    prev: usize,
    next: usize,
}

/// A map of at most `cap` entries that evicts the least recently used. The
/// entries live in a dense slab linked from most (`head`) to least (`tail`)
/// recently used; removal swaps the last slot into the hole.
#[derive(Debug)]
pub(super) struct Lru<K, V> {
    pub(super) map: HashMap<K, usize>,
    pub(super) slots: Vec<Slot<K, V>>,
    head: usize,
    tail: usize,
    cap: usize,
}

impl<K: Copy + Eq + Hash, V> Lru<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
    }

    pub(super) fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        if self.head == NIL {
            self.tail = i;
        } else {
            self.slots[self.head].prev = i;
        }
        self.head = i;
    }

    pub(super) fn peek(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|&i| &self.slots[i].val)
    }

    /// The entry for `k`, marked most recently used.
    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.map.get(k)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(&mut self.slots[i].val)
    }

    /// The entry for `k`, created with `make` (evicting the least recently
    /// used entry if full), marked most recently used.
    pub(super) fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        self.get_or_insert_scored(k, make, |_| 0)
    }

    /// [`Lru::get_or_insert_with`], but when full the entry evicted is the
    /// one with the lowest `evidence` among the [`EVICTION_SAMPLE`] least
    /// recently used (the oldest of them on a tie). The offense and scan
    /// tables score an entry by what it has counted (a running block
    /// highest), so that flooding the table with fresh forged sources, one
    /// count each, pushes out other one-count entries before a real
    /// scanner's: evicting it takes `EVICTION_SAMPLE` stale entries with at
    /// least as much evidence, each as costly to build as its own.
    pub(super) fn get_or_insert_scored(
        &mut self,
        k: K,
        make: impl FnOnce() -> V,
        evidence: impl Fn(&V) -> u64,
    ) -> &mut V {
        let i = match self.map.get(&k) {
            Some(&i) => {
                if self.head != i {
                    self.unlink(i);
                    self.push_front(i);
                }
                i
            }
            None => {
                if self.slots.len() >= self.cap && self.tail != NIL {
                    let victim = self.weakest_of_tail(&evidence);
                    self.remove_at(victim);
                }
                let i = self.slots.len();
                self.slots.push(Slot {
                    key: k,
                    val: make(),
                    prev: NIL,
                    next: NIL,
                });
                self.map.insert(k, i);
                self.push_front(i);
                i
            }
        };
        &mut self.slots[i].val
    }

    /// The slot with the least evidence among the least recently used.
    fn weakest_of_tail(&self, evidence: &impl Fn(&V) -> u64) -> usize {
        let mut best = self.tail;
        let mut best_score = evidence(&self.slots[best].val);
        let mut i = self.slots[best].prev;
        for _ in 1..EVICTION_SAMPLE {
            if i == NIL || best_score == 0 {
                break;
            }
            let score = evidence(&self.slots[i].val);
            if score < best_score {
                best = i;
                best_score = score;
            }
            i = self.slots[i].prev;
        }
        best
    }

    pub(super) fn remove(&mut self, k: &K) -> Option<V> {
        let i = *self.map.get(k)?;
        Some(self.remove_at(i))
    }

    pub(super) fn remove_at(&mut self, i: usize) -> V {
        self.unlink(i);
        let slot = self.slots.swap_remove(i);
        self.map.remove(&slot.key);
        if i < self.slots.len() {
            // The last slot moved into `i`: re-point its neighbours and index.
            let (prev, next, key) = (self.slots[i].prev, self.slots[i].next, self.slots[i].key);
            if prev == NIL {
                self.head = i;
            } else {
                self.slots[prev].next = i;
            }
            if next == NIL {
                self.tail = i;
            } else {
                self.slots[next].prev = i;
            }
            self.map.insert(key, i);
        }
        slot.val
    }

    /// Keeps the entries for which `keep` is true; returns how many went.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let mut removed = 0;
        // Downwards: a removal moves the last slot, already visited, into
        // the hole.
        for i in (0..self.slots.len()).rev() {
            let s = &mut self.slots[i];
            if !keep(&s.key, &mut s.val) {
                self.remove_at(i);
                removed += 1;
            }
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
            self.map.shrink_to_fit();
        }
        removed
    }

    #[cfg(test)]
    pub(super) fn keys_mru_first(&self) -> Vec<K> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL {
            out.push(self.slots[i].key);
            i = self.slots[i].next;
        }
        out
    }
}
