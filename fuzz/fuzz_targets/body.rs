//! `parse_body` on arbitrary bytes. Whatever parses must re-encode, through
//! the client's encoder, to exactly the same bytes: the parser accepts
//! nothing the encoder would not produce.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_spec::body::{BodyFields, encode_signed_part, parse_body};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = parse_body(data) else {
        return;
    };
    assert_eq!(p.raw, data);
    let services = p.services.as_slice();
    assert_eq!(services.len(), p.services.len());
    let fields = BodyFields {
        msg_type: p.msg_type,
        timestamp_ms: p.timestamp_ms,
        nonce: p.nonce,
        session_id: p.session_id,
        lifetime_s: p.lifetime_s,
        open_for: p.open_for,
        services,
        certificate: p.certificate,
    };
    let signed = match encode_signed_part(&fields) {
        Ok(s) => s,
        Err(e) => panic!("parse_body accepted a body encode_signed_part refuses: {e:?}"),
    };
    assert_eq!(signed.as_slice(), p.signed_part, "signed part differs");
    let mut full = signed;
    full.extend_from_slice(p.signature);
    assert_eq!(full.as_slice(), data, "body does not round-trip");
    // The certificate parser sees whatever the body carries.
    let _ = proto_spec::cert::parse_client_cert(p.certificate);
});
