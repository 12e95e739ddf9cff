use super::*;
use std::path::PathBuf;

#[test]
fn cidrs_and_bare_addresses() {
    let h = parse_cidr("fd00::1").expect("host");
    assert_eq!(h.prefix_len(), 128);
    assert!(parse_cidr("10.0.0.0/33").is_none());
    assert!(
        parse_cidr("10.200.0.0/16")
            .expect("net")
            .contains(&"10.200.3.4".parse::<IpAddr>().expect("ip"))
    );
}

#[test]
fn management_connection_check() {
    let mg = [parse_cidr("192.0.2.0/24").expect("c")];
    assert!(management_cut("192.0.2.9 5555 10.0.0.1 22", &mg).is_none());
    assert!(
        management_cut("198.51.100.7 5555 10.0.0.1 22", &mg)
            .expect("cut")
            .contains("198.51.100.7")
    );
}

#[test]
fn protect_mode_refuses_a_service_port_outside_protect_ports() {
    let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[firewall]
mode = "protect"
protect_ports = ["tcp/22", "udp/53"]
[[services]]
name = "ssh"
port = 22
[[services]]
name = "web"
port = 443
[[services]]
name = "dns"
proto = "udp"
port = 53
[[services]]
name = "dnstcp"
port = 53
"#;
    let cfg = parse(text, Path::new("t.toml")).expect("parses");
    let keys: Vec<String> = cfg
        .check(Role::Green, None)
        .into_iter()
        .filter(|p| p.key.starts_with("services["))
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["services[1].port", "services[3].port"]);
    let mut blackhole = cfg.clone();
    blackhole.firewall.mode = "blackhole".into();
    assert!(
        !blackhole
            .check(Role::Green, None)
            .iter()
            .any(|p| p.key.starts_with("services["))
    );
}

#[test]
fn tunnel_section_problems() {
    let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[[services]]
name = "tunnel"
port = 8444
[[rules]]
identity = "*"
services = ["tunnel"]
[tunnel]
certificate = "/nonexistent/c.pem"
key = "/nonexistent/c.key"
max_connections = 10
max_connections_per_source = 11
"#;
    let cfg = parse(text, Path::new("t.toml")).expect("parses");
    let t = cfg.tunnel.as_ref().expect("tunnel");
    assert_eq!((t.listen_port, t.service.as_str()), (8443, "tunnel"));
    assert_eq!((t.max_connections, t.max_connections_per_source), (10, 11));
    let keys: Vec<String> = cfg
        .check(Role::Green, None)
        .into_iter()
        .map(|p| p.key)
        .collect();
    for k in [
        "tunnel.service",
        "tunnel.certificate",
        "tunnel.key",
        "tunnel.max_connections_per_source",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
    }
    let red: Vec<String> = cfg
        .check(Role::Red, None)
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert!(red.iter().any(|x| x == "tunnel"), "{red:?}");
}

#[test]
fn ips_lockout_keys_have_safe_defaults_and_are_checked() {
    let base = "[daemon]\nkeys = [\"/k\"]\nreplay_db = \"/r\"\n[trust]\nanchors = [\"/a\"]\n\
                [[rules]]\nidentity = \"*\"\nservices = [\"*\"]\n";
    let cfg = parse(base, Path::new("t.toml")).expect("parses");
    let i = &cfg.ips;
    assert_eq!(
        (
            i.weight_open_failed,
            i.weight_replayed,
            i.weight_invalid,
            i.weight_proven
        ),
        (1, 0, 1, 1),
        "replays weigh nothing by default"
    );
    assert_eq!(
        (i.accepted_grace, i.max_sources, i.max_blocks),
        (3600, 65_536, 65_536)
    );
    let text = format!(
        "{base}[ips]\nweight_invalid = 65\nweight_replayed = 2\nmax_sources = 0\nmax_blocks = 0\n"
    );
    let cfg = parse(&text, Path::new("t.toml")).expect("parses");
    let keys: Vec<String> = cfg
        .check(Role::Green, None)
        .into_iter()
        .map(|p| p.key)
        .collect();
    for k in ["ips.weight_invalid", "ips.max_sources", "ips.max_blocks"] {
        assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
    }
    assert!(!keys.iter().any(|x| x == "ips.weight_replayed"), "{keys:?}");
}

#[test]
fn relay_section_parses_names_and_ports() {
    let text = r#"
[daemon]
keys = ["/k"]
replay_db = "/r"
[trust]
anchors = ["/a"]
[relay]
red = "10.200.60.2:62202"
red_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
signing_key = "/etc/spa/green-signing.key"
source = "10.200.60.1"
services = ["red-dns", { name = "web", port = 80 }]
"#;
    let cfg = parse(text, Path::new("x.toml")).expect("parses");
    let r = &cfg.relay[0];
    assert_eq!(r.services[0].name(), "red-dns");
    assert!(matches!(&r.services[1], RelayService::Port(p) if p.port == 80 && p.proto == "tcp"));
    assert_eq!((r.resend_ms, r.resends), (300, 5));
    let typo = text.replace("port = 80", "prot = 80");
    assert!(parse(&typo, Path::new("x.toml")).is_err());
    // red-relay refuses the section; spa-server checks it (here: the
    // key file is missing), and its services count as known in rules.
    let with_rule = format!("{text}\n[[rules]]\nidentity = \"*\"\nservices = [\"web\"]\n");
    let cfg = parse(&with_rule, Path::new("x.toml")).expect("parses");
    let red = cfg.check(Role::Red, None);
    assert!(red.iter().any(|p| p.key == "relay"), "{red:?}");
    let green = cfg.check(Role::Green, None);
    assert!(
        green.iter().any(|p| p.key == "relay.signing_key"),
        "{green:?}"
    );
    assert!(
        !green.iter().any(|p| p.key.starts_with("rules")),
        "{green:?}"
    );
}

#[test]
fn relay_problems_name_their_keys() {
    let r = RelaySection {
        red: "red.example:62202".into(),
        red_key: "short".into(),
        signing_key: PathBuf::from("/nonexistent/green-signing.key"),
        source: "fd00:200::1".into(),
        services: vec![
            RelayService::Name("ssh".into()),
            RelayService::Name("Web".into()),
            RelayService::Port(RelayPort {
                name: "db".into(),
                proto: "sctp".into(),
                port: 0,
            }),
            RelayService::Name("db".into()),
        ],
        resend_ms: 5,
        resends: 30,
    };
    let local = ["ssh".to_owned()].into_iter().collect();
    let keys: Vec<String> = r
        .check("relay", &local, 60_000)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in [
        "relay.red",
        "relay.red_key",
        "relay.signing_key",
        "relay.services[0]",
        "relay.services[1]",
        "relay.services[2].proto",
        "relay.services[2].port",
        "relay.services[3]",
        "relay.resend_ms",
        "relay.resends",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let mixed = RelaySection {
        red: "10.200.60.2:62202".into(),
        ..r.clone()
    };
    let problems = mixed.check("relay", &local, 60_000);
    assert!(
        problems
            .iter()
            .any(|(k, p)| k == "relay.source" && p.contains("families")),
        "{problems:?}"
    );
    let slow = RelaySection {
        resend_ms: 10_000,
        resends: 6,
        ..mixed
    };
    assert!(
        slow.check("relay", &local, 60_000)
            .iter()
            .any(|(k, p)| k == "relay.resends" && p.contains("max_age_ms"))
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = parse(
        "[daemon]\nknock_port = \"x\"\n",
        Path::new("/etc/spa/x.toml"),
    )
    .expect_err("bad");
    assert!(e[0].key.contains("line 2"), "{e:?}");
}
