//! The relay test bed (client → green → red): its keys and certificates,
//! green's and red's configurations, and the daemons started on them.

use crate::*;

/// The public keys of the relay test bed (client → green → red), made by
/// [`make_relay_pki`].
#[derive(Debug, Clone)]
pub struct RelayKeys {
    /// Green's receiver key (`green.key`).
    pub green_pub: String,
    /// Green's gateway signing key (`green-signing.key`).
    pub green_signing_pub: String,
    /// Red's receiver key (`red.key`).
    pub red_pub: String,
}

/// The PKI of the relay test bed, made in `dir` with the binaries an
/// operator uses: a CA (`ca/`, its certificate also in `ca.pem`) named
/// `ca_name`, alice's client certificate (`alice.key`, `alice.crt`), with `green_tls_ip` green's TLS server
/// certificate for that address (`green-tls.key`, `green-tls.crt`), and the
/// keys `green.key`, `green-signing.key` (`spa-server keygen`) and
/// `red.key` (`red_relay keygen`).
pub fn make_relay_pki(
    dir: &TempDir,
    ca_name: &str,
    red_relay: &Path,
    green_tls_ip: Option<Ipv4Addr>,
) -> RelayKeys {
    let server = bin("spa-server");
    let spa_client = bin("spa-client");
    // As README: the CA directory stays 0700, the daemons (as `nobody`)
    // read the public copy ca.pem.
    run_ok(Command::new(&server).args([
        "pki",
        "init",
        "--dir",
        &dir.s("ca"),
        "--name",
        ca_name,
        "--cert-out",
        &dir.s("ca.pem"),
    ]));
    let mut certs = vec![("alice", "--client")];
    if green_tls_ip.is_some() {
        certs.push(("green-tls", "--server"));
    }
    for (who, usage) in certs {
        run_ok(Command::new(&spa_client).args([
            "keygen",
            "--out",
            &dir.s(&format!("{who}.key")),
            "--csr",
            &dir.s(&format!("{who}.csr")),
            "--name",
            who,
        ]));
        let mut issue = Command::new(&server);
        issue.args([
            "pki",
            "issue",
            "--dir",
            &dir.s("ca"),
            "--csr",
            &dir.s(&format!("{who}.csr")),
            "--name",
            who,
            usage,
            "--out",
            &dir.s(&format!("{who}.crt")),
        ]);
        if let (Some(ip), "--server") = (green_tls_ip, usage) {
            issue.args(["--ip", &ip.to_string()]);
        }
        run_ok(&mut issue);
    }
    let green_pub = line_of(Command::new(&server).args(["keygen", "--out", &dir.s("green.key")]));
    let green_signing_pub = line_of(Command::new(&server).args([
        "keygen",
        "--signing",
        "--out",
        &dir.s("green-signing.key"),
    ]));
    let red_pub = line_of(Command::new(red_relay).args(["keygen", "--out", &dir.s("red.key")]));
    RelayKeys {
        green_pub,
        green_signing_pub,
        red_pub,
    }
}

/// What differs in green's configuration between relay test beds.
#[derive(Debug, Clone, Copy)]
pub struct GreenRelayConfig<'a> {
    /// Green's knock port.
    pub knock_port: u16,
    /// The port of green's `tunnel` service (and of `[tunnel]`).
    pub tunnel_port: u16,
    /// Red's order address (`[relay] red`).
    pub red: SocketAddr,
    /// Green's address towards red (`[relay] source`).
    pub source: Ipv4Addr,
    /// Red's services relayed by green, `(name, port)`; alice may use
    /// them and `tunnel`.
    pub services: &'a [(&'a str, u16)],
    /// Whether green runs the TLS tunnel (`[tunnel]`, with the
    /// `green-tls` certificate of [`make_relay_pki`]).
    pub tunnel: bool,
}

/// Writes green's `green.toml` in `dir` (blackhole mode, `nobody`, with
/// `[relay]` and optionally `[tunnel]`).
pub fn write_green_config(dir: &TempDir, keys: &RelayKeys, cfg: &GreenRelayConfig<'_>) {
    let GreenRelayConfig {
        knock_port,
        tunnel_port,
        red,
        source,
        services,
        tunnel,
    } = *cfg;
    let names: Vec<String> = services.iter().map(|(n, _)| format!(", \"{n}\"")).collect();
    let relayed: Vec<String> = services
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", port = {p} }}"))
        .collect();
    let mut text = format!(
        r#"[daemon]
knock_port = {knock_port}
keys = ["{green_key}"]
replay_db = "{green_db}"
control_socket = "{green_sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"

[[services]]
name = "tunnel"
port = {tunnel_port}

[[rules]]
identity = "cn:alice"
services = ["tunnel"{names}]

[relay]
red = "{red}"
red_key = "{red_pub}"
signing_key = "{signing}"
source = "{source}"
services = [{relayed}]
"#,
        green_key = dir.s("green.key"),
        green_db = dir.s("green.redb"),
        green_sock = dir.s("green.sock"),
        ca = dir.s("ca.pem"),
        names = names.concat(),
        red_pub = keys.red_pub,
        signing = dir.s("green-signing.key"),
        relayed = relayed.join(", "),
    );
    if tunnel {
        text.push_str(&format!(
            r#"
[tunnel]
listen_port = {tunnel_port}
certificate = "{tls_cert}"
key = "{tls_key}"
"#,
            tls_cert = dir.s("green-tls.crt"),
            tls_key = dir.s("green-tls.key"),
        ));
    }
    std::fs::write(dir.join("green.toml"), text).expect("write green.toml");
}

/// What differs in red's configuration between relay test beds.
#[derive(Debug, Clone, Copy)]
pub struct RedRelayConfig<'a> {
    /// Red's order port (its knock port).
    pub order_port: u16,
    /// An address red's firewall accepts as `management` (`<addr>/32`).
    pub management: Option<Ipv4Addr>,
    /// Red's services, `(name, port)`; alice may use them all.
    pub services: &'a [(&'a str, u16)],
}

/// Writes red's `red.toml` in `dir` (blackhole mode, `nobody`, green in
/// `[[gateways]]`).
pub fn write_red_config(dir: &TempDir, keys: &RelayKeys, cfg: &RedRelayConfig<'_>) {
    let management = cfg
        .management
        .map(|m| format!("management = [\"{m}/32\"]\n"))
        .unwrap_or_default();
    let services: String = cfg
        .services
        .iter()
        .map(|(n, p)| format!("[[services]]\nname = \"{n}\"\nport = {p}\n\n"))
        .collect();
    let names: Vec<String> = cfg
        .services
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let text = format!(
        r#"[daemon]
knock_port = {order_port}
keys = ["{red_key}"]
replay_db = "{red_db}"
control_socket = "{red_sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]

[firewall]
mode = "blackhole"
{management}
{services}[[rules]]
identity = "cn:alice"
services = [{names}]

[[gateways]]
signing_key = "{green_signing_pub}"
receiver_keys = ["{green_pub}"]
"#,
        order_port = cfg.order_port,
        red_key = dir.s("red.key"),
        red_db = dir.s("red.redb"),
        red_sock = dir.s("red.sock"),
        ca = dir.s("ca.pem"),
        names = names.join(", "),
        green_signing_pub = keys.green_signing_pub,
        green_pub = keys.green_pub,
    );
    std::fs::write(dir.join("red.toml"), text).expect("write red.toml");
}

/// Starts `red_relay run` in `red_ns` with `dir`'s `red.toml` (socket
/// `red.sock`, log `red.log`).
pub fn start_red(red_ns: &Netns, red_relay: &Path, dir: &TempDir) -> Daemon {
    Daemon::start_program(
        red_ns,
        red_relay,
        &dir.join("red.toml"),
        &dir.join("red.sock"),
        &dir.join("red.log"),
    )
}

/// Starts `spa-server run` in `green_ns` with `dir`'s `green.toml` (socket
/// `green.sock`, log `green.log`).
pub fn start_green(green_ns: &Netns, dir: &TempDir) -> Daemon {
    Daemon::start(
        green_ns,
        &dir.join("green.toml"),
        &dir.join("green.sock"),
        &dir.join("green.log"),
    )
}

/// Open sessions in a daemon's status.
pub fn sessions(d: &Daemon) -> usize {
    d.status()["sessions"].as_array().map_or(0, Vec::len)
}

/// The elements of `inet spa allow4` in `ns` (green or red; one string
/// per element).
pub fn allow4(ns: &Netns) -> Vec<String> {
    set_elements(ns, "allow4")
}

/// The elements of `inet spa allow6` in `ns`, as [`allow4`].
pub fn allow6(ns: &Netns) -> Vec<String> {
    set_elements(ns, "allow6")
}

fn set_elements(ns: &Netns, set: &str) -> Vec<String> {
    let out = ns.ok(&["nft", "list", "set", "inet", "spa", set]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some(start) = text.find("elements = {") else {
        return Vec::new();
    };
    let body = &text[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    body.split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .collect()
}
