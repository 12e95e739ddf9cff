//! A bounded map that evicts the least recently used entry: the memory
//! bound of every IPS table (see the [`super`] documentation, "Memory and
//! eviction").

use std::collections::HashMap;
use std::hash::Hash;

const NIL: usize = usize::MAX;

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
                    self.remove_at(self.tail);
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
