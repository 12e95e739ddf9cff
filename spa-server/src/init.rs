//! `spa-server init`: green's first run, on the layout both daemons share
//! ([`spa_daemon::init`]): the CA ([`spa_pki::init`], in `ca/`, mode
//! 0700), its public copies `ca.pem` and a first `crl.pem` (0644: the
//! daemon re-reads them as `daemon.user`), green's receiver key and
//! order-signing key (0600) and `spa-server.toml`. An existing CA is kept,
//! even with `force` (a CA cannot be replaced without reissuing every
//! client certificate).

use std::fmt::Write as _;

use spa_daemon::init::{InitError, Report, check_free, common_sections, make_dir, policy};
use spa_daemon::keygen::{KeyKind, keygen};
use time::OffsetDateTime;

use spa_pki::{self as pki, Ca, CaAlgorithm, InitOptions};

/// Days of validity of the first CRL (`pki crl`'s default).
pub const CRL_DAYS: u32 = 30;

/// `spa-server init`.
#[derive(Debug, Clone)]
pub struct GreenOptions {
    /// Shared options.
    pub common: spa_daemon::init::Common,
    /// The CA's common name.
    pub ca_name: String,
    /// The CA key's algorithm.
    pub algorithm: CaAlgorithm,
}

/// Why green's init stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GreenInitError {
    /// What both daemons' init checks and writes.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The CA.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

impl From<spa_keys::KeyFileError> for GreenInitError {
    fn from(e: spa_keys::KeyFileError) -> Self {
        Self::Init(e.into())
    }
}

impl From<spa_daemon::keygen::KeygenError> for GreenInitError {
    fn from(e: spa_daemon::keygen::KeygenError) -> Self {
        Self::Init(e.into())
    }
}

/// `spa-server init`: the CA, green's keys, the public copies and
/// `spa-server.toml`; returns what it wrote and the next steps.
pub fn green(o: &GreenOptions, now: OffsetDateTime) -> Result<Report, GreenInitError> {
    let c = &o.common;
    let p = policy(c)?;
    let ca_dir = c.dir.join("ca");
    let ca_pem = c.dir.join("ca.pem");
    let crl_pem = c.dir.join("crl.pem");
    let key = c.dir.join("green.key");
    let signing = c.dir.join("green-signing.key");
    let config = c.dir.join("spa-server.toml");
    let existing_ca = ca_dir.join(pki::CA_CERT).exists();
    check_free(
        c.force,
        &[
            (&ca_pem, None),
            (&crl_pem, None),
            (&key, None),
            (&signing, None),
            (&config, None),
        ],
    )?;
    if existing_ca && !c.force {
        return Err(InitError::Exists(vec![ca_dir]).into());
    }
    make_dir(&c.dir)?;
    let mut files = Vec::new();
    let ca = if existing_ca {
        files.push(format!("{} (existing CA, kept)", ca_dir.display()));
        Ca::open(&ca_dir)?
    } else {
        let ca = pki::init(
            &ca_dir,
            &InitOptions {
                name: o.ca_name.clone(),
                algorithm: o.algorithm,
                days: 3650,
            },
            now,
        )?;
        files.push(format!(
            "{} (the CA: key and records, mode 0700; keep it offline if you can)",
            ca_dir.display()
        ));
        ca
    };
    spa_keys::write_public_file(&ca_pem, ca.cert_pem().as_bytes())?;
    files.push(format!(
        "{} (the CA certificate, 0644: [trust] anchors)",
        ca_pem.display()
    ));
    let crl = ca.crl(CRL_DAYS, now)?;
    spa_keys::write_public_file(
        &crl_pem,
        spa_keys::pem_encode("X509 CRL", &crl.der).as_bytes(),
    )?;
    files.push(format!(
        "{} (CRL number {}, 0644, next update {})",
        crl_pem.display(),
        crl.number,
        pki::rfc3339(crl.next_update)
    ));
    let public = keygen(&key, KeyKind::Receiver, c.force)?;
    files.push(format!(
        "{} (green's X25519 receiver key, 0600)",
        key.display()
    ));
    let signing_public = keygen(&signing, KeyKind::Signing, c.force)?;
    files.push(format!(
        "{} (green's Ed25519 order-signing key for red, 0600)",
        signing.display()
    ));
    let mut text = format!(
        "# {} — green, written by `spa-server init`. `spa-server check-config` checks it;\n\
         # every key is documented in spa-server.toml.example (/usr/share/doc/spa-server/).\n",
        config.display()
    );
    if let Some(a) = p.from_ssh {
        let _ = writeln!(
            text,
            "# management: {a}, the SSH client init ran under (the blackhole would cut it)."
        );
    }
    common_sections(
        &mut text,
        c,
        &p,
        std::slice::from_ref(&key),
        &c.state_dir.join("replay.redb"),
        &c.run_dir.join("control.sock"),
        std::slice::from_ref(&crl_pem),
    );
    text.push_str(
        "# Services on a hidden red server: red-relay init prints the [relay] section.\n",
    );
    spa_keys::write_public_file(&config, text.as_bytes())?;
    files.push(format!("{} (the configuration, 0644)", config.display()));
    let next = format!(
        "next steps:\n\
         1. a client certificate: on the client, `spa-client keygen --out alice.key --csr alice.csr --name alice`\n   \
            (or `spa-client token keygen` and `token csr` for a smart card), then here:\n   \
            spa-server pki issue --dir {ca} --csr alice.csr --name alice --email alice@example.org --client --out alice.crt\n\
         2. the client's profile (~/.config/spa/client.toml):\n   \
            [profiles.gw]\n   server = \"THIS-HOST\"\n   port = {port}\n   server_key = \"{public}\"\n   \
            certificate = \"alice.crt\"\n   key = \"alice.key\"\n\
         3. check and start: spa-server check-config --config {cfg}\n   \
            systemctl enable --now spa-server   (or: spa-server run --config {cfg})\n\
         4. renew the CRL before {next_update}, e.g. weekly from cron:\n   \
            spa-server pki crl --dir {ca} --out {crl}\n\
         5. a red server behind green: red-relay init --ca-cert {ca_pem} --crl {crl} \\\n     \
            --green-signing-key {signing_public} --green-receiver-key {public}",
        ca = ca_dir.display(),
        port = c.knock_port,
        cfg = config.display(),
        next_update = pki::rfc3339(crl.next_update),
        crl = crl_pem.display(),
        ca_pem = ca_pem.display(),
    );
    Ok(Report {
        config,
        files,
        next,
    })
}

/// `spa-server init`: [`green`], then what it wrote and the next steps.
pub fn init_command(a: &crate::cli::InitGreenArgs, now: OffsetDateTime) -> anyhow::Result<()> {
    let report = green(
        &GreenOptions {
            common: a.common.common(),
            ca_name: a.ca_name.clone(),
            algorithm: match a.algorithm {
                spa_pki::cli::AlgorithmArg::Ed25519 => CaAlgorithm::Ed25519,
                spa_pki::cli::AlgorithmArg::P256 => CaAlgorithm::P256,
            },
        },
        now,
    )?;
    spa_daemon::init::print(&report);
    Ok(())
}
