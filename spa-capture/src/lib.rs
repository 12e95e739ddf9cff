//! `spa-capture`: passive capture of knocks (and, optionally, of port-scan
//! probes) for both daemons. May depend on: `nix`/`socket2` (sockets),
//! `etherparse` (headers), `proto-spec` (its size limits) and `spa-nft`
//! (its [`Proto`]); never on the daemon framework: it hands out datagrams
//! and probes, it does not judge them.
//!
//!
//! Two modes:
//!
//! * [`CaptureMode::Packet`] (the default): an `AF_PACKET`/`SOCK_DGRAM`
//!   socket for every protocol (`ETH_P_ALL`), optionally limited to one
//!   interface, with a classic BPF program in the kernel (see `bpf.rs`)
//!   so that only UDP datagrams to the knock port (and, with
//!   [`CaptureConfig::scan_watch`], UDP to other ports and TCP SYNs) are
//!   copied to user space. No socket is bound to the knock port: it
//!   answers like every other closed port (the kernel's ICMP port
//!   unreachable, or nothing behind a firewall that drops).
//! * [`CaptureMode::Udp`]: a plain UDP socket bound to the knock port
//!   (one dual-stack socket when bound to `::`), for hosts where raw
//!   capture is not wanted. It never sends anything; it cannot see
//!   probes, so `scan_watch` is ignored.
//!
//! Both read with `recvmmsg(2)` ([`CaptureConfig::batch`] frames a call)
//! into buffers allocated once in [`Capture::open`]; user-space parsing
//! checks every header against the bytes actually received.
//!
//! [`Capture::open`] needs `CAP_NET_RAW` in packet mode (and
//! `CAP_NET_ADMIN` to raise the receive buffer past
//! `net.core.rmem_max`); after it returns, the caller may drop every
//! privilege: [`Capture::poll`] only reads from the open descriptor.
//!
//! In packet mode, IP fragments of UDP datagrams are reassembled in user
//! space (`defrag.rs`, bounded in count, size, age and per source): a
//! knock sent over a path with a small MTU arrives fragmented, and no
//! socket of ours would have the kernel reassemble it. UDP mode gets
//! whole datagrams from the kernel.
//!
//! Kernel drops are taken from `SO_RXQ_OVFL` (a counter the kernel
//! attaches to each received frame once the socket has dropped
//! something), so [`CaptureStats::kernel_drops`] is "drops as of the last
//! frame read". `PACKET_STATISTICS` would need a raw `getsockopt` that no
//! safe wrapper offers.

#![forbid(unsafe_code)]

mod bpf;
mod defrag;
mod parse;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, RecvMsg, SockaddrStorage, recv, recvmmsg, recvmsg,
    setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

use defrag::{Outcome, Reassembler};
use parse::Class;

pub use defrag::Limits as ReassemblyLimits;

/// Bytes of buffer per frame. A knock is at most
/// `proto_spec::wire::MAX_DATAGRAM` (1232) bytes of UDP payload; with at
/// most 68 bytes of IPv4 and UDP headers that fits with room to spare.
pub const FRAME_LEN: usize = bpf::KNOCK_SNAP as usize;

/// Largest accepted [`CaptureConfig::batch`].
pub const MAX_BATCH: usize = 128;

/// Frames read and thrown away after the filter is attached: whatever
/// the socket queued in the moment before it had a filter.
const DRAIN_MAX: usize = 4096;

/// Where knocks are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureMode {
    /// A packet socket with a kernel filter; nothing bound to the port.
    /// `interface`: only frames received on that interface (by name);
    /// `None`: every interface, loopback included.
    ///
    /// Frames count when addressed to this host's link address
    /// (`PACKET_HOST`); on a router that includes datagrams for hosts
    /// behind it, so compare [`Event::Knock`]'s `dst` with the local
    /// addresses where that matters. A datagram reaches the capture
    /// before the host firewall sees it.
    Packet { interface: Option<String> },
    /// A UDP socket bound to `bind` and the knock port. `::` gives one
    /// dual-stack socket (IPv4 arrives as mapped addresses and is reported
    /// as plain IPv4); `0.0.0.0` gives IPv4 only.
    Udp { bind: IpAddr },
}

/// How to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Packet or UDP socket.
    pub mode: CaptureMode,
    /// The UDP port knocks are sent to (not 0).
    pub knock_port: u16,
    /// Packet mode only: also report UDP datagrams to other ports and TCP
    /// SYNs (without ACK) as [`Event::Probe`].
    pub scan_watch: bool,
    /// Frames read per system call, 1 to [`MAX_BATCH`].
    pub batch: usize,
    /// How long [`Capture::poll`] blocks when nothing arrives (at least
    /// 1 ms), so that the caller's loop can check for shutdown.
    pub read_timeout: Duration,
    /// Socket receive buffer in bytes (`SO_RCVBUFFORCE` when allowed,
    /// else `SO_RCVBUF`, which the kernel caps at `net.core.rmem_max`);
    /// 0 keeps the system default.
    pub rcvbuf: usize,
    /// Packet mode: bounds of the reassembly of fragmented datagrams.
    pub reassembly: ReassemblyLimits,
}

impl CaptureConfig {
    /// Packet mode on every interface, no scan watch, 32 frames a call,
    /// 250 ms timeout, 4 MiB receive buffer.
    pub fn new(knock_port: u16) -> Self {
        Self {
            mode: CaptureMode::Packet { interface: None },
            knock_port,
            scan_watch: false,
            batch: 32,
            read_timeout: Duration::from_millis(250),
            rcvbuf: 4 << 20,
            reassembly: ReassemblyLimits::default(),
        }
    }
}

/// Transport protocol of a probe (a TCP SYN without ACK, or a UDP datagram
/// to a port other than the knock port): the crate's one protocol type.
pub use spa_nft::Proto;

/// Something seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole UDP datagram to the knock port. `src` is the sender's
    /// address and port (IPv4 is never reported as IPv4-mapped IPv6);
    /// `dst` the address it was sent to, with the knock port. `payload`
    /// borrows the capture buffer: copy it to keep it.
    Knock {
        src: SocketAddr,
        dst: SocketAddr,
        payload: &'a [u8],
    },
    /// A UDP datagram to another port or a TCP SYN (scan watch only).
    Probe {
        src: IpAddr,
        dst_port: u16,
        proto: Proto,
    },
}

/// Counters since [`Capture::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames (datagrams in UDP mode) read from the socket.
    pub frames: u64,
    /// Frames delivered as [`Event::Knock`].
    pub knocks: u64,
    /// Frames delivered as [`Event::Probe`].
    pub probes: u64,
    /// Frames that failed a header or length check (a fragment cut by
    /// the snap length included), datagrams too large for the buffer, and
    /// reassembled datagrams whose UDP length disagrees.
    pub malformed: u64,
    /// IP fragments of UDP datagrams handed to the reassembly (packet
    /// mode): first fragments to the knock port and every later fragment.
    pub fragments: u64,
    /// Datagrams reassembled from fragments (each also counted in
    /// `knocks` when its UDP header checks out).
    pub reassembled: u64,
    /// Reassemblies abandoned: timed out, overlapping or inconsistent
    /// fragments, too large, or evicted by the table limits. Later
    /// fragments of other UDP datagrams (which name no port) that never
    /// complete are counted here too.
    pub reassembly_dropped: u64,
    /// Well-formed frames that are neither (rare: the kernel filter
    /// passes only candidates).
    pub ignored: u64,
    /// Frames the kernel dropped because the receive queue was full, as
    /// of the last frame read (`SO_RXQ_OVFL`).
    pub kernel_drops: u64,
}

/// Why capture could not start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// A configuration value is out of range.
    #[error("capture configuration: {0}")]
    Config(&'static str),
    /// The interface name does not resolve.
    #[error("capture interface {name:?}: {source}")]
    Interface {
        /// The name given.
        name: String,
        /// From `if_nametoindex`.
        #[source]
        source: io::Error,
    },
    /// Setting up the socket failed.
    #[error("capture: {what}: {source}")]
    Socket {
        /// The step that failed.
        what: &'static str,
        /// From the kernel.
        #[source]
        source: io::Error,
    },
    /// Reading failed (other than a timeout or a signal).
    #[error("capture: receiving: {0}")]
    Recv(#[source] io::Error),
}

fn sock_err(what: &'static str) -> impl FnOnce(io::Error) -> CaptureError {
    move |source| CaptureError::Socket { what, source }
}

fn errno_err(what: &'static str) -> impl FnOnce(Errno) -> CaptureError {
    move |e| CaptureError::Socket {
        what,
        source: io::Error::from(e),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Packet,
    /// `local`: the bound address, the knock's `dst` when the kernel
    /// gave no packet info.
    Udp {
        local: IpAddr,
    },
}

/// What [`deliver`] needs to classify a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filter {
    kind: Kind,
    knock_port: u16,
    scan_watch: bool,
}

/// Where a frame came from, as far as the socket address and control
/// messages tell.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Unknown,
    Link {
        pkttype: u8,
        ethertype: u16,
    },
    Udp {
        src: SocketAddr,
        dst: Option<IpAddr>,
    },
}

/// What `recvmmsg`/`recvmsg` reported for one frame.
#[derive(Debug, Clone, Copy)]
struct Meta {
    len: usize,
    truncated: bool,
    origin: Origin,
}

const EMPTY_META: Meta = Meta {
    len: 0,
    truncated: false,
    origin: Origin::Unknown,
};

/// An open capture. Dropping it closes the socket.
pub struct Capture {
    sock: Socket,
    filter: Filter,
    batch: usize,
    /// `batch` frames of [`FRAME_LEN`] bytes.
    buf: Box<[u8]>,
    meta: Box<[Meta]>,
    /// Control buffer of [`Capture::poll_one`].
    cmsg: Box<[u8]>,
    last_drops: u32,
    stats: CaptureStats,
    defrag: Reassembler,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("fd", &self.sock.as_raw_fd())
            .field("filter", &self.filter)
            .field("batch", &self.batch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AsFd for Capture {
    /// The socket, e.g. to wait on it with `poll(2)` next to other
    /// descriptors. Reading from it directly bypasses the counters.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Control-message room for one frame: the drop counter and an IPv6
/// packet info (larger than the IPv4 one).
fn cmsg_room() -> Vec<u8> {
    nix::cmsg_space!(u32, libc::in6_pktinfo)
}

impl Capture {
    /// Opens the socket, attaches the filter (packet mode) or binds the
    /// port (UDP mode), and allocates the buffers. Needs `CAP_NET_RAW` in
    /// packet mode.
    pub fn open(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        if cfg.knock_port == 0 {
            return Err(CaptureError::Config("knock port 0"));
        }
        if cfg.batch == 0 || cfg.batch > MAX_BATCH {
            return Err(CaptureError::Config("batch must be between 1 and 128"));
        }
        let mut buf = vec![0u8; cfg.batch * FRAME_LEN].into_boxed_slice();
        let (sock, kind) = match &cfg.mode {
            CaptureMode::Packet { interface } => (
                open_packet(cfg, interface.as_deref(), &mut buf)?,
                Kind::Packet,
            ),
            CaptureMode::Udp { bind } => {
                let local = bind.to_canonical();
                (open_udp(cfg, local)?, Kind::Udp { local })
            }
        };
        Ok(Self {
            sock,
            filter: Filter {
                kind,
                knock_port: cfg.knock_port,
                scan_watch: cfg.scan_watch && kind == Kind::Packet,
            },
            batch: cfg.batch,
            buf,
            meta: vec![EMPTY_META; cfg.batch].into_boxed_slice(),
            cmsg: cmsg_room().into_boxed_slice(),
            last_drops: 0,
            stats: CaptureStats::default(),
            defrag: Reassembler::new(cfg.reassembly),
        })
    }

    /// Blocks until frames arrive or the read timeout passes; calls `f`
    /// for each event; returns the number of frames read (0 on timeout or
    /// when a signal interrupted the wait).
    pub fn poll<F: FnMut(Event<'_>)>(&mut self, mut f: F) -> Result<usize, CaptureError> {
        let r = self.receive_batch();
        let now = Instant::now();
        self.stats.reassembly_dropped += self.defrag.expire(now);
        let n = match r {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
            Err(e) => return Err(CaptureError::Recv(e.into())),
        };
        for i in 0..n {
            let start = i * FRAME_LEN;
            let m = self.meta.get(i).copied().unwrap_or(EMPTY_META);
            let frame = self
                .buf
                .get(start..start + m.len.min(FRAME_LEN))
                .unwrap_or_default();
            deliver(
                frame,
                &m,
                self.filter,
                &mut self.stats,
                &mut self.defrag,
                now,
                &mut f,
            );
        }
        Ok(n)
    }

    /// Like [`Capture::poll`], but reads one frame with one `recvmsg(2)`
    /// call: the per-frame loop that batching replaces, kept for
    /// comparison (see `benches/capture.rs`).
    pub fn poll_one<F: FnMut(Event<'_>)>(&mut self, mut f: F) -> Result<usize, CaptureError> {
        let Self {
            sock,
            buf,
            cmsg,
            last_drops,
            stats,
            filter,
            defrag,
            ..
        } = self;
        let kind = filter.kind;
        let m = {
            let Some(first) = buf.get_mut(..FRAME_LEN) else {
                return Ok(0);
            };
            let mut iov = [IoSliceMut::new(first)];
            let r = recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg[..]),
                MsgFlags::empty(),
            );
            match r {
                Ok(r) => meta_of(&r, kind, last_drops, stats),
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
                Err(e) => return Err(CaptureError::Recv(e.into())),
            }
        };
        let now = Instant::now();
        stats.reassembly_dropped += defrag.expire(now);
        let frame = buf.get(..m.len.min(FRAME_LEN)).unwrap_or_default();
        deliver(frame, &m, *filter, stats, defrag, now, &mut f);
        Ok(1)
    }

    /// Counters since [`Capture::open`].
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// One `recvmmsg` call: fills `meta[..n]` and the first `n` frames.
    ///
    /// The `mmsghdr` array is built for each call: nix's `MultiHeaders`
    /// holds raw pointers (so a stored one would make `Capture` neither
    /// `Send` nor `Sync`), and on reuse it keeps the control-buffer
    /// lengths the kernel wrote back, so control messages would be lost
    /// after the first frame that had none. That is a few small
    /// allocations per call, none per frame; the frame buffers themselves
    /// are allocated once.
    fn receive_batch(&mut self) -> Result<usize, Errno> {
        let Self {
            sock,
            buf,
            meta,
            batch,
            filter,
            last_drops,
            stats,
            ..
        } = self;
        let batch = *batch;
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, Some(cmsg_room()));
        let mut chunks = buf.chunks_exact_mut(FRAME_LEN);
        let mut iovs: [[IoSliceMut<'_>; 1]; MAX_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            iovs.iter_mut().take(batch),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        let mut n = 0;
        for (r, m) in results.zip(meta.iter_mut()) {
            *m = meta_of(&r, filter.kind, last_drops, stats);
            n += 1;
        }
        Ok(n)
    }
}

/// Reads what the kernel said about one frame: its length, whether it
/// was cut, its link or UDP source, the destination address (UDP) and the
/// drop counter.
fn meta_of(
    r: &RecvMsg<'_, '_, SockaddrStorage>,
    kind: Kind,
    last_drops: &mut u32,
    stats: &mut CaptureStats,
) -> Meta {
    stats.frames += 1;
    let mut dst = None;
    if let Ok(cmsgs) = r.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::RxqOvfl(total) => {
                    let delta = total.wrapping_sub(*last_drops);
                    if delta < 1 << 31 {
                        stats.kernel_drops += u64::from(delta);
                        *last_drops = total;
                    }
                }
                ControlMessageOwned::Ipv4PacketInfo(info) => {
                    dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        info.ipi_addr.s_addr,
                    ))));
                }
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr).to_canonical());
                }
                _ => {}
            }
        }
    }
    let origin = match (kind, r.address.as_ref()) {
        (Kind::Packet, Some(a)) => match a.as_link_addr() {
            Some(l) => Origin::Link {
                pkttype: l.pkttype(),
                ethertype: u16::from_be(l.protocol()),
            },
            None => Origin::Unknown,
        },
        (Kind::Udp { .. }, Some(a)) => {
            let src = if let Some(v4) = a.as_sockaddr_in() {
                Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            } else {
                a.as_sockaddr_in6().map(|v6| {
                    let v6 = std::net::SocketAddrV6::from(*v6);
                    SocketAddr::new(v6.ip().to_canonical(), v6.port())
                })
            };
            match src {
                Some(src) => Origin::Udp { src, dst },
                None => Origin::Unknown,
            }
        }
        (_, None) => Origin::Unknown,
    };
    Meta {
        len: r.bytes,
        truncated: r.flags.contains(MsgFlags::MSG_TRUNC),
        origin,
    }
}

/// Classifies one frame, counts it, and hands events to `f`; a fragment
/// goes to the reassembly, and the datagram it completes, if any, to `f`.
fn deliver<F: FnMut(Event<'_>)>(
    frame: &[u8],
    m: &Meta,
    filter: Filter,
    stats: &mut CaptureStats,
    defrag: &mut Reassembler,
    now: Instant,
    f: &mut F,
) {
    let Filter {
        kind,
        knock_port,
        scan_watch,
    } = filter;
    let class = match (kind, m.origin) {
        (Kind::Udp { local }, Origin::Udp { src, dst }) => {
            if m.truncated {
                Class::Malformed
            } else {
                let dst = SocketAddr::new(dst.unwrap_or(local), knock_port);
                Class::Seen(Event::Knock {
                    src,
                    dst,
                    payload: frame,
                })
            }
        }
        (Kind::Packet, Origin::Link { pkttype, ethertype }) => {
            if u32::from(pkttype) == bpf::PACKET_HOST {
                parse::classify(frame, ethertype, knock_port, scan_watch)
            } else {
                Class::Ignored
            }
        }
        // A packet socket that gave no link address (not seen on Linux):
        // the kernel filter checked the packet type; take the IP version.
        (Kind::Packet, Origin::Unknown) => match frame.first().map(|b| b >> 4) {
            Some(4) => parse::classify(frame, 0x0800, knock_port, scan_watch),
            Some(6) => parse::classify(frame, 0x86dd, knock_port, scan_watch),
            _ => Class::Ignored,
        },
        _ => Class::Ignored,
    };
    match class {
        Class::Fragment(frag) => {
            stats.fragments += 1;
            let (outcome, abandoned) = defrag.add(&frag, now);
            stats.reassembly_dropped += abandoned;
            match outcome {
                Outcome::Pending => {}
                Outcome::Dropped(_) => stats.reassembly_dropped += 1,
                Outcome::Complete(datagram) => {
                    stats.reassembled += 1;
                    let whole = parse::reassembled(frag.src, frag.dst, datagram, knock_port);
                    count_and_deliver(whole, stats, f);
                }
            }
        }
        other => count_and_deliver(other, stats, f),
    }
}

fn count_and_deliver<F: FnMut(Event<'_>)>(class: Class<'_>, stats: &mut CaptureStats, f: &mut F) {
    match class {
        Class::Seen(e) => {
            match e {
                Event::Knock { .. } => stats.knocks += 1,
                Event::Probe { .. } => stats.probes += 1,
            }
            f(e);
        }
        Class::Malformed => stats.malformed += 1,
        Class::Ignored | Class::Fragment(_) => stats.ignored += 1,
    }
}

/// Receive buffer, drop counter and read timeout: common to both modes.
fn tune(sock: &Socket, cfg: &CaptureConfig) -> Result<(), CaptureError> {
    if cfg.rcvbuf > 0 && setsockopt(sock, sockopt::RcvBufForce, &cfg.rcvbuf).is_err() {
        sock.set_recv_buffer_size(cfg.rcvbuf)
            .map_err(sock_err("setting SO_RCVBUF"))?;
    }
    setsockopt(sock, sockopt::RxqOvfl, &1).map_err(errno_err("setting SO_RXQ_OVFL"))?;
    let timeout = cfg.read_timeout.max(Duration::from_millis(1));
    sock.set_read_timeout(Some(timeout))
        .map_err(sock_err("setting SO_RCVTIMEO"))?;
    Ok(())
}

fn open_packet(
    cfg: &CaptureConfig,
    interface: Option<&str>,
    scratch: &mut [u8],
) -> Result<Socket, CaptureError> {
    let ifindex = match interface {
        Some(name) => {
            Some(
                nix::net::if_::if_nametoindex(name).map_err(|e| CaptureError::Interface {
                    name: name.to_owned(),
                    source: io::Error::from(e),
                })?,
            )
        }
        None => None,
    };
    let program =
        bpf::program(cfg.knock_port, cfg.scan_watch, ifindex).map_err(CaptureError::Config)?;
    let filters: Vec<_> = program.iter().map(|i| i.to_sock_filter()).collect();

    // Protocol in network byte order, as packet(7) wants it.
    let all = Protocol::from(i32::from((libc::ETH_P_ALL as u16).to_be()));
    let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(all))
        .map_err(sock_err("opening the AF_PACKET socket (needs CAP_NET_RAW)"))?;
    sock.attach_filter(&filters)
        .map_err(sock_err("attaching the BPF filter"))?;
    // Frames that arrived between socket() and the filter were queued
    // unfiltered: throw them away.
    for _ in 0..DRAIN_MAX {
        if recv(sock.as_raw_fd(), scratch, MsgFlags::MSG_DONTWAIT).is_err() {
            break;
        }
    }
    tune(&sock, cfg)?;
    Ok(sock)
}

fn open_udp(cfg: &CaptureConfig, bind: IpAddr) -> Result<Socket, CaptureError> {
    let addr = SocketAddr::new(bind, cfg.knock_port);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err("opening the UDP socket"))?;
    match bind {
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                sock.set_only_v6(false)
                    .map_err(sock_err("clearing IPV6_V6ONLY"))?;
            }
            // IPv6 packet info also covers IPv4 on a dual-stack socket
            // (as a mapped address).
            setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)
                .map_err(errno_err("setting IPV6_RECVPKTINFO"))?;
        }
        IpAddr::V4(_) => {
            setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)
                .map_err(errno_err("setting IP_PKTINFO"))?;
        }
    }
    tune(&sock, cfg)?;
    sock.bind(&addr.into())
        .map_err(sock_err("binding the knock port"))?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_config() {
        let mut c = CaptureConfig::new(0);
        assert!(matches!(Capture::open(&c), Err(CaptureError::Config(_))));
        c.knock_port = 1;
        c.batch = 0;
        assert!(matches!(Capture::open(&c), Err(CaptureError::Config(_))));
        c.batch = MAX_BATCH + 1;
        assert!(matches!(Capture::open(&c), Err(CaptureError::Config(_))));
    }

    #[test]
    fn unknown_interface_is_an_error() {
        let mut c = CaptureConfig::new(62201);
        c.mode = CaptureMode::Packet {
            interface: Some("no-such-if0".into()),
        };
        assert!(matches!(
            Capture::open(&c),
            Err(CaptureError::Interface { .. })
        ));
    }

    /// UDP mode on loopback needs no privilege: knocks from 127.0.0.1 and
    /// ::1 arrive with their source, destination and payload.
    #[test]
    fn udp_mode_on_loopback() {
        // Find a free port for both families.
        let probe = std::net::UdpSocket::bind("[::]:0").expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let mut c = CaptureConfig::new(port);
        c.mode = CaptureMode::Udp {
            bind: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        c.read_timeout = Duration::from_millis(50);
        let mut cap = Capture::open(&c).expect("open");

        let s4 = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s4.send_to(b"four", ("127.0.0.1", port)).expect("send");
        let s6 = std::net::UdpSocket::bind("[::1]:0").expect("bind");
        s6.send_to(b"six", ("::1", port)).expect("send");

        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 2 && Instant::now() < deadline {
            cap.poll(|e| {
                if let Event::Knock { src, dst, payload } = e {
                    got.push((src, dst, payload.to_vec()));
                }
            })
            .expect("poll");
        }
        got.sort_by_key(|g| g.2.clone());
        assert_eq!(
            got,
            vec![
                (
                    s4.local_addr().expect("a"),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    b"four".to_vec()
                ),
                (
                    s6.local_addr().expect("a"),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                    b"six".to_vec()
                ),
            ]
        );
        let st = cap.stats();
        assert_eq!((st.frames, st.knocks, st.malformed), (2, 2, 0));
    }

    #[test]
    fn poll_times_out() {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let mut c = CaptureConfig::new(port);
        c.mode = CaptureMode::Udp {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        c.read_timeout = Duration::from_millis(30);
        let mut cap = Capture::open(&c).expect("open");
        let t = Instant::now();
        assert_eq!(cap.poll(|_| panic!("no event expected")).expect("poll"), 0);
        assert!(t.elapsed() >= Duration::from_millis(25));
        assert_eq!(
            cap.poll_one(|_| panic!("no event expected")).expect("poll"),
            0
        );
    }

    #[test]
    fn capture_is_send() {
        fn send<T: Send>() {}
        send::<Capture>();
    }
}
