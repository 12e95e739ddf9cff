//! What the metrics endpoint costs (`spa_daemon::metrics`):
//!
//! ```text
//! cargo bench -p spa-daemon --bench metrics
//! ```
//!
//! - `knock_path/verify_plain` and `knock_path/verify_timed`: one valid
//!   knock through [`Gate::verify`] (precheck excluded; HPKE open,
//!   certificate, signature, replay check and commit) into a memory replay
//!   state, without and with the commit timer the daemon adds when
//!   `[metrics]` is on: the whole per-knock cost of metrics;
//! - `commit/plain` and `commit/timed`: the commit alone (memory state),
//!   which isolates the timer (two clock reads and one histogram
//!   observation);
//! - `publish/100_counters`: the sweep-timer publication (every 250 ms,
//!   not per knock) of 100 status counters and one red;
//! - `scrape/encode`: rendering the exposition text a scrape gets.
//!
//! Under `cargo test --all-targets` (no `--bench`) criterion runs each
//! once, as a smoke test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::{IdentityKey, TrustConfig, TrustStore};
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, ReplayState, TimeLimits};
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa, VECTOR_NOW};
use proto_spec::verify::KnockVerifier;
use spa_daemon::gate::Gate;
use spa_daemon::metrics::{Metrics, Timed};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));

fn knock_path(c: &mut Criterion) {
    let ca = TestCa::new("metrics bench root").unwrap();
    let alice = ca
        .signer(&ClientCertSpec::new("alice", KeyAlg::Ed25519, 7))
        .unwrap();
    let green = testkit::receiver_key("green");
    let green_pk = green.public_key();
    let trust = TrustStore::new(&TrustConfig {
        anchors: vec![ca.cert_der().to_vec()],
        ..TrustConfig::default()
    })
    .unwrap();
    let policy = Policy {
        rules: vec![Rule {
            identity: IdentityPattern::parse("cn:alice"),
            services: ServiceSet::All,
        }],
        ..Policy::default()
    };
    let mut verifier = KnockVerifier::new(vec![green], trust, policy, TimeLimits::default());
    let req = KnockRequest {
        msg_type: MessageType::OpenTunnel,
        timestamp_ms: VECTOR_NOW - 5,
        nonce: [0x11; 16],
        session_id: [0x22; 16],
        lifetime_s: 30,
        open_for: OpenFor::Addr(CLIENT),
        services: &["tunnel"],
    };
    let knock = seal_knock(alice.as_ref(), &green_pk, &req, [0x33; 32]).unwrap();
    let metrics = Metrics::new();
    let mut g = c.benchmark_group("knock_path");
    g.bench_function("verify_plain", |b| {
        b.iter_batched(
            MemoryReplayState::default,
            |mut st| {
                let d = Gate::verify(&mut verifier, &knock, CLIENT, VECTOR_NOW, &mut st);
                black_box(d.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify_timed", |b| {
        b.iter_batched(
            MemoryReplayState::default,
            |mut st| {
                let mut timed = Timed::new(&mut st, &metrics.commit);
                let d = Gate::verify(&mut verifier, &knock, CLIENT, VECTOR_NOW, &mut timed);
                black_box(d.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    // The knock was accepted (the benchmark measured the real path).
    let mut st = MemoryReplayState::default();
    assert!(Gate::verify(&mut verifier, &knock, CLIENT, VECTOR_NOW, &mut st).is_ok());
}

fn commit(c: &mut Criterion) {
    let metrics = Metrics::new();
    let id = IdentityKey([7; 32]);
    let mut g = c.benchmark_group("commit");
    let mut st = MemoryReplayState::default();
    let mut ts = 1_u64;
    g.bench_function("plain", |b| {
        b.iter(|| {
            ts += 1;
            st.commit(&id, ts).unwrap();
        })
    });
    let mut st = MemoryReplayState::default();
    g.bench_function("timed", |b| {
        b.iter(|| {
            ts += 1;
            Timed::new(&mut st, &metrics.commit)
                .commit(&id, ts)
                .unwrap();
        })
    });
    g.finish();
}

fn publish_and_scrape(c: &mut Criterion) {
    let mut metrics = Metrics::new();
    let mut counters: BTreeMap<String, u64> = (0..100)
        .map(|i| {
            let name = match i % 3 {
                0 => format!("refused.reason_{i}"),
                1 => format!("accepted.kind_{i}"),
                _ => format!("ips.event_{i}"),
            };
            (name, 1)
        })
        .collect();
    let hooks: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"relay":[{"red":"10.0.0.2:62202","pending":0,
            "counters":{"relay.orders_sent":1,"relay.confirmed":1,"relay.requests":1}}]}"#,
    )
    .unwrap();
    c.bench_function("publish/100_counters", |b| {
        b.iter(|| {
            for v in counters.values_mut() {
                *v += 1;
            }
            metrics.publish(&counters, 10, 1, &hooks);
        })
    });
    let registry = metrics.registry().unwrap();
    c.bench_function("scrape/encode", |b| {
        b.iter(|| black_box(Metrics::encode(registry).len()))
    });
}

criterion_group!(benches, knock_path, commit, publish_and_scrape);
criterion_main!(benches);
