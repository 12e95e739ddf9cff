//! `SPA_BENCH_DISK=1 cargo bench -p spa-server --bench daemon`: knock-to-open
//! latency with a concurrent disk writer, the replay store on disk against
//! on tmpfs, with and without the replay reservation (SPEC §7.3.1), and
//! valid knocks per CPU-second and per second by worker count.
//!
//! For each configuration a fresh daemon is started in the bench's test bed;
//! during the whole measurement a thread runs
//! `dd if=/dev/zero of=<disk dir>/dd-load bs=1M count=256 oflag=direct`
//! in a loop on the same file system as the on-disk store (the writer runs
//! for the tmpfs configurations too, so both see the same CPU and I/O
//! contention). Latency: [`super::latency_series`] (arrival on `g0` to the
//! `nft monitor` event, 300 knocks one at a time). Throughput:
//! [`super::throughput`] (8 identities, up to 6000 pre-sealed knocks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::{Value, json};

use super::{
    Bed, Files, Identity, WARMUP, clk_tck, crypto_floor, lat_addr, latency_series, pct,
    start_daemon, summarize, throughput, write_config_with,
};

/// The concurrent writer: `dd ... oflag=direct` in a loop until stopped.
struct DiskWriter {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
    file: PathBuf,
}

impl DiskWriter {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let file = dir.join("dd-load");
        let (s, f) = (Arc::clone(&stop), file.clone());
        let handle = thread::spawn(move || {
            let mut rounds = 0u64;
            while !s.load(Ordering::Relaxed) {
                let st = Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        &format!("of={}", f.display()),
                        "bs=1M",
                        "count=256",
                        "oflag=direct",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("dd");
                assert!(st.success(), "dd failed");
                rounds += 1;
            }
            rounds
        });
        Self {
            stop,
            handle: Some(handle),
            file,
        }
    }

    /// Stops the writer; returns the MiB it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let rounds = self.handle.take().map_or(0, |h| h.join().unwrap());
        let _ = std::fs::remove_file(&self.file);
        rounds * 256
    }
}

struct Case {
    name: String,
    store_dir: PathBuf,
    reservation_ms: u64,
    workers: usize,
    load: bool,
}

pub fn main() {
    let tck = clk_tck();
    let f = Files::new();
    let rsk = proto_spec::testkit::receiver_key("green daemon bench");
    let rpk = rsk.public_key();
    spa_keys::write_receiver_key(&f.p("green.key"), &rsk, true).unwrap();
    let ca = proto_spec::testkit::TestCa::new("spa daemon bench root").unwrap();
    std::fs::write(
        f.p("ca.pem"),
        spa_keys::pem_encode("CERTIFICATE", ca.cert_der()),
    )
    .unwrap();
    let disk = f.p("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let shm = PathBuf::from(format!("/dev/shm/spa-bench-{}", std::process::id()));
    std::fs::create_dir_all(&shm).unwrap();
    let fs_of = |p: &Path| {
        let out = Command::new("stat")
            .args(["-f", "-c", "%T", p.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    println!(
        "store on disk: {} ({}); on tmpfs: {} ({})",
        disk.display(),
        fs_of(&disk),
        shm.display(),
        fs_of(&shm)
    );
    let floor_us = crypto_floor();
    let floor_rate = 1e6 / floor_us;
    println!("crypto floor: {floor_us:.1} us = {floor_rate:.0} knocks per CPU-s");
    let workers: Vec<usize> = std::env::var("SPA_BENCH_WORKERS")
        .ok()
        .map(|s| s.split(',').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_else(|| vec![1]);
    let mut cases = Vec::new();
    for &res in &[0u64, 2000] {
        for (where_, dir) in [("disk", &disk), ("tmpfs", &shm)] {
            cases.push(Case {
                name: format!("{where_}, reservation {res} ms, 1 worker, dd load"),
                store_dir: dir.clone(),
                reservation_ms: res,
                workers: 1,
                load: true,
            });
        }
    }
    for &w in &workers {
        if w == 1 {
            continue;
        }
        cases.push(Case {
            name: format!("disk, reservation 2000 ms, {w} workers, dd load"),
            store_dir: disk.clone(),
            reservation_ms: 2000,
            workers: w,
            load: true,
        });
    }
    for &w in &workers {
        cases.push(Case {
            name: format!("disk, reservation 2000 ms, {w} worker(s), no load"),
            store_dir: disk.clone(),
            reservation_ms: 2000,
            workers: w,
            load: false,
        });
    }
    let bed = Bed::new();
    let mut results = Vec::new();
    let mut p50 = std::collections::HashMap::new();
    for (n, c) in cases.iter().enumerate() {
        let db = c.store_dir.join(format!("replay-{n}.redb"));
        let cfg = write_config_with(
            &f,
            &format!("disk-{n}.toml"),
            &db,
            &format!(
                "replay_reservation_ms = {}\nworkers = {}\n",
                c.reservation_ms, c.workers
            ),
        );
        let dlog = f.p(&format!("disk-{n}.log"));
        let mut daemon = start_daemon(&bed, &f, &cfg, &dlog);
        let writer = c.load.then(|| DiskWriter::start(&disk));
        let mut alice = Identity::new(&ca, &format!("alice{n}"), 100 + n as u64);
        let warm = alice.knock(&rpk, WARMUP, 10);
        let lat = {
            let a = &mut alice;
            let rpk2 = &rpk;
            latency_series(
                &bed,
                &f,
                &format!("disk-lat-{n}"),
                |i| a.knock(rpk2, lat_addr(i), 10),
                (WARMUP, warm),
                (1, 4),
                Some(&dlog),
            )
        };
        let tp = throughput(&bed, &f, &daemon, &ca, &rpk, &dlog, tck, &format!("d{n}t"));
        let mib = writer.map_or(0, DiskWriter::stop);
        daemon.stop();
        let per_cpu = tp.accepted as f64 / tp.cpu.sched_s;
        println!(
            "[{}] {}: {} missing; dd wrote {mib} MiB",
            n, c.name, lat.missing
        );
        let s = summarize("arrival -> nft monitor event", &lat.to_monitor);
        summarize("arrival -> accepted log line", &lat.to_log);
        println!(
            "    throughput: accepted {} of {} in {:.2} s = {:.0}/s wall; CPU {:.3} s (sched): \
             {per_cpu:.0} knocks per CPU-s = {:.3} x the crypto floor",
            tp.accepted,
            tp.sent,
            tp.wall_s,
            tp.accepted as f64 / tp.wall_s,
            tp.cpu.sched_s,
            per_cpu / floor_rate
        );
        p50.insert(n, (pct(&lat.to_monitor, 0.5), pct(&lat.to_monitor, 0.99)));
        results.push(json!({
            "case": c.name, "latency": s, "missing": lat.missing, "dd_mib": mib,
            "accepted": tp.accepted, "sent": tp.sent, "wall_s": tp.wall_s,
            "cpu_sched_s": tp.cpu.sched_s, "per_cpu_s": per_cpu,
            "x_floor": per_cpu / floor_rate,
            "per_s": tp.accepted as f64 / tp.wall_s,
        }));
    }
    // Cases 0-3: (res 0: disk, tmpfs), (res 2000: disk, tmpfs).
    for (label, d, t) in [("fsync per knock", 0, 1), ("reservation", 2, 3)] {
        if let (Some(a), Some(b)) = (p50.get(&d), p50.get(&t)) {
            println!(
                "ratio disk / tmpfs under dd load, {label}: p50 {:.2} x, p99 {:.2} x",
                a.0 / b.0,
                a.1 / b.1
            );
        }
    }
    let report: Value = json!({"floor_us": floor_us, "cases": results});
    println!("JSON {report}");
    drop(bed);
    let _ = std::fs::remove_dir_all(&shm);
}
