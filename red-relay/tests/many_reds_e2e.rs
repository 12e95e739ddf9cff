//! One green relaying to two reds, end to end, as root, on four network
//! namespaces:
//!
//! ```text
//!                                          ┌ 10.200.67.1 ── 10.200.67.2 red A (web 8080)
//! client 10.200.66.2 ── 10.200.66.1 green ─┤
//!                                          └ 10.200.68.1 ── 10.200.68.2 red B (db 5432)
//! ```
//!
//! green runs `spa-server run` with two `[[relay]]` entries (each red its
//! own address, key and services), the reds run `red-relay run`, all in
//! blackhole mode and dropped to `nobody`. The client drives everything
//! with the `spa-client` binary; the test reads the reds' nftables sets
//! and the daemons' `status`.
//!
//! Addresses are in 10.200.0.0/16 inside the namespaces only; the
//! namespaces (and what runs in them) are deleted on drop, also when a test
//! fails.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use spa_nft::Proto;
use tests::{
    Daemon, GreenRelayConfig, Netns, RedRelayConfig, RelayKeys, TcpService, TempDir, line_of,
    link4, make_relay_pki, run_ok, start_green, start_red, unique_tag, wait_until,
    write_green_config, write_red_config,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 66, 2);
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 66, 1);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 67, 1);
const RED_A: Ipv4Addr = Ipv4Addr::new(10, 200, 67, 2);
const GREEN_B: Ipv4Addr = Ipv4Addr::new(10, 200, 68, 1);
const RED_B: Ipv4Addr = Ipv4Addr::new(10, 200, 68, 2);
const KNOCK_PORT: u16 = 62201;
const ORDER_PORT: u16 = 62202;
const TUNNEL_PORT: u16 = 4443;
const WEB_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;
const METRICS_PORT: u16 = 9462;

/// A scrape of `ns`'s loopback metrics endpoint with the real `curl`.
fn scrape(ns: &Netns) -> String {
    let out = ns
        .cmd("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one series (0 if absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Whether the test can run here (root, `ip`, `nft`); says why not.
fn runnable() -> bool {
    let ok = |cmd: &str, arg: &[&str]| {
        Command::new(cmd)
            .args(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let runs = nix::unistd::geteuid().is_root()
        && ok("ip", &["netns", "list"])
        && ok("nft", &["--version"]);
    if !runs {
        tests::cannot_run(
            "many reds end-to-end",
            "needs root, iproute2 and nftables (CI runs them as root)",
        );
    }
    runs
}

fn bin(name: &str) -> PathBuf {
    if name == "red-relay" {
        PathBuf::from(env!("CARGO_BIN_EXE_red-relay"))
    } else {
        tests::bin(name)
    }
}

struct Bed {
    // Drop order: daemons and services before the namespaces.
    green: Daemon,
    red_a: Daemon,
    red_b: Daemon,
    _web: TcpService,
    _db: TcpService,
    dir: TempDir,
    _dir_b: TempDir,
    client: Netns,
    green_ns: Netns,
    red_a_ns: Netns,
    red_b_ns: Netns,
}

/// Green's configuration with red A's `[relay]` table turned into the
/// first `[[relay]]` entry and red B's appended.
fn two_red_config(dir: &TempDir, red_b_pub: &str) -> String {
    let text = std::fs::read_to_string(dir.join("green.toml")).expect("green.toml");
    let (head, relay) = text.split_at(text.find("[relay]").expect("[relay]"));
    let relay = relay.replacen("[relay]", "[[relay]]", 1);
    format!(
        "{head}{relay}\n[[relay]]\nred = \"{RED_B}:{ORDER_PORT}\"\nred_key = \"{red_b_pub}\"\n\
         signing_key = \"{signing}\"\nsource = \"{GREEN_B}\"\n\
         services = [{{ name = \"db\", port = {DB_PORT} }}]\n",
        signing = dir.s("green-signing.key"),
    )
}

impl Bed {
    fn new() -> Self {
        let tag = unique_tag();
        let dir = TempDir::new(&format!("reds-{tag}"));
        let dir_b = TempDir::new(&format!("reds-b-{tag}"));
        let client = Netns::new("mc", &tag);
        let green_ns = Netns::new("mg", &tag);
        let red_a_ns = Netns::new("ma", &tag);
        let red_b_ns = Netns::new("mb", &tag);
        link4(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
        link4(&green_ns, "to-red-a", GREEN_A, &red_a_ns, "to-green", RED_A);
        link4(&green_ns, "to-red-b", GREEN_B, &red_b_ns, "to-green", RED_B);

        let server = bin("spa-server");
        let red_relay = bin("red-relay");
        let keys = make_relay_pki(&dir, "many reds e2e CA", &red_relay, None);
        // Red B: its own key and files, the same CA.
        std::fs::copy(dir.join("ca.pem"), dir_b.join("ca.pem")).expect("copy ca");
        let red_b_pub =
            line_of(Command::new(&red_relay).args(["keygen", "--out", &dir_b.s("red.key")]));
        let keys_b = RelayKeys {
            red_pub: red_b_pub.clone(),
            ..keys.clone()
        };
        write_green_config(
            &dir,
            &keys,
            &GreenRelayConfig {
                knock_port: KNOCK_PORT,
                tunnel_port: TUNNEL_PORT,
                red: SocketAddr::from((RED_A, ORDER_PORT)),
                source: GREEN_A,
                services: &[("web", WEB_PORT)],
                tunnel: false,
            },
        );
        // alice may use db too; metrics on loopback (always a scraper).
        let text = two_red_config(&dir, &red_b_pub).replacen("\"web\"]", "\"web\", \"db\"]", 1)
            + &format!("\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n");
        std::fs::write(dir.join("green.toml"), text).expect("write green.toml");
        for (d, k, services) in [
            (&dir, &keys, [("web", WEB_PORT)]),
            (&dir_b, &keys_b, [("db", DB_PORT)]),
        ] {
            write_red_config(
                d,
                k,
                &RedRelayConfig {
                    order_port: ORDER_PORT,
                    management: None,
                    services: &services,
                },
            );
        }
        // Red A exposes metrics too (the same framework).
        let red_a_toml = dir.join("red.toml");
        let text = std::fs::read_to_string(&red_a_toml).expect("red.toml");
        std::fs::write(
            &red_a_toml,
            format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n"),
        )
        .expect("write red.toml");
        let client_cfg = format!(
            "[profiles.lab]\nserver = \"{GREEN_C}\"\nserver_key = \"{}\"\nkey = \"{}\"\n\
             certificate = \"{}\"\nlifetime = 30\n",
            keys.green_pub,
            dir.s("alice.key"),
            dir.s("alice.crt"),
        );
        std::fs::write(dir.join("client.toml"), client_cfg).expect("write");
        run_ok(Command::new(&server).args(["check-config", "--config", &dir.s("green.toml")]));
        for d in [&dir, &dir_b] {
            run_ok(Command::new(&red_relay).args(["check-config", "--config", &d.s("red.toml")]));
        }
        let red_a = start_red(&red_a_ns, &red_relay, &dir);
        let red_b = start_red(&red_b_ns, &red_relay, &dir_b);
        let web = TcpService::start(&red_a_ns, SocketAddr::from((RED_A, WEB_PORT)));
        let db = TcpService::start(&red_b_ns, SocketAddr::from((RED_B, DB_PORT)));
        let green = start_green(&green_ns, &dir);
        Self {
            green,
            red_a,
            red_b,
            _web: web,
            _db: db,
            dir,
            _dir_b: dir_b,
            client,
            green_ns,
            red_a_ns,
            red_b_ns,
        }
    }

    fn spa_client(&self, args: &[&str]) {
        let mut c = self.client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.env("XDG_STATE_HOME", self.dir.join("state"))
            .arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(args);
        run_ok(&mut c);
    }

    /// The `(address, port)` of every TCP element in a red's allow sets.
    fn opened(ns: &Netns) -> Vec<(IpAddr, u16)> {
        let sets = ns.run_in(|| spa_nft::list("spa")).expect("sets");
        [
            (IpAddr::V4(GREEN_A), WEB_PORT),
            (IpAddr::V4(GREEN_B), DB_PORT),
        ]
        .into_iter()
        .chain([
            (IpAddr::V4(GREEN_A), DB_PORT),
            (IpAddr::V4(GREEN_B), WEB_PORT),
        ])
        .filter(|&(a, p)| sets.allowed(a, Proto::Tcp, p).is_some())
        .collect()
    }

    fn logs(&self) -> String {
        format!(
            "green log:\n{}\nred A log:\n{}\nred B log:\n{}",
            self.green.log_text(),
            self.red_a.log_text(),
            self.red_b.log_text()
        )
    }
}

/// The client requests web (on red A), then db (on red B): each red opens
/// for green only the port it hosts, and the other red opens nothing (gets
/// no order at all); green's status shows the session at each red, and
/// its metrics (scraped with `curl` on loopback) the outcomes per red; the
/// client's close closes both. A configuration naming one service on both
/// reds is refused by check-config and by run alike.
#[test]
fn green_relays_each_service_to_its_red_and_a_close_to_both() {
    if !runnable() {
        return;
    }
    let bed = Bed::new();
    assert!(Bed::opened(&bed.red_a_ns).is_empty());
    assert!(Bed::opened(&bed.red_b_ns).is_empty());

    // The session starts with the tunnel (green's own service).
    bed.spa_client(&["send", "open"]);
    bed.green
        .wait_counter_within("accepted.open-tunnel", 1, Duration::from_secs(5));
    bed.spa_client(&["send", "request", "web"]);
    bed.green
        .wait_counter_within("relay.confirmed", 1, Duration::from_secs(10));
    assert_eq!(
        Bed::opened(&bed.red_a_ns),
        vec![(IpAddr::V4(GREEN_A), WEB_PORT)],
        "{}",
        bed.logs()
    );
    assert!(Bed::opened(&bed.red_b_ns).is_empty(), "red B opened");
    assert_eq!(bed.red_b.counter("accepted.order"), 0, "red B got an order");
    assert!(
        bed.green_ns
            .connect(SocketAddr::from((RED_A, WEB_PORT)), Duration::from_secs(2))
            .is_ok()
    );

    bed.spa_client(&["send", "request", "db"]);
    bed.green
        .wait_counter_within("relay.confirmed", 2, Duration::from_secs(10));
    assert_eq!(
        Bed::opened(&bed.red_b_ns),
        vec![(IpAddr::V4(GREEN_B), DB_PORT)],
        "{}",
        bed.logs()
    );
    assert_eq!(
        Bed::opened(&bed.red_a_ns),
        vec![(IpAddr::V4(GREEN_A), WEB_PORT)],
        "red A opened db"
    );
    // Per-red state in green's status: one session at each.
    let status = bed.green.status();
    let reds = status["relay"].as_array().cloned().unwrap_or_default();
    assert_eq!(reds.len(), 2, "{status}");
    for (r, red, service) in [(&reds[0], RED_A, "web"), (&reds[1], RED_B, "db")] {
        assert_eq!(r["red"], format!("{red}:{ORDER_PORT}"), "{status}");
        assert_eq!(r["services"], serde_json::json!([service]), "{status}");
        assert_eq!(r["sessions"], 1, "{status}");
        assert!(
            r["counters"]["relay.confirmed"].as_u64() >= Some(1),
            "{status}"
        );
    }

    // Relay outcomes per red in green's metrics; the order in red A's.
    let series = |red: Ipv4Addr, outcome: &str| {
        format!("spa_relay_orders_total{{red=\"{red}:{ORDER_PORT}\",outcome=\"{outcome}\"}}")
    };
    let mut text = String::new();
    let published = wait_until(Duration::from_secs(5), || {
        text = scrape(&bed.green_ns);
        value(&text, &series(RED_A, "confirmed")) >= 1.0
            && value(&text, &series(RED_B, "confirmed")) >= 1.0
    });
    assert!(published, "{text}");
    assert_eq!(value(&text, &series(RED_A, "requests")), 1.0, "{text}");
    assert_eq!(value(&text, &series(RED_B, "requests")), 1.0, "{text}");
    let red_text = scrape(&bed.red_a_ns);
    assert!(
        value(&red_text, "spa_accepted_total{kind=\"order\"}") >= 1.0,
        "{red_text}"
    );

    // The operator's view: one line per red.
    let out = run_ok(Command::new(bin("spa-server")).args([
        "status",
        "--socket",
        &bed.dir.s("green.sock"),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    for (red, from, service) in [(RED_A, GREEN_A, "web"), (RED_B, GREEN_B, "db")] {
        let line = format!("red {red}:{ORDER_PORT} (from {from}) hosts {service}: 1 session(s)");
        assert!(text.contains(&line), "{line:?} missing from:\n{text}");
    }

    bed.spa_client(&["send", "close"]);
    let closed = wait_until(Duration::from_secs(10), || {
        Bed::opened(&bed.red_a_ns).is_empty() && Bed::opened(&bed.red_b_ns).is_empty()
    });
    assert!(
        closed,
        "a red kept its element after the close\n{}",
        bed.logs()
    );
    bed.red_a
        .wait_counter_within("accepted.close", 1, Duration::from_secs(5));
    bed.red_b
        .wait_counter_within("accepted.close", 1, Duration::from_secs(5));
    let status = bed.green.status();
    assert_eq!(status["relay"][0]["sessions"], 0, "{status}");
    assert_eq!(status["relay"][1]["sessions"], 0, "{status}");

    // One service on two reds: refused before anything starts.
    let bad = bed.dir.join("bad.toml");
    let text = std::fs::read_to_string(bed.dir.join("green.toml")).expect("green.toml");
    let second = text.rfind("[[relay]]").expect("second red");
    let (a, b) = text.split_at(second);
    let b = b.replacen(
        "services = [",
        &format!("services = [{{ name = \"web\", port = {WEB_PORT} }}, "),
        1,
    );
    std::fs::write(&bad, format!("{a}{b}")).expect("write bad.toml");
    for cmd in ["check-config", "run"] {
        // In green's namespace: should the check let it through, run would
        // install its firewall there, not on this host.
        let out = bed
            .green_ns
            .cmd(bin("spa-server").to_str().expect("utf-8"))
            .args([cmd, "--config", bad.to_str().expect("utf-8")])
            .output()
            .expect("spa-server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted it: {err}");
        assert!(
            err.contains("relay[1].services[0]") && err.contains("one red"),
            "{cmd}: {err}"
        );
    }
}
