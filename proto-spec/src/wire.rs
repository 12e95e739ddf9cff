//! Datagram framing and the pre-check MAC. SPEC §3.

use subtle::ConstantTimeEq;

use crate::Refusal;
use crate::keys::MacKey;

/// The only version defined by this specification. SPEC §3.1, §11.
pub const VERSION: u8 = 0x01;
/// Header length: the version byte. SPEC §3.1.
pub const HEADER_LEN: usize = 1;
/// HPKE encapsulated key (X25519 public key) length. SPEC §3.1.
pub const ENC_LEN: usize = 32;
/// AEAD tag length (Poly1305). SPEC §3.4.
pub const TAG_LEN: usize = 16;
/// Truncated pre-check MAC length. SPEC §3.3.
pub const MAC_LEN: usize = 16;
/// Bytes a datagram adds around its plaintext. SPEC §3.2.
pub const OVERHEAD: usize = HEADER_LEN + ENC_LEN + TAG_LEN + MAC_LEN;
/// Largest datagram of any kind: IPv6 minimum MTU minus IPv6 and UDP headers.
/// SPEC §3.2.
pub const MAX_DATAGRAM: usize = 1232;

/// Smallest knock body. SPEC §4.1.
pub const MIN_BODY: usize = 114;
/// Largest knock body, chosen so that any body fits verbatim in an order.
/// SPEC §3.2.
pub const MAX_CLIENT_BODY: usize = 1023;
/// Smallest order body. SPEC §5.1.
pub const MIN_ORDER_BODY: usize = 246;
/// Largest order body. SPEC §5.1.
pub const MAX_ORDER_BODY: usize = 1167;

/// The two datagram kinds; they differ in the HPKE `info`, the MAC label and
/// the size range. SPEC §3.3, §3.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatagramKind {
    /// Client to green.
    Knock,
    /// Green to red.
    Order,
}

impl DatagramKind {
    /// SPEC §3.3.
    pub const fn mac_label(self) -> &'static [u8] {
        match self {
            Self::Knock => b"spa/v1 knock mac1",
            Self::Order => b"spa/v1 order mac1",
        }
    }

    /// HPKE `info`. SPEC §3.4.
    pub const fn hpke_info(self) -> &'static [u8] {
        match self {
            Self::Knock => b"spa/v1 knock",
            Self::Order => b"spa/v1 order",
        }
    }

    /// Smallest datagram of this kind. SPEC §3.2.
    pub const fn min_datagram(self) -> usize {
        OVERHEAD
            + match self {
                Self::Knock => MIN_BODY,
                Self::Order => MIN_ORDER_BODY,
            }
    }

    /// Largest datagram of this kind. SPEC §3.2.
    pub const fn max_datagram(self) -> usize {
        OVERHEAD
            + match self {
                Self::Knock => MAX_CLIENT_BODY,
                Self::Order => MAX_ORDER_BODY,
            }
    }
}

/// A datagram split into its fields; borrowed, no copies. SPEC §3.1.
#[derive(Debug, Clone, Copy)]
pub struct Framed<'a> {
    /// The header (version byte), also the AEAD's associated data.
    pub header: &'a [u8],
    /// The HPKE encapsulated key.
    pub enc: &'a [u8; ENC_LEN],
    /// The HPKE ciphertext including its tag.
    pub ciphertext: &'a [u8],
    /// Everything the MAC covers: header, enc and ciphertext.
    pub mac_covered: &'a [u8],
    /// The truncated MAC.
    pub mac: &'a [u8; MAC_LEN],
}

/// Size and version checks, then split. SPEC §3.2, §3.6. Does no crypto.
pub fn frame(kind: DatagramKind, datagram: &[u8]) -> Result<Framed<'_>, Refusal> {
    if datagram.len() < kind.min_datagram() {
        return Err(Refusal::TooShort);
    }
    if datagram.len() > kind.max_datagram() {
        return Err(Refusal::TooLong);
    }
    let (mac_covered, mac) = datagram.split_at(datagram.len() - MAC_LEN);
    let (header, rest) = mac_covered.split_at(HEADER_LEN);
    if header[0] != VERSION {
        return Err(Refusal::BadVersion);
    }
    let (enc, ciphertext) = rest.split_at(ENC_LEN);
    let (Ok(enc), Ok(mac)) = (enc.try_into(), mac.try_into()) else {
        // Unreachable given the length checks above; refuse rather than panic.
        return Err(Refusal::TooShort);
    };
    Ok(Framed {
        header,
        enc,
        ciphertext,
        mac_covered,
        mac,
    })
}

impl Framed<'_> {
    /// Constant-time check of the pre-check MAC under one key. SPEC §3.3.
    pub(crate) fn mac_matches(&self, key: &MacKey) -> bool {
        key.tag(self.mac_covered).ct_eq(self.mac).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec_table() {
        assert_eq!(OVERHEAD, 65);
        assert_eq!(DatagramKind::Knock.min_datagram(), 179);
        assert_eq!(DatagramKind::Knock.max_datagram(), 1088);
        assert_eq!(DatagramKind::Order.min_datagram(), 311);
        assert_eq!(DatagramKind::Order.max_datagram(), MAX_DATAGRAM);
        assert_eq!(DatagramKind::Knock.mac_label().len(), 17);
        assert_eq!(DatagramKind::Order.hpke_info().len(), 12);
    }

    #[test]
    fn rejects_short_long_and_bad_version() {
        assert_eq!(
            frame(DatagramKind::Knock, &[1u8; 178]).err(),
            Some(Refusal::TooShort)
        );
        assert_eq!(
            frame(DatagramKind::Knock, &[1u8; 1089]).err(),
            Some(Refusal::TooLong)
        );
        assert_eq!(
            frame(DatagramKind::Knock, &[2u8; 600]).err(),
            Some(Refusal::BadVersion)
        );
        assert!(frame(DatagramKind::Knock, &[1u8; 600]).is_ok());
        assert_eq!(
            frame(DatagramKind::Order, &[]).err(),
            Some(Refusal::TooShort)
        );
    }
}
