//! HA greens on a shared replay store (SPEC §7.6), end to end: two greens,
//! A and B, with the same receiver key and `[replay] backend = "etcd"`, a
//! three-member etcd cluster started by the test (mutual TLS, certificates
//! from `spa-server pki`), and the client, all in network namespaces joined
//! by a bridge on 10.200.96.0/24.
//!
//! - a knock to A opens A; the same datagram, captured on A's link and
//!   replayed to B from the client's address, is refused at B as
//!   `replayed` (B opens nothing, sends nothing, logs and counts it);
//! - a fresh knock to B opens B;
//! - every thread of green (the etcd client's included) runs without
//!   privileges;
//! - with etcd stopped, knocks are refused as `storage_failure` (logged at
//!   error level, counted, in `status`) and green keeps running; with etcd
//!   back, knocks are accepted again.
//!
//! The `check-config` test checks the `[replay]` settings.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{CONNECT_TIMEOUT, KNOCK_PORT, SSH_PORT, assert_silently_dropped, sock};
use serde_json::Value;
use tests::{
    Green, Netns, TcpService, Tcpdump, TempDir, bin, make_relay_pki, pcap, require_tools, run_ok,
    unique_tag, wait_until,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 96, 2);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 96, 11);
const GREEN_B: Ipv4Addr = Ipv4Addr::new(10, 200, 96, 12);
const ETCD: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 200, 96, 5),
    Ipv4Addr::new(10, 200, 96, 6),
    Ipv4Addr::new(10, 200, 96, 7),
];
/// CAP_NET_ADMIN and CAP_NET_RAW: what green keeps after the drop.
const KEPT_CAPS: u64 = (1 << 12) | (1 << 13);

/// The namespaces, the PKI and the etcd members.
struct Ha {
    dir: TempDir,
    tag: String,
    client: Netns,
    a: Netns,
    b: Netns,
    etcd_ns: Netns,
    etcd: Vec<Option<Child>>,
    /// Starts of each member (its log is `etcd-<i>.<starts>.log`).
    starts: [usize; 3],
    /// Dropped last: the bridge.
    _lan: Netns,
}

impl Ha {
    fn new() -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
            ("etcd", "etcd-server"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let lan = Netns::new("halan", &tag);
        lan.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.ok(&["ip", "link", "set", "br0", "up"]);
        let client = Netns::new("hacl", &tag);
        let a = Netns::new("haa", &tag);
        let b = Netns::new("hab", &tag);
        let etcd_ns = Netns::new("haetcd", &tag);
        for (ns, x, addrs) in [
            (&client, "c", &[CLIENT][..]),
            (&a, "a", &[GREEN_A][..]),
            (&b, "b", &[GREEN_B][..]),
            (&etcd_ns, "e", &ETCD[..]),
        ] {
            let inner = format!("{x}{tag}");
            let outer = format!("l{x}{tag}");
            run_ok(Command::new("ip").args([
                "link", "add", &outer, "netns", &lan.name, "type", "veth", "peer", "name", &inner,
                "netns", &ns.name,
            ]));
            lan.ok(&["ip", "link", "set", &outer, "master", "br0"]);
            lan.ok(&["ip", "link", "set", &outer, "up"]);
            for addr in addrs {
                assert_eq!(addr.octets()[..2], [10, 200]);
                ns.ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &inner]);
            }
            ns.ok(&["ip", "link", "set", &inner, "up"]);
        }
        Self {
            dir,
            tag,
            client,
            a,
            b,
            etcd_ns,
            etcd: vec![None, None, None],
            starts: [0; 3],
            _lan: lan,
        }
    }

    /// The knock PKI (alice, the shared receiver key `green.key`) and the
    /// etcd PKI (its own CA, one server certificate for the three members,
    /// a client certificate per green). Returns green's public key.
    fn pki(&self) -> String {
        let keys = make_relay_pki(&self.dir, "ha e2e CA", &bin("red-relay"), None);
        let server = bin("spa-server");
        let d = &self.dir;
        run_ok(Command::new(&server).args([
            "pki",
            "init",
            "--dir",
            &d.s("etcd-ca"),
            "--name",
            "ha e2e etcd CA",
            "--cert-out",
            &d.s("etcd-ca.pem"),
        ]));
        for (who, usage) in [
            ("etcd", "--server"),
            ("green-a", "--client"),
            ("green-b", "--client"),
        ] {
            run_ok(Command::new(bin("spa-client")).args([
                "keygen",
                "--out",
                &d.s(&format!("{who}.key")),
                "--csr",
                &d.s(&format!("{who}.csr")),
                "--name",
                who,
            ]));
            let mut issue = Command::new(&server);
            issue.args([
                "pki",
                "issue",
                "--dir",
                &d.s("etcd-ca"),
                "--csr",
                &d.s(&format!("{who}.csr")),
                "--name",
                who,
                usage,
                "--out",
                &d.s(&format!("{who}.crt")),
            ]);
            if who == "etcd" {
                for ip in ETCD {
                    issue.args(["--ip", &ip.to_string()]);
                }
            }
            run_ok(&mut issue);
        }
        keys.green_pub
    }

    /// Starts etcd member `i` (a new cluster on first start; its data
    /// directory after that).
    fn start_etcd(&mut self, i: usize) {
        let peer = |j: usize| format!("http://127.0.0.1:{}", 2380 + 10 * j);
        let cluster = (0..3)
            .map(|j| format!("m{j}={}", peer(j)))
            .collect::<Vec<_>>()
            .join(",");
        let client_url = format!("https://{}:2379", ETCD[i]);
        let d = &self.dir;
        self.starts[i] += 1;
        let n = self.starts[i];
        let child = self.etcd_ns.spawn(
            &[
                "etcd",
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &d.s(&format!("etcd-{i}.data")),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer(i),
                "--initial-advertise-peer-urls",
                &peer(i),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                &format!("spa-ha-{}", self.tag),
                "--cert-file",
                &d.s("etcd.crt"),
                "--key-file",
                &d.s("etcd.key"),
                "--trusted-ca-file",
                &d.s("etcd-ca.pem"),
                "--client-cert-auth",
            ],
            &d.join(&format!("etcd-{i}.{n}.log")),
        );
        self.etcd[i] = Some(child);
    }

    /// The log of member `i`'s latest start.
    fn etcd_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(&format!("etcd-{i}.{}.log", self.starts[i])))
            .unwrap_or_default()
    }

    /// Starts the three members and waits until each serves clients.
    fn start_cluster(&mut self) {
        for i in 0..3 {
            self.start_etcd(i);
        }
        let ready = wait_until(Duration::from_secs(60), || {
            (0..3).all(|i| self.etcd_log(i).contains("ready to serve client requests"))
        });
        assert!(
            ready,
            "etcd did not become ready:\n{}",
            (0..3)
                .map(|i| self.etcd_log(i))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }

    /// Stops every member (SIGTERM) and waits for them to exit.
    fn stop_cluster(&mut self) {
        for c in self.etcd.iter_mut().flatten() {
            let _ = Command::new("kill").arg(c.id().to_string()).output();
        }
        for c in self.etcd.iter_mut() {
            if let Some(mut child) = c.take() {
                let _ = child.wait();
            }
        }
    }

    fn green_config(&self, x: &str, endpoints: &str) -> std::path::PathBuf {
        let d = &self.dir;
        let text = format!(
            r#"[daemon]
knock_port = {KNOCK_PORT}
keys = ["{key}"]
replay_db = "{db}"
control_socket = "{sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"

[[services]]
name = "ssh"
port = {SSH_PORT}

[[rules]]
identity = "cn:alice"
services = ["ssh"]

[replay]
backend = "etcd"
endpoints = [{endpoints}]
ca = "{etcd_ca}"
cert = "{cert}"
key = "{ckey}"
prefix = "/spa/replay/ha-{tag}"
timeout_ms = 500
"#,
            key = d.s("green.key"),
            db = d.s(&format!("green-{x}.redb")),
            sock = d.s(&format!("green-{x}.sock")),
            ca = d.s("ca.pem"),
            etcd_ca = d.s("etcd-ca.pem"),
            cert = d.s(&format!("green-{x}.crt")),
            ckey = d.s(&format!("green-{x}.key")),
            tag = self.tag,
        );
        let path = d.join(&format!("green-{x}.toml"));
        std::fs::write(&path, text).expect("green config");
        path
    }

    fn endpoints() -> String {
        ETCD.iter()
            .map(|ip| format!("\"https://{ip}:2379\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn start_green(&self, ns: &Netns, x: &str) -> Green {
        let config = self.green_config(x, &Self::endpoints());
        Green::start(
            ns,
            &config,
            &self.dir.join(&format!("green-{x}.sock")),
            &self.dir.join(&format!("green-{x}.log")),
        )
    }

    fn client_profiles(&self, green_pub: &str) {
        let mut text = String::new();
        for (name, server) in [("a", GREEN_A), ("b", GREEN_B)] {
            text.push_str(&format!(
                r#"[profiles.{name}]
server = "{server}"
port = {KNOCK_PORT}
server_key = "{green_pub}"
certificate = "{cert}"
key = "{key}"
services = ["ssh"]
allow_ip = "auto"
lifetime = 300

"#,
                cert = self.dir.s("alice.crt"),
                key = self.dir.s("alice.key"),
            ));
        }
        std::fs::write(self.dir.join("client.toml"), text).expect("client.toml");
    }

    /// `spa-client --profile <p> send [--wait 2222] open`.
    fn knock(&self, profile: &str, wait: bool) -> Output {
        let mut c = self.client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(["--profile", profile, "send"]);
        if wait {
            c.args(["--wait", &SSH_PORT.to_string()]);
        }
        c.arg("open")
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"));
        c.output().expect("spa-client")
    }

    fn connect(&self, green: Ipv4Addr) -> std::io::Result<std::net::TcpStream> {
        self.client.connect(sock(green, SSH_PORT), CONNECT_TIMEOUT)
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        self.stop_cluster();
    }
}

fn assert_ok(out: &Output, what: &str, green: &Green) {
    assert!(
        out.status.success(),
        "{what}: {}{}\ngreen log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        green.log_text()
    );
}

fn wait_log(green: &Green, needle: &str, timeout: Duration) {
    assert!(
        wait_until(timeout, || green.log_text().contains(needle)),
        "no {needle:?} in the log:\n{}",
        green.log_text()
    );
}

/// One line of `/proc/<pid>/task/<tid>/status`, its value.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map_or("", str::trim)
}

/// Every task of `green` (the etcd client's `spa-etcd` thread among them)
/// runs with at most CAP_NET_ADMIN and CAP_NET_RAW and no_new_privs.
fn assert_threads_unprivileged(green: &Green) {
    let tasks = format!("/proc/{}/task", green.pid());
    let all: Vec<(String, String)> = std::fs::read_dir(&tasks)
        .expect("tasks")
        .flatten()
        .map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                comm.trim().to_owned(),
            )
        })
        .collect();
    assert!(all.iter().any(|(_, c)| c == "spa-etcd"), "{all:?}");
    for (tid, comm) in &all {
        let st = std::fs::read_to_string(format!("{tasks}/{tid}/status")).expect("status");
        assert_ne!(
            status_field(&st, "Uid").split_whitespace().next(),
            Some("0"),
            "{comm}"
        );
        for caps in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            let v = u64::from_str_radix(status_field(&st, caps), 16).expect("hex");
            assert_eq!(v & !KEPT_CAPS, 0, "{comm} ({tid}) {caps} {v:x}");
        }
        assert_eq!(status_field(&st, "NoNewPrivs"), "1", "{comm} ({tid})");
    }
}

#[test]
fn a_knock_accepted_by_one_green_is_refused_as_replayed_by_the_other_and_etcd_down_fails_closed() {
    let started = Instant::now();
    let mut ha = Ha::new();
    let green_pub = ha.pki();
    ha.client_profiles(&green_pub);
    ha.start_cluster();
    eprintln!(
        "etcd cluster (3 members) ready after {:?}",
        started.elapsed()
    );
    let _svc_a = TcpService::start(&ha.a, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let _svc_b = TcpService::start(&ha.b, SocketAddr::from(([0, 0, 0, 0], SSH_PORT)));
    let green_a = ha.start_green(&ha.a, "a");
    let green_b = ha.start_green(&ha.b, "b");
    for g in [&green_a, &green_b] {
        assert!(
            wait_until(
                Duration::from_secs(10),
                || g.status()["replay"]["available"] == Value::Bool(true)
            ),
            "{}",
            g.log_text()
        );
    }
    assert_silently_dropped(ha.connect(GREEN_A), "client before the knock (A)");

    // A knock to A, captured on A's link.
    let mut wire = Tcpdump::start(
        &ha.a,
        &format!("a{}", ha.tag),
        &format!("udp dst port {KNOCK_PORT}"),
        &ha.dir.join("knock-a.pcap"),
    );
    let out = ha.knock("a", true);
    assert_ok(&out, "knock to A", &green_a);
    ha.connect(GREEN_A)
        .expect("client connects to A after its knock");
    let captured = || -> Vec<Vec<u8>> {
        let bytes = std::fs::read(&wire.file).unwrap_or_default();
        if bytes.len() < 24 {
            return Vec::new();
        }
        pcap::udp_datagrams(&bytes)
            .into_iter()
            .filter(|u| u.src == IpAddr::V4(CLIENT) && u.dst_port == KNOCK_PORT)
            .map(|u| u.payload)
            .collect()
    };
    // tcpdump hands packets over in batches: wait for the file to hold it.
    assert!(
        wait_until(Duration::from_secs(10), || !captured().is_empty()),
        "no knock captured on A's link"
    );
    let knocks = captured();
    wire.stop();
    assert_eq!(green_a.counter("accepted.open-tunnel"), 1);

    // The captured datagram replayed to B, from the client's address.
    let mut b_sends = Tcpdump::start(
        &ha.b,
        &format!("b{}", ha.tag),
        &format!("ip and src host {GREEN_B} and dst host {CLIENT}"),
        &ha.dir.join("b-sends.pcap"),
    );
    ha.client
        .send_udp(IpAddr::V4(CLIENT), sock(GREEN_B, KNOCK_PORT), &knocks[0]);
    green_b.wait_counter("refused.replayed", 1);
    let st = green_b.status();
    assert_eq!(st["counters"]["replay.etcd.replayed"], 1, "{st}");
    assert_eq!(st["counters"]["accepted.open-tunnel"], Value::Null, "{st}");
    assert!(st["sessions"].as_array().is_some_and(Vec::is_empty), "{st}");
    assert_silently_dropped(ha.connect(GREEN_B), "client at B after the replay");
    let sent = b_sends.lines();
    assert!(sent.is_empty(), "B answered:\n{}", sent.join("\n"));
    let log = green_b.log_text();
    assert!(
        log.lines().any(|l| l.contains("refused")
            && l.contains(&format!("src={CLIENT}"))
            && l.contains("reason=replayed")),
        "{log}"
    );
    eprintln!("cross-gateway replay refused at B: refused.replayed = 1, B silent, closed");

    // A fresh knock to B opens B.
    let out = ha.knock("b", true);
    assert_ok(&out, "fresh knock to B", &green_b);
    ha.connect(GREEN_B)
        .expect("client connects to B after a fresh knock");
    assert_eq!(green_b.counter("accepted.open-tunnel"), 1);

    assert_threads_unprivileged(&green_a);

    // etcd stopped: knocks refused, fail closed.
    ha.stop_cluster();
    let out = ha.knock("a", false);
    assert_ok(&out, "knock to A with etcd down", &green_a);
    green_a.wait_counter_within("refused.storage_failure", 1, Duration::from_secs(10));
    let st = green_a.status();
    assert_eq!(st["counters"]["accepted.open-tunnel"], 1, "{st}");
    assert_eq!(st["replay"]["available"], false, "{st}");
    assert!(st["replay"]["last_error"]["error"].is_string(), "{st}");
    assert!(
        st["counters"]["replay.etcd.failures"].as_u64() >= Some(1),
        "{st}"
    );
    let log = green_a.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("shared replay store")),
        "{log}"
    );
    assert!(log.contains("reason=storage_failure"), "{log}");
    eprintln!(
        "etcd down: refused as storage_failure, status replay.last_error = {}",
        st["replay"]["last_error"]["error"]
    );

    // etcd back: knocks accepted again.
    ha.start_cluster();
    wait_log(
        &green_a,
        "shared replay store reachable again",
        Duration::from_secs(30),
    );
    let out = ha.knock("a", true);
    assert_ok(&out, "knock to A with etcd back", &green_a);
    green_a.wait_counter_within("accepted.open-tunnel", 2, Duration::from_secs(5));
    assert_eq!(green_a.status()["replay"]["available"], true);
    eprintln!("etcd back: accepted again; done in {:?}", started.elapsed());
}

/// `check-config` accepts good `[replay]` settings and names each bad one.
#[test]
fn check_config_checks_the_etcd_settings() {
    let ha = Ha::new();
    ha.pki();
    let check = |endpoints: &str| -> Output {
        let config = ha.green_config("a", endpoints);
        Command::new(bin("spa-server"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .expect("check-config")
    };
    let out = check(&Ha::endpoints());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain http on a network address: refused (the floors need mTLS).
    let out = check("\"http://10.200.96.5:2379\"");
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && err.contains("replay.endpoints[0]"),
        "{err}"
    );
    // A client key readable by others: refused like any key file.
    let key = ha.dir.join("green-a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = check(&Ha::endpoints());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && err.contains("replay.key"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A bad timeout and backend.
    let config = ha.green_config("a", &Ha::endpoints());
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("timeout_ms = 500", "timeout_ms = 0")
        .replace("backend = \"etcd\"", "backend = \"zookeeper\"");
    std::fs::write(&config, text).expect("config");
    let out = Command::new(bin("spa-server"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && err.contains("replay.backend"),
        "{err}"
    );
    // Without a client certificate.
    let text = std::fs::read_to_string(ha.green_config("a", &Ha::endpoints()))
        .expect("config")
        .lines()
        .filter(|l| !l.starts_with("cert = "))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).expect("config");
    let out = Command::new(bin("spa-server"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && err.contains("replay.cert"),
        "{err}"
    );
}
