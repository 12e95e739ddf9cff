//! Decision counters: one per refusal reason (SPEC §8.3) and per outcome,
//! reported by `status`.

use std::collections::BTreeMap;

use proto_spec::Refusal;

/// Counters by name.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    counts: BTreeMap<String, u64>,
}

impl Counters {
    /// Adds one to `name`.
    pub fn bump(&mut self, name: &str) {
        *self.counts.entry(name.to_owned()).or_insert(0) += 1;
    }

    /// Adds one to the counter of a refusal: `refused.<code>` or
    /// `refused.<code>.<detail>`.
    pub fn refusal(&mut self, r: &Refusal) {
        self.bump(&refusal_name(r));
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// All counters.
    pub fn all(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }
}

/// The counter name of a refusal: `refused.<code>` or
/// `refused.<code>.<detail>` (SPEC §8.3 codes).
pub fn refusal_name(r: &Refusal) -> String {
    match r.detail() {
        Some(d) => format!("refused.{}.{}", r.code(), d),
        None => format!("refused.{}", r.code()),
    }
}
