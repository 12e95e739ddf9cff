//! Property tests: encode/parse round trips, the replay floor never goes
//! back, and arbitrary bytes never panic anywhere in the verifiers.

mod common;

use common::*;
use proptest::prelude::*;
use proto_spec::body::{BodyFields, MessageType, OpenFor, encode_signed_part, parse_body};
use proto_spec::cert::IdentityKey;
use proto_spec::order::{OrderFields, encode_order_signed_part, parse_order};
use proto_spec::replay::{FloorRule, MemoryReplayState, ReplayState};
use proto_spec::seal::seal_plaintext;
use proto_spec::wire::DatagramKind;
use std::net::IpAddr;

fn service_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,31}"
}

fn addr() -> impl Strategy<Value = OpenFor> {
    prop_oneof![
        Just(OpenFor::Source),
        any::<[u8; 4]>()
            .prop_filter("openable", |a| a[0] != 0 && a[0] < 224)
            .prop_map(|a| OpenFor::Addr(IpAddr::from(a))),
        any::<[u8; 16]>()
            .prop_filter("openable", |a| a[0] == 0xfd)
            .prop_map(|a| OpenFor::Addr(IpAddr::from(a))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn body_round_trips(
        kind in 0u8..3,
        ts in any::<u64>(),
        nonce in any::<[u8; 16]>(),
        session in any::<[u8; 16]>(),
        lifetime in 1u32..=86_400,
        open_for in addr(),
        services in prop::collection::vec(service_name(), 1..=8),
        cert in prop::collection::vec(any::<u8>(), 1..600),
        sig in any::<[u8; 32]>(),
    ) {
        let msg_type = [MessageType::OpenTunnel, MessageType::RequestService, MessageType::Close][kind as usize];
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        let (lifetime_s, names): (u32, &[&str]) = if msg_type == MessageType::Close { (0, &[]) } else { (lifetime, &names) };
        let f = BodyFields { msg_type, timestamp_ms: ts, nonce, session_id: session, lifetime_s, open_for, services: names, certificate: &cert };
        match encode_signed_part(&f) {
            Ok(mut raw) => {
                raw.extend_from_slice(&sig);
                raw.extend_from_slice(&sig);
                let p = parse_body(&raw).expect("an encoded body parses");
                prop_assert_eq!(p.msg_type, msg_type);
                prop_assert_eq!(p.timestamp_ms, ts);
                prop_assert_eq!(p.nonce, nonce);
                prop_assert_eq!(p.session_id, session);
                prop_assert_eq!(p.lifetime_s, lifetime_s);
                prop_assert_eq!(p.open_for, open_for);
                prop_assert_eq!(p.services.as_slice(), names);
                prop_assert_eq!(p.certificate, &cert[..]);
                prop_assert_eq!(p.signed_part.len(), raw.len() - 64);
            }
            Err(proto_spec::body::EncodeError::TooLarge(n)) => prop_assert!(n > proto_spec::wire::MAX_CLIENT_BODY),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn order_round_trips(
        ts in any::<u64>(),
        session in any::<[u8; 16]>(),
        lifetime in 0u32..=86_400,
        body in prop::collection::vec(any::<u8>(), 114..=1023),
        gw in any::<[u8; 32]>(),
        v6 in any::<bool>(),
    ) {
        let open_for: IpAddr = if v6 { "fd00::1".parse().expect("ip") } else { "10.200.0.1".parse().expect("ip") };
        let f = OrderFields { order_timestamp_ms: ts, session_id: session, lifetime_s: lifetime, open_for, client_body: &body };
        let mut raw = encode_order_signed_part(&f, &gw).expect("encode");
        raw.extend_from_slice(&[0xab; 64]);
        let p = parse_order(&raw).expect("parse");
        prop_assert_eq!(p.order_timestamp_ms, ts);
        prop_assert_eq!(p.client_body, &body[..]);
        prop_assert_eq!(p.gateway_key, &gw);
        prop_assert_eq!(p.open_for, open_for);
    }

    #[test]
    fn replay_floor_never_goes_back(ops in prop::collection::vec((0u8..4, any::<u64>()), 1..200)) {
        let mut s = MemoryReplayState::default();
        let mut high = [None::<u64>; 4];
        for (who, ts) in ops {
            let id = IdentityKey([who; 32]);
            let before = s.floor(&id);
            let accepted = FloorRule::Strict.passes(ts, before);
            if accepted {
                s.commit(&id, ts).expect("memory store");
                high[who as usize] = Some(high[who as usize].map_or(ts, |h: u64| h.max(ts)));
            }
            let after = s.floor(&id);
            prop_assert!(after >= before, "floor went back");
            prop_assert_eq!(after, high[who as usize]);
            // A timestamp at or under the floor is never accepted again.
            prop_assert!(!FloorRule::Strict.passes(ts.min(after.unwrap_or(0)), after) || after.is_none());
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1300)) {
        let _ = parse_body(&bytes);
        let _ = parse_order(&bytes);
        let _ = proto_spec::cert::parse_client_cert(&bytes);
    }
}

#[test]
fn verifiers_never_panic_on_arbitrary_bytes_or_sealed_garbage() {
    let w = World::new();
    let state = std::cell::RefCell::new((w.green(), w.red(), MemoryReplayState::default()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(prop::collection::vec(any::<u8>(), 0..1300), any::<bool>()),
            |(bytes, sealed)| {
                let mut guard = state.borrow_mut();
                let (green, red, replay) = &mut *guard;
                let dg = if sealed {
                    // Past the MAC and AEAD: exercises the parsers and
                    // certificate code on garbage plaintexts.
                    seal_plaintext(
                        DatagramKind::Knock,
                        &w.green_key.public_key(),
                        &bytes,
                        [7; 32],
                    )
                    .expect("seal")
                } else {
                    bytes.clone()
                };
                prop_assert!(green.verify(&dg, ip(CLIENT_IP), NOW, replay).is_err());
                let dg = if sealed {
                    seal_plaintext(
                        DatagramKind::Order,
                        &w.red_key.public_key(),
                        &bytes,
                        [7; 32],
                    )
                    .expect("seal")
                } else {
                    bytes
                };
                prop_assert!(red.verify(&dg, ip(GREEN_IP), NOW, replay).is_err());
                Ok(())
            },
        )
        .expect("no panic, always refused");
}
