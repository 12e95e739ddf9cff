//! The whole knock verifier past the MAC and HPKE: the input is a *plaintext
//! body*, sealed to green's key with the crate's own framing (so the MAC and
//! the AEAD are valid) and then verified. This reaches body parsing,
//! freshness, the replay floor, certificate parsing and chain validation,
//! signatures, the address rules and the policy. Must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_spec::Refusal;

fuzz_target!(|data: &[u8]| {
    let Some(datagram) = spa_fuzz::seal_knock_plaintext(data) else {
        return;
    };
    let r = spa_fuzz::verify_knock(&datagram);
    // The framing above is right: nothing may fail before the plaintext.
    assert!(
        !matches!(
            r,
            Err(Refusal::MacMismatch | Refusal::OpenFailed | Refusal::BadVersion)
        ),
        "sealed plaintext refused at the outer layer: {r:?}"
    );
});
