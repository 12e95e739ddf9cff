//! The tunnel's data path alone, over loopback in one process:
//! `cargo bench -p spa-tunnel --bench loopback`.
//!
//! writer → socketpair → client `TlsPipe::splice` → TCP → server
//! `TlsPipe::splice` → TCP → sink, against writer → TCP → sink. Rate =
//! bytes / (sink's first byte → EOF), median of `SPA_LOOPBACK_RUNS` (5)
//! runs of 200 MB each; CPU time of each splice thread from
//! `/proc/thread-self/stat`. Without `--bench` (`cargo test --all-targets`)
//! it is a smoke test: one run of 4 MB, checked end to end, no numbers.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss, missing_docs)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};
use spa_tunnel::TlsPipe;

#[path = "../tests/common/mod.rs"]
mod common;
use common::configs;

/// Bytes per run: 200 MB measured, 4 MB as a smoke test.
static BYTES: AtomicUsize = AtomicUsize::new(200 * 1024 * 1024);

fn bytes() -> usize {
    BYTES.load(Ordering::Relaxed)
}

/// utime + stime of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = s.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / 100.0
}

/// A sink: reads one connection to EOF; returns first byte → EOF.
fn sink(l: &TcpListener) -> (usize, Duration) {
    let (mut c, _) = l.accept().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0;
    let mut first = None;
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                first.get_or_insert_with(Instant::now);
                n += k;
            }
        }
    }
    (n, first.map_or(Duration::ZERO, |f| f.elapsed()))
}

fn feed(w: &mut impl Write) {
    let chunk = vec![0x5au8; 1024 * 1024];
    for _ in 0..bytes() / chunk.len() {
        w.write_all(&chunk).unwrap();
    }
}

fn direct() -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = thread::spawn(move || sink(&l));
    let mut c = TcpStream::connect(addr).unwrap();
    feed(&mut c);
    c.shutdown(Shutdown::Write).unwrap();
    let (n, d) = s.join().unwrap();
    assert_eq!(n, bytes());
    n as f64 / d.as_secs_f64() / 1e6
}

fn tunnel(scfg: &Arc<ServerConfig>, ccfg: &Arc<ClientConfig>) -> (f64, f64, f64) {
    let svc = TcpListener::bind("127.0.0.1:0").unwrap();
    let svc_addr = svc.local_addr().unwrap();
    let s = thread::spawn(move || sink(&svc));
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let taddr = tl.local_addr().unwrap();
    let scfg = Arc::clone(scfg);
    let server = thread::spawn(move || {
        let (t, _) = tl.accept().unwrap();
        let mut p = TlsPipe::new(UnbufferedServerConnection::new(scfg).unwrap(), t).unwrap();
        p.handshake(Instant::now() + Duration::from_secs(5))
            .unwrap();
        let up = TcpStream::connect(svc_addr).unwrap();
        up.set_nonblocking(true).unwrap();
        let c0 = thread_cpu();
        p.splice(&mut &up, &mut &up, false, |w| {
            let _ = w.shutdown(Shutdown::Write);
        })
        .unwrap();
        thread_cpu() - c0
    });
    let t = TcpStream::connect(taddr).unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut p = TlsPipe::new(
        UnbufferedClientConnection::new(Arc::clone(ccfg), name).unwrap(),
        t,
    )
    .unwrap();
    p.handshake(Instant::now() + Duration::from_secs(5))
        .unwrap();
    let (mut app, mut ours) = UnixStream::pair().unwrap();
    let client = thread::spawn(move || {
        let mut ours_w = ours.try_clone().unwrap();
        let c0 = thread_cpu();
        p.splice(&mut ours, &mut ours_w, true, |_| {}).unwrap();
        thread_cpu() - c0
    });
    feed(&mut app);
    app.shutdown(Shutdown::Write).unwrap();
    let (n, d) = s.join().unwrap();
    let server_cpu = server.join().unwrap();
    let client_cpu = client.join().unwrap();
    assert_eq!(n, bytes());
    (n as f64 / d.as_secs_f64() / 1e6, server_cpu, client_cpu)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runs: usize = if bench {
        std::env::var("SPA_LOOPBACK_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5)
    } else {
        BYTES.store(4 * 1024 * 1024, Ordering::Relaxed);
        1
    };
    let (scfg, ccfg) = configs();
    let mut t = Vec::new();
    let mut d = Vec::new();
    for i in 0..runs {
        let (mbs, scpu, ccpu) = tunnel(&scfg, &ccfg);
        let dm = direct();
        println!(
            "run {i}: tunnel {mbs:.0} MB/s (server splice CPU {scpu:.2} s, client splice CPU \
             {ccpu:.2} s per {} MB), direct {dm:.0} MB/s",
            bytes() / (1024 * 1024)
        );
        t.push(mbs);
        d.push(dm);
    }
    if !bench {
        println!("loopback bench: smoke test passed (4 MB through the tunnel and direct)");
        return;
    }
    t.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    let (tm, dm) = (t[t.len() / 2], d[d.len() / 2]);
    println!(
        "median: tunnel {tm:.0} MB/s, direct {dm:.0} MB/s, ratio {:.2}",
        tm / dm
    );
}
