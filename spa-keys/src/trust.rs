//! Loading trust files as the verifiers do, and checking a certificate
//! against them: what both daemons load and reload, and what `pki verify`
//! checks.

use std::path::{Path, PathBuf};

use crate::{KeyFileError, read_certificates, read_crls};
use proto_spec::CertificateError;
use proto_spec::cert::{ClientIdentity, TrustConfig, TrustError, TrustStore, parse_client_cert};

use crate::KeyFileError as FileError;

/// Why trust files could not be loaded. Each message is one line naming the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// A certificate or CRL file (see [`KeyFileError`]).
    #[error(transparent)]
    File(#[from] FileError),
    /// No CA certificate was given to check against.
    #[error("no CA certificate given")]
    NoTrustAnchor,
    /// A trust file the verifier refuses (e.g. a CRL from another CA).
    #[error("{}: {reason}", path.display())]
    Trust {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl TrustFileError {
    /// The file the error is about, if it names one (for `status` after a
    /// failed reload).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::File(e) => e.path(),
            Self::Trust { path, .. } => Some(path),
            Self::NoTrustAnchor => None,
        }
    }
}

/// Trust files, as the verifier's configuration names them.
#[derive(Debug, Clone, Default)]
pub struct TrustFiles {
    /// CA certificates (trust anchors).
    pub cas: Vec<PathBuf>,
    /// Intermediate CA certificates.
    pub intermediates: Vec<PathBuf>,
    /// CRLs.
    pub crls: Vec<PathBuf>,
    /// Certificates no CRL covers (SPEC §6.1).
    pub unknown_revocation: proto_spec::cert::UnknownRevocation,
    /// CRLs past nextUpdate (SPEC §6.1).
    pub expired_crl: proto_spec::cert::ExpiredCrl,
}

/// Loads trust files into the verifier's [`TrustStore`], naming the file
/// of any object the store refuses (e.g. a CRL from an unknown CA).
pub fn load_trust(files: &TrustFiles) -> Result<TrustStore, TrustFileError> {
    fn load(
        paths: &[PathBuf],
        read: fn(&Path) -> Result<Vec<Vec<u8>>, KeyFileError>,
        out: &mut Vec<Vec<u8>>,
        src: &mut Vec<PathBuf>,
    ) -> Result<(), TrustFileError> {
        for p in paths {
            for der in read(p)? {
                out.push(der);
                src.push(p.clone());
            }
        }
        Ok(())
    }
    let mut config = TrustConfig {
        unknown_revocation: files.unknown_revocation,
        expired_crl: files.expired_crl,
        ..TrustConfig::default()
    };
    let (mut a, mut i, mut c) = (Vec::new(), Vec::new(), Vec::new());
    load(&files.cas, read_certificates, &mut config.anchors, &mut a)?;
    load(
        &files.intermediates,
        read_certificates,
        &mut config.intermediates,
        &mut i,
    )?;
    load(&files.crls, read_crls, &mut config.crls, &mut c)?;
    let at = |v: &[PathBuf], index: usize| v.get(index).cloned().unwrap_or_default();
    TrustStore::new(&config).map_err(|e| match e {
        TrustError::NoAnchors => TrustFileError::NoTrustAnchor,
        TrustError::BadAnchor { index, reason } => TrustFileError::Trust {
            path: at(&a, index),
            reason: format!("not usable as a CA certificate: {reason}"),
        },
        TrustError::BadIntermediate { index } => TrustFileError::Trust {
            path: at(&i, index),
            reason: "not a valid intermediate CA certificate".to_owned(),
        },
        TrustError::BadCrl { index, reason } => TrustFileError::Trust {
            path: at(&c, index),
            reason: format!("not a valid CRL: {reason}"),
        },
        TrustError::CrlFromUnknownCa { index } => TrustFileError::Trust {
            path: at(&c, index),
            reason: "the CRL was issued by a CA that is not configured (its issuer is none \
                     of the given CA certificates)"
                .to_owned(),
        },
        other => TrustFileError::Trust {
            path: files.cas.first().cloned().unwrap_or_default(),
            reason: other.to_string(),
        },
    })
}

/// Validates a client certificate as green and red do (SPEC §6.1) at
/// `now_ms`, returning its identity.
pub fn validate_client_certificate(
    trust: &TrustStore,
    cert_der: &[u8],
    now_ms: u64,
) -> Result<ClientIdentity, CertificateError> {
    let parsed = parse_client_cert(cert_der)?;
    trust.validate(cert_der, now_ms)?;
    Ok(parsed.identity)
}

/// A sentence for a certificate refusal.
pub fn describe_certificate_error(e: CertificateError) -> &'static str {
    match e {
        CertificateError::BadDer => "not a valid DER X.509 certificate",
        CertificateError::UnknownIssuer => "not issued by any of the given CAs",
        CertificateError::Expired => "expired (or a CA in its chain is)",
        CertificateError::NotYetValid => "not valid yet",
        CertificateError::Revoked => "certificate revoked",
        CertificateError::WrongUsage => "its extended key usage does not allow clientAuth",
        CertificateError::CrlExpired => "a CRL for it is past its nextUpdate (fail closed)",
        CertificateError::UnsupportedKey => "its key is neither Ed25519 nor P-256",
        _ => "refused by path validation (a CA certificate, a bad signature, a constraint)",
    }
}
