//! [`Config::check`]: every semantic problem of a configuration, with its
//! key, for `check-config` and for `run` before anything is opened.

use super::*;

impl Config {
    /// Every semantic problem: files that cannot be read (keys with their
    /// permissions), values out of range, unknown names. `ssh_connection` is
    /// `$SSH_CONNECTION` (client address, client port, server address,
    /// server port) for the management-connection check.
    pub fn check(&self, role: Role, ssh_connection: Option<&str>) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: String, problem: String| p.push(Problem { key, problem });
        let d = &self.daemon;
        if d.knock_port == 0 {
            bad("daemon.knock_port".into(), "must be 1..=65535".into());
        }
        if !matches!(d.capture.as_str(), "packet" | "udp") {
            bad(
                "daemon.capture".into(),
                format!("'{}': use \"packet\" or \"udp\"", d.capture),
            );
        }
        if !matches!(d.log_format.as_str(), "plain" | "json") {
            bad(
                "daemon.log_format".into(),
                format!("'{}': use \"plain\" or \"json\"", d.log_format),
            );
        }
        let r = d.replay_reservation_ms;
        if r != 0 && !(crate::store::MIN_LEAD_MS..=crate::store::MAX_LEAD_MS).contains(&r) {
            bad(
                "daemon.replay_reservation_ms".into(),
                format!(
                    "{r}: use 0 (sync every knock) or {}..={}",
                    crate::store::MIN_LEAD_MS,
                    crate::store::MAX_LEAD_MS
                ),
            );
        }
        if d.workers > 256 {
            bad(
                "daemon.workers".into(),
                format!("{}: at most 256", d.workers),
            );
        }
        if d.keys.is_empty() {
            bad(
                "daemon.keys".into(),
                "at least one receiver key is needed".into(),
            );
        }
        for (i, k) in d.keys.iter().enumerate() {
            if let Err(e) = spa_keys::read_receiver_key(k) {
                bad(format!("daemon.keys[{i}]"), e.to_string());
            }
        }
        for x in crate::access::config_problems(self) {
            bad(x.key, x.problem);
        }
        for x in crate::store::shared::config_problems(self, role) {
            bad(x.key, x.problem);
        }
        let t = &self.trust;
        if t.anchors.is_empty() {
            bad(
                "trust.anchors".into(),
                "at least one trust anchor is needed".into(),
            );
        }
        for (i, a) in t.anchors.iter().enumerate() {
            if let Err(e) = spa_keys::read_certificates(a) {
                bad(format!("trust.anchors[{i}]"), e.to_string());
            }
        }
        for (i, a) in t.intermediates.iter().enumerate() {
            if let Err(e) = spa_keys::read_certificates(a) {
                bad(format!("trust.intermediates[{i}]"), e.to_string());
            }
        }
        for (i, c) in t.crls.iter().enumerate() {
            if let Err(e) = spa_keys::read_crls(c) {
                bad(format!("trust.crls[{i}]"), e.to_string());
            }
        }
        if !matches!(t.unknown_revocation.as_str(), "allow" | "deny") {
            bad(
                "trust.unknown_revocation".into(),
                format!("'{}': use \"allow\" or \"deny\"", t.unknown_revocation),
            );
        }
        if !matches!(t.expired_crl.as_str(), "refuse" | "ignore") {
            bad(
                "trust.expired_crl".into(),
                format!("'{}': use \"refuse\" or \"ignore\"", t.expired_crl),
            );
        }
        let f = &self.firewall;
        // The rule the firewall driver applies when it installs the table.
        if let Err(e) = spa_nft::TableName::new(&f.table) {
            bad("firewall.table".into(), e.to_string());
        }
        if !matches!(f.mode.as_str(), "blackhole" | "protect") {
            bad(
                "firewall.mode".into(),
                format!("'{}': use \"blackhole\" or \"protect\"", f.mode),
            );
        }
        for (i, s) in f.protect_ports.iter().enumerate() {
            if parse_port_spec(s).is_none() {
                bad(
                    format!("firewall.protect_ports[{i}]"),
                    format!("'{s}': use tcp/PORT or udp/PORT"),
                );
            }
        }
        if f.mode == "protect" && f.protect_ports.is_empty() {
            bad(
                "firewall.protect_ports".into(),
                "protect mode needs at least one port".into(),
            );
        }
        let mut mgmt = Vec::new();
        for (i, s) in f.management.iter().enumerate() {
            match parse_cidr(s) {
                Some(c) => mgmt.push(c),
                None => bad(
                    format!("firewall.management[{i}]"),
                    format!("'{s}' is not an address or CIDR"),
                ),
            }
        }
        if let Err(e) = f.forward.parse::<spa_nft::ForwardPolicy>() {
            bad("firewall.forward".into(), e);
        }
        for (i, s) in f.forward_allow.iter().enumerate() {
            if let Err(e) = s.parse::<spa_nft::ForwardAllow>() {
                bad(format!("firewall.forward_allow[{i}]"), e);
            }
        }
        if f.mode == "blackhole"
            && !f.force
            && let Some(conn) = ssh_connection
            && let Some(cut) = management_cut(conn, &mgmt)
        {
            bad("firewall.mode".into(), cut);
        }
        if self.time.max_age_ms == 0 || self.time.max_age_ms > 3_600_000 {
            bad("time.max_age_ms".into(), "must be 1..=3600000".into());
        }
        if self.time.max_future_skew_ms > 3_600_000 {
            bad(
                "time.max_future_skew_ms".into(),
                "must be at most 3600000".into(),
            );
        }
        if self.policy.max_lifetime == 0
            || self.policy.max_lifetime > proto_spec::body::MAX_LIFETIME_S
        {
            bad(
                "policy.max_lifetime".into(),
                format!("must be 1..={}", proto_spec::body::MAX_LIFETIME_S),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !proto_spec::body::is_valid_service_name(s.name.as_bytes()) {
                bad(
                    format!("services[{i}].name"),
                    format!("'{}': 1-32 of a-z 0-9 . _ -", s.name),
                );
            }
            if !names.insert(s.name.clone()) {
                bad(
                    format!("services[{i}].name"),
                    format!("'{}' is defined twice", s.name),
                );
            }
            if parse_proto(&s.proto).is_none() {
                bad(
                    format!("services[{i}].proto"),
                    format!("'{}': use \"tcp\" or \"udp\"", s.proto),
                );
            }
            if s.port == 0 {
                bad(format!("services[{i}].port"), "must be 1..=65535".into());
            }
            // Protect mode closes only protect_ports: a service port outside
            // them would be open to everyone while a knock "opens" it.
            if f.mode == "protect"
                && s.port != 0
                && let Some(proto) = parse_proto(&s.proto)
                && !f
                    .protect_ports
                    .iter()
                    .any(|p| parse_port_spec(p) == Some((proto, s.port)))
            {
                bad(
                    format!("services[{i}].port"),
                    format!(
                        "{}/{} is not in firewall.protect_ports: in protect mode it would be open to everyone",
                        s.proto, s.port
                    ),
                );
            }
        }
        let relay_names: std::collections::HashSet<&str> = self
            .relay
            .iter()
            .flat_map(|r| r.services.iter().map(RelayService::name))
            .collect();
        for (i, r) in self.rules.iter().enumerate() {
            let valid_id = r.identity == "*"
                || ["cn:", "email:", "dns:", "uri:"]
                    .iter()
                    .any(|p| r.identity.starts_with(p) && r.identity.len() > p.len());
            if !valid_id {
                bad(
                    format!("rules[{i}].identity"),
                    format!(
                        "'{}': use cn:NAME, email:ADDR, dns:NAME, uri:URI or *",
                        r.identity
                    ),
                );
            }
            for (j, s) in r.services.iter().enumerate() {
                if s != "*" && !names.contains(s) && !relay_names.contains(s.as_str()) {
                    bad(
                        format!("rules[{i}].services[{j}]"),
                        format!("unknown service '{s}'"),
                    );
                }
            }
        }
        if self.rules.is_empty() {
            bad(
                "rules".into(),
                "no rule: every knock would be refused".into(),
            );
        }
        // What run's constructors reject, by the same code.
        if let Err(x) = crate::start::ips_state(self) {
            bad(x.key, x.problem);
        }
        for (key, w) in [
            ("ips.weight_open_failed", self.ips.weight_open_failed),
            ("ips.weight_replayed", self.ips.weight_replayed),
            ("ips.weight_invalid", self.ips.weight_invalid),
            ("ips.weight_proven", self.ips.weight_proven),
        ] {
            if w > crate::ips::MAX_FAILURE_THRESHOLD {
                bad(key.into(), "a weight must be between 0 and 64".into());
            }
        }
        if self.ips.max_sources == 0 {
            bad("ips.max_sources".into(), "must be at least 1".into());
        }
        if self.ips.max_blocks == 0 || u32::try_from(self.ips.max_blocks).is_err() {
            bad(
                "ips.max_blocks".into(),
                "must be between 1 and 4294967295".into(),
            );
        }
        match role {
            Role::Red if self.gateways.is_empty() => {
                bad(
                    "gateways".into(),
                    "red-relay needs at least one gateway".into(),
                );
            }
            Role::Green if !self.gateways.is_empty() => {
                bad("gateways".into(), "only red-relay takes gateways".into());
            }
            _ => {}
        }
        if !self.relay.is_empty() && role == Role::Red {
            bad(
                "relay".into(),
                "only spa-server relays to red; red-relay takes [[gateways]]".into(),
            );
        } else {
            for (key, problem) in self.relay.check(&names, self.time.max_age_ms) {
                bad(key, problem);
            }
        }
        if let Some(m) = &self.metrics {
            for (key, problem) in m.check(&self.firewall.management) {
                bad(key, problem);
            }
        }
        if let Some(t) = &self.tunnel {
            if role == Role::Red {
                bad("tunnel".into(), "only spa-server ends the tunnel".into());
            }
            if t.listen_port == 0 {
                bad("tunnel.listen_port".into(), "must be 1..=65535".into());
            }
            if !(1..=65_536).contains(&t.max_connections) {
                bad("tunnel.max_connections".into(), "must be 1..=65536".into());
            }
            if t.max_connections_per_source == 0 || t.max_connections_per_source > t.max_connections
            {
                bad(
                    "tunnel.max_connections_per_source".into(),
                    "must be 1..=max_connections".into(),
                );
            }
            let entry = self.services.iter().find(|s| s.name == t.service);
            match entry {
                Some(s) if s.proto == "tcp" && s.port == t.listen_port => {}
                _ => bad(
                    "tunnel.service".into(),
                    format!(
                        "needs a [[services]] entry name = \"{}\", proto = \"tcp\", port = {}",
                        t.service, t.listen_port
                    ),
                ),
            }
            if let Err(e) = spa_keys::read_certificates(&t.certificate) {
                bad("tunnel.certificate".into(), e.to_string());
            }
            if let Err(e) = spa_keys::read_secret_file(&t.key) {
                bad("tunnel.key".into(), e.to_string());
            }
        }
        for (i, g) in self.gateways.iter().enumerate() {
            if let Err(e) = spa_keys::decode_gateway_public_key(&g.signing_key) {
                bad(format!("gateways[{i}].signing_key"), e.to_string());
            }
            if g.receiver_keys.is_empty() {
                bad(
                    format!("gateways[{i}].receiver_keys"),
                    "at least one key".into(),
                );
            }
            for (j, k) in g.receiver_keys.iter().enumerate() {
                if let Err(e) = spa_keys::decode_public_key(k) {
                    bad(format!("gateways[{i}].receiver_keys[{j}]"), e.to_string());
                }
            }
        }
        p
    }
}
