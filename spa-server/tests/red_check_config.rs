//! `red-relay check-config` checks what `red-relay run` will do, by the
//! same code as green's (here, with green's CA tooling to make the CRLs:
//! red-relay itself never links spa-server): a configuration from `red-relay init` passes as
//! written; a lapsed CRL fails it (exit 1, naming `pki crl`) but only warns
//! under `--at-start`, the unit's `ExecStartPre`, so that red still starts
//! with its firewall closed; `[ips]` values `run` refuses are refused.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use spa_daemon::init::{Common, RedOptions};
use spa_pki::{Ca, CaAlgorithm};
use spa_server::init::{self, GreenOptions};
use time::{Duration, OffsetDateTime};

fn common(root: &Path, etc: &str, port: u16) -> Common {
    Common {
        dir: root.join(etc),
        state_dir: root.join("var/lib/spa"),
        run_dir: root.join("run/spa"),
        user: "nobody".into(),
        knock_port: port,
        management: vec!["192.0.2.0/24".into()],
        ssh_connection: None,
        services: vec!["web=tcp/80".into()],
        allow: vec!["email:alice@example.org".into()],
        force: false,
    }
}

fn check(config: &Path, at_start: bool) -> Output {
    let mut c = Command::new(tests::bin("red-relay"));
    c.args(["check-config", "--config"]).arg(config);
    if at_start {
        c.arg("--at-start");
    }
    c.env_remove("SSH_CONNECTION").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn red_check_config_passes_inits_configuration_and_refuses_a_lapsed_crl() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let now = OffsetDateTime::now_utc();
    let green = GreenOptions {
        common: common(root.path(), "green", 62201),
        ca_name: "Test CA".into(),
        algorithm: CaAlgorithm::Ed25519,
    };
    init::green(&green, now).unwrap();
    let g = root.path().join("green");
    let line = |k: &str| spa_daemon::keygen::pubkey(&g.join(k)).unwrap().1;
    let r = spa_daemon::init::red(&RedOptions {
        common: common(root.path(), "red", 62202),
        ca_cert: g.join("ca.pem"),
        crl: Some(g.join("crl.pem")),
        green_signing_key: line("green-signing.key"),
        green_receiver_keys: vec![line("green.key")],
    })
    .unwrap();
    let out = check(&r.config, false);
    assert!(out.status.success(), "{}", stderr(&out));

    // A CRL that lapsed yesterday, copied to red as an operator would.
    let crl = Ca::open(&g.join("ca"))
        .unwrap()
        .crl(30, now - Duration::days(31))
        .unwrap();
    std::fs::write(
        root.path().join("red/crl.pem"),
        spa_keys::pem_encode("X509 CRL", &crl.der),
    )
    .unwrap();
    let out = check(&r.config, false);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("trust.crls[0]"), "{}", stderr(&out));
    assert!(stderr(&out).contains("pki crl"), "{}", stderr(&out));
    let out = check(&r.config, true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: trust.crls[0]"),
        "{}",
        stderr(&out)
    );

    // A value run refuses.
    let text = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(&r.config, format!("{text}\n[ips]\nfailures = 1000000\n")).unwrap();
    let out = check(&r.config, true);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("ips.failures"), "{}", stderr(&out));
}
