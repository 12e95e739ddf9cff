//! Signing and verifying knocks with token keys: a software Ed25519 key
//! (`proto_spec::sign::Ed25519Signer`, the baseline), an Ed25519 key and a
//! P-256 key on SoftHSM2 (through `Pkcs11Signer`, which also verifies each
//! signature against the certificate before returning it).
//!
//! ```text
//! taskset -c 1 cargo bench -p spa-client --bench sign
//! ```
//!
//! - `seal_knock/*`: one full `seal_knock` (body, token signature, local
//!   signature check, HPKE seal, MAC).
//! - `verify_knock_cached/*`: green's `KnockVerifier::verify` with a warm
//!   certificate cache. Knocks are pre-generated with increasing timestamps
//!   and replayed in order against a fresh `MemoryReplayState` per pass
//!   (made outside the timed region), so none hits the replay floor; every
//!   timed verification is checked to have succeeded.
//! - `parts/token_sign/*`: the bare `C_Sign` round trip (no local check).
//!
//! Like the token tests, the benchmark re-runs itself in a child process
//! whose `SOFTHSM2_CONF` names a fresh SoftHSM2 (see
//! `tests/token_support`). Under `cargo test` (no `--bench` argument) it
//! generates only a few knocks, so the single test-mode pass takes about a
//! second.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/token_support/mod.rs"]
mod token_support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use proto_spec::replay::MemoryReplayState;
use proto_spec::sign::{Ed25519Signer, SignatureAlgorithm, Signer};
use proto_spec::verify::KnockVerifier;
use spa_client::token::pkcs11::{Pkcs11Signer, TokenSelector, generate_key_pair};
use spa_client::token::{CertificateSource, PinSource};
use token_support::{Ca, NOW, client_csr_params, client_ip, green, knock, softhsm_module};

/// Knocks pre-generated per key (timestamps `NOW - 55 s + 3 ms * i`, all
/// fresh at `NOW`).
fn n_knocks() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        4000
    } else {
        4
    }
}
const TS_START: u64 = NOW - 55_000;
const TS_STEP: u64 = 3;

struct Keys {
    ca: Ca,
    software: Ed25519Signer,
    hsm_ed25519: Pkcs11Signer,
    hsm_p256: Pkcs11Signer,
}

fn keys() -> Keys {
    let module = softhsm_module();
    let ca = Ca::new("spa bench CA");
    let dir = token_support::scratch("bench-sign");
    let (cert, key) = ca.issue_software("alice", &rcgen::PKCS_ED25519, false);
    let software =
        Ed25519Signer::from_pkcs8_der(&key.serialize_der(), cert.der().to_vec()).unwrap();
    let token = TokenSelector::Label("spa-bench".into());
    let pin = PinSource::Env("SPA_TEST_PIN".into());
    let mut hsm = Vec::new();
    for (i, alg) in [
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::EcdsaP256Sha256,
    ]
    .into_iter()
    .enumerate()
    {
        let label = format!("bench-{i}");
        let key = generate_key_pair(&module, &token, &label, &[i as u8 + 1], alg, &pin).unwrap();
        let csr = key.csr(&client_csr_params("alice")).unwrap();
        let cert = ca.issue_from_csr(csr.der(), 10 + i as u64);
        let path = dir.join(format!("{label}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        hsm.push(Pkcs11Signer::new(key, &CertificateSource::File(path)).unwrap());
    }
    let hsm_p256 = hsm.pop().unwrap();
    let hsm_ed25519 = hsm.pop().unwrap();
    Keys {
        ca,
        software,
        hsm_ed25519,
        hsm_p256,
    }
}

fn knocks(signer: &dyn Signer, n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| knock(signer, TS_START + i * TS_STEP, i))
        .collect()
}

/// Times `iters` accepted verifications, cycling through `knocks` with a
/// fresh replay store per pass (outside the timed region).
fn time_knocks(v: &mut KnockVerifier, knocks: &[Vec<u8>], iters: u64) -> Duration {
    let source = client_ip();
    let mut total = Duration::ZERO;
    let mut remaining = iters as usize;
    let mut ok = 0usize;
    while remaining > 0 {
        let chunk = remaining.min(knocks.len());
        let mut replay = MemoryReplayState::default();
        let start = Instant::now();
        for d in &knocks[..chunk] {
            let r = v.verify(black_box(d), source, NOW, &mut replay);
            ok += usize::from(black_box(r).is_ok());
        }
        total += start.elapsed();
        drop(replay);
        remaining -= chunk;
    }
    assert_eq!(ok, iters as usize, "every timed knock must be accepted");
    total
}

fn benches(c: &mut Criterion) {
    let k = keys();
    let signers: [(&str, &dyn Signer); 3] = [
        ("software_ed25519", &k.software),
        ("softhsm_ed25519", &k.hsm_ed25519),
        ("softhsm_p256", &k.hsm_p256),
    ];

    for (name, signer) in signers {
        let mut i = 0u64;
        c.bench_function(&format!("seal_knock/{name}"), |b| {
            b.iter(|| {
                i += 1;
                black_box(knock(black_box(signer), NOW, i))
            })
        });
    }

    for (name, signer) in signers {
        let n = n_knocks();
        let t0 = Instant::now();
        let pre = knocks(signer, n);
        eprintln!(
            "setup: {n} {name} knocks in {:?} ({} B each)",
            t0.elapsed(),
            pre[0].len()
        );
        let mut v = green(k.ca.cert_der(), "alice");
        // Warm the certificate cache.
        v.verify(&pre[0], client_ip(), NOW, &mut MemoryReplayState::default())
            .unwrap();
        assert_eq!(v.authenticator().cached(), 1);
        c.bench_function(&format!("verify_knock_cached/{name}"), |b| {
            b.iter_custom(|iters| time_knocks(&mut v, &pre, iters))
        });
    }

    let transcript = vec![0x5a; 600];
    for (name, signer) in [("ed25519", &k.hsm_ed25519), ("p256", &k.hsm_p256)] {
        c.bench_function(&format!("parts/token_sign/{name}"), |b| {
            b.iter(|| black_box(signer.key().sign_message(black_box(&transcript)).unwrap()))
        });
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args()
}

criterion_group! {
    name = sign;
    config = config();
    targets = benches
}

fn main() {
    if !token_support::is_child() {
        // Run again inside a fresh SoftHSM2 holding the benchmark's token.
        let status = token_support::child_command("bench-sign", &["spa-bench"])
            .args(std::env::args_os().skip(1))
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    sign();
    Criterion::default().configure_from_args().final_summary();
}
