//! A YubiKey's PIV application as a knock signer, through PC/SC (pcscd and
//! libpcsclite), without a PKCS#11 module. Cargo feature `yubikey`.
//!
//! The key is the one in slot 9a (PIV Authentication: PIN once per session,
//! not before every signature). It must be ECDSA P-256: the card computes
//! the signature over `SHA-256(transcript)` (hashed here) and returns DER,
//! which is converted to `r || s`.
//!
//! **Ed25519 is not supported on this path.** The `yubikey` crate's latest
//! stable release (0.8) knows only RSA and ECDSA P-256/P-384 PIV keys; PIV
//! Ed25519 (YubiKey firmware 5.7 and later) arrives with its 0.9 line, which
//! is still a release candidate. An Ed25519 certificate or key in slot 9a
//! is refused with [`TokenError::UnsupportedKey`]. For an Ed25519 key on a
//! YubiKey, use the PKCS#11 route ([`super::pkcs11`]) with Yubico's
//! `libykcs11.so` or OpenSC, if their version supports it.
//!
//! Not tested against hardware here: no card is present on the build
//! machines. The PKCS#11 path is tested end to end with SoftHSM2.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use proto_spec::body::SIGNATURE_LEN;
use proto_spec::sign::{SignatureAlgorithm, Signer, SignerError};
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use x509_cert::der::Encode as _;
use yubikey::YubiKey;
use yubikey::piv::{AlgorithmId, ManagementAlgorithmId, SlotId};

use super::der::{self, Curve};
use super::{
    CertificateSource, KEY_CHECK_MESSAGE, LoadedCertificate, PinSource, TokenError, algorithm_name,
};

const SLOT: &str = "slot 9a";

/// Everything needed to open a [`PivSigner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PivConfig {
    /// The YubiKey's serial number; `None` takes the only one connected.
    pub serial: Option<u32>,
    /// The PIV PIN.
    pub pin: PinSource,
    /// The certificate: a file, or the one stored in slot 9a.
    pub certificate: CertificateSource,
}

/// A knock signer using the P-256 key in PIV slot 9a of a YubiKey.
/// `Send + Sync`: the card handle is kept open behind a mutex, so the PIN
/// is verified once for the signer's life.
pub struct PivSigner {
    yubikey: Mutex<YubiKey>,
    name: String,
    certificate: LoadedCertificate,
}

impl fmt::Debug for PivSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PivSigner")
            .field("yubikey", &self.name)
            .field("certificate", &self.certificate.name)
            .finish_non_exhaustive()
    }
}

fn piv_err(name: &str, operation: &'static str, e: yubikey::Error) -> TokenError {
    TokenError::Piv {
        yubikey: name.to_owned(),
        operation,
        cause: e.to_string(),
    }
}

impl PivSigner {
    /// Connects to the YubiKey, reads the certificate, verifies the PIN and
    /// checks that the key in slot 9a is the certificate's.
    pub fn open(config: &PivConfig) -> Result<Self, TokenError> {
        let name = match config.serial {
            Some(s) => format!("YubiKey {s}"),
            None => "YubiKey".to_owned(),
        };
        let mut yk = match config.serial {
            Some(s) => YubiKey::open_by_serial(yubikey::Serial(s)),
            None => YubiKey::open(),
        }
        .map_err(|e| piv_err(&name, "connecting (is pcscd running?)", e))?;
        let name = format!("YubiKey {}", yk.serial());
        let unsupported = |cause: String| TokenError::UnsupportedKey {
            token: name.clone(),
            key: SLOT.to_owned(),
            cause,
        };

        let certificate = match &config.certificate {
            CertificateSource::File(path) => LoadedCertificate::from_file(path)?,
            CertificateSource::Token => {
                let cert = yubikey::Certificate::read(&mut yk, SlotId::Authentication)
                    .map_err(|e| piv_err(&name, "reading the certificate in slot 9a", e))?;
                let der = cert
                    .cert
                    .to_der()
                    .map_err(|e| TokenError::CertificateInvalid {
                        certificate: format!("in {SLOT} of {name}"),
                        cause: e.to_string(),
                    })?;
                LoadedCertificate::parse(&der, format!("in {SLOT} of {name}"))?
            }
        };
        if certificate.key.algorithm() != SignatureAlgorithm::EcdsaP256Sha256 {
            return Err(unsupported(format!(
                "certificate {} is for an {} key; the PIV signer takes P-256 only \
                 (use a PKCS#11 module for Ed25519)",
                certificate.name,
                algorithm_name(certificate.key.algorithm())
            )));
        }

        let pin = config.pin.read(&name)?;
        yk.verify_pin(pin.expose_secret().as_bytes())
            .map_err(|e| match e {
                yubikey::Error::WrongPin { .. } => TokenError::WrongPin {
                    token: name.clone(),
                },
                yubikey::Error::PinLocked => TokenError::PinLocked {
                    token: name.clone(),
                },
                other => piv_err(&name, "verifying the PIN", other),
            })?;
        drop(pin);

        // Firmware 5.3 and later tell the slot's algorithm and public key.
        let mut compared = false;
        if let Ok(meta) = yubikey::piv::metadata(&mut yk, SlotId::Authentication) {
            match meta.algorithm {
                ManagementAlgorithmId::Asymmetric(AlgorithmId::EccP256) => {}
                other => {
                    return Err(unsupported(format!(
                        "it holds {}; the PIV signer takes P-256 only",
                        slot_algorithm(other)
                    )));
                }
            }
            if let Some(spki) = meta.public {
                let raw = spki.subject_public_key.raw_bytes();
                let key = der::parse_ec_point(&Curve::P256, raw).map_err(&unsupported)?;
                certificate
                    .check_key(&key)
                    .map_err(|detail| TokenError::KeyMismatch {
                        token: name.clone(),
                        key: SLOT.to_owned(),
                        certificate: certificate.name.clone(),
                        detail,
                    })?;
                compared = true;
            }
        }

        let signer = Self {
            yubikey: Mutex::new(yk),
            name,
            certificate,
        };
        if !compared {
            // Older firmware: prove the key with a test signature.
            let sig = signer.sign_message(KEY_CHECK_MESSAGE)?;
            if !signer.certificate.key.verify(KEY_CHECK_MESSAGE, &sig) {
                return Err(TokenError::KeyMismatch {
                    token: signer.name.clone(),
                    key: SLOT.to_owned(),
                    certificate: signer.certificate.name.clone(),
                    detail: "a test signature by the slot's key does not verify with the \
                             certificate's key"
                        .to_owned(),
                });
            }
        }
        Ok(signer)
    }

    /// Signs `SHA-256(message)` with the slot 9a key; returns `r || s`.
    fn sign_message(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN], TokenError> {
        let digest = Sha256::digest(message);
        let sig = {
            let mut yk = self.yubikey.lock().unwrap_or_else(PoisonError::into_inner);
            yubikey::piv::sign_data(
                &mut yk,
                &digest,
                AlgorithmId::EccP256,
                SlotId::Authentication,
            )
        }
        .map_err(|e| piv_err(&self.name, "signing with slot 9a", e))?;
        der::ecdsa_p256_to_raw(&sig).map_err(|cause| TokenError::BadSignature {
            token: self.name.clone(),
            key: SLOT.to_owned(),
            cause,
        })
    }
}

impl Signer for PivSigner {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }

    fn certificate_der(&self) -> &[u8] {
        &self.certificate.der
    }

    fn sign(&self, transcript: &[u8]) -> Result<[u8; SIGNATURE_LEN], SignerError> {
        let sig = self
            .sign_message(transcript)
            .map_err(|e| SignerError(e.to_string()))?;
        self.certificate
            .check_signature(&self.name, SLOT, transcript, &sig)?;
        Ok(sig)
    }
}

/// A slot algorithm as a user reads it (error messages name keys, not the
/// `yubikey` crate's types).
fn slot_algorithm(alg: ManagementAlgorithmId) -> &'static str {
    match alg {
        ManagementAlgorithmId::Asymmetric(AlgorithmId::EccP256) => "a P-256 key",
        ManagementAlgorithmId::Asymmetric(AlgorithmId::EccP384) => "a P-384 key",
        ManagementAlgorithmId::Asymmetric(AlgorithmId::Rsa1024) => "an RSA-1024 key",
        ManagementAlgorithmId::Asymmetric(AlgorithmId::Rsa2048) => "an RSA-2048 key",
        _ => "a key of another kind (not an asymmetric key)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piv_signer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PivSigner>();
    }

    #[test]
    fn slot_algorithms_are_named_for_users() {
        let rsa = slot_algorithm(ManagementAlgorithmId::Asymmetric(AlgorithmId::Rsa2048));
        assert_eq!(rsa, "an RSA-2048 key");
        assert_eq!(
            slot_algorithm(ManagementAlgorithmId::Asymmetric(AlgorithmId::EccP384)),
            "a P-384 key"
        );
    }
}
