//! The `spa-client` binary, run as a script would run it: datagrams captured
//! on a local UDP socket and verified with the proto-spec verifier; `--wait`
//! against a listener that appears after the knock; every bad input with
//! its message and exit code.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use proto_spec::body::MessageType;
use proto_spec::cert::{TrustConfig, TrustStore};
use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::{MemoryReplayState, TimeLimits};
use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};
use proto_spec::verify::{Knock, KnockVerifier};

const BIN: &str = env!("CARGO_BIN_EXE_spa-client");

struct Env {
    dir: PathBuf,
    ca: TestCa,
}

fn pem(label: &str, der: &[u8]) -> String {
    spa_keys::pem_encode(label, der)
}

impl Env {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("spa-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).expect("dir");
        Self {
            dir,
            ca: TestCa::new("spa test root").expect("ca"),
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    /// Writes alice's key (0600) and certificate; returns (key, cert).
    fn client(&self, alg: KeyAlg, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self
            .ca
            .issue(&ClientCertSpec::new(cn, alg, 77))
            .expect("issue");
        let kp = self.path(&format!("{cn}-{alg:?}.key"));
        let cp = self.path(&format!("{cn}-{alg:?}.crt"));
        std::fs::write(&kp, pem("PRIVATE KEY", &key)).expect("write");
        std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&cp, pem("CERTIFICATE", &cert)).expect("write");
        (kp, cp)
    }

    fn config(&self, port: u16, key: &Path, cert: &Path, extra: &str) -> PathBuf {
        let server_key = spa_keys::encode_public_key(&testkit::receiver_key("green").public_key());
        let text = format!(
            "default = \"lab\"\n[profiles.lab]\nserver = \"127.0.0.1\"\nport = {port}\nserver_key = \"{server_key}\"\nkey = \"{}\"\ncertificate = \"{}\"\nservices = [\"tunnel\"]\n{extra}\n",
            key.display(),
            cert.display()
        );
        let p = self.path("client.toml");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn run(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("XDG_STATE_HOME", self.path("state"))
            .env("HOME", &self.dir)
            .output()
            .expect("run spa-client")
    }

    fn green(&self) -> KnockVerifier {
        KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            TrustStore::new(&TrustConfig {
                anchors: vec![self.ca.cert_der().to_vec()],
                ..TrustConfig::default()
            })
            .expect("trust"),
            Policy {
                rules: vec![Rule {
                    identity: IdentityPattern::parse("cn:alice"),
                    services: ServiceSet::All,
                }],
                allow_source_mode: true,
                ..Policy::default()
            },
            TimeLimits::default(),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn listener() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = s.local_addr().expect("addr").port();
    (s, port)
}

fn receive(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("a knock arrives");
    (buf[..n].to_vec(), from)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn verify(
    env: &Env,
    v: &mut KnockVerifier,
    r: &mut MemoryReplayState,
    d: &[u8],
    from: IpAddr,
) -> Knock {
    let _ = env;
    v.verify(d, from, now_ms(), r).expect("the knock verifies")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn send_open_request_close_verify_for_software_keys() {
    for alg in [KeyAlg::Ed25519, KeyAlg::P256] {
        let env = Env::new(&format!("flow-{alg:?}"));
        let (key, cert) = env.client(alg, "alice");
        let (sock, port) = listener();
        let cfg = env.config(port, &key, &cert, "");
        let mut green = env.green();
        let mut replay = MemoryReplayState::default();

        let o = env.run(&cfg, &["send", "open"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (d, from) = receive(&sock);
        let k = verify(&env, &mut green, &mut replay, &d, from.ip());
        assert_eq!(k.msg_type, MessageType::OpenTunnel);
        assert_eq!(k.services, vec!["tunnel"]);
        assert_eq!(
            k.open_for,
            "127.0.0.1".parse::<IpAddr>().expect("ip"),
            "auto = the source address"
        );
        assert!(!k.source_mode);

        let o = env.run(&cfg, &["--json", "send", "request", "ssh", "web"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(j["ok"], true);
        let (d, from) = receive(&sock);
        let r = verify(&env, &mut green, &mut replay, &d, from.ip());
        assert_eq!(
            r.session_id, k.session_id,
            "request carries the open's session"
        );
        assert_eq!(r.services, vec!["ssh", "web"]);
        assert!(r.timestamp_ms > k.timestamp_ms);

        let o = env.run(&cfg, &["send", "--allow-ip", "source", "close"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("warning"), "source mode warns");
        let (d, from) = receive(&sock);
        let c = verify(&env, &mut green, &mut replay, &d, from.ip());
        assert_eq!(c.msg_type, MessageType::Close);
        assert_eq!(c.session_id, k.session_id);
        assert!(c.source_mode);

        // The session is gone after close.
        let o = env.run(&cfg, &["send", "request", "ssh"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("no open session"));
    }
}

#[test]
fn dry_run_prints_and_sends_nothing() {
    let env = Env::new("dry");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    let o = env.run(&cfg, &["--json", "send", "--dry-run", "open", "ssh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["dry_run"], true);
    let d = hex::decode(j["datagram"].as_str().expect("hex")).expect("hex");
    assert_eq!(d.len() as u64, j["bytes"].as_u64().expect("n"));
    assert!(
        j["identity"]
            .as_array()
            .expect("names")
            .iter()
            .any(|n| n == "cn:alice")
    );
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("t");
    let mut buf = [0u8; 16];
    assert!(sock.recv_from(&mut buf).is_err(), "dry run sends nothing");
    // The printed datagram is a valid knock.
    let mut green = env.green();
    let mut replay = MemoryReplayState::default();
    verify(
        &env,
        &mut green,
        &mut replay,
        &d,
        "127.0.0.1".parse().expect("ip"),
    );
}

#[test]
fn wait_succeeds_when_the_port_opens_after_the_knock() {
    let env = Env::new("wait");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    // The "server": verify the knock, then open a TCP port.
    let tcp_port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ca_der = env.ca.cert_der().to_vec();
    let server = std::thread::spawn(move || {
        let mut green = KnockVerifier::new(
            vec![testkit::receiver_key("green")],
            TrustStore::new(&TrustConfig {
                anchors: vec![ca_der],
                ..TrustConfig::default()
            })
            .expect("trust"),
            Policy {
                rules: vec![Rule {
                    identity: IdentityPattern::Any,
                    services: ServiceSet::All,
                }],
                ..Policy::default()
            },
            TimeLimits::default(),
        );
        let mut replay = MemoryReplayState::default();
        let (d, from) = receive(&sock);
        green
            .verify(&d, from.ip(), now_ms(), &mut replay)
            .expect("valid");
        // The port opens only once the client showed it waited: its fresh
        // knock, resent after probing the closed port without success.
        let (d, from) = receive(&sock);
        green
            .verify(&d, from.ip(), now_ms(), &mut replay)
            .expect("the resent knock is fresh and valid");
        let l = TcpListener::bind(("127.0.0.1", tcp_port)).expect("rebind");
        let _ = l.accept();
    });
    let o = env.run(
        &cfg,
        &[
            "send",
            "--wait",
            &tcp_port.to_string(),
            "--wait-timeout",
            "8",
            "open",
        ],
    );
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("is open"), "{out}");
    server.join().expect("server thread");
}

#[test]
fn wait_times_out_with_exit_5_and_resends_fresh_knocks() {
    let env = Env::new("timeout");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let o = env.run(
        &cfg,
        &[
            "send",
            "--wait",
            &closed.to_string(),
            "--wait-timeout",
            "2",
            "--resend",
            "2",
            "open",
        ],
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("did not open"));
    // The first knock and two fresh resends, each valid and newer.
    let mut green = env.green();
    let mut replay = MemoryReplayState::default();
    for _ in 0..3 {
        let (d, from) = receive(&sock);
        verify(&env, &mut green, &mut replay, &d, from.ip());
    }
}

#[test]
fn bad_inputs_give_one_line_and_their_exit_code() {
    let env = Env::new("bad");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (_p256_key, p256_cert) = env.client(KeyAlg::P256, "alice");
    let (_sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    let check = |args: &[&str], cfg: &Path, code: i32, needle: &str| {
        let o = env.run(cfg, args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: expected '{needle}' in: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: one line: {e}");
    };
    check(
        &["-p", "nope", "send", "open"],
        &cfg,
        2,
        "unknown profile 'nope'",
    );
    check(
        &["send", "--server-key", "not base64!", "open"],
        &cfg,
        2,
        "server key",
    );
    check(
        &["send", "--server-key", "AAAA", "open"],
        &cfg,
        2,
        "server key",
    );
    check(
        &["send", "--key", "/nonexistent/key.pem", "open"],
        &cfg,
        2,
        "/nonexistent/key.pem",
    );
    let open_key = env.path("open.key");
    std::fs::copy(&key, &open_key).expect("copy");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    check(
        &["send", "--key", open_key.to_str().expect("utf8"), "open"],
        &cfg,
        2,
        "chmod 600",
    );
    check(
        &["send", "--cert", p256_cert.to_str().expect("utf8"), "open"],
        &cfg,
        2,
        "match",
    );
    check(
        &["send", "request", &"a".repeat(33)],
        &cfg,
        2,
        "service name",
    );
    check(&["send", "open", "Bad_Name"], &cfg, 2, "service name");
    check(&["send", "--lifetime", "0", "open"], &cfg, 2, "lifetime");
    check(
        &["send", "--allow-ip", "nowhere", "open"],
        &cfg,
        2,
        "allow-ip",
    );
    check(
        &["send", "--session", "xyz", "request", "ssh"],
        &cfg,
        2,
        "--session",
    );

    // A certificate so large that the knock would exceed the size limit.
    let kp = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key).expect("key")).expect("kp");
    let mut params = rcgen::CertificateParams::new(
        (0..40)
            .map(|i| format!("host{i}.a-rather-long-domain-name.example.org"))
            .collect::<Vec<_>>(),
    )
    .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    let big = params.self_signed(&kp).expect("cert");
    let big_path = env.path("big.crt");
    std::fs::write(&big_path, big.pem()).expect("write");
    check(
        &["send", "--cert", big_path.to_str().expect("utf8"), "open"],
        &cfg,
        2,
        "byte limit",
    );
    // A configuration file that does not parse.
    let broken = env.path("broken.toml");
    std::fs::write(&broken, "[profiles.x\nserver=").expect("write");
    check(&["send", "open"], &broken, 2, "broken.toml");
}

#[test]
fn unresolvable_host_is_a_network_error() {
    // Run in a new network namespace with no interfaces up: resolution fails
    // at once and no query can leave this machine.
    if Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!("this test needs `unshare --net` (util-linux) and root, as CI has");
    }
    let env = Env::new("dns");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let cfg = env.config(62201, &key, &cert, "");
    let o = Command::new("unshare")
        .args(["--net", BIN, "--config"])
        .arg(&cfg)
        .args(["send", "--server", "green.spa-test.invalid", "open"])
        .env("XDG_STATE_HOME", env.path("state"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot resolve server 'green.spa-test.invalid'"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_man_and_completions_come_from_the_same_definitions() {
    let o = Command::new(BIN)
        .args(["send", "--help"])
        .output()
        .expect("run");
    assert!(o.status.success());
    let h = String::from_utf8_lossy(&o.stdout);
    assert!(h.contains("Examples:") && h.contains("--wait"));
    let o = Command::new(BIN).arg("--help").output().expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes:"));
    let o = Command::new(BIN).arg("man").output().expect("run");
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains(".TH spa-client"));
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(o.status.success() && !o.stdout.is_empty(), "{shell}");
    }
}

/// `man --dir` writes every page spa-client(1) refers to; the main page
/// documents every profile key.
#[test]
fn man_dir_writes_every_referenced_page() {
    let env = Env::new("man");
    let dir = env.path("man");
    let o = Command::new(BIN)
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let mut refs = Vec::new();
    for page in std::fs::read_dir(&dir).expect("dir").flatten() {
        let text = std::fs::read_to_string(page.path())
            .expect("page")
            .replace("\\-", "-");
        for (i, _) in text.match_indices("spa-client-") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            if text[i + name.len()..].starts_with("(1)") {
                refs.push(name);
            }
        }
    }
    assert!(refs.iter().any(|r| r == "spa-client-send"), "{refs:?}");
    assert!(
        refs.iter().any(|r| r == "spa-client-token-list"),
        "{refs:?}"
    );
    for r in &refs {
        assert!(
            dir.join(format!("{r}.1")).is_file(),
            "{r}(1) is referred to but was not written"
        );
    }
    let main = std::fs::read_to_string(dir.join("spa-client.1")).expect("main page");
    assert_eq!(
        main,
        String::from_utf8(Command::new(BIN).arg("man").output().expect("run").stdout)
            .expect("utf-8"),
        "man --dir writes the page man prints"
    );
    for key in [
        ".SH CONFIGURATION",
        "server_key =",
        "tunnel_ca =",
        "tunnel_port =",
        "close_on_exit =",
        "token_serial =",
        "key_id =",
        "pin =",
        "EXIT STATUS",
    ] {
        assert!(main.contains(key), "{key} missing from spa-client(1)");
    }
}

/// Without a configuration file, the error names the file it looked for
/// and how to make one, not only the missing value.
#[test]
fn missing_config_names_the_file_to_create() {
    let env = Env::new("noconfig");
    let o = Command::new(BIN)
        .args(["send", "open"])
        .env("XDG_CONFIG_HOME", env.path("cfg"))
        .env("XDG_STATE_HOME", env.path("state"))
        .env("HOME", &env.dir)
        .output()
        .expect("run");
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    let want = format!(
        "spa-client: error: no server: give --server, or create the configuration file {} (it \
         does not exist) with a profile that sets server (a profile needs server, server_key, \
         certificate, and key or a [pkcs11] table; the format: `man spa-client`, CONFIGURATION)",
        env.path("cfg/spa/client.toml").display()
    );
    assert_eq!(e.trim_end(), want);

    // With a file, the profile and the file are named, with the flag and
    // the key to set.
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let cfg = env.path("partial.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.lab]\nserver = \"127.0.0.1\"\nkey = \"{}\"\ncertificate = \"{}\"\n",
            key.display(),
            cert.display()
        ),
    )
    .expect("write");
    let o = env.run(&cfg, &["send", "open"]);
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "spa-client: error: no server key: give --server-key or set server_key in profile \
             'lab' of {}",
            cfg.display()
        )
    );
}

/// Configuration errors carry file:line:column.
#[test]
fn config_errors_carry_line_and_column() {
    let env = Env::new("cfgline");
    let cfg = env.path("client.toml");
    std::fs::write(&cfg, "default = \"lab\"\n[profiles.lab]\nserver = 7\n").expect("write");
    let o = env.run(&cfg, &["send", "open"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.starts_with(&format!(
            "spa-client: error: configuration {}:3:10: ",
            cfg.display()
        )),
        "{e}"
    );
}

/// Runs `spa-client <args>` `n` times at once; returns their outputs.
fn run_parallel(env: &Env, cfg: &Path, args: &[&str], n: usize) -> Vec<Output> {
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..n).map(|_| s.spawn(|| env.run(cfg, args))).collect();
        runs.into_iter()
            .map(|h| h.join().expect("run thread"))
            .collect()
    })
}

#[test]
fn parallel_dry_runs_reserve_distinct_increasing_timestamps() {
    // SPEC §7.5: the state file is locked from reading the last timestamp
    // to writing the next, so parallel runs of one profile never pick the
    // same one (they used to, and refused each other as replayed).
    let env = Env::new("lock-dry");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (_sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    let outs = run_parallel(&env, &cfg, &["--json", "send", "--dry-run", "open"], 8);
    let mut ts: Vec<u64> = outs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", stderr(o));
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
            j["timestamp_ms"].as_u64().expect("timestamp_ms")
        })
        .collect();
    ts.sort_unstable();
    ts.dedup();
    assert_eq!(ts.len(), 8, "timestamps collided: {ts:?}");
    let state = std::fs::read_to_string(env.path("state/spa/lab.state")).expect("state");
    assert!(
        state.contains(&format!("last_timestamp_ms={}\n", ts[7])),
        "{state}"
    );
    // A dry run keeps no session.
    assert!(!state.contains("session_id="), "{state}");
}

#[test]
fn parallel_sends_of_one_profile_are_all_accepted_in_arrival_order() {
    // The lock is held until the knock is on the wire: the datagrams leave
    // (and, on loopback, arrive) in timestamp order, so a strict floor
    // accepts every one.
    let env = Env::new("lock-send");
    let (key, cert) = env.client(KeyAlg::Ed25519, "alice");
    let (sock, port) = listener();
    let cfg = env.config(port, &key, &cert, "");
    let outs = run_parallel(&env, &cfg, &["send", "open"], 6);
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
    }
    let mut green = env.green();
    let mut replay = MemoryReplayState::default();
    let mut last = 0;
    for _ in 0..6 {
        let (d, from) = receive(&sock);
        let k = verify(&env, &mut green, &mut replay, &d, from.ip());
        assert!(k.timestamp_ms > last);
        last = k.timestamp_ms;
    }
}
