//! End-to-end: a knock that arrives in IP fragments is reassembled by
//! green's capture and accepted, as root, in network namespaces:
//!
//! ```text
//!   client 10.200.1.2 (MTU 256) ── 10.200.1.1 green (MTU 1500)
//! ```
//!
//! The client's link MTU is below the size of a real `spa-client send`
//! knock (about 520 bytes with a `spa-server pki` Ed25519 certificate; up
//! to 1088 by SPEC §3.2, so even IPv4's 576 fragments the larger ones),
//! so the client's kernel sends it in three fragments; the capture sees the fragments (it binds no socket, so the
//! kernel reassembles nothing for it) and must put them back together
//! (`spa-server/src/capture/defrag.rs`). Green runs the real binary with
//! packet capture, the blackhole firewall and `user = "nobody"`.
//!
//! Needs root, iproute2, nftables and tcpdump; fails with the
//! `apt-get install` line when one is missing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, bin, echo, link4, pcap, require_tools, unique_tag,
    wait_until,
};

const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
/// The client's link MTU: a knock leaves in three fragments (a first, a
/// middle and a last one).
const CLIENT_MTU: usize = 256;

struct Lab {
    dir: TempDir,
    green: Netns,
    client: Netns,
    green_if: String,
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
        let green_if = format!("g{tag}");
        let client_if = format!("c{tag}");
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

    fn client_profile(&self, server_key: &str) {
        let text = format!(
            "[profiles.e2e]\n\
             server = \"{GREEN}\"\n\
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

#[test]
fn a_knock_fragmented_by_a_small_mtu_is_reassembled_and_accepted() {
    let lab = Lab::new();
    let green_pub = lab.pki();
    let cfg = lab.green_config();
    lab.client_profile(&green_pub);
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
