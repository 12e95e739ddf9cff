//! One-line public keys: standard base64 (with padding) of the 32 raw
//! bytes, 44 characters, as WireGuard prints its keys. Used for receiver
//! (X25519) keys and gateway (Ed25519) order-signing keys in
//! configuration files and on the command line.

use base64ct::{Base64, Encoding as _};
use proto_spec::keys::ReceiverPublicKey;

use crate::error::PublicKeyError;

fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(48).collect();
    if s.chars().count() > 48 {
        out.push('…');
    }
    out
}

fn decode_32(s: &str) -> Result<[u8; 32], PublicKeyError> {
    let s = s.trim();
    let bytes = Base64::decode_vec(s).map_err(|_| PublicKeyError::Base64 { shown: shown(s) })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| PublicKeyError::Length {
            shown: shown(s),
            len: bytes.len(),
        })
}

/// A receiver public key as one line of base64 (44 characters).
pub fn encode_public_key(key: &ReceiverPublicKey) -> String {
    Base64::encode_string(key.as_bytes())
}

/// Parses a receiver public key from one line of base64. Surrounding
/// whitespace is ignored.
pub fn decode_public_key(s: &str) -> Result<ReceiverPublicKey, PublicKeyError> {
    decode_32(s).map(ReceiverPublicKey)
}

/// A gateway's Ed25519 order-signing public key as one line of base64.
pub fn encode_gateway_public_key(key: &[u8; 32]) -> String {
    Base64::encode_string(key)
}

/// Parses a gateway's Ed25519 public key from one line of base64, refusing
/// bytes that are not a valid Ed25519 point.
pub fn decode_gateway_public_key(s: &str) -> Result<[u8; 32], PublicKeyError> {
    let key = decode_32(s)?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| PublicKeyError::NotEd25519 {
        shown: shown(s.trim()),
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let k = ReceiverPublicKey([0xab; 32]);
        let s = encode_public_key(&k);
        assert_eq!(s.len(), 44);
        assert!(s.ends_with('='));
        assert_eq!(decode_public_key(&s).expect("decode"), k);
        assert_eq!(decode_public_key(&format!(" {s}\n")).expect("trim"), k);
    }

    #[test]
    fn wireguard_compatible() {
        // RFC 7748 §6.1 Alice's public key, as `wg pubkey` prints it.
        let s = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let k = decode_public_key(s).expect("decode");
        assert_eq!(k.0[..4], [0x85, 0x20, 0xf0, 0x09]);
        assert_eq!(encode_public_key(&k), s);
    }

    #[test]
    fn refuses_bad_base64() {
        for bad in [
            "not base64!",
            "AAAA\nAAAA",
            "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo=",
        ] {
            let e = decode_public_key(bad).expect_err("bad");
            assert!(matches!(e, PublicKeyError::Base64 { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("not valid base64"), "{e}");
        }
    }

    #[test]
    fn refuses_wrong_length() {
        let e = decode_public_key("AAAA").expect_err("short");
        assert_eq!(
            e.to_string(),
            "public key \"AAAA\" decodes to 3 bytes; a public key is 32 bytes (44 base64 characters)"
        );
        assert!(matches!(
            decode_public_key(""),
            Err(PublicKeyError::Length { len: 0, .. })
        ));
        let long = Base64::encode_string(&[1u8; 33]);
        assert!(matches!(
            decode_public_key(&long),
            Err(PublicKeyError::Length { len: 33, .. })
        ));
        let long = "A".repeat(100);
        let e = decode_public_key(&long).expect_err("long");
        assert!(e.to_string().contains('…'), "{e}");
    }

    #[test]
    fn gateway_keys() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let pk = sk.verifying_key().to_bytes();
        let s = encode_gateway_public_key(&pk);
        assert_eq!(decode_gateway_public_key(&s).expect("decode"), pk);
        // y = 2 is not on the curve.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let e = decode_gateway_public_key(&encode_gateway_public_key(&bad)).expect_err("bad");
        assert!(matches!(e, PublicKeyError::NotEd25519 { .. }), "{e}");
        assert!(decode_gateway_public_key("AAAA").is_err());
    }
}
