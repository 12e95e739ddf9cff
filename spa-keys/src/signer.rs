//! Software client keys with their certificate: the signer `spa-client`
//! uses without a token.

use std::path::Path;

use proto_spec::CertificateError;
use proto_spec::body::SIGNATURE_LEN;
use proto_spec::cert::parse_client_cert;
use proto_spec::sign::{
    ClientPublicKey, Ed25519Signer, P256Signer, SignatureAlgorithm, Signer, SignerError,
};

use crate::error::KeyFileError;
use crate::pem::read_certificates;
use crate::private::{PrivateKey, read_private_key};

/// A client key held in a file, with its certificate: Ed25519 or P-256.
/// SPEC §2.2.
#[derive(Debug)]
pub enum SoftwareSigner {
    /// Ed25519.
    Ed25519(Ed25519Signer),
    /// ECDSA P-256.
    P256(P256Signer),
}

impl Signer for SoftwareSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            Self::Ed25519(s) => s.algorithm(),
            Self::P256(s) => s.algorithm(),
        }
    }

    fn certificate_der(&self) -> &[u8] {
        match self {
            Self::Ed25519(s) => s.certificate_der(),
            Self::P256(s) => s.certificate_der(),
        }
    }

    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        match self {
            Self::Ed25519(s) => s.sign(transcript),
            Self::P256(s) => s.sign(transcript),
        }
    }
}

fn alg_name(k: &ClientPublicKey) -> &'static str {
    match k {
        ClientPublicKey::Ed25519(_) => "Ed25519",
        ClientPublicKey::P256(_) => "P-256",
    }
}

/// Loads a client key (PKCS#8, Ed25519 or P-256; permissions checked) and
/// its certificate (PEM or DER; the first certificate of a PEM chain), and
/// checks that the certificate's public key is the key's.
pub fn load_software_signer(key: &Path, cert: &Path) -> Result<SoftwareSigner, KeyFileError> {
    let cert_der = read_certificates(cert)?.swap_remove(0);
    let parsed = parse_client_cert(&cert_der).map_err(|e| match e {
        CertificateError::UnsupportedKey => KeyFileError::UnsupportedCertificate {
            path: cert.to_path_buf(),
            reason: "the certificate's key is neither Ed25519 nor P-256, so it cannot sign \
                     knocks (SPEC §2.2)"
                .to_owned(),
        },
        other => KeyFileError::MalformedDer {
            path: cert.to_path_buf(),
            what: "certificate".to_owned(),
            reason: format!("not usable as a client certificate ({})", other.code()),
        },
    })?;
    let mismatch = |detail: String| KeyFileError::KeyCertificateMismatch {
        key: key.to_path_buf(),
        cert: cert.to_path_buf(),
        detail,
    };
    match (read_private_key(key)?, &parsed.public_key) {
        (PrivateKey::Ed25519(seed), ClientPublicKey::Ed25519(vk)) => {
            let signer = Ed25519Signer::from_seed(&seed, cert_der);
            if signer.public_key() != vk.to_bytes() {
                return Err(mismatch(String::new()));
            }
            Ok(SoftwareSigner::Ed25519(signer))
        }
        (PrivateKey::P256(der), ClientPublicKey::P256(pk)) => {
            let signer = P256Signer::from_pkcs8_der(&der, cert_der).map_err(|e| {
                KeyFileError::MalformedDer {
                    path: key.to_path_buf(),
                    what: "P-256 private key".to_owned(),
                    reason: e.0,
                }
            })?;
            if signer.public_key_sec1() != pk.as_sec1_bytes() {
                return Err(mismatch(String::new()));
            }
            Ok(SoftwareSigner::P256(signer))
        }
        (PrivateKey::X25519(_), _) => Err(KeyFileError::WrongKeyType {
            path: key.to_path_buf(),
            expected: "an Ed25519 or P-256 (client)",
            found: "an X25519 key (a receiver key)".to_owned(),
        }),
        (k, pk) => Err(mismatch(format!(
            "the key is {}, the certificate's key {}",
            k.algorithm(),
            alg_name(pk)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::write_secret_file;
    use crate::private::write_receiver_key;
    use proto_spec::keys::ReceiverSecretKey;
    use proto_spec::testkit::{ClientCertSpec, KeyAlg, TestCa};
    use std::path::PathBuf;

    struct Files {
        _dir: tempfile::TempDir,
        key: PathBuf,
        cert: PathBuf,
    }

    fn files(ca: &TestCa, cn: &str, alg: KeyAlg, serial: u64) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_der, key_der) = ca
            .issue(&ClientCertSpec::new(cn, alg, serial))
            .expect("issue");
        let key = dir.path().join("k.der");
        let cert = dir.path().join("c.der");
        write_secret_file(&key, &key_der, false).expect("key");
        std::fs::write(&cert, &cert_der).expect("cert");
        Files {
            _dir: dir,
            key,
            cert,
        }
    }

    #[test]
    fn loads_and_signs_both_algorithms() {
        let ca = TestCa::new("signer ca").expect("ca");
        for (alg, want) in [
            (KeyAlg::Ed25519, SignatureAlgorithm::Ed25519),
            (KeyAlg::P256, SignatureAlgorithm::EcdsaP256Sha256),
        ] {
            let f = files(&ca, "alice", alg, 3);
            let s = load_software_signer(&f.key, &f.cert).expect("load");
            assert_eq!(s.algorithm(), want);
            let sig = s.sign(b"transcript").expect("sign");
            let parsed = parse_client_cert(s.certificate_der()).expect("parse");
            assert!(parsed.public_key.verify(b"transcript", &sig));
        }
    }

    #[test]
    fn mismatch_names_both_files() {
        let ca = TestCa::new("signer ca").expect("ca");
        let a = files(&ca, "alice", KeyAlg::Ed25519, 3);
        let b = files(&ca, "bob", KeyAlg::Ed25519, 4);
        let e = load_software_signer(&a.key, &b.cert).expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            format!(
                "the private key {} does not match the certificate {}",
                a.key.display(),
                b.cert.display()
            )
        );
        let c = files(&ca, "carol", KeyAlg::P256, 5);
        let d = files(&ca, "dave", KeyAlg::P256, 6);
        let e = load_software_signer(&c.key, &d.cert).expect_err("p256 mismatch");
        assert!(
            matches!(e, KeyFileError::KeyCertificateMismatch { .. }),
            "{e}"
        );
        let e = load_software_signer(&c.key, &a.cert).expect_err("alg mismatch");
        assert!(
            e.to_string()
                .ends_with("(the key is P-256, the certificate's key Ed25519)"),
            "{e}"
        );
    }

    #[test]
    fn refuses_receiver_keys_and_unsupported_certificates() {
        let ca = TestCa::new("signer ca").expect("ca");
        let a = files(&ca, "alice", KeyAlg::Ed25519, 3);
        let dir = tempfile::tempdir().expect("tempdir");
        let rk = dir.path().join("r.pem");
        write_receiver_key(&rk, &ReceiverSecretKey::from_bytes([1; 32]), false).expect("w");
        let e = load_software_signer(&rk, &a.cert).expect_err("x25519");
        assert!(matches!(e, KeyFileError::WrongKeyType { .. }), "{e}");
        let p384 = dir.path().join("p384.der");
        std::fs::write(&p384, ca.issue_p384_placeholder("p", 9).expect("p384")).expect("w");
        let e = load_software_signer(&a.key, &p384).expect_err("p384");
        assert!(e.to_string().contains("neither Ed25519 nor P-256"), "{e}");
    }
}
