//! A test run in a network namespace of its own, with a peer namespace
//! joined to it by a veth pair: the bed of the firewall and session tests
//! that need real kernel traffic but no daemon.
//!
//! [`in_netns`] re-executes the test binary, for that one test, under
//! `unshare --net`: the body runs only in the child (where `SPA_IN_NETNS`
//! is set), whose network namespace disappears with it, whatever happens.
//! [`Peer`] is a thread of the child that `unshare(CLONE_NEWNET)`s itself,
//! joined to the child's namespace by a veth pair ([`HERE`] there,
//! [`PEER`] here); it vanishes when the thread ends. No packet leaves
//! these namespaces.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, unshare};

pub const IN_NETNS: &str = "SPA_IN_NETNS";
pub const HERE: Ipv4Addr = Ipv4Addr::new(10, 200, 99, 1);
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 200, 99, 2);

/// Runs `body` in a fresh network namespace (see the module docs).
pub fn in_netns(name: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_NETNS).is_some() {
        sh("ip link set lo up");
        body();
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        crate::cannot_run(name, "network namespaces and nftables need root");
        return;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("run unshare --net");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {name} in its namespace ---\n{stdout}{stderr}");
    assert!(out.status.success(), "{name} failed in its namespace");
    assert!(
        stdout.contains("1 passed"),
        "the child did not run exactly {name}"
    );
}

/// Runs a shell command, panicking with its output on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A second network namespace, held by a thread, joined to ours by a veth
/// pair. Closures sent to it run in that namespace (and so do the sockets
/// they create, wherever those are used afterwards).
#[allow(missing_debug_implementations)] // holds a channel of closures
pub struct Peer {
    jobs: Option<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Peer {
    pub fn start() -> Peer {
        let (jobs, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) for the peer");
            tid_tx
                .send(nix::unistd::gettid().as_raw())
                .expect("send the peer's thread id");
            for job in rx {
                job();
            }
        });
        let tid = tid_rx.recv().expect("peer thread started");
        sh(&format!(
            "ip link add spa0 type veth peer name spa1 netns {tid} && \
             ip addr add {HERE}/24 dev spa0 && ip link set spa0 up"
        ));
        let peer = Peer {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        peer.run(|| {
            sh(&format!(
                "ip link set lo up && ip addr add {PEER}/24 dev spa1 && ip link set spa1 up"
            ))
        });
        peer
    }

    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("peer running")
            .send(Box::new(move || {
                // The receiver waits below; a send error cannot happen.
                let _ = tx.send(f());
            }))
            .expect("peer thread alive");
        rx.recv().expect("peer job finished")
    }

    /// TCP connect from the peer to `HERE:port`: Ok(stream), or the error
    /// kind (TimedOut when the packets are silently dropped,
    /// ConnectionRefused when a RST came back).
    pub fn connect(&self, port: u16, wait: Duration) -> Result<TcpStream, ErrorKind> {
        self.run(move || {
            TcpStream::connect_timeout(&SocketAddr::from((HERE, port)), wait).map_err(|e| e.kind())
        })
    }

    pub fn send_udp(&self, port: u16, payload: &'static [u8]) {
        self.run(move || {
            let s = UdpSocket::bind((PEER, 0)).expect("peer UDP socket");
            s.send_to(payload, (HERE, port)).expect("peer UDP send");
        });
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing the channel ends the thread, and its namespace (and the
        // veth pair with it) goes away.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub const SHORT: Duration = Duration::from_millis(1200);

pub fn assert_filtered(peer: &Peer, port: u16) {
    let started = Instant::now();
    match peer.connect(port, SHORT) {
        Err(ErrorKind::TimedOut) => {}
        other => panic!("port {port}: expected a silent drop (timeout), got {other:?}"),
    }
    assert!(started.elapsed() >= SHORT, "failed fast: not a silent drop");
}

pub fn assert_open(peer: &Peer, port: u16) -> TcpStream {
    match peer.connect(port, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => panic!("port {port}: expected a connection, got {e:?}"),
    }
}

pub fn assert_refused(peer: &Peer, port: u16) {
    match peer.connect(port, Duration::from_secs(3)) {
        Err(ErrorKind::ConnectionRefused) => {}
        other => panic!("port {port}: expected a RST (refused), got {other:?}"),
    }
}

/// A TCP port with nothing listening on it, here.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind((HERE, 0)).expect("bind a port to free it");
    l.local_addr().expect("local addr").port()
}
