//! Receiver static keys (SPEC §2.1) and the per-key material derived from
//! them once, at load time, so the per-datagram path does no key derivation.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use crate::wire::{DatagramKind, MAC_LEN};

/// An X25519 receiver public key (green's or red's), 32 bytes. SPEC §2.1.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiverPublicKey(pub [u8; 32]);

impl core::fmt::Debug for ReceiverPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ReceiverPublicKey(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl ReceiverPublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// An X25519 receiver private key. Zeroized on drop (the inner
/// `StaticSecret` zeroizes itself).
pub struct ReceiverSecretKey {
    secret: StaticSecret,
    public: ReceiverPublicKey,
}

impl core::fmt::Debug for ReceiverSecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReceiverSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ReceiverSecretKey {
    /// Builds a key from its 32 private bytes (clamped as X25519 requires).
    /// The caller's copy is left for the caller to zeroize.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut bytes = bytes;
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        let public = ReceiverPublicKey(PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// Derives a key pair from 32 random bytes supplied by the caller.
    pub fn from_random(random: [u8; 32]) -> Self {
        Self::from_bytes(random)
    }

    /// The matching public key.
    pub fn public_key(&self) -> ReceiverPublicKey {
        self.public
    }

    /// The private bytes, for writing a key file. Zeroize the result.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// SPEC §3.3: `mac_key = SHA-256(label || pkR)`.
pub fn mac_key(kind: DatagramKind, receiver: &ReceiverPublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind.mac_label());
    h.update(receiver.0);
    h.finalize().into()
}

/// A keyed HMAC-SHA256 state for one receiver key, cloned per datagram so the
/// key schedule of HMAC is not recomputed. SPEC §3.3.
#[derive(Clone)]
pub(crate) struct MacKey {
    keyed: Hmac<Sha256>,
}

impl MacKey {
    pub(crate) fn new(kind: DatagramKind, receiver: &ReceiverPublicKey) -> Self {
        let mut k = mac_key(kind, receiver);
        // HMAC accepts keys of any length, so this cannot fail; a failure
        // would be a bug in the hmac crate, and we fall back to an all-zero
        // key state rather than panic.
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&k)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        k.zeroize();
        Self { keyed }
    }

    /// The 16-byte truncated tag over `covered`.
    pub(crate) fn tag(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(covered);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}
