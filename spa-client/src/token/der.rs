//! The few encodings tokens disagree on: EC parameters, EC points, ECDSA
//! signatures (DER or `r || s`), plus SPKI and certificate PEM/DER.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::TokenPublicKey;

/// DER of OID 1.3.101.112 (id-Ed25519, RFC 8410).
pub(crate) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of OID 1.3.101.113 (id-Ed448).
const OID_ED448: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x71];
/// DER of OID 1.3.6.1.4.1.11591.15.1 (GnuPG's curve25519 for EdDSA, used by
/// some OpenSC card drivers).
const OID_ED25519_GNU: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01,
];
/// DER of OID 1.2.840.10045.3.1.7 (secp256r1, prime256v1).
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of OID 1.3.132.0.34 (secp384r1).
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of OID 1.3.132.0.35 (secp521r1).
const OID_P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/// `SEQUENCE { SEQUENCE { OID id-Ed25519 }, BIT STRING (33 bytes, 0 unused) }` header.
const SPKI_ED25519_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// `SEQUENCE { SEQUENCE { OID id-ecPublicKey, OID secp256r1 }, BIT STRING (66 bytes) }` header.
const SPKI_P256_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The curve named by `CKA_EC_PARAMS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Curve {
    Ed25519,
    P256,
    /// Anything else, with a name for messages.
    Other(String),
}

/// Reads `CKA_EC_PARAMS`: a DER OID (the usual form), or a PrintableString
/// or UTF8String curve name (PKCS#11 3.0 allows `edwards25519`; some
/// tokens write `prime256v1`).
pub(crate) fn parse_ec_params(params: &[u8]) -> Curve {
    match params {
        p if p == OID_ED25519 || p == OID_ED25519_GNU => Curve::Ed25519,
        p if p == OID_P256 => Curve::P256,
        p if p == OID_ED448 => Curve::Other("Ed448".to_owned()),
        p if p == OID_P384 => Curve::Other("P-384".to_owned()),
        p if p == OID_P521 => Curve::Other("P-521".to_owned()),
        [tag @ (0x13 | 0x0c), len, name @ ..] if usize::from(*len) == name.len() => {
            let name = String::from_utf8_lossy(name);
            match name.to_ascii_lowercase().as_str() {
                "edwards25519" | "ed25519" | "curve25519" => Curve::Ed25519,
                "prime256v1" | "secp256r1" | "p-256" | "nist p-256" => Curve::P256,
                _ => Curve::Other(format!(
                    "curve named '{name}' ({})",
                    if *tag == 0x13 {
                        "PrintableString"
                    } else {
                        "UTF8String"
                    }
                )),
            }
        }
        [0x06, ..] => Curve::Other(format!("curve OID {}", hex::encode(params))),
        _ => Curve::Other(format!("unreadable CKA_EC_PARAMS {}", hex::encode(params))),
    }
}

/// Strips a DER OCTET STRING (`04 len ...`) around a point if the lengths say
/// it is one. PKCS#11 mandates the wrapping; some tokens return the raw point.
fn strip_octet_string<'a>(point: &'a [u8], raw_lengths: &[usize]) -> &'a [u8] {
    if let [0x04, len, rest @ ..] = point
        && usize::from(*len) == rest.len()
        && raw_lengths.contains(&rest.len())
        && !raw_lengths.contains(&point.len())
    {
        return rest;
    }
    point
}

/// Normalizes a `CKA_EC_POINT` for `curve`: OCTET STRING-wrapped or raw;
/// for P-256, compressed or uncompressed.
pub(crate) fn parse_ec_point(curve: &Curve, point: &[u8]) -> Result<TokenPublicKey, String> {
    match curve {
        Curve::Ed25519 => {
            let raw = strip_octet_string(point, &[32]);
            let key: [u8; 32] = raw.try_into().map_err(|_| {
                format!(
                    "CKA_EC_POINT of {} bytes is not an Ed25519 key (32 bytes, or 04 20 + 32 bytes)",
                    point.len()
                )
            })?;
            Ok(TokenPublicKey::Ed25519(key))
        }
        Curve::P256 => {
            let raw = strip_octet_string(point, &[33, 65]);
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map_err(|_| format!("CKA_EC_POINT {} is not a P-256 point", hex::encode(point)))?;
            let sec1 = vk.to_sec1_point(false);
            let key: [u8; 65] = sec1
                .as_bytes()
                .try_into()
                .map_err(|_| "P-256 point of unexpected length".to_owned())?;
            Ok(TokenPublicKey::P256(key))
        }
        Curve::Other(name) => Err(format!(
            "{name} is not supported (spa takes Ed25519 or P-256)"
        )),
    }
}

/// An ECDSA P-256 signature as `r || s`, from either `r || s` (what
/// `CKM_ECDSA` returns) or DER (what some cards and PIV return). `r` and `s`
/// must be in `1 ..= n-1`.
pub(crate) fn ecdsa_p256_to_raw(sig: &[u8]) -> Result<[u8; 64], String> {
    let parsed = if sig.len() == 64 {
        p256::ecdsa::Signature::from_slice(sig)
            .map_err(|_| "r or s out of range in a 64-byte ECDSA signature".to_owned())?
    } else if sig.first() == Some(&0x30) {
        p256::ecdsa::Signature::from_der(sig)
            .map_err(|_| format!("{}-byte DER ECDSA signature does not parse", sig.len()))?
    } else {
        return Err(format!(
            "{}-byte ECDSA signature is neither r || s (64 bytes) nor DER",
            sig.len()
        ));
    };
    let mut out = [0u8; 64];
    out.copy_from_slice(&parsed.to_bytes());
    Ok(out)
}

/// ECDSA `r || s` to DER `SEQUENCE { INTEGER r, INTEGER s }` (X.509, TLS).
pub(crate) fn ecdsa_p256_raw_to_der(raw: &[u8; 64]) -> Result<Vec<u8>, String> {
    let sig = p256::ecdsa::Signature::from_slice(raw)
        .map_err(|_| "r or s out of range in an ECDSA signature".to_owned())?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// The DER SubjectPublicKeyInfo of a key.
pub(crate) fn spki(key: &TokenPublicKey) -> Vec<u8> {
    let (prefix, raw) = match key {
        TokenPublicKey::Ed25519(k) => (SPKI_ED25519_PREFIX, &k[..]),
        TokenPublicKey::P256(k) => (SPKI_P256_PREFIX, &k[..]),
    };
    let mut out = Vec::with_capacity(prefix.len() + raw.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(raw);
    out
}

/// A certificate from PEM (the first `CERTIFICATE` block) or DER bytes.
pub(crate) fn certificate_from_pem_or_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(bytes)
            .map(|c| c.as_ref().to_vec())
            .map_err(|e| format!("no PEM CERTIFICATE block: {e}"))
    } else if bytes.first() == Some(&0x30) {
        Ok(bytes.to_vec())
    } else {
        Err("neither PEM (-----BEGIN CERTIFICATE-----) nor DER".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ED_KEY: [u8; 32] = [0x11; 32];

    #[test]
    fn ec_params_forms() {
        assert_eq!(parse_ec_params(OID_ED25519), Curve::Ed25519);
        assert_eq!(parse_ec_params(OID_ED25519_GNU), Curve::Ed25519);
        assert_eq!(parse_ec_params(OID_P256), Curve::P256);
        let mut printable = vec![0x13, 12];
        printable.extend_from_slice(b"edwards25519");
        assert_eq!(parse_ec_params(&printable), Curve::Ed25519);
        let mut utf8 = vec![0x0c, 10];
        utf8.extend_from_slice(b"prime256v1");
        assert_eq!(parse_ec_params(&utf8), Curve::P256);
        assert!(matches!(parse_ec_params(OID_P384), Curve::Other(n) if n == "P-384"));
        assert!(matches!(parse_ec_params(OID_ED448), Curve::Other(n) if n == "Ed448"));
        assert!(matches!(parse_ec_params(&[0x13, 5, b'x']), Curve::Other(_)));
        assert!(matches!(parse_ec_params(&[]), Curve::Other(_)));
    }

    #[test]
    fn ed25519_point_wrapped_or_raw() {
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&ED_KEY);
        assert_eq!(
            parse_ec_point(&Curve::Ed25519, &wrapped).unwrap(),
            TokenPublicKey::Ed25519(ED_KEY)
        );
        assert_eq!(
            parse_ec_point(&Curve::Ed25519, &ED_KEY).unwrap(),
            TokenPublicKey::Ed25519(ED_KEY)
        );
        // A raw key that happens to start with 04 20 stays raw.
        let mut tricky = [0x22u8; 32];
        tricky[0] = 0x04;
        tricky[1] = 0x20;
        assert_eq!(
            parse_ec_point(&Curve::Ed25519, &tricky).unwrap(),
            TokenPublicKey::Ed25519(tricky)
        );
        assert!(parse_ec_point(&Curve::Ed25519, &[0x04, 0x03, 1, 2, 3]).is_err());
    }

    fn p256_point(compressed: bool) -> (Vec<u8>, [u8; 65]) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let vk = sk.verifying_key();
        let full: [u8; 65] = vk.to_sec1_point(false).as_bytes().try_into().unwrap();
        (vk.to_sec1_point(compressed).as_bytes().to_vec(), full)
    }

    #[test]
    fn p256_point_forms() {
        for compressed in [false, true] {
            let (raw, full) = p256_point(compressed);
            let mut wrapped = vec![0x04, raw.len() as u8];
            wrapped.extend_from_slice(&raw);
            for form in [&raw, &wrapped] {
                assert_eq!(
                    parse_ec_point(&Curve::P256, form).unwrap(),
                    TokenPublicKey::P256(full)
                );
            }
        }
        assert!(parse_ec_point(&Curve::P256, &[0x04; 65]).is_err());
        assert!(parse_ec_point(&Curve::Other("P-384".into()), &[0x04; 97]).is_err());
    }

    #[test]
    fn ecdsa_signature_forms() {
        use p256::ecdsa::signature::Signer as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(b"message");
        let raw: [u8; 64] = sig.to_bytes().as_slice().try_into().unwrap();
        let der = sig.to_der().as_bytes().to_vec();
        assert_eq!(ecdsa_p256_to_raw(&raw).unwrap(), raw);
        assert_eq!(ecdsa_p256_to_raw(&der).unwrap(), raw);
        assert_eq!(ecdsa_p256_raw_to_der(&raw).unwrap(), der);
        assert!(ecdsa_p256_to_raw(&[0u8; 64]).is_err());
        assert!(ecdsa_p256_to_raw(&[0x30, 0x02, 0x01]).is_err());
        assert!(ecdsa_p256_to_raw(&[1u8; 63]).is_err());
        assert!(ecdsa_p256_raw_to_der(&[0u8; 64]).is_err());
    }

    #[test]
    fn spki_matches_known_prefixes() {
        let ed = spki(&TokenPublicKey::Ed25519([0; 32]));
        assert_eq!(hex::encode(&ed[..12]), "302a300506032b6570032100");
        assert_eq!(ed.len(), 44);
        let (_, full) = p256_point(false);
        let p = spki(&TokenPublicKey::P256(full));
        assert_eq!(p.len(), 91);
        // The P-256 SPKI parses back to the same key.
        let vk =
            <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&p)
                .unwrap();
        assert_eq!(vk.to_sec1_point(false).as_bytes(), &full[..]);
    }

    #[test]
    fn certificate_pem_or_der() {
        assert!(certificate_from_pem_or_der(b"hello").is_err());
        assert_eq!(
            certificate_from_pem_or_der(&[0x30, 0x00]).unwrap(),
            vec![0x30, 0x00]
        );
        let pem = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(certificate_from_pem_or_der(pem).unwrap(), vec![0x30, 0x00]);
        assert!(
            certificate_from_pem_or_der(
                b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
    }
}
