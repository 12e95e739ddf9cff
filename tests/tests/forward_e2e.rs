//! End-to-end test of the forward chain (SPEC §9, "A gateway that
//! routes"), as root, in network namespaces:
//!
//! ```text
//!   client 10.200.81.2 ── 10.200.81.1 green 10.200.82.1 ── 10.200.82.2 behind
//!   (management)                           10.200.83.1 ── 10.200.83.2 scanner
//! ```
//!
//! Green forwards (`net.ipv4.ip_forward=1`) and runs the real `spa-server`
//! with `[firewall] forward = "drop"`. Needs root, iproute2, nftables,
//! tcpdump and conntrack; fails with the `apt-get install` line when one is
//! missing.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Bed, CLIENT, CONNECT_TIMEOUT, GREEN_C, SSH_PORT, assert_silently_dropped, counter_of, sock,
};
use tests::{Netns, TcpService, Tcpdump, bin, echo, link4, wait_until};

const GREEN_B: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 1);
const BEHIND: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 2);
const GREEN_S: Ipv4Addr = Ipv4Addr::new(10, 200, 83, 1);
const SCANNER: Ipv4Addr = Ipv4Addr::new(10, 200, 83, 2);

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
    assert!(allowed.wait_accepted(1, Duration::from_secs(5)));
    assert!(outside.wait_accepted(1, Duration::from_secs(5)));
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
