//! Shared by `tests/token_softhsm.rs` and `benches/sign.rs`: a private
//! SoftHSM2 per test, a small CA that signs certificate requests, and a
//! green that verifies knocks.
//!
//! SoftHSM2 reads its configuration from `SOFTHSM2_CONF` when the module is
//! initialized. Setting an environment variable inside the test process
//! needs `unsafe` in edition 2024 (and the workspace forbids `unsafe`), and
//! the tests of one binary share the process anyway. So each test re-runs
//! itself, alone, in a child process whose environment names a fresh
//! SoftHSM2 directory; the tokens are created beforehand with
//! `softhsm2-util`, and the parent checks that the child ran that one test
//! and passed.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proto_spec::Refusal;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::keys::ReceiverSecretKey;
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::testkit;
use proto_spec::verify::{Knock, KnockVerifier};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Set in the child process.
pub const CHILD_ENV: &str = "SPA_TOKEN_TEST_CHILD";
/// The user PIN of every test token; also in `SPA_TEST_PIN` in the child.
pub const USER_PIN: &str = "246810";
/// A wrong PIN, in `SPA_TEST_WRONG_PIN` in the child.
pub const WRONG_PIN: &str = "999999";
/// The SO PIN of every test token.
pub const SO_PIN: &str = "13579111";
/// The knock `now`: 2026-11-26T12:00:00Z.
pub const NOW: u64 = testkit::VECTOR_NOW;

const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// The SoftHSM2 module; fails the test if SoftHSM2 is not installed.
pub fn softhsm_module() -> PathBuf {
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "SoftHSM2 is not installed (no libsofthsm2.so in {MODULE_CANDIDATES:?}); \
                 the token tests need it: apt-get install softhsm2"
            )
        })
}

fn softhsm2_util() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("softhsm2-util"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "softhsm2-util is not installed; the token tests need it: apt-get install softhsm2"
            )
        })
}

/// A fresh SoftHSM2 directory with `tokens` initialized (user PIN
/// [`USER_PIN`], SO PIN [`SO_PIN`]). Returns the configuration file.
pub fn fresh_softhsm(name: &str, tokens: &[&str]) -> PathBuf {
    softhsm_module();
    let util = softhsm2_util();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("spa-softhsm")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    for label in tokens {
        let out = Command::new(&util)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .env("SOFTHSM2_CONF", &conf)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token {label}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("softhsm2.conf")
}

/// A command running this executable again inside a fresh SoftHSM2 with
/// `tokens`.
pub fn child_command(name: &str, tokens: &[&str]) -> Command {
    let conf = fresh_softhsm(name, tokens);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("SOFTHSM2_CONF", conf)
        .env(CHILD_ENV, "1")
        .env("SPA_TEST_PIN", USER_PIN)
        .env("SPA_TEST_WRONG_PIN", WRONG_PIN)
        .stdin(Stdio::null());
    cmd
}

/// Whether this is the child process.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the test `name` (a top-level `#[test]` of this binary) in a child
/// process with a fresh SoftHSM2 holding `tokens`; in the child, runs
/// `body` with the module path.
pub fn in_softhsm(name: &str, tokens: &[&str], body: impl FnOnce(&Path)) {
    if is_child() {
        body(&softhsm_module());
        return;
    }
    let out = child_command(name, tokens)
        .args([name, "--exact", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("test {name} ... ok")),
        "test {name} in its SoftHSM2 child process failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// A PIN file with mode 0600 (or `mode`).
pub fn pin_file(dir: &Path, name: &str, pin: &str, mode: u32) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(f, "{pin}").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("spa-token-scratch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn at(year: i32) -> time::OffsetDateTime {
    time::Date::from_calendar_date(year, time::Month::January, 1)
        .unwrap()
        .midnight()
        .assume_utc()
}

/// A small CA (Ed25519 key, valid 2020-2040, so both the knock `now` and
/// today's clock for TLS are inside).
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(2020);
        params.not_after = at(2040);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self { params, key, der }
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.der
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// Issues a client certificate from a CSR (whose signature rcgen checks).
    pub fn issue_from_csr(&self, csr_der: &[u8], serial: u64) -> rcgen::Certificate {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der).unwrap();
        csr.params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        csr.params.not_before = at(2020);
        csr.params.not_after = at(2040);
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.use_authority_key_identifier_extension = true;
        csr.signed_by(&self.issuer()).unwrap()
    }

    /// A certificate for a software key (`alg`): (certificate, key).
    pub fn issue_software(
        &self,
        cn: &str,
        alg: &'static rcgen::SignatureAlgorithm,
        server: bool,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = at(2020);
        params.not_after = at(2040);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if server {
            params.subject_alt_names = vec![SanType::DnsName(cn.try_into().unwrap())];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        (cert, key)
    }
}

/// CSR parameters for a client named `cn`.
pub fn client_csr_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = vec![SanType::Rfc822Name(
        format!("{cn}@example.org").try_into().unwrap(),
    )];
    params
}

pub fn client_ip() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

/// Green: trusts `ca`, lets `cn:<cn>` use `ssh`.
pub fn green(ca_der: &[u8], cn: &str) -> KnockVerifier {
    let trust = TrustStore::new(&TrustConfig {
        anchors: vec![ca_der.to_vec()],
        ..TrustConfig::default()
    })
    .unwrap();
    let policy = Policy {
        rules: vec![Rule {
            identity: IdentityPattern::parse(&format!("cn:{cn}")),
            services: ServiceSet::Named(vec!["ssh".into()]),
        }],
        ..Policy::default()
    };
    KnockVerifier::new(vec![green_key()], trust, policy, TimeLimits::default())
}

pub fn green_key() -> ReceiverSecretKey {
    testkit::receiver_key("green")
}

/// A knock from `signer` at `timestamp_ms`, number `i`.
pub fn knock(signer: &dyn Signer, timestamp_ms: u64, i: u64) -> Vec<u8> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&i.to_be_bytes());
    let req = KnockRequest {
        msg_type: MessageType::OpenTunnel,
        timestamp_ms,
        nonce,
        session_id: [0x5a; 16],
        lifetime_s: 30,
        open_for: OpenFor::Addr(client_ip()),
        services: &["ssh"],
    };
    let mut ikm = [0x33u8; 32];
    ikm[..8].copy_from_slice(&i.to_le_bytes());
    seal_knock(signer, &green_key().public_key(), &req, ikm).unwrap()
}

/// Seals a knock with `signer` and has green verify it.
pub fn knock_and_verify(ca_der: &[u8], cn: &str, signer: &dyn Signer) -> Result<Knock, Refusal> {
    let mut v = green(ca_der, cn);
    let d = knock(signer, NOW, 1);
    v.verify(&d, client_ip(), NOW, &mut MemoryReplayState::default())
}
