//! The operator's commands that talk to a configuration or a running
//! daemon: `check-config`, `status`, `revoke-session` (shared by
//! spa-server and red-relay).

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};
use spa_nft::ForwardPolicy;
use time::OffsetDateTime;

use crate::cli::{CheckArgs, ControlArgs};
use crate::config::{self, Role};
use crate::preflight::{self, Findings};

/// `check-config`: prints every problem as `key: problem` (exit 1), then
/// warnings and notes (exit 0 when there is no problem): the values as
/// [`config::Config::check`] judges them (by `run`'s own constructors),
/// plus what `run` will find at its start ([`crate::preflight`]).
pub fn check_config(a: &CheckArgs, role: Role) -> ExitCode {
    let path = &a.config;
    let ssh = std::env::var("SSH_CONNECTION").ok();
    let mut f = Findings::default();
    let mut forward = ForwardPolicy::default();
    match config::load(path) {
        Ok(cfg) => {
            f.problems = cfg.check(role, ssh.as_deref());
            forward = cfg.firewall.forward.parse().unwrap_or_default();
            preflight::state_dir(&cfg, &mut f);
            preflight::crl_expiry(&cfg, OffsetDateTime::now_utc(), &mut f);
            preflight::capabilities(&cfg, &mut f);
        }
        Err(p) => f.problems = p,
    }
    // The unit's ExecStartPre: a lapsed CRL must not keep the daemon (and
    // its closed firewall) down.
    if a.at_start {
        f.warnings.append(&mut f.lapsed_crls);
    } else {
        f.problems.append(&mut f.lapsed_crls);
    }
    for p in &f.problems {
        eprintln!("{p}");
    }
    for w in &f.warnings {
        eprintln!("warning: {w}");
    }
    for n in &f.notes {
        eprintln!("note: {n}");
    }
    if !f.problems.is_empty() {
        return ExitCode::FAILURE;
    }
    println!("{}: OK", path.display());
    // A warning, not a problem: the default keeps routing open (SPEC §9,
    // "A gateway that routes").
    if let Some(w) = spa_nft::open_forwarding_warning(forward, spa_nft::kernel_forwards()) {
        eprintln!("warning: firewall.forward: {w}");
    }
    ExitCode::SUCCESS
}

fn socket_path(c: &ControlArgs) -> anyhow::Result<PathBuf> {
    if let Some(s) = &c.socket {
        return Ok(s.clone());
    }
    let cfg = config::load(&c.config).map_err(|p| {
        anyhow::anyhow!(
            "{} (give --socket to skip the configuration)",
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    Ok(cfg.daemon.control_socket)
}

fn ask(c: &ControlArgs, req: &Value) -> anyhow::Result<Value> {
    let path = socket_path(c)?;
    crate::ctl::request(&path, req).map_err(|e| {
        anyhow::anyhow!(
            "control socket {}: {e} (is the daemon running?)",
            path.display()
        )
    })
}

/// Appends one line to `out` (`status` writes everything at once).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes to standard output, ignoring a closed pipe (`status | head`).
fn print_all(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `status`.
pub fn status(c: &ControlArgs) -> anyhow::Result<ExitCode> {
    let reply = ask(c, &json!({"cmd": "status"}))?;
    let mut out = String::new();
    if c.json {
        outln!(out, "{reply}");
        print_all(&out);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &reply["status"];
    outln!(out, "uptime {} s", s["uptime_s"]);
    let failure = &s["trust"]["last_reload_failure"];
    if !failure.is_null() {
        outln!(
            out,
            "TRUST RELOAD FAILED {} s ago ({}): {}; the previous trust anchors and CRLs are in force",
            failure["age_s"],
            failure["trigger"].as_str().unwrap_or("?"),
            failure["error"].as_str().unwrap_or("?"),
        );
    }
    let sessions = s["sessions"].as_array().cloned().unwrap_or_default();
    outln!(out, "{} active session(s)", sessions.len());
    for sess in sessions {
        for o in sess["openings"].as_array().cloned().unwrap_or_default() {
            // A service relayed to red has no element here.
            let element = match (o["proto"].as_str(), o["port"].as_u64()) {
                (Some(proto), Some(port)) => format!("{proto}/{port}"),
                _ => "(relayed)".to_owned(),
            };
            outln!(
                out,
                "  {} {} {} {} expires in {} s (session {})",
                sess["identity"].as_str().unwrap_or("?"),
                o["address"].as_str().unwrap_or("?"),
                o["service"].as_str().unwrap_or("?"),
                element,
                o["expires_in_s"],
                sess["session"].as_str().unwrap_or("?"),
            );
        }
    }
    // SPEC §8.1.1: one element may serve several sessions.
    let elements = s["openings"].as_array().cloned().unwrap_or_default();
    outln!(out, "{} firewall element(s)", elements.len());
    for e in elements {
        let owners: Vec<&str> = e["owners"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        outln!(
            out,
            "  {} {}/{} expires in {} s, owned by {}",
            e["address"].as_str().unwrap_or("?"),
            e["proto"].as_str().unwrap_or("?"),
            e["port"],
            e["expires_in_s"],
            owners.join(", "),
        );
    }
    for b in s["blocked"].as_array().cloned().unwrap_or_default() {
        outln!(
            out,
            "  blocked {} for {} s",
            b["address"].as_str().unwrap_or("?"),
            b["expires_in_s"]
        );
    }
    // Green's relay: one line per red (SPEC §5).
    for r in s["relay"].as_array().cloned().unwrap_or_default() {
        let c = &r["counters"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        let services: Vec<&str> = r["services"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let last = match r["last_confirmed_age_s"].as_u64() {
            Some(a) => format!("last confirmed {a} s ago"),
            None => "never confirmed".to_owned(),
        };
        outln!(
            out,
            "red {} (from {}) hosts {}: {} session(s), {} order(s) repeating; requests {}, closes {}, orders sent {}, confirmed {}, unconfirmed {}, send failures {}; {last}",
            r["red"].as_str().unwrap_or("?"),
            r["source"].as_str().unwrap_or("?"),
            services.join(","),
            r["sessions"],
            r["pending"],
            n("relay.requests"),
            n("relay.closes"),
            n("relay.orders_sent"),
            n("relay.confirmed"),
            n("relay.unconfirmed"),
            n("relay.send_failures") + n("relay.store_failures"),
        );
    }
    outln!(out, "counters:");
    if let Some(m) = s["counters"].as_object() {
        for (k, v) in m {
            outln!(out, "  {k} {v}");
        }
    }
    print_all(&out);
    Ok(ExitCode::SUCCESS)
}

/// `revoke-session`.
pub fn revoke_session(c: &ControlArgs, session: &str) -> anyhow::Result<ExitCode> {
    let reply = ask(c, &json!({"cmd": "revoke-session", "session": session}))?;
    if reply["ok"] == true {
        println!("session {session} revoked");
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!("{}", reply["error"].as_str().unwrap_or("refused"))
    }
}
