//! Whole-protocol tests: client, green and red in memory with a fake clock,
//! and one test per refusal reason.

mod common;

use common::*;
use proto_spec::Refusal;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::error::{CertificateError, MalformedReason};
use proto_spec::replay::{MemoryReplayState, ReplayState};
use proto_spec::seal::seal_knock;
use proto_spec::testkit::{ClientCertSpec, KeyAlg, TestCa};
use proto_spec::verify::OrderAction;

#[test]
fn full_session_open_request_close_through_green_and_red() {
    for alg in [KeyAlg::Ed25519, KeyAlg::P256] {
        let w = World::new();
        let alice = w.signer("alice", alg);
        let mut green = w.green();
        let mut red = w.red();
        let mut green_replay = MemoryReplayState::default();
        let mut red_replay = MemoryReplayState::default();
        let mut clock = NOW;

        // Open the tunnel.
        let d = knock(
            &w,
            alice.as_ref(),
            &request(MessageType::OpenTunnel, clock, &["tunnel"]),
        );
        let k = green
            .verify(&d, ip(CLIENT_IP), clock, &mut green_replay)
            .expect("open accepted");
        assert_eq!(k.msg_type, MessageType::OpenTunnel);
        assert_eq!(k.services, vec!["tunnel"]);
        assert!(k.identity.names.contains(&"cn:alice".to_string()));
        assert_eq!(k.open_for, ip(CLIENT_IP));

        // Request a service on red: green verifies, relays an order.
        clock += 5;
        let d = knock(
            &w,
            alice.as_ref(),
            &request(MessageType::RequestService, clock, &["ssh"]),
        );
        let k = green
            .verify(&d, ip(CLIENT_IP), clock, &mut green_replay)
            .expect("request");
        clock += 1;
        let o = order(&w, clock, &k.body, k.lifetime_s);
        let ord = red
            .verify(&o, ip(GREEN_IP), clock, &mut red_replay)
            .expect("order");
        assert_eq!(ord.action, OrderAction::Open);
        assert_eq!(ord.services, vec!["ssh"]);
        assert_eq!(ord.open_for, ip(GREEN_IP));
        assert_eq!(ord.client, k.identity);

        // Green resends a fresh order with the same client body: accepted.
        clock += 1;
        let o2 = order(&w, clock, &k.body, k.lifetime_s);
        red.verify(&o2, ip(GREEN_IP), clock, &mut red_replay)
            .expect("fresh resend");
        // The exact same order again: replay.
        assert_eq!(
            red.verify(&o2, ip(GREEN_IP), clock, &mut red_replay).err(),
            Some(Refusal::Replayed)
        );

        // Close: green, then red.
        clock += 10;
        let d = knock(&w, alice.as_ref(), &request(MessageType::Close, clock, &[]));
        let k = green
            .verify(&d, ip(CLIENT_IP), clock, &mut green_replay)
            .expect("close");
        assert_eq!(k.msg_type, MessageType::Close);
        clock += 1;
        let o = order(&w, clock, &k.body, 0);
        let ord = red
            .verify(&o, ip(GREEN_IP), clock, &mut red_replay)
            .expect("close order");
        assert_eq!(ord.action, OrderAction::Close);
        assert_eq!(green_replay.len(), 1);
        assert_eq!(red_replay.len(), 2);
    }
}

fn refuse_knock(datagram: &[u8], source: &str, now: u64) -> Refusal {
    let w = World::new();
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    green
        .verify(datagram, ip(source), now, &mut replay)
        .expect_err("must be refused")
}

#[test]
fn refuses_each_bad_datagram_class() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let good = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );

    assert_eq!(
        refuse_knock(&good[..100], CLIENT_IP, NOW),
        Refusal::TooShort
    );
    assert_eq!(
        refuse_knock(&vec![1u8; 1100], CLIENT_IP, NOW),
        Refusal::TooLong
    );
    let mut v = good.clone();
    v[0] = 2;
    assert_eq!(refuse_knock(&v, CLIENT_IP, NOW), Refusal::BadVersion);
    let mut v = good.clone();
    v[100] ^= 1;
    assert_eq!(refuse_knock(&v, CLIENT_IP, NOW), Refusal::MacMismatch);
    assert_eq!(
        refuse_knock(&vec![1u8; 600], CLIENT_IP, NOW),
        Refusal::MacMismatch
    );
    // Sealed to another receiver: the MAC (keyed from pkR) already fails.
    let other = proto_spec::testkit::receiver_key("not green");
    let wrong = seal_knock(
        alice.as_ref(),
        &other.public_key(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
        [1; 32],
    )
    .expect("seal");
    assert_eq!(refuse_knock(&wrong, CLIENT_IP, NOW), Refusal::MacMismatch);
    assert_eq!(refuse_knock(&good, CLIENT_IP, NOW + 60_001), Refusal::Stale);
    assert_eq!(
        refuse_knock(&good, CLIENT_IP, NOW - 10_001),
        Refusal::FutureDated
    );
    assert_eq!(
        refuse_knock(&good, "10.200.9.9", NOW),
        Refusal::WrongSourceAddress
    );
    let svc = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["db"]),
    );
    assert_eq!(
        refuse_knock(&svc, CLIENT_IP, NOW),
        Refusal::UnauthorizedService
    );
    let carol = w.signer("carol", KeyAlg::Ed25519);
    let c = knock(
        &w,
        carol.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    assert_eq!(refuse_knock(&c, CLIENT_IP, NOW), Refusal::UnknownIdentity);
    let mut req = request(MessageType::OpenTunnel, NOW, &["tunnel"]);
    req.open_for = OpenFor::Source;
    let s = knock(&w, alice.as_ref(), &req);
    assert_eq!(
        refuse_knock(&s, CLIENT_IP, NOW),
        Refusal::SourceModeNotAllowed
    );
}

/// A refusal names the client only once the client was proven: after its
/// certificate and signature, not before (anyone can attach a certificate).
#[test]
fn refusals_name_the_client_only_once_proven() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let refused = |d: &[u8], src: &str| {
        let mut green = w.green();
        green
            .verify_detailed(d, ip(src), NOW, &mut MemoryReplayState::default())
            .expect_err("refused")
    };
    let names = |r: &proto_spec::verify::Refused| r.identity.as_ref().map(|i| i.names.clone());
    let svc = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::RequestService, NOW, &["db"]),
    );
    let r = refused(&svc, CLIENT_IP);
    assert_eq!(r.reason, Refusal::UnauthorizedService);
    assert!(names(&r).is_some_and(|n| n.contains(&"cn:alice".to_string())));
    let good = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    let r = refused(&good, "10.200.9.9");
    assert_eq!(r.reason, Refusal::WrongSourceAddress);
    assert!(r.identity.is_some());
    // Before the signature is checked, or when it fails: no name.
    let r = refused(&good[..100], CLIENT_IP);
    assert_eq!((r.reason, r.identity), (Refusal::TooShort, None));
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    green
        .verify(&good, ip(CLIENT_IP), NOW, &mut replay)
        .expect("accepted");
    let r = green
        .verify_detailed(&good, ip(CLIENT_IP), NOW, &mut replay)
        .expect_err("replayed");
    assert_eq!((r.reason, r.identity), (Refusal::Replayed, None));
}

#[test]
fn refuses_replay_including_after_restart_with_durable_floor() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    let mut replay = MemoryReplayState::default();
    let mut green = w.green();
    green
        .verify(&d, ip(CLIENT_IP), NOW, &mut replay)
        .expect("first");
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW, &mut replay).err(),
        Some(Refusal::Replayed)
    );
    // "Restart": a new verifier (empty cache) over the same durable state.
    let mut green = w.green();
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW + 5, &mut replay).err(),
        Some(Refusal::Replayed)
    );
    // Restart with the state lost: the global floor = start time refuses it.
    let mut lost = MemoryReplayState::with_global_floor(NOW + 5);
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW + 5, &mut lost).err(),
        Some(Refusal::Replayed)
    );
    // A failed check leaves the floor as it was.
    let later = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW + 7, &["db"]),
    );
    let id = proto_spec::cert::parse_client_cert(alice.certificate_der())
        .expect("cert")
        .identity
        .key;
    assert_eq!(
        green
            .verify(&later, ip(CLIENT_IP), NOW + 8, &mut replay)
            .err(),
        Some(Refusal::UnauthorizedService)
    );
    assert_eq!(replay.floor(&id), Some(NOW));
}

#[test]
fn refuses_certificate_problems() {
    let w = World::new();
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    let cases: Vec<(ClientCertSpec, CertificateError)> = vec![
        (
            ClientCertSpec {
                not_after_ms: NOW - 1000,
                ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 40)
            },
            CertificateError::Expired,
        ),
        (
            ClientCertSpec {
                not_before_ms: NOW + 100_000,
                ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 41)
            },
            CertificateError::NotYetValid,
        ),
        (
            ClientCertSpec {
                client_auth: false,
                ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 42)
            },
            CertificateError::WrongUsage,
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let s = w.ca.signer(&spec).expect("signer");
        let d = knock(
            &w,
            s.as_ref(),
            &request(MessageType::OpenTunnel, NOW + i as u64, &["tunnel"]),
        );
        assert_eq!(
            green
                .verify(&d, ip(CLIENT_IP), NOW + i as u64, &mut replay)
                .err(),
            Some(Refusal::Certificate(expected))
        );
    }
    // Wrong CA.
    let rogue = TestCa::new("rogue root").expect("ca");
    let s = rogue
        .signer(&ClientCertSpec::new("alice", KeyAlg::Ed25519, 1))
        .expect("signer");
    let d = knock(
        &w,
        s.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW, &mut replay).err(),
        Some(Refusal::Certificate(CertificateError::UnknownIssuer))
    );
}

#[test]
fn refuses_revoked_after_trust_reload_and_expired_crl() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    green
        .verify(&d, ip(CLIENT_IP), NOW, &mut replay)
        .expect("valid before revocation");
    // Cached now; a new CRL revoking alice is loaded.
    let crl =
        w.ca.crl(&[serial_for("alice")], NOW - 1000, NOW + 86_400_000)
            .expect("crl");
    green.replace_trust(w.trust(vec![crl]));
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW + 1, &["tunnel"]),
    );
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW + 1, &mut replay).err(),
        Some(Refusal::Certificate(CertificateError::Revoked))
    );
    // A CRL past its nextUpdate: refused (fail closed).
    let old = w.ca.crl(&[], NOW - 20_000, NOW - 10_000).expect("crl");
    green.replace_trust(w.trust(vec![old]));
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW + 2, &["tunnel"]),
    );
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW + 2, &mut replay).err(),
        Some(Refusal::Certificate(CertificateError::CrlExpired))
    );
}

#[test]
fn a_session_certificate_fails_revalidation_once_a_crl_revokes_it() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let bob = w.signer("bob", KeyAlg::Ed25519);
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    let k = green
        .verify(&d, ip(CLIENT_IP), NOW, &mut replay)
        .expect("valid before revocation");
    // The knock carries the certificate the session keeps.
    assert_eq!(k.certificate, alice.certificate_der());
    assert_eq!(green.revalidate(&k.certificate, NOW + 1), Ok(()));
    let crl =
        w.ca.crl(&[serial_for("alice")], NOW - 1000, NOW + 86_400_000)
            .expect("crl");
    green.replace_trust(w.trust(vec![crl]));
    assert_eq!(
        green.revalidate(&k.certificate, NOW + 2),
        Err(CertificateError::Revoked)
    );
    // Another client's certificate still validates; garbage does not.
    assert_eq!(green.revalidate(bob.certificate_der(), NOW + 2), Ok(()));
    assert_eq!(
        green.revalidate(&[0x30, 0x03, 0x02, 0x01], NOW + 2),
        Err(CertificateError::BadDer)
    );
}

#[test]
fn red_refuses_forged_orders() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let bob = w.signer("bob", KeyAlg::Ed25519);
    let mut green = w.green();
    let mut gr = MemoryReplayState::default();
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::RequestService, NOW, &["ssh"]),
    );
    let k = green
        .verify(&d, ip(CLIENT_IP), NOW, &mut gr)
        .expect("request");

    let red_refuses = |o: &[u8], src: &str| {
        let mut red = w.red();
        let mut rr = MemoryReplayState::default();
        red.verify(o, ip(src), NOW, &mut rr).expect_err("refused")
    };
    // Forged gateway: another signing key.
    let forged = proto_spec::seal::seal_order(
        &proto_spec::testkit::gateway_signer("mallory"),
        &w.red_key.public_key(),
        &proto_spec::order::OrderFields {
            order_timestamp_ms: NOW,
            session_id: [0x22; 16],
            lifetime_s: 30,
            open_for: ip(GREEN_IP),
            client_body: &k.body,
        },
        [5; 32],
    )
    .expect("seal");
    assert_eq!(red_refuses(&forged, GREEN_IP), Refusal::UnknownGateway);
    // Client signature forged: flip a byte of the client's signature.
    let mut body = k.body.clone();
    let n = body.len();
    body[n - 1] ^= 1;
    assert_eq!(
        red_refuses(&order(&w, NOW, &body, 30), GREEN_IP),
        Refusal::BadSignature
    );
    // Client body changed under green's valid signature (service swapped).
    let mut body = k.body.clone();
    let pos = body.windows(3).position(|x| x == b"ssh").expect("ssh");
    body[pos..pos + 3].copy_from_slice(b"web");
    assert_eq!(
        red_refuses(&order(&w, NOW, &body, 30), GREEN_IP),
        Refusal::BadSignature
    );
    // Wrong source.
    assert_eq!(
        red_refuses(&order(&w, NOW, &k.body, 30), "10.200.7.7"),
        Refusal::WrongSourceAddress
    );
    // Unauthorized: bob may only use the tunnel.
    let d = knock(
        &w,
        bob.as_ref(),
        &request(MessageType::RequestService, NOW, &["tunnel"]),
    );
    let kb = green
        .verify(&d, ip(CLIENT_IP), NOW, &mut gr)
        .expect("bob tunnel");
    let mut red = w.red();
    red.policy.rules[1].services = proto_spec::policy::ServiceSet::Named(vec![]);
    let mut rr = MemoryReplayState::default();
    assert_eq!(
        red.verify(&order(&w, NOW, &kb.body, 30), ip(GREEN_IP), NOW, &mut rr)
            .err(),
        Some(Refusal::UnauthorizedService)
    );
    // An open-tunnel body inside an order.
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW + 1, &["tunnel"]),
    );
    let ko = green
        .verify(&d, ip(CLIENT_IP), NOW + 1, &mut gr)
        .expect("open");
    assert_eq!(
        red_refuses(&order(&w, NOW, &ko.body, 30), GREEN_IP),
        Refusal::WrongMessageType
    );
    // Session mismatch.
    let o = proto_spec::seal::seal_order(
        &w.gateway,
        &w.red_key.public_key(),
        &proto_spec::order::OrderFields {
            order_timestamp_ms: NOW,
            session_id: [0x99; 16],
            lifetime_s: 30,
            open_for: ip(GREEN_IP),
            client_body: &k.body,
        },
        [5; 32],
    )
    .expect("seal");
    assert_eq!(red_refuses(&o, GREEN_IP), Refusal::SessionMismatch);
    // A knock sent to red's order port is not an order: its MAC is keyed
    // with the knock label and green's key.
    assert_eq!(red_refuses(&d, GREEN_IP), Refusal::MacMismatch);
    let _ = MalformedReason::Truncated;
}

/// SPEC §8.3: each refusal of an order names its stage, so that red blames
/// green (the order's source) only for what was wrong before green's
/// signature verified, never for the client body green relayed (SPEC §9).
#[test]
fn order_refusals_name_their_stage() {
    use proto_spec::verify::Stage;
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let mut green = w.green();
    let mut gr = MemoryReplayState::default();
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::RequestService, NOW, &["ssh"]),
    );
    let k = green
        .verify(&d, ip(CLIENT_IP), NOW, &mut gr)
        .expect("request");
    let stage_of = |o: &[u8], src: &str, now: u64, rr: &mut MemoryReplayState| {
        let mut red = w.red();
        let r = red
            .verify_detailed(o, ip(src), now, rr)
            .expect_err("refused");
        (r.reason, r.stage)
    };
    let mut rr = MemoryReplayState::default();
    // The client body is stale, or future-dated, inside a fresh order.
    let late = NOW + proto_spec::replay::DEFAULT_MAX_AGE_MS + 1;
    assert_eq!(
        stage_of(&order(&w, late, &k.body, 30), GREEN_IP, late, &mut rr),
        (Refusal::Stale, Stage::ClientBody)
    );
    let early = NOW - proto_spec::replay::DEFAULT_MAX_FUTURE_SKEW_MS - 1;
    assert_eq!(
        stage_of(&order(&w, early, &k.body, 30), GREEN_IP, early, &mut rr),
        (Refusal::FutureDated, Stage::ClientBody)
    );
    // The order itself is stale: the order's stage.
    assert_eq!(
        stage_of(&order(&w, NOW, &k.body, 30), GREEN_IP, late, &mut rr),
        (Refusal::Stale, Stage::Order)
    );
    // Accepted once; the same client body in a fresh order from green is a
    // refresh, but an older body after a newer one is the client's replay.
    let mut red = w.red();
    red.verify(&order(&w, NOW, &k.body, 30), ip(GREEN_IP), NOW, &mut rr)
        .expect("accepted");
    let d2 = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::RequestService, NOW + 5, &["ssh"]),
    );
    let k2 = green
        .verify(&d2, ip(CLIENT_IP), NOW + 5, &mut gr)
        .expect("second request");
    red.verify(
        &order(&w, NOW + 6, &k2.body, 30),
        ip(GREEN_IP),
        NOW + 6,
        &mut rr,
    )
    .expect("newer body");
    let r = red
        .verify_detailed(
            &order(&w, NOW + 7, &k.body, 30),
            ip(GREEN_IP),
            NOW + 7,
            &mut rr,
        )
        .expect_err("older body");
    assert_eq!((r.reason, r.stage), (Refusal::Replayed, Stage::ClientBody));
    // The same order again: the order's own floor.
    let r = red
        .verify_detailed(
            &order(&w, NOW + 6, &k2.body, 30),
            ip(GREEN_IP),
            NOW + 8,
            &mut rr,
        )
        .expect_err("order replayed");
    assert_eq!((r.reason, r.stage), (Refusal::Replayed, Stage::Order));
    // Green signed it, but for another address: a signed order's fault.
    let r = red
        .verify_detailed(
            &order(&w, NOW + 9, &k2.body, 30),
            ip("10.200.7.7"),
            NOW + 9,
            &mut rr,
        )
        .expect_err("wrong source");
    assert_eq!(
        (r.reason, r.stage),
        (Refusal::WrongSourceAddress, Stage::SignedOrder)
    );
    // Green's knocks are all of the knock stage.
    let r = green
        .verify_detailed(&d, ip(CLIENT_IP), NOW + 10, &mut gr)
        .expect_err("knock replayed");
    assert_eq!((r.reason, r.stage), (Refusal::Replayed, Stage::Knock));
}

/// A store whose commit always fails, as a full or broken disk would.
struct FailingStore;

impl ReplayState for FailingStore {
    type Error = &'static str;
    fn floor(&self, _: &proto_spec::cert::IdentityKey) -> Option<u64> {
        None
    }
    fn commit(&mut self, _: &proto_spec::cert::IdentityKey, _: u64) -> Result<(), Self::Error> {
        Err("disk full")
    }
}

#[test]
fn refuses_when_the_floor_cannot_be_committed() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    let mut green = w.green();
    assert_eq!(
        green
            .verify(&d, ip(CLIENT_IP), NOW, &mut FailingStore)
            .err(),
        Some(Refusal::StorageFailure)
    );
}

/// A store shared by several receivers (SPEC §7.6) whose compare-and-set
/// finds a floor another receiver raised: its local view said nothing.
struct RaisedElsewhere;

impl ReplayState for RaisedElsewhere {
    type Error = &'static str;
    fn floor(&self, _: &proto_spec::cert::IdentityKey) -> Option<u64> {
        None
    }
    fn commit(&mut self, _: &proto_spec::cert::IdentityKey, _: u64) -> Result<(), Self::Error> {
        Err("floor raised by another receiver")
    }
    fn is_replay(_: &Self::Error) -> bool {
        true
    }
}

#[test]
fn refuses_as_replayed_when_a_shared_commit_finds_a_higher_floor() {
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    let mut green = w.green();
    let r = green
        .verify_detailed(&d, ip(CLIENT_IP), NOW, &mut RaisedElsewhere)
        .expect_err("replayed at commit");
    assert_eq!(
        (r.reason, r.stage),
        (Refusal::Replayed, proto_spec::verify::Stage::Knock)
    );
    assert!(r.identity.is_some(), "refused after the client was proven");
}

/// A signer that presents one client's certificate and signs with another's
/// key: a valid certificate, a bad signature.
struct CertOf<'a> {
    cert: &'a dyn proto_spec::sign::Signer,
    key: &'a dyn proto_spec::sign::Signer,
}

impl proto_spec::sign::Signer for CertOf<'_> {
    fn algorithm(&self) -> proto_spec::sign::SignatureAlgorithm {
        self.key.algorithm()
    }
    fn certificate_der(&self) -> &[u8] {
        self.cert.certificate_der()
    }
    fn sign(
        &self,
        transcript: &[u8],
    ) -> Result<[u8; proto_spec::body::SIGNATURE_LEN], proto_spec::sign::SignerError> {
        self.key.sign(transcript)
    }
}

#[test]
fn a_valid_certificate_with_a_bad_signature_is_not_cached() {
    // SPEC §6.2: the cache is filled only once the body's signature
    // verified, so public certificates alone cannot fill it.
    let w = World::new();
    let alice = w.signer("alice", KeyAlg::Ed25519);
    let mallory = w.signer("mallory", KeyAlg::Ed25519);
    let forged = CertOf {
        cert: alice.as_ref(),
        key: mallory.as_ref(),
    };
    let mut green = w.green();
    let mut replay = MemoryReplayState::default();
    let d = knock(
        &w,
        &forged,
        &request(MessageType::OpenTunnel, NOW, &["tunnel"]),
    );
    assert_eq!(
        green.verify(&d, ip(CLIENT_IP), NOW, &mut replay).err(),
        Some(Refusal::BadSignature)
    );
    assert_eq!(green.authenticator().cached(), 0);
    // The same certificate with its own key: accepted, then cached.
    let d = knock(
        &w,
        alice.as_ref(),
        &request(MessageType::OpenTunnel, NOW + 1, &["tunnel"]),
    );
    green
        .verify(&d, ip(CLIENT_IP), NOW + 1, &mut replay)
        .expect("accepted");
    assert_eq!(green.authenticator().cached(), 1);
}
