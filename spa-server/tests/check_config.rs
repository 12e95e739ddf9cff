//! `check-config` accepts what `run` accepts: every range `run`'s
//! constructors enforce is a problem `Config::check` reports, by the same
//! code ([`spa_daemon::start::ips_state`], the firewall's table name), and
//! `daemon.user` is required.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use spa_daemon::config::{Config, Role, parse};
use spa_daemon::preflight;
use spa_daemon::start;

fn config(daemon_extra: &str, rest: &str) -> Config {
    let text = format!(
        "[daemon]\nkeys = [\"/nonexistent/k\"]\nreplay_db = \"/nonexistent/r\"\n{daemon_extra}\n\
         [trust]\nanchors = [\"/nonexistent/a\"]\n\
         [[services]]\nname = \"ssh\"\nport = 22\n\
         [[rules]]\nidentity = \"*\"\nservices = [\"ssh\"]\n{rest}\n"
    );
    parse(&text, Path::new("t.toml")).unwrap()
}

fn keys(cfg: &Config) -> Vec<String> {
    cfg.check(Role::Green, None)
        .into_iter()
        .map(|p| p.key)
        .collect()
}

#[test]
fn check_config_rejects_every_ips_value_run_rejects() {
    let cases = [
        ("rate = 0", "ips.rate"),
        ("burst = 0", "ips.burst"),
        ("failures = 0", "ips.failures"),
        ("failures = 65", "ips.failures"),
        ("failures = 1000000", "ips.failures"),
        ("failure_window = 0", "ips.failure_window"),
        (
            "failure_window = 18446744073709551615",
            "ips.failure_window",
        ),
        ("block = 0", "ips.block"),
        ("block = 18446744073709551615", "ips.block"),
        ("scan_ports = 1025", "ips.scan_ports"),
        ("scan_window = 0", "ips.scan_window"),
        ("scan_window = 18446744073709551615", "ips.scan_window"),
    ];
    for (setting, key) in cases {
        let cfg = config("user = \"nobody\"", &format!("[ips]\n{setting}"));
        let found = keys(&cfg);
        assert!(found.iter().any(|k| k == key), "{setting}: {found:?}");
        if setting == "failures = 1000000" {
            let p = cfg.check(Role::Green, None);
            let shown: Vec<String> = p.iter().map(ToString::to_string).collect();
            assert!(
                shown
                    .iter()
                    .any(|l| l == "ips.failures: must be between 1 and 64"),
                "{shown:?}"
            );
        }
        // run refuses it too (the same constructors).
        let run = start::ips(&cfg).err().map(|e| e.to_string());
        assert!(run.is_some(), "{setting}: run accepts it");
    }
    for setting in [
        "failures = 64",
        "failures = 1",
        "scan_ports = 0",
        "scan_ports = 1024",
        "rate = 1\nburst = 1",
    ] {
        let cfg = config("user = \"nobody\"", &format!("[ips]\n{setting}"));
        let found = keys(&cfg);
        assert!(
            !found.iter().any(|k| k.starts_with("ips")),
            "{setting}: {found:?}"
        );
        assert!(start::ips(&cfg).is_ok(), "{setting}");
    }
}

#[test]
fn check_config_rejects_a_table_name_the_firewall_rejects() {
    for table in ["spa-gw", "1spa", "", &"a".repeat(65)] {
        let cfg = config(
            "user = \"nobody\"",
            &format!("[firewall]\ntable = \"{table}\""),
        );
        assert!(
            keys(&cfg).iter().any(|k| k == "firewall.table"),
            "{table:?}"
        );
        assert!(start::firewall_config(&cfg).is_err(), "{table:?}");
    }
    let cfg = config("user = \"nobody\"", "[firewall]\ntable = \"spa_gw2\"");
    assert!(!keys(&cfg).iter().any(|k| k == "firewall.table"));
}

#[test]
fn check_config_requires_daemon_user() {
    let found = keys(&config("", ""));
    assert!(found.iter().any(|k| k == "daemon.user"), "{found:?}");
    let cfg = config("user = \"no-such-user-spa-test\"", "");
    let p = cfg.check(Role::Green, None);
    assert!(
        p.iter()
            .any(|p| p.key == "daemon.user" && p.problem.contains("no such user")),
        "{p:?}"
    );
    for user in ["nobody", "root"] {
        let found = keys(&config(&format!("user = \"{user}\""), ""));
        assert!(
            !found.iter().any(|k| k == "daemon.user"),
            "{user}: {found:?}"
        );
    }
}
/// A configuration whose only trust file is a CRL signed with `days` of
/// validity at `now`, in `dir`.
fn with_crl(dir: &Path, now: time::OffsetDateTime, days: u32, expired_crl: &str) -> Config {
    use spa_pki::{self as pki, CaAlgorithm, InitOptions};
    let opts = InitOptions {
        name: "Test CA".into(),
        algorithm: CaAlgorithm::Ed25519,
        days: 3650,
    };
    let ca = pki::init(&dir.join("ca"), &opts, now - time::Duration::days(60)).unwrap();
    let crl = ca.crl(days, now).unwrap();
    let path = dir.join("crl.pem");
    std::fs::write(&path, spa_keys::pem_encode("X509 CRL", &crl.der)).unwrap();
    let mut cfg = config("user = \"nobody\"", "");
    cfg.trust.crls = vec![path];
    cfg.trust.expired_crl = expired_crl.to_owned();
    cfg
}

fn findings(cfg: &Config) -> preflight::Findings {
    let mut f = preflight::Findings::default();
    preflight::state_dir(cfg, &mut f);
    preflight::crl_expiry(cfg, time::OffsetDateTime::now_utc(), &mut f);
    f
}

#[test]
fn check_config_refuses_a_lapsed_crl_and_warns_within_a_week() {
    let now = time::OffsetDateTime::now_utc();
    let dir = tempfile::tempdir().unwrap();
    // Lapsed yesterday: every client would be refused.
    let f = findings(&with_crl(
        dir.path(),
        now - time::Duration::days(31),
        30,
        "refuse",
    ));
    assert_eq!(f.lapsed_crls.len(), 1, "{f:?}");
    assert!(f.lapsed_crls[0].problem.contains("pki crl"), "{f:?}");
    assert_eq!(f.lapsed_crls[0].key, "trust.crls[0]");
    assert!(f.warnings.is_empty(), "{f:?}");
    // The same CRL under expired_crl = "ignore" is a warning only.
    let dir = tempfile::tempdir().unwrap();
    let f = findings(&with_crl(
        dir.path(),
        now - time::Duration::days(31),
        30,
        "ignore",
    ));
    assert!(f.lapsed_crls.is_empty(), "{f:?}");
    assert_eq!(f.warnings.len(), 1, "{f:?}");
    // Three days left: a warning.
    let dir = tempfile::tempdir().unwrap();
    let f = findings(&with_crl(dir.path(), now, 3, "refuse"));
    assert!(f.lapsed_crls.is_empty(), "{f:?}");
    assert_eq!(f.warnings.len(), 1, "{f:?}");
    assert!(f.warnings[0].problem.contains("nextUpdate"), "{f:?}");
    // Thirty days left: nothing.
    let dir = tempfile::tempdir().unwrap();
    let f = findings(&with_crl(dir.path(), now, 30, "refuse"));
    assert!(f.lapsed_crls.is_empty() && f.warnings.is_empty(), "{f:?}");
}

#[test]
fn check_config_says_run_creates_a_missing_replay_directory_and_refuses_a_file_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let with_db = |db: &Path| {
        let mut cfg = config("user = \"nobody\"", "");
        cfg.daemon.replay_db = db.to_path_buf();
        cfg
    };
    // Missing: run creates it (a note, not a problem), as the same
    // function run calls shows.
    let db = dir.path().join("state/spa/replay.redb");
    let f = findings(&with_db(&db));
    assert!(f.problems.is_empty(), "{f:?}");
    assert_eq!(f.notes.len(), 1, "{f:?}");
    assert!(f.notes[0].problem.contains("run creates it"), "{f:?}");
    assert!(preflight::ensure_state_dir(&db).unwrap());
    assert!(findings(&with_db(&db)).notes.is_empty());
    // A file where the directory should be: run could not create it.
    std::fs::write(dir.path().join("file"), "x").unwrap();
    let f = findings(&with_db(&dir.path().join("file/spa/replay.redb")));
    assert_eq!(f.problems.len(), 1, "{f:?}");
    assert_eq!(f.problems[0].key, "daemon.replay_db");
    assert!(preflight::ensure_state_dir(&dir.path().join("file/spa/replay.redb")).is_err());
    // The store's path naming a directory.
    let f = findings(&with_db(dir.path()));
    assert_eq!(f.problems.len(), 1, "{f:?}");
}
