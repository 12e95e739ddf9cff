//! `index.txt`: one line per issued certificate, and the revocation
//! reasons.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::rfc3339;

/// What an issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Usage {
    /// A spa client: extended key usage clientAuth. SPEC §6.1.
    #[default]
    Client,
    /// Green's TLS server: serverAuth, with DNS/IP names.
    Server,
}

impl core::fmt::Display for Usage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Usage {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// Why a certificate is revoked (RFC 5280 §5.3.1), named as OpenSSL does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationReason {
    /// No reason given (no reasonCode in the CRL).
    #[default]
    Unspecified,
    /// The subject's key leaked.
    KeyCompromise,
    /// The CA's key leaked.
    CaCompromise,
    /// The subject changed affiliation.
    AffiliationChanged,
    /// Replaced by another certificate.
    Superseded,
    /// No longer needed.
    CessationOfOperation,
    /// The subject lost the privilege.
    PrivilegeWithdrawn,
}

const REASONS: [(RevocationReason, &str); 7] = [
    (RevocationReason::Unspecified, "unspecified"),
    (RevocationReason::KeyCompromise, "keyCompromise"),
    (RevocationReason::CaCompromise, "CACompromise"),
    (RevocationReason::AffiliationChanged, "affiliationChanged"),
    (RevocationReason::Superseded, "superseded"),
    (
        RevocationReason::CessationOfOperation,
        "cessationOfOperation",
    ),
    (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
];

impl core::fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = REASONS
            .iter()
            .find(|(r, _)| r == self)
            .map_or("unspecified", |(_, n)| n);
        f.write_str(name)
    }
}

impl core::str::FromStr for RevocationReason {
    type Err = String;

    /// OpenSSL's names (`keyCompromise`), in any case, with or without
    /// dashes (`key-compromise`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |s: &str| s.replace(['-', '_'], "").to_ascii_lowercase();
        let want = norm(s);
        REASONS
            .iter()
            .find(|(_, n)| norm(n) == want)
            .map(|(r, _)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = REASONS.iter().map(|(_, n)| *n).collect();
                format!(
                    "unknown revocation reason {s:?} (one of: {})",
                    names.join(", ")
                )
            })
    }
}

impl RevocationReason {
    pub(super) fn to_rcgen(self) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        Some(match self {
            Self::Unspecified => return None,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        })
    }
}

/// One line of `index.txt`, tab-separated:
/// `V|R  serial  notAfter  revokedAt|-  reason|-  client|server  name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Serial number.
    pub serial: u64,
    /// notAfter of the certificate.
    pub not_after: OffsetDateTime,
    /// When and why it was revoked.
    pub revoked: Option<(OffsetDateTime, RevocationReason)>,
    /// What it is for.
    pub usage: Usage,
    /// The subject common name.
    pub name: String,
}

impl IndexEntry {
    pub(super) fn to_line(&self) -> String {
        let (status, at, reason) = match &self.revoked {
            Some((t, r)) => ("R", rfc3339(*t), r.to_string()),
            None => ("V", "-".to_owned(), "-".to_owned()),
        };
        format!(
            "{status}\t{}\t{}\t{at}\t{reason}\t{}\t{}\n",
            self.serial,
            rfc3339(self.not_after),
            self.usage.as_str(),
            self.name
        )
    }

    pub(super) fn parse(line: &str) -> Result<Self, String> {
        let f: Vec<&str> = line.split('\t').collect();
        let [status, serial, not_after, at, reason, usage, name] = f.as_slice() else {
            return Err(format!(
                "expected 7 tab-separated fields, found {}",
                f.len()
            ));
        };
        let time = |s: &str| OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?}: {e}"));
        let revoked = match *status {
            "V" => None,
            "R" => Some((time(at)?, reason.parse()?)),
            other => return Err(format!("unknown status {other:?}")),
        };
        Ok(Self {
            serial: serial
                .parse()
                .map_err(|_| format!("bad serial {serial:?}"))?,
            not_after: time(not_after)?,
            revoked,
            usage: match *usage {
                "client" => Usage::Client,
                "server" => Usage::Server,
                other => return Err(format!("unknown usage {other:?}")),
            },
            name: (*name).to_owned(),
        })
    }
}

pub(super) const INDEX_HEADER: &str =
    "# spa CA index: status(V/R) serial notAfter revokedAt reason usage name (tab-separated)\n";
