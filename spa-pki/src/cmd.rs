//! The `pki` commands: what each prints, on top of the CA tooling
//! ([`crate`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{AlgorithmArg, IssueArgs, PkiCommand, VerifyArgs};
use crate::{
    self as pki, Ca, CaAlgorithm, InitOptions, IssueRequest, SubjectKey, TrustFiles, Usage, rfc3339,
};

/// `spa-server pki …`.
pub fn pki_command(command: PkiCommand, now: OffsetDateTime) -> Result<ExitCode> {
    match command {
        PkiCommand::Init(a) => {
            let opts = InitOptions {
                name: a.name,
                algorithm: match a.algorithm {
                    AlgorithmArg::Ed25519 => CaAlgorithm::Ed25519,
                    AlgorithmArg::P256 => CaAlgorithm::P256,
                },
                days: a.days,
            };
            let ca = pki::init(&a.dir, &opts, now)?;
            println!(
                "made CA {:?} in {}: {} (certificate, valid until {}), {} (key, mode 0600)",
                opts.name,
                a.dir.display(),
                a.dir.join(pki::CA_CERT).display(),
                rfc3339(ca.not_after()),
                a.dir.join(pki::CA_KEY).display()
            );
            match &a.cert_out {
                Some(out) => {
                    let pem = std::fs::read(a.dir.join(pki::CA_CERT))
                        .with_context(|| format!("reading {}", pki::CA_CERT))?;
                    spa_keys::write_public_file(out, &pem)?;
                    println!(
                        "wrote the CA certificate to {} (mode 0644): name it in [trust] anchors",
                        out.display()
                    );
                }
                None => println!(
                    "{} is closed to the daemons' unprivileged user: copy {} where it can read it \
                     (or pass --cert-out /etc/spa/ca.pem) and name that copy in [trust] anchors",
                    a.dir.display(),
                    pki::CA_CERT
                ),
            }
        }
        PkiCommand::Issue(a) => issue(a, now)?,
        PkiCommand::Revoke(a) => {
            let ca = Ca::open(&a.dir)?;
            let serial = match (a.serial, &a.cert) {
                (Some(s), _) => s,
                (None, Some(path)) => {
                    let der = spa_keys::read_certificates(path)?.swap_remove(0);
                    ca.serial_of(path, &der)?
                }
                (None, None) => anyhow::bail!("give --serial or --cert"),
            };
            let e = ca.revoke(serial, a.reason, now)?;
            println!(
                "revoked serial {serial} ({}, {}); publish a new CRL: spa-server pki crl --dir {} --out FILE",
                e.name,
                a.reason,
                a.dir.display()
            );
        }
        PkiCommand::Crl(a) => {
            let crl = Ca::open(&a.dir)?.crl(a.days, now)?;
            let bytes = if a.der {
                crl.der.clone()
            } else {
                spa_keys::pem_encode("X509 CRL", &crl.der).into_bytes()
            };
            spa_keys::write_public_file(&a.out, &bytes)?;
            println!(
                "wrote CRL number {} listing {} revoked certificate(s), next update {}: {}",
                crl.number,
                crl.revoked,
                rfc3339(crl.next_update),
                a.out.display()
            );
        }
        PkiCommand::List(a) => {
            for e in Ca::open(&a.dir)?.index()? {
                let status = match e.revoked {
                    Some((at, reason)) => format!("revoked {} ({reason})", rfc3339(at)),
                    None if e.not_after <= now => "expired".to_owned(),
                    None => "valid".to_owned(),
                };
                println!(
                    "{}\t{}\tuntil {}\t{}\t{}",
                    e.serial,
                    status,
                    rfc3339(e.not_after),
                    e.usage,
                    e.name
                );
            }
        }
        PkiCommand::Verify(a) => return verify(a, now),
    }
    Ok(ExitCode::SUCCESS)
}

fn issue(a: IssueArgs, now: OffsetDateTime) -> Result<()> {
    let key = match (&a.csr, &a.public_key) {
        (Some(path), _) => SubjectKey::Csr {
            path: path.clone(),
            der: spa_keys::read_csr(path)?,
        },
        (None, Some(path)) => SubjectKey::PublicKey {
            path: path.clone(),
            der: spa_keys::read_public_key_spki(path)?,
        },
        (None, None) => anyhow::bail!("give --csr or --public-key"),
    };
    let usage = if a.server {
        Usage::Server
    } else {
        Usage::Client
    };
    let req = IssueRequest {
        key,
        name: a.name.clone(),
        emails: a.email,
        dns: a.dns,
        ips: a.ip,
        days: a.days,
        usage,
    };
    let ca = Ca::open(&a.dir)?;
    let issued = ca.issue(&req, now)?;
    if issued.clamped {
        eprintln!(
            "spa-server: warning: validity cut to the CA certificate's notAfter ({})",
            rfc3339(issued.not_after)
        );
    }
    spa_keys::write_public_file(
        &a.out,
        spa_keys::pem_encode("CERTIFICATE", &issued.der).as_bytes(),
    )?;
    println!(
        "issued serial {} to {:?} ({usage} certificate, valid until {}): {}",
        issued.serial,
        a.name,
        rfc3339(issued.not_after),
        a.out.display()
    );
    Ok(())
}

fn verify(a: VerifyArgs, now: OffsetDateTime) -> Result<ExitCode> {
    let at = match &a.at {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339)
            .with_context(|| format!("--at {s:?} is not an RFC 3339 time"))?,
        None => now,
    };
    let now_ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let trust = pki::load_trust(&TrustFiles {
        cas: a.ca,
        intermediates: a.intermediate,
        crls: a.crl,
        ..TrustFiles::default()
    })?;
    let der = spa_keys::read_certificates(&a.cert)?.swap_remove(0);
    if let Some(key) = &a.key {
        spa_keys::load_software_signer(key, &a.cert)?;
    }
    Ok(report(
        &a.cert,
        pki::validate_client_certificate(&trust, &der, now_ms),
    ))
}

fn report(
    cert: &Path,
    r: Result<proto_spec::cert::ClientIdentity, proto_spec::CertificateError>,
) -> ExitCode {
    match r {
        Ok(id) => {
            println!("{}: OK ({})", cert.display(), id.names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "spa-server: {}: refused: {} (certificate:{})",
                cert.display(),
                pki::describe_certificate_error(e),
                e.code()
            );
            ExitCode::FAILURE
        }
    }
}
