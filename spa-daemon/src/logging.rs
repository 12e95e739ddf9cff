//! Logs through `tracing`: one line per decision with the source address,
//! the identity and the reason (fail2ban can match them), plain or JSON, on
//! standard error (journald takes it under systemd). `RUST_LOG` overrides
//! the level (default `info`).

/// Installs the subscriber; a second call is ignored. Colours only on a
/// terminal: a log file or the journal gets plain `key=value` text that
/// fail2ban can match.
pub fn init(format: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A log that cannot be written (full disk, file size limit) must
        // not stop the gateway: tracing-subscriber would report it with
        // eprintln!, which panics when standard error fails too.
        .log_internal_errors(false);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
