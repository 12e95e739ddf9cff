//! The ruleset: rendered as nft text, installed and removed through
//! `nft -f -` (once per daemon start and stop, never per knock).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;

use super::Proto;
use super::elements::{SetId, netmask};
use super::error::NftError;
use super::forward::{self, Forward};

/// Name of the set of allowed `ipv4_addr . inet_proto . inet_service`.
pub(crate) const SET_ALLOW4: &str = "allow4";
/// Name of the set of allowed `ipv6_addr . inet_proto . inet_service`.
pub(crate) const SET_ALLOW6: &str = "allow6";
/// Name of the set of blocked IPv4 sources.
pub(crate) const SET_BLOCK4: &str = "block4";
/// Name of the set of blocked IPv6 sources.
pub(crate) const SET_BLOCK6: &str = "block6";
/// Name of the input base chain.
pub(crate) const CHAIN_INPUT: &str = "input";
/// Name of the output base chain.
pub(crate) const CHAIN_OUTPUT: &str = "output";

/// Longest table name accepted (the kernel allows 255 bytes; nobody needs
/// that many, and a short bound keeps messages small).
const TABLE_NAME_MAX: usize = 64;

/// The name of our table in family `inet`: an ASCII letter followed by
/// ASCII letters, digits and underscores, at most 64 characters.
///
/// nft also refuses its own keywords as bare names (`ip`, `tcp`, `counter`,
/// `drop`, …); such a name passes this check and fails at
/// [`Ruleset::install`] with nft's syntax error.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// The default table name, `spa`.
    pub const DEFAULT: &'static str = "spa";

    /// Checks a table name.
    pub fn new(name: &str) -> Result<Self, NftError> {
        let invalid = |reason| NftError::InvalidTableName {
            name: name.to_owned(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(c) if !c.is_ascii_alphabetic() => {
                return Err(invalid("it must start with an ASCII letter"));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid("only ASCII letters, digits and '_' are allowed"));
        }
        if name.len() > TABLE_NAME_MAX {
            return Err(invalid("it is longer than 64 characters"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TableName {
    type Err = NftError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What the chain does with traffic that no knock opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Drop every packet that is not loopback, management, established or
    /// related, neighbour discovery or knock-opened: the host answers
    /// nothing (no RST, no ICMP unreachable), so scans see only "filtered".
    Blackhole {
        /// The UDP port on which the daemon receives knocks when it uses a
        /// UDP socket: accepted just before the final drop. `None` in raw
        /// capture (AF_PACKET) mode, where the capture sees the packet
        /// before netfilter and no rule is needed.
        udp_knock_port: Option<u16>,
    },
    /// Drop only packets to these ports that are not part of an
    /// established flow and were not opened by a knock; everything else is
    /// untouched.
    Protect {
        /// The protected `(protocol, port)` pairs.
        ports: Vec<(Proto, u16)>,
    },
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Blackhole {
            udp_knock_port: None,
        }
    }
}

/// The prefix lengths whose blocks cover a whole network: a block of one
/// source then drops every address of its prefix. The length of the full
/// address (32, 128) means one address per block.
///
/// For a shorter length the ruleset adds a prefix set named after it
/// (`block6_64`: type `ipv6_addr`, flags timeout) holding network addresses
/// (host bits zero), and the rule `ip6 saddr & ffff:ffff:ffff:ffff:: @block6_64
/// drop` beside `ip6 saddr @block6 drop`; [`super::NftSets::block_net`] adds
/// the elements. The sets stay plain hash sets (no intervals): one mask and
/// one exact lookup per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPrefixes {
    /// IPv4 prefix length (0..=32; longer is read as 32). Default 32: one
    /// address.
    pub ipv4: u8,
    /// IPv6 prefix length (0..=128; longer is read as 128). Default 64: one
    /// IPv6 host usually holds a whole /64.
    pub ipv6: u8,
}

impl Default for BlockPrefixes {
    /// The intrusion prevention's default aggregation
    /// (`spa_daemon`'s IPS source aggregation): IPv4 /32, IPv6 /64.
    fn default() -> Self {
        Self {
            ipv4: crate::DEFAULT_IPV4_PREFIX,
            ipv6: crate::DEFAULT_IPV6_PREFIX,
        }
    }
}

impl BlockPrefixes {
    /// One address per block, in both families.
    pub const HOSTS: BlockPrefixes = BlockPrefixes {
        ipv4: 32,
        ipv6: 128,
    };
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    /// Our table, in family `inet` (default `spa`).
    pub table: TableName,
    /// Priority of the input base chain, relative to the standard `filter`
    /// priority (0): the default, [`FirewallConfig::DEFAULT_PRIORITY`], is
    /// `filter - 10`, so that our chain runs before the usual filter chains.
    pub priority: i32,
    /// Blackhole or protect.
    pub mode: Mode,
    /// Sources that are always accepted (never blocked, never dropped):
    /// placed right after `iif "lo" accept`. Host bits are ignored and
    /// overlapping networks are merged.
    pub management: Vec<IpNet>,
    /// How wide a block is in each family (default: IPv4 one address, IPv6
    /// the /64). Set it to the intrusion prevention's aggregation, whose
    /// blocks the daemon adds.
    pub block_prefixes: BlockPrefixes,
    /// The forward chain (see [`Forward`]): routed traffic.
    pub forward: Forward,
    /// The `size` of each block set: the kernel holds at most this many
    /// blocks per set and refuses more (`ENFILE`), so a flood of blocks
    /// cannot grow kernel memory without limit. Set it to the daemon's
    /// `[ips] max_blocks` (default [`FirewallConfig::DEFAULT_BLOCK_SET_SIZE`]).
    pub block_set_size: u32,
    /// The daemon's metrics port (`[metrics] listen`), if any: TCP to it is
    /// dropped from every source but loopback and the management networks,
    /// right after their accept rules (before `ct state established`, and
    /// whatever a knock opened), in both modes.
    pub metrics_port: Option<u16>,
}

impl FirewallConfig {
    /// `filter - 10`.
    pub const DEFAULT_PRIORITY: i32 = -10;

    /// Default `size` of the block sets (the daemon's default `[ips]
    /// max_blocks`).
    pub const DEFAULT_BLOCK_SET_SIZE: u32 = 65_536;

    /// A configuration with the default table and priority and no
    /// management networks.
    pub fn new(mode: Mode) -> Self {
        Self {
            table: TableName::default(),
            priority: Self::DEFAULT_PRIORITY,
            mode,
            management: Vec::new(),
            block_prefixes: BlockPrefixes::default(),
            forward: Forward::default(),
            block_set_size: Self::DEFAULT_BLOCK_SET_SIZE,
            metrics_port: None,
        }
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self::new(Mode::default())
    }
}

/// Rendering, installing and removing our table.
#[derive(Debug, Clone, Copy)]
pub struct Ruleset;

impl Ruleset {
    /// The table definition in nft syntax (pure; see the module
    /// documentation of [`crate`] for the order of the rules).
    pub fn render(cfg: &FirewallConfig) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail; the fmt::Result is irrelevant.
        let _ = render_into(&mut s, cfg);
        s
    }

    /// The complete script that [`Ruleset::install`] feeds to `nft -f -`:
    /// `table inet T` (creates the table if it is missing, so that the next
    /// line cannot fail), `delete table inet T` (drops a previous instance
    /// with its sets and chain), then the new definition. nft sends it as
    /// one batch, so the kernel applies all of it or none of it, and there
    /// is no moment without our chain when one was installed before.
    pub fn script(cfg: &FirewallConfig) -> String {
        let t = &cfg.table;
        format!(
            "table inet {t}\ndelete table inet {t}\n{}",
            Ruleset::render(cfg)
        )
    }

    /// Installs (or replaces) our table atomically. Other tables are not
    /// touched. Replacing empties the sets.
    pub fn install(cfg: &FirewallConfig) -> Result<(), NftError> {
        run_nft(&["-f", "-"], Some(&Ruleset::script(cfg))).map(drop)
    }

    /// Removes our table if it exists (no error if it does not).
    pub fn remove(table: &str) -> Result<(), NftError> {
        let t = TableName::new(table)?;
        run_nft(
            &["-f", "-"],
            Some(&format!("table inet {t}\ndelete table inet {t}\n")),
        )
        .map(drop)
    }

    /// `nft list table inet T`: the table as the kernel has it, elements
    /// and counters included.
    pub fn list_table(table: &str) -> Result<String, NftError> {
        let t = TableName::new(table)?;
        run_nft(&["list", "table", "inet", t.as_str()], None)
    }

    /// Whether our table exists.
    pub fn exists(table: &str) -> Result<bool, NftError> {
        let t = TableName::new(table)?;
        let tables = run_nft(&["list", "tables", "inet"], None)?;
        Ok(tables
            .lines()
            .any(|l| l.trim() == format!("table inet {t}")))
    }
}

fn render_into(s: &mut String, cfg: &FirewallConfig) -> fmt::Result {
    writeln!(s, "table inet {} {{", cfg.table)?;
    let net4 = SetId::block_for(false, cfg.block_prefixes.ipv4);
    let net6 = SetId::block_for(true, cfg.block_prefixes.ipv6);
    let mut sets = vec![
        (SetId::Allow4, "ipv4_addr . inet_proto . inet_service"),
        (SetId::Allow6, "ipv6_addr . inet_proto . inet_service"),
        (SetId::Block4, "ipv4_addr"),
        (SetId::Block6, "ipv6_addr"),
    ];
    if net4 != SetId::Block4 {
        sets.push((net4, "ipv4_addr"));
    }
    if net6 != SetId::Block6 {
        sets.push((net6, "ipv6_addr"));
    }
    for (set, ty) in sets {
        let name = set.name();
        writeln!(s, "\tset {name} {{")?;
        writeln!(s, "\t\ttype {ty}")?;
        if !matches!(set, SetId::Allow4 | SetId::Allow6) {
            // Bounded in the kernel too (`[ips] max_blocks`).
            writeln!(s, "\t\tsize {}", cfg.block_set_size)?;
        }
        writeln!(s, "\t\tflags timeout")?;
        writeln!(s, "\t}}")?;
    }
    writeln!(s, "\tchain {CHAIN_INPUT} {{")?;
    writeln!(
        s,
        "\t\ttype filter hook input priority {}; policy accept;",
        priority(cfg.priority)
    )?;
    writeln!(s, "\t\tiif \"lo\" accept")?;
    let nets = IpNet::aggregate(&cfg.management);
    let v4: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)))
        .map(IpNet::to_string)
        .collect();
    let v6: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)))
        .map(IpNet::to_string)
        .collect();
    if !v4.is_empty() {
        writeln!(s, "\t\tip saddr {{ {} }} accept", v4.join(", "))?;
    }
    if !v6.is_empty() {
        writeln!(s, "\t\tip6 saddr {{ {} }} accept", v6.join(", "))?;
    }
    if let Some(port) = cfg.metrics_port {
        // Management sources only (accepted just above).
        writeln!(s, "\t\ttcp dport {port} counter drop")?;
    }
    writeln!(s, "\t\tct state established,related accept")?;
    writeln!(s, "\t\tip saddr @{SET_BLOCK4} drop")?;
    writeln!(s, "\t\tip6 saddr @{SET_BLOCK6} drop")?;
    if let SetId::Block4Net(p) = net4 {
        let (mask, set) = (netmask(false, p), net4.name());
        writeln!(s, "\t\tip saddr & {mask} @{set} drop")?;
    }
    if let SetId::Block6Net(p) = net6 {
        let (mask, set) = (netmask(true, p), net6.name());
        writeln!(s, "\t\tip6 saddr & {mask} @{set} drop")?;
    }
    writeln!(
        s,
        "\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
    )?;
    writeln!(
        s,
        "\t\tip saddr . meta l4proto . th dport @{SET_ALLOW4} accept"
    )?;
    writeln!(
        s,
        "\t\tip6 saddr . meta l4proto . th dport @{SET_ALLOW6} accept"
    )?;
    match &cfg.mode {
        Mode::Blackhole { udp_knock_port } => {
            if let Some(port) = udp_knock_port {
                writeln!(s, "\t\tudp dport {port} accept")?;
            }
            writeln!(s, "\t\tcounter drop")?;
        }
        Mode::Protect { ports } => {
            for proto in [Proto::Tcp, Proto::Udp] {
                let mut list: Vec<u16> = ports
                    .iter()
                    .filter(|(p, _)| *p == proto)
                    .map(|&(_, port)| port)
                    .collect();
                list.sort_unstable();
                list.dedup();
                if list.is_empty() {
                    continue;
                }
                let list: Vec<String> = list.iter().map(u16::to_string).collect();
                writeln!(
                    s,
                    "\t\t{proto} dport {{ {} }} counter drop",
                    list.join(", ")
                )?;
            }
        }
    }
    writeln!(s, "\t}}")?;
    forward::render_chain(s, &cfg.forward, &priority(cfg.priority), &nets, net4, net6)?;
    // A connection whose conntrack entry was deleted (a revoked session,
    // SPEC §9 "What revocation ends") must not come back through the
    // kernel's mid-stream pickup (nf_conntrack_tcp_loose): a TCP segment
    // this host sends without a SYN would create an entry in the other
    // direction, and the peer's next segments would be "established". So
    // a locally sent TCP segment that would start an entry without a SYN
    // is dropped. RSTs and FINs never start an entry and pass, and so does
    // everything to management networks (never subject to revocation: a
    // session of theirs that conntrack lost must not stall).
    writeln!(s, "\tchain {CHAIN_OUTPUT} {{")?;
    writeln!(
        s,
        "\t\ttype filter hook output priority {}; policy accept;",
        priority(cfg.priority)
    )?;
    writeln!(s, "\t\toif \"lo\" accept")?;
    if !v4.is_empty() {
        writeln!(s, "\t\tip daddr {{ {} }} accept", v4.join(", "))?;
    }
    if !v6.is_empty() {
        writeln!(s, "\t\tip6 daddr {{ {} }} accept", v6.join(", "))?;
    }
    writeln!(
        s,
        "\t\tct state new tcp flags & (fin | syn | rst | ack) == ack counter drop"
    )?;
    writeln!(s, "\t}}")?;
    writeln!(s, "}}")
}

/// `filter`, `filter - 10`, `filter + 5`.
fn priority(offset: i32) -> String {
    match offset {
        0 => "filter".to_owned(),
        n if n < 0 => format!("filter - {}", n.unsigned_abs()),
        n => format!("filter + {n}"),
    }
}

/// The `nft` binary: the first in `PATH`, else the usual sbin locations
/// (a daemon's `PATH` may lack them), else plain `nft`.
fn nft_program() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nft"));
    let fallbacks = ["/usr/sbin/nft", "/sbin/nft", "/usr/local/sbin/nft"]
        .into_iter()
        .map(PathBuf::from);
    from_path
        .chain(fallbacks)
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new("nft").to_path_buf())
}

/// Runs nft with `args`, feeding `stdin` if given; returns its standard
/// output.
fn run_nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let program = nft_program();
    let name = program.display().to_string();
    let spawn_err = |source| NftError::Spawn {
        program: name.clone(),
        source,
    };
    let mut child = Command::new(&program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(text) = stdin {
        // The script is a few kilobytes, below the pipe's capacity, and nft
        // reads all of its input before writing anything: no deadlock.
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| spawn_err(std::io::Error::other("no stdin pipe")))?;
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
        drop(pipe);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NftError::Command {
            program: name,
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    /// One chain of a rendered ruleset, from its `chain` line to its `}`.
    fn chain<'a>(text: &'a str, name: &str) -> &'a str {
        let start = text
            .find(&format!("\tchain {name} {{\n"))
            .unwrap_or_else(|| panic!("no chain {name} in:\n{text}"));
        let len = text[start..].find("\n\t}\n").expect("chain end") + 4;
        &text[start..start + len]
    }

    #[test]
    fn forward_drop_allows_management_established_and_the_allow_list() {
        let cfg = FirewallConfig {
            management: vec![net("192.0.2.0/24")],
            forward: Forward {
                policy: forward::ForwardPolicy::Drop,
                allow: vec![
                    "10.0.3.0/24 tcp/22".parse().expect("entry"),
                    "2001:db8:3::/48".parse().expect("entry"),
                ],
            },
            ..FirewallConfig::default()
        };
        let text = Ruleset::render(&cfg);
        let fwd: Vec<&str> = chain(&text, "forward").lines().map(str::trim).collect();
        assert_eq!(
            fwd,
            [
                "chain forward {",
                "type filter hook forward priority filter - 10; policy accept;",
                "ip saddr { 192.0.2.0/24 } accept",
                "ct state established,related accept",
                "ip saddr @block4 counter drop",
                "ip6 saddr @block6 counter drop",
                "ip6 saddr & ffff:ffff:ffff:ffff:: @block6_64 counter drop",
                "ip daddr 10.0.3.0/24 tcp dport 22 accept",
                "ip6 daddr 2001:db8:3::/48 accept",
                "counter drop",
                "}",
            ]
        );
        // The default forwards (blocked sources aside).
        let open = Ruleset::render(&FirewallConfig::default());
        assert!(!chain(&open, "forward").contains("\t\tcounter drop\n"));
    }

    #[test]
    fn blackhole_ruleset() {
        let cfg = FirewallConfig::new(Mode::Blackhole {
            udp_knock_port: Some(62201),
        });
        let expected = "\
table inet spa {
\tset allow4 {
\t\ttype ipv4_addr . inet_proto . inet_service
\t\tflags timeout
\t}
\tset allow6 {
\t\ttype ipv6_addr . inet_proto . inet_service
\t\tflags timeout
\t}
\tset block4 {
\t\ttype ipv4_addr
\t\tsize 65536
\t\tflags timeout
\t}
\tset block6 {
\t\ttype ipv6_addr
\t\tsize 65536
\t\tflags timeout
\t}
\tset block6_64 {
\t\ttype ipv6_addr
\t\tsize 65536
\t\tflags timeout
\t}
\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tiif \"lo\" accept
\t\tct state established,related accept
\t\tip saddr @block4 drop
\t\tip6 saddr @block6 drop
\t\tip6 saddr & ffff:ffff:ffff:ffff:: @block6_64 drop
\t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
\t\tip saddr . meta l4proto . th dport @allow4 accept
\t\tip6 saddr . meta l4proto . th dport @allow6 accept
\t\tudp dport 62201 accept
\t\tcounter drop
\t}
\tchain forward {
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tct state established,related accept
\t\tip saddr @block4 counter drop
\t\tip6 saddr @block6 counter drop
\t\tip6 saddr & ffff:ffff:ffff:ffff:: @block6_64 counter drop
\t}
\tchain output {
\t\ttype filter hook output priority filter - 10; policy accept;
\t\toif \"lo\" accept
\t\tct state new tcp flags & (fin | syn | rst | ack) == ack counter drop
\t}
}
";
        assert_eq!(Ruleset::render(&cfg), expected);
        let script = Ruleset::script(&cfg);
        assert!(script.starts_with("table inet spa\ndelete table inet spa\ntable inet spa {\n"));
    }

    #[test]
    fn blackhole_without_knock_port_has_no_udp_rule() {
        let text = Ruleset::render(&FirewallConfig::default());
        assert!(!text.contains("udp dport"));
        assert!(chain(&text, "input").ends_with("\t\tcounter drop\n\t}\n"));
    }

    #[test]
    fn protect_ruleset_and_management() {
        let mut cfg = FirewallConfig::new(Mode::Protect {
            ports: vec![
                (Proto::Tcp, 443),
                (Proto::Udp, 53),
                (Proto::Tcp, 22),
                (Proto::Tcp, 22),
            ],
        });
        cfg.table = TableName::new("gate_1").expect("valid name");
        cfg.priority = 5;
        cfg.management = vec![
            net("192.0.2.77/24"),
            net("192.0.2.0/25"),
            net("2001:db8::1/32"),
            net("198.51.100.7/32"),
        ];
        let text = Ruleset::render(&cfg);
        let input: Vec<&str> = chain(&text, "input").lines().map(str::trim).collect();
        assert_eq!(
            input,
            [
                "chain input {",
                "type filter hook input priority filter + 5; policy accept;",
                "iif \"lo\" accept",
                "ip saddr { 192.0.2.0/24, 198.51.100.7/32 } accept",
                "ip6 saddr { 2001:db8::/32 } accept",
                "ct state established,related accept",
                "ip saddr @block4 drop",
                "ip6 saddr @block6 drop",
                "ip6 saddr & ffff:ffff:ffff:ffff:: @block6_64 drop",
                "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept",
                "ip saddr . meta l4proto . th dport @allow4 accept",
                "ip6 saddr . meta l4proto . th dport @allow6 accept",
                "tcp dport { 22, 443 } counter drop",
                "udp dport { 53 } counter drop",
                "}",
            ]
        );
        // The output chain lets everything to management networks pass.
        assert!(
            chain(&text, "output").contains(
                "\t\toif \"lo\" accept\n\
                 \t\tip daddr { 192.0.2.0/24, 198.51.100.7/32 } accept\n\
                 \t\tip6 daddr { 2001:db8::/32 } accept\n\
                 \t\tct state new"
            ),
            "{text}"
        );
        // The forward chain accepts management sources first too.
        assert!(
            chain(&text, "forward").contains(
                "\t\tip saddr { 192.0.2.0/24, 198.51.100.7/32 } accept\n\
                 \t\tip6 saddr { 2001:db8::/32 } accept\n\
                 \t\tct state established,related accept\n"
            ),
            "{text}"
        );
        assert!(text.starts_with("table inet gate_1 {\n"));
    }

    /// The metrics port admits management sources only: its drop comes
    /// right after their accept, before established flows and knock
    /// openings, in protect mode too.
    #[test]
    fn metrics_port_is_dropped_for_all_but_management() {
        let cfg = FirewallConfig {
            management: vec![net("192.0.2.0/24")],
            metrics_port: Some(9462),
            ..FirewallConfig::new(Mode::Protect {
                ports: vec![(Proto::Tcp, 22)],
            })
        };
        let text = Ruleset::render(&cfg);
        assert!(
            chain(&text, "input").contains(
                "\t\tip saddr { 192.0.2.0/24 } accept\n\
                 \t\ttcp dport 9462 counter drop\n\
                 \t\tct state established,related accept\n"
            ),
            "{text}"
        );
        assert!(!Ruleset::render(&FirewallConfig::default()).contains("9462"));
    }

    #[test]
    fn protect_without_ports_drops_nothing() {
        let text = Ruleset::render(&FirewallConfig::new(Mode::Protect { ports: vec![] }));
        assert!(!chain(&text, "input").contains("drop\n\t}"));
        assert!(!text.contains("dport {"));
    }

    #[test]
    fn prefix_blocks_get_a_set_and_a_masked_rule_each() {
        let mut cfg = FirewallConfig {
            block_prefixes: BlockPrefixes { ipv4: 24, ipv6: 48 },
            ..FirewallConfig::default()
        };
        let text = Ruleset::render(&cfg);
        for needle in [
            "\tset block4_24 {\n\t\ttype ipv4_addr\n\t\tsize 65536\n\t\tflags timeout\n\t}\n",
            "\tset block6_48 {\n\t\ttype ipv6_addr\n\t\tsize 65536\n\t\tflags timeout\n\t}\n",
            "\t\tip saddr @block4 drop\n\t\tip6 saddr @block6 drop\n\
             \t\tip saddr & 255.255.255.0 @block4_24 drop\n\
             \t\tip6 saddr & ffff:ffff:ffff:: @block6_48 drop\n\
             \t\ticmpv6 type",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        // Odd lengths mask inside a group.
        cfg.block_prefixes = BlockPrefixes { ipv4: 9, ipv6: 57 };
        let text = Ruleset::render(&cfg);
        assert!(
            text.contains("ip saddr & 255.128.0.0 @block4_9 drop"),
            "{text}"
        );
        assert!(
            text.contains("ip6 saddr & ffff:ffff:ffff:ff80:: @block6_57 drop"),
            "{text}"
        );
    }

    #[test]
    fn host_blocks_need_no_prefix_set() {
        let mut cfg = FirewallConfig {
            block_prefixes: BlockPrefixes::HOSTS,
            ..FirewallConfig::default()
        };
        let text = Ruleset::render(&cfg);
        assert!(
            !text.contains("block4_") && !text.contains("block6_"),
            "{text}"
        );
        assert!(!text.contains("saddr & "), "{text}");
        // Lengths past the address size count as the address size.
        cfg.block_prefixes = BlockPrefixes {
            ipv4: 40,
            ipv6: 200,
        };
        assert_eq!(Ruleset::render(&cfg), text);
        // The default is the intrusion prevention's: v4 per address, v6 /64.
        assert_eq!(
            BlockPrefixes::default(),
            BlockPrefixes { ipv4: 32, ipv6: 64 }
        );
    }

    #[test]
    fn priorities() {
        assert_eq!(priority(0), "filter");
        assert_eq!(priority(-10), "filter - 10");
        assert_eq!(priority(i32::MIN), "filter - 2147483648");
        assert_eq!(priority(100), "filter + 100");
    }

    #[test]
    fn table_names() {
        for ok in ["spa", "gate_1", "A", &"x".repeat(64)] {
            assert_eq!(TableName::new(ok).expect("valid").as_str(), ok);
        }
        for bad in [
            "",
            "1spa",
            "_spa",
            "spa-x",
            "spa x",
            "spa;",
            "spa\"",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(NftError::InvalidTableName { .. })),
                "{bad:?} accepted"
            );
        }
        assert_eq!(TableName::default().as_str(), "spa");
    }
}
