//! The PKCS#11 signer against real SoftHSM2 tokens: keys generated on the
//! token, CSRs signed by the token, certificates issued from them, knocks
//! sealed with the token and accepted by green, TLS 1.3 client
//! authentication with the token key, and one clear error per bad input.
//!
//! Each test runs in a child process with its own SoftHSM2 directory (see
//! `token_support`). SoftHSM2 must be installed (`apt-get install softhsm2`):
//! without it these tests fail; they never skip.
#![allow(clippy::unwrap_used)]

mod token_support;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use cryptoki::session::{Session, UserType};
use proto_spec::replay::MemoryReplayState;
use proto_spec::sign::{SignatureAlgorithm, Signer as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use spa_client::token::pkcs11::{
    KeySelector, Pkcs11Config, Pkcs11Key, Pkcs11Signer, TokenSelector, csr, generate_key_pair,
    list_tokens,
};
use spa_client::token::tls::{TlsClientKey, certified_key};
use spa_client::token::{CertificateSource, PinSource, TokenError};
use token_support::{
    Ca, NOW, USER_PIN, client_csr_params, client_ip, green, in_softhsm, knock, knock_and_verify,
    pin_file, scratch,
};

fn env_pin() -> PinSource {
    PinSource::Env("SPA_TEST_PIN".into())
}

fn label(l: &str) -> TokenSelector {
    TokenSelector::Label(l.into())
}

/// A second, raw PKCS#11 session on the token `token` (same module, same
/// process), logged in, to look at and change objects behind the signer's
/// back.
fn raw_session(module: &Path, token: &str) -> Session {
    let ctx = Pkcs11::new(module).unwrap();
    // Usually already initialized by spa-client in this process: fine.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&USER_PIN.into()));
    session
}

/// Generates a key on `token`, has the token sign a CSR, issues the
/// certificate from it and writes it (PEM) into `dir`.
#[allow(clippy::too_many_arguments)]
fn enroll(
    module: &Path,
    token: &str,
    key_label: &str,
    id: &[u8],
    alg: SignatureAlgorithm,
    ca: &Ca,
    cn: &str,
    dir: &Path,
) -> (rcgen::Certificate, PathBuf) {
    let key = generate_key_pair(module, &label(token), key_label, id, alg, &env_pin()).unwrap();
    assert_eq!(key.algorithm(), alg);
    assert_eq!(key.token_label(), token);
    assert_eq!(key.id(), id);
    assert_eq!(key.label(), Some(key_label));
    let request = key.csr(&client_csr_params(cn)).unwrap();
    let cert = ca.issue_from_csr(request.der(), 7);
    // The certificate carries the token's public key.
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
    assert_eq!(
        parsed.public_key().raw,
        key.public_key().unwrap().spki_der().as_slice()
    );
    let path = dir.join(format!("{key_label}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (cert, path)
}

fn config(module: &Path, token: &str, key: &str, cert: &Path) -> Pkcs11Config {
    Pkcs11Config {
        module: module.to_owned(),
        token: label(token),
        key: KeySelector::Label(key.into()),
        pin: env_pin(),
        certificate: CertificateSource::File(cert.to_owned()),
    }
}

fn one_line(e: &TokenError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "not one line: {s}");
    s
}

#[test]
fn ed25519_key_on_token_signs_accepted_knocks() {
    in_softhsm(
        "ed25519_key_on_token_signs_accepted_knocks",
        &["spa-ed"],
        |module| {
            let dir = scratch("ed25519");
            let ca = Ca::new("spa token test CA");
            let (_, cert) = enroll(
                module,
                "spa-ed",
                "knock",
                &[0x01],
                SignatureAlgorithm::Ed25519,
                &ca,
                "alice",
                &dir,
            );

            // The private key is sensitive, never extractable, on the token.
            let raw = raw_session(module, "spa-ed");
            let handles = raw
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(b"knock".to_vec()),
                ])
                .unwrap();
            assert_eq!(handles.len(), 1);
            let attrs = raw
                .get_attributes(
                    handles[0],
                    &[
                        AttributeType::Token,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Value,
                    ],
                )
                .unwrap();
            assert!(attrs.contains(&Attribute::Token(true)));
            assert!(attrs.contains(&Attribute::Sensitive(true)));
            assert!(attrs.contains(&Attribute::Extractable(false)));
            assert!(
                !attrs
                    .iter()
                    .any(|a| a.attribute_type() == AttributeType::Value),
                "the private key value must not be readable"
            );
            drop(raw);

            // A PIN file with mode 0600 works.
            let pin = pin_file(&dir, "pin", USER_PIN, 0o600);
            let signer = Pkcs11Signer::open(&Pkcs11Config {
                pin: PinSource::File(pin),
                ..config(module, "spa-ed", "knock", &cert)
            })
            .unwrap();
            assert_eq!(signer.algorithm(), SignatureAlgorithm::Ed25519);

            let k = knock_and_verify(ca.cert_der(), "alice", &signer).unwrap();
            assert!(k.identity.names.contains(&"cn:alice".to_owned()));
            assert_eq!(k.services, vec!["ssh".to_owned()]);

            // One session, several knocks.
            let mut v = green(ca.cert_der(), "alice");
            let mut replay = MemoryReplayState::default();
            for i in 0..5 {
                let d = knock(&signer, NOW - 1000 + i * 10, i);
                v.verify(&d, client_ip(), NOW, &mut replay).unwrap();
            }

            // Send + Sync: several threads sign through the one session.
            let signer = Arc::new(signer);
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let s = Arc::clone(&signer);
                    std::thread::spawn(move || {
                        for i in 0..10u8 {
                            s.sign(&[t, i, 0x42]).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        },
    );
}

#[test]
fn p256_key_by_id_with_certificate_on_token_signs_accepted_knocks() {
    in_softhsm(
        "p256_key_by_id_with_certificate_on_token_signs_accepted_knocks",
        &["spa-p256"],
        |module| {
            let dir = scratch("p256");
            let ca = Ca::new("spa token test CA");
            let id = [0xa1, 0xb2, 0xc3];
            let (cert, _) = enroll(
                module,
                "spa-p256",
                "knock-p256",
                &id,
                SignatureAlgorithm::EcdsaP256Sha256,
                &ca,
                "bob",
                &dir,
            );

            // Store the certificate on the token, as a card would hold it.
            let raw = raw_session(module, "spa-p256");
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
            raw.create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Id(id.to_vec()),
                Attribute::Label(b"knock-p256".to_vec()),
                Attribute::Subject(parsed.subject().as_raw().to_vec()),
                Attribute::Value(cert.der().to_vec()),
            ])
            .unwrap();
            drop(raw);

            // Select the token by serial, the key by hex id.
            let tokens = list_tokens(module).unwrap();
            let serial = tokens
                .iter()
                .find(|t| t.label == "spa-p256")
                .unwrap()
                .serial
                .clone();
            let signer = Pkcs11Signer::open(&Pkcs11Config {
                module: module.to_owned(),
                token: TokenSelector::Serial(serial),
                key: KeySelector::id_hex("A1:B2:C3").unwrap(),
                pin: env_pin(),
                certificate: CertificateSource::Token,
            })
            .unwrap();
            assert_eq!(signer.algorithm(), SignatureAlgorithm::EcdsaP256Sha256);
            assert_eq!(signer.certificate_der(), cert.der().as_ref());

            let k = knock_and_verify(ca.cert_der(), "bob", &signer).unwrap();
            assert!(k.identity.names.contains(&"cn:bob".to_owned()));
            let mut v = green(ca.cert_der(), "bob");
            let mut replay = MemoryReplayState::default();
            for i in 0..5 {
                let d = knock(&signer, NOW - 1000 + i * 10, i);
                v.verify(&d, client_ip(), NOW, &mut replay).unwrap();
            }

            // csr() through the top-level function too.
            let again = csr(
                module,
                &label("spa-p256"),
                &KeySelector::Id(id.to_vec()),
                &env_pin(),
                &client_csr_params("bob"),
            )
            .unwrap();
            ca.issue_from_csr(again.der(), 8);
        },
    );
}

#[test]
fn key_without_public_key_object_is_checked_by_test_signature() {
    in_softhsm(
        "key_without_public_key_object_is_checked_by_test_signature",
        &["spa-nopub"],
        |module| {
            let dir = scratch("nopub");
            let ca = Ca::new("spa token test CA");
            let (_, cert) = enroll(
                module,
                "spa-nopub",
                "knock",
                &[0x07],
                SignatureAlgorithm::Ed25519,
                &ca,
                "carol",
                &dir,
            );
            let raw = raw_session(module, "spa-nopub");
            for h in raw
                .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
                .unwrap()
            {
                raw.destroy_object(h).unwrap();
            }
            drop(raw);

            let key = Pkcs11Key::open(
                module,
                &label("spa-nopub"),
                &KeySelector::Label("knock".into()),
                &env_pin(),
            )
            .unwrap();
            assert!(key.public_key().is_none());
            let e = key.csr(&client_csr_params("carol")).unwrap_err();
            assert!(one_line(&e).contains("shows no public key"), "{e}");
            let signer = Pkcs11Signer::new(key, &CertificateSource::File(cert)).unwrap();
            knock_and_verify(ca.cert_der(), "carol", &signer).unwrap();

            // A certificate for another key fails the test signature.
            let (other, _) = ca.issue_software("carol", &rcgen::PKCS_ED25519, false);
            let other_path = dir.join("other.der");
            std::fs::write(&other_path, other.der()).unwrap();
            let e =
                Pkcs11Signer::open(&config(module, "spa-nopub", "knock", &other_path)).unwrap_err();
            assert!(matches!(e, TokenError::KeyMismatch { .. }), "{e}");
            assert!(one_line(&e).contains("test signature"), "{e}");
        },
    );
}

// ------------------------------------------------------------------- TLS

/// A TLS 1.3 handshake in memory: a rustls server requiring a client
/// certificate from `ca`, a rustls client whose key is `client`. Returns
/// the client chain the server saw, after one application record.
fn tls_handshake(ca: &Ca, client: CertifiedKey) -> Result<Vec<Vec<u8>>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .unwrap();
    let roots = Arc::new(roots);
    let (server_cert, server_key) =
        ca.issue_software("localhost", &rcgen::PKCS_ECDSA_P256_SHA256, true);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(client)));
    let mut client =
        ClientConnection::new(Arc::new(client_config), "localhost".try_into().unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
    client.writer().write_all(b"knock knock").unwrap();

    let mut received = Vec::new();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut chunk = [0u8; 64];
        while let Ok(n) = server.reader().read(&mut chunk) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && received == b"knock knock" {
            return Ok(server
                .peer_certificates()
                .unwrap()
                .iter()
                .map(|c| c.as_ref().to_vec())
                .collect());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

fn tls_client_auth(test: &str, token: &str, alg: SignatureAlgorithm) {
    in_softhsm(test, &[token], |module| {
        let dir = scratch(test);
        let ca = Ca::new("spa TLS test CA");
        let (cert, path) = enroll(module, token, "tls", &[0x05], alg, &ca, "dave", &dir);
        let signer = Arc::new(Pkcs11Signer::open(&config(module, token, "tls", &path)).unwrap());

        // The token key authenticates the client.
        let key = certified_key(signer.clone(), Vec::new()).unwrap();
        key.keys_match().unwrap();
        let seen = tls_handshake(&ca, key).unwrap();
        assert_eq!(seen, vec![cert.der().to_vec()]);

        // The same key behind a certificate for another key: rustls sees the
        // mismatch, and the server refuses the handshake.
        let other_alg = match alg {
            SignatureAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            SignatureAlgorithm::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let (other, _) = ca.issue_software("dave", other_alg, false);
        let wrong = CertifiedKey::new(
            vec![other.der().clone()],
            Arc::new(TlsClientKey::new(signer.clone()).unwrap()),
        );
        assert!(wrong.keys_match().is_err());
        let e = tls_handshake(&ca, wrong).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::PeerMisbehaved(_)
            ),
            "{e:?}"
        );

        // And the knock path still works with the same signer.
        knock_and_verify(ca.cert_der(), "dave", signer.as_ref()).unwrap();
    });
}

#[test]
fn tls13_client_auth_with_ed25519_token_key() {
    tls_client_auth(
        "tls13_client_auth_with_ed25519_token_key",
        "spa-tls-ed",
        SignatureAlgorithm::Ed25519,
    );
}

#[test]
fn tls13_client_auth_with_p256_token_key() {
    tls_client_auth(
        "tls13_client_auth_with_p256_token_key",
        "spa-tls-p256",
        SignatureAlgorithm::EcdsaP256Sha256,
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn bad_inputs_give_one_clear_error_each() {
    in_softhsm(
        "bad_inputs_give_one_clear_error_each",
        &["spa-errs"],
        |module| {
            let dir = scratch("errors");
            let ca = Ca::new("spa token test CA");
            let open = |c: &Pkcs11Config| Pkcs11Signer::open(c).unwrap_err();
            let cert_path = dir.join("none.pem");

            // Wrong PIN first: login state is per process and token, so no
            // other session of this process may be logged in yet.
            let e = open(&Pkcs11Config {
                pin: PinSource::Env("SPA_TEST_WRONG_PIN".into()),
                ..config(module, "spa-errs", "knock", &cert_path)
            });
            assert!(matches!(e, TokenError::WrongPin { .. }), "{e:?}");
            assert_eq!(one_line(&e), "wrong PIN for token 'spa-errs'");

            // Missing module.
            let missing = dir.join("no-such-module.so");
            let e = open(&Pkcs11Config {
                module: missing.clone(),
                ..config(module, "spa-errs", "knock", &cert_path)
            });
            assert!(matches!(e, TokenError::ModuleNotFound { .. }), "{e:?}");
            assert!(one_line(&e).contains(&missing.display().to_string()));

            // A file that is not a shared library at all.
            let text = dir.join("not-a-module.so");
            std::fs::write(&text, "this is not a library\n").unwrap();
            let e = open(&Pkcs11Config {
                module: text.clone(),
                ..config(module, "spa-errs", "knock", &cert_path)
            });
            assert!(matches!(e, TokenError::NotAModule { .. }), "{e:?}");
            let msg = one_line(&e);
            assert!(
                msg.starts_with(&format!("{} is not a PKCS#11 module: ", text.display())),
                "{msg}"
            );

            // A real shared library that is not a PKCS#11 module.
            if let Some(lib) = [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/usr/lib/x86_64-linux-gnu/libz.so.1",
                "/lib/aarch64-linux-gnu/libz.so.1",
                "/usr/lib64/libz.so.1",
            ]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            {
                let e = open(&Pkcs11Config {
                    module: lib.clone(),
                    ..config(module, "spa-errs", "knock", &cert_path)
                });
                assert!(matches!(e, TokenError::NotAModule { .. }), "{e:?}");
                assert!(one_line(&e).contains("C_GetFunctionList"), "{e}");
            }

            // No token with that label; the message lists what is there.
            let e = open(&config(module, "nope", "knock", &cert_path));
            assert!(matches!(e, TokenError::TokenNotFound { .. }), "{e:?}");
            let msg = one_line(&e);
            assert!(
                msg.starts_with("no token with label 'nope' in PKCS#11 module"),
                "{msg}"
            );
            assert!(msg.contains("'spa-errs'"), "{msg}");

            // No token with that serial.
            let e = open(&Pkcs11Config {
                token: TokenSelector::Serial("0000".into()),
                ..config(module, "spa-errs", "knock", &cert_path)
            });
            assert!(
                one_line(&e).starts_with("no token with serial '0000'"),
                "{e}"
            );

            // No key with that label (the PIN was right).
            let e = open(&config(module, "spa-errs", "nope", &cert_path));
            assert!(matches!(e, TokenError::KeyNotFound { .. }), "{e:?}");
            assert_eq!(
                one_line(&e),
                "no private key with label 'nope' on token 'spa-errs'"
            );
            let e = open(&Pkcs11Config {
                key: KeySelector::Id(vec![0xee]),
                ..config(module, "spa-errs", "nope", &cert_path)
            });
            assert_eq!(
                one_line(&e),
                "no private key with id ee on token 'spa-errs'"
            );

            // Key/certificate mismatch: a certificate for another key, of the
            // same algorithm and of the other one.
            let (_, good) = enroll(
                module,
                "spa-errs",
                "knock",
                &[0x01],
                SignatureAlgorithm::Ed25519,
                &ca,
                "erin",
                &dir,
            );
            for (name, alg) in [
                ("other-ed.der", &rcgen::PKCS_ED25519),
                ("other-p256.der", &rcgen::PKCS_ECDSA_P256_SHA256),
            ] {
                let (other, _) = ca.issue_software("erin", alg, false);
                let path = dir.join(name);
                std::fs::write(&path, other.der()).unwrap();
                let e = open(&config(module, "spa-errs", "knock", &path));
                assert!(matches!(e, TokenError::KeyMismatch { .. }), "{e:?}");
                let msg = one_line(&e);
                assert!(
                    msg.starts_with(&format!(
                        "key on token 'spa-errs' (label 'knock') does not match certificate {}",
                        path.display()
                    )),
                    "{msg}"
                );
            }
            // ... while the right certificate opens.
            Pkcs11Signer::open(&config(module, "spa-errs", "knock", &good)).unwrap();

            // Generating over an existing key.
            let e = generate_key_pair(
                module,
                &label("spa-errs"),
                "knock",
                &[0x02],
                SignatureAlgorithm::Ed25519,
                &env_pin(),
            )
            .unwrap_err();
            assert!(matches!(e, TokenError::KeyExists { .. }), "{e:?}");
            let e = generate_key_pair(
                module,
                &label("spa-errs"),
                "fresh",
                &[0x01],
                SignatureAlgorithm::EcdsaP256Sha256,
                &env_pin(),
            )
            .unwrap_err();
            assert_eq!(
                one_line(&e),
                "token 'spa-errs' already has a key with id 01; choose another label and id"
            );

            // PIN file readable by others: refused, with the chmod to run.
            let loose = pin_file(&dir, "loose-pin", USER_PIN, 0o644);
            let e = open(&Pkcs11Config {
                pin: PinSource::File(loose.clone()),
                ..config(module, "spa-errs", "knock", &good)
            });
            assert!(matches!(e, TokenError::PinFilePermissions { .. }), "{e:?}");
            assert_eq!(
                one_line(&e),
                format!(
                    "PIN file {p} is accessible by group or others (mode 644); run: chmod 600 {p}",
                    p = loose.display()
                )
            );

            // Prompt without a terminal (the child's stdin is /dev/null).
            let e = open(&Pkcs11Config {
                pin: PinSource::Prompt,
                ..config(module, "spa-errs", "knock", &good)
            });
            assert!(matches!(e, TokenError::PinNoTerminal { .. }), "{e:?}");
            let msg = one_line(&e);
            assert!(
                msg.contains("token 'spa-errs'")
                    && msg.contains("--pin env:VARIABLE")
                    && msg.contains("pin = \"file:/path\"")
                    && !msg.contains("PinSource"),
                "{msg}"
            );

            // Unset PIN variable.
            let e = open(&Pkcs11Config {
                pin: PinSource::Env("SPA_TEST_NO_SUCH_PIN_VAR".into()),
                ..config(module, "spa-errs", "knock", &good)
            });
            assert_eq!(
                one_line(&e),
                "PIN environment variable SPA_TEST_NO_SUCH_PIN_VAR is not set or not valid UTF-8"
            );

            // Missing and unusable certificate files; no certificate object.
            let e = open(&config(module, "spa-errs", "knock", &cert_path));
            assert!(matches!(e, TokenError::CertificateFile { .. }), "{e:?}");
            assert!(one_line(&e).contains(&cert_path.display().to_string()));
            let junk = dir.join("junk.pem");
            std::fs::write(&junk, "hello\n").unwrap();
            let e = open(&config(module, "spa-errs", "knock", &junk));
            assert!(matches!(e, TokenError::CertificateInvalid { .. }), "{e:?}");
            let e = open(&Pkcs11Config {
                certificate: CertificateSource::Token,
                ..config(module, "spa-errs", "knock", &good)
            });
            assert_eq!(
                one_line(&e),
                "no certificate object with label 'knock' on token 'spa-errs'"
            );
        },
    );
}

/// While a key of this process keeps the token logged in, opening another
/// key reads no PIN (the PIN file is gone by then, so a read would fail):
/// the PIN is asked for once per process, not once per signer. Once every
/// session is closed the token is logged out and the PIN is read again.
#[test]
fn second_key_on_a_logged_in_token_reads_no_pin() {
    in_softhsm(
        "second_key_on_a_logged_in_token_reads_no_pin",
        &["spa-once"],
        |module| {
            let dir = scratch("pin_once");
            let ca = Ca::new("spa token test CA");
            let (_, cert) = enroll(
                module,
                "spa-once",
                "knock",
                &[0x01],
                SignatureAlgorithm::Ed25519,
                &ca,
                "alice",
                &dir,
            );
            let pin = pin_file(&dir, "pin", USER_PIN, 0o600);
            let cfg = Pkcs11Config {
                pin: PinSource::File(pin.clone()),
                ..config(module, "spa-once", "knock", &cert)
            };
            // No session is open after enrolment: the first open reads it.
            let first = Pkcs11Signer::open(&cfg).unwrap();
            std::fs::remove_file(&pin).unwrap();
            let second = Pkcs11Signer::open(&cfg).unwrap();
            knock_and_verify(ca.cert_der(), "alice", &second).unwrap();
            knock_and_verify(ca.cert_der(), "alice", &first).unwrap();

            drop((first, second));
            let e = Pkcs11Signer::open(&cfg).unwrap_err();
            assert!(
                matches!(&e, TokenError::PinFile { path, .. } if *path == pin),
                "{e:?}"
            );
        },
    );
}

/// PIN sources need no token.
#[test]
fn pin_sources() {
    use secrecy::ExposeSecret as _;
    let dir = scratch("pin_sources");
    for mode in [0o600, 0o400] {
        let p = pin_file(&dir, &format!("ok-{mode:o}"), "4321", mode);
        let pin = PinSource::File(p).read("token 't'").unwrap();
        assert_eq!(pin.expose_secret(), "4321");
    }
    for mode in [0o640, 0o604, 0o620, 0o660] {
        let p = pin_file(&dir, &format!("bad-{mode:o}"), "4321", mode);
        let e = PinSource::File(p.clone()).read("token 't'").unwrap_err();
        assert!(
            one_line(&e).ends_with(&format!("run: chmod 600 {}", p.display())),
            "{e}"
        );
    }
    let e = PinSource::File(dir.join("missing"))
        .read("token 't'")
        .unwrap_err();
    assert!(matches!(e, TokenError::PinFile { .. }), "{e:?}");
    let empty = pin_file(&dir, "empty", "", 0o600);
    let e = PinSource::File(empty).read("token 't'").unwrap_err();
    assert!(matches!(e, TokenError::PinEmpty { .. }), "{e:?}");
}
