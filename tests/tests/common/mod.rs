//! The test bed the revocation and forward-chain tests share: green and
//! the client in network namespaces, the operator's PKI (alice) and a CRL,
//! green's configuration, and checks through the `conntrack` tool.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use tests::{
    Green, Netns, TempDir, bin, link, link4, make_relay_pki, require_tools, run_ok, unique_tag,
};

pub const KNOCK_PORT: u16 = 62201;
pub const SSH_PORT: u16 = 2222;
pub const GREEN_C: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 81, 2);
/// Green's and the client's IPv6 addresses ([`Bed::new_v6`]).
pub const GREEN_C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0x81, 0, 0, 0, 0, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0x81, 0, 0, 0, 0, 2);
/// A TCP connect that gets no answer gives up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Green and the client, the operator's PKI (alice), a CRL, and green's
/// configuration with `firewall` lines added to `[firewall]` and `rest`
/// appended.
pub struct Bed {
    pub dir: TempDir,
    pub green: Netns,
    pub client: Netns,
    pub tag: String,
    /// Knocks and connections over IPv6 ([`Bed::new_v6`]).
    pub v6: bool,
}

impl Bed {
    pub fn new(firewall: &str, rest: &str) -> Self {
        Self::with_family(firewall, rest, false)
    }

    /// [`Bed::new`] with IPv6 on the link too, the client's profile naming
    /// green's IPv6 address: knocks, openings and connections over IPv6.
    pub fn new_v6(firewall: &str, rest: &str) -> Self {
        Self::with_family(firewall, rest, true)
    }

    fn with_family(firewall: &str, rest: &str, v6: bool) -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nft", "nftables"),
            ("tcpdump", "tcpdump"),
            ("conntrack", "conntrack"),
        ]);
        let tag = unique_tag();
        let dir = TempDir::new(&tag);
        let green = Netns::new("green", &tag);
        let client = Netns::new("client", &tag);
        if v6 {
            link(
                &green,
                &format!("g1{tag}"),
                &GREEN_C.to_string(),
                &GREEN_C6.to_string(),
                &client,
                &format!("c{tag}"),
                &CLIENT.to_string(),
                &CLIENT6.to_string(),
            );
        } else {
            link4(
                &green,
                &format!("g1{tag}"),
                GREEN_C,
                &client,
                &format!("c{tag}"),
                CLIENT,
            );
        }
        let server = bin("spa-server");
        let keys = make_relay_pki(&dir, "revocation e2e CA", &bin("red-relay"), None);
        run_ok(Command::new(&server).args([
            "pki",
            "crl",
            "--dir",
            &dir.s("ca"),
            "--out",
            &dir.s("crl.pem"),
        ]));
        // The daemon, as nobody, re-reads its anchors on every trust reload:
        // from the public copy ca.pem (the CA directory is closed).
        let config = format!(
            r#"[daemon]
knock_port = {KNOCK_PORT}
keys = ["{key}"]
replay_db = "{db}"
control_socket = "{sock}"
user = "nobody"

[trust]
anchors = ["{ca}"]
crls = ["{crl}"]

[firewall]
mode = "blackhole"
{firewall}

[[services]]
name = "ssh"
port = {SSH_PORT}

[[rules]]
identity = "cn:alice"
services = ["ssh"]
{rest}
"#,
            key = dir.s("green.key"),
            db = dir.s("green.redb"),
            sock = dir.s("green.sock"),
            ca = dir.s("ca.pem"),
            crl = dir.s("crl.pem"),
        );
        std::fs::write(dir.join("green.toml"), config).expect("green.toml");
        let profile = format!(
            r#"[profiles.e2e]
server = "{server}"
port = {KNOCK_PORT}
server_key = "{green_pub}"
certificate = "{cert}"
key = "{key}"
services = ["ssh"]
allow_ip = "auto"
lifetime = 300
"#,
            server = if v6 {
                IpAddr::V6(GREEN_C6)
            } else {
                IpAddr::V4(GREEN_C)
            },
            green_pub = keys.green_pub,
            cert = dir.s("alice.crt"),
            key = dir.s("alice.key"),
        );
        std::fs::write(dir.join("client.toml"), profile).expect("client.toml");
        Self {
            dir,
            green,
            client,
            tag,
            v6,
        }
    }

    /// Green's address on the client's link, in the bed's family.
    pub fn green_addr(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(GREEN_C6)
        } else {
            IpAddr::V4(GREEN_C)
        }
    }

    /// The client's address, in the bed's family.
    pub fn client_addr(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(CLIENT6)
        } else {
            IpAddr::V4(CLIENT)
        }
    }

    pub fn start_green(&self) -> Green {
        Green::start(
            &self.green,
            &self.dir.join("green.toml"),
            &self.dir.join("green.sock"),
            &self.dir.join("green.log"),
        )
    }

    /// `spa-client send --wait 2222 open` from the client: returns once the
    /// service accepts connections.
    pub fn knock(&self) {
        self.knock_in("state");
    }

    /// [`Bed::knock`] with the client's state (its session id) in `state`:
    /// another state directory, another session.
    pub fn knock_in(&self, state: &str) {
        let client = bin("spa-client");
        let mut c = self.client.cmd(client.to_str().expect("utf-8"));
        c.arg("--config")
            .arg(self.dir.join("client.toml"))
            .args(["send", "--wait", &SSH_PORT.to_string(), "open"])
            .env("HOME", &self.dir.0)
            .env("XDG_STATE_HOME", self.dir.join(state))
            .env("XDG_CONFIG_HOME", self.dir.join("config"));
        let out = c.output().expect("spa-client");
        assert!(
            out.status.success(),
            "spa-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn connect(&self) -> std::io::Result<TcpStream> {
        self.client.connect(
            SocketAddr::from((self.green_addr(), SSH_PORT)),
            CONNECT_TIMEOUT,
        )
    }

    /// `spa-server <args>` on the host (the PKI and control commands).
    pub fn server(&self, args: &[&str]) -> Output {
        run_ok(Command::new(bin("spa-server")).args(args))
    }

    /// Established conntrack entries in green of TCP flows from the client
    /// to the service (the `conntrack` tool, not the daemon's code).
    pub fn established_from_client(&self) -> usize {
        self.conntrack(&[
            "-p",
            "tcp",
            "--orig-src",
            &self.client_addr().to_string(),
            "--orig-port-dst",
            &SSH_PORT.to_string(),
        ])
        .iter()
        .filter(|l| l.contains("ESTABLISHED"))
        .count()
    }

    /// Conntrack entries in green that green started towards the client
    /// (what a mid-stream pickup of a server's segment would create).
    pub fn picked_up_towards_client(&self) -> Vec<String> {
        self.conntrack(&[
            "-p",
            "tcp",
            "--orig-src",
            &self.green_addr().to_string(),
            "--orig-dst",
            &self.client_addr().to_string(),
        ])
    }

    pub fn conntrack(&self, filter: &[&str]) -> Vec<String> {
        // `conntrack -L` lists IPv4 entries unless told the family.
        let family = if self.v6 { "ipv6" } else { "ipv4" };
        let mut args = vec!["conntrack", "-L", "-f", family];
        args.extend_from_slice(filter);
        let out = self.green.ok(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Packets the output chain's pickup rule dropped.
    pub fn pickups_dropped(&self) -> u64 {
        let out = self
            .green
            .ok(&["nft", "list", "chain", "inet", "spa", "output"]);
        counter_of(&String::from_utf8_lossy(&out.stdout), "tcp flags")
    }
}

/// The `counter packets N` of the first rule containing `needle`.
pub fn counter_of(listing: &str, needle: &str) -> u64 {
    listing
        .lines()
        .find(|l| l.contains(needle) && l.contains("counter packets"))
        .and_then(|l| {
            let rest = &l[l.find("counter packets ")? + "counter packets ".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no counter for {needle:?} in:\n{listing}"))
}

/// Asserts a TCP connect got no answer at all (timed out: no RST, no ICMP).
pub fn assert_silently_dropped(r: std::io::Result<TcpStream>, who: &str) {
    match r {
        Ok(_) => panic!("{who}: the connection was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::TimedOut,
            "{who}: expected a silent drop (timeout), got {e}"
        ),
    }
}
