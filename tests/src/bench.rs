//! What the benchmark harnesses share (`spa-capture/benches/capture.rs`,
//! `spa-server/benches/daemon.rs`): processes in namespaces and their CPU
//! time and memory from `/proc`, percentiles, a fast random source, the
//! daemon's log and counters as a bench reads them, `nft monitor`, and
//! sending datagrams as fast as the kernel takes them.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSlice;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use nix::unistd::Pid;
use serde_json::Value;

/// A command's stdout; it must succeed.
fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&crate::run_ok(cmd).stdout).into_owned()
}

/// splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);
impl Rng {
    /// Seeded from the system's random source.
    pub fn seeded() -> Self {
        let r = spa_keys::random_32().expect("random seed");
        let mut b = [0u8; 8];
        b.copy_from_slice(&r[..8]);
        Rng(u64::from_le_bytes(b))
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A value below `n` (slightly biased; fine for jitter).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let idx = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    /// What it is, for messages.
    pub what: &'static str,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }
    /// SIGTERM (or `sig`), wait up to 5 s, then SIGKILL.
    pub fn stop_with(&mut self, sig: Signal) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), sig);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop: SIGKILL", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn stop(&mut self) {
        self.stop_with(Signal::SIGTERM);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `args` in namespace `ns` (`ip netns exec` execs the program, so
/// the child's pid is the program's), output to `log`.
pub fn spawn_in(ns: &str, args: &[&str], log: &Path, what: &'static str) -> Proc {
    let f = File::create(log).expect("create the log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .env_remove("SSH_CONNECTION")
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().expect("clone the log")))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {args:?}: {e}"));
    Proc { child, what }
}

pub fn wait_for_file(path: &Path, needle: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Runs `f` on a thread that entered network namespace `ns` (sockets it
/// opens stay in that namespace whichever thread uses them later).
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).expect("netns file");
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// utime + stime (seconds, from `stat`) and the scheduler's run time
/// (seconds, from `schedstat`) of a task directory (`/proc/<pid>` summed
/// over its threads, or `/proc/thread-self`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// utime + stime, seconds.
    pub stat_s: f64,
    /// Scheduler run time, seconds.
    pub sched_s: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            stat_s: self.stat_s - o.stat_s,
            sched_s: self.sched_s - o.sched_s,
        }
    }
}

pub fn clk_tck() -> f64 {
    stdout_of(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap_or(100.0)
}

pub fn task_cpu(dir: &Path, tck: f64) -> Cpu {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let sched = std::fs::read_to_string(dir.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Cpu {
        stat_s: ticks as f64 / tck,
        sched_s: sched as f64 / 1e9,
    }
}

/// A process: `stat` is the whole process (threads included); schedstat
/// is summed over its tasks.
pub fn proc_cpu(pid: i32, tck: f64) -> Cpu {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let mut c = task_cpu(&base, tck);
    c.sched_s = 0.0;
    if let Ok(rd) = std::fs::read_dir(base.join("task")) {
        for t in rd.flatten() {
            c.sched_s += task_cpu(&t.path(), tck).sched_s;
        }
    }
    c
}

/// cutime + cstime of a process (its waited-for children), seconds.
pub fn children_cpu(pid: i32, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = f.get(13).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(14).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    t as f64 / tck
}

pub fn proc_status(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

pub fn proc_threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

/// Drops counted on the packet sockets of process `pid` in namespace
/// `ns` (`ss -0 -m`, the `d` of `skmem`: the socket's `sk_drops`).
pub fn packet_drops(ns: &str, pid: i32) -> Option<u64> {
    let out =
        stdout_of(Command::new("ip").args(["netns", "exec", ns, "ss", "-0", "-a", "-m", "-p"]));
    let tag = format!("pid={pid},");
    out.lines().filter(|l| l.contains(&tag)).find_map(|l| {
        let sk = l.split("skmem:(").nth(1)?;
        sk.split([',', ')'])
            .find_map(|f| f.strip_prefix('d').and_then(|d| d.parse().ok()))
    })
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

/// The sum of the counters whose name starts with `prefix`.
pub fn sum_prefix(c: &HashMap<String, u64>, prefix: &str) -> u64 {
    c.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// The counters that grew from `before` to `after`, by how much.
pub fn diff(after: &HashMap<String, u64>, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Counts complete log lines containing a needle as the file grows.
#[derive(Debug)]
pub struct LogTail {
    file: File,
    carry: Vec<u8>,
}

impl LogTail {
    /// Follows `p` from its current end.
    pub fn open(p: &Path) -> Self {
        let mut file = File::open(p).expect("open the log");
        let mut skip = Vec::new();
        file.read_to_end(&mut skip).expect("read the log");
        LogTail {
            file,
            carry: Vec::new(),
        }
    }
    /// Complete lines added since the last call that contain `needle`.
    pub fn count_new(&mut self, needle: &[u8]) -> usize {
        let mut buf = Vec::new();
        let _ = self.file.read_to_end(&mut buf);
        self.carry.extend_from_slice(&buf);
        let Some(last_nl) = self.carry.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        let n = self.carry[..=last_nl]
            .split(|&b| b == b'\n')
            .filter(|l| l.windows(needle.len()).any(|w| w == needle))
            .count();
        self.carry.drain(..=last_nl);
        n
    }
}

/// `src` → timestamp (ns) of the first "accepted" line of each source.
pub fn accepted_times(log: &Path) -> HashMap<Ipv4Addr, i128> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != "accepted" {
            continue;
        }
        let (Some(src), Some(ts)) = (v["src"].as_str(), v["timestamp"].as_str()) else {
            continue;
        };
        let (Ok(addr), Ok(t)) = (
            src.parse::<Ipv4Addr>(),
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339),
        ) else {
            continue;
        };
        m.entry(addr).or_insert(t.unix_timestamp_nanos());
    }
    m
}

/// `nft monitor` in a namespace; every line time-stamped when read.
#[derive(Debug)]
pub struct Monitor {
    _p: Proc,
    rx: mpsc::Receiver<(i128, String)>,
    seen: HashMap<Ipv4Addr, i128>,
}

/// The IPv4 addresses in a line.
pub fn ipv4_tokens(line: &str) -> Vec<Ipv4Addr> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.trim_matches('.').parse().ok())
        .collect()
}

impl Monitor {
    /// Starts `nft monitor` in namespace `ns`.
    pub fn start(ns: &str) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "monitor"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nft monitor");
        let mut p = Proc {
            child,
            what: "nft monitor",
        };
        let out = p.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                let t = now_ns();
                if tx.send((t, std::mem::take(&mut line))).is_err() {
                    break;
                }
            }
        });
        thread::sleep(Duration::from_millis(300));
        Monitor {
            _p: p,
            rx,
            seen: HashMap::new(),
        }
    }

    /// When an `add element`/`add rule` naming `addr` was read, waiting up
    /// to `timeout`.
    pub fn wait_for(&mut self, addr: Ipv4Addr, timeout: Duration) -> Option<i128> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(&t) = self.seen.get(&addr) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let (t, line) = self.rx.recv_timeout(left).ok()?;
            if line.starts_with("add element") || line.starts_with("add rule") {
                for a in ipv4_tokens(&line) {
                    self.seen.entry(a).or_insert(t);
                }
            }
        }
    }
}

/// Sends the datagrams of `pool` (at most 64 a call, from the start of the
/// pool) on the connected socket `s` with `sendmmsg(2)`, again and again,
/// until `limit` datagrams are sent (exactly) or `until` passes. Returns
/// (sent, elapsed). Send errors (a full buffer) are retried.
pub fn send_batches(
    s: &UdpSocket,
    pool: &[Vec<u8>],
    limit: u64,
    until: Duration,
) -> (u64, Duration) {
    let batch = pool.len().clamp(1, 64);
    let slices: Vec<[IoSlice<'_>; 1]> = pool[..batch.min(pool.len())]
        .iter()
        .map(|p| [IoSlice::new(p)])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; slices.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let (t0, mut sent) = (Instant::now(), 0u64);
    while sent < limit && t0.elapsed() < until && !slices.is_empty() {
        let n = usize::try_from(limit - sent)
            .unwrap_or(slices.len())
            .min(slices.len());
        if let Ok(r) = sendmmsg(
            s.as_raw_fd(),
            &mut headers,
            &slices[..n],
            &addrs[..n],
            [],
            MsgFlags::empty(),
        ) {
            sent += r.count() as u64;
        }
    }
    (sent, t0.elapsed())
}
