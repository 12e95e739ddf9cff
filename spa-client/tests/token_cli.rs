//! The smart-card path through the real binaries, as an operator would walk
//! it on a SoftHSM2 token: `spa-client token keygen` makes the key on the
//! token, `spa-client token csr` has the token sign a request, the real CA
//! tool (`spa-server pki init` / `pki issue`) issues the certificate, and
//! `spa-client send open` with a `[pkcs11]` profile sends a knock that the
//! proto-spec verifier accepts as `cn:alice`, for Ed25519 and for P-256.
//! Bad token inputs (wrong PIN, missing module, unknown token) exit 3 with
//! one line naming the token or module; a PIN on the command line exits 2.
//!
//! The PIN only ever travels in the `SPA_PIN` environment variable of the
//! child process, never on its argv. Each test has its own SoftHSM2
//! directory, handed to the child through `SOFTHSM2_CONF` (no environment
//! change in this process: see `token_support`). SoftHSM2 must be installed
//! (`apt-get install softhsm2`): without it these tests fail; they never
//! skip.
#![allow(clippy::unwrap_used)]

mod token_support;

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use proto_spec::body::MessageType;
use proto_spec::cert::{IdentityKey, TrustConfig, TrustStore};
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::testkit;
use proto_spec::verify::KnockVerifier;
use token_support::{USER_PIN, WRONG_PIN, fresh_softhsm, scratch, softhsm_module};
use x509_parser::prelude::FromDer as _;

const BIN: &str = env!("CARGO_BIN_EXE_spa-client");
/// The module path as the brief and the docs give it.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The `spa-server` binary next to this test's `deps` directory; built
/// with `cargo build -p spa-server` if it is not there yet (e.g. after
/// `cargo test -p spa-client` on a fresh checkout), cargo then saying where
/// it put it.
fn spa_server() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let profile_dir = if deps.ends_with("deps") {
            deps.parent().unwrap()
        } else {
            deps
        };
        let path = profile_dir.join("spa-server");
        if path.exists() {
            return path;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "spa-server",
            "--bin",
            "spa-server",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{} is missing and cargo build -p spa-server failed ({}):\n{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let built = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "spa-server")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from));
        built.unwrap_or_else(|| panic!("cargo build -p spa-server named no executable"))
    })
}

/// One SoftHSM2 directory with one token, and a scratch directory.
struct Lab {
    /// `SOFTHSM2_CONF` for the children.
    conf: PathBuf,
    /// The token's label.
    token: String,
    dir: PathBuf,
}

impl Lab {
    fn new(name: &str, token: &str) -> Self {
        softhsm_module();
        assert!(
            Path::new(MODULE).exists(),
            "SoftHSM2 is not installed at {MODULE}: apt-get install softhsm2"
        );
        Self {
            conf: fresh_softhsm(&format!("cli-{name}"), &[token]),
            token: token.to_owned(),
            dir: scratch(&format!("cli-{name}")),
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Runs `spa-client args` in this lab: its SoftHSM2, its state
    /// directory, and `SPA_PIN` = `pin` (unset if `None`).
    fn client<S: AsRef<str>>(&self, args: &[S], pin: Option<&str>) -> Output {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        for a in &args {
            assert!(
                !a.contains(USER_PIN) && !a.contains(WRONG_PIN),
                "a PIN on argv: {args:?}"
            );
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .env("SOFTHSM2_CONF", &self.conf)
            .env("XDG_STATE_HOME", self.path("state"))
            .env("HOME", &self.dir)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null());
        match pin {
            Some(p) => cmd.env("SPA_PIN", p),
            None => cmd.env_remove("SPA_PIN"),
        };
        cmd.output().unwrap()
    }

    /// `spa-client args` with the right PIN; must succeed.
    fn client_ok(&self, args: &[&str]) -> String {
        let o = self.client(args, Some(USER_PIN));
        assert!(
            o.status.success(),
            "spa-client {args:?}: exit {:?}: {}",
            o.status.code(),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `--module M --token T --pin env:SPA_PIN` followed by `rest`.
    fn token_args<'a>(&'a self, sub: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "token",
            sub,
            "--module",
            MODULE,
            "--token",
            &self.token,
            "--pin",
            "env:SPA_PIN",
        ];
        v.extend_from_slice(rest);
        v
    }

    fn server(&self, args: &[&str]) -> String {
        let o = Command::new(spa_server())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "spa-server {args:?}: exit {:?}: {}",
            o.status.code(),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Generates the key `spa` (id 01) on the token, writes alice.csr
    /// signed by it, and has the CA in `ca/` issue alice.crt from it.
    /// Returns the certificate's path.
    fn enroll(&self, algorithm: &str) -> PathBuf {
        let out = self.client_ok(&self.token_args(
            "keygen",
            &["--label", "spa", "--id", "01", "--algorithm", algorithm],
        ));
        let shown = if algorithm == "p256" {
            "a P-256"
        } else {
            "an Ed25519"
        };
        assert!(
            out.contains(&format!(
                "generated {shown} key 'spa' on token '{}'",
                self.token
            )),
            "{out}"
        );

        let csr = self.path("alice.csr");
        let out = self.client_ok(&self.token_args(
            "csr",
            &[
                "--label",
                "spa",
                "--name",
                "alice",
                "--email",
                "alice@example.org",
                "--out",
                csr.to_str().unwrap(),
            ],
        ));
        assert!(out.contains("signed by the token key"), "{out}");
        let csr_pem = std::fs::read_to_string(&csr).unwrap();
        assert!(
            csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{csr_pem}"
        );

        let ca = self.path("ca");
        let ca_s = ca.to_str().unwrap();
        self.server(&["pki", "init", "--dir", ca_s, "--name", "test CA"]);
        let crt = self.path("alice.crt");
        self.server(&[
            "pki",
            "issue",
            "--dir",
            ca_s,
            "--csr",
            csr.to_str().unwrap(),
            "--name",
            "alice",
            "--email",
            "alice@example.org",
            "--client",
            "--out",
            crt.to_str().unwrap(),
        ]);
        crt
    }

    /// A configuration file `file` with one profile `x` whose key is on
    /// the token.
    fn profile(&self, file: &str, port: u16, module: &str, token: &str, cert: &Path) -> PathBuf {
        let server_key = spa_keys::encode_public_key(&testkit::receiver_key("green").public_key());
        let text = format!(
            "default = \"x\"\n\
             [profiles.x]\n\
             server = \"127.0.0.1\"\n\
             port = {port}\n\
             server_key = \"{server_key}\"\n\
             certificate = \"{}\"\n\
             services = [\"ssh\"]\n\
             [profiles.x.pkcs11]\n\
             module = \"{module}\"\n\
             token = \"{token}\"\n\
             key_label = \"spa\"\n\
             pin = \"env:SPA_PIN\"\n",
            cert.display()
        );
        let p = self.path(file);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Green trusting `ca/ca.pem` and letting `cn:alice` in.
    fn green(&self) -> KnockVerifier {
        let anchors = spa_keys::read_certificates(&self.path("ca/ca.pem")).unwrap();
        KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            TrustStore::new(&TrustConfig {
                anchors,
                ..TrustConfig::default()
            })
            .unwrap(),
            Policy {
                rules: vec![Rule {
                    identity: IdentityPattern::parse("cn:alice"),
                    services: ServiceSet::All,
                }],
                ..Policy::default()
            },
            TimeLimits::default(),
        )
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn listener() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The SubjectPublicKeyInfo (DER) of a PEM certificate or CSR file.
fn spki_of_cert(path: &Path) -> Vec<u8> {
    let der = spa_keys::read_certificates(path).unwrap().swap_remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().raw.to_vec()
}

fn spki_of_csr(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
            .unwrap();
    csr.certification_request_info.subject_pki.raw.to_vec()
}

/// The whole path for one algorithm; returns the lab, enrolled.
fn enroll_and_knock(name: &str, token: &str, algorithm: &str) -> (Lab, PathBuf) {
    let lab = Lab::new(name, token);
    let out = lab.client_ok(&["token", "list", "--module", MODULE]);
    assert!(out.contains(&format!("'{token}'")), "{out}");

    let crt = lab.enroll(algorithm);
    // The CA certified the key the token generated and signed the CSR with.
    let spki = spki_of_cert(&crt);
    assert_eq!(spki, spki_of_csr(&lab.path("alice.csr")));
    let want_alg_oid = if algorithm == "p256" {
        "1.2.840.10045.2.1" // id-ecPublicKey
    } else {
        "1.3.101.112" // id-Ed25519
    };
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
    assert_eq!(info.algorithm.algorithm.to_id_string(), want_alg_oid);

    let (sock, port) = listener();
    let cfg = lab.profile("client.toml", port, MODULE, token, &crt);
    let out = lab.client_ok(&["--config", cfg.to_str().unwrap(), "send", "open"]);
    assert!(
        out.starts_with("sent ") && out.contains("127.0.0.1"),
        "{out}"
    );

    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("the knock arrives");
    let mut green = lab.green();
    let knock = green
        .verify(
            &buf[..n],
            from.ip(),
            now_ms(),
            &mut MemoryReplayState::default(),
        )
        .expect("green accepts the token-signed knock");
    assert_eq!(knock.msg_type, MessageType::OpenTunnel);
    assert!(
        knock.identity.names.iter().any(|n| n == "cn:alice"),
        "{:?}",
        knock.identity.names
    );
    assert_eq!(knock.identity.key, IdentityKey::from_spki_der(&spki));
    assert_eq!(knock.services, vec!["ssh"]);
    assert_eq!(knock.open_for, "127.0.0.1".parse::<IpAddr>().unwrap());
    (lab, crt)
}

#[test]
fn ed25519_key_made_on_the_token_by_the_binary_knocks_as_alice() {
    enroll_and_knock("ed25519", "spa-cli-ed", "ed25519");
}

#[test]
fn p256_key_made_on_the_token_by_the_binary_knocks_as_alice() {
    enroll_and_knock("p256", "spa-cli-p256", "p256");
}

/// Runs `args` with SPA_PIN = `pin` and checks the exit code, that stderr
/// is one line holding every `needles`, and that no PIN shows.
fn check<S: AsRef<str>>(lab: &Lab, args: &[S], pin: Option<&str>, code: i32, needles: &[&str]) {
    let o = lab.client(args, pin);
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: one line: {e}");
    for needle in needles {
        assert!(e.contains(needle), "{args:?}: expected '{needle}' in: {e}");
    }
    assert!(
        !e.contains(USER_PIN) && !e.contains(WRONG_PIN),
        "{args:?}: a PIN in: {e}"
    );
    assert!(o.stdout.is_empty(), "{args:?}: stdout: {:?}", o.stdout);
}

#[test]
fn bad_token_inputs_exit_3_with_one_line_naming_the_token_or_module() {
    let (lab, crt) = enroll_and_knock("bad", "spa-cli-bad", "ed25519");
    let (_sock, port) = listener();
    let good = lab.profile("client.toml", port, MODULE, "spa-cli-bad", &crt);
    let good_s = good.to_str().unwrap();
    let missing_module = lab.path("no-such-pkcs11.so");
    let missing_s = missing_module.to_str().unwrap();
    let no_module = lab.profile("no-module.toml", port, missing_s, "spa-cli-bad", &crt);
    let no_token = lab.profile("no-token.toml", port, MODULE, "no-such-token", &crt);
    let csr_out = lab.path("bad.csr");
    let csr_args = |module: &'static str, token: &'static str| -> Vec<String> {
        [
            "token",
            "csr",
            "--module",
            module,
            "--token",
            token,
            "--pin",
            "env:SPA_PIN",
            "--label",
            "spa",
            "--name",
            "alice",
            "--out",
            csr_out.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // Wrong PIN: the knock, a CSR, a new key.
    check(
        &lab,
        &["--config", good_s, "send", "open"],
        Some(WRONG_PIN),
        3,
        &["wrong PIN", "'spa-cli-bad'"],
    );
    check(
        &lab,
        &csr_args(MODULE, "spa-cli-bad"),
        Some(WRONG_PIN),
        3,
        &["wrong PIN", "'spa-cli-bad'"],
    );
    check(
        &lab,
        &lab.token_args("keygen", &["--label", "other", "--id", "02"]),
        Some(WRONG_PIN),
        3,
        &["wrong PIN", "'spa-cli-bad'"],
    );
    // No PIN in the environment.
    check(
        &lab,
        &["--config", good_s, "send", "open"],
        None,
        3,
        &["SPA_PIN"],
    );

    // A module path that does not exist.
    check(
        &lab,
        &["--config", no_module.to_str().unwrap(), "send", "open"],
        Some(USER_PIN),
        3,
        &[missing_s, "does not exist"],
    );
    let o = lab.client(&["token", "list", "--module", missing_s], Some(USER_PIN));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains(missing_s), "{}", stderr(&o));
    {
        let mut v = csr_args(MODULE, "spa-cli-bad");
        v[3] = missing_s.to_owned();
        check(&lab, &v, Some(USER_PIN), 3, &[missing_s, "does not exist"]);
    }

    // A token label the module does not have: names it, the module and
    // the tokens that are there.
    check(
        &lab,
        &["--config", no_token.to_str().unwrap(), "send", "open"],
        Some(USER_PIN),
        3,
        &["'no-such-token'", MODULE, "spa-cli-bad"],
    );
    check(
        &lab,
        &csr_args(MODULE, "no-such-token"),
        Some(USER_PIN),
        3,
        &["'no-such-token'", MODULE],
    );
    assert!(!csr_out.exists(), "no CSR written after a failure");

    // A PIN given on the command line (or as the profile's pin) is refused
    // before any token is touched, and not echoed back.
    for sub in ["keygen", "csr"] {
        let mut args = vec![
            "token",
            sub,
            "--module",
            MODULE,
            "--token",
            "spa-cli-bad",
            "--pin",
            "1234",
        ];
        if sub == "keygen" {
            args.extend(["--label", "other", "--id", "02"]);
        } else {
            args.extend(["--label", "spa", "--name", "alice", "--out"]);
            args.push(csr_out.to_str().unwrap());
        }
        let o = lab.client(&args, Some(USER_PIN));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(e.contains("never given on the command line"), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        assert!(!e.contains("1234"), "the PIN echoed: {e}");
    }
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("env:SPA_PIN", "1234");
    let pin_in_profile = lab.path("pin-in-profile.toml");
    std::fs::write(&pin_in_profile, text).unwrap();
    let o = lab.client(
        &["--config", pin_in_profile.to_str().unwrap(), "send", "open"],
        Some(USER_PIN),
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("never given on the command line"), "{e}");
    assert!(!e.contains("1234"), "the PIN echoed: {e}");
    assert!(!csr_out.exists());

    // Nothing was created by the refused keygens: `other` is not there.
    let o = lab.client(
        &lab.token_args(
            "csr",
            &[
                "--label",
                "other",
                "--name",
                "x",
                "--out",
                csr_out.to_str().unwrap(),
            ],
        ),
        Some(USER_PIN),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no private key with label 'other'"),
        "{}",
        stderr(&o)
    );

    // After all that, the right PIN still works (no lockout from one wrong PIN).
    let out = lab.client_ok(&["--config", good_s, "send", "--dry-run", "open"]);
    assert!(out.contains("cn:alice"), "{out}");
}

/// `program` on `PATH`, if it is there.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A TLS 1.3 server on 127.0.0.1 with a certificate from `ca/`, requiring a
/// client certificate from `ca/`: it accepts connections (the `--wait`
/// probes among them) until one completes a handshake, and returns the
/// client certificate chain it saw; then it hangs up.
fn tls_server(lab: &Lab) -> (u16, std::thread::JoinHandle<Option<Vec<Vec<u8>>>>) {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca = lab.path("ca");
    let ca_s = ca.to_str().unwrap();
    let (key, csr, crt) = (
        lab.path("tls.key"),
        lab.path("tls.csr"),
        lab.path("tls.crt"),
    );
    lab.client_ok(&[
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--csr",
        csr.to_str().unwrap(),
        "--name",
        "green",
    ]);
    lab.server(&[
        "pki",
        "issue",
        "--dir",
        ca_s,
        "--csr",
        csr.to_str().unwrap(),
        "--name",
        "green",
        "--server",
        "--ip",
        "127.0.0.1",
        "--out",
        crt.to_str().unwrap(),
    ]);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in spa_keys::read_certificates(&ca.join("ca.pem")).unwrap() {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = spa_keys::read_certificates(&crt)
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        listener.set_nonblocking(true).unwrap();
        while std::time::Instant::now() < deadline {
            let Ok((mut tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    break;
                }
            }
            if !conn.is_handshaking()
                && let Some(certs) = conn.peer_certificates()
            {
                return Some(certs.iter().map(|c| c.as_ref().to_vec()).collect());
            }
        }
        None
    });
    (port, thread)
}

/// `connect` with `pin = "prompt"` asks for the PIN once on the terminal
/// (a pty made by `script`), although the token key signs the open-tunnel
/// knock, the request-service knock and the TLS client authentication.
#[test]
fn connect_asks_for_the_pin_once() {
    use std::io::{Read as _, Write as _};
    const PROMPT: &str = "PIN for token 'spa-cli-once'";

    let Some(script) = on_path("script") else {
        tests::cannot_run(
            "connect_asks_for_the_pin_once",
            "no `script` (util-linux) for a pty",
        );
        return;
    };
    let lab = Lab::new("once", "spa-cli-once");
    let crt = lab.enroll("ed25519");
    let (knocks, knock_port) = listener();
    let (tunnel_port, server) = tls_server(&lab);
    let server_key = spa_keys::encode_public_key(&testkit::receiver_key("green").public_key());
    let cfg = lab.path("connect.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.x]\n\
             server = \"127.0.0.1\"\n\
             port = {knock_port}\n\
             server_key = \"{server_key}\"\n\
             certificate = \"{}\"\n\
             tunnel_ca = \"{}\"\n\
             tunnel_port = {tunnel_port}\n\
             [profiles.x.pkcs11]\n\
             module = \"{MODULE}\"\n\
             token = \"spa-cli-once\"\n\
             key_label = \"spa\"\n\
             pin = \"prompt\"\n",
            crt.display(),
            lab.path("ca/ca.pem").display()
        ),
    )
    .unwrap();

    let command = format!(
        "{BIN} --config {} --profile x connect ssh --wait-timeout 10",
        cfg.display()
    );
    let mut child = Command::new(script)
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("SOFTHSM2_CONF", &lab.conf)
        .env("XDG_STATE_HOME", lab.path("state"))
        .env("HOME", &lab.dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SPA_PIN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every prompt is answered (a second one would not hang the test, it
    // would be counted).
    let script_pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let terminal = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut answered = 0;
        let mut buf = [0u8; 512];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let prompts = String::from_utf8_lossy(&seen).matches(PROMPT).count();
            while answered < prompts {
                // Type only once the prompt turned the echo off.
                if !tests::wait_echo_off(script_pid, Duration::from_secs(20)) {
                    break;
                }
                let _ = writeln!(stdin, "{USER_PIN}");
                answered += 1;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let seen = terminal.join().unwrap();
    eprintln!("terminal ({status}):\n{seen}");

    assert_eq!(seen.matches(PROMPT).count(), 1, "prompts:\n{seen}");
    // The TLS server saw the certificate of the token key.
    let chain = server
        .join()
        .unwrap()
        .expect("a TLS handshake with the token key");
    assert_eq!(
        chain,
        spa_keys::read_certificates(&crt).unwrap(),
        "the client certificate"
    );
    // Both knocks came, signed by the token key as alice.
    let mut green = lab.green();
    let mut replay = MemoryReplayState::default();
    let mut kinds = Vec::new();
    let mut buf = [0u8; 2048];
    while kinds.len() < 2 {
        let (n, from) = knocks.recv_from(&mut buf).expect("two knocks");
        let k = green
            .verify(&buf[..n], from.ip(), now_ms(), &mut replay)
            .expect("green accepts the knock");
        assert!(k.identity.names.iter().any(|n| n == "cn:alice"));
        kinds.push(k.msg_type);
    }
    assert_eq!(
        kinds,
        vec![MessageType::OpenTunnel, MessageType::RequestService]
    );
    assert!(!seen.contains(USER_PIN), "the PIN was echoed:\n{seen}");
}
