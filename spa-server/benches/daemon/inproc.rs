//! Phase 0: the crypto floor and `KnockVerifier::verify` in-process.

#[allow(clippy::wildcard_imports)]
use super::*;

// ------------------------------------------------------------ phase 0

pub(crate) fn crypto_floor() -> f64 {
    let secret = x25519_dalek::StaticSecret::from(testkit::seed("floor x25519 secret"));
    let peer = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(testkit::seed(
        "floor x25519 peer",
    )));
    let sk = ed25519_dalek::SigningKey::from_bytes(&testkit::seed("floor ed25519"));
    let vk = sk.verifying_key();
    let mut rng = Rng(7);
    let msg: Vec<u8> = (0..600).map(|_| rng.next_u64() as u8).collect();
    let sig = ed25519_dalek::Signer::sign(&sk, &msg);
    let mut batches = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..300 {
            let ss = std::hint::black_box(&secret).diffie_hellman(std::hint::black_box(&peer));
            let ok = std::hint::black_box(&vk)
                .verify_strict(std::hint::black_box(&msg), std::hint::black_box(&sig))
                .is_ok();
            std::hint::black_box((ss.to_bytes()[0], ok));
        }
        batches.push(t.elapsed().as_secs_f64() / 300.0 * 1e6);
    }
    pct(&batches, 0.5)
}

/// In-process `KnockVerifier::verify` of a cached-certificate knock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inproc {
    /// Memory replay state: mean wall time per call, µs.
    pub(crate) mem_us: f64,
    /// redb store (one durable commit, fsync, per knock): mean, p50, p99
    /// wall time per call and CPU per call (this thread's schedstat), µs.
    pub(crate) db_us: f64,
    pub(crate) db_p50_us: f64,
    pub(crate) db_p99_us: f64,
    pub(crate) db_cpu_us: f64,
}

pub(crate) fn inprocess_verify(ca: &TestCa, f: &Files, rpk: &ReceiverPublicKey) -> Inproc {
    use proto_spec::cert::{TrustConfig, TrustStore};
    use proto_spec::replay::MemoryReplayState;
    use proto_spec::verify::KnockVerifier;
    let cfg = spa_daemon::config::load(&f.p("daemon.toml")).unwrap();
    let mk = || {
        KnockVerifier::new(
            vec![testkit::receiver_key("green daemon bench")],
            TrustStore::new(&TrustConfig {
                anchors: vec![ca.cert_der().to_vec()],
                ..TrustConfig::default()
            })
            .unwrap(),
            spa_daemon::start::policy(&cfg),
            spa_daemon::start::limits(&cfg),
        )
    };
    let id = Identity::new(ca, "inproc", 90);
    let src = Ipv4Addr::new(10, 200, 9, 9);
    let n = 300;
    let base = now_ms();
    let knocks: Vec<Vec<u8>> = (0..=n)
        .map(|i| id.knock_at(rpk, src, 30, base + i as u64))
        .collect();
    let now = base + n as u64;
    // Memory.
    let mut v = mk();
    let mut mem = MemoryReplayState::with_global_floor(base - 1000);
    v.verify(&knocks[0], IpAddr::V4(src), now, &mut mem)
        .unwrap();
    let t = Instant::now();
    for k in &knocks[1..] {
        v.verify(k, IpAddr::V4(src), now, &mut mem).unwrap();
    }
    let mem_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    // redb, on the same file system as the daemon's store.
    let mut v = mk();
    let (mut db, _) = ReplayDb::open(&f.p("inproc.redb"), base - 1000).unwrap();
    v.verify(&knocks[0], IpAddr::V4(src), now, &mut db).unwrap();
    let me = Path::new("/proc/thread-self");
    let mut per = Vec::with_capacity(n);
    let c0 = task_cpu(me, 100.0);
    let t = Instant::now();
    for k in &knocks[1..] {
        let t1 = Instant::now();
        v.verify(k, IpAddr::V4(src), now, &mut db).unwrap();
        per.push(t1.elapsed().as_secs_f64() * 1e6);
    }
    let db_us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    let db_cpu_us = (task_cpu(me, 100.0) - c0).sched_s / n as f64 * 1e6;
    Inproc {
        mem_us,
        db_us,
        db_p50_us: pct(&per, 0.5),
        db_p99_us: pct(&per, 0.99),
        db_cpu_us,
    }
}
