//! Reading pcap files (the classic format tcpdump writes).

use std::net::IpAddr;

/// One UDP datagram found in a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    /// Source address.
    pub src: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// The payload.
    pub payload: Vec<u8>,
}

/// The frames of a pcap file and its link type.
pub fn frames(bytes: &[u8]) -> (u32, Vec<Vec<u8>>) {
    assert!(bytes.len() >= 24, "not a pcap file");
    let le = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file (magic {:02x?})", &bytes[..4]),
    };
    let u32at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32at(bytes, 20);
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= bytes.len() {
        let incl = u32at(bytes, i + 8) as usize;
        let start = i + 16;
        let end = (start + incl).min(bytes.len());
        out.push(bytes[start..end].to_vec());
        i = start + incl;
    }
    (linktype, out)
}

/// The UDP datagrams of an Ethernet (link type 1) capture.
pub fn udp_datagrams(bytes: &[u8]) -> Vec<Udp> {
    let (linktype, frames) = frames(bytes);
    assert_eq!(linktype, 1, "expected an Ethernet capture");
    frames
        .iter()
        .filter_map(|f| {
            let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
            let ip = f.get(14..)?;
            let (src, l4) = match ethertype {
                0x0800 => {
                    let ihl = usize::from(ip.first()? & 0x0f) * 4;
                    if *ip.get(9)? != 17 {
                        return None;
                    }
                    let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                    (IpAddr::from(s), ip.get(ihl..total.min(ip.len()))?)
                }
                0x86dd => {
                    if *ip.get(6)? != 17 {
                        return None;
                    }
                    let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                    (IpAddr::from(s), ip.get(40..)?)
                }
                _ => return None,
            };
            let dst_port = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            let len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
            Some(Udp {
                src,
                dst_port,
                payload: l4.get(8..len.min(l4.len()))?.to_vec(),
            })
        })
        .collect()
}
