//! Receive rate of the packet-mode capture: batched `recvmmsg`
//! (`Capture::poll`, 32 frames a call) against one `recvmsg` per frame
//! (`Capture::poll_one`, the shape of pnet's per-frame loop) on the same
//! `AF_PACKET` socket with the same filter and the same parsing.
//!
//! Setup: two network namespaces joined by a veth pair (10.200.0.1 and
//! 10.200.0.2, created here and deleted at the end), the capture in one,
//! one sender thread in the other blasting 16-byte UDP datagrams to the
//! knock port with `sendmmsg` for a bounded time (each phase ~2 s, at most
//! 20 million datagrams). The rate is frames read by user space per
//! second of the phase; frames the socket queue could not hold show up
//! as kernel drops.
//!
//! Needs root: `cargo bench -p spa-server --bench capture`. Without
//! `--bench` (`cargo test --all-targets`) it is a smoke test: one round of
//! 0.2 s phases and 5,000-frame drains, each of which must read frames;
//! without root it fails unless `SPA_TEST_ALLOW_SKIP=1`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use spa_capture::{Capture, CaptureConfig, CaptureMode, CaptureStats};

const PORT: u16 = 62201;
const A4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// Milliseconds of a sustained phase: 2 s measured, 0.2 s as a smoke test.
static PHASE_MS: AtomicU64 = AtomicU64::new(2_000);

fn phase() -> Duration {
    Duration::from_millis(PHASE_MS.load(Ordering::Relaxed))
}
const MAX_SENT: u64 = 20_000_000;
const SEND_BATCH: usize = 64;

struct Pair {
    a: String,
    b: String,
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

impl Pair {
    fn new() -> Self {
        let id = format!("spa-capb-{}", std::process::id());
        let pair = Pair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        ip(&[
            "-n", a, "link", "add", "spa-a", "type", "veth", "peer", "name", "spa-b", "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", "10.200.0.1/24", "dev", "spa-a"]);
        ip(&["-n", b, "addr", "add", "10.200.0.2/24", "dev", "spa-b"]);
        ip(&["-n", a, "link", "set", "spa-a", "up"]);
        ip(&["-n", b, "link", "set", "spa-b", "up"]);
        // Resolve the neighbour once so the blast starts at full speed.
        ip(&[
            "-n",
            b,
            "neigh",
            "replace",
            "10.200.0.1",
            "lladdr",
            &mac(a, "spa-a"),
            "dev",
            "spa-b",
        ]);
        thread::sleep(Duration::from_millis(200));
        pair
    }
}

fn mac(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", dev])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "link/ether")
        .and_then(|_| words.next())
        .expect("mac")
        .to_owned()
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).expect("netns file");
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `Capture::poll`: `recvmmsg`, 32 frames a call.
    Batched,
    /// `Capture::poll_one`: one `recvmsg` a frame (blocking, with the
    /// socket's read timeout).
    PerFrame,
    /// `poll(2)` then `Capture::poll_one`: two system calls a frame, the
    /// way pnet's Linux data-link receiver waits with a timeout.
    PollThenRecv,
}

const MODES: usize = 3;

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Batched => "recvmmsg x32",
            Mode::PerFrame => "recvmsg per frame",
            Mode::PollThenRecv => "poll+recvmsg per frame",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug)]
enum Test {
    /// Read while the sender blasts, for [`phase`].
    Sustained(Mode),
    /// Read back a queue the sender filled while the reader waited.
    Drain(Mode),
}

#[derive(Debug)]
struct Phase {
    test: Test,
    frames: u64,
    drops: u64,
    elapsed: Duration,
    /// Receiver thread CPU time (user + system).
    cpu: Duration,
    /// Read calls (`poll`/`poll_one`) that returned frames.
    calls: u64,
    sent: u64,
    send_elapsed: Duration,
}

/// What the receiver measured in one phase.
#[derive(Debug, Clone, Copy)]
struct Measured {
    frames: u64,
    drops: u64,
    elapsed: Duration,
    cpu: Duration,
    calls: u64,
}

fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// Frames queued for a drain test (and the bound of that sender):
/// 200,000 measured, 5,000 as a smoke test.
static FILL: AtomicU64 = AtomicU64::new(200_000);

fn fill() -> u64 {
    FILL.load(Ordering::Relaxed)
}

/// Sends datagrams at A's knock port with `sendmmsg` until `limit`
/// datagrams are sent or `until` passes. Returns (sent, elapsed).
fn blast(limit: u64, until: Duration) -> (u64, Duration) {
    let s = UdpSocket::bind((B4, 0)).expect("bind");
    s.connect(SocketAddr::from((A4, PORT))).expect("connect");
    tests::bench::send_batches(&s, &vec![vec![0x5au8; 16]; SEND_BATCH], limit, until)
}

fn read(cap: &mut Capture, mode: Mode) -> usize {
    match mode {
        Mode::Batched => cap.poll(|e| {
            std::hint::black_box(e);
        }),
        Mode::PerFrame => cap.poll_one(|e| {
            std::hint::black_box(e);
        }),
        Mode::PollThenRecv => {
            use nix::poll::{PollFd, PollFlags, poll};
            use std::os::fd::AsFd;
            let ready = {
                let mut fds = [PollFd::new(cap.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, 50u16).expect("poll(2)")
            };
            if ready == 0 {
                return 0;
            }
            cap.poll_one(|e| {
                std::hint::black_box(e);
            })
        }
    }
    .expect("poll")
}

fn drain(cap: &mut Capture) {
    while cap.poll(|_| {}).expect("poll") > 0 {}
}

fn delta(after: CaptureStats, before: CaptureStats) -> (u64, u64) {
    (
        after.frames - before.frames,
        after.kernel_drops - before.kernel_drops,
    )
}

fn run(pair: &Pair, tests: &[Test]) -> Vec<Phase> {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<Test>();
    let (done_tx, done_rx) = mpsc::channel::<Measured>();
    let n = tests.len();
    // One capture, one socket, for every phase.
    let receiver = in_ns(&pair.a, move || {
        let mut cfg = CaptureConfig::new(PORT);
        cfg.mode = CaptureMode::Packet {
            interface: Some("spa-a".into()),
        };
        cfg.batch = 32;
        cfg.read_timeout = Duration::from_millis(50);
        // Room for the drain tests' queue (about 1 KiB of kernel memory a
        // frame); SO_RCVBUFFORCE, so root is enough.
        cfg.rcvbuf = 256 << 20;
        let mut cap = Capture::open(&cfg).expect("open capture (root?)");
        ready_tx.send(()).expect("ready");
        for _ in 0..n {
            match go_rx.recv().expect("go") {
                Test::Sustained(mode) => {
                    let before = cap.stats();
                    let (t0, cpu0, mut calls) = (Instant::now(), thread_cpu(), 0);
                    while t0.elapsed() < phase() {
                        if read(&mut cap, mode) > 0 {
                            calls += 1;
                        }
                    }
                    let (elapsed, cpu) = (t0.elapsed(), thread_cpu() - cpu0);
                    let (frames, drops) = delta(cap.stats(), before);
                    thread::sleep(Duration::from_millis(300));
                    drain(&mut cap);
                    done_tx
                        .send(Measured {
                            frames,
                            drops,
                            elapsed,
                            cpu,
                            calls,
                        })
                        .expect("done");
                }
                Test::Drain(mode) => {
                    // The sender has filled the queue: read it back.
                    let before = cap.stats();
                    let (t0, cpu0, mut calls) = (Instant::now(), thread_cpu(), 0);
                    // Until the queue is empty: the read that times out
                    // is not counted (`last` is the end of the last read
                    // that returned frames).
                    let mut last = t0;
                    while t0.elapsed() < Duration::from_secs(10) {
                        if read(&mut cap, mode) == 0 {
                            break;
                        }
                        calls += 1;
                        last = Instant::now();
                    }
                    let cpu = thread_cpu() - cpu0;
                    let (frames, drops) = delta(cap.stats(), before);
                    let elapsed = last - t0;
                    done_tx
                        .send(Measured {
                            frames,
                            drops,
                            elapsed,
                            cpu,
                            calls,
                        })
                        .expect("done");
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("capture did not open");
    let mut phases = Vec::new();
    for &test in tests {
        let ((sent, send_elapsed), m) = match test {
            Test::Sustained(_) => {
                go_tx.send(test).expect("go");
                let s = in_ns(&pair.b, || {
                    blast(MAX_SENT, phase() + Duration::from_millis(200))
                });
                let sent = s.join().expect("sender");
                (sent, done_rx.recv().expect("result"))
            }
            Test::Drain(_) => {
                let s = in_ns(&pair.b, || blast(fill(), Duration::from_secs(3)));
                let sent = s.join().expect("sender");
                go_tx.send(test).expect("go");
                (sent, done_rx.recv().expect("result"))
            }
        };
        phases.push(Phase {
            test,
            frames: m.frames,
            drops: m.drops,
            elapsed: m.elapsed,
            cpu: m.cpu,
            calls: m.calls,
            sent,
            send_elapsed,
        });
    }
    receiver.join().expect("receiver");
    phases
}

fn rate(count: u64, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !nix::unistd::geteuid().is_root() {
        tests::cannot_run(
            "capture bench",
            "needs root (network namespaces, AF_PACKET)",
        );
        return;
    }
    if !bench {
        PHASE_MS.store(200, Ordering::Relaxed);
        FILL.store(5_000, Ordering::Relaxed);
    }
    let pair = Pair::new();
    use Mode::*;
    use Test::*;
    let mut tests = Vec::new();
    for _round in 0..if bench { 2 } else { 1 } {
        for m in [Batched, PerFrame, PollThenRecv] {
            tests.push(Sustained(m));
        }
        for m in [Batched, PerFrame, PollThenRecv] {
            tests.push(Drain(m));
        }
    }
    let phases = run(&pair, &tests);
    drop(pair);
    if !bench {
        for p in &phases {
            assert!(
                p.frames > 0,
                "capture bench smoke test: a phase read no frames ({} sent)",
                p.sent
            );
        }
        println!(
            "capture bench: smoke test passed ({} phases read frames)",
            phases.len()
        );
        return;
    }

    println!("capture bench: veth between two namespaces, 16-byte UDP datagrams to the knock");
    println!("port from one sendmmsg sender; packet mode, kernel filter, one socket throughout");
    println!(
        "  sustained: read while the sender blasts for {:?}; drain: read back {} queued frames",
        phase(),
        fill()
    );
    // best[sustained|drain][mode]
    let mut best = [[0f64; MODES]; 2];
    for p in &phases {
        let r = rate(p.frames, p.elapsed);
        let (kind, mode, what) = match p.test {
            Sustained(m) => (0, m, "sustained"),
            Drain(m) => (1, m, "drain"),
        };
        let slot = &mut best[kind][mode.index()];
        *slot = slot.max(r);
        println!(
            "  {what:<9} {:<22} {:>9.0} frames/s  {:>5.2} us CPU/frame  {:>5.1} frames/call  (read {:>7} in {:.3} s, drops {}; sender {} at {:.0}/s)",
            mode.name(),
            r,
            p.cpu.as_secs_f64() * 1e6 / p.frames.max(1) as f64,
            p.frames as f64 / p.calls.max(1) as f64,
            p.frames,
            p.elapsed.as_secs_f64(),
            p.drops,
            p.sent,
            rate(p.sent, p.send_elapsed),
        );
    }
    for (kind, what) in [
        (0, "sustained (bounded by the sender)"),
        (1, "drain (receive capacity)"),
    ] {
        let [b, f, pf] = best[kind];
        let ratio = |x: f64| if x > 0.0 { b / x } else { f64::NAN };
        println!(
            "  best {what}: recvmmsg {b:.0}/s, recvmsg {f:.0}/s (x{:.2}), poll+recvmsg {pf:.0}/s (x{:.2})",
            ratio(f),
            ratio(pf),
        );
    }
}
