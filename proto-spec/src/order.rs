//! The order: green's counter-signed relay of a client body to red. SPEC §5.

use core::net::IpAddr;

use crate::MalformedReason;
use crate::body::{
    MAX_LIFETIME_S, MessageType, OpenFor, Reader, SESSION_ID_LEN, SIGNATURE_LEN, encode_addr,
};
use crate::wire::{MAX_CLIENT_BODY, MAX_ORDER_BODY, MIN_BODY, MIN_ORDER_BODY};

/// Gateway public key length in an order. SPEC §5.1.
pub const GATEWAY_KEY_LEN: usize = 32;

/// The fields green chooses. SPEC §5.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFields<'a> {
    /// Strictly increasing per gateway, ms.
    pub order_timestamp_ms: u64,
    /// Must equal the client body's session id.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Seconds red keeps the opening; 0 for a close.
    pub lifetime_s: u32,
    /// The address red opens for (green's address toward red).
    pub open_for: IpAddr,
    /// The client's body, verbatim, signature included.
    pub client_body: &'a [u8],
}

/// A parsed order, borrowing from the plaintext. SPEC §5.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOrder<'a> {
    /// Order timestamp, ms.
    pub order_timestamp_ms: u64,
    /// Session id.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Lifetime, seconds.
    pub lifetime_s: u32,
    /// The address red opens for.
    pub open_for: IpAddr,
    /// The client's body, not yet parsed.
    pub client_body: &'a [u8],
    /// The gateway's Ed25519 public key.
    pub gateway_key: &'a [u8; GATEWAY_KEY_LEN],
    /// The gateway's signature.
    pub signature: &'a [u8; SIGNATURE_LEN],
    /// Everything before the signature. SPEC §5.1.
    pub signed_part: &'a [u8],
}

/// Why an order could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OrderEncodeError {
    /// A field breaks a rule of SPEC §5.1.
    #[error("invalid order field: {0:?}")]
    Invalid(MalformedReason),
}

/// Encodes the signed part of an order (everything before the gateway
/// signature, gateway key included). SPEC §5.1.
pub fn encode_order_signed_part(
    f: &OrderFields<'_>,
    gateway_key: &[u8; GATEWAY_KEY_LEN],
) -> Result<Vec<u8>, OrderEncodeError> {
    if f.lifetime_s > MAX_LIFETIME_S {
        return Err(OrderEncodeError::Invalid(MalformedReason::BadLifetime));
    }
    if !(MIN_BODY..=MAX_CLIENT_BODY).contains(&f.client_body.len()) {
        return Err(OrderEncodeError::Invalid(MalformedReason::BadBodyLength));
    }
    let mut out = Vec::with_capacity(MAX_ORDER_BODY);
    out.push(MessageType::Order as u8);
    out.extend_from_slice(&f.order_timestamp_ms.to_be_bytes());
    out.extend_from_slice(&f.session_id);
    out.extend_from_slice(&f.lifetime_s.to_be_bytes());
    encode_addr(&mut out, OpenFor::Addr(f.open_for)).map_err(OrderEncodeError::Invalid)?;
    out.extend_from_slice(&(f.client_body.len() as u16).to_be_bytes());
    out.extend_from_slice(f.client_body);
    out.extend_from_slice(gateway_key);
    Ok(out)
}

/// Parses an order body. SPEC §5.1. The client body inside is parsed
/// separately (SPEC §5.2 orders the checks).
pub fn parse_order(raw: &[u8]) -> Result<ParsedOrder<'_>, MalformedReason> {
    if raw.len() < MIN_ORDER_BODY || raw.len() > MAX_ORDER_BODY {
        return Err(MalformedReason::Truncated);
    }
    let mut r = Reader::new(raw);
    if MessageType::from_byte(r.u8()?) != Some(MessageType::Order) {
        return Err(MalformedReason::UnknownMessageType);
    }
    let order_timestamp_ms = r.u64()?;
    let session_id = *r.array::<SESSION_ID_LEN>()?;
    let lifetime_s = r.u32()?;
    if lifetime_s > MAX_LIFETIME_S {
        return Err(MalformedReason::BadLifetime);
    }
    let OpenFor::Addr(open_for) = r.open_for(false)? else {
        return Err(MalformedReason::BadAddressKind);
    };
    let body_len = usize::from(r.u16()?);
    if !(MIN_BODY..=MAX_CLIENT_BODY).contains(&body_len) {
        return Err(MalformedReason::BadBodyLength);
    }
    let client_body = r.take(body_len)?;
    let gateway_key = r.array::<GATEWAY_KEY_LEN>()?;
    let signed_len = r.pos();
    let signature = r.array::<SIGNATURE_LEN>()?;
    if r.remaining() != 0 {
        return Err(MalformedReason::TrailingBytes);
    }
    Ok(ParsedOrder {
        order_timestamp_ms,
        session_id,
        lifetime_s,
        open_for,
        client_body,
        gateway_key,
        signature,
        signed_part: &raw[..signed_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sizes() {
        let body = vec![0x02u8; MIN_BODY];
        let f = OrderFields {
            order_timestamp_ms: 5,
            session_id: [3; 16],
            lifetime_s: 30,
            open_for: "10.200.1.1".parse().expect("ip"),
            client_body: &body,
        };
        let mut raw = encode_order_signed_part(&f, &[9; 32]).expect("encode");
        raw.extend_from_slice(&[1; 64]);
        assert_eq!(raw.len(), MIN_ORDER_BODY);
        let p = parse_order(&raw).expect("parse");
        assert_eq!(p.client_body, &body[..]);
        assert_eq!(p.gateway_key, &[9; 32]);
        assert_eq!(p.open_for, f.open_for);

        let big = vec![0x02u8; MAX_CLIENT_BODY];
        let f6 = OrderFields {
            open_for: "fd00:200::1".parse().expect("ip"),
            client_body: &big,
            ..f
        };
        let mut raw = encode_order_signed_part(&f6, &[9; 32]).expect("encode");
        raw.extend_from_slice(&[1; 64]);
        assert_eq!(raw.len(), MAX_ORDER_BODY);
        assert!(parse_order(&raw).is_ok());
        raw.push(0);
        assert_eq!(parse_order(&raw).err(), Some(MalformedReason::Truncated));
    }

    #[test]
    fn refuses_source_mode_in_orders() {
        let body = vec![0x02u8; MIN_BODY + 4];
        let f = OrderFields {
            order_timestamp_ms: 5,
            session_id: [3; 16],
            lifetime_s: 30,
            open_for: "10.200.1.1".parse().expect("ip"),
            client_body: &body,
        };
        let mut raw = encode_order_signed_part(&f, &[9; 32]).expect("encode");
        raw.extend_from_slice(&[1; 64]);
        // Turn the IPv4 address field into a source-mode field of the same
        // total length: kind 0x00 and the four address bytes become body.
        raw[29] = 0x00;
        assert_eq!(
            parse_order(&raw).err(),
            Some(MalformedReason::BadAddressKind)
        );
    }
}
