//! `spa-pki`: the CA tooling (the paper's PKI server), a small certificate
//! authority
//! kept in one directory, issuing client certificates (and green's TLS
//! server certificate), revoking them and publishing CRLs that both spa's
//! verifier (rustls-webpki) and `openssl verify` accept.
//!
//! The directory holds:
//!
//! | file | contents |
//! |---|---|
//! | `ca.key` | the CA's private key, PKCS#8 PEM, mode 0600 |
//! | `ca.pem` | the self-signed CA certificate |
//! | `serial` | the next certificate serial number (decimal) |
//! | `crlnumber` | the next CRL number (decimal) |
//! | `index.txt` | one line per issued certificate (see [`IndexEntry`]) |
//! | `certs/<serial>.pem` | a copy of every issued certificate |
//! | `.lock` | `flock`ed while the directory is changed |
//!
//! Every function takes `now`: only the command line reads the clock.
//! The CA decides the identity: a CSR gives only its public key (after its
//! self-signature is checked), never its subject or extensions.
//!
//! The `pki` command's arguments ([`cli`]) and what each prints ([`cmd`])
//! live here too; `spa-server pki` only dispatches to them.
//!
//! May depend on: `proto-spec` (certificate rules), `spa-keys` (key and
//! trust files), `rcgen`/`x509-parser` (certificates, CSRs, CRLs), `time`,
//! `clap`/`anyhow` (the command). Never on the daemons: a CA host runs no
//! daemon, and red never links this crate.

use std::fs::{DirBuilder, File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use spa_keys::{
    KeyFileError, PrivateKey, decode_private_key, ed25519_key_to_pem, pem_encode,
    read_certificates, read_secret_file, write_public_file, write_secret_file,
};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
use zeroize::{Zeroize as _, Zeroizing};

pub mod cli;
pub mod cmd;
mod error;
mod index;

pub use error::PkiError;
use index::INDEX_HEADER;
pub use index::{IndexEntry, RevocationReason, Usage};
pub use spa_keys::trust::{
    TrustFileError, TrustFiles, describe_certificate_error, load_trust, validate_client_certificate,
};

/// The CA's private key file in the directory.
pub const CA_KEY: &str = "ca.key";
/// The CA certificate file in the directory.
pub const CA_CERT: &str = "ca.pem";
const SERIAL: &str = "serial";
const CRL_NUMBER: &str = "crlnumber";
const INDEX: &str = "index.txt";
const CERTS: &str = "certs";
const LOCK: &str = ".lock";
/// notBefore is set this far in the past, for verifiers whose clock is
/// slightly behind the CA's.
const BACKDATE: Duration = Duration::minutes(5);

fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |err| PkiError::Io { path, op, err }
}

fn build(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |e| PkiError::Build {
        what,
        reason: e.to_string(),
    }
}

/// RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The CA's key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaAlgorithm {
    /// Ed25519 (default): small certificates and CRLs.
    #[default]
    Ed25519,
    /// ECDSA P-256 with SHA-256.
    P256,
}

/// What `init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The CA's common name.
    pub name: String,
    /// Key algorithm.
    pub algorithm: CaAlgorithm,
    /// Validity, days from `now`.
    pub days: u32,
}

/// Where the certificate's key comes from.
#[derive(Debug, Clone)]
pub enum SubjectKey {
    /// A certificate signing request (DER) from `path`; its self-signature
    /// is verified.
    Csr {
        /// For messages.
        path: PathBuf,
        /// DER.
        der: Vec<u8>,
    },
    /// A SubjectPublicKeyInfo (DER) from `path`.
    PublicKey {
        /// For messages.
        path: PathBuf,
        /// DER.
        der: Vec<u8>,
    },
}

/// A certificate to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The subject's key.
    pub key: SubjectKey,
    /// Subject common name (`cn:` in policies).
    pub name: String,
    /// rfc822Name SANs (`email:`).
    pub emails: Vec<String>,
    /// dNSName SANs (`dns:`).
    pub dns: Vec<String>,
    /// iPAddress SANs (server certificates).
    pub ips: Vec<IpAddr>,
    /// Validity, days from `now` (clamped to the CA's notAfter).
    pub days: u32,
    /// Client or server.
    pub usage: Usage,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Serial number.
    pub serial: u64,
    /// DER.
    pub der: Vec<u8>,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// True when notAfter was cut to the CA's notAfter.
    pub clamped: bool,
}

/// A signed CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER.
    pub der: Vec<u8>,
    /// Its CRL number.
    pub number: u64,
    /// How many certificates it lists.
    pub revoked: usize,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// An open CA directory.
pub struct Ca {
    dir: PathBuf,
    key: KeyPair,
    cert_der: Vec<u8>,
    subject_raw: Vec<u8>,
    ski: Option<Vec<u8>>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl core::fmt::Debug for Ca {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

fn days(n: u32) -> Result<Duration, PkiError> {
    if n == 0 || n > 36_500 {
        return Err(PkiError::BadValue {
            what: "number of days",
            value: n.to_string(),
            reason: "must be between 1 and 36500",
        });
    }
    Ok(Duration::days(i64::from(n)))
}

fn check_text(what: &'static str, value: &str, ascii: bool) -> Result<(), PkiError> {
    let bad = |reason| PkiError::BadValue {
        what,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || value.len() > 255 {
        return Err(bad("must be 1 to 255 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    if ascii && !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be printable ASCII without spaces"));
    }
    Ok(())
}

fn x509_time(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn read_counter(path: &Path) -> Result<u64, PkiError> {
    let text = std::fs::read_to_string(path).map_err(io(path, "read"))?;
    text.trim().parse().map_err(|_| PkiError::CorruptFile {
        path: path.to_path_buf(),
        line: 1,
        reason: format!("expected a decimal number, found {:?}", text.trim()),
    })
}

fn write_counter(path: &Path, n: u64) -> Result<(), PkiError> {
    Ok(write_public_file(path, format!("{n}\n").as_bytes())?)
}

/// Makes a new CA in `dir` (created 0700 if absent, its missing parents
/// with the usual mode): key, self-signed certificate (basicConstraints cA,
/// pathLen 0; keyCertSign, cRLSign), serial and CRL counters, empty index.
pub fn init(dir: &Path, opts: &InitOptions, now: OffsetDateTime) -> Result<Ca, PkiError> {
    check_text("CA name", &opts.name, false)?;
    let validity = days(opts.days)?;
    // Missing parents get the usual mode (umask), only the CA's own
    // directory 0700: `init --dir /etc/spa/ca` must not close /etc/spa,
    // where the daemons' user reads the public copies (`--cert-out`, CRLs).
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent, "create directory"))?;
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join(CERTS))
        .map_err(io(dir, "create directory"))?;
    for f in [CA_KEY, CA_CERT, INDEX] {
        if dir.join(f).exists() {
            return Err(PkiError::AlreadyInitialised {
                dir: dir.to_path_buf(),
                file: dir.join(f),
            });
        }
    }
    let pem = match opts.algorithm {
        CaAlgorithm::Ed25519 => ed25519_key_to_pem(&spa_keys::random_32()?)?,
        CaAlgorithm::P256 => Zeroizing::new(
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(build("generate the CA key"))?
                .serialize_pem(),
        ),
    };
    let key = KeyPair::from_pem(&pem).map_err(build("load the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, opts.name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut serial = *spa_keys::random_32()?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial[..16]));
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.key_identifier_method = KeyIdMethod::Sha256;
    let cert = params
        .self_signed(&key)
        .map_err(build("sign the CA certificate"))?;
    write_secret_file(&dir.join(CA_KEY), pem.as_bytes(), false)?;
    write_public_file(&dir.join(CA_CERT), cert.pem().as_bytes())?;
    write_counter(&dir.join(SERIAL), 1)?;
    write_counter(&dir.join(CRL_NUMBER), 1)?;
    write_public_file(&dir.join(INDEX), INDEX_HEADER.as_bytes())?;
    Ca::open(dir)
}

impl Ca {
    /// Opens the CA in `dir`, checking that its key matches its
    /// certificate.
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if !cert_path.exists() {
            return Err(PkiError::NotInitialised {
                dir: dir.to_path_buf(),
            });
        }
        let cert_der = read_certificates(&cert_path)?.swap_remove(0);
        let key_bytes = read_secret_file(&key_path)?;
        let key = match decode_private_key(&key_path, &key_bytes)? {
            PrivateKey::Ed25519(seed) => KeyPair::from_pem(&ed25519_key_to_pem(&seed)?),
            PrivateKey::P256(der) => KeyPair::try_from(der.as_slice()),
            PrivateKey::X25519(_) => {
                return Err(PkiError::UnsupportedCaKey {
                    path: key_path,
                    found: "an X25519 key".to_owned(),
                });
            }
        }
        .map_err(build("load the CA key"))?;
        let (_, x) =
            X509Certificate::from_der(&cert_der).map_err(|e| KeyFileError::MalformedDer {
                path: cert_path.clone(),
                what: "certificate".to_owned(),
                reason: e.to_string(),
            })?;
        if x.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::CaKeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let ski = x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            });
        Ok(Self {
            dir: dir.to_path_buf(),
            subject_raw: x.subject().as_raw().to_vec(),
            ski,
            not_before: x509_time(x.validity().not_before),
            not_after: x509_time(x.validity().not_after),
            key,
            cert_der,
        })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<File, PkiError> {
        let path = self.dir.join(LOCK);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path, "open"))?;
        f.lock().map_err(io(&path, "lock"))?;
        Ok(f)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)
            .map_err(build("read the CA certificate"))
    }

    fn check_valid(&self, now: OffsetDateTime) -> Result<(), PkiError> {
        let cert = self.dir.join(CA_CERT);
        if now >= self.not_after {
            return Err(PkiError::CaExpired {
                cert,
                not_after: rfc3339(self.not_after),
            });
        }
        if now < self.not_before {
            return Err(PkiError::CaNotYetValid {
                cert,
                not_before: rfc3339(self.not_before),
            });
        }
        Ok(())
    }

    /// The index, oldest first.
    pub fn index(&self) -> Result<Vec<IndexEntry>, PkiError> {
        let path = self.dir.join(INDEX);
        let text = std::fs::read_to_string(&path).map_err(io(&path, "read"))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|(i, l)| {
                IndexEntry::parse(l).map_err(|reason| PkiError::CorruptFile {
                    path: path.clone(),
                    line: i + 1,
                    reason,
                })
            })
            .collect()
    }

    fn write_index(&self, entries: &[IndexEntry]) -> Result<(), PkiError> {
        let mut text = INDEX_HEADER.to_owned();
        for e in entries {
            text.push_str(&e.to_line());
        }
        Ok(write_public_file(&self.dir.join(INDEX), text.as_bytes())?)
    }

    /// Issues a certificate. Refused when the CA is expired or not yet
    /// valid; notAfter is cut to the CA's.
    pub fn issue(&self, req: &IssueRequest, now: OffsetDateTime) -> Result<Issued, PkiError> {
        self.check_valid(now)?;
        check_text("name", &req.name, false)?;
        for e in &req.emails {
            check_text("e-mail address", e, true)?;
            if !e.contains('@') {
                return Err(PkiError::BadValue {
                    what: "e-mail address",
                    value: e.clone(),
                    reason: "has no '@'",
                });
            }
        }
        for d in &req.dns {
            check_text("DNS name", d, true)?;
        }
        if req.usage == Usage::Server && req.dns.is_empty() && req.ips.is_empty() {
            return Err(PkiError::BadValue {
                what: "server certificate",
                value: req.name.clone(),
                reason: "needs at least one DNS name or IP address",
            });
        }
        let public_key = subject_public_key(&req.key, req.usage)?;
        let mut not_after = now + days(req.days)?;
        let clamped = not_after > self.not_after;
        if clamped {
            not_after = self.not_after;
        }

        let _lock = self.lock()?;
        let serial_path = self.dir.join(SERIAL);
        let serial = read_counter(&serial_path)?;
        let mut index = self.index()?;
        if index.iter().any(|e| e.serial == serial) {
            return Err(PkiError::CorruptFile {
                path: serial_path,
                line: 1,
                reason: format!("serial {serial} is already in the index"),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, req.name.as_str());
        let ia5 = |what: &'static str, s: &String| {
            s.clone().try_into().map_err(|_| PkiError::BadValue {
                what,
                value: s.clone(),
                reason: "not IA5 (ASCII)",
            })
        };
        for e in &req.emails {
            params
                .subject_alt_names
                .push(SanType::Rfc822Name(ia5("e-mail address", e)?));
        }
        for d in &req.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(ia5("DNS name", d)?));
        }
        for ip in &req.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        params.not_before = (now - BACKDATE).max(self.not_before);
        params.not_after = not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match req.usage {
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&public_key, &self.issuer()?)
            .map_err(build("sign the certificate"))?;
        // The serial is consumed first, so a crash never reuses it.
        write_counter(&serial_path, serial.saturating_add(1))?;
        write_public_file(
            &self.dir.join(CERTS).join(format!("{serial}.pem")),
            cert.pem().as_bytes(),
        )?;
        index.push(IndexEntry {
            serial,
            not_after,
            revoked: None,
            usage: req.usage,
            name: req.name.clone(),
        });
        self.write_index(&index)?;
        Ok(Issued {
            serial,
            der: cert.der().to_vec(),
            not_after,
            clamped,
        })
    }

    /// The serial of a certificate this CA issued (checked by issuer name
    /// and signature).
    pub fn serial_of(&self, path: &Path, cert_der: &[u8]) -> Result<u64, PkiError> {
        let (_, x) =
            X509Certificate::from_der(cert_der).map_err(|e| KeyFileError::MalformedDer {
                path: path.to_path_buf(),
                what: "certificate".to_owned(),
                reason: e.to_string(),
            })?;
        let not_here = || PkiError::NotIssuedHere {
            path: path.to_path_buf(),
        };
        if x.issuer().as_raw() != self.subject_raw.as_slice() {
            return Err(not_here());
        }
        // Same name is not enough: another CA may share it.
        let (_, ca) = X509Certificate::from_der(&self.cert_der).map_err(|_| not_here())?;
        x.verify_signature(Some(ca.public_key()))
            .map_err(|_| not_here())?;
        let raw = x.raw_serial();
        let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
        let bytes = &raw[start..];
        if bytes.len() > 8 {
            return Err(not_here());
        }
        Ok(bytes.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)))
    }

    /// Marks a certificate revoked in the index (the next CRL lists it).
    pub fn revoke(
        &self,
        serial: u64,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<IndexEntry, PkiError> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let entry = index
            .iter_mut()
            .find(|e| e.serial == serial)
            .ok_or_else(|| PkiError::UnknownSerial {
                serial,
                index: self.dir.join(INDEX),
            })?;
        if let Some((at, _)) = entry.revoked {
            return Err(PkiError::AlreadyRevoked {
                serial,
                at: rfc3339(at),
            });
        }
        entry.revoked = Some((now, reason));
        let out = entry.clone();
        self.write_index(&index)?;
        Ok(out)
    }

    /// Signs a CRL of every revoked certificate: thisUpdate `now`,
    /// nextUpdate `now + days`, the next CRL number.
    pub fn crl(&self, days_valid: u32, now: OffsetDateTime) -> Result<Crl, PkiError> {
        let validity = days(days_valid)?;
        let _lock = self.lock()?;
        let number_path = self.dir.join(CRL_NUMBER);
        let number = read_counter(&number_path)?;
        let revoked_certs: Vec<RevokedCertParams> = self
            .index()?
            .iter()
            .filter_map(|e| {
                e.revoked.map(|(at, reason)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&e.serial.to_be_bytes()),
                    revocation_time: at,
                    reason_code: reason.to_rcgen(),
                    invalidity_date: None,
                })
            })
            .collect();
        let next_update = now + validity;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: match &self.ski {
                Some(ski) => KeyIdMethod::PreSpecified(ski.clone()),
                None => KeyIdMethod::Sha256,
            },
        };
        let crl = params
            .signed_by(&self.issuer()?)
            .map_err(build("sign the CRL"))?;
        write_counter(&number_path, number.saturating_add(1))?;
        Ok(Crl {
            der: crl.der().to_vec(),
            number,
            revoked: params.revoked_certs.len(),
            next_update,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }
}

/// Checks the subject key: a CSR's self-signature; for clients, the key
/// algorithm (Ed25519 or P-256, SPEC §2.2).
fn subject_public_key(key: &SubjectKey, usage: Usage) -> Result<SubjectPublicKeyInfo, PkiError> {
    let (path, spki_der) = match key {
        SubjectKey::Csr { path, der } => {
            let bad = |reason: String| PkiError::BadCsr {
                path: path.clone(),
                reason,
            };
            let (rest, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(der)
                    .map_err(|e| bad(format!("not a certificate request: {e}")))?;
            if !rest.is_empty() {
                return Err(bad("bytes after the certificate request".to_owned()));
            }
            csr.verify_signature().map_err(|e| {
                bad(format!(
                    "the certificate request's signature does not verify ({e})"
                ))
            })?;
            (
                path,
                csr.certification_request_info.subject_pki.raw.to_vec(),
            )
        }
        SubjectKey::PublicKey { path, der } => (path, der.clone()),
    };
    let unsupported = |reason: String| PkiError::UnsupportedSubjectKey {
        path: path.clone(),
        reason,
    };
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|e| unsupported(format!("not a public key: {e}")))?;
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let client_ok = alg == "1.3.101.112"
        || (alg == "1.2.840.10045.2.1" && curve.as_deref() == Some("1.2.840.10045.3.1.7"));
    if usage == Usage::Client && !client_ok {
        return Err(unsupported(format!(
            "a client key must be Ed25519 or P-256 (SPEC §2.2); this key's algorithm is {alg}{}",
            curve.map(|c| format!(" on curve {c}")).unwrap_or_default()
        )));
    }
    // SPEC §2.2: the key itself must be one a receiver accepts (an
    // uncompressed P-256 point, an Ed25519 point not of small order), or
    // every knock signed with it would be refused.
    if usage == Usage::Client && proto_spec::cert::parse_client_spki(&spki_der).is_err() {
        return Err(unsupported(
            "a client key must be an Ed25519 point not of small order or an uncompressed \
             P-256 point on the curve (SPEC §2.2)"
                .to_owned(),
        ));
    }
    SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|e| unsupported(format!("unsupported public key: {e}")))
}
