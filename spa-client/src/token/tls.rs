//! A knock signer as the client-authentication key of a rustls TLS 1.3
//! client: [`TlsClientKey`] implements [`rustls::sign::SigningKey`] over any
//! [`proto_spec::sign::Signer`], so a PKCS#11 or PIV key signs the TLS
//! `CertificateVerify` on the card.
//!
//! Schemes: `ED25519` for Ed25519 keys, `ECDSA_NISTP256_SHA256` for P-256
//! keys (the signer hashes with SHA-256; the `r || s` signature is converted
//! to the DER form TLS wants). Sharing the key between knocks and TLS is
//! safe: a TLS 1.3 `CertificateVerify` message starts with 64 spaces, a
//! knock transcript with `spa/v1 knock signature` (SPEC §4.4), so neither
//! signature can be taken for the other.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(signer: spa_client::token::pkcs11::Pkcs11Signer,
//! #         roots: rustls::RootCertStore) -> Result<(), Box<dyn std::error::Error>> {
//! let key = spa_client::token::tls::certified_key(Arc::new(signer), Vec::new())?;
//! let provider = Arc::new(rustls::crypto::ring::default_provider());
//! let config = rustls::ClientConfig::builder_with_provider(provider)
//!     .with_protocol_versions(&[&rustls::version::TLS13])?
//!     .with_root_certificates(roots)
//!     .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
//! # let _ = config; Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;

use proto_spec::sign::{SignatureAlgorithm, Signer};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

use super::{TokenError, der};

/// A knock signer as a rustls client-authentication key.
pub struct TlsClientKey {
    signer: Arc<dyn Signer + Send + Sync>,
    spki: Vec<u8>,
    scheme: SignatureScheme,
}

impl fmt::Debug for TlsClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientKey")
            .field("scheme", &self.scheme)
            .field("spki", &hex::encode(&self.spki))
            .finish_non_exhaustive()
    }
}

impl TlsClientKey {
    /// Wraps `signer`. Its certificate must parse and carry the key of the
    /// signer's algorithm.
    pub fn new(signer: Arc<dyn Signer + Send + Sync>) -> Result<Self, TokenError> {
        let invalid = |cause: String| TokenError::CertificateInvalid {
            certificate: "of the TLS client key".to_owned(),
            cause,
        };
        let der = signer.certificate_der();
        let parsed = proto_spec::cert::parse_client_cert(der)
            .map_err(|e| invalid(format!("refused ({})", e.code())))?;
        if parsed.public_key.algorithm() != signer.algorithm() {
            return Err(invalid("its key algorithm is not the signer's".to_owned()));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(format!("does not parse: {e}")))?;
        let spki = cert.public_key().raw.to_vec();
        let scheme = match signer.algorithm() {
            SignatureAlgorithm::Ed25519 => SignatureScheme::ED25519,
            SignatureAlgorithm::EcdsaP256Sha256 => SignatureScheme::ECDSA_NISTP256_SHA256,
        };
        Ok(Self {
            signer,
            spki,
            scheme,
        })
    }

    /// The one TLS signature scheme this key signs with.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl rustls::sign::SigningKey for TlsClientKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered.contains(&self.scheme).then(|| {
            Box::new(TlsSigner {
                signer: Arc::clone(&self.signer),
                scheme: self.scheme,
            }) as Box<dyn rustls::sign::Signer>
        })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.scheme {
            SignatureScheme::ED25519 => rustls::SignatureAlgorithm::ED25519,
            _ => rustls::SignatureAlgorithm::ECDSA,
        }
    }
}

/// One TLS signature by the token.
struct TlsSigner {
    signer: Arc<dyn Signer + Send + Sync>,
    scheme: SignatureScheme,
}

impl fmt::Debug for TlsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSigner")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl rustls::sign::Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sig = self
            .signer
            .sign(message)
            .map_err(|e| rustls::Error::General(format!("TLS client key: {e}")))?;
        match self.scheme {
            SignatureScheme::ED25519 => Ok(sig.to_vec()),
            _ => der::ecdsa_p256_raw_to_der(&sig)
                .map_err(|e| rustls::Error::General(format!("TLS client key: {e}"))),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// The signer's certificate, then `intermediates`, with the signer as key:
/// ready for [`rustls::sign::SingleCertAndKey`] and
/// `ClientConfig::with_client_cert_resolver`.
pub fn certified_key(
    signer: Arc<dyn Signer + Send + Sync>,
    intermediates: Vec<CertificateDer<'static>>,
) -> Result<CertifiedKey, TokenError> {
    let mut chain = vec![CertificateDer::from(signer.certificate_der().to_vec())];
    chain.extend(intermediates);
    Ok(CertifiedKey::new(
        chain,
        Arc::new(TlsClientKey::new(signer)?),
    ))
}
