//! End-to-end tests of the green daemon (`spa-server run`), as root, in
//! network namespaces:
//!
//! ```text
//!   client 10.200.1.2 ── 10.200.1.1 green 10.200.2.1 ── 10.200.2.2 attacker
//!          fd00:200:1::2   fd00:200:1::1  fd00:200:2::1   fd00:200:2::2
//! ```
//!
//! Every test builds its own three namespaces (unique names, deleted on
//! drop, also on failure) and its own daemon; no traffic leaves them.
//! Green runs the real binary with `user = "nobody"`, packet capture and
//! the blackhole firewall, and a TCP echo service on port 2222 ("ssh").
//!
//! Knocks come from the real `spa-client` (the happy paths) or are built
//! here with `proto_spec::seal` and the deterministic test CA of
//! `proto_spec::testkit` (the precise bad inputs), and are sent from a
//! thread that entered the client's or the attacker's namespace.
//!
//! Needs root, iproute2, nftables, tcpdump and nmap; fails with the
//! `apt-get install` line when one is missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, precheck_mac, seal_knock, seal_plaintext};
use proto_spec::sign::{SignatureAlgorithm, Signer, SignerError};
use proto_spec::testkit::{ClientCertSpec, KeyAlg, T_2026, TestCa};
use proto_spec::wire::DatagramKind;
use serde_json::Value;
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, bin, echo, link, pcap, require_tools, unique_tag,
    wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
const GREEN_C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1);
const GREEN_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 2, 0, 0, 0, 0, 1);
/// A TCP connect that gets no answer gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);
const DAY_MS: u64 = 86_400_000;

/// tcpdump filter: anything green sends from its own addresses, except ARP
/// and IPv6 neighbour discovery (types 133-137).
fn green_sends_filter() -> String {
    format!(
        "(src host {GREEN_C} or src host {GREEN_A} or src host {GREEN_C6} or src host {GREEN_A6}) \
         and not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)"
    )
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Strictly increasing timestamps for crafted knocks (SPEC §7.5).
fn fresh_ts() -> u64 {
    static LAST: Mutex<u64> = Mutex::new(0);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    *last = now_ms().max(*last + 1);
    *last
}

fn rand16() -> [u8; 16] {
    let r = spa_keys::random_32().expect("random");
    let mut o = [0u8; 16];
    o.copy_from_slice(&r[..16]);
    o
}

fn rand32() -> [u8; 32] {
    *spa_keys::random_32().expect("random")
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// The three hosts and a working directory.
struct Lab {
    tag: String,
    dir: TempDir,
    green: Netns,
    client: Netns,
    attacker: Netns,
    green_if_c: String,
}

impl Lab {
    fn new() -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
            ("nmap", "nmap"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let green = Netns::new("green", &tag);
        let client = Netns::new("client", &tag);
        let attacker = Netns::new("attacker", &tag);
        let green_if_c = format!("g1{tag}");
        link(
            &green,
            &green_if_c,
            &GREEN_C.to_string(),
            &GREEN_C6.to_string(),
            &client,
            &format!("c{tag}"),
            &CLIENT.to_string(),
            "fd00:200:1::2",
        );
        link(
            &green,
            &format!("g2{tag}"),
            &GREEN_A.to_string(),
            &GREEN_A6.to_string(),
            &attacker,
            &format!("a{tag}"),
            &ATTACKER.to_string(),
            "fd00:200:2::2",
        );
        Self {
            tag,
            dir,
            green,
            client,
            attacker,
            green_if_c,
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Writes green's receiver key (a test key, mode 0600) and returns its
    /// public key.
    fn green_key(&self) -> ReceiverPublicKey {
        let sk = proto_spec::testkit::receiver_key(&format!("green {}", self.tag));
        let pem = spa_keys::receiver_key_to_pem(&sk).expect("pem");
        spa_keys::write_secret_file(&self.path("green.key"), pem.as_bytes(), true)
            .expect("green.key");
        sk.public_key()
    }

    /// Writes `green.toml`: the fixed `[daemon]` part, `[trust]` with the
    /// given anchor and CRL, the services ssh (tcp/2222) and db
    /// (tcp/5432), and `rest` (rules, [ips], …).
    fn green_config(&self, anchor: &Path, crl: Option<&Path>, rest: &str) -> PathBuf {
        let crls = crl.map_or(String::new(), |c| format!("crls = [\"{}\"]\n", c.display()));
        let text = format!(
            "[daemon]\n\
             knock_port = {KNOCK_PORT}\n\
             keys = [\"{key}\"]\n\
             replay_db = \"{db}\"\n\
             control_socket = \"{sock}\"\n\
             user = \"nobody\"\n\
             [trust]\n\
             anchors = [\"{anchor}\"]\n\
             {crls}\
             [[services]]\n\
             name = \"ssh\"\n\
             port = {SSH_PORT}\n\
             [[services]]\n\
             name = \"db\"\n\
             port = 5432\n\
             {rest}\n",
            key = self.path("green.key").display(),
            db = self.path("replay.redb").display(),
            sock = self.path("control.sock").display(),
            anchor = anchor.display(),
        );
        let p = self.path("green.toml");
        std::fs::write(&p, text).expect("green.toml");
        p
    }

    fn start_green(&self, config: &Path, log: &str) -> Green {
        Green::start(
            &self.green,
            config,
            &self.path("control.sock"),
            &self.path(log),
        )
    }

    /// `nft list set inet spa <set>` in green.
    fn nft_set(&self, set: &str) -> String {
        String::from_utf8_lossy(
            &self
                .green
                .ok(&["nft", "list", "set", "inet", "spa", set])
                .stdout,
        )
        .into_owned()
    }

    /// `spa-client --config client.toml <args>` in the client namespace,
    /// with its state under the working directory.
    fn spa_client(&self, args: &[&str]) -> Output {
        let client = bin("spa-client");
        let mut c = self.client.cmd(client.to_str().expect("utf-8"));
        c.arg("--config")
            .arg(self.path("client.toml"))
            .args(args)
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CONFIG_HOME", self.path("config"));
        c.output().expect("spa-client")
    }

    /// Writes the client profile.
    fn client_profile(&self, server_key: &str, cert: &Path, key: &Path, lifetime: u32) {
        let text = format!(
            "[profiles.e2e]\n\
             server = \"{GREEN_C}\"\n\
             port = {KNOCK_PORT}\n\
             server_key = \"{server_key}\"\n\
             certificate = \"{}\"\n\
             key = \"{}\"\n\
             services = [\"ssh\"]\n\
             allow_ip = \"auto\"\n\
             lifetime = {lifetime}\n",
            cert.display(),
            key.display()
        );
        std::fs::write(self.path("client.toml"), text).expect("client.toml");
    }

    fn client_connect(&self) -> std::io::Result<std::net::TcpStream> {
        self.client
            .connect(sock(GREEN_C, SSH_PORT), CONNECT_TIMEOUT)
    }

    fn attacker_connect(&self) -> std::io::Result<std::net::TcpStream> {
        self.attacker
            .connect(sock(GREEN_A, SSH_PORT), CONNECT_TIMEOUT)
    }

    fn send_from_client(&self, datagram: &[u8]) {
        self.client
            .send_udp(IpAddr::V4(CLIENT), sock(GREEN_C, KNOCK_PORT), datagram);
    }

    fn send_from_attacker(&self, datagram: &[u8]) {
        self.attacker
            .send_udp(IpAddr::V4(ATTACKER), sock(GREEN_A, KNOCK_PORT), datagram);
    }
}

/// Asserts a TCP connect got no answer at all (timed out: no RST, no ICMP).
fn assert_silently_dropped(r: std::io::Result<std::net::TcpStream>, who: &str) {
    match r {
        Ok(_) => panic!("{who}: the connection was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "{who}: expected a silent drop (timeout), got {e}"
        ),
    }
}

fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The deterministic test PKI, with PEM files in the lab directory.
struct Pki {
    ca: TestCa,
}

impl Pki {
    fn new(name: &str) -> Self {
        Self {
            ca: TestCa::new(name).expect("test CA"),
        }
    }

    fn write_ca(&self, path: &Path) -> PathBuf {
        std::fs::write(
            path,
            spa_keys::pem_encode("CERTIFICATE", self.ca.cert_der()),
        )
        .expect("ca.pem");
        path.to_path_buf()
    }

    /// Writes a client certificate and key as PEM files (for spa-client).
    fn write_client(&self, spec: &ClientCertSpec, cert: &Path, key: &Path) {
        let (c, k) = self.ca.issue(spec).expect("issue");
        std::fs::write(cert, spa_keys::pem_encode("CERTIFICATE", &c)).expect("cert");
        spa_keys::write_secret_file(
            key,
            spa_keys::pem_encode("PRIVATE KEY", &k).as_bytes(),
            true,
        )
        .expect("key");
    }

    fn signer(&self, spec: &ClientCertSpec) -> Box<dyn Signer + Send + Sync> {
        self.ca.signer(spec).expect("signer")
    }

    /// Writes a CRL revoking `serials` (valid from an hour ago for a day)
    /// through a temporary file and a rename; with `mtime`, the new file
    /// gets that modification time.
    fn write_crl(&self, path: &Path, serials: &[u64], mtime: Option<SystemTime>) {
        let now = now_ms();
        let der = self
            .ca
            .crl(serials, now - 3_600_000, now + DAY_MS)
            .expect("crl");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, spa_keys::pem_encode("X509 CRL", &der)).expect("crl");
        if let Some(t) = mtime {
            std::fs::File::options()
                .write(true)
                .open(&tmp)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
        }
        std::fs::rename(&tmp, path).expect("rename crl");
    }
}

fn spec(cn: &str, serial: u64) -> ClientCertSpec {
    let mut s = ClientCertSpec::new(cn, KeyAlg::Ed25519, serial);
    s.key_label = format!("e2e {cn} {serial}");
    s
}

/// An open-tunnel knock.
fn knock(
    signer: &dyn Signer,
    to: &ReceiverPublicKey,
    ts: u64,
    open_for: OpenFor,
    services: &[&str],
) -> Vec<u8> {
    seal_knock(
        signer,
        to,
        &KnockRequest {
            msg_type: MessageType::OpenTunnel,
            timestamp_ms: ts,
            nonce: rand16(),
            session_id: rand16(),
            lifetime_s: 30,
            open_for,
            services,
        },
        rand32(),
    )
    .expect("seal")
}

fn knock_for(signer: &dyn Signer, to: &ReceiverPublicKey, from: Ipv4Addr) -> Vec<u8> {
    knock(
        signer,
        to,
        fresh_ts(),
        OpenFor::Addr(IpAddr::V4(from)),
        &["ssh"],
    )
}

/// A certificate with somebody else's key: the signature cannot verify.
struct WrongKeySigner {
    cert: Vec<u8>,
    key: Box<dyn Signer + Send + Sync>,
}

impl Signer for WrongKeySigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        self.key.algorithm()
    }
    fn certificate_der(&self) -> &[u8] {
        &self.cert
    }
    fn sign(&self, t: &[u8]) -> Result<[u8; 64], SignerError> {
        self.key.sign(t)
    }
}

/// Runs nmap in `ns` with fast timing; returns the grepable output.
fn nmap(ns: &Netns, args: &[&str], target: impl std::fmt::Display) -> std::process::Child {
    let mut c = ns.cmd("nmap");
    c.args([
        "-Pn",
        "-n",
        "-T5",
        "--max-retries",
        "1",
        "--host-timeout",
        "30s",
        "-oG",
        "-",
    ])
    .args(args)
    .arg(target.to_string())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c.spawn().expect("nmap")
}

/// The port states nmap reported: listed ports and the ignored state's
/// count, e.g. `[("filtered", 1026)]`.
fn nmap_states(out: &str) -> Vec<(String, usize)> {
    let mut states = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("Host:")) {
        for field in line.split('\t') {
            if let Some(ports) = field.strip_prefix("Ports: ") {
                for p in ports.split(", ").filter(|p| !p.trim().is_empty()) {
                    let state = p.split('/').nth(1).unwrap_or("?").to_owned();
                    states.push((state, 1));
                }
            } else if let Some(ign) = field.strip_prefix("Ignored State: ") {
                // "filtered (1026)"
                let (state, n) = ign.split_once(" (").expect("ignored state");
                let n = n.trim_end_matches(')').parse().expect("count");
                states.push((state.to_owned(), n));
            }
        }
    }
    states
}

fn check_scan(child: std::process::Child, who: &str, ports: usize, allowed: &[&str]) {
    let out = child.wait_with_output().expect("nmap");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{who}: nmap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("(1 host up)"), "{who}: {text}");
    let states = nmap_states(&text);
    let total: usize = states.iter().map(|(_, n)| n).sum();
    assert_eq!(total, ports, "{who}: every port reported: {text}");
    for (state, _) in &states {
        assert!(
            allowed.contains(&state.as_str()),
            "{who}: nmap found a port {state}: {text}"
        );
    }
    let mut summary: Vec<(String, usize)> = Vec::new();
    for (state, n) in states {
        match summary.iter_mut().find(|(s, _)| *s == state) {
            Some(e) => e.1 += n,
            None => summary.push((state, n)),
        }
    }
    eprintln!("{who}: {summary:?}");
}

/// 1. Before any knock, nmap from the attacker and from the client sees
///    every TCP port filtered (even 2222, where a service listens) and the
///    knock port open|filtered over UDP, and green sends nothing at all.
#[test]
fn before_any_knock_scans_see_only_filtered_ports_and_green_is_silent() {
    let started = Instant::now();
    let lab = Lab::new();
    lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    let cfg = lab.green_config(
        &ca,
        None,
        "[[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"]\n[ips]\nblock = 3\n",
    );
    // A listening service: without the firewall nmap would find it open
    // and every other port closed (RST).
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let green = lab.start_green(&cfg, "green.log");
    let mut dump = Tcpdump::start(
        &lab.green,
        "any",
        &green_sends_filter(),
        &lab.path("silence.pcap"),
    );

    let ports = "1-1024,2222,62201";
    let a = nmap(&lab.attacker, &["-sS", "-p", ports], GREEN_A);
    let c = nmap(&lab.client, &["-sS", "-p", ports], GREEN_C);
    check_scan(a, "attacker TCP", 1026, &["filtered"]);
    check_scan(c, "client TCP", 1026, &["filtered"]);
    let a = nmap(&lab.attacker, &["-sU", "-p", "62201"], GREEN_A);
    let c = nmap(&lab.client, &["-sU", "-p", "62201"], GREEN_C);
    check_scan(a, "attacker UDP", 1, &["open|filtered"]);
    check_scan(c, "client UDP", 1, &["open|filtered"]);

    let sent = dump.lines();
    assert!(
        sent.is_empty(),
        "green sent {} packets:\n{}",
        sent.len(),
        sent.join("\n")
    );
    // The scans did reach green: its capture saw them as probes.
    let probes = green.counter("probes");
    assert!(probes >= 500, "green saw only {probes} probes");
    eprintln!("probes seen by green: {probes}; {:?}", started.elapsed());
}

/// The client's knock as captured on green's wire.
fn captured_knocks(file: &Path, from: Ipv4Addr) -> Vec<Vec<u8>> {
    pcap::udp_datagrams(&std::fs::read(file).expect("pcap"))
        .into_iter()
        .filter(|u| u.src == IpAddr::V4(from) && u.dst_port == KNOCK_PORT)
        .map(|u| u.payload)
        .collect()
}

/// 2 and 3. With the real tools (`spa-server pki`, `spa-client keygen
/// --csr`, `spa-server keygen`): a knock opens 2222 for the client only,
/// for the profile's 3 s; the client's datagram resent by the attacker is
/// refused as replayed and opens nothing; after kill -9 and a restart on
/// the same replay database, the same datagram resent from the client is
/// refused as replayed too.
#[test]
fn knock_opens_for_the_client_only_until_expiry_and_replays_are_refused() {
    let started = Instant::now();
    let lab = Lab::new();
    let server = bin("spa-server");
    let ca_dir = lab.path("ca");
    run_ok(
        Command::new(&server)
            .args(["pki", "init", "--name", "spa e2e CA", "--dir"])
            .arg(&ca_dir),
    );
    run_ok(
        lab.client
            .cmd(bin("spa-client").to_str().expect("utf-8"))
            .args(["keygen", "--name", "alice", "--out"])
            .arg(lab.path("alice.key"))
            .arg("--csr")
            .arg(lab.path("alice.csr")),
    );
    run_ok(
        Command::new(&server)
            .args(["pki", "issue", "--client", "--name", "alice", "--dir"])
            .arg(&ca_dir)
            .arg("--csr")
            .arg(lab.path("alice.csr"))
            .arg("--out")
            .arg(lab.path("alice.crt")),
    );
    let keygen = run_ok(
        Command::new(&server)
            .args(["keygen", "--out"])
            .arg(lab.path("green.key")),
    );
    let green_pub = String::from_utf8_lossy(&keygen.stdout).trim().to_owned();
    // The CA directory holds the CA key (0700): let `nobody` read ca.pem
    // from a copy, as an operator would install it.
    let anchor = lab.path("ca.pem");
    std::fs::copy(ca_dir.join("ca.pem"), &anchor).expect("copy ca.pem");
    let cfg = lab.green_config(
        &anchor,
        None,
        "[[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"]\n",
    );
    lab.client_profile(
        &green_pub,
        &lab.path("alice.crt"),
        &lab.path("alice.key"),
        3,
    );
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let mut green = lab.start_green(&cfg, "green.log");

    assert_silently_dropped(lab.client_connect(), "client before the knock");
    // Everything green sends during the test: only the TCP session it
    // opened for the client (a positive control for the silence checks).
    let mut sends = Tcpdump::start(
        &lab.green,
        "any",
        &green_sends_filter(),
        &lab.path("sends.pcap"),
    );

    let mut wire = Tcpdump::start(
        &lab.green,
        &lab.green_if_c,
        &format!("udp dst port {KNOCK_PORT}"),
        &lab.path("knock.pcap"),
    );
    let t0 = Instant::now();
    let out = lab.spa_client(&["send", "--wait", "2222", "open"]);
    assert!(
        out.status.success(),
        "spa-client send: {}{}\ngreen log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        green.log_text()
    );
    let mut held = lab
        .client_connect()
        .expect("client connects after the knock");
    echo(&mut held, b"hello").expect("echo");
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "too slow to check the opening"
    );

    let st = green.status();
    let sessions = st["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{st}");
    assert_eq!(sessions[0]["identity"], "cn:alice");
    assert_eq!(sessions[0]["address"], CLIENT.to_string());
    assert_eq!(sessions[0]["openings"][0]["port"], SSH_PORT);
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
    assert!(
        lab.nft_set("allow4")
            .contains(&format!("{CLIENT} . tcp . {SSH_PORT} timeout 3s"))
    );

    // The attacker gets nothing: dropped in silence.
    assert_silently_dropped(lab.attacker_connect(), "attacker after the client's knock");

    // The attacker resends the client's datagram, captured off the wire.
    wire.stop();
    let knocks = captured_knocks(&wire.file, CLIENT);
    assert!(
        !knocks.is_empty(),
        "no knock captured: {:?}",
        pcap::udp_datagrams(&std::fs::read(&wire.file).expect("pcap"))
    );
    let first = knocks[0].clone();
    lab.send_from_attacker(&first);
    green.wait_counter("refused.replayed", 1);
    let st = green.status();
    assert_eq!(
        st["counters"]["refused.wrong_source_address"],
        Value::Null,
        "{st}"
    );
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
    assert_silently_dropped(lab.attacker_connect(), "attacker after its replay");
    assert!(!lab.nft_set("allow4").contains(&ATTACKER.to_string()));

    // The hole closes after 3 s: new connections fail, not before.
    let mut closed_at = None;
    let closed = wait_until(Duration::from_secs(8), || {
        let at = t0.elapsed();
        match lab.client_connect() {
            Ok(_) => false,
            Err(_) => {
                closed_at = Some(at);
                true
            }
        }
    });
    assert!(closed, "the opening did not close");
    let closed_at = closed_at.expect("time");
    assert!(
        closed_at >= Duration::from_millis(2900),
        "closed too early: {closed_at:?} after the knock was sent"
    );
    assert_silently_dropped(lab.client_connect(), "client after expiry");
    // The connection made while open lives on (conntrack: established).
    echo(&mut held, b"still here").expect("established connection survives expiry");
    assert!(wait_until(Duration::from_secs(2), || {
        green.status()["sessions"]
            .as_array()
            .is_some_and(Vec::is_empty)
    }));
    eprintln!("opening closed {closed_at:?} after the knock");
    let sent = sends.lines();
    assert!(
        !sent.is_empty(),
        "the capture of green's packets saw nothing"
    );
    let service = format!("IP {GREEN_C}.{SSH_PORT} > {CLIENT}.");
    assert!(
        sent.iter().all(|l| l.contains(&service)),
        "green sent something else than the client's session:\n{}",
        sent.join("\n")
    );
    // Plain log lines (no terminal colours) that fail2ban can match.
    let log = green.log_text();
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("refused")
            && l.contains(&format!("src={ATTACKER}"))
            && l.contains("reason=replayed")),
        "{log}"
    );

    // kill -9 and restart on the same replay database: the client's old
    // datagram, resent from the client's own address, is still a replay.
    green.kill9();
    let green = lab.start_green(&cfg, "green2.log");
    assert!(
        green.log_text().contains("replay state loaded"),
        "{}",
        green.log_text()
    );
    lab.send_from_client(&first);
    green.wait_counter("refused.replayed", 1);
    let st = green.status();
    assert_eq!(st["counters"]["accepted.open-tunnel"], Value::Null, "{st}");
    assert!(st["sessions"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert_silently_dropped(lab.client_connect(), "client after the replay");
    // A fresh knock still works.
    let out = lab.spa_client(&["send", "--wait", "2222", "open"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.client_connect()
        .expect("client connects after a fresh knock");
    eprintln!("done in {:?}", started.elapsed());
}

/// 4. Every class of bad input is refused with its reason counted, opens
///    nothing, and green sends nothing back (tcpdump over the whole test).
#[test]
fn every_bad_input_is_refused_counted_and_unanswered() {
    let started = Instant::now();
    let lab = Lab::new();
    let pk = lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    let crl = lab.path("crl.pem");
    pki.write_crl(&crl, &[13], None);
    let cfg = lab.green_config(
        &ca,
        Some(&crl),
        "[[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:old\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:revoked\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:server\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:later\"\nservices = [\"ssh\"]\n\
         [ips]\nfailures = 64\n",
    );
    let green = lab.start_green(&cfg, "green.log");
    let mut dump = Tcpdump::start(
        &lab.green,
        "any",
        &green_sends_filter(),
        &lab.path("silence.pcap"),
    );

    let alice = pki.signer(&spec("alice", 11));
    let to_client = OpenFor::Addr(IpAddr::V4(CLIENT));
    let ssh: &[&str] = &["ssh"];

    // The one valid knock, kept for the replay.
    let valid = knock_for(alice.as_ref(), &pk, CLIENT);
    lab.send_from_client(&valid);
    green.wait_counter("accepted.open-tunnel", 1);

    let other_ca = TestCa::new("spa e2e other CA").expect("CA");
    let mut expired = spec("old", 12);
    expired.not_before_ms = T_2026;
    expired.not_after_ms = now_ms() - DAY_MS;
    let mut not_yet = spec("later", 15);
    not_yet.not_before_ms = now_ms() + DAY_MS;
    let mut server_usage = spec("server", 14);
    server_usage.client_auth = false;
    let wrong_key = WrongKeySigner {
        cert: pki.ca.issue(&spec("alice", 11)).expect("issue").0,
        key: pki.signer(&spec("mallory", 16)),
    };
    let mut bad_version = knock_for(alice.as_ref(), &pk, CLIENT);
    bad_version[0] = 0x02;
    // A valid MAC (anyone with the public key can compute it) over a
    // damaged ciphertext.
    let mut open_failed = knock_for(alice.as_ref(), &pk, CLIENT);
    open_failed[40] ^= 0x55;
    let n = open_failed.len();
    let mac = precheck_mac(DatagramKind::Knock, &pk, &open_failed[..n - 16]);
    open_failed[n - 16..].copy_from_slice(&mac);
    let mut garbage = vec![0xffu8; 300];
    garbage[1..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("refused.too_short", vec![0x01; 20]),
        ("refused.too_long", vec![0x01; 1200]),
        ("refused.bad_version", bad_version),
        (
            "refused.mac_mismatch",
            knock_for(
                alice.as_ref(),
                &proto_spec::testkit::receiver_key("somebody else").public_key(),
                CLIENT,
            ),
        ),
        ("refused.open_failed", open_failed),
        (
            "refused.malformed.unknown_message_type",
            seal_plaintext(DatagramKind::Knock, &pk, &garbage, rand32()).expect("seal"),
        ),
        (
            "refused.certificate.unknown_issuer",
            knock_for(
                other_ca
                    .signer(&spec("alice", 11))
                    .expect("signer")
                    .as_ref(),
                &pk,
                CLIENT,
            ),
        ),
        (
            "refused.certificate.expired",
            knock_for(pki.signer(&expired).as_ref(), &pk, CLIENT),
        ),
        (
            "refused.certificate.not_yet_valid",
            knock_for(pki.signer(&not_yet).as_ref(), &pk, CLIENT),
        ),
        (
            "refused.certificate.revoked",
            knock_for(pki.signer(&spec("revoked", 13)).as_ref(), &pk, CLIENT),
        ),
        (
            "refused.certificate.wrong_usage",
            knock_for(pki.signer(&server_usage).as_ref(), &pk, CLIENT),
        ),
        ("refused.bad_signature", knock_for(&wrong_key, &pk, CLIENT)),
        ("refused.replayed", valid.clone()),
        (
            "refused.stale",
            knock(alice.as_ref(), &pk, fresh_ts() - 120_000, to_client, ssh),
        ),
        (
            "refused.future_dated",
            knock(alice.as_ref(), &pk, fresh_ts() + 60_000, to_client, ssh),
        ),
        (
            "refused.wrong_source_address",
            knock(
                alice.as_ref(),
                &pk,
                fresh_ts(),
                OpenFor::Addr(IpAddr::V4(Ipv4Addr::new(10, 200, 1, 99))),
                ssh,
            ),
        ),
        (
            "refused.source_mode_not_allowed",
            knock(alice.as_ref(), &pk, fresh_ts(), OpenFor::Source, ssh),
        ),
        (
            "refused.unauthorized_service",
            knock(alice.as_ref(), &pk, fresh_ts(), to_client, &["db"]),
        ),
        (
            "refused.unknown_identity",
            knock_for(pki.signer(&spec("mallory", 16)).as_ref(), &pk, CLIENT),
        ),
    ];
    for (counter, datagram) in &cases {
        lab.send_from_client(datagram);
        green.wait_counter(counter, 1);
    }
    // A valid knock over IPv6 is accepted and opens allow6 (green's
    // neighbour advertisements aside, it answers nothing there either).
    let client6 = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
    let v6 = knock(
        alice.as_ref(),
        &pk,
        fresh_ts(),
        OpenFor::Addr(IpAddr::V6(client6)),
        ssh,
    );
    lab.client.send_udp(
        IpAddr::V6(client6),
        SocketAddr::new(IpAddr::V6(GREEN_C6), KNOCK_PORT),
        &v6,
    );
    green.wait_counter("accepted.open-tunnel", 2);
    assert!(
        lab.nft_set("allow6")
            .contains(&format!("{client6} . tcp . {SSH_PORT}"))
    );

    let st = green.status();
    let counters = st["counters"].as_object().expect("counters");
    for (counter, _) in &cases {
        assert_eq!(counters[*counter], 1, "{counter}: {st}");
    }
    let refused: u64 = counters
        .iter()
        .filter(|(k, _)| k.starts_with("refused."))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refused, cases.len() as u64, "one refusal per case: {st}");
    // Every refusal is logged with its reason; one refused after the client
    // was proven (signature verified) also names the client, one refused
    // before (a replay, checked before the signature) does not.
    let log = green.log_text();
    let line = |reason: &str| {
        log.lines()
            .find(|l| l.contains("refused") && l.contains(&format!("reason={reason}")))
            .unwrap_or_else(|| panic!("no refusal line for {reason}:\n{log}"))
            .to_owned()
    };
    assert!(
        line("unauthorized_service").contains("identity=cn:alice"),
        "{}",
        line("unauthorized_service")
    );
    assert!(
        !line("replayed").contains("identity="),
        "{}",
        line("replayed")
    );
    assert_eq!(counters["accepted.open-tunnel"], 2, "{st}");
    assert_eq!(st["sessions"].as_array().map(Vec::len), Some(2), "{st}");
    let allow = lab.nft_set("allow4");
    assert!(!allow.contains("10.200.1.99"), "{allow}");
    assert!(!allow.contains("5432"), "{allow}");

    let sent = dump.lines();
    assert!(
        sent.is_empty(),
        "green sent {} packets:\n{}",
        sent.len(),
        sent.join("\n")
    );
    eprintln!("{} refusal classes in {:?}", cases.len(), started.elapsed());
}

/// 5. Trust reloads without a restart: a new CRL takes effect on SIGHUP
///    (the file is replaced with its old modification time, so only the
///    signal can trigger the reload), and on a file change alone.
#[test]
fn trust_reloads_on_sighup_and_on_file_change() {
    let started = Instant::now();
    let lab = Lab::new();
    let pk = lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    let crl = lab.path("crl.pem");
    pki.write_crl(&crl, &[], None);
    let cfg = lab.green_config(
        &ca,
        Some(&crl),
        "[[rules]]\nidentity = \"cn:carol\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:dave\"\nservices = [\"ssh\"]\n",
    );
    let green = lab.start_green(&cfg, "green.log");
    let carol = pki.signer(&spec("carol", 20));
    let dave = pki.signer(&spec("dave", 21));

    lab.send_from_client(&knock_for(carol.as_ref(), &pk, CLIENT));
    green.wait_counter("accepted.open-tunnel", 1);

    // Revoke carol; same mtime: the poller sees no change.
    let mtime = std::fs::metadata(&crl)
        .and_then(|m| m.modified())
        .expect("mtime");
    let checks = green.counter("trust.checks");
    pki.write_crl(&crl, &[20], Some(mtime));
    // Two checks of the files after the write: the second surely saw it.
    green.wait_counter("trust.checks", checks + 2);
    assert_eq!(green.counter("trust.reloads"), 0, "{}", green.log_text());
    lab.send_from_client(&knock_for(carol.as_ref(), &pk, CLIENT));
    green.wait_counter("accepted.open-tunnel", 2);

    green.signal(Signal::SIGHUP);
    green.wait_counter("trust.reloads", 1);
    assert!(
        green.log_text().contains("trigger=\"SIGHUP\""),
        "{}",
        green.log_text()
    );
    lab.send_from_client(&knock_for(carol.as_ref(), &pk, CLIENT));
    green.wait_counter("refused.certificate.revoked", 1);
    lab.send_from_client(&knock_for(dave.as_ref(), &pk, CLIENT));
    green.wait_counter("accepted.open-tunnel", 3);

    // Revoke dave too, with a new mtime and no signal.
    pki.write_crl(&crl, &[20, 21], None);
    green.wait_counter("trust.reloads", 2);
    assert!(
        green
            .log_text()
            .contains("trigger=\"a trust file changed\""),
        "{}",
        green.log_text()
    );
    lab.send_from_client(&knock_for(dave.as_ref(), &pk, CLIENT));
    green.wait_counter("refused.certificate.revoked", 2);
    let st = green.status();
    assert_eq!(st["counters"]["accepted.open-tunnel"], 3, "{st}");
    assert_eq!(st["counters"]["trust.reload_failures"], Value::Null, "{st}");
    eprintln!("done in {:?}", started.elapsed());
}

/// 6. A scanning attacker is blocked (status and the block4 set), its
///    datagrams that fail the MAC are dropped before any work while
///    blocked, the client is not affected, and the block ends after
///    `[ips] block` seconds.
#[test]
fn a_scanner_is_blocked_then_released() {
    let started = Instant::now();
    let lab = Lab::new();
    let pk = lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    let cfg = lab.green_config(
        &ca,
        None,
        "[[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"]\n\
         [[rules]]\nidentity = \"cn:mallet\"\nservices = [\"ssh\"]\n\
         [ips]\nblock = 3\nscan_ports = 10\nscan_window = 10\n",
    );
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let green = lab.start_green(&cfg, "green.log");

    let scan = nmap(&lab.attacker, &["-sS", "-p", "1-25"], GREEN_A);
    let is_blocked = |st: &Value| st["blocked"].as_array().is_some_and(|b| !b.is_empty());
    assert!(
        wait_until(Duration::from_secs(20), || is_blocked(&green.status())),
        "the scanner was not blocked: {}",
        green.status()
    );
    let blocked_at = Instant::now();
    let st = green.status();
    let blocked: Vec<&str> = st["blocked"]
        .as_array()
        .expect("blocked")
        .iter()
        .filter_map(|b| b["address"].as_str())
        .collect();
    assert_eq!(blocked, [ATTACKER.to_string()], "{st}");
    assert!(st["counters"]["blocked.scan"].as_u64() >= Some(1), "{st}");
    assert!(lab.nft_set("block4").contains(&ATTACKER.to_string()));

    // While blocked, the attacker's datagrams that fail the MAC are
    // dropped before any work, and its connections get no answer. (A
    // valid knock would lift the block, SPEC §9: the lock-out tests.)
    let mallet = pki.signer(&spec("mallet", 31));
    lab.send_from_attacker(&[0x01; 300]);
    green.wait_counter("refused.blocked_source", 1);
    assert_silently_dropped(lab.attacker_connect(), "blocked attacker");
    // The client is not affected.
    let alice = pki.signer(&spec("alice", 30));
    lab.send_from_client(&knock_for(alice.as_ref(), &pk, CLIENT));
    green.wait_counter("accepted.open-tunnel", 1);
    lab.client_connect()
        .expect("client connects while the attacker is blocked");
    assert!(is_blocked(&green.status()), "the block ended too early");
    check_scan(scan, "attacker TCP", 25, &["filtered"]);

    // The block ends after 3 s.
    assert!(
        wait_until(Duration::from_secs(6), || !lab
            .nft_set("block4")
            .contains(&ATTACKER.to_string())),
        "still in block4: {}",
        lab.nft_set("block4")
    );
    assert!(wait_until(Duration::from_secs(2), || {
        green.status()["blocked"]
            .as_array()
            .is_some_and(Vec::is_empty)
    }));
    let released = blocked_at.elapsed();
    assert!(
        released >= Duration::from_secs(2),
        "released after {released:?}"
    );
    // Once released, a new valid knock lets it in.
    lab.send_from_attacker(&knock_for(mallet.as_ref(), &pk, ATTACKER));
    green.wait_counter("accepted.open-tunnel", 2);
    lab.attacker_connect()
        .expect("attacker connects after a knock once the block ended");
    eprintln!(
        "released {released:?} after the scan; done in {:?}",
        started.elapsed()
    );
}

/// 6b. An IPv6 scanner is blocked for its whole /64 (the IPS counts IPv6
///     sources per /64): status shows the prefix, the prefix set
///     `block6_64` holds it, a datagram failing the MAC from a second
///     address of the same /64 is dropped by the daemon (before any work) and its
///     connections by the firewall, while another /64 of the same host
///     knocks and connects; the block ends after `[ips] block` seconds.
#[test]
fn an_ipv6_scanner_is_blocked_for_its_whole_64() {
    let started = Instant::now();
    let lab = Lab::new();
    let pk = lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    let cfg = lab.green_config(
        &ca,
        None,
        "[[rules]]\nidentity = \"cn:mallet\"\nservices = [\"ssh\"]\n\
         [ips]\nblock = 5\nscan_ports = 10\nscan_window = 10\n",
    );
    // Dual stack: the echo service answers on IPv6 too.
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0u16; 8], SSH_PORT)));
    // A second /64 on the attacker's link (green fd00:200:3::1, attacker
    // fd00:200:3::2): the same host, another prefix.
    let (green_other, attacker_other): (Ipv6Addr, Ipv6Addr) = (
        "fd00:200:3::1".parse().expect("address"),
        "fd00:200:3::2".parse().expect("address"),
    );
    let attacker_if = format!("a{}", lab.tag);
    lab.green.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:200:3::1/64",
        "dev",
        &format!("g2{}", lab.tag),
        "nodad",
    ]);
    lab.attacker.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:200:3::2/64",
        "dev",
        &attacker_if,
        "nodad",
    ]);
    let green = lab.start_green(&cfg, "green.log");
    let table = String::from_utf8_lossy(
        &lab.green
            .ok(&["nft", "list", "table", "inet", "spa"])
            .stdout,
    )
    .into_owned();
    assert!(
        table.contains("ip6 saddr & ffff:ffff:ffff:ffff:: == @block6_64 drop"),
        "{table}"
    );

    // The scan comes from fd00:200:2::2, the attacker's only address in
    // that /64 so far.
    let scanner: Ipv6Addr = "fd00:200:2::2".parse().expect("address");
    let scan = nmap(&lab.attacker, &["-6", "-sS", "-p", "1-25"], GREEN_A6);
    let is_blocked = |st: &Value| st["blocked"].as_array().is_some_and(|b| !b.is_empty());
    assert!(
        wait_until(Duration::from_secs(20), || is_blocked(&green.status())),
        "the IPv6 scanner was not blocked: {}",
        green.status()
    );
    let blocked_at = Instant::now();
    let st = green.status();
    let blocked = st["blocked"].as_array().expect("blocked");
    assert_eq!(blocked.len(), 1, "{st}");
    assert_eq!(blocked[0]["address"], "fd00:200:2::/64", "{st}");
    assert_eq!(blocked[0]["prefix"], 64, "{st}");
    assert_eq!(blocked[0]["source"], scanner.to_string(), "{st}");
    let set = lab.nft_set("block6_64");
    assert!(set.contains("fd00:200:2:: timeout 5s"), "{set}");
    assert!(
        !lab.nft_set("block6").contains("fd00:200:2"),
        "per /64, not per address"
    );

    // The scanner moves to another address of its /64 and sends a datagram
    // that fails the MAC: dropped by the daemon before any work, nothing
    // opened, and its connections get no answer. (A valid knock would lift
    // the block, SPEC §9.)
    let second: Ipv6Addr = "fd00:200:2::3".parse().expect("address");
    lab.attacker.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:200:2::3/64",
        "dev",
        &attacker_if,
        "nodad",
    ]);
    let mallet = pki.signer(&spec("mallet", 41));
    let to_green = SocketAddr::new(IpAddr::V6(GREEN_A6), KNOCK_PORT);
    lab.attacker
        .send_udp(IpAddr::V6(second), to_green, &[0x01; 300]);
    green.wait_counter("refused.blocked_source", 1);
    assert_eq!(green.counter("accepted.open-tunnel"), 0);
    assert!(!lab.nft_set("allow6").contains(&second.to_string()));
    // Whichever address of the /64 the kernel picks as the source.
    assert_silently_dropped(
        lab.attacker.connect(
            SocketAddr::new(IpAddr::V6(GREEN_A6), SSH_PORT),
            CONNECT_TIMEOUT,
        ),
        "a second address of the blocked /64",
    );

    // The same host from another /64 is not blocked.
    let from_other = knock(
        mallet.as_ref(),
        &pk,
        fresh_ts(),
        OpenFor::Addr(IpAddr::V6(attacker_other)),
        &["ssh"],
    );
    lab.attacker.send_udp(
        IpAddr::V6(attacker_other),
        SocketAddr::new(IpAddr::V6(green_other), KNOCK_PORT),
        &from_other,
    );
    green.wait_counter("accepted.open-tunnel", 1);
    lab.attacker
        .connect(
            SocketAddr::new(IpAddr::V6(green_other), SSH_PORT),
            CONNECT_TIMEOUT,
        )
        .expect("another /64 of the attacker connects after its knock");
    assert!(is_blocked(&green.status()), "the block ended too early");
    check_scan(scan, "attacker TCP over IPv6", 25, &["filtered"]);

    // The block ends after 5 s, in the kernel and in the daemon; then the
    // second address knocks and connects.
    assert!(
        wait_until(Duration::from_secs(8), || !lab
            .nft_set("block6_64")
            .contains("fd00:200:2::")),
        "still in block6_64: {}",
        lab.nft_set("block6_64")
    );
    assert!(wait_until(Duration::from_secs(2), || {
        green.status()["blocked"]
            .as_array()
            .is_some_and(Vec::is_empty)
    }));
    let released = blocked_at.elapsed();
    assert!(
        released >= Duration::from_secs(3),
        "released after {released:?}"
    );
    let again = knock(
        mallet.as_ref(),
        &pk,
        fresh_ts(),
        OpenFor::Addr(IpAddr::V6(second)),
        &["ssh"],
    );
    lab.attacker.send_udp(IpAddr::V6(second), to_green, &again);
    green.wait_counter("accepted.open-tunnel", 2);
    assert!(
        lab.nft_set("allow6")
            .contains(&format!("{second} . tcp . {SSH_PORT}"))
    );
    eprintln!(
        "IPv6 /64 released {released:?} after the scan; done in {:?}",
        started.elapsed()
    );
}

/// 7a. check-config names every bad key (unknown service in a rule, a key
///     file others can read with the chmod hint, a missing trust anchor, a
///     misspelt key with its line), exit 1; a good file passes, exit 0;
///     `run` refuses a bad file with the same problems.
#[test]
fn check_config_names_the_bad_keys() {
    tests::require_root();
    let tag = unique_tag();
    let dir = TempDir::new(&tag);
    let server = bin("spa-server");
    let key = dir.join("green.key");
    let sk = proto_spec::testkit::receiver_key("check config");
    spa_keys::write_secret_file(
        &key,
        spa_keys::receiver_key_to_pem(&sk).expect("pem").as_bytes(),
        true,
    )
    .expect("key");
    let ca = Pki::new("spa e2e CA").write_ca(&dir.join("ca.pem"));
    let config = |anchor: &Path, service: &str| {
        format!(
            "[daemon]\nkeys = [\"{}\"]\nreplay_db = \"{}\"\ncontrol_socket = \"{}\"\nuser = \"nobody\"\n\
             [trust]\nanchors = [\"{}\"]\n\
             [[services]]\nname = \"ssh\"\nport = 22\n\
             [[rules]]\nidentity = \"cn:alice\"\nservices = [\"{service}\"]\n",
            key.display(),
            dir.join("replay.redb").display(),
            dir.join("control.sock").display(),
            anchor.display()
        )
    };
    let check = |text: &str| {
        let p = dir.join("check.toml");
        std::fs::write(&p, text).expect("write");
        let out = Command::new(&server)
            .args(["check-config", "--config"])
            .arg(&p)
            .output()
            .expect("check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, _) = check(&config(&ca, "ssh"));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");

    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let bad = config(&dir.join("missing-ca.pem"), "nosuch");
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("rules[0].services[0]: unknown service 'nosuch'"),
        "{stderr}"
    );
    let key_line = stderr
        .lines()
        .find(|l| l.starts_with("daemon.keys[0]:"))
        .unwrap_or_else(|| panic!("no daemon.keys[0] line: {stderr}"));
    assert!(
        key_line.contains(&format!("chmod 600 {}", key.display())),
        "{key_line}"
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("trust.anchors[0]:")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");

    // `run` refuses to start on the same file, naming the same keys.
    let p = dir.join("check.toml");
    let out = Command::new(&server)
        .args(["run", "--config"])
        .arg(&p)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("rules[0].services[0]") && err.contains("daemon.keys[0]"),
        "{err}"
    );

    // A misspelt key: the file and line.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let typo = config(&ca, "ssh").replace("user = ", "usr = ");
    let (code, _, stderr) = check(&typo);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("line 5") && stderr.contains("usr"),
        "{stderr}"
    );
}

/// 7b. revoke-session closes an open session at once (the set element is
///     gone and the client can no longer connect); SIGTERM removes the
///     firewall table and the control socket.
#[test]
fn revoke_session_closes_it_and_sigterm_removes_the_table() {
    let started = Instant::now();
    let lab = Lab::new();
    let pk = lab.green_key();
    let pki = Pki::new("spa e2e CA");
    let ca = pki.write_ca(&lab.path("ca.pem"));
    pki.write_client(
        &spec("alice", 40),
        &lab.path("alice.crt"),
        &lab.path("alice.key"),
    );
    lab.client_profile(
        &spa_keys::encode_public_key(&pk),
        &lab.path("alice.crt"),
        &lab.path("alice.key"),
        60,
    );
    let cfg = lab.green_config(
        &ca,
        None,
        "[[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"]\n",
    );
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let mut green = lab.start_green(&cfg, "green.log");

    let out = lab.spa_client(&["--json", "send", "--wait", "2222", "open"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    lab.client_connect().expect("client connects");
    let st = green.status();
    let session = st["sessions"][0]["session"]
        .as_str()
        .expect("session")
        .to_owned();
    assert_eq!(sent["session_id"], session.as_str(), "{sent} / {st}");
    assert!(lab.nft_set("allow4").contains(&CLIENT.to_string()));

    let server = bin("spa-server");
    let revoke = |id: &str| {
        Command::new(&server)
            .args(["revoke-session", id, "--socket"])
            .arg(lab.path("control.sock"))
            .output()
            .expect("revoke-session")
    };
    let out = revoke(&session);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
    let allow = lab.nft_set("allow4");
    assert!(!allow.contains(&CLIENT.to_string()), "{allow}");
    assert_silently_dropped(lab.client_connect(), "client after revoke-session");
    let st = green.status();
    assert!(st["sessions"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert_eq!(st["counters"]["sessions.revoked"], 1, "{st}");
    let out = revoke(&session);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such session"));

    // A clean stop removes our table and the socket.
    assert!(
        String::from_utf8_lossy(&lab.green.ok(&["nft", "list", "tables"]).stdout)
            .contains("table inet spa")
    );
    green.signal(Signal::SIGTERM);
    let st = green.wait_exit(Duration::from_secs(5));
    assert!(st.success(), "{st:?}\n{}", green.log_text());
    let tables =
        String::from_utf8_lossy(&lab.green.ok(&["nft", "list", "tables"]).stdout).into_owned();
    assert!(!tables.contains("table inet spa"), "{tables}");
    assert!(
        green.log_text().contains("firewall table removed"),
        "{}",
        green.log_text()
    );
    // Nobody answers on the control socket any more. (The socket file
    // itself stays: the daemon runs as nobody by then and cannot unlink
    // it from a root-owned directory; the next start replaces it.)
    let out = Command::new(&server)
        .args(["status", "--socket"])
        .arg(lab.path("control.sock"))
        .output()
        .expect("status");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running?"));
    // Without the firewall the service answers again.
    lab.attacker_connect()
        .expect("no firewall after a clean stop");
    eprintln!("done in {:?}", started.elapsed());
}

/// SPEC §7.3.1, the replay reservation under kill -9: green (two
/// verification workers, the reservation on by default) is killed at a
/// random point while a burst of valid knocks from four identities is being
/// accepted, three times over the same replay store. After each restart,
/// every knock ever sent (accepted or still queued when green died) is
/// replayed from the client's own address: all are refused, none opens.
#[test]
fn kill9_at_random_points_then_every_accepted_knock_replayed_is_refused() {
    let lab = Lab::new();
    let pki = Pki::new("kill9 e2e CA");
    let anchor = pki.write_ca(&lab.path("ca.pem"));
    let rpk = lab.green_key();
    let cfg = lab.green_config(
        &anchor,
        None,
        "[[rules]]\nidentity = \"*\"\nservices = [\"ssh\"]\n\
         [ips]\nrate = 100000\nburst = 100000\n",
    );
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replacen("[daemon]\n", "[daemon]\nworkers = 2\n", 1),
    )
    .expect("config");
    let signers: Vec<_> = (0..4)
        .map(|i| pki.signer(&spec(&format!("k{i}"), 900 + i)))
        .collect();
    let seed = now_ms();
    eprintln!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut green = lab.start_green(&cfg, "green-0.log");
    for round in 1..=3u32 {
        // Knocks until some are accepted (an event), then a burst of a
        // random length, and kill -9 right after it: green dies while it
        // verifies, commits and opens.
        let accepted_before = green.counter("accepted.open-tunnel");
        let mut i = 0usize;
        while green.counter("accepted.open-tunnel") == accepted_before {
            let k = knock_for(signers[i % 4].as_ref(), &rpk, CLIENT);
            lab.send_from_client(&k);
            sent.push(k);
            i += 1;
            assert!(i < 1000, "nothing accepted:\n{}", green.log_text());
        }
        let burst = 20 + usize::try_from(next() % 150).expect("small");
        for j in 0..burst {
            let k = knock_for(signers[j % 4].as_ref(), &rpk, CLIENT);
            lab.send_from_client(&k);
            sent.push(k);
        }
        green.kill9();
        green = lab.start_green(&cfg, &format!("green-{round}.log"));
        let st = green.status();
        assert!(
            green.log_text().contains("did not release its reservation"),
            "round {round}: no reservation applied:\n{}",
            green.log_text()
        );
        for k in &sent {
            lab.send_from_client(k);
        }
        let refused = || green.counter("refused.replayed") + green.counter("refused.stale");
        assert!(
            wait_until(Duration::from_secs(20), || refused()
                >= u64::try_from(sent.len()).expect("count")),
            "round {round}: {} of {} replays refused: {}",
            refused(),
            sent.len(),
            green.status()
        );
        assert_eq!(
            green.counter("accepted.open-tunnel"),
            0,
            "round {round}: a replay was accepted after kill -9 (seed {seed}): {st}\n{}",
            green.log_text()
        );
        eprintln!(
            "round {round}: {} knocks sent so far, all refused after the restart; G {}",
            sent.len(),
            green.status()["replay_store"]["global_floor"]
        );
    }
    // Once the clock passes the reservation, fresh knocks are accepted.
    let g = green.status()["replay_store"]["global_floor"]
        .as_u64()
        .expect("global floor");
    while now_ms() <= g {
        std::thread::yield_now();
    }
    lab.send_from_client(&knock_for(signers[0].as_ref(), &rpk, CLIENT));
    green.wait_counter("accepted.open-tunnel", 1);
}
