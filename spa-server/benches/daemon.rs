//! The green daemon end to end, against Debian's `fwknopd` in the same test
//! bed and the same run: `cargo bench -p spa-server --bench daemon`.
//!
//! Test bed: two network namespaces created here and deleted at the end,
//! `spa-dbg-<pid>` (green: `g0`, 10.200.0.1/16) and `spa-dbs-<pid>` (the
//! senders: `s0`, 10.200.0.2/16 plus one secondary address per latency
//! knock, per throughput identity and per knock sent during the flood, all
//! inside 10.200.0.0/16). Nothing is ever sent elsewhere. The daemon under
//! test is the release `spa-server` binary (`run --config`), started with
//! `ip netns exec`; knocks are sealed in-process with
//! `proto_spec::seal::seal_knock` by test-CA Ed25519 signers
//! (`proto_spec::testkit`) and sent from sockets opened in the sender
//! namespace.
//!
//! Phases, in order (see BENCHMARKS.md, "Green daemon", for the method
//! notes and the results):
//!
//! 0. crypto floor in-process (one X25519 + one Ed25519 `verify_strict` of
//!    600 bytes), plus `KnockVerifier::verify` in-process with a memory and
//!    with the redb replay store (where the time of a knock goes);
//! 1. bare receive loop under flood: `spa_capture::Capture` with the
//!    daemon's settings in green's namespace, counting events, while one
//!    sender thread blasts random 600-byte datagrams (`sendmmsg`) for 5 s;
//! 2. the daemon (fresh replay store): idle resident size;
//! 3. knock-to-open latency, 300 knocks, one at a time, each from its own
//!    source address: arrival on `g0` (`tcpdump` kernel timestamp) to the
//!    daemon's own `accepted` log line (written after the netlink batch that
//!    adds the set element was acknowledged), and to the element's
//!    `nft monitor` notification (the observer used for fwknopd too);
//! 4. the same flood against the daemon, with 100 valid knocks at 20/s from
//!    other addresses during it: CPU from `/proc/<pid>/stat`, refusals from
//!    the status counters, holes from an nftables set dump;
//! 5. valid-knock throughput: 8 identities, up to 6000 pre-sealed knocks,
//!    at most 512 outstanding (counted from the daemon's log);
//! 6. the flood again, now with the ~6000 sessions of phase 5 still open;
//! 7. resident size with 100 000 identities in the replay store (pre-filled
//!    with `ReplayDb::commit_many` before the daemon starts);
//! 8. `fwknopd` (Debian 2.6.10, iptables-nft backend) in the same
//!    namespace: 300 knocks (`fwknop --test -B` packets sent from the same
//!    addresses), arrival to the ACCEPT rule's `nft monitor` notification,
//!    with Debian's defaults (`PCAP_LOOP_SLEEP` 100 ms) and again with
//!    `PCAP_LOOP_SLEEP` 1 ms.
//!
//! Needs root, iproute2, nftables, tcpdump, fwknop-server and
//! fwknop-client. Without `--bench` (`cargo test --all-targets`) it is a
//! smoke test of the harness and the daemon: the test bed, the debug
//! daemon, 5 knocks that must each be accepted, a clean stop that removes
//! the table; no numbers. Without root it fails unless
//! `SPA_TEST_ALLOW_SKIP=1`.
#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    missing_docs,
    missing_debug_implementations
)]

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::IdentityKey;
use proto_spec::keys::ReceiverPublicKey;
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use serde_json::{Value, json};
use spa_capture::{Capture, CaptureConfig, CaptureMode, Event};
use spa_daemon::store::ReplayDb;
use tests::bench::{
    Cpu, LogTail, Monitor, Proc, Rng, accepted_times, children_cpu, clk_tck, diff, in_ns, mean,
    now_ns, packet_drops, pct, proc_cpu, proc_status, proc_threads, spawn_in, sum_prefix, task_cpu,
    wait_for_file,
};

const PORT: u16 = 62201;
const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const G_IF: &str = "g0";
const S_IF: &str = "s0";
/// Knocks per latency series.
const N_LAT: usize = 300;
/// Flood length and bound.
const FLOOD: Duration = Duration::from_secs(5);
const FLOOD_MAX: u64 = 40_000_000;
const FLOOD_LEN: usize = 600;
const SEND_BATCH: usize = 64;
/// Valid knocks during a flood, and their spacing (20/s).
const N_VALID: usize = 100;
/// Drain comparison: rounds, and datagrams queued per round (well below
/// what the 4 MiB receive buffer holds; checked by the drop counters).
const DRAIN_ROUNDS: usize = 20;
const DRAIN_K: u64 = 2000;
const VALID_EVERY: Duration = Duration::from_millis(50);
/// Throughput: identities, knocks each, window, time bound.
const T_IDS: usize = 8;
const T_PER_ID: usize = 750;
const T_WINDOW: usize = 512;
const T_MAX: Duration = Duration::from_secs(6);
/// Identities pre-filled for the memory measurement.
const N_MEM_IDS: usize = 100_000;
/// fwknop keys (test values, the same as spa-client's startup bench).
const FWK_KEY: &str = "xueqY1FsWo93zKCgGp7Pgm+f1Wk9v5TtqjOrSIa84BI=";
const FWK_HMAC: &str =
    "OXuCgb0O2yRb9/yRvK0j81oYjNEV/HQSX6BqCA6DVyd2NSorK9aTeaLJiMbcOrCRUAtCO5qo2sZDTltrFvDrwg==";

// ---------------------------------------------------------------- helpers

fn now_ms() -> u64 {
    u64::try_from(now_ns() / 1_000_000).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Latency address `i`: 10.200.1.1 … (250 a /24).
fn lat_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}
/// Addresses of the observer-free latency series: 10.200.6.1 ….
fn quiet_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 6 + (i / 250) as u8, 1 + (i % 250) as u8)
}
fn valid_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 5, 1 + i as u8)
}
fn tput_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 4, 1 + i as u8)
}
const WARMUP: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 1);
const WARMUP2: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 2);
const WARMUP3: Ipv4Addr = Ipv4Addr::new(10, 200, 3, 3);

// ------------------------------------------------------------ main

/// Without `--bench`: the bed, the daemon, 5 knocks each accepted, a clean
/// stop.
fn smoke(f: &Files, cfg: &Path, ca: &TestCa, rpk: &ReceiverPublicKey) {
    const KNOCKS: usize = 5;
    let bed = Bed::new();
    let dlog = f.p("daemon.log");
    let mut daemon = start_daemon(&bed, f, cfg, &dlog);
    let mut alice = Identity::new(ca, "alice", 1);
    latency_quiet(&bed, &dlog, KNOCKS, |i| alice.knock(rpk, quiet_addr(i), 10));
    // A knock's log line may come after latency_quiet's per-knock wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted_times(&dlog).len() < KNOCKS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        accepted_times(&dlog).len(),
        KNOCKS,
        "daemon bench smoke test: knocks not accepted; log:\n{}",
        std::fs::read_to_string(&dlog).unwrap_or_default()
    );
    daemon.stop();
    let tables = run(Command::new("ip").args(["netns", "exec", &bed.g, "nft", "list", "tables"]));
    assert!(
        !tables.contains("inet spa"),
        "daemon bench smoke test: the table outlived the daemon: {tables}"
    );
    println!("daemon bench: smoke test passed ({KNOCKS} knocks accepted, clean stop)");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

#[path = "daemon/bed.rs"]
mod bed;
#[path = "daemon/fwknop.rs"]
mod fwknop;
#[path = "daemon/inproc.rs"]
mod inproc;
#[path = "daemon/load.rs"]
mod load;
use bed::*;
use fwknop::*;
use inproc::*;
use load::*;

#[path = "daemon/disk_load.rs"]
mod disk_load;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !is_root() {
        tests::cannot_run(
            "daemon bench",
            "needs root (network namespaces, nftables, AF_PACKET)",
        );
        return;
    }
    if bench && std::env::var_os("SPA_BENCH_DISK").is_some() {
        disk_load::main();
        return;
    }
    let t_all = Instant::now();
    let tck = clk_tck();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", loadavg.trim());
    let mut report = serde_json::Map::new();

    // Files: receiver key, CA, configuration.
    let f = Files::new();
    let rsk = testkit::receiver_key("green daemon bench");
    let rpk = rsk.public_key();
    spa_keys::write_receiver_key(&f.p("green.key"), &rsk, true).unwrap();
    let ca = TestCa::new("spa daemon bench root").unwrap();
    std::fs::write(
        f.p("ca.pem"),
        spa_keys::pem_encode("CERTIFICATE", ca.cert_der()),
    )
    .unwrap();
    let cfg = write_config(&f, "daemon.toml", &f.p("replay.redb"));
    if !bench {
        smoke(&f, &cfg, &ca, &rpk);
        return;
    }

    // 0. Floor and in-process verification.
    let floor_us = crypto_floor();
    let ip0 = inprocess_verify(&ca, &f, &rpk);
    println!(
        "[0] crypto floor (X25519 + Ed25519 verify_strict 600 B): {floor_us:.1} us; \
         KnockVerifier::verify cached: {:.1} us (memory replay); with the redb store \
         (fsync per commit): mean {:.1} us, p50 {:.1} us, p99 {:.1} us, CPU {:.1} us per knock",
        ip0.mem_us, ip0.db_us, ip0.db_p50_us, ip0.db_p99_us, ip0.db_cpu_us
    );
    report.insert(
        "floor".into(),
        json!({"floor_us": floor_us, "verify_memory_us": ip0.mem_us, "verify_redb_us": ip0.db_us,
               "verify_redb_p50_us": ip0.db_p50_us, "verify_redb_p99_us": ip0.db_p99_us,
               "verify_redb_cpu_us": ip0.db_cpu_us}),
    );

    let bed = Bed::new();

    // 1. Bare receive loop.
    let bare = bare_loop(&bed, tck);
    let bare_rate = bare.events as f64 / bare.cpu.stat_s;
    let bare_rate_sched = bare.events as f64 / bare.cpu.sched_s;
    println!(
        "[1] bare loop: sent {} in {:.2} s ({:.0}/s); received {} ({:.0}/s, {:.1} per recvmmsg), \
         kernel drops {}; CPU {:.2} s (stat) / {:.3} s (schedstat): {:.0} events per CPU-s \
         ({:.0} by schedstat)",
        bare.sent,
        bare.send_s,
        bare.sent as f64 / bare.send_s,
        bare.events,
        bare.events as f64 / bare.send_s,
        bare.events as f64 / bare.calls.max(1) as f64,
        bare.drops,
        bare.cpu.stat_s,
        bare.cpu.sched_s,
        bare_rate,
        bare_rate_sched
    );
    report.insert(
        "bare_loop".into(),
        json!({"sent": bare.sent, "send_s": bare.send_s, "events": bare.events, "recv_calls": bare.calls,
               "kernel_drops": bare.drops, "cpu_stat_s": bare.cpu.stat_s,
               "cpu_sched_s": bare.cpu.sched_s, "events_per_cpu_s": bare_rate,
               "events_per_cpu_s_sched": bare_rate_sched, "drain_frames": bare.drain_frames,
               "drain_cpu_s": bare.drain_cpu_s, "drain_drops": bare.drain_drops}),
    );
    let bare_drain_us = 1e6 * bare.drain_cpu_s / bare.drain_frames.max(1) as f64;
    println!(
        "    bare loop drain: {} frames ({DRAIN_ROUNDS} x {DRAIN_K} queued, read in full batches) \
         in {:.4} s CPU: {bare_drain_us:.3} us per frame; drops {}",
        bare.drain_frames, bare.drain_cpu_s, bare.drain_drops
    );

    // 2. The daemon, fresh store: idle memory.
    let dlog = f.p("daemon.log");
    let mut daemon = start_daemon(&bed, &f, &cfg, &dlog);
    thread::sleep(Duration::from_millis(500));
    let rss_idle = proc_status(daemon.pid(), "VmRSS:");
    let hwm_idle = proc_status(daemon.pid(), "VmHWM:");
    let threads = proc_threads(daemon.pid());
    println!(
        "[2] daemon idle (fresh store): VmRSS {rss_idle} kB, VmHWM {hwm_idle} kB, {threads} thread(s)"
    );

    // 3. Latency.
    let mut alice = Identity::new(&ca, "alice", 1);
    let warm = alice.knock(&rpk, WARMUP, 10);
    let lat = {
        let rpk2 = &rpk;
        let a = &mut alice;
        latency_series(
            &bed,
            &f,
            "spa-latency",
            |i| a.knock(rpk2, lat_addr(i), 10),
            (WARMUP, warm),
            (1, 4),
            Some(&dlog),
        )
    };
    println!(
        "[3] spa-server knock-to-open latency ({} missing):",
        lat.missing
    );
    let lat_json = json!([
        summarize("spa: arrival -> accepted log line", &lat.to_log),
        summarize("spa: arrival -> nft monitor event", &lat.to_monitor),
        summarize("spa: send() -> nft monitor event", &lat.send_to_monitor),
        summarize("spa: accepted log line -> nft monitor", &lat.log_to_monitor),
    ]);
    let quiet = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_quiet(&bed, &dlog, N_LAT, |i| a.knock(rpk2, quiet_addr(i), 10))
    };
    let quiet_json = summarize("spa, no observers: send() -> accepted log", &quiet);
    let rss_after_lat = proc_status(daemon.pid(), "VmRSS:");

    // 4. Flood with valid knocks.
    let mut vid = Identity::new(&ca, "valid", 2);
    let fl = daemon_flood(&bed, &f, &daemon, &mut vid, &rpk, tck, true);
    let fl_rate = fl.refused as f64 / fl.cpu.stat_s;
    let fl_rate_sched = fl.refused as f64 / fl.cpu.sched_s;
    println!(
        "[4] flood: sent {} in {:.2} s ({:.0}/s); daemon refused {} ({:.0}/s over {:.2} s), \
         CPU {:.2} s stat / {:.3} s sched ({:.0}% of wall): {:.0} refused per CPU-s \
         ({:.0} sched) = {:.1}% of the bare loop ({:.1}% sched); socket drops {}; valid knocks \
         sent {}, accepted {}, holes {} ({} sessions open before); counters {:?}",
        fl.sent,
        fl.send_s,
        fl.sent as f64 / fl.send_s,
        fl.refused,
        fl.refused as f64 / fl.wall_s,
        fl.wall_s,
        fl.cpu.stat_s,
        fl.cpu.sched_s,
        100.0 * fl.cpu.stat_s / fl.wall_s,
        fl_rate,
        fl_rate_sched,
        100.0 * fl_rate / bare_rate,
        100.0 * fl_rate_sched / bare_rate_sched,
        fl.socket_drops,
        fl.valid_sent,
        fl.valid_accepted,
        fl.valid_holes,
        fl.sessions_before,
        fl.counters
    );

    let (dd_frames, dd_cpu, dd_drops) = daemon_drain(&bed, &f, &daemon);
    let dd_us = 1e6 * dd_cpu / dd_frames.max(1) as f64;
    println!(
        "    daemon drain: {dd_frames} refused ({DRAIN_ROUNDS} x {DRAIN_K} queued while stopped) in \
         {dd_cpu:.4} s CPU: {dd_us:.3} us per datagram = {:.1}% of the bare loop's rate; drops {dd_drops}",
        100.0 * bare_drain_us / dd_us
    );

    // 5. Throughput.
    let floor_rate = 1e6 / floor_us;
    let tp = throughput(&bed, &f, &daemon, &ca, &rpk, &dlog, tck, "t");
    let (t_acc, t_cpu, t_wall, sent) = (tp.accepted, tp.cpu, tp.wall_s, tp.sent);
    let t_rate = t_acc as f64 / t_cpu.stat_s;
    let t_rate_sched = t_acc as f64 / t_cpu.sched_s;
    println!(
        "[5] throughput: sealed {} knocks in {:.2} s; sent {sent}, accepted {t_acc} in \
         {t_wall:.2} s ({:.0}/s wall); daemon CPU {:.2} s stat / {:.3} s sched: {t_rate:.0} \
         knocks per CPU-s ({t_rate_sched:.0} sched) = {:.3} x the floor rate {floor_rate:.0}/s \
         ({:.3} sched); per knock {:.1} us CPU; counters {:?}",
        T_IDS * T_PER_ID,
        tp.seal_s,
        t_acc as f64 / t_wall,
        t_cpu.stat_s,
        t_cpu.sched_s,
        t_rate / floor_rate,
        t_rate_sched / floor_rate,
        1e6 * t_cpu.sched_s / t_acc as f64,
        tp.counters,
    );
    let rss_after_tput = proc_status(daemon.pid(), "VmRSS:");

    // 6. The flood again, with the throughput phase's sessions open.
    let fl2 = daemon_flood(&bed, &f, &daemon, &mut vid, &rpk, tck, false);
    let fl2_rate = fl2.refused as f64 / fl2.cpu.stat_s;
    let fl2_rate_sched = fl2.refused as f64 / fl2.cpu.sched_s;
    println!(
        "[6] flood with {} sessions open: sent {} ({:.0}/s); refused {}; CPU {:.2} s stat / \
         {:.3} s sched: {:.0} refused per CPU-s ({:.0} sched) = {:.1}% of the bare loop \
         ({:.1}% sched); socket drops {}; valid sent {}, accepted {}",
        fl2.sessions_before,
        fl2.sent,
        fl2.sent as f64 / fl2.send_s,
        fl2.refused,
        fl2.cpu.stat_s,
        fl2.cpu.sched_s,
        fl2_rate,
        fl2_rate_sched,
        100.0 * fl2_rate / bare_rate,
        100.0 * fl2_rate_sched / bare_rate_sched,
        fl2.socket_drops,
        fl2.valid_sent,
        fl2.valid_accepted,
    );
    let (dd2_frames, dd2_cpu, dd2_drops) = daemon_drain(&bed, &f, &daemon);
    let dd2_us = 1e6 * dd2_cpu / dd2_frames.max(1) as f64;
    println!(
        "    daemon drain with the sessions open: {dd2_frames} refused in {dd2_cpu:.4} s CPU: \
         {dd2_us:.3} us per datagram = {:.1}% of the bare loop's rate; drops {dd2_drops}",
        100.0 * bare_drain_us / dd2_us
    );
    let rss_end = proc_status(daemon.pid(), "VmRSS:");
    let hwm_end = proc_status(daemon.pid(), "VmHWM:");

    daemon.stop();
    let tables = run(Command::new("ip").args(["netns", "exec", &bed.g, "nft", "list", "tables"]));
    let table_removed = !tables.contains("inet spa");

    // 7. Memory with 100 000 identities.
    let db_path = f.p("replay-100k.redb");
    let t_fill = Instant::now();
    {
        let now = now_ms();
        let (mut db, _) = ReplayDb::open(&db_path, now - 10_000).unwrap();
        let mut rng = Rng::seeded();
        let entries: Vec<(IdentityKey, u64)> = (0..N_MEM_IDS)
            .map(|_| {
                let mut k = [0u8; 32];
                for c in k.chunks_mut(8) {
                    c.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                (IdentityKey(k), now - rng.below(5_000))
            })
            .collect();
        db.commit_many(&entries).unwrap();
    }
    let fill_s = t_fill.elapsed().as_secs_f64();
    let db_size = std::fs::metadata(&db_path).map_or(0, |m| m.len());
    let cfg100k = write_config(&f, "daemon-100k.toml", &db_path);
    let dlog2 = f.p("daemon-100k.log");
    let t_start = Instant::now();
    let mut d2 = start_daemon(&bed, &f, &cfg100k, &dlog2);
    let start_s = t_start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let rss_100k = proc_status(d2.pid(), "VmRSS:");
    let hwm_100k = proc_status(d2.pid(), "VmHWM:");
    let loaded = std::fs::read_to_string(&dlog2)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("replay state loaded"))
        .unwrap_or("")
        .to_owned();
    d2.stop();
    println!(
        "[7] memory: idle {rss_idle} kB (VmHWM {hwm_idle}); after latency {rss_after_lat} kB; \
         after throughput {rss_after_tput} kB; end {rss_end} kB (VmHWM {hwm_end}); \
         100k identities: {rss_100k} kB (VmHWM {hwm_100k}), store {db_size} bytes filled in \
         {fill_s:.2} s, daemon start to ready {start_s:.2} s; {loaded}"
    );
    println!("    table removed on SIGTERM: {table_removed}");

    // 7b. Attribution only: the replay store on tmpfs (fsync returns at
    // once; not a valid deployment, the floors would not survive a reboot).
    let shm = PathBuf::from(format!(
        "/dev/shm/spa-daemon-bench-{}.redb",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&shm);
    let cfg_shm = write_config(&f, "daemon-tmpfs.toml", &shm);
    let dlog3 = f.p("daemon-tmpfs.log");
    let mut d3 = start_daemon(&bed, &f, &cfg_shm, &dlog3);
    let warm3 = alice.knock(&rpk, WARMUP3, 10);
    let lat_shm = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_series(
            &bed,
            &f,
            "spa-latency-tmpfs",
            |i| a.knock(rpk2, lat_addr(i), 10),
            (WARMUP3, warm3),
            (1, 4),
            Some(&dlog3),
        )
    };
    let quiet_shm = {
        let a = &mut alice;
        let rpk2 = &rpk;
        latency_quiet(&bed, &dlog3, N_LAT, |i| a.knock(rpk2, quiet_addr(i), 10))
    };
    println!("[7b] replay store on tmpfs (attribution only): latency");
    let lat_shm_json = json!([
        summarize("spa tmpfs: arrival -> accepted log line", &lat_shm.to_log),
        summarize(
            "spa tmpfs: arrival -> nft monitor event",
            &lat_shm.to_monitor
        ),
        summarize("spa tmpfs, no observers: send() -> log", &quiet_shm),
    ]);
    let tp_shm = throughput(&bed, &f, &d3, &ca, &rpk, &dlog3, tck, "u");
    println!(
        "     throughput: accepted {} of {} in {:.2} s ({:.0}/s wall), CPU {:.3} s sched: \
         {:.0} knocks per CPU-s = {:.3} x floor; per knock {:.1} us CPU",
        tp_shm.accepted,
        tp_shm.sent,
        tp_shm.wall_s,
        tp_shm.accepted as f64 / tp_shm.wall_s,
        tp_shm.cpu.sched_s,
        tp_shm.accepted as f64 / tp_shm.cpu.sched_s,
        tp_shm.accepted as f64 / tp_shm.cpu.sched_s / floor_rate,
        1e6 * tp_shm.cpu.sched_s / tp_shm.accepted as f64,
    );
    d3.stop();
    let _ = std::fs::remove_file(&shm);
    report.insert(
        "tmpfs_store_attribution".into(),
        json!({"latency": lat_shm_json, "throughput": {"sent": tp_shm.sent, "accepted": tp_shm.accepted,
               "wall_s": tp_shm.wall_s, "cpu_sched_s": tp_shm.cpu.sched_s,
               "per_cpu_s": tp_shm.accepted as f64 / tp_shm.cpu.sched_s,
               "ratio_to_floor": tp_shm.accepted as f64 / tp_shm.cpu.sched_s / floor_rate}}),
    );

    // 8. fwknopd, Debian defaults, then PCAP_LOOP_SLEEP 1 ms.
    let mut fwk = Vec::new();
    for (tag, sleep_us, jitter) in [
        ("default", None, (2u64, 112u64)),
        ("sleep1ms", Some(1000u32), (2, 6)),
    ] {
        let mut addrs: Vec<Ipv4Addr> = (0..N_LAT).map(lat_addr).collect();
        addrs.push(WARMUP2);
        let t_gen = Instant::now();
        let mut pkts = fwknop_packets(&f, tag, &addrs);
        let gen_s = t_gen.elapsed().as_secs_f64();
        let warm = pkts.pop().unwrap();
        let mut fd = start_fwknopd(&bed, &f, tag, sleep_us);
        let l = latency_series(
            &bed,
            &f,
            &format!("fwknopd-{tag}"),
            |i| pkts[i].clone(),
            (WARMUP2, warm),
            jitter,
            None,
        );
        let fcpu = proc_cpu(fd.pid(), tck);
        let fchild = children_cpu(fd.pid(), tck);
        let frss = proc_status(fd.pid(), "VmRSS:");
        fd.stop();
        println!(
            "[8] fwknopd ({tag}; {N_LAT} packets generated in {gen_s:.2} s; {} missing; \
             VmRSS {frss} kB; CPU from its start to the end of the series: {:.2} s itself, \
             {fchild:.2} s its iptables children):",
            l.missing, fcpu.stat_s
        );
        fwk.push((
            tag,
            summarize(
                &format!("fwknopd {tag}: arrival -> nft monitor"),
                &l.to_monitor,
            ),
            summarize(
                &format!("fwknopd {tag}: send() -> nft monitor"),
                &l.send_to_monitor,
            ),
            l,
            frss,
        ));
    }

    // Summary.
    let spa_mon = pct(&lat.to_monitor, 0.5);
    let spa_log50 = pct(&lat.to_log, 0.5);
    let spa_log99 = pct(&lat.to_log, 0.99);
    println!("\n== summary ==");
    println!(
        "latency arrival -> element (daemon log): p50 {spa_log50:.1} us [{}], p99 {spa_log99:.1} us [{}]",
        if spa_log50 <= 500.0 {
            "PASS <= 500"
        } else {
            "FAIL > 500"
        },
        if spa_log99 <= 2000.0 {
            "PASS <= 2000"
        } else {
            "FAIL > 2000"
        },
    );
    for (tag, _, _, l, _) in &fwk {
        let p50 = pct(&l.to_monitor, 0.5);
        let p99 = pct(&l.to_monitor, 0.99);
        println!(
            "fwknopd {tag}: arrival -> rule (nft monitor) p50 {p50:.1} us, p99 {p99:.1} us; \
             ratio to spa (same observer) p50 {:.1}x, p99 {:.1}x",
            p50 / spa_mon,
            p99 / pct(&lat.to_monitor, 0.99)
        );
    }
    println!(
        "flood drain (full batches): daemon {dd_us:.3} us vs bare {bare_drain_us:.3} us per datagram = {:.1}% [{}]",
        100.0 * bare_drain_us / dd_us,
        if bare_drain_us / dd_us >= 0.7 {
            "PASS >= 70%"
        } else {
            "FAIL < 70%"
        },
    );
    println!(
        "flood (sustained): {:.1}% of the bare loop [{}]; socket drops {}; valid knocks opened {}/{} [{}]",
        100.0 * fl_rate / bare_rate,
        if fl_rate / bare_rate >= 0.7 {
            "PASS >= 70%"
        } else {
            "FAIL < 70%"
        },
        fl.socket_drops,
        fl.valid_holes,
        fl.valid_sent,
        if fl.valid_holes as f64 >= 0.99 * fl.valid_sent as f64 {
            "PASS >= 99%"
        } else {
            "FAIL < 99%"
        }
    );
    println!(
        "throughput: {t_rate:.0} knocks per CPU-s = {:.3} x floor; memory idle {rss_idle} kB, 100k ids {rss_100k} kB",
        t_rate / floor_rate
    );
    report.insert("latency_spa".into(), lat_json);
    report.insert("latency_spa_no_observers".into(), quiet_json);
    report.insert(
        "latency_spa_raw_arrival_to_log_us".into(),
        json!(lat.to_log),
    );
    report.insert(
        "latency_fwknopd".into(),
        json!(fwk.iter().map(|(t, a, b, l, rss)| json!({"tag": t, "arrival_to_monitor": a, "send_to_monitor": b, "missing": l.missing, "vmrss_kb": rss})).collect::<Vec<_>>()),
    );
    report.insert(
        "flood".into(),
        json!({"sent": fl.sent, "send_s": fl.send_s, "refused": fl.refused, "cpu_stat_s": fl.cpu.stat_s,
               "cpu_sched_s": fl.cpu.sched_s, "wall_s": fl.wall_s, "refused_per_cpu_s": fl_rate,
               "refused_per_cpu_s_sched": fl_rate_sched, "ratio_to_bare": fl_rate / bare_rate,
               "ratio_to_bare_sched": fl_rate_sched / bare_rate_sched,
               "valid_sent": fl.valid_sent, "valid_accepted": fl.valid_accepted, "valid_holes": fl.valid_holes,
               "socket_drops": fl.socket_drops, "drain_frames": dd_frames, "drain_cpu_s": dd_cpu,
               "drain_us_per_datagram": dd_us, "drain_ratio_to_bare": bare_drain_us / dd_us,
               "drain_drops": dd_drops}),
    );
    report.insert(
        "flood_with_sessions".into(),
        json!({"sessions": fl2.sessions_before, "sent": fl2.sent, "refused": fl2.refused,
               "cpu_stat_s": fl2.cpu.stat_s, "cpu_sched_s": fl2.cpu.sched_s,
               "refused_per_cpu_s": fl2_rate, "refused_per_cpu_s_sched": fl2_rate_sched,
               "ratio_to_bare": fl2_rate / bare_rate, "socket_drops": fl2.socket_drops,
               "drain_us_per_datagram": dd2_us, "drain_ratio_to_bare": bare_drain_us / dd2_us, "drain_drops": dd2_drops, "valid_sent": fl2.valid_sent,
               "valid_accepted": fl2.valid_accepted}),
    );
    report.insert(
        "throughput".into(),
        json!({"sent": sent, "accepted": t_acc, "wall_s": t_wall, "cpu_stat_s": t_cpu.stat_s,
               "cpu_sched_s": t_cpu.sched_s, "per_cpu_s": t_rate, "per_cpu_s_sched": t_rate_sched,
               "ratio_to_floor": t_rate / floor_rate, "ratio_to_floor_sched": t_rate_sched / floor_rate}),
    );
    report.insert(
        "memory_kb".into(),
        json!({"idle": rss_idle, "idle_hwm": hwm_idle, "after_latency": rss_after_lat,
               "after_throughput": rss_after_tput, "end": rss_end, "end_hwm": hwm_end,
               "ids_100k": rss_100k, "ids_100k_hwm": hwm_100k, "store_100k_bytes": db_size}),
    );
    println!("total {:.1} s", t_all.elapsed().as_secs_f64());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("daemon-bench.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .unwrap();
    println!("JSON: {}", out.display());
    drop(bed);
}
