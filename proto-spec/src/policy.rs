//! Authorization: which identity may use which service. SPEC §6.4.

use crate::Refusal;
use crate::cert::ClientIdentity;

/// Default maximum lifetime a receiver grants, in seconds. SPEC §6.4.
pub const DEFAULT_MAX_LIFETIME_S: u32 = 3600;

/// Which identities a rule applies to. SPEC §6.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    /// Any validated identity.
    Any,
    /// An exact name: `cn:alice`, `email:alice@example.org`, `dns:…`,
    /// `uri:…`.
    Name(String),
}

impl IdentityPattern {
    /// `*` is [`IdentityPattern::Any`]; anything else an exact name.
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Self::Any
        } else {
            Self::Name(s.to_owned())
        }
    }

    fn matches(&self, id: &ClientIdentity) -> bool {
        match self {
            Self::Any => true,
            Self::Name(n) => id.names.iter().any(|m| m == n),
        }
    }
}

/// Which services a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSet {
    /// Every service.
    All,
    /// The named services.
    Named(Vec<String>),
}

impl ServiceSet {
    fn contains(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Named(v) => v.iter().any(|s| s == name),
        }
    }
}

/// One rule: identities and what they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Who.
    pub identity: IdentityPattern,
    /// What.
    pub services: ServiceSet,
}

/// A receiver's authorization policy and address rules. SPEC §4.3, §6.4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Rules; a service is allowed if any matching rule allows it.
    pub rules: Vec<Rule>,
    /// Longest lifetime granted (longer requests are clamped), seconds.
    pub max_lifetime_s: u32,
    /// Whether "the datagram's source" mode is accepted. Default false.
    pub allow_source_mode: bool,
    /// Whether an explicit address must equal the datagram's source.
    /// Default true.
    pub require_source_match: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_lifetime_s: DEFAULT_MAX_LIFETIME_S,
            allow_source_mode: false,
            require_source_match: true,
        }
    }
}

impl Policy {
    /// Checks that `id` may use every service in `services`. SPEC §6.4.
    pub fn authorize(&self, id: &ClientIdentity, services: &[&str]) -> Result<(), Refusal> {
        let mut matching = self
            .rules
            .iter()
            .filter(|r| r.identity.matches(id))
            .peekable();
        if matching.peek().is_none() {
            return Err(Refusal::UnknownIdentity);
        }
        let matching: Vec<&Rule> = matching.collect();
        for s in services {
            if !matching.iter().any(|r| r.services.contains(s)) {
                return Err(Refusal::UnauthorizedService);
            }
        }
        Ok(())
    }

    /// Red's authorization of a relayed body (SPEC §5.2, §6.4 "Relayed
    /// requests"): red judges only the names in `hosted`, the services it
    /// hosts; the others were judged by green and are left out. Returns
    /// red's names, in the client's order.
    ///
    /// `unknown_identity` if no rule matches the identity;
    /// `unauthorized_service` if a hosted name is not allowed (the whole
    /// order is refused), or if the body names services but none that red
    /// hosts. A close (no services) needs only a matching rule.
    pub fn authorize_hosted<'a>(
        &self,
        id: &ClientIdentity,
        services: &[&'a str],
        hosted: &[String],
    ) -> Result<Vec<&'a str>, Refusal> {
        let mine: Vec<&'a str> = services
            .iter()
            .copied()
            .filter(|s| hosted.iter().any(|h| h == s))
            .collect();
        self.authorize(id, &mine)?;
        if mine.is_empty() && !services.is_empty() {
            return Err(Refusal::UnauthorizedService);
        }
        Ok(mine)
    }

    /// The lifetime granted for a request of `requested_s`. SPEC §6.4.
    pub fn grant_lifetime(&self, requested_s: u32) -> u32 {
        requested_s.min(self.max_lifetime_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::IdentityKey;

    fn id(names: &[&str]) -> ClientIdentity {
        ClientIdentity {
            key: IdentityKey([0; 32]),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn authorizes_by_any_name() {
        let p = Policy {
            rules: vec![
                Rule {
                    identity: IdentityPattern::parse("email:alice@example.org"),
                    services: ServiceSet::Named(vec!["ssh".into()]),
                },
                Rule {
                    identity: IdentityPattern::parse("cn:alice"),
                    services: ServiceSet::Named(vec!["web".into()]),
                },
            ],
            ..Policy::default()
        };
        let alice = id(&["cn:alice", "email:alice@example.org"]);
        assert_eq!(p.authorize(&alice, &["ssh", "web"]), Ok(()));
        assert_eq!(
            p.authorize(&alice, &["db"]),
            Err(Refusal::UnauthorizedService)
        );
        assert_eq!(
            p.authorize(&id(&["cn:bob"]), &["ssh"]),
            Err(Refusal::UnknownIdentity)
        );
        assert_eq!(p.grant_lifetime(10_000), DEFAULT_MAX_LIFETIME_S);
    }

    fn red_policy() -> (Policy, Vec<String>) {
        let p = Policy {
            rules: vec![Rule {
                identity: IdentityPattern::parse("cn:alice"),
                services: ServiceSet::Named(vec!["web".into()]),
            }],
            ..Policy::default()
        };
        (p, vec!["web".into(), "db".into()])
    }

    #[test]
    fn hosted_names_are_judged_and_foreign_names_ignored() {
        let (p, hosted) = red_policy();
        let alice = id(&["cn:alice"]);
        // "tunnel" is green's: red leaves it to green.
        assert_eq!(
            p.authorize_hosted(&alice, &["tunnel", "web", "ssh"], &hosted),
            Ok(vec!["web"])
        );
        assert_eq!(
            p.authorize_hosted(&alice, &["web", "web"], &hosted),
            Ok(vec!["web", "web"])
        );
    }

    #[test]
    fn hosted_name_not_granted_refuses_the_whole_order() {
        let (p, hosted) = red_policy();
        assert_eq!(
            p.authorize_hosted(&id(&["cn:alice"]), &["web", "db", "tunnel"], &hosted),
            Err(Refusal::UnauthorizedService)
        );
    }

    #[test]
    fn request_naming_no_hosted_service_is_unauthorized_service() {
        let (p, hosted) = red_policy();
        assert_eq!(
            p.authorize_hosted(&id(&["cn:alice"]), &["tunnel"], &hosted),
            Err(Refusal::UnauthorizedService)
        );
        // The identity is judged first.
        assert_eq!(
            p.authorize_hosted(&id(&["cn:bob"]), &["tunnel"], &hosted),
            Err(Refusal::UnknownIdentity)
        );
        assert_eq!(
            p.authorize_hosted(&id(&["cn:bob"]), &["web"], &hosted),
            Err(Refusal::UnknownIdentity)
        );
    }

    #[test]
    fn close_needs_only_a_matching_rule() {
        let (p, hosted) = red_policy();
        assert_eq!(
            p.authorize_hosted(&id(&["cn:alice"]), &[], &hosted),
            Ok(vec![])
        );
        assert_eq!(
            p.authorize_hosted(&id(&["cn:bob"]), &[], &hosted),
            Err(Refusal::UnknownIdentity)
        );
    }
}
