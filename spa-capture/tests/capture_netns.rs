//! Capture end to end, as root: two network namespaces joined by a veth
//! pair, the capture in one (`a`, 10.200.0.1 and fd00:200::1), the sender
//! in the other (`b`, 10.200.0.2 and fd00:200::2). Traffic goes only to
//! these addresses and to loopback inside `a`. The namespaces are deleted
//! by a guard, also when a test fails.
//!
//! Threads enter a namespace with `setns(2)`; a socket stays in the
//! namespace it was created in, whichever thread uses it later.
//! Without root the tests print why and pass.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use spa_capture::{Capture, CaptureConfig, CaptureMode, CaptureStats, Event, Proto};

const PORT: u16 = 62201;
const OTHER_UDP: u16 = 62202;
const CLOSED_TCP: u16 = 2222;
const A4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);
const MARKER: &[u8] = b"end-of-test";
/// The port of [`SyncPoint`]'s socket (not captured: UDP off the knock port
/// without scan watch).
const SYNC_UDP: u16 = 62203;

/// Shows when everything a sender sent went past the capture's tap: a UDP
/// socket in `a` that the sender's last datagram reaches. The sender pins
/// itself to one CPU ([`SyncPoint::pin_sender`]), so its datagrams share one
/// backlog, processed in order: once the last one reached its socket, every
/// earlier one was queued at the capture or counted as dropped.
struct SyncPoint(UdpSocket);

impl SyncPoint {
    fn new(pair: &Pair) -> Self {
        let s = in_ns(&pair.a, || {
            UdpSocket::bind((A4, SYNC_UDP)).expect("bind sync")
        })
        .join()
        .expect("sync socket");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self(s)
    }

    /// Called first by the sending thread.
    fn pin_sender() {
        let mut one = nix::sched::CpuSet::new();
        one.set(0).expect("cpu 0");
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).expect("pin to cpu 0");
    }

    /// Called last by the sending thread (same socket family as the rest).
    fn send_last() {
        let s = UdpSocket::bind((B4, 0)).expect("bind");
        s.send_to(b"sync", (A4, SYNC_UDP)).expect("send sync");
    }

    /// Waits for the sender's last datagram.
    fn wait(&self) {
        let mut buf = [0u8; 8];
        let (n, _) = self
            .0
            .recv_from(&mut buf)
            .expect("the sync datagram within 10 s");
        assert_eq!(&buf[..n], b"sync");
    }
}

static SETUP: Mutex<()> = Mutex::new(());
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth pair; deleted on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("spa-cap-{}-{n}", std::process::id());
        let pair = Pair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
        };
        // `ip netns add` mounts /run/netns on first use: not concurrently.
        let guard = SETUP.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        drop(guard);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        ip(&[
            "-n", a, "link", "add", "spa-a", "type", "veth", "peer", "name", "spa-b", "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", "10.200.0.1/24", "dev", "spa-a"]);
        ip(&["-n", b, "addr", "add", "10.200.0.2/24", "dev", "spa-b"]);
        ip(&[
            "-n",
            a,
            "addr",
            "add",
            "fd00:200::1/64",
            "dev",
            "spa-a",
            "nodad",
        ]);
        ip(&[
            "-n",
            b,
            "addr",
            "add",
            "fd00:200::2/64",
            "dev",
            "spa-b",
            "nodad",
        ]);
        for (ns, dev) in [(a, "spa-a"), (b, "spa-b"), (a, "lo"), (b, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(pair.is_up(a, "spa-a") && pair.is_up(b, "spa-b")) {
            assert!(Instant::now() < deadline, "veth did not come up");
            thread::sleep(Duration::from_millis(20));
        }
        pair
    }

    fn is_up(&self, ns: &str, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", dev])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("LOWER_UP"))
            .unwrap_or(false)
    }

    /// `ss ARGS` inside namespace `a`.
    fn ss_a(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.a, "ss"])
            .args(args)
            .output()
            .expect("run ss");
        assert!(
            out.status.success(),
            "ss: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a new thread inside namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Knock(SocketAddr, SocketAddr, Vec<u8>),
    Probe(IpAddr, u16, Proto),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Knock { src, dst, payload } => Ev::Knock(src, dst, payload.to_vec()),
        Event::Probe {
            src,
            dst_port,
            proto,
        } => Ev::Probe(src, dst_port, proto),
    }
}

struct Outcome {
    events: Vec<Ev>,
    stats: CaptureStats,
    largest_batch: usize,
}

/// Polls until the marker knock arrives (or 10 s pass).
fn collect(cap: &mut Capture) -> Outcome {
    let mut events = Vec::new();
    let mut largest_batch = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let n = cap.poll(|e| events.push(own(e))).expect("poll");
        largest_batch = largest_batch.max(n);
        if matches!(events.last(), Some(Ev::Knock(_, _, p)) if p == MARKER) {
            break;
        }
    }
    Outcome {
        events,
        stats: cap.stats(),
        largest_batch,
    }
}

fn config(mode: CaptureMode, scan_watch: bool) -> CaptureConfig {
    let mut c = CaptureConfig::new(PORT);
    c.mode = mode;
    c.scan_watch = scan_watch;
    c.read_timeout = Duration::from_millis(100);
    c
}

/// Opens the capture in `a`, runs `inspect` once it is open (from this
/// thread), then `send` in namespace `send_ns`, and collects until the
/// marker.
fn scenario(
    pair: &Pair,
    cfg: CaptureConfig,
    send_ns: &str,
    send: impl FnOnce() + Send + 'static,
    inspect: impl FnOnce(),
) -> Outcome {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let receiver = in_ns(&pair.a, move || {
        let mut cap = Capture::open(&cfg).expect("open capture");
        ready_tx.send(()).expect("ready");
        go_rx.recv().expect("go");
        collect(&mut cap)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("capture did not open");
    inspect();
    go_tx.send(()).expect("go");
    in_ns(send_ns, send).join().expect("sender");
    receiver.join().expect("receiver")
}

fn udp_from(bind: SocketAddr, to: SocketAddr, payload: &[u8]) -> SocketAddr {
    let s = UdpSocket::bind(bind).expect("bind sender");
    s.send_to(payload, to).expect("send");
    s.local_addr().expect("local addr")
}

fn syn(to: SocketAddr) {
    let r = TcpStream::connect_timeout(&to, Duration::from_secs(3));
    assert!(r.is_err(), "port {to} should be closed");
}

fn knock4(payload: &[u8]) -> SocketAddr {
    udp_from((B4, 0).into(), (A4, PORT).into(), payload)
}

fn knock6(payload: &[u8]) -> SocketAddr {
    udp_from((B6, 0).into(), (A6, PORT).into(), payload)
}

/// No UDP socket of namespace `a` has the knock port as its local port.
fn assert_port_unbound(ss_uan: &str) {
    for line in ss_uan.lines() {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        assert!(!local.ends_with(&format!(":{PORT}")), "bound: {line}");
    }
}

macro_rules! need_root {
    () => {
        if !is_root() {
            tests::cannot_run(module_path!(), "needs root (network namespaces, AF_PACKET)");
            return;
        }
    };
}

#[test]
fn packet_mode_delivers_knocks_only_without_scan_watch() {
    need_root!();
    let pair = Pair::new();
    let (tx, rx) = mpsc::channel();
    let mut ss = (String::new(), String::new());
    let out = scenario(
        &pair,
        config(CaptureMode::Packet { interface: None }, false),
        &pair.b.clone(),
        move || {
            let s4 = knock4(b"knock over IPv4");
            let s6 = knock6(b"knock over IPv6");
            udp_from((B4, 0).into(), (A4, OTHER_UDP).into(), b"not a knock");
            udp_from((B6, 0).into(), (A6, OTHER_UDP).into(), b"not a knock");
            syn((A4, CLOSED_TCP).into());
            syn((A6, CLOSED_TCP).into());
            let s_end = knock4(MARKER);
            tx.send((s4, s6, s_end)).expect("send");
        },
        || ss = (pair.ss_a(&["-uanH"]), pair.ss_a(&["-0anH"])),
    );
    let (s4, s6, s_end) = rx.recv().expect("sender addresses");
    assert_eq!(
        out.events,
        vec![
            Ev::Knock(s4, (A4, PORT).into(), b"knock over IPv4".to_vec()),
            Ev::Knock(s6, (A6, PORT).into(), b"knock over IPv6".to_vec()),
            Ev::Knock(s_end, (A4, PORT).into(), MARKER.to_vec()),
        ]
    );
    // The kernel filter let nothing else reach user space.
    let st = out.stats;
    assert_eq!(
        (st.frames, st.knocks, st.probes, st.malformed, st.ignored),
        (3, 3, 0, 0, 0),
        "{st:?}"
    );
    // Nothing is bound to the knock port; the packet socket is there.
    assert_port_unbound(&ss.0);
    assert!(!ss.1.trim().is_empty(), "ss -0 shows no packet socket");
}

#[test]
fn packet_mode_scan_watch_reports_probes() {
    need_root!();
    let pair = Pair::new();
    let (tx, rx) = mpsc::channel();
    let out = scenario(
        &pair,
        config(CaptureMode::Packet { interface: None }, true),
        &pair.b.clone(),
        move || {
            let s4 = knock4(b"k4");
            udp_from((B4, 0).into(), (A4, OTHER_UDP).into(), b"probe");
            syn((A4, CLOSED_TCP).into());
            udp_from((B6, 0).into(), (A6, OTHER_UDP).into(), b"probe");
            syn((A6, CLOSED_TCP + 1).into());
            let s6 = knock6(b"k6");
            let s_end = knock4(MARKER);
            tx.send((s4, s6, s_end)).expect("send");
        },
        || {},
    );
    let (s4, s6, s_end) = rx.recv().expect("sender addresses");
    assert_eq!(
        out.events,
        vec![
            Ev::Knock(s4, (A4, PORT).into(), b"k4".to_vec()),
            Ev::Probe(B4.into(), OTHER_UDP, Proto::Udp),
            Ev::Probe(B4.into(), CLOSED_TCP, Proto::Tcp),
            Ev::Probe(B6.into(), OTHER_UDP, Proto::Udp),
            Ev::Probe(B6.into(), CLOSED_TCP + 1, Proto::Tcp),
            Ev::Knock(s6, (A6, PORT).into(), b"k6".to_vec()),
            Ev::Knock(s_end, (A4, PORT).into(), MARKER.to_vec()),
        ]
    );
    let st = out.stats;
    assert_eq!(
        (st.frames, st.knocks, st.probes, st.malformed, st.ignored),
        (7, 3, 4, 0, 0),
        "{st:?}"
    );
}

#[test]
fn packet_mode_interface_filter() {
    need_root!();
    let pair = Pair::new();
    // Bound to lo: knocks over the veth are not seen, loopback knocks are,
    // once each (the outgoing copy on lo is filtered out).
    let b = pair.b.clone();
    let out = scenario(
        &pair,
        config(
            CaptureMode::Packet {
                interface: Some("lo".into()),
            },
            false,
        ),
        &pair.a.clone(),
        move || {
            in_ns(&b, || {
                knock4(b"via veth");
                knock6(b"via veth");
            })
            .join()
            .expect("sender in b");
            udp_from(
                (Ipv4Addr::LOCALHOST, 0).into(),
                (Ipv4Addr::LOCALHOST, PORT).into(),
                b"lo4",
            );
            udp_from(
                (Ipv6Addr::LOCALHOST, 0).into(),
                (Ipv6Addr::LOCALHOST, PORT).into(),
                b"lo6",
            );
            udp_from(
                (Ipv4Addr::LOCALHOST, 0).into(),
                (Ipv4Addr::LOCALHOST, PORT).into(),
                MARKER,
            );
        },
        || {},
    );
    let payloads: Vec<&[u8]> = out
        .events
        .iter()
        .map(|e| match e {
            Ev::Knock(_, _, p) => p.as_slice(),
            Ev::Probe(..) => b"probe".as_slice(),
        })
        .collect();
    assert_eq!(payloads, vec![b"lo4".as_slice(), b"lo6", MARKER]);
    assert_eq!(out.stats.frames, 3, "{:?}", out.stats);

    // Bound to the veth: loopback knocks are not seen.
    let b = pair.b.clone();
    let out = scenario(
        &pair,
        config(
            CaptureMode::Packet {
                interface: Some("spa-a".into()),
            },
            false,
        ),
        &pair.a.clone(),
        move || {
            udp_from(
                (Ipv4Addr::LOCALHOST, 0).into(),
                (Ipv4Addr::LOCALHOST, PORT).into(),
                b"lo4",
            );
            in_ns(&b, || {
                knock4(b"via veth");
                knock4(MARKER);
            })
            .join()
            .expect("sender in b");
        },
        || {},
    );
    let payloads: Vec<Vec<u8>> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Knock(_, _, p) => Some(p.clone()),
            Ev::Probe(..) => None,
        })
        .collect();
    assert_eq!(payloads, vec![b"via veth".to_vec(), MARKER.to_vec()]);
    assert_eq!(out.stats.frames, 2, "{:?}", out.stats);
}

#[test]
fn packet_mode_reads_in_batches() {
    need_root!();
    let pair = Pair::new();
    const N: usize = 300;
    let mut cfg = config(CaptureMode::Packet { interface: None }, false);
    cfg.batch = 32;
    // Send everything before the first poll so the queue holds many frames.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let receiver = in_ns(&pair.a, move || {
        let mut cap = Capture::open(&cfg).expect("open");
        ready_tx.send(()).expect("ready");
        go_rx.recv().expect("go");
        collect(&mut cap)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("open");
    let sync = SyncPoint::new(&pair);
    in_ns(&pair.b, || {
        SyncPoint::pin_sender();
        let s = UdpSocket::bind((B4, 0)).expect("bind");
        for i in 0..N {
            s.send_to(format!("knock {i}").as_bytes(), (A4, PORT))
                .expect("send");
        }
        s.send_to(MARKER, (A4, PORT)).expect("send");
        SyncPoint::send_last();
    })
    .join()
    .expect("sender");
    sync.wait();
    go_tx.send(()).expect("go");
    let out = receiver.join().expect("receiver");
    assert_eq!(out.events.len(), N + 1, "{:?}", out.stats);
    for (i, e) in out.events.iter().take(N).enumerate() {
        assert!(
            matches!(e, Ev::Knock(_, _, p) if *p == format!("knock {i}").into_bytes()),
            "{i}: {e:?}"
        );
    }
    assert_eq!(out.largest_batch, 32);
    assert_eq!(out.stats.kernel_drops, 0);
}

#[test]
fn packet_mode_counts_kernel_drops() {
    need_root!();
    let pair = Pair::new();
    const N: usize = 2000;
    let mut cfg = config(CaptureMode::Packet { interface: None }, false);
    cfg.rcvbuf = 1; // the kernel's minimum: a few frames
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (drained_tx, drained_rx) = mpsc::channel::<()>();
    let (more_tx, more_rx) = mpsc::channel::<()>();
    let receiver = in_ns(&pair.a, move || {
        let mut cap = Capture::open(&cfg).expect("open");
        ready_tx.send(()).expect("ready");
        go_rx.recv().expect("go");
        // Empty the queue the burst overfilled.
        while cap.poll(|_| {}).expect("poll") > 0 {}
        drained_tx.send(()).expect("drained");
        more_rx.recv().expect("more");
        let rest = collect(&mut cap);
        (rest.stats, rest.events.len())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("open");
    let b = pair.b.clone();
    let sync = SyncPoint::new(&pair);
    in_ns(&b, || {
        SyncPoint::pin_sender();
        let s = UdpSocket::bind((B4, 0)).expect("bind");
        for _ in 0..N {
            s.send_to(b"burst", (A4, PORT)).expect("send");
        }
        SyncPoint::send_last();
    })
    .join()
    .expect("burst");
    sync.wait();
    go_tx.send(()).expect("go");
    drained_rx.recv().expect("drained");
    in_ns(&b, || {
        knock4(MARKER);
    })
    .join()
    .expect("marker");
    more_tx.send(()).expect("more");
    let (st, _) = receiver.join().expect("receiver");
    // The marker carries the drop counter: everything sent is either read
    // or counted as dropped.
    assert!(st.kernel_drops > 0, "{st:?}");
    assert_eq!(st.frames + st.kernel_drops, N as u64 + 1, "{st:?}");
}

#[test]
fn udp_mode_receives_knocks_on_both_families() {
    need_root!();
    let pair = Pair::new();
    let (tx, rx) = mpsc::channel();
    let mut ss = String::new();
    let out = scenario(
        &pair,
        config(
            CaptureMode::Udp {
                bind: Ipv6Addr::UNSPECIFIED.into(),
            },
            true,
        ),
        &pair.b.clone(),
        move || {
            let s4 = knock4(b"udp mode v4");
            let s6 = knock6(b"udp mode v6");
            udp_from((B4, 0).into(), (A4, OTHER_UDP).into(), b"elsewhere");
            syn((A4, CLOSED_TCP).into());
            let s_end = knock4(MARKER);
            tx.send((s4, s6, s_end)).expect("send");
        },
        || ss = pair.ss_a(&["-uanH"]),
    );
    let (s4, s6, s_end) = rx.recv().expect("sender addresses");
    assert_eq!(
        out.events,
        vec![
            Ev::Knock(s4, (A4, PORT).into(), b"udp mode v4".to_vec()),
            Ev::Knock(s6, (A6, PORT).into(), b"udp mode v6".to_vec()),
            Ev::Knock(s_end, (A4, PORT).into(), MARKER.to_vec()),
        ]
    );
    assert_eq!(out.stats.frames, 3);
    // Here the port is bound (this also shows the check of the packet
    // mode test would see a bound socket).
    assert!(ss.lines().any(|l| l.contains(&format!(":{PORT} "))), "{ss}");
}
