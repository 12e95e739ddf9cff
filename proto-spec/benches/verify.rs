//! Criterion benchmarks of the verification hot paths, with the crypto floor
//! (one X25519 + one Ed25519 verification) measured in the same run.
//!
//! Run pinned to one core:
//!
//! ```text
//! taskset -c 1 cargo bench -p proto-spec --bench verify
//! ```
//!
//! Every benchmark is single-threaded. Knocks and orders that must be
//! accepted are generated in setup with strictly increasing timestamps, all
//! fresh at a fixed `now`, and replayed in order against a fresh
//! `MemoryReplayState` per pass (created and dropped outside the timed
//! region), so the replay floor never refuses one. Every timed verification
//! is checked to have succeeded (a counter, asserted after timing).
//!
//! Benchmarks named `parts/...` are sub-measurements used to explain where
//! the time of the full verifications goes; they have no target.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use proto_spec::Refusal;
use proto_spec::body::{MessageType, OpenFor, parse_body};
use proto_spec::cert::{CertCache, TrustConfig, TrustStore, parse_client_cert};
use proto_spec::keys::ReceiverSecretKey;
use proto_spec::order::OrderFields;
use proto_spec::policy::Policy;
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::seal::{KnockRequest, seal_knock, seal_order};
use proto_spec::sign::{GatewaySigner, KNOCK_SIGNATURE_CONTEXT, Signer, transcript};
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use proto_spec::verify::{Gateway, KnockVerifier, OrderVerifier};

/// The fixed `now` of every benchmark.
const NOW: u64 = testkit::VECTOR_NOW;
/// Pre-generated knocks (and orders) per key type. Timestamps run from
/// `NOW - 55 s` in steps of 3 ms, so the newest is `NOW + 5 s`: all inside
/// the default freshness window (60 s back, 10 s ahead).
const N_KNOCKS_BENCH: usize = 20_000;
const N_ORDERS_BENCH: usize = 10_000;

/// Under `cargo test --all-targets` criterion runs each benchmark once (no
/// `--bench` argument): a few knocks are enough, and generating 20,000 in a
/// debug build would cost most of a minute.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn scaled(n: usize) -> usize {
    if bench_mode() { n } else { 64 }
}
const TS_START: u64 = NOW - 55_000;
const TS_STEP: u64 = 3;
const CLIENT_IP: &str = "10.200.1.2";
const GREEN_IP: &str = "10.200.2.1";
const ALICE_SERIAL_ED: u64 = 0x1001;
const ALICE_SERIAL_P256: u64 = 0x1002;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct World {
    ca: TestCa,
    green_key: ReceiverSecretKey,
    red_key: ReceiverSecretKey,
    gateway: GatewaySigner,
    /// A CRL from the CA revoking somebody else (so alice stays valid but the
    /// revocation check runs in full).
    crl: Vec<u8>,
}

impl World {
    fn new() -> Self {
        let ca = TestCa::new("spa bench root").unwrap();
        let crl = ca
            .crl(&[0xdead, 0xbeef, 0x0bad], NOW - 3_600_000, NOW + 86_400_000)
            .unwrap();
        Self {
            ca,
            green_key: testkit::receiver_key("green"),
            red_key: testkit::receiver_key("red"),
            gateway: testkit::gateway_signer("green signing"),
            crl,
        }
    }

    fn trust(&self, with_crl: bool) -> TrustStore {
        TrustStore::new(&TrustConfig {
            anchors: vec![self.ca.cert_der().to_vec()],
            crls: if with_crl {
                vec![self.crl.clone()]
            } else {
                vec![]
            },
            ..TrustConfig::default()
        })
        .unwrap()
    }

    fn policy() -> Policy {
        testkit::flow_policy()
    }

    fn green(&self, with_crl: bool) -> KnockVerifier {
        KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            self.trust(with_crl),
            Self::policy(),
            TimeLimits::default(),
        )
    }

    fn red(&self) -> OrderVerifier {
        OrderVerifier::new(
            vec![testkit::receiver_key("red")],
            vec![Gateway {
                signing_key: self.gateway.public_key(),
                receiver_keys: vec![self.green_key.public_key()],
            }],
            self.trust(false),
            Self::policy(),
            TimeLimits::default(),
            TimeLimits::default(),
        )
        .unwrap()
    }

    fn alice(&self, alg: KeyAlg) -> Box<dyn Signer + Send + Sync> {
        let serial = match alg {
            KeyAlg::Ed25519 => ALICE_SERIAL_ED,
            KeyAlg::P256 => ALICE_SERIAL_P256,
        };
        self.ca
            .signer(&ClientCertSpec::new("alice", alg, serial))
            .unwrap()
    }
}

fn request<'a>(
    msg_type: MessageType,
    ts: u64,
    i: u64,
    services: &'a [&'a str],
) -> KnockRequest<'a> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&i.to_be_bytes());
    KnockRequest {
        msg_type,
        timestamp_ms: ts,
        nonce,
        session_id: [0x22; 16],
        lifetime_s: 30,
        open_for: OpenFor::Addr(ip(CLIENT_IP)),
        services,
    }
}

fn ikm(i: u64, tag: u8) -> [u8; 32] {
    let mut k = [tag; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k
}

/// `n` valid knocks from `signer` with increasing timestamps.
fn knocks(w: &World, signer: &dyn Signer, n: usize) -> Vec<Vec<u8>> {
    let pk = w.green_key.public_key();
    (0..n as u64)
        .map(|i| {
            let req = request(
                MessageType::OpenTunnel,
                TS_START + i * TS_STEP,
                i,
                &["tunnel"],
            );
            seal_knock(signer, &pk, &req, ikm(i, 0x33)).unwrap()
        })
        .collect()
}

/// splitmix64: a fixed-seed pseudo-random byte stream.
fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Times `iters` accepted knock verifications, cycling through `knocks` with
/// a fresh replay store per pass (outside the timed region). If
/// `fresh_trust` is given, the verifier's trust store is replaced before
/// every verification (outside the timed region), which empties the
/// certificate cache.
fn time_knocks(
    v: &mut KnockVerifier,
    knocks: &[Vec<u8>],
    iters: u64,
    fresh_trust: Option<&dyn Fn() -> TrustStore>,
) -> Duration {
    let source = ip(CLIENT_IP);
    let mut total = Duration::ZERO;
    let mut remaining = iters as usize;
    let mut ok = 0usize;
    while remaining > 0 {
        let chunk = remaining.min(knocks.len());
        let mut replay = MemoryReplayState::default();
        match fresh_trust {
            None => {
                let start = Instant::now();
                for d in &knocks[..chunk] {
                    let r = v.verify(black_box(d), source, NOW, &mut replay);
                    ok += usize::from(black_box(r).is_ok());
                }
                total += start.elapsed();
            }
            Some(make) => {
                for d in &knocks[..chunk] {
                    v.replace_trust(make());
                    let start = Instant::now();
                    let r = v.verify(black_box(d), source, NOW, &mut replay);
                    ok += usize::from(black_box(r).is_ok());
                    total += start.elapsed();
                }
            }
        }
        drop(replay);
        remaining -= chunk;
    }
    assert_eq!(ok, iters as usize, "every timed knock must be accepted");
    total
}

fn benches(c: &mut Criterion) {
    let w = World::new();
    let alice_ed = w.alice(KeyAlg::Ed25519);
    let alice_p256 = w.alice(KeyAlg::P256);

    let t0 = Instant::now();
    let n_knocks = scaled(N_KNOCKS_BENCH);
    let knocks_ed = knocks(&w, alice_ed.as_ref(), n_knocks);
    let t_ed = t0.elapsed();
    let t0 = Instant::now();
    let knocks_p256 = knocks(&w, alice_p256.as_ref(), n_knocks);
    let t_p256 = t0.elapsed();
    eprintln!(
        "setup: {n_knocks} Ed25519 knocks in {t_ed:?}, {n_knocks} P-256 knocks in {t_p256:?}; \
         knock sizes: Ed25519 {} B (certificate {} B), P-256 {} B (certificate {} B)",
        knocks_ed[0].len(),
        alice_ed.certificate_der().len(),
        knocks_p256[0].len(),
        alice_p256.certificate_der().len(),
    );

    // ---------------------------------------------------------------- 1
    let mut random = pseudo_random_bytes(0x5a5a_5eed_0600_0001, 600);
    random[0] = 0x01;
    {
        let mut v = w.green(false);
        let mut replay = MemoryReplayState::default();
        assert_eq!(
            v.verify(&random, ip(CLIENT_IP), NOW, &mut replay).err(),
            Some(Refusal::MacMismatch)
        );
        let source = ip(CLIENT_IP);
        c.bench_function("refuse_random_600B", |b| {
            b.iter(|| {
                let r = v.verify(black_box(&random), source, NOW, &mut replay);
                debug_assert_eq!(r.as_ref().err(), Some(&Refusal::MacMismatch));
                black_box(r.is_err())
            })
        });
    }

    // ---------------------------------------------------------------- 2
    {
        let secret = x25519_dalek::StaticSecret::from(testkit::seed("floor x25519 secret"));
        let peer_secret = x25519_dalek::StaticSecret::from(testkit::seed("floor x25519 peer"));
        let peer = x25519_dalek::PublicKey::from(&peer_secret);
        let sk = ed25519_dalek::SigningKey::from_bytes(&testkit::seed("floor ed25519"));
        let vk = sk.verifying_key();
        let msg = pseudo_random_bytes(600, 600);
        let sig = ed25519_dalek::Signer::sign(&sk, &msg);
        assert!(vk.verify_strict(&msg, &sig).is_ok());
        c.bench_function("floor_x25519_plus_ed25519", |b| {
            b.iter(|| {
                let ss = black_box(&secret).diffie_hellman(black_box(&peer));
                let ok = black_box(&vk)
                    .verify_strict(black_box(&msg), black_box(&sig))
                    .is_ok();
                black_box((ss.to_bytes()[0], ok))
            })
        });
        c.bench_function("parts/x25519_dh", |b| {
            b.iter(|| {
                black_box(
                    black_box(&secret)
                        .diffie_hellman(black_box(&peer))
                        .to_bytes()[0],
                )
            })
        });
        c.bench_function("parts/ed25519_verify_strict_600B", |b| {
            b.iter(|| {
                black_box(
                    black_box(&vk)
                        .verify_strict(black_box(&msg), black_box(&sig))
                        .is_ok(),
                )
            })
        });
    }

    // ---------------------------------------------------------------- 3
    {
        let mut v = w.green(false);
        // Warm the cache with one accepted knock.
        let mut replay = MemoryReplayState::default();
        v.verify(&knocks_ed[0], ip(CLIENT_IP), NOW, &mut replay)
            .unwrap();
        assert_eq!(v.authenticator().cached(), 1);
        c.bench_function("verify_knock_cached_ed25519", |b| {
            b.iter_custom(|iters| time_knocks(&mut v, &knocks_ed, iters, None))
        });
        assert_eq!(v.authenticator().cached(), 1);
    }

    // ---------------------------------------------------------------- 4
    for with_crl in [false, true] {
        let mut v = w.green(with_crl);
        let make = || w.trust(with_crl);
        let name = if with_crl {
            "verify_knock_first_time_ed25519_with_crl"
        } else {
            "verify_knock_first_time_ed25519"
        };
        c.bench_function(name, |b| {
            b.iter_custom(|iters| time_knocks(&mut v, &knocks_ed, iters, Some(&make)))
        });
    }
    {
        // The cached path with a CRL loaded: the cache must make the CRL free.
        let mut v = w.green(true);
        let mut replay = MemoryReplayState::default();
        v.verify(&knocks_ed[0], ip(CLIENT_IP), NOW, &mut replay)
            .unwrap();
        c.bench_function("verify_knock_cached_ed25519_with_crl", |b| {
            b.iter_custom(|iters| time_knocks(&mut v, &knocks_ed, iters, None))
        });
    }

    // ---------------------------------------------------------------- 5
    {
        let mut v = w.green(false);
        let mut replay = MemoryReplayState::default();
        v.verify(&knocks_p256[0], ip(CLIENT_IP), NOW, &mut replay)
            .unwrap();
        c.bench_function("verify_knock_cached_p256", |b| {
            b.iter_custom(|iters| time_knocks(&mut v, &knocks_p256, iters, None))
        });
    }

    // ---------------------------------------------------------------- 6
    {
        let pk = w.green_key.public_key();
        let req = request(MessageType::OpenTunnel, NOW, 1, &["tunnel"]);
        c.bench_function("seal_knock_ed25519", |b| {
            b.iter(|| {
                black_box(
                    seal_knock(
                        black_box(alice_ed.as_ref()),
                        &pk,
                        black_box(&req),
                        black_box([0x33; 32]),
                    )
                    .unwrap(),
                )
            })
        });
        c.bench_function("seal_knock_p256", |b| {
            b.iter(|| {
                black_box(
                    seal_knock(
                        black_box(alice_p256.as_ref()),
                        &pk,
                        black_box(&req),
                        black_box([0x33; 32]),
                    )
                    .unwrap(),
                )
            })
        });
    }

    // ---------------------------------------------------------------- 7
    {
        // One request-service body, relayed in N orders with increasing
        // order timestamps (strict floor per gateway); the client body's
        // floor is "at least", so the same body passes every time.
        let mut green = w.green(false);
        let mut gr = MemoryReplayState::default();
        let req = request(MessageType::RequestService, NOW - 56_000, 0, &["ssh"]);
        let d = seal_knock(alice_ed.as_ref(), &w.green_key.public_key(), &req, [7; 32]).unwrap();
        let k = green.verify(&d, ip(CLIENT_IP), NOW, &mut gr).unwrap();
        let red_pk = w.red_key.public_key();
        let orders: Vec<Vec<u8>> = (0..scaled(N_ORDERS_BENCH) as u64)
            .map(|i| {
                seal_order(
                    &w.gateway,
                    &red_pk,
                    &OrderFields {
                        order_timestamp_ms: TS_START + i * TS_STEP,
                        session_id: [0x22; 16],
                        lifetime_s: k.lifetime_s,
                        open_for: ip(GREEN_IP),
                        client_body: &k.body,
                    },
                    ikm(i, 0x44),
                )
                .unwrap()
            })
            .collect();
        eprintln!("setup: order size {} B", orders[0].len());
        let mut red = w.red();
        let mut rr = MemoryReplayState::default();
        red.verify(&orders[0], ip(GREEN_IP), NOW, &mut rr).unwrap();
        let source = ip(GREEN_IP);
        c.bench_function("verify_order_cached", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut remaining = iters as usize;
                let mut ok = 0usize;
                while remaining > 0 {
                    let chunk = remaining.min(orders.len());
                    let mut replay = MemoryReplayState::default();
                    let start = Instant::now();
                    for o in &orders[..chunk] {
                        let r = red.verify(black_box(o), source, NOW, &mut replay);
                        ok += usize::from(black_box(r).is_ok());
                    }
                    total += start.elapsed();
                    drop(replay);
                    remaining -= chunk;
                }
                assert_eq!(ok, iters as usize, "every timed order must be accepted");
                total
            })
        });
    }

    // ---------------------------------------------------- sub-measurements
    {
        let v = w.green(false);
        let d = &knocks_ed[0];
        assert_eq!(v.keys().precheck(d), Ok(()));
        c.bench_function("parts/precheck_mac_valid_knock", |b| {
            b.iter(|| black_box(v.keys().precheck(black_box(d)).is_ok()))
        });
    }
    {
        // Frame + MAC + HPKE open (X25519, HKDF, ChaCha20-Poly1305) + body
        // parse, then refused as stale before any certificate work.
        let mut v = w.green(false);
        let mut replay = MemoryReplayState::default();
        let late = NOW + 3_600_000;
        let d = &knocks_ed[0];
        assert_eq!(
            v.verify(d, ip(CLIENT_IP), late, &mut replay).err(),
            Some(Refusal::Stale)
        );
        let source = ip(CLIENT_IP);
        c.bench_function("parts/open_and_parse_then_stale", |b| {
            b.iter(|| black_box(v.verify(black_box(d), source, late, &mut replay).is_err()))
        });
    }
    {
        let mut v = w.green(false);
        let mut replay = MemoryReplayState::default();
        let k = v
            .verify(&knocks_ed[0], ip(CLIENT_IP), NOW, &mut replay)
            .unwrap();
        let body = k.body.clone();
        let parsed = parse_body(&body).unwrap();
        let cert = parsed.certificate.to_vec();
        let pk = w.green_key.public_key();
        c.bench_function("parts/parse_body", |b| {
            b.iter(|| black_box(parse_body(black_box(&body)).is_ok()))
        });
        c.bench_function("parts/cert_cache_key_sha256", |b| {
            b.iter(|| black_box(CertCache::key(black_box(&cert))))
        });
        c.bench_function("parts/transcript_build", |b| {
            b.iter(|| {
                black_box(transcript(
                    KNOCK_SIGNATURE_CONTEXT,
                    &pk,
                    black_box(parsed.signed_part),
                ))
            })
        });
        let client_key = parse_client_cert(&cert).unwrap().public_key;
        let t = transcript(KNOCK_SIGNATURE_CONTEXT, &pk, parsed.signed_part);
        assert!(client_key.verify(&t, parsed.signature));
        c.bench_function("parts/client_ed25519_verify_transcript", |b| {
            b.iter(|| black_box(client_key.verify(black_box(&t), black_box(parsed.signature))))
        });
        {
            // For comparison only: the same signature checked by ring (which
            // proto-spec already links through rustls-webpki).
            let der = rustls_pki_types::CertificateDer::from(cert.as_slice());
            let ee = webpki::EndEntityCert::try_from(&der).unwrap();
            let sig = parsed.signature.as_slice();
            ee.verify_signature(webpki::ring::ED25519, &t, sig).unwrap();
            c.bench_function("parts/client_ed25519_verify_transcript_ring", |b| {
                b.iter(|| {
                    black_box(
                        ee.verify_signature(webpki::ring::ED25519, black_box(&t), black_box(sig))
                            .is_ok(),
                    )
                })
            });
        }
        c.bench_function("parts/parse_client_cert_ed25519", |b| {
            b.iter(|| black_box(parse_client_cert(black_box(&cert)).is_ok()))
        });
        let trust = w.trust(false);
        let trust_crl = w.trust(true);
        assert_eq!(trust.validate(&cert, NOW), Ok(()));
        assert_eq!(trust_crl.validate(&cert, NOW), Ok(()));
        c.bench_function("parts/trust_validate_ed25519", |b| {
            b.iter(|| black_box(trust.validate(black_box(&cert), NOW).is_ok()))
        });
        c.bench_function("parts/trust_validate_ed25519_with_crl", |b| {
            b.iter(|| black_box(trust_crl.validate(black_box(&cert), NOW).is_ok()))
        });
        c.bench_function("parts/trust_store_new", |b| {
            b.iter(|| black_box(w.trust(false)))
        });
    }
    {
        let mut v = w.green(false);
        let mut replay = MemoryReplayState::default();
        let k = v
            .verify(&knocks_p256[0], ip(CLIENT_IP), NOW, &mut replay)
            .unwrap();
        let parsed = parse_body(&k.body).unwrap();
        let client_key = parse_client_cert(parsed.certificate).unwrap().public_key;
        let t = transcript(
            KNOCK_SIGNATURE_CONTEXT,
            &w.green_key.public_key(),
            parsed.signed_part,
        );
        assert!(client_key.verify(&t, parsed.signature));
        c.bench_function("parts/client_p256_verify_transcript", |b| {
            b.iter(|| black_box(client_key.verify(black_box(&t), black_box(parsed.signature))))
        });
        // For comparison only: the same signature checked by ring.
        let der = rustls_pki_types::CertificateDer::from(parsed.certificate);
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        let sig = ecdsa_raw_to_der(parsed.signature);
        ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, &t, &sig)
            .unwrap();
        c.bench_function("parts/client_p256_verify_transcript_ring", |b| {
            b.iter(|| {
                black_box(
                    ee.verify_signature(
                        webpki::ring::ECDSA_P256_SHA256,
                        black_box(&t),
                        black_box(&sig),
                    )
                    .is_ok(),
                )
            })
        });
    }
}

/// ECDSA `r || s` (32 + 32 bytes) to the DER `SEQUENCE { INTEGER r, INTEGER s }`
/// ring expects.
fn ecdsa_raw_to_der(raw: &[u8; 64]) -> Vec<u8> {
    fn int(x: &[u8]) -> Vec<u8> {
        let mut x = x;
        while x.len() > 1 && x[0] == 0 {
            x = &x[1..];
        }
        let mut out = vec![0x02];
        if x[0] & 0x80 != 0 {
            out.push(x.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(x.len() as u8);
        }
        out.extend_from_slice(x);
        out
    }
    let (r, s) = raw.split_at(32);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args()
}

criterion_group! {
    name = verify;
    config = config();
    targets = benches
}
criterion_main!(verify);
