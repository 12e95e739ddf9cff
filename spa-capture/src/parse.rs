//! User-space classification of a captured IP packet (packet mode).
//!
//! The kernel filter already let through only plausible frames, but it
//! looks at a handful of bytes: every header is parsed again here with
//! `etherparse`, which checks lengths against the slice, so a frame that
//! lies about its lengths is counted as malformed rather than read past
//! its end. Nothing here panics or allocates.
//!
//! Checksums are not verified: frames seen by a packet socket can carry a
//! checksum the NIC or the sending stack has not filled in yet
//! (`CHECKSUM_PARTIAL` on veth and loopback), and a knock is
//! authenticated end to end anyway.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    IpNumber, Ipv6FragmentHeaderSlice, LaxIpPayloadSlice, LaxIpv4Slice, LaxIpv6Slice, LenSource,
    TcpHeaderSlice, UdpHeaderSlice, UdpSlice,
};

use super::defrag::Fragment;
use super::{Event, Proto};

/// What a frame turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Class<'a> {
    /// A knock or a probe, as the capture reports it.
    Seen(Event<'a>),
    /// A fragment of a UDP datagram that may be a knock: a first fragment
    /// naming the knock port, or a later one (which names no port). For
    /// `defrag.rs`.
    Fragment(Fragment<'a>),
    /// Well-formed, but neither (e.g. a frame queued before the filter
    /// was attached, or a SYN-ACK).
    Ignored,
    /// Failed a header or length check.
    Malformed,
}

/// Classifies an IPv4 (`ethertype` 0x0800) or IPv6 (0x86dd) packet that
/// starts at `frame[0]`.
pub(crate) fn classify(
    frame: &[u8],
    ethertype: u16,
    knock_port: u16,
    scan_watch: bool,
) -> Class<'_> {
    match ethertype {
        0x0800 => classify_v4(frame, knock_port, scan_watch),
        0x86dd => classify_v6(frame, knock_port, scan_watch),
        _ => Class::Ignored,
    }
}

fn classify_v4(frame: &[u8], knock_port: u16, scan_watch: bool) -> Class<'_> {
    let Ok((ip, _)) = LaxIpv4Slice::from_slice(frame) else {
        return Class::Malformed;
    };
    let h = ip.header();
    let payload = ip.payload();
    if h.protocol() != payload.ip_number {
        // An authentication header in between: not something we accept.
        return Class::Ignored;
    }
    let src = IpAddr::V4(h.source_addr());
    let dst = IpAddr::V4(h.destination_addr());
    let complete_len = payload.len_source == LenSource::Ipv4HeaderTotalLen;
    if h.more_fragments() || h.fragments_offset().value() != 0 {
        let f = Fragment {
            src,
            dst,
            id: u32::from(h.identification()),
            offset: usize::from(h.fragments_offset().byte_offset()),
            more: h.more_fragments(),
            payload: payload.payload,
        };
        return fragment(f, payload, complete_len, knock_port, scan_watch);
    }
    transport(src, dst, payload, complete_len, knock_port, scan_watch)
}

fn classify_v6(frame: &[u8], knock_port: u16, scan_watch: bool) -> Class<'_> {
    let Ok((ip, _)) = LaxIpv6Slice::from_slice(frame) else {
        return Class::Malformed;
    };
    let h = ip.header();
    let src = IpAddr::V6(h.source_addr());
    let dst = IpAddr::V6(h.destination_addr());
    let complete_len = ip.payload().len_source == LenSource::Ipv6HeaderPayloadLen;
    let exts = ip.extensions();
    if exts.first_header() == Some(IpNumber::IPV6_FRAGMENTATION_HEADER) && exts.slice().len() == 8 {
        // Only a Fragment header (RFC 8200 §4.5), as the kernel filter
        // passes.
        let Ok(fh) = Ipv6FragmentHeaderSlice::from_slice(exts.slice()) else {
            return Class::Malformed;
        };
        let payload = ip.payload();
        if fh.fragment_offset().value() == 0 && !fh.more_fragments() {
            // An atomic fragment (RFC 6946): a whole datagram.
            return transport(src, dst, payload, complete_len, knock_port, scan_watch);
        }
        let f = Fragment {
            src,
            dst,
            id: fh.identification(),
            offset: usize::from(fh.fragment_offset().byte_offset()),
            more: fh.more_fragments(),
            payload: payload.payload,
        };
        return fragment(f, payload, complete_len, knock_port, scan_watch);
    }
    if !exts.is_empty() || h.next_header() != ip.payload().ip_number {
        // Other extension headers: the kernel filter does not pass these.
        return Class::Ignored;
    }
    transport(src, dst, ip.payload(), complete_len, knock_port, scan_watch)
}

/// A fragment: UDP only, whole (not cut by the snap length); a first
/// fragment must name the knock port (with scan watch, one that names
/// another port is a probe, as an unfragmented datagram would be).
fn fragment<'a>(
    f: Fragment<'a>,
    payload: &LaxIpPayloadSlice<'a>,
    complete_len: bool,
    knock_port: u16,
    scan_watch: bool,
) -> Class<'a> {
    if payload.ip_number != IpNumber::UDP {
        return Class::Ignored;
    }
    if f.offset == 0 {
        let Ok(udp) = UdpHeaderSlice::from_slice(f.payload) else {
            return Class::Malformed;
        };
        let dst_port = udp.destination_port();
        if dst_port != knock_port {
            // A probe is kept to the probe snap length: only its
            // headers count.
            return if scan_watch {
                Class::Seen(Event::Probe {
                    src: f.src,
                    dst_port,
                    proto: Proto::Udp,
                })
            } else {
                Class::Ignored
            };
        }
    }
    if payload.incomplete || !complete_len {
        return Class::Malformed;
    }
    Class::Fragment(f)
}

/// A reassembled UDP datagram (header included, `defrag.rs`) to the knock
/// port: its length field must match what was reassembled.
pub(crate) fn reassembled<'a>(
    src: IpAddr,
    dst: IpAddr,
    datagram: &'a [u8],
    knock_port: u16,
) -> Class<'a> {
    let Ok(udp) = UdpSlice::from_slice(datagram) else {
        return Class::Malformed;
    };
    if usize::from(udp.length()) != datagram.len() || udp.destination_port() != knock_port {
        return Class::Malformed;
    }
    Class::Seen(Event::Knock {
        src: SocketAddr::new(src, udp.source_port()),
        dst: SocketAddr::new(dst, knock_port),
        payload: udp.payload(),
    })
}

fn transport<'a>(
    src: IpAddr,
    dst: IpAddr,
    payload: &LaxIpPayloadSlice<'a>,
    complete_len: bool,
    knock_port: u16,
    scan_watch: bool,
) -> Class<'a> {
    match payload.ip_number {
        IpNumber::UDP => {
            let Ok(udp) = UdpHeaderSlice::from_slice(payload.payload) else {
                return Class::Malformed;
            };
            let dst_port = udp.destination_port();
            if dst_port == knock_port {
                knock(src, dst, payload, complete_len, knock_port)
            } else if scan_watch {
                Class::Seen(Event::Probe {
                    src,
                    dst_port,
                    proto: Proto::Udp,
                })
            } else {
                Class::Ignored
            }
        }
        IpNumber::TCP if scan_watch => match TcpHeaderSlice::from_slice(payload.payload) {
            Ok(tcp) if tcp.syn() && !tcp.ack() => Class::Seen(Event::Probe {
                src,
                dst_port: tcp.destination_port(),
                proto: Proto::Tcp,
            }),
            Ok(_) => Class::Ignored,
            Err(_) => Class::Malformed,
        },
        _ => Class::Ignored,
    }
}

/// A datagram to the knock port: it must be whole (not a fragment, not
/// cut by the snap length, lengths consistent) to be a knock.
fn knock<'a>(
    src: IpAddr,
    dst: IpAddr,
    payload: &LaxIpPayloadSlice<'a>,
    complete_len: bool,
    knock_port: u16,
) -> Class<'a> {
    if payload.fragmented || payload.incomplete || !complete_len {
        return Class::Malformed;
    }
    let Ok(udp) = UdpSlice::from_slice(payload.payload) else {
        return Class::Malformed;
    };
    // Length 0 (a jumbogram marker) makes etherparse fall back to the
    // slice; a knock never is one.
    if usize::from(udp.length()) < 8 {
        return Class::Malformed;
    }
    Class::Seen(Event::Knock {
        src: SocketAddr::new(src, udp.source_port()),
        dst: SocketAddr::new(dst, knock_port),
        payload: udp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PORT: u16 = 62201;
    const S4: [u8; 4] = [10, 200, 0, 2];
    const D4: [u8; 4] = [10, 200, 0, 1];
    const S6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const D6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn v4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4(S4, D4, 64)
            .udp(40000, dport)
            .write(&mut v, payload)
            .expect("build");
        v
    }
    fn v6_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv6(S6, D6, 64)
            .udp(40001, dport)
            .write(&mut v, payload)
            .expect("build");
        v
    }
    fn v4_tcp(dport: u16, ack: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let b = PacketBuilder::ipv4(S4, D4, 64)
            .tcp(40000, dport, 1, 100)
            .syn();
        let b = if ack { b.ack(1) } else { b };
        b.write(&mut v, &[]).expect("build");
        v
    }
    fn v6_tcp(dport: u16) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv6(S6, D6, 64)
            .tcp(40000, dport, 1, 100)
            .syn()
            .write(&mut v, &[])
            .expect("build");
        v
    }

    #[test]
    fn knocks() {
        let f = v4_udp(PORT, b"knock");
        assert_eq!(
            classify(&f, 0x0800, PORT, false),
            Class::Seen(Event::Knock {
                src: SocketAddr::new(Ipv4Addr::from(S4).into(), 40000),
                dst: SocketAddr::new(Ipv4Addr::from(D4).into(), PORT),
                payload: b"knock",
            })
        );
        let f = v6_udp(PORT, b"knock6");
        assert_eq!(
            classify(&f, 0x86dd, PORT, true),
            Class::Seen(Event::Knock {
                src: SocketAddr::new(Ipv6Addr::from(S6).into(), 40001),
                dst: SocketAddr::new(Ipv6Addr::from(D6).into(), PORT),
                payload: b"knock6",
            })
        );
        // Empty payload is still a knock (the daemon refuses it).
        let f = v4_udp(PORT, b"");
        assert!(matches!(
            classify(&f, 0x0800, PORT, false),
            Class::Seen(Event::Knock { payload: b"", .. })
        ));
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        // Short frames are padded to 46 bytes of IP on Ethernet.
        let mut f = v4_udp(PORT, b"ab");
        f.extend_from_slice(&[0u8; 16]);
        assert!(matches!(
            classify(&f, 0x0800, PORT, false),
            Class::Seen(Event::Knock { payload: b"ab", .. })
        ));
    }

    #[test]
    fn probes() {
        assert_eq!(
            classify(&v4_udp(53, b"q"), 0x0800, PORT, true),
            Class::Seen(Event::Probe {
                src: Ipv4Addr::from(S4).into(),
                dst_port: 53,
                proto: Proto::Udp
            })
        );
        assert_eq!(
            classify(&v4_udp(53, b"q"), 0x0800, PORT, false),
            Class::Ignored
        );
        assert_eq!(
            classify(&v4_tcp(22, false), 0x0800, PORT, true),
            Class::Seen(Event::Probe {
                src: Ipv4Addr::from(S4).into(),
                dst_port: 22,
                proto: Proto::Tcp
            })
        );
        assert_eq!(
            classify(&v4_tcp(22, true), 0x0800, PORT, true),
            Class::Ignored
        );
        assert_eq!(
            classify(&v4_tcp(22, false), 0x0800, PORT, false),
            Class::Ignored
        );
        assert_eq!(
            classify(&v6_tcp(443), 0x86dd, PORT, true),
            Class::Seen(Event::Probe {
                src: Ipv6Addr::from(S6).into(),
                dst_port: 443,
                proto: Proto::Tcp
            })
        );
        // Probes cut to the probe snap length still classify.
        let f = v4_udp(53, &[7u8; 500]);
        assert!(matches!(
            classify(&f[..128], 0x0800, PORT, true),
            Class::Seen(Event::Probe { .. })
        ));
    }

    #[test]
    fn truncated_or_lying_knocks_are_malformed() {
        let f = v4_udp(PORT, &[1u8; 100]);
        for cut in 0..f.len() {
            let c = classify(&f[..cut], 0x0800, PORT, false);
            assert!(
                matches!(c, Class::Malformed | Class::Ignored),
                "cut {cut}: {c:?}"
            );
        }
        let f = v6_udp(PORT, &[1u8; 100]);
        for cut in 0..f.len() {
            let c = classify(&f[..cut], 0x86dd, PORT, false);
            assert!(
                matches!(c, Class::Malformed | Class::Ignored),
                "cut {cut}: {c:?}"
            );
        }
        // UDP length larger than the datagram.
        let mut f = v4_udp(PORT, b"abcd");
        f[24..26].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(classify(&f, 0x0800, PORT, false), Class::Malformed);
        // UDP length below the header size.
        let mut f = v4_udp(PORT, b"abcd");
        f[24..26].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(classify(&f, 0x0800, PORT, false), Class::Malformed);
        // UDP length 0.
        let mut f = v6_udp(PORT, b"abcd");
        f[44..46].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(classify(&f, 0x86dd, PORT, false), Class::Malformed);
        // IPv4 total length below the header length.
        let mut f = v4_udp(PORT, b"abcd");
        f[2..4].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(classify(&f, 0x0800, PORT, false), Class::Malformed);
        // IHL below 5.
        let mut f = v4_udp(PORT, b"abcd");
        f[0] = 0x44;
        assert_eq!(classify(&f, 0x0800, PORT, false), Class::Malformed);
        // Wrong version for the ethertype.
        assert_eq!(
            classify(&v6_udp(PORT, b"x"), 0x0800, PORT, false),
            Class::Malformed
        );
        assert_eq!(
            classify(&v4_udp(PORT, b"x"), 0x86dd, PORT, false),
            Class::Malformed
        );
        assert_eq!(
            classify(&v4_udp(PORT, b"x"), 0x0806, PORT, false),
            Class::Ignored
        );
    }

    /// `v6_udp` with a Fragment header between the fixed header and UDP.
    fn v6_fragment(dport: u16, offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut v = v6_udp(dport, b"abcdefgh");
        let mut fh = [
            17u8,
            0,
            (offset >> 5) as u8,
            (offset << 3) as u8 | u8::from(more),
            0,
            0,
            0,
            0,
        ];
        fh[4..8].copy_from_slice(&id.to_be_bytes());
        v.splice(40..40, fh);
        v[6] = 44;
        let plen = (v.len() as u16 - 40).to_be_bytes();
        v[4..6].copy_from_slice(&plen);
        v
    }

    #[test]
    fn fragments_are_classified_for_reassembly() {
        // IPv4 first fragment (MF set) to the knock port.
        let mut f = v4_udp(PORT, b"abcdefgh");
        f[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        f[6] |= 0x20;
        let Class::Fragment(fr) = classify(&f, 0x0800, PORT, false) else {
            panic!("fragment expected");
        };
        assert_eq!(
            (fr.src, fr.dst, fr.id, fr.offset, fr.more, fr.payload.len()),
            (
                Ipv4Addr::from(S4).into(),
                Ipv4Addr::from(D4).into(),
                0x1234,
                0,
                true,
                16
            )
        );
        // A later fragment (offset 3 × 8), last: no port to check.
        let mut f = v4_udp(53, b"abcdefgh");
        f[6..8].copy_from_slice(&3u16.to_be_bytes());
        let Class::Fragment(fr) = classify(&f, 0x0800, PORT, false) else {
            panic!("fragment expected");
        };
        assert_eq!((fr.offset, fr.more), (24, false));
        // A first fragment to another port: ignored, or a probe.
        let mut f = v4_udp(53, b"abcdefgh");
        f[6] |= 0x20;
        assert_eq!(classify(&f, 0x0800, PORT, false), Class::Ignored);
        assert!(matches!(
            classify(&f, 0x0800, PORT, true),
            Class::Seen(Event::Probe { dst_port: 53, .. })
        ));
        // A fragment cut by the snap length is malformed, unless it is a
        // probe (cut to the probe snap length on purpose).
        let mut f = v4_udp(PORT, &[1u8; 64]);
        f[6] |= 0x20;
        assert_eq!(classify(&f[..60], 0x0800, PORT, false), Class::Malformed);
        let mut f = v4_udp(53, &[1u8; 500]);
        f[6] |= 0x20;
        assert!(matches!(
            classify(&f[..128], 0x0800, PORT, true),
            Class::Seen(Event::Probe { dst_port: 53, .. })
        ));
        // IPv6: first, later, and atomic fragments.
        let first = v6_fragment(PORT, 0, true, 77);
        let Class::Fragment(fr) = classify(&first, 0x86dd, PORT, false) else {
            panic!("fragment expected");
        };
        assert_eq!(
            (fr.id, fr.offset, fr.more, fr.payload.len()),
            (77, 0, true, 16)
        );
        let later = v6_fragment(9, 5, false, 78);
        let Class::Fragment(fr) = classify(&later, 0x86dd, PORT, false) else {
            panic!("fragment expected");
        };
        assert_eq!((fr.id, fr.offset, fr.more), (78, 40, false));
        assert!(matches!(
            classify(&v6_fragment(PORT, 0, false, 79), 0x86dd, PORT, false),
            Class::Seen(Event::Knock {
                payload: b"abcdefgh",
                ..
            })
        ));
        assert_eq!(
            classify(&v6_fragment(53, 0, true, 80), 0x86dd, PORT, false),
            Class::Ignored
        );
    }

    #[test]
    fn reassembled_datagrams_must_agree_with_their_length() {
        let whole = v4_udp(PORT, b"knock");
        let udp = &whole[20..];
        let (s, d) = (IpAddr::from(S4), IpAddr::from(D4));
        assert!(matches!(
            reassembled(s, d, udp, PORT),
            Class::Seen(Event::Knock {
                payload: b"knock",
                ..
            })
        ));
        assert_eq!(
            reassembled(s, d, &udp[..udp.len() - 1], PORT),
            Class::Malformed
        );
        assert_eq!(reassembled(s, d, udp, PORT + 1), Class::Malformed);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: xorshift bytes, every length.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = [0u8; 96];
        for round in 0..20_000 {
            for b in buf.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = s as u8;
            }
            buf[0] = if round % 2 == 0 { 0x45 } else { 0x60 };
            let len = (s as usize) % buf.len();
            let _ = classify(&buf[..len], 0x0800, PORT, true);
            let _ = classify(&buf[..len], 0x86dd, PORT, true);
        }
    }
}
