//! Starting a daemon from its configuration: load and check, open
//! everything that needs privileges, drop them, run, clean up. Green
//! (`spa-server`) and red (`red-relay`) each assemble their daemon from
//! these pieces ([`setup`], [`run_daemon`]) around their own gate and
//! hooks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use proto_spec::policy::{IdentityPattern, Policy, Rule, ServiceSet};
use proto_spec::replay::TimeLimits;
use tracing::{info, warn};

use crate::config::{self, Config, Role, ServiceProto};
use crate::ctl::ControlSocket;
use crate::daemon::{Daemon, Flags, Hooks, Parts, TrustWatch, now_ms, trust_files};
use crate::gate::Gate;
use crate::ips::{
    FailureWeights, IpsError, Lockout, LockoutConfig, OffenseConfig, Offenses, RateLimitConfig,
    RateLimiter, ScanConfig, ScanDetector, SourceAggregation, Transport,
};
use crate::sessions::SharedSessions;
use crate::store::ReplayDb;
use spa_capture::{Capture, CaptureConfig, CaptureMode};
use spa_nft::{FirewallConfig, Forward, Mode, NftSets, Ruleset, TableName};

/// Why the daemon could not start. One line each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration has problems (all listed).
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Config(Vec<config::Problem>),
    /// A step failed.
    #[error("{step}: {cause}")]
    Step {
        /// What.
        step: &'static str,
        /// Why.
        cause: String,
    },
}

/// A [`StartError::Step`] maker for `map_err`: the step's name, then the
/// cause.
pub fn step(step: &'static str) -> impl Fn(String) -> StartError {
    move |cause| StartError::Step { step, cause }
}

/// Loads and checks a configuration.
pub fn load_config(path: &Path, role: Role) -> Result<Config, StartError> {
    let cfg = config::load(path).map_err(StartError::Config)?;
    let ssh = std::env::var("SSH_CONNECTION").ok();
    let problems = cfg.check(role, ssh.as_deref());
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(StartError::Config(problems))
    }
}

/// The policy of `[policy]` and `[[rules]]`.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        rules: cfg
            .rules
            .iter()
            .map(|r| Rule {
                identity: IdentityPattern::parse(&r.identity),
                services: if r.services.iter().any(|s| s == "*") {
                    ServiceSet::All
                } else {
                    ServiceSet::Named(r.services.clone())
                },
            })
            .collect(),
        max_lifetime_s: cfg.policy.max_lifetime,
        allow_source_mode: cfg.policy.allow_source_mode,
        require_source_match: cfg.policy.require_source_match,
    }
}

/// Freshness limits of `[time]`.
pub fn limits(cfg: &Config) -> TimeLimits {
    TimeLimits {
        max_age_ms: cfg.time.max_age_ms,
        max_future_skew_ms: cfg.time.max_future_skew_ms,
    }
}

/// The nftables configuration of `[firewall]`.
pub fn firewall_config(cfg: &Config) -> Result<FirewallConfig, StartError> {
    let f = &cfg.firewall;
    let mode = if f.mode == "protect" {
        Mode::Protect {
            ports: f
                .protect_ports
                .iter()
                .filter_map(|s| config::parse_port_spec(s))
                .collect(),
        }
    } else {
        Mode::Blackhole {
            udp_knock_port: (cfg.daemon.capture == "udp").then_some(cfg.daemon.knock_port),
        }
    };
    let mut fw = FirewallConfig::new(mode);
    fw.table = TableName::new(&f.table).map_err(|e| step("firewall.table")(e.to_string()))?;
    // A block covers what the IPS counts as one source (an IPv6 /64).
    fw.block_prefixes = aggregation(cfg).block_prefixes();
    // SPEC §9: the kernel bounds the block sets as the daemon bounds its
    // table (config checks keep it within u32).
    fw.block_set_size = u32::try_from(cfg.ips.max_blocks).unwrap_or(u32::MAX);
    fw.management = f
        .management
        .iter()
        .filter_map(|s| config::parse_cidr(s))
        .collect();
    // Only management sources reach the metrics port.
    fw.metrics_port = cfg
        .metrics
        .as_ref()
        .and_then(config::MetricsSection::addr)
        .map(|a| a.port());
    fw.forward = Forward {
        policy: f.forward.parse().unwrap_or_default(),
        allow: f
            .forward_allow
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
    };
    Ok(fw)
}

/// Everything both daemons open before dropping privileges.
pub struct Setup {
    /// Configuration.
    pub cfg: Config,
    /// Replay store.
    pub db: ReplayDb,
    /// Firewall sets.
    pub fw: NftSets,
    /// Capture.
    pub capture: Capture,
    /// Control socket.
    pub control: ControlSocket,
    /// Trust files.
    pub trust: TrustWatch,
    /// Signals.
    pub flags: Flags,
    /// The session table (green's tunnel shares it).
    pub sessions: SharedSessions,
    /// The metrics listener (`[metrics]`), bound; served after the drop.
    pub metrics: Option<crate::metrics::Listener>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup").finish_non_exhaustive()
    }
}

/// Opens the store, installs the firewall, opens capture and the control
/// socket (all privileged), then drops privileges.
pub fn setup(cfg: Config) -> Result<Setup, StartError> {
    // Named up front rather than as an EPERM in the middle of the setup
    // (check-config --at-start says the same).
    let mut lacking = crate::preflight::Findings::default();
    crate::preflight::capabilities(&cfg, &mut lacking);
    if let Some(p) = lacking.problems.into_iter().next() {
        return Err(step("capabilities")(p.problem));
    }
    let flags = Flags::register().map_err(|e| step("signal handlers")(e.to_string()))?;
    let now = now_ms();
    // SPEC §7.2: after lost state nothing sealed before the start may be
    // accepted (G = now). SPEC §9 notes the residual window: a knock with a
    // timestamp ahead of our clock, accepted just before the state was lost.
    // check-config says so (crate::preflight::state_dir).
    if crate::preflight::ensure_state_dir(&cfg.daemon.replay_db)
        .map_err(|e| step("replay database directory")(e.to_string()))?
    {
        info!(db = %cfg.daemon.replay_db.display(), "created the replay store's directory");
    }
    let (db, report) = ReplayDb::open(&cfg.daemon.replay_db, now)
        .map_err(|e| step("replay database")(e.to_string()))?;
    if report.state.lost_state() {
        warn!(db = %cfg.daemon.replay_db.display(), state = ?report.state,
            "replay state lost or new: refusing every knock sealed before now (global floor)");
    } else {
        info!(identities = report.identities, "replay state loaded");
    }
    if let Some(r) = report.reservation_applied {
        // SPEC §7.3.1: the last run did not stop cleanly.
        warn!(
            reserved = r,
            global_floor = report.global_floor,
            "replay store: the last run did not release its reservation (crash?); the global floor is raised to it: knocks are refused as replayed until the clock passes it"
        );
    }
    let fwc = firewall_config(&cfg)?;
    Ruleset::install(&fwc).map_err(|e| step("installing the nftables table")(e.to_string()))?;
    // SPEC §9, "A gateway that routes".
    if let Some(w) =
        spa_nft::open_forwarding_warning(fwc.forward.policy, spa_nft::kernel_forwards())
    {
        warn!("{w}");
    }
    let fw =
        NftSets::open(&cfg.firewall.table).map_err(|e| step("nftables netlink")(e.to_string()))?;
    let mut cc = CaptureConfig::new(cfg.daemon.knock_port);
    cc.mode = if cfg.daemon.capture == "udp" {
        CaptureMode::Udp {
            bind: IpAddr::from([0u16; 8]),
        }
    } else {
        CaptureMode::Packet {
            interface: cfg.daemon.interface.clone(),
        }
    };
    cc.scan_watch = cfg.ips.scan_ports > 0 && cfg.daemon.capture == "packet";
    cc.read_timeout = Duration::from_millis(100);
    let capture = Capture::open(&cc).map_err(|e| step("capture")(e.to_string()))?;
    let mut control = ControlSocket::bind(&cfg.daemon.control_socket).map_err(|e| {
        step("control socket")(format!("{}: {e}", cfg.daemon.control_socket.display()))
    })?;
    // Bound with privileges (any port), served by threads that start
    // after the drop.
    let metrics = cfg
        .metrics
        .as_ref()
        .map(|m| crate::metrics::Listener::bind(&m.listen))
        .transpose()
        .map_err(|e| step("metrics")(e.to_string()))?;
    let user = cfg.daemon.user.as_deref().filter(|u| *u != "root");
    if let Some(user) = user {
        let (uid, gid) =
            crate::privdrop::lookup(user).map_err(|e| step("privileges")(e.to_string()))?;
        let (uid, gid) = (uid.as_raw(), gid.as_raw());
        control
            .chown(uid, gid)
            .map_err(|e| step("control socket owner")(e.to_string()))?;
        control.allow_uid(uid);
        // The store reopens its file by path after a failed write, as the
        // daemon user: the file is the daemon user's own.
        db.chown(uid, gid)
            .map_err(|e| step("replay database owner")(e.to_string()))?;
    } else {
        warn!(
            "daemon.user is root or unset: the daemon stays root (with CAP_NET_ADMIN and CAP_NET_RAW only); set an unprivileged user"
        );
    }
    crate::privdrop::drop_privileges(user)
        .map_err(|e| step("dropping privileges")(e.to_string()))?;
    info!(user = user.unwrap_or("root"), capabilities = ?crate::privdrop::effective(), "privileges dropped");
    // The trust files are re-read on every reload as the daemon user: a
    // file it cannot read now would make each reload fail while a revoked
    // certificate keeps working, so the start fails instead.
    let trust = TrustWatch::new(trust_files(&cfg));
    trust.load().map_err(|e| {
        step("trust files as the daemon user")(format!(
            "{e} (the daemon re-reads them after dropping privileges: make them readable by daemon.user)"
        ))
    })?;
    Ok(Setup {
        cfg,
        db,
        fw,
        capture,
        control,
        trust,
        flags,
        sessions: SharedSessions::default(),
        metrics,
    })
}

/// How the intrusion prevention groups source addresses, and so how wide
/// its blocks are in the firewall ([`firewall_config`]): the defaults, IPv4
/// per address and IPv6 per /64 (not a setting yet).
pub fn aggregation(_cfg: &Config) -> SourceAggregation {
    SourceAggregation::default()
}

/// The intrusion-prevention state of `[ips]` and `[firewall] management`.
pub fn ips(cfg: &Config) -> Result<(RateLimiter, Offenses, ScanDetector), StartError> {
    ips_state(cfg).map_err(|p| step("ips")(p.to_string()))
}

/// [`ips`], its error a configuration problem naming the key.
/// [`Config::check`] calls it too, so `check-config` accepts exactly the
/// `[ips]` values `run` accepts.
pub fn ips_state(cfg: &Config) -> Result<(RateLimiter, Offenses, ScanDetector), config::Problem> {
    let allow: Vec<ipnet::IpNet> = cfg
        .firewall
        .management
        .iter()
        .filter_map(|s| config::parse_cidr(s))
        .collect();
    let i = &cfg.ips;
    let aggregation = aggregation(cfg);
    // The constructors name their own fields; these are the config's keys.
    let key = |e: IpsError, keys: &[(&str, &'static str)]| match &e {
        IpsError::BadSetting { name, why } => match keys.iter().find(|(n, _)| n == name) {
            Some((_, k)) => config::Problem {
                key: (*k).to_owned(),
                problem: (*why).to_owned(),
            },
            None => config::Problem {
                key: "ips".to_owned(),
                problem: e.to_string(),
            },
        },
        _ => config::Problem {
            key: "ips".to_owned(),
            problem: e.to_string(),
        },
    };
    let ms = |k: &str, s: u64| {
        s.checked_mul(1000).ok_or_else(|| config::Problem {
            key: k.to_owned(),
            problem: format!("{s} s is too large"),
        })
    };
    let limiter = RateLimiter::new(RateLimitConfig {
        rate_per_s: i.rate,
        burst: i.burst,
        aggregation,
        max_sources: i.max_sources,
    })
    .map_err(|e| key(e, &[("rate_per_s", "ips.rate"), ("burst", "ips.burst")]))?;
    let block_ms = ms("ips.block", i.block)?;
    let offenses = Offenses::new(OffenseConfig {
        threshold: i.failures,
        window_ms: ms("ips.failure_window", i.failure_window)?,
        block_ms,
        allowlist: allow.clone(),
        aggregation,
        max_sources: i.max_sources,
        weights: FailureWeights {
            open_failed: i.weight_open_failed,
            replayed: i.weight_replayed,
            invalid: i.weight_invalid,
            proven: i.weight_proven,
        },
    })
    .map_err(|e| {
        key(
            e,
            &[
                ("threshold", "ips.failures"),
                ("window_ms", "ips.failure_window"),
                ("block_ms", "ips.block"),
            ],
        )
    })?;
    let scans = ScanDetector::new(ScanConfig {
        distinct_ports: usize::try_from(i.scan_ports.max(1)).unwrap_or(usize::MAX),
        window_ms: ms("ips.scan_window", i.scan_window)?,
        block_ms,
        allowlist: allow,
        ignored_ports: vec![(Transport::Udp, cfg.daemon.knock_port)],
        aggregation,
        max_sources: i.max_sources,
        ..ScanConfig::default()
    })
    .map_err(|e| {
        key(
            e,
            &[
                ("distinct_ports", "ips.scan_ports"),
                ("window_ms", "ips.scan_window"),
                ("block_ms", "ips.block"),
            ],
        )
    })?;
    Ok((limiter, offenses, scans))
}

/// The services of `[[services]]`.
pub fn services(cfg: &Config) -> HashMap<String, (ServiceProto, u16)> {
    cfg.services
        .iter()
        .filter_map(|s| Some((s.name.clone(), (config::parse_proto(&s.proto)?, s.port))))
        .collect()
}

/// Builds a daemon around a gate from a finished setup, runs it, and
/// cleans up (the firewall table on a clean stop, if configured).
pub fn run_daemon<G: Gate + Send + 'static, H: Hooks>(
    s: Setup,
    gate: G,
    workers: Vec<G>,
    hooks: H,
) -> Result<(), StartError> {
    run_daemon_with(s, gate, workers, hooks, None)
}

/// [`run_daemon`], the knock floors in a store shared by a fleet of greens
/// when `shared` is set (SPEC §7.6); built after the privilege drop. With
/// `workers` (one verifier per verification thread, built like `gate`;
/// `[daemon] workers` > 1) knocks are verified on threads spawned here,
/// after the privilege drop (crate::workers); empty, or with a shared
/// store (whose commits go through the loop): on the loop's thread.
pub fn run_daemon_with<G: Gate + Send + 'static, H: Hooks>(
    mut s: Setup,
    gate: G,
    workers: Vec<G>,
    hooks: H,
    shared: Option<Box<dyn crate::store::shared::SharedFloors>>,
) -> Result<(), StartError> {
    let (limiter, offenses, scans) = ips(&s.cfg)?;
    // SPEC §7.3.1: the replay reservation, written before anything is
    // accepted; its writer thread starts here, after the privilege drop.
    let lead = s.cfg.daemon.replay_reservation_ms;
    let reserver = if lead == 0 {
        info!(
            "replay store: every accepted knock is synced before the firewall opens (replay_reservation_ms = 0)"
        );
        None
    } else {
        let r =
            s.db.start_reservation(lead, now_ms())
                .map_err(|e| step("replay reservation")(e.to_string()))?;
        let t = crate::store::ReserverThread::spawn(r, now_ms)
            .map_err(|e| step("replay reservation thread")(e.to_string()))?;
        info!(lead_ms = lead, reserved = ?s.db.reservation(), "replay store: reservation in force (no fsync per knock)");
        Some(t)
    };
    // The metrics endpoint, before the workers: they time their commits.
    let metrics = match s.metrics {
        Some(listener) => {
            let mut m = crate::metrics::Metrics::new();
            let management = s
                .cfg
                .firewall
                .management
                .iter()
                .filter_map(|n| config::parse_cidr(n))
                .collect();
            m.serve(listener, management)
                .map_err(|e| step("metrics")(e.to_string()))?;
            Some(m)
        }
        None => None,
    };
    let commit_timer = metrics.as_ref().map(|m| m.commit.clone());
    let remove = s.cfg.firewall.remove_on_exit;
    let table = s.cfg.firewall.table.clone();
    let mut d = Daemon::new(
        Parts {
            gate,
            db: s.db,
            fw: s.fw,
            capture: s.capture,
            services: services(&s.cfg),
            limiter,
            offenses,
            scans,
            trust: s.trust,
            control: Some(s.control),
            flags: s.flags,
            hooks,
            sessions: s.sessions,
        },
        now_ms(),
    );
    if !workers.is_empty() && shared.is_some() {
        info!(
            "verification on the loop's thread: the shared replay store (SPEC §7.6) commits from it"
        );
    } else if !workers.is_empty() {
        let n = workers.len();
        d.pool = Some(
            crate::workers::Pool::spawn(workers, &d.db, commit_timer)
                .map_err(|e| step("verification threads")(e.to_string()))?,
        );
        info!(workers = n, "verification on worker threads");
    }
    // SPEC §9: the lock-out shield and the bound on running blocks.
    d.lockout = Lockout::new(LockoutConfig {
        grace_ms: s.cfg.ips.accepted_grace.saturating_mul(1000),
        max_sources: s.cfg.ips.max_sources,
        aggregation: aggregation(&s.cfg),
    })
    .map_err(|e| step("ips")(e.to_string()))?;
    d.blocked = crate::blocked::Blocked::new(s.cfg.ips.max_blocks);
    d.shared = shared;
    d.metrics = metrics;
    // Prune floors only once they are older than every window in force.
    d.prune_max_age_ms = s
        .cfg
        .time
        .max_age_ms
        .saturating_add(s.cfg.time.max_future_skew_ms);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!(port = s.cfg.daemon.knock_port, capture = %s.cfg.daemon.capture, mode = %s.cfg.firewall.mode, "ready");
    let result = d.run().map_err(|e| step("capture")(e.to_string()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // A clean stop: the floors kept in memory are written and the
    // reservation removed, so the next start need not wait it out.
    if let Some(t) = reserver {
        t.stop();
        match d.db.close() {
            Ok(n) => info!(
                floors = n,
                "replay store: floors written, reservation released"
            ),
            Err(e) => {
                warn!(error = %e, "replay store: could not release the reservation (the next start waits it out)")
            }
        }
    }
    if remove {
        match d.fw.delete_table() {
            Ok(()) => info!(table = %table, "firewall table removed"),
            Err(e) => warn!(table = %table, error = %e, "could not remove the firewall table"),
        }
    }
    info!("stopped");
    result
}
