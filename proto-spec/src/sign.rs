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
