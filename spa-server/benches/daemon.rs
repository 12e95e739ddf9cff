//! The green daemon end to end, against Debian's `fwknopd` in the same test
//! bed and the same run: `cargo bench -p spa-server --bench daemon`.
//!
//! Test bed: two network namespaces created here and deleted at the end,
//! `spa-dbg-<pid>` (green: `g0`, 10.200.0.1/16) and `spa-dbs-<pid>` (the
//! senders: `s0`, 10.200.0.2/16 plus one secondary address per latency
//! knock, per throughput identity and per knock sent during the flood, all
//! inside 10.200.0.0/16). Nothing is ever sent elsewhere. The daemon under
//! test is the release `spa-server` binary (`run --config`), started with
//! `ip netns exec`; knocks are sealed in-process with
//! `proto_spec::seal::seal_knock` by test-CA Ed25519 signers
//! (`proto_spec::testkit`) and sent from sockets opened in the sender
//! namespace.
//!
//! Phases, in order (see BENCHMARKS.md, "Green daemon", for the method
//! notes and the results):
//!
//! 0. crypto floor in-process (one X25519 + one Ed25519 `verify_strict` of
//!    600 bytes), plus `KnockVerifier::verify` in-process with a memory and
//!    with the redb replay store (where the time of a knock goes);
//! 1. bare receive loop under flood: `spa_capture::Capture` with the
//!    daemon's settings in green's namespace, counting events, while one
//!    sender thread blasts random 600-byte datagrams (`sendmmsg`) for 5 s;
//! 2. the daemon (fresh replay store): idle resident size;
//! 3. knock-to-open latency, 300 knocks, one at a time, each from its own
//!    source address: arrival on `g0` (`tcpdump` kernel timestamp) to the
//!    daemon's own `accepted` log line (written after the netlink batch that
//!    adds the set element was acknowledged), and to the element's
//!    `nft monitor` notification (the observer used for fwknopd too);
//! 4. the same flood against the daemon, with 100 valid knocks at 20/s from
//!    other addresses during it: CPU from `/proc/<pid>/stat`, refusals from
//!    the status counters, holes from an nftables set dump;
//! 5. valid-knock throughput: 8 identities, up to 6000 pre-sealed knocks,
//!    at most 512 outstanding (counted from the daemon's log);
//! 6. the flood again, now with the ~6000 sessions of phase 5 still open;
//! 7. resident size with 100 000 identities in the replay store (pre-filled
//!    with `ReplayDb::commit_many` before the daemon starts);
//! 8. `fwknopd` (Debian 2.6.10, iptables-nft backend) in the same
//!    namespace: 300 knocks (`fwknop --test -B` packets sent from the same
//!    addresses), arrival to the ACCEPT rule's `nft monitor` notification,
//!    with Debian's defaults (`PCAP_LOOP_SLEEP` 100 ms) and again with
//!    `PCAP_LOOP_SLEEP` 1 ms.
//!
//! Needs root, iproute2, nftables, tcpdump, fwknop-server and
//! fwknop-client. Without `--bench` (`cargo test --all-targets`) it is a
//! smoke test of the harness and the daemon: the test bed, the debug
//! daemon, 5 knocks that must each be accepted, a clean stop that removes
//! the table; no numbers. Without root it fails unless
//! `SPA_TEST_ALLOW_SKIP=1`.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    missing_docs,
    missing_debug_implementations
)]

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::IdentityKey;
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use serde_json::{Value, json};
use spa_capture::{Capture, CaptureConfig, CaptureMode, Event};
use spa_daemon::store::ReplayDb;
use tests::bench::{
    Cpu, LogTail, Monitor, Proc, Rng, accepted_times, children_cpu, clk_tck, diff, in_ns, mean,
    now_ns, packet_drops, pct, proc_cpu, proc_status, proc_threads, spawn_in, sum_prefix, task_cpu,
    wait_for_file,
};

const PORT: u16 = 62201;
const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const G_IF: &str = "g0";
const S_IF: &str = "s0";
/// Knocks per latency series.
const N_LAT: usize = 300;
/// Flood length and bound.
const FLOOD: Duration = Duration::from_secs(5);
const FLOOD_MAX: u64 = 40_000_000;
const FLOOD_LEN: usize = 600;
const SEND_BATCH: usize = 64;
/// Valid knocks during a flood, and their spacing (20/s).
const N_VALID: usize = 100;
/// Drain comparison: rounds, and datagrams queued per round (well below
/// what the 4 MiB receive buffer holds; checked by the drop counters).
const DRAIN_ROUNDS: usize = 20;
const DRAIN_K: u64 = 2000;
const VALID_EVERY: Duration = Duration::from_millis(50);
/// Throughput: identities, knocks each, window, time bound.
const T_IDS: usize = 8;
const T_PER_ID: usize = 750;
const T_WINDOW: usize = 512;
const T_MAX: Duration = Duration::from_secs(6);
/// Identities pre-filled for the memory measurement.
const N_MEM_IDS: usize = 100_000;
/// fwknop keys (test values, the same as spa-client's startup bench).
const FWK_KEY: &str = "xueqY1FsWo93zKCgGp7Pgm+f1Wk9v5TtqjOrSIa84BI=";
const FWK_HMAC: &str =
    "OXuCgb0O2yRb9/yRvK0j81oYjNEV/HQSX6BqCA6DVyd2NSorK9aTeaLJiMbcOrCRUAtCO5qo2sZDTltrFvDrwg==";

// ---------------------------------------------------------------- helpers

fn now_ms() -> u64 {
    u64::try_from(now_ns() / 1_000_000).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Latency address `i`: 10.200.1.1 … (250 a /24).
fn lat_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}
/// Addresses of the observer-free latency series: 10.200.6.1 ….
fn quiet_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 6 + (i / 250) as u8, 1 + (i % 250) as u8)
}
fn valid_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 5, 1 + i as u8)
}
fn tput_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 4, 1 + i as u8)
}
const WARMUP: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 1);
const WARMUP2: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 2);
const WARMUP3: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 3);

// ------------------------------------------------------------- test bed

struct Bed {
    g: String,
    s: String,
}

impl Bed {
    fn new() -> Self {
        let id = std::process::id();
        let bed = Bed {
            g: format!("spa-dbg-{id}"),
            s: format!("spa-dbs-{id}"),
        };
        for n in [&bed.g, &bed.s] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &bed.g, "link", "add", G_IF, "type", "veth", "peer", "name", S_IF, "netns",
            &bed.s,
        ]);
        ip(&["-n", &bed.g, "addr", "add", "10.200.0.1/16", "dev", G_IF]);
        // Every sender address, in one `ip -batch`.
        let mut batch = String::from("addr add 10.200.0.2/16 dev s0\n");
        let mut extra: Vec<Ipv4Addr> = (0..N_LAT).map(lat_addr).collect();
        extra.extend((0..N_LAT).map(quiet_addr));
        extra.extend((0..N_VALID).map(valid_addr));
        extra.extend((0..T_IDS).map(tput_addr));
        extra.extend([WARMUP, WARMUP2, WARMUP3]);
        for a in extra {
            batch.push_str(&format!("addr add {a}/16 dev s0 noprefixroute\n"));
        }
        let mut c = Command::new("ip")
            .args(["-n", &bed.s, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(batch.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "ip -batch");
        ip(&["-n", &bed.g, "link", "set", G_IF, "up"]);
        ip(&["-n", &bed.s, "link", "set", S_IF, "up"]);
        // Resolve green once, permanently: no ARP in any measurement.
        let link = ip(&["-n", &bed.g, "-o", "link", "show", G_IF]);
        let mut w = link.split_whitespace();
        let mac = w
            .find(|x| *x == "link/ether")
            .and_then(|_| w.next())
            .unwrap()
            .to_owned();
        ip(&[
            "-n",
            &bed.s,
            "neigh",
            "replace",
            "10.200.0.1",
            "lladdr",
            &mac,
            "dev",
            S_IF,
            "nud",
            "permanent",
        ]);
        thread::sleep(Duration::from_millis(200));
        bed
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for n in [&self.g, &self.s] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A UDP socket in the sender namespace, bound to `src`, connected to
/// green's knock port.
fn sender_socket(bed: &Bed, src: Ipv4Addr) -> UdpSocket {
    in_ns(&bed.s, move || {
        let s = UdpSocket::bind((src, 0)).expect("bind sender");
        s.connect((GREEN, PORT)).expect("connect");
        s
    })
    .join()
    .unwrap()
}

fn sender_sockets(bed: &Bed, srcs: Vec<Ipv4Addr>) -> Vec<UdpSocket> {
    in_ns(&bed.s, move || {
        srcs.into_iter()
            .map(|src| {
                let s = UdpSocket::bind((src, 0)).expect("bind sender");
                s.connect((GREEN, PORT)).expect("connect");
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

// ------------------------------------------------------------ knocks

struct Identity {
    signer: Box<dyn Signer + Send + Sync>,
    last_ts: u64,
}

impl Identity {
    fn new(ca: &TestCa, cn: &str, serial: u64) -> Self {
        Identity {
            signer: ca
                .signer(&ClientCertSpec::new(cn, KeyAlg::Ed25519, serial))
                .unwrap(),
            last_ts: 0,
        }
    }

    /// An open-tunnel knock for `addr` (sent from `addr`), "ssh", with a
    /// timestamp strictly above the previous one.
    fn knock(&mut self, rpk: &ReceiverPublicKey, addr: Ipv4Addr, lifetime_s: u32) -> Vec<u8> {
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        self.knock_at(rpk, addr, lifetime_s, ts)
    }

    fn knock_at(
        &self,
        rpk: &ReceiverPublicKey,
        addr: Ipv4Addr,
        lifetime_s: u32,
        ts: u64,
    ) -> Vec<u8> {
        let r = spa_keys::random_32().unwrap();
        let ikm = spa_keys::random_32().unwrap();
        let mut nonce = [0u8; 16];
        let mut session = [0u8; 16];
        nonce.copy_from_slice(&r[..16]);
        session.copy_from_slice(&r[16..]);
        seal_knock(
            &*self.signer,
            rpk,
            &KnockRequest {
                msg_type: MessageType::OpenTunnel,
                timestamp_ms: ts,
                nonce,
                session_id: session,
                lifetime_s,
                open_for: OpenFor::Addr(IpAddr::V4(addr)),
                services: &["ssh"],
            },
            *ikm,
        )
        .unwrap()
    }
}

// ------------------------------------------------------------ the daemon

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("spa-daemon-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn p(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if std::env::var_os("SPA_KEEP_BENCH_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

/// Writes a daemon configuration using replay store `db`; returns its path.
fn write_config(f: &Files, name: &str, db: &Path) -> PathBuf {
    write_config_with(f, name, db, "")
}

/// [`write_config`] with more `[daemon]` keys (`daemon_extra`, one per line).
fn write_config_with(f: &Files, name: &str, db: &Path, daemon_extra: &str) -> PathBuf {
    let text = format!(
        r#"[daemon]
knock_port = {PORT}
capture = "packet"
interface = "{G_IF}"
keys = ["{key}"]
replay_db = "{db}"
control_socket = "{ctl}"
user = "nobody"
log_format = "json"
{daemon_extra}

[trust]
anchors = ["{ca}"]

[firewall]
table = "spa"
mode = "blackhole"

[[services]]
name = "ssh"
proto = "tcp"
port = 22

[[rules]]
identity = "*"
services = ["*"]

[ips]
rate = 1000000
burst = 1000000
"#,
        key = f.p("green.key").display(),
        db = db.display(),
        ctl = f.p("control.sock").display(),
        ca = f.p("ca.pem").display(),
    );
    let p = f.p(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn start_daemon(bed: &Bed, f: &Files, cfg: &Path, log: &Path) -> Proc {
    let bin = env!("CARGO_BIN_EXE_spa-server");
    let p = spawn_in(
        &bed.g,
        &[bin, "run", "--config", cfg.to_str().unwrap()],
        log,
        "spa-server",
    );
    assert!(
        wait_for_file(log, "\"message\":\"ready\"", Duration::from_secs(20)),
        "daemon not ready: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let _ = f;
    p
}

fn status(f: &Files) -> Value {
    let r = spa_daemon::ctl::request(&f.p("control.sock"), &json!({"cmd": "status"}))
        .expect("status request");
    assert_eq!(r["ok"], true, "{r}");
    r["status"].clone()
}

fn counters(f: &Files) -> HashMap<String, u64> {
    status(f)["counters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

// ------------------------------------------------- observers: nft, tcpdump

/// `tcpdump` on green's interface, writing a capture file.
struct Tcpdump {
    p: Proc,
    file: PathBuf,
}

impl Tcpdump {
    fn start(bed: &Bed, f: &Files, name: &str) -> Self {
        let file = f.p(&format!("{name}.pcap"));
        let log = f.p(&format!("{name}.tcpdump.log"));
        let p = spawn_in(
            &bed.g,
            &[
                "tcpdump",
                "-i",
                G_IF,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "96",
                "-w",
                file.to_str().unwrap(),
                "udp dst port 62201",
            ],
            &log,
            "tcpdump",
        );
        assert!(
            wait_for_file(&log, "listening on", Duration::from_secs(10)),
            "tcpdump did not start"
        );
        Tcpdump { p, file }
    }

    /// Stops the capture; `src` → arrival (ns, kernel time stamp) of the
    /// first datagram from each source.
    fn finish(mut self) -> HashMap<Ipv4Addr, i128> {
        thread::sleep(Duration::from_millis(100));
        self.p.stop_with(Signal::SIGINT);
        let out =
            run(Command::new("tcpdump").args(["-r", self.file.to_str().unwrap(), "-n", "-tt"]));
        let mut m = HashMap::new();
        for line in out.lines() {
            let mut w = line.split_whitespace();
            let (Some(ts), Some(_ip), Some(src)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let Some((sec, frac)) = ts.split_once('.') else {
                continue;
            };
            let ns = sec.parse::<i128>().unwrap_or(0) * 1_000_000_000
                + frac.parse::<i128>().unwrap_or(0) * 10i128.pow(9 - frac.len() as u32);
            let Some((a, _port)) = src.rsplit_once('.') else {
                continue;
            };
            if let Ok(a) = a.parse::<Ipv4Addr>() {
                m.entry(a).or_insert(ns);
            }
        }
        m
    }
}

// -------------------------------------------------------------- flood

/// Sends random `FLOOD_LEN`-byte datagrams (first byte the protocol
/// version, so each costs the receiver its pre-check MAC) with `sendmmsg`
/// until `FLOOD` passes or `FLOOD_MAX` are sent. Returns (sent, elapsed).
fn flood(s: &UdpSocket) -> (u64, Duration) {
    flood_bounded(s, FLOOD, FLOOD_MAX)
}

/// [`flood`] with explicit bounds (`max` is exact: a burst of `max`).
fn flood_bounded(s: &UdpSocket, dur: Duration, max: u64) -> (u64, Duration) {
    let mut rng = Rng::seeded();
    let pool: Vec<Vec<u8>> = (0..SEND_BATCH)
        .map(|_| {
            let mut v: Vec<u8> = (0..FLOOD_LEN).map(|_| rng.next_u64() as u8).collect();
            v[0] = proto_spec::wire::VERSION;
            v
        })
        .collect();
    tests::bench::send_batches(s, &pool, max, dur)
}

#[derive(Debug, Clone, Copy)]
struct BareResult {
    events: u64,
    calls: u64,
    /// Drain rounds: frames read and CPU (schedstat) spent reading them.
    drain_frames: u64,
    drain_cpu_s: f64,
    drain_drops: u64,
    drops: u64,
    cpu: Cpu,
    sent: u64,
    send_s: f64,
}

/// Phase 1: the bare receive loop, alone in green's namespace.
fn bare_loop(bed: &Bed, tck: f64) -> BareResult {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let st = stop.clone();
    let rx_thread = in_ns(&bed.g, move || {
        // The daemon's settings (green::setup): packet mode on the
        // interface, scan watch (scan_ports > 0), 100 ms timeout, batch 32,
        // 4 MiB buffer.
        let mut cc = CaptureConfig::new(PORT);
        cc.mode = CaptureMode::Packet {
            interface: Some(G_IF.into()),
        };
        cc.scan_watch = true;
        cc.read_timeout = Duration::from_millis(100);
        let mut cap = Capture::open(&cc).expect("capture");
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let me = Path::new("/proc/thread-self");
        let c0 = task_cpu(me, tck);
        let (mut events, mut calls) = (0u64, 0u64);
        while !st.load(Ordering::Relaxed) {
            let n = cap
                .poll(|e| {
                    if matches!(e, Event::Knock { .. } | Event::Probe { .. }) {
                        events += 1;
                    }
                })
                .expect("poll");
            if n > 0 {
                calls += 1;
            }
        }
        let sustained = (
            events,
            calls,
            cap.stats().kernel_drops,
            task_cpu(me, tck) - c0,
        );
        // Drain rounds: the queue is filled while this thread waits, then
        // read back in full batches.
        let (mut dframes, mut dcpu) = (0u64, 0.0f64);
        let drops0 = cap.stats().kernel_drops;
        for _ in 0..DRAIN_ROUNDS {
            go_rx.recv().unwrap();
            let c0 = task_cpu(me, tck);
            while cap.poll(|_| dframes += 1).expect("poll") > 0 {}
            dcpu += (task_cpu(me, tck) - c0).sched_s;
            ready_tx.send(()).unwrap();
        }
        (
            sustained,
            (dframes, dcpu, cap.stats().kernel_drops - drops0),
        )
    });
    ready_rx.recv().unwrap();
    let s = sender_socket(bed, FLOODER);
    go_tx.send(()).unwrap();
    let (sent, el) = flood(&s);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for _ in 0..DRAIN_ROUNDS {
        flood_bounded(&s, Duration::from_secs(5), DRAIN_K);
        thread::sleep(Duration::from_millis(30));
        go_tx.send(()).unwrap();
        ready_rx.recv().unwrap();
    }
    let ((events, calls, drops, cpu), (drain_frames, drain_cpu_s, drain_drops)) =
        rx_thread.join().unwrap();
    BareResult {
        events,
        calls,
        drain_frames,
        drain_cpu_s,
        drain_drops,
        drops,
        cpu,
        sent,
        send_s: el.as_secs_f64(),
    }
}

#[derive(Debug, Clone)]
struct FloodResult {
    sent: u64,
    send_s: f64,
    cpu: Cpu,
    wall_s: f64,
    refused: u64,
    counters: HashMap<String, u64>,
    valid_sent: usize,
    valid_accepted: u64,
    valid_holes: usize,
    sessions_before: usize,
    /// Frames the daemon's packet socket dropped (queue full) during the
    /// flood.
    socket_drops: u64,
}

/// Phases 4 and 6: the flood against the daemon, with `N_VALID` valid
/// knocks at 20/s from `valid_addr(..)` (offset `vofs` in the 10.200.5.x
/// range is not reused: the second flood sends from the same addresses,
/// whose elements are then refreshed, counted by accepted only).
fn daemon_flood(
    bed: &Bed,
    f: &Files,
    daemon: &Proc,
    id: &mut Identity,
    rpk: &ReceiverPublicKey,
    tck: f64,
    count_holes: bool,
) -> FloodResult {
    let sessions_before = status(f)["sessions"].as_array().map_or(0, Vec::len);
    let fs = sender_socket(bed, FLOODER);
    let vs = sender_sockets(bed, (0..N_VALID).map(valid_addr).collect());
    let before = counters(f);
    let drops0 = packet_drops(&bed.g, daemon.pid()).unwrap_or(0);
    let c0 = proc_cpu(daemon.pid(), tck);
    let t0 = Instant::now();
    let flooder = thread::spawn(move || flood(&fs));
    // Valid knocks from this thread, sealed just before each send.
    let mut valid_sent = 0;
    let start = Instant::now();
    for (i, s) in vs.iter().enumerate() {
        let due = start + VALID_EVERY * u32::try_from(i).unwrap();
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        let k = id.knock(rpk, valid_addr(i), 60);
        if s.send(&k).is_ok() {
            valid_sent += 1;
        }
    }
    let (sent, el) = flooder.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    let cpu = proc_cpu(daemon.pid(), tck) - c0;
    let wall_s = t0.elapsed().as_secs_f64();
    let after = counters(f);
    let socket_drops = packet_drops(&bed.g, daemon.pid()).unwrap_or(0) - drops0;
    let d = diff(&after, &before);
    let refused = sum_prefix(&d, "refused.");
    let valid_accepted = sum_prefix(&d, "accepted.");
    let valid_holes = if count_holes {
        let g = bed.g.clone();
        let set = in_ns(&g, || spa_nft::list("spa").expect("list sets"))
            .join()
            .unwrap();
        set.allow
            .iter()
            .filter(|e| matches!(e.addr, IpAddr::V4(a) if a.octets()[2] == 5 && e.port == 22))
            .count()
    } else {
        0
    };
    FloodResult {
        sent,
        send_s: el.as_secs_f64(),
        cpu,
        wall_s,
        refused,
        counters: d,
        valid_sent,
        valid_accepted,
        valid_holes,
        sessions_before,
        socket_drops,
    }
}

/// The daemon's side of the drain comparison: SIGSTOP, queue `DRAIN_K`
/// random datagrams, SIGCONT, let it read them back in full batches.
/// Returns (frames refused, CPU seconds by schedstat, socket drops).
fn daemon_drain(bed: &Bed, f: &Files, daemon: &Proc) -> (u64, f64, u64) {
    let s = sender_socket(bed, FLOODER);
    let pid = Pid::from_raw(daemon.pid());
    let before = counters(f);
    let drops0 = packet_drops(&bed.g, daemon.pid()).unwrap_or(0);
    let mut cpu = 0.0;
    for _ in 0..DRAIN_ROUNDS {
        kill(pid, Signal::SIGSTOP).unwrap();
        thread::sleep(Duration::from_millis(5));
        flood_bounded(&s, Duration::from_secs(5), DRAIN_K);
        thread::sleep(Duration::from_millis(30));
        let c0 = proc_cpu(daemon.pid(), 100.0);
        kill(pid, Signal::SIGCONT).unwrap();
        thread::sleep(Duration::from_millis(60));
        cpu += (proc_cpu(daemon.pid(), 100.0) - c0).sched_s;
    }
    let d = diff(&counters(f), &before);
    let drops = packet_drops(&bed.g, daemon.pid()).unwrap_or(0) - drops0;
    (sum_prefix(&d, "refused."), cpu, drops)
}

struct Tput {
    sent: usize,
    accepted: u64,
    wall_s: f64,
    cpu: Cpu,
    seal_s: f64,
    counters: HashMap<String, u64>,
}

/// Phase 5: `T_IDS` identities (`<prefix>0`…), `T_PER_ID` knocks each,
/// sealed beforehand, sent round-robin from `tput_addr(i)` with at most
/// `T_WINDOW` not yet accepted (accepted lines counted in the daemon's
/// log), for at most `T_MAX`.
#[allow(clippy::too_many_arguments)]
fn throughput(
    bed: &Bed,
    f: &Files,
    daemon: &Proc,
    ca: &TestCa,
    rpk: &ReceiverPublicKey,
    dlog: &Path,
    tck: f64,
    prefix: &str,
) -> Tput {
    let ids: Vec<Identity> = (0..T_IDS)
        .map(|i| Identity::new(ca, &format!("{prefix}{i}"), 10 + i as u64))
        .collect();
    let t_seal = Instant::now();
    let base = now_ms() + 200;
    let mut knocks: Vec<(usize, Vec<u8>)> = Vec::with_capacity(T_IDS * T_PER_ID);
    for j in 0..T_PER_ID {
        for (i, id) in ids.iter().enumerate() {
            knocks.push((i, id.knock_at(rpk, tput_addr(i), 30, base + j as u64)));
        }
    }
    let seal_s = t_seal.elapsed().as_secs_f64();
    let socks = sender_sockets(bed, (0..T_IDS).map(tput_addr).collect());
    let before = counters(f);
    let mut tail = LogTail::open(dlog);
    let needle = b"\"message\":\"accepted\"";
    let c0 = proc_cpu(daemon.pid(), tck);
    let t0 = Instant::now();
    let (mut sent, mut seen) = (0usize, 0usize);
    for (i, k) in &knocks {
        if t0.elapsed() > T_MAX {
            break;
        }
        while sent - seen >= T_WINDOW {
            seen += tail.count_new(needle);
            if sent - seen >= T_WINDOW {
                thread::sleep(Duration::from_micros(200));
            }
        }
        socks[*i].send(k).unwrap();
        sent += 1;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while seen < sent && Instant::now() < drain_deadline {
        seen += tail.count_new(needle);
        thread::sleep(Duration::from_micros(200));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu(daemon.pid(), tck) - c0;
    let td = diff(&counters(f), &before);
    Tput {
        sent,
        accepted: sum_prefix(&td, "accepted."),
        wall_s,
        cpu,
        seal_s,
        counters: td,
    }
}

// ------------------------------------------------------------ latency

#[derive(Debug, Default)]
struct Latency {
    /// arrival → daemon log (spa only), µs.
    to_log: Vec<f64>,
    /// arrival → nft monitor notification, µs.
    to_monitor: Vec<f64>,
    /// send → nft monitor notification, µs.
    send_to_monitor: Vec<f64>,
    /// daemon log → monitor, µs (observer delay bound).
    log_to_monitor: Vec<f64>,
    missing: usize,
}

fn summarize(name: &str, v: &[f64]) -> Value {
    if v.is_empty() {
        return json!({"series": name, "n": 0});
    }
    let r = json!({
        "series": name,
        "n": v.len(),
        "p50_us": pct(v, 0.50),
        "p90_us": pct(v, 0.90),
        "p99_us": pct(v, 0.99),
        "max_us": pct(v, 1.0),
        "mean_us": mean(v),
    });
    println!(
        "  {name:<42} n={:>3}  p50 {:>9.1} us  p90 {:>9.1} us  p99 {:>9.1} us  max {:>9.1} us",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        pct(v, 1.0)
    );
    r
}

/// Sends knocks one at a time (`payload(i)` from `lat_addr(i)`), each
/// after the previous one's element or rule was seen, with a random pause
/// in `jitter_ms` before each.
fn latency_series(
    bed: &Bed,
    f: &Files,
    name: &str,
    mut payload: impl FnMut(usize) -> Vec<u8>,
    warmup: (Ipv4Addr, Vec<u8>),
    jitter_ms: (u64, u64),
    daemon_log: Option<&Path>,
) -> Latency {
    let socks = sender_sockets(bed, (0..N_LAT).map(lat_addr).collect());
    let wsock = sender_socket(bed, warmup.0);
    let mut mon = Monitor::start(&bed.g);
    let dump = Tcpdump::start(bed, f, name);
    // Warm-up (first-time certificate validation, caches, page faults):
    // not measured.
    wsock.send(&warmup.1).unwrap();
    assert!(
        mon.wait_for(warmup.0, Duration::from_secs(5)).is_some(),
        "{name}: warm-up knock did not open"
    );
    let mut rng = Rng::seeded();
    let mut sent_at = Vec::with_capacity(N_LAT);
    let mut seen_at = Vec::with_capacity(N_LAT);
    for (i, s) in socks.iter().enumerate() {
        let (lo, hi) = jitter_ms;
        thread::sleep(Duration::from_micros(
            1000 * lo + rng.below(1000 * (hi - lo)),
        ));
        let k = payload(i);
        let t = now_ns();
        s.send(&k).unwrap();
        sent_at.push(t);
        seen_at.push(mon.wait_for(lat_addr(i), Duration::from_secs(3)));
    }
    let arrivals = dump.finish();
    let logs = daemon_log.map(accepted_times).unwrap_or_default();
    let mut l = Latency::default();
    for i in 0..N_LAT {
        let a = lat_addr(i);
        let (Some(arr), Some(mon_t)) = (arrivals.get(&a).copied(), seen_at[i]) else {
            l.missing += 1;
            continue;
        };
        l.to_monitor.push((mon_t - arr) as f64 / 1e3);
        l.send_to_monitor.push((mon_t - sent_at[i]) as f64 / 1e3);
        if let Some(&lg) = logs.get(&a) {
            l.to_log.push((lg - arr) as f64 / 1e3);
            l.log_to_monitor.push((mon_t - lg) as f64 / 1e3);
        }
    }
    l
}

/// The same knocks without any observer (no tcpdump, no nft monitor):
/// send() → the daemon's `accepted` line, waiting for each line in the log
/// before the next knock. Returns µs per knock.
fn latency_quiet(
    bed: &Bed,
    dlog: &Path,
    n: usize,
    mut payload: impl FnMut(usize) -> Vec<u8>,
) -> Vec<f64> {
    let socks = sender_sockets(bed, (0..n).map(quiet_addr).collect());
    let mut tail = LogTail::open(dlog);
    let needle = b"\"message\":\"accepted\"";
    let mut rng = Rng::seeded();
    let mut sent_at = Vec::with_capacity(n);
    for (i, s) in socks.iter().enumerate() {
        thread::sleep(Duration::from_micros(1000 + rng.below(3000)));
        let k = payload(i);
        let t = now_ns();
        s.send(&k).unwrap();
        sent_at.push(t);
        let deadline = Instant::now() + Duration::from_secs(3);
        while tail.count_new(needle) == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(200));
        }
    }
    let logs = accepted_times(dlog);
    (0..n)
        .filter_map(|i| {
            logs.get(&quiet_addr(i))
                .map(|&lg| (lg - sent_at[i]) as f64 / 1e3)
        })
        .collect()
}

// ------------------------------------------------------------ fwknopd

fn fwknop_packets(f: &Files, tag: &str, addrs: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let file = f.p(&format!("fwk-{tag}-{i}.pkt"));
            let st = Command::new("fwknop")
                .args(["-A", "tcp/22", "-a", &a.to_string(), "-D", "10.200.0.1"])
                .args(["--use-hmac", "--key-base64-rijndael", FWK_KEY])
                .args(["--key-base64-hmac", FWK_HMAC, "--no-save-args", "--test"])
                .arg("--rc-file")
                .arg(f.p("fwknoprc"))
                .arg("-B")
                .arg(&file)
                .env("HOME", &f.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run fwknop (apt-get install fwknop-client)");
            assert!(st.success(), "fwknop --test failed");
            std::fs::read_to_string(&file)
                .unwrap()
                .trim()
                .as_bytes()
                .to_vec()
        })
        .collect()
}

fn start_fwknopd(bed: &Bed, f: &Files, tag: &str, loop_sleep_us: Option<u32>) -> Proc {
    let run_dir = f.p(&format!("fwknop-run-{tag}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let conf = f.p(&format!("fwknopd-{tag}.conf"));
    let mut text = format!("PCAP_INTF {G_IF};\nFWKNOP_RUN_DIR {};\n", run_dir.display());
    if let Some(us) = loop_sleep_us {
        text.push_str(&format!("PCAP_LOOP_SLEEP {us};\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let access = f.p("access.conf");
    std::fs::write(
        &access,
        format!(
            "SOURCE ANY\nKEY_BASE64 {FWK_KEY}\nHMAC_KEY_BASE64 {FWK_HMAC}\nFW_ACCESS_TIMEOUT 30\n"
        ),
    )
    .unwrap();
    for p in [&conf, &access] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let log = f.p(&format!("fwknopd-{tag}.log"));
    let p = spawn_in(
        &bed.g,
        &[
            "fwknopd",
            "-f",
            "-c",
            conf.to_str().unwrap(),
            "-a",
            access.to_str().unwrap(),
            "-d",
            run_dir.join("digest.cache").to_str().unwrap(),
            "-p",
            run_dir.join("fwknopd.pid").to_str().unwrap(),
        ],
        &log,
        "fwknopd",
    );
    // Ready once its chain is hooked into INPUT; then give pcap a moment.
    let t = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &bed.g, "iptables", "-S", "INPUT"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("-j FWKNOP_INPUT") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "fwknopd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    p
}

// ------------------------------------------------------------ phase 0

fn crypto_floor() -> f64 {
    let secret = x25519_dalek::StaticSecret::from(testkit::seed("floor x25519 secret"));
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(testkit::seed(
        "floor x25519 peer",
    )));
    let sk = ed25519_dalek::SigningKey::from_bytes(&testkit::seed("floor ed25519"));
    let vk = sk.verifying_key();
    let mut rng = Rng(7);
    let msg: Vec<u8> = (0..600).map(|_| rng.next_u64() as u8).collect();
    let sig = ed25519_dalek::Signer::sign(&sk, &msg);
    let mut batches = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..300 {
            let ss = std::hint::black_box(&secret).diffie_hellman(std::hint::black_box(&peer));
            let ok = std::hint::black_box(&vk)
                .verify_strict(std::hint::black_box(&msg), std::hint::black_box(&sig))
                .is_ok();
            std::hint::black_box((ss.to_bytes()[0], ok));
        }
        batches.push(t.elapsed().as_secs_f64() / 300.0 * 1e6);
    }
    pct(&batches, 0.5)
}

/// In-process `KnockVerifier::verify` of a cached-certificate knock.
#[derive(Debug, Clone, Copy)]
struct Inproc {
    /// Memory replay state: mean wall time per call, µs.
    mem_us: f64,
    /// redb store (one durable commit, fsync, per knock): mean, p50, p99
    /// wall time per call and CPU per call (this thread's schedstat), µs.
    db_us: f64,
    db_p50_us: f64,
    db_p99_us: f64,
    db_cpu_us: f64,
}

fn inprocess_verify(ca: &TestCa, f: &Files, rpk: &ReceiverPublicKey) -> Inproc {
    use proto_spec::cert::{TrustConfig, TrustStore};
    use proto_spec::replay::MemoryReplayState;
    use proto_spec::verify::KnockVerifier;
    let cfg = spa_daemon::config::load(&f.p("daemon.toml")).unwrap();
    let mk = || {
        KnockVerifier::new(
            vec![testkit::receiver_key("green daemon bench")],
            TrustStore::new(&TrustConfig {
                anchors: vec![ca.cert_der().to_vec()],
                ..TrustConfig::default()
            })
            .unwrap(),
            spa_daemon::start::policy(&cfg),
            spa_daemon::start::limits(&cfg),
        )
    };
    let id = Identity::new(ca, "inproc", 90);
    let src = Ipv4Addr::new(10, 200, 9, 9);
    let n = 300;
    let base = now_ms();
    let knocks: Vec<Vec<u8>> = (0..=n)
        .map(|i| id.knock_at(rpk, src, 30, base + i as u64))
        .collect();
    let now = base + n as u64;
    // Memory.
    let mut v = mk();
    let mut mem = MemoryReplayState::with_global_floor(base - 1000);
    v.verify(&knocks[0], IpAddr::V4(src), now, &mut mem)
        .unwrap();
    let t = Instant::now();
    for k in &knocks[1..] {
        v.verify(k, IpAddr::V4(src), now, &mut mem).unwrap();
    }
    let mem_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    // redb, on the same file system as the daemon's store.
    let mut v = mk();
    let (mut db, _) = ReplayDb::open(&f.p("inproc.redb"), base - 1000).unwrap();
    v.verify(&knocks[0], IpAddr::V4(src), now, &mut db).unwrap();
    let me = Path::new("/proc/thread-self");
    let mut per = Vec::with_capacity(n);
    let c0 = task_cpu(me, 100.0);
    let t = Instant::now();
    for k in &knocks[1..] {
        let t1 = Instant::now();
        v.verify(k, IpAddr::V4(src), now, &mut db).unwrap();
        per.push(t1.elapsed().as_secs_f64() * 1e6);
    }
    let db_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    let db_cpu_us = (task_cpu(me, 100.0) - c0).sched_s / n as f64 * 1e6;
    Inproc {
        mem_us,
        db_us,
        db_p50_us: pct(&per, 0.5),
        db_p99_us: pct(&per, 0.99),
        db_cpu_us,
    }
}

// ------------------------------------------------------------ main

/// Without `--bench`: the bed, the daemon, 5 knocks each accepted, a clean
/// stop.
fn smoke(f: &Files, cfg: &Path, ca: &TestCa, rpk: &ReceiverPublicKey) {
    const KNOCKS: usize = 5;
    let bed = Bed::new();
    let dlog = f.p("daemon.log");
    let mut daemon = start_daemon(&bed, f, cfg, &dlog);
    let mut alice = Identity::new(ca, "alice", 1);
    latency_quiet(&bed, &dlog, KNOCKS, |i| alice.knock(rpk, quiet_addr(i), 10));
    // A knock's log line may come after latency_quiet's per-knock wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_times(&dlog).len() < KNOCKS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        accepted_times(&dlog).len(),
        KNOCKS,
        "daemon bench smoke test: knocks not accepted; log:\n{}",
        std::fs::read_to_string(&dlog).unwrap_or_default()
    );
    daemon.stop();
    let tables = run(Command::new("ip").args(["netns", "exec", &bed.g, "nft", "list", "tables"]));
    assert!(
        !tables.contains("inet spa"),
        "daemon bench smoke test: the table outlived the daemon: {tables}"
    );
    println!("daemon bench: smoke test passed ({KNOCKS} knocks accepted, clean stop)");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

#[path = "daemon/disk_load.rs"]
mod disk_load;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !is_root() {
        tests::cannot_run(
            "daemon bench",
            "needs root (network namespaces, nftables, AF_PACKET)",
        );
        return;
    }
    if bench && std::env::var_os("SPA_BENCH_DISK").is_some() {
        disk_load::main();
        return;
    }
    let t_all = Instant::now();
    let tck = clk_tck();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", loadavg.trim());
    let mut report = serde_json::Map::new();

    // Files: receiver key, CA, configuration.
    let f = Files::new();
    let rsk = testkit::receiver_key("green daemon bench");
    let rpk = rsk.public_key();
    spa_keys::write_receiver_key(&f.p("green.key"), &rsk, true).unwrap();
    let ca = TestCa::new("spa daemon bench root").unwrap();
    std::fs::write(
        f.p("ca.pem"),
        spa_keys::pem_encode("CERTIFICATE", ca.cert_der()),
    )
    .unwrap();
    let cfg = write_config(&f, "daemon.toml", &f.p("replay.redb"));
    if !bench {
        smoke(&f, &cfg, &ca, &rpk);
        return;
    }

    // 0. Floor and in-process verification.
    let floor_us = crypto_floor();
    let ip0 = inprocess_verify(&ca, &f, &rpk);
    println!(
        "[0] crypto floor (X25519 + Ed25519 verify_strict 600 B): {floor_us:.1} us; \
         KnockVerifier::verify cached: {:.1} us (memory replay); with the redb store \
         (fsync per commit): mean {:.1} us, p50 {:.1} us, p99 {:.1} us, CPU {:.1} us per knock",
        ip0.mem_us, ip0.db_us, ip0.db_p50_us, ip0.db_p99_us, ip0.db_cpu_us
    );
    report.insert(
        "floor".into(),
        json!({"floor_us": floor_us, "verify_memory_us": ip0.mem_us, "verify_redb_us": ip0.db_us,
               "verify_redb_p50_us": ip0.db_p50_us, "verify_redb_p99_us": ip0.db_p99_us,
               "verify_redb_cpu_us": ip0.db_cpu_us}),
    );

    let bed = Bed::new();

    // 1. Bare receive loop.
    let bare = bare_loop(&bed, tck);
    let bare_rate = bare.events as f64 / bare.cpu.stat_s;
    let bare_rate_sched = bare.events as f64 / bare.cpu.sched_s;
    println!(
        "[1] bare loop: sent {} in {:.2} s ({:.0}/s); received {} ({:.0}/s, {:.1} per recvmmsg), \
         kernel drops {}; CPU {:.2} s (stat) / {:.3} s (schedstat): {:.0} events per CPU-s \
         ({:.0} by schedstat)",
        bare.sent,
        bare.send_s,
        bare.sent as f64 / bare.send_s,
        bare.events,
        bare.events as f64 / bare.send_s,
        bare.events as f64 / bare.calls.max(1) as f64,
        bare.drops,
        bare.cpu.stat_s,
        bare.cpu.sched_s,
        bare_rate,
        bare_rate_sched
    );
    report.insert(
        "bare_loop".into(),
        json!({"sent": bare.sent, "send_s": bare.send_s, "events": bare.events, "recv_calls": bare.calls,
               "kernel_drops": bare.drops, "cpu_stat_s": bare.cpu.stat_s,
               "cpu_sched_s": bare.cpu.sched_s, "events_per_cpu_s": bare_rate,
               "events_per_cpu_s_sched": bare_rate_sched, "drain_frames": bare.drain_frames,
               "drain_cpu_s": bare.drain_cpu_s, "drain_drops": bare.drain_drops}),
    );
    let bare_drain_us = 1e6 * bare.drain_cpu_s / bare.drain_frames.max(1) as f64;
    println!(
        "    bare loop drain: {} frames ({DRAIN_ROUNDS} x {DRAIN_K} queued, read in full batches) \
         in {:.4} s CPU: {bare_drain_us:.3} us per frame; drops {}",
        bare.drain_frames, bare.drain_cpu_s, bare.drain_drops
    );

    // 2. The daemon, fresh store: idle memory.
    let dlog = f.p("daemon.log");
    let mut daemon = start_daemon(&bed, &f, &cfg, &dlog);
    thread::sleep(Duration::from_millis(500));
    let rss_idle = proc_status(daemon.pid(), "VmRSS:");
    let hwm_idle = proc_status(daemon.pid(), "VmHWM:");
    let threads = proc_threads(daemon.pid());
    println!(
        "[2] daemon idle (fresh store): VmRSS {rss_idle} kB, VmHWM {hwm_idle} kB, {threads} thread(s)"
    );

    // 3. Latency.
    let mut alice = Identity::new(&ca, "alice", 1);
    let warm = alice.knock(&rpk, WARMUP, 10);
    let lat = {
        let rpk2 = &rpk;
        let a = &mut alice;
        latency_series(
            &bed,
            &f,
            "spa-latency",
            |i| a.knock(rpk2, lat_addr(i), 10),
            (WARMUP, warm),
            (1, 4),
            Some(&dlog),
        )
    };
    println!(
        "[3] spa-server knock-to-open latency ({} missing):",
        lat.missing
    );
    let lat_json = json!([
        summarize("spa: arrival -> accepted log line", &lat.to_log),
        summarize("spa: arrival -> nft monitor event", &lat.to_monitor),
        summarize("spa: send() -> nft monitor event", &lat.send_to_monitor),
        summarize("spa: accepted log line -> nft monitor", &lat.log_to_monitor),
    ]);
    let quiet = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_quiet(&bed, &dlog, N_LAT, |i| a.knock(rpk2, quiet_addr(i), 10))
    };
    let quiet_json = summarize("spa, no observers: send() -> accepted log", &quiet);
    let rss_after_lat = proc_status(daemon.pid(), "VmRSS:");

    // 4. Flood with valid knocks.
    let mut vid = Identity::new(&ca, "valid", 2);
    let fl = daemon_flood(&bed, &f, &daemon, &mut vid, &rpk, tck, true);
    let fl_rate = fl.refused as f64 / fl.cpu.stat_s;
    let fl_rate_sched = fl.refused as f64 / fl.cpu.sched_s;
    println!(
        "[4] flood: sent {} in {:.2} s ({:.0}/s); daemon refused {} ({:.0}/s over {:.2} s), \
         CPU {:.2} s stat / {:.3} s sched ({:.0}% of wall): {:.0} refused per CPU-s \
         ({:.0} sched) = {:.1}% of the bare loop ({:.1}% sched); socket drops {}; valid knocks \
         sent {}, accepted {}, holes {} ({} sessions open before); counters {:?}",
        fl.sent,
        fl.send_s,
        fl.sent as f64 / fl.send_s,
        fl.refused,
        fl.refused as f64 / fl.wall_s,
        fl.wall_s,
        fl.cpu.stat_s,
        fl.cpu.sched_s,
        100.0 * fl.cpu.stat_s / fl.wall_s,
        fl_rate,
        fl_rate_sched,
        100.0 * fl_rate / bare_rate,
        100.0 * fl_rate_sched / bare_rate_sched,
        fl.socket_drops,
        fl.valid_sent,
        fl.valid_accepted,
        fl.valid_holes,
        fl.sessions_before,
        fl.counters
    );

    let (dd_frames, dd_cpu, dd_drops) = daemon_drain(&bed, &f, &daemon);
    let dd_us = 1e6 * dd_cpu / dd_frames.max(1) as f64;
    println!(
        "    daemon drain: {dd_frames} refused ({DRAIN_ROUNDS} x {DRAIN_K} queued while stopped) in \
         {dd_cpu:.4} s CPU: {dd_us:.3} us per datagram = {:.1}% of the bare loop's rate; drops {dd_drops}",
        100.0 * bare_drain_us / dd_us
    );

    // 5. Throughput.
    let floor_rate = 1e6 / floor_us;
    let tp = throughput(&bed, &f, &daemon, &ca, &rpk, &dlog, tck, "t");
    let (t_acc, t_cpu, t_wall, sent) = (tp.accepted, tp.cpu, tp.wall_s, tp.sent);
    let t_rate = t_acc as f64 / t_cpu.stat_s;
    let t_rate_sched = t_acc as f64 / t_cpu.sched_s;
    println!(
        "[5] throughput: sealed {} knocks in {:.2} s; sent {sent}, accepted {t_acc} in \
         {t_wall:.2} s ({:.0}/s wall); daemon CPU {:.2} s stat / {:.3} s sched: {t_rate:.0} \
         knocks per CPU-s ({t_rate_sched:.0} sched) = {:.3} x the floor rate {floor_rate:.0}/s \
         ({:.3} sched); per knock {:.1} us CPU; counters {:?}",
        T_IDS * T_PER_ID,
        tp.seal_s,
        t_acc as f64 / t_wall,
        t_cpu.stat_s,
        t_cpu.sched_s,
        t_rate / floor_rate,
        t_rate_sched / floor_rate,
        1e6 * t_cpu.sched_s / t_acc as f64,
        tp.counters,
    );
    let rss_after_tput = proc_status(daemon.pid(), "VmRSS:");

    // 6. The flood again, with the throughput phase's sessions open.
    let fl2 = daemon_flood(&bed, &f, &daemon, &mut vid, &rpk, tck, false);
    let fl2_rate = fl2.refused as f64 / fl2.cpu.stat_s;
    let fl2_rate_sched = fl2.refused as f64 / fl2.cpu.sched_s;
    println!(
        "[6] flood with {} sessions open: sent {} ({:.0}/s); refused {}; CPU {:.2} s stat / \
         {:.3} s sched: {:.0} refused per CPU-s ({:.0} sched) = {:.1}% of the bare loop \
         ({:.1}% sched); socket drops {}; valid sent {}, accepted {}",
        fl2.sessions_before,
        fl2.sent,
        fl2.sent as f64 / fl2.send_s,
        fl2.refused,
        fl2.cpu.stat_s,
        fl2.cpu.sched_s,
        fl2_rate,
        fl2_rate_sched,
        100.0 * fl2_rate / bare_rate,
        100.0 * fl2_rate_sched / bare_rate_sched,
        fl2.socket_drops,
        fl2.valid_sent,
        fl2.valid_accepted,
    );
    let (dd2_frames, dd2_cpu, dd2_drops) = daemon_drain(&bed, &f, &daemon);
    let dd2_us = 1e6 * dd2_cpu / dd2_frames.max(1) as f64;
    println!(
        "    daemon drain with the sessions open: {dd2_frames} refused in {dd2_cpu:.4} s CPU: \
         {dd2_us:.3} us per datagram = {:.1}% of the bare loop's rate; drops {dd2_drops}",
        100.0 * bare_drain_us / dd2_us
    );
    let rss_end = proc_status(daemon.pid(), "VmRSS:");
    let hwm_end = proc_status(daemon.pid(), "VmHWM:");

    daemon.stop();
    let tables = run(Command::new("ip").args(["netns", "exec", &bed.g, "nft", "list", "tables"]));
    let table_removed = !tables.contains("inet spa");

    // 7. Memory with 100 000 identities.
    let db_path = f.p("replay-100k.redb");
    let t_fill = Instant::now();
    {
        let now = now_ms();
        let (mut db, _) = ReplayDb::open(&db_path, now - 10_000).unwrap();
        let mut rng = Rng::seeded();
        let entries: Vec<(IdentityKey, u64)> = (0..N_MEM_IDS)
            .map(|_| {
                let mut k = [0u8; 32];
                for c in k.chunks_mut(8) {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                (IdentityKey(k), now - rng.below(5_000))
            })
            .collect();
        db.commit_many(&entries).unwrap();
    }
    let fill_s = t_fill.elapsed().as_secs_f64();
    let db_size = std::fs::metadata(&db_path).map_or(0, |m| m.len());
    let cfg100k = write_config(&f, "daemon-100k.toml", &db_path);
    let dlog2 = f.p("daemon-100k.log");
    let t_start = Instant::now();
    let mut d2 = start_daemon(&bed, &f, &cfg100k, &dlog2);
    let start_s = t_start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let rss_100k = proc_status(d2.pid(), "VmRSS:");
    let hwm_100k = proc_status(d2.pid(), "VmHWM:");
    let loaded = std::fs::read_to_string(&dlog2)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("replay state loaded"))
        .unwrap_or("")
        .to_owned();
    d2.stop();
    println!(
        "[7] memory: idle {rss_idle} kB (VmHWM {hwm_idle}); after latency {rss_after_lat} kB; \
         after throughput {rss_after_tput} kB; end {rss_end} kB (VmHWM {hwm_end}); \
         100k identities: {rss_100k} kB (VmHWM {hwm_100k}), store {db_size} bytes filled in \
         {fill_s:.2} s, daemon start to ready {start_s:.2} s; {loaded}"
    );
    println!("    table removed on SIGTERM: {table_removed}");

    // 7b. Attribution only: the replay store on tmpfs (fsync returns at
    // once; not a valid deployment, the floors would not survive a reboot).
    let shm = PathBuf::from(format!(
        "/dev/shm/spa-daemon-bench-{}.redb",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&shm);
    let cfg_shm = write_config(&f, "daemon-tmpfs.toml", &shm);
    let dlog3 = f.p("daemon-tmpfs.log");
    let mut d3 = start_daemon(&bed, &f, &cfg_shm, &dlog3);
    let warm3 = alice.knock(&rpk, WARMUP3, 10);
    let lat_shm = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_series(
            &bed,
            &f,
            "spa-latency-tmpfs",
            |i| a.knock(rpk2, lat_addr(i), 10),
            (WARMUP3, warm3),
            (1, 4),
            Some(&dlog3),
        )
    };
    let quiet_shm = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_quiet(&bed, &dlog3, N_LAT, |i| a.knock(rpk2, quiet_addr(i), 10))
    };
    println!("[7b] replay store on tmpfs (attribution only): latency");
    let lat_shm_json = json!([
        summarize("spa tmpfs: arrival -> accepted log line", &lat_shm.to_log),
        summarize(
            "spa tmpfs: arrival -> nft monitor event",
            &lat_shm.to_monitor
        ),
        summarize("spa tmpfs, no observers: send() -> log", &quiet_shm),
    ]);
    let tp_shm = throughput(&bed, &f, &d3, &ca, &rpk, &dlog3, tck, "u");
    println!(
        "     throughput: accepted {} of {} in {:.2} s ({:.0}/s wall), CPU {:.3} s sched: \
         {:.0} knocks per CPU-s = {:.3} x floor; per knock {:.1} us CPU",
        tp_shm.accepted,
        tp_shm.sent,
        tp_shm.wall_s,
        tp_shm.accepted as f64 / tp_shm.wall_s,
        tp_shm.cpu.sched_s,
        tp_shm.accepted as f64 / tp_shm.cpu.sched_s,
        tp_shm.accepted as f64 / tp_shm.cpu.sched_s / floor_rate,
        1e6 * tp_shm.cpu.sched_s / tp_shm.accepted as f64,
    );
    d3.stop();
    let _ = std::fs::remove_file(&shm);
    report.insert(
        "tmpfs_store_attribution".into(),
        json!({"latency": lat_shm_json, "throughput": {"sent": tp_shm.sent, "accepted": tp_shm.accepted,
               "wall_s": tp_shm.wall_s, "cpu_sched_s": tp_shm.cpu.sched_s,
               "per_cpu_s": tp_shm.accepted as f64 / tp_shm.cpu.sched_s,
               "ratio_to_floor": tp_shm.accepted as f64 / tp_shm.cpu.sched_s / floor_rate}}),
    );

    // 8. fwknopd, Debian defaults, then PCAP_LOOP_SLEEP 1 ms.
    let mut fwk = Vec::new();
    for (tag, sleep_us, jitter) in [
        ("default", None, (2u64, 112u64)),
        ("sleep1ms", Some(1000u32), (2, 6)),
    ] {
        let mut addrs: Vec<Ipv4Addr> = (0..N_LAT).map(lat_addr).collect();
        addrs.push(WARMUP2);
        let t_gen = Instant::now();
        let mut pkts = fwknop_packets(&f, tag, &addrs);
        let gen_s = t_gen.elapsed().as_secs_f64();
        let warm = pkts.pop().unwrap();
        let mut fd = start_fwknopd(&bed, &f, tag, sleep_us);
        let l = latency_series(
            &bed,
            &f,
            &format!("fwknopd-{tag}"),
            |i| pkts[i].clone(),
            (WARMUP2, warm),
            jitter,
            None,
        );
        let fcpu = proc_cpu(fd.pid(), tck);
        let fchild = children_cpu(fd.pid(), tck);
        let frss = proc_status(fd.pid(), "VmRSS:");
        fd.stop();
        println!(
            "[8] fwknopd ({tag}; {N_LAT} packets generated in {gen_s:.2} s; {} missing; \
             VmRSS {frss} kB; CPU from its start to the end of the series: {:.2} s itself, \
             {fchild:.2} s its iptables children):",
            l.missing, fcpu.stat_s
        );
        fwk.push((
            tag,
            summarize(
                &format!("fwknopd {tag}: arrival -> nft monitor"),
                &l.to_monitor,
            ),
            summarize(
                &format!("fwknopd {tag}: send() -> nft monitor"),
                &l.send_to_monitor,
            ),
            l,
            frss,
        ));
    }

    // Summary.
    let spa_mon = pct(&lat.to_monitor, 0.5);
    let spa_log50 = pct(&lat.to_log, 0.5);
    let spa_log99 = pct(&lat.to_log, 0.99);
    println!("\n== summary ==");
    println!(
        "latency arrival -> element (daemon log): p50 {spa_log50:.1} us [{}], p99 {spa_log99:.1} us [{}]",
        if spa_log50 <= 500.0 {
            "PASS <= 500"
        } else {
            "FAIL > 500"
        },
        if spa_log99 <= 2000.0 {
            "PASS <= 2000"
        } else {
            "FAIL > 2000"
        },
    );
    for (tag, _, _, l, _) in &fwk {
        let p50 = pct(&l.to_monitor, 0.5);
        let p99 = pct(&l.to_monitor, 0.99);
        println!(
            "fwknopd {tag}: arrival -> rule (nft monitor) p50 {p50:.1} us, p99 {p99:.1} us; \
             ratio to spa (same observer) p50 {:.1}x, p99 {:.1}x",
            p50 / spa_mon,
            p99 / pct(&lat.to_monitor, 0.99)
        );
    }
    println!(
        "flood drain (full batches): daemon {dd_us:.3} us vs bare {bare_drain_us:.3} us per datagram = {:.1}% [{}]",
        100.0 * bare_drain_us / dd_us,
        if bare_drain_us / dd_us >= 0.7 {
            "PASS >= 70%"
        } else {
            "FAIL < 70%"
        },
    );
    println!(
        "flood (sustained): {:.1}% of the bare loop [{}]; socket drops {}; valid knocks opened {}/{} [{}]",
        100.0 * fl_rate / bare_rate,
        if fl_rate / bare_rate >= 0.7 {
            "PASS >= 70%"
        } else {
            "FAIL < 70%"
        },
        fl.socket_drops,
        fl.valid_holes,
        fl.valid_sent,
        if fl.valid_holes as f64 >= 0.99 * fl.valid_sent as f64 {
            "PASS >= 99%"
        } else {
            "FAIL < 99%"
        }
    );
    println!(
        "throughput: {t_rate:.0} knocks per CPU-s = {:.3} x floor; memory idle {rss_idle} kB, 100k ids {rss_100k} kB",
        t_rate / floor_rate
    );
    report.insert("latency_spa".into(), lat_json);
    report.insert("latency_spa_no_observers".into(), quiet_json);
    report.insert(
        "latency_spa_raw_arrival_to_log_us".into(),
        json!(lat.to_log),
    );
    report.insert(
        "latency_fwknopd".into(),
        json!(fwk.iter().map(|(t, a, b, l, rss)| json!({"tag": t, "arrival_to_monitor": a, "send_to_monitor": b, "missing": l.missing, "vmrss_kb": rss})).collect::<Vec<_>>()),
    );
    report.insert(
        "flood".into(),
        json!({"sent": fl.sent, "send_s": fl.send_s, "refused": fl.refused, "cpu_stat_s": fl.cpu.stat_s,
               "cpu_sched_s": fl.cpu.sched_s, "wall_s": fl.wall_s, "refused_per_cpu_s": fl_rate,
               "refused_per_cpu_s_sched": fl_rate_sched, "ratio_to_bare": fl_rate / bare_rate,
               "ratio_to_bare_sched": fl_rate_sched / bare_rate_sched,
               "valid_sent": fl.valid_sent, "valid_accepted": fl.valid_accepted, "valid_holes": fl.valid_holes,
               "socket_drops": fl.socket_drops, "drain_frames": dd_frames, "drain_cpu_s": dd_cpu,
               "drain_us_per_datagram": dd_us, "drain_ratio_to_bare": bare_drain_us / dd_us,
               "drain_drops": dd_drops}),
    );
    report.insert(
        "flood_with_sessions".into(),
        json!({"sessions": fl2.sessions_before, "sent": fl2.sent, "refused": fl2.refused,
               "cpu_stat_s": fl2.cpu.stat_s, "cpu_sched_s": fl2.cpu.sched_s,
               "refused_per_cpu_s": fl2_rate, "refused_per_cpu_s_sched": fl2_rate_sched,
               "ratio_to_bare": fl2_rate / bare_rate, "socket_drops": fl2.socket_drops,
               "drain_us_per_datagram": dd2_us, "drain_ratio_to_bare": bare_drain_us / dd2_us, "drain_drops": dd2_drops, "valid_sent": fl2.valid_sent,
               "valid_accepted": fl2.valid_accepted}),
    );
    report.insert(
        "throughput".into(),
        json!({"sent": sent, "accepted": t_acc, "wall_s": t_wall, "cpu_stat_s": t_cpu.stat_s,
               "cpu_sched_s": t_cpu.sched_s, "per_cpu_s": t_rate, "per_cpu_s_sched": t_rate_sched,
               "ratio_to_floor": t_rate / floor_rate, "ratio_to_floor_sched": t_rate_sched / floor_rate}),
    );
    report.insert(
        "memory_kb".into(),
        json!({"idle": rss_idle, "idle_hwm": hwm_idle, "after_latency": rss_after_lat,
               "after_throughput": rss_after_tput, "end": rss_end, "end_hwm": hwm_end,
               "ids_100k": rss_100k, "ids_100k_hwm": hwm_100k, "store_100k_bytes": db_size}),
    );
    println!("total {:.1} s", t_all.elapsed().as_secs_f64());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("daemon-bench.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    println!("JSON: {}", out.display());
    drop(bed);
}
