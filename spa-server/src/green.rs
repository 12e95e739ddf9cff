//! `spa-server run`: green assembled from the framework's start-up
//! ([`spa_daemon::start`]) with green's own parts: the knock verifier, the
//! relay to red ([`crate::relay`]) and the tunnel endpoint
//! ([`crate::tunnel`]).

use std::path::Path;

use proto_spec::verify::KnockVerifier;
use spa_daemon::config::{Config, Role};
use spa_daemon::daemon::{TrustWatch, trust_files};
use spa_daemon::sessions::SharedSessions;
use spa_daemon::start::{StartError, limits, load_config, policy, run_daemon_with, setup, step};
use spa_daemon::store::shared::SharedFloors;

/// `spa-server run`.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let cfg = load_config(config_path, Role::Green)?;
    spa_daemon::logging::init(&cfg.daemon.log_format);
    let verifier = knock_verifier(&cfg)?;
    // One verifier per verification thread (each with its own certificate
    // cache); none when the loop verifies itself.
    let n = cfg.daemon.workers();
    let workers = if n > 1 {
        (0..n)
            .map(|_| knock_verifier(&cfg))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let mut relay =
        crate::relay::Relay::from_config(&cfg).map_err(|e| step("relay")(e.to_string()))?;
    // Before privileges are dropped: the server key and the listener; its
    // threads start after the drop, so none of them keeps root's privileges.
    // One session table for the daemon loop and the tunnel (SPEC §8.1.1).
    let sessions = SharedSessions::default();
    let tunnel = crate::tunnel::bind(&cfg, &sessions).map_err(|e| step("tunnel")(e.to_string()))?;
    // SPEC §7.6: the TLS files of a shared store are read as root, its
    // client started after the drop.
    let shared = spa_daemon::store::shared::etcd_settings(&cfg).map_err(StartError::Config)?;
    let mut s = setup(cfg)?;
    s.sessions = sessions;
    let tunnel = tunnel
        .map(crate::tunnel::Bound::serve)
        .transpose()
        .map_err(|e| step("tunnel")(e.to_string()))?;
    if let Some(r) = relay.as_mut() {
        // SPEC §7.5: order timestamps durable in the replay store.
        r.use_store(&s.db);
    }
    let shared = shared
        .map(|e| crate::etcd::EtcdFloors::start(&e))
        .transpose()
        .map_err(|e| step("shared replay store")(e.to_string()))?;
    let shared = shared.map(|f| Box::new(f) as Box<dyn SharedFloors>);
    run_daemon_with(s, verifier, workers, (relay, tunnel), shared)
}

/// Green's verifier: the receiver keys, the trust files, policy and time
/// limits of `cfg` (read before the privilege drop).
fn knock_verifier(cfg: &Config) -> Result<KnockVerifier, StartError> {
    let mut keys = Vec::new();
    for k in &cfg.daemon.keys {
        keys.push(spa_keys::read_receiver_key(k).map_err(|e| step("receiver key")(e.to_string()))?);
    }
    let store = TrustWatch::new(trust_files(cfg))
        .load()
        .map_err(|e| step("trust")(e.to_string()))?;
    Ok(KnockVerifier::new(keys, store, policy(cfg), limits(cfg)))
}
