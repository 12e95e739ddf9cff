//! `spa-server init` and `red-relay init`'s library: what they lay out
//! passes `check-config` as written (for green, and for red with green's
//! outputs), with the modes the daemons need, and nothing is replaced
//! without `force` (an existing CA never).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use spa_daemon::config::{Role, load};
use spa_daemon::init::{Common, InitError, RedOptions};
use spa_daemon::preflight::{self, Findings};
use spa_pki::CaAlgorithm;
use spa_server::init::{self, GreenInitError, GreenOptions};

/// A directory the daemon user (`nobody`) can search, as /etc is.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn common(root: &Path, etc: &str, port: u16) -> Common {
    Common {
        dir: root.join(etc),
        state_dir: root.join("var/lib/spa"),
        run_dir: root.join("run/spa"),
        user: "nobody".into(),
        knock_port: port,
        management: vec![],
        ssh_connection: Some("192.0.2.9 50000 192.0.2.1 22".into()),
        services: vec!["ssh=tcp/22".into(), "dns=udp/53".into()],
        allow: vec![],
        force: false,
    }
}

fn green_options(root: &Path) -> GreenOptions {
    GreenOptions {
        common: common(root, "etc/spa", 62201),
        ca_name: "Test CA".into(),
        algorithm: CaAlgorithm::Ed25519,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Everything `check-config` reports but the notes.
fn check(config: &Path, role: Role) -> Findings {
    let cfg = load(config).unwrap();
    let mut f = Findings {
        problems: cfg.check(role, Some("192.0.2.9 50000 192.0.2.1 22")),
        ..Findings::default()
    };
    preflight::state_dir(&cfg, &mut f);
    preflight::crl_expiry(&cfg, time::OffsetDateTime::now_utc(), &mut f);
    f
}

#[test]
fn green_init_writes_a_configuration_check_config_accepts() {
    let root = open_tempdir();
    let r = init::green(&green_options(root.path()), time::OffsetDateTime::now_utc()).unwrap();
    let etc = root.path().join("etc/spa");
    assert_eq!(r.config, etc.join("spa-server.toml"));
    let f = check(&r.config, Role::Green);
    assert!(f.problems.is_empty(), "{f:?}");
    assert!(f.lapsed_crls.is_empty() && f.warnings.is_empty(), "{f:?}");
    // The state directory is run's to create.
    assert_eq!(f.notes.len(), 1, "{f:?}");
    assert_eq!(mode(&etc.join("ca")), 0o700);
    assert_eq!(mode(&etc.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&etc.join("green.key")), 0o600);
    assert_eq!(mode(&etc.join("green-signing.key")), 0o600);
    assert_eq!(mode(&etc.join("ca.pem")), 0o644);
    assert_eq!(mode(&etc.join("crl.pem")), 0o644);
    // Over SSH without --management, the SSH client is let in (the
    // blackhole would cut it otherwise; check() above passes
    // $SSH_CONNECTION).
    let cfg = load(&r.config).unwrap();
    assert_eq!(cfg.firewall.management, vec!["192.0.2.9".to_owned()]);
    assert_eq!(cfg.rules[0].identity, "*");
    assert_eq!(cfg.services.len(), 2);
    assert!(r.next.contains("pki issue"), "{}", r.next);
    assert!(
        r.next.contains("systemctl enable --now spa-server"),
        "{}",
        r.next
    );
}

#[test]
fn init_refuses_to_replace_files_and_force_keeps_the_ca() {
    let root = open_tempdir();
    let mut o = green_options(root.path());
    let now = time::OffsetDateTime::now_utc();
    init::green(&o, now).unwrap();
    let etc = root.path().join("etc/spa");
    let key = std::fs::read(etc.join("green.key")).unwrap();
    let ca = std::fs::read(etc.join("ca/ca.key")).unwrap();
    match init::green(&o, now) {
        Err(GreenInitError::Init(InitError::Exists(files))) => {
            assert!(files.contains(&etc.join("green.key")))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(etc.join("green.key")).unwrap(), key);
    o.common.force = true;
    let r = init::green(&o, now).unwrap();
    assert_ne!(std::fs::read(etc.join("green.key")).unwrap(), key);
    assert_eq!(std::fs::read(etc.join("ca/ca.key")).unwrap(), ca);
    assert!(
        r.files.iter().any(|f| f.contains("existing CA, kept")),
        "{r:?}"
    );
    // A user that does not exist: refused before anything is written.
    let root = open_tempdir();
    let mut o = green_options(root.path());
    o.common.user = "no-such-user-spa-init".into();
    assert!(matches!(
        init::green(&o, now),
        Err(GreenInitError::Init(InitError::NoUser(_)))
    ));
    assert!(!root.path().join("etc").exists());
}

#[test]
fn red_init_with_greens_outputs_passes_check_config() {
    let root = open_tempdir();
    let now = time::OffsetDateTime::now_utc();
    init::green(&green_options(root.path()), now).unwrap();
    let etc = root.path().join("etc/spa");
    let key_line = |k: &str| spa_daemon::keygen::pubkey(&etc.join(k)).unwrap().1;
    let mut o = RedOptions {
        // Red on green's host: the same directory, the same copies.
        common: common(root.path(), "etc/spa", 62202),
        ca_cert: etc.join("ca.pem"),
        crl: Some(etc.join("crl.pem")),
        green_signing_key: key_line("green-signing.key"),
        green_receiver_keys: vec![key_line("green.key")],
    };
    let r = spa_daemon::init::red(&o).unwrap();
    assert_eq!(r.config, etc.join("red-relay.toml"));
    let f = check(&r.config, Role::Red);
    assert!(f.problems.is_empty() && f.lapsed_crls.is_empty(), "{f:?}");
    assert_eq!(mode(&etc.join("red.key")), 0o600);
    let red_key = spa_daemon::keygen::pubkey(&etc.join("red.key")).unwrap().1;
    assert!(r.next.contains(&red_key), "{}", r.next);
    // Green's key in the wrong slot is refused before anything is written.
    o.common.dir = root.path().join("etc/red");
    o.green_signing_key = "not base64".into();
    assert!(spa_daemon::init::red(&o).is_err());
    assert!(!root.path().join("etc/red").exists());
}

/// `spa-server init` for `nobody` under `root` (etc/spa, var/lib/spa,
/// run/spa), as the binary.
fn init_command(root: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_spa-server"))
        .args(["init", "--user", "nobody", "--management", "192.0.2.0/24"])
        .arg("--dir")
        .arg(root.join("etc/spa"))
        .arg("--state-dir")
        .arg(root.join("var/lib/spa"))
        .arg("--run-dir")
        .arg(root.join("run/spa"))
        .env_remove("SSH_CONNECTION")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_init_command_then_check_config_exits_zero() {
    let root = open_tempdir();
    let bin = env!("CARGO_BIN_EXE_spa-server");
    let etc = root.path().join("etc/spa");
    init_command(root.path());
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(etc.join("spa-server.toml"))
        .env_remove("SSH_CONNECTION")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: daemon.replay_db"));
    // A second run refuses (exit 1) and names the files.
    let out = Command::new(bin)
        .args(["init", "--user", "nobody", "--dir"])
        .arg(&etc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

/// Started without a capability `run` needs (a unit's drop-in, a container
/// that drops it), `check-config --at-start` (the unit's ExecStartPre)
/// names it, and `run` refuses before it touches anything, naming it too.
#[test]
fn check_config_and_run_name_a_capability_the_process_lacks() {
    let test = "check_config_and_run_name_a_capability_the_process_lacks";
    if !nix::unistd::geteuid().is_root() {
        return tests::cannot_run(test, "needs root (capabilities are root's)");
    }
    tests::require_tools(&[("setpriv", "util-linux")]);
    let root = open_tempdir();
    let bin = env!("CARGO_BIN_EXE_spa-server");
    let etc = root.path().join("etc/spa");
    init_command(root.path());
    let config = etc.join("spa-server.toml");
    // With every capability: OK.
    let out = Command::new(bin)
        .args(["check-config", "--at-start", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Without CAP_NET_ADMIN in the bounding set (so not in the permitted
    // set after exec), as a unit's CapabilityBoundingSet= would.
    let without = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--bounding-set", "-net_admin", "--inh-caps", "-all", "--"])
            .arg(bin)
            .args(args)
            .arg(&config)
            .env_remove("SSH_CONNECTION")
            .output()
            .unwrap()
    };
    for args in [
        &["check-config", "--at-start", "--config"][..],
        &["run", "--config"][..],
    ] {
        let out = without(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            err.contains("CAP_NET_ADMIN is not available") && !err.contains("CAP_NET_RAW"),
            "{args:?}: {err}"
        );
    }
    // run stopped before its setup: no replay store was created.
    assert!(!root.path().join("var/lib/spa/replay.redb").exists());
}
