//! The packaged systemd units, started by a real systemd (issue 12: "start
//! the units"): `packages_e2e` runs the units' command lines by hand, which
//! proves nothing about the sandbox around them (`CapabilityBoundingSet=`,
//! `SystemCallFilter=`, `ProtectSystem=strict`, `RestrictAddressFamilies=`,
//! `Type=notify`, `StateDirectory=`, ...). Here each gateway is a machine of
//! its own: a `systemd-nspawn --boot` container (systemd as its PID 1) on an
//! overlay of the host's root, inside one of this test's network
//! namespaces. In it, as an operator would: `dpkg -i` the packages (the
//! maintainer scripts see a running systemd: sysusers, tmpfiles,
//! daemon-reload), `init`, `check-config`, `systemctl start`; red from
//! copies of green's `ca.pem` and `crl.pem` and the keys green's `init`
//! prints. Then a client in a third namespace knocks with the installed
//! `spa-client`: green's service opens, a relayed request opens red's
//! service for green, the close closes green's, and `spa-client connect
//! web --listen` reaches red's service through green's mutual-TLS tunnel. The daemons run as `spa`
//! with CAP_NET_ADMIN and CAP_NET_RAW only, no_new_privs and a seccomp
//! filter, as the unit says; `systemctl reload` (SIGHUP) keeps them running;
//! `systemctl stop` removes their tables, and a second start works (the
//! replay store is the daemon user's by then); a drop-in that takes CAP_NET_ADMIN
//! away makes the start fail, with the capability named in the journal
//! (`check-config --at-start`); an upgrade (`dpkg -i` over it) restarts the
//! running daemon, a removal stops it (its table goes) and keeps the
//! operator's CA, keys and replay store. The host's root is not written
//! (the overlays' upper directories take every write) and its dpkg
//! database and users are unchanged afterwards.
//!
//! Needs root, `systemd-nspawn` (Debian's `systemd-container`), systemd,
//! `nsenter` (util-linux), cargo-deb and dpkg-dev.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tests::debs;
use tests::{
    Netns, TcpService, TempDir, allow4, cannot_run, echo, link4, require_tools, run_ok, unique_tag,
    wait_until,
};

const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 63, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 63, 2);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 64, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 64, 2);
const SERVICE_PORT: u16 = 7000;
const KNOCK_PORT: u16 = 62201;
const TUNNEL_PORT: u16 = 8443;
/// The host files that must not change.
const HOST_FILES: [&str; 4] = [
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/var/lib/dpkg/status",
];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A booted container: systemd as PID 1 on an overlay of the host's root,
/// in a network namespace of the test. Powered off on drop.
struct Machine {
    name: String,
    root: PathBuf,
    nspawn: Child,
    /// The container's PID 1 as the host sees it.
    init: u32,
    log: PathBuf,
}

impl Machine {
    /// Mounts the overlay under `dir`, copies the packages in and boots.
    /// Call on a thread with a mount namespace of its own.
    fn boot(dir: &Path, name: &str, ns: &Netns, debs: &[PathBuf]) -> Self {
        let root = dir.join(format!("{name}-root"));
        let upper = dir.join(format!("{name}-upper"));
        let work = dir.join(format!("{name}-work"));
        for d in [&root, &upper, &work] {
            std::fs::create_dir_all(d).unwrap();
        }
        run_ok(Command::new("mount").args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!(
                "lowerdir=/,upperdir={},workdir={}",
                upper.display(),
                work.display()
            ),
            root.to_str().unwrap(),
        ]));
        // A machine of its own: systemd makes up a transient id.
        std::fs::write(root.join("etc/machine-id"), "").unwrap();
        let pkgs = root.join("opt/spa-debs");
        std::fs::create_dir_all(&pkgs).unwrap();
        for d in debs {
            std::fs::copy(d, pkgs.join(d.file_name().unwrap())).unwrap();
        }
        let log = dir.join(format!("{name}-boot.log"));
        let boot_log = std::fs::File::create(&log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--directory",
                root.to_str().unwrap(),
                "--boot",
                // No machined and no systemd on the host side (CI's PID 1
                // is not systemd): no registration, no scope unit.
                "--register=no",
                "--keep-unit",
                &format!("--network-namespace-path=/run/netns/{}", ns.name),
                // nspawn keeps CAP_NET_ADMIN only for networks it makes
                // itself; the daemons need it in this one.
                "--capability=CAP_NET_ADMIN",
                "--machine",
                name,
                "--console=passive",
                "--",
                // Arguments of the container's systemd: the base system
                // only (not the host's enabled services).
                "--unit=basic.target",
            ])
            .stdin(Stdio::null())
            .stdout(boot_log.try_clone().unwrap())
            .stderr(boot_log)
            .spawn()
            .expect("systemd-nspawn");
        let mut m = Machine {
            name: name.to_owned(),
            root,
            init: 0,
            nspawn,
            log,
        };
        let pid = m.nspawn.id();
        // Booted enough for the test once basic.target is reached (a loaded
        // machine may keep is-system-running at "starting" for long).
        let booted = wait_until(Duration::from_secs(180), || {
            if m.init == 0 {
                // nspawn's child is the container's PID 1.
                m.init = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .ok()
                    .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
                    .unwrap_or(0);
                if m.init == 0 {
                    return false;
                }
            }
            m.cmd(&["systemctl", "is-active", "basic.target"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("active"))
        });
        assert!(booted, "{name} did not boot:\n{}", m.boot_log());
        m
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A command run inside the container (all its namespaces), as root,
    /// not over SSH (init would take the SSH client as a management
    /// address).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["--target", &self.init.to_string(), "--all", "--"])
            .args(["env", "-u", "SSH_CONNECTION"])
            .args(args);
        c
    }

    /// Runs `args` inside; panics with its output (and the unit's journal)
    /// on failure.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {args:?} failed:\n{}\njournal:\n{}",
            self.name,
            text(&out),
            self.journal()
        );
        text(&out)
    }

    fn journal(&self) -> String {
        self.cmd(&["journalctl", "--no-pager", "-n", "60"])
            .output()
            .map(|o| text(&o))
            .unwrap_or_default()
    }

    /// A path inside the container, as the host (this thread) sees it.
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// `/proc/PID/status` of a unit's main process.
    fn main_status(&self, unit: &str) -> String {
        let pid = self.ok(&["systemctl", "show", "--property=MainPID", "--value", unit]);
        let pid = pid.trim();
        assert!(pid != "0", "{unit} has no main process");
        self.ok(&["cat", &format!("/proc/{pid}/status")])
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.cmd(&["systemctl", "poweroff"]).output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The line of `/proc/PID/status` that starts with `key`, its value.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or("", str::trim)
}

#[test]
fn units_under_systemd_start_sandboxed_and_open_services_for_a_knock() {
    let test = "units_under_systemd_start_sandboxed_and_open_services_for_a_knock";
    if !nix::unistd::geteuid().is_root() {
        return cannot_run(test, "needs root (containers and network namespaces)");
    }
    if !debs::have_cargo_deb() {
        return cannot_run(
            test,
            "cargo-deb is missing: `cargo install cargo-deb --locked` (.ci/run does)",
        );
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return cannot_run(
            test,
            "systemd is not installed: `apt-get install -y systemd`",
        );
    }
    require_tools(&[
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("mount", "mount"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
    ]);

    let debs = debs::build(test);
    let before: Vec<Option<Vec<u8>>> = HOST_FILES.iter().map(|f| std::fs::read(f).ok()).collect();
    let dir = TempDir::new("systemd-units");
    let tag = unique_tag();
    let green = Netns::new("sdu-g", &tag);
    let client = Netns::new("sdu-c", &tag);
    let red = Netns::new("sdu-r", &tag);
    link4(
        &green,
        &format!("ug{tag}"),
        GREEN,
        &client,
        &format!("uc{tag}"),
        CLIENT,
    );
    link4(
        &green,
        &format!("ugr{tag}"),
        GREEN_R,
        &red,
        &format!("ur{tag}"),
        RED,
    );
    let d = dir.0.clone();
    // The overlays live in a mount namespace of this thread (and of what it
    // starts) only, and end with it.
    let result = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        run_ok(Command::new("mount").args(["--make-rprivate", "/"]));
        flow(&d, &debs, &green, &client, &red, &tag);
    })
    .join();
    let after: Vec<Option<Vec<u8>>> = HOST_FILES.iter().map(|f| std::fs::read(f).ok()).collect();
    for ((f, b), a) in HOST_FILES.iter().zip(&before).zip(&after) {
        assert!(b == a, "the host's {f} changed");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn flow(dir: &Path, debs: &[PathBuf], green: &Netns, client: &Netns, red: &Netns, tag: &str) {
    let g = Machine::boot(dir, &format!("spa-g{tag}"), green, debs);
    let r = Machine::boot(dir, &format!("spa-r{tag}"), red, debs);

    // Install: the maintainer scripts with a running systemd.
    let out = g.ok(&[
        "sh",
        "-c",
        "dpkg -i /opt/spa-debs/spa-server_*.deb /opt/spa-debs/spa-client_*.deb",
    ]);
    eprintln!("green: dpkg -i:\n{out}");
    r.ok(&["sh", "-c", "dpkg -i /opt/spa-debs/red-relay_*.deb"]);
    for m in [&g, &r] {
        m.ok(&["getent", "passwd", "spa"]);
        let unit = if m.name == g.name {
            "spa-server"
        } else {
            "red-relay"
        };
        // Installed, known to systemd (daemon-reload), not enabled.
        let state = m
            .cmd(&["systemctl", "is-enabled", unit])
            .output()
            .map(|o| text(&o))
            .unwrap();
        assert!(state.trim() == "disabled", "{unit}: {state}");
    }

    // First run on green, as the README says.
    let out = g.ok(&[
        "spa-server",
        "init",
        "--service",
        &format!("echo=tcp/{SERVICE_PORT}"),
    ]);
    eprintln!("green: spa-server init:\n{out}");
    let key = |k: &str| {
        g.ok(&["spa-server", "pubkey", "--key", k])
            .trim()
            .to_owned()
    };
    let green_pub = key("/etc/spa/green.key");
    let signing = key("/etc/spa/green-signing.key");

    // Red: copies of green's CA certificate and CRL, then its init.
    for f in ["ca.pem", "crl.pem"] {
        std::fs::copy(
            g.path(&format!("/etc/spa/{f}")),
            r.path(&format!("/root/{f}")),
        )
        .unwrap();
    }
    let red_init = r.ok(&[
        "red-relay",
        "init",
        "--ca-cert",
        "/root/ca.pem",
        "--crl",
        "/root/crl.pem",
        "--green-signing-key",
        &signing,
        "--green-receiver-key",
        &green_pub,
        "--service",
        "web=tcp/80",
    ]);
    eprintln!("red: red-relay init:\n{red_init}");
    let red_key = debs::red_key_from_init(&red_init);
    let config = g.path("/etc/spa/spa-server.toml");
    debs::add_relay(&config, RED, &red_key, GREEN_R);
    // The mutual-TLS tunnel (the paper's VPN), as the example configuration
    // shows it: green's TLS key and certificate from the installed tools.
    g.ok(&[
        "spa-client",
        "keygen",
        "--name",
        "green-tls",
        "--out",
        "/etc/spa/green-tls.key",
        "--csr",
        "/root/green-tls.csr",
    ]);
    g.ok(&[
        "spa-server",
        "pki",
        "issue",
        "--dir",
        "/etc/spa/ca",
        "--csr",
        "/root/green-tls.csr",
        "--name",
        "green-tls",
        "--server",
        "--ip",
        &GREEN.to_string(),
        "--out",
        "/etc/spa/green-tls.pem",
    ]);
    let mut cfg = std::fs::read_to_string(&config).unwrap();
    cfg.push_str(&format!(
        "\n[[services]]\nname = \"tunnel\"\nproto = \"tcp\"\nport = {TUNNEL_PORT}\n\n\
         [[rules]]\nidentity = \"*\"\nservices = [\"tunnel\"]\n\n\
         [tunnel]\nlisten_port = {TUNNEL_PORT}\ncertificate = \"/etc/spa/green-tls.pem\"\n\
         key = \"/etc/spa/green-tls.key\"\nservice = \"tunnel\"\n"
    ));
    std::fs::write(&config, cfg).unwrap();
    let out = r.ok(&["red-relay", "check-config"]);
    assert!(out.contains("/etc/spa/red-relay.toml: OK"), "{out}");
    let out = g.ok(&["spa-server", "check-config"]);
    assert!(out.contains("/etc/spa/spa-server.toml: OK"), "{out}");

    // The units, started by systemd: Type=notify, so `start` returns once
    // the daemon said READY=1 (or fails).
    r.ok(&["systemctl", "start", "red-relay"]);
    g.ok(&["systemctl", "start", "spa-server"]);
    for (m, unit) in [(&g, "spa-server"), (&r, "red-relay")] {
        let active = m.ok(&["systemctl", "is-active", unit]);
        assert_eq!(active.trim(), "active", "{unit}");
        let status = m.main_status(unit);
        let uid = m.ok(&["id", "-u", "spa"]);
        assert!(
            status_field(&status, "Uid:").starts_with(uid.trim()),
            "{unit} runs as spa:\n{status}"
        );
        // CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only, in every set.
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(
                status_field(&status, set),
                "0000000000003000",
                "{unit} {set}\n{status}"
            );
        }
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{unit}");
        assert_eq!(
            status_field(&status, "Seccomp:"),
            "2",
            "{unit}: the unit's SystemCallFilter= is in force"
        );
        let journal = m.ok(&["journalctl", "--no-pager", "-u", unit]);
        assert!(
            journal.contains("privileges dropped") && journal.contains("ready"),
            "{unit}:\n{journal}"
        );
    }

    // A client certificate from the installed CA tooling; the installed
    // client in the client's namespace.
    let _svc = TcpService::start(green, SocketAddr::from(([0, 0, 0, 0], SERVICE_PORT)));
    let target = SocketAddr::from((GREEN, SERVICE_PORT));
    assert!(
        client.connect(target, Duration::from_millis(300)).is_err(),
        "the service is closed before the knock"
    );
    let spa_client = g.path("/usr/bin/spa-client");
    let p = |f: &str| dir.join(f).display().to_string();
    run_ok(Command::new(&spa_client).args([
        "keygen",
        "--name",
        "alice",
        "--out",
        &p("alice.key"),
        "--csr",
        &p("alice.csr"),
    ]));
    std::fs::copy(dir.join("alice.csr"), g.path("/root/alice.csr")).unwrap();
    g.ok(&[
        "spa-server",
        "pki",
        "issue",
        "--dir",
        "/etc/spa/ca",
        "--csr",
        "/root/alice.csr",
        "--name",
        "alice",
        "--email",
        "alice@example.org",
        "--client",
        "--out",
        "/root/alice.crt",
    ]);
    std::fs::copy(g.path("/root/alice.crt"), dir.join("alice.crt")).unwrap();
    debs::write_client_profile(dir, GREEN, KNOCK_PORT, &green_pub);
    let send = |args: &[&str]| {
        let out = client
            .cmd(spa_client.to_str().unwrap())
            .args(["--config", &p("client.toml"), "send"])
            .args(args)
            .env("HOME", dir)
            .env("XDG_STATE_HOME", dir.join("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spa-client send {args:?}:\n{}\ngreen:\n{}",
            text(&out),
            g.journal()
        );
    };
    send(&["--wait", &SERVICE_PORT.to_string(), "open"]);
    let mut s = client
        .connect(target, Duration::from_secs(2))
        .expect("the service opens for the client after the knock");
    echo(&mut s, b"under systemd").expect("echo");
    drop(s);

    // Relayed: red's unit opens web for green.
    send(&["request", "web"]);
    let opened = wait_until(Duration::from_secs(5), || {
        allow4(red)
            .iter()
            .any(|e| e.contains(&GREEN_R.to_string()) && e.contains(" 80"))
    });
    assert!(
        opened,
        "red opened web for green: {:?}\nred:\n{}\ngreen:\n{}",
        allow4(red),
        r.journal(),
        g.journal()
    );

    // SIGHUP through the unit's ExecReload= (a trust reload) keeps it up.
    g.ok(&["systemctl", "reload", "spa-server"]);
    let reloaded = wait_until(Duration::from_secs(5), || {
        g.cmd(&["journalctl", "--no-pager", "-u", "spa-server"])
            .output()
            .is_ok_and(|o| text(&o).contains("trust anchors and CRLs reloaded"))
    });
    assert!(reloaded, "green logged the reload:\n{}", g.journal());
    assert_eq!(
        g.ok(&["systemctl", "is-active", "spa-server"]).trim(),
        "active"
    );

    // The close closes green's opening.
    send(&["close"]);
    let closed = wait_until(Duration::from_secs(5), || {
        !allow4(green)
            .iter()
            .any(|e| e.contains(&CLIENT.to_string()))
    });
    assert!(closed, "{:?}\n{}", allow4(green), g.journal());

    // Through the tunnel, under the unit's sandbox: `spa-client connect
    // web --listen` knocks (open-tunnel, request-service), green relays the
    // order to red, and a stream reaches red's service through green's TLS
    // endpoint.
    let _web = TcpService::start(red, SocketAddr::from(([0, 0, 0, 0], 80)));
    std::fs::copy(g.path("/etc/spa/ca.pem"), dir.join("ca.pem")).unwrap();
    let mut profile = std::fs::read_to_string(dir.join("client.toml")).unwrap();
    profile.push_str(&format!(
        "tunnel_ca = \"{}\"\ntunnel_port = {TUNNEL_PORT}\n",
        p("ca.pem")
    ));
    std::fs::write(dir.join("client.toml"), profile).unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], 18080));
    let mut forward = client
        .cmd(spa_client.to_str().unwrap())
        .args(["--config", &p("client.toml"), "connect", "web", "--listen"])
        .arg(local.to_string())
        .env("HOME", dir)
        .env("XDG_STATE_HOME", dir.join("state-tunnel"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("connect.log")).unwrap())
        .spawn()
        .unwrap();
    let listening = wait_until(Duration::from_secs(20), || {
        client.connect(local, Duration::from_millis(200)).is_ok()
    });
    let through = listening
        && client
            .connect(local, Duration::from_secs(2))
            .is_ok_and(|mut s| echo(&mut s, b"through the tunnel").is_ok());
    let _ = forward.kill();
    let _ = forward.wait();
    assert!(
        through,
        "a stream through the tunnel to red's web:\nconnect:\n{}\ngreen:\n{}\nred:\n{}",
        std::fs::read_to_string(dir.join("connect.log")).unwrap_or_default(),
        g.ok(&["journalctl", "--no-pager", "-u", "spa-server"]),
        r.ok(&["journalctl", "--no-pager", "-u", "red-relay"])
    );
    let journal = g.ok(&["journalctl", "--no-pager", "-u", "spa-server"]);
    assert!(journal.contains("tunnel: connected"), "{journal}");

    // Stopping the units removes the daemons' tables.
    g.ok(&["systemctl", "stop", "spa-server"]);
    r.ok(&["systemctl", "stop", "red-relay"]);
    for ns in [green, red] {
        let out = ns.out(&["nft", "list", "table", "inet", "spa"]);
        assert!(
            !out.status.success(),
            "{}: table left:\n{}",
            ns.name,
            text(&out)
        );
    }

    // A second start opens the replay store daemon.user now owns (root
    // needs CAP_DAC_OVERRIDE for it, which the units grant the root phase).
    r.ok(&["systemctl", "start", "red-relay"]);
    assert_eq!(
        r.ok(&["systemctl", "is-active", "red-relay"]).trim(),
        "active"
    );
    r.ok(&["systemctl", "stop", "red-relay"]);

    // A drop-in that takes CAP_NET_ADMIN away: the start fails in the
    // unit's ExecStartPre (check-config --at-start), which names it.
    let dropin = g.path("/etc/systemd/system/spa-server.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("no-net-admin.conf"),
        "[Service]\nCapabilityBoundingSet=~CAP_NET_ADMIN\n",
    )
    .unwrap();
    g.ok(&["systemctl", "daemon-reload"]);
    let out = g
        .cmd(&["systemctl", "start", "spa-server"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started without CAP_NET_ADMIN");
    let journal = g.ok(&["journalctl", "--no-pager", "-u", "spa-server"]);
    assert!(
        journal.contains("CAP_NET_ADMIN is not available"),
        "the journal names the capability:\n{journal}"
    );
    g.ok(&["systemctl", "reset-failed", "spa-server"]);
    std::fs::remove_file(dropin.join("no-net-admin.conf")).unwrap();
    g.ok(&["systemctl", "daemon-reload"]);

    // An upgrade (dpkg -i over the installed package) restarts a running
    // daemon on the new binary; a removal stops it first, so that it
    // removes its table, and leaves the operator's files.
    g.ok(&["systemctl", "start", "spa-server"]);
    let main_pid = || {
        g.ok(&[
            "systemctl",
            "show",
            "--property=MainPID",
            "--value",
            "spa-server",
        ])
        .trim()
        .to_owned()
    };
    let before = main_pid();
    g.ok(&["sh", "-c", "dpkg -i /opt/spa-debs/spa-server_*.deb"]);
    assert_eq!(
        g.ok(&["systemctl", "is-active", "spa-server"]).trim(),
        "active"
    );
    let after = main_pid();
    assert!(
        after != before && after != "0",
        "the upgrade restarted the daemon: {before} -> {after}"
    );
    g.ok(&["dpkg", "-r", "spa-server"]);
    let state = g
        .cmd(&["systemctl", "is-active", "spa-server"])
        .output()
        .map(|o| text(&o))
        .unwrap();
    assert!(state.trim() != "active", "removed but running: {state}");
    let out = green.out(&["nft", "list", "table", "inet", "spa"]);
    assert!(
        !out.status.success(),
        "the removal left green's table:\n{}",
        text(&out)
    );
    for kept in [
        "/etc/spa/ca/ca.key",
        "/etc/spa/green.key",
        "/var/lib/spa/replay.redb",
    ] {
        assert!(g.path(kept).exists(), "the removal deleted {kept}");
    }
}
