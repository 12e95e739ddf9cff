//! The kernel-side filter of the packet-mode capture: a classic BPF
//! program attached with `SO_ATTACH_FILTER`, so that only frames that can
//! be a knock (or, with `scan_watch`, a probe) are copied to user space.
//!
//! The socket is `AF_PACKET`/`SOCK_DGRAM`, so offset 0 of what the
//! program sees is the network header (the link header is already
//! stripped), whatever the interface type (Ethernet, loopback, tun,
//! WireGuard, ...). The kernel's ancillary loads (`SKF_AD_*`) give the
//! packet type, the ethertype and the interface index. A load past the
//! end of the frame makes the kernel return 0, i.e. drop, so a truncated
//! header never reaches user space through a wrong branch.
//!
//! Programs are written with labels and assembled by [`Asm`], which
//! computes the (forward-only, 8-bit) jump offsets; the instruction
//! comments below are the program's documentation. The same
//! [`Insn`] list is run by a small interpreter in the unit tests.

use socket2::SockFilter;

// Instruction classes, sizes, modes and operations (linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_AND: u16 = 0x50;
#[cfg(test)]
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;

/// `A = u32 at [k]` (also used for ancillary loads).
pub(crate) const LD_W_ABS: u16 = BPF_LD | BPF_W | BPF_ABS;
/// `A = u16 at [k]` (network byte order, converted).
pub(crate) const LD_H_ABS: u16 = BPF_LD | BPF_H | BPF_ABS;
/// `A = u8 at [k]`.
pub(crate) const LD_B_ABS: u16 = BPF_LD | BPF_B | BPF_ABS;
/// `A = u16 at [X + k]`.
pub(crate) const LD_H_IND: u16 = BPF_LD | BPF_H | BPF_IND;
/// `A = u8 at [X + k]`.
pub(crate) const LD_B_IND: u16 = BPF_LD | BPF_B | BPF_IND;
/// `X = 4 * (u8 at [k] & 0x0f)`: the IPv4 header length.
pub(crate) const LDX_B_MSH: u16 = BPF_LDX | BPF_B | BPF_MSH;
/// `A &= k`.
pub(crate) const ALU_AND_K: u16 = BPF_ALU | BPF_AND | BPF_K;
/// `pc += k` (only the test interpreter knows it: the programs here
/// never need an unconditional jump).
#[cfg(test)]
pub(crate) const JMP_JA: u16 = BPF_JMP | BPF_JA;
/// `pc += (A == k) ? jt : jf`.
pub(crate) const JMP_JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
/// `pc += (A & k) != 0 ? jt : jf`.
pub(crate) const JMP_JSET_K: u16 = BPF_JMP | BPF_JSET | BPF_K;
/// Accept the first `k` bytes of the frame (0: drop it).
pub(crate) const RET_K: u16 = BPF_RET | BPF_K;

/// Base of the kernel's ancillary loads (linux/filter.h `SKF_AD_OFF`).
pub(crate) const SKF_AD_OFF: i32 = -0x1000;
/// `skb->protocol` in host order: the ethertype.
pub(crate) const SKF_AD_PROTOCOL: i32 = 0;
/// `skb->pkt_type` (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
pub(crate) const SKF_AD_PKTTYPE: i32 = 4;
/// `skb->dev->ifindex`.
pub(crate) const SKF_AD_IFINDEX: i32 = 8;

/// `k` of an ancillary load.
const fn ad(field: i32) -> u32 {
    // Two's complement of a negative offset, as the kernel reads it.
    (SKF_AD_OFF + field) as u32
}

/// `sll_pkttype`/`skb->pkt_type` of a frame addressed to this host.
pub(crate) const PACKET_HOST: u32 = 0;
/// Ethertype of IPv4.
pub(crate) const ETH_P_IP: u32 = 0x0800;
/// Ethertype of IPv6.
pub(crate) const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// IPv6 Fragment extension header (RFC 8200 §4.5).
const IPPROTO_FRAGMENT: u32 = 44;
/// TCP flag bits SYN (0x02) and ACK (0x10).
const TCP_SYN_ACK: u32 = 0x12;
const TCP_SYN: u32 = 0x02;

/// Bytes kept of a frame accepted as a possible knock. Larger frames are
/// cut here by the kernel, and user space then sees an IP length longer
/// than the frame and counts it malformed: a knock is at most
/// `proto_spec::wire::MAX_DATAGRAM` (1232) bytes, plus at most 60 + 8
/// bytes of headers.
pub(crate) const KNOCK_SNAP: u32 = 2048;
/// Bytes kept of a frame accepted as a probe: enough for the largest IPv4
/// header (60) plus the largest TCP header (60).
pub(crate) const PROBE_SNAP: u32 = 128;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

impl Insn {
    pub(crate) fn to_sock_filter(self) -> SockFilter {
        SockFilter::new(self.code, self.jt, self.jf, self.k)
    }
}

/// Jump targets of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L {
    /// The next instruction.
    Next,
    V4,
    V4Udp,
    V4Frag,
    V4Tcp,
    V6,
    V6Udp,
    V6Frag,
    V6Tcp,
    Knock,
    Probe,
    Drop,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Stmt { code: u16, k: u32 },
    Jump { code: u16, k: u32, jt: L, jf: L },
    Label(L),
}

/// A tiny assembler: labels instead of hand-counted offsets.
#[derive(Debug, Default)]
struct Asm {
    ops: Vec<Op>,
}

impl Asm {
    fn stmt(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Stmt { code, k });
    }
    fn jeq(&mut self, k: u32, jt: L, jf: L) {
        self.ops.push(Op::Jump {
            code: JMP_JEQ_K,
            k,
            jt,
            jf,
        });
    }
    fn jset(&mut self, k: u32, jt: L, jf: L) {
        self.ops.push(Op::Jump {
            code: JMP_JSET_K,
            k,
            jt,
            jf,
        });
    }
    fn label(&mut self, l: L) {
        self.ops.push(Op::Label(l));
    }

    /// Resolves the labels. Every jump must go forward and, for
    /// conditional jumps, by at most 255 instructions (classic BPF).
    fn assemble(&self) -> Result<Vec<Insn>, &'static str> {
        // Index of each instruction-to-be, and of each label.
        let mut labels: Vec<(L, usize)> = Vec::new();
        let mut n = 0usize;
        for op in &self.ops {
            match op {
                Op::Label(l) => {
                    if labels.iter().any(|(x, _)| x == l) {
                        return Err("BPF label defined twice");
                    }
                    labels.push((*l, n));
                }
                _ => n += 1,
            }
        }
        let target = |l: L, at: usize| -> Result<usize, &'static str> {
            let idx = if l == L::Next {
                at + 1
            } else {
                labels
                    .iter()
                    .find(|(x, _)| *x == l)
                    .map(|(_, i)| *i)
                    .ok_or("BPF jump to an undefined label")?
            };
            idx.checked_sub(at + 1).ok_or("BPF jump backwards")
        };
        let mut out = Vec::with_capacity(n);
        for op in &self.ops {
            let at = out.len();
            match *op {
                Op::Label(_) => {}
                Op::Stmt { code, k } => out.push(Insn {
                    code,
                    jt: 0,
                    jf: 0,
                    k,
                }),
                Op::Jump { code, k, jt, jf } => {
                    let jt = u8::try_from(target(jt, at)?).map_err(|_| "BPF jump too far")?;
                    let jf = u8::try_from(target(jf, at)?).map_err(|_| "BPF jump too far")?;
                    out.push(Insn { code, jt, jf, k });
                }
            }
        }
        if out.len() > usize::from(u16::MAX) {
            return Err("BPF program too long");
        }
        match out.last() {
            Some(i) if i.code == RET_K => Ok(out),
            _ => Err("BPF program must end with a return"),
        }
    }
}

/// The filter of the packet-mode capture.
///
/// Accepts, from frames addressed to this host (`PACKET_HOST`: not our
/// own outgoing copies, broadcasts, multicasts or frames for another
/// MAC) and, when `ifindex` is given, received on that interface only:
///
/// * UDP to `knock_port`, over IPv4 (any header length) or IPv6 (no
///   extension headers, or only a Fragment header): [`KNOCK_SNAP`] bytes
///   kept. A first fragment (offset 0, the UDP header inside) passes
///   when its port is the knock port;
/// * every later fragment (offset > 0) of a UDP datagram, IPv4 or IPv6
///   (Fragment header right after the fixed header): it has no UDP
///   header to look at, so user space (`defrag.rs`) keeps it only if the
///   first fragment names the knock port. [`KNOCK_SNAP`] bytes kept;
/// * with `scan_watch` also UDP to any other port (whole or a first
///   fragment) and TCP segments with SYN set and ACK clear (IPv4 first
///   fragments, IPv6 without extension headers): [`PROBE_SNAP`] bytes
///   kept.
///
/// Everything else is dropped in the kernel.
pub(crate) fn program(
    knock_port: u16,
    scan_watch: bool,
    ifindex: Option<u32>,
) -> Result<Vec<Insn>, &'static str> {
    let port = u32::from(knock_port);
    // Where a UDP datagram to another port, or a TCP segment, goes.
    let other_udp = if scan_watch { L::Probe } else { L::Drop };
    let mut a = Asm::default();

    // --- Any frame -------------------------------------------------
    a.stmt(LD_W_ABS, ad(SKF_AD_PKTTYPE)); // A = skb->pkt_type
    a.jeq(PACKET_HOST, L::Next, L::Drop); // addressed to this host? else drop (outgoing copies too)
    if let Some(ifx) = ifindex {
        a.stmt(LD_W_ABS, ad(SKF_AD_IFINDEX)); // A = index of the receiving interface
        a.jeq(ifx, L::Next, L::Drop); // the configured interface? else drop
    }
    a.stmt(LD_W_ABS, ad(SKF_AD_PROTOCOL)); // A = ethertype (skb->protocol, host order)
    a.jeq(ETH_P_IP, L::V4, L::Next); // IPv4 -> V4
    a.jeq(ETH_P_IPV6, L::V6, L::Drop); // IPv6 -> V6, anything else: drop

    // --- IPv4 ------------------------------------------------------
    a.label(L::V4);
    a.stmt(LD_B_ABS, 0); // A = version << 4 | IHL
    a.stmt(ALU_AND_K, 0xf0); // A = version << 4
    a.jeq(0x40, L::Next, L::Drop); // version 4? else drop (header disagrees with ethertype)
    a.stmt(LD_H_ABS, 6); // A = flags << 13 | fragment offset
    a.jset(0x1fff, L::V4Frag, L::Next); // fragment offset != 0: no transport header here -> V4Frag
    a.stmt(LD_B_ABS, 9); // A = protocol
    if scan_watch {
        a.jeq(IPPROTO_UDP, L::V4Udp, L::Next); // UDP -> V4Udp
        a.jeq(IPPROTO_TCP, L::V4Tcp, L::Drop); // TCP -> V4Tcp, anything else: drop
    } else {
        a.jeq(IPPROTO_UDP, L::V4Udp, L::Drop); // UDP -> V4Udp, anything else: drop
    }

    a.label(L::V4Udp);
    a.stmt(LDX_B_MSH, 0); // X = 4 * IHL: offset of the UDP header (any IHL)
    a.stmt(LD_H_IND, 2); // A = UDP destination port
    a.jeq(port, L::Knock, other_udp); // knock port (whole, or a first fragment): knock; other ports: probe or drop

    a.label(L::V4Frag);
    a.stmt(LD_B_ABS, 9); // A = protocol
    a.jeq(IPPROTO_UDP, L::Knock, L::Drop); // a later fragment of a UDP datagram: to user space for reassembly

    if scan_watch {
        a.label(L::V4Tcp);
        a.stmt(LDX_B_MSH, 0); // X = 4 * IHL: offset of the TCP header
        a.stmt(LD_B_IND, 13); // A = TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN)
        a.stmt(ALU_AND_K, TCP_SYN_ACK); // A = SYN and ACK bits only
        a.jeq(TCP_SYN, L::Probe, L::Drop); // SYN without ACK: probe; else drop
    }

    // --- IPv6 (no extension headers) -----------------------------------
    a.label(L::V6);
    a.stmt(LD_B_ABS, 0); // A = version << 4 | traffic class high nibble
    a.stmt(ALU_AND_K, 0xf0); // A = version << 4
    a.jeq(0x60, L::Next, L::Drop); // version 6? else drop
    a.stmt(LD_B_ABS, 6); // A = next header
    a.jeq(IPPROTO_FRAGMENT, L::V6Frag, L::Next); // Fragment header -> V6Frag
    if scan_watch {
        a.jeq(IPPROTO_UDP, L::V6Udp, L::Next); // UDP right after the fixed header -> V6Udp
        a.jeq(IPPROTO_TCP, L::V6Tcp, L::Drop); // TCP -> V6Tcp; other extension headers etc.: drop
    } else {
        a.jeq(IPPROTO_UDP, L::V6Udp, L::Drop); // UDP -> V6Udp; other extension headers etc.: drop
    }

    a.label(L::V6Udp);
    a.stmt(LD_H_ABS, 40 + 2); // A = UDP destination port
    a.jeq(port, L::Knock, other_udp); // knock port: knock; other ports: probe or drop

    a.label(L::V6Frag);
    a.stmt(LD_B_ABS, 40); // A = next header after the Fragment header
    a.jeq(IPPROTO_UDP, L::Next, L::Drop); // UDP? else drop
    a.stmt(LD_H_ABS, 40 + 2); // A = fragment offset << 3 | res | M
    a.jset(0xfff8, L::Knock, L::Next); // offset != 0: a later fragment, to user space for reassembly
    a.stmt(LD_H_ABS, 48 + 2); // A = UDP destination port (first fragment)
    a.jeq(port, L::Knock, other_udp); // knock port: knock; other ports: probe or drop

    if scan_watch {
        a.label(L::V6Tcp);
        a.stmt(LD_B_ABS, 40 + 13); // A = TCP flags byte
        a.stmt(ALU_AND_K, TCP_SYN_ACK); // A = SYN and ACK bits only
        a.jeq(TCP_SYN, L::Probe, L::Drop); // SYN without ACK: probe; else drop
    }

    // --- Verdicts --------------------------------------------------
    a.label(L::Knock);
    a.stmt(RET_K, KNOCK_SNAP); // accept, keep up to KNOCK_SNAP bytes
    if scan_watch {
        a.label(L::Probe);
        a.stmt(RET_K, PROBE_SNAP); // accept, keep the headers only
    }
    a.label(L::Drop);
    a.stmt(RET_K, 0); // drop
    a.assemble()
}

/// Ancillary data the kernel gives the program.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub pkttype: u32,
    pub protocol: u32,
    pub ifindex: u32,
}

/// Runs a program the way the kernel does, for the unit tests: returns
/// the number of bytes accepted (0: dropped).
#[cfg(test)]
pub(crate) fn run(prog: &[Insn], pkt: &[u8], meta: Meta) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let load = |off: u64, size: usize| -> Option<u32> {
        let start = usize::try_from(off).ok()?;
        let bytes = pkt.get(start..start.checked_add(size)?)?;
        Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
    };
    loop {
        let Some(i) = prog.get(pc) else { return 0 };
        pc += 1;
        let size = match i.code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            _ => 1,
        };
        match i.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS if (i.k as i32) < 0 => {
                a = match (i.k as i32) - SKF_AD_OFF {
                    SKF_AD_PROTOCOL => meta.protocol,
                    SKF_AD_PKTTYPE => meta.pkttype,
                    SKF_AD_IFINDEX => meta.ifindex,
                    _ => return 0,
                }
            }
            LD_W_ABS | LD_H_ABS | LD_B_ABS => match load(u64::from(i.k), size) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_IND | LD_B_IND => match load(u64::from(x) + u64::from(i.k), size) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match load(u64::from(i.k), 1) {
                Some(v) => x = 4 * (v & 0x0f),
                None => return 0,
            },
            ALU_AND_K => a &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JMP_JSET_K => pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf }),
            RET_K => return i.k,
            _ => return 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const PORT: u16 = 62201;
    const HOST_V4: Meta = Meta {
        pkttype: 0,
        protocol: ETH_P_IP,
        ifindex: 7,
    };
    const HOST_V6: Meta = Meta {
        pkttype: 0,
        protocol: ETH_P_IPV6,
        ifindex: 7,
    };

    fn v4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 200, 0, 2], [10, 200, 0, 1], 64).udp(40000, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build");
        v
    }
    fn v6_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).udp(40000, dport);
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build");
        v
    }
    fn v4_tcp(dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let mut b =
            PacketBuilder::ipv4([10, 200, 0, 2], [10, 200, 0, 1], 64).tcp(40000, dport, 1, 100);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(5);
        }
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("build");
        v
    }
    fn v6_tcp(dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).tcp(40000, dport, 1, 100);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(5);
        }
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("build");
        v
    }
    /// Inserts `words` 32-bit words of IPv4 options (NOPs, then EOL).
    fn with_options(pkt: &[u8], words: usize) -> Vec<u8> {
        let mut v = pkt.to_vec();
        let extra = 4 * words;
        let mut opts = vec![1u8; extra];
        if let Some(last) = opts.last_mut() {
            *last = 0;
        }
        v.splice(20..20, opts);
        v[0] = 0x40 | (5 + words as u8);
        let total = (v.len() as u16).to_be_bytes();
        v[2] = total[0];
        v[3] = total[1];
        v
    }

    fn progs() -> [Vec<Insn>; 4] {
        [
            program(PORT, false, None).expect("p"),
            program(PORT, true, None).expect("p"),
            program(PORT, false, Some(7)).expect("p"),
            program(PORT, true, Some(7)).expect("p"),
        ]
    }

    #[test]
    fn assembles_and_ends_with_return() {
        for p in progs() {
            assert_eq!(p.last().map(|i| i.code), Some(RET_K));
            assert!(p.len() < 64, "{}", p.len());
        }
    }

    #[test]
    fn knocks_pass_every_variant() {
        for p in progs() {
            assert_eq!(run(&p, &v4_udp(PORT, b"hello"), HOST_V4), KNOCK_SNAP);
            assert_eq!(run(&p, &v6_udp(PORT, b"hello"), HOST_V6), KNOCK_SNAP);
            for words in 1..=10 {
                let pkt = with_options(&v4_udp(PORT, b"hello"), words);
                assert_eq!(run(&p, &pkt, HOST_V4), KNOCK_SNAP, "IHL {}", 5 + words);
            }
        }
    }

    #[test]
    fn ihl_is_honoured_not_assumed() {
        // With options, the port is at 4*IHL + 2: a program that assumed
        // IHL 5 would read option bytes there.
        let p = program(PORT, false, None).expect("p");
        let mut pkt = with_options(&v4_udp(PORT + 1, b"x"), 1);
        // Options bytes at 22..24 spell the knock port.
        pkt[22..24].copy_from_slice(&PORT.to_be_bytes());
        assert_eq!(run(&p, &pkt, HOST_V4), 0);
    }

    #[test]
    fn other_ports_and_syns_only_with_scan_watch() {
        let [plain, scan, plain_if, scan_if] = progs();
        for (p, watching) in [
            (plain, false),
            (scan, true),
            (plain_if, false),
            (scan_if, true),
        ] {
            let want = if watching { PROBE_SNAP } else { 0 };
            assert_eq!(run(&p, &v4_udp(PORT + 1, b"x"), HOST_V4), want);
            assert_eq!(run(&p, &v6_udp(53, b"x"), HOST_V6), want);
            assert_eq!(run(&p, &v4_tcp(22, true, false), HOST_V4), want);
            assert_eq!(run(&p, &v6_tcp(22, true, false), HOST_V6), want);
            // SYN-ACK, plain ACK: never.
            assert_eq!(run(&p, &v4_tcp(22, true, true), HOST_V4), 0);
            assert_eq!(run(&p, &v4_tcp(22, false, true), HOST_V4), 0);
            assert_eq!(run(&p, &v6_tcp(22, true, true), HOST_V6), 0);
            assert_eq!(run(&p, &v6_tcp(PORT, false, true), HOST_V6), 0);
            // TCP to the knock port is not a knock.
            assert_eq!(run(&p, &v4_tcp(PORT, false, true), HOST_V4), 0);
        }
    }

    #[test]
    fn packet_type_interface_and_ethertype() {
        for p in progs() {
            let knock = v4_udp(PORT, b"k");
            for pkttype in [1, 2, 3, 4] {
                // broadcast, multicast, other host, outgoing
                let meta = Meta { pkttype, ..HOST_V4 };
                assert_eq!(run(&p, &knock, meta), 0, "pkttype {pkttype}");
            }
            assert_eq!(
                run(
                    &p,
                    &knock,
                    Meta {
                        protocol: 0x0806,
                        ..HOST_V4
                    }
                ),
                0
            );
            // IPv4 bytes announced as IPv6 and vice versa.
            assert_eq!(run(&p, &knock, HOST_V6), 0);
            assert_eq!(run(&p, &v6_udp(PORT, b"k"), HOST_V4), 0);
        }
        let [plain, scan, plain_if, scan_if] = progs();
        let other_if = Meta {
            ifindex: 8,
            ..HOST_V4
        };
        assert_eq!(run(&plain, &v4_udp(PORT, b"k"), other_if), KNOCK_SNAP);
        assert_eq!(run(&scan, &v4_udp(PORT, b"k"), other_if), KNOCK_SNAP);
        assert_eq!(run(&plain_if, &v4_udp(PORT, b"k"), other_if), 0);
        assert_eq!(run(&scan_if, &v4_udp(PORT, b"k"), other_if), 0);
    }

    /// `v6_udp` with a Fragment header (RFC 8200 §4.5) between the fixed
    /// header and UDP: offset in 8-byte units, M flag.
    fn v6_fragment(dport: u16, offset: u16, more: bool) -> Vec<u8> {
        let mut v = v6_udp(dport, b"hello, fragment");
        let frag = [
            17u8,
            0,
            (offset >> 5) as u8,
            ((offset << 3) as u8) | u8::from(more),
            0,
            0,
            0,
            9,
        ];
        v.splice(40..40, frag);
        v[6] = 44;
        let plen = (v.len() as u16 - 40).to_be_bytes();
        v[4..6].copy_from_slice(&plen);
        v
    }

    #[test]
    fn fragments_and_extension_headers() {
        for p in progs() {
            // First fragment of a fragmented knock (MF set): reassembled
            // in user space.
            let mut mf = v4_udp(PORT, b"hello");
            mf[6] |= 0x20;
            assert_eq!(run(&p, &mf, HOST_V4), KNOCK_SNAP);
            // A later fragment of a UDP datagram: its port is unknown, so
            // it goes to user space (bytes that look like a port are not
            // read as one).
            let mut later = v4_udp(PORT + 7, b"hello");
            later[7] = 1;
            assert_eq!(run(&p, &later, HOST_V4), KNOCK_SNAP);
            // A later fragment of something else: dropped.
            let mut tcp_later = v4_tcp(PORT, true, false);
            tcp_later[7] = 1;
            assert_eq!(run(&p, &tcp_later, HOST_V4), 0);
            // IPv6: a first fragment to the knock port, and a later
            // fragment (whatever its bytes).
            assert_eq!(run(&p, &v6_fragment(PORT, 0, true), HOST_V6), KNOCK_SNAP);
            assert_eq!(
                run(&p, &v6_fragment(PORT + 1, 3, false), HOST_V6),
                KNOCK_SNAP
            );
            // A Fragment header in front of something other than UDP.
            let mut not_udp = v6_fragment(PORT, 3, false);
            not_udp[40] = 6;
            assert_eq!(run(&p, &not_udp, HOST_V6), 0);
            // IPv6 with a hop-by-hop header in front of UDP.
            let mut hbh = v6_udp(PORT, b"hello");
            hbh[6] = 0;
            assert_eq!(run(&p, &hbh, HOST_V6), 0);
        }
        // A first fragment to another port is a probe with scan_watch,
        // else dropped.
        let [plain, scan, ..] = progs();
        let mut mf = v4_udp(PORT + 1, b"hello");
        mf[6] |= 0x20;
        assert_eq!(run(&scan, &mf, HOST_V4), PROBE_SNAP);
        assert_eq!(run(&plain, &mf, HOST_V4), 0);
        let mf6 = v6_fragment(PORT + 1, 0, true);
        assert_eq!(run(&scan, &mf6, HOST_V6), PROBE_SNAP);
        assert_eq!(run(&plain, &mf6, HOST_V6), 0);
    }

    #[test]
    fn truncated_frames_are_dropped() {
        for p in progs() {
            let k4 = v4_udp(PORT, b"");
            let k6 = v6_udp(PORT, b"");
            for cut in 0..k4.len() - 4 {
                assert_eq!(run(&p, &k4[..cut], HOST_V4), 0, "v4 cut {cut}");
            }
            for cut in 0..k6.len() - 4 {
                assert_eq!(run(&p, &k6[..cut], HOST_V6), 0, "v6 cut {cut}");
            }
        }
    }
}
