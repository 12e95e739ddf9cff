//! The relayed flow end to end, as root, on three network namespaces:
//!
//! ```text
//! client 10.200.61.2 ── 10.200.61.1 green 10.200.62.1 ── 10.200.62.2 red
//! ```
//!
//! green runs `spa-server run` with `[relay]`, red runs `red-relay run`
//! with green in `[[gateways]]`, both in blackhole mode and dropped to
//! `nobody`; red has a TCP "web" service on port 8080. The client has no
//! route to red (and green does not forward): only green may reach red's
//! services, once red opened them for green's address. The client drives
//! everything with the `spa-client` binary; the test checks red's nftables
//! sets, both daemons' `status`, and TCP connections from green.
//!
//! Addresses are in 10.200.0.0/16 inside the namespaces only; the
//! namespaces (and what runs in them) are deleted on drop, also when a test
//! fails. Without root the tests print why and pass.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_spec::body::{BodyFields, MessageType, OpenFor, encode_signed_part};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::order::{OrderFields, encode_order_signed_part};
use proto_spec::seal::{precheck_mac, seal_order, seal_plaintext};
use proto_spec::sign::{GatewaySigner, KNOCK_SIGNATURE_CONTEXT, Signer as _, transcript};
use proto_spec::wire::DatagramKind;
use spa_capture::{Capture, CaptureConfig, Event};
use spa_nft::Proto;
use tests::{
    Daemon, GreenRelayConfig, Netns, RedRelayConfig, RelayKeys, TcpService, TempDir, link4,
    make_relay_pki, run_ok, start_green, start_red, unique_tag, wait_until, write_green_config,
    write_red_config,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 61, 2);
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 61, 1);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 62, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 62, 2);
const KNOCK_PORT: u16 = 62201;
const ORDER_PORT: u16 = 62202;
const TUNNEL_PORT: u16 = 4443;
const WEB_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;

fn red_web() -> SocketAddr {
    SocketAddr::from((RED, WEB_PORT))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether the test can run here (root, `ip`, `nft`); prints why not.
fn runnable() -> bool {
    let ip_ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    let nft_ok = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = nix::unistd::geteuid().is_root() && ip_ok && nft_ok;
    if !ok {
        tests::cannot_run(
            "red-relay end-to-end",
            "needs root, iproute2 and nftables (CI runs them as root)",
        );
    }
    ok
}

/// A workspace binary: red-relay's own as cargo built it for this test,
/// the others from [`tests::bin`] (which builds them when missing or
/// stale, as with `cargo test -p red-relay`).
fn bin(name: &str) -> PathBuf {
    if name == "red-relay" {
        PathBuf::from(env!("CARGO_BIN_EXE_red-relay"))
    } else {
        tests::bin(name)
    }
}

// ---------------------------------------------------------------------------
// Captures

/// Source, protocol and payload (empty for a probe) of a captured frame.
type Seen = (IpAddr, Proto, Vec<u8>);

/// What a second AF_PACKET capture in a namespace sees: datagrams to
/// `port` and, with `scan_watch`, UDP to other ports and TCP SYNs.
struct Tap {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Tap {
    fn start(ns: &Netns, port: u16, scan_watch: bool) -> Self {
        let mut cfg = CaptureConfig::new(port);
        cfg.scan_watch = scan_watch;
        cfg.read_timeout = Duration::from_millis(50);
        let mut cap: Capture = ns.run_in(|| Capture::open(&cfg)).expect("capture");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = cap.poll(|ev| {
                    let e = match ev {
                        Event::Knock { src, payload, .. } => {
                            (src.ip(), Proto::Udp, payload.to_vec())
                        }
                        Event::Probe { src, proto, .. } => (src, proto, Vec::new()),
                    };
                    v.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                });
            }
        });
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Datagrams to the port, or probes, from `ip`.
    fn from(&self, ip: IpAddr, proto: Proto) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(src, p, _)| *src == ip && *p == proto)
            .map(|(_, _, d)| d.clone())
            .collect()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The test bed

struct Bed {
    // Drop order: daemons and services before the namespaces.
    green: Daemon,
    red: Daemon,
    web: TcpService,
    dir: TempDir,
    red_pk: ReceiverPublicKey,
    green_pub: String,
    green_signing_pk: [u8; 32],
    client: Netns,
    green_ns: Netns,
    red_ns: Netns,
}

impl Bed {
    fn new() -> Self {
        Self::with_clients(&[])
    }

    /// The bed, with `extra` clients beside alice (a certificate each from
    /// the same CA, and alice's rules at green and red).
    fn with_clients(extra: &[&str]) -> Self {
        let tag = unique_tag();
        let dir = TempDir::new(&format!("red-{tag}"));
        let client = Netns::new("rc", &tag);
        let green_ns = Netns::new("rg", &tag);
        let red_ns = Netns::new("rr", &tag);
        link4(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
        link4(&green_ns, "to-red", GREEN_R, &red_ns, "to-green", RED);

        // PKI and keys, with the binaries an operator uses.
        let server = bin("spa-server");
        let red_relay = bin("red-relay");
        let keys = make_relay_pki(&dir, "red e2e CA", &red_relay, None);
        let RelayKeys {
            green_pub,
            green_signing_pub,
            red_pub,
        } = &keys;
        write_green_config(
            &dir,
            &keys,
            &GreenRelayConfig {
                knock_port: KNOCK_PORT,
                tunnel_port: TUNNEL_PORT,
                red: SocketAddr::from((RED, ORDER_PORT)),
                source: GREEN_R,
                services: &[("web", WEB_PORT), ("db", DB_PORT)],
                tunnel: false,
            },
        );
        write_red_config(
            &dir,
            &keys,
            &RedRelayConfig {
                order_port: ORDER_PORT,
                management: None,
                services: &[("web", WEB_PORT)],
            },
        );
        let client_cfg = format!(
            r#"[profiles.lab]
server = "{GREEN_C}"
server_key = "{green_pub}"
key = "{key}"
certificate = "{cert}"
lifetime = 30
"#,
            key = dir.s("alice.key"),
            cert = dir.s("alice.crt"),
        );
        std::fs::write(dir.join("client.toml"), client_cfg).expect("write");
        for who in extra {
            add_client(&dir, who);
        }
        run_ok(Command::new(&server).args(["check-config", "--config", &dir.s("green.toml")]));
        run_ok(Command::new(&red_relay).args(["check-config", "--config", &dir.s("red.toml")]));

        let red = start_red(&red_ns, &red_relay, &dir);
        let web = TcpService::start(&red_ns, red_web());
        let green = start_green(&green_ns, &dir);
        let red_pk = spa_keys::decode_public_key(red_pub).expect("red key");
        let green_signing_pk =
            spa_keys::decode_gateway_public_key(green_signing_pub).expect("green signing key");
        Self {
            green,
            red,
            web,
            dir,
            red_pk,
            green_pub: green_pub.clone(),
            green_signing_pk,
            client,
            green_ns,
            red_ns,
        }
    }

    /// `spa-client --config client.toml ARGS` in the client's namespace.
    fn spa_client(&self, args: &[&str]) -> String {
        let mut c = self.client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.env("XDG_STATE_HOME", self.dir.join("state"))
            .arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(args);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    }

    /// `spa-client` as `who` (`<who>.key`, `<who>.crt`, its own state),
    /// asking for `lifetime` seconds.
    fn spa_client_as(&self, who: &str, lifetime: u32, args: &[&str]) -> String {
        let profile = format!(
            "[profiles.lab]\nserver = \"{GREEN_C}\"\nserver_key = \"{}\"\nkey = \"{}\"\n\
             certificate = \"{}\"\nlifetime = {lifetime}\n",
            self.green_pub,
            self.dir.s(&format!("{who}.key")),
            self.dir.s(&format!("{who}.crt")),
        );
        let config = self.dir.join(&format!("{who}.toml"));
        std::fs::write(&config, profile).expect("write profile");
        let mut c = self.client.cmd(bin("spa-client").to_str().expect("utf-8"));
        c.env("XDG_STATE_HOME", self.dir.join(&format!("state-{who}")))
            .arg("--config")
            .arg(&config)
            .args(args);
        String::from_utf8_lossy(&run_ok(&mut c).stdout).into_owned()
    }

    /// Red's element green . tcp . 8080: its timeout, if it exists.
    fn red_web_timeout(&self) -> Option<Duration> {
        self.red_ns
            .run_in(|| spa_nft::list("spa"))
            .expect("list red's sets")
            .allowed(IpAddr::V4(GREEN_R), Proto::Tcp, WEB_PORT)
            .and_then(|e| e.timeout)
    }

    fn red_sessions(&self) -> usize {
        self.red.status()["sessions"].as_array().map_or(0, Vec::len)
    }

    /// Whether green can open a TCP connection to red's web port now.
    fn green_reaches_web(&self) -> bool {
        self.green_ns
            .connect(red_web(), Duration::from_millis(300))
            .is_ok()
    }

    fn wait_green_reaches_web(&self, why: &str) {
        let ok = wait_until(Duration::from_secs(10), || self.green_reaches_web());
        assert!(
            ok,
            "{why}: green cannot reach red's web port\ngreen log:\n{}\nred log:\n{}",
            self.green.log_text(),
            self.red.log_text()
        );
    }

    /// Whether red's `allow4` set holds green . tcp . 8080.
    fn red_allows_green(&self) -> bool {
        self.red_ns
            .run_in(|| spa_nft::list("spa"))
            .expect("list red's sets")
            .allowed(IpAddr::V4(GREEN_R), Proto::Tcp, WEB_PORT)
            .is_some()
    }

    /// Open the tunnel and request web: green then reaches red's web port.
    fn open_and_request_web(&self) {
        self.spa_client(&["send", "open"]);
        self.green
            .wait_counter_within("accepted.open-tunnel", 1, Duration::from_secs(5));
        self.spa_client(&["send", "request", "web"]);
        self.wait_green_reaches_web("after send request web");
    }
}

/// Gives `who` a client key and certificate from the bed's CA (as
/// `make_relay_pki` does for alice) and the rules alice has, at green and
/// at red.
fn add_client(dir: &TempDir, who: &str) {
    run_ok(Command::new(bin("spa-client")).args([
        "keygen",
        "--out",
        &dir.s(&format!("{who}.key")),
        "--csr",
        &dir.s(&format!("{who}.csr")),
        "--name",
        who,
    ]));
    run_ok(Command::new(bin("spa-server")).args([
        "pki",
        "issue",
        "--dir",
        &dir.s("ca"),
        "--csr",
        &dir.s(&format!("{who}.csr")),
        "--name",
        who,
        "--client",
        "--out",
        &dir.s(&format!("{who}.crt")),
    ]));
    for file in ["green.toml", "red.toml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("config");
        let alice = "identity = \"cn:alice\"";
        let at = text.find(alice).expect("alice's rule");
        let services_line = text[at..].lines().nth(1).expect("services line");
        let rule = format!("\n[[rules]]\nidentity = \"cn:{who}\"\n{services_line}\n");
        std::fs::write(dir.join(file), text + &rule).expect("write config");
    }
}

// ---------------------------------------------------------------------------
// The tests

/// open + request web: red opens web for green's address only, green's
/// relay confirms it, the client cannot reach red at all; close: red's
/// element is gone.
#[test]
fn relayed_request_opens_red_for_green_only_and_close_closes_it() {
    if !runnable() {
        return;
    }
    let bed = Bed::new();
    assert!(
        !bed.green_reaches_web(),
        "red's web port is open before any order"
    );
    assert!(!bed.red_allows_green());

    bed.open_and_request_web();
    assert!(
        bed.red_allows_green(),
        "red's allow4 lacks green . tcp . {WEB_PORT}"
    );
    assert!(
        bed.web.wait_accepted(1, Duration::from_secs(5)),
        "red's web service never counted green's connection"
    );
    bed.green
        .wait_counter_within("relay.confirmed", 1, Duration::from_secs(5));
    assert_eq!(bed.green.counter("relay.requests"), 1);
    let red_status = bed.red.status();
    assert!(red_status["counters"]["accepted.order"].as_u64() >= Some(1));
    let sessions = red_status["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sessions.len(), 1, "red status: {red_status}");
    assert_eq!(sessions[0]["address"], GREEN_R.to_string());
    assert!(
        sessions[0]["identity"]
            .as_str()
            .is_some_and(|i| i.contains("alice")),
        "{red_status}"
    );
    // Only the order opens red, and only for green: the client has no path.
    assert!(
        bed.client
            .connect(red_web(), Duration::from_millis(500))
            .is_err(),
        "the client reached red"
    );
    // Nothing was opened on green for red's service.
    let green_status = bed.green.status();
    assert!(
        !green_status
            .to_string()
            .contains(&format!("\"port\":{WEB_PORT}")),
        "green opened red's port locally: {green_status}"
    );

    bed.spa_client(&["send", "close"]);
    let closed = wait_until(Duration::from_secs(5), || !bed.red_allows_green());
    assert!(
        closed,
        "red kept green's element after the close; red log:\n{}",
        bed.red.log_text()
    );
    bed.red
        .wait_counter_within("accepted.close", 1, Duration::from_secs(5));
    assert_eq!(bed.green.counter("relay.closes"), 1);
    assert!(
        bed.red.status()["sessions"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert!(
        !bed.green_reaches_web(),
        "red's web port is open after the close"
    );
}

/// Red refuses, and counts in `status`, a forged order (another gateway
/// key), an order claiming green's key with a bad signature, an order
/// green's key signed around a client body with a forged client signature,
/// a replayed order datagram, and an order naming no service red hosts;
/// client-side refusals do not get green blocked, and red answers none of
/// it. A request naming green's `tunnel` and red's `web` opens web at red
/// (SPEC §5.2: red judges only the names it hosts).
#[test]
fn red_refuses_forged_replayed_and_unauthorized_orders() {
    if !runnable() {
        return;
    }
    let bed = Bed::new();
    // Orders arriving at red; and anything red might send toward green.
    let tap = Tap::start(&bed.red_ns, ORDER_PORT, false);
    let green_tap = Tap::start(&bed.green_ns, KNOCK_PORT, true);
    bed.open_and_request_web();
    bed.green
        .wait_counter_within("relay.confirmed", 1, Duration::from_secs(5));
    let green = IpAddr::V4(GREEN_R);
    assert!(bed.red.counter("accepted.order") >= 1);
    let captured = tap.from(green, Proto::Udp);
    assert!(!captured.is_empty(), "no order from green was seen at red");
    let red_addr = SocketAddr::from((RED, ORDER_PORT));

    // Forged: a well-formed order signed by a gateway red does not know.
    let body = vec![0x02u8; 200];
    let fields = OrderFields {
        order_timestamp_ms: now_ms(),
        session_id: [0x5a; 16],
        lifetime_s: 30,
        open_for: green,
        client_body: &body,
    };
    let seed = spa_keys::generate_gateway_key().expect("seed");
    let forged = seal_order(
        &GatewaySigner::from_seed(&seed),
        &bed.red_pk,
        &fields,
        *spa_keys::random_32().expect("random"),
    )
    .expect("seal");
    bed.green_ns.send_udp(green, red_addr, &forged);
    bed.red
        .wait_counter_within("refused.unknown_gateway", 1, Duration::from_secs(5));

    // Green's key, a signature that is not green's.
    let fields = OrderFields {
        order_timestamp_ms: now_ms() + 2000,
        ..fields
    };
    let mut plaintext = encode_order_signed_part(&fields, &bed.green_signing_pk).expect("encode");
    plaintext.extend_from_slice(&[0x55; 64]);
    let bad_sig = seal_plaintext(
        DatagramKind::Order,
        &bed.red_pk,
        &plaintext,
        *spa_keys::random_32().expect("random"),
    )
    .expect("seal");
    bed.green_ns.send_udp(green, red_addr, &bad_sig);
    bed.red
        .wait_counter_within("refused.bad_gateway_signature", 1, Duration::from_secs(5));

    // Green's key and a valid gateway signature, sealed to red, from green's
    // address, around a fresh request-service body with alice's valid
    // certificate whose client signature is forged (as the vector
    // order_forged_client_signature): red checks the client itself.
    let alice_cert = spa_keys::read_certificates(&bed.dir.join("alice.crt"))
        .expect("alice's certificate")
        .remove(0);
    let session = [0x5b; 16];
    let mut forged_body = encode_signed_part(&BodyFields {
        msg_type: MessageType::RequestService,
        timestamp_ms: now_ms(),
        nonce: [0x11; 16],
        session_id: session,
        lifetime_s: 30,
        open_for: OpenFor::Addr(IpAddr::V4(CLIENT)),
        services: &["web"],
        certificate: &alice_cert,
    })
    .expect("body");
    forged_body.extend_from_slice(&[0x55; 64]);
    let green_signer = spa_keys::read_gateway_signer(&bed.dir.join("green-signing.key"))
        .expect("green's signing key");
    assert_eq!(green_signer.public_key(), bed.green_signing_pk);
    let forged_client = seal_order(
        &green_signer,
        &bed.red_pk,
        &OrderFields {
            order_timestamp_ms: now_ms() + 500,
            session_id: session,
            lifetime_s: 30,
            open_for: green,
            client_body: &forged_body,
        },
        *spa_keys::random_32().expect("random"),
    )
    .expect("seal");
    let orders = bed.red.counter("accepted.order");
    bed.green_ns.send_udp(green, red_addr, &forged_client);
    bed.red
        .wait_counter_within("refused.bad_signature", 1, Duration::from_secs(5));
    assert_eq!(bed.red.counter("refused.bad_signature"), 1);
    assert_eq!(bed.red.counter("accepted.order"), orders);
    let session_hex: String = session.iter().map(|b| format!("{b:02x}")).collect();
    let status = bed.red.status();
    assert!(
        !status.to_string().contains(&session_hex),
        "red keeps the forged session: {status}"
    );

    // Replayed: green's first order again, from green's own address.
    bed.green_ns.send_udp(green, red_addr, &captured[0]);
    bed.red
        .wait_counter_within("refused.replayed", 1, Duration::from_secs(5));

    // Authorized at green; red does not host db (SPEC §5.2).
    let orders = bed.red.counter("accepted.order");
    bed.spa_client(&["send", "request", "db"]);
    bed.green
        .wait_counter_within("accepted.request-service", 2, Duration::from_secs(5));
    bed.red
        .wait_counter_within("refused.unauthorized_service", 1, Duration::from_secs(5));
    // Green repeats it (no probe connects) and gives up.
    bed.green
        .wait_counter_within("relay.unconfirmed", 1, Duration::from_secs(8));
    assert_eq!(
        bed.red.counter("accepted.order"),
        orders,
        "red accepted something it should have refused"
    );
    // The client's refusals are not held against green's address.
    let status = bed.red.status();
    assert!(
        status["blocked"].as_array().is_some_and(Vec::is_empty),
        "red blocked someone: {status}"
    );
    // Red never answered any of it: no datagram and no connection from red
    // at green.
    assert!(
        green_tap.from(IpAddr::V4(RED), Proto::Udp).is_empty(),
        "red sent UDP to green"
    );
    assert!(
        green_tap.from(IpAddr::V4(RED), Proto::Tcp).is_empty(),
        "red connected to green"
    );

    // And green's next request still goes through, also one naming green's
    // own service beside red's: red ignores "tunnel" and opens web.
    let unauthorized = bed.red.counter("refused.unauthorized_service");
    bed.spa_client(&["send", "request", "tunnel", "web"]);
    bed.red
        .wait_counter_within("accepted.order", orders + 1, Duration::from_secs(5));
    assert_eq!(
        bed.red.counter("refused.unauthorized_service"),
        unauthorized
    );
    assert!(bed.green_reaches_web());
}

/// Issue 10 item 2: orders green's key signed, from green's address,
/// around alice's correctly signed request-service bodies that are stale,
/// future-dated, or replayed (below alice's floor at red), 12 in all, as
/// clock skew, green's resends after red lost state, or one malicious
/// client produce them. Red refuses each under the client-body stage
/// (`refused_stage.client_body`), never counts them against green
/// (`ips.not_blamed`), and does not block green; MAC-valid garbage from
/// green's address (what anyone holding red's public key can send) does
/// not get green blocked either, since green had an accepted order. The
/// next valid relayed request opens red.
#[test]
fn red_does_not_block_green_for_client_faults() {
    assert!(
        runnable(),
        "red_does_not_block_green_for_client_faults needs root, iproute2 and nftables"
    );
    let bed = Bed::new();
    bed.open_and_request_web();
    bed.green
        .wait_counter_within("relay.confirmed", 1, Duration::from_secs(5));
    bed.spa_client(&["send", "close"]);
    assert!(
        wait_until(Duration::from_secs(5), || !bed.red_allows_green()),
        "red kept the opening after the close"
    );
    bed.red
        .wait_counter_within("accepted.close", 1, Duration::from_secs(5));

    let green = IpAddr::V4(GREEN_R);
    let red_addr = SocketAddr::from((RED, ORDER_PORT));
    let alice =
        spa_keys::load_software_signer(&bed.dir.join("alice.key"), &bed.dir.join("alice.crt"))
            .expect("alice's key");
    let green_pk = spa_keys::read_receiver_key(&bed.dir.join("green.key"))
        .expect("green's key")
        .public_key();
    let green_signer = spa_keys::read_gateway_signer(&bed.dir.join("green-signing.key"))
        .expect("green's signing key");
    // Alice's request-service body, signed for green (SPEC §4.4).
    let body = |ts: u64, session: [u8; 16]| {
        let mut b = encode_signed_part(&BodyFields {
            msg_type: MessageType::RequestService,
            timestamp_ms: ts,
            nonce: *spa_keys::random_32()
                .expect("random")
                .first_chunk()
                .expect("16"),
            session_id: session,
            lifetime_s: 30,
            open_for: OpenFor::Addr(IpAddr::V4(CLIENT)),
            services: &["web"],
            certificate: alice.certificate_der(),
        })
        .expect("body");
        let t = transcript(KNOCK_SIGNATURE_CONTEXT, &green_pk, &b);
        b.extend_from_slice(&alice.sign(&t).expect("sign"));
        b
    };
    // A fresh order from green around it (strictly increasing timestamps
    // close to now, so green's own next order stays above them).
    let mut last_order_ts = 0;
    let mut order = |client_body: &[u8], session: [u8; 16]| {
        last_order_ts = now_ms().max(last_order_ts + 1);
        seal_order(
            &green_signer,
            &bed.red_pk,
            &OrderFields {
                order_timestamp_ms: last_order_ts,
                session_id: session,
                lifetime_s: 30,
                open_for: green,
                client_body,
            },
            *spa_keys::random_32().expect("random"),
        )
        .expect("seal")
    };
    let now = now_ms();
    let cases = [
        ("refused.stale", now - 70_000),
        ("refused.future_dated", now + 30_000),
        // Fresh, but below alice's floor at red (her request moments ago).
        ("refused.replayed", now - 40_000),
    ];
    let mut sent = 0;
    for (counter, ts) in cases {
        let before = bed.red.counter(counter);
        for i in 0..4u8 {
            let session = [0x70 + i; 16];
            let o = order(&body(ts + u64::from(i), session), session);
            bed.green_ns.send_udp(green, red_addr, &o);
            sent += 1;
        }
        bed.red
            .wait_counter_within(counter, before + 4, Duration::from_secs(5));
    }
    let st = bed.red.status();
    let counter = |name: &str| st["counters"][name].as_u64().unwrap_or(0);
    assert!(counter("refused_stage.client_body") >= sent, "{st}");
    assert!(counter("ips.not_blamed") >= sent, "{st}");
    assert_eq!(counter("blocked"), 0, "{st}");
    assert!(
        st["blocked"].as_array().is_some_and(Vec::is_empty),
        "red blocked green for its clients' faults: {st}"
    );

    // MAC-valid garbage from green's address: order stage, forgeable by
    // anyone with red's public key; green is shielded by its accepted
    // orders.
    let open_failed = bed.red.counter("refused.open_failed");
    for _ in 0..8 {
        let mut d = vec![0x01u8];
        while d.len() < 400 - 16 {
            d.extend_from_slice(&*spa_keys::random_32().expect("random"));
        }
        d.truncate(400 - 16);
        let mac = precheck_mac(DatagramKind::Order, &bed.red_pk, &d);
        d.extend_from_slice(&mac);
        bed.green_ns.send_udp(green, red_addr, &d);
    }
    bed.red.wait_counter_within(
        "refused.open_failed",
        open_failed + 8,
        Duration::from_secs(5),
    );
    let st = bed.red.status();
    assert!(st["counters"]["ips.shielded"].as_u64() >= Some(8), "{st}");
    assert!(
        st["blocked"].as_array().is_some_and(Vec::is_empty),
        "red blocked green for forged garbage: {st}"
    );
    let blocks = bed
        .red_ns
        .run_in(|| spa_nft::list("spa"))
        .expect("list red's sets");
    assert!(blocks.block.is_empty(), "{blocks:?}");

    // The next valid relayed request opens red.
    let orders = bed.red.counter("accepted.order");
    bed.spa_client(&["send", "open"]);
    bed.green
        .wait_counter_within("accepted.open-tunnel", 2, Duration::from_secs(5));
    bed.spa_client(&["send", "request", "web"]);
    bed.wait_green_reaches_web("after the client-body refusals");
    assert!(bed.red.counter("accepted.order") > orders);
    assert!(bed.red_allows_green());
}

/// red-relay killed with SIGKILL mid-session and restarted: its table is
/// reinstalled (the opening is gone), its replay floors survive, and the
/// next relayed request opens again; `red-relay revoke-session` closes it.
#[test]
fn red_killed_mid_session_restarts_and_serves_the_next_request() {
    if !runnable() {
        return;
    }
    let mut bed = Bed::new();
    bed.open_and_request_web();
    bed.red.kill9();
    bed.red = start_red(&bed.red_ns, &bin("red-relay"), &bed.dir);
    let log = bed.red.log_text();
    assert!(
        log.contains("replay state loaded"),
        "red lost its replay state across kill -9:\n{log}"
    );
    assert!(!bed.red_allows_green(), "the restart kept the old opening");
    assert!(!bed.green_reaches_web());
    // SPEC §7.3.1: red did not stop cleanly, so its global floor is the
    // reservation it held (up to replay_reservation_ms ahead of the crash):
    // every datagram sealed before the clock passes it is `replayed`, the
    // documented cost of a crash. The next request is sealed after that.
    assert!(
        log.contains("did not release its reservation"),
        "no reservation applied after kill -9:\n{log}"
    );
    let g = bed.red.status()["replay_store"]["global_floor"]
        .as_u64()
        .expect("red's global floor");
    while now_ms() <= g {
        std::thread::yield_now();
    }

    bed.spa_client(&["send", "request", "web"]);
    bed.wait_green_reaches_web("after red's restart");
    assert!(bed.red_allows_green());
    assert!(bed.red.counter("accepted.order") >= 1);
    bed.green
        .wait_counter_within("relay.confirmed", 2, Duration::from_secs(5));

    // The operator closes it at red.
    let status = bed.red.status();
    let session = status["sessions"][0]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session at red: {status}"))
        .to_owned();
    run_ok(
        Command::new(bin("red-relay"))
            .args(["revoke-session", &session, "--socket"])
            .arg(&bed.red.socket),
    );
    assert!(!bed.red_allows_green(), "revoke-session left the element");
    assert_eq!(bed.red.counter("sessions.revoked"), 1);
}

/// SPEC §8.2.1: at red every session opens for green's address, so one
/// element serves them all. Alice (300 s) and carol (50 s), behind one
/// client address, both request web: carol's shorter grant does not lower
/// alice's timeout; alice's close leaves carol's opening (at carol's
/// expiry) and green still reaches web; carol's close removes it.
#[test]
fn red_close_keeps_other_sessions_openings() {
    assert!(
        runnable(),
        "red_close_keeps_other_sessions_openings needs root, iproute2 and nftables"
    );
    let bed = Bed::with_clients(&["carol"]);
    bed.spa_client_as("alice", 300, &["send", "open"]);
    bed.green
        .wait_counter_within("accepted.open-tunnel", 1, Duration::from_secs(5));
    bed.spa_client_as("alice", 300, &["send", "request", "web"]);
    bed.wait_green_reaches_web("alice's request");
    assert!(wait_until(Duration::from_secs(5), || bed.red_sessions() == 1));
    assert_eq!(bed.red_web_timeout(), Some(Duration::from_secs(300)));

    bed.spa_client_as("carol", 50, &["send", "open"]);
    bed.green
        .wait_counter_within("accepted.open-tunnel", 2, Duration::from_secs(5));
    bed.spa_client_as("carol", 50, &["send", "request", "web"]);
    let both = wait_until(Duration::from_secs(5), || bed.red_sessions() == 2);
    assert!(both, "carol's order did not arrive: {}", bed.red.log_text());
    assert_eq!(
        bed.red_web_timeout(),
        Some(Duration::from_secs(300)),
        "carol's 50 s grant lowered alice's element"
    );
    let st = bed.red.status();
    let owners = st["openings"][0]["owners"].as_array().map_or(0, Vec::len);
    assert_eq!(owners, 2, "{st}");
    assert_eq!(st["openings"][0]["address"], GREEN_R.to_string(), "{st}");

    bed.spa_client_as("alice", 300, &["send", "close"]);
    let closed = wait_until(Duration::from_secs(5), || bed.red_sessions() == 1);
    assert!(
        closed,
        "alice's close did not arrive: {}",
        bed.red.log_text()
    );
    let left = bed.red_web_timeout();
    assert!(
        left.is_some_and(|t| t <= Duration::from_secs(50) && t >= Duration::from_secs(40)),
        "alice's close took carol's opening, or left alice's timeout: {left:?}\n{}",
        bed.red.log_text()
    );
    assert!(bed.red_allows_green());
    assert!(bed.green_reaches_web(), "carol's opening at red was cut");

    bed.spa_client_as("carol", 50, &["send", "close"]);
    let gone = wait_until(Duration::from_secs(5), || !bed.red_allows_green());
    assert!(
        gone,
        "carol's close left the element: {}",
        bed.red.log_text()
    );
    assert!(!bed.green_reaches_web());
}
