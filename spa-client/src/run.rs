//! Carrying out a parsed command line.

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use clap::CommandFactory;
use proto_spec::body::{MessageType, OpenFor};
use proto_spec::sign::{SignatureAlgorithm, Signer};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use crate::cli::{
    Algorithm, Cli, Command, ConnectArgs, KeygenArgs, SendArgs, SendKind, TokenArgs, TokenCommand,
};
use crate::exit::{ClientError, ExitCode};
use crate::knock::{self, KnockPlan, SignerSpec};
use crate::profile::{self, AllowIp, DEFAULT_LIFETIME_S, DEFAULT_PORT, DEFAULT_TUNNEL_PORT};
use crate::state::{self, ClientState};
use crate::token::pkcs11::{self as p11, KeySelector, TokenSelector};
use crate::tunnel;

/// What a command reports on success.
#[derive(Debug)]
pub struct Report {
    /// Exit code (0, or 5 for a --wait timeout).
    pub code: ExitCode,
    /// One human line (unless `--quiet`).
    pub human: String,
    /// The JSON object (with `--json`).
    pub json: Value,
    /// Raw text to print as is (man page, completions).
    pub raw: Option<Vec<u8>>,
}

/// Runs one command.
pub fn run(cli: &Cli) -> Result<Report, ClientError> {
    match &cli.command {
        Command::Send(args) => send(cli, args),
        Command::Connect(args) => connect(cli, args),
        Command::Keygen(args) => keygen(args),
        Command::Token(cmd) => token(cmd),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "spa-client", &mut out);
            Ok(raw(out))
        }
        Command::Man { dir: None } => Ok(raw(main_man_page()?)),
        Command::Man { dir: Some(dir) } => write_man_pages(dir),
    }
}

/// spa-client(1): clap's page with a CONFIGURATION section (every
/// profile key) and the exit codes.
fn main_man_page() -> Result<Vec<u8>, ClientError> {
    let fail = |e: std::io::Error| ClientError::failure(format!("rendering the man page: {e}"));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(fail)?;
    man.render_name_section(&mut out).map_err(fail)?;
    man.render_synopsis_section(&mut out).map_err(fail)?;
    man.render_description_section(&mut out).map_err(fail)?;
    man.render_options_section(&mut out).map_err(fail)?;
    man.render_subcommands_section(&mut out).map_err(fail)?;
    out.extend_from_slice(b".SH CONFIGURATION\n.nf\n");
    out.extend_from_slice(roff_verbatim(profile::EXAMPLE).as_bytes());
    out.extend_from_slice(b".fi\n");
    out.extend_from_slice(b".SH \"EXIT STATUS\"\n.nf\n");
    out.extend_from_slice(roff_verbatim(crate::exit::EXIT_CODES_HELP).as_bytes());
    out.extend_from_slice(b".fi\n");
    man.render_version_section(&mut out).map_err(fail)?;
    Ok(out)
}

/// `text` as lines of a roff no-fill block: backslashes escaped, and no
/// line read as a request.
fn roff_verbatim(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// `man --dir DIR`: spa-client.1 and one page per subcommand, so that the
/// `spa-client-send(1)` references of spa-client.1 exist.
fn write_man_pages(dir: &std::path::Path) -> Result<Report, ClientError> {
    let fail = |e: std::io::Error| {
        ClientError::failure(format!("writing the man pages to {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(fail)?;
    std::fs::write(dir.join("spa-client.1"), main_man_page()?).map_err(fail)?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .map_err(fail)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("spa-client") && n.ends_with(".1"))
        .collect();
    pages.sort();
    Ok(Report {
        code: ExitCode::Ok,
        human: format!("wrote {} man pages to {}", pages.len(), dir.display()),
        json: json!({"ok": true, "dir": dir.display().to_string(), "pages": pages}),
        raw: None,
    })
}

fn raw(out: Vec<u8>) -> Report {
    Report {
        code: ExitCode::Ok,
        human: String::new(),
        json: Value::Null,
        raw: Some(out),
    }
}

fn origin(pname: &str, file: Option<&std::path::Path>) -> profile::Origin {
    profile::Origin {
        profile: pname.to_owned(),
        file: file.map(std::path::Path::to_path_buf),
    }
}

fn send(cli: &Cli, a: &SendArgs) -> Result<Report, ClientError> {
    send_signed(cli, a, None)
}

/// `send` with `signer` if given: `connect` opens its signer once and
/// signs every knock and the TLS handshake with it, so a token is logged
/// into once and its PIN asked for once. Without one, the signer of the
/// flags and profile is opened here.
fn send_signed(
    cli: &Cli,
    a: &SendArgs,
    signer: Option<&dyn Signer>,
) -> Result<Report, ClientError> {
    let (cfg, cfg_path) = profile::load_config(cli.config.as_deref())?;
    let (pname, p) = cfg.select(cli.profile.as_deref(), cfg_path.as_deref())?;
    let from = origin(&pname, cfg_path.as_deref());

    let server = (a.server.clone().or(p.server.clone()))
        .ok_or_else(|| from.missing("server", "--server", "server"))?;
    let port = a.port.or(p.port).unwrap_or(DEFAULT_PORT);
    let key_text = (a.server_key.clone().or(p.server_key.clone()))
        .ok_or_else(|| from.missing("server key", "--server-key", "server_key"))?;
    let server_key = spa_keys::decode_public_key(&key_text)
        .map_err(|e| ClientError::config(format!("server key: {e}")))?;
    let allow = AllowIp::parse(
        a.allow_ip
            .as_deref()
            .or(p.allow_ip.as_deref())
            .unwrap_or("auto"),
    )?;
    let lifetime = a.lifetime.or(p.lifetime).unwrap_or(DEFAULT_LIFETIME_S);

    let (msg_type, services) = match &a.kind {
        SendKind::Open { services } if !services.is_empty() => {
            (MessageType::OpenTunnel, services.clone())
        }
        SendKind::Open { .. } if !p.services.is_empty() => {
            (MessageType::OpenTunnel, p.services.clone())
        }
        SendKind::Open { .. } => (MessageType::OpenTunnel, vec!["tunnel".to_owned()]),
        SendKind::Request { services } => (MessageType::RequestService, services.clone()),
        SendKind::Close => (MessageType::Close, vec![]),
    };
    knock::check_services(&services)?;
    let lifetime_s = if msg_type == MessageType::Close {
        0
    } else {
        lifetime
    };
    if msg_type != MessageType::Close
        && !(1..=proto_spec::body::MAX_LIFETIME_S).contains(&lifetime_s)
    {
        return Err(ClientError::config(format!(
            "lifetime {lifetime_s} s is outside 1..={} s",
            proto_spec::body::MAX_LIFETIME_S
        )));
    }

    let spec = signer_spec(a.key.as_deref(), a.cert.as_deref(), &p, &from)?;

    // Session and timestamp state (SPEC §4.1, §7.5). The session is read
    // here; the timestamp under the state lock, for each datagram.
    let state_path = state::state_path(&pname);
    let st = state_path
        .as_deref()
        .map(ClientState::load)
        .unwrap_or_default();
    let session_id: [u8; 16] = match (&a.session, msg_type) {
        (Some(h), _) => hex::decode(h)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ClientError::config(format!("--session '{h}' is not 32 hex digits")))?,
        (None, MessageType::OpenTunnel) => {
            let r = spa_keys::random_32()?;
            let mut s = [0u8; 16];
            s.copy_from_slice(&r[..16]);
            s
        }
        (None, _) => st.session_id.ok_or_else(|| {
            ClientError::config(format!(
                "no open session for profile '{pname}': run `spa-client send open` first or give --session"
            ))
        })?,
    };

    let opened;
    let signer: &dyn Signer = match signer {
        Some(s) => s,
        None => {
            opened = spec.open()?;
            opened.as_ref()
        }
    };
    let addr = knock::resolve(&server, port)?;
    let sock = knock::connect_udp(addr)?;
    let open_for = knock::open_for(allow, &sock)?;
    let mut plan = KnockPlan {
        msg_type,
        services,
        lifetime_s,
        open_for,
        session_id,
        timestamp_ms: 0,
    };
    let new_session = (msg_type != MessageType::Close).then_some(session_id);
    // SPEC §7.5: one timestamp per datagram, `max(now, last + 1)`. The
    // state is locked from reading `last` until the new value is saved,
    // after the send, so that parallel runs of this profile send strictly
    // increasing timestamps in the order they send them. A dry run
    // reserves its timestamp too (its datagram may be sent by other
    // means), but keeps the session.
    let mut last_sent = 0u64;
    let mut knock_once = |plan: &mut KnockPlan, send: bool| -> Result<Vec<u8>, ClientError> {
        let lock = state_path
            .as_deref()
            .map(state::StateLock::acquire)
            .transpose()?;
        let mut st = lock.as_ref().map(|l| l.load()).unwrap_or_default();
        st.last_timestamp_ms = st.last_timestamp_ms.max(last_sent);
        plan.timestamp_ms = st.next_timestamp(knock::now_ms());
        last_sent = plan.timestamp_ms;
        let datagram = knock::seal(signer, &server_key, plan)?;
        if send {
            knock::send(&sock, &datagram)?;
            // The session is saved only once the knock is on the wire.
            st.session_id = new_session;
        }
        if let Some(l) = &lock {
            l.save(&st)?;
        }
        Ok(datagram)
    };
    let datagram = knock_once(&mut plan, !a.dry_run)?;

    let mut out = json!({
        "ok": true,
        "profile": pname,
        "server": server,
        "address": addr.to_string(),
        "knock": msg_type.name(),
        "session_id": hex::encode(session_id),
        "open_for": match open_for { OpenFor::Source => "source".to_owned(), OpenFor::Addr(a) => a.to_string() },
        "services": plan.services,
        "lifetime_s": lifetime_s,
        "timestamp_ms": plan.timestamp_ms,
        "bytes": datagram.len(),
    });
    if a.dry_run {
        let names = proto_spec::cert::parse_client_cert(signer.certificate_der())
            .map(|c| c.identity.names)
            .unwrap_or_default();
        out["dry_run"] = json!(true);
        out["identity"] = json!(names);
        out["datagram"] = json!(hex::encode(&datagram));
        let human = format!(
            "dry run: {} knock, {} bytes, session {}, open for {}, services [{}], identity {}\n{}",
            msg_type.name(),
            datagram.len(),
            hex::encode(session_id),
            out["open_for"].as_str().unwrap_or(""),
            plan.services.join(", "),
            names.join(" "),
            hex::encode(&datagram)
        );
        return Ok(Report {
            code: ExitCode::Ok,
            human,
            json: out,
            raw: None,
        });
    }

    if matches!(allow, AllowIp::Source) && !cli.quiet && !cli.json {
        eprintln!(
            "spa-client: warning: --allow-ip source: the server opens for whatever source address it sees; a captured knock resent from elsewhere would open for the sender (SPEC §9)"
        );
    }

    let mut code = ExitCode::Ok;
    let mut human = format!(
        "sent {} to {} ({}), session {}",
        msg_type.name(),
        server,
        addr,
        &hex::encode(session_id)[..8]
    );
    if let Some(wait_port) = a.wait {
        let timeout = Duration::from_secs_f64(a.wait_timeout.max(0.0));
        let resend_every = Duration::from_millis(1500).min(timeout / (a.resend + 1).max(1));
        let result = knock::wait_for_port(
            addr.ip(),
            wait_port,
            timeout,
            resend_every,
            a.resend,
            || knock_once(&mut plan, true).map(|_| ()),
        )?;
        match result {
            Some(resends) => {
                out["opened"] = json!(true);
                out["resends"] = json!(resends);
                human.push_str(&format!("; port {wait_port} is open"));
            }
            None => {
                code = ExitCode::WaitTimeout;
                out["ok"] = json!(false);
                out["opened"] = json!(false);
                human = format!(
                    "port {wait_port} on {} did not open within {:.1} s",
                    addr.ip(),
                    timeout.as_secs_f64()
                );
            }
        }
    }
    Ok(Report {
        code,
        human,
        json: out,
        raw: None,
    })
}

/// The signer: a `--key` flag wins; then the profile's token; then its key
/// file.
fn signer_spec(
    key: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    p: &profile::Profile,
    from: &profile::Origin,
) -> Result<SignerSpec, ClientError> {
    let cert = cert
        .map(std::path::Path::to_path_buf)
        .or(p.certificate.clone())
        .map(|c| profile::expand_home(&c));
    let software = |key: &std::path::Path| -> Result<SignerSpec, ClientError> {
        Ok(SignerSpec::Software {
            key: profile::expand_home(key),
            certificate: cert
                .clone()
                .ok_or_else(|| from.missing("certificate", "--cert", "certificate"))?,
        })
    };
    match (key, &p.pkcs11, &p.key) {
        (Some(key), _, _) => software(key),
        (None, Some(tok), _) => Ok(SignerSpec::Pkcs11(knock::pkcs11_config(tok, cert.clone())?)),
        (None, None, Some(key)) => software(key),
        (None, None, None) => Err(from.missing("key", "--key", "key (or a [pkcs11] table)")),
    }
}

/// `connect`: knock (open-tunnel unless a session is open and the tunnel
/// port answers; then request-service), then TLS to green's tunnel port
/// and relay standard input and output, or local connections.
fn connect(cli: &Cli, a: &ConnectArgs) -> Result<Report, ClientError> {
    let (cfg, cfg_path) = profile::load_config(cli.config.as_deref())?;
    let (pname, p) = cfg.select(cli.profile.as_deref(), cfg_path.as_deref())?;
    let from = origin(&pname, cfg_path.as_deref());
    let server = (a.server.clone().or(p.server.clone()))
        .ok_or_else(|| from.missing("server", "--server", "server"))?;
    let tunnel_port = p.tunnel_port.unwrap_or(DEFAULT_TUNNEL_PORT);
    let ca = p.tunnel_ca.clone().ok_or_else(|| {
        ClientError::config(format!(
            "no tunnel_ca in profile '{pname}': the CA of green's TLS certificate"
        ))
    })?;
    knock::check_services(std::slice::from_ref(&a.service))?;
    // The open-tunnel knock opens the tunnel port, not the profile's
    // `services` (those are `send open`'s).
    let tunnel_service = p
        .tunnel_service
        .clone()
        .unwrap_or_else(|| profile::DEFAULT_TUNNEL_SERVICE.to_owned());
    knock::check_services(std::slice::from_ref(&tunnel_service))?;
    let spec = signer_spec(a.key.as_deref(), a.cert.as_deref(), &p, &from)?;
    // One signer for the whole command: the knocks and the TLS client
    // authentication share it, so a token is logged into once and its PIN
    // read (or asked for) once.
    let signer = spec.open_shared()?;
    // Intermediates for the TLS chain (SPEC §12.2): the certificates that
    // follow the client's own in its certificate file, if any.
    let chain_file = a
        .cert
        .clone()
        .or(p.certificate.clone())
        .map(|c| profile::expand_home(&c));
    let intermediates = match &chain_file {
        Some(f) => spa_keys::read_certificates(f)?
            .into_iter()
            .skip(1)
            .collect(),
        None => Vec::new(),
    };
    let tls = tunnel::client_config(
        &profile::expand_home(&ca),
        std::sync::Arc::clone(&signer),
        intermediates,
    )?;
    let addr = knock::resolve(&server, tunnel_port)?;
    let name = ServerName::try_from(server.clone())
        .map_err(|e| ClientError::config(format!("server '{server}': {e}")))?;
    let send_args = |kind, wait| SendArgs {
        server: a.server.clone(),
        port: a.port,
        server_key: a.server_key.clone(),
        cert: a.cert.clone(),
        key: a.key.clone(),
        allow_ip: a.allow_ip.clone(),
        lifetime: a.lifetime,
        session: None,
        wait,
        wait_timeout: a.wait_timeout,
        resend: a.resend,
        dry_run: false,
        kind,
    };
    let st = state::state_path(&pname)
        .as_deref()
        .map(ClientState::load)
        .unwrap_or_default();
    let open = st.session_id.is_none()
        || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err();
    if open {
        let r = send_signed(
            cli,
            &send_args(
                SendKind::Open {
                    services: vec![tunnel_service],
                },
                Some(tunnel_port),
            ),
            Some(signer.as_ref()),
        )?;
        if r.code != ExitCode::Ok {
            return Err(ClientError {
                code: r.code,
                message: r.human,
            });
        }
    }
    send_signed(
        cli,
        &send_args(
            SendKind::Request {
                services: vec![a.service.clone()],
            },
            None,
        ),
        Some(signer.as_ref()),
    )?;
    let io_err = |e: std::io::Error| ClientError::network(format!("tunnel: {e}"));
    match a.listen {
        None => {
            if p.close_on_exit == Some(true) {
                // ssh hangs up its ProxyCommand as it exits: finish the
                // stream and send the close knock all the same.
                let _ = signal_hook::flag::register(
                    signal_hook::consts::SIGHUP,
                    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
                );
            }
            let relayed = tunnel::open(addr, name, tls, &a.service).and_then(|t| {
                t.relay(std::io::stdin(), std::io::stdout(), |_| {})
                    .map_err(io_err)
            });
            // The stream ended (or failed): with `close_on_exit`, the
            // session is closed on every hop.
            let closed = (p.close_on_exit == Some(true)).then(|| {
                send_signed(
                    cli,
                    &send_args(SendKind::Close, None),
                    Some(signer.as_ref()),
                )
            });
            relayed?;
            if let Some(c) = closed {
                c?;
            }
            Ok(raw(Vec::new()))
        }
        Some(local) => {
            let listener = TcpListener::bind(local)
                .map_err(|e| ClientError::network(format!("--listen {local}: {e}")))?;
            if !cli.quiet {
                eprintln!(
                    "spa-client: forwarding {} to '{}' through {addr}",
                    listener.local_addr().map_or(local, |l| l),
                    a.service
                );
            }
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let (tls, name, service) = (tls.clone(), name.clone(), a.service.clone());
                std::thread::spawn(move || {
                    let relay = || -> Result<(), ClientError> {
                        let t = tunnel::open(addr, name, tls, &service)?;
                        let input = c.try_clone().map_err(io_err)?;
                        t.relay(input, c, |c| {
                            let _ = c.shutdown(std::net::Shutdown::Write);
                        })
                        .map_err(io_err)
                    };
                    if let Err(e) = relay() {
                        eprintln!("spa-client: {e}");
                    }
                });
            }
            Ok(raw(Vec::new()))
        }
    }
}

fn keygen(a: &KeygenArgs) -> Result<Report, ClientError> {
    let seed = spa_keys::random_32()?;
    let pem = match a.algorithm {
        Algorithm::Ed25519 => spa_keys::ed25519_key_to_pem(&seed)?,
        Algorithm::P256 => {
            use p256::pkcs8::EncodePrivateKey;
            let key = p256::ecdsa::SigningKey::from_slice(&seed[..])
                .map_err(|e| ClientError::failure(format!("P-256 key generation: {e}")))?;
            zeroize::Zeroizing::new(
                key.to_pkcs8_pem(Default::default())
                    .map_err(|e| ClientError::failure(format!("P-256 key encoding: {e}")))?
                    .to_string(),
            )
        }
    };
    spa_keys::write_secret_file(&a.out, pem.as_bytes(), a.force)?;
    let mut out = json!({"ok": true, "key": a.out.display().to_string()});
    let mut human = format!("wrote {} (mode 0600)", a.out.display());
    if let Some(csr_path) = &a.csr {
        let name = a.name.clone().unwrap_or_default();
        let kp = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| ClientError::failure(format!("loading the new key for the CSR: {e}")))?;
        let params = csr_params(&name, a.email.as_deref())?;
        let csr = params
            .serialize_request(&kp)
            .and_then(|c| c.pem())
            .map_err(|e| ClientError::failure(format!("making the CSR: {e}")))?;
        spa_keys::write_public_file(csr_path, csr.as_bytes())?;
        out["csr"] = json!(csr_path.display().to_string());
        human.push_str(&format!(" and {}", csr_path.display()));
    }
    Ok(Report {
        code: ExitCode::Ok,
        human,
        json: out,
        raw: None,
    })
}

/// Subject CN and optional e-mail SAN.
pub fn csr_params(
    name: &str,
    email: Option<&str>,
) -> Result<rcgen::CertificateParams, ClientError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    if let Some(e) = email {
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            e.to_owned()
                .try_into()
                .map_err(|_| ClientError::config(format!("'{e}' is not a valid e-mail address")))?,
        )];
    }
    Ok(params)
}

fn token_selector(t: &TokenArgs) -> Result<TokenSelector, ClientError> {
    match (&t.token, &t.token_serial) {
        (Some(l), None) => Ok(TokenSelector::Label(l.clone())),
        (None, Some(s)) => Ok(TokenSelector::Serial(s.clone())),
        _ => Err(ClientError::config(
            "give --token LABEL or --token-serial SERIAL",
        )),
    }
}

fn signer_err(e: crate::token::TokenError) -> ClientError {
    ClientError::signer(e.to_string())
}

fn token(cmd: &TokenCommand) -> Result<Report, ClientError> {
    match cmd {
        TokenCommand::List { module } => {
            let tokens = p11::list_tokens(module).map_err(signer_err)?;
            let human = tokens
                .iter()
                .map(|t| {
                    format!(
                        "slot {}: '{}' serial {} ({} {})",
                        t.slot, t.label, t.serial, t.manufacturer, t.model
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let json = json!({"ok": true, "tokens": tokens.iter().map(|t| json!({
                "slot": t.slot, "label": t.label, "serial": t.serial,
                "manufacturer": t.manufacturer, "model": t.model})).collect::<Vec<_>>()});
            Ok(Report {
                code: ExitCode::Ok,
                human,
                json,
                raw: None,
            })
        }
        TokenCommand::Keygen {
            token,
            label,
            id,
            algorithm,
        } => {
            let id_bytes = if id.is_empty() {
                Vec::new()
            } else {
                hex::decode(id)
                    .map_err(|e| ClientError::config(format!("--id '{id}' is not hex: {e}")))?
            };
            let alg = match algorithm {
                Algorithm::Ed25519 => SignatureAlgorithm::Ed25519,
                Algorithm::P256 => SignatureAlgorithm::EcdsaP256Sha256,
            };
            let pin = knock::parse_pin_source(&token.pin)?;
            let key = p11::generate_key_pair(
                &token.module,
                &token_selector(token)?,
                label,
                &id_bytes,
                alg,
                &pin,
            )
            .map_err(signer_err)?;
            let human = format!(
                "generated {} key '{}' on token '{}'",
                match alg {
                    SignatureAlgorithm::Ed25519 => "an Ed25519",
                    SignatureAlgorithm::EcdsaP256Sha256 => "a P-256",
                },
                label,
                key.token_label()
            );
            Ok(Report {
                code: ExitCode::Ok,
                human,
                json: json!({"ok": true, "label": label, "id": hex::encode(key.id())}),
                raw: None,
            })
        }
        TokenCommand::Csr {
            token,
            label,
            id,
            name,
            email,
            out,
        } => {
            let key = match (label, id) {
                (Some(l), None) => KeySelector::Label(l.clone()),
                (None, Some(i)) => KeySelector::id_hex(i)
                    .map_err(|e| ClientError::config(format!("--id '{i}' is not hex: {e}")))?,
                _ => return Err(ClientError::config("give --label or --id")),
            };
            let pin = knock::parse_pin_source(&token.pin)?;
            let params = csr_params(name, email.as_deref())?;
            let csr = p11::csr(&token.module, &token_selector(token)?, &key, &pin, &params)
                .map_err(signer_err)?;
            let pem = csr
                .pem()
                .map_err(|e| ClientError::failure(format!("encoding the CSR: {e}")))?;
            spa_keys::write_public_file(out, pem.as_bytes())?;
            Ok(Report {
                code: ExitCode::Ok,
                human: format!("wrote {} (signed by the token key)", out.display()),
                json: json!({"ok": true, "csr": out.display().to_string()}),
                raw: None,
            })
        }
    }
}
