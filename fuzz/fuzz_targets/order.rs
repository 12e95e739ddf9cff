//! `parse_order` on arbitrary bytes (and `parse_body` on the client body it
//! carries), then the same bytes as a datagram to red's order verifier.
//! Must refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto_spec::body::parse_body;
use proto_spec::order::{OrderFields, encode_order_signed_part, parse_order};

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = parse_order(data) {
        let _ = parse_body(o.client_body);
        // Whatever parses re-encodes to the same signed part.
        let fields = OrderFields {
            order_timestamp_ms: o.order_timestamp_ms,
            session_id: o.session_id,
            lifetime_s: o.lifetime_s,
            open_for: o.open_for,
            client_body: o.client_body,
        };
        match encode_order_signed_part(&fields, o.gateway_key) {
            Ok(signed) => assert_eq!(
                signed.as_slice(),
                o.signed_part,
                "order does not round-trip"
            ),
            Err(e) => panic!("parse_order accepted an order the encoder refuses: {e:?}"),
        }
    }
    let _ = spa_fuzz::verify_order(data);
});
