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
//! - [`pair`]: a test in a namespace of its own with a veth peer (the
//!   firewall and session-table kernel tests).
//! - [`bench`](mod@bench): what the benchmark harnesses share.
//! - [`debs`]: the Debian packages, built as an operator would.
//! - [`Daemon`] ([`Green`]): a running `spa-server run` (or another
//!   workspace daemon with the same command line, such as `red-relay run`),
//!   with its status over the control socket (through its `status`
//!   command).
//!
//! Needs root, iproute2, nftables, tcpdump and nmap (CI runs as root and
//! installs them; [`require_tools`] fails with the apt-get line).
#![forbid(unsafe_code)]

pub mod bench;
mod daemon;
pub mod debs;
pub mod pair;
pub mod pcap;
mod relay;
pub mod spoof;

pub use daemon::{Daemon, Green, line_of};
pub use relay::{
    GreenRelayConfig, RedRelayConfig, RelayKeys, allow4, allow6, make_relay_pki, sessions,
    start_green, start_red, write_green_config, write_red_config,
};

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
            build_env(&mut c);
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

/// Gives `c` (a cargo build, or a script that runs one) only the variables
/// a plain build in a shell would see, not the environment cargo gave this
/// test (`LD_LIBRARY_PATH`, `CARGO_PKG_*`, …): build scripts that watch
/// variables would see a change, and the next plain `cargo build` would
/// rebuild everything again.
pub fn build_env(c: &mut Command) {
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
