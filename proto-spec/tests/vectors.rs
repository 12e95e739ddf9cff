//! Test vectors (SPEC §10): generated deterministically, checked from the
//! committed JSON files alone.
//!
//! - `vectors_match_generator`: regenerating gives the committed files byte
//!   for byte (run with `SPA_REGENERATE_VECTORS=1` to rewrite them after a
//!   deliberate change of the specification).
//! - `vectors_verify_from_file_inputs`: every vector is re-checked using only
//!   the inputs in the file: positive datagrams are re-sealed and must match
//!   byte for byte; every datagram is verified and must reach the expected
//!   verdict.

use core::net::IpAddr;

use proto_spec::body::{BodyFields, MessageType, OpenFor, SIGNATURE_LEN, encode_signed_part};
use proto_spec::cert::{IdentityKey, TrustConfig, TrustStore, parse_client_cert};
use proto_spec::keys::{ReceiverPublicKey, ReceiverSecretKey, mac_key};
use proto_spec::order::OrderFields;
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, ReplayState, TimeLimits};
use proto_spec::seal::{KnockRequest, precheck_mac, seal_knock, seal_order, seal_plaintext};
use proto_spec::sign::{
    Ed25519Signer, GatewaySigner, KNOCK_SIGNATURE_CONTEXT, ORDER_SIGNATURE_CONTEXT, P256Signer,
    Signer, transcript,
};
use proto_spec::testkit::{
    self, ClientCertSpec, KeyAlg, RawKeyAlg, SubjectAltName, T_2026, TestCa, VECTOR_NOW,
};
use proto_spec::verify::{Gateway, KnockVerifier, OrderAction, OrderVerifier};
use proto_spec::wire::{DatagramKind, MAC_LEN};
use proto_spec::{Refusal, hpke_suite};
use serde_json::{Value, json};
use zeroize::Zeroizing;

const NOW: u64 = VECTOR_NOW;
const TS: u64 = VECTOR_NOW - 1_000;
const CLIENT4: &str = "10.200.1.2";
const CLIENT6: &str = "fd00:200:1::2";
const GREEN4: &str = "10.200.2.1";
const GREEN6: &str = "fd00:200:2::1";

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn unhex32(v: &Value) -> [u8; 32] {
    unhex(v).try_into().expect("32 bytes")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

struct Pki {
    ca: TestCa,
    rogue: TestCa,
    green: ReceiverSecretKey,
    red: ReceiverSecretKey,
}

#[derive(Clone)]
struct Client {
    alg: KeyAlg,
    cert: Vec<u8>,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl Client {
    fn signer(&self) -> Box<dyn Signer> {
        match self.alg {
            KeyAlg::Ed25519 => Box::new(
                Ed25519Signer::from_pkcs8_der(&self.pkcs8, self.cert.clone()).expect("key"),
            ),
            KeyAlg::P256 => {
                Box::new(P256Signer::from_pkcs8_der(&self.pkcs8, self.cert.clone()).expect("key"))
            }
        }
    }

    /// The bare private key: the RFC 8032 seed (Ed25519) or the 32-byte
    /// scalar (P-256), for libraries that refuse RFC 5958 v2 PKCS#8.
    fn raw_private_key(&self) -> Vec<u8> {
        match self.alg {
            KeyAlg::Ed25519 => {
                use ed25519_dalek::pkcs8::DecodePrivateKey as _;
                ed25519_dalek::SigningKey::from_pkcs8_der(&self.pkcs8)
                    .expect("ed25519 pkcs8")
                    .to_bytes()
                    .to_vec()
            }
            KeyAlg::P256 => {
                use p256::pkcs8::DecodePrivateKey as _;
                p256::SecretKey::from_pkcs8_der(&self.pkcs8)
                    .expect("p256 pkcs8")
                    .to_bytes()
                    .to_vec()
            }
        }
    }

    fn alg_name(&self) -> &'static str {
        match self.alg {
            KeyAlg::Ed25519 => "ed25519",
            KeyAlg::P256 => "ecdsa-p256-sha256",
        }
    }

    fn identity(&self) -> IdentityKey {
        parse_client_cert(&self.cert).expect("cert").identity.key
    }
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: TestCa::new("spa test root").expect("ca"),
            rogue: TestCa::new("rogue root").expect("ca"),
            green: testkit::receiver_key("green"),
            red: testkit::receiver_key("red"),
        }
    }

    fn client_from(&self, ca: &TestCa, spec: ClientCertSpec) -> Client {
        let (cert, pkcs8) = ca.issue(&spec).expect("issue");
        Client {
            alg: spec.alg,
            cert,
            pkcs8,
        }
    }

    fn client(&self, cn: &str, alg: KeyAlg, serial: u64) -> Client {
        self.client_from(&self.ca, ClientCertSpec::new(cn, alg, serial))
    }
}

fn default_policy_json() -> Value {
    json!({
        "rules": [
            {"identity": "cn:alice", "services": ["tunnel", "ssh", "web"]},
            {"identity": "email:bob@example.org", "services": ["tunnel"]}
        ],
        "max_lifetime_s": 3600,
        "allow_source_mode": false,
        "require_source_match": true
    })
}

fn msg_type_name(t: MessageType) -> &'static str {
    t.name()
}

fn open_for_json(o: OpenFor) -> Value {
    match o {
        OpenFor::Source => json!("source"),
        OpenFor::Addr(a) => json!(a.to_string()),
    }
}

struct KnockSpec<'a> {
    name: &'a str,
    description: &'a str,
    client: &'a Client,
    msg_type: MessageType,
    timestamp_ms: u64,
    lifetime_s: u32,
    open_for: OpenFor,
    services: &'a [&'a str],
    ikm_e: [u8; 32],
    /// The receiver the knock is sealed to (default green).
    sealed_to: Option<&'a ReceiverSecretKey>,
    /// The receiver whose key the signature binds (default = sealed_to).
    signed_for: Option<ReceiverPublicKey>,
}

impl<'a> KnockSpec<'a> {
    fn new(name: &'a str, description: &'a str, client: &'a Client) -> Self {
        Self {
            name,
            description,
            client,
            msg_type: MessageType::OpenTunnel,
            timestamp_ms: TS,
            lifetime_s: 30,
            open_for: OpenFor::Addr(ip(CLIENT4)),
            services: &["tunnel"],
            ikm_e: testkit::seed(&format!("ikm {name}")),
            sealed_to: None,
            signed_for: None,
        }
    }
}

/// Builds the body exactly as `seal_knock` does, optionally signing for a
/// different receiver (to build the re-sealing vector).
fn build_body(pki: &Pki, s: &KnockSpec<'_>) -> Vec<u8> {
    let signer = s.client.signer();
    let fields = BodyFields {
        msg_type: s.msg_type,
        timestamp_ms: s.timestamp_ms,
        nonce: nonce_for(s.name),
        session_id: session_for(s.name),
        lifetime_s: s.lifetime_s,
        open_for: s.open_for,
        services: s.services,
        certificate: signer.certificate_der(),
    };
    let mut body = encode_signed_part(&fields).expect("encode");
    let pk = s
        .signed_for
        .unwrap_or_else(|| s.sealed_to.unwrap_or(&pki.green).public_key());
    let sig = signer
        .sign(&transcript(KNOCK_SIGNATURE_CONTEXT, &pk, &body))
        .expect("sign");
    body.extend_from_slice(&sig);
    body
}

fn nonce_for(name: &str) -> [u8; 16] {
    testkit::seed(&format!("nonce {name}"))[..16]
        .try_into()
        .expect("16")
}

fn session_for(_name: &str) -> [u8; 16] {
    // One session for every vector: requests and closes belong to the opens.
    testkit::seed("session")[..16].try_into().expect("16")
}

struct Verify {
    now_ms: u64,
    source: String,
    crls: Vec<Vec<u8>>,
    policy: Value,
    floors: Vec<(IdentityKey, u64)>,
    /// The global floor `G` (SPEC §7.2), if the store has one.
    global_floor: Option<u64>,
}

impl Verify {
    fn new() -> Self {
        Self {
            now_ms: NOW,
            source: CLIENT4.to_owned(),
            crls: vec![],
            policy: default_policy_json(),
            floors: vec![],
            global_floor: None,
        }
    }
}

fn verify_json(pki: &Pki, v: &Verify, verifier: &ReceiverSecretKey) -> Value {
    json!({
        "receiver_private_key": h(&verifier.to_bytes()[..]),
        "now_ms": v.now_ms,
        "source": v.source,
        "ca_certificates": [h(pki.ca.cert_der())],
        "crls": v.crls.iter().map(|c| h(c)).collect::<Vec<_>>(),
        "policy": v.policy,
        "max_age_ms": 60000,
        "max_future_skew_ms": 10000,
        "global_floor_ms": v.global_floor,
        "replay_floors": v.floors.iter().map(|(k, t)| json!({"identity_key": h(&k.0), "timestamp_ms": t})).collect::<Vec<_>>(),
    })
}

/// A knock vector sealed with `seal_knock` (reproducible from inputs).
fn knock_vector(pki: &Pki, s: &KnockSpec<'_>, v: &Verify) -> Value {
    let receiver = s.sealed_to.unwrap_or(&pki.green);
    let body = build_body(pki, s);
    let datagram = if s.signed_for.is_none() {
        let signer = s.client.signer();
        let req = KnockRequest {
            msg_type: s.msg_type,
            timestamp_ms: s.timestamp_ms,
            nonce: nonce_for(s.name),
            session_id: session_for(s.name),
            lifetime_s: s.lifetime_s,
            open_for: s.open_for,
            services: s.services,
        };
        let d = seal_knock(signer.as_ref(), &receiver.public_key(), &req, s.ikm_e).expect("seal");
        let again = seal_plaintext(DatagramKind::Knock, &receiver.public_key(), &body, s.ikm_e)
            .expect("seal");
        assert_eq!(
            d, again,
            "{}: body builder disagrees with seal_knock",
            s.name
        );
        d
    } else {
        seal_plaintext(DatagramKind::Knock, &receiver.public_key(), &body, s.ikm_e).expect("seal")
    };
    let mut inputs = json!({
        "receiver_private_key": h(&receiver.to_bytes()[..]),
        "receiver_public_key": h(receiver.public_key().as_bytes()),
        "client_key_algorithm": s.client.alg_name(),
        "client_private_key_pkcs8": h(&s.client.pkcs8),
        "client_private_key_raw": h(&s.client.raw_private_key()),
        "client_certificate": h(&s.client.cert),
        "msg_type": msg_type_name(s.msg_type),
        "timestamp_ms": s.timestamp_ms,
        "nonce": h(&nonce_for(s.name)),
        "session_id": h(&session_for(s.name)),
        "lifetime_s": s.lifetime_s,
        "open_for": open_for_json(s.open_for),
        "services": s.services,
        "ikm_e": h(&s.ikm_e),
    });
    if let Some(pk) = s.signed_for {
        inputs["signed_for_public_key"] = json!(h(pk.as_bytes()));
    }
    json!({
        "name": s.name,
        "kind": "knock",
        "description": s.description,
        "reproduce": if s.signed_for.is_none() { "seal_knock" } else { "seal_plaintext" },
        "inputs": inputs,
        "intermediate": {
            "plaintext": h(&body),
            "enc": h(&hpke_suite::ephemeral_public(&s.ikm_e)),
            "mac_key": h(&mac_key(DatagramKind::Knock, &receiver.public_key())),
            "signature": h(&body[body.len() - SIGNATURE_LEN..]),
        },
        "verify": verify_json(pki, v, &pki.green),
        "datagram": h(&datagram),
    })
}

/// A vector whose plaintext is given raw (malformed bodies).
fn plaintext_vector(
    pki: &Pki,
    name: &str,
    description: &str,
    plaintext: &[u8],
    v: &Verify,
) -> Value {
    let ikm = testkit::seed(&format!("ikm {name}"));
    let d =
        seal_plaintext(DatagramKind::Knock, &pki.green.public_key(), plaintext, ikm).expect("seal");
    json!({
        "name": name,
        "kind": "knock",
        "description": description,
        "reproduce": "seal_plaintext",
        "inputs": {
            "receiver_private_key": h(&pki.green.to_bytes()[..]),
            "receiver_public_key": h(pki.green.public_key().as_bytes()),
            "ikm_e": h(&ikm),
        },
        "intermediate": { "plaintext": h(plaintext) },
        "verify": verify_json(pki, v, &pki.green),
        "datagram": h(&d),
    })
}

/// A vector whose datagram is given as bytes only (framing-level damage).
fn raw_vector(pki: &Pki, name: &str, description: &str, datagram: &[u8], v: &Verify) -> Value {
    json!({
        "name": name,
        "kind": "knock",
        "description": description,
        "reproduce": "none",
        "inputs": {
            "receiver_private_key": h(&pki.green.to_bytes()[..]),
            "receiver_public_key": h(pki.green.public_key().as_bytes()),
        },
        "verify": verify_json(pki, v, &pki.green),
        "datagram": h(datagram),
    })
}

fn with_expected(mut vector: Value, expected: Value) -> Value {
    vector["expected"] = expected;
    vector
}

fn refuse(reason: Refusal) -> Value {
    match reason.detail() {
        Some(d) => json!({"verdict": "refuse", "reason": reason.code(), "detail": d}),
        None => json!({"verdict": "refuse", "reason": reason.code()}),
    }
}

fn accept_knock(client: &Client, s: &KnockSpec<'_>, open_for: &str, lifetime_s: u32) -> Value {
    let parsed = parse_client_cert(&client.cert).expect("cert");
    json!({
        "verdict": "accept",
        "msg_type": msg_type_name(s.msg_type),
        "identity_key": h(&parsed.identity.key.0),
        "names": parsed.identity.names,
        "open_for": open_for,
        "services": s.services,
        "lifetime_s": lifetime_s,
        "session_id": h(&session_for(s.name)),
    })
}

fn mutate_body(body: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = body.to_vec();
    f(&mut b);
    b
}

/// Offset of the first service-count byte in a body with an IPv4 address.
const SERVICES_OFF_V4: usize = 1 + 8 + 16 + 16 + 4 + 1 + 4;

fn generate_knocks(pki: &Pki) -> Value {
    let alice = pki.client("alice", KeyAlg::Ed25519, 1001);
    let alice_p = pki.client("alice", KeyAlg::P256, 1002);
    let bob = pki.client("bob", KeyAlg::Ed25519, 1003);
    let carol = pki.client("carol", KeyAlg::Ed25519, 1004);
    let mut out = Vec::new();
    let v = Verify::new;

    // ---- positive ----
    let mut push_ok = |s: KnockSpec<'_>, v: Verify, open_for: &str, lifetime: u32| {
        let vec = knock_vector(pki, &s, &v);
        out.push(with_expected(
            vec,
            accept_knock(s.client, &s, open_for, lifetime),
        ));
    };
    push_ok(
        KnockSpec::new(
            "open_tunnel_ed25519_ipv4",
            "Open-tunnel, Ed25519 client, explicit IPv4 address equal to the source.",
            &alice,
        ),
        v(),
        CLIENT4,
        30,
    );
    push_ok(
        KnockSpec::new(
            "open_tunnel_p256_ipv4",
            "Open-tunnel, ECDSA P-256 client (RFC 6979 deterministic signature).",
            &alice_p,
        ),
        v(),
        CLIENT4,
        30,
    );
    push_ok(
        KnockSpec {
            msg_type: MessageType::RequestService,
            services: &["ssh"],
            open_for: OpenFor::Addr(ip(CLIENT6)),
            ..KnockSpec::new(
                "request_ssh_ed25519_ipv6",
                "Request-service for ssh, Ed25519, explicit IPv6 address.",
                &alice,
            )
        },
        Verify {
            source: CLIENT6.into(),
            ..v()
        },
        CLIENT6,
        30,
    );
    push_ok(
        KnockSpec {
            msg_type: MessageType::RequestService,
            services: &["ssh", "web"],
            open_for: OpenFor::Addr(ip(CLIENT6)),
            lifetime_s: 600,
            ..KnockSpec::new(
                "request_two_services_p256_ipv6",
                "Request-service for two services, P-256, IPv6.",
                &alice_p,
            )
        },
        Verify {
            source: CLIENT6.into(),
            ..v()
        },
        CLIENT6,
        600,
    );
    push_ok(
        KnockSpec {
            msg_type: MessageType::Close,
            services: &[],
            lifetime_s: 0,
            ..KnockSpec::new("close_ed25519", "Close: no services, lifetime 0.", &alice)
        },
        v(),
        CLIENT4,
        0,
    );
    push_ok(
        KnockSpec {
            msg_type: MessageType::Close,
            services: &[],
            lifetime_s: 0,
            open_for: OpenFor::Addr(ip(CLIENT6)),
            ..KnockSpec::new("close_p256_ipv6", "Close, P-256, IPv6.", &alice_p)
        },
        Verify {
            source: CLIENT6.into(),
            ..v()
        },
        CLIENT6,
        0,
    );
    let mut src_policy = default_policy_json();
    src_policy["allow_source_mode"] = json!(true);
    push_ok(
        KnockSpec {
            open_for: OpenFor::Source,
            ..KnockSpec::new(
                "open_source_mode_ed25519",
                "Source mode (address kind 0x00), accepted because the policy allows it; opens for the datagram's source.",
                &alice,
            )
        },
        Verify {
            policy: src_policy.clone(),
            source: "10.200.9.9".into(),
            ..v()
        },
        "10.200.9.9",
        30,
    );
    push_ok(
        KnockSpec {
            lifetime_s: 86_400,
            ..KnockSpec::new(
                "open_lifetime_clamped",
                "A one-day lifetime request is clamped to the policy maximum (3600 s), not refused.",
                &alice,
            )
        },
        v(),
        CLIENT4,
        3600,
    );
    push_ok(
        KnockSpec {
            timestamp_ms: NOW + 10_000,
            ..KnockSpec::new(
                "open_at_future_skew_limit",
                "Timestamp exactly now + MAX_FUTURE_SKEW: accepted.",
                &bob,
            )
        },
        v(),
        CLIENT4,
        30,
    );
    push_ok(
        KnockSpec {
            timestamp_ms: NOW - 60_000,
            ..KnockSpec::new(
                "open_at_max_age_limit",
                "Timestamp exactly now - MAX_AGE: accepted.",
                &bob,
            )
        },
        v(),
        CLIENT4,
        30,
    );
    {
        let s = KnockSpec {
            timestamp_ms: TS + 1,
            ..KnockSpec::new(
                "open_above_replay_floor",
                "The identity's floor is TS; TS+1 is strictly newer: accepted.",
                &alice,
            )
        };
        let vv = Verify {
            floors: vec![(alice.identity(), TS)],
            ..v()
        };
        push_ok(s, vv, CLIENT4, 30);
    }
    {
        // SPEC §6.1 rule 6: only the first configured CRL of an issuer
        // counts; a later one listing alice's serial is not consulted.
        let s = KnockSpec::new(
            "open_first_matching_crl_decides",
            "Two CRLs of the CA: the first revokes nothing, the second revokes serial 1001 (alice). Only the first CRL whose issuer matches is consulted: accepted (SPEC §6.1). Configure one CRL per CA.",
            &alice,
        );
        let empty = pki.ca.crl(&[], T_2026, NOW + 7 * 86_400_000).expect("crl");
        let revoking = pki
            .ca
            .crl(&[1001], T_2026, NOW + 7 * 86_400_000)
            .expect("crl");
        let vv = Verify {
            crls: vec![empty, revoking],
            ..v()
        };
        push_ok(s, vv, CLIENT4, 30);
    }
    {
        let s = KnockSpec::new(
            "open_above_global_floor",
            "The global floor G is TS-1 and the identity has no floor: TS is above G, accepted.",
            &alice,
        );
        let vv = Verify {
            global_floor: Some(TS - 1),
            ..v()
        };
        push_ok(s, vv, CLIENT4, 30);
    }
    {
        let (cert, pkcs8) = pki
            .ca
            .issue_with_sans(
                &ClientCertSpec::new("dave", KeyAlg::Ed25519, 1005),
                &[
                    SubjectAltName::Dns("b.example.org"),
                    SubjectAltName::Email("dave@example.org"),
                    SubjectAltName::Uri("https://example.org/dave"),
                    SubjectAltName::Dns("a.example.org"),
                ],
            )
            .expect("dave");
        let dave = Client {
            alg: KeyAlg::Ed25519,
            cert,
            pkcs8,
        };
        let s = KnockSpec::new(
            "open_names_in_san_order",
            "Identity names are the subject CNs, then the subjectAltName entries in the certificate's order, not grouped by type (SPEC §6.3); the rule names the last one.",
            &dave,
        );
        let vv = Verify {
            policy: json!({
                "rules": [{"identity": "dns:a.example.org", "services": ["tunnel"]}],
                "max_lifetime_s": 3600,
                "allow_source_mode": false,
                "require_source_match": true
            }),
            ..v()
        };
        push_ok(s, vv, CLIENT4, 30);
    }

    // ---- negative ----
    let good = KnockSpec::new("base_good", "", &alice);
    let good_body = build_body(pki, &good);
    let good_dg = seal_plaintext(
        DatagramKind::Knock,
        &pki.green.public_key(),
        &good_body,
        good.ikm_e,
    )
    .expect("seal");
    let mut push_refuse = |vec: Value, r: Refusal| out.push(with_expected(vec, refuse(r)));

    push_refuse(
        raw_vector(
            pki,
            "too_short",
            "178 bytes: one below the knock minimum.",
            &good_dg[..178],
            &v(),
        ),
        Refusal::TooShort,
    );
    let mut long = good_dg.clone();
    long.resize(1089, 0);
    push_refuse(
        raw_vector(
            pki,
            "too_long",
            "1089 bytes: one above the knock maximum.",
            &long,
            &v(),
        ),
        Refusal::TooLong,
    );
    let mut bv = good_dg.clone();
    bv[0] = 0x02;
    push_refuse(
        raw_vector(pki, "bad_version", "Version byte 0x02.", &bv, &v()),
        Refusal::BadVersion,
    );
    let random: Vec<u8> = (0..600u32)
        .map(|i| {
            if i == 0 {
                1
            } else {
                (i.wrapping_mul(2654435761) >> 13) as u8
            }
        })
        .collect();
    push_refuse(
        raw_vector(
            pki,
            "mac_mismatch_random",
            "600 pseudo-random bytes with version 0x01: refused by the pre-check MAC.",
            &random,
            &v(),
        ),
        Refusal::MacMismatch,
    );
    let mut ct = good_dg.clone();
    ct[60] ^= 0x01;
    let n = ct.len();
    let mac = precheck_mac(
        DatagramKind::Knock,
        &pki.green.public_key(),
        &ct[..n - MAC_LEN],
    );
    ct[n - MAC_LEN..].copy_from_slice(&mac);
    push_refuse(
        raw_vector(
            pki,
            "open_failed_ciphertext_modified",
            "One ciphertext bit flipped and the MAC recomputed: the AEAD refuses it.",
            &ct,
            &v(),
        ),
        Refusal::OpenFailed,
    );
    let other = testkit::receiver_key("another server");
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                sealed_to: Some(&other),
                ..KnockSpec::new(
                    "mac_mismatch_other_receiver",
                    "A valid knock sealed to another server's key: its MAC key differs.",
                    &alice,
                )
            },
            &v(),
        ),
        Refusal::MacMismatch,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                signed_for: Some(other.public_key()),
                ..KnockSpec::new(
                    "bad_signature_resealed",
                    "Signed for another server (pkR in the transcript), opened there and re-sealed to green: the signature fails.",
                    &alice,
                )
            },
            &v(),
        ),
        Refusal::BadSignature,
    );
    let flipped = mutate_body(&good_body, |b| {
        let n = b.len();
        b[n - 1] ^= 0x80;
    });
    push_refuse(
        plaintext_vector(
            pki,
            "bad_signature_flipped",
            "Last signature byte changed.",
            &flipped,
            &v(),
        ),
        Refusal::BadSignature,
    );
    let changed = mutate_body(&good_body, |b| b[SERVICES_OFF_V4 + 2] = b'u'); // "tunnel" -> "uunnel"
    push_refuse(
        plaintext_vector(
            pki,
            "bad_signature_service_changed",
            "Service name changed after signing.",
            &changed,
            &v(),
        ),
        Refusal::BadSignature,
    );

    let m = |r| Refusal::Malformed(r);
    use proto_spec::MalformedReason as M;
    // cert_len bigger than what remains.
    let trunc = mutate_body(&good_body, |b| {
        let off = SERVICES_OFF_V4 + 1 + 1 + 6;
        let l = u16::from_be_bytes([b[off], b[off + 1]]) + 1;
        b[off..off + 2].copy_from_slice(&l.to_be_bytes());
    });
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_truncated",
            "cert_len one larger than the bytes left before the signature.",
            &trunc,
            &v(),
        ),
        m(M::Truncated),
    );
    let trailing = mutate_body(&good_body, |b| b.push(0));
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_trailing_bytes",
            "One byte after the signature.",
            &trailing,
            &v(),
        ),
        m(M::TrailingBytes),
    );
    let order_type = mutate_body(&good_body, |b| b[0] = 0x04);
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_order_type_in_knock",
            "Message type 0x04 (order) inside a knock.",
            &order_type,
            &v(),
        ),
        m(M::UnknownMessageType),
    );
    let unknown_type = mutate_body(&good_body, |b| b[0] = 0x7f);
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_unknown_message_type",
            "Message type 0x7f.",
            &unknown_type,
            &v(),
        ),
        m(M::UnknownMessageType),
    );
    let bad_kind = mutate_body(&good_body, |b| b[45] = 0x05);
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_bad_address_kind",
            "Address kind 0x05.",
            &bad_kind,
            &v(),
        ),
        m(M::BadAddressKind),
    );
    let bad_addr = mutate_body(&good_body, |b| b[46..50].copy_from_slice(&[0, 0, 0, 0]));
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_bad_address",
            "Address 0.0.0.0.",
            &bad_addr,
            &v(),
        ),
        m(M::BadAddress),
    );
    let bad_name = mutate_body(&good_body, |b| b[SERVICES_OFF_V4 + 2] = b'T');
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_bad_service_name",
            "Upper-case letter in a service name.",
            &bad_name,
            &v(),
        ),
        m(M::BadServiceName),
    );
    let many = mutate_body(&good_body, |b| b[SERVICES_OFF_V4] = 9);
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_too_many_services",
            "service_count 9.",
            &many,
            &v(),
        ),
        m(M::TooManyServices),
    );
    let long_life = mutate_body(&good_body, |b| {
        b[41..45].copy_from_slice(&86_401u32.to_be_bytes())
    });
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_bad_lifetime",
            "Lifetime 86401 s.",
            &long_life,
            &v(),
        ),
        m(M::BadLifetime),
    );
    let close_with_life = mutate_body(&good_body, |b| b[0] = 0x03);
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_close_with_services",
            "A close carrying a lifetime and a service.",
            &close_with_life,
            &v(),
        ),
        m(M::FieldNotAllowed),
    );
    let zero_life = mutate_body(&good_body, |b| {
        b[41..45].copy_from_slice(&0u32.to_be_bytes())
    });
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_open_zero_lifetime",
            "An open-tunnel with lifetime 0.",
            &zero_life,
            &v(),
        ),
        m(M::FieldNotAllowed),
    );
    let zero_cert = mutate_body(&good_body, |b| {
        let off = SERVICES_OFF_V4 + 1 + 1 + 6;
        let cl = usize::from(u16::from_be_bytes([b[off], b[off + 1]]));
        b[off..off + 2].copy_from_slice(&0u16.to_be_bytes());
        b.drain(off + 2..off + 2 + cl);
    });
    push_refuse(
        plaintext_vector(
            pki,
            "malformed_zero_cert_length",
            "cert_len 0.",
            &zero_cert,
            &v(),
        ),
        m(M::BadCertLength),
    );

    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                timestamp_ms: NOW - 60_001,
                ..KnockSpec::new("stale", "Timestamp now - MAX_AGE - 1 ms.", &alice)
            },
            &v(),
        ),
        Refusal::Stale,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                timestamp_ms: NOW + 10_001,
                ..KnockSpec::new(
                    "future_dated",
                    "Timestamp now + MAX_FUTURE_SKEW + 1 ms.",
                    &alice,
                )
            },
            &v(),
        ),
        Refusal::FutureDated,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "replayed",
                "The identity's floor equals the knock's timestamp.",
                &alice,
            ),
            &Verify {
                floors: vec![(alice.identity(), TS)],
                ..v()
            },
        ),
        Refusal::Replayed,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "replayed_global_floor",
                "No floor for the identity, but the global floor G equals the knock's timestamp (SPEC §7.2: ts > G is required).",
                &alice,
            ),
            &Verify {
                global_floor: Some(TS),
                ..v()
            },
        ),
        Refusal::Replayed,
    );

    let c = |r| Refusal::Certificate(r);
    use proto_spec::CertificateError as C;
    let garbage_cert = Client {
        cert: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ..alice.clone()
    };
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_bad_der",
                "The certificate field is not an X.509 certificate.",
                &garbage_cert,
            ),
            &v(),
        ),
        c(C::BadDer),
    );
    let rogue = pki.client_from(
        &pki.rogue,
        ClientCertSpec::new("alice", KeyAlg::Ed25519, 1001),
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_unknown_issuer",
                "Issued by a CA that is not a trust anchor.",
                &rogue,
            ),
            &v(),
        ),
        c(C::UnknownIssuer),
    );
    let expired = pki.client_from(
        &pki.ca,
        ClientCertSpec {
            not_after_ms: NOW - 86_400_000,
            ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 1010)
        },
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_expired",
                "notAfter one day before now.",
                &expired,
            ),
            &v(),
        ),
        c(C::Expired),
    );
    let future = pki.client_from(
        &pki.ca,
        ClientCertSpec {
            not_before_ms: NOW + 86_400_000,
            ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 1011)
        },
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_not_yet_valid",
                "notBefore one day after now.",
                &future,
            ),
            &v(),
        ),
        c(C::NotYetValid),
    );
    let crl = pki
        .ca
        .crl(&[1001], T_2026, NOW + 7 * 86_400_000)
        .expect("crl");
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_revoked",
                "Serial 1001 is on the CA's CRL.",
                &alice,
            ),
            &Verify {
                crls: vec![crl],
                ..v()
            },
        ),
        c(C::Revoked),
    );
    let server_only = pki.client_from(
        &pki.ca,
        ClientCertSpec {
            client_auth: false,
            ..ClientCertSpec::new("alice", KeyAlg::Ed25519, 1012)
        },
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_wrong_usage",
                "Extended key usage serverAuth only.",
                &server_only,
            ),
            &v(),
        ),
        c(C::WrongUsage),
    );
    let p384 = Client {
        cert: pki.ca.issue_p384_placeholder("alice", 1013).expect("p384"),
        ..alice.clone()
    };
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_unsupported_key",
                "A P-384 client key: spa accepts only Ed25519 and P-256 client keys. (Signed by alice's Ed25519 key; the key type is refused before the signature is checked.)",
                &p384,
            ),
            &v(),
        ),
        c(C::UnsupportedKey),
    );
    let old_crl = pki.ca.crl(&[], T_2026, NOW - 1000).expect("crl");
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_crl_expired",
                "The CA's CRL is past its nextUpdate (fail closed).",
                &alice,
            ),
            &Verify {
                crls: vec![old_crl],
                ..v()
            },
        ),
        c(C::CrlExpired),
    );

    // SPEC §2.2: one encoding of a P-256 key, so one IdentityKey per key.
    let compressed = {
        let parsed = parse_client_cert(&alice_p.cert).expect("cert");
        let proto_spec::sign::ClientPublicKey::P256(pk) = parsed.public_key else {
            panic!("alice_p is P-256")
        };
        let point = pk.as_sec1_bytes();
        let mut c = vec![0x02 | (point[64] & 1)];
        c.extend_from_slice(&point[1..33]);
        c
    };
    let alice_compressed = Client {
        cert: pki
            .ca
            .issue_raw_key("alice", 1014, RawKeyAlg::P256, compressed)
            .expect("compressed"),
        ..alice_p.clone()
    };
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_compressed_p256_key",
                "alice's P-256 key as a compressed SEC 1 point (0x02/0x03 || x): only the uncompressed form is accepted, so that one key has one IdentityKey (SPEC §2.2, §2.4). Signed with alice's P-256 key.",
                &alice_compressed,
            ),
            &v(),
        ),
        c(C::UnsupportedKey),
    );
    let mut identity_point = [0u8; 32];
    identity_point[0] = 0x01;
    let small_order = Client {
        cert: pki
            .ca
            .issue_raw_key("alice", 1015, RawKeyAlg::Ed25519, identity_point.to_vec())
            .expect("small order"),
        ..alice.clone()
    };
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_small_order_ed25519_key",
                "An Ed25519 key of small order (the neutral point, 0100..00): no signature verifies with it under SPEC §4.4, so it is refused as a key (SPEC §2.2). Signed with alice's Ed25519 key.",
                &small_order,
            ),
            &v(),
        ),
        c(C::UnsupportedKey),
    );
    let mut forged_crl = pki.ca.crl(&[], T_2026, NOW + 7 * 86_400_000).expect("crl");
    let last = forged_crl.len() - 1;
    forged_crl[last] ^= 0x01;
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_crl_bad_signature",
                "The CA's CRL (revoking nothing) has a bad signature: certificate(other), fail closed (SPEC §6.1).",
                &alice,
            ),
            &Verify {
                crls: vec![forged_crl],
                ..v()
            },
        ),
        c(C::Other),
    );

    // SPEC §6.1: a CRL is found by its issuer name alone (not by the
    // Authority Key Identifier), and only the first one found counts.
    let namesake = TestCa::with_key_label("spa test root", "ca namesake", T_2026, testkit::T_2036)
        .expect("namesake");
    let namesake_crl = namesake
        .crl(&[], T_2026, NOW + 7 * 86_400_000)
        .expect("crl");
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "certificate_crl_same_name_other_key",
                "The only CRL names the CA as issuer but is signed by another key (its Authority Key Identifier differs): it is the CRL for alice's issuer, by name, and its signature fails: certificate(other) (SPEC §6.1).",
                &alice,
            ),
            &Verify {
                crls: vec![namesake_crl],
                ..v()
            },
        ),
        c(C::Other),
    );

    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "wrong_source_address",
                "Explicit address 10.200.1.2, datagram from 10.200.1.99.",
                &alice,
            ),
            &Verify {
                source: "10.200.1.99".into(),
                ..v()
            },
        ),
        Refusal::WrongSourceAddress,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                open_for: OpenFor::Source,
                ..KnockSpec::new(
                    "source_mode_not_allowed",
                    "Source mode under the default policy.",
                    &alice,
                )
            },
            &v(),
        ),
        Refusal::SourceModeNotAllowed,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec::new(
                "unknown_identity",
                "A valid certificate no policy rule names.",
                &carol,
            ),
            &v(),
        ),
        Refusal::UnknownIdentity,
    );
    push_refuse(
        knock_vector(
            pki,
            &KnockSpec {
                msg_type: MessageType::RequestService,
                services: &["ssh"],
                ..KnockSpec::new("unauthorized_service", "bob may use only the tunnel.", &bob)
            },
            &v(),
        ),
        Refusal::UnauthorizedService,
    );

    json!({
        "description": "spa knock test vectors (SPEC §10). Generated by proto-spec/tests/vectors.rs; do not edit by hand.",
        "vectors": out,
    })
}

struct OrderSpec<'a> {
    name: &'a str,
    description: &'a str,
    client_body: Vec<u8>,
    order_timestamp_ms: u64,
    session_id: [u8; 16],
    lifetime_s: u32,
    open_for: IpAddr,
    gateway_label: &'a str,
}

fn order_vector(pki: &Pki, s: &OrderSpec<'_>, v: &Verify) -> Value {
    let gw = testkit::gateway_signer(s.gateway_label);
    let trusted = testkit::gateway_signer("green signing");
    let ikm = testkit::seed(&format!("ikm {}", s.name));
    let fields = OrderFields {
        order_timestamp_ms: s.order_timestamp_ms,
        session_id: s.session_id,
        lifetime_s: s.lifetime_s,
        open_for: s.open_for,
        client_body: &s.client_body,
    };
    let d = seal_order(&gw, &pki.red.public_key(), &fields, ikm).expect("seal order");
    let mut verify = verify_json(pki, v, &pki.red);
    verify["gateways"] = json!([{
        "signing_public_key": h(&trusted.public_key()),
        "receiver_public_key": h(pki.green.public_key().as_bytes()),
    }]);
    json!({
        "name": s.name,
        "kind": "order",
        "description": s.description,
        "reproduce": "seal_order",
        "inputs": {
            "receiver_private_key": h(&pki.red.to_bytes()[..]),
            "receiver_public_key": h(pki.red.public_key().as_bytes()),
            "gateway_signing_seed": h(&testkit::seed(s.gateway_label)),
            "gateway_signing_public_key": h(&gw.public_key()),
            "order_timestamp_ms": s.order_timestamp_ms,
            "session_id": h(&s.session_id),
            "lifetime_s": s.lifetime_s,
            "open_for": s.open_for.to_string(),
            "client_body": h(&s.client_body),
            "ikm_e": h(&ikm),
        },
        "intermediate": {
            "enc": h(&hpke_suite::ephemeral_public(&ikm)),
            "mac_key": h(&mac_key(DatagramKind::Order, &pki.red.public_key())),
        },
        "verify": verify,
        "datagram": h(&d),
    })
}

fn generate_orders(pki: &Pki) -> Value {
    let alice = pki.client("alice", KeyAlg::Ed25519, 1001);
    let alice_p = pki.client("alice", KeyAlg::P256, 1002);
    let bob = pki.client("bob", KeyAlg::Ed25519, 1003);
    let body = |name: &str, c: &Client, t: MessageType, services: &'static [&'static str]| {
        let (lifetime_s, services): (u32, &[&str]) = if t == MessageType::Close {
            (0, &[])
        } else {
            (30, services)
        };
        build_body(
            pki,
            &KnockSpec {
                msg_type: t,
                services,
                lifetime_s,
                ..KnockSpec::new(name, "", c)
            },
        )
    };
    let req = body(
        "order_client_request",
        &alice,
        MessageType::RequestService,
        &["ssh"],
    );
    let req_p = body(
        "order_client_request_p256",
        &alice_p,
        MessageType::RequestService,
        &["web"],
    );
    let close = body("order_client_close", &alice, MessageType::Close, &[]);
    let open = body(
        "order_client_open",
        &alice,
        MessageType::OpenTunnel,
        &["tunnel"],
    );
    let bob_req = body(
        "order_client_bob",
        &bob,
        MessageType::RequestService,
        &["tunnel"],
    );
    let base = |name: &'static str, description: &'static str, client_body: &Vec<u8>| OrderSpec {
        name,
        description,
        client_body: client_body.clone(),
        order_timestamp_ms: TS + 10,
        session_id: session_for(""),
        lifetime_s: 30,
        open_for: ip(GREEN4),
        gateway_label: "green signing",
    };
    let v = || Verify {
        source: GREEN4.into(),
        ..Verify::new()
    };
    let mut out = Vec::new();
    let accept = |c: &Client, action: &str, services: &[&str], lifetime: u32, open_for: &str| {
        let parsed = parse_client_cert(&c.cert).expect("cert");
        json!({
            "verdict": "accept",
            "action": action,
            "gateway_identity_key": h(&IdentityKey::of_ed25519(&testkit::gateway_signer("green signing").public_key()).0),
            "client_identity_key": h(&parsed.identity.key.0),
            "client_names": parsed.identity.names,
            "services": services,
            "lifetime_s": lifetime,
            "open_for": open_for,
        })
    };
    out.push(with_expected(
        order_vector(
            pki,
            &base(
                "order_request_ed25519_ipv4",
                "Green relays alice's request for ssh; red opens for green's IPv4 address.",
                &req,
            ),
            &v(),
        ),
        accept(&alice, "open", &["ssh"], 30, GREEN4),
    ));
    out.push(with_expected(
        order_vector(
            pki,
            &OrderSpec {
                open_for: ip(GREEN6),
                lifetime_s: 20,
                ..base(
                    "order_request_p256_ipv6",
                    "P-256 client, order over IPv6, order lifetime shorter than the client's.",
                    &req_p,
                )
            },
            &Verify {
                source: GREEN6.into(),
                ..v()
            },
        ),
        accept(&alice_p, "open", &["web"], 20, GREEN6),
    ));
    out.push(with_expected(
        order_vector(
            pki,
            &OrderSpec {
                lifetime_s: 0,
                ..base("order_close", "Green relays alice's close.", &close)
            },
            &v(),
        ),
        accept(&alice, "close", &[], 0, GREEN4),
    ));
    out.push(with_expected(order_vector(pki, &base("order_resend_same_client_body", "A second, fresh order carrying a client body at the client's floor (floor rule for client bodies is >=).", &req), &Verify { floors: vec![(alice.identity(), TS)], ..v() }), accept(&alice, "open", &["ssh"], 30, GREEN4)));

    let mut push_refuse = |vec: Value, r: Refusal| out.push(with_expected(vec, refuse(r)));
    push_refuse(
        order_vector(
            pki,
            &OrderSpec {
                gateway_label: "mallory",
                ..base(
                    "order_unknown_gateway",
                    "Signed by a gateway key red does not know.",
                    &req,
                )
            },
            &v(),
        ),
        Refusal::UnknownGateway,
    );
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_replayed",
                "The gateway's floor equals the order timestamp.",
                &req,
            ),
            &Verify {
                floors: vec![(
                    IdentityKey::of_ed25519(&testkit::gateway_signer("green signing").public_key()),
                    TS + 10,
                )],
                ..v()
            },
        ),
        Refusal::Replayed,
    );
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_wrong_source",
                "Order claims 10.200.2.1 but arrives from 10.200.2.9.",
                &req,
            ),
            &Verify {
                source: "10.200.2.9".into(),
                ..v()
            },
        ),
        Refusal::WrongSourceAddress,
    );
    push_refuse(
        order_vector(
            pki,
            &OrderSpec {
                order_timestamp_ms: NOW - 60_001,
                ..base("order_stale", "Order timestamp older than MAX_AGE.", &req)
            },
            &v(),
        ),
        Refusal::Stale,
    );
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_open_tunnel_body",
                "An open-tunnel body cannot be relayed to red.",
                &open,
            ),
            &v(),
        ),
        Refusal::WrongMessageType,
    );
    push_refuse(
        order_vector(
            pki,
            &OrderSpec {
                session_id: [0x55; 16],
                ..base(
                    "order_session_mismatch",
                    "Order session id differs from the client body's.",
                    &req,
                )
            },
            &v(),
        ),
        Refusal::SessionMismatch,
    );
    let forged = mutate_body(&req, |b| {
        let n = b.len();
        b[n - 2] ^= 0x01;
    });
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_forged_client_signature",
                "Valid gateway signature over a client body whose signature is forged.",
                &forged,
            ),
            &v(),
        ),
        Refusal::BadSignature,
    );
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_client_body_below_floor",
                "The client has a newer accepted body at red (floor TS+1).",
                &req,
            ),
            &Verify {
                floors: vec![(alice.identity(), TS + 1)],
                ..v()
            },
        ),
        Refusal::Replayed,
    );
    {
        // A valid order whose gateway signature is then damaged: built at the
        // plaintext level and sealed with seal_plaintext.
        let name = "order_bad_gateway_signature";
        let gw_seed = testkit::seed("green signing");
        let sk = ed25519_dalek::SigningKey::from_bytes(&gw_seed);
        let fields = OrderFields {
            order_timestamp_ms: TS + 10,
            session_id: session_for(""),
            lifetime_s: 30,
            open_for: ip(GREEN4),
            client_body: &req,
        };
        let mut pt =
            proto_spec::order::encode_order_signed_part(&fields, &sk.verifying_key().to_bytes())
                .expect("encode");
        let sig = ed25519_dalek::Signer::sign(
            &sk,
            &transcript(ORDER_SIGNATURE_CONTEXT, &pki.red.public_key(), &pt),
        )
        .to_bytes();
        pt.extend_from_slice(&sig);
        let n = pt.len();
        pt[n - 1] ^= 0x01;
        let ikm = testkit::seed(&format!("ikm {name}"));
        let d = seal_plaintext(DatagramKind::Order, &pki.red.public_key(), &pt, ikm).expect("seal");
        let mut verify = verify_json(pki, &v(), &pki.red);
        verify["gateways"] = json!([{ "signing_public_key": h(&sk.verifying_key().to_bytes()), "receiver_public_key": h(pki.green.public_key().as_bytes()) }]);
        push_refuse(
            json!({
                "name": name,
                "kind": "order",
                "description": "The last byte of the gateway's signature changed.",
                "reproduce": "seal_plaintext",
                "inputs": { "receiver_public_key": h(pki.red.public_key().as_bytes()), "ikm_e": h(&ikm) },
                "intermediate": { "plaintext": h(&pt) },
                "verify": verify,
                "datagram": h(&d),
            }),
            Refusal::BadGatewaySignature,
        );
    }
    let mut red_policy = default_policy_json();
    red_policy["rules"][1]["services"] = json!([]);
    push_refuse(
        order_vector(
            pki,
            &base(
                "order_unauthorized_at_red",
                "Green allowed bob the tunnel, red's own policy does not.",
                &bob_req,
            ),
            &Verify {
                policy: red_policy,
                ..v()
            },
        ),
        Refusal::UnauthorizedService,
    );
    push_refuse(
        order_vector(
            pki,
            &OrderSpec {
                lifetime_s: 0,
                ..base(
                    "order_request_zero_lifetime",
                    "A request order with lifetime 0.",
                    &req,
                )
            },
            &v(),
        ),
        Refusal::Malformed(proto_spec::MalformedReason::FieldNotAllowed),
    );

    json!({
        "description": "spa order test vectors (SPEC §10). Generated by proto-spec/tests/vectors.rs; do not edit by hand.",
        "vectors": out,
    })
}

fn vector_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-vectors")
        .join(name)
}

fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json");
    s.push('\n');
    s
}

#[test]
fn vectors_match_generator() {
    let pki = Pki::new();
    for (file, value) in [
        ("knocks.json", generate_knocks(&pki)),
        ("orders.json", generate_orders(&pki)),
    ] {
        let text = render(&value);
        let path = vector_path(file);
        if std::env::var_os("SPA_REGENERATE_VECTORS").is_some() {
            std::fs::write(&path, &text).expect("write vectors");
            continue;
        }
        let committed = std::fs::read_to_string(&path)
            .expect("vector file (regenerate with SPA_REGENERATE_VECTORS=1)");
        assert!(
            committed == text,
            "{file} differs from the generator: regenerate with SPA_REGENERATE_VECTORS=1 and review the diff"
        );
    }
}

// ---------------------------------------------------------------------------
// Checking from the files alone
// ---------------------------------------------------------------------------

fn policy_from(v: &Value) -> Policy {
    Policy {
        rules: v["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| Rule {
                identity: IdentityPattern::parse(r["identity"].as_str().expect("identity")),
                services: ServiceSet::Named(
                    r["services"]
                        .as_array()
                        .expect("services")
                        .iter()
                        .map(|s| s.as_str().expect("s").to_owned())
                        .collect(),
                ),
            })
            .collect(),
        max_lifetime_s: v["max_lifetime_s"].as_u64().expect("max") as u32,
        allow_source_mode: v["allow_source_mode"].as_bool().expect("bool"),
        require_source_match: v["require_source_match"].as_bool().expect("bool"),
    }
}

fn trust_from(v: &Value) -> TrustStore {
    TrustStore::new(&TrustConfig {
        anchors: v["ca_certificates"]
            .as_array()
            .expect("cas")
            .iter()
            .map(unhex)
            .collect(),
        crls: v["crls"]
            .as_array()
            .expect("crls")
            .iter()
            .map(unhex)
            .collect(),
        ..TrustConfig::default()
    })
    .expect("trust")
}

fn limits_from(v: &Value, age_field: &str) -> TimeLimits {
    TimeLimits {
        max_age_ms: v[age_field].as_u64().expect("age"),
        max_future_skew_ms: v["max_future_skew_ms"].as_u64().expect("skew"),
    }
}

fn replay_from(v: &Value) -> MemoryReplayState {
    let mut r = match v["global_floor_ms"].as_u64() {
        Some(g) => MemoryReplayState::with_global_floor(g),
        None => MemoryReplayState::default(),
    };
    for f in v["replay_floors"].as_array().expect("floors") {
        r.commit(
            &IdentityKey(unhex32(&f["identity_key"])),
            f["timestamp_ms"].as_u64().expect("ts"),
        )
        .expect("commit");
    }
    r
}

fn open_for_from(v: &Value) -> OpenFor {
    match v.as_str().expect("open_for") {
        "source" => OpenFor::Source,
        a => OpenFor::Addr(ip(a)),
    }
}

fn msg_type_from(s: &str) -> MessageType {
    match s {
        "open-tunnel" => MessageType::OpenTunnel,
        "request-service" => MessageType::RequestService,
        "close" => MessageType::Close,
        other => panic!("unknown msg_type {other}"),
    }
}

fn reseal(vector: &Value) -> Option<Vec<u8>> {
    let i = &vector["inputs"];
    match vector["reproduce"].as_str().expect("reproduce") {
        "none" => None,
        "seal_plaintext" => {
            let pk = ReceiverPublicKey(unhex32(&i["receiver_public_key"]));
            let kind = if vector["kind"] == "order" {
                DatagramKind::Order
            } else {
                DatagramKind::Knock
            };
            Some(
                seal_plaintext(
                    kind,
                    &pk,
                    &unhex(&vector["intermediate"]["plaintext"]),
                    unhex32(&i["ikm_e"]),
                )
                .expect("seal"),
            )
        }
        "seal_knock" => {
            let key = unhex(&i["client_private_key_pkcs8"]);
            let cert = unhex(&i["client_certificate"]);
            let signer: Box<dyn Signer> = match i["client_key_algorithm"].as_str().expect("alg") {
                "ed25519" => Box::new(Ed25519Signer::from_pkcs8_der(&key, cert).expect("key")),
                "ecdsa-p256-sha256" => {
                    Box::new(P256Signer::from_pkcs8_der(&key, cert).expect("key"))
                }
                other => panic!("unknown algorithm {other}"),
            };
            let services: Vec<&str> = i["services"]
                .as_array()
                .expect("services")
                .iter()
                .map(|s| s.as_str().expect("s"))
                .collect();
            let req = KnockRequest {
                msg_type: msg_type_from(i["msg_type"].as_str().expect("type")),
                timestamp_ms: i["timestamp_ms"].as_u64().expect("ts"),
                nonce: unhex(&i["nonce"]).try_into().expect("16"),
                session_id: unhex(&i["session_id"]).try_into().expect("16"),
                lifetime_s: i["lifetime_s"].as_u64().expect("lifetime") as u32,
                open_for: open_for_from(&i["open_for"]),
                services: &services,
            };
            let pk = ReceiverPublicKey(unhex32(&i["receiver_public_key"]));
            Some(seal_knock(signer.as_ref(), &pk, &req, unhex32(&i["ikm_e"])).expect("seal"))
        }
        "seal_order" => {
            let gw = GatewaySigner::from_seed(&Zeroizing::new(unhex32(&i["gateway_signing_seed"])));
            assert_eq!(
                h(&gw.public_key()),
                i["gateway_signing_public_key"].as_str().expect("pk")
            );
            let body = unhex(&i["client_body"]);
            let fields = OrderFields {
                order_timestamp_ms: i["order_timestamp_ms"].as_u64().expect("ts"),
                session_id: unhex(&i["session_id"]).try_into().expect("16"),
                lifetime_s: i["lifetime_s"].as_u64().expect("l") as u32,
                open_for: ip(i["open_for"].as_str().expect("ip")),
                client_body: &body,
            };
            let pk = ReceiverPublicKey(unhex32(&i["receiver_public_key"]));
            Some(seal_order(&gw, &pk, &fields, unhex32(&i["ikm_e"])).expect("seal"))
        }
        other => panic!("unknown reproduce {other}"),
    }
}

fn check_vector(vector: &Value) {
    let name = vector["name"].as_str().expect("name");
    let datagram = unhex(&vector["datagram"]);
    if let Some(again) = reseal(vector) {
        assert_eq!(
            h(&again),
            h(&datagram),
            "{name}: re-sealing from the inputs differs"
        );
    }
    let v = &vector["verify"];
    let key = ReceiverSecretKey::from_bytes(unhex32(&v["receiver_private_key"]));
    let now = v["now_ms"].as_u64().expect("now");
    let source = ip(v["source"].as_str().expect("source"));
    let mut replay = replay_from(v);
    let expected = &vector["expected"];
    let got: Result<Value, Refusal> = if vector["kind"] == "knock" {
        let mut ver = KnockVerifier::new(
            vec![key],
            trust_from(v),
            policy_from(&v["policy"]),
            limits_from(v, "max_age_ms"),
        );
        ver.verify(&datagram, source, now, &mut replay).map(|k| {
            json!({
                "verdict": "accept",
                "msg_type": k.msg_type.name(),
                "identity_key": h(&k.identity.key.0),
                "names": k.identity.names,
                "open_for": k.open_for.to_string(),
                "services": k.services,
                "lifetime_s": k.lifetime_s,
                "session_id": h(&k.session_id),
            })
        })
    } else {
        let gateways = v["gateways"]
            .as_array()
            .expect("gateways")
            .iter()
            .map(|g| Gateway {
                signing_key: unhex32(&g["signing_public_key"]),
                receiver_keys: vec![ReceiverPublicKey(unhex32(&g["receiver_public_key"]))],
            })
            .collect();
        let mut ver = OrderVerifier::new(
            vec![key],
            gateways,
            trust_from(v),
            policy_from(&v["policy"]),
            limits_from(v, "max_age_ms"),
            limits_from(v, "max_age_ms"),
        )
        .expect("red");
        ver.verify(&datagram, source, now, &mut replay).map(|o| {
            json!({
                "verdict": "accept",
                "action": match o.action { OrderAction::Open => "open", OrderAction::Close => "close" },
                "gateway_identity_key": h(&o.gateway.0),
                "client_identity_key": h(&o.client.key.0),
                "client_names": o.client.names,
                "services": o.services,
                "lifetime_s": o.lifetime_s,
                "open_for": o.open_for.to_string(),
            })
        })
    };
    let got = got.unwrap_or_else(refuse);
    assert_eq!(&got, expected, "{name}: verdict differs");
}

fn load(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(vector_path(file)).expect("vector file");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["vectors"].as_array().expect("vectors").clone()
}

#[test]
fn vectors_verify_from_file_inputs() {
    let mut positive = 0;
    let mut negative = 0;
    let mut reasons = std::collections::BTreeSet::new();
    for file in ["knocks.json", "orders.json"] {
        for vector in load(file) {
            check_vector(&vector);
            if vector["expected"]["verdict"] == "accept" {
                positive += 1;
            } else {
                negative += 1;
                reasons.insert(format!(
                    "{}{}",
                    vector["expected"]["reason"], vector["expected"]["detail"]
                ));
            }
        }
    }
    assert!(positive >= 10, "{positive} positive vectors");
    assert!(negative >= 20, "{negative} negative vectors");
    // Every refusal reason that a datagram can cause has a vector
    // (storage_failure is a property of the store, tested in flow.rs).
    assert!(
        reasons.len() >= 30,
        "{} distinct refusal reasons: {reasons:?}",
        reasons.len()
    );
}
