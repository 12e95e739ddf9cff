//! Decision counters: one per refusal reason (SPEC §8.3) and per outcome,
//! reported by `status`.

use std::collections::BTreeMap;

use proto_spec::Refusal;

/// Counters by name. Counting allocates nothing once a counter exists:
/// refusals are kept by their static code and detail (a refused datagram
/// is the flood case), other names are looked up before they are copied.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    counts: BTreeMap<String, u64>,
    refusals: BTreeMap<(&'static str, Option<&'static str>), u64>,
}

impl Counters {
    /// Adds one to `name`.
    pub fn bump(&mut self, name: &str) {
        match self.counts.get_mut(name) {
            Some(v) => *v += 1,
            None => {
                self.counts.insert(name.to_owned(), 1);
            }
        }
    }

    /// Adds `n` to `name`.
    pub fn add(&mut self, name: &str, n: u64) {
        match self.counts.get_mut(name) {
            Some(v) => *v = v.saturating_add(n),
            None => {
                self.counts.insert(name.to_owned(), n);
            }
        }
    }

    /// Adds one to the counter of a refusal: `refused.<code>` or
    /// `refused.<code>.<detail>`.
    pub fn refusal(&mut self, r: &Refusal) {
        *self.refusals.entry((r.code(), r.detail())).or_insert(0) += 1;
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// The value of a refusal's counter.
    pub fn get_refusal(&self, r: &Refusal) -> u64 {
        self.refusals
            .get(&(r.code(), r.detail()))
            .copied()
            .unwrap_or(0)
    }

    /// All counters, by name (refusals under [`refusal_name`]).
    pub fn all(&self) -> BTreeMap<String, u64> {
        let mut all = self.counts.clone();
        for ((code, detail), v) in &self.refusals {
            *all.entry(name_of(code, *detail)).or_insert(0) += v;
        }
        all
    }
}

/// The counter name of a refusal: `refused.<code>` or
/// `refused.<code>.<detail>` (SPEC §8.3 codes).
pub fn refusal_name(r: &Refusal) -> String {
    name_of(r.code(), r.detail())
}

fn name_of(code: &str, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("refused.{code}.{d}"),
        None => format!("refused.{code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::MalformedReason;

    #[test]
    fn refusals_and_names_are_counted_and_listed_by_name() {
        let mut c = Counters::default();
        c.refusal(&Refusal::Replayed);
        c.refusal(&Refusal::Replayed);
        c.refusal(&Refusal::Malformed(MalformedReason::Truncated));
        c.bump("accepted");
        c.bump("refused.replayed");
        assert_eq!(c.get_refusal(&Refusal::Replayed), 2);
        let all = c.all();
        assert_eq!(all.get("refused.replayed"), Some(&3));
        assert_eq!(
            all.get(&refusal_name(&Refusal::Malformed(
                MalformedReason::Truncated
            ))),
            Some(&1)
        );
        assert_eq!(all.get("accepted"), Some(&1));
    }
}
