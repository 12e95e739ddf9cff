//! The Debian packages, from build to a knock that opens a service, as an
//! operator on a fresh machine would run them (issue 12: "install the
//! packages, run the first-run command, check-config, start the units,
//! knock from a client, and the service opens").
//!
//! `dist/build-debs.sh` builds the three .debs (cargo-deb); they are
//! installed with `dpkg -i` into a throw-away root: a private mount
//! namespace (this test's own thread, `unshare(CLONE_NEWNS)`) with
//! overlayfs over /etc, /usr and /var, so dpkg, the maintainer scripts
//! (sysusers, tmpfiles) and `init` write into the overlays' upper
//! directories only, and an empty tmpfs over /run so that the maintainer
//! scripts see no running systemd (and the sockets and network namespaces
//! stay in there). Then, with the installed
//! files only: `systemd-analyze verify` of the units (when the tool is
//! there), `spa-server init`, `red-relay init` from green's outputs, green's
//! `[relay]` as red's init prints it, `check-config` of both, green and red
//! started exactly as their units' `ExecStartPre=`/`ExecStart=` say
//! (systemd is not PID 1 on CI) inside network namespaces, a client
//! certificate issued with the installed `pki issue`, knocks with the
//! installed `spa-client`: green's service opens (nft element, echo) and
//! red opens its relayed service for green. Afterwards the host's dpkg database,
//! users and the installed paths are as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tests::debs::{self, PACKAGES};
use tests::{
    Daemon, Netns, TcpService, TempDir, allow4, cannot_run, echo, link4, require_tools, run_ok,
    unique_tag, wait_until,
};

const GREEN: Ipv4Addr = Ipv4Addr::new(10, 200, 61, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 61, 2);
const GREEN_R: Ipv4Addr = Ipv4Addr::new(10, 200, 62, 1);
const RED: Ipv4Addr = Ipv4Addr::new(10, 200, 62, 2);
const SERVICE_PORT: u16 = 7000;
const KNOCK_PORT: u16 = 62201;

/// What the host must still look like afterwards.
const HOST_FILES: [&str; 4] = [
    "/etc/passwd",
    "/etc/group",
    "/var/lib/dpkg/status",
    "/etc/shadow",
];
const INSTALLED: [&str; 8] = [
    "/usr/bin/spa-server",
    "/usr/bin/red-relay",
    "/usr/bin/spa-client",
    "/usr/lib/systemd/system/spa-server.service",
    "/usr/lib/sysusers.d/spa-server.conf",
    "/etc/spa/spa-server.toml",
    "/etc/spa/ca",
    "/usr/share/doc/spa-server",
];

fn host_snapshot() -> Vec<(String, Option<Vec<u8>>)> {
    HOST_FILES
        .iter()
        .chain(INSTALLED.iter())
        .map(|p| {
            let content = if INSTALLED.contains(p) {
                Path::new(p).exists().then(Vec::new)
            } else {
                std::fs::read(p).ok()
            };
            ((*p).to_owned(), content)
        })
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `Exec…=` command lines of a unit file (no quoting in ours).
fn unit_lines(unit: &str, key: &str) -> Vec<Vec<String>> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn installed_packages_init_check_config_start_and_open_a_service_for_a_knock() {
    let test = "installed_packages_init_check_config_start_and_open_a_service_for_a_knock";
    if !nix::unistd::geteuid().is_root() {
        return cannot_run(test, "needs root (dpkg into a private mount namespace)");
    }
    if !debs::have_cargo_deb() {
        return cannot_run(
            test,
            "cargo-deb is missing: `cargo install cargo-deb --locked` (.ci/run does)",
        );
    }
    require_tools(&[
        ("dpkg", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("mount", "mount"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
    ]);

    // 1. The packages.
    let debs = debs::build(test);

    let before = host_snapshot();
    let dir = TempDir::new("packages");
    // Everything in a thread of its own: the mount namespace is this
    // thread's (and its children's) only, and ends with it.
    let d = dir.0.clone();
    let result = std::thread::spawn(move || in_clean_root(&d, &debs)).join();
    let after = host_snapshot();
    for ((path, b), (_, a)) in before.iter().zip(&after) {
        assert!(b == a, "the host's {path} changed");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Mounts the overlays in a new mount namespace of this thread, installs,
/// and runs the operator's steps.
fn in_clean_root(dir: &Path, debs: &[PathBuf]) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    run_ok(Command::new("mount").args(["--make-rprivate", "/"]));
    for top in ["etc", "usr", "var"] {
        let upper = dir.join(format!("upper/{top}"));
        let work = dir.join(format!("work/{top}"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        run_ok(Command::new("mount").args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!(
                "lowerdir=/{top},upperdir={},workdir={}",
                upper.display(),
                work.display()
            ),
            &format!("/{top}"),
        ]));
    }
    // /run too: the maintainer scripts must not see a running systemd,
    // and the daemons' control sockets and this test's network namespaces
    // stay in here.
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"]));

    // 2. dpkg -i.
    let mut c = Command::new("dpkg");
    c.arg("-i").args(debs).env_remove("SSH_CONNECTION");
    let out = run_ok(&mut c);
    eprintln!("dpkg -i:\n{}", text(&out));
    // What the packages and their scripts laid out.
    run_ok(Command::new("getent").args(["passwd", "spa"]));
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/etc/spa"), 0o755);
    assert_eq!(mode("/var/lib/spa"), 0o711);
    for p in PACKAGES {
        let man = format!("/usr/share/man/man1/{p}.1.gz");
        let page = run_ok(Command::new("zcat").arg(&man));
        assert!(
            String::from_utf8_lossy(&page.stdout).contains(".SH SYNOPSIS"),
            "{man}"
        );
        for f in [
            format!("/usr/share/bash-completion/completions/{p}"),
            format!("/usr/share/zsh/vendor-completions/_{p}"),
            format!("/usr/share/fish/vendor_completions.d/{p}.fish"),
            format!("/usr/share/doc/{p}/README.md"),
        ] {
            assert!(std::fs::metadata(&f).unwrap().len() > 100, "{f} is empty");
        }
    }
    // Every page the main page names is installed.
    let page = run_ok(Command::new("zcat").arg("/usr/share/man/man1/spa-server.1.gz"));
    for line in String::from_utf8_lossy(&page.stdout).lines() {
        if let Some(name) = line.strip_suffix("(1)") {
            let name = name.replace("\\-", "-");
            assert!(
                Path::new(&format!("/usr/share/man/man1/{name}.1.gz")).exists(),
                "{name}(1) is named but not installed"
            );
        }
    }
    let green_unit = std::fs::read_to_string("/usr/lib/systemd/system/spa-server.service").unwrap();
    let red_unit = std::fs::read_to_string("/usr/lib/systemd/system/red-relay.service").unwrap();
    for (unit, text_) in [("spa-server", &green_unit), ("red-relay", &red_unit)] {
        assert!(
            text_.contains(&format!("file:///usr/share/doc/{unit}/README.md")),
            "{unit}.service names a README the package installs"
        );
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        for unit in ["spa-server", "red-relay"] {
            let out = Command::new("systemd-analyze")
                .args(["verify", &format!("/usr/lib/systemd/system/{unit}.service")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "systemd-analyze verify {unit}:\n{}",
                text(&out)
            );
        }
    } else {
        eprintln!("systemd-analyze is not installed: the units are not verified by it");
    }

    // 3. The first run, as the README says, then check-config as written.
    let tag = unique_tag();
    let green = Netns::new("pkg-g", &tag);
    let client = Netns::new("pkg-c", &tag);
    link4(
        &green,
        &format!("pg{tag}"),
        GREEN,
        &client,
        &format!("pc{tag}"),
        CLIENT,
    );
    let out = run_ok(
        Command::new("/usr/bin/spa-server")
            .args(["init", "--service", &format!("echo=tcp/{SERVICE_PORT}")])
            .env_remove("SSH_CONNECTION"),
    );
    eprintln!("spa-server init:\n{}", text(&out));
    // Red, from green's outputs (init prints them), in the same /etc/spa
    // (the same ca.pem and crl.pem are not in the way); then green's
    // [relay] section as red's init prints it.
    let red = Netns::new("pkg-r", &tag);
    link4(
        &green,
        &format!("pgr{tag}"),
        GREEN_R,
        &red,
        &format!("pr{tag}"),
        RED,
    );
    let key = |k: &str| {
        String::from_utf8_lossy(
            &run_ok(Command::new("/usr/bin/spa-server").args(["pubkey", "--key", k])).stdout,
        )
        .trim()
        .to_owned()
    };
    let green_pub = key("/etc/spa/green.key");
    let signing = key("/etc/spa/green-signing.key");
    let out = run_ok(
        Command::new("/usr/bin/red-relay")
            .args([
                "init",
                "--ca-cert",
                "/etc/spa/ca.pem",
                "--crl",
                "/etc/spa/crl.pem",
                "--green-signing-key",
                &signing,
                "--green-receiver-key",
                &green_pub,
                "--service",
                "web=tcp/80",
            ])
            .env_remove("SSH_CONNECTION"),
    );
    let red_init = text(&out);
    eprintln!("red-relay init:\n{red_init}");
    let red_key = debs::red_key_from_init(&red_init);
    let config = "/etc/spa/spa-server.toml";
    debs::add_relay(Path::new(config), RED, &red_key, GREEN_R);
    let out = run_ok(Command::new("/usr/bin/red-relay").arg("check-config"));
    assert!(
        text(&out).contains("/etc/spa/red-relay.toml: OK"),
        "{}",
        text(&out)
    );
    let out = run_ok(Command::new("/usr/bin/spa-server").arg("check-config"));
    assert!(
        text(&out).contains("/etc/spa/spa-server.toml: OK"),
        "{}",
        text(&out)
    );

    // 4. Red and green as their units start them.
    let pre = unit_lines(&red_unit, "ExecStartPre");
    let start = unit_lines(&red_unit, "ExecStart");
    assert_eq!((pre.len(), start.len()), (1, 1), "{red_unit}");
    let pre: Vec<&str> = pre[0].iter().map(String::as_str).collect();
    let out = red.out(&pre);
    assert!(out.status.success(), "{pre:?}:\n{}", text(&out));
    let argv: Vec<&str> = start[0].iter().map(String::as_str).collect();
    let red_d = Daemon::start_argv(
        &red,
        &argv,
        Path::new("/run/spa/red-relay.sock"),
        &dir.join("red.log"),
    );
    let pre = unit_lines(&green_unit, "ExecStartPre");
    let start = unit_lines(&green_unit, "ExecStart");
    assert_eq!((pre.len(), start.len()), (1, 1), "{green_unit}");
    let pre: Vec<&str> = pre[0].iter().map(String::as_str).collect();
    let out = green.out(&pre);
    assert!(out.status.success(), "{pre:?}:\n{}", text(&out));
    let argv: Vec<&str> = start[0].iter().map(String::as_str).collect();
    let green_d = Daemon::start_argv(
        &green,
        &argv,
        Path::new("/run/spa/control.sock"),
        &dir.join("green.log"),
    );
    assert!(
        green_d
            .log_text()
            .lines()
            .any(|l| l.contains("privileges dropped") && l.contains("spa")),
        "green dropped to spa:\n{}",
        green_d.log_text()
    );
    let _svc = TcpService::start(&green, SocketAddr::from(([0, 0, 0, 0], SERVICE_PORT)));
    let target = SocketAddr::from((GREEN, SERVICE_PORT));
    assert!(
        client.connect(target, Duration::from_millis(300)).is_err(),
        "the service is closed before the knock"
    );

    // 5. A client certificate from the installed CA tooling, a knock with
    // the installed client.
    let p = |f: &str| dir.join(f).display().to_string();
    run_ok(Command::new("/usr/bin/spa-client").args([
        "keygen",
        "--name",
        "alice",
        "--out",
        &p("alice.key"),
        "--csr",
        &p("alice.csr"),
    ]));
    run_ok(Command::new("/usr/bin/spa-server").args([
        "pki",
        "issue",
        "--dir",
        "/etc/spa/ca",
        "--csr",
        &p("alice.csr"),
        "--name",
        "alice",
        "--email",
        "alice@example.org",
        "--client",
        "--out",
        &p("alice.crt"),
    ]));
    debs::write_client_profile(dir, GREEN, KNOCK_PORT, &green_pub);
    let out = client
        .cmd("/usr/bin/spa-client")
        .args([
            "--config",
            &p("client.toml"),
            "send",
            "--wait",
            &SERVICE_PORT.to_string(),
            "open",
        ])
        .env("HOME", dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spa-client send:\n{}\ngreen log:\n{}",
        text(&out),
        green_d.log_text()
    );
    let elements = allow4(&green);
    assert!(
        elements
            .iter()
            .any(|e| e.contains(&CLIENT.to_string()) && e.contains(&SERVICE_PORT.to_string())),
        "{elements:?}"
    );
    let mut s = client
        .connect(target, Duration::from_secs(2))
        .expect("the service opens for the client after the knock");
    echo(&mut s, b"installed").expect("echo");
    drop(s);

    // 6. A relayed service: red opens web for green's address.
    let out = client
        .cmd("/usr/bin/spa-client")
        .args(["--config", &p("client.toml"), "send", "request", "web"])
        .env("HOME", dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spa-client send request web:\n{}\ngreen log:\n{}",
        text(&out),
        green_d.log_text()
    );
    let opened = wait_until(Duration::from_secs(5), || {
        allow4(&red)
            .iter()
            .any(|e| e.contains(&GREEN_R.to_string()) && e.contains(" 80"))
    });
    assert!(
        opened,
        "red opened web for green: {:?}\nred log:\n{}\ngreen log:\n{}",
        allow4(&red),
        red_d.log_text(),
        green_d.log_text()
    );
    drop(green_d);
    drop(red_d);
}
