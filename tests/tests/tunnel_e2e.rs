//! The mutual-TLS tunnel end to end, as root, on three network namespaces:
//!
//! ```text
//! client 10.200.71.2 ── 10.200.71.1 green 10.200.72.1 ── 10.200.72.2 red
//! ```
//!
//! green runs `spa-server run` with `[relay]` and `[tunnel]`, red runs
//! `red-relay run`, both in blackhole mode. Red runs a real OpenSSH server
//! (its own sshd_config and host key) on port 2222 and `python3 -m
//! http.server` on port 8080. The client has no route to red: it reaches
//! both only through green's tunnel, with `spa-client connect` (knocks,
//! then TLS with its certificate): real `ssh` through `ProxyCommand`, and
//! `curl` through `--listen`.
//!
//! Then: a live ssh session ends when the client sends close (green cuts
//! the session's connections) and red's `allow4` is empty; a profile with
//! `close_on_exit` closes the session when `connect` ends; green killed
//! (-9) leaves holes of a short lifetime that expire by themselves, and a
//! new session works after its restart; last, with red stopped, green's
//! tunnel never reaches red's service and green counts it
//! (`relay.tunnel_unreachable`) and logs it. An attacker namespace
//!
//! ```text
//! attacker 10.200.73.2 ── 10.200.73.1 green (forwarding to red)
//! ```
//!
//! reaches neither green's tunnel port nor red at any step (its connects
//! time out).
//!
//! Addresses are in 10.200.0.0/16 inside the namespaces only; namespaces,
//! daemons and servers are removed on drop, also when the test fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command};
use std::time::Duration;

use tests::{
    Daemon, GreenRelayConfig, Netns, RedRelayConfig, TempDir, allow4, bin, link4, make_relay_pki,
    require_tools, run_ok, sessions, start_green, start_red, unique_tag, wait_until,
    write_green_config, write_red_config,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 2);
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 71, 1);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 72, 2);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 200, 73, 2);
const GREEN_A: Ipv4Addr = Ipv4Addr::new(10, 200, 73, 1);
const KNOCK_PORT: u16 = 62201;
const ORDER_PORT: u16 = 62202;
const TUNNEL_PORT: u16 = 8443;
const SSH_PORT: u16 = 2222;
const WEB_PORT: u16 = 8080;
const LOCAL_PORT: u16 = 18080;
/// The lifetime of the holes left behind when green is killed.
const SHORT_LIFETIME_S: u64 = 3;

/// A process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ssh_and_http_through_the_tunnel() {
    require_tools(&[
        ("nft", "nftables"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("python3", "python3"),
        ("curl", "curl"),
    ]);
    let tag = unique_tag();
    let dir = TempDir::new(&format!("tunnel-{tag}"));
    let client = Netns::new("tc", &tag);
    let green_ns = Netns::new("tg", &tag);
    let red_ns = Netns::new("tr", &tag);
    link4(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
    link4(&green_ns, "to-red", GREEN_R, &red_ns, "to-green", RED);
    // The attacker: its own link to green, which forwards to red.
    let attacker = Netns::new("ta", &tag);
    link4(
        &attacker,
        "to-green",
        ATTACKER,
        &green_ns,
        "to-attacker",
        GREEN_A,
    );
    attacker.ok(&["ip", "route", "add", "default", "via", &GREEN_A.to_string()]);
    red_ns.ok(&[
        "ip",
        "route",
        "add",
        "10.200.73.0/24",
        "via",
        &GREEN_R.to_string(),
    ]);
    green_ns.ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);

    let server = bin("spa-server");
    let spa_client = bin("spa-client");
    let red_relay = bin("red-relay");
    let keys = make_relay_pki(&dir, "tunnel e2e CA", &red_relay, Some(GREEN_C));
    let green_pub = &keys.green_pub;
    write_green_config(
        &dir,
        &keys,
        &GreenRelayConfig {
            knock_port: KNOCK_PORT,
            tunnel_port: TUNNEL_PORT,
            red: SocketAddr::from((RED, ORDER_PORT)),
            source: GREEN_R,
            services: &[("ssh", SSH_PORT), ("web", WEB_PORT)],
            tunnel: true,
        },
    );
    write_red_config(
        &dir,
        &keys,
        &RedRelayConfig {
            order_port: ORDER_PORT,
            management: None,
            services: &[("ssh", SSH_PORT), ("web", WEB_PORT)],
        },
    );
    let client_cfg = format!(
        r#"[profiles.lab]
server = "{GREEN_C}"
server_key = "{green_pub}"
key = "{key}"
certificate = "{cert}"
lifetime = 60
tunnel_ca = "{ca}"
tunnel_port = {TUNNEL_PORT}

[profiles.auto]
server = "{GREEN_C}"
server_key = "{green_pub}"
key = "{key}"
certificate = "{cert}"
lifetime = 60
tunnel_ca = "{ca}"
tunnel_port = {TUNNEL_PORT}
close_on_exit = true

[profiles.short]
server = "{GREEN_C}"
server_key = "{green_pub}"
key = "{key}"
certificate = "{cert}"
lifetime = {SHORT_LIFETIME_S}
tunnel_ca = "{ca}"
tunnel_port = {TUNNEL_PORT}
"#,
        key = dir.s("alice.key"),
        cert = dir.s("alice.crt"),
        ca = dir.s("ca/ca.pem"),
    );
    std::fs::write(dir.join("client.toml"), client_cfg).expect("write");
    run_ok(Command::new(&server).args(["check-config", "--config", &dir.s("green.toml")]));

    // Red: OpenSSH and an HTTP server, behind red-relay.
    run_ok(Command::new("ssh-keygen").args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &dir.s("host_key"),
    ]));
    run_ok(Command::new("ssh-keygen").args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &dir.s("alice_ssh"),
        "-C",
        "alice",
    ]));
    std::fs::copy(dir.join("alice_ssh.pub"), dir.join("authorized_keys")).expect("copy");
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {SSH_PORT}\nListenAddress {RED}\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPidFile {pid}\nStrictModes no\n",
            hk = dir.s("host_key"),
            ak = dir.s("authorized_keys"),
            pid = dir.s("sshd.pid"),
        ),
    )
    .expect("sshd_config");
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("hello.txt"), "hello from red over the tunnel\n").expect("page");
    let _sshd = Proc(red_ns.spawn(
        &[
            "/usr/sbin/sshd",
            "-D",
            "-f",
            &dir.s("sshd_config"),
            "-E",
            &dir.s("sshd.log"),
        ],
        &dir.join("sshd.out"),
    ));
    let _web = Proc(red_ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            &WEB_PORT.to_string(),
            "--bind",
            &RED.to_string(),
            "--directory",
            www.to_str().expect("utf-8"),
        ],
        &dir.join("http.log"),
    ));
    // Before red's firewall, the attacker's route to red works.
    assert!(
        wait_until(Duration::from_secs(10), || attacker
            .connect(
                SocketAddr::from((RED, SSH_PORT)),
                Duration::from_millis(300)
            )
            .is_ok()),
        "the attacker has no route to red: the checks below would prove nothing"
    );
    let red = start_red(&red_ns, &red_relay, &dir);
    let mut green = start_green(&green_ns, &dir);
    // Both servers listen (seen from red itself).
    for port in [SSH_PORT, WEB_PORT] {
        assert!(
            wait_until(Duration::from_secs(10), || red_ns
                .connect(SocketAddr::from((RED, port)), Duration::from_millis(200))
                .is_ok()),
            "red's server on port {port} did not start"
        );
    }
    attacker_is_kept_out(&attacker, "before any knock");
    // Nothing answers on the tunnel port before a knock.
    assert!(
        client
            .connect(
                SocketAddr::from((GREEN_C, TUNNEL_PORT)),
                Duration::from_millis(500)
            )
            .is_err(),
        "the tunnel port is closed before a knock"
    );

    let state = dir.join("state");
    let connect_base = format!(
        "env XDG_STATE_HOME={st} {bin} --config {cfg} --profile lab",
        st = state.display(),
        bin = spa_client.display(),
        cfg = dir.s("client.toml"),
    );
    let connect = format!("{connect_base} connect");

    // ssh through ProxyCommand.
    let ssh_args = |connect: &str, remote: &str| -> Vec<String> {
        [
            "ssh",
            "-i",
            &dir.s("alice_ssh"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            &format!("ProxyCommand={connect} ssh"),
            "-p",
            &SSH_PORT.to_string(),
            &format!("root@{RED}"),
            remote,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let ssh = ssh_args(&connect, "echo ssh-through-the-tunnel; hostname -I");
    let ssh: Vec<&str> = ssh.iter().map(String::as_str).collect();
    let out = client.out(&ssh);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ssh-through-the-tunnel"),
        "ssh failed: {stdout}{}\ngreen log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        green.log_text()
    );
    assert!(
        stdout.contains(&RED.to_string()),
        "the shell ran on red: {stdout}"
    );
    attacker_is_kept_out(&attacker, "right after the client's knocks");
    assert!(
        !allow4(&red_ns).is_empty(),
        "red opened for green during the session"
    );

    // curl through --listen.
    let mut args: Vec<String> = connect.split(' ').map(str::to_owned).collect();
    args.extend([
        "web".into(),
        "--listen".into(),
        format!("127.0.0.1:{LOCAL_PORT}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _fwd = Proc(client.spawn(&args, &dir.join("forward.log")));
    let local = SocketAddr::from(([127, 0, 0, 1], LOCAL_PORT));
    assert!(
        wait_until(Duration::from_secs(20), || client
            .connect(local, Duration::from_millis(200))
            .is_ok()),
        "spa-client connect --listen did not listen: {}",
        std::fs::read_to_string(dir.join("forward.log")).unwrap_or_default()
    );
    for _ in 0..2 {
        let out = client.out(&[
            "curl",
            "-sS",
            "--max-time",
            "15",
            &format!("http://127.0.0.1:{LOCAL_PORT}/hello.txt"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from red over the tunnel\n",
            "curl: {}\nforward log:\n{}\ngreen log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("forward.log")).unwrap_or_default(),
            green.log_text()
        );
    }
    let log = green.log_text();
    assert!(log.contains("tunnel: connected"), "{log}");
    drop(_fwd);

    // A live ssh session ends when the client sends close: green shuts
    // the session's tunnel connections down.
    let long = ssh_args(&connect, "echo started; sleep 60");
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    let mut live = Proc(client.spawn(&long, &dir.join("live-ssh.log")));
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(
            dir.join("live-ssh.log")
        )
        .unwrap_or_default()
        .contains("started")),
        "the long ssh session did not start: {}",
        std::fs::read_to_string(dir.join("live-ssh.log")).unwrap_or_default()
    );
    attacker_is_kept_out(&attacker, "during the session");
    let close: Vec<String> = format!("{connect_base} send close")
        .split(' ')
        .map(str::to_owned)
        .collect();
    let close: Vec<&str> = close.iter().map(String::as_str).collect();
    let out = client.out(&close);
    assert!(out.status.success(), "send close: {out:?}");
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || live
            .0
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "the ssh session outlived the close\ngreen log:\n{}",
        green.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let log = green.log_text();
    assert!(
        log.contains("its connections were shut down"),
        "green did not cut the session's connections:\n{log}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || sessions(&green) == 0
            && sessions(&red) == 0
            && allow4(&red_ns).is_empty()),
        "after close: green {}, red {}, red's allow4 {:?}",
        green.status()["sessions"],
        red.status()["sessions"],
        allow4(&red_ns)
    );
    attacker_is_kept_out(&attacker, "after close");
    assert_times_out(
        &client,
        SocketAddr::from((GREEN_C, TUNNEL_PORT)),
        "the client, after close",
    );

    // close_on_exit: when the stream ends, connect closes the session on
    // every hop.
    let auto_connect = connect.replace("--profile lab", "--profile auto");
    let auto = ssh_args(&auto_connect, "echo auto-close");
    let auto: Vec<&str> = auto.iter().map(String::as_str).collect();
    let out = client.out(&auto);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("auto-close"),
        "ssh (close_on_exit): {out:?}\ngreen log:\n{}",
        green.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(5), || green.counter("accepted.close")
            >= 2
            && sessions(&green) == 0
            && sessions(&red) == 0
            && allow4(&red_ns).is_empty()),
        "after connect exited: green {}, red {}, red's allow4 {:?}\ngreen log:\n{}",
        green.status()["sessions"],
        red.status()["sessions"],
        allow4(&red_ns),
        green.log_text()
    );
    assert_eq!(green.counter("accepted.close"), 2, "the client sent close");

    // Green killed (-9) during a session of short lifetime: the holes it
    // left on green and red expire by themselves; restarted, a new
    // connect session works.
    let short = ssh_args(
        &connect.replace("--profile lab", "--profile short"),
        "echo short-lived",
    );
    let short: Vec<&str> = short.iter().map(String::as_str).collect();
    let out = client.out(&short);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("short-lived"),
        "ssh (short): {out:?}"
    );
    assert!(!allow4(&red_ns).is_empty(), "red's hole for green");
    assert!(!allow4(&green_ns).is_empty(), "green's hole for the client");
    green.kill9();
    let killed = std::time::Instant::now();
    attacker_is_kept_out(&attacker, "green killed");
    assert!(
        wait_until(Duration::from_secs(SHORT_LIFETIME_S + 3), || allow4(
            &red_ns
        )
        .is_empty()
            && allow4(&green_ns).is_empty()),
        "the holes did not expire: red {:?}, green {:?}",
        allow4(&red_ns),
        allow4(&green_ns)
    );
    assert!(killed.elapsed() < Duration::from_secs(SHORT_LIFETIME_S + 3));
    assert!(wait_until(Duration::from_secs(5), || sessions(&red) == 0));
    let green = Daemon::start(
        &green_ns,
        &dir.join("green.toml"),
        &dir.join("green.sock"),
        &dir.join("green-restarted.log"),
    );
    attacker_is_kept_out(&attacker, "green restarted");
    let again = ssh_args(&connect, "echo after-restart");
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let out = client.out(&again);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("after-restart"),
        "ssh after green's restart: {out:?}\ngreen log:\n{}",
        green.log_text()
    );
    attacker_is_kept_out(&attacker, "a session after the restart");

    // Red stops opening (killed, its openings flushed): green relays the
    // next request, its tunnel never reaches red's service, and it counts
    // and logs that red never opened (issue 10: green counts what red did).
    drop(red);
    red_ns.ok(&["nft", "flush", "set", "inet", "spa", "allow4"]);
    let never = ssh_args(&connect, "echo never");
    let never: Vec<&str> = never.iter().map(String::as_str).collect();
    let out = client.out(&never);
    assert!(!out.status.success(), "ssh reached a dead red: {out:?}");
    green.wait_counter_within("relay.tunnel_unreachable", 1, Duration::from_secs(10));
    let log = green.log_text();
    assert!(
        log.contains("red never opened the service for green")
            && log.contains(&format!("{RED}:{SSH_PORT}")),
        "{log}"
    );
}

/// Asserts a TCP connect from `ns` to `dst` times out (dropped, not
/// refused).
fn assert_times_out(ns: &Netns, dst: SocketAddr, who: &str) {
    match ns.connect(dst, Duration::from_millis(300)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!("{who}: connect to {dst}: {other:?}, expected a timeout"),
    }
}

/// The attacker reaches neither green's tunnel port (on both of green's
/// addresses it can route to) nor red's services: every attempt times out.
fn attacker_is_kept_out(attacker: &Netns, step: &str) {
    let targets = [
        SocketAddr::from((GREEN_A, TUNNEL_PORT)),
        SocketAddr::from((GREEN_C, TUNNEL_PORT)),
        SocketAddr::from((RED, SSH_PORT)),
        SocketAddr::from((RED, WEB_PORT)),
    ];
    std::thread::scope(|s| {
        for t in targets {
            s.spawn(move || assert_times_out(attacker, t, &format!("the attacker, {step}")));
        }
    });
}
