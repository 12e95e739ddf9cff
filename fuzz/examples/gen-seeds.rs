//! Writes valid seed inputs for every fuzz target into `<dir>/<target>/`:
//! knocks and orders that pass (or nearly pass) the fixed verifiers of
//! `spa_fuzz`, so the fuzzer starts past the MAC, the certificate chain and
//! the signatures instead of having to forge them.
//!
//! `fuzz/seed-corpora.sh` runs it after importing the test vectors:
//! `cargo run --example gen-seeds -- corpus`.

use std::path::{Path, PathBuf};

use proto_spec::body::{BodyFields, MessageType, OpenFor, encode_signed_part};
use proto_spec::order::{OrderFields, encode_order_signed_part};
use proto_spec::seal::{KnockRequest, seal_knock, seal_order, seal_plaintext};
use proto_spec::sign::{KNOCK_SIGNATURE_CONTEXT, transcript};
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg};
use proto_spec::wire::DatagramKind;
use spa_fuzz::{CLIENT_IP, GREEN_IP, NOW, green_public, red_public};

type Error = Box<dyn std::error::Error>;

struct Out {
    root: PathBuf,
    written: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("gen-{name}")), bytes)?;
        self.written += 1;
        Ok(())
    }
}

struct Case {
    name: &'static str,
    cn: &'static str,
    alg: KeyAlg,
    msg_type: MessageType,
    open_for: OpenFor,
    services: &'static [&'static str],
}

fn main() -> Result<(), Error> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("corpus").to_path_buf());
    let mut out = Out { root, written: 0 };
    let ca = spa_fuzz::ca();
    let green = green_public();
    let v6: OpenFor = OpenFor::Addr("fd00:200::2".parse()?);
    let cases = [
        Case {
            name: "alice-ed25519-open-tunnel",
            cn: "alice",
            alg: KeyAlg::Ed25519,
            msg_type: MessageType::OpenTunnel,
            open_for: OpenFor::Addr(CLIENT_IP),
            services: &["tunnel"],
        },
        Case {
            name: "alice-p256-request",
            cn: "alice",
            alg: KeyAlg::P256,
            msg_type: MessageType::RequestService,
            open_for: OpenFor::Addr(CLIENT_IP),
            services: &["ssh", "web"],
        },
        Case {
            name: "alice-ed25519-close-source",
            cn: "alice",
            alg: KeyAlg::Ed25519,
            msg_type: MessageType::Close,
            open_for: OpenFor::Source,
            services: &[],
        },
        Case {
            name: "bob-p256-request-v6",
            cn: "bob",
            alg: KeyAlg::P256,
            msg_type: MessageType::RequestService,
            open_for: v6,
            services: &["tunnel"],
        },
        Case {
            name: "mallory-ed25519-request",
            cn: "mallory",
            alg: KeyAlg::Ed25519,
            msg_type: MessageType::RequestService,
            open_for: OpenFor::Addr(CLIENT_IP),
            services: &["ssh"],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let serial = 1000 + i as u64;
        let signer = ca.signer(&ClientCertSpec::new(c.cn, c.alg, serial))?;
        let lifetime_s = if c.msg_type == MessageType::Close {
            0
        } else {
            30
        };
        let ts = NOW - 1_000;
        let nonce = [0x11 ^ i as u8; 16];
        let session_id = [0x22; 16];

        // The plaintext body, signed for green.
        let mut body = encode_signed_part(&BodyFields {
            msg_type: c.msg_type,
            timestamp_ms: ts,
            nonce,
            session_id,
            lifetime_s,
            open_for: c.open_for,
            services: c.services,
            certificate: signer.certificate_der(),
        })?;
        let sig = signer.sign(&transcript(KNOCK_SIGNATURE_CONTEXT, &green, &body))?;
        body.extend_from_slice(&sig);
        out.put("body", c.name, &body)?;
        out.put("verifier", c.name, &body)?;

        // The same knock as a datagram, sealed by the real client path.
        let knock = seal_knock(
            signer.as_ref(),
            &green,
            &KnockRequest {
                msg_type: c.msg_type,
                timestamp_ms: ts,
                nonce,
                session_id,
                lifetime_s,
                open_for: c.open_for,
                services: c.services,
            },
            [0x33; 32],
        )?;
        out.put("datagram", c.name, &knock)?;

        // Self-check: the `verifier` target's own framing of this body is
        // byte for byte the crate's, and it gets the same answer from
        // green's verifier as the client's datagram.
        let framed = spa_fuzz::seal_knock_plaintext(&body).ok_or("seal_knock_plaintext failed")?;
        let crate_framed = seal_plaintext(DatagramKind::Knock, &green, &body, spa_fuzz::IKM_E)?;
        if framed != crate_framed {
            return Err(format!("{}: framing differs from seal_plaintext", c.name).into());
        }
        let a = spa_fuzz::verify_knock(&framed).map(|k| k.body);
        let b = spa_fuzz::verify_knock(&knock).map(|k| k.body);
        eprintln!(
            "gen-seeds: {}: {:?}",
            c.name,
            a.as_ref().map(|_| "accepted")
        );
        if a != b {
            return Err(format!("{}: framings disagree: {a:?} vs {b:?}", c.name).into());
        }

        // Orders carrying the body: datagrams and (unsigned) plaintexts.
        if c.msg_type != MessageType::OpenTunnel {
            let fields = OrderFields {
                order_timestamp_ms: NOW - 500,
                session_id,
                lifetime_s,
                open_for: GREEN_IP,
                client_body: &body,
            };
            let gateway = testkit::gateway_signer("green signing");
            let order = seal_order(&gateway, &red_public(), &fields, [0x44; 32])?;
            out.put("order", &format!("{}-datagram", c.name), &order)?;
            let r = spa_fuzz::verify_order(&order).map(|_| "accepted");
            eprintln!("gen-seeds: {} (order): {r:?}", c.name);
            let mut plain = encode_order_signed_part(&fields, &gateway.public_key())?;
            plain.extend_from_slice(&[0x5e; 64]);
            out.put("order", &format!("{}-plaintext", c.name), &plain)?;
        }
    }
    eprintln!(
        "gen-seeds: wrote {} seeds under {}",
        out.written,
        out.root.display()
    );
    Ok(())
}
