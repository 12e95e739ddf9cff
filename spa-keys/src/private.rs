//! PKCS#8 private keys (RFC 5208/5958, RFC 8410), PEM `PRIVATE KEY` or DER,
//! as `openssl genpkey` writes them: X25519 receiver keys, Ed25519 gateway
//! and client keys, P-256 client keys.

use std::path::Path;

use pkcs8::der::asn1::OctetStringRef;
use pkcs8::der::{Decode as _, Encode as _, SecretDocument};
use pkcs8::{AlgorithmIdentifierRef, ObjectIdentifier, PrivateKeyInfoRef};
use proto_spec::keys::ReceiverSecretKey;
use proto_spec::sign::GatewaySigner;
use zeroize::Zeroizing;

use crate::error::KeyFileError;
use crate::file::{read_secret_file, write_secret_file};
use crate::pem::{looks_like_pem, pem_labels};
use crate::public::{encode_gateway_public_key, encode_public_key};

/// id-X25519, RFC 8410.
pub(crate) const OID_X25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.110");
/// id-Ed25519, RFC 8410.
pub(crate) const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// id-ecPublicKey, RFC 5480.
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 (prime256v1).
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A private key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// X25519: a receiver (HPKE) key. SPEC §2.1.
    X25519,
    /// Ed25519: a gateway order-signing key or a client key. SPEC §2.2, §2.3.
    Ed25519,
    /// ECDSA P-256: a client key. SPEC §2.2.
    P256,
}

impl core::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::X25519 => "X25519",
            Self::Ed25519 => "Ed25519",
            Self::P256 => "P-256",
        })
    }
}

/// A decoded private key. Secrets are zeroized on drop.
pub enum PrivateKey {
    /// An X25519 receiver key.
    X25519(ReceiverSecretKey),
    /// An Ed25519 key: the 32-byte seed.
    Ed25519(Zeroizing<[u8; 32]>),
    /// A P-256 key: its PKCS#8 DER (validated).
    P256(Zeroizing<Vec<u8>>),
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivateKey({}, ..)", self.algorithm())
    }
}

impl PrivateKey {
    /// The algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::X25519(_) => KeyAlgorithm::X25519,
            Self::Ed25519(_) => KeyAlgorithm::Ed25519,
            Self::P256(_) => KeyAlgorithm::P256,
        }
    }

    /// The one-line (base64) public key of an X25519 or Ed25519 key; P-256
    /// keys have none (their public key travels in a certificate).
    pub fn public_key_line(&self) -> Option<String> {
        match self {
            Self::X25519(k) => Some(encode_public_key(&k.public_key())),
            Self::Ed25519(seed) => Some(encode_gateway_public_key(
                &GatewaySigner::from_seed(seed).public_key(),
            )),
            Self::P256(_) => None,
        }
    }
}

fn describe(alg: &AlgorithmIdentifierRef<'_>) -> String {
    match alg.oid.to_string().as_str() {
        "1.3.101.110" => "an X25519 key".to_owned(),
        "1.3.101.111" => "an X448 key".to_owned(),
        "1.3.101.112" => "an Ed25519 key".to_owned(),
        "1.3.101.113" => "an Ed448 key".to_owned(),
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => "an RSA key".to_owned(),
        "1.2.840.10045.2.1" => {
            let curve = alg
                .parameters
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                .map(|c| match c.to_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    "1.3.132.0.10" => "secp256k1".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_else(|| "an unnamed curve".to_owned());
            format!("an EC key on {curve}")
        }
        other => format!("a key of algorithm {other}"),
    }
}

/// Extracts the one PKCS#8 DER from PEM or DER bytes.
fn pkcs8_der(path: &Path, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    if !looks_like_pem(bytes) {
        if bytes.first() != Some(&0x30) {
            return Err(KeyFileError::MalformedDer {
                path: path.to_path_buf(),
                what: "private key".to_owned(),
                reason: if bytes.is_empty() {
                    "the file is empty".to_owned()
                } else {
                    "neither PEM (no -----BEGIN line) nor DER (no SEQUENCE)".to_owned()
                },
            });
        }
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    let unsupported = |format, hint| KeyFileError::UnsupportedFormat {
        path: path.to_path_buf(),
        format,
        hint,
    };
    let labels = pem_labels(bytes);
    if !labels.iter().any(|l| l == "PRIVATE KEY") {
        return Err(match labels.first().map(String::as_str) {
            Some("EC PRIVATE KEY") => unsupported(
                "a SEC1 \"EC PRIVATE KEY\"",
                "convert it to PKCS#8 with: openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8",
            ),
            Some("ENCRYPTED PRIVATE KEY") => unsupported(
                "an encrypted PKCS#8 key",
                "spa keys are protected by file permissions; decrypt it with: \
                 openssl pkey -in KEY -out KEY.plain",
            ),
            Some("RSA PRIVATE KEY") => {
                unsupported("an RSA key", "spa uses X25519, Ed25519 and P-256 keys only")
            }
            Some("OPENSSH PRIVATE KEY") => {
                unsupported("an OpenSSH key", "spa reads PKCS#8 keys (openssl genpkey)")
            }
            Some(found) => KeyFileError::WrongPemLabel {
                path: path.to_path_buf(),
                expected: "PRIVATE KEY",
                found: found.to_owned(),
            },
            None => KeyFileError::MalformedPem {
                path: path.to_path_buf(),
                reason: "no complete BEGIN line".to_owned(),
            },
        });
    }
    let text = core::str::from_utf8(bytes).map_err(|_| KeyFileError::MalformedPem {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".to_owned(),
    })?;
    // Only the PRIVATE KEY block: the file may hold comments or other blocks.
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = text.find(BEGIN).unwrap_or(0);
    let block = match text[start..].find(END) {
        Some(end) => &text[start..start + end + END.len()],
        None => {
            return Err(KeyFileError::MalformedPem {
                path: path.to_path_buf(),
                reason: format!("no \"{END}\" line (truncated file?)"),
            });
        }
    };
    let (_, doc) = SecretDocument::from_pem(block).map_err(|e| KeyFileError::MalformedPem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(doc.to_bytes())
}

/// The 32 bytes of an RFC 8410 `CurvePrivateKey` (an OCTET STRING inside
/// the PKCS#8 privateKey OCTET STRING).
fn curve_private_key(
    path: &Path,
    info: &PrivateKeyInfoRef<'_>,
    alg: KeyAlgorithm,
) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let malformed = |reason: String| KeyFileError::MalformedDer {
        path: path.to_path_buf(),
        what: format!("{alg} private key"),
        reason,
    };
    if info.algorithm.parameters.is_some() {
        return Err(malformed(
            "algorithm parameters must be absent (RFC 8410)".into(),
        ));
    }
    let inner = <&OctetStringRef>::from_der(info.private_key.as_bytes())
        .map_err(|e| malformed(format!("CurvePrivateKey: {e}")))?;
    let bytes: [u8; 32] = inner
        .as_bytes()
        .try_into()
        .map_err(|_| malformed(format!("{} bytes, expected 32", inner.as_bytes().len())))?;
    Ok(Zeroizing::new(bytes))
}

/// Decodes a PKCS#8 private key (PEM `PRIVATE KEY` or DER) of one of the
/// three algorithms spa uses. `path` is for messages only.
pub fn decode_private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKey, KeyFileError> {
    let der = pkcs8_der(path, bytes)?;
    let info =
        PrivateKeyInfoRef::try_from(der.as_slice()).map_err(|e| KeyFileError::MalformedDer {
            path: path.to_path_buf(),
            what: "PKCS#8 private key".to_owned(),
            reason: e.to_string(),
        })?;
    let mismatch = |alg: KeyAlgorithm| KeyFileError::MalformedDer {
        path: path.to_path_buf(),
        what: format!("{alg} private key"),
        reason: "the public key stored with it does not match the private key".to_owned(),
    };
    let stored_public = info.public_key.as_ref().and_then(|p| p.as_bytes());
    let oid = info.algorithm.oid;
    if oid == OID_X25519 {
        let bytes = curve_private_key(path, &info, KeyAlgorithm::X25519)?;
        let key = ReceiverSecretKey::from_bytes(*bytes);
        if stored_public.is_some_and(|p| p != key.public_key().as_bytes()) {
            return Err(mismatch(KeyAlgorithm::X25519));
        }
        Ok(PrivateKey::X25519(key))
    } else if oid == OID_ED25519 {
        let seed = curve_private_key(path, &info, KeyAlgorithm::Ed25519)?;
        let public = GatewaySigner::from_seed(&seed).public_key();
        if stored_public.is_some_and(|p| p != public) {
            return Err(mismatch(KeyAlgorithm::Ed25519));
        }
        Ok(PrivateKey::Ed25519(seed))
    } else if oid == OID_EC
        && info
            .algorithm
            .parameters
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            == Some(OID_P256)
    {
        use p256::pkcs8::DecodePrivateKey as _;
        p256::ecdsa::SigningKey::from_pkcs8_der(&der).map_err(|e| KeyFileError::MalformedDer {
            path: path.to_path_buf(),
            what: "P-256 private key".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(PrivateKey::P256(der))
    } else {
        Err(KeyFileError::WrongKeyType {
            path: path.to_path_buf(),
            expected: "an X25519, Ed25519 or P-256",
            found: describe(&info.algorithm),
        })
    }
}

/// Reads a private key file (permissions checked, see
/// [`read_secret_file`]).
pub fn read_private_key(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let bytes = read_secret_file(path)?;
    decode_private_key(path, &bytes)
}

fn found(key: &PrivateKey) -> String {
    match key {
        PrivateKey::X25519(_) => "an X25519 key (a receiver key)".to_owned(),
        PrivateKey::Ed25519(_) => "an Ed25519 key (a signing key)".to_owned(),
        PrivateKey::P256(_) => "a P-256 key (a client key)".to_owned(),
    }
}

/// Reads an X25519 receiver key (green's or red's). SPEC §2.1.
pub fn read_receiver_key(path: &Path) -> Result<ReceiverSecretKey, KeyFileError> {
    match read_private_key(path)? {
        PrivateKey::X25519(k) => Ok(k),
        other => Err(KeyFileError::WrongKeyType {
            path: path.to_path_buf(),
            expected: "an X25519 (receiver)",
            found: found(&other),
        }),
    }
}

/// Reads green's Ed25519 order-signing key. SPEC §2.3.
pub fn read_gateway_signer(path: &Path) -> Result<GatewaySigner, KeyFileError> {
    match read_private_key(path)? {
        PrivateKey::Ed25519(seed) => Ok(GatewaySigner::from_seed(&seed)),
        other => Err(KeyFileError::WrongKeyType {
            path: path.to_path_buf(),
            expected: "an Ed25519 (order-signing)",
            found: found(&other),
        }),
    }
}

/// PKCS#8 v1 (no public key, as `openssl genpkey` writes) of an RFC 8410
/// curve key, PEM.
fn curve_key_pem(oid: ObjectIdentifier, key: &[u8; 32]) -> Result<Zeroizing<String>, KeyFileError> {
    let encode = |e: pkcs8::der::Error| KeyFileError::Encoding(e.to_string());
    let inner = Zeroizing::new(
        OctetStringRef::new(key)
            .and_then(|o| o.to_der())
            .map_err(encode)?,
    );
    let info = PrivateKeyInfoRef::new(
        AlgorithmIdentifierRef {
            oid,
            parameters: None,
        },
        OctetStringRef::new(&inner).map_err(encode)?,
    );
    let doc = SecretDocument::encode_msg(&info).map_err(encode)?;
    doc.to_pem("PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(encode)
}

/// A receiver key as PKCS#8 PEM, readable by `openssl pkey`.
pub fn receiver_key_to_pem(key: &ReceiverSecretKey) -> Result<Zeroizing<String>, KeyFileError> {
    curve_key_pem(OID_X25519, &key.to_bytes())
}

/// An Ed25519 key (its seed) as PKCS#8 PEM, readable by `openssl pkey`.
pub fn ed25519_key_to_pem(seed: &Zeroizing<[u8; 32]>) -> Result<Zeroizing<String>, KeyFileError> {
    curve_key_pem(OID_ED25519, seed)
}

/// 32 bytes from the operating system's random number generator.
pub fn random_32() -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let mut out = Zeroizing::new([0u8; 32]);
    getrandom::fill(out.as_mut_slice()).map_err(|e| KeyFileError::Random(e.to_string()))?;
    Ok(out)
}

/// A fresh X25519 receiver key.
pub fn generate_receiver_key() -> Result<ReceiverSecretKey, KeyFileError> {
    Ok(ReceiverSecretKey::from_random(*random_32()?))
}

/// A fresh Ed25519 seed (gateway order-signing key).
pub fn generate_gateway_key() -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    random_32()
}

/// Writes a receiver key, PKCS#8 PEM, mode 0600 (see
/// [`write_secret_file`]).
pub fn write_receiver_key(
    path: &Path,
    key: &ReceiverSecretKey,
    force: bool,
) -> Result<(), KeyFileError> {
    let pem = receiver_key_to_pem(key)?;
    write_secret_file(path, pem.as_bytes(), force)
}

/// Writes an Ed25519 key, PKCS#8 PEM, mode 0600.
pub fn write_gateway_key(
    path: &Path,
    seed: &Zeroizing<[u8; 32]>,
    force: bool,
) -> Result<(), KeyFileError> {
    let pem = ed25519_key_to_pem(seed)?;
    write_secret_file(path, pem.as_bytes(), force)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    // `openssl genpkey -algorithm X25519` and `-algorithm ED25519`, and the
    // RFC 8410 §10.3 example key.
    const OPENSSL_X25519: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VuBCIEIIjKXk4iG9Efh2/G3Y0Wq7EZX4z6AVekTZHu7ThNort4\n\
        -----END PRIVATE KEY-----\n";
    const RFC8410_ED25519: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";

    fn p() -> PathBuf {
        PathBuf::from("/x/k.pem")
    }

    #[test]
    fn reads_openssl_x25519_and_ed25519() {
        let k = decode_private_key(&p(), OPENSSL_X25519.as_bytes()).expect("x25519");
        assert_eq!(k.algorithm(), KeyAlgorithm::X25519);
        let k = decode_private_key(&p(), RFC8410_ED25519.as_bytes()).expect("ed25519");
        let PrivateKey::Ed25519(seed) = &k else {
            panic!("not ed25519");
        };
        // RFC 8410 §10.3: the seed starts d4ee72db.
        assert_eq!(&seed[..4], &[0xd4, 0xee, 0x72, 0xdb]);
    }

    #[test]
    fn round_trips_pem_and_der() {
        let key = ReceiverSecretKey::from_bytes([7; 32]);
        let pem = receiver_key_to_pem(&key).expect("pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let PrivateKey::X25519(back) = decode_private_key(&p(), pem.as_bytes()).expect("decode")
        else {
            panic!("not x25519");
        };
        assert_eq!(back.public_key(), key.public_key());
        let seed = Zeroizing::new([9u8; 32]);
        let pem = ed25519_key_to_pem(&seed).expect("pem");
        let (_, doc) = SecretDocument::from_pem(&pem).expect("pem");
        let PrivateKey::Ed25519(back) = decode_private_key(&p(), doc.as_bytes()).expect("der")
        else {
            panic!("not ed25519");
        };
        assert_eq!(*back, *seed);
        // Comments around the block are allowed.
        let commented = format!("# gateway key\n{}", pem.as_str());
        assert!(decode_private_key(&p(), commented.as_bytes()).is_ok());
    }

    #[test]
    fn wrong_type_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        write_gateway_key(&path, &Zeroizing::new([1; 32]), false).expect("write");
        let e = read_receiver_key(&path).expect_err("ed25519 is no receiver key");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: expected an X25519 (receiver) private key, found an Ed25519 key (a signing key)",
                path.display()
            )
        );
        let path = dir.path().join("r.pem");
        write_receiver_key(&path, &ReceiverSecretKey::from_bytes([2; 32]), false).expect("w");
        let e = read_gateway_signer(&path).expect_err("x25519 is no signing key");
        assert!(matches!(e, KeyFileError::WrongKeyType { .. }), "{e}");
        assert!(read_receiver_key(&path).is_ok());
    }

    #[test]
    fn unsupported_formats_say_how_to_convert() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n";
        let e = decode_private_key(&p(), sec1.as_bytes()).expect_err("sec1");
        assert!(
            e.to_string().contains("openssl pkcs8 -topk8 -nocrypt"),
            "{e}"
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = decode_private_key(&p(), enc.as_bytes()).expect_err("encrypted");
        assert!(matches!(e, KeyFileError::UnsupportedFormat { .. }), "{e}");
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let e = decode_private_key(&p(), cert.as_bytes()).expect_err("cert");
        assert!(matches!(e, KeyFileError::WrongPemLabel { .. }), "{e}");
    }

    #[test]
    fn malformed_keys_are_refused() {
        // Truncated PEM.
        let t = &OPENSSL_X25519[..40];
        let e = decode_private_key(&p(), t.as_bytes()).expect_err("truncated");
        assert!(matches!(e, KeyFileError::MalformedPem { .. }), "{e}");
        // Bad base64.
        let bad = OPENSSL_X25519.replace("MC4C", "MC!C");
        let e = decode_private_key(&p(), bad.as_bytes()).expect_err("base64");
        assert!(
            e.to_string().starts_with("/x/k.pem: malformed PEM: "),
            "{e}"
        );
        // DER garbage.
        let e = decode_private_key(&p(), b"\x30\x03\x02\x01\x00").expect_err("der");
        assert!(
            e.to_string()
                .starts_with("/x/k.pem: PKCS#8 private key is malformed: "),
            "{e}"
        );
        let e = decode_private_key(&p(), b"").expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = decode_private_key(&p(), b"hello").expect_err("text");
        assert!(e.to_string().contains("neither PEM"), "{e}");
        // A 31-byte X25519 key.
        let (_, doc) = SecretDocument::from_pem(OPENSSL_X25519).expect("pem");
        let mut der = doc.as_bytes().to_vec();
        der[1] -= 1; // outer length
        der[13] -= 1; // privateKey OCTET STRING length
        der[15] -= 1; // CurvePrivateKey length
        der.pop();
        let e = decode_private_key(&p(), &der).expect_err("short");
        assert!(e.to_string().contains("31 bytes, expected 32"), "{e}");
    }

    #[test]
    fn pkcs8_v2_public_keys_are_checked() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        use pkcs8::der::asn1::BitStringRef;
        // ed25519-dalek writes v2 (with the public key): accepted.
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let v2 = sk.to_pkcs8_der().expect("der");
        let PrivateKey::Ed25519(seed) = decode_private_key(&p(), v2.as_bytes()).expect("v2") else {
            panic!("not ed25519");
        };
        assert_eq!(*seed, [3; 32]);
        // A v2 key whose public key is another key's: refused.
        let inner = OctetStringRef::new(&[3; 32])
            .and_then(|o| o.to_der())
            .expect("inner");
        let mut info = PrivateKeyInfoRef::new(
            AlgorithmIdentifierRef {
                oid: OID_ED25519,
                parameters: None,
            },
            OctetStringRef::new(&inner).expect("octets"),
        );
        let wrong = [0x11; 32];
        info.public_key = Some(BitStringRef::from_bytes(&wrong).expect("bits"));
        let der = SecretDocument::encode_msg(&info).expect("encode");
        let e = decode_private_key(&p(), der.as_bytes()).expect_err("mismatch");
        assert!(
            e.to_string().contains("does not match the private key"),
            "{e}"
        );
        // Parameters where RFC 8410 has none.
        let x = "-----BEGIN PRIVATE KEY-----\nno end\n";
        let e = decode_private_key(&p(), x.as_bytes()).expect_err("no end");
        assert!(
            e.to_string()
                .contains("no \"-----END PRIVATE KEY-----\" line"),
            "{e}"
        );
        let e = decode_private_key(&p(), b"-----BEGIN PRIVATE KEY\n").expect_err("begin");
        assert!(e.to_string().contains("no complete BEGIN line"), "{e}");
    }

    #[test]
    fn other_algorithms_are_named() {
        // `openssl genpkey -algorithm ED448`.
        let ed448 = "-----BEGIN PRIVATE KEY-----\n\
            MEcCAQAwBQYDK2VxBDsEOT9qnNJSzlxIKKqvblz8Tt0c5zGK1xy6uu3mZ6vEnVTX\n\
            golV5YrhRQhYhc5DmXbpu+T6q5fzoGhu7Q==\n\
            -----END PRIVATE KEY-----\n";
        let e = decode_private_key(&p(), ed448.as_bytes()).expect_err("ed448");
        assert_eq!(
            e.to_string(),
            "/x/k.pem: expected an X25519, Ed25519 or P-256 private key, found an Ed448 key"
        );
    }

    #[test]
    fn public_key_lines() {
        let key = ReceiverSecretKey::from_bytes([7; 32]);
        let line = PrivateKey::X25519(key).public_key_line().expect("line");
        assert_eq!(line.len(), 44);
        let seed = Zeroizing::new([9u8; 32]);
        assert!(PrivateKey::Ed25519(seed).public_key_line().is_some());
        assert!(
            PrivateKey::P256(Zeroizing::new(vec![]))
                .public_key_line()
                .is_none()
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate_receiver_key().expect("a");
        let b = generate_receiver_key().expect("b");
        assert_ne!(a.public_key(), b.public_key());
        assert_ne!(*generate_gateway_key().expect("c"), [0; 32]);
    }
}
