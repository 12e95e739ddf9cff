//! What a daemon verifies: green's knocks or red's orders, behind one trait
//! so that capture, rate limiting, replay storage, firewall changes, logging
//! and counting are written once for both daemons.

use std::net::IpAddr;

use proto_spec::body::MessageType;
use proto_spec::cert::{IdentityKey, TrustStore};
use proto_spec::error::CertificateError;
use proto_spec::replay::ReplayState;
use proto_spec::verify::{KnockVerifier, OrderAction, OrderVerifier, Refused, Stage};
use proto_spec::{Refusal, UnixMillis};

/// Which accepted datagram opened a session: green's two knocks that open
/// (SPEC §4.2) or red's order (SPEC §5). Counted and logged by its
/// [`name`](OpenKind::name) (`accepted.open-tunnel`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenKind {
    /// An open-tunnel knock: the tunnel port, for the tunnel's grants.
    OpenTunnel,
    /// A request-service knock (green-local, or relayed to red).
    RequestService,
    /// Green's order, at red.
    Order,
}

impl OpenKind {
    /// The kind of an opening knock's message type; `None` for close
    /// (which opens nothing).
    pub fn of(t: MessageType) -> Option<Self> {
        match t {
            MessageType::OpenTunnel => Some(Self::OpenTunnel),
            MessageType::RequestService => Some(Self::RequestService),
            MessageType::Order => Some(Self::Order),
            MessageType::Close => None,
        }
    }

    /// The message type's name (SPEC §4.2), as counters and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenTunnel => MessageType::OpenTunnel.name(),
            Self::RequestService => MessageType::RequestService.name(),
            Self::Order => MessageType::Order.name(),
        }
    }
}

impl std::fmt::Display for OpenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an accepted datagram asks the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Open `services` for `addr` for `lifetime_s`, in session `session`.
    Open {
        /// Which knock it was (open-tunnel or request-service; order).
        kind: OpenKind,
        /// The session.
        session: [u8; 16],
        /// Who.
        identity: String,
        /// Replay identity.
        identity_key: IdentityKey,
        /// Where to open for.
        addr: IpAddr,
        /// Services by name.
        services: Vec<String>,
        /// Seconds.
        lifetime_s: u32,
        /// The client's certificate (DER): the session keeps it so that a
        /// trust reload can close it once the certificate is revoked
        /// (SPEC §9, "What revocation ends").
        certificate: Vec<u8>,
        /// Verbatim client body (green relays it to red).
        body: Vec<u8>,
    },
    /// Close everything of `session`.
    Close {
        /// The session.
        session: [u8; 16],
        /// Who (only the session's own identity may close it).
        identity: String,
        /// Replay identity.
        identity_key: IdentityKey,
        /// Verbatim client body.
        body: Vec<u8>,
    },
}

/// A verifier the daemon loop can drive.
pub trait Gate {
    /// Size, version and pre-check MAC only (SPEC §8.1 steps 1-3).
    fn precheck(&self, datagram: &[u8]) -> Result<(), Refusal>;
    /// The full verification, committing the replay floor on success; a
    /// refusal names the client once it was proven.
    fn verify<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Decision, Refused>;
    /// Replaces the trust store (SIGHUP or a changed file).
    fn replace_trust(&mut self, trust: TrustStore);
    /// Whether a client certificate accepted earlier still validates
    /// against the current trust store at `now` (not revoked, chain and
    /// validity intact). SPEC §9, "What revocation ends".
    fn revalidate(&self, certificate: &[u8], now: UnixMillis) -> Result<(), CertificateError>;
    /// Whether a refusal counts against the datagram's source address for
    /// intrusion prevention (blocking). Default: every refusal the IPS
    /// counts does.
    fn blames_source(&self, _refused: &Refused) -> bool {
        true
    }
}

impl Gate for KnockVerifier {
    fn precheck(&self, datagram: &[u8]) -> Result<(), Refusal> {
        self.keys().precheck(datagram)
    }

    fn verify<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Decision, Refused> {
        let k = KnockVerifier::verify_detailed(self, datagram, source, now, replay)?;
        let identity = k.identity.display_name();
        Ok(match OpenKind::of(k.msg_type) {
            None => Decision::Close {
                session: k.session_id,
                identity,
                identity_key: k.identity.key,
                body: k.body,
            },
            Some(kind) => Decision::Open {
                kind,
                session: k.session_id,
                identity,
                identity_key: k.identity.key,
                addr: k.open_for,
                services: k.services,
                lifetime_s: k.lifetime_s,
                certificate: k.certificate,
                body: k.body,
            },
        })
    }

    fn replace_trust(&mut self, trust: TrustStore) {
        KnockVerifier::replace_trust(self, trust);
    }

    fn revalidate(&self, certificate: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        KnockVerifier::revalidate(self, certificate, now)
    }
}

impl Gate for OrderVerifier {
    fn precheck(&self, datagram: &[u8]) -> Result<(), Refusal> {
        self.keys().precheck(datagram)
    }

    fn verify<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Decision, Refused> {
        let o = OrderVerifier::verify_detailed(self, datagram, source, now, replay)?;
        let identity = o.client.display_name();
        Ok(match o.action {
            OrderAction::Close => Decision::Close {
                session: o.session_id,
                identity,
                identity_key: o.client.key,
                body: Vec::new(),
            },
            OrderAction::Open => Decision::Open {
                kind: OpenKind::Order,
                session: o.session_id,
                identity,
                identity_key: o.client.key,
                addr: o.open_for,
                services: o.services,
                lifetime_s: o.lifetime_s,
                certificate: o.client_certificate,
                body: Vec::new(),
            },
        })
    }

    fn replace_trust(&mut self, trust: TrustStore) {
        OrderVerifier::replace_trust(self, trust);
    }

    fn revalidate(&self, certificate: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        OrderVerifier::revalidate(self, certificate, now)
    }

    /// Only a refusal of the order itself before green's signature verified
    /// ([`Stage::Order`], SPEC §8.2 O1-O10) counts against the source: a
    /// refusal of the client body inside an order green signed is the
    /// client's fault (a stale, future-dated or replayed body: clock skew,
    /// green's resends, one malicious client), and counting it against
    /// green's address would let one client get every relayed request
    /// blocked (SPEC §9). A signed order with wrong fields of its own
    /// ([`Stage::SignedOrder`]) cannot be forged without green's key and
    /// only green can stop sending it; blocking green would not.
    fn blames_source(&self, refused: &Refused) -> bool {
        refused.stage == Stage::Order
    }
}
