//! Interoperability with real PKI, checked with the `openssl` command line:
//! certificates and CRLs made by OpenSSL are accepted (and honoured) by
//! spa's verifier, and ours pass `openssl verify`.

mod pki_support;

use std::path::Path;

use base64ct::{Base64, Encoding as _};
use pki_support::*;
use proto_spec::{CertificateError, Refusal};

fn cert_der(path: &Path) -> Vec<u8> {
    spa_keys::read_certificates(path)
        .expect("certificate file")
        .swap_remove(0)
}

fn both_streams(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl verify -CAfile ca [-crl_check -CRLfile crl] cert`, both streams.
fn openssl_verify(dir: &Path, ca: &str, crl: Option<&str>, cert: &str) -> (bool, String) {
    let mut args = vec!["verify", "-CAfile", ca];
    if let Some(crl) = crl {
        args.extend(["-crl_check", "-CRLfile", crl]);
    }
    args.push(cert);
    let out = openssl_status(dir, &args);
    (out.status.success(), both_streams(&out))
}

#[test]
fn openssl_made_ca_and_clients_are_accepted_and_can_knock() {
    for ca_alg in [Alg::Ed25519, Alg::P256] {
        for client_alg in [Alg::Ed25519, Alg::P256] {
            let dir = tempfile::tempdir().expect("tempdir");
            let ca = OpensslCa::new(dir.path(), ca_alg);
            let (key, cert) = ca.issue(client_alg, "alice", 0x1234);
            let ctx = format!("CA {ca_alg:?}, client {client_alg:?}");

            trust(&[&ca.ca_pem()], &[])
                .validate(&cert_der(&cert), now_ms())
                .unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
            let signer = spa_keys::load_software_signer(&key, &cert)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let k = knock_through_green(&signer, trust(&[&ca.ca_pem()], &[]), "alice", now_ms())
                .unwrap_or_else(|e| panic!("{ctx}: knock refused: {e}"));
            assert_eq!(
                k.identity.names,
                vec!["cn:alice".to_owned(), "email:alice@example.org".to_owned()],
                "{ctx}"
            );

            let out = spa_ok(
                dir.path(),
                &[
                    "pki",
                    "verify",
                    "--ca",
                    "ca.pem",
                    "--cert",
                    "alice.pem",
                    "--key",
                    "alice.key",
                ],
            );
            assert_eq!(out, "alice.pem: OK (cn:alice, email:alice@example.org)\n");
        }
    }
}

fn crl_number(dir: &Path, crl: &str, der: bool) -> String {
    let mut args = vec!["crl", "-in", crl, "-noout", "-crlnumber"];
    if der {
        args.extend(["-inform", "DER"]);
    }
    String::from_utf8_lossy(&openssl(dir, &args).stdout)
        .trim()
        .to_owned()
}

#[test]
fn our_certificates_and_crls_pass_openssl_verify() {
    for ca_alg in ["ed25519", "p256"] {
        for client_alg in [Alg::Ed25519, Alg::P256] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let d = tmp.path();
            let ctx = format!("CA {ca_alg}, client {client_alg:?}");
            spa_ok(
                d,
                &[
                    "pki",
                    "init",
                    "--dir",
                    "ca",
                    "--name",
                    "spa CA",
                    "--algorithm",
                    ca_alg,
                ],
            );
            // alice from a CSR, bob from a bare public key.
            genpkey(d, client_alg, "alice.key");
            csr(d, "alice.key", "not used", "alice.csr");
            let out = spa_ok(
                d,
                &[
                    "pki",
                    "issue",
                    "--dir",
                    "ca",
                    "--csr",
                    "alice.csr",
                    "--name",
                    "alice",
                    "--email",
                    "alice@example.org",
                    "--out",
                    "alice.pem",
                ],
            );
            assert!(out.starts_with("issued serial 1 to \"alice\""), "{out}");
            genpkey(d, client_alg, "bob.key");
            pubout(d, "bob.key", "bob.pub");
            spa_ok(
                d,
                &[
                    "pki",
                    "issue",
                    "--dir",
                    "ca",
                    "--public-key",
                    "bob.pub",
                    "--name",
                    "bob",
                    "--out",
                    "bob.pem",
                ],
            );
            for who in ["alice.pem", "bob.pem"] {
                let (ok, out) = openssl_verify(d, "ca/ca.pem", None, who);
                assert!(ok && out.contains(&format!("{who}: OK")), "{ctx}: {out}");
            }
            let out = openssl(
                d,
                &[
                    "verify",
                    "-CAfile",
                    "ca/ca.pem",
                    "-purpose",
                    "sslclient",
                    "alice.pem",
                ],
            );
            assert!(out.status.success(), "{ctx}");

            // An empty CRL: both accept.
            spa_ok(d, &["pki", "crl", "--dir", "ca", "--out", "crl0.pem"]);
            let (ok, out) = openssl_verify(d, "ca/ca.pem", Some("crl0.pem"), "alice.pem");
            assert!(ok && out.contains("alice.pem: OK"), "{ctx}: {out}");
            let ca_pem = d.join("ca/ca.pem");
            trust(&[&ca_pem], &[&d.join("crl0.pem")])
                .validate(&cert_der(&d.join("alice.pem")), now_ms())
                .unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
            let alice = spa_keys::load_software_signer(&d.join("alice.key"), &d.join("alice.pem"))
                .expect("alice's key and certificate");
            knock_through_green(
                &alice,
                trust(&[&ca_pem], &[&d.join("crl0.pem")]),
                "alice",
                now_ms(),
            )
            .unwrap_or_else(|e| panic!("{ctx}: knock refused: {e}"));

            // Revoke alice: both refuse her, both still accept bob.
            let out = spa_ok(
                d,
                &[
                    "pki",
                    "revoke",
                    "--dir",
                    "ca",
                    "--cert",
                    "alice.pem",
                    "--reason",
                    "keyCompromise",
                ],
            );
            assert!(
                out.starts_with("revoked serial 1 (alice, keyCompromise)"),
                "{out}"
            );
            spa_ok(d, &["pki", "crl", "--dir", "ca", "--out", "crl1.pem"]);
            let (ok, out) = openssl_verify(d, "ca/ca.pem", Some("crl1.pem"), "alice.pem");
            assert!(!ok && out.contains("certificate revoked"), "{ctx}: {out}");
            let (ok, out) = openssl_verify(d, "ca/ca.pem", Some("crl1.pem"), "bob.pem");
            assert!(ok, "{ctx}: {out}");
            let crl1 = d.join("crl1.pem");
            assert_eq!(
                trust(&[&ca_pem], &[&crl1]).validate(&cert_der(&d.join("alice.pem")), now_ms()),
                Err(CertificateError::Revoked),
                "{ctx}"
            );
            trust(&[&ca_pem], &[&crl1])
                .validate(&cert_der(&d.join("bob.pem")), now_ms())
                .unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
            assert_eq!(
                knock_through_green(&alice, trust(&[&ca_pem], &[&crl1]), "alice", now_ms()).err(),
                Some(Refusal::Certificate(CertificateError::Revoked)),
                "{ctx}"
            );

            // DER CRLs, and CRL numbers that increase.
            spa_ok(
                d,
                &["pki", "crl", "--dir", "ca", "--der", "--out", "crl2.der"],
            );
            openssl(
                d,
                &[
                    "crl", "-inform", "DER", "-in", "crl2.der", "-out", "crl2.pem",
                ],
            );
            let (ok, out) = openssl_verify(d, "ca/ca.pem", Some("crl2.pem"), "alice.pem");
            assert!(!ok && out.contains("certificate revoked"), "{ctx}: {out}");
            assert_eq!(
                trust(&[&ca_pem], &[&d.join("crl2.der")])
                    .validate(&cert_der(&d.join("alice.pem")), now_ms()),
                Err(CertificateError::Revoked)
            );
            assert_eq!(crl_number(d, "crl0.pem", false), "crlNumber=0x01");
            assert_eq!(crl_number(d, "crl1.pem", false), "crlNumber=0x02");
            assert_eq!(crl_number(d, "crl2.der", true), "crlNumber=0x03");
        }
    }
}

#[test]
fn server_certificate_for_green_is_a_tls_server_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    spa_ok(d, &["pki", "init", "--dir", "ca", "--name", "spa CA"]);
    genpkey(d, Alg::P256, "green.key");
    pubout(d, "green.key", "green.pub");
    spa_ok(
        d,
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--public-key",
            "green.pub",
            "--name",
            "green",
            "--server",
            "--dns",
            "green.example",
            "--ip",
            "192.0.2.1",
            "--out",
            "green.pem",
        ],
    );
    let out = openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca/ca.pem",
            "-purpose",
            "sslserver",
            "green.pem",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("green.pem: OK"));
    let text = both_streams(&openssl(
        d,
        &[
            "x509",
            "-in",
            "green.pem",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    ));
    assert!(text.contains("DNS:green.example"), "{text}");
    assert!(text.contains("IP Address:192.0.2.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    // Not a client certificate.
    assert_eq!(
        trust(&[&d.join("ca/ca.pem")], &[]).validate(&cert_der(&d.join("green.pem")), now_ms()),
        Err(CertificateError::WrongUsage)
    );
}

#[test]
fn crl_made_by_openssl_ca_gencrl_is_honoured() {
    for alg in [Alg::Ed25519, Alg::P256] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = OpensslCa::new(tmp.path(), alg);
        let (alice_key, alice) = ca.issue(alg, "alice", 1001);
        let (bob_key, bob) = ca.issue(alg, "bob", 1002);
        let crl = ca.revoke_and_gencrl(&alice, "crl.pem");
        let store = || trust(&[&ca.ca_pem()], &[&crl]);
        assert_eq!(
            store().validate(&cert_der(&alice), now_ms()),
            Err(CertificateError::Revoked),
            "{alg:?}"
        );
        store()
            .validate(&cert_der(&bob), now_ms())
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        let alice_signer = spa_keys::load_software_signer(&alice_key, &alice).expect("alice");
        assert_eq!(
            knock_through_green(&alice_signer, store(), "alice", now_ms()).err(),
            Some(Refusal::Certificate(CertificateError::Revoked))
        );
        let bob_signer = spa_keys::load_software_signer(&bob_key, &bob).expect("bob");
        knock_through_green(&bob_signer, store(), "bob", now_ms()).expect("bob's knock");
        let line = spa_err(
            tmp.path(),
            &[
                "pki",
                "verify",
                "--ca",
                "ca.pem",
                "--crl",
                "crl.pem",
                "--cert",
                "alice.pem",
            ],
        );
        assert_eq!(
            line,
            "spa-server: alice.pem: refused: certificate revoked (certificate:revoked)"
        );
    }
}

/// The last 32 bytes of `openssl pkey -pubout -outform DER`, base64.
fn openssl_public_line(dir: &Path, key: &str) -> String {
    let out = openssl(dir, &["pkey", "-in", key, "-pubout", "-outform", "DER"]);
    let der = out.stdout;
    assert!(der.len() >= 32);
    Base64::encode_string(&der[der.len() - 32..])
}

#[test]
fn key_files_are_interchangeable_with_openssl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    // Ours, read by openssl.
    for (args, file) in [
        (vec!["keygen", "--out", "green.key"], "green.key"),
        (vec!["keygen", "--signing", "--out", "sign.key"], "sign.key"),
    ] {
        let line = spa_ok(d, &args);
        assert_eq!(line.trim(), openssl_public_line(d, file), "{file}");
        assert_eq!(spa_ok(d, &["pubkey", "--key", file]), line);
    }
    // openssl's, read by us.
    openssl(d, &["genpkey", "-algorithm", "X25519", "-out", "x.key"]);
    chmod(&d.join("x.key"), 0o600);
    assert_eq!(
        spa_ok(d, &["pubkey", "--key", "x.key"]).trim(),
        openssl_public_line(d, "x.key")
    );
    openssl(
        d,
        &["pkey", "-in", "x.key", "-outform", "DER", "-out", "x.der"],
    );
    chmod(&d.join("x.der"), 0o600);
    assert_eq!(
        spa_ok(d, &["pubkey", "--key", "x.der"]).trim(),
        openssl_public_line(d, "x.key")
    );
    // CA keys of both algorithms are openssl keys too.
    for alg in ["ed25519", "p256"] {
        let dir = format!("ca-{alg}");
        spa_ok(
            d,
            &[
                "pki",
                "init",
                "--dir",
                &dir,
                "--name",
                "CA",
                "--algorithm",
                alg,
            ],
        );
        openssl(d, &["pkey", "-in", &format!("{dir}/ca.key"), "-noout"]);
    }
}
