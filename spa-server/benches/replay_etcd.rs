//! The part of knock-to-open that depends on the replay backend (SPEC §7.3,
//! §7.6): `KnockVerifier::verify` of a real knock, including the durable
//! commit of its floor, with each backend green can use:
//! `cargo bench -p spa-server --bench replay_etcd`.
//!
//! - memory (no durability: the crypto and parsing cost alone);
//! - the local redb store (`backend = "local"`, one `fsync` per commit) on
//!   the disk and on tmpfs;
//! - etcd (`backend = "etcd"`, `spa_server::etcd::EtcdFloors`), one
//!   member and a three-member cluster, started here with their data on
//!   the disk, reached over loopback inside a network namespace created
//!   here (`spa-etb-<pid>`, deleted at the end; nothing leaves it);
//! - a second etcd client (another green) sent the same datagrams: each is
//!   refused as `replayed` by the compare-and-set.
//!
//! The rest of knock-to-open (capture before, the nftables batch after) is
//! the same for every backend; BENCHMARKS.md has it for the daemon.
//! Needs root and `/usr/bin/etcd` (Debian etcd-server). Prints "skipped"
//! unless run with `--bench`.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    missing_docs,
    missing_debug_implementations
)]

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{CloneFlags, setns};
use proto_spec::Refusal;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::replay::{MemoryReplayState, ReplayState};
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use proto_spec::verify::KnockVerifier;
use spa_daemon::store::ReplayDb;
use spa_daemon::store::shared::{EtcdSettings, SharedFloors};
use spa_server::etcd::EtcdFloors;

/// Knocks per series.
const N: usize = 500;
const SRC: Ipv4Addr = Ipv4Addr::new(10, 200, 9, 9);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

struct Bench {
    ca: TestCa,
    rpk: ReceiverPublicKey,
    signer: Box<dyn Signer + Send + Sync>,
    cfg: spa_daemon::config::Config,
}

impl Bench {
    fn verifier(&self) -> KnockVerifier {
        KnockVerifier::new(
            vec![testkit::receiver_key("etcd bench")],
            TrustStore::new(&TrustConfig {
                anchors: vec![self.ca.cert_der().to_vec()],
                ..TrustConfig::default()
            })
            .unwrap(),
            spa_daemon::start::policy(&self.cfg),
            spa_daemon::start::limits(&self.cfg),
        )
    }

    /// `N + 1` knocks with timestamps from now on (the first one warms up).
    fn knocks(&self) -> Vec<Vec<u8>> {
        let base = now_ms() + 1;
        (0..=N)
            .map(|i| {
                let r = spa_keys::random_32().unwrap();
                let ikm = spa_keys::random_32().unwrap();
                let mut nonce = [0u8; 16];
                let mut session = [0u8; 16];
                nonce.copy_from_slice(&r[..16]);
                session.copy_from_slice(&r[16..]);
                seal_knock(
                    &*self.signer,
                    &self.rpk,
                    &KnockRequest {
                        msg_type: MessageType::OpenTunnel,
                        timestamp_ms: base + i as u64,
                        nonce,
                        session_id: session,
                        lifetime_s: 30,
                        open_for: OpenFor::Addr(IpAddr::V4(SRC)),
                        services: &["ssh"],
                    },
                    *ikm,
                )
                .unwrap()
            })
            .collect()
    }

    /// Verifies every knock against `store`; per-knock µs, and how many
    /// were refused with which reason.
    fn run<R: ReplayState>(&self, knocks: &[Vec<u8>], store: &mut R) -> (Vec<f64>, Vec<Refusal>) {
        let mut v = self.verifier();
        let now = now_ms() + N as u64;
        let mut per = Vec::with_capacity(knocks.len());
        let mut refused = Vec::new();
        for (i, k) in knocks.iter().enumerate() {
            let t = Instant::now();
            let r = v.verify(k, IpAddr::V4(SRC), now, store);
            if i > 0 {
                per.push(t.elapsed().as_secs_f64() * 1e6);
            }
            if let Err(e) = r {
                refused.push(e);
            }
        }
        (per, refused)
    }
}

fn report(name: &str, per: &[f64], refused: &[Refusal]) {
    let mean = per.iter().sum::<f64>() / per.len() as f64;
    let reasons: Vec<&str> = refused.iter().map(Refusal::code).collect();
    let mut counts = std::collections::BTreeMap::new();
    for r in reasons {
        *counts.entry(r).or_insert(0) += 1;
    }
    println!(
        "{name:<44} n {:>4}  p50 {:>8.1} us  p99 {:>8.1} us  mean {:>8.1} us  refused {counts:?}",
        per.len(),
        pct(per, 0.5),
        pct(per, 0.99),
        mean
    );
}

/// An etcd cluster of `n` members on loopback (the calling thread's
/// network namespace), data under `dir`.
struct Etcd {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Etcd {
    fn start(dir: &Path, n: usize, base_port: u16) -> Self {
        let peer = |j: usize| format!("http://127.0.0.1:{}", base_port + 1 + 10 * j as u16);
        let client = |j: usize| format!("http://127.0.0.1:{}", base_port + 10 * j as u16);
        let cluster = (0..n)
            .map(|j| format!("b{j}={}", peer(j)))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut logs = Vec::new();
        for j in 0..n {
            let log = dir.join(format!("etcd-{base_port}-{j}.log"));
            let f = File::create(&log).unwrap();
            children.push(
                Command::new("/usr/bin/etcd")
                    .args([
                        "--name",
                        &format!("b{j}"),
                        "--data-dir",
                        dir.join(format!("etcd-{base_port}-{j}.data"))
                            .to_str()
                            .unwrap(),
                        "--listen-client-urls",
                        &client(j),
                        "--advertise-client-urls",
                        &client(j),
                        "--listen-peer-urls",
                        &peer(j),
                        "--initial-advertise-peer-urls",
                        &peer(j),
                        "--initial-cluster",
                        &cluster,
                        "--initial-cluster-state",
                        "new",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(f.try_clone().unwrap()))
                    .stderr(Stdio::from(f))
                    .spawn()
                    .unwrap(),
            );
            logs.push(log);
        }
        let t = Instant::now();
        while !logs.iter().all(|l| {
            let mut s = String::new();
            File::open(l)
                .and_then(|mut f| f.read_to_string(&mut s))
                .is_ok()
                && s.contains("ready to serve client requests")
        }) {
            assert!(t.elapsed() < Duration::from_secs(60), "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            children,
            endpoints: (0..n).map(client).collect(),
        }
    }

    fn floors(&self, prefix: &str) -> Box<dyn SharedFloors> {
        let f = EtcdFloors::start(&EtcdSettings {
            endpoints: self.endpoints.clone(),
            prefix: prefix.to_owned(),
            tls: None,
            timeout: Duration::from_secs(2),
            keep_ms: 70_000,
        })
        .unwrap();
        let t = Instant::now();
        while !f.available() {
            assert!(t.elapsed() < Duration::from_secs(30), "etcd unreachable");
            std::thread::sleep(Duration::from_millis(20));
        }
        Box::new(f)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("skipped");
        return;
    }
    assert!(
        Path::new("/usr/bin/etcd").exists(),
        "needs /usr/bin/etcd (etcd-server)"
    );
    let pid = std::process::id();
    let ns = Netns(format!("spa-etb-{pid}"));
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("ip").args(["netns", "add", &ns.0]));
    ok(Command::new("ip").args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]));
    // This thread, the etcd processes it spawns and the client's runtime
    // threads (created from it) live in the namespace.
    setns(
        File::open(format!("/var/run/netns/{}", ns.0)).unwrap(),
        CloneFlags::CLONE_NEWNET,
    )
    .unwrap();
    let disk: PathBuf = std::env::temp_dir().join(format!("spa-etcd-bench-{pid}"));
    let shm: PathBuf = PathBuf::from(format!("/dev/shm/spa-etcd-bench-{pid}"));
    for d in [&disk, &shm] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cfg_path = disk.join("green.toml");
    std::fs::write(
        &cfg_path,
        "[daemon]\nkeys = []\nreplay_db = \"/nonexistent\"\n[trust]\nanchors = []\n\
         [[services]]\nname = \"ssh\"\nport = 22\n[[rules]]\nidentity = \"cn:bench\"\nservices = [\"ssh\"]\n",
    )
    .unwrap();
    let ca = TestCa::new("etcd bench root").unwrap();
    let b = Bench {
        rpk: testkit::receiver_key("etcd bench").public_key(),
        signer: ca
            .signer(&ClientCertSpec::new("bench", KeyAlg::Ed25519, 7))
            .unwrap(),
        ca,
        cfg: spa_daemon::config::load(&cfg_path).unwrap(),
    };
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("verify + durable commit per knock, {N} knocks each, one identity");

    let knocks = b.knocks();
    let (per, refused) = b.run(&knocks, &mut MemoryReplayState::with_global_floor(1));
    report("memory (no durability)", &per, &refused);

    for (name, dir) in [
        ("local redb, disk (fsync)", &disk),
        ("local redb, tmpfs", &shm),
    ] {
        let (mut db, _) = ReplayDb::open(&dir.join("replay.redb"), 1).unwrap();
        let knocks = b.knocks();
        let (per, refused) = b.run(&knocks, &mut db);
        report(name, &per, &refused);
    }

    for (n, port) in [(1, 23790), (3, 24790)] {
        let etcd = Etcd::start(&disk, n, port);
        let prefix = format!("/bench/{n}");
        let mut a = etcd.floors(&prefix);
        let knocks = b.knocks();
        let (per, refused) = b.run(&knocks, &mut a);
        report(
            &format!("etcd, {n} member(s), disk, green A"),
            &per,
            &refused,
        );
        // Green B: the same datagrams, each already committed by A.
        let mut other = etcd.floors(&prefix);
        let (per, refused) = b.run(&knocks, &mut other);
        report(
            &format!("etcd, {n} member(s): A's knocks replayed to B"),
            &per,
            &refused,
        );
        drop(other);
        drop(a);
        drop(etcd);
    }
    for d in [&disk, &shm] {
        let _ = std::fs::remove_dir_all(d);
    }
}
