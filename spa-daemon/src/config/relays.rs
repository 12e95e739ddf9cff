//! `[relay]` / `[[relay]]` (spa-server: one entry per red) and `[metrics]`
//! (both daemons).
//!
//! ```toml
//! [[relay]]                     # one entry per red (a single [relay] table works too)
//! red = "10.200.60.2:62202"
//! red_key = "base64…"
//! signing_key = "/etc/spa/green-signing.key"
//! source = "10.200.60.1"
//! services = [{ name = "web", port = 80 }]
//!
//! [[relay]]
//! red = "10.200.70.2:62202"
//! red_key = "base64…"           # each red has its own key …
//! signing_key = "/etc/spa/green-signing.key"
//! source = "10.200.70.1"        # … and green its own address toward it
//! services = [{ name = "db", port = 5432 }] # a service lives on one red only
//!
//! [metrics]                     # opt-in Prometheus endpoint (README, "Metrics")
//! listen = "192.0.2.10:9462"    # a management address of this host, never 0.0.0.0
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{RelaySection, parse_cidr};

/// At most this many reds (green records the reds a session touched as
/// bits of a `u64`).
pub const MAX_REDS: usize = 64;

/// The reds green relays to, in file order: empty without a relay, one
/// for a single `[relay]` table, one per `[[relay]]` entry.
#[derive(Debug, Clone, Default)]
pub struct Relays {
    list: Vec<RelaySection>,
    /// Whether the file used `[[relay]]` (keys are then `relay[N].…`).
    array: bool,
}

impl Relays {
    /// Reds from a list, named `relay[N]` in problems.
    pub fn many(list: Vec<RelaySection>) -> Self {
        Self { list, array: true }
    }

    /// One red, named `relay` in problems (a `[relay]` table).
    pub fn one(section: RelaySection) -> Self {
        Self {
            list: vec![section],
            array: false,
        }
    }

    /// How the file names entry `i`: `relay` or `relay[i]`.
    pub fn key(&self, i: usize) -> String {
        if self.array {
            format!("relay[{i}]")
        } else {
            "relay".to_owned()
        }
    }

    /// Problems of every entry ([`RelaySection::check`]), and of the set:
    /// a service hosted by two reds (green could not tell where to relay
    /// it), one red listed twice, more than [`MAX_REDS`] reds.
    pub fn check(&self, local: &HashSet<String>, max_age_ms: u64) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.list.len() > MAX_REDS {
            p.push((
                "relay".to_owned(),
                format!("{} reds: at most {MAX_REDS}", self.list.len()),
            ));
        }
        let mut hosts: HashMap<&str, usize> = HashMap::new();
        let mut reds: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, r) in self.list.iter().enumerate() {
            let at = self.key(i);
            p.extend(r.check(&at, local, max_age_ms));
            if let Ok(addr) = r.red.parse::<SocketAddr>()
                && let Some(first) = reds.insert(addr, i)
            {
                reds.insert(addr, first);
                p.push((
                    format!("{at}.red"),
                    format!(
                        "{addr} is also {}: list each red once, with all its services",
                        self.key(first)
                    ),
                ));
            }
            for (j, s) in r.services.iter().enumerate() {
                let name = s.name();
                match hosts.get(name) {
                    Some(&first) if first != i => p.push((
                        format!("{at}.services[{j}]"),
                        format!(
                            "'{name}' is also a service of {} ({}): a service lives on one red",
                            self.key(first),
                            self.list[first].red
                        ),
                    )),
                    Some(_) => {} // twice in one entry: RelaySection::check
                    None => {
                        hosts.insert(name, i);
                    }
                }
            }
        }
        p
    }
}

impl std::ops::Deref for Relays {
    type Target = [RelaySection];

    fn deref(&self) -> &[RelaySection] {
        &self.list
    }
}

/// `[relay]` is a table, `[[relay]]` an array of tables: both parse, each
/// with its own precise errors (an untagged enum would only say that
/// neither matched).
impl<'de> Deserialize<'de> for Relays {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrMany;
        impl<'de> Visitor<'de> for OneOrMany {
            type Value = Relays;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a [relay] table or [[relay]] entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Relays, A::Error> {
                RelaySection::deserialize(MapAccessDeserializer::new(map)).map(Relays::one)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Relays, A::Error> {
                Vec::<RelaySection>::deserialize(SeqAccessDeserializer::new(seq)).map(Relays::many)
            }
        }
        d.deserialize_any(OneOrMany)
    }
}

/// `[metrics]`: the Prometheus endpoint (`crate::metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `address:port` to listen on: an address of this host on its
    /// management network (or loopback), never the unspecified address, so
    /// that the protected interface shows no listener.
    pub listen: String,
}

impl MetricsSection {
    /// The listening address, if valid.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// Problems of `[metrics]`. `management` is `[firewall] management`:
    /// only those sources (and this host) may scrape.
    pub fn check(&self, management: &[String]) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let key = || "metrics.listen".to_owned();
        match self.addr() {
            None => p.push((
                key(),
                format!(
                    "'{}': use ADDRESS:PORT, e.g. 192.0.2.10:9462 or [fd00::10]:9462",
                    self.listen
                ),
            )),
            Some(a) if a.port() == 0 => p.push((key(), "the port must be 1..=65535".into())),
            Some(a) if a.ip().is_unspecified() || a.ip().is_multicast() => p.push((
                key(),
                format!(
                    "'{}': bind to this host's management address, not to every interface",
                    self.listen
                ),
            )),
            Some(a)
                if !a.ip().is_loopback() && !management.iter().any(|m| parse_cidr(m).is_some()) =>
            {
                p.push((
                    key(),
                    "no firewall.management network: nobody may scrape it (add one, or listen on loopback)"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use std::path::Path;

    const HEAD: &str = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[[rules]]
identity = "*"
services = ["web", "db"]
"#;

    fn red(addr: &str, services: &str) -> String {
        format!(
            "[[relay]]\nred = \"{addr}\"\nred_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\n\
             signing_key = \"/nonexistent\"\nsource = \"10.200.60.1\"\nservices = [{services}]\n"
        )
    }

    #[test]
    fn many_reds_parse_and_name_their_entries() {
        let text = format!(
            "{HEAD}{}{}",
            red("10.200.60.2:62202", "{ name = \"web\", port = 80 }"),
            red("10.200.60.3:62202", "\"db\"")
        );
        let cfg = parse(&text, Path::new("x.toml")).expect("parses");
        assert_eq!(cfg.relay.len(), 2);
        assert_eq!(cfg.relay[1].services[0].name(), "db");
        let problems = cfg.check(super::super::Role::Green, None);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"relay[0].signing_key"), "{keys:?}");
        assert!(keys.contains(&"relay[1].signing_key"), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with("rules")), "{keys:?}");
    }

    #[test]
    fn rejects_a_service_hosted_by_two_reds() {
        let text = format!(
            "{HEAD}{}{}",
            red("10.200.60.2:62202", "\"web\""),
            red("10.200.60.3:62202", "\"db\", { name = \"web\", port = 80 }")
        );
        let cfg = parse(&text, Path::new("x.toml")).expect("parses");
        let problems = cfg.check(super::super::Role::Green, None);
        assert!(
            problems
                .iter()
                .any(|p| p.key == "relay[1].services[1]" && p.problem.contains("relay[0]")),
            "{problems:?}"
        );
    }

    #[test]
    fn rejects_one_red_listed_twice() {
        let text = format!(
            "{HEAD}{}{}",
            red("10.200.60.2:62202", "\"web\""),
            red("10.200.60.2:62202", "\"db\"")
        );
        let cfg = parse(&text, Path::new("x.toml")).expect("parses");
        let problems = cfg.check(super::super::Role::Green, None);
        assert!(
            problems.iter().any(|p| p.key == "relay[1].red"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_typo_inside_an_entry_is_named() {
        let text =
            format!("{HEAD}{}", red("10.200.60.2:62202", "\"web\"")).replace("source", "sorce");
        let e = parse(&text, Path::new("x.toml")).expect_err("typo");
        assert!(e[0].problem.contains("sorce"), "{e:?}");
    }

    #[test]
    fn metrics_must_listen_on_a_reachable_management_address() {
        let m = |l: &str| MetricsSection { listen: l.into() };
        let mgmt = vec!["192.0.2.0/24".to_owned()];
        assert!(m("192.0.2.10:9462").check(&mgmt).is_empty());
        assert!(m("127.0.0.1:9462").check(&[]).is_empty());
        for bad in ["0.0.0.0:9462", "[::]:9462", "192.0.2.10:0", "host:9462"] {
            assert_eq!(m(bad).check(&mgmt).len(), 1, "{bad}");
        }
        let none = m("192.0.2.10:9462").check(&[]);
        assert!(none[0].1.contains("management"), "{none:?}");
    }
}
