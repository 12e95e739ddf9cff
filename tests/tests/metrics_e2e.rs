//! The Prometheus endpoint end to end, as root: green in protect mode (the
//! mode in which nothing but spa's own rules hides the port) with
//! `[metrics] listen` on its management address, a management host on a
//! second link, the client on the first:
//!
//! ```text
//! client 10.200.81.2 ── 10.200.81.1 green 10.200.82.1 ── 10.200.82.2 management
//! ```
//!
//! The management host scrapes with the real `curl` over HTTP; the client
//! (with a route to green's management address) gets nothing, not even a
//! refusal, also after its knock opened ssh for it.

mod common;

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

use common::{Bed, CLIENT, GREEN_C, KNOCK_PORT, SSH_PORT, counter_of, sock};
use tests::{Netns, TcpService, link4, require_tools, wait_until};

const GREEN_M: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 1);
const MGMT: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 2);
const METRICS_PORT: u16 = 9462;

/// `curl` from `ns` to `url` (at most `secs` seconds).
fn curl(ns: &Netns, url: &str, secs: u32) -> Output {
    ns.cmd("curl")
        .args(["-sS", "--max-time", &secs.to_string(), url])
        .output()
        .expect("curl")
}

/// The value of one series in an exposition text (0 if absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of `family`.
fn sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn management_scrapes_counters_that_move_and_nobody_else_sees_the_port() {
    require_tools(&[("curl", "curl")]);
    let bed = Bed::new(
        &format!("management = [\"{MGMT}/32\"]"),
        &format!("\n[metrics]\nlisten = \"{GREEN_M}:{METRICS_PORT}\"\n"),
    );
    // Protect mode: only ssh is closed by the mode; the metrics port is
    // hidden by its own rule.
    let config = std::fs::read_to_string(bed.dir.join("green.toml")).expect("green.toml");
    let config = config.replacen(
        "mode = \"blackhole\"",
        &format!("mode = \"protect\"\nprotect_ports = [\"tcp/{SSH_PORT}\"]"),
        1,
    );
    std::fs::write(bed.dir.join("green.toml"), config).expect("green.toml");
    let mgmt = Netns::new("mgmt", &bed.tag);
    link4(
        &bed.green,
        &format!("gm{}", bed.tag),
        GREEN_M,
        &mgmt,
        &format!("m{}", bed.tag),
        MGMT,
    );
    bed.client.ok(&[
        "ip",
        "route",
        "add",
        &format!("{GREEN_M}/32"),
        "via",
        &GREEN_C.to_string(),
    ]);
    let _ssh = TcpService::start(&bed.green, sock(GREEN_C, SSH_PORT));
    let green = bed.start_green();
    let url = format!("http://{GREEN_M}:{METRICS_PORT}/metrics");

    let scrape = || {
        let out = curl(&mgmt, &url, 5);
        assert!(
            out.status.success(),
            "curl from management: {}\ngreen log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            green.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = scrape();
    assert!(before.contains("# TYPE spa_blocks counter"), "{before}");
    assert!(before.ends_with("# EOF\n"), "{before}");
    let accepted = "spa_accepted_total{kind=\"open-tunnel\"}";
    assert_eq!(value(&before, accepted), 0.0, "{before}");

    // A knock, and a datagram that fails the pre-check MAC.
    bed.knock();
    bed.client
        .send_udp(CLIENT.into(), sock(GREEN_C, KNOCK_PORT), &[0x01; 300]);
    green.wait_counter_within("refused.mac_mismatch", 1, Duration::from_secs(5));
    let mut after = String::new();
    let moved = wait_until(Duration::from_secs(5), || {
        after = scrape();
        value(&after, accepted) >= 1.0 && sum(&after, "spa_refused_total") >= 1.0
    });
    assert!(moved, "the counters did not move:\n{after}");
    assert_eq!(
        value(&after, "spa_refused_total{reason=\"mac_mismatch\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "spa_events_total{name=\"accepted.open-tunnel\"}"),
        1.0
    );
    assert!(
        value(&after, "spa_replay_commit_seconds_count") >= 1.0,
        "{after}"
    );
    assert_eq!(value(&after, "spa_sessions"), 1.0, "{after}");

    // The client, though its knock opened ssh: no answer at all (curl
    // times out, exit 28; a refused connection would be 7), at the
    // management address and at its own side of green.
    for addr in [GREEN_M, GREEN_C] {
        let out = curl(
            &bed.client,
            &format!("http://{addr}:{METRICS_PORT}/metrics"),
            2,
        );
        assert_eq!(
            out.status.code(),
            Some(28),
            "the client got something from {addr}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let chain = bed
        .green
        .ok(&["nft", "list", "chain", "inet", "spa", "input"]);
    let chain = String::from_utf8_lossy(&chain.stdout);
    assert!(
        counter_of(&chain, &format!("tcp dport {METRICS_PORT}")) >= 2,
        "{chain}"
    );
    // And the management host still reaches it.
    assert!(scrape().contains(accepted));
}
