//! Forged packets for the lock-out tests: an IPv4 UDP datagram or TCP SYN,
//! or an IPv6 TCP SYN, with any source address, sent through a raw socket
//! (`IPPROTO_RAW`, header included) from inside a namespace. Only
//! 10.200.0.0/16 and fd00:200::/48 addresses are accepted, so nothing
//! leaves the test bed.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::Netns;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_RAW`: the caller writes the IPv4 header itself.
const IPPROTO_RAW: i32 = 255;

fn in_test_bed(a: Ipv4Addr) -> bool {
    a.octets()[..2] == [10, 200]
}

fn in_test_bed6(a: Ipv6Addr) -> bool {
    a.segments()[..2] == [0xfd00, 0x200]
}

/// The Internet checksum (RFC 1071) of `parts` laid end to end.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for b in parts.iter().flat_map(|p| p.iter().copied()) {
        match odd.take() {
            Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            None => odd = Some(b),
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + l4.len()).expect("packet fits");
    let mut h = vec![
        0x45, 0x00, 0, 0, // version 4, IHL 5; total length below
        0x12, 0x34, 0x40, 0x00, // id; don't fragment
        64, proto, 0, 0, // TTL; protocol; checksum below
    ];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
    p
}

/// An IPv4 UDP datagram from `src` to `dst` carrying `payload`.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let ph = pseudo(*src.ip(), *dst.ip(), IPPROTO_UDP, len);
    let c = match checksum(&[&ph, &u]) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), IPPROTO_UDP, &u)
}

fn syn_header(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&src_port.to_be_bytes());
    t.extend_from_slice(&dst_port.to_be_bytes());
    t.extend_from_slice(&0x5eed_0001u32.to_be_bytes()); // sequence
    t.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
    t.extend_from_slice(&[0x50, 0x02]); // header 20 bytes; SYN
    t.extend_from_slice(&64_240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t
}

/// An IPv6 TCP SYN from `src` to `dst`.
pub fn tcp_syn6(src: SocketAddrV6, dst: SocketAddrV6) -> Vec<u8> {
    let mut t = syn_header(src.port(), dst.port());
    let mut ph = Vec::with_capacity(40);
    ph.extend_from_slice(&src.ip().octets());
    ph.extend_from_slice(&dst.ip().octets());
    ph.extend_from_slice(&u32::try_from(t.len()).expect("fits").to_be_bytes());
    ph.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    let c = checksum(&[&ph, &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0]; // version 6
    p.extend_from_slice(&u16::try_from(t.len()).expect("fits").to_be_bytes());
    p.extend_from_slice(&[IPPROTO_TCP, 64]); // next header; hop limit
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&t);
    p
}

/// Sends whole IPv6 packets (as [`tcp_syn6`] makes them) from inside
/// `ns`, whatever their source address.
pub fn send6(ns: &Netns, packets: &[Vec<u8>]) {
    ns.run_in(|| {
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
            .expect("raw IPv6 socket (needs root)");
        for p in packets {
            let addr = |at: usize| -> Ipv6Addr {
                let b: [u8; 16] = p[at..at + 16].try_into().expect("16 bytes");
                Ipv6Addr::from(b)
            };
            let (src, dst) = (addr(8), addr(24));
            assert!(
                in_test_bed6(src) && in_test_bed6(dst),
                "forged packets stay in fd00:200::/48"
            );
            let to = SockAddr::from(SocketAddr::V6(SocketAddrV6::new(dst, 0, 0, 0)));
            let n = s.send_to(p, &to).expect("send a forged IPv6 packet");
            assert_eq!(n, p.len());
        }
    });
}

/// An IPv4 TCP SYN from `src` to `dst`.
pub fn tcp_syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut t = syn_header(src.port(), dst.port());
    let ph = pseudo(*src.ip(), *dst.ip(), IPPROTO_TCP, t.len());
    let c = checksum(&[&ph, &t]);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), IPPROTO_TCP, &t)
}

/// Sends whole IPv4 packets (as [`udp`] and [`tcp_syn`] make them) from
/// inside `ns`, whatever their source address.
pub fn send(ns: &Netns, packets: &[Vec<u8>]) {
    ns.run_in(|| {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
            .expect("raw socket (needs root)");
        for p in packets {
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            assert!(
                in_test_bed(src) && in_test_bed(dst),
                "forged packets stay in 10.200.0.0/16"
            );
            let to = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(dst, 0)));
            let n = s.send_to(p, &to).expect("send a forged packet");
            assert_eq!(n, p.len());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 2), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 200, 2, 1), 62201);
        let p = udp(src, dst, b"abc");
        assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header");
        let ph = pseudo(*src.ip(), *dst.ip(), IPPROTO_UDP, p.len() - 20);
        assert_eq!(checksum(&[&ph, &p[20..]]), 0, "UDP");
        let s = tcp_syn(src, dst);
        let ph = pseudo(*src.ip(), *dst.ip(), IPPROTO_TCP, 20);
        assert_eq!(checksum(&[&ph, &s[20..]]), 0, "TCP");
        assert_eq!(s[33], 0x02, "SYN");
    }
}
