//! Green's knock verifier on arbitrary bytes as the datagram: framing, the
//! pre-check MAC and HPKE open, and everything past them for the (seeded)
//! inputs that keep a valid MAC. Must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spa_fuzz::verify_knock(data);
});
