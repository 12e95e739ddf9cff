//! A deterministic test PKI: a CA, client certificates, CRLs and software
//! signers, all derived from fixed seeds so test vectors reproduce byte for
//! byte. Behind the `testkit` feature; never for production keys.
//!
//! Every key here is a **test key**: it is derived from a public seed.

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::keys::ReceiverSecretKey;
use crate::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use crate::sign::{Ed25519Signer, GatewaySigner, P256Signer, Signer};

/// 2026-01-01T00:00:00Z in ms: the start of every test validity period.
pub const T_2026: u64 = 1_767_225_600_000;
/// 2036-01-01T00:00:00Z in ms.
pub const T_2036: u64 = 2_082_758_400_000;
/// The `now` of the test vectors: 2026-11-26T12:00:00Z.
pub const VECTOR_NOW: u64 = 1_795_694_400_000;

/// The policy of the flow tests, the benches and the fuzz targets: `cn:alice`
/// may have `tunnel`, `ssh` and `web`, `email:bob@example.org` only
/// `tunnel`; everything else at its default.
pub fn flow_policy() -> Policy {
    Policy {
        rules: vec![
            Rule {
                identity: IdentityPattern::parse("cn:alice"),
                services: ServiceSet::Named(vec!["tunnel".into(), "ssh".into(), "web".into()]),
            },
            Rule {
                identity: IdentityPattern::parse("email:bob@example.org"),
                services: ServiceSet::Named(vec!["tunnel".into()]),
            },
        ],
        ..Policy::default()
    }
}

/// 32 bytes derived from a label: `SHA-256("spa test key " || label)`.
pub fn seed(label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"spa test key ");
    h.update(label.as_bytes());
    h.finalize().into()
}

/// A receiver key derived from a label.
pub fn receiver_key(label: &str) -> ReceiverSecretKey {
    ReceiverSecretKey::from_bytes(seed(label))
}

/// A gateway signing key derived from a label.
pub fn gateway_signer(label: &str) -> GatewaySigner {
    GatewaySigner::from_seed(&Zeroizing::new(seed(label)))
}

fn ms_to_time(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Client key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256.
    P256,
}

/// A client key: PKCS#8 DER from a label.
pub fn client_pkcs8(alg: KeyAlg, label: &str) -> Zeroizing<Vec<u8>> {
    let s = seed(label);
    match alg {
        KeyAlg::Ed25519 => Zeroizing::new(
            ed25519_dalek::SigningKey::from_bytes(&s)
                .to_pkcs8_der()
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
        ),
        KeyAlg::P256 => {
            // Reduce the seed into a valid scalar by hashing until it fits.
            let mut bytes = s;
            loop {
                if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                    return Zeroizing::new(
                        k.to_pkcs8_der()
                            .map(|d| d.as_bytes().to_vec())
                            .unwrap_or_default(),
                    );
                }
                bytes = Sha256::digest(bytes).into();
            }
        }
    }
}

/// The algorithm a raw test key is declared with ([`TestCa::issue_raw_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKeyAlg {
    /// id-Ed25519, 32 bytes.
    Ed25519,
    /// id-ecPublicKey on secp256r1, a SEC 1 point.
    P256,
    /// id-ecPublicKey on secp384r1 (never a valid client key).
    P384,
}

/// A subjectAltName entry of a test certificate.
#[derive(Debug, Clone, Copy)]
pub enum SubjectAltName<'a> {
    /// rfc822Name.
    Email(&'a str),
    /// dNSName.
    Dns(&'a str),
    /// uniformResourceIdentifier.
    Uri(&'a str),
}

/// What kind of certificate to issue.
#[derive(Debug, Clone)]
pub struct ClientCertSpec {
    /// Subject common name (also `email:<cn>@example.org` SAN).
    pub cn: String,
    /// Key algorithm.
    pub alg: KeyAlg,
    /// Label the key is derived from.
    pub key_label: String,
    /// Serial number.
    pub serial: u64,
    /// notBefore, ms.
    pub not_before_ms: u64,
    /// notAfter, ms.
    pub not_after_ms: u64,
    /// Extended key usage: client auth (true) or server auth only (false).
    pub client_auth: bool,
}

impl ClientCertSpec {
    /// A valid 2026-2036 client-auth certificate.
    pub fn new(cn: &str, alg: KeyAlg, serial: u64) -> Self {
        Self {
            cn: cn.to_owned(),
            alg,
            key_label: format!("client {cn} {alg:?}"),
            serial,
            not_before_ms: T_2026,
            not_after_ms: T_2036,
            client_auth: true,
        }
    }
}

/// A test CA with an Ed25519 key (deterministic signatures).
#[derive(Debug)]
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert_der: Vec<u8>,
}

/// Errors from the test PKI (rcgen failures).
#[derive(Debug, thiserror::Error)]
#[error("test PKI: {0}")]
pub struct TestkitError(pub String);

fn err(e: impl core::fmt::Display) -> TestkitError {
    TestkitError(e.to_string())
}

impl TestCa {
    /// A CA named `name`, key from `name`, valid `not_before_ms..not_after_ms`.
    pub fn new_with_validity(
        name: &str,
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Result<Self, TestkitError> {
        Self::with_key_label(name, &format!("ca {name}"), not_before_ms, not_after_ms)
    }

    /// A CA named `name` whose key comes from `key_label`: two CAs with one
    /// name and different keys (SPEC §6.1 matches CRLs by name only).
    pub fn with_key_label(
        name: &str,
        key_label: &str,
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Result<Self, TestkitError> {
        let pkcs8 = client_pkcs8(KeyAlg::Ed25519, key_label);
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "spa test PKI");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&[0x01]));
        params.not_before = ms_to_time(not_before_ms);
        params.not_after = ms_to_time(not_after_ms);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            params,
            key,
        })
    }

    /// A CA valid 2026-2036.
    pub fn new(name: &str) -> Result<Self, TestkitError> {
        Self::new_with_validity(name, T_2026, T_2036)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Issues a client certificate; returns `(cert DER, key PKCS#8 DER)`.
    pub fn issue(
        &self,
        spec: &ClientCertSpec,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), TestkitError> {
        let pkcs8 = client_pkcs8(spec.alg, &spec.key_label);
        let subject_key = KeyPair::try_from(pkcs8.as_slice()).map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.as_str());
        params.subject_alt_names = vec![SanType::Rfc822Name(
            format!("{}@example.org", spec.cn).try_into().map_err(err)?,
        )];
        params.serial_number = Some(SerialNumber::from_slice(&spec.serial.to_be_bytes()));
        params.not_before = ms_to_time(spec.not_before_ms);
        params.not_after = ms_to_time(spec.not_after_ms);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.client_auth {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&subject_key, &self.issuer())
            .map_err(err)?;
        Ok((cert.der().to_vec(), pkcs8))
    }

    /// Issues a client-auth certificate whose subject key is a P-384 point
    /// (an algorithm spa does not accept for clients). There is no private
    /// key: the certificate exists to test the `unsupported_key` refusal.
    pub fn issue_p384_placeholder(&self, cn: &str, serial: u64) -> Result<Vec<u8>, TestkitError> {
        // Any 97 bytes do for an uncompressed P-384 point here: the subject
        // bytes are never used as a key: the curve OID is refused first.
        let mut point = vec![0x04];
        point.extend_from_slice(&seed("p384 x"));
        point.extend_from_slice(&seed("p384 x")[..16]);
        point.extend_from_slice(&seed("p384 y"));
        point.extend_from_slice(&seed("p384 y")[..16]);
        self.issue_raw_key(cn, serial, RawKeyAlg::P384, point)
    }

    /// Issues a client-auth certificate for the raw subject key `key`
    /// (the BIT STRING content of its SPKI), with no private key: for
    /// certificates whose key a receiver must refuse (SPEC §2.2).
    pub fn issue_raw_key(
        &self,
        cn: &str,
        serial: u64,
        alg: RawKeyAlg,
        key: Vec<u8>,
    ) -> Result<Vec<u8>, TestkitError> {
        struct RawKey(Vec<u8>, &'static rcgen::SignatureAlgorithm);
        impl rcgen::PublicKeyData for RawKey {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                self.1
            }
        }
        let alg = match alg {
            RawKeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
            RawKeyAlg::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            RawKeyAlg::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        params.not_before = ms_to_time(T_2026);
        params.not_after = ms_to_time(T_2036);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&RawKey(key, alg), &self.issuer())
            .map_err(err)?;
        Ok(cert.der().to_vec())
    }

    /// Like [`TestCa::issue`], with the subjectAltName entries `sans` in
    /// this order (SPEC §6.3 keeps SAN order) instead of the one e-mail.
    pub fn issue_with_sans(
        &self,
        spec: &ClientCertSpec,
        sans: &[SubjectAltName<'_>],
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), TestkitError> {
        let pkcs8 = client_pkcs8(spec.alg, &spec.key_label);
        let subject_key = KeyPair::try_from(pkcs8.as_slice()).map_err(err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.as_str());
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                Ok(match *s {
                    SubjectAltName::Email(v) => SanType::Rfc822Name(v.try_into().map_err(err)?),
                    SubjectAltName::Dns(v) => SanType::DnsName(v.try_into().map_err(err)?),
                    SubjectAltName::Uri(v) => SanType::URI(v.try_into().map_err(err)?),
                })
            })
            .collect::<Result<_, TestkitError>>()?;
        params.serial_number = Some(SerialNumber::from_slice(&spec.serial.to_be_bytes()));
        params.not_before = ms_to_time(spec.not_before_ms);
        params.not_after = ms_to_time(spec.not_after_ms);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&subject_key, &self.issuer())
            .map_err(err)?;
        Ok((cert.der().to_vec(), pkcs8))
    }

    /// Issues a certificate and wraps it with its key in a software signer.
    pub fn signer(
        &self,
        spec: &ClientCertSpec,
    ) -> Result<Box<dyn Signer + Send + Sync>, TestkitError> {
        let (cert, key) = self.issue(spec)?;
        Ok(match spec.alg {
            KeyAlg::Ed25519 => Box::new(Ed25519Signer::from_pkcs8_der(&key, cert).map_err(err)?),
            KeyAlg::P256 => Box::new(P256Signer::from_pkcs8_der(&key, cert).map_err(err)?),
        })
    }

    /// A CRL revoking `serials`, issued at `this_update_ms`, next update at
    /// `next_update_ms`.
    pub fn crl(
        &self,
        serials: &[u64],
        this_update_ms: u64,
        next_update_ms: u64,
    ) -> Result<Vec<u8>, TestkitError> {
        let params = CertificateRevocationListParams {
            this_update: ms_to_time(this_update_ms),
            next_update: ms_to_time(next_update_ms),
            crl_number: SerialNumber::from_slice(&[0x01]),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: ms_to_time(this_update_ms),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params
            .signed_by(&self.issuer())
            .map_err(err)?
            .der()
            .to_vec())
    }
}
