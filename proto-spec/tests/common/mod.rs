//! Shared fixtures for the integration tests: a test PKI, green and red keys,
//! a fake clock, and builders for knocks and orders.
#![allow(dead_code)]

use core::net::IpAddr;

use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::keys::ReceiverSecretKey;
use proto_spec::order::OrderFields;
use proto_spec::policy::Policy;
use proto_spec::replay::TimeLimits;
use proto_spec::seal::{KnockRequest, seal_knock, seal_order};
use proto_spec::sign::{GatewaySigner, Signer};
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use proto_spec::verify::{Gateway, KnockVerifier, OrderVerifier};

pub const NOW: u64 = testkit::VECTOR_NOW;
pub const CLIENT_IP: &str = "10.200.1.2";
pub const GREEN_IP: &str = "10.200.2.1";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip literal")
}

pub struct World {
    pub ca: TestCa,
    pub green_key: ReceiverSecretKey,
    pub red_key: ReceiverSecretKey,
    pub gateway: GatewaySigner,
}

impl World {
    pub fn new() -> Self {
        Self {
            ca: TestCa::new("spa test root").expect("ca"),
            green_key: testkit::receiver_key("green"),
            red_key: testkit::receiver_key("red"),
            gateway: testkit::gateway_signer("green signing"),
        }
    }

    pub fn trust(&self, crls: Vec<Vec<u8>>) -> TrustStore {
        TrustStore::new(&TrustConfig {
            anchors: vec![self.ca.cert_der().to_vec()],
            crls,
            ..TrustConfig::default()
        })
        .expect("trust")
    }

    pub fn policy() -> Policy {
        testkit::flow_policy()
    }

    pub fn green(&self) -> KnockVerifier {
        KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            self.trust(vec![]),
            Self::policy(),
            TimeLimits::default(),
        )
    }

    pub fn red(&self) -> OrderVerifier {
        OrderVerifier::new(
            vec![testkit::receiver_key("red")],
            vec![Gateway {
                signing_key: self.gateway.public_key(),
                receiver_keys: vec![self.green_key.public_key()],
            }],
            self.trust(vec![]),
            Self::policy(),
            TimeLimits::default(),
            TimeLimits::default(),
        )
        .expect("red")
    }

    pub fn signer(&self, cn: &str, alg: KeyAlg) -> Box<dyn Signer + Send + Sync> {
        self.ca
            .signer(&ClientCertSpec::new(cn, alg, serial_for(cn)))
            .expect("signer")
    }
}

pub fn serial_for(cn: &str) -> u64 {
    cn.bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
        & 0x7fff_ffff
}

pub fn request<'a>(msg_type: MessageType, ts: u64, services: &'a [&'a str]) -> KnockRequest<'a> {
    let (lifetime_s, services): (u32, &[&str]) = match msg_type {
        MessageType::Close => (0, &[]),
        _ => (30, services),
    };
    KnockRequest {
        msg_type,
        timestamp_ms: ts,
        nonce: [0x11; 16],
        session_id: [0x22; 16],
        lifetime_s,
        open_for: OpenFor::Addr(ip(CLIENT_IP)),
        services,
    }
}

pub fn knock(w: &World, signer: &dyn Signer, req: &KnockRequest<'_>) -> Vec<u8> {
    seal_knock(signer, &w.green_key.public_key(), req, [0x33; 32]).expect("seal knock")
}

pub fn order(w: &World, order_ts: u64, body: &[u8], lifetime_s: u32) -> Vec<u8> {
    seal_order(
        &w.gateway,
        &w.red_key.public_key(),
        &OrderFields {
            order_timestamp_ms: order_ts,
            session_id: [0x22; 16],
            lifetime_s,
            open_for: ip(GREEN_IP),
            client_body: body,
        },
        [0x44; 32],
    )
    .expect("seal order")
}
