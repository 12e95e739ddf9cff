//! Time per set-element insertion through the netlink client
//! ([`NftSets::allow`]), against one `nft add element` process.
//!
//! Needs root: it re-executes itself under `unshare --net` and works in
//! that fresh network namespace (the host firewall is never touched). Run
//! it with `cargo bench -p spa-server --bench nft`. Without `--bench` (as
//! in `cargo test --all-targets`) criterion runs each benchmark once, as a
//! smoke test; without root it fails unless `SPA_TEST_ALLOW_SKIP=1`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use spa_nft::{FirewallConfig, Mode, NftSets, Proto, Ruleset};

const IN_NETNS: &str = "SPA_IN_NETNS";

fn main() {
    if std::env::var_os(IN_NETNS).is_none() {
        if !nix::unistd::geteuid().is_root() {
            tests::cannot_run("nft bench", "needs root for a network namespace");
            return;
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("nft bench: cannot find the bench binary: {e}");
                std::process::exit(1);
            }
        };
        let status = Command::new("unshare")
            .arg("--net")
            .arg("--")
            .arg(exe)
            .args(std::env::args().skip(1))
            .env(IN_NETNS, "1")
            .status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) => {
                eprintln!("nft bench: failed in its namespace ({s})");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("nft bench: cannot run unshare: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Err(e) = run() {
        eprintln!("nft bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let lo = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    if !lo.success() {
        return Err("ip link set lo up failed".into());
    }
    Ruleset::install(&FirewallConfig::new(Mode::Blackhole {
        udp_knock_port: None,
    }))?;
    let mut sets = NftSets::open("spa")?;
    println!("refresh strategy of this kernel: {:?}", sets.refresh());

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    // New elements: distinct keys, short timeouts so that the kernel's
    // garbage collector keeps the set small.
    let mut i: u32 = 0;
    c.bench_function("nft/allow new element (netlink)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            // 198.18.0.0/15 (benchmarking range) x ports 1..=32768.
            let addr = Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff));
            let port = 1 + ((i >> 17) & 0x7fff) as u16;
            sets.allow(IpAddr::V4(addr), Proto::Tcp, port, Duration::from_secs(2))
                .expect("allow");
        })
    });

    // Refreshing one element again and again.
    let fixed = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));
    c.bench_function("nft/allow refresh (netlink)", |b| {
        b.iter(|| {
            sets.allow(black_box(fixed), Proto::Tcp, 22, Duration::from_secs(30))
                .expect("allow");
        })
    });

    // The Replace strategy (add, delete, add) that older kernels need.
    let detected = sets.refresh();
    sets.set_refresh(spa_nft::Refresh::Replace);
    c.bench_function("nft/allow refresh, replace strategy (netlink)", |b| {
        b.iter(|| {
            sets.allow(black_box(fixed), Proto::Tcp, 22, Duration::from_secs(30))
                .expect("allow");
        })
    });
    sets.set_refresh(detected);

    let four = [
        (fixed, Proto::Tcp, 22),
        (fixed, Proto::Tcp, 443),
        (fixed, Proto::Udp, 51820),
        (IpAddr::V6("2001:db8::1".parse()?), Proto::Tcp, 22),
    ];
    c.bench_function("nft/allow_many 4 (netlink)", |b| {
        b.iter(|| {
            sets.allow_many(black_box(&four), Duration::from_secs(30))
                .expect("allow_many");
        })
    });

    let mut group = c.benchmark_group("nft process");
    group.sample_size(10);
    group.bench_function("nft add element (one process)", |b| {
        b.iter(|| {
            let st = Command::new("nft")
                .args([
                    "add",
                    "element",
                    "inet",
                    "spa",
                    "allow4",
                    "{ 198.19.0.2 . tcp . 22 timeout 30s }",
                ])
                .status()
                .expect("run nft");
            assert!(st.success());
        })
    });
    group.finish();
    c.final_summary();
    Ruleset::remove("spa")?;
    Ok(())
}
