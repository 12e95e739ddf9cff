//! Client identity: certificate parsing, chain validation with
//! rustls-webpki, CRLs, and the cache of validated certificates. SPEC §2.2,
//! §2.4, §6.
//!
//! Chain building, validity periods, extended key usage and revocation are
//! all decided by `rustls-webpki`. `x509-parser` is used only to read fields
//! webpki does not expose (subject CN, e-mail and URI SANs, notBefore/notAfter,
//! a CRL's nextUpdate), never to decide trust.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::UnixMillis;
use crate::error::CertificateError;
use crate::sign::ClientPublicKey;

/// `SHA-256(DER SubjectPublicKeyInfo)`: the key of the replay floor and the
/// stable identity of a client or gateway. SPEC §2.4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey(pub [u8; 32]);

impl core::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IdentityKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl IdentityKey {
    /// Hashes a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        Self(Sha256::digest(spki).into())
    }

    /// The identity key of a gateway's Ed25519 public key: the hash of its
    /// DER SPKI (`302a300506032b6570032100 || pk`). SPEC §2.4.
    pub fn of_ed25519(pk: &[u8; 32]) -> Self {
        const PREFIX: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let mut h = Sha256::new();
        h.update(PREFIX);
        h.update(pk);
        Self(h.finalize().into())
    }

    /// Lowercase hex, for logs and files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A client as a certificate describes it. SPEC §6.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The replay and identity key.
    pub key: IdentityKey,
    /// Names policy rules match: `cn:…`, `email:…`, `dns:…`, `uri:…`.
    pub names: Vec<String>,
}

impl ClientIdentity {
    /// The first name (for logs), or the key in hex when there is none.
    pub fn display_name(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| format!("key:{}", self.key.to_hex()))
    }
}

/// A certificate parsed for its key and names, not yet validated.
#[derive(Debug, Clone)]
pub struct ParsedClientCert {
    /// Identity and names.
    pub identity: ClientIdentity,
    /// The signing key.
    pub public_key: ClientPublicKey,
    /// notBefore, ms.
    pub not_before_ms: UnixMillis,
    /// notAfter, ms.
    pub not_after_ms: UnixMillis,
}

const OID_ED25519: &str = "1.3.101.112";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_PRIME256V1: &str = "1.2.840.10045.3.1.7";

/// The client key of a DER SubjectPublicKeyInfo, under the rules of SPEC
/// §2.2: Ed25519 whose point is not of small order, or P-256 as an
/// uncompressed SEC 1 point on the curve. Anything else is
/// `UnsupportedKey`. The CA tooling calls it before certifying a key.
pub fn parse_client_spki(spki_der: &[u8]) -> Result<ClientPublicKey, CertificateError> {
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| CertificateError::UnsupportedKey)?;
    if !rest.is_empty() {
        return Err(CertificateError::UnsupportedKey);
    }
    client_key_of_spki(&spki)
}

fn client_key_of_spki(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<ClientPublicKey, CertificateError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let key_bytes: &[u8] = &spki.subject_public_key.data;
    if alg == OID_ED25519 {
        // RFC 8410 §3: parameters absent, so that the key has one SPKI.
        if spki.algorithm.parameters.is_some() {
            return Err(CertificateError::UnsupportedKey);
        }
        let raw: &[u8; 32] = key_bytes
            .try_into()
            .map_err(|_| CertificateError::UnsupportedKey)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
            .map_err(|_| CertificateError::UnsupportedKey)?;
        // SPEC §2.2: a small-order key verifies no signature under §4.4;
        // refusing it here names the real fault.
        if key.is_weak() {
            return Err(CertificateError::UnsupportedKey);
        }
        Ok(ClientPublicKey::Ed25519(key))
    } else if alg == OID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        if curve.as_deref() != Some(OID_PRIME256V1) {
            return Err(CertificateError::UnsupportedKey);
        }
        // SPEC §2.2, §2.4: only the uncompressed form (0x04 || x || y), so
        // that one key has one SPKI and therefore one IdentityKey.
        if key_bytes.len() != 65 || key_bytes[0] != 0x04 {
            return Err(CertificateError::UnsupportedKey);
        }
        Ok(ClientPublicKey::P256(
            crate::sign::P256PublicKey::from_sec1_bytes(key_bytes)
                .ok_or(CertificateError::UnsupportedKey)?,
        ))
    } else {
        Err(CertificateError::UnsupportedKey)
    }
}

/// Reads the key, identity names and validity period. SPEC §2.2, §6.3.
pub fn parse_client_cert(der: &[u8]) -> Result<ParsedClientCert, CertificateError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| CertificateError::BadDer)?;
    if !rest.is_empty() {
        return Err(CertificateError::BadDer);
    }
    let spki = cert.public_key();
    let public_key = client_key_of_spki(spki)?;

    let mut names = Vec::new();
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(format!("cn:{s}"));
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::RFC822Name(s) => names.push(format!("email:{s}")),
                GeneralName::DNSName(s) => names.push(format!("dns:{s}")),
                GeneralName::URI(s) => names.push(format!("uri:{s}")),
                _ => {}
            }
        }
    }
    let validity = cert.validity();
    Ok(ParsedClientCert {
        identity: ClientIdentity {
            key: IdentityKey::from_spki_der(spki.raw),
            names,
        },
        public_key,
        not_before_ms: secs_to_ms(validity.not_before.timestamp()),
        not_after_ms: secs_to_ms(validity.not_after.timestamp()),
    })
}

fn secs_to_ms(s: i64) -> UnixMillis {
    u64::try_from(s).unwrap_or(0).saturating_mul(1000)
}

/// What to do when no configured CRL covers a certificate. SPEC §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownRevocation {
    /// Accept (a CA without a configured CRL is not checked). Default.
    #[default]
    Allow,
    /// Refuse.
    Deny,
}

/// What to do with a CRL past its nextUpdate. SPEC §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiredCrl {
    /// Refuse every certificate the CRL covers (fail closed). Default.
    #[default]
    Refuse,
    /// Use the CRL anyway.
    Ignore,
}

/// Trust configuration, all DER. SPEC §6.1.
#[derive(Debug, Clone, Default)]
pub struct TrustConfig {
    /// Root certificates.
    pub anchors: Vec<Vec<u8>>,
    /// Intermediate CA certificates (never taken from a datagram).
    pub intermediates: Vec<Vec<u8>>,
    /// Certificate revocation lists.
    pub crls: Vec<Vec<u8>>,
    /// Policy for certificates no CRL covers.
    pub unknown_revocation: UnknownRevocation,
    /// Policy for CRLs past nextUpdate.
    pub expired_crl: ExpiredCrl,
}

/// Why a trust configuration cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No trust anchor was given.
    #[error("no trust anchor configured")]
    NoAnchors,
    /// A trust anchor is not a valid certificate.
    #[error("trust anchor #{index} is not a valid X.509 certificate: {reason}")]
    BadAnchor {
        /// Position in the configuration.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// An intermediate is not a valid certificate.
    #[error("intermediate #{index} is not a valid X.509 certificate")]
    BadIntermediate {
        /// Position in the configuration.
        index: usize,
    },
    /// A CRL is not a valid CRL.
    #[error("CRL #{index} is not a valid CRL: {reason}")]
    BadCrl {
        /// Position in the configuration.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// A CRL's issuer is none of the configured CAs.
    #[error(
        "CRL #{index} was issued by a CA that is not configured (neither anchor nor intermediate)"
    )]
    CrlFromUnknownCa {
        /// Position in the configuration.
        index: usize,
    },
}

/// Loaded trust anchors, intermediates and CRLs. SPEC §6.1.
#[derive(Debug)]
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    cache_horizon_ms: Option<UnixMillis>,
    unknown_revocation: UnknownRevocation,
    expired_crl: ExpiredCrl,
}

impl TrustStore {
    /// Parses and checks a configuration.
    pub fn new(config: &TrustConfig) -> Result<Self, TrustError> {
        if config.anchors.is_empty() {
            return Err(TrustError::NoAnchors);
        }
        let mut anchors = Vec::new();
        let mut ca_subjects: Vec<Vec<u8>> = Vec::new();
        // SPEC §6.2: a cached validation must not outlive any CA certificate.
        let mut earliest: Option<UnixMillis> = None;
        let mut note =
            |ms: UnixMillis| earliest = Some(earliest.map_or(ms, |e: UnixMillis| e.min(ms)));
        for (index, der) in config.anchors.iter().enumerate() {
            if let Ok((_, c)) = X509Certificate::from_der(der) {
                note(secs_to_ms(c.validity().not_after.timestamp()));
            }
            let cert_der = CertificateDer::from(der.as_slice());
            let ta =
                webpki::anchor_from_trusted_cert(&cert_der).map_err(|e| TrustError::BadAnchor {
                    index,
                    reason: format!("{e:?}"),
                })?;
            ca_subjects.push(ta.subject.as_ref().to_vec());
            anchors.push(ta.to_owned());
        }
        let mut intermediates = Vec::new();
        for (index, der) in config.intermediates.iter().enumerate() {
            let (_, c) = X509Certificate::from_der(der)
                .map_err(|_| TrustError::BadIntermediate { index })?;
            // webpki compares the subject's inner bytes (without the outer
            // SEQUENCE header), as in TrustAnchor::subject.
            ca_subjects.push(strip_sequence(c.subject().as_raw()).to_vec());
            note(secs_to_ms(c.validity().not_after.timestamp()));
            intermediates.push(CertificateDer::from(der.clone()));
        }
        let mut crls = Vec::new();
        for (index, der) in config.crls.iter().enumerate() {
            let owned = OwnedCertRevocationList::from_der(der).map_err(|e| TrustError::BadCrl {
                index,
                reason: format!("{e:?}"),
            })?;
            let crl = CertRevocationList::from(owned);
            if !ca_subjects.iter().any(|s| s.as_slice() == crl.issuer()) {
                return Err(TrustError::CrlFromUnknownCa { index });
            }
            let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(
                der,
            )
            .map_err(|e| TrustError::BadCrl {
                index,
                reason: e.to_string(),
            })?;
            if let Some(nu) = parsed.next_update() {
                note(secs_to_ms(nu.timestamp()));
            }
            crls.push(crl);
        }
        Ok(Self {
            anchors,
            intermediates,
            crls,
            cache_horizon_ms: earliest,
            unknown_revocation: config.unknown_revocation,
            expired_crl: config.expired_crl,
        })
    }

    /// The earliest of the CA certificates' notAfter and the CRLs'
    /// nextUpdate (ms): no cached validation lives past it. SPEC §6.2.
    pub fn cache_horizon(&self) -> Option<UnixMillis> {
        self.cache_horizon_ms
    }

    /// Validates an end-entity certificate for client authentication at
    /// `now`. SPEC §6.1.
    pub fn validate(&self, der: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        let cert_der = CertificateDer::from(der);
        let ee = EndEntityCert::try_from(&cert_der).map_err(|_| CertificateError::BadDer)?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = if crl_refs.is_empty() {
            None
        } else {
            RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
                b.with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(match self.unknown_revocation {
                        UnknownRevocation::Allow => UnknownStatusPolicy::Allow,
                        UnknownRevocation::Deny => UnknownStatusPolicy::Deny,
                    })
                    .with_expiration_policy(match self.expired_crl {
                        ExpiredCrl::Refuse => ExpirationPolicy::Enforce,
                        ExpiredCrl::Ignore => ExpirationPolicy::Ignore,
                    })
                    .build()
            })
        };
        if revocation.is_none() && self.unknown_revocation == UnknownRevocation::Deny {
            return Err(CertificateError::Other);
        }
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &self.intermediates,
            UnixTime::since_unix_epoch(Duration::from_millis(now)),
            KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map(|_| ())
        .map_err(map_webpki_error)
    }
}

fn strip_sequence(der: &[u8]) -> &[u8] {
    // DER SEQUENCE: tag 0x30, then a short or long length.
    match der {
        [0x30, len, rest @ ..] if *len < 0x80 => rest,
        [0x30, 0x81, _, rest @ ..] => rest,
        [0x30, 0x82, _, _, rest @ ..] => rest,
        _ => der,
    }
}

fn map_webpki_error(e: webpki::Error) -> CertificateError {
    use webpki::Error as E;
    match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadDer,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotYetValid,
        E::CertRevoked => CertificateError::Revoked,
        E::RequiredEkuNotFoundContext(_) => CertificateError::WrongUsage,
        E::CrlExpired { .. } => CertificateError::CrlExpired,
        #[allow(deprecated)]
        E::RequiredEkuNotFound => CertificateError::WrongUsage,
        _ => CertificateError::Other,
    }
}

/// A certificate that passed validation, with what the verifier needs.
#[derive(Debug, Clone)]
pub struct ValidatedCert {
    /// Identity and names.
    pub identity: ClientIdentity,
    /// The signing key.
    pub public_key: ClientPublicKey,
    not_before_ms: UnixMillis,
    valid_until_ms: UnixMillis,
}

/// Default number of cached validated certificates. SPEC §6.2.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// Validated certificates by `SHA-256(cert DER)`, so that a chain and its CRL
/// signatures are checked once, not per knock. SPEC §6.2. Cleared whenever
/// the trust store is replaced; bounded in size.
#[derive(Debug)]
pub struct CertCache {
    entries: HashMap<[u8; 32], Arc<ValidatedCert>>,
    capacity: usize,
}

impl Default for CertCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CACHE_CAPACITY)
    }
}

impl CertCache {
    /// An empty cache holding at most `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The cache key of a certificate.
    pub fn key(der: &[u8]) -> [u8; 32] {
        Sha256::digest(der).into()
    }

    /// A still-valid entry.
    pub fn get(&self, key: &[u8; 32], now: UnixMillis) -> Option<Arc<ValidatedCert>> {
        self.entries
            .get(key)
            .filter(|v| now >= v.not_before_ms && now < v.valid_until_ms)
            .cloned()
    }

    /// The entry for a certificate that `store` validated, not yet
    /// recorded: it is recorded with [`CertCache::insert`] once the
    /// signature made with its key verified (SPEC §6.2).
    pub fn entry(parsed: ParsedClientCert, store: &TrustStore) -> ValidatedCert {
        let valid_until_ms = store
            .cache_horizon()
            .map_or(parsed.not_after_ms, |nu| nu.min(parsed.not_after_ms));
        ValidatedCert {
            identity: parsed.identity,
            public_key: parsed.public_key,
            not_before_ms: parsed.not_before_ms,
            valid_until_ms,
        }
    }

    /// Records a validated certificate under `key` (its [`CertCache::key`]).
    pub fn insert(&mut self, key: [u8; 32], entry: Arc<ValidatedCert>) {
        if self.entries.len() >= self.capacity {
            // Evict one arbitrary entry: only certificates whose key signed
            // a verified body are inserted, so churn needs many clients' keys.
            if let Some(k) = self.entries.keys().next().copied() {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, entry);
    }

    /// Drops every entry (on trust reload).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_SPKI: &str = "302a300506032b6570032100";
    const P256_SPKI_COMPRESSED: &str = "3039301306072a8648ce3d020106082a8648ce3d030107032200";
    const P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

    fn spki(prefix: &str, key: &[u8]) -> Vec<u8> {
        let mut v = hex::decode(prefix).expect("hex");
        v.extend_from_slice(key);
        v
    }

    fn p256_point() -> Vec<u8> {
        let pkcs8 = crate::testkit::client_pkcs8(crate::testkit::KeyAlg::P256, "cert unit");
        use p256::pkcs8::DecodePrivateKey as _;
        let sk = p256::ecdsa::SigningKey::from_pkcs8_der(&pkcs8).expect("key");
        sk.verifying_key().to_sec1_point(false).as_bytes().to_vec()
    }

    #[test]
    fn accepts_ed25519_and_uncompressed_p256_keys() {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert!(parse_client_spki(&spki(ED25519_SPKI, ed.as_bytes())).is_ok());
        assert!(parse_client_spki(&spki(P256_SPKI, &p256_point())).is_ok());
    }

    #[test]
    fn rejects_small_order_ed25519_keys() {
        // The neutral point and a point of order 8.
        let mut neutral = [0u8; 32];
        neutral[0] = 1;
        let order8 =
            hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
                .expect("hex");
        for key in [neutral.to_vec(), order8] {
            assert_eq!(
                parse_client_spki(&spki(ED25519_SPKI, &key)).err(),
                Some(CertificateError::UnsupportedKey)
            );
        }
    }

    #[test]
    fn rejects_compressed_p256_keys() {
        let point = p256_point();
        let mut compressed = vec![0x02 | (point[64] & 1)];
        compressed.extend_from_slice(&point[1..33]);
        assert_eq!(
            parse_client_spki(&spki(P256_SPKI_COMPRESSED, &compressed)).err(),
            Some(CertificateError::UnsupportedKey)
        );
    }

    /// DER TLV with a definite length.
    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match value.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(value);
        out
    }

    /// Header and value lengths of the DER element at the start of `der`.
    fn header(der: &[u8]) -> (usize, usize) {
        match der[1] {
            n if n < 0x80 => (2, n as usize),
            0x81 => (3, der[2] as usize),
            _ => (4, (der[2] as usize) << 8 | der[3] as usize),
        }
    }

    /// The elements inside the DER element `der`, each as its full TLV.
    fn children(der: &[u8]) -> Vec<Vec<u8>> {
        let (hdr, len) = header(der);
        let mut out = Vec::new();
        let mut rest = &der[hdr..hdr + len];
        while !rest.is_empty() {
            let (h, l) = header(rest);
            out.push(rest[..h + l].to_vec());
            rest = &rest[h + l..];
        }
        out
    }

    #[test]
    fn trust_refuses_a_crl_without_next_update() {
        // SPEC §6.1: a CRL without nextUpdate is a configuration error, never
        // a CRL that is silently skipped or never expires.
        let ca = crate::testkit::TestCa::new("spa test root").expect("ca");
        let crl = ca
            .crl(&[], crate::testkit::T_2026, crate::testkit::T_2036)
            .expect("crl");
        let [tbs, alg, sig] = &children(&crl)[..] else {
            panic!("CertificateList has three parts")
        };
        // TBSCertList: version, signature, issuer, thisUpdate, nextUpdate, ...
        let mut fields = children(tbs);
        let rebuilt = tlv(
            0x30,
            &[tlv(0x30, &fields.concat()), alg.clone(), sig.clone()].concat(),
        );
        assert_eq!(rebuilt, crl, "the DER rebuild is exact");
        assert_eq!(fields[4][0], 0x17, "nextUpdate is a UTCTime");
        fields.remove(4);
        let tbs = tlv(0x30, &fields.concat());
        let without = tlv(0x30, &[tbs, alg.clone(), sig.clone()].concat());
        let config = |crl: Vec<u8>| TrustConfig {
            anchors: vec![ca.cert_der().to_vec()],
            crls: vec![crl],
            ..TrustConfig::default()
        };
        assert!(TrustStore::new(&config(crl.clone())).is_ok());
        assert!(matches!(
            TrustStore::new(&config(without)),
            Err(TrustError::BadCrl { index: 0, .. })
        ));
    }

    #[test]
    fn rejects_ed25519_keys_with_algorithm_parameters() {
        // AlgorithmIdentifier { id-Ed25519, NULL }: a second SPKI for one key.
        let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let der = spki("302c300706032b65700500032100", ed.as_bytes());
        assert_eq!(
            parse_client_spki(&der).err(),
            Some(CertificateError::UnsupportedKey)
        );
    }
}
