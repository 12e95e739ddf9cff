//! The whole flow with the client's key on a smart card: a SoftHSM2 token
//! (PKCS#11), as root, on three network namespaces:
//!
//! ```text
//! client 10.200.81.2 ── 10.200.81.1 green 10.200.82.1 ── 10.200.82.2 red
//! ```
//!
//! For an Ed25519 and a P-256 key: `spa-client token keygen` makes the key
//! on the token, `spa-client token csr` has the token sign the request,
//! `spa-server pki issue` certifies it as alice. Then the real `spa-client
//! connect`, with a `[pkcs11]` profile and no key file, knocks (open-tunnel
//! and request-service, signed on the token; green relays the order to
//! red) and opens the mutual-TLS tunnel to green, authenticated by the
//! token key, to `python3 -m http.server` on red:
//!
//! - `connect web --listen` and real `curl` (PIN from an environment
//!   variable), then `send close`;
//! - `connect web` on standard input and output, as ssh's `ProxyCommand`
//!   uses it, with `close_on_exit` (PIN from a file): the close knock is
//!   signed on the token too;
//! - `pin = "prompt"` on a terminal (a pty made by `script`): `connect
//!   --listen` asks for the PIN once for its knocks and every TLS
//!   connection, and `send close` once.
//!
//! After each, green and red have no session and red's `allow4` is empty.
//! The PIN never appears on a command line. Skips (and says why) if a tool
//! is missing; needs root. Addresses are in 10.200.0.0/16 inside the
//! namespaces only; namespaces, daemons and servers are removed on drop,
//! also when the test fails.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::{
    Daemon, GreenRelayConfig, Netns, RedRelayConfig, TempDir, allow4, bin, link4, make_relay_pki,
    require_root, run_ok, sessions, start_green, start_red, unique_tag, wait_echo_off, wait_until,
    write_green_config, write_red_config,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 2);
const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 1);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 82, 2);
const KNOCK_PORT: u16 = 62201;
const ORDER_PORT: u16 = 62202;
const TUNNEL_PORT: u16 = 8443;
const WEB_PORT: u16 = 8080;
const LOCAL_PORT: u16 = 18080;
/// The test tokens' PINs.
const USER_PIN: &str = "246810";
const SO_PIN: &str = "13579111";
const PAGE: &str = "hello from red, through a token-authenticated tunnel\n";

const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// A process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn token_key_knocks_and_authenticates_the_tunnel() {
    let Some(module) = tools_or_skip("token_key_knocks_and_authenticates_the_tunnel") else {
        return;
    };
    require_root();
    let tag = unique_tag();
    let dir = TempDir::new(&format!("token-tunnel-{tag}"));
    let client = Netns::new("kc", &tag);
    let green_ns = Netns::new("kg", &tag);
    let red_ns = Netns::new("kr", &tag);
    link4(&client, "to-green", CLIENT, &green_ns, "to-client", GREEN_C);
    link4(&green_ns, "to-red", GREEN_R, &red_ns, "to-green", RED);

    let server = bin("spa-server");
    let spa_client = bin("spa-client");
    let red_relay = bin("red-relay");
    let keys = make_relay_pki(&dir, "token tunnel e2e CA", &red_relay, Some(GREEN_C));
    write_green_config(
        &dir,
        &keys,
        &GreenRelayConfig {
            knock_port: KNOCK_PORT,
            tunnel_port: TUNNEL_PORT,
            red: SocketAddr::from((RED, ORDER_PORT)),
            source: GREEN_R,
            services: &[("web", WEB_PORT)],
            tunnel: true,
        },
    );
    write_red_config(
        &dir,
        &keys,
        &RedRelayConfig {
            order_port: ORDER_PORT,
            management: None,
            services: &[("web", WEB_PORT)],
        },
    );
    run_ok(Command::new(&server).args(["check-config", "--config", &dir.s("green.toml")]));

    // The tokens, and alice's key on each.
    let tokens = [("ed25519", "spa-ed25519"), ("p256", "spa-p256")];
    let softhsm_conf = softhsm(&dir, &tokens.map(|(_, t)| t));
    let pin_file = dir.join("pin");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .expect("PIN file");
        writeln!(f, "{USER_PIN}").expect("PIN file");
    }
    let client_run = ClientRun {
        bin: spa_client.clone(),
        config: dir.join("client.toml"),
        softhsm_conf,
        state: dir.join("state"),
    };
    let mut profiles = String::new();
    for (alg, token) in tokens {
        enroll(&client_run, &server, &dir, &module, alg, token);
        for (suffix, pin, extra) in [
            ("", "env:SPA_PIN".to_owned(), ""),
            (
                "-auto",
                format!("file:{}", pin_file.display()),
                "close_on_exit = true\n",
            ),
            ("-prompt", "prompt".to_owned(), ""),
        ] {
            profiles.push_str(&format!(
                "[profiles.{alg}{suffix}]\n\
                 server = \"{GREEN_C}\"\n\
                 server_key = \"{green_pub}\"\n\
                 certificate = \"{cert}\"\n\
                 lifetime = 60\n\
                 tunnel_ca = \"{ca}\"\n\
                 tunnel_port = {TUNNEL_PORT}\n\
                 {extra}\
                 [profiles.{alg}{suffix}.pkcs11]\n\
                 module = \"{module}\"\n\
                 token = \"{token}\"\n\
                 key_label = \"spa\"\n\
                 pin = \"{pin}\"\n\n",
                green_pub = keys.green_pub,
                cert = dir.s(&format!("alice-{alg}.crt")),
                ca = dir.s("ca/ca.pem"),
                module = module.display(),
            ));
        }
    }
    std::fs::write(&client_run.config, profiles).expect("client.toml");

    // Red: an HTTP server behind red-relay.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("hello.txt"), PAGE).expect("page");
    let _web = Proc(red_ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            &WEB_PORT.to_string(),
            "--bind",
            &RED.to_string(),
            "--directory",
            www.to_str().expect("utf-8"),
        ],
        &dir.join("http.log"),
    ));
    let red = start_red(&red_ns, &red_relay, &dir);
    let green = start_green(&green_ns, &dir);
    assert!(
        wait_until(Duration::from_secs(10), || red_ns
            .connect(
                SocketAddr::from((RED, WEB_PORT)),
                Duration::from_millis(200)
            )
            .is_ok()),
        "red's HTTP server did not start"
    );
    let beds = Bed {
        client: &client,
        red_ns: &red_ns,
        green: &green,
        red: &red,
        run: &client_run,
        dir: &dir,
    };

    let started = Instant::now();
    let mut closes = 0;
    for (alg, _) in tokens {
        beds.listen_with_env_pin(alg);
        closes += 1;
        beds.wait_closed(alg, closes);

        beds.stdio_with_file_pin(alg);
        closes += 1;
        beds.wait_closed(alg, closes);

        beds.prompted_pin_asked_once(alg);
        closes += 1;
        beds.wait_closed(alg, closes);
        eprintln!("{alg}: done after {:?}", started.elapsed());
    }
    let log = green.log_text();
    assert!(log.contains("tunnel: connected"), "{log}");
    assert!(!log.contains(USER_PIN), "a PIN in green's log");
}

/// The tools this test needs: the SoftHSM2 module, or `None` after saying
/// which are missing.
fn tools_or_skip(test: &str) -> Option<PathBuf> {
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    let mut missing: Vec<&str> = [
        ("nft", "nftables"),
        ("python3", "python3"),
        ("curl", "curl"),
        ("script", "util-linux"),
        ("softhsm2-util", "softhsm2"),
    ]
    .iter()
    .filter(|(p, _)| !on_path(p))
    .map(|(_, pkg)| *pkg)
    .collect();
    let module = SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if module.is_none() && !missing.contains(&"softhsm2") {
        missing.push("softhsm2");
    }
    if missing.is_empty() {
        module
    } else {
        tests::cannot_run(
            test,
            &format!(
                "needs `apt-get install -y {}` (CI installs them)",
                missing.join(" ")
            ),
        );
        None
    }
}

/// A SoftHSM2 directory in `dir` with `tokens` initialized; returns its
/// configuration file (for `SOFTHSM2_CONF`).
fn softhsm(dir: &TempDir, tokens: &[&str]) -> PathBuf {
    let tokendir = dir.join("softhsm-tokens");
    std::fs::create_dir_all(&tokendir).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokendir.display()
        ),
    )
    .expect("softhsm2.conf");
    for label in tokens {
        run_ok(
            Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
                .env("SOFTHSM2_CONF", &conf)
                .stdin(Stdio::null()),
        );
    }
    conf
}

/// How to run `spa-client` against the test's SoftHSM2 and profiles.
struct ClientRun {
    bin: PathBuf,
    config: PathBuf,
    softhsm_conf: PathBuf,
    state: PathBuf,
}

impl ClientRun {
    /// `spa-client --config … args` inside `ns`, with `SPA_PIN` in its
    /// environment, never on its command line.
    fn command(&self, ns: &Netns, args: &[&str]) -> Command {
        let mut c = ns.cmd(self.bin.to_str().expect("utf-8"));
        c.arg("--config").arg(&self.config).args(args);
        self.environment(&mut c, args);
        c
    }

    /// `spa-client args` on the host (no profile), likewise.
    fn host_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args);
        self.environment(&mut c, args);
        c
    }

    fn environment(&self, c: &mut Command, args: &[&str]) {
        assert!(
            !args.iter().any(|a| a.contains(USER_PIN)),
            "a PIN on argv: {args:?}"
        );
        c.env("SOFTHSM2_CONF", &self.softhsm_conf)
            .env("XDG_STATE_HOME", &self.state)
            .env("SPA_PIN", USER_PIN)
            .stdin(Stdio::null());
    }

    /// The shell line `script` runs (no PIN in it: `SPA_PIN` is not used).
    /// `exec` makes spa-client the terminal's session leader, which the
    /// kernel sends SIGHUP when the terminal goes; `env --default-signal`
    /// undoes a SIGHUP the test runner ignores (`nohup`, some CI shells),
    /// which every child would inherit and the shell could not reset.
    fn shell_line(&self, args: &[&str]) -> String {
        format!(
            "exec env --default-signal=HUP {} --config {} {}",
            self.bin.display(),
            self.config.display(),
            args.join(" ")
        )
    }
}

/// Makes alice's key on `token` with the binaries an operator uses:
/// `spa-client token keygen` and `token csr`, `spa-server pki issue`.
/// Writes `alice-<alg>.crt`.
fn enroll(run: &ClientRun, server: &Path, dir: &TempDir, module: &Path, alg: &str, token: &str) {
    let module = module.to_str().expect("utf-8");
    let token_args = |sub: &'static str| -> Vec<&str> {
        vec![
            "token",
            sub,
            "--module",
            module,
            "--token",
            token,
            "--pin",
            "env:SPA_PIN",
        ]
    };
    let mut keygen = token_args("keygen");
    keygen.extend(["--label", "spa", "--id", "01", "--algorithm", alg]);
    run_ok(&mut run.host_command(&keygen));
    let csr = dir.s(&format!("alice-{alg}.csr"));
    let mut request = token_args("csr");
    request.extend(["--label", "spa", "--name", "alice", "--out", &csr]);
    run_ok(&mut run.host_command(&request));
    run_ok(Command::new(server).args([
        "pki",
        "issue",
        "--dir",
        &dir.s("ca"),
        "--csr",
        &csr,
        "--name",
        "alice",
        "--client",
        "--out",
        &dir.s(&format!("alice-{alg}.crt")),
    ]));
}

/// The running test bed.
struct Bed<'a> {
    client: &'a Netns,
    red_ns: &'a Netns,
    green: &'a Daemon,
    red: &'a Daemon,
    run: &'a ClientRun,
    dir: &'a TempDir,
}

impl Bed<'_> {
    /// `connect web --listen` (PIN from `SPA_PIN`), `curl` twice through
    /// it, then `send close`.
    fn listen_with_env_pin(&self, alg: &str) {
        let local = format!("127.0.0.1:{LOCAL_PORT}");
        let log = self.dir.join(&format!("forward-{alg}.log"));
        let mut fwd = self.run.command(
            self.client,
            &["--profile", alg, "connect", "web", "--listen", &local],
        );
        let out = std::fs::File::create(&log).expect("log");
        fwd.stdout(out.try_clone().expect("log")).stderr(out);
        let fwd = Proc(fwd.spawn().expect("spawn spa-client connect"));
        self.wait_listening(&log);
        for _ in 0..2 {
            self.curl(&log);
        }
        drop(fwd);
        let out = self
            .run
            .command(self.client, &["--profile", alg, "send", "close"])
            .output()
            .expect("send close");
        assert!(out.status.success(), "{alg}: send close: {out:?}");
    }

    /// `connect web` on standard input and output (as ssh's
    /// `ProxyCommand`), PIN from a file, `close_on_exit`: an HTTP request
    /// in, the page out, then the close knock.
    fn stdio_with_file_pin(&self, alg: &str) {
        let profile = format!("{alg}-auto");
        let mut cmd = self
            .run
            .command(self.client, &["--profile", &profile, "connect", "web"]);
        cmd.env_remove("SPA_PIN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Proc(cmd.spawn().expect("spawn spa-client connect"));
        let mut stdin = child.0.stdin.take().expect("stdin");
        stdin
            .write_all(b"GET /hello.txt HTTP/1.0\r\nHost: red\r\n\r\n")
            .expect("request");
        drop(stdin);
        let ended = wait_until(Duration::from_secs(30), || {
            child.0.try_wait().ok().flatten().is_some()
        });
        let mut stdout = String::new();
        let mut stderr = String::new();
        if ended {
            let _ = child
                .0
                .stdout
                .take()
                .map(|mut s| s.read_to_string(&mut stdout));
            let _ = child
                .0
                .stderr
                .take()
                .map(|mut s| s.read_to_string(&mut stderr));
        }
        assert!(
            ended && stdout.starts_with("HTTP/1.0 200") && stdout.ends_with(PAGE),
            "{alg}: connect on stdin/stdout (ended: {ended}): {stdout}{stderr}\ngreen log:\n{}",
            self.green.log_text()
        );
        let status = child.0.wait().expect("wait");
        assert!(status.success(), "{alg}: connect: {status}: {stderr}");
    }

    /// `pin = "prompt"` on a pty: `connect --listen` asks once for its
    /// knocks and TLS connections; `send close` once.
    fn prompted_pin_asked_once(&self, alg: &str) {
        let profile = format!("{alg}-prompt");
        let local = format!("127.0.0.1:{LOCAL_PORT}");
        let fwd = Prompted::spawn(
            self.client,
            self.run,
            &["--profile", &profile, "connect", "web", "--listen", &local],
        );
        let log = self.dir.join(&format!("prompted-{alg}.log"));
        let listening = wait_until(Duration::from_secs(20), || {
            self.client
                .connect(
                    SocketAddr::from(([127, 0, 0, 1], LOCAL_PORT)),
                    Duration::from_millis(200),
                )
                .is_ok()
        });
        std::fs::write(&log, fwd.text()).expect("log");
        assert!(listening, "{alg}: prompted connect: {}", fwd.text());
        for _ in 0..2 {
            self.curl(&log);
        }
        let text = fwd.stop();
        // spa-client goes with its terminal (SIGHUP): the port is free again.
        assert!(
            wait_until(Duration::from_secs(5), || self
                .client
                .connect(
                    SocketAddr::from(([127, 0, 0, 1], LOCAL_PORT)),
                    Duration::from_millis(200)
                )
                .is_err()),
            "{alg}: the prompted connect outlived its terminal"
        );
        assert_eq!(
            text.matches(&prompt(alg)).count(),
            1,
            "{alg}: one PIN prompt for connect's knocks and TLS connections:\n{text}"
        );

        let close = Prompted::spawn(
            self.client,
            self.run,
            &["--profile", &profile, "send", "close"],
        );
        let text = close.wait(Duration::from_secs(20));
        assert_eq!(text.matches(&prompt(alg)).count(), 1, "{alg}: {text}");
        assert!(text.contains("sent close"), "{alg}: send close: {text}");
        assert!(
            !text.contains(USER_PIN),
            "{alg}: the PIN was echoed: {text}"
        );
    }

    fn wait_listening(&self, log: &Path) {
        assert!(
            wait_until(Duration::from_secs(20), || self
                .client
                .connect(
                    SocketAddr::from(([127, 0, 0, 1], LOCAL_PORT)),
                    Duration::from_millis(200)
                )
                .is_ok()),
            "spa-client connect --listen did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// `curl` through the local forwarder gets red's page.
    fn curl(&self, log: &Path) {
        let out = self.client.out(&[
            "curl",
            "-sS",
            "--max-time",
            "15",
            &format!("http://127.0.0.1:{LOCAL_PORT}/hello.txt"),
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            PAGE,
            "curl: {}\nforwarder:\n{}\ngreen log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(log).unwrap_or_default(),
            self.green.log_text()
        );
    }

    /// Green has counted `closes` close knocks; no session is left on
    /// green or red and red's firewall holds no address.
    fn wait_closed(&self, alg: &str, closes: u64) {
        assert!(
            wait_until(Duration::from_secs(5), || self
                .green
                .counter("accepted.close")
                >= closes
                && sessions(self.green) == 0
                && sessions(self.red) == 0
                && allow4(self.red_ns).is_empty()),
            "{alg}: after close {closes}: green {} ({} closes), red {}, red's allow4 {:?}\ngreen log:\n{}",
            self.green.status()["sessions"],
            self.green.counter("accepted.close"),
            self.red.status()["sessions"],
            allow4(self.red_ns),
            self.green.log_text()
        );
    }
}

fn prompt(alg: &str) -> String {
    format!("PIN for token 'spa-{alg}'")
}

/// `spa-client` on a terminal: `script` gives it a pty inside the client's
/// namespace; every PIN prompt seen is answered (so a second prompt is
/// counted, not waited on forever).
struct Prompted {
    child: Proc,
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Prompted {
    fn spawn(ns: &Netns, run: &ClientRun, args: &[&str]) -> Self {
        let mut cmd = ns.cmd("script");
        cmd.args(["-q", "-e", "-c", &run.shell_line(args), "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("SOFTHSM2_CONF", &run.softhsm_conf)
            .env("XDG_STATE_HOME", &run.state)
            .env_remove("SPA_PIN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn script");
        let script = child.id();
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let text = Arc::new(Mutex::new(String::new()));
        let seen = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let mut answered = 0;
            let mut buf = [0u8; 512];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..n]);
                let now = String::from_utf8_lossy(&bytes).into_owned();
                let prompts = now.matches("PIN for token").count();
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
                while answered < prompts {
                    // Type only once the prompt turned the echo off.
                    if !wait_echo_off(script, Duration::from_secs(20)) {
                        break;
                    }
                    let _ = writeln!(stdin, "{USER_PIN}");
                    answered += 1;
                }
            }
        });
        Self {
            child: Proc(child),
            text,
            reader: Some(reader),
        }
    }

    /// The terminal's output so far.
    fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills it; the terminal's output.
    fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.text()
    }

    /// Waits for it to exit (then kills it); the terminal's output.
    fn wait(mut self, timeout: Duration) -> String {
        let child = &mut self.child.0;
        wait_until(timeout, || child.try_wait().ok().flatten().is_some());
        self.stop()
    }
}
