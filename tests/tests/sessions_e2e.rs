//! Openings owned by their sessions (SPEC §8.1.1), end to end, as root, in
//! network namespaces:
//!
//! ```text
//!   client 10.200.71.2 (and .3) ── 10.200.71.1 green 10.200.72.1 ── 10.200.72.2 attacker
//! ```
//!
//! Alice and carol knock from the same client address, as two people
//! behind one NAT do: one kernel element `10.200.71.2 . tcp . 2222` serves
//! both sessions, and one's close, or shorter grant, must not touch the
//! other's. Mallory reuses alice's session id from the attacker's address:
//! nothing opens. Alice roams to 10.200.71.3 within one session: her close
//! removes both addresses.
//!
//! Knocks are sealed here with the deterministic test CA of
//! `proto_spec::testkit`, so that session ids, addresses and lifetimes are
//! exactly what each test needs. Green runs the real binary (`nobody`,
//! packet capture, blackhole firewall) with a TCP echo service on 2222.
//! Every test builds its own namespaces and daemon; no traffic leaves them.
//! Needs root, iproute2, nftables and tcpdump; fails (with the apt-get
//! line) when one is missing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_spec::body::{MessageType, OpenFor};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit::{ClientCertSpec, KeyAlg, TestCa};
use serde_json::Value;
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, echo, link4, require_tools, unique_tag, wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 2);
const ROAMED: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 3);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 1);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 2);
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

/// Green, the client (two addresses) and the attacker; alice, carol and
/// mallory, all allowed ssh.
struct Lab {
    green: Green,
    _svc: TcpService,
    pk: ReceiverPublicKey,
    ca: TestCa,
    dir: TempDir,
    green_ns: Netns,
    client: Netns,
    attacker: Netns,
}

impl Lab {
    fn new() -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&format!("sess-{tag}"));
        let green_ns = Netns::new("sg", &tag);
        let client = Netns::new("sc", &tag);
        let attacker = Netns::new("sa", &tag);
        link4(&green_ns, "to-client", GREEN_C, &client, "to-green", CLIENT);
        client.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{ROAMED}/24"),
            "dev",
            "to-green",
        ]);
        link4(
            &green_ns,
            "to-attacker",
            GREEN_A,
            &attacker,
            "to-green",
            ATTACKER,
        );

        let sk = proto_spec::testkit::receiver_key(&format!("green {tag}"));
        let pem = spa_keys::receiver_key_to_pem(&sk).expect("pem");
        spa_keys::write_secret_file(&dir.join("green.key"), pem.as_bytes(), true)
            .expect("green.key");
        let ca = TestCa::new("spa sessions e2e CA").expect("test CA");
        std::fs::write(
            dir.join("ca.pem"),
            spa_keys::pem_encode("CERTIFICATE", ca.cert_der()),
        )
        .expect("ca.pem");
        let rules: String = ["alice", "carol", "mallory"]
            .iter()
            .map(|who| format!("[[rules]]\nidentity = \"cn:{who}\"\nservices = [\"ssh\"]\n"))
            .collect();
        let config = dir.join("green.toml");
        std::fs::write(
            &config,
            format!(
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
                 {rules}",
                key = dir.s("green.key"),
                db = dir.s("replay.redb"),
                sock = dir.s("control.sock"),
                ca = dir.s("ca.pem"),
            ),
        )
        .expect("green.toml");
        let svc = TcpService::start(&green_ns, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
        let green = Green::start(
            &green_ns,
            &config,
            &dir.join("control.sock"),
            &dir.join("green.log"),
        );
        Self {
            green,
            _svc: svc,
            pk: sk.public_key(),
            ca,
            dir,
            green_ns,
            client,
            attacker,
        }
    }

    fn signer(&self, cn: &str) -> Box<dyn Signer + Send + Sync> {
        let mut s = ClientCertSpec::new(cn, KeyAlg::Ed25519, u64::from(cn.as_bytes()[0]));
        s.key_label = format!("sessions e2e {cn}");
        self.ca.signer(&s).expect("signer")
    }

    /// Sends `cn`'s knock from `from` (its own address, signed), in
    /// `session`.
    fn knock(&self, cn: &str, msg_type: MessageType, session: [u8; 16], from: Ipv4Addr, life: u32) {
        let close = msg_type == MessageType::Close;
        let services: &[&str] = if close { &[] } else { &["ssh"] };
        let datagram = seal_knock(
            &*self.signer(cn),
            &self.pk,
            &KnockRequest {
                msg_type,
                timestamp_ms: fresh_ts(),
                nonce: rand16(),
                session_id: session,
                lifetime_s: if close { 0 } else { life },
                open_for: OpenFor::Addr(IpAddr::V4(from)),
                services,
            },
            *spa_keys::random_32().expect("random"),
        )
        .expect("seal");
        let (ns, green) = if from == ATTACKER {
            (&self.attacker, GREEN_A)
        } else {
            (&self.client, GREEN_C)
        };
        ns.send_udp(
            IpAddr::V4(from),
            SocketAddr::from((green, KNOCK_PORT)),
            &datagram,
        );
    }

    fn wait_counter(&self, name: &str, at_least: u64) {
        self.green
            .wait_counter_within(name, at_least, Duration::from_secs(5));
    }

    /// The kernel's `allow4` elements for tcp/2222: address -> timeout (s).
    fn elements(&self) -> Vec<(String, u64)> {
        let out = self
            .green_ns
            .ok(&["nft", "-j", "list", "set", "inet", "spa", "allow4"]);
        let v: Value = serde_json::from_slice(&out.stdout).expect("nft JSON");
        let mut found = Vec::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                let concat = &e["elem"]["val"]["concat"];
                if concat[2] == SSH_PORT {
                    found.push((
                        concat[0].as_str().unwrap_or_default().to_owned(),
                        e["elem"]["timeout"].as_u64().unwrap_or(0),
                    ));
                }
            }
        }
        found.sort();
        found
    }

    /// `status`'s `openings`: (address, owner sessions) per element.
    fn openings(&self) -> Vec<(String, Vec<String>)> {
        let st = self.green.status();
        st["openings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let owners = o["owners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                (o["address"].as_str().unwrap_or_default().to_owned(), owners)
            })
            .collect()
    }

    fn client_connect(&self, from: Ipv4Addr) -> std::io::Result<std::net::TcpStream> {
        self.client.run_in(|| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from((from, 0)).into())?;
            s.connect_timeout(
                &SocketAddr::from((GREEN_C, SSH_PORT)).into(),
                CONNECT_TIMEOUT,
            )?;
            Ok(s.into())
        })
    }

    fn log(&self) -> String {
        self.green.log_text()
    }
}

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

fn hex(s: [u8; 16]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

/// Alice (300 s) and carol (50 s) open ssh from one address: one element,
/// two owners, alice's timeout. Alice closes: carol's opening stays in the
/// kernel and in `status`, at carol's expiry, and carol's connections,
/// established and new, work. Carol closes: the element goes.
#[test]
fn close_keeps_other_sessions_openings() {
    let lab = Lab::new();
    let (alice, carol) = (rand16(), rand16());
    lab.knock("alice", MessageType::OpenTunnel, alice, CLIENT, 300);
    lab.wait_counter("accepted.open-tunnel", 1);
    lab.knock("carol", MessageType::OpenTunnel, carol, CLIENT, 50);
    lab.wait_counter("accepted.open-tunnel", 2);
    let elements = lab.elements();
    assert_eq!(
        elements,
        vec![(CLIENT.to_string(), 300)],
        "carol's 50 s lowered it"
    );
    let mut both = vec![hex(alice), hex(carol)];
    both.sort();
    assert_eq!(lab.openings(), vec![(CLIENT.to_string(), both)]);
    let mut established = lab.client_connect(CLIENT).expect("carol connects");
    echo(&mut established, b"before").expect("echo");

    lab.knock("alice", MessageType::Close, alice, CLIENT, 0);
    lab.wait_counter("accepted.close", 1);
    let elements = lab.elements();
    assert_eq!(
        elements.len(),
        1,
        "carol's element was removed: {}",
        lab.log()
    );
    assert!(
        (40..=50).contains(&elements[0].1),
        "not carol's timeout: {elements:?}"
    );
    assert_eq!(lab.openings(), vec![(CLIENT.to_string(), vec![hex(carol)])]);
    let st = lab.green.status();
    assert_eq!(st["sessions"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["sessions"][0]["session"], hex(carol), "{st}");
    echo(&mut established, b"after").expect("carol's established connection");
    let mut fresh = lab.client_connect(CLIENT).expect("carol's new connection");
    echo(&mut fresh, b"new").expect("echo");

    lab.knock("carol", MessageType::Close, carol, CLIENT, 0);
    lab.wait_counter("accepted.close", 2);
    assert!(lab.elements().is_empty(), "{:?}", lab.elements());
    assert!(lab.openings().is_empty());
    assert_silently_dropped(lab.client_connect(CLIENT), "after both closed");
}

/// Mallory sends a valid knock of her own in alice's session id, from the
/// attacker's address: nothing opens for her, nothing is answered, alice's
/// session is as it was; her close in that id closes nothing.
#[test]
fn a_session_id_of_another_identity_opens_nothing() {
    let lab = Lab::new();
    let alice = rand16();
    lab.knock("alice", MessageType::OpenTunnel, alice, CLIENT, 60);
    lab.wait_counter("accepted.open-tunnel", 1);
    let mut dump = Tcpdump::start(
        &lab.green_ns,
        "any",
        &format!("src host {GREEN_A} and not arp"),
        &lab.dir.join("silence.pcap"),
    );
    lab.knock("mallory", MessageType::OpenTunnel, alice, ATTACKER, 60);
    lab.wait_counter("refused.session_owned_by_other", 1);
    assert_eq!(lab.elements(), vec![(CLIENT.to_string(), 60)]);
    assert_silently_dropped(
        lab.attacker
            .connect(SocketAddr::from((GREEN_A, SSH_PORT)), CONNECT_TIMEOUT),
        "mallory",
    );
    lab.knock("mallory", MessageType::Close, alice, ATTACKER, 0);
    lab.wait_counter("refused.session_owned_by_other", 2);
    assert_eq!(lab.elements(), vec![(CLIENT.to_string(), 60)]);
    let st = lab.green.status();
    assert_eq!(st["sessions"][0]["session"], hex(alice), "{st}");
    assert!(
        st["sessions"][0]["identity"]
            .as_str()
            .is_some_and(|i| i.contains("alice")),
        "{st}"
    );
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
    assert_eq!(st["counters"]["accepted.close"], Value::Null, "{st}");
    lab.client_connect(CLIENT).expect("alice still connects");
    let sent = dump.lines();
    assert!(sent.is_empty(), "green answered the attacker: {sent:?}");
}

/// Alice opens from 10.200.71.2, then roams to .3 in the same session:
/// each address has its element; her close from .3 removes both.
#[test]
fn a_roamed_sessions_close_removes_every_address() {
    let lab = Lab::new();
    let alice = rand16();
    lab.knock("alice", MessageType::OpenTunnel, alice, CLIENT, 60);
    lab.wait_counter("accepted.open-tunnel", 1);
    lab.knock("alice", MessageType::RequestService, alice, ROAMED, 60);
    lab.wait_counter("accepted.request-service", 1);
    let addrs: Vec<String> = lab.elements().into_iter().map(|(a, _)| a).collect();
    assert_eq!(addrs, vec![CLIENT.to_string(), ROAMED.to_string()]);
    let st = lab.green.status();
    assert_eq!(st["sessions"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["sessions"][0]["address"], ROAMED.to_string(), "{st}");
    lab.client_connect(CLIENT).expect("old address");
    lab.client_connect(ROAMED).expect("new address");

    lab.knock("alice", MessageType::Close, alice, ROAMED, 0);
    lab.wait_counter("accepted.close", 1);
    assert!(
        wait_until(Duration::from_secs(2), || lab.elements().is_empty()),
        "{:?}",
        lab.elements()
    );
    assert_silently_dropped(lab.client_connect(CLIENT), "old address after close");
    assert_silently_dropped(lab.client_connect(ROAMED), "new address after close");
}
