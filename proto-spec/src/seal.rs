//! Building datagrams: the client's knock and green's order. SPEC §3-§5.
//!
//! Pure: the caller passes the time, the nonce, the session id and the 32
//! bytes of ephemeral key material.

use crate::body::{BodyFields, EncodeError, MessageType, NONCE_LEN, OpenFor, SESSION_ID_LEN};
use crate::hpke_suite::{self, SealError};
use crate::keys::{MacKey, ReceiverPublicKey};
use crate::order::{OrderEncodeError, OrderFields, encode_order_signed_part};
use crate::sign::{
    GatewaySigner, KNOCK_SIGNATURE_CONTEXT, ORDER_SIGNATURE_CONTEXT, Signer, SignerError,
    transcript,
};
use crate::wire::{DatagramKind, VERSION};

/// What the client asks for in one knock. SPEC §4.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnockRequest<'a> {
    /// Open-tunnel, request-service or close.
    pub msg_type: MessageType,
    /// ms since the Unix epoch; strictly increasing per client (SPEC §7.5).
    pub timestamp_ms: u64,
    /// 16 fresh random bytes.
    pub nonce: [u8; NONCE_LEN],
    /// Fresh for open-tunnel; the open's for request and close.
    pub session_id: [u8; SESSION_ID_LEN],
    /// Seconds; 0 for close.
    pub lifetime_s: u32,
    /// Where to open.
    pub open_for: OpenFor,
    /// Service names; empty for close.
    pub services: &'a [&'a str],
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealKnockError {
    /// The body breaks a rule, or is too large.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The order breaks a rule.
    #[error(transparent)]
    Order(#[from] OrderEncodeError),
    /// The signer failed (token error, PIN, …).
    #[error("signing failed: {0}")]
    Signer(#[from] SignerError),
    /// The receiver key is unusable.
    #[error(transparent)]
    Hpke(#[from] SealError),
}

/// Seals a knock to `receiver`. SPEC §3, §4. `ikm_e` must be 32 fresh random
/// bytes (SPEC §3.5).
pub fn seal_knock(
    signer: &dyn Signer,
    receiver: &ReceiverPublicKey,
    req: &KnockRequest<'_>,
    ikm_e: [u8; 32],
) -> Result<Vec<u8>, SealKnockError> {
    let fields = BodyFields {
        msg_type: req.msg_type,
        timestamp_ms: req.timestamp_ms,
        nonce: req.nonce,
        session_id: req.session_id,
        lifetime_s: req.lifetime_s,
        open_for: req.open_for,
        services: req.services,
        certificate: signer.certificate_der(),
    };
    let mut body = crate::body::encode_signed_part(&fields)?;
    let sig = signer.sign(&transcript(KNOCK_SIGNATURE_CONTEXT, receiver, &body))?;
    body.extend_from_slice(&sig);
    Ok(frame_and_seal(DatagramKind::Knock, receiver, &body, ikm_e)?)
}

/// Seals an order to red. SPEC §3, §5.
pub fn seal_order(
    gateway: &GatewaySigner,
    red: &ReceiverPublicKey,
    fields: &OrderFields<'_>,
    ikm_e: [u8; 32],
) -> Result<Vec<u8>, SealKnockError> {
    let mut body = encode_order_signed_part(fields, &gateway.public_key())?;
    let sig = gateway.sign(&transcript(ORDER_SIGNATURE_CONTEXT, red, &body));
    body.extend_from_slice(&sig);
    Ok(frame_and_seal(DatagramKind::Order, red, &body, ikm_e)?)
}

/// Seals an arbitrary plaintext with the datagram framing of `kind`:
/// `header || enc || ct || mac`. SPEC §3.1, §3.3. It does not check the
/// plaintext: it exists for test vectors and fuzzing, which need datagrams
/// that pass the MAC and AEAD but carry malformed bodies.
pub fn seal_plaintext(
    kind: DatagramKind,
    receiver: &ReceiverPublicKey,
    plaintext: &[u8],
    ikm_e: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    frame_and_seal(kind, receiver, plaintext, ikm_e)
}

/// The pre-check MAC of `covered` (everything before the MAC). SPEC §3.3.
pub fn precheck_mac(
    kind: DatagramKind,
    receiver: &ReceiverPublicKey,
    covered: &[u8],
) -> [u8; crate::wire::MAC_LEN] {
    MacKey::new(kind, receiver).tag(covered)
}

/// `header || enc || ct || mac`. SPEC §3.1, §3.3.
fn frame_and_seal(
    kind: DatagramKind,
    receiver: &ReceiverPublicKey,
    plaintext: &[u8],
    ikm_e: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    let header = [VERSION];
    let (enc, ct) = hpke_suite::seal(kind, receiver, &header, plaintext, ikm_e)?;
    let mut out = Vec::with_capacity(crate::wire::OVERHEAD + plaintext.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    let mac = MacKey::new(kind, receiver).tag(&out);
    out.extend_from_slice(&mac);
    Ok(out)
}
