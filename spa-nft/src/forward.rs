//! The forward chain: what green's firewall does with traffic it routes
//! to hosts behind it (SPEC §9, "A gateway that routes").
//!
//! The input chain guards green itself only. A gateway with forwarding on
//! would otherwise pass an unauthenticated, even blocked, scanner to every
//! host behind it. So the ruleset always has a `forward` chain (hook
//! `forward`, same priority as `input`) that drops blocked sources, and
//! with [`ForwardPolicy::Drop`] drops every forwarded packet except:
//!
//! 1. management sources (as in the input chain);
//! 2. `ct state established,related` (before the block sets, for the same
//!    reason as in the input chain: a block on spoofable evidence must
//!    not cut someone else's ongoing connection);
//! 3. the operator's [`ForwardAllow`] list: destination networks (hosts
//!    behind green that may be reached) and, with `from`, source networks
//!    (hosts behind green that may reach out), each with an optional
//!    protocol and destination port.
//!
//! The default, [`ForwardPolicy::Accept`], keeps forwarding open (only
//! blocked sources are dropped): the daemon and `check-config` warn when
//! the kernel forwards (`net.ipv4.ip_forward` or
//! `net.ipv6.conf.all.forwarding` is 1) and the policy is not `drop`.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use ipnet::IpNet;

use super::Proto;
use super::elements::{SetId, netmask};
use super::ruleset::{SET_BLOCK4, SET_BLOCK6};

/// Name of the forward base chain.
pub(crate) const CHAIN_FORWARD: &str = "forward";

/// What the forward chain does with routed traffic that nothing allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardPolicy {
    /// Forward it (only blocked sources are dropped). The default, so that
    /// installing spa on a router does not cut what it routes; a warning
    /// says so when the kernel forwards.
    #[default]
    Accept,
    /// Drop it, silently: only management sources, established or related
    /// flows and the allow list cross.
    Drop,
}

impl ForwardPolicy {
    /// `accept` or `drop`.
    pub const fn name(self) -> &'static str {
        match self {
            ForwardPolicy::Accept => "accept",
            ForwardPolicy::Drop => "drop",
        }
    }
}

impl FromStr for ForwardPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "accept" => Ok(ForwardPolicy::Accept),
            "drop" => Ok(ForwardPolicy::Drop),
            _ => Err(format!("'{s}': use \"accept\" or \"drop\"")),
        }
    }
}

/// One entry of `[firewall] forward_allow`: routed traffic to `net` (or,
/// with `from`, from `net`), to one protocol and destination port when
/// given, is forwarded under [`ForwardPolicy::Drop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardAllow {
    /// `false`: `net` is the destination (hosts behind green that may be
    /// reached); `true`: the source (hosts behind green that may reach
    /// out).
    pub from: bool,
    /// The network (host bits ignored).
    pub net: IpNet,
    /// Protocol and destination port; `None`: any.
    pub port: Option<(Proto, u16)>,
}

impl FromStr for ForwardAllow {
    type Err = String;

    /// `"10.0.3.0/24"`, `"10.0.3.7 tcp/22"`, `"from 10.0.3.0/24"`,
    /// `"from 10.0.3.0/24 udp/53"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("'{s}': expected \"[from] CIDR [tcp/PORT|udp/PORT]\"");
        let mut words = s.split_whitespace().peekable();
        let from = words.next_if_eq(&"from").is_some();
        let word = words.next().unwrap_or_default();
        let net = word
            .parse::<IpNet>()
            .ok()
            .or_else(|| word.parse::<std::net::IpAddr>().ok().map(IpNet::from))
            .ok_or_else(usage)?
            .trunc();
        let port = match words.next() {
            None => None,
            Some(spec) => {
                let parsed = spec.split_once('/').and_then(|(p, n)| {
                    Some((
                        p.parse::<Proto>().ok()?,
                        n.parse::<u16>().ok().filter(|&n| n != 0)?,
                    ))
                });
                Some(parsed.ok_or_else(usage)?)
            }
        };
        if words.next().is_some() {
            return Err(usage());
        }
        Ok(ForwardAllow { from, net, port })
    }
}

impl fmt::Display for ForwardAllow {
    /// The nft match.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if matches!(self.net, IpNet::V4(_)) {
            "ip"
        } else {
            "ip6"
        };
        let dir = if self.from { "saddr" } else { "daddr" };
        write!(f, "{family} {dir} {}", self.net)?;
        if let Some((proto, port)) = self.port {
            write!(f, " {proto} dport {port}")?;
        }
        Ok(())
    }
}

/// The forward chain's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forward {
    /// Accept (default) or drop.
    pub policy: ForwardPolicy,
    /// What crosses under [`ForwardPolicy::Drop`].
    pub allow: Vec<ForwardAllow>,
}

/// Renders the forward chain. `management` are the aggregated management
/// networks, `net4`/`net6` the block sets ([`SetId::block_for`]).
pub(crate) fn render_chain(
    s: &mut String,
    fwd: &Forward,
    priority: &str,
    management: &[IpNet],
    net4: SetId,
    net6: SetId,
) -> fmt::Result {
    writeln!(s, "\tchain {CHAIN_FORWARD} {{")?;
    writeln!(
        s,
        "\t\ttype filter hook forward priority {priority}; policy accept;"
    )?;
    for (family, v6) in [("ip", false), ("ip6", true)] {
        let nets: Vec<String> = management
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .map(IpNet::to_string)
            .collect();
        if !nets.is_empty() {
            writeln!(s, "\t\t{family} saddr {{ {} }} accept", nets.join(", "))?;
        }
    }
    writeln!(s, "\t\tct state established,related accept")?;
    writeln!(s, "\t\tip saddr @{SET_BLOCK4} counter drop")?;
    writeln!(s, "\t\tip6 saddr @{SET_BLOCK6} counter drop")?;
    if let SetId::Block4Net(p) = net4 {
        let (mask, set) = (netmask(false, p), net4.name());
        writeln!(s, "\t\tip saddr & {mask} @{set} counter drop")?;
    }
    if let SetId::Block6Net(p) = net6 {
        let (mask, set) = (netmask(true, p), net6.name());
        writeln!(s, "\t\tip6 saddr & {mask} @{set} counter drop")?;
    }
    if fwd.policy == ForwardPolicy::Drop {
        for a in &fwd.allow {
            writeln!(s, "\t\t{a} accept")?;
        }
        writeln!(s, "\t\tcounter drop")?;
    }
    writeln!(s, "\t}}")
}

/// Whether the kernel forwards IPv4 or IPv6 in this network namespace:
/// the sysctls `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding`
/// (unreadable counts as off).
pub fn kernel_forwards() -> bool {
    [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ]
    .iter()
    .any(|p| std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1"))
}

/// The warning for a forwarding kernel without `forward = "drop"`, if it
/// applies.
pub fn open_forwarding_warning(policy: ForwardPolicy, forwards: bool) -> Option<&'static str> {
    (forwards && policy != ForwardPolicy::Drop).then_some(
        "this host forwards packets (net.ipv4.ip_forward or net.ipv6.conf.all.forwarding is 1) \
         and [firewall] forward is not \"drop\": the blackhole guards this host only, and every \
         host behind it is reachable without a knock; set forward = \"drop\" (and forward_allow)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_render() {
        let a: ForwardAllow = "10.0.3.9/24 tcp/22".parse().expect("entry");
        assert_eq!(a.to_string(), "ip daddr 10.0.3.0/24 tcp dport 22");
        let b: ForwardAllow = "2001:db8::7".parse().expect("entry");
        assert_eq!(b.to_string(), "ip6 daddr 2001:db8::7/128");
        let c: ForwardAllow = " 10.0.4.1  udp/53 ".parse().expect("entry");
        assert_eq!(c.port, Some((Proto::Udp, 53)));
        let d: ForwardAllow = "from 10.0.3.0/24".parse().expect("entry");
        assert_eq!(d.to_string(), "ip saddr 10.0.3.0/24");
        for bad in [
            "",
            "from",
            "host",
            "to 10.0.3.0/24",
            "10.0.3.0/33",
            "10.0.3.1 tcp",
            "10.0.3.1 tcp/0",
            "10.0.3.1 icmp/1",
            "10.0.3.1 tcp/22 x",
        ] {
            assert!(bad.parse::<ForwardAllow>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policies_parse() {
        assert_eq!("drop".parse(), Ok(ForwardPolicy::Drop));
        assert_eq!("accept".parse(), Ok(ForwardPolicy::Accept));
        assert!("DROP".parse::<ForwardPolicy>().is_err());
        assert_eq!(ForwardPolicy::default(), ForwardPolicy::Accept);
    }

    #[test]
    fn warning_only_for_a_forwarding_kernel_without_drop() {
        assert!(open_forwarding_warning(ForwardPolicy::Accept, true).is_some());
        assert!(open_forwarding_warning(ForwardPolicy::Drop, true).is_none());
        assert!(open_forwarding_warning(ForwardPolicy::Accept, false).is_none());
    }
}
