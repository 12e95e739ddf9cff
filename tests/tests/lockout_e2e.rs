//! End-to-end tests of the lock-out defence (SPEC §9, issue 10 item 1): as
//! root, in network namespaces,
//!
//! ```text
//!   client 10.200.1.2 ── 10.200.1.1 green 10.200.2.1 ── 10.200.2.2 attacker
//! ```
//!
//! the attacker forges packets with the client's source address through a
//! raw socket ([`tests::spoof`]) toward green's other link, exactly as the
//! issue describes the attacks: TCP SYNs to closed ports, datagrams with a
//! valid pre-check MAC (garbage inside), and the client's own earlier
//! knocks, captured on green's wire and sent again. The real spa-server
//! binary runs with packet capture and the blackhole firewall, and a TCP
//! echo service on 2222 ("ssh").
//!
//! Needs root, iproute2, nftables and tcpdump; fails with the `apt-get
//! install` line when one is missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_spec::body::{MessageType, OpenFor};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, precheck_mac, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit::{ClientCertSpec, KeyAlg, TestCa};
use proto_spec::wire::DatagramKind;
use serde_json::Value;
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, echo, link, pcap, require_tools, spoof, unique_tag,
    wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 200, 2, 2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// Strictly increasing timestamps for the client's knocks (SPEC §7.5).
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

/// The three hosts, green's key and the test CA.
struct Lab {
    dir: TempDir,
    green: Netns,
    client: Netns,
    attacker: Netns,
    green_if_c: String,
    pk: ReceiverPublicKey,
    ca: TestCa,
}

impl Lab {
    fn new() -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
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
            "fd00:200:1::1",
            &client,
            &format!("c{tag}"),
            &CLIENT.to_string(),
            "fd00:200:1::2",
        );
        link(
            &green,
            &format!("g2{tag}"),
            &GREEN_A.to_string(),
            "fd00:200:2::1",
            &attacker,
            &format!("a{tag}"),
            &ATTACKER.to_string(),
            "fd00:200:2::2",
        );
        let sk = proto_spec::testkit::receiver_key(&format!("green {tag}"));
        let pem = spa_keys::receiver_key_to_pem(&sk).expect("pem");
        spa_keys::write_secret_file(&dir.join("green.key"), pem.as_bytes(), true)
            .expect("green.key");
        let ca = TestCa::new("spa lockout CA").expect("test CA");
        std::fs::write(
            dir.join("ca.pem"),
            spa_keys::pem_encode("CERTIFICATE", ca.cert_der()),
        )
        .expect("ca.pem");
        Self {
            dir,
            green,
            client,
            attacker,
            green_if_c,
            pk: sk.public_key(),
            ca,
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Writes `green.toml` (ssh on 2222 for alice and mallet, `ips` as
    /// given) and starts green.
    fn start_green(&self, ips: &str) -> Green {
        let text = format!(
            "[daemon]\n\
             knock_port = {KNOCK_PORT}\n\
             keys = [\"{key}\"]\n\
             replay_db = \"{db}\"\n\
             control_socket = \"{sock}\"\n\
             user = \"nobody\"\n\
             [trust]\n\
             anchors = [\"{ca}\"]\n\
             [[services]]\n\
             name = \"ssh\"\n\
             port = {SSH_PORT}\n\
             [[rules]]\n\
             identity = \"cn:alice\"\n\
             services = [\"ssh\"]\n\
             [[rules]]\n\
             identity = \"cn:mallet\"\n\
             services = [\"ssh\"]\n\
             [ips]\n\
             {ips}\n",
            key = self.path("green.key").display(),
            db = self.path("replay.redb").display(),
            sock = self.path("control.sock").display(),
            ca = self.path("ca.pem").display(),
        );
        let cfg = self.path("green.toml");
        std::fs::write(&cfg, text).expect("green.toml");
        Green::start(
            &self.green,
            &cfg,
            &self.path("control.sock"),
            &self.path("green.log"),
        )
    }

    fn signer(&self, cn: &str, serial: u64) -> Box<dyn Signer + Send + Sync> {
        let mut s = ClientCertSpec::new(cn, KeyAlg::Ed25519, serial);
        s.key_label = format!("lockout {cn} {serial}");
        self.ca.signer(&s).expect("signer")
    }

    /// A fresh open-tunnel knock for ssh, explicit address `from`.
    fn knock(&self, signer: &dyn Signer, from: Ipv4Addr) -> Vec<u8> {
        seal_knock(
            signer,
            &self.pk,
            &KnockRequest {
                msg_type: MessageType::OpenTunnel,
                timestamp_ms: fresh_ts(),
                nonce: rand16(),
                session_id: rand16(),
                lifetime_s: 60,
                open_for: OpenFor::Addr(IpAddr::V4(from)),
                services: &["ssh"],
            },
            rand32(),
        )
        .expect("seal")
    }

    /// The client knocks from its own address and waits until green
    /// accepted it (its `accepted` count reaches `n`).
    fn client_knocks(&self, green: &Green, signer: &dyn Signer, n: u64) {
        let k = self.knock(signer, CLIENT);
        self.client.send_udp(
            IpAddr::V4(CLIENT),
            SocketAddr::from((GREEN_C, KNOCK_PORT)),
            &k,
        );
        green.wait_counter("accepted.open-tunnel", n);
    }

    fn client_connect(&self) -> std::io::Result<TcpStream> {
        self.client
            .connect(SocketAddr::from((GREEN_C, SSH_PORT)), CONNECT_TIMEOUT)
    }

    fn attacker_connect(&self) -> std::io::Result<TcpStream> {
        self.attacker
            .connect(SocketAddr::from((GREEN_A, SSH_PORT)), CONNECT_TIMEOUT)
    }

    fn nft_set(&self, set: &str) -> String {
        String::from_utf8_lossy(
            &self
                .green
                .ok(&["nft", "list", "set", "inet", "spa", set])
                .stdout,
        )
        .into_owned()
    }

    /// Forges `n` SYNs from `src` to distinct closed ports of green.
    fn syns(&self, src: Ipv4Addr, n: u16) {
        let packets: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                spoof::tcp_syn(
                    SocketAddrV4::new(src, 40_000 + i),
                    SocketAddrV4::new(GREEN_A, 3_000 + i),
                )
            })
            .collect();
        spoof::send(&self.attacker, &packets);
    }

    /// Forges datagrams to green's knock port from `src`.
    fn datagrams(&self, src: Ipv4Addr, payloads: &[Vec<u8>]) {
        let packets: Vec<Vec<u8>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let port = 50_000 + u16::try_from(i).expect("few");
                spoof::udp(
                    SocketAddrV4::new(src, port),
                    SocketAddrV4::new(GREEN_A, KNOCK_PORT),
                    p,
                )
            })
            .collect();
        spoof::send(&self.attacker, &packets);
    }

    /// `n` datagrams with a valid pre-check MAC and garbage inside: all it
    /// takes is green's public key, which every client profile holds.
    fn mac_valid_garbage(&self, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut d = vec![0x01u8];
                while d.len() < 300 - 16 {
                    d.extend_from_slice(&rand32());
                }
                d.truncate(300 - 16);
                let mac = precheck_mac(DatagramKind::Knock, &self.pk, &d);
                d.extend_from_slice(&mac);
                d
            })
            .collect()
    }
}

fn blocked(st: &Value) -> Vec<String> {
    st["blocked"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn counter(st: &Value, name: &str) -> u64 {
    st["counters"][name].as_u64().unwrap_or(0)
}

/// Asserts a TCP connect got no answer at all (timed out: no RST, no ICMP).
fn assert_silently_dropped(r: std::io::Result<TcpStream>, who: &str) {
    match r {
        Ok(_) => panic!("{who}: the connection was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "{who}: expected a silent drop (timeout), got {e}"
        ),
    }
}

/// The client's knocks as captured on green's client link.
fn captured_knocks(file: &Path) -> Vec<Vec<u8>> {
    pcap::udp_datagrams(&std::fs::read(file).expect("pcap"))
        .into_iter()
        .filter(|u| u.src == IpAddr::V4(CLIENT) && u.dst_port == KNOCK_PORT)
        .map(|u| u.payload)
        .collect()
}

/// Issue 10 item 1, each attack exactly as described, with the client's
/// source address forged from the attacker's namespace. First, before the
/// client ever knocked, 12 forged SYNs get its address blocked (a block
/// anyone can provoke); the client's fresh knock is still verified, lifts
/// the block and connects. Then, in turn:
///
/// - a: 12 forged SYNs to closed ports,
/// - b: 12 datagrams with a valid pre-check MAC and garbage inside,
/// - c: 15 of the client's own earlier knocks, captured on green's wire;
///
/// after each: no block, the client's fresh knock is accepted and its new
/// connection works, and the connection it opened first keeps working.
/// Replays weigh 1 here (`weight_replayed = 1`, the default is 0) so that
/// (c) shows the shield of a recent accepted knock, not the weight. A real
/// scanner from its own address is still blocked, and green sends nothing
/// from its attacker-side address the whole time.
#[test]
fn spoofed_source_cannot_lock_out_the_client() {
    let lab = Lab::new();
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let mut knocks = Tcpdump::start(
        &lab.green,
        &lab.green_if_c,
        &format!("udp dst port {KNOCK_PORT} and src host {CLIENT}"),
        &lab.path("knocks.pcap"),
    );
    let mut silent = Tcpdump::start(
        &lab.green,
        "any",
        &format!("src host {GREEN_A} and not arp"),
        &lab.path("green-a.pcap"),
    );
    let green = lab.start_green("weight_replayed = 1\n");
    let alice = lab.signer("alice", 1);

    // 0. Forged SYNs block the client's address while it has no accepted
    //    knock: the scan rule cannot tell, and nobody is shielded yet.
    lab.syns(CLIENT, 12);
    assert!(
        wait_until(Duration::from_secs(5), || blocked(&green.status())
            .contains(&CLIENT.to_string())),
        "forged SYNs did not block the client's address: {}",
        green.status()
    );
    assert!(lab.nft_set("block4").contains(&CLIENT.to_string()));
    assert_silently_dropped(lab.client_connect(), "client while blocked");
    // Its MAC-valid knock is still verified and lifts the block.
    lab.client_knocks(&green, alice.as_ref(), 1);
    green.wait_counter("blocked.lifted", 1);
    assert!(blocked(&green.status()).is_empty(), "{}", green.status());
    assert!(!lab.nft_set("block4").contains(&CLIENT.to_string()));
    let mut established = lab
        .client_connect()
        .expect("the client connects once its knock lifted the block");
    echo(&mut established, b"first").expect("echo");

    // The client knocks 19 more times (captured for c; tcpdump may miss
    // one or two).
    let mut accepted = 20;
    for n in 2..=accepted {
        lab.client_knocks(&green, alice.as_ref(), n);
    }
    knocks.stop();
    let captured = captured_knocks(&knocks.file);
    assert!(captured.len() >= 15, "captured {}", captured.len());

    let mut after_attack = |what: &str, st: &Value| {
        assert!(
            blocked(st).is_empty(),
            "{what}: the client's address was blocked: {st}"
        );
        assert!(!lab.nft_set("block4").contains(&CLIENT.to_string()));
        echo(&mut established, what.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: the established connection broke: {e}"));
        accepted += 1;
        lab.client_knocks(&green, alice.as_ref(), accepted);
        let mut c = lab
            .client_connect()
            .unwrap_or_else(|e| panic!("{what}: the client cannot connect: {e}"));
        echo(&mut c, b"new").expect("echo on a new connection");
    };

    // a. 12 forged SYNs to closed ports.
    let probes = green.counter("probes");
    lab.syns(CLIENT, 12);
    green.wait_counter("probes", probes + 12);
    let st = green.status();
    assert!(counter(&st, "ips.shielded_probes") >= 12, "{st}");
    after_attack("syns", &st);

    // b. 12 datagrams with a valid MAC, garbage inside.
    let open_failed = green.counter("refused.open_failed");
    lab.datagrams(CLIENT, &lab.mac_valid_garbage(12));
    green.wait_counter("refused.open_failed", open_failed + 12);
    let st = green.status();
    assert!(counter(&st, "ips.shielded") >= 12, "{st}");
    after_attack("garbage", &st);

    // c. 15 of the client's own captured knocks, sent again.
    let replays: Vec<Vec<u8>> = captured.iter().take(15).cloned().collect();
    let before = green.counter("refused.replayed") + green.counter("refused.stale");
    lab.datagrams(CLIENT, &replays);
    assert!(
        wait_until(Duration::from_secs(5), || green.counter("refused.replayed")
            + green.counter("refused.stale")
            >= before + 15),
        "replays not all refused: {}",
        green.status()
    );
    let st = green.status();
    assert!(counter(&st, "ips.shielded") >= 12 + 15, "{st}");
    after_attack("replays", &st);

    // A real scanner from its own address is still blocked, and stays
    // blocked: its garbage is dropped before any work.
    lab.syns(ATTACKER, 12);
    assert!(
        wait_until(Duration::from_secs(5), || blocked(&green.status())
            .contains(&ATTACKER.to_string())),
        "the scanner was not blocked: {}",
        green.status()
    );
    assert_eq!(blocked(&green.status()), [ATTACKER.to_string()]);
    assert!(lab.nft_set("block4").contains(&ATTACKER.to_string()));
    lab.datagrams(ATTACKER, &[vec![0x01; 300]]);
    green.wait_counter("refused.blocked_source", 1);
    assert_silently_dropped(lab.attacker_connect(), "the blocked scanner");
    // MAC-valid garbage from the blocked scanner is verified and refused;
    // it lifts nothing.
    let open_failed = green.counter("refused.open_failed");
    lab.datagrams(ATTACKER, &lab.mac_valid_garbage(3));
    green.wait_counter("refused.open_failed", open_failed + 3);
    assert_eq!(blocked(&green.status()), [ATTACKER.to_string()]);
    assert_eq!(green.counter("blocked.lifted"), 1);

    // Every refusal stayed silent: green sent nothing from the address
    // the forged packets went to.
    let sent = silent.lines();
    assert!(sent.is_empty(), "green answered: {sent:?}");
    let log = green.log_text();
    assert!(log.contains("block lifted"), "{log}");
}

/// The same defence for a block wider than one address: IPv6 sources are
/// counted and blocked per /64, and an off-path sender can forge any
/// address of the client's /64. SYNs forged from a neighbour of the
/// client (fd00:200:1::99, which never knocked) get that address blocked
/// alone, not the client's /64, once the client knocked from
/// fd00:200:1::2: its new connections keep working. The same SYNs forged
/// from a /64 without a client get the whole /64 blocked.
#[test]
fn spoofed_source_cannot_lock_out_the_client_through_its_64() {
    let lab = Lab::new();
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0u16; 8], SSH_PORT)));
    let green = lab.start_green("");
    let alice = lab.signer("alice", 2);
    let client6: Ipv6Addr = "fd00:200:1::2".parse().expect("address");
    let green_c6: Ipv6Addr = "fd00:200:1::1".parse().expect("address");
    let green_a6: Ipv6Addr = "fd00:200:2::1".parse().expect("address");
    let k = seal_knock(
        alice.as_ref(),
        &lab.pk,
        &KnockRequest {
            msg_type: MessageType::OpenTunnel,
            timestamp_ms: fresh_ts(),
            nonce: rand16(),
            session_id: rand16(),
            lifetime_s: 60,
            open_for: OpenFor::Addr(IpAddr::V6(client6)),
            services: &["ssh"],
        },
        rand32(),
    )
    .expect("seal");
    lab.client.send_udp(
        IpAddr::V6(client6),
        SocketAddr::new(IpAddr::V6(green_c6), KNOCK_PORT),
        &k,
    );
    green.wait_counter("accepted.open-tunnel", 1);
    let ssh6 = SocketAddr::new(IpAddr::V6(green_c6), SSH_PORT);
    let mut established = lab
        .client
        .connect(ssh6, CONNECT_TIMEOUT)
        .expect("the client connects over IPv6");

    let syns6 = |src: &str| {
        let src: Ipv6Addr = src.parse().expect("address");
        let packets: Vec<Vec<u8>> = (0..12u16)
            .map(|i| {
                spoof::tcp_syn6(
                    SocketAddrV6::new(src, 40_000 + i, 0, 0),
                    SocketAddrV6::new(green_a6, 3_000 + i, 0, 0),
                )
            })
            .collect();
        spoof::send6(&lab.attacker, &packets);
    };
    syns6("fd00:200:1::99");
    assert!(
        wait_until(Duration::from_secs(5), || !blocked(&green.status())
            .is_empty()),
        "the forged neighbour was not blocked: {}",
        green.status()
    );
    let st = green.status();
    assert_eq!(blocked(&st), ["fd00:200:1::99"], "{st}");
    assert_eq!(st["blocked"][0]["prefix"], 128, "{st}");
    assert!(!lab.nft_set("block6_64").contains("fd00:200:1::"));
    echo(&mut established, b"still").expect("the established connection");
    let mut again = lab
        .client
        .connect(ssh6, CONNECT_TIMEOUT)
        .expect("a new connection of the client while its neighbour is blocked");
    echo(&mut again, b"new").expect("echo");

    // A /64 without a shielded client is blocked whole.
    syns6("fd00:200:5::99");
    assert!(
        wait_until(Duration::from_secs(5), || blocked(&green.status())
            .contains(&"fd00:200:5::/64".to_owned())),
        "the other /64 was not blocked whole: {}",
        green.status()
    );
    assert!(lab.nft_set("block6_64").contains("fd00:200:5::"));
}
