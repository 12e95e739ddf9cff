//! End-to-end tests of what revocation ends (SPEC §9, "What revocation
//! ends"), as root, in network namespaces:
//!
//! ```text
//!   client 10.200.81.2 ── 10.200.81.1 green 10.200.84.2 ── 10.200.84.1 red
//! ```
//!
//! (Red, running `red-relay` with green relaying orders to it, only in the
//! test of red's CRL.)
//!
//! Green runs the real `spa-server` (blackhole, packet capture, `nobody`)
//! with a PKI made by the operator's commands (`spa-server pki …`). The
//! revocation tests hold established TCP connections through a knock and
//! watch them end; connection-tracking entries are read with the
//! `conntrack` tool, independently of the daemon's own netlink code.
//!
//! Needs root, iproute2, nftables, tcpdump and conntrack; fails with the
//! `apt-get install` line when one is missing.

mod common;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Bed, CLIENT, GREEN_C, KNOCK_PORT, SSH_PORT, assert_silently_dropped, sock};
use tests::{
    Green, Netns, TcpService, TempDir, allow4, allow6, bin, echo, link4, make_relay_pki,
    require_tools, run_ok, unique_tag, wait_until,
};

/// The one session of green's status.
fn only_session(g: &Green) -> String {
    let st = g.status();
    let sessions = st["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 1, "{st}");
    sessions[0]["session"]
        .as_str()
        .expect("session id")
        .to_owned()
}

/// An echo server inside a namespace that also keeps its side of every
/// connection, so that the test can make the server speak first
/// ([`HeldServer::push`]). Stopped on drop.
struct HeldServer {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl HeldServer {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.run_in(|| TcpListener::bind(addr)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, held) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                if let Ok(k) = c.try_clone() {
                    held.lock().unwrap_or_else(|e| e.into_inner()).push(k);
                }
                let s2 = s.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while !s2.load(Ordering::Relaxed) {
                        match c.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        });
        Self {
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Writes `msg` from the server's side of every connection.
    fn push(&self, msg: &[u8]) {
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = (&*c).write_all(msg);
        }
    }
}

impl Drop for HeldServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts that nothing arrives on `s` within a second (the connection is
/// cut: the segment was dropped, not answered).
fn assert_nothing_arrives(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("{what}: expected silence, got {other:?}"),
    }
}

/// `revoke-session` closes the session and ends its established
/// connections: their conntrack entries are deleted, the client's next
/// segment finds no entry and no element and is dropped, and a segment the
/// server sends first is not picked up mid-stream either.
#[test]
fn revoke_ends_established_connections() {
    revoke_ends(&Bed::new("", ""));
}

/// [`revoke_ends_established_connections`] over IPv6: the knock, the
/// opening (`allow6`) and the connections are IPv6, and so are the
/// conntrack entries the close deletes over netlink.
#[test]
fn revoke_ends_established_ipv6_connections() {
    revoke_ends(&Bed::new_v6("", ""));
}

/// The elements of the bed's family's allow set in green.
fn allowed(bed: &Bed) -> Vec<String> {
    if bed.v6 {
        allow6(&bed.green)
    } else {
        allow4(&bed.green)
    }
}

fn revoke_ends(bed: &Bed) {
    let started = Instant::now();
    assert!(!bed.v6 || bed.green_addr().is_ipv6());
    let server = HeldServer::start(&bed.green, SocketAddr::from((bed.green_addr(), SSH_PORT)));
    let green = bed.start_green();
    bed.knock();
    assert!(
        allowed(bed)
            .iter()
            .any(|e| e.contains(&bed.client_addr().to_string())),
        "the opening is in the bed's family's set: {:?}",
        allowed(bed)
    );
    let mut quiet = bed.connect().expect("client connects after the knock");
    let mut talker = bed.connect().expect("second connection");
    echo(&mut quiet, b"hello").expect("echo before revoke");
    echo(&mut talker, b"hello").expect("echo before revoke");
    assert!(
        bed.established_from_client() >= 2,
        "{:?}",
        bed.conntrack(&[])
    );

    let session = only_session(&green);
    let out = bed.server(&[
        "revoke-session",
        &session,
        "--socket",
        &bed.dir.s("green.sock"),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    // The revoke answers after the close: the entries are already gone.
    assert!(
        green.counter("sessions.flows_ended") >= 2,
        "{}",
        green.status()
    );
    assert_eq!(bed.established_from_client(), 0, "{:?}", bed.conntrack(&[]));
    assert!(allowed(bed).is_empty(), "{:?}", allowed(bed));

    // The server speaks first: the kernel's mid-stream pickup would make
    // an entry towards the client; the output rule drops the segment.
    let dropped_before = bed.pickups_dropped();
    server.push(b"late");
    assert!(
        wait_until(Duration::from_secs(5), || bed.pickups_dropped()
            > dropped_before),
        "the server's segment was not dropped: {:?}",
        bed.conntrack(&[])
    );
    assert_nothing_arrives(&mut talker, "server's segment after revoke");
    assert!(
        bed.picked_up_towards_client().is_empty(),
        "{:?}",
        bed.picked_up_towards_client()
    );
    // The client's next segment is dropped: its echo never comes back.
    let e = echo(&mut quiet, b"after").expect_err("echo through a revoked connection");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert_eq!(bed.established_from_client(), 0, "{:?}", bed.conntrack(&[]));
    assert_silently_dropped(bed.connect(), "new connection after revoke");
    assert!(
        green.log_text().contains("connections ended"),
        "{}",
        green.log_text()
    );
    eprintln!("{} done in {:?}", bed.tag, started.elapsed());
}

/// Two sessions own one element (same address, same service): revoking
/// one keeps the element and the connections through it; revoking the
/// last one ends them.
#[test]
fn revoke_ends_established_connections_only_with_the_last_owner() {
    let started = Instant::now();
    let bed = Bed::new("", "");
    let _svc = TcpService::start(&bed.green, sock(GREEN_C, SSH_PORT));
    let green = bed.start_green();
    bed.knock_in("state-1");
    let first = only_session(&green);
    bed.knock_in("state-2");
    let st = green.status();
    let second: Vec<String> = st["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["session"].as_str())
        .filter(|s| *s != first)
        .map(str::to_owned)
        .collect();
    assert_eq!(second.len(), 1, "{st}");
    let mut conn = bed.connect().expect("client connects");
    echo(&mut conn, b"hello").expect("echo");
    let revoke = |id: &str| {
        bed.server(&["revoke-session", id, "--socket", &bed.dir.s("green.sock")]);
    };

    revoke(&first);
    assert_eq!(allow4(&bed.green).len(), 1, "{:?}", allow4(&bed.green));
    assert_eq!(
        green.counter("sessions.flows_ended"),
        0,
        "{}",
        green.status()
    );
    assert!(
        bed.established_from_client() >= 1,
        "{:?}",
        bed.conntrack(&[])
    );
    echo(&mut conn, b"kept").expect("the other session's element keeps the connection");

    revoke(&second[0]);
    assert!(allow4(&bed.green).is_empty(), "{:?}", allow4(&bed.green));
    assert!(
        green.counter("sessions.flows_ended") >= 1,
        "{}",
        green.status()
    );
    assert_eq!(bed.established_from_client(), 0, "{:?}", bed.conntrack(&[]));
    echo(&mut conn, b"after").expect_err("echo after the last owner's revoke");
    eprintln!("{} done in {:?}", bed.tag, started.elapsed());
}

/// A CRL that revokes the client's certificate, published with the
/// operator's commands, closes its session when green reloads it (the
/// element goes, `status` shows no session) and ends its established
/// connection, within the file-change poll (about a second).
#[test]
fn crl_revoke_ends_established_connections_and_closes_the_session() {
    let started = Instant::now();
    let bed = Bed::new("", "");
    let _svc = TcpService::start(&bed.green, sock(GREEN_C, SSH_PORT));
    let green = bed.start_green();
    bed.knock();
    let mut conn = bed.connect().expect("client connects after the knock");
    echo(&mut conn, b"hello").expect("echo before the CRL");
    assert!(bed.established_from_client() >= 1);
    assert_eq!(allow4(&bed.green).len(), 1, "{:?}", allow4(&bed.green));

    bed.server(&[
        "pki",
        "revoke",
        "--dir",
        &bed.dir.s("ca"),
        "--cert",
        &bed.dir.s("alice.crt"),
    ]);
    let published = Instant::now();
    bed.server(&[
        "pki",
        "crl",
        "--dir",
        &bed.dir.s("ca"),
        "--out",
        &bed.dir.s("crl.pem"),
    ]);
    green.wait_counter("sessions.revoked_by_trust", 1);
    let closed_after = published.elapsed();
    let st = green.status();
    assert!(st["sessions"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert_eq!(st["counters"]["trust.reloads"], 1, "{st}");
    assert!(
        st["counters"]["sessions.flows_ended"].as_u64() >= Some(1),
        "{st}"
    );
    assert!(allow4(&bed.green).is_empty(), "{:?}", allow4(&bed.green));
    assert_eq!(bed.established_from_client(), 0, "{:?}", bed.conntrack(&[]));
    echo(&mut conn, b"after").expect_err("echo through a connection of a revoked client");
    let log = green.log_text();
    assert!(log.contains("certificate revoked"), "{log}");
    // And the revoked client cannot knock again.
    assert_silently_dropped(bed.connect(), "revoked client");
    eprintln!(
        "{}: session closed {closed_after:?} after the CRL was published; done in {:?}",
        bed.tag,
        started.elapsed()
    );
}

/// Red does the same on its own: a CRL that revokes the client closes red's
/// session for it (the element for green's address goes) and ends the
/// connection green holds to red's service through it. Green relays, red
/// re-checks the certificate the order carried.
#[test]
fn red_crl_revoke_ends_established_connections() {
    const RED_C: Ipv4Addr = Ipv4Addr::new(10, 200, 84, 1);
    const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 84, 2);
    const RED: Ipv4Addr = RED_C;
    const ORDER_PORT: u16 = 62202;
    const WEB_PORT: u16 = 8080;
    let started = Instant::now();
    require_tools(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
    ]);
    let tag = unique_tag();
    let dir = TempDir::new(&tag);
    let client = Netns::new("client", &tag);
    let green_ns = Netns::new("green", &tag);
    let red_ns = Netns::new("red", &tag);
    link4(
        &client,
        &format!("c{tag}"),
        CLIENT,
        &green_ns,
        &format!("g1{tag}"),
        GREEN_C,
    );
    link4(
        &green_ns,
        &format!("g4{tag}"),
        GREEN_R,
        &red_ns,
        &format!("r{tag}"),
        RED,
    );
    let server = bin("spa-server");
    let red_relay = bin("red-relay");
    let keys = make_relay_pki(&dir, "red revocation CA", &red_relay, None);
    run_ok(Command::new(&server).args([
        "pki",
        "crl",
        "--dir",
        &dir.s("ca"),
        "--out",
        &dir.s("crl.pem"),
    ]));
    tests::write_green_config(
        &dir,
        &keys,
        &tests::GreenRelayConfig {
            knock_port: KNOCK_PORT,
            tunnel_port: 4443,
            red: sock(RED, ORDER_PORT),
            source: GREEN_R,
            services: &[("web", WEB_PORT)],
            tunnel: false,
        },
    );
    tests::write_red_config(
        &dir,
        &keys,
        &tests::RedRelayConfig {
            order_port: ORDER_PORT,
            management: None,
            services: &[("web", WEB_PORT)],
        },
    );
    // Both load the CRL, from files the unprivileged daemons can re-read.
    let with_crl = format!(
        "anchors = [\"{}\"]\ncrls = [\"{}\"]",
        dir.s("ca.pem"),
        dir.s("crl.pem")
    );
    for f in ["green.toml", "red.toml"] {
        let text = std::fs::read_to_string(dir.join(f)).expect("config");
        let anchors = format!("anchors = [\"{}\"]", dir.s("ca.pem"));
        assert!(text.contains(&anchors), "{text}");
        std::fs::write(dir.join(f), text.replace(&anchors, &with_crl)).expect("config");
    }
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "[profiles.lab]\nserver = \"{GREEN_C}\"\nserver_key = \"{}\"\nkey = \"{}\"\n\
             certificate = \"{}\"\nlifetime = 300\n",
            keys.green_pub,
            dir.s("alice.key"),
            dir.s("alice.crt")
        ),
    )
    .expect("client.toml");
    let red = tests::start_red(&red_ns, &red_relay, &dir);
    let _web = TcpService::start(&red_ns, sock(RED, WEB_PORT));
    let green = tests::start_green(&green_ns, &dir);
    let spa_client = |args: &[&str]| {
        let mut c = client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.env("XDG_STATE_HOME", dir.join("state"))
            .arg("--config")
            .arg(dir.join("client.toml"))
            .args(args);
        run_ok(&mut c);
    };
    spa_client(&["send", "open"]);
    green.wait_counter("accepted.open-tunnel", 1);
    spa_client(&["send", "request", "web"]);
    red.wait_counter("accepted.order", 1);
    let mut held = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            held = green_ns
                .connect(sock(RED, WEB_PORT), Duration::from_millis(300))
                .ok();
            held.is_some()
        }),
        "green cannot reach red's web port; red log:\n{}",
        red.log_text()
    );
    let mut held = held.expect("connection");
    echo(&mut held, b"hello").expect("echo through red's opening");
    let red_flows = || {
        let out = red_ns.ok(&[
            "conntrack",
            "-L",
            "-p",
            "tcp",
            "--orig-src",
            &GREEN_R.to_string(),
            "--orig-port-dst",
            &WEB_PORT.to_string(),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("ESTABLISHED"))
            .count()
    };
    assert!(red_flows() >= 1);

    run_ok(Command::new(&server).args([
        "pki",
        "revoke",
        "--dir",
        &dir.s("ca"),
        "--cert",
        &dir.s("alice.crt"),
    ]));
    run_ok(Command::new(&server).args([
        "pki",
        "crl",
        "--dir",
        &dir.s("ca"),
        "--out",
        &dir.s("crl.pem"),
    ]));
    red.wait_counter("sessions.revoked_by_trust", 1);
    green.wait_counter("sessions.revoked_by_trust", 1);
    assert!(allow4(&red_ns).is_empty(), "{:?}", allow4(&red_ns));
    assert_eq!(red_flows(), 0);
    echo(&mut held, b"after").expect_err("echo through red after the CRL");
    assert!(
        red.log_text().contains("certificate revoked"),
        "{}",
        red.log_text()
    );
    eprintln!("{tag} done in {:?}", started.elapsed());
}
