//! Green as its unprivileged user, end to end, as root, in two network
//! namespaces:
//!
//! ```text
//!   client 10.200.91.2 ── 10.200.91.1 green
//! ```
//!
//! The layout is README's "Using it", under a temporary root: the CA in
//! `etc/spa/ca` (0700, as `pki init` makes it), the public copies
//! `etc/spa/ca.pem` (`pki init --cert-out`) and `etc/spa/crl.pem`
//! (`pki crl --out`), the replay store in `var/lib/spa` (0711, as the
//! systemd unit makes it), `daemon.user` a dedicated system user
//! (`spa-test`, created if missing). Knocks come from the real
//! `spa-client`.
//!
//! - a revocation is in force, without a restart, within a poll period of
//!   the CRL being written; a reload that fails shows in `status`;
//! - a trust file the daemon user cannot read fails `check-config` and the
//!   start, naming the file;
//! - every thread of the running daemon (the tunnel's included, with a
//!   connection being served) has dropped its privileges;
//! - the replay store reopens its file after a failed write, as the daemon
//!   user, and later knocks are accepted.
//!
//! Needs root, iproute2, nftables, useradd and prlimit; fails when one is
//! missing. No traffic leaves the namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tests::{Daemon, Netns, TempDir, bin, link4, require_tools, run_ok, unique_tag, wait_until};

const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 91, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 91, 2);
const KNOCK_PORT: u16 = 62201;
const SSH_PORT: u16 = 2222;
const TUNNEL_PORT: u16 = 8443;
/// The daemon's user, made by the first test that needs it.
const USER: &str = "spa-test";
/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13): all a dropped thread may hold.
const KEPT_CAPS: u64 = (1 << 12) | (1 << 13);

/// The system user `spa-test` (created once if missing): `(uid, gid)`.
fn daemon_user() -> (u32, u32) {
    static MADE: Mutex<()> = Mutex::new(());
    let _g = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let find = || nix::unistd::User::from_name(USER).ok().flatten();
    if find().is_none() {
        run_ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            USER,
        ]));
    }
    let u = find().expect("the spa-test user");
    (u.uid.as_raw(), u.gid.as_raw())
}

/// README's layout under a temporary root, a green and a client namespace.
struct Bed {
    dir: TempDir,
    green: Netns,
    client: Netns,
    uid: u32,
}

impl Bed {
    fn new(tunnel: bool) -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("useradd", "passwd"),
            ("prlimit", "util-linux"),
        ]);
        let (uid, _) = daemon_user();
        let tag = unique_tag();
        let dir = TempDir::new(&format!("priv-{tag}"));
        let green = Netns::new("pg", &tag);
        let client = Netns::new("pc", &tag);
        link4(&client, "to-green", CLIENT, &green, "to-client", GREEN);
        // etc/spa is made by pki init, as on a fresh host.
        std::fs::create_dir_all(dir.join("run/spa")).expect("mkdir");
        std::fs::create_dir_all(dir.join("var/lib/spa")).expect("mkdir");
        set_mode(&dir.join("var"), 0o755);
        set_mode(&dir.join("var/lib"), 0o755);
        set_mode(&dir.join("var/lib/spa"), 0o711);
        let server = bin("spa-server");
        let spa = |args: &[&str]| run_ok(Command::new(&server).args(args));
        spa(&[
            "pki",
            "init",
            "--dir",
            &dir.s("etc/spa/ca"),
            "--name",
            "privileges e2e CA",
            "--cert-out",
            &dir.s("etc/spa/ca.pem"),
        ]);
        let mode = std::fs::metadata(dir.join("etc/spa/ca"))
            .expect("ca dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "pki init makes the CA directory 0700");
        let mut certs = vec![("alice", "--client")];
        if tunnel {
            certs.push(("green-tls", "--server"));
        }
        for (who, usage) in certs {
            run_ok(Command::new(bin("spa-client")).args([
                "keygen",
                "--out",
                &dir.s(&format!("{who}.key")),
                "--csr",
                &dir.s(&format!("{who}.csr")),
                "--name",
                who,
            ]));
            let mut issue = vec![
                "pki",
                "issue",
                "--dir",
                &dir.s("etc/spa/ca"),
                "--csr",
                &dir.s(&format!("{who}.csr")),
                "--name",
                who,
                usage,
                "--out",
                &dir.s(&format!("{who}.crt")),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if usage == "--server" {
                issue.extend(["--ip".to_owned(), GREEN.to_string()]);
            }
            run_ok(Command::new(&server).args(&issue));
        }
        spa(&[
            "pki",
            "crl",
            "--dir",
            &dir.s("etc/spa/ca"),
            "--out",
            &dir.s("etc/spa/crl.pem"),
        ]);
        let out = spa(&["keygen", "--out", &dir.s("etc/spa/green.key")]);
        let green_pub = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        std::fs::write(
            dir.join("client.toml"),
            format!(
                "[profiles.e2e]\nserver = \"{GREEN}\"\nport = {KNOCK_PORT}\n\
                 server_key = \"{green_pub}\"\ncertificate = \"{}\"\nkey = \"{}\"\n\
                 services = [\"ssh\"]\nallow_ip = \"auto\"\nlifetime = 30\n",
                dir.s("alice.crt"),
                dir.s("alice.key")
            ),
        )
        .expect("client.toml");
        Self {
            dir,
            green,
            client,
            uid,
        }
    }

    /// Writes `green.toml`, as `spa-server/dist/spa-server.toml.example`
    /// under the temporary root; `anchor` replaces the CA certificate's
    /// path when given.
    fn config(&self, anchor: Option<&Path>, tunnel: bool) -> PathBuf {
        let d = &self.dir;
        let anchor = anchor.map_or_else(|| d.s("etc/spa/ca.pem"), |p| p.display().to_string());
        let (tunnel_rule, tunnel_section) = if tunnel {
            (
                ", \"tunnel\"",
                format!(
                    "[[services]]\nname = \"tunnel\"\nproto = \"tcp\"\nport = {TUNNEL_PORT}\n\n\
                     [tunnel]\nlisten_port = {TUNNEL_PORT}\ncertificate = \"{}\"\nkey = \"{}\"\n",
                    d.s("green-tls.crt"),
                    d.s("green-tls.key")
                ),
            )
        } else {
            ("", String::new())
        };
        let text = format!(
            "[daemon]\nknock_port = {KNOCK_PORT}\ncapture = \"packet\"\n\
             keys = [\"{key}\"]\nreplay_db = \"{db}\"\ncontrol_socket = \"{sock}\"\n\
             user = \"{USER}\"\nlog_format = \"plain\"\n\n\
             [trust]\nanchors = [\"{anchor}\"]\ncrls = [\"{crl}\"]\n\n\
             [firewall]\nmode = \"blackhole\"\n\n\
             [[services]]\nname = \"ssh\"\nproto = \"tcp\"\nport = {SSH_PORT}\n\n\
             [[rules]]\nidentity = \"cn:alice\"\nservices = [\"ssh\"{tunnel_rule}]\n\n\
             {tunnel_section}",
            key = d.s("etc/spa/green.key"),
            db = d.s("var/lib/spa/replay.redb"),
            sock = d.s("run/spa/control.sock"),
            crl = d.s("etc/spa/crl.pem"),
        );
        let p = d.join("etc/spa/spa-server.toml");
        std::fs::write(&p, text).expect("config");
        p
    }

    fn check_config(&self, config: &Path) -> Output {
        Command::new(bin("spa-server"))
            .args(["check-config", "--config"])
            .arg(config)
            .output()
            .expect("check-config")
    }

    /// Starts `program run --config <config>` in green's namespace.
    fn start(&self, program: &Path, config: &Path) -> Daemon {
        Daemon::start_program(
            &self.green,
            program,
            config,
            &self.dir.join("run/spa/control.sock"),
            &self.dir.join("green.log"),
        )
    }

    /// `spa-client send open` from the client (fire and forget: a refused
    /// knock gets no answer).
    fn knock(&self) {
        let out = self
            .client
            .cmd(bin("spa-client").to_str().expect("utf-8"))
            .arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(["send", "open"])
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .output()
            .expect("spa-client");
        assert!(
            out.status.success(),
            "spa-client send open: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The time of a plain log line (`2026-12-05T18:18:28.545638Z …`), ms
/// since the epoch.
fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms).ok()
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn counter(st: &Value, name: &str) -> u64 {
    st["counters"][name].as_u64().unwrap_or(0)
}

/// README's layout, the daemon as `spa-test`: alice's knock is accepted;
/// `pki revoke` and `pki crl` make her next knock `revoked` without a
/// restart, within a poll period. Then a CRL the daemon user cannot read:
/// the reload fails loudly (error log, counter, `status`) and the previous
/// trust store stays; readable again, the failure clears.
#[test]
fn revocation_applies_without_restart_as_the_daemon_user() {
    let bed = Bed::new(false);
    let config = bed.config(None, false);
    let out = bed.check_config(&config);
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let green = bed.start(&bin("spa-server"), &config);
    bed.knock();
    green.wait_counter("accepted.open-tunnel", 1);

    let server = bin("spa-server");
    run_ok(Command::new(&server).args([
        "pki",
        "revoke",
        "--dir",
        &bed.dir.s("etc/spa/ca"),
        "--cert",
        &bed.dir.s("alice.crt"),
    ]));
    run_ok(Command::new(&server).args([
        "pki",
        "crl",
        "--dir",
        &bed.dir.s("etc/spa/ca"),
        "--out",
        &bed.dir.s("etc/spa/crl.pem"),
    ]));
    let written = Instant::now();
    let crl_mtime = std::fs::metadata(bed.dir.join("etc/spa/crl.pem"))
        .and_then(|m| m.modified())
        .expect("crl mtime");
    green.wait_counter("trust.reloads", 1);
    bed.knock();
    green.wait_counter("refused.certificate.revoked", 1);
    let refused_after = written.elapsed();
    // The daemon's delay: its "reloaded" log line's time minus the CRL's
    // modification time (the test's own polling of `status` not included).
    let log = green.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("trust anchors and CRLs reloaded"))
        .expect("reload line");
    let logged_ms = log_time_ms(line).unwrap_or_else(|| panic!("no time in {line}"));
    let written_ms = u64::try_from(
        crl_mtime
            .duration_since(std::time::UNIX_EPOCH)
            .expect("mtime")
            .as_millis(),
    )
    .expect("ms");
    let delay = Duration::from_millis(logged_ms.saturating_sub(written_ms));
    eprintln!(
        "revocation: the daemon reloaded the CRL {delay:?} after it was written; \
         the revoked knock was refused {refused_after:?} after (test polling included)"
    );
    assert!(delay < Duration::from_secs(1), "reloaded after {delay:?}");
    assert!(
        green
            .log_text()
            .contains("trigger=\"a trust file changed\""),
        "{log}"
    );
    let st = green.status();
    assert_eq!(counter(&st, "accepted.open-tunnel"), 1, "{st}");
    assert_eq!(st["trust"]["last_reload_failure"], Value::Null, "{st}");

    // A CRL only root can read: the reload fails, loudly, and says which
    // file; the previous trust store (alice revoked) stays in force.
    let crl = bed.dir.join("etc/spa/crl.pem");
    set_mode(&crl, 0o600);
    green.signal(Signal::SIGHUP);
    green.wait_counter("trust.reload_failures", 1);
    let st = green.status();
    let failure = &st["trust"]["last_reload_failure"];
    assert_eq!(failure["file"], crl.display().to_string(), "{st}");
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("ermission denied")),
        "{st}"
    );
    assert_eq!(failure["trigger"], "SIGHUP", "{st}");
    let text = Command::new(bin("spa-server"))
        .args(["status", "--socket"])
        .arg(bed.dir.join("run/spa/control.sock"))
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("TRUST RELOAD FAILED") && text.contains(&crl.display().to_string()),
        "{text}"
    );
    assert!(failure["at_ms"].as_u64().is_some_and(|t| t > 0), "{st}");
    assert!(
        green
            .log_text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("trust reload failed")),
        "{}",
        green.log_text()
    );
    bed.knock();
    green.wait_counter("refused.certificate.revoked", 2);
    set_mode(&crl, 0o644);
    green.signal(Signal::SIGHUP);
    green.wait_counter("trust.reloads", 2);
    let st = green.status();
    assert_eq!(st["trust"]["last_reload_failure"], Value::Null, "{st}");
    assert_eq!(counter(&st, "trust.reload_failures"), 1, "{st}");
}

/// The layout of the issue: `[trust] anchors` naming `ca/ca.pem` inside
/// the 0700 CA directory. `check-config` and `run` both fail, naming the
/// file and the fix, before touching the firewall.
#[test]
fn revocation_applies_without_restart_only_with_readable_trust_files() {
    let bed = Bed::new(false);
    let closed = bed.dir.join("etc/spa/ca/ca.pem");
    let config = bed.config(Some(&closed), false);
    let out = bed.check_config(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {err}");
    assert!(
        err.contains("trust.anchors[0]")
            && err.contains(&closed.display().to_string())
            && err.contains("chmod o+x"),
        "{err}"
    );
    let run = bed
        .green
        .cmd(bin("spa-server").to_str().expect("utf-8"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!run.status.success(), "run started: {text}");
    assert!(
        text.contains("trust.anchors[0]") && text.contains(&closed.display().to_string()),
        "{text}"
    );
    let tables = bed.green.ok(&["nft", "list", "tables"]);
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("spa"),
        "the firewall was touched"
    );
    // A CRL readable by root only, in an open directory: named as well.
    let crl = bed.dir.join("etc/spa/crl.pem");
    set_mode(&crl, 0o600);
    let out = bed.check_config(&bed.config(None, false));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("trust.crls[0]") && err.contains("not readable"),
        "{err}"
    );
}

/// Adds `keys` (lines) to the `[daemon]` section of `config`.
fn set_daemon_keys(config: &Path, keys: &str) {
    let text = std::fs::read_to_string(config).expect("config");
    let text = text.replacen("[daemon]\n", &format!("[daemon]\n{keys}"), 1);
    std::fs::write(config, text).expect("config");
}

/// One line of `/proc/<pid>/task/<tid>/status`, its value.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map_or("", str::trim)
}

/// Green with the tunnel, one connection being served: every task of the
/// process runs as `spa-test` with at most CAP_NET_ADMIN and CAP_NET_RAW
/// (effective, permitted, bounding) and no_new_privs.
#[test]
fn every_thread_drops_privileges() {
    let bed = Bed::new(true);
    let config = bed.config(None, true);
    // Two verification workers whatever the machine's core count, and the
    // replay reservation's writer (on by default): their threads too.
    set_daemon_keys(&config, "workers = 2\n");
    let green = bed.start(&bin("spa-server"), &config);
    // A connection to the tunnel port over green's loopback (accepted in
    // blackhole mode): a thread serves it (TLS handshake) while it is held.
    let held = bed
        .green
        .connect(
            SocketAddr::from(([127, 0, 0, 1], TUNNEL_PORT)),
            Duration::from_secs(2),
        )
        .expect("connect to the tunnel");
    let tasks = format!("/proc/{}/task", green.pid());
    let names = || -> Vec<(String, String)> {
        std::fs::read_dir(&tasks)
            .expect("tasks")
            .flatten()
            .map(|e| {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    comm.trim().to_owned(),
                )
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || names()
            .iter()
            .any(|(_, c)| c == "tunnel-conn")),
        "no tunnel-conn thread: {:?}\n{}",
        names(),
        green.log_text()
    );
    let all = names();
    assert!(all.iter().any(|(_, c)| c == "tunnel-accept"), "{all:?}");
    assert!(all.iter().any(|(_, c)| c == "spa-reserve"), "{all:?}");
    assert_eq!(
        all.iter()
            .filter(|(_, c)| c.starts_with("spa-verify"))
            .count(),
        2,
        "{all:?}"
    );
    let uid = bed.uid.to_string();
    for (tid, comm) in &all {
        let st = std::fs::read_to_string(format!("{tasks}/{tid}/status")).expect("status");
        let uids: Vec<&str> = status_field(&st, "Uid").split_whitespace().collect();
        assert_eq!(uids, [uid.as_str(); 4], "{comm} ({tid}): {st}");
        for caps in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            let v = u64::from_str_radix(status_field(&st, caps), 16).expect("hex");
            assert_eq!(v & !KEPT_CAPS, 0, "{comm} ({tid}) {caps} {v:x}");
        }
        assert_eq!(status_field(&st, "NoNewPrivs"), "1", "{comm} ({tid})");
        eprintln!(
            "{comm} ({tid}): Uid {uid}, CapEff {}, NoNewPrivs 1",
            status_field(&st, "CapEff")
        );
    }
    assert!(all.len() >= 3, "{all:?}");
    drop(held);
    let st = green.status();
    assert!(st["uptime_s"].is_u64(), "{st}");
}

/// The store's writes fail once (the file size limit set to 1 byte on the
/// running daemon, SIGXFSZ ignored: every write returns EFBIG, as on a full
/// disk), then succeed again: the store reopens its file by path as
/// `spa-test` and later knocks are accepted.
#[test]
fn replay_store_reopens_after_a_failed_write_as_the_daemon_user() {
    let bed = Bed::new(false);
    let config = bed.config(None, false);
    // Every knock written before its verdict (no reservation, SPEC §7.3.1):
    // the write that fails is the knock's own.
    set_daemon_keys(&config, "replay_reservation_ms = 0\n");
    // SIGXFSZ ignored (inherited across exec), so that a write past the
    // limit fails with EFBIG instead of killing the daemon.
    let wrapper = bed.dir.join("spa-server-noxfsz");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntrap '' XFSZ\nexec {} \"$@\"\n",
            bin("spa-server").display()
        ),
    )
    .expect("wrapper");
    set_mode(&wrapper, 0o755);
    let green = bed.start(&wrapper, &config);
    let db = bed.dir.join("var/lib/spa/replay.redb");
    let meta = std::fs::metadata(&db).expect("store");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(meta.uid(), bed.uid, "the store belongs to the daemon user");
    bed.knock();
    green.wait_counter("accepted.open-tunnel", 1);

    // prlimit as the daemon's own user: the same uid and gid may change a
    // process's soft limit without CAP_SYS_RESOURCE (which root in a
    // container may lack).
    let pid = green.pid().to_string();
    let prlimit = |limit: &str| {
        use std::os::unix::process::CommandExt as _;
        let (uid, gid) = daemon_user();
        run_ok(
            Command::new("prlimit")
                .args(["--pid", &pid, limit])
                .uid(uid)
                .gid(gid),
        );
    };
    prlimit("--fsize=1:unlimited");
    bed.knock();
    green.wait_counter("refused.storage_failure", 1);
    prlimit("--fsize=unlimited:unlimited");
    bed.knock();
    green.wait_counter("accepted.open-tunnel", 2);
    bed.knock();
    green.wait_counter("accepted.open-tunnel", 3);
    let st = green.status();
    assert_eq!(counter(&st, "refused.storage_failure"), 1, "{st}");
    assert!(
        !green.log_text().contains("ermission denied"),
        "{}",
        green.log_text()
    );
}
