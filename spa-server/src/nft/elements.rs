//! Set elements: the keys our sets hold, in the kernel's layout, and
//! what a dump of them decodes to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

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

/// One element of `block4`/`block6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// Blocked source address.
    pub addr: IpAddr,
    /// The timeout the element was added with.
    pub timeout: Option<Duration>,
    /// Time left before the kernel expires it.
    pub expires: Option<Duration>,
}

/// What the four sets hold (expired elements are never listed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetContents {
    /// `allow4` then `allow6`.
    pub allow: Vec<AllowEntry>,
    /// `block4` then `block6`.
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

    /// The block element for this address, if present.
    pub fn blocked(&self, addr: IpAddr) -> Option<&BlockEntry> {
        let addr = addr.to_canonical();
        self.block.iter().find(|e| e.addr == addr)
    }
}

/// A set key: which set, and the key bytes in the kernel's register layout
/// (each field of a concatenation padded to 4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) set: &'static str,
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
                (SET_ALLOW4, 4)
            }
            IpAddr::V6(a) => {
                bytes[..16].copy_from_slice(&a.octets());
                (SET_ALLOW6, 16)
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

    pub(super) fn block(addr: IpAddr) -> Key {
        let mut bytes = [0u8; 24];
        let (set, len) = match addr.to_canonical() {
            IpAddr::V4(a) => {
                bytes[..4].copy_from_slice(&a.octets());
                (SET_BLOCK4, 4)
            }
            IpAddr::V6(a) => {
                bytes[..16].copy_from_slice(&a.octets());
                (SET_BLOCK6, 16)
            }
        };
        Key { set, len, bytes }
    }
}

/// An element as dumped: key bytes, timeout and expiration in ms.
#[derive(Debug, Default)]
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

pub(super) fn decode(set: &str, raw: RawElem, out: &mut SetContents) -> Result<(), NftError> {
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
    match set {
        SET_ALLOW4 | SET_ALLOW6 => {
            let (addr, a) = match (set, k.len()) {
                (SET_ALLOW4, 12) => (v4(k), 4),
                (SET_ALLOW6, 24) => (v6(k), 16),
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
        }
        _ => {
            let addr = match (set, k.len()) {
                (SET_BLOCK4, 4) => v4(k),
                (SET_BLOCK6, 16) => v6(k),
                _ => None,
            };
            let Some(addr) = addr else { return Err(bad) };
            out.block.push(BlockEntry {
                addr,
                timeout,
                expires,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_key_layout() {
        let k = Key::allow("192.0.2.1".parse().expect("test value"), Proto::Tcp, 22);
        assert_eq!(k.set, SET_ALLOW4);
        assert_eq!(k.as_bytes(), [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        let k = Key::allow(
            "2001:db8::1".parse().expect("test value"),
            Proto::Udp,
            0x1234,
        );
        assert_eq!(k.set, SET_ALLOW6);
        assert_eq!(k.as_bytes().len(), 24);
        assert_eq!(&k.as_bytes()[..2], [0x20, 0x01]);
        assert_eq!(&k.as_bytes()[16..], [17, 0, 0, 0, 0x12, 0x34, 0, 0]);
        // IPv4-mapped IPv6 goes to the IPv4 set.
        let k = Key::allow(
            "::ffff:192.0.2.1".parse().expect("test value"),
            Proto::Tcp,
            22,
        );
        assert_eq!(k.set, SET_ALLOW4);
        let k = Key::block("198.51.100.9".parse().expect("test value"));
        assert_eq!((k.set, k.as_bytes()), (SET_BLOCK4, &[198, 51, 100, 9][..]));
        let k = Key::block("2001:db8::9".parse().expect("test value"));
        assert_eq!((k.set, k.as_bytes().len()), (SET_BLOCK6, 16));
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
            decode(SET_ALLOW4, raw, &mut out),
            Err(NftError::Malformed(_))
        ));
    }
}
