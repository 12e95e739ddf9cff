//! Shared fixtures for the fuzz targets and the seed generator.
//!
//! Everything here is deterministic: the keys and the CA come from
//! `proto_spec::testkit`'s fixed seeds, `now` is `testkit::VECTOR_NOW`, the
//! source address is fixed, and every run starts from an empty replay store
//! and an empty certificate cache, so that a crash reproduces from its input
//! alone.
//!
//! The CA is generated once per process (rcgen is slow); the verifiers are
//! built once and kept behind a mutex, their certificate cache reset before
//! any run that follows one which may have filled it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use hmac::{Hmac, KeyInit, Mac};
use proto_spec::Refusal;
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::keys::{ReceiverPublicKey, mac_key};
use proto_spec::policy::Policy;
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::testkit::{self, TestCa};
use proto_spec::verify::{Gateway, Knock, KnockVerifier, Order, OrderVerifier};
use proto_spec::wire::{DatagramKind, MAC_LEN, VERSION};
use sha2::Sha256;

/// The fixed `now` of every target (the test vectors' `now`).
pub const NOW: u64 = testkit::VECTOR_NOW;
/// The fixed source address of knocks (the test vectors' client address).
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));
/// The fixed source address of orders (green's address toward red).
pub const GREEN_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 2, 1));
/// The name of the test CA (as in proto-spec's tests and vectors).
pub const CA_NAME: &str = "spa test root";
/// The fixed HPKE ephemeral key material of the `verifier` target.
pub const IKM_E: [u8; 32] = [0x5a; 32];

/// The test CA. Generated once.
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| TestCa::new(CA_NAME).expect("fixture: test CA"))
}

/// A fresh trust store with the test CA as the only anchor, no CRL.
pub fn trust() -> TrustStore {
    TrustStore::new(&TrustConfig {
        anchors: vec![ca().cert_der().to_vec()],
        ..TrustConfig::default()
    })
    .expect("fixture: trust store")
}

/// The policy of both verifiers: the rules of proto-spec's flow tests, with
/// source mode allowed so that that path reaches authorization too.
pub fn policy() -> Policy {
    Policy {
        allow_source_mode: true,
        ..testkit::flow_policy()
    }
}

/// Green's knock receiver public key.
pub fn green_public() -> ReceiverPublicKey {
    static PK: OnceLock<ReceiverPublicKey> = OnceLock::new();
    *PK.get_or_init(|| testkit::receiver_key("green").public_key())
}

/// Red's order receiver public key.
pub fn red_public() -> ReceiverPublicKey {
    static PK: OnceLock<ReceiverPublicKey> = OnceLock::new();
    *PK.get_or_init(|| testkit::receiver_key("red").public_key())
}

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // A panic while holding the lock aborts the fuzzer anyway; never panic
    // a second time on the poison.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn green() -> &'static Mutex<KnockVerifier> {
    static GREEN: OnceLock<Mutex<KnockVerifier>> = OnceLock::new();
    GREEN.get_or_init(|| {
        Mutex::new(KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            trust(),
            policy(),
            TimeLimits::default(),
        ))
    })
}

fn red() -> &'static Mutex<OrderVerifier> {
    static RED: OnceLock<Mutex<OrderVerifier>> = OnceLock::new();
    RED.get_or_init(|| {
        Mutex::new(
            OrderVerifier::new(
                vec![testkit::receiver_key("red")],
                vec![Gateway {
                    signing_key: testkit::gateway_signer("green signing").public_key(),
                    receiver_keys: vec![green_public()],
                }],
                trust(),
                policy(),
                TimeLimits::default(),
                TimeLimits::default(),
            )
            .expect("fixture: red verifier"),
        )
    })
}

/// Refusals given before any certificate is looked at: after them the
/// verifier's certificate cache is unchanged.
fn before_certificates(r: &Result<impl Sized, Refusal>) -> bool {
    matches!(
        r,
        Err(Refusal::TooShort | Refusal::TooLong | Refusal::BadVersion | Refusal::MacMismatch)
    )
}

/// Green's verifier on `datagram`: source [`CLIENT_IP`], `now` [`NOW`], an
/// empty replay store and an empty certificate cache.
pub fn verify_knock(datagram: &[u8]) -> Result<Knock, Refusal> {
    static DIRTY: AtomicBool = AtomicBool::new(false);
    let mut v = lock(green());
    // A certificate cached by an earlier input would make this run depend
    // on it: start every run from an empty cache.
    if DIRTY.load(Ordering::Relaxed) {
        v.replace_trust(trust());
    }
    let r = v.verify(datagram, CLIENT_IP, NOW, &mut MemoryReplayState::default());
    DIRTY.store(!before_certificates(&r), Ordering::Relaxed);
    r
}

/// Red's verifier on `datagram`: source [`GREEN_IP`], `now` [`NOW`], an
/// empty replay store and an empty certificate cache.
pub fn verify_order(datagram: &[u8]) -> Result<Order, Refusal> {
    static DIRTY: AtomicBool = AtomicBool::new(false);
    let mut v = lock(red());
    if DIRTY.load(Ordering::Relaxed) {
        v.replace_trust(trust());
    }
    let r = v.verify(datagram, GREEN_IP, NOW, &mut MemoryReplayState::default());
    DIRTY.store(!before_certificates(&r), Ordering::Relaxed);
    r
}

/// Seals `plaintext` as a knock to green exactly as the crate frames it
/// (SPEC §3.1, §3.3): `VERSION || enc || ct || MAC`, the MAC being the first
/// 16 bytes of HMAC-SHA256 under `mac_key(Knock, pkR)` over everything
/// before it. No length check: the verifier refuses sizes itself.
pub fn seal_knock_plaintext(plaintext: &[u8]) -> Option<Vec<u8>> {
    let pk = green_public();
    let header = [VERSION];
    let (enc, ct) =
        proto_spec::hpke_suite::seal(DatagramKind::Knock, &pk, &header, plaintext, IKM_E).ok()?;
    let mut out = Vec::with_capacity(header.len() + enc.len() + ct.len() + MAC_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key(DatagramKind::Knock, &pk)).ok()?;
    mac.update(&out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&tag[..MAC_LEN]);
    Some(out)
}
