//! Public PEM or DER files: certificates, CRLs, public keys, certificate
//! requests. PEM framing and base64 are `rustls-pki-types`'; every object
//! is then parsed with `x509-parser`, so a broken file is refused when it
//! is loaded, with its name and the cause.

use std::path::Path;

use rustls_pki_types::pem::{self, SectionKind, SliceIter};
use x509_parser::prelude::FromDer;

use crate::error::KeyFileError;
use crate::file::read_public_file;

/// True when the bytes look like PEM (a `-----BEGIN ` line somewhere).
pub(crate) fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The labels of the `-----BEGIN <label>-----` lines, in order.
pub(crate) fn pem_labels(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let rest = line.strip_prefix(b"-----BEGIN ")?;
            let label = rest.strip_suffix(b"-----")?;
            Some(String::from_utf8_lossy(label).into_owned())
        })
        .collect()
}

fn pem_reason(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line (truncated file?)",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "bad BEGIN line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(60)])
        ),
        pem::Error::Base64Decode(e) => format!("bad base64 ({e})"),
        other => other.to_string(),
    }
}

/// What one object kind looks like in files.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) section: SectionKind,
    pub(crate) label: &'static str,
    /// For messages: "certificate", "CRL", …
    pub(crate) noun: &'static str,
}

pub(crate) const CERTIFICATE: Kind = Kind {
    section: SectionKind::Certificate,
    label: "CERTIFICATE",
    noun: "certificate",
};
pub(crate) const CRL: Kind = Kind {
    section: SectionKind::Crl,
    label: "X509 CRL",
    noun: "CRL",
};
pub(crate) const PUBLIC_KEY: Kind = Kind {
    section: SectionKind::PublicKey,
    label: "PUBLIC KEY",
    noun: "public key",
};
pub(crate) const CSR: Kind = Kind {
    section: SectionKind::Csr,
    label: "CERTIFICATE REQUEST",
    noun: "certificate request",
};

/// Every `kind` block of a PEM file, or the whole file as one DER object.
pub(crate) fn decode_blocks(
    path: &Path,
    bytes: &[u8],
    kind: Kind,
) -> Result<Vec<Vec<u8>>, KeyFileError> {
    if !looks_like_pem(bytes) {
        if bytes.first() != Some(&0x30) {
            return Err(KeyFileError::MalformedDer {
                path: path.to_path_buf(),
                what: kind.noun.to_owned(),
                reason: if bytes.is_empty() {
                    "the file is empty".to_owned()
                } else {
                    "neither PEM (no -----BEGIN line) nor DER (no SEQUENCE)".to_owned()
                },
            });
        }
        return Ok(vec![bytes.to_vec()]);
    }
    let mut out = Vec::new();
    for item in SliceIter::<(SectionKind, Vec<u8>)>::new(bytes) {
        let (section, der) = item.map_err(|e| KeyFileError::MalformedPem {
            path: path.to_path_buf(),
            reason: pem_reason(e),
        })?;
        if section == kind.section {
            out.push(der);
        }
    }
    if out.is_empty() {
        return Err(match pem_labels(bytes).into_iter().next() {
            Some(found) if found != kind.label => KeyFileError::WrongPemLabel {
                path: path.to_path_buf(),
                expected: kind.label,
                found,
            },
            _ => KeyFileError::Empty {
                path: path.to_path_buf(),
                what: kind.noun,
            },
        });
    }
    Ok(out)
}

fn block_name(kind: Kind, index: usize, count: usize) -> String {
    if count == 1 {
        kind.noun.to_owned()
    } else {
        format!("{} #{} of {count}", kind.noun, index + 1)
    }
}

/// Checks that `der` is exactly one `T`.
fn check_der<'a, T: FromDer<'a, E>, E: std::fmt::Debug>(
    path: &Path,
    der: &'a [u8],
    what: impl FnOnce() -> String,
) -> Result<T, KeyFileError> {
    let malformed = |reason: String| KeyFileError::MalformedDer {
        path: path.to_path_buf(),
        what: what(),
        reason,
    };
    match T::from_der(der) {
        Ok((rest, _)) if !rest.is_empty() => Err(malformed(format!(
            "{} bytes after the end of the DER object",
            rest.len()
        ))),
        Ok((_, v)) => Ok(v),
        Err(e) => Err(malformed(e.to_string())),
    }
}

/// Encodes DER as a PEM block (`label` e.g. "CERTIFICATE", "X509 CRL"),
/// 64-character lines, LF line endings, as OpenSSL writes them.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64ct::{Base64, Encoding as _};
    let b64 = Base64::encode_string(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads certificates: PEM (one or many `CERTIFICATE` blocks, e.g. a chain)
/// or one DER certificate. Each must parse as X.509. Returns DER.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, KeyFileError> {
    let bytes = read_public_file(path)?;
    let blocks = decode_blocks(path, &bytes, CERTIFICATE)?;
    for (i, der) in blocks.iter().enumerate() {
        check_der::<x509_parser::certificate::X509Certificate<'_>, _>(path, der, || {
            block_name(CERTIFICATE, i, blocks.len())
        })?;
    }
    Ok(blocks)
}

/// Reads CRLs: PEM (one or many `X509 CRL` blocks) or one DER CRL. Each
/// must parse as an X.509 CRL. Returns DER.
pub fn read_crls(path: &Path) -> Result<Vec<Vec<u8>>, KeyFileError> {
    let bytes = read_public_file(path)?;
    let blocks = decode_blocks(path, &bytes, CRL)?;
    for (i, der) in blocks.iter().enumerate() {
        check_der::<x509_parser::revocation_list::CertificateRevocationList<'_>, _>(
            path,
            der,
            || block_name(CRL, i, blocks.len()),
        )?;
    }
    Ok(blocks)
}

fn read_one(path: &Path, kind: Kind) -> Result<Vec<u8>, KeyFileError> {
    let bytes = read_public_file(path)?;
    let mut blocks = decode_blocks(path, &bytes, kind)?;
    if blocks.len() > 1 {
        return Err(KeyFileError::MalformedPem {
            path: path.to_path_buf(),
            reason: format!("{} \"{}\" blocks; expected one", blocks.len(), kind.label),
        });
    }
    Ok(blocks.swap_remove(0))
}

/// Reads a public key: PEM `PUBLIC KEY` (as `openssl pkey -pubout` writes
/// it) or DER SubjectPublicKeyInfo. Returns the SPKI DER.
pub fn read_public_key_spki(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let der = read_one(path, PUBLIC_KEY)?;
    check_der::<x509_parser::x509::SubjectPublicKeyInfo<'_>, _>(path, &der, || {
        PUBLIC_KEY.noun.to_owned()
    })?;
    Ok(der)
}

/// Reads a certificate signing request: PEM `CERTIFICATE REQUEST` or DER.
/// Only the framing is checked here; the caller verifies the request's
/// signature. Returns DER.
pub fn read_csr(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    read_one(path, CSR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_spec::testkit::{ClientCertSpec, KeyAlg, T_2026, T_2036, TestCa};

    fn b64(der: &[u8]) -> String {
        use base64ct::Encoding as _;
        let s = base64ct::Base64::encode_string(der);
        s.as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned() + "\n")
            .collect()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}-----END {label}-----\n",
            b64(der)
        )
    }

    fn fixture() -> (TestCa, Vec<u8>, Vec<u8>) {
        let ca = TestCa::new("pem test ca").expect("ca");
        let (cert, _) = ca
            .issue(&ClientCertSpec::new("alice", KeyAlg::Ed25519, 7))
            .expect("issue");
        let crl = ca.crl(&[7], T_2026, T_2036).expect("crl");
        (ca, cert, crl)
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn reads_pem_chains_and_der() {
        let (ca, cert, crl) = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = format!(
            "subject=CN=alice\n{}{}",
            pem("CERTIFICATE", &cert),
            pem("CERTIFICATE", ca.cert_der())
        );
        let p = write(dir.path(), "chain.pem", chain.as_bytes());
        assert_eq!(
            read_certificates(&p).expect("chain"),
            vec![cert.clone(), ca.cert_der().to_vec()]
        );
        let p = write(dir.path(), "cert.der", &cert);
        assert_eq!(read_certificates(&p).expect("der"), vec![cert.clone()]);
        let p = write(dir.path(), "crl.pem", pem("X509 CRL", &crl).as_bytes());
        assert_eq!(read_crls(&p).expect("crl"), vec![crl.clone()]);
        let p = write(dir.path(), "crl.der", &crl);
        assert_eq!(read_crls(&p).expect("crl der"), vec![crl]);
    }

    #[test]
    fn malformed_pem_is_named() {
        let (_, cert, _) = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let full = pem("CERTIFICATE", &cert);
        // Truncated: no END line.
        let p = write(dir.path(), "t.pem", &full.as_bytes()[..full.len() / 2]);
        let e = read_certificates(&p).expect_err("truncated");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: malformed PEM: no \"-----END CERTIFICATE-----\" line (truncated file?)",
                p.display()
            )
        );
        // Bad base64.
        let bad = full.replacen('M', "!", 1);
        let p = write(dir.path(), "b.pem", bad.as_bytes());
        let e = read_certificates(&p).expect_err("base64");
        assert!(matches!(e, KeyFileError::MalformedPem { .. }), "{e}");
        // Valid base64 of garbage.
        let p = write(
            dir.path(),
            "g.pem",
            pem("CERTIFICATE", b"\x30\x03abc").as_bytes(),
        );
        let e = read_certificates(&p).expect_err("garbage");
        assert!(e.to_string().contains("certificate is malformed"), "{e}");
    }

    #[test]
    fn malformed_der_is_named() {
        let (_, cert, crl) = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "c.der", &cert[..cert.len() - 10]);
        let e = read_certificates(&p).expect_err("short der");
        assert!(
            e.to_string()
                .starts_with(&format!("{}: certificate is malformed: ", p.display())),
            "{e}"
        );
        let mut long = cert.clone();
        long.push(0);
        let p = write(dir.path(), "l.der", &long);
        let e = read_certificates(&p).expect_err("trailing");
        assert!(e.to_string().contains("1 bytes after the end"), "{e}");
        let p = write(dir.path(), "x.txt", b"hello");
        let e = read_crls(&p).expect_err("text");
        assert!(e.to_string().contains("neither PEM"), "{e}");
        let p = write(dir.path(), "e.der", b"");
        let e = read_crls(&p).expect_err("empty");
        assert!(e.to_string().contains("the file is empty"), "{e}");
        // A certificate given as a CRL.
        let p = write(dir.path(), "c2.der", &cert);
        assert!(read_crls(&p).is_err());
        let p = write(dir.path(), "crl.der", &crl);
        assert!(read_certificates(&p).is_err());
    }

    #[test]
    fn wrong_label_and_empty() {
        let (_, cert, _) = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "c.pem", pem("CERTIFICATE", &cert).as_bytes());
        let e = read_crls(&p).expect_err("label");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: expected a PEM \"X509 CRL\" block, found \"CERTIFICATE\"",
                p.display()
            )
        );
        let p = write(
            dir.path(),
            "u.pem",
            pem("TRUSTED CERTIFICATE", &cert).as_bytes(),
        );
        let e = read_certificates(&p).expect_err("unknown label");
        assert!(matches!(e, KeyFileError::WrongPemLabel { .. }), "{e}");
        let e = read_public_key_spki(&p).expect_err("not a public key");
        assert!(matches!(e, KeyFileError::WrongPemLabel { .. }), "{e}");
        // A BEGIN marker that starts no block.
        let p = write(
            dir.path(),
            "n.pem",
            b"see -----BEGIN CERTIFICATE----- below\n",
        );
        let e = read_certificates(&p).expect_err("no block");
        assert_eq!(
            e.to_string(),
            format!("{}: no certificate found", p.display())
        );
        let p = write(dir.path(), "s.pem", b"-----BEGIN CERTIFICATE\nMAA=\n");
        let e = read_certificates(&p).expect_err("bad begin line");
        assert!(e.to_string().contains("bad BEGIN line"), "{e}");
    }

    #[test]
    fn public_keys_and_csrs() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Ed25519 SPKI of the all-zero key (SPEC §2.4 prefix).
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(&[0u8; 32]);
        let p = write(dir.path(), "pub.pem", pem("PUBLIC KEY", &spki).as_bytes());
        assert_eq!(read_public_key_spki(&p).expect("spki"), spki);
        let two = pem("PUBLIC KEY", &spki) + &pem("PUBLIC KEY", &spki);
        let p = write(dir.path(), "two.pem", two.as_bytes());
        let e = read_public_key_spki(&p).expect_err("two");
        assert!(e.to_string().contains("expected one"), "{e}");
        let p = write(
            dir.path(),
            "r.pem",
            pem("CERTIFICATE REQUEST", b"\x30\x00").as_bytes(),
        );
        assert_eq!(read_csr(&p).expect("csr framing"), b"\x30\x00");
    }
}
