//! The `pki` commands' arguments, as clap definitions: `spa-server pki`
//! flattens [`PkiCommand`] into its command line.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use crate::RevocationReason;

/// CA commands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a CA: key (0600), self-signed certificate, serial counter and
    /// index, in DIR.
    Init(InitArgs),
    /// Issue a certificate from a CSR or a public key.
    Issue(IssueArgs),
    /// Revoke a certificate (listed by the next CRL).
    Revoke(RevokeArgs),
    /// Sign a CRL of every revoked certificate.
    Crl(CrlArgs),
    /// List the certificates the CA issued.
    List(DirArg),
    /// Check a certificate as green and red would (chain, validity,
    /// clientAuth, CRLs), and optionally that a key matches it. Exit status
    /// 0 when accepted, 1 when refused or on an error.
    Verify(VerifyArgs),
}

/// The CA directory.
#[derive(Debug, Args)]
pub struct DirArg {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// CA key algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmArg {
    /// Ed25519.
    Ed25519,
    /// ECDSA P-256 with SHA-256.
    P256,
}

/// `pki init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The CA directory (created 0700 if absent).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The CA's common name.
    #[arg(long)]
    pub name: String,
    /// The CA key's algorithm.
    #[arg(long, value_enum, default_value_t = AlgorithmArg::Ed25519)]
    pub algorithm: AlgorithmArg,
    /// Validity of the CA certificate, in days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Also write the CA certificate here (mode 0644), for `[trust]
    /// anchors`: the daemons re-read it after dropping privileges, and the
    /// CA directory (0700) is closed to their user. E.g. /etc/spa/ca.pem.
    #[arg(long, value_name = "FILE")]
    pub cert_out: Option<PathBuf>,
}

/// `pki issue`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("key").required(true).args(["csr", "public_key"])))]
#[command(group(ArgGroup::new("usage").args(["client", "server"])))]
pub struct IssueArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A certificate signing request (PEM or DER); only its key is used,
    /// after its signature is checked.
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,
    /// A public key (PEM "PUBLIC KEY" or DER SubjectPublicKeyInfo). A client
    /// key must be one green accepts (SPEC §2.2): Ed25519 not of small
    /// order, or P-256 as an uncompressed point.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
    /// The subject common name (policies match it as cn:NAME).
    #[arg(long)]
    pub name: String,
    /// An e-mail subjectAltName (email:ADDRESS); repeatable.
    #[arg(long, value_name = "ADDRESS")]
    pub email: Vec<String>,
    /// A DNS subjectAltName (dns:NAME); repeatable.
    #[arg(long, value_name = "NAME")]
    pub dns: Vec<String>,
    /// An IP address subjectAltName (server certificates); repeatable.
    #[arg(long, value_name = "ADDRESS")]
    pub ip: Vec<IpAddr>,
    /// Validity in days (cut to the CA's own).
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// A client certificate: extendedKeyUsage clientAuth (the default).
    #[arg(long)]
    pub client: bool,
    /// A TLS server certificate for green: serverAuth, needs --dns or --ip.
    #[arg(long)]
    pub server: bool,
    /// Where to write the certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `pki revoke`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["serial", "cert"])))]
pub struct RevokeArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The serial number (decimal, or hexadecimal with 0x).
    #[arg(long, value_parser = parse_serial)]
    pub serial: Option<u64>,
    /// The certificate file (PEM or DER).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Why (OpenSSL's names: keyCompromise, superseded, …).
    #[arg(long, default_value = "unspecified")]
    pub reason: RevocationReason,
}

/// `pki crl`.
#[derive(Debug, Args)]
pub struct CrlArgs {
    /// The CA directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Days until nextUpdate: verifiers refuse every certificate of the CA
    /// once it passes, so publish a new CRL before.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Where to write the CRL (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Write DER instead of PEM.
    #[arg(long)]
    pub der: bool,
}

/// `pki verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A trusted CA certificate file (PEM, one or many, or DER);
    /// repeatable.
    #[arg(long, value_name = "FILE", required = true)]
    pub ca: Vec<PathBuf>,
    /// An intermediate CA certificate file; repeatable.
    #[arg(long, value_name = "FILE")]
    pub intermediate: Vec<PathBuf>,
    /// A CRL file (PEM, one or many, or DER); repeatable.
    #[arg(long, value_name = "FILE")]
    pub crl: Vec<PathBuf>,
    /// The certificate to check.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Also check that this private key belongs to the certificate.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Check at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z) instead of
    /// now.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

fn parse_serial(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a serial number (decimal, or hexadecimal with 0x)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!(parse_serial("42"), Ok(42));
        assert_eq!(parse_serial("0x2A"), Ok(42));
        assert!(parse_serial("2A").is_err());
    }
}
