//! HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305, single shot. SPEC §3.4, §3.5.
//!
//! Sealing goes through the `hpke` crate. Opening is written here by hand,
//! and this is why: `hpke`'s receiver recomputes the recipient's public key
//! from its private key on every decapsulation (one extra X25519 base-point
//! multiplication, about 20 us, a fifth of the whole verification budget), and
//! re-derives `psk_id_hash` and `info_hash`, which are constants per receiver.
//! `Opener` keeps those values from load time and does exactly the RFC 9180
//! steps otherwise. Tests below check it against the `hpke` crate in both
//! directions.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::{Hkdf, HkdfExtract};
use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as _, OpModeS, Serializable};
use sha2::Sha256;
use x25519_dalek::PublicKey;
use zeroize::{Zeroize, Zeroizing};

use crate::Refusal;
use crate::keys::{ReceiverPublicKey, ReceiverSecretKey};
use crate::wire::{DatagramKind, ENC_LEN};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type AeadAlg = hpke::aead::ChaCha20Poly1305;

/// RFC 9180 §7.1: KEM id for DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// RFC 9180 §7.2: KDF id for HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// RFC 9180 §7.3: AEAD id for ChaCha20-Poly1305.
pub const AEAD_ID: u16 = 0x0003;

const KEM_SUITE_ID: [u8; 5] = [b'K', b'E', b'M', 0x00, 0x20];
const HPKE_SUITE_ID: [u8; 10] = [b'H', b'P', b'K', b'E', 0x00, 0x20, 0x00, 0x01, 0x00, 0x03];

/// An RNG that hands out exactly the 32 bytes of `ikmE` the caller supplied,
/// so that the ephemeral key is `DeriveKeyPair(ikmE)` (SPEC §3.5) and sealing
/// is deterministic for test vectors. `hpke` draws exactly 32 bytes for an
/// X25519 key pair; any further draw yields zeros and is caught by
/// `seal_deterministic_matches_derive_keypair` below.
struct IkmRng {
    ikm: [u8; 32],
    used: usize,
}

impl TryRng for IkmRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for d in dest.iter_mut() {
            *d = self.ikm.get(self.used).copied().unwrap_or(0);
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for IkmRng {}

impl Drop for IkmRng {
    fn drop(&mut self) {
        self.ikm.zeroize();
    }
}

/// Why sealing failed (only on invalid receiver keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The receiver public key is not a usable X25519 key (for example, a
    /// low-order point giving an all-zero shared secret).
    #[error("the receiver public key is not a valid X25519 key")]
    BadReceiverKey,
}

/// Single-shot seal (SPEC §3.4). Returns `(enc, ciphertext)`.
pub fn seal(
    kind: DatagramKind,
    receiver: &ReceiverPublicKey,
    aad: &[u8],
    plaintext: &[u8],
    ikm_e: [u8; 32],
) -> Result<([u8; ENC_LEN], Vec<u8>), SealError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(receiver.as_bytes())
        .map_err(|_| SealError::BadReceiverKey)?;
    let mut rng = IkmRng {
        ikm: ikm_e,
        used: 0,
    };
    let (enc, ct) = hpke::single_shot_seal_with_rng::<AeadAlg, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        kind.hpke_info(),
        plaintext,
        aad,
        &mut rng,
    )
    .map_err(|_| SealError::BadReceiverKey)?;
    let mut out = [0u8; ENC_LEN];
    out.copy_from_slice(&enc.to_bytes());
    Ok((out, ct))
}

/// The ephemeral public key `DeriveKeyPair(ikmE)` gives (SPEC §3.5).
pub fn ephemeral_public(ikm_e: &[u8; 32]) -> [u8; ENC_LEN] {
    let (_sk, pk) = Kem::derive_keypair(ikm_e);
    let mut out = [0u8; ENC_LEN];
    out.copy_from_slice(&pk.to_bytes());
    out
}

/// The receiver side for one static key and one datagram kind, with every
/// per-key constant computed once. SPEC §3.4.
pub(crate) struct Opener {
    pk_r: [u8; 32],
    psk_id_hash: [u8; 32],
    info_hash: [u8; 32],
}

impl Opener {
    pub(crate) fn new(kind: DatagramKind, key: &ReceiverSecretKey) -> Self {
        Self::with_info(kind.hpke_info(), key)
    }

    /// For any `info` (the RFC 9180 test vectors use their own).
    fn with_info(info: &[u8], key: &ReceiverSecretKey) -> Self {
        Self {
            pk_r: key.public_key().0,
            psk_id_hash: labeled_extract(&[], &HPKE_SUITE_ID, b"psk_id_hash", &[&[]]),
            info_hash: labeled_extract(&[], &HPKE_SUITE_ID, b"info_hash", &[info]),
        }
    }

    /// RFC 9180 §5.1.1 SetupBaseR followed by a single Open with sequence
    /// number 0.
    pub(crate) fn open(
        &self,
        key: &ReceiverSecretKey,
        enc: &[u8; ENC_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        // Decap (RFC 9180 §4.1): dh = DH(skR, pkE); refuse the all-zero
        // output (§7.1.4).
        let dh = key.secret().diffie_hellman(&PublicKey::from(*enc));
        if !dh.was_contributory() {
            return Err(Refusal::OpenFailed);
        }
        let eae_prk = Zeroizing::new(labeled_extract(
            &[],
            &KEM_SUITE_ID,
            b"eae_prk",
            &[dh.as_bytes()],
        ));
        let mut shared_secret = Zeroizing::new([0u8; 32]);
        labeled_expand(
            &eae_prk[..],
            &KEM_SUITE_ID,
            b"shared_secret",
            &[enc, &self.pk_r],
            &mut shared_secret[..],
        )?;

        // KeySchedule (RFC 9180 §5.1), mode_base, empty psk.
        let secret = Zeroizing::new(labeled_extract(
            &shared_secret[..],
            &HPKE_SUITE_ID,
            b"secret",
            &[&[]],
        ));
        let ks_context: [&[u8]; 3] = [&[0x00], &self.psk_id_hash, &self.info_hash];
        let mut aead_key = Zeroizing::new([0u8; 32]);
        labeled_expand(
            &secret[..],
            &HPKE_SUITE_ID,
            b"key",
            &ks_context,
            &mut aead_key[..],
        )?;
        let mut base_nonce = [0u8; 12];
        labeled_expand(
            &secret[..],
            &HPKE_SUITE_ID,
            b"base_nonce",
            &ks_context,
            &mut base_nonce,
        )?;

        // Sequence number 0: the nonce is base_nonce itself.
        let cipher =
            ChaCha20Poly1305::new_from_slice(&aead_key[..]).map_err(|_| Refusal::OpenFailed)?;
        let plaintext = cipher
            .decrypt(
                (&base_nonce).into(),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Refusal::OpenFailed)?;
        Ok(Zeroizing::new(plaintext))
    }
}

/// RFC 9180 §4: `LabeledExtract(salt, label, ikm) =
/// Extract(salt, "HPKE-v1" || suite_id || label || ikm)`.
fn labeled_extract(salt: &[u8], suite_id: &[u8], label: &[u8], ikm: &[&[u8]]) -> [u8; 32] {
    let mut ex = HkdfExtract::<Sha256>::new(Some(salt));
    ex.input_ikm(b"HPKE-v1");
    ex.input_ikm(suite_id);
    ex.input_ikm(label);
    for part in ikm {
        ex.input_ikm(part);
    }
    let (prk, _) = ex.finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&prk);
    out
}

/// RFC 9180 §4: `LabeledExpand(prk, label, info, L) =
/// Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)`.
fn labeled_expand(
    prk: &[u8],
    suite_id: &[u8],
    label: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), Refusal> {
    let hk = Hkdf::<Sha256>::from_prk(prk).map_err(|_| Refusal::OpenFailed)?;
    let len = u16::try_from(out.len())
        .map_err(|_| Refusal::OpenFailed)?
        .to_be_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(4 + info.len());
    parts.push(&len);
    parts.push(b"HPKE-v1");
    parts.push(suite_id);
    parts.push(label);
    parts.extend_from_slice(info);
    hk.expand_multi_info(&parts, out)
        .map_err(|_| Refusal::OpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::{OpModeR, single_shot_open};

    fn receiver(seed: u8) -> ReceiverSecretKey {
        ReceiverSecretKey::from_bytes([seed; 32])
    }

    #[test]
    fn hand_written_open_reads_what_hpke_crate_seals() {
        for seed in 1..20u8 {
            let r = receiver(seed);
            let msg = vec![seed; 100 + seed as usize];
            let (enc, ct) = seal(
                DatagramKind::Knock,
                &r.public_key(),
                b"\x01",
                &msg,
                [seed ^ 0x5a; 32],
            )
            .expect("seal");
            let opener = Opener::new(DatagramKind::Knock, &r);
            let pt = opener.open(&r, &enc, b"\x01", &ct).expect("open");
            assert_eq!(&pt[..], &msg[..]);
            // Wrong kind (info) fails.
            let other = Opener::new(DatagramKind::Order, &r);
            assert_eq!(
                other.open(&r, &enc, b"\x01", &ct).err(),
                Some(Refusal::OpenFailed)
            );
            // Wrong aad fails.
            assert_eq!(
                opener.open(&r, &enc, b"\x02", &ct).err(),
                Some(Refusal::OpenFailed)
            );
        }
    }

    #[test]
    fn hpke_crate_opens_what_we_seal_deterministically() {
        let r = receiver(7);
        let (enc, ct) = seal(
            DatagramKind::Order,
            &r.public_key(),
            b"\x01",
            b"hello",
            [9; 32],
        )
        .expect("seal");
        let (enc2, ct2) = seal(
            DatagramKind::Order,
            &r.public_key(),
            b"\x01",
            b"hello",
            [9; 32],
        )
        .expect("seal");
        assert_eq!((enc, &ct), (enc2, &ct2), "sealing is deterministic in ikmE");
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&r.to_bytes()[..]).expect("sk");
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc).expect("enc");
        let pt = single_shot_open::<AeadAlg, Kdf, Kem>(
            &OpModeR::Base,
            &sk,
            &encapped,
            DatagramKind::Order.hpke_info(),
            &ct,
            b"\x01",
        )
        .expect("open");
        assert_eq!(pt, b"hello");
    }

    #[test]
    fn seal_deterministic_matches_derive_keypair() {
        let r = receiver(3);
        let ikm = [0x42; 32];
        let (enc, _) =
            seal(DatagramKind::Knock, &r.public_key(), b"\x01", b"x", ikm).expect("seal");
        assert_eq!(enc, ephemeral_public(&ikm));
    }

    /// RFC 9180 Appendix A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305, base mode, typed in from the RFC: an anchor that
    /// the spa vectors (made by this code) cannot give.
    #[test]
    fn hand_written_open_passes_rfc9180_a21_base_vector() {
        let h = |s: &str| hex::decode(s).expect("hex");
        let ikm_e: [u8; 32] = h("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b")
            .try_into()
            .expect("32");
        let sk_r: [u8; 32] = h("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb")
            .try_into()
            .expect("32");
        let pk_r = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a";
        let enc = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a";
        let info = h("4f6465206f6e2061204772656369616e2055726e"); // "Ode on a Grecian Urn"
        // Sequence number 0: aad "Count-0", plaintext "Beauty is truth, truth beauty".
        let aad = h("436f756e742d30");
        let pt = h("4265617574792069732074727574682c20747275746820626561757479");
        let ct = h(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db\
                    21993c62ce81883d2dd1b51a28",
        );

        let r = ReceiverSecretKey::from_bytes(sk_r);
        assert_eq!(hex::encode(r.public_key().0), pk_r, "pkRm");
        assert_eq!(
            hex::encode(ephemeral_public(&ikm_e)),
            enc,
            "DeriveKeyPair(ikmE)"
        );
        let enc: [u8; 32] = h(enc).try_into().expect("32");
        let opener = Opener::with_info(&info, &r);
        let got = opener.open(&r, &enc, &aad, &ct).expect("open");
        assert_eq!(&got[..], &pt[..]);
        let mut bad = ct.clone();
        bad[0] ^= 0x01;
        assert_eq!(
            opener.open(&r, &enc, &aad, &bad).err(),
            Some(Refusal::OpenFailed)
        );
    }

    #[test]
    fn refuses_low_order_ephemeral() {
        let r = receiver(5);
        let opener = Opener::new(DatagramKind::Knock, &r);
        // The all-zero u-coordinate is a low-order point: DH output is zero.
        assert_eq!(
            opener.open(&r, &[0u8; 32], b"\x01", &[0u8; 40]).err(),
            Some(Refusal::OpenFailed)
        );
    }
}
