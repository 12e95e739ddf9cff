//! The signed body: the plaintext of a knock. SPEC §4.
//!
//! Parsing borrows from the decrypted plaintext and allocates nothing but the
//! small fixed-capacity list of service-name slices.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::MalformedReason;
use crate::wire::{MAX_CLIENT_BODY, MIN_BODY};

/// Largest number of services in one body. SPEC §4.1.
pub const MAX_SERVICES: usize = 8;
/// Largest service name, in bytes. SPEC §4.1.
pub const MAX_SERVICE_NAME: usize = 32;
/// Largest lifetime, in seconds (one day). SPEC §4.2.
pub const MAX_LIFETIME_S: u32 = 86_400;
/// Signature length (Ed25519, or P-256 as r||s). SPEC §4.1.
pub const SIGNATURE_LEN: usize = 64;
/// Session id length. SPEC §4.1.
pub const SESSION_ID_LEN: usize = 16;
/// Nonce length. SPEC §4.1.
pub const NONCE_LEN: usize = 16;

/// Message types. SPEC §4.1, §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Open the tunnel (green-local services).
    OpenTunnel = 0x01,
    /// Request a service (relayed to red, or green-local).
    RequestService = 0x02,
    /// Close a session on every hop.
    Close = 0x03,
    /// Green's order to red (SPEC §5); never inside a knock.
    Order = 0x04,
}

impl MessageType {
    /// Parses the type byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Self::OpenTunnel),
            0x02 => Some(Self::RequestService),
            0x03 => Some(Self::Close),
            0x04 => Some(Self::Order),
            _ => None,
        }
    }

    /// A stable name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenTunnel => "open-tunnel",
            Self::RequestService => "request-service",
            Self::Close => "close",
            Self::Order => "order",
        }
    }
}

/// The address a knock asks the receiver to open for. SPEC §4.1, §4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenFor {
    /// The datagram's source address (weak: SPEC §9).
    Source,
    /// An explicit address, bound under the signature.
    Addr(IpAddr),
}

/// Address kind bytes. SPEC §4.1.
pub(crate) const ADDR_SOURCE: u8 = 0x00;
pub(crate) const ADDR_V4: u8 = 0x04;
pub(crate) const ADDR_V6: u8 = 0x06;

/// A validated service name: 1..=32 bytes of `[a-z0-9._-]`, first byte
/// `[a-z0-9]`. SPEC §4.2.
pub fn is_valid_service_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && (name[0].is_ascii_lowercase() || name[0].is_ascii_digit())
        && name.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

/// An address that can be opened for: not unspecified, multicast, broadcast
/// or IPv4-mapped IPv6. SPEC §4.2.
pub fn is_valid_open_address(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.to_ipv4_mapped().is_some()),
    }
}

/// The fields of a knock body that the client chooses. SPEC §4.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFields<'a> {
    /// Open-tunnel, request-service or close.
    pub msg_type: MessageType,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// 16 random bytes.
    pub nonce: [u8; NONCE_LEN],
    /// Ties a request and a close to their open.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Seconds; 0 for close.
    pub lifetime_s: u32,
    /// The address to open for.
    pub open_for: OpenFor,
    /// Service names; empty for close.
    pub services: &'a [&'a str],
    /// The client's certificate, DER.
    pub certificate: &'a [u8],
}

/// A parsed body, borrowing from the plaintext. SPEC §4.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBody<'a> {
    /// Open-tunnel, request-service or close.
    pub msg_type: MessageType,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// 16 random bytes.
    pub nonce: [u8; NONCE_LEN],
    /// Session id.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Seconds; 0 for close.
    pub lifetime_s: u32,
    /// The address to open for.
    pub open_for: OpenFor,
    /// Service names (validated charset, so valid UTF-8).
    pub services: ServiceList<'a>,
    /// The client's certificate, DER (not yet validated).
    pub certificate: &'a [u8],
    /// The signature.
    pub signature: &'a [u8; SIGNATURE_LEN],
    /// The bytes the signature covers after the context and `pkR`:
    /// everything before the signature. SPEC §4.4.
    pub signed_part: &'a [u8],
    /// The whole body, as received (for relaying verbatim in an order).
    pub raw: &'a [u8],
}

/// Up to [`MAX_SERVICES`] service names, without heap allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceList<'a> {
    names: [&'a str; MAX_SERVICES],
    len: usize,
}

impl<'a> ServiceList<'a> {
    /// The names in order.
    pub fn as_slice(&self) -> &[&'a str] {
        &self.names[..self.len]
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no names.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why a body could not be encoded (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The fields break a rule of SPEC §4.2.
    #[error("invalid field: {0:?}")]
    Invalid(MalformedReason),
    /// The body would exceed the maximum size (SPEC §3.2), usually because
    /// the certificate is too large.
    #[error("the body would be {0} bytes, over the {MAX_CLIENT_BODY}-byte limit")]
    TooLarge(usize),
}

/// Checks the per-type rules of SPEC §4.2 that both encoder and parser apply.
fn check_rules(
    msg_type: MessageType,
    lifetime_s: u32,
    n_services: usize,
) -> Result<(), MalformedReason> {
    match msg_type {
        MessageType::OpenTunnel | MessageType::RequestService => {
            if lifetime_s == 0 || n_services == 0 {
                return Err(MalformedReason::FieldNotAllowed);
            }
            if lifetime_s > MAX_LIFETIME_S {
                return Err(MalformedReason::BadLifetime);
            }
        }
        MessageType::Close => {
            if lifetime_s != 0 || n_services != 0 {
                return Err(MalformedReason::FieldNotAllowed);
            }
        }
        MessageType::Order => return Err(MalformedReason::UnknownMessageType),
    }
    if n_services > MAX_SERVICES {
        return Err(MalformedReason::TooManyServices);
    }
    Ok(())
}

/// Encodes the signed part of a body (everything but the signature).
/// SPEC §4.1.
pub fn encode_signed_part(f: &BodyFields<'_>) -> Result<Vec<u8>, EncodeError> {
    check_rules(f.msg_type, f.lifetime_s, f.services.len()).map_err(EncodeError::Invalid)?;
    let mut out = Vec::with_capacity(MAX_CLIENT_BODY);
    out.push(f.msg_type as u8);
    out.extend_from_slice(&f.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&f.nonce);
    out.extend_from_slice(&f.session_id);
    out.extend_from_slice(&f.lifetime_s.to_be_bytes());
    encode_addr(&mut out, f.open_for).map_err(EncodeError::Invalid)?;
    out.push(f.services.len() as u8);
    for s in f.services {
        if !is_valid_service_name(s.as_bytes()) {
            return Err(EncodeError::Invalid(MalformedReason::BadServiceName));
        }
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    let cert_len = u16::try_from(f.certificate.len())
        .ok()
        .filter(|&l| l >= 1)
        .ok_or(EncodeError::Invalid(MalformedReason::BadCertLength))?;
    out.extend_from_slice(&cert_len.to_be_bytes());
    out.extend_from_slice(f.certificate);
    let total = out.len() + SIGNATURE_LEN;
    if total > MAX_CLIENT_BODY {
        return Err(EncodeError::TooLarge(total));
    }
    Ok(out)
}

pub(crate) fn encode_addr(out: &mut Vec<u8>, open_for: OpenFor) -> Result<(), MalformedReason> {
    match open_for {
        OpenFor::Source => out.push(ADDR_SOURCE),
        OpenFor::Addr(a) => {
            if !is_valid_open_address(&a) {
                return Err(MalformedReason::BadAddress);
            }
            match a {
                IpAddr::V4(v4) => {
                    out.push(ADDR_V4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(ADDR_V6);
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
    }
    Ok(())
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedReason> {
        let end = self.pos.checked_add(n).ok_or(MalformedReason::Truncated)?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(MalformedReason::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<&'a [u8; N], MalformedReason> {
        self.take(N)?
            .try_into()
            .map_err(|_| MalformedReason::Truncated)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MalformedReason> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MalformedReason> {
        Ok(u16::from_be_bytes(*self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MalformedReason> {
        Ok(u32::from_be_bytes(*self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MalformedReason> {
        Ok(u64::from_be_bytes(*self.array()?))
    }

    /// An address field (kind byte and address). `allow_source` is false in
    /// orders (SPEC §5.1).
    pub(crate) fn open_for(&mut self, allow_source: bool) -> Result<OpenFor, MalformedReason> {
        let kind = self.u8()?;
        let addr = match kind {
            ADDR_SOURCE if allow_source => return Ok(OpenFor::Source),
            ADDR_V4 => IpAddr::V4(Ipv4Addr::from(*self.array::<4>()?)),
            ADDR_V6 => IpAddr::V6(Ipv6Addr::from(*self.array::<16>()?)),
            _ => return Err(MalformedReason::BadAddressKind),
        };
        if !is_valid_open_address(&addr) {
            return Err(MalformedReason::BadAddress);
        }
        Ok(OpenFor::Addr(addr))
    }
}

/// Parses a knock body. SPEC §4.1, §4.2. Refuses the order type.
pub fn parse_body(raw: &[u8]) -> Result<ParsedBody<'_>, MalformedReason> {
    if raw.len() < MIN_BODY || raw.len() > MAX_CLIENT_BODY {
        // Only a client body inside an order can have another length; the
        // knock framing already bounds it (SPEC §3.2, §5.1).
        return Err(MalformedReason::BadBodyLength);
    }
    let mut r = Reader::new(raw);
    let msg_type = MessageType::from_byte(r.u8()?)
        .filter(|t| *t != MessageType::Order)
        .ok_or(MalformedReason::UnknownMessageType)?;
    let timestamp_ms = r.u64()?;
    let nonce = *r.array::<NONCE_LEN>()?;
    let session_id = *r.array::<SESSION_ID_LEN>()?;
    let lifetime_s = r.u32()?;
    let open_for = r.open_for(true)?;
    let n = usize::from(r.u8()?);
    if n > MAX_SERVICES {
        return Err(MalformedReason::TooManyServices);
    }
    let mut services = ServiceList::default();
    for slot in services.names.iter_mut().take(n) {
        let len = usize::from(r.u8()?);
        let name = r.take(len)?;
        if !is_valid_service_name(name) {
            return Err(MalformedReason::BadServiceName);
        }
        // The charset check above guarantees ASCII.
        *slot = core::str::from_utf8(name).map_err(|_| MalformedReason::BadServiceName)?;
    }
    services.len = n;
    check_rules(msg_type, lifetime_s, n)?;
    let cert_len = usize::from(r.u16()?);
    if cert_len == 0 || cert_len + SIGNATURE_LEN > r.remaining() {
        return Err(if cert_len == 0 {
            MalformedReason::BadCertLength
        } else {
            MalformedReason::Truncated
        });
    }
    let certificate = r.take(cert_len)?;
    let signed_len = r.pos();
    let signature = r.array::<SIGNATURE_LEN>()?;
    if r.remaining() != 0 {
        return Err(MalformedReason::TrailingBytes);
    }
    Ok(ParsedBody {
        msg_type,
        timestamp_ms,
        nonce,
        session_id,
        lifetime_s,
        open_for,
        services,
        certificate,
        signature,
        signed_part: &raw[..signed_len],
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(services: &'a [&'a str], cert: &'a [u8]) -> BodyFields<'a> {
        BodyFields {
            msg_type: MessageType::RequestService,
            timestamp_ms: 1_700_000_000_000,
            nonce: [1; 16],
            session_id: [2; 16],
            lifetime_s: 30,
            open_for: OpenFor::Addr("10.200.0.2".parse().expect("ip")),
            services,
            certificate: cert,
        }
    }

    fn full(f: &BodyFields<'_>) -> Vec<u8> {
        let mut b = encode_signed_part(f).expect("encode");
        b.extend_from_slice(&[7u8; 64]);
        b
    }

    #[test]
    fn round_trips() {
        let cert = [0x30u8; 300];
        let f = fields(&["ssh", "web.1"], &cert);
        let raw = full(&f);
        let p = parse_body(&raw).expect("parse");
        assert_eq!(p.msg_type, f.msg_type);
        assert_eq!(p.timestamp_ms, f.timestamp_ms);
        assert_eq!(p.services.as_slice(), &["ssh", "web.1"]);
        assert_eq!(p.certificate, &cert[..]);
        assert_eq!(p.signed_part.len(), raw.len() - 64);
        assert_eq!(p.open_for, f.open_for);
    }

    #[test]
    fn minimum_body_is_114_bytes() {
        let f = BodyFields {
            msg_type: MessageType::Close,
            lifetime_s: 0,
            open_for: OpenFor::Source,
            services: &[],
            certificate: &[0x30],
            ..fields(&[], &[])
        };
        let raw = full(&f);
        assert_eq!(raw.len(), MIN_BODY);
        assert!(parse_body(&raw).is_ok());
    }

    #[test]
    fn rejects_trailing_and_truncated() {
        let cert = [0x30u8; 200];
        let mut raw = full(&fields(&["ssh"], &cert));
        raw.push(0);
        assert_eq!(parse_body(&raw).err(), Some(MalformedReason::TrailingBytes));
        raw.truncate(raw.len() - 2);
        assert_eq!(parse_body(&raw).err(), Some(MalformedReason::Truncated));
    }

    #[test]
    fn rejects_bad_service_names_and_types() {
        let cert = [0x30u8; 200];
        for bad in ["", "SSH", "-x", "a b", "é"] {
            let f = fields(&["ssh"], &cert);
            let mut raw = full(&f);
            // Patch the name in place: rebuild with a raw name.
            let pos = 1 + 8 + 16 + 16 + 4 + 5 + 1;
            raw.splice(
                pos..pos + 4,
                [&[bad.len() as u8][..], bad.as_bytes()].concat(),
            );
            assert!(parse_body(&raw).is_err(), "{bad:?}");
        }
        let mut raw = full(&fields(&["ssh"], &cert));
        raw[0] = 0x04;
        assert_eq!(
            parse_body(&raw).err(),
            Some(MalformedReason::UnknownMessageType)
        );
        raw[0] = 0x09;
        assert_eq!(
            parse_body(&raw).err(),
            Some(MalformedReason::UnknownMessageType)
        );
    }

    #[test]
    fn enforces_type_rules() {
        let cert = [0x30u8; 200];
        let mut f = fields(&[], &cert);
        assert_eq!(
            encode_signed_part(&f).err(),
            Some(EncodeError::Invalid(MalformedReason::FieldNotAllowed))
        );
        f.services = &["ssh"];
        f.lifetime_s = MAX_LIFETIME_S + 1;
        assert_eq!(
            encode_signed_part(&f).err(),
            Some(EncodeError::Invalid(MalformedReason::BadLifetime))
        );
        f.msg_type = MessageType::Close;
        assert_eq!(
            encode_signed_part(&f).err(),
            Some(EncodeError::Invalid(MalformedReason::FieldNotAllowed))
        );
    }

    #[test]
    fn rejects_unopenable_addresses() {
        for a in [
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            let f = BodyFields {
                open_for: OpenFor::Addr(a.parse().expect("ip")),
                ..fields(&["ssh"], &[0x30; 10])
            };
            assert_eq!(
                encode_signed_part(&f).err(),
                Some(EncodeError::Invalid(MalformedReason::BadAddress)),
                "{a}"
            );
        }
    }
}
