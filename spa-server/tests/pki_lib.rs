//! `spa_pki` as a library, at fixed times: what it issues validates
//! with green's verifier (and knocks), what it revokes is refused, and its
//! refusals are typed.

mod pki_support;

use std::path::Path;

use pki_support::*;
use proto_spec::cert::{TrustConfig, TrustError, TrustStore};
use proto_spec::{CertificateError, Refusal};
use rcgen::{CertificateParams, KeyPair, PublicKeyData as _};
use spa_pki::{
    self as pki, Ca, CaAlgorithm, InitOptions, IssueRequest, PkiError, RevocationReason,
    SubjectKey, TrustFiles, Usage,
};
use time::{Duration, OffsetDateTime};

/// 2027-03-01T00:00:00Z.
fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_803_859_200).expect("time")
}

fn ms(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).expect("positive") * 1000
}

fn new_ca(dir: &Path, algorithm: CaAlgorithm, days: u32, now: OffsetDateTime) -> Ca {
    new_named_ca(dir, "lib CA", algorithm, days, now)
}

fn new_named_ca(
    dir: &Path,
    name: &str,
    algorithm: CaAlgorithm,
    days: u32,
    now: OffsetDateTime,
) -> Ca {
    pki::init(
        dir,
        &InitOptions {
            name: name.into(),
            algorithm,
            days,
        },
        now,
    )
    .expect("init")
}

fn client_key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).expect("key")
}

fn csr_request(key: &KeyPair, name: &str) -> IssueRequest {
    let csr = CertificateParams::new(vec![])
        .expect("params")
        .serialize_request(key)
        .expect("csr");
    IssueRequest {
        key: SubjectKey::Csr {
            path: "req.csr".into(),
            der: csr.der().to_vec(),
        },
        name: name.into(),
        emails: vec![format!("{name}@example.org")],
        dns: vec![],
        ips: vec![],
        days: 30,
        usage: Usage::Client,
    }
}

fn store(ca: &Ca, crls: Vec<Vec<u8>>) -> TrustStore {
    TrustStore::new(&TrustConfig {
        anchors: vec![ca.cert_der().to_vec()],
        crls,
        ..TrustConfig::default()
    })
    .expect("trust")
}

#[test]
fn issued_certificates_validate_knock_and_revoke() {
    for ca_alg in [CaAlgorithm::Ed25519, CaAlgorithm::P256] {
        for key_alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P256_SHA256] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let ca = new_ca(&tmp.path().join("ca"), ca_alg, 365, t0());
            let key = client_key(key_alg);
            let now = t0() + Duration::hours(1);
            let issued = ca.issue(&csr_request(&key, "alice"), now).expect("issue");
            assert_eq!(issued.serial, 1);
            assert!(!issued.clamped);
            let id = pki::validate_client_certificate(&store(&ca, vec![]), &issued.der, ms(now))
                .expect("valid");
            assert_eq!(id.names, vec!["cn:alice", "email:alice@example.org"]);

            // The key and certificate as files, through spa-keys, knock.
            let key_path = tmp.path().join("alice.key");
            let cert_path = tmp.path().join("alice.der");
            spa_keys::write_secret_file(&key_path, key.serialize_pem().as_bytes(), false)
                .expect("key file");
            std::fs::write(&cert_path, &issued.der).expect("cert file");
            let signer = spa_keys::load_software_signer(&key_path, &cert_path).expect("signer");
            knock_through_green(&signer, store(&ca, vec![]), "alice", ms(now))
                .expect("knock accepted");

            // Revoked: refused once the CRL is loaded.
            let serial = ca.serial_of(&cert_path, &issued.der).expect("ours");
            ca.revoke(serial, RevocationReason::KeyCompromise, now)
                .expect("revoke");
            let crl = ca.crl(7, now).expect("crl");
            assert_eq!((crl.number, crl.revoked), (1, 1));
            assert_eq!(
                knock_through_green(&signer, store(&ca, vec![crl.der]), "alice", ms(now)).err(),
                Some(Refusal::Certificate(CertificateError::Revoked))
            );
        }
    }
}

#[test]
fn validity_is_cut_to_the_ca_and_an_expired_ca_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::Ed25519, 10, t0());
    let key = client_key(&rcgen::PKCS_ED25519);
    let mut req = csr_request(&key, "bob");
    req.days = 365;
    let issued = ca.issue(&req, t0()).expect("issue");
    assert!(issued.clamped);
    assert_eq!(issued.not_after, ca.not_after());

    let e = ca.issue(&req, ca.not_after()).expect_err("expired");
    assert!(matches!(e, PkiError::CaExpired { .. }), "{e}");
    let e = ca
        .issue(&req, t0() - Duration::days(1))
        .expect_err("not yet valid");
    assert!(matches!(e, PkiError::CaNotYetValid { .. }), "{e}");
    // Serials are not consumed by refusals.
    assert_eq!(ca.issue(&req, t0()).expect("issue").serial, 2);
}

#[test]
fn crl_numbers_increase_and_an_expired_crl_fails_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::P256, 365, t0());
    let key = client_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = ca.issue(&csr_request(&key, "carol"), t0()).expect("issue");
    let numbers: Vec<u64> = (0..3)
        .map(|_| ca.crl(1, t0()).expect("crl").number)
        .collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    let crl = ca.crl(1, t0()).expect("crl");
    assert_eq!(crl.next_update, t0() + Duration::days(1));
    let s = store(&ca, vec![crl.der]);
    assert_eq!(s.validate(&issued.der, ms(crl.next_update) - 1000), Ok(()));
    assert_eq!(
        s.validate(&issued.der, ms(crl.next_update)),
        Err(CertificateError::CrlExpired)
    );
}

#[test]
fn crl_from_another_ca_is_refused_when_loading_trust() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ours = new_ca(&tmp.path().join("a"), CaAlgorithm::Ed25519, 365, t0());
    let theirs = new_named_ca(&tmp.path().join("b"), "b", CaAlgorithm::Ed25519, 365, t0());
    let crl = theirs.crl(7, t0()).expect("crl");
    let e = TrustStore::new(&TrustConfig {
        anchors: vec![ours.cert_der().to_vec()],
        crls: vec![crl.der.clone()],
        ..TrustConfig::default()
    })
    .expect_err("unknown CA");
    assert_eq!(e, TrustError::CrlFromUnknownCa { index: 0 });

    let crl_path = tmp.path().join("b.crl");
    std::fs::write(&crl_path, &crl.der).expect("write");
    let e = pki::load_trust(&TrustFiles {
        cas: vec![tmp.path().join("a/ca.pem")],
        crls: vec![crl_path.clone()],
        ..TrustFiles::default()
    })
    .expect_err("unknown CA");
    assert!(
        e.to_string().starts_with(&format!(
            "{}: the CRL was issued by a CA that is not configured",
            crl_path.display()
        )),
        "{e}"
    );
    assert!(matches!(
        pki::load_trust(&TrustFiles::default()),
        Err(pki::TrustFileError::NoTrustAnchor)
    ));
}

#[test]
fn certificates_of_another_ca_and_unknown_serials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ours = new_ca(&tmp.path().join("a"), CaAlgorithm::Ed25519, 365, t0());
    // Same name, other key: refused all the same.
    let theirs = new_ca(&tmp.path().join("b"), CaAlgorithm::Ed25519, 365, t0());
    let other_name = new_named_ca(&tmp.path().join("c"), "c", CaAlgorithm::P256, 365, t0());
    let key = client_key(&rcgen::PKCS_ED25519);
    let foreign = theirs
        .issue(&csr_request(&key, "dan"), t0())
        .expect("issue");
    let e = ours
        .serial_of(Path::new("dan.pem"), &foreign.der)
        .expect_err("foreign");
    assert_eq!(e.to_string(), "dan.pem was not issued by this CA");
    let foreign = other_name
        .issue(&csr_request(&key, "dan"), t0())
        .expect("issue");
    assert!(matches!(
        ours.serial_of(Path::new("dan.pem"), &foreign.der),
        Err(PkiError::NotIssuedHere { .. })
    ));
    assert!(matches!(
        ours.revoke(1, RevocationReason::Unspecified, t0()),
        Err(PkiError::UnknownSerial { serial: 1, .. })
    ));
    assert_eq!(
        pki::validate_client_certificate(&store(&ours, vec![]), &foreign.der, ms(t0())),
        Err(CertificateError::UnknownIssuer)
    );
}

#[test]
fn subject_keys_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::Ed25519, 365, t0());
    // P-384: no client certificate (SPEC §2.2), but a server one.
    let p384 = client_key(&rcgen::PKCS_ECDSA_P384_SHA384);
    let mut req = csr_request(&p384, "srv");
    let e = ca.issue(&req, t0()).expect_err("p384 client");
    assert!(matches!(e, PkiError::UnsupportedSubjectKey { .. }), "{e}");
    req.usage = Usage::Server;
    req.dns = vec!["green.example".into()];
    let issued = ca.issue(&req, t0()).expect("server certificate");
    assert_eq!(
        store(&ca, vec![]).validate(&issued.der, ms(t0())),
        Err(CertificateError::WrongUsage)
    );
    // A bare public key.
    let ed = client_key(&rcgen::PKCS_ED25519);
    let req = IssueRequest {
        key: SubjectKey::PublicKey {
            path: "k.pub".into(),
            der: ed.subject_public_key_info(),
        },
        ..csr_request(&ed, "erin")
    };
    ca.issue(&req, t0()).expect("from a public key");
    // Names with control characters are refused.
    let mut bad = csr_request(&ed, "x");
    bad.name = "a\tb".into();
    assert!(matches!(
        ca.issue(&bad, t0()),
        Err(PkiError::BadValue { what: "name", .. })
    ));
}

/// A bare public key `spki_prefix || key` for client use.
fn public_key_request(spki: Vec<u8>) -> IssueRequest {
    let ed = client_key(&rcgen::PKCS_ED25519);
    IssueRequest {
        key: SubjectKey::PublicKey {
            path: "k.pub".into(),
            der: spki,
        },
        ..csr_request(&ed, "mallory")
    }
}

#[test]
fn refuses_small_order_ed25519_and_compressed_p256_client_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::Ed25519, 365, t0());
    // SPEC §2.2: green would refuse every knock of such a key, so the CA
    // refuses to certify it. The neutral point (0100..00) and a point of
    // order 8 (c7176a70..., RFC 8032 / ed25519-dalek's torsion list).
    let ed_prefix = hex::decode("302a300506032b6570032100").expect("hex");
    let mut neutral = [0u8; 32];
    neutral[0] = 1;
    let order8 = hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
        .expect("hex");
    for key in [neutral.to_vec(), order8] {
        let e = ca
            .issue(&public_key_request([ed_prefix.clone(), key].concat()), t0())
            .expect_err("small-order key");
        assert!(matches!(e, PkiError::UnsupportedSubjectKey { .. }), "{e}");
    }
    // A P-256 key as a compressed point (0x02/0x03 || x): refused, so that
    // one key has one IdentityKey (SPEC §2.4).
    let p256 = client_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let raw = p256.public_key_raw();
    assert_eq!(raw.len(), 65);
    let mut compressed = vec![0x02 | (raw[64] & 1)];
    compressed.extend_from_slice(&raw[1..33]);
    let p256_prefix =
        hex::decode("3039301306072a8648ce3d020106082a8648ce3d030107032200").expect("hex");
    let e = ca
        .issue(
            &public_key_request([p256_prefix, compressed].concat()),
            t0(),
        )
        .expect_err("compressed P-256 key");
    assert!(matches!(e, PkiError::UnsupportedSubjectKey { .. }), "{e}");
    // The same key uncompressed is certified.
    ca.issue(&public_key_request(p256.subject_public_key_info()), t0())
        .expect("uncompressed P-256 key");
}

#[test]
fn corrupt_ca_files_are_named_with_their_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::Ed25519, 365, t0());
    let key = client_key(&rcgen::PKCS_ED25519);
    ca.issue(&csr_request(&key, "fay"), t0()).expect("issue");
    let index = tmp.path().join("index.txt");
    let mut text = std::fs::read_to_string(&index).expect("index");
    text.push_str("V\tnot-a-number\n");
    std::fs::write(&index, text).expect("write");
    let e = ca.index().expect_err("corrupt");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:3: expected 7 tab-separated fields, found 2",
            index.display()
        )
    );
    std::fs::write(tmp.path().join("serial"), "twelve\n").expect("write");
    let e = ca
        .issue(&csr_request(&key, "gus"), t0())
        .expect_err("serial");
    assert!(
        e.to_string()
            .ends_with("serial:1: expected a decimal number, found \"twelve\""),
        "{e}"
    );
}

#[test]
fn the_index_survives_a_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = new_ca(tmp.path(), CaAlgorithm::Ed25519, 365, t0());
    let key = client_key(&rcgen::PKCS_ED25519);
    for name in ["h", "i", "j"] {
        ca.issue(&csr_request(&key, name), t0()).expect("issue");
    }
    ca.revoke(2, RevocationReason::Superseded, t0() + Duration::minutes(3))
        .expect("revoke");
    let reopened = Ca::open(tmp.path()).expect("open");
    let index = reopened.index().expect("index");
    assert_eq!(index.len(), 3);
    assert_eq!(index[1].name, "i");
    assert_eq!(
        index[1].revoked,
        Some((t0() + Duration::minutes(3), RevocationReason::Superseded))
    );
    assert!(index[0].revoked.is_none() && index[2].revoked.is_none());
    assert!(tmp.path().join("certs/3.pem").exists());
}

#[test]
fn revocation_reasons_use_openssl_names() {
    for (s, r) in [
        ("keyCompromise", RevocationReason::KeyCompromise),
        ("key-compromise", RevocationReason::KeyCompromise),
        ("CACompromise", RevocationReason::CaCompromise),
        ("superseded", RevocationReason::Superseded),
        ("unspecified", RevocationReason::Unspecified),
    ] {
        assert_eq!(s.parse::<RevocationReason>(), Ok(r));
        assert_eq!(r.to_string().parse::<RevocationReason>(), Ok(r));
    }
    let e = "certificateHold"
        .parse::<RevocationReason>()
        .expect_err("hold");
    assert!(e.contains("keyCompromise"), "{e}");
}
