//! Signatures: the client's over a knock body (SPEC §4.4) and the gateway's
//! over an order (SPEC §5.1).

use ed25519_dalek::Signer as _;
use zeroize::Zeroizing;

use crate::body::SIGNATURE_LEN;
use crate::keys::ReceiverPublicKey;

/// SPEC §4.4: context string of the client transcript.
pub const KNOCK_SIGNATURE_CONTEXT: &[u8; 22] = b"spa/v1 knock signature";
/// SPEC §5.1: context string of the gateway transcript.
pub const ORDER_SIGNATURE_CONTEXT: &[u8; 22] = b"spa/v1 order signature";

/// Signature algorithms a client key may use; the certificate fixes which.
/// SPEC §2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032, PureEdDSA).
    Ed25519,
    /// ECDSA over P-256 with SHA-256, signature as r||s.
    EcdsaP256Sha256,
}

/// Why a signer could not sign.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignerError(pub String);

/// Anything that can sign a knock: a software key, a PKCS#11 token, a PIV
/// card. The signer receives the whole transcript; an ECDSA signer hashes it
/// with SHA-256 itself (a token doing `CKM_ECDSA` gets the hash).
pub trait Signer {
    /// The algorithm of the key, which must match the certificate's key.
    fn algorithm(&self) -> SignatureAlgorithm;
    /// The client's certificate, DER.
    fn certificate_der(&self) -> &[u8];
    /// Signs `transcript`, returning 64 bytes (Ed25519, or P-256 r||s).
    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError>;
}

/// Builds `context || pkR || signed_part`. SPEC §4.4, §5.1.
pub fn transcript(context: &[u8; 22], receiver: &ReceiverPublicKey, signed_part: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(22 + 32 + signed_part.len());
    t.extend_from_slice(context);
    t.extend_from_slice(receiver.as_bytes());
    t.extend_from_slice(signed_part);
    t
}

/// A client's public key as taken from its certificate. SPEC §2.2.
#[derive(Debug, Clone)]
pub enum ClientPublicKey {
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// ECDSA P-256: the uncompressed SEC1 point, validated on the curve when
    /// the certificate was parsed.
    P256(P256PublicKey),
}

/// A P-256 public key. Verification goes through `ring`
/// (`ECDSA_P256_SHA256_FIXED`), already linked through rustls-webpki: it
/// verifies in about 40 us where the `p256` crate takes about 145 us on the
/// same machine (BENCHMARKS.md), which would make P-256 clients three times
/// as costly to verify as Ed25519 ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P256PublicKey {
    sec1_uncompressed: Vec<u8>,
}

impl P256PublicKey {
    /// From a SEC1 point (compressed or not); refuses points not on the
    /// curve.
    pub fn from_sec1_bytes(bytes: &[u8]) -> Option<Self> {
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).ok()?;
        Some(Self {
            sec1_uncompressed: vk.to_sec1_point(false).as_bytes().to_vec(),
        })
    }

    /// The uncompressed SEC1 encoding.
    pub fn as_sec1_bytes(&self) -> &[u8] {
        &self.sec1_uncompressed
    }
}

impl ClientPublicKey {
    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            Self::Ed25519(_) => SignatureAlgorithm::Ed25519,
            Self::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }

    /// Verifies a 64-byte signature over `transcript`. Ed25519 uses strict
    /// verification (canonical S, no small-order keys). SPEC §4.4.
    pub fn verify(&self, transcript: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        match self {
            Self::Ed25519(vk) => {
                let sig = ed25519_dalek::Signature::from_bytes(signature);
                vk.verify_strict(transcript, &sig).is_ok()
            }
            Self::P256(pk) => ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &pk.sec1_uncompressed,
            )
            .verify(transcript, signature)
            .is_ok(),
        }
    }
}

/// A software Ed25519 client key with its certificate. The key is zeroized on
/// drop by `ed25519_dalek`.
#[derive(Debug)]
pub struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
    certificate: Vec<u8>,
}

impl Ed25519Signer {
    /// From the 32-byte seed and the certificate DER.
    pub fn from_seed(seed: &Zeroizing<[u8; 32]>, certificate: Vec<u8>) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
            certificate,
        }
    }

    /// From a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8], certificate: Vec<u8>) -> Result<Self, SignerError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| SignerError(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self { key, certificate })
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

impl Signer for Ed25519Signer {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Ed25519
    }

    fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        Ok(self.key.sign(transcript).to_bytes())
    }
}

/// A software ECDSA P-256 client key with its certificate. Signatures are
/// deterministic (RFC 6979). The key is zeroized on drop by `p256`.
#[derive(Debug)]
pub struct P256Signer {
    key: p256::ecdsa::SigningKey,
    certificate: Vec<u8>,
}

impl P256Signer {
    /// From a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8], certificate: Vec<u8>) -> Result<Self, SignerError> {
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(der)
            .map_err(|e| SignerError(format!("not a P-256 PKCS#8 key: {e}")))?;
        Ok(Self { key, certificate })
    }

    /// The SEC1 uncompressed public key.
    pub fn public_key_sec1(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec()
    }
}

impl Signer for P256Signer {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }

    fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        let sig: p256::ecdsa::Signature = self.key.sign(transcript);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

/// Green's Ed25519 order-signing key (SPEC §2.3). Zeroized on drop.
#[derive(Debug)]
pub struct GatewaySigner {
    key: ed25519_dalek::SigningKey,
}

impl GatewaySigner {
    /// From the 32-byte seed.
    pub fn from_seed(seed: &Zeroizing<[u8; 32]>) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }

    /// The public key red is configured with.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub(crate) fn sign(&self, transcript: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(transcript).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    //! Independent anchors for the signing path: the RFC 8032 §7.1 Ed25519
    //! vectors (TEST 1-3) and the RFC 6979 A.2.5 P-256/SHA-256 vectors,
    //! typed in from the RFCs. The spa vectors (SPEC §10) are produced by
    //! this code; these are not.

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("hex")
    }

    fn seed(s: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(unhex(s).try_into().expect("32 bytes"))
    }

    /// (secret key, public key, message, signature): RFC 8032 §7.1.
    const RFC8032: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac\
             18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn ed25519_signers_reproduce_rfc8032_test_vectors() {
        for (sk, pk, msg, sig) in RFC8032 {
            let client = Ed25519Signer::from_seed(&seed(sk), vec![]);
            assert_eq!(hex::encode(client.public_key()), pk);
            let got = client.sign(&unhex(msg)).expect("sign");
            assert_eq!(hex::encode(got), sig, "client signer, message {msg:?}");
            let gateway = GatewaySigner::from_seed(&seed(sk));
            assert_eq!(hex::encode(gateway.public_key()), pk);
            assert_eq!(hex::encode(gateway.sign(&unhex(msg))), sig);
        }
    }

    #[test]
    fn ed25519_verification_accepts_rfc8032_and_refuses_a_changed_byte() {
        for (_, pk, msg, sig) in RFC8032 {
            let key = ClientPublicKey::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(&unhex(pk).try_into().expect("32"))
                    .expect("key"),
            );
            let mut sig: [u8; SIGNATURE_LEN] = unhex(sig).try_into().expect("64");
            assert!(key.verify(&unhex(msg), &sig));
            sig[0] ^= 0x01;
            assert!(!key.verify(&unhex(msg), &sig));
        }
    }

    #[test]
    fn p256_signer_reproduces_rfc6979_a25_sha256_vectors() {
        use p256::pkcs8::EncodePrivateKey as _;
        // RFC 6979 A.2.5: private key x, then (message, r, s) with SHA-256.
        let x = unhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721");
        let der = p256::SecretKey::from_slice(&x)
            .expect("scalar")
            .to_pkcs8_der()
            .expect("pkcs8");
        let signer = P256Signer::from_pkcs8_der(der.as_bytes(), vec![]).expect("signer");
        let key = ClientPublicKey::P256(
            P256PublicKey::from_sec1_bytes(&signer.public_key_sec1()).expect("point"),
        );
        for (msg, r, s) in [
            (
                "sample",
                "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716",
                "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
            ),
            (
                "test",
                "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367",
                "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083",
            ),
        ] {
            let sig = signer.sign(msg.as_bytes()).expect("sign");
            assert_eq!(hex::encode(&sig[..32]), r, "r for {msg:?}");
            assert_eq!(hex::encode(&sig[32..]), s, "s for {msg:?}");
            assert!(key.verify(msg.as_bytes(), &sig));
        }
    }
}
