//! The command-line arguments both daemons share (`--config`, how to reach
//! a running daemon, `pubkey`, `check-config`, `init`, `man`), as clap
//! definitions: `spa-server` and `red-relay` flatten them into their own
//! commands; and the `man` and `completions` output.

use std::path::PathBuf;

use clap::Args;

/// `pubkey`: print the public key of a key file.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The private key file.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// `--config`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/spa/spa-server.toml"
    )]
    pub config: PathBuf,
}

/// How to reach a running daemon.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The control socket [default: from the configuration file].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The configuration file (for its control socket path).
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/spa/spa-server.toml"
    )]
    pub config: PathBuf,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// `check-config`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file.
    #[arg(
        short,
        long,
        value_name = "FILE",
        default_value = "/etc/spa/spa-server.toml"
    )]
    pub config: PathBuf,
    /// As the systemd unit's ExecStartPre: a lapsed CRL is a warning, not
    /// a problem, so that the daemon still starts and keeps its firewall
    /// closed (refusing the CA's clients) instead of leaving the host
    /// without its table until a new CRL is published.
    #[arg(long)]
    pub at_start: bool,
}

/// `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page (this command's and one per subcommand, NAME.1 and
    /// NAME-SUBCOMMAND.1) into DIR instead of printing this command's.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `man`: `cmd`'s page on standard output, or with `--out-dir` every page
/// of `cmd` and its subcommands (which the main page names) as files.
pub fn man(cmd: clap::Command, a: &ManArgs) -> std::io::Result<()> {
    use std::io::Write as _;
    match &a.out_dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::stdout().write_all(&out)
        }
    }
}

/// `completions`: `cmd`'s completions for `shell` on standard output.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    std::io::stdout().write_all(&out)
}

/// What `init` asks of both daemons.
#[derive(Debug, Args)]
pub struct DaemonInitArgs {
    /// The configuration directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/spa")]
    pub dir: PathBuf,
    /// Where the replay store goes (run creates it; the unit's
    /// StateDirectory= too).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/spa")]
    pub state_dir: PathBuf,
    /// Where the control socket goes (the unit's RuntimeDirectory=).
    #[arg(long, value_name = "DIR", default_value = "/run/spa")]
    pub run_dir: PathBuf,
    /// daemon.user: the unprivileged user the daemon drops to (must exist;
    /// the packages create `spa`).
    #[arg(long, default_value = "spa")]
    pub user: String,
    /// The UDP port knocks (or orders) arrive on.
    #[arg(long, default_value_t = 62201)]
    pub knock_port: u16,
    /// An address or CIDR always let in and never blocked (your admin
    /// network); repeatable. Default: the SSH client's address when run
    /// over SSH, so that the blackhole does not cut this session.
    #[arg(long, value_name = "CIDR")]
    pub management: Vec<String>,
    /// A service a knock can open, NAME=tcp/PORT or NAME=udp/PORT;
    /// repeatable.
    #[arg(long, value_name = "NAME=PROTO/PORT", default_value = "ssh=tcp/22")]
    pub service: Vec<String>,
    /// An identity granted every service (email:ADDR, cn:NAME, dns:NAME,
    /// uri:URI); repeatable. Default: every certificate of the CA.
    #[arg(long, value_name = "IDENTITY")]
    pub allow: Vec<String>,
    /// Replace existing files (an existing CA is kept, never replaced).
    #[arg(long)]
    pub force: bool,
}

impl DaemonInitArgs {
    /// The library's options.
    pub fn common(&self) -> crate::init::Common {
        crate::init::Common {
            dir: self.dir.clone(),
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            user: self.user.clone(),
            knock_port: self.knock_port,
            management: self.management.clone(),
            ssh_connection: std::env::var("SSH_CONNECTION").ok(),
            services: self.service.clone(),
            allow: self.allow.clone(),
            force: self.force,
        }
    }
}
