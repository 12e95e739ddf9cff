//! Shared helpers of the pki_* tests: running `openssl` and `spa-server`,
//! making an OpenSSL CA, and a full knock through green's verifier.
#![allow(dead_code)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proto_spec::Refusal;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::seal::{KnockRequest, seal_knock};
use proto_spec::sign::Signer;
use proto_spec::verify::{Knock, KnockVerifier};

/// The system clock in ms (the CA functions are given the same instant).
pub fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).expect("after 1970") * 1000
}

/// Runs `openssl` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let out = openssl_status(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `openssl` in `dir`, whatever its exit status.
pub fn openssl_status(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        // openssl.cnf below reads it; any value does outside `issue`.
        .env("SAN_EMAIL", "unused@example.org")
        .current_dir(dir)
        .output()
        .expect("the openssl command line is installed")
}

/// Runs the built `spa-server` in `dir`.
pub fn spa(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spa-server"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run spa-server")
}

/// Runs `spa-server` and expects success; returns stdout.
pub fn spa_ok(dir: &Path, args: &[&str]) -> String {
    let out = spa(dir, args);
    assert!(
        out.status.success(),
        "spa-server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs `spa-server`, expects exit status 1 (an error, not a panic nor a
/// usage error) and one line on stderr; returns that line.
pub fn spa_err(dir: &Path, args: &[&str]) -> String {
    let out = spa(dir, args);
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(
        out.status.code(),
        Some(1),
        "spa-server {args:?}: status {:?}, stderr {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    lines[0].to_owned()
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Key algorithms for OpenSSL-made keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ed25519,
    P256,
}

/// `openssl genpkey` of `alg` into `dir/name` (mode 0600).
pub fn genpkey(dir: &Path, alg: Alg, name: &str) -> PathBuf {
    match alg {
        Alg::Ed25519 => openssl(dir, &["genpkey", "-algorithm", "ED25519", "-out", name]),
        Alg::P256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        ),
    };
    let p = dir.join(name);
    chmod(&p, 0o600);
    p
}

/// A CSR for `key` (`openssl req -new`), PEM.
pub fn csr(dir: &Path, key: &str, cn: &str, out: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            out,
        ],
    );
    dir.join(out)
}

/// The public key of `key` (`openssl pkey -pubout`), PEM.
pub fn pubout(dir: &Path, key: &str, out: &str) -> PathBuf {
    openssl(dir, &["pkey", "-in", key, "-pubout", "-out", out]);
    dir.join(out)
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = openssl test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = email:$ENV::SAN_EMAIL
[ca]
default_ca = testca
[testca]
dir = .
database = ./index.txt
crlnumber = ./crlnumber
certificate = ./ca.pem
private_key = ./ca.key
new_certs_dir = .
default_md = default
default_crl_days = 7
policy = anything
[anything]
commonName = supplied
";

/// A CA made with the openssl command line in `dir`: `ca.key`, `ca.pem`,
/// `openssl.cnf` (with an `openssl ca` section), `index.txt`, `crlnumber`.
pub struct OpensslCa {
    pub dir: PathBuf,
}

impl OpensslCa {
    pub fn new(dir: &Path, alg: Alg) -> Self {
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("cnf");
        std::fs::write(dir.join("index.txt"), b"").expect("index");
        std::fs::write(dir.join("crlnumber"), b"1000\n").expect("crlnumber");
        genpkey(dir, alg, "ca.key");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-config",
                "openssl.cnf",
                "-extensions",
                "v3_ca",
                "-key",
                "ca.key",
                "-days",
                "30",
                "-out",
                "ca.pem",
            ],
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `openssl x509 -req` of a new `alg` key for `cn`, with an extfile
    /// section giving clientAuth; returns (key path, cert path).
    pub fn issue(&self, alg: Alg, cn: &str, serial: u32) -> (PathBuf, PathBuf) {
        let key = format!("{cn}.key");
        let cert = format!("{cn}.pem");
        genpkey(&self.dir, alg, &key);
        csr(&self.dir, &key, cn, &format!("{cn}.csr"));
        let out = Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                &format!("{cn}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "30",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "client",
                "-out",
                &cert,
            ])
            .env("SAN_EMAIL", format!("{cn}@example.org"))
            .current_dir(&self.dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl x509 -req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (self.dir.join(key), self.dir.join(cert))
    }

    /// `openssl ca -revoke` then `openssl ca -gencrl`; returns the CRL path.
    pub fn revoke_and_gencrl(&self, cert: &Path, out: &str) -> PathBuf {
        let cert = cert.to_str().expect("utf-8 path");
        for args in [
            vec![
                "ca",
                "-config",
                "openssl.cnf",
                "-revoke",
                cert,
                "-crl_reason",
                "keyCompromise",
            ],
            vec!["ca", "-config", "openssl.cnf", "-gencrl", "-out", out],
        ] {
            let o = Command::new("openssl")
                .args(&args)
                .env("SAN_EMAIL", "unused@example.org")
                .current_dir(&self.dir)
                .output()
                .expect("openssl");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        self.dir.join(out)
    }
}

/// A trust store of CA files and CRL files, as green loads it.
pub fn trust(cas: &[&Path], crls: &[&Path]) -> TrustStore {
    let mut config = TrustConfig::default();
    for p in cas {
        config
            .anchors
            .extend(spa_keys::read_certificates(p).expect("CA file"));
    }
    for p in crls {
        config
            .crls
            .extend(spa_keys::read_crls(p).expect("CRL file"));
    }
    TrustStore::new(&config).expect("trust store")
}

pub const CLIENT_IP: &str = "192.0.2.7";

/// Seals a knock with `signer` to a fresh green key and verifies it with
/// green's verifier trusting `trust`, allowing `cn:<cn>` to use ssh.
pub fn knock_through_green(
    signer: &dyn Signer,
    trust: TrustStore,
    cn: &str,
    now: u64,
) -> Result<Knock, Refusal> {
    let green = spa_keys::generate_receiver_key().expect("green key");
    let green_pub = green.public_key();
    let policy = Policy {
        rules: vec![Rule {
            identity: IdentityPattern::parse(&format!("cn:{cn}")),
            services: ServiceSet::Named(vec!["ssh".into()]),
        }],
        ..Policy::default()
    };
    let mut verifier = KnockVerifier::new(vec![green], trust, policy, TimeLimits::default());
    let ip: IpAddr = CLIENT_IP.parse().expect("ip");
    let req = KnockRequest {
        msg_type: MessageType::OpenTunnel,
        timestamp_ms: now,
        nonce: [7; 16],
        session_id: [9; 16],
        lifetime_s: 30,
        open_for: OpenFor::Addr(ip),
        services: &["ssh"],
    };
    let ikm = *spa_keys::random_32().expect("random");
    let datagram = seal_knock(signer, &green_pub, &req, ikm).expect("seal");
    verifier.verify(&datagram, ip, now, &mut MemoryReplayState::default())
}
