//! Set elements: the keys our sets hold, in the kernel's layout, and
//! what a dump of them decodes to.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Proto;
use super::error::NftError;
use super::netlink::{
    self, NFTA_DATA_VALUE, NFTA_LIST_ELEM, NFTA_SET_ELEM_EXPIRATION, NFTA_SET_ELEM_FLAGS,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_TIMEOUT,
};
use super::ruleset::{SET_ALLOW4, SET_ALLOW6, SET_BLOCK4, SET_BLOCK6};

/// `NFT_SET_ELEM_CATCHALL` (enum nft_set_elem_flags): an element without a
/// key, which our sets never hold but a dump may show.
const NFT_SET_ELEM_CATCHALL: u32 = 0x2;

/// One element of `allow4`/`allow6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Source address.
    pub addr: IpAddr,
    /// IP protocol number (6 for TCP, 17 for UDP; others only if someone
    /// else put them there).
    pub l4proto: u8,
    /// Destination port.
    pub port: u16,
    /// The timeout the element was added with.
    pub timeout: Option<Duration>,
    /// Time left before the kernel expires it.
    pub expires: Option<Duration>,
}

impl AllowEntry {
    /// The protocol, if TCP or UDP.
    pub fn proto(&self) -> Option<Proto> {
        Proto::from_number(self.l4proto)
    }
}

/// One blocked source: an element of `block4`/`block6` (one address,
/// `prefix_len` 32 or 128) or of a prefix set `block4_<n>`/`block6_<n>`
/// (a whole network, `prefix_len` n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// The blocked address, or the network address of the blocked prefix
    /// (host bits zero).
    pub addr: IpAddr,
    /// The prefix length: 32 or 128 for a single address.
    pub prefix_len: u8,
    /// The timeout the element was added with.
    pub timeout: Option<Duration>,
    /// Time left before the kernel expires it.
    pub expires: Option<Duration>,
}

impl BlockEntry {
    /// What is blocked, as a network (`/32` or `/128` for one address).
    pub fn net(&self) -> IpNet {
        // The prefix length comes from the set and is within range; the
        // address alone is the safe answer otherwise.
        IpNet::new(self.addr, self.prefix_len).unwrap_or_else(|_| IpNet::from(self.addr))
    }

    /// Whether this block covers one address only.
    pub fn is_host(&self) -> bool {
        self.net().prefix_len() == self.net().max_prefix_len()
    }
}

/// What our sets hold (expired elements are never listed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetContents {
    /// `allow4` then `allow6`.
    pub allow: Vec<AllowEntry>,
    /// `block4`, `block6`, then the prefix sets.
    pub block: Vec<BlockEntry>,
}

impl SetContents {
    /// The allow element for this triple, if present.
    pub fn allowed(&self, addr: IpAddr, proto: Proto, port: u16) -> Option<&AllowEntry> {
        let addr = addr.to_canonical();
        self.allow
            .iter()
            .find(|e| e.addr == addr && e.l4proto == proto.number() && e.port == port)
    }

    /// The block element that drops new flows from this address, if any:
    /// the address's own element, else a prefix element covering it.
    pub fn blocked(&self, addr: IpAddr) -> Option<&BlockEntry> {
        let addr = addr.to_canonical();
        self.block
            .iter()
            .find(|e| e.is_host() && e.addr == addr)
            .or_else(|| self.block.iter().find(|e| e.net().contains(&addr)))
    }

    /// The block element for exactly this network (`/32` or `/128`: one
    /// address), if present.
    pub fn blocked_net(&self, net: IpNet) -> Option<&BlockEntry> {
        let net = canonical_net(net);
        self.block.iter().find(|e| e.net() == net)
    }
}

/// Which of our sets: the four fixed ones, or a prefix set of blocked
/// networks, named after its prefix length (`block6_64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum SetId {
    Allow4,
    Allow6,
    Block4,
    Block6,
    /// `block4_<n>`: IPv4 networks of prefix length n (0..=31).
    Block4Net(u8),
    /// `block6_<n>`: IPv6 networks of prefix length n (0..=127).
    Block6Net(u8),
}

impl SetId {
    /// The fixed sets, which every table of ours has.
    pub(super) const FIXED: [SetId; 4] =
        [SetId::Allow4, SetId::Allow6, SetId::Block4, SetId::Block6];

    /// The set that blocks networks of this prefix length in this family
    /// (`v6`): `block4`/`block6` for the full length, else a prefix set.
    /// Longer prefixes are clamped to the full length.
    pub(super) fn block_for(v6: bool, prefix_len: u8) -> SetId {
        match (v6, prefix_len) {
            (false, p) if p < 32 => SetId::Block4Net(p),
            (false, _) => SetId::Block4,
            (true, p) if p < 128 => SetId::Block6Net(p),
            (true, _) => SetId::Block6,
        }
    }

    /// The set's name in the table.
    pub(super) fn name(self) -> Cow<'static, str> {
        match self {
            SetId::Allow4 => Cow::Borrowed(SET_ALLOW4),
            SetId::Allow6 => Cow::Borrowed(SET_ALLOW6),
            SetId::Block4 => Cow::Borrowed(SET_BLOCK4),
            SetId::Block6 => Cow::Borrowed(SET_BLOCK6),
            SetId::Block4Net(p) => Cow::Owned(format!("{SET_BLOCK4}_{p}")),
            SetId::Block6Net(p) => Cow::Owned(format!("{SET_BLOCK6}_{p}")),
        }
    }

    /// The set a name stands for, if it is one of ours (`block6_64`, not
    /// `block6_128` nor `block6_064`).
    pub(super) fn from_name(name: &str) -> Option<SetId> {
        if let Some(fixed) = SetId::FIXED.into_iter().find(|s| s.name() == name) {
            return Some(fixed);
        }
        let (v6, digits) = if let Some(d) = name.strip_prefix("block4_") {
            (false, d)
        } else {
            (true, name.strip_prefix("block6_")?)
        };
        let p: u8 = digits.parse().ok()?;
        let set = SetId::block_for(v6, p);
        (set.name() == name).then_some(set)
    }
}

/// An IPv4-mapped IPv6 network of prefix length 96 or more as the IPv4
/// network it is; anything else unchanged.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(a) => Ipv4Net::new(a, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// A set key: which set, and the key bytes in the kernel's register layout
/// (each field of a concatenation padded to 4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) set: SetId,
    len: usize,
    bytes: [u8; 24],
}

impl Key {
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// `saddr . l4proto . dport`: address (4 or 16 bytes), protocol byte
    /// padded to 4, port big-endian padded to 4.
    pub(super) fn allow(addr: IpAddr, proto: Proto, port: u16) -> Key {
        let mut bytes = [0u8; 24];
        let (set, a) = match addr.to_canonical() {
            IpAddr::V4(a) => {
                bytes[..4].copy_from_slice(&a.octets());
                (SetId::Allow4, 4)
            }
            IpAddr::V6(a) => {
                bytes[..16].copy_from_slice(&a.octets());
                (SetId::Allow6, 16)
            }
        };
        bytes[a] = proto.number();
        bytes[a + 4..a + 6].copy_from_slice(&port.to_be_bytes());
        Key {
            set,
            len: a + 8,
            bytes,
        }
    }

    /// One address, in `block4`/`block6`.
    pub(super) fn block(addr: IpAddr) -> Key {
        Key::block_net(IpNet::from(addr))
    }

    /// A network: one address (`/32`, `/128`) in `block4`/`block6`, a
    /// shorter prefix in the prefix set of its length, keyed by the network
    /// address (host bits cleared: the rule masks the source the same way).
    /// IPv4-mapped IPv6 networks (`/96` or longer) count as IPv4.
    pub(super) fn block_net(net: IpNet) -> Key {
        let mut bytes = [0u8; 24];
        let (set, len) = match canonical_net(net) {
            IpNet::V4(n) => {
                bytes[..4].copy_from_slice(&n.network().octets());
                (SetId::block_for(false, n.prefix_len()), 4)
            }
            IpNet::V6(n) => {
                bytes[..16].copy_from_slice(&n.network().octets());
                (SetId::block_for(true, n.prefix_len()), 16)
            }
        };
        Key { set, len, bytes }
    }
}

/// The netmask of prefix length `prefix_len` (clamped) in nft's notation:
/// `255.255.255.0`, `ffff:ffff:ffff:ffff::`.
pub(super) fn netmask(v6: bool, prefix_len: u8) -> String {
    if v6 {
        Ipv6Net::new(Ipv6Addr::UNSPECIFIED, prefix_len.min(128)).map_or_else(
            |_| Ipv6Addr::UNSPECIFIED.to_string(),
            |n| n.netmask().to_string(),
        )
    } else {
        Ipv4Net::new(Ipv4Addr::UNSPECIFIED, prefix_len.min(32)).map_or_else(
            |_| Ipv4Addr::UNSPECIFIED.to_string(),
            |n| n.netmask().to_string(),
        )
    }
}

/// An element as dumped: key bytes, timeout and expiration in ms.
#[derive(Debug, Clone, Default)]
pub(super) struct RawElem {
    key: Vec<u8>,
    timeout_ms: Option<u64>,
    expires_ms: Option<u64>,
}

pub(super) fn parse_elements(
    m: netlink::NlMsg<'_>,
    out: &mut Vec<RawElem>,
) -> Result<(), NftError> {
    for attr in m.nft_attrs()? {
        let (ty, payload) = attr?;
        if ty != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for item in netlink::attrs(payload) {
            let (ty, elem) = item?;
            if ty != NFTA_LIST_ELEM {
                continue;
            }
            let mut raw = RawElem::default();
            let mut flags = 0;
            for field in netlink::attrs(elem) {
                let (ty, value) = field?;
                match ty {
                    NFTA_SET_ELEM_KEY => {
                        for data in netlink::attrs(value) {
                            let (ty, bytes) = data?;
                            if ty == NFTA_DATA_VALUE {
                                raw.key = bytes.to_vec();
                            }
                        }
                    }
                    NFTA_SET_ELEM_TIMEOUT => raw.timeout_ms = Some(netlink::be64(value)?),
                    NFTA_SET_ELEM_EXPIRATION => raw.expires_ms = Some(netlink::be64(value)?),
                    NFTA_SET_ELEM_FLAGS => flags = netlink::be32(value)?,
                    _ => {}
                }
            }
            if flags & NFT_SET_ELEM_CATCHALL != 0 {
                continue;
            }
            out.push(raw);
        }
    }
    Ok(())
}

pub(super) fn decode(set: SetId, raw: RawElem, out: &mut SetContents) -> Result<(), NftError> {
    let timeout = raw.timeout_ms.map(Duration::from_millis);
    let expires = raw.expires_ms.map(Duration::from_millis);
    let k = &raw.key;
    let bad = NftError::Malformed("set element key of an unexpected length");
    let v4 = |b: &[u8]| -> Option<IpAddr> {
        let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(o)))
    };
    let v6 = |b: &[u8]| -> Option<IpAddr> {
        let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    };
    let port_at = |at: usize| -> Option<u16> {
        let p = k.get(at..at + 2)?;
        Some(u16::from_be_bytes([p[0], p[1]]))
    };
    let (addr, prefix_len) = match (set, k.len()) {
        (SetId::Allow4 | SetId::Allow6, len) => {
            let (addr, a) = match (set, len) {
                (SetId::Allow4, 12) => (v4(k), 4),
                (SetId::Allow6, 24) => (v6(k), 16),
                _ => return Err(bad),
            };
            let (Some(addr), Some(&l4proto), Some(port)) = (addr, k.get(a), port_at(a + 4)) else {
                return Err(bad);
            };
            out.allow.push(AllowEntry {
                addr,
                l4proto,
                port,
                timeout,
                expires,
            });
            return Ok(());
        }
        (SetId::Block4, 4) => (v4(k), 32),
        (SetId::Block6, 16) => (v6(k), 128),
        (SetId::Block4Net(p), 4) => (v4(k), p),
        (SetId::Block6Net(p), 16) => (v6(k), p),
        _ => (None, 0),
    };
    let Some(addr) = addr else { return Err(bad) };
    out.block.push(BlockEntry {
        addr,
        prefix_len,
        timeout,
        expires,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_key_layout() {
        let k = Key::allow("192.0.2.1".parse().expect("test value"), Proto::Tcp, 22);
        assert_eq!(k.set, SetId::Allow4);
        assert_eq!(k.as_bytes(), [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        let k = Key::allow(
            "2001:db8::1".parse().expect("test value"),
            Proto::Udp,
            0x1234,
        );
        assert_eq!(k.set, SetId::Allow6);
        assert_eq!(k.as_bytes().len(), 24);
        assert_eq!(&k.as_bytes()[..2], [0x20, 0x01]);
        assert_eq!(&k.as_bytes()[16..], [17, 0, 0, 0, 0x12, 0x34, 0, 0]);
        // IPv4-mapped IPv6 goes to the IPv4 set.
        let k = Key::allow(
            "::ffff:192.0.2.1".parse().expect("test value"),
            Proto::Tcp,
            22,
        );
        assert_eq!(k.set, SetId::Allow4);
        let k = Key::block("198.51.100.9".parse().expect("test value"));
        assert_eq!(
            (k.set, k.as_bytes()),
            (SetId::Block4, &[198, 51, 100, 9][..])
        );
        let k = Key::block("2001:db8::9".parse().expect("test value"));
        assert_eq!((k.set, k.as_bytes().len()), (SetId::Block6, 16));
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    #[test]
    fn prefix_keys_hold_the_network_address() {
        let k = Key::block_net(net("fd00:200:2::2/64"));
        assert_eq!(k.set, SetId::Block6Net(64));
        assert_eq!(k.set.name(), "block6_64");
        let want: Ipv6Addr = "fd00:200:2::".parse().expect("test value");
        assert_eq!(k.as_bytes(), want.octets());
        // Every address of the /64 gives the same key, another /64 another.
        assert_eq!(Key::block_net(net("fd00:200:2:0:ffff:1:2:3/64")), k);
        assert_ne!(Key::block_net(net("fd00:200:2:1::2/64")), k);
        let k = Key::block_net(net("10.200.7.9/24"));
        assert_eq!(
            (k.set, k.as_bytes()),
            (SetId::Block4Net(24), &[10, 200, 7, 0][..])
        );
        let k = Key::block_net(net("10.200.7.9/9"));
        assert_eq!(k.as_bytes(), [10, 128, 0, 0]);
        // Full-length prefixes are single addresses, in block4/block6.
        assert_eq!(
            Key::block_net(net("fd00::9/128")),
            Key::block("fd00::9".parse().expect("test value"))
        );
        assert_eq!(Key::block_net(net("10.200.7.9/32")).set, SetId::Block4);
        // IPv4-mapped prefixes are IPv4 ones.
        let k = Key::block_net(net("::ffff:10.200.7.9/120"));
        assert_eq!(
            (k.set, k.as_bytes()),
            (SetId::Block4Net(24), &[10, 200, 7, 0][..])
        );
    }

    #[test]
    fn set_names_round_trip() {
        for set in [
            SetId::Allow4,
            SetId::Allow6,
            SetId::Block4,
            SetId::Block6,
            SetId::Block4Net(0),
            SetId::Block4Net(31),
            SetId::Block6Net(64),
            SetId::Block6Net(127),
        ] {
            assert_eq!(SetId::from_name(&set.name()), Some(set));
        }
        for other in [
            "block6_128",
            "block4_32",
            "block6_064",
            "block6_",
            "block6_x",
            "other",
        ] {
            assert_eq!(SetId::from_name(other), None, "{other}");
        }
        assert_eq!(netmask(true, 64), "ffff:ffff:ffff:ffff::");
        assert_eq!(netmask(false, 20), "255.255.240.0");
        assert_eq!(netmask(true, 0), "::");
    }

    #[test]
    fn prefix_blocks_decode_and_cover_their_addresses() {
        let mut out = SetContents::default();
        for n in ["fd00:200:2::/64", "192.0.2.7/32"] {
            let k = Key::block_net(net(n));
            let raw = RawElem {
                key: k.as_bytes().to_vec(),
                timeout_ms: Some(3000),
                expires_ms: Some(2000),
            };
            decode(k.set, raw, &mut out).expect("decodes");
        }
        let any = |s: &str| -> IpAddr { s.parse().expect("test value") };
        let e = out
            .blocked(any("fd00:200:2::77"))
            .expect("covered by the /64");
        assert_eq!((e.net(), e.is_host()), (net("fd00:200:2::/64"), false));
        assert_eq!(e.timeout, Some(Duration::from_secs(3)));
        assert!(out.blocked(any("fd00:200:3::77")).is_none());
        assert!(
            out.blocked(any("192.0.2.7"))
                .is_some_and(BlockEntry::is_host)
        );
        assert!(out.blocked(any("192.0.2.8")).is_none());
        assert!(out.blocked_net(net("fd00:200:2::/64")).is_some());
        assert!(out.blocked_net(net("fd00:200:2::/56")).is_none());
        assert!(out.blocked_net(net("::ffff:192.0.2.7/128")).is_some());
        // A key of the wrong length for its set is refused.
        let raw = RawElem {
            key: vec![0; 4],
            ..RawElem::default()
        };
        assert!(matches!(
            decode(SetId::Block6Net(64), raw, &mut out),
            Err(NftError::Malformed(_))
        ));
    }

    #[test]
    fn decode_round_trips_keys() {
        let mut out = SetContents::default();
        for (addr, proto, port) in [
            ("192.0.2.1", Proto::Tcp, 22u16),
            ("2001:db8::1", Proto::Udp, 53),
        ] {
            let addr: IpAddr = addr.parse().expect("test value");
            let k = Key::allow(addr, proto, port);
            let raw = RawElem {
                key: k.as_bytes().to_vec(),
                timeout_ms: Some(5000),
                expires_ms: Some(4000),
            };
            decode(k.set, raw, &mut out).expect("test value");
            let e = out.allowed(addr, proto, port).expect("decoded");
            assert_eq!(e.timeout, Some(Duration::from_secs(5)));
            assert_eq!(e.expires, Some(Duration::from_secs(4)));
        }
        let raw = RawElem {
            key: vec![1, 2, 3],
            ..RawElem::default()
        };
        assert!(matches!(
            decode(SetId::Allow4, raw, &mut out),
            Err(NftError::Malformed(_))
        ));
    }
}
