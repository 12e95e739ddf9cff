//! The mutual-TLS tunnel end to end: `cargo bench -p tests --bench tunnel`.
//!
//! Test bed (the recipe of `tests/tests/tunnel_e2e.rs`), three network
//! namespaces created here and deleted at the end:
//!
//! ```text
//! client 10.200.71.2 ── 10.200.71.1 green 10.200.72.1 ── 10.200.72.2 red
//! ```
//!
//! green runs the release `spa-server run` with `[relay]` and `[tunnel]`,
//! red runs the release `red-relay run`, both in blackhole mode. Red's
//! services are threads of this bench (sockets opened in red's namespace):
//! `sink` (port 9001: reads to EOF, timing first byte to EOF) and `greet`
//! (port 9002: writes `hi\n` at once, then holds the connection until EOF).
//!
//! 1. Throughput: 200 MB client → red's sink, through the tunnel (`spa-client
//!    connect sink`, the bytes on its stdin: client → TLS → green → red) and
//!    directly (a TCP connection from the client namespace to red's sink,
//!    routed by green's kernel: the same two veth hops; red's firewall
//!    accepts the client's address as `management`, green forwards), and
//!    through a plain relay of the tunnel's shape without TLS (a pipe into
//!    a copying thread in the client namespace, TCP to a copying thread in
//!    green's, TCP to red: the ceiling of any user-space relay here).
//!    `SPA_TUNNEL_RUNS` (3) runs each, alternated; rate = bytes / (sink's
//!    first byte → EOF).
//! 2. Set-up: `spa-client connect greet` spawned (in the client namespace,
//!    no `ip netns exec`) → first byte on its stdout, 20 runs cold (no
//!    session: open-tunnel knock, wait for the port, request-service knock,
//!    TLS, CONNECT) and 20 warm (session open: request-service knock, TLS,
//!    CONNECT).
//! 3. Memory: green's VmRSS and thread count idle, then with streams held
//!    open through `spa-client connect greet --listen` (each stream reads
//!    red's `hi` to count as served): 256, then 1,000
//!    attempted.
//!
//! Needs root, iproute2, nftables. Without `--bench` (`cargo test
//! --all-targets`) it is a smoke test of the same path: one 4 MB transfer
//! each way, 2 set-ups cold and warm, 4 then 8 streams that must all be
//! served; no numbers.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    missing_docs,
    missing_debug_implementations
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tests::{
    GreenRelayConfig, Netns, RedRelayConfig, TempDir, bin, link4, make_relay_pki, require_tools,
    start_green, start_red, unique_tag, wait_until, write_green_config, write_red_config,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 2);
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 1);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 2);
const KNOCK_PORT: u16 = 62201;
const ORDER_PORT: u16 = 62202;
const TUNNEL_PORT: u16 = 8443;
const SINK_PORT: u16 = 9001;
const GREET_PORT: u16 = 9002;
const LOCAL_PORT: u16 = 18090;
/// Set without `--bench`: small sizes, every result checked.
static SMOKE: AtomicBool = AtomicBool::new(false);

fn smoke() -> bool {
    SMOKE.load(Ordering::Relaxed)
}

/// Bytes per transfer: 200 MB, 4 MB as a smoke test.
fn bytes() -> usize {
    if smoke() { 4 << 20 } else { 200 << 20 }
}

/// Set-up runs, cold and warm each.
fn setup_runs() -> usize {
    if smoke() { 2 } else { SETUP_RUNS }
}

/// Streams held open first, then in all.
fn streams() -> (usize, usize) {
    if smoke() { (4, 8) } else { (FIRST, STREAMS) }
}
/// Green's port for the plain relay (the tunnel's shape without TLS).
const PLAIN_RELAY_PORT: u16 = 9100;
const RUNS: usize = 3;
const SETUP_RUNS: usize = 20;
/// Streams held open first (the old cap), then up to [`STREAMS`].
const FIRST: usize = 256;
const STREAMS: usize = 1000;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Busy time of the whole machine (all CPUs, every process and
/// interrupt), in clock ticks, from /proc/stat.
fn busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    f.iter().take(8).sum::<u64>() - f.get(3).copied().unwrap_or(0) - f.get(4).copied().unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Red's sink: every connection read to EOF; (bytes, first byte → EOF).
fn sink(l: TcpListener, tx: mpsc::Sender<(usize, Duration)>) {
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0usize;
            let mut first = None;
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if first.is_none() {
                            first = Some(Instant::now());
                        }
                        n += k;
                    }
                }
            }
            // Green's relay probes the port after each order (connect,
            // close): connections without data are not transfers.
            if let Some(f) = first {
                let _ = tx.send((n, f.elapsed()));
            }
        });
    }
}

/// Red's greeter: `hi\n`, then hold until EOF.
fn greet(l: TcpListener) {
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = c.write_all(b"hi\n");
                let mut b = [0u8; 512];
                while let Ok(k) = c.read(&mut b) {
                    if k == 0 {
                        break;
                    }
                }
            });
    }
}

/// Copies `r` to `w` in 1 MiB reads until EOF, then half-closes `w`.
fn copy_1m(r: &mut impl Read, w: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return w.shutdown(Shutdown::Write);
        }
        w.write_all(&buf[..n])?;
    }
}

fn feed(w: &mut impl Write) -> std::io::Result<()> {
    let chunk = vec![0x5au8; 1024 * 1024];
    for _ in 0..bytes() / chunk.len() {
        w.write_all(&chunk)?;
    }
    Ok(())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        SMOKE.store(true, Ordering::Relaxed);
    }
    require_tools(&[("nft", "nftables")]);
    // 1,000 streams: this process holds both ends' sockets on red's side
    // and the client side of each.
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let tag = unique_tag();
    let dir = TempDir::new(&format!("tunbench-{tag}"));
    let client = Netns::new("bc", &tag);
    let green_ns = Netns::new("bg", &tag);
    let red_ns = Netns::new("br", &tag);
    link4(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
    link4(&green_ns, "to-red", GREEN_R, &red_ns, "to-green", RED);
    // Optionally a link of a real rate between client and green (both
    // paths cross it, client to green): `SPA_TUNNEL_LINK_RATE=10gbit`.
    if let Ok(rate) = std::env::var("SPA_TUNNEL_LINK_RATE") {
        client.ok(&[
            "tc", "qdisc", "replace", "dev", "to-green", "root", "tbf", "rate", &rate, "burst",
            "4mb", "latency", "50ms",
        ]);
        println!("client -> green link shaped to {rate} (tbf)");
    }
    // The direct path: green routes client <-> red (the tunnel does not use
    // it: its traffic is local to green).
    green_ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    client.ok(&["ip", "route", "add", "10.200.72.0/24", "via", "10.200.71.1"]);
    red_ns.ok(&["ip", "route", "add", "10.200.71.0/24", "via", "10.200.72.1"]);

    let server = bin("spa-server");
    let spa_client = bin("spa-client");
    let red_relay = bin("red-relay");
    println!("binaries: {}", server.parent().unwrap().display());
    let keys = make_relay_pki(&dir, "tunnel bench CA", &red_relay, Some(GREEN_C));
    let green_pub = &keys.green_pub;
    write_green_config(
        &dir,
        &keys,
        &GreenRelayConfig {
            knock_port: KNOCK_PORT,
            tunnel_port: TUNNEL_PORT,
            red: SocketAddr::from((RED, ORDER_PORT)),
            source: GREEN_R,
            services: &[("sink", SINK_PORT), ("greet", GREET_PORT)],
            tunnel: true,
        },
    );
    write_red_config(
        &dir,
        &keys,
        &RedRelayConfig {
            order_port: ORDER_PORT,
            management: Some(CLIENT),
            services: &[("sink", SINK_PORT), ("greet", GREET_PORT)],
        },
    );
    let client_cfg = format!(
        r#"[profiles.lab]
server = "{GREEN_C}"
server_key = "{green_pub}"
key = "{key}"
certificate = "{cert}"
lifetime = 300
tunnel_ca = "{ca}"
tunnel_port = {TUNNEL_PORT}
"#,
        key = dir.s("alice.key"),
        cert = dir.s("alice.crt"),
        ca = dir.s("ca/ca.pem"),
    );
    std::fs::write(dir.join("client.toml"), client_cfg).unwrap();

    // Red's services (threads of this process, sockets in red's namespace).
    let (sink_tx, sink_rx) = mpsc::channel();
    let sink_l = red_ns
        .run_in(|| TcpListener::bind((RED, SINK_PORT)))
        .unwrap();
    std::thread::spawn(move || sink(sink_l, sink_tx));
    let greet_l = red_ns
        .run_in(|| {
            // A deep backlog: up to 1,000 streams arrive at once.
            let l = TcpListener::bind((RED, GREET_PORT))?;
            Ok::<_, std::io::Error>(l)
        })
        .unwrap();
    std::thread::spawn(move || greet(greet_l));

    let _red = start_red(&red_ns, &red_relay, &dir);
    let green = start_green(&green_ns, &dir);
    let gpid = green.pid();
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = status_field(gpid, "VmRSS");
    let thr_start = status_field(gpid, "Threads");
    println!("[3] green idle after start: VmRSS {rss_start} kB, {thr_start} threads");

    let spawn_client = |state: &Path, args: &[&str], stdin: Stdio, stdout: Stdio, log: &str| {
        let f = std::fs::File::create(dir.join(log)).unwrap();
        let mut c = Command::new(&spa_client);
        c.env("XDG_STATE_HOME", state)
            .args([
                "--config",
                &dir.s("client.toml"),
                "--profile",
                "lab",
                "connect",
            ])
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::from(f));
        // Spawned from a thread inside the client namespace: the child
        // inherits it (no `ip netns exec` in the timing).
        client.run_in(|| c.spawn().unwrap())
    };

    // 1. Throughput.
    let warm_state = dir.join("state-warm");
    let mut tun = Vec::new();
    let mut direct = Vec::new();
    let mut green_cpu = Vec::new();
    // Busy CPU-seconds of the whole machine per transfer (the tunnel's
    // includes starting spa-client and its knock).
    let mut busy_t = Vec::new();
    let mut busy_d = Vec::new();
    let mut plain = Vec::new();
    let mut busy_p = Vec::new();
    // The plain relay's green side (see the runs): green's firewall lets
    // the client reach its port.
    green_ns.ok(&[
        "nft",
        "insert",
        "rule",
        "inet",
        "spa",
        "input",
        "tcp",
        "dport",
        &PLAIN_RELAY_PORT.to_string(),
        "accept",
    ]);
    let relay_l = green_ns
        .run_in(|| TcpListener::bind((GREEN_C, PLAIN_RELAY_PORT)))
        .unwrap();
    // Spawned from inside green's namespace: the thread stays there, and
    // so do the sockets it opens toward red.
    green_ns.run_in(|| {
        std::thread::spawn(move || {
            for c in relay_l.incoming() {
                let Ok(mut c) = c else { continue };
                let out = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )
                .and_then(|s| {
                    s.bind(&SocketAddr::from((GREEN_R, 0)).into())?;
                    s.connect(&SocketAddr::from((RED, SINK_PORT)).into())?;
                    Ok(TcpStream::from(s))
                });
                let Ok(mut out) = out else { continue };
                let _ = copy_1m(&mut c, &mut out);
            }
        })
    });
    let tck = 100.0; // USER_HZ
    let runs: usize = if smoke() {
        1
    } else {
        std::env::var("SPA_TUNNEL_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(RUNS)
    };
    for run in 0..runs {
        // Through the tunnel.
        let c0 = cpu_ticks(gpid);
        let b0 = busy_ticks();
        let mut child = spawn_client(
            &warm_state,
            &["sink"],
            Stdio::piped(),
            Stdio::null(),
            &format!("sink-{run}.log"),
        );
        let mut stdin = child.stdin.take().unwrap();
        let w = std::thread::spawn(move || feed(&mut stdin));
        let (n, d) = sink_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!(
                    "no tunnel transfer: {}\ngreen log:\n{}",
                    std::fs::read_to_string(dir.join(&format!("sink-{run}.log")))
                        .unwrap_or_default(),
                    green.log_text()
                )
            });
        w.join().unwrap().unwrap();
        // Alive or a zombie: /proc still has its CPU times until reaped.
        let client_cpu = cpu_ticks(child.id()) as f64 / 100.0;
        let st = child.wait().unwrap();
        let c1 = cpu_ticks(gpid);
        let busy_tun = (busy_ticks() - b0) as f64 / tck;
        assert_eq!(n, bytes(), "tunnel transfer incomplete (client {st})");
        let mbs = n as f64 / d.as_secs_f64() / 1e6;
        let cpu_s = (c1 - c0) as f64 / tck;
        println!(
            "[1] run {run}: tunnel {mbs:.0} MB/s ({:.3} s), green CPU {cpu_s:.2} s, \
             spa-client CPU {client_cpu:.2} s, machine busy {busy_tun:.2} CPU-s, client {st}",
            d.as_secs_f64()
        );
        busy_t.push(busy_tun);
        tun.push(mbs);
        green_cpu.push(cpu_s);
        // Direct: client namespace -> red's sink, routed by green.
        let b0 = busy_ticks();
        let mut s = client
            .run_in(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((RED, SINK_PORT)),
                    Duration::from_secs(2),
                )
            })
            .expect("direct connect (routed by green)");
        feed(&mut s).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (n, d) = sink_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        drop(s);
        let busy_dir = (busy_ticks() - b0) as f64 / tck;
        busy_d.push(busy_dir);
        assert_eq!(n, bytes(), "direct transfer incomplete");
        let mbs = n as f64 / d.as_secs_f64() / 1e6;
        println!(
            "[1] run {run}: direct {mbs:.0} MB/s ({:.3} s), machine busy {busy_dir:.2} CPU-s",
            d.as_secs_f64()
        );
        direct.push(mbs);
        // The shape of the tunnel without TLS: a pipe into a copying
        // thread in the client namespace, TCP to a copying thread in
        // green's namespace, TCP to red's sink (from green's address toward
        // red, which red opened for the tunnel's sink above).
        let b0 = busy_ticks();
        let (mut pr, mut pw) = std::io::pipe().unwrap();
        let w = std::thread::spawn(move || feed(&mut pw));
        let mut up = client
            .run_in(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((GREEN_C, PLAIN_RELAY_PORT)),
                    Duration::from_secs(2),
                )
            })
            .expect("plain relay connect");
        let c = std::thread::spawn(move || copy_1m(&mut pr, &mut up));
        let (n, d) = sink_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        w.join().unwrap().unwrap();
        c.join().unwrap().unwrap();
        let busy_pl = (busy_ticks() - b0) as f64 / tck;
        assert_eq!(n, bytes(), "plain relay transfer incomplete");
        let mbs = n as f64 / d.as_secs_f64() / 1e6;
        println!(
            "[1] run {run}: plain relay {mbs:.0} MB/s ({:.3} s), machine busy {busy_pl:.2} CPU-s",
            d.as_secs_f64()
        );
        plain.push(mbs);
        busy_p.push(busy_pl);
    }
    let (t_med, d_med) = (median(&mut tun.clone()), median(&mut direct.clone()));
    let p_med = median(&mut plain.clone());
    println!(
        "[1] plain relay (same shape, no TLS) median {p_med:.0} MB/s (runs {plain:.0?}): {:.2} of \
         direct, machine busy {:.2} CPU-s per 200 MB; the tunnel is {:.2} of it",
        p_med / d_med,
        median(&mut busy_p.clone()),
        t_med / p_med
    );
    println!(
        "[1] tunnel median {t_med:.0} MB/s (runs {tun:.0?}), direct median {d_med:.0} MB/s \
         (runs {direct:.0?}), ratio {:.2} (target >= 0.70: {}); green CPU per 200 MB {green_cpu:.2?} s",
        t_med / d_med,
        if t_med / d_med >= 0.7 { "PASS" } else { "FAIL" }
    );

    println!(
        "[1] machine busy per 200 MB: tunnel median {:.2} CPU-s, direct median {:.2} CPU-s \
         (ratio {:.2}: the ceiling of tunnel/direct throughput when both are CPU-bound)",
        median(&mut busy_t.clone()),
        median(&mut busy_d.clone()),
        median(&mut busy_d.clone()) / median(&mut busy_t.clone())
    );
    if std::env::var_os("SPA_TUNNEL_ONLY_THROUGHPUT").is_some() {
        return;
    }

    // 2. Set-up time.
    let setup = |cold: bool| -> Vec<f64> {
        let mut v = Vec::new();
        for i in 0..setup_runs() {
            let state = if cold {
                dir.join(&format!("state-cold-{i}"))
            } else {
                warm_state.clone()
            };
            let t0 = Instant::now();
            let mut child = spawn_client(
                &state,
                &["greet"],
                Stdio::piped(),
                Stdio::piped(),
                &format!("greet-{}-{i}.log", if cold { "cold" } else { "warm" }),
            );
            let mut out = child.stdout.take().unwrap();
            let mut b = [0u8; 1];
            let got = out.read(&mut b);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            assert!(
                matches!(got, Ok(1)) && b[0] == b'h',
                "no greeting ({got:?}): {}",
                std::fs::read_to_string(dir.join(&format!(
                    "greet-{}-{i}.log",
                    if cold { "cold" } else { "warm" }
                )))
                .unwrap_or_default()
            );
            drop(child.stdin.take());
            let mut rest = Vec::new();
            let _ = out.read_to_end(&mut rest);
            let _ = child.wait();
            v.push(ms);
        }
        v
    };
    let mut cold = setup(true);
    let mut warm = setup(false);
    let cold_min = cold.iter().copied().fold(f64::MAX, f64::min);
    let warm_min = warm.iter().copied().fold(f64::MAX, f64::min);
    let cold_max = cold.iter().copied().fold(0.0, f64::max);
    let warm_max = warm.iter().copied().fold(0.0, f64::max);
    println!(
        "[2] connect start -> first byte, {} runs: cold (open-tunnel + request-service) \
         median {:.1} ms (min {cold_min:.1}, max {cold_max:.1}); warm (session open: \
         request-service) median {:.1} ms (min {warm_min:.1}, max {warm_max:.1})",
        setup_runs(),
        median(&mut cold),
        median(&mut warm)
    );

    // 3. Memory with streams held open.
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = status_field(gpid, "VmRSS");
    let thr_idle = status_field(gpid, "Threads");
    println!("[3] green idle after the runs above: VmRSS {rss_idle} kB, {thr_idle} threads");
    let _fwd = Proc(spawn_client(
        &warm_state,
        &["greet", "--listen", &format!("127.0.0.1:{LOCAL_PORT}")],
        Stdio::null(),
        Stdio::null(),
        "forward.log",
    ));
    let local = SocketAddr::from(([127, 0, 0, 1], LOCAL_PORT));
    assert!(
        wait_until(Duration::from_secs(20), || client
            .connect(local, Duration::from_millis(200))
            .is_ok()),
        "spa-client --listen did not listen"
    );
    let open_streams = |n: usize| -> (Vec<TcpStream>, usize, Duration) {
        let t0 = Instant::now();
        let mut v: Vec<TcpStream> = client.run_in(|| {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&local, Duration::from_secs(5)).unwrap())
                .collect()
        });
        let mut served = 0;
        for s in &mut v {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut b = [0u8; 3];
            if s.read_exact(&mut b).is_ok() && &b == b"hi\n" {
                served += 1;
            }
        }
        (v, served, t0.elapsed())
    };
    let (first, all) = streams();
    let (held, served, t) = open_streams(first);
    std::thread::sleep(Duration::from_millis(300));
    let rss_cap = status_field(gpid, "VmRSS");
    let thr_cap = status_field(gpid, "Threads");
    println!(
        "[3] {first} streams attempted, {served} served in {:.1} s: green VmRSS {rss_cap} kB, \
         {thr_cap} threads ({:.1} kB per stream over idle)",
        t.as_secs_f64(),
        (rss_cap.saturating_sub(rss_idle)) as f64 / served.max(1) as f64
    );
    let (more, served_more, t2) = open_streams(all - first);
    std::thread::sleep(Duration::from_millis(300));
    let rss_1000 = status_field(gpid, "VmRSS");
    let thr_1000 = status_field(gpid, "Threads");
    let refused = green
        .log_text()
        .lines()
        .filter(|l| l.contains("too many connections"))
        .count();
    println!(
        "[3] {all} streams attempted: {} served ({served_more} of the last {} in {:.1} s), \
         green logged {refused} 'too many connections'; VmRSS {rss_1000} kB, {thr_1000} threads",
        served + served_more,
        all - first,
        t2.as_secs_f64()
    );
    drop(more);
    drop(held);
    // Green's stream threads end as the streams close.
    let ended = wait_until(Duration::from_secs(20), || {
        status_field(gpid, "Threads") <= thr_idle
    });
    if !ended {
        println!("[3] green's stream threads had not all ended 20 s after the streams closed");
    }
    if smoke() {
        assert_eq!(
            served + served_more,
            all,
            "tunnel bench smoke test: streams not served"
        );
        assert!(
            ended,
            "tunnel bench smoke test: green's stream threads did not end"
        );
        println!("tunnel bench: smoke test passed");
        return;
    }
    println!(
        "[3] after closing them: VmRSS {} kB, {} threads",
        status_field(gpid, "VmRSS"),
        status_field(gpid, "Threads")
    );
    println!(
        "load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
