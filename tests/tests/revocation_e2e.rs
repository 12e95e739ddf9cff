//! End-to-end tests of what revocation ends and of the forward chain
//! (SPEC §9, "What revocation ends" and "A gateway that routes"), as root,
//! in network namespaces:
//!
//! ```text
//!   client 10.200.81.2 ── 10.200.81.1 green 10.200.82.1 ── 10.200.82.2 behind
//!                                          10.200.83.1 ── 10.200.83.2 scanner
//!                                          10.200.84.2 ── 10.200.84.1 red
//! ```
//!
//! (Each test builds only the hosts it needs; red runs `red-relay`, with
//! green relaying orders to it.)
//!
//! Green runs the real `spa-server` (blackhole, packet capture, `nobody`)
//! with a PKI made by the operator's commands (`spa-server pki …`). The
//! revocation tests hold established TCP connections through a knock and
//! watch them end; connection-tracking entries are read with the
//! `conntrack` tool, independently of the daemon's own netlink code.
//!
//! Needs root, iproute2, nftables, tcpdump and conntrack; fails with the
//! `apt-get install` line when one is missing.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, allow4, bin, echo, link4, make_relay_pki,
    require_tools, run_ok, unique_tag, wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 2);
const GREEN_B: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 1);
const BEHIND: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 2);
const GREEN_S: Ipv4Addr = Ipv4Addr::new(10, 200, 83, 1);
const SCANNER: Ipv4Addr = Ipv4Addr::new(10, 200, 83, 2);
/// A TCP connect that gets no answer gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Green and the client, the operator's PKI (alice), a CRL, and green's
/// configuration with `firewall` lines added to `[firewall]` and `rest`
/// appended.
struct Bed {
    dir: TempDir,
    green: Netns,
    client: Netns,
    tag: String,
}

impl Bed {
    fn new(firewall: &str, rest: &str) -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
            ("conntrack", "conntrack"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let green = Netns::new("green", &tag);
        let client = Netns::new("client", &tag);
        link4(
            &green,
            &format!("g1{tag}"),
            GREEN_C,
            &client,
            &format!("c{tag}"),
            CLIENT,
        );
        let server = bin("spa-server");
        let keys = make_relay_pki(&dir, "revocation e2e CA", &bin("red-relay"), None);
        run_ok(Command::new(&server).args([
            "pki",
            "crl",
            "--dir",
            &dir.s("ca"),
            "--out",
            &dir.s("crl.pem"),
        ]));
        // The daemon, as nobody, re-reads its anchors on every trust reload:
        // from the public copy ca.pem (the CA directory is closed).
        let config = format!(
            r#"[daemon]
knock_port = {KNOCK_PORT}
keys = ["{key}"]
replay_db = "{db}"
control_socket = "{sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]
crls = ["{crl}"]

[firewall]
mode = "blackhole"
{firewall}

[[services]]
name = "ssh"
port = {SSH_PORT}

[[rules]]
identity = "cn:alice"
services = ["ssh"]
{rest}
"#,
            key = dir.s("green.key"),
            db = dir.s("green.redb"),
            sock = dir.s("green.sock"),
            ca = dir.s("ca.pem"),
            crl = dir.s("crl.pem"),
        );
        std::fs::write(dir.join("green.toml"), config).expect("green.toml");
        let profile = format!(
            r#"[profiles.e2e]
server = "{GREEN_C}"
port = {KNOCK_PORT}
server_key = "{green_pub}"
certificate = "{cert}"
key = "{key}"
services = ["ssh"]
allow_ip = "auto"
lifetime = 300
"#,
            green_pub = keys.green_pub,
            cert = dir.s("alice.crt"),
            key = dir.s("alice.key"),
        );
        std::fs::write(dir.join("client.toml"), profile).expect("client.toml");
        Self {
            dir,
            green,
            client,
            tag,
        }
    }

    fn start_green(&self) -> Green {
        Green::start(
            &self.green,
            &self.dir.join("green.toml"),
            &self.dir.join("green.sock"),
            &self.dir.join("green.log"),
        )
    }

    /// `spa-client send --wait 2222 open` from the client: returns once the
    /// service accepts connections.
    fn knock(&self) {
        let client = bin("spa-client");
        let mut c = self.client.cmd(client.to_str().expect("utf-8"));
        c.arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(["send", "--wait", &SSH_PORT.to_string(), "open"])
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"));
        let out = c.output().expect("spa-client");
        assert!(
            out.status.success(),
            "spa-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        self.client
            .connect(sock(GREEN_C, SSH_PORT), CONNECT_TIMEOUT)
    }

    /// `spa-server <args>` on the host (the PKI and control commands).
    fn server(&self, args: &[&str]) -> Output {
        run_ok(Command::new(bin("spa-server")).args(args))
    }

    /// Established conntrack entries in green of TCP flows from the client
    /// to the service (the `conntrack` tool, not the daemon's code).
    fn established_from_client(&self) -> usize {
        self.conntrack(&[
            "-p",
            "tcp",
            "--orig-src",
            &CLIENT.to_string(),
            "--orig-port-dst",
            &SSH_PORT.to_string(),
        ])
        .iter()
        .filter(|l| l.contains("ESTABLISHED"))
        .count()
    }

    /// Conntrack entries in green that green started towards the client
    /// (what a mid-stream pickup of a server's segment would create).
    fn picked_up_towards_client(&self) -> Vec<String> {
        self.conntrack(&[
            "-p",
            "tcp",
            "--orig-src",
            &GREEN_C.to_string(),
            "--orig-dst",
            &CLIENT.to_string(),
        ])
    }

    fn conntrack(&self, filter: &[&str]) -> Vec<String> {
        let mut args = vec!["conntrack", "-L"];
        args.extend_from_slice(filter);
        let out = self.green.ok(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Packets the output chain's pickup rule dropped.
    fn pickups_dropped(&self) -> u64 {
        let out = self
            .green
            .ok(&["nft", "list", "chain", "inet", "spa", "output"]);
        counter_of(&String::from_utf8_lossy(&out.stdout), "tcp flags")
    }
}

/// The `counter packets N` of the first rule containing `needle`.
fn counter_of(listing: &str, needle: &str) -> u64 {
    listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("counter packets"))
        .and_then(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no counter for {needle:?} in:\n{listing}"))
}

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

/// Asserts a TCP connect got no answer at all (timed out: no RST, no ICMP).
fn assert_silently_dropped(r: std::io::Result<TcpStream>, who: &str) {
    match r {
        Ok(_) => panic!("{who}: the connection was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::TimedOut,
            "{who}: expected a silent drop (timeout), got {e}"
        ),
    }
}

/// `revoke-session` closes the session and ends its established
/// connections: their conntrack entries are deleted, the client's next
/// segment finds no entry and no element and is dropped, and a segment the
/// server sends first is not picked up mid-stream either.
#[test]
fn revoke_ends_established_connections() {
    let started = Instant::now();
    let bed = Bed::new("", "");
    let server = HeldServer::start(&bed.green, sock(GREEN_C, SSH_PORT));
    let green = bed.start_green();
    bed.knock();
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
    assert!(allow4(&bed.green).is_empty(), "{:?}", allow4(&bed.green));

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

/// With forwarding on and `forward = "drop"`: a scanner's packets to a
/// host behind green do not cross (counted at that host), the allow list
/// and management do, replies of established flows do, and once the
/// scanner is blocked even the allowed destination is closed to it. The
/// default (`accept`) draws a warning from check-config.
#[test]
fn forward_drop_keeps_scanners_from_the_hosts_behind_green() {
    let started = Instant::now();
    let bed = Bed::new(
        "management = [\"10.200.81.2/32\"]\n\
         forward = \"drop\"\n\
         forward_allow = [\"10.200.82.2 tcp/8080\", \"from 10.200.82.0/24\"]",
        "[ips]\nscan_ports = 3\n",
    );
    let tag = &bed.tag;
    let behind = Netns::new("behind", tag);
    let scanner = Netns::new("scanner", tag);
    let behind_if = format!("b{tag}");
    link4(
        &bed.green,
        &format!("g2{tag}"),
        GREEN_B,
        &behind,
        &behind_if,
        BEHIND,
    );
    link4(
        &bed.green,
        &format!("g3{tag}"),
        GREEN_S,
        &scanner,
        &format!("s{tag}"),
        SCANNER,
    );
    for (ns, via) in [
        (&bed.client, GREEN_C),
        (&behind, GREEN_B),
        (&scanner, GREEN_S),
    ] {
        ns.ok(&["ip", "route", "add", "default", "via", &via.to_string()]);
    }
    bed.green
        .ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    let green = bed.start_green();
    assert!(
        !green.log_text().contains("this host forwards packets"),
        "{}",
        green.log_text()
    );
    let _closed = TcpService::start(&behind, sock(BEHIND, SSH_PORT));
    let allowed = TcpService::start(&behind, sock(BEHIND, 8080));
    let outside = TcpService::start(&scanner, sock(SCANNER, 7070));
    let mut dump = Tcpdump::start(&behind, &behind_if, "tcp", &bed.dir.join("behind.pcap"));

    // The scanner: nothing to the host's other ports crosses.
    for _ in 0..2 {
        assert_silently_dropped(
            scanner.connect(sock(BEHIND, SSH_PORT), CONNECT_TIMEOUT),
            "scanner to behind:2222",
        );
    }
    // The allow list, and the replies of its established flow.
    let mut kept = scanner
        .connect(sock(BEHIND, 8080), CONNECT_TIMEOUT)
        .expect("forward_allow 10.200.82.2 tcp/8080");
    echo(&mut kept, b"allowed").expect("echo through the allow list");
    // Management reaches every port.
    let mut m = bed
        .client
        .connect(sock(BEHIND, SSH_PORT), CONNECT_TIMEOUT)
        .expect("management to behind:2222");
    echo(&mut m, b"management").expect("management echo");
    // The host behind reaches out ("from"), and the replies come back.
    let mut out = behind
        .connect(sock(SCANNER, 7070), CONNECT_TIMEOUT)
        .expect("behind reaches out");
    echo(&mut out, b"outbound").expect("outbound echo");
    // Counted at the far side: the capture saw management's packets to
    // port 2222 (and the scanner's to the allowed 8080), and none of the
    // scanner's to port 2222. (tcpdump hands packets over in
    // blocks: wait until management's are in the file before stopping.)
    let file = dump.file.clone();
    let read = || {
        let out = Command::new("tcpdump")
            .arg("-r")
            .arg(&file)
            .arg("-n")
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(5), || read()
            .contains(&format!("IP {CLIENT}."))),
        "the capture at the far side saw nothing: {}",
        read()
    );
    let seen = dump.lines();
    let from = |who: Ipv4Addr| {
        let to = format!("> {BEHIND}.{SSH_PORT}:");
        seen.iter()
            .filter(|l| l.contains(&format!("IP {who}.")) && l.contains(&to))
            .count()
    };
    assert_eq!(from(SCANNER), 0, "scanner packets crossed: {seen:?}");
    assert!(from(CLIENT) > 0, "the capture saw nothing: {seen:?}");
    assert_eq!(allowed.accepted(), 1);
    assert_eq!(outside.accepted(), 1);
    let fwd = String::from_utf8_lossy(
        &bed.green
            .ok(&["nft", "list", "chain", "inet", "spa", "forward"])
            .stdout,
    )
    .into_owned();
    let last_drop = fwd
        .lines()
        .rev()
        .find(|l| l.contains("counter packets"))
        .expect("final drop");
    assert!(
        counter_of(last_drop, "drop") >= 2,
        "the scanner's SYNs reached the forward chain: {fwd}"
    );

    // Blocked (it probes green's closed ports): the allowed destination is
    // closed to it for new flows; its established flow stays.
    for port in [1, 2, 3, 4] {
        let _ = scanner.connect(sock(GREEN_S, port), Duration::from_millis(200));
    }
    green.wait_counter("blocked.scan", 1);
    assert_silently_dropped(
        scanner.connect(sock(BEHIND, 8080), CONNECT_TIMEOUT),
        "blocked scanner to the allowed destination",
    );
    echo(&mut kept, b"still").expect("an established flow survives the block");

    // The default policy on a forwarding host: check-config warns.
    let cfg = std::fs::read_to_string(bed.dir.join("green.toml")).expect("config");
    let open = bed.dir.join("open.toml");
    std::fs::write(
        &open,
        cfg.replace("forward = \"drop\"", "forward = \"accept\""),
    )
    .expect("open.toml");
    let spa_server = bin("spa-server");
    let out = bed
        .green
        .cmd(spa_server.to_str().expect("utf-8"))
        .args(["check-config", "--config"])
        .arg(&open)
        .env_remove("SSH_CONNECTION")
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: firewall.forward"), "{stderr}");
    eprintln!("{tag} done in {:?}", started.elapsed());
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
