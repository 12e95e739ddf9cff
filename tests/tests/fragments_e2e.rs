//! End-to-end: knocks that arrive in IP fragments are reassembled by
//! green's capture and accepted, as root, in network namespaces:
//!
//! ```text
//!   client 10.200.1.2 (MTU 256) ── 10.200.1.1 green (MTU 1500)
//!          fd00:200:1::2             fd00:200:1::1 (IPv6 test, MTU 1500)
//! ```
//!
//! IPv4: the client's link MTU is below the size of a real `spa-client
//! send` knock (about 520 bytes with a `spa-server pki` Ed25519
//! certificate; up to 1088 by SPEC §3.2, so even IPv4's 576 fragments the
//! larger ones), so the client's kernel sends it in three fragments.
//! IPv6 links cannot go below 1280 bytes, which every datagram fits
//! (SPEC §3.2), so the IPv6 test cuts a real knock (`spa-client send
//! --dry-run`) into fragments itself and sends them from the client's
//! address through a raw socket: out of order, and once with an
//! overlapping fragment, which must abandon the datagram.
//!
//! The capture binds no socket, so the kernel reassembles nothing for it;
//! `spa-server/src/capture/defrag.rs` must. Green runs the real binary with
//! packet capture, the blackhole firewall and `user = "nobody"`.
//!
//! Needs root, iproute2, nftables and tcpdump; fails with the
//! `apt-get install` line when one is missing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, bin, echo, link, link4, pcap, require_tools,
    unique_tag, wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const GREEN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
/// The client's link MTU: a knock leaves in three fragments (a first, a
/// middle and a last one).
const CLIENT_MTU: usize = 256;

struct Lab {
    dir: TempDir,
    green: Netns,
    client: Netns,
    green_if: String,
}

/// The client's link.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Net {
    /// IPv4 only, the client's MTU [`CLIENT_MTU`].
    SmallMtu4,
    /// IPv4 and IPv6, MTU 1500.
    Dual,
}

impl Lab {
    fn new(net: Net) -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let green = Netns::new("green", &tag);
        let client = Netns::new("client", &tag);
        let green_if = format!("g{tag}");
        let client_if = format!("c{tag}");
        match net {
            Net::SmallMtu4 => {
                link4(&green, &green_if, GREEN, &client, &client_if, CLIENT);
                client.ok(&[
                    "ip",
                    "link",
                    "set",
                    "dev",
                    &client_if,
                    "mtu",
                    &CLIENT_MTU.to_string(),
                ]);
            }
            Net::Dual => link(
                &green,
                &green_if,
                &GREEN.to_string(),
                &GREEN6.to_string(),
                &client,
                &client_if,
                &CLIENT.to_string(),
                &CLIENT6.to_string(),
            ),
        }
        Self {
            dir,
            green,
            client,
            green_if,
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// A CA, alice's key and certificate, green's key; returns green's
    /// public key.
    fn pki(&self) -> String {
        let server = bin("spa-server");
        let ca_dir = self.path("ca");
        run_ok(
            Command::new(&server)
                .args(["pki", "init", "--name", "spa e2e CA", "--dir"])
                .arg(&ca_dir),
        );
        run_ok(
            self.client
                .cmd(bin("spa-client").to_str().expect("utf-8"))
                .args(["keygen", "--name", "alice", "--out"])
                .arg(self.path("alice.key"))
                .arg("--csr")
                .arg(self.path("alice.csr")),
        );
        run_ok(
            Command::new(&server)
                .args(["pki", "issue", "--client", "--name", "alice", "--dir"])
                .arg(&ca_dir)
                .arg("--csr")
                .arg(self.path("alice.csr"))
                .arg("--out")
                .arg(self.path("alice.crt")),
        );
        // The CA directory is 0700: `nobody` reads a copy of ca.pem.
        std::fs::copy(ca_dir.join("ca.pem"), self.path("ca.pem")).expect("copy ca.pem");
        let keygen = run_ok(
            Command::new(&server)
                .args(["keygen", "--out"])
                .arg(self.path("green.key")),
        );
        String::from_utf8_lossy(&keygen.stdout).trim().to_owned()
    }

    fn green_config(&self) -> PathBuf {
        let text = format!(
            "[daemon]\n\
             knock_port = {KNOCK_PORT}\n\
             keys = [\"{key}\"]\n\
             replay_db = \"{db}\"\n\
             control_socket = \"{sock}\"\n\
             user = \"nobody\"\n\
             [trust]\n\
             anchors = [\"{anchor}\"]\n\
             [[services]]\n\
             name = \"ssh\"\n\
             port = {SSH_PORT}\n\
             [[rules]]\n\
             identity = \"cn:alice\"\n\
             services = [\"ssh\"]\n",
            key = self.path("green.key").display(),
            db = self.path("replay.redb").display(),
            sock = self.path("control.sock").display(),
            anchor = self.path("ca.pem").display(),
        );
        let p = self.path("green.toml");
        std::fs::write(&p, text).expect("green.toml");
        p
    }

    fn client_profile(&self, server_key: &str, server: IpAddr) {
        let text = format!(
            "[profiles.e2e]\n\
             server = \"{server}\"\n\
             port = {KNOCK_PORT}\n\
             server_key = \"{server_key}\"\n\
             certificate = \"{}\"\n\
             key = \"{}\"\n\
             services = [\"ssh\"]\n\
             lifetime = 30\n",
            self.path("alice.crt").display(),
            self.path("alice.key").display()
        );
        std::fs::write(self.path("client.toml"), text).expect("client.toml");
    }

    /// `spa-client --config client.toml <args>` in the client namespace.
    fn spa_client(&self, args: &[&str]) -> Output {
        let mut c = self.client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.arg("--config")
            .arg(self.path("client.toml"))
            .args(args)
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CONFIG_HOME", self.path("config"));
        c.output().expect("spa-client")
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

fn assert_ok(out: &Output, green: &Green) -> Value {
    assert!(
        out.status.success(),
        "spa-client: {}{}\ngreen log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        green.log_text()
    );
    serde_json::from_slice(&out.stdout).expect("spa-client --json")
}

fn capture_counter(green: &Green, name: &str) -> u64 {
    green.status()["capture"][name].as_u64().unwrap_or(0)
}

/// Waits until `capture.<name>` in green's status reaches `at_least`.
fn wait_capture(green: &Green, name: &str, at_least: u64) {
    assert!(
        wait_until(Duration::from_secs(5), || capture_counter(green, name)
            >= at_least),
        "capture.{name} did not reach {at_least}: {}\nlog:\n{}",
        green.status()["capture"],
        green.log_text()
    );
}

/// Sends pieces of a UDP datagram (`udp`: header and payload) from
/// `src` to `dst` as IPv6 fragments (RFC 8200 §4.5) through a raw socket
/// in `ns` (IPPROTO_RAW: the packet is written whole, header included).
/// Each piece is `(offset, bytes, more fragments)`.
fn send_v6_fragments(
    ns: &Netns,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u32,
    pieces: &[(usize, &[u8], bool)],
) {
    ns.run_in(|| {
        let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(255)))
            .expect("raw IPv6 socket");
        let to = SockAddr::from(SocketAddrV6::new(dst, 0, 0, 0));
        for &(offset, bytes, more) in pieces {
            assert_eq!(offset % 8, 0);
            let plen = u16::try_from(8 + bytes.len()).expect("length");
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&plen.to_be_bytes());
            p.extend_from_slice(&[44, 64]); // next header: Fragment; hop limit
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            let off = u16::try_from(offset).expect("offset") | u16::from(more);
            p.extend_from_slice(&[17, 0]); // next header: UDP; reserved
            p.extend_from_slice(&off.to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(bytes);
            let n = s.send_to(&p, &to).expect("send a fragment");
            assert_eq!(n, p.len());
        }
    });
}

/// A UDP header and `payload` from port 40000 to the knock port (checksum
/// left 0: the capture authenticates the knock, not the checksum).
fn udp_datagram(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("length");
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&40000u16.to_be_bytes());
    d.extend_from_slice(&KNOCK_PORT.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

#[test]
fn a_knock_fragmented_by_a_small_mtu_is_reassembled_and_accepted() {
    let lab = Lab::new(Net::SmallMtu4);
    let green_pub = lab.pki();
    let cfg = lab.green_config();
    lab.client_profile(&green_pub, IpAddr::V4(GREEN));
    let _svc = TcpService::start(&lab.green, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let green = Green::start(
        &lab.green,
        &cfg,
        &lab.path("control.sock"),
        &lab.path("green.log"),
    );
    let mut wire = Tcpdump::start(
        &lab.green,
        &lab.green_if,
        &format!("ip src {CLIENT} and (udp dst port {KNOCK_PORT} or ip[6:2] & 0x3fff != 0)"),
        &lab.path("knock.pcap"),
    );

    let out = lab.spa_client(&["--json", "send", "--wait", "2222", "open"]);
    let j = assert_ok(&out, &green);
    let bytes = j["bytes"].as_u64().expect("bytes") as usize;
    assert!(
        bytes + 28 > CLIENT_MTU,
        "the knock ({bytes} bytes) must not fit the client's MTU, or nothing is fragmented"
    );
    assert_eq!(j["opened"], true, "{j}");
    let mut c = lab
        .client
        .connect(SocketAddr::from((GREEN, SSH_PORT)), Duration::from_secs(2))
        .expect("the client connects after the fragmented knock");
    echo(&mut c, b"through").expect("echo");

    let st = green.status();
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
    let cap = &st["capture"];
    assert!(cap["fragments"].as_u64().unwrap_or(0) >= 3, "{cap}");
    assert_eq!(cap["reassembled"], 1, "{cap}");
    assert_eq!(cap["reassembly_dropped"], 0, "{cap}");
    assert_eq!(cap["knocks"], 1, "{cap}");

    // On the wire: the knock really left the client in fragments, none of
    // them larger than the MTU.
    // (tcpdump hands packets over in blocks: wait for them in the file.)
    let frames_in_file = || {
        let raw = std::fs::read(lab.path("knock.pcap")).unwrap_or_default();
        if raw.len() < 24 {
            return Vec::new();
        }
        pcap::frames(&raw).1
    };
    wait_until(Duration::from_secs(5), || frames_in_file().len() >= 3);
    wire.stop();
    let raw = std::fs::read(lab.path("knock.pcap")).expect("pcap");
    let (_, frames) = pcap::frames(&raw);
    assert!(
        frames.len() >= 3,
        "{} frames on the wire ({} bytes of pcap); tcpdump: {}",
        frames.len(),
        raw.len(),
        std::fs::read_to_string(lab.path("knock.log")).unwrap_or_default()
    );
    for f in &frames {
        // Ethernet header, then at most an MTU of IP.
        assert!(f.len() <= 14 + CLIENT_MTU, "a {}-byte frame", f.len());
    }

    // Two knocks of one profile at once (the state lock, SPEC §7.5), also
    // fragmented: both are accepted, neither is refused as replayed.
    let outs: Vec<Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| lab.spa_client(&["--json", "send", "open"])))
            .collect();
        runs.into_iter().map(|h| h.join().expect("run")).collect()
    });
    for o in &outs {
        assert_ok(o, &green);
    }
    green.wait_counter("accepted.open-tunnel", 3);
    assert_eq!(green.counter("refused.replayed"), 0);
    assert!(
        wait_until(Duration::from_secs(5), || capture_counter(
            &green,
            "reassembled"
        ) >= 3),
        "{}",
        green.status()["capture"]
    );
}

#[test]
fn ipv6_fragments_out_of_order_are_reassembled_and_overlaps_refused() {
    let lab = Lab::new(Net::Dual);
    let green_pub = lab.pki();
    let cfg = lab.green_config();
    lab.client_profile(&green_pub, IpAddr::V6(GREEN6));
    let green = Green::start(
        &lab.green,
        &cfg,
        &lab.path("control.sock"),
        &lab.path("green.log"),
    );
    let dry_run = || {
        let j = assert_ok(
            &lab.spa_client(&["--json", "send", "--dry-run", "open"]),
            &green,
        );
        let hex = j["datagram"].as_str().expect("datagram hex").to_owned();
        udp_datagram(&hex_decode(&hex))
    };

    // Last, first, middle: accepted once all three are in.
    let d = dry_run();
    let (a, b) = (256, 512);
    assert!(d.len() > b, "a knock of {} bytes", d.len());
    send_v6_fragments(
        &lab.client,
        CLIENT6,
        GREEN6,
        0x5a5a_0001,
        &[(b, &d[b..], false), (0, &d[..a], true), (a, &d[a..b], true)],
    );
    green.wait_counter("accepted.open-tunnel", 1);
    let cap = green.status()["capture"].clone();
    assert_eq!(
        (&cap["fragments"], &cap["reassembled"], &cap["knocks"]),
        (&Value::from(3), &Value::from(1), &Value::from(1)),
        "{cap}"
    );

    // A fragment that overlaps one already held, with other bytes: the
    // datagram is abandoned, and its remaining fragment completes nothing.
    let d = dry_run();
    let mut forged = d[a - 8..b].to_vec();
    forged[0] ^= 0xff; // at offset a - 8, held from the first fragment
    send_v6_fragments(
        &lab.client,
        CLIENT6,
        GREEN6,
        0x5a5a_0002,
        &[(0, &d[..a], true), (a - 8, &forged, true)],
    );
    wait_capture(&green, "reassembly_dropped", 1);
    send_v6_fragments(
        &lab.client,
        CLIENT6,
        GREEN6,
        0x5a5a_0002,
        &[(b, &d[b..], false)],
    );
    wait_capture(&green, "fragments", 6);
    let st = green.status();
    assert_eq!(st["capture"]["reassembled"], 1, "{st}");
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
