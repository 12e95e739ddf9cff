//! Logs through `tracing`: one line per decision with the source address,
//! the identity and the reason (fail2ban can match them), plain or JSON, on
//! standard error (journald takes it under systemd). `RUST_LOG` overrides
//! the level (default `info`).

/// Installs the subscriber; a second call is ignored.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
