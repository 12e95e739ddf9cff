//! Refusal reasons: one precise variant per reason a datagram is refused.
//! SPEC §8.3. Refusals never go on the wire: callers log and count them.

use core::fmt;

/// Why a knock or an order was refused. SPEC §8.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// Shorter than the minimum datagram for its kind (SPEC §3.2).
    TooShort,
    /// Longer than the maximum datagram for its kind (SPEC §3.2).
    TooLong,
    /// Unknown version byte (SPEC §3.6, §11).
    BadVersion,
    /// The pre-check MAC matches none of the receiver's keys (SPEC §3.3).
    MacMismatch,
    /// HPKE decapsulation or AEAD open failed (SPEC §3.4).
    OpenFailed,
    /// The plaintext does not parse (SPEC §4.1, §5.1).
    Malformed(MalformedReason),
    /// A message type not allowed at this receiver (SPEC §4.1, §5.2).
    WrongMessageType,
    /// Timestamp older than the maximum age (SPEC §7.1).
    Stale,
    /// Timestamp further in the future than the maximum skew (SPEC §7.1).
    FutureDated,
    /// Timestamp not above the identity's replay floor (SPEC §7.2).
    Replayed,
    /// The client certificate failed validation (SPEC §6.1).
    Certificate(CertificateError),
    /// The client's signature does not verify (SPEC §4.4).
    BadSignature,
    /// The explicit address differs from the datagram's source (SPEC §4.3).
    WrongSourceAddress,
    /// "Datagram's source" mode is not allowed by policy (SPEC §4.3).
    SourceModeNotAllowed,
    /// No policy rule matches the identity (SPEC §6.4).
    UnknownIdentity,
    /// A requested service is not allowed for the identity (SPEC §6.4).
    UnauthorizedService,
    /// The order names a gateway key red does not know (SPEC §5.2).
    UnknownGateway,
    /// The gateway's signature on an order does not verify (SPEC §5.1).
    BadGatewaySignature,
    /// The order's session id differs from the client body's (SPEC §5.2).
    SessionMismatch,
    /// The replay state could not be committed durably (SPEC §7.3).
    StorageFailure,
}

/// Why a plaintext does not parse. SPEC §4.1, §4.2, §5.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MalformedReason {
    /// The plaintext ends inside a field.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// Unknown message type byte.
    UnknownMessageType,
    /// Unknown address kind byte.
    BadAddressKind,
    /// An address that can never be opened for (unspecified, multicast,
    /// broadcast, IPv4-mapped IPv6).
    BadAddress,
    /// A service name outside the allowed length or character set.
    BadServiceName,
    /// More than the maximum number of services.
    TooManyServices,
    /// A lifetime above the maximum.
    BadLifetime,
    /// A certificate length of zero or past the end of the body.
    BadCertLength,
    /// A body length outside 114..=1023 (a client body inside an order).
    BadBodyLength,
    /// A field that must be zero or empty for this message type is not, or
    /// one that must be present is missing.
    FieldNotAllowed,
}

/// Why a client certificate was refused. SPEC §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateError {
    /// The certificate is not valid DER X.509.
    BadDer,
    /// No path to a configured trust anchor.
    UnknownIssuer,
    /// `now` is after the certificate's (or an issuer's) notAfter.
    Expired,
    /// `now` is before the certificate's (or an issuer's) notBefore.
    NotYetValid,
    /// The certificate or an issuer is revoked by a configured CRL.
    Revoked,
    /// The certificate's extended key usage excludes client authentication.
    WrongUsage,
    /// A CRL needed for the decision is past its nextUpdate.
    CrlExpired,
    /// The certificate's key is neither Ed25519 nor ECDSA P-256.
    UnsupportedKey,
    /// Any other validation failure reported by the path builder.
    Other,
}

impl Refusal {
    /// A stable snake_case code for logs and counters (SPEC §8.3).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::TooLong => "too_long",
            Self::BadVersion => "bad_version",
            Self::MacMismatch => "mac_mismatch",
            Self::OpenFailed => "open_failed",
            Self::Malformed(_) => "malformed",
            Self::WrongMessageType => "wrong_message_type",
            Self::Stale => "stale",
            Self::FutureDated => "future_dated",
            Self::Replayed => "replayed",
            Self::Certificate(_) => "certificate",
            Self::BadSignature => "bad_signature",
            Self::WrongSourceAddress => "wrong_source_address",
            Self::SourceModeNotAllowed => "source_mode_not_allowed",
            Self::UnknownIdentity => "unknown_identity",
            Self::UnauthorizedService => "unauthorized_service",
            Self::UnknownGateway => "unknown_gateway",
            Self::BadGatewaySignature => "bad_gateway_signature",
            Self::SessionMismatch => "session_mismatch",
            Self::StorageFailure => "storage_failure",
        }
    }

    /// The sub-reason code, for `malformed` and `certificate`.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(m) => Some(m.code()),
            Self::Certificate(c) => Some(c.code()),
            _ => None,
        }
    }

    /// True for refusals decided before the pre-check MAC passed: the sender
    /// did not show knowledge of the receiver's public key (SPEC §9).
    pub fn is_pre_mac(&self) -> bool {
        matches!(
            self,
            Self::TooShort | Self::TooLong | Self::BadVersion | Self::MacMismatch
        )
    }
}

impl MalformedReason {
    /// A stable snake_case code (SPEC §8.3).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::UnknownMessageType => "unknown_message_type",
            Self::BadAddressKind => "bad_address_kind",
            Self::BadAddress => "bad_address",
            Self::BadServiceName => "bad_service_name",
            Self::TooManyServices => "too_many_services",
            Self::BadLifetime => "bad_lifetime",
            Self::BadCertLength => "bad_cert_length",
            Self::BadBodyLength => "bad_body_length",
            Self::FieldNotAllowed => "field_not_allowed",
        }
    }
}

impl CertificateError {
    /// A stable snake_case code (SPEC §8.3).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadDer => "bad_der",
            Self::UnknownIssuer => "unknown_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::WrongUsage => "wrong_usage",
            Self::CrlExpired => "crl_expired",
            Self::UnsupportedKey => "unsupported_key",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(d) => write!(f, "{}:{}", self.code(), d),
            None => f.write_str(self.code()),
        }
    }
}

impl core::error::Error for Refusal {}

impl From<MalformedReason> for Refusal {
    fn from(m: MalformedReason) -> Self {
        Self::Malformed(m)
    }
}

impl From<CertificateError> for Refusal {
    fn from(c: CertificateError) -> Self {
        Self::Certificate(c)
    }
}
