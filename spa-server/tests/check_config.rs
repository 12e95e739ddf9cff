//! `check-config` accepts what `run` accepts: every range `run`'s
//! constructors enforce is a problem `Config::check` reports, by the same
//! code ([`spa_daemon::start::ips_state`], the firewall's table name), and
//! `daemon.user` is required.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use spa_daemon::config::{Config, Role, parse};
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
