//! End-to-end test support: hosts as network namespaces joined by veth
//! pairs, addresses in 10.200.0.0/16 and fd00:200::/48 inside those
//! namespaces only, deleted afterwards (also when a test fails: `Drop`).
//!
//! - [`Netns`]: a namespace; commands inside it, and closures run on a
//!   thread that entered it ([`Netns::run_in`]), so that std sockets are
//!   created there.
//! - [`Tcpdump`] and [`pcap`]: captures on a namespace's interfaces and
//!   reading them back.
//! - [`TcpService`]: an echo server inside a namespace.
//! - [`spoof`]: forged IPv4 packets (any source address) from a namespace.
//! - [`Daemon`] ([`Green`]): a running `spa-server run` (or another
//!   workspace daemon with the same command line, such as `red-relay run`),
//!   with its status over the control socket (through its `status`
//!   command).
//!
//! Needs root, iproute2, nftables, tcpdump and nmap (CI runs as root and
//! installs them; [`require_tools`] fails with the apt-get line).
#![forbid(unsafe_code)]

pub mod pair;
pub mod spoof;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts /run/netns on first use: not concurrently.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// A short unique tag for this process and call (namespace and interface
/// names must be short: interfaces at most 15 characters).
pub fn unique_tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() % 0xffff)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command on the host; panics with its stdout and stderr unless it
/// succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
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

/// The environment variable that lets a test that cannot run here skip
/// instead of failing: `SPA_TEST_ALLOW_SKIP=1`. Without it, a test that
/// lacks root or a package fails, so a skip is never counted as a pass.
pub const ALLOW_SKIP: &str = "SPA_TEST_ALLOW_SKIP";

/// Whether skips were allowed explicitly ([`ALLOW_SKIP`]` = 1`).
pub fn skips_allowed() -> bool {
    std::env::var_os(ALLOW_SKIP).is_some_and(|v| v == "1")
}

/// Called by a test that cannot run here (`why`): fails it, unless
/// [`ALLOW_SKIP`] is set, in which case it says so loudly and the caller
/// returns.
///
/// # Panics
/// Unless skips were allowed explicitly.
pub fn cannot_run(test: &str, why: &str) {
    assert!(
        skips_allowed(),
        "{test}: cannot run here: {why}. Run the tests as root with the packages \
         `.ci/run` installs, or set {ALLOW_SKIP}=1 to skip such tests explicitly \
         (a skip is not a pass)"
    );
    eprintln!("{test}: SKIPPED ({ALLOW_SKIP}=1; not a pass): {why}");
}

/// Fails the test with a clear message unless we are root with `ip`.
pub fn require_root() {
    let ok = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok && nix::unistd::geteuid().is_root(),
        "end-to-end tests need root and iproute2 (`apt-get install iproute2`; CI runs as root)"
    );
}

/// Fails the test unless every `(program, apt package)` is installed.
pub fn require_tools(tools: &[(&str, &str)]) {
    require_root();
    let missing: Vec<&(&str, &str)> = tools
        .iter()
        .filter(|(prog, _)| {
            !std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "end-to-end tests need {}: run `apt-get install -y {}` (CI installs them)",
        missing
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
            .join(", "),
        missing
            .iter()
            .map(|(_, pkg)| *pkg)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

impl Netns {
    /// Creates `spa-<role>-<tag>` with loopback up.
    pub fn new(role: &str, tag: &str) -> Self {
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

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside; panics on failure.
    pub fn ok(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args[0]);
        c.args(&args[1..]);
        run(&mut c)
    }

    /// Runs `args` inside; returns the output whatever the status.
    pub fn out(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args[0]);
        c.args(&args[1..]);
        c.output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }

    /// Spawns `args` inside, output to the given log file.
    pub fn spawn(&self, args: &[&str], log: &Path) -> Child {
        let f = File::create(log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        let mut c = self.cmd(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2));
        c.spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {args:?}: {e}"))
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates
    /// live in the namespace, whichever thread uses them later.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
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

    /// Sends one UDP datagram from `src` (an address of this namespace,
    /// ephemeral port) to `dst`.
    pub fn send_udp(&self, src: IpAddr, dst: SocketAddr, payload: &[u8]) {
        self.run_in(|| {
            let s = UdpSocket::bind(SocketAddr::new(src, 0))
                .unwrap_or_else(|e| panic!("bind {src} in {}: {e}", self.name));
            let n = s
                .send_to(payload, dst)
                .unwrap_or_else(|e| panic!("send {src} -> {dst}: {e}"));
            assert_eq!(n, payload.len());
        });
    }

    /// A TCP connection from this namespace to `dst`, within `timeout`.
    pub fn connect(&self, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.run_in(|| TcpStream::connect_timeout(&dst, timeout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything left inside, then delete.
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

/// Joins `a` and `b` with a veth pair and addresses them (IPv4 /24 and IPv6
/// /64, no DAD so addresses work at once).
#[allow(clippy::too_many_arguments)]
pub fn link(a: &Netns, a_if: &str, a4: &str, a6: &str, b: &Netns, b_if: &str, b4: &str, b6: &str) {
    for addr in [a4, b4] {
        assert!(
            addr.starts_with("10.200."),
            "test addresses stay in 10.200.0.0/16"
        );
    }
    for addr in [a6, b6] {
        assert!(
            addr.starts_with("fd00:200:"),
            "test addresses stay in fd00:200::/48"
        );
    }
    veth(a, a_if, b, b_if);
    for (ns, ifn, v4, v6) in [(a, a_if, a4, a6), (b, b_if, b4, b6)] {
        ns.ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{ifn}.accept_dad=0"),
        ]);
        ns.ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifn]);
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifn,
            "nodad",
        ]);
        ns.ok(&["ip", "link", "set", ifn, "up"]);
    }
}

/// Joins `a` and `b` with a veth pair and addresses them with IPv4 only
/// (/24 on each end).
pub fn link4(a: &Netns, a_if: &str, a4: Ipv4Addr, b: &Netns, b_if: &str, b4: Ipv4Addr) {
    assert!(
        a4.octets()[..2] == [10, 200] && b4.octets()[..2] == [10, 200],
        "test addresses stay in 10.200.0.0/16"
    );
    veth(a, a_if, b, b_if);
    for (ns, ifn, v4) in [(a, a_if, a4), (b, b_if, b4)] {
        ns.ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifn]);
        ns.ok(&["ip", "link", "set", ifn, "up"]);
    }
}

/// A veth pair, `a_if` in `a` and `b_if` in `b`.
fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
}

/// The directory of the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
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

/// The workspace crates `krate` is built from: itself and its path
/// dependencies (`[dependencies]` lines naming a crate of the workspace),
/// transitively.
fn crates_of(root: &Path, krate: &str) -> Vec<String> {
    let mut out = vec![krate.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let manifest =
            std::fs::read_to_string(root.join(&out[i]).join("Cargo.toml")).unwrap_or_default();
        let mut in_deps = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
                continue;
            }
            let name = line.split(['.', ' ', '=']).next().unwrap_or("");
            if in_deps
                && !name.is_empty()
                && root.join(name).join("Cargo.toml").is_file()
                && !out.iter().any(|c| c == name)
            {
                out.push(name.to_owned());
            }
        }
        i += 1;
    }
    out
}

/// A workspace binary. `cargo test --workspace --all-targets` builds them
/// before the tests run; with `cargo test -p tests` the binary is built
/// here (`cargo build --workspace --bins`, once per test process) when it
/// is missing or older than the sources of the crates it is made of.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_path_buf();
        let src = crates_of(&root, name)
            .iter()
            .filter_map(|c| newest_source(&root.join(c).join("src")))
            .max();
        let t = std::fs::metadata(&p).and_then(|m| m.modified());
        let stale = match (t, src) {
            (Ok(t), Some(s)) => t < s,
            _ => true,
        };
        if stale {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = Command::new(cargo);
            // Not the environment cargo gave this test (LD_LIBRARY_PATH,
            // CARGO_PKG_*, …): build scripts that watch variables would
            // see a change, and the next plain `cargo build` would
            // rebuild everything again.
            c.env_clear();
            for (k, v) in std::env::vars_os() {
                let keep = k.to_str().is_some_and(|k| {
                    matches!(
                        k,
                        "PATH"
                            | "HOME"
                            | "USER"
                            | "TERM"
                            | "LANG"
                            | "CARGO_HOME"
                            | "RUSTUP_HOME"
                            | "RUSTUP_TOOLCHAIN"
                            | "RUSTFLAGS"
                            | "CARGO_TARGET_DIR"
                            | "CARGO_INCREMENTAL"
                    ) || k.starts_with("CARGO_BUILD_")
                        || k.starts_with("CARGO_PROFILE_")
                });
                if keep {
                    c.env(k, v);
                }
            }
            c.current_dir(&root)
                .args(["build", "--workspace", "--bins"]);
            if bin_dir().ends_with("release") {
                c.arg("--release");
            }
            let st = c.status().expect("cargo build");
            assert!(st.success(), "building the workspace binaries failed");
        }
        built.push(name.to_owned());
    }
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// Waits until `f` is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Waits until the terminal of a process under `root` (itself or a
/// descendant, e.g. the program `script` runs on its pty) has its echo off,
/// as a password prompt sets it before reading; or until `within` passes.
/// True if the echo went off. Typing a secret before this point would echo
/// it (or lose it to the prompt's flush).
pub fn wait_echo_off(root: u32, within: Duration) -> bool {
    wait_until(within, || {
        terminals_under(root).iter().any(|tty| {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
                .open(tty)
                .ok()
                .and_then(|f| nix::sys::termios::tcgetattr(&f).ok())
                .is_some_and(|t| !t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO))
        })
    })
}

/// The pseudo-terminals (`/dev/pts/N`) that `root` and its descendants
/// have as standard input.
fn terminals_under(root: u32) -> Vec<PathBuf> {
    let mut tree = vec![root];
    let mut grew = true;
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((pid, ppid.parse().ok()?))
        })
        .collect();
    while grew {
        grew = false;
        for (pid, ppid) in &procs {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grew = true;
            }
        }
    }
    let mut ttys: Vec<PathBuf> = tree
        .iter()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/fd/0")).ok())
        .filter(|p| p.starts_with("/dev/pts/"))
        .collect();
    ttys.dedup();
    ttys
}

/// A temporary directory removed on drop, mode 0755 (a daemon that dropped
/// its privileges to `nobody` still reads its trust files here).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/spa-e2e-<tag>`.
    pub fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let p = std::env::temp_dir().join(format!("spa-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(p)
    }

    /// A path inside.
    pub fn join(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }

    /// A path inside, as a string (for command arguments and configuration
    /// files).
    pub fn s(&self, f: &str) -> String {
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

/// Sends `sig` to a process.
pub fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
    kill(pid, sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// A `tcpdump -w` running in a namespace; stopped (and its file flushed)
/// by [`Tcpdump::stop`], killed on drop.
#[derive(Debug)]
pub struct Tcpdump {
    child: Option<Child>,
    /// The capture file.
    pub file: PathBuf,
    log: PathBuf,
}

impl Tcpdump {
    /// Starts capturing on `iface` (`any` for all) of `ns`, and returns
    /// once tcpdump says it is listening.
    pub fn start(ns: &Netns, iface: &str, filter: &str, file: &Path) -> Self {
        let log = file.with_extension("log");
        let f = file.to_str().expect("utf-8 path");
        // -U: write each packet at once; -Z root: keep root to write the
        // file; -s 0: whole packets.
        let child = ns.spawn(
            &[
                "tcpdump", "-i", iface, "-n", "-U", "-s", "0", "-Z", "root", "-w", f, filter,
            ],
            &log,
        );
        let mut t = Self {
            child: Some(child),
            file: file.to_path_buf(),
            log,
        };
        let ready = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&t.log).is_ok_and(|s| s.contains("listening on"))
        });
        if !ready {
            let _ = t.child.as_mut().map(Child::kill);
            panic!(
                "tcpdump did not start: {}",
                std::fs::read_to_string(&t.log).unwrap_or_default()
            );
        }
        t
    }

    /// Stops the capture (SIGINT: tcpdump flushes and closes the file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), Signal::SIGINT);
            let done = wait_until(Duration::from_secs(5), || {
                c.try_wait().ok().flatten().is_some()
            });
            if !done {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// The captured packets as `tcpdump -r` prints them, one line each.
    pub fn lines(&mut self) -> Vec<String> {
        self.stop();
        let out = Command::new("tcpdump")
            .args(["-r", self.file.to_str().expect("utf-8"), "-n"])
            .output()
            .expect("tcpdump -r");
        assert!(
            out.status.success(),
            "tcpdump -r {}: {}",
            self.file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reading pcap files (the classic format tcpdump writes).
pub mod pcap {
    use std::net::IpAddr;

    /// One UDP datagram found in a capture.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Udp {
        /// Source address.
        pub src: IpAddr,
        /// Destination port.
        pub dst_port: u16,
        /// The payload.
        pub payload: Vec<u8>,
    }

    /// The frames of a pcap file and its link type.
    pub fn frames(bytes: &[u8]) -> (u32, Vec<Vec<u8>>) {
        assert!(bytes.len() >= 24, "not a pcap file");
        let le = match bytes[..4] {
            [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
            [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
            _ => panic!("not a pcap file (magic {:02x?})", &bytes[..4]),
        };
        let u32at = |b: &[u8], i: usize| {
            let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        };
        let linktype = u32at(bytes, 20);
        let mut out = Vec::new();
        let mut i = 24;
        while i + 16 <= bytes.len() {
            let incl = u32at(bytes, i + 8) as usize;
            let start = i + 16;
            let end = (start + incl).min(bytes.len());
            out.push(bytes[start..end].to_vec());
            i = start + incl;
        }
        (linktype, out)
    }

    /// The UDP datagrams of an Ethernet (link type 1) capture.
    pub fn udp_datagrams(bytes: &[u8]) -> Vec<Udp> {
        let (linktype, frames) = frames(bytes);
        assert_eq!(linktype, 1, "expected an Ethernet capture");
        frames
            .iter()
            .filter_map(|f| {
                let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
                let ip = f.get(14..)?;
                let (src, l4) = match ethertype {
                    0x0800 => {
                        let ihl = usize::from(ip.first()? & 0x0f) * 4;
                        if *ip.get(9)? != 17 {
                            return None;
                        }
                        let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
                        let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
                        (IpAddr::from(s), ip.get(ihl..total.min(ip.len()))?)
                    }
                    0x86dd => {
                        if *ip.get(6)? != 17 {
                            return None;
                        }
                        let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
                        (IpAddr::from(s), ip.get(40..)?)
                    }
                    _ => return None,
                };
                let dst_port = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
                let len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
                Some(Udp {
                    src,
                    dst_port,
                    payload: l4.get(8..len.min(l4.len()))?.to_vec(),
                })
            })
            .collect()
    }
}

/// A TCP echo server inside a namespace, stopped on drop.
#[derive(Debug)]
pub struct TcpService {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<()>>,
}

impl TcpService {
    /// Listens on `addr` inside `ns`; every connection gets its bytes back.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let listener = ns.run_in(|| TcpListener::bind(addr)).expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let s2 = s.clone();
                        conns.push(std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = [0u8; 1024];
                            while !s2.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far (a snapshot: the accept loop may not have
    /// counted a connection the client side already sees; wait with
    /// [`TcpService::wait_accepted`]).
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` connections were accepted, or `within`
    /// passes; true if they were.
    pub fn wait_accepted(&self, n: u32, within: Duration) -> bool {
        wait_until(within, || self.accepted() >= n)
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

/// Writes `msg` on `s` and reads the echo back, within a second.
pub fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    if got == msg {
        Ok(())
    } else {
        Err(std::io::Error::other("echo differs"))
    }
}

/// A running `spa-server run` inside a namespace (killed on drop).
pub type Green = Daemon;

/// A running `<program> run --config …` inside a namespace (killed on
/// drop): `spa-server` ([`Daemon::start`]) or another daemon with the same
/// command line ([`Daemon::start_program`]).
#[derive(Debug)]
pub struct Daemon {
    program: PathBuf,
    child: Option<Child>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `spa-server run --config <config>` inside `ns` and waits for
    /// its "ready" line; panics with the log if it exits or stays silent.
    pub fn start(ns: &Netns, config: &Path, socket: &Path, log: &Path) -> Self {
        Self::start_program(ns, &bin("spa-server"), config, socket, log)
    }

    /// Starts `<program> run --config <config>` inside `ns` and waits for
    /// its "ready" line; panics with the log if it exits or stays silent.
    pub fn start_program(
        ns: &Netns,
        program: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
    ) -> Self {
        let child = ns.spawn(
            &[
                program.to_str().expect("utf-8"),
                "run",
                "--config",
                config.to_str().expect("utf-8"),
            ],
            log,
        );
        let mut g = Self {
            program: program.to_path_buf(),
            child: Some(child),
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(15), || {
            if let Some(c) = g.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                exited = Some(st);
                return true;
            }
            g.log_text().lines().any(|l| l.contains(" ready "))
        });
        assert!(
            ready && exited.is_none(),
            "{} did not become ready (exit {exited:?}); log:\n{}",
            g.name(),
            g.log_text()
        );
        g
    }

    /// The program's file name, for messages.
    fn name(&self) -> String {
        self.program
            .file_name()
            .unwrap_or(self.program.as_os_str())
            .to_string_lossy()
            .into_owned()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<program> status --socket … --json`: the `status` object.
    pub fn status(&self) -> Value {
        let out = Command::new(&self.program)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap_or_else(|e| panic!("{} status: {e}", self.name()));
        assert!(
            out.status.success(),
            "{} status: {}\nlog:\n{}",
            self.name(),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(v["ok"], true, "status: {v}");
        v["status"].clone()
    }

    /// One counter of `status` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    /// Waits until counter `name` reaches `at_least`; panics with the
    /// counters and the log when it does not within 5 s.
    pub fn wait_counter(&self, name: &str, at_least: u64) {
        self.wait_counter_within(name, at_least, Duration::from_secs(5));
    }

    /// Waits until counter `name` reaches `at_least`; panics with the
    /// counters and the log when it does not within `timeout`.
    pub fn wait_counter_within(&self, name: &str, at_least: u64, timeout: Duration) {
        let ok = wait_until(timeout, || self.counter(name) >= at_least);
        assert!(
            ok,
            "{}: counter {name} did not reach {at_least}: counters {}\nlog:\n{}",
            self.name(),
            self.status()["counters"],
            self.log_text()
        );
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) {
        signal(self.pid(), sig);
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let mut st = None;
        wait_until(timeout, || {
            st = c.try_wait().ok().flatten();
            st.is_some()
        });
        match st {
            Some(s) => s,
            None => {
                let _ = c.kill();
                panic!("{} did not exit; log:\n{}", self.name(), self.log_text())
            }
        }
    }

    /// kill -9, and wait.
    pub fn kill9(&mut self) {
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

/// Runs a command (it must succeed) and returns its stdout's first line.
pub fn line_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The public keys of the relay test bed (client → green → red), made by
/// [`make_relay_pki`].
#[derive(Debug, Clone)]
pub struct RelayKeys {
    /// Green's receiver key (`green.key`).
    pub green_pub: String,
    /// Green's gateway signing key (`green-signing.key`).
    pub green_signing_pub: String,
    /// Red's receiver key (`red.key`).
    pub red_pub: String,
}

/// The PKI of the relay test bed, made in `dir` with the binaries an
/// operator uses: a CA (`ca/`, its certificate also in `ca.pem`) named
/// `ca_name`, alice's client certificate (`alice.key`, `alice.crt`), with `green_tls_ip` green's TLS server
/// certificate for that address (`green-tls.key`, `green-tls.crt`), and the
/// keys `green.key`, `green-signing.key` (`spa-server keygen`) and
/// `red.key` (`red_relay keygen`).
pub fn make_relay_pki(
    dir: &TempDir,
    ca_name: &str,
    red_relay: &Path,
    green_tls_ip: Option<Ipv4Addr>,
) -> RelayKeys {
    let server = bin("spa-server");
    let spa_client = bin("spa-client");
    // As README: the CA directory stays 0700, the daemons (as `nobody`)
    // read the public copy ca.pem.
    run_ok(Command::new(&server).args([
        "pki",
        "init",
        "--dir",
        &dir.s("ca"),
        "--name",
        ca_name,
        "--cert-out",
        &dir.s("ca.pem"),
    ]));
    let mut certs = vec![("alice", "--client")];
    if green_tls_ip.is_some() {
        certs.push(("green-tls", "--server"));
    }
    for (who, usage) in certs {
        run_ok(Command::new(&spa_client).args([
            "keygen",
            "--out",
            &dir.s(&format!("{who}.key")),
            "--csr",
            &dir.s(&format!("{who}.csr")),
            "--name",
            who,
        ]));
        let mut issue = Command::new(&server);
        issue.args([
            "pki",
            "issue",
            "--dir",
            &dir.s("ca"),
            "--csr",
            &dir.s(&format!("{who}.csr")),
            "--name",
            who,
            usage,
            "--out",
            &dir.s(&format!("{who}.crt")),
        ]);
        if let (Some(ip), "--server") = (green_tls_ip, usage) {
            issue.args(["--ip", &ip.to_string()]);
        }
        run_ok(&mut issue);
    }
    let green_pub = line_of(Command::new(&server).args(["keygen", "--out", &dir.s("green.key")]));
    let green_signing_pub = line_of(Command::new(&server).args([
        "keygen",
        "--signing",
        "--out",
        &dir.s("green-signing.key"),
    ]));
    let red_pub = line_of(Command::new(red_relay).args(["keygen", "--out", &dir.s("red.key")]));
    RelayKeys {
        green_pub,
        green_signing_pub,
        red_pub,
    }
}

/// What differs in green's configuration between relay test beds.
#[derive(Debug, Clone, Copy)]
pub struct GreenRelayConfig<'a> {
    /// Green's knock port.
    pub knock_port: u16,
    /// The port of green's `tunnel` service (and of `[tunnel]`).
    pub tunnel_port: u16,
    /// Red's order address (`[relay] red`).
    pub red: SocketAddr,
    /// Green's address towards red (`[relay] source`).
    pub source: Ipv4Addr,
    /// Red's services relayed by green, `(name, port)`; alice may use
    /// them and `tunnel`.
    pub services: &'a [(&'a str, u16)],
    /// Whether green runs the TLS tunnel (`[tunnel]`, with the
    /// `green-tls` certificate of [`make_relay_pki`]).
    pub tunnel: bool,
}

/// Writes green's `green.toml` in `dir` (blackhole mode, `nobody`, with
/// `[relay]` and optionally `[tunnel]`).
pub fn write_green_config(dir: &TempDir, keys: &RelayKeys, cfg: &GreenRelayConfig<'_>) {
    let GreenRelayConfig {
        knock_port,
        tunnel_port,
        red,
        source,
        services,
        tunnel,
    } = *cfg;
    let names: Vec<String> = services.iter().map(|(n, _)| format!(", \"{n}\"")).collect();
    let relayed: Vec<String> = services
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", port = {p} }}"))
        .collect();
    let mut text = format!(
        r#"[daemon]
knock_port = {knock_port}
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
port = {tunnel_port}

[[rules]]
identity = "cn:alice"
services = ["tunnel"{names}]

[relay]
red = "{red}"
red_key = "{red_pub}"
signing_key = "{signing}"
source = "{source}"
services = [{relayed}]
"#,
        green_key = dir.s("green.key"),
        green_db = dir.s("green.redb"),
        green_sock = dir.s("green.sock"),
        ca = dir.s("ca.pem"),
        names = names.concat(),
        red_pub = keys.red_pub,
        signing = dir.s("green-signing.key"),
        relayed = relayed.join(", "),
    );
    if tunnel {
        text.push_str(&format!(
            r#"
[tunnel]
listen_port = {tunnel_port}
certificate = "{tls_cert}"
key = "{tls_key}"
"#,
            tls_cert = dir.s("green-tls.crt"),
            tls_key = dir.s("green-tls.key"),
        ));
    }
    std::fs::write(dir.join("green.toml"), text).expect("write green.toml");
}

/// What differs in red's configuration between relay test beds.
#[derive(Debug, Clone, Copy)]
pub struct RedRelayConfig<'a> {
    /// Red's order port (its knock port).
    pub order_port: u16,
    /// An address red's firewall accepts as `management` (`<addr>/32`).
    pub management: Option<Ipv4Addr>,
    /// Red's services, `(name, port)`; alice may use them all.
    pub services: &'a [(&'a str, u16)],
}

/// Writes red's `red.toml` in `dir` (blackhole mode, `nobody`, green in
/// `[[gateways]]`).
pub fn write_red_config(dir: &TempDir, keys: &RelayKeys, cfg: &RedRelayConfig<'_>) {
    let management = cfg
        .management
        .map(|m| format!("management = [\"{m}/32\"]\n"))
        .unwrap_or_default();
    let services: String = cfg
        .services
        .iter()
        .map(|(n, p)| format!("[[services]]\nname = \"{n}\"\nport = {p}\n\n"))
        .collect();
    let names: Vec<String> = cfg
        .services
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let text = format!(
        r#"[daemon]
knock_port = {order_port}
keys = ["{red_key}"]
replay_db = "{red_db}"
control_socket = "{red_sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"
{management}
{services}[[rules]]
identity = "cn:alice"
services = [{names}]

[[gateways]]
signing_key = "{green_signing_pub}"
receiver_keys = ["{green_pub}"]
"#,
        order_port = cfg.order_port,
        red_key = dir.s("red.key"),
        red_db = dir.s("red.redb"),
        red_sock = dir.s("red.sock"),
        ca = dir.s("ca.pem"),
        names = names.join(", "),
        green_signing_pub = keys.green_signing_pub,
        green_pub = keys.green_pub,
    );
    std::fs::write(dir.join("red.toml"), text).expect("write red.toml");
}

/// Starts `red_relay run` in `red_ns` with `dir`'s `red.toml` (socket
/// `red.sock`, log `red.log`).
pub fn start_red(red_ns: &Netns, red_relay: &Path, dir: &TempDir) -> Daemon {
    Daemon::start_program(
        red_ns,
        red_relay,
        &dir.join("red.toml"),
        &dir.join("red.sock"),
        &dir.join("red.log"),
    )
}

/// Starts `spa-server run` in `green_ns` with `dir`'s `green.toml` (socket
/// `green.sock`, log `green.log`).
pub fn start_green(green_ns: &Netns, dir: &TempDir) -> Daemon {
    Daemon::start(
        green_ns,
        &dir.join("green.toml"),
        &dir.join("green.sock"),
        &dir.join("green.log"),
    )
}

/// Open sessions in a daemon's status.
pub fn sessions(d: &Daemon) -> usize {
    d.status()["sessions"].as_array().map_or(0, Vec::len)
}

/// The elements of `inet spa allow4` in `ns` (green or red; one string
/// per element).
pub fn allow4(ns: &Netns) -> Vec<String> {
    let out = ns.ok(&["nft", "list", "set", "inet", "spa", "allow4"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(start) = text.find("elements = {") else {
        return Vec::new();
    };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}
