//! Benchmarks of the durable replay store (`spa_daemon::store`): commit
//! latency (one fsync per commit) on the disk the build is on, `floor()`
//! lookups among 100,000 identities, opening a 100,000-identity store, and
//! resident memory idle versus with 100,000 identities loaded.
//!
//! ```text
//! cargo bench -p spa-server --bench store
//! ```
//!
//! The store files live in `CARGO_TARGET_TMPDIR` (under `target/`, so on the
//! build's disk, not a tmpfs), or in `$SPA_BENCH_DIR` if set. Memory is read
//! from `/proc/self/status` (`VmRSS`, `VmHWM`) in a fresh child process (this
//! binary run again), so what the benchmark itself allocated does not count.
//!
//! Without `--bench` (as under `cargo test --all-targets`) everything runs
//! once on 100 identities and finishes in well under a second.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::Criterion;
use proto_spec::cert::IdentityKey;
use proto_spec::replay::ReplayState;
use spa_daemon::store::ReplayDb;

const IDENTITIES: u32 = 100_000;
const CHILD_ENV: &str = "SPA_BENCH_STORE_RSS_CHILD";

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn id(n: u32) -> IdentityKey {
    // Spread like real identity keys (SHA-256 outputs): mix n into all bytes.
    let mut k = [0u8; 32];
    let mut x = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
    for chunk in k.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    IdentityKey(k)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Child mode: open the store at `path`, report memory, exit.
fn rss_child(path: &Path) {
    let before = status_kib("VmRSS:");
    let t = Instant::now();
    let (db, report) = ReplayDb::open(path, 1).unwrap();
    let open = t.elapsed();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    println!(
        "rss_before={before} rss_after={after} hwm={peak} open_us={} identities={}",
        open.as_micros(),
        report.identities
    );
    black_box(db.len());
}

fn measure_rss(path: &Path) -> (u64, u64, u64, Duration, usize) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rss_before="))
        .unwrap_or_else(|| {
            panic!(
                "child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let get = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (
        get("rss_before="),
        get("rss_after="),
        get("hwm="),
        Duration::from_micros(get("open_us=")),
        usize::try_from(get("identities=")).unwrap(),
    )
}

fn bench_dir() -> PathBuf {
    std::env::var_os("SPA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        rss_child(Path::new(&path));
        return;
    }
    let full = bench_mode();
    let n_ids = if full { IDENTITIES } else { 100 };
    let base = bench_dir();
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut c = Criterion::default().configure_from_args();
    let mut lines = Vec::new();

    // Commit latency: every commit is one write transaction made durable
    // (fsync) before it returns.
    {
        let (mut db, _) = ReplayDb::open(&dir.path().join("commit.redb"), 1).unwrap();
        let mut ts = 1_000u64;
        let rounds = if full { 1_000 } else { 5 };
        // Warm up: the first commits grow a fresh file.
        for i in 0..rounds / 10 {
            ts += 1;
            db.commit(&id(10_000_000 + i as u32), ts).unwrap();
        }
        let mut time = |what: &str, key: &dyn Fn(usize) -> IdentityKey, db: &mut ReplayDb| {
            let mut samples = Vec::with_capacity(rounds);
            for i in 0..rounds {
                ts += 1;
                let k = key(i);
                let t = Instant::now();
                db.commit(&k, ts).unwrap();
                samples.push(t.elapsed());
            }
            samples.sort();
            format!(
                "commit (fsync), {what}, {rounds} samples: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
                percentile(&samples, 0.5),
                percentile(&samples, 0.9),
                percentile(&samples, 0.99),
                samples[samples.len() - 1],
            )
        };
        lines.push(time("new identity", &|i| id(i as u32), &mut db));
        lines.push(time(
            "raising an existing floor",
            &|i| id((i % 100) as u32),
            &mut db,
        ));
        let mut g = c.benchmark_group("store");
        if full {
            g.sample_size(30).measurement_time(Duration::from_secs(5));
        }
        g.bench_function("commit", |b| {
            b.iter(|| {
                ts += 1;
                db.commit(&id((ts % 1_000) as u32), ts).unwrap();
            })
        });
        g.bench_function("commit_pair", |b| {
            b.iter(|| {
                ts += 1;
                db.commit_pair((&id(7_000_000), ts), (&id((ts % 1_000) as u32), ts))
                    .unwrap();
            })
        });
        g.finish();
    }

    // The same commits under the replay reservation (SPEC §7.3.1): below the
    // durable R they only raise the in-memory floors; the background tick
    // (timed separately) writes them in one transaction.
    {
        let (mut db, _) = ReplayDb::open(&dir.path().join("reserved.redb"), 1).unwrap();
        let reserver = db.start_reservation(60_000, 1_000).unwrap();
        let rounds = if full { 10_000 } else { 50 };
        let mut ts = 2_000u64;
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds {
            ts += 1;
            let t = Instant::now();
            db.commit(&id((i % 1_000) as u32), ts).unwrap();
            samples.push(t.elapsed());
        }
        samples.sort();
        let t = Instant::now();
        let tick = reserver.tick(2_000).unwrap();
        let tick_time = t.elapsed();
        lines.push(format!(
            "commit (reservation), {rounds} samples over 1000 identities: p50 {:?}, p90 {:?}, \
             p99 {:?}, max {:?}; then one background tick wrote {} floors in {tick_time:?}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.9),
            percentile(&samples, 0.99),
            samples[samples.len() - 1],
            tick.floors_written,
        ));
    }

    // A store with n_ids identities, written in a few large transactions.
    let big = dir.path().join("big.redb");
    {
        let (mut db, _) = ReplayDb::open(&big, 1).unwrap();
        let t = Instant::now();
        let all: Vec<_> = (0..n_ids).map(|i| (id(i), 1_000 + u64::from(i))).collect();
        for chunk in all.chunks(10_000) {
            db.commit_many(chunk).unwrap();
        }
        lines.push(format!(
            "populate {n_ids} identities (commit_many, 10,000 per transaction): {:?}",
            t.elapsed()
        ));
    }
    let file_len = std::fs::metadata(&big).unwrap().len();
    lines.push(format!(
        "file size with {n_ids} identities: {} KiB",
        file_len / 1024
    ));

    // floor() among n_ids identities: hits and misses.
    {
        let (db, report) = ReplayDb::open(&big, 2).unwrap();
        assert_eq!(report.identities, n_ids as usize);
        let mut g = c.benchmark_group("store");
        let mut i = 0u32;
        g.bench_function(format!("floor/hit ({n_ids} identities)"), |b| {
            b.iter(|| {
                i = (i + 7_919) % n_ids;
                black_box(db.floor(black_box(&id(i))))
            })
        });
        let miss = id(u32::MAX);
        g.bench_function(format!("floor/miss ({n_ids} identities)"), |b| {
            b.iter(|| black_box(db.floor(black_box(&miss))))
        });
        // The key derivation alone, to subtract from "hit".
        g.bench_function("floor/key derivation only", |b| {
            b.iter(|| {
                i = (i + 7_919) % n_ids;
                black_box(id(i))
            })
        });
        g.finish();
    }

    // Resident memory, each in a fresh process: an empty store, then the big one.
    let empty = dir.path().join("empty.redb");
    drop(ReplayDb::open(&empty, 1).unwrap());
    let (e_before, e_after, e_hwm, e_open, _) = measure_rss(&empty);
    let (b_before, b_after, b_hwm, b_open, b_n) = measure_rss(&big);
    lines.push(format!(
        "VmRSS idle (process, nothing open): {e_before} KiB; empty store open: {e_after} KiB (+{} KiB), open {e_open:?}, VmHWM {e_hwm} KiB",
        e_after.saturating_sub(e_before)
    ));
    lines.push(format!(
        "VmRSS with {b_n} identities loaded: {b_after} KiB (+{} KiB over idle {b_before} KiB, {:.0} B/identity), open (integrity check + load) {b_open:?}, VmHWM {b_hwm} KiB",
        b_after.saturating_sub(b_before),
        (b_after.saturating_sub(b_before) * 1024) as f64 / b_n.max(1) as f64
    ));

    // Pruning every entry of the big store in one transaction.
    {
        let (mut db, _) = ReplayDb::open(&big, 3).unwrap();
        let t = Instant::now();
        let r = db.prune(u64::MAX, 60_000).unwrap();
        lines.push(format!(
            "prune {} identities (one transaction): {:?}",
            r.removed,
            t.elapsed()
        ));
    }

    c.final_summary();
    println!("\nreplay store ({}):", dir.path().display());
    for l in lines {
        println!("  {l}");
    }
}
