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

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::order::{OrderFields, encode_order_signed_part};
use proto_spec::seal::{seal_order, seal_plaintext};
use proto_spec::sign::GatewaySigner;
use proto_spec::wire::DatagramKind;
use serde_json::Value;
use spa_server::capture::{Capture, CaptureConfig, Event};
use spa_server::nft::Proto;

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
        eprintln!(
            "skipped: red-relay end-to-end tests need root, iproute2 and nftables (CI runs them as root)"
        );
    }
    ok
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

// ---------------------------------------------------------------------------
// Namespaces (after tests/src/lib.rs)

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use: not concurrently.
static NETNS_ADD: Mutex<()> = Mutex::new(());

fn unique_tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() % 0xffff)
}

/// A network namespace, deleted (with everything in it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str, tag: &str) -> Self {
        let name = format!("spa-{role}-{tag}");
        {
            let _g = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            run(Command::new("ip").args(["netns", "add", &name]));
        }
        let ns = Self { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(Path::new(args[0]));
        c.args(&args[1..]);
        run(&mut c)
    }

    /// Runs `f` on a thread that entered this namespace: sockets it
    /// creates live here, whichever thread uses them later.
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// One UDP datagram from `src` (an address here) to `dst`.
    fn send_udp(&self, src: IpAddr, dst: SocketAddr, payload: &[u8]) {
        self.run_in(|| {
            let s = UdpSocket::bind(SocketAddr::new(src, 0))
                .unwrap_or_else(|e| panic!("bind {src} in {}: {e}", self.name));
            assert_eq!(s.send_to(payload, dst).expect("send"), payload.len());
        });
    }

    fn connect(&self, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.run_in(|| TcpStream::connect_timeout(&dst, timeout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair from `a` to `b`, IPv4 /24 on each end.
fn link(a: &Netns, a_if: &str, a4: Ipv4Addr, b: &Netns, b_if: &str, b4: Ipv4Addr) {
    assert!(
        a4.octets()[..2] == [10, 200] && b4.octets()[..2] == [10, 200],
        "test addresses stay in 10.200.0.0/16"
    );
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    for (ns, ifn, v4) in [(a, a_if, a4), (b, b_if, b4)] {
        ns.ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifn]);
        ns.ok(&["ip", "link", "set", ifn, "up"]);
    }
}

// ---------------------------------------------------------------------------
// Binaries

/// target/debug (or release) of this test binary.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_source(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

static BUILD: Mutex<bool> = Mutex::new(false);

/// A workspace binary. red-relay's own is built by cargo for this test;
/// `cargo test --workspace --all-targets` builds the others too, and with
/// `cargo test -p red-relay` they are built here (once per test process)
/// when missing or older than the sources of the crates they are made of.
fn bin(name: &str) -> PathBuf {
    if name == "red-relay" {
        return PathBuf::from(env!("CARGO_BIN_EXE_red-relay"));
    }
    let p = bin_dir().join(name);
    let mut built = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let src = ["proto-spec", "spa-keys", "spa-client", "spa-server"]
            .iter()
            .filter_map(|c| newest_source(&root.join(c).join("src")))
            .max();
        let stale = ["spa-server", "spa-client"].iter().any(|b| {
            match (
                std::fs::metadata(bin_dir().join(b)).and_then(|m| m.modified()),
                src,
            ) {
                (Ok(t), Some(s)) => t < s,
                _ => true,
            }
        });
        if stale {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = Command::new(cargo);
            c.current_dir(&root)
                .args(["build", "--bins", "-p", "spa-server", "-p", "spa-client"]);
            if bin_dir().ends_with("release") {
                c.arg("--release");
            }
            assert!(
                c.status().expect("cargo build").success(),
                "building spa-server and spa-client failed"
            );
        }
        *built = true;
    }
    assert!(p.exists(), "{} was not built", p.display());
    p
}

// ---------------------------------------------------------------------------
// Daemons, services, captures

/// A temporary directory, mode 0755 (the daemons drop to `nobody` and
/// still read their trust files here), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let p = std::env::temp_dir().join(format!("spa-red-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(p)
    }

    fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    fn s(&self, f: &str) -> String {
        self.join(f).to_str().expect("utf-8").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SPA_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running `spa-server run` or `red-relay run` (killed on drop).
struct Daemon {
    program: &'static str,
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(ns: &Netns, program: &'static str, config: &Path, socket: &Path, log: &Path) -> Self {
        let f = File::create(log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let child = ns
            .cmd(&bin(program))
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program}: {e}"));
        let mut d = Self {
            program,
            child: Some(child),
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(15), || {
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                exited = Some(st);
                return true;
            }
            d.log_text().lines().any(|l| l.contains(" ready "))
        });
        assert!(
            ready && exited.is_none(),
            "{program} did not become ready (exit {exited:?}); log:\n{}",
            d.log_text()
        );
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<program> status --json --socket …`: the `status` object.
    fn status(&self) -> Value {
        let out = Command::new(bin(self.program))
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .expect("status");
        assert!(
            out.status.success(),
            "{} status: {}\nlog:\n{}",
            self.program,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(v["ok"], true, "status: {v}");
        v["status"].clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    /// Waits until counter `name` reaches `at_least`.
    fn wait_counter(&self, name: &str, at_least: u64, timeout: Duration) {
        let ok = wait_until(timeout, || self.counter(name) >= at_least);
        assert!(
            ok,
            "{}: counter {name} did not reach {at_least}: counters {}\nlog:\n{}",
            self.program,
            self.status()["counters"],
            self.log_text()
        );
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A TCP listener that accepts and drops connections, stopped on drop.
struct TcpService {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl TcpService {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.run_in(|| TcpListener::bind(addr)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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
    green_signing_pk: [u8; 32],
    client: Netns,
    green_ns: Netns,
    red_ns: Netns,
}

/// Runs a command, returns its stdout's first line.
fn line_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

impl Bed {
    fn new() -> Self {
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let client = Netns::new("rc", &tag);
        let green_ns = Netns::new("rg", &tag);
        let red_ns = Netns::new("rr", &tag);
        link(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
        link(&green_ns, "to-red", GREEN_R, &red_ns, "to-green", RED);

        // PKI and keys, with the binaries an operator uses.
        let server = bin("spa-server");
        let spa_client = bin("spa-client");
        let red_relay = bin("red-relay");
        run(Command::new(&server).args([
            "pki",
            "init",
            "--dir",
            &dir.s("ca"),
            "--name",
            "red e2e CA",
        ]));
        run(Command::new(&spa_client).args([
            "keygen",
            "--out",
            &dir.s("alice.key"),
            "--csr",
            &dir.s("alice.csr"),
            "--name",
            "alice",
        ]));
        run(Command::new(&server).args([
            "pki",
            "issue",
            "--dir",
            &dir.s("ca"),
            "--csr",
            &dir.s("alice.csr"),
            "--name",
            "alice",
            "--client",
            "--out",
            &dir.s("alice.crt"),
        ]));
        let green_pub =
            line_of(Command::new(&server).args(["keygen", "--out", &dir.s("green.key")]));
        let green_signing_pub = line_of(Command::new(&server).args([
            "keygen",
            "--signing",
            "--out",
            &dir.s("green-signing.key"),
        ]));
        let red_pub =
            line_of(Command::new(&red_relay).args(["keygen", "--out", &dir.s("red.key")]));

        let green_cfg = format!(
            r#"[daemon]
knock_port = {KNOCK_PORT}
keys = ["{green_key}"]
replay_db = "{green_db}"
control_socket = "{green_sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"

[[services]]
name = "tunnel"
port = {TUNNEL_PORT}

[[rules]]
identity = "cn:alice"
services = ["tunnel", "web", "db"]

[relay]
red = "{RED}:{ORDER_PORT}"
red_key = "{red_pub}"
signing_key = "{signing}"
source = "{GREEN_R}"
services = [{{ name = "web", port = {WEB_PORT} }}, {{ name = "db", port = {DB_PORT} }}]
"#,
            green_key = dir.s("green.key"),
            green_db = dir.s("green.redb"),
            green_sock = dir.s("green.sock"),
            ca = dir.s("ca/ca.pem"),
            signing = dir.s("green-signing.key"),
        );
        let red_cfg = format!(
            r#"[daemon]
knock_port = {ORDER_PORT}
keys = ["{red_key}"]
replay_db = "{red_db}"
control_socket = "{red_sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"

[[services]]
name = "web"
port = {WEB_PORT}

[[rules]]
identity = "cn:alice"
services = ["web"]

[[gateways]]
signing_key = "{green_signing_pub}"
receiver_keys = ["{green_pub}"]
"#,
            red_key = dir.s("red.key"),
            red_db = dir.s("red.redb"),
            red_sock = dir.s("red.sock"),
            ca = dir.s("ca/ca.pem"),
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
        std::fs::write(dir.join("green.toml"), green_cfg).expect("write");
        std::fs::write(dir.join("red.toml"), red_cfg).expect("write");
        std::fs::write(dir.join("client.toml"), client_cfg).expect("write");
        run(Command::new(&server).args(["check-config", "--config", &dir.s("green.toml")]));
        run(Command::new(&red_relay).args(["check-config", "--config", &dir.s("red.toml")]));

        let red = Daemon::start(
            &red_ns,
            "red-relay",
            &dir.join("red.toml"),
            &dir.join("red.sock"),
            &dir.join("red.log"),
        );
        let web = TcpService::start(&red_ns, red_web());
        let green = Daemon::start(
            &green_ns,
            "spa-server",
            &dir.join("green.toml"),
            &dir.join("green.sock"),
            &dir.join("green.log"),
        );
        let red_pk = spa_keys::decode_public_key(&red_pub).expect("red key");
        let green_signing_pk =
            spa_keys::decode_gateway_public_key(&green_signing_pub).expect("green signing key");
        Self {
            green,
            red,
            web,
            dir,
            red_pk,
            green_signing_pk,
            client,
            green_ns,
            red_ns,
        }
    }

    /// `spa-client --config client.toml ARGS` in the client's namespace.
    fn spa_client(&self, args: &[&str]) -> String {
        let mut c = self.client.cmd(&bin("spa-client"));
        c.env("XDG_STATE_HOME", self.dir.join("state"))
            .arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(args);
        String::from_utf8_lossy(&run(&mut c).stdout).into_owned()
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
            .run_in(|| spa_server::nft::list("spa"))
            .expect("list red's sets")
            .allowed(IpAddr::V4(GREEN_R), Proto::Tcp, WEB_PORT)
            .is_some()
    }

    /// Open the tunnel and request web: green then reaches red's web port.
    fn open_and_request_web(&self) {
        self.spa_client(&["send", "open"]);
        self.green
            .wait_counter("accepted.open-tunnel", 1, Duration::from_secs(5));
        self.spa_client(&["send", "request", "web"]);
        self.wait_green_reaches_web("after send request web");
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
    assert!(bed.web.accepted() >= 1);
    bed.green
        .wait_counter("relay.confirmed", 1, Duration::from_secs(5));
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
        .wait_counter("accepted.close", 1, Duration::from_secs(5));
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
/// key), an order claiming green's key with a bad signature, a replayed
/// order datagram, and an order for a service red's policy does not grant
/// the client; client-side refusals do not get green blocked.
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
        .wait_counter("relay.confirmed", 1, Duration::from_secs(5));
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
        .wait_counter("refused.unknown_gateway", 1, Duration::from_secs(5));

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
        .wait_counter("refused.bad_gateway_signature", 1, Duration::from_secs(5));

    // Replayed: green's first order again, from green's own address.
    bed.green_ns.send_udp(green, red_addr, &captured[0]);
    bed.red
        .wait_counter("refused.replayed", 1, Duration::from_secs(5));

    // Authorized at green, not at red.
    let orders = bed.red.counter("accepted.order");
    bed.spa_client(&["send", "request", "db"]);
    bed.green
        .wait_counter("accepted.request-service", 2, Duration::from_secs(5));
    bed.red
        .wait_counter("refused.unauthorized_service", 1, Duration::from_secs(5));
    // Green repeats it (no probe connects) and gives up.
    bed.green
        .wait_counter("relay.unconfirmed", 1, Duration::from_secs(8));
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
    // Red never answered any of it: no UDP datagram from red at green.
    assert!(
        green_tap.from(IpAddr::V4(RED), Proto::Udp).is_empty(),
        "red sent UDP to green"
    );

    // And green's next request still goes through.
    bed.spa_client(&["send", "request", "web"]);
    bed.red
        .wait_counter("accepted.order", orders + 1, Duration::from_secs(5));
    assert!(bed.green_reaches_web());
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
    bed.red = Daemon::start(
        &bed.red_ns,
        "red-relay",
        &bed.dir.join("red.toml"),
        &bed.dir.join("red.sock"),
        &bed.dir.join("red.log"),
    );
    let log = bed.red.log_text();
    assert!(
        log.contains("replay state loaded"),
        "red lost its replay state across kill -9:\n{log}"
    );
    assert!(!bed.red_allows_green(), "the restart kept the old opening");
    assert!(!bed.green_reaches_web());

    bed.spa_client(&["send", "request", "web"]);
    bed.wait_green_reaches_web("after red's restart");
    assert!(bed.red_allows_green());
    assert!(bed.red.counter("accepted.order") >= 1);
    bed.green
        .wait_counter("relay.confirmed", 2, Duration::from_secs(5));

    // The operator closes it at red.
    let status = bed.red.status();
    let session = status["sessions"][0]["session"]
        .as_str()
        .unwrap_or_else(|| panic!("no session at red: {status}"))
        .to_owned();
    run(Command::new(bin("red-relay"))
        .args(["revoke-session", &session, "--socket"])
        .arg(&bed.red.socket));
    assert!(!bed.red_allows_green(), "revoke-session left the element");
    assert_eq!(bed.red.counter("sessions.revoked"), 1);
}
