//! The tunnel endpoint with real TLS on loopback: certificates from the CA
//! tooling, grants from the daemon's session table.

use super::*;
use proto_spec::body::MessageType;
use proto_spec::cert::{ExpiredCrl, UnknownRevocation};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use spa_daemon::config::ServiceProto;
use spa_daemon::gate::Decision;
use spa_daemon::gate::OpenKind;
use spa_daemon::sessions::NoFirewall;
use spa_daemon::sessions::SessionTable;
use spa_pki::{self as pki, CaAlgorithm, InitOptions, IssueRequest, SubjectKey, Usage};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

struct Pki {
    _dir: tempfile::TempDir,
    ca_der: Vec<u8>,
    shared: Arc<Shared>,
}

fn issue(ca: &pki::Ca, key: &KeyPair, name: &str, usage: Usage) -> Vec<u8> {
    let csr = CertificateParams::new(vec![])
        .expect("params")
        .serialize_request(key)
        .expect("csr");
    let now = time::OffsetDateTime::now_utc();
    ca.issue(
        &IssueRequest {
            key: SubjectKey::Csr {
                path: "req.csr".into(),
                der: csr.der().to_vec(),
            },
            name: name.into(),
            emails: vec![],
            dns: vec![],
            ips: if usage == Usage::Server {
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
            } else {
                vec![]
            },
            days: 1,
            usage,
        },
        now,
    )
    .expect("issue")
    .der
}

fn setup(targets: HashMap<String, Target>) -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::init(
        &dir.path().join("ca"),
        &InitOptions {
            name: "tunnel test CA".into(),
            algorithm: CaAlgorithm::Ed25519,
            days: 10,
        },
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    )
    .expect("ca");
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let server_cert = issue(&ca, &server_key, "green", Usage::Server);
    let id = Identity {
        chain: vec![CertificateDer::from(server_cert)],
        key: PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    };
    let shared = shared(id, dir.path().join("ca").join(pki::CA_CERT), targets);
    Pki {
        ca_der: ca.cert_der().to_vec(),
        _dir: dir,
        shared,
    }
}

/// The endpoint's state for tests: one trust anchor, caps of 64.
fn shared(id: Identity, anchor: PathBuf, targets: HashMap<String, Target>) -> Arc<Shared> {
    let trust = TrustFiles {
        cas: vec![anchor],
        intermediates: vec![],
        crls: vec![],
        unknown_revocation: UnknownRevocation::Allow,
        expired_crl: ExpiredCrl::Refuse,
    };
    Arc::new(Shared::new(id, trust, targets, 64, 64, SharedSessions::default()).expect("shared"))
}

/// One service, `echo`, on a local echo server.
fn echo_targets() -> HashMap<String, Target> {
    HashMap::from([(
        "echo".to_owned(),
        Target {
            addr: echo_server(),
            bind: None,
        },
    )])
}

/// Serves `shared` on a local port; returns the port.
fn serve_locally(shared: &Arc<Shared>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shared = Arc::clone(shared);
    std::thread::spawn(move || accept_loop(&listener, &shared));
    port
}

fn client(p: &Pki, cert: Vec<u8>, key: &KeyPair) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(p.ca_der.clone()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("client auth"),
    )
}

fn open(grants: &SharedGrants, kind: MessageType, session: u8, id: IdentityKey, services: &[&str]) {
    let table = Arc::clone(&grants.lock().expect("lock").table);
    let mut table = table.lock().expect("lock");
    table
        .open(
            &Decision::Open {
                kind: OpenKind::of(kind).expect("an opening knock"),
                session: [session; 16],
                identity: "cn:alice".into(),
                identity_key: id,
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                services: services.iter().map(|s| (*s).to_owned()).collect(),
                lifetime_s: 30,
                certificate: Vec::new(),
                body: Vec::new(),
            },
            &HashMap::new(),
            now_ms(),
            &mut NoFirewall,
        )
        .expect("own session");
}

/// Connects, sends `CONNECT service` and `payload`, half-closes, and
/// returns everything green sent back.
fn exchange(port: u16, cfg: Arc<ClientConfig>, service: &str, payload: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = ClientConnection::new(cfg, name).expect("client");
    let mut out = Vec::new();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    if tls
        .write_all(format!("CONNECT {service}\n").as_bytes())
        .and_then(|()| tls.write_all(payload))
        .is_err()
    {
        return out;
    }
    conn.send_close_notify();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let _ = tls.read_to_end(&mut out);
    out
}

fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut r = s.try_clone().expect("clone");
                let _ = io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn serves_only_open_sessions_and_granted_services() {
    let p = setup(echo_targets());
    let port = serve_locally(&p.shared);

    let ca = pki::Ca::open(&p._dir.path().join("ca")).expect("ca");
    let alice_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let alice_cert = issue(&ca, &alice_key, "alice", Usage::Client);
    let alice = identity_of(&alice_cert).expect("identity");
    let mallory_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mallory_cert = issue(&ca, &mallory_key, "mallory", Usage::Client);
    let cfg = client(&p, alice_cert, &alice_key);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    // No session yet: refused.
    let got = exchange(port, cfg.clone(), "echo", b"x");
    assert!(
        got.starts_with(b"ERR "),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // A tunnel, but the service not granted.
    open(
        &p.shared.grants,
        MessageType::OpenTunnel,
        1,
        alice,
        &["tunnel"],
    );
    let got = exchange(port, cfg.clone(), "echo", b"x");
    assert!(got.starts_with(b"ERR service not granted"), "{got:?}");

    // Granted: spliced both ways, a large payload intact, then EOF.
    open(
        &p.shared.grants,
        MessageType::RequestService,
        1,
        alice,
        &["echo"],
    );
    let got = exchange(port, cfg.clone(), "echo", &big);
    assert_eq!(&got[..3], b"OK\n");
    assert!(got[3..] == big[..], "echoed {} bytes", got.len() - 3);

    // Another identity of the same CA, same address: refused.
    let got = exchange(port, client(&p, mallory_cert, &mallory_key), "echo", b"x");
    assert!(got.starts_with(b"ERR "), "{got:?}");

    // After the close, refused again.
    let table = Arc::clone(&p.shared.grants.lock().expect("lock").table);
    let closed = table
        .lock()
        .expect("lock")
        .close(&[1; 16], now_ms(), &mut NoFirewall);
    assert!(closed.is_some());
    let got = exchange(port, cfg, "echo", b"x");
    assert!(got.starts_with(b"ERR "), "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.shared.active.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.shared.active.load(Ordering::SeqCst), 0, "threads ended");
}

#[test]
fn connections_are_capped_in_total_and_per_source() {
    let mut p = setup(HashMap::new());
    let shared = Arc::get_mut(&mut p.shared).expect("unshared");
    shared.max_connections = 3;
    shared.max_per_source = 2;
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let c = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    assert!(shared.admit(a) && shared.admit(a));
    assert!(!shared.admit(a), "per-source cap");
    assert!(shared.admit(b));
    assert!(!shared.admit(c), "total cap");
    shared.release(a);
    assert!(shared.admit(c), "a slot freed");
    assert!(!shared.admit(b), "total cap again");
    for ip in [a, b, c] {
        shared.release(ip);
    }
    assert_eq!(shared.active.load(Ordering::SeqCst), 0);
    assert!(shared.per_source.lock().expect("lock").is_empty());
}

#[test]
fn changed_trust_files_are_read_for_the_next_connection() {
    let p = setup(HashMap::new());
    let first = p.shared.current_config();
    assert!(Arc::ptr_eq(&first, &p.shared.current_config()), "cached");
    // A CA file rewritten (new inode): the next connection rebuilds.
    let ca = &p.shared.trust.cas[0];
    let bytes = std::fs::read(ca).expect("read");
    let tmp = ca.with_extension("new");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, ca).expect("rename");
    assert!(!Arc::ptr_eq(&first, &p.shared.current_config()), "rebuilt");
}

/// A trust file that changes into something unreadable keeps the last
/// configuration, and is tried (and warned about) once per change, not on
/// every connection; a good file afterwards is read again.
#[test]
fn a_broken_trust_file_keeps_the_last_configuration_and_is_tried_once_per_change() {
    let p = setup(HashMap::new());
    let first = p.shared.current_config();
    let ca = p.shared.trust.cas[0].clone();
    let good = std::fs::read(&ca).expect("read");
    let replace = |bytes: &[u8]| {
        let tmp = ca.with_extension("new");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, &ca).expect("rename");
    };
    replace(b"not a certificate");
    assert!(Arc::ptr_eq(&first, &p.shared.current_config()), "kept");
    let failed = p.shared.config.lock().expect("lock").2.clone();
    assert!(failed.is_some(), "the failed state is remembered");
    assert!(
        Arc::ptr_eq(&first, &p.shared.current_config()),
        "still kept"
    );
    replace(&good);
    let next = p.shared.current_config();
    assert!(!Arc::ptr_eq(&first, &next), "rebuilt from the good file");
    assert!(p.shared.config.lock().expect("lock").2.is_none());
}

/// SPEC §12.2: intermediates come from the client's TLS chain.
#[test]
fn a_client_chain_through_an_intermediate_is_served_only_with_the_intermediate() {
    use rcgen::{BasicConstraints, CertifiedIssuer, IsCa, KeyUsagePurpose};
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(vec![]).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        p
    };
    let root = CertifiedIssuer::self_signed(
        ca_params("root"),
        KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
    )
    .expect("root");
    let inter = CertifiedIssuer::signed_by(
        ca_params("intermediate"),
        KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
        &root,
    )
    .expect("intermediate");
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &root)
        .expect("server");
    let alice_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let mut leaf = CertificateParams::new(vec![]).expect("params");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let alice = leaf.signed_by(&alice_key, &inter).expect("alice");

    let dir = tempfile::tempdir().expect("tempdir");
    let root_path = dir.path().join("root.pem");
    std::fs::write(&root_path, root.as_ref().pem()).expect("write");
    let id = Identity {
        chain: vec![server.der().clone()],
        key: PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    };
    let shared = shared(id, root_path, echo_targets());
    let port = serve_locally(&shared);
    let identity = identity_of(alice.der()).expect("identity");
    open(
        &shared.grants,
        MessageType::OpenTunnel,
        3,
        identity,
        &["tunnel", "echo"],
    );
    let client_with = |chain: Vec<CertificateDer<'static>>| {
        let mut roots = RootCertStore::empty();
        roots.add(root.as_ref().der().clone()).expect("root");
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    chain,
                    PrivateKeyDer::Pkcs8(alice_key.serialize_der().into()),
                )
                .expect("client auth"),
        )
    };
    let got = exchange(
        port,
        client_with(vec![alice.der().clone(), inter.as_ref().der().clone()]),
        "echo",
        b"ping",
    );
    assert_eq!(got, b"OK\nping");
    let got = exchange(
        port,
        client_with(vec![alice.der().clone()]),
        "echo",
        b"ping",
    );
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

#[test]
fn a_closed_session_cuts_its_live_connections() {
    let p = setup(echo_targets());
    let port = serve_locally(&p.shared);
    let ca = pki::Ca::open(&p._dir.path().join("ca")).expect("ca");
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let cert = issue(&ca, &key, "alice", Usage::Client);
    let alice = identity_of(&cert).expect("identity");
    let cfg = client(&p, cert, &key);
    open(
        &p.shared.grants,
        MessageType::OpenTunnel,
        7,
        alice,
        &["tunnel", "echo"],
    );

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = ClientConnection::new(cfg, name).expect("client");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"CONNECT echo\nping").expect("write");
    let mut got = [0u8; 7];
    tls.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"OK\nping");
    assert_eq!(p.shared.grants.lock().expect("lock").connections(), 1);

    // The session ends while the connection is idle: green cuts it.
    let started = Instant::now();
    let table = Arc::clone(&p.shared.grants.lock().expect("lock").table);
    let closed = table
        .lock()
        .expect("lock")
        .close(&[7; 16], now_ms(), &mut NoFirewall);
    assert!(closed.is_some());
    assert_eq!(p.shared.grants.lock().expect("lock").close(&[7; 16]), 1);
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "cut at once");
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.shared.active.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(p.shared.active.load(Ordering::SeqCst), 0, "thread ended");
    assert_eq!(p.shared.grants.lock().expect("lock").connections(), 0);
}

/// The tunnel reads the daemon's table: two identities behind one address
/// each have their own tunnel grant, and one's close is the end of its
/// grant alone, for the tunnel too.
#[test]
fn the_tunnel_sees_the_daemons_sessions() {
    const ALICE: IdentityKey = IdentityKey([0xa1; 32]);
    const CAROL: IdentityKey = IdentityKey([0xca; 32]);
    const NAT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));
    let local = HashMap::from([("ssh".to_owned(), (ServiceProto::Tcp, 22))]);
    let table = SessionTable::shared();
    let grants = Grants::new(Arc::clone(&table));
    for (id, who) in [(1, ALICE), (2, CAROL)] {
        let d = Decision::Open {
            kind: OpenKind::OpenTunnel,
            session: [id; 16],
            identity: format!("{who:?}"),
            identity_key: who,
            addr: NAT,
            services: vec!["ssh".to_owned()],
            lifetime_s: 60,
            certificate: Vec::new(),
            body: Vec::new(),
        };
        let mut t = table.lock().expect("lock");
        t.open(&d, &local, 0, &mut NoFirewall).expect("own id");
    }
    assert!(grants.tunnel_open(NAT, &ALICE, 1) && grants.tunnel_open(NAT, &CAROL, 1));
    assert_eq!(grants.session_for(NAT, &CAROL, "ssh", 1), Some([2; 16]));
    let closed = table
        .lock()
        .expect("lock")
        .close(&[1; 16], 1, &mut NoFirewall);
    assert!(closed.is_some());
    assert!(!grants.tunnel_open(NAT, &ALICE, 2));
    assert!(grants.tunnel_open(NAT, &CAROL, 2));
    assert!(!grants.tunnel_open(NAT, &CAROL, 60_000), "expired");
}
