//! `spa-nft`: the kernel firewall that a knock opens, for both daemons
//! (green's `spa-server` and `red-relay`, through `spa-daemon`).
//!
//! May depend on: the standard library, `nix`/`libc` (netlink sockets),
//! `ipnet`, `thiserror`. Never on the daemon framework, the protocol core
//! or the key files: it knows addresses, ports and timeouts, not knocks.
//!
//! # The nftables driver
//!
//!
//! Two paths, with different costs and different tools:
//!
//! * **The ruleset** ([`Ruleset`], [`FirewallConfig`]), installed once when
//!   the daemon starts and removed when it stops, through the `nft` binary
//!   (`nft -f -`, one atomic transaction). Our own table (`inet spa` by
//!   default) holds four sets with per-element timeouts (plus one prefix
//!   set per family whose blocks cover a network, see below) and one input
//!   base chain; other tables are never touched.
//! * **The per-knock path** ([`NftSets`]): adding, refreshing and deleting
//!   set elements (`allow4`/`allow6` for `address . protocol . port`,
//!   `block4`/`block6` for addresses, `block4_<n>`/`block6_<n>` for
//!   networks) with nf_tables batch messages written
//!   straight to a `NETLINK_NETFILTER` socket that is opened once. No
//!   process is spawned per knock, and the kernel expires each element by
//!   itself when its timeout runs out.
//!
//! # Why hand-written netlink
//!
//! No maintained Rust crate writes nf_tables set elements without spawning
//! `nft`: the `nftables` crate drives the `nft` binary through its JSON
//! interface, one process per call (about 2.7 ms each); the crates that
//! speak nf_tables netlink themselves (`nftnl` over the C libraries
//! libnftnl and libmnl, `rustables`) bring FFI or `unsafe` code and little
//! recent maintenance, and this workspace forbids `unsafe`. What the
//! per-knock path needs is a small and stable part of the kernel ABI (uapi
//! `linux/netfilter/nfnetlink.h` and `linux/netfilter/nf_tables.h`): one
//! batch of `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` messages, their
//! acknowledgements, and a `NFT_MSG_GETSETELEM` dump for status. It is
//! written here in safe Rust over `nix`'s socket calls (`netlink.rs`), with
//! the constants copied from those headers. Connection-tracking entries
//! are deleted over the same socket (ctnetlink, `conntrack.rs`, for the
//! same reasons).
//!
//! # Rule order, and why
//!
//! The input chain (hook `input`, priority `filter - 10` by default,
//! policy accept) evaluates, in this order:
//!
//! 1. `iif "lo" accept`: local traffic is never filtered.
//! 2. the management allowlist (`ip saddr { … } accept`, `ip6 saddr { … }
//!    accept`): these sources are always accepted, even when they are in a
//!    block set, and are never subject to the mode's drop.
//! 3. `ct state established,related accept`, **before** the block sets: a
//!    block only stops *new* flows from a source. An ongoing, legitimately
//!    opened session (an SSH login through an earlier knock) is not cut
//!    because someone spoofed that source's address in bad knocks and got it
//!    blocked; blocking on spoofable evidence must not be a way to kill
//!    other people's sessions.
//! 4. `ip saddr @block4 drop`, `ip6 saddr @block6 drop`, and for a family
//!    whose blocks cover a prefix ([`BlockPrefixes`], IPv6 /64 by default)
//!    `ip6 saddr & ffff:ffff:ffff:ffff:: @block6_64 drop` (see *Prefix
//!    blocks*).
//! 5. ICMPv6 neighbour discovery (`nd-router-solicit`, `nd-router-advert`,
//!    `nd-neighbor-solicit`, `nd-neighbor-advert`) accepted, so that IPv6
//!    keeps resolving neighbours and routers (conntrack does not see these
//!    as part of any flow).
//! 6. `ip saddr . meta l4proto . th dport @allow4 accept` and its IPv6 twin:
//!    what knocks opened.
//! 7. the mode:
//!    * [`Mode::Blackhole`]: every other packet is dropped (`counter drop`),
//!      new or invalid alike, so the host never answers with a TCP RST or an
//!      ICMP port unreachable: a scan sees only "filtered". When the daemon
//!      receives knocks on a UDP socket, `udp dport <port> accept` comes
//!      just before that drop so that the datagram reaches the socket. In
//!      raw-capture (AF_PACKET) mode no rule is needed: packet sockets see
//!      incoming frames before netfilter's input hook, so the knock is
//!      captured even though the chain then drops it.
//!    * [`Mode::Protect`]: only packets to the listed TCP/UDP ports that are
//!      not part of an established flow are dropped (`tcp dport { … }
//!      drop`); everything else passes untouched (closed ports still answer
//!      with RSTs, as without us).
//!
//! Two more base chains follow the input chain:
//!
//! * `forward` (hook `forward`, same priority): routed traffic. Management
//!   sources, then established/related, then the block sets (`counter
//!   drop`); with `[firewall] forward = "drop"` ([`ForwardPolicy::Drop`])
//!   the operator's `forward_allow` destinations and a final `counter
//!   drop`. The default, accept, only drops blocked sources; the daemon
//!   and `check-config` warn when the kernel forwards. See
//!   [`Forward`] and SPEC §9, "A gateway that routes".
//! * `output` (hook `output`): a locally sent TCP segment that would start
//!   a conntrack entry without a SYN (the kernel's mid-stream pickup) is
//!   dropped (except to management networks), so that a connection whose
//!   entry a revocation deleted ([`NftSets::end_flows`]) does not come
//!   back in the other direction.
//!
//! Netfilter semantics worth knowing: an `accept` here ends evaluation of
//! *this* chain only. Base chains of other tables on the same hook still
//! see the packet, and a `drop` anywhere wins; an operator with their own
//! restrictive input chain must let the knock-opened traffic through there
//! too (or give it a later priority and a policy that trusts ours).
//!
//! Reinstalling the ruleset (daemon restart) replaces the table in one
//! transaction, which also empties the sets: every open door closes.
//!
//! # Prefix blocks
//!
//! The intrusion prevention counts IPv6 sources per /64 by default (one
//! host usually holds a whole /64 and can rotate addresses inside it), so
//! a block must cover the /64 too, or a scanner would simply move to the
//! next address. [`FirewallConfig::block_prefixes`] gives the length per
//! family; for a length shorter than the address the ruleset adds a set
//! named after it (`block6_64`, type `ipv6_addr`, flags timeout) and a rule
//! that masks the source before the lookup, `ip6 saddr &
//! ffff:ffff:ffff:ffff:: @block6_64 drop`. [`NftSets::block_net`] adds the
//! network address (host bits zero) with a timeout, so the kernel expires
//! prefix blocks like any other element; single-address blocks stay in
//! `block4`/`block6`. The sets stay plain hash sets rather than interval
//! sets: one bitwise AND and one exact lookup per packet, and the same
//! add/refresh/delete messages as for addresses. The prefix is in the set's
//! name so that a listing ([`list`]) knows each element's prefix length
//! without any other state. IPv4 defaults to one address per block (/32:
//! no prefix set); a shorter IPv4 length works the same way
//! (`ip saddr & 255.255.255.0 @block4_24 drop`).
//!
//! # Refreshing an element
//!
//! Adding an element that already exists must refresh its timeout (a knock
//! repeated before expiry extends access). Linux 6.12 and later update the
//! timeout of an existing element on a plain re-add (`NLM_F_CREATE` without
//! `NLM_F_EXCL`); older kernels accept the re-add and leave the old timeout.
//! [`NftSets`] finds out which the running kernel does on first use (see
//! [`Refresh`]) and, on an older kernel, sends *add, delete, add* in one
//! batch: one atomic transaction, so the element is never missing for a
//! packet in between.

#![forbid(unsafe_code)]

mod conntrack;
mod elements;
mod error;
mod forward;
mod netlink;
mod ruleset;
mod sets;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use conntrack::{ConntrackError, FlowTuple};
pub use elements::{AllowEntry, BlockEntry, SetContents};
pub use error::{NftError, SetOp};
pub use forward::{Forward, ForwardAllow, ForwardPolicy, kernel_forwards, open_forwarding_warning};
pub use ruleset::{BlockPrefixes, FirewallConfig, Mode, Ruleset, TableName};
pub use sets::{NftSets, Refresh, list};

use std::fmt;
use std::str::FromStr;

/// The default prefix length of an IPv4 block and of an IPv4 source as the
/// intrusion prevention counts it: one address (SPEC §9).
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
/// The default prefix length of an IPv6 block and of an IPv6 source as the
/// intrusion prevention counts it: one /64, which one host usually holds
/// whole (SPEC §9).
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Transport protocol of an allowed `address . protocol . port` element and
/// of a protected port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Proto {
    /// The IP protocol number (`meta l4proto`).
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The protocol for an IP protocol number, if it is TCP or UDP.
    pub const fn from_number(number: u8) -> Option<Proto> {
        match number {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The name nft uses (`tcp`, `udp`).
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error from parsing a [`Proto`]: only `tcp` and `udp` exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport protocol {0:?} (expected tcp or udp)")]
pub struct UnknownProto(pub String);

impl FromStr for Proto {
    type Err = UnknownProto;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(UnknownProto(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_numbers_and_names() {
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(Proto::from_number(p.number()), Some(p));
            assert_eq!(p.name().parse::<Proto>(), Ok(p));
        }
        assert_eq!(Proto::from_number(1), None);
        assert_eq!("UDP".parse::<Proto>(), Ok(Proto::Udp));
        assert!("sctp".parse::<Proto>().is_err());
    }
}
