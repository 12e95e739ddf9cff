//! The verifiers: green's for knocks and red's for orders. SPEC §8.
//!
//! Both take the datagram, its source address, `now` and a replay store, and
//! return a typed decision or a typed [`Refusal`]. Neither ever produces bytes
//! to send back: a refusal is for the caller's log and counters only.

use core::net::IpAddr;
use std::sync::Arc;

use crate::body::{MessageType, OpenFor, ParsedBody, SESSION_ID_LEN, parse_body};
use crate::cert::{
    CertCache, ClientIdentity, IdentityKey, TrustError, TrustStore, ValidatedCert,
    parse_client_cert,
};
use crate::error::CertificateError;
use crate::hpke_suite::Opener;
use crate::keys::{MacKey, ReceiverPublicKey, ReceiverSecretKey};
use crate::order::parse_order;
use crate::policy::Policy;
use crate::replay::{FloorRule, ReplayState, TimeLimits};
use crate::sign::{KNOCK_SIGNATURE_CONTEXT, ORDER_SIGNATURE_CONTEXT, transcript};
use crate::wire::{DatagramKind, frame};
use crate::{Refusal, UnixMillis};

/// One receiver key with its precomputed MAC state and HPKE constants.
struct KeyEntry {
    secret: ReceiverSecretKey,
    mac: MacKey,
    opener: Opener,
}

/// A receiver's static keys for one datagram kind (several during a key
/// rotation). SPEC §2.1.
pub struct ReceiverKeys {
    kind: DatagramKind,
    entries: Vec<KeyEntry>,
}

impl core::fmt::Debug for ReceiverKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReceiverKeys")
            .field("kind", &self.kind)
            .field(
                "public",
                &self
                    .entries
                    .iter()
                    .map(|e| e.secret.public_key())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ReceiverKeys {
    /// Keys for `kind`; the first is the current one.
    pub fn new(kind: DatagramKind, keys: Vec<ReceiverSecretKey>) -> Self {
        let entries = keys
            .into_iter()
            .map(|secret| KeyEntry {
                mac: MacKey::new(kind, &secret.public_key()),
                opener: Opener::new(kind, &secret),
                secret,
            })
            .collect();
        Self { kind, entries }
    }

    /// The public keys, current first.
    pub fn public_keys(&self) -> Vec<ReceiverPublicKey> {
        self.entries.iter().map(|e| e.secret.public_key()).collect()
    }

    /// Size, version, MAC and HPKE open. SPEC §3.6. Returns the plaintext
    /// and the public key it was sealed to.
    fn open(
        &self,
        datagram: &[u8],
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, ReceiverPublicKey), Refusal> {
        let framed = frame(self.kind, datagram)?;
        let entry = self
            .entries
            .iter()
            .find(|e| framed.mac_matches(&e.mac))
            .ok_or(Refusal::MacMismatch)?;
        let pt = entry
            .opener
            .open(&entry.secret, framed.enc, framed.header, framed.ciphertext)?;
        Ok((pt, entry.secret.public_key()))
    }

    /// Only the cheap checks (size, version, MAC): what a daemon may run
    /// before its rate limiter. SPEC §8.1.
    pub fn precheck(&self, datagram: &[u8]) -> Result<(), Refusal> {
        let framed = frame(self.kind, datagram)?;
        if self.entries.iter().any(|e| framed.mac_matches(&e.mac)) {
            Ok(())
        } else {
            Err(Refusal::MacMismatch)
        }
    }
}

/// The client-identity part both verifiers share: the certificate cache and
/// the trust store. SPEC §6.
#[derive(Debug)]
pub struct ClientAuthenticator {
    trust: TrustStore,
    cache: CertCache,
}

/// A client certificate resolved far enough to read the replay floor.
enum Resolved {
    Cached(Arc<ValidatedCert>),
    Parsed(Box<crate::cert::ParsedClientCert>),
}

impl Resolved {
    fn key(&self) -> IdentityKey {
        match self {
            Self::Cached(v) => v.identity.key,
            Self::Parsed(p) => p.identity.key,
        }
    }
}

impl ClientAuthenticator {
    /// From a loaded trust store.
    pub fn new(trust: TrustStore) -> Self {
        Self {
            trust,
            cache: CertCache::default(),
        }
    }

    /// Replaces the trust store (anchors, intermediates, CRLs) and clears
    /// the validation cache. SPEC §6.2.
    pub fn replace_trust(&mut self, trust: TrustStore) {
        self.trust = trust;
        self.cache.clear();
    }

    /// Validates a certificate that was accepted earlier against the
    /// current trust store at `now`, without the cache: after a trust
    /// reload the receiver closes the sessions of clients whose
    /// certificate is now revoked or whose chain no longer validates.
    /// SPEC §9, "What revocation ends".
    pub fn revalidate(&self, der: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        self.trust.validate(der, now)
    }

    /// Number of cached validated certificates.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Cache lookup or parse: cheap, no chain validation yet.
    fn resolve(&self, der: &[u8], now: UnixMillis) -> Result<([u8; 32], Resolved), Refusal> {
        let key = CertCache::key(der);
        if let Some(v) = self.cache.get(&key, now) {
            return Ok((key, Resolved::Cached(v)));
        }
        Ok((key, Resolved::Parsed(Box::new(parse_client_cert(der)?))))
    }

    /// Chain validation for a certificate that was not cached. SPEC §6.1.
    /// Returns whether the result is new (to be cached once the signature
    /// verifies, SPEC §6.2).
    fn validate(
        &self,
        der: &[u8],
        resolved: Resolved,
        now: UnixMillis,
    ) -> Result<(Arc<ValidatedCert>, bool), Refusal> {
        match resolved {
            Resolved::Cached(v) => Ok((v, false)),
            Resolved::Parsed(p) => {
                self.trust.validate(der, now)?;
                Ok((Arc::new(CertCache::entry(*p, &self.trust)), true))
            }
        }
    }

    /// Freshness, floor, certificate and signature for one client body.
    /// SPEC §8.1 steps 6-9 (also used by red, SPEC §8.2).
    fn check_client<R: ReplayState>(
        &mut self,
        body: &ParsedBody<'_>,
        receivers: &[ReceiverPublicKey],
        limits: &TimeLimits,
        rule: FloorRule,
        now: UnixMillis,
        replay: &R,
    ) -> Result<Arc<ValidatedCert>, Refusal> {
        limits.check(body.timestamp_ms, now)?;
        let (cache_key, resolved) = self.resolve(body.certificate, now)?;
        if !rule.admits(body.timestamp_ms, &resolved.key(), replay) {
            return Err(Refusal::Replayed);
        }
        let (cert, new) = self.validate(body.certificate, resolved, now)?;
        // Green has one pkR per knock (the key the MAC matched); red knows
        // each key a gateway may be using during a rotation (SPEC §5.2).
        let signed = receivers.iter().any(|pk| {
            let t = transcript(KNOCK_SIGNATURE_CONTEXT, pk, body.signed_part);
            cert.public_key.verify(&t, body.signature)
        });
        if !signed {
            return Err(Refusal::BadSignature);
        }
        // SPEC §6.2: cached only once the body's signature verified, so
        // filling the cache takes a client's key, not just public
        // certificates.
        if new {
            self.cache.insert(cache_key, Arc::clone(&cert));
        }
        Ok(cert)
    }
}

/// The refusal for a failed commit (SPEC §7.3, §7.6): `replayed` when a
/// shared store's compare-and-set, or a local store's re-check under
/// concurrent verification, found the floor condition failing at commit;
/// `storage_failure` otherwise.
fn commit_refusal<R: ReplayState>(error: &R::Error) -> Refusal {
    if R::is_replay(error) {
        Refusal::Replayed
    } else {
        Refusal::StorageFailure
    }
}

/// A knock that passed every check and whose floor is committed: the caller
/// may act on it. SPEC §8.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knock {
    /// Open-tunnel, request-service or close.
    pub msg_type: MessageType,
    /// Who.
    pub identity: ClientIdentity,
    /// The session this knock belongs to.
    pub session_id: [u8; SESSION_ID_LEN],
    /// The address to open for (the source, in source mode).
    pub open_for: IpAddr,
    /// Whether the client used source mode (SPEC §9: weaker).
    pub source_mode: bool,
    /// Services, in the client's order.
    pub services: Vec<String>,
    /// Lifetime granted, seconds (clamped by policy); 0 for close.
    pub lifetime_s: u32,
    /// The client's timestamp, ms.
    pub timestamp_ms: u64,
    /// The receiver key the knock was sealed to.
    pub receiver_key: ReceiverPublicKey,
    /// The client's certificate (DER), kept with the session so that a
    /// trust reload can re-check it (SPEC §9, "What revocation ends").
    pub certificate: Vec<u8>,
    /// The body verbatim, to relay inside an order (SPEC §5).
    pub body: Vec<u8>,
}

/// Green's verifier. SPEC §8.1.
#[derive(Debug)]
pub struct KnockVerifier {
    keys: ReceiverKeys,
    auth: ClientAuthenticator,
    /// Authorization and address rules.
    pub policy: Policy,
    /// Freshness limits.
    pub limits: TimeLimits,
}

impl KnockVerifier {
    /// A verifier with the given keys, trust, policy and limits.
    pub fn new(
        keys: Vec<ReceiverSecretKey>,
        trust: TrustStore,
        policy: Policy,
        limits: TimeLimits,
    ) -> Self {
        Self {
            keys: ReceiverKeys::new(DatagramKind::Knock, keys),
            auth: ClientAuthenticator::new(trust),
            policy,
            limits,
        }
    }

    /// The receiver keys (for the cheap pre-check).
    pub fn keys(&self) -> &ReceiverKeys {
        &self.keys
    }

    /// The certificate side (trust reloads).
    pub fn authenticator(&mut self) -> &mut ClientAuthenticator {
        &mut self.auth
    }

    /// Replaces the trust store; see [`ClientAuthenticator::replace_trust`].
    pub fn replace_trust(&mut self, trust: TrustStore) {
        self.auth.replace_trust(trust);
    }

    /// See [`ClientAuthenticator::revalidate`].
    pub fn revalidate(&self, certificate: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        self.auth.revalidate(certificate, now)
    }

    /// Verifies one knock. On success the identity's floor is committed.
    /// SPEC §8.1.
    pub fn verify<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Knock, Refusal> {
        self.verify_detailed(datagram, source, now, replay)
            .map_err(|r| r.reason)
    }

    /// [`Self::verify`], with the client's identity in a refusal that came
    /// after the client was proven (K13-K14: policy, source address,
    /// storage), for the receiver's log.
    pub fn verify_detailed<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Knock, Refused> {
        // SPEC §4.3: an IPv4-mapped IPv6 source is compared as IPv4.
        let source = source.to_canonical();
        let knock = Refused::at(Stage::Knock);
        let (plaintext, receiver) = self.keys.open(datagram).map_err(&knock)?;
        let body = parse_body(&plaintext).map_err(|m| knock(m.into()))?;
        let cert = self
            .auth
            .check_client(
                &body,
                core::slice::from_ref(&receiver),
                &self.limits,
                FloorRule::Strict,
                now,
                replay,
            )
            .map_err(&knock)?;
        let proven = |reason| Refused::by(reason, Stage::Knock, &cert.identity);
        let (open_for, source_mode) = match body.open_for {
            OpenFor::Source if self.policy.allow_source_mode => (source, true),
            OpenFor::Source => return Err(proven(Refusal::SourceModeNotAllowed)),
            OpenFor::Addr(a) if self.policy.require_source_match && a != source => {
                return Err(proven(Refusal::WrongSourceAddress));
            }
            OpenFor::Addr(a) => (a, false),
        };
        self.policy
            .authorize(&cert.identity, body.services.as_slice())
            .map_err(proven)?;
        replay
            .commit(&cert.identity.key, body.timestamp_ms)
            .map_err(|e| proven(commit_refusal::<R>(&e)))?;
        Ok(Knock {
            msg_type: body.msg_type,
            identity: cert.identity.clone(),
            session_id: body.session_id,
            open_for,
            source_mode,
            services: body
                .services
                .as_slice()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            lifetime_s: self.policy.grant_lifetime(body.lifetime_s),
            timestamp_ms: body.timestamp_ms,
            receiver_key: receiver,
            certificate: body.certificate.to_vec(),
            body: body.raw.to_vec(),
        })
    }
}

/// A refusal, the stage of the datagram it came from, and the client's
/// identity when the client had been proven (certificate valid, signature
/// verified) before the check that refused it. A refusal never goes on the
/// wire; stage and identity are for the receiver's log and its intrusion
/// prevention (SPEC §8.3, §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// Which part of the datagram the failed check judged.
    pub stage: Stage,
    /// The proven client, if any.
    pub identity: Option<ClientIdentity>,
}

/// What a refused check was judging (SPEC §8.3.1). At red it tells
/// a fault of the sending gateway from a fault of the client whose body
/// the gateway relayed: only [`Stage::Order`] refusals may count against
/// the order's source address (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// A knock at green, K1-K14 (SPEC §8.1).
    Knock,
    /// An order before green's signature verified, O1-O10 (SPEC §8.2):
    /// anybody holding red's public key can produce these.
    Order,
    /// An order green signed whose own fields are wrong, O11, O14, O15:
    /// green's fault, but not forgeable without green's signing key.
    SignedOrder,
    /// The client body inside an order green signed, O12-O13 and O16-O22:
    /// the client's fault (or a body green resent), never green's.
    ClientBody,
}

impl Stage {
    /// A stable snake_case name for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Self::Knock => "knock",
            Self::Order => "order",
            Self::SignedOrder => "signed_order",
            Self::ClientBody => "client_body",
        }
    }
}

impl core::fmt::Display for Stage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl Refused {
    /// A refusal at `stage`, no client proven.
    pub fn at(stage: Stage) -> impl Fn(Refusal) -> Self {
        move |reason| Self {
            reason,
            stage,
            identity: None,
        }
    }

    fn by(reason: Refusal, stage: Stage, identity: &ClientIdentity) -> Self {
        Self {
            reason,
            stage,
            identity: Some(identity.clone()),
        }
    }
}

/// A gateway red trusts. SPEC §2.3.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Green's Ed25519 order-signing public key.
    pub signing_key: [u8; 32],
    /// Green's X25519 knock receiver public keys (the `pkR` of the client
    /// transcripts green relays): the current one, and the previous one
    /// during a key rotation. SPEC §5.2.
    pub receiver_keys: Vec<ReceiverPublicKey>,
}

struct GatewayEntry {
    gateway: Gateway,
    verifying: ed25519_dalek::VerifyingKey,
    identity: IdentityKey,
}

/// What an order tells red to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    /// Open the client's services for the order's address.
    Open,
    /// Close everything of the session.
    Close,
}

/// An order that passed every check, floors committed. SPEC §8.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Open or close.
    pub action: OrderAction,
    /// Which gateway sent it.
    pub gateway: IdentityKey,
    /// The client whose request it carries.
    pub client: ClientIdentity,
    /// The session.
    pub session_id: [u8; SESSION_ID_LEN],
    /// The address red opens for.
    pub open_for: IpAddr,
    /// The services red opens: the body's names that red hosts, in the
    /// client's order (every name without `hosted_services`); empty for close.
    pub services: Vec<String>,
    /// Lifetime granted, seconds; 0 for close.
    pub lifetime_s: u32,
    /// The order's timestamp, ms.
    pub order_timestamp_ms: u64,
    /// The client's timestamp, ms.
    pub client_timestamp_ms: u64,
    /// The client's certificate (DER), kept with the session so that a
    /// trust reload can re-check it (SPEC §9, "What revocation ends").
    pub client_certificate: Vec<u8>,
}

/// Why red's verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayConfigError {
    /// A gateway signing key is not a valid Ed25519 key.
    #[error("gateway #{0}: the signing key is not a valid Ed25519 public key")]
    BadSigningKey(usize),
    /// Trust configuration error.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

/// Red's verifier. SPEC §8.2.
pub struct OrderVerifier {
    keys: ReceiverKeys,
    gateways: Vec<GatewayEntry>,
    auth: ClientAuthenticator,
    /// Red's own authorization policy.
    pub policy: Policy,
    /// The services red hosts (SPEC §5.2, §6.4): only these names of a
    /// relayed body are red's to judge and open; the others are ignored.
    /// `None` (the default): every name is red's.
    pub hosted_services: Option<Vec<String>>,
    /// Freshness of the order timestamp.
    pub order_limits: TimeLimits,
    /// Freshness of the client body inside.
    pub client_limits: TimeLimits,
}

impl core::fmt::Debug for OrderVerifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OrderVerifier")
            .field("keys", &self.keys)
            .field("gateways", &self.gateways.len())
            .field("policy", &self.policy)
            .field("hosted_services", &self.hosted_services)
            .finish_non_exhaustive()
    }
}

impl OrderVerifier {
    /// A verifier with red's keys, the gateways it trusts, its trust store
    /// and policy.
    pub fn new(
        keys: Vec<ReceiverSecretKey>,
        gateways: Vec<Gateway>,
        trust: TrustStore,
        policy: Policy,
        order_limits: TimeLimits,
        client_limits: TimeLimits,
    ) -> Result<Self, GatewayConfigError> {
        let gateways = gateways
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let verifying = ed25519_dalek::VerifyingKey::from_bytes(&g.signing_key)
                    .map_err(|_| GatewayConfigError::BadSigningKey(i))?;
                Ok(GatewayEntry {
                    identity: IdentityKey::of_ed25519(&g.signing_key),
                    gateway: g,
                    verifying,
                })
            })
            .collect::<Result<Vec<_>, GatewayConfigError>>()?;
        Ok(Self {
            keys: ReceiverKeys::new(DatagramKind::Order, keys),
            gateways,
            auth: ClientAuthenticator::new(trust),
            policy,
            hosted_services: None,
            order_limits,
            client_limits,
        })
    }

    /// The receiver keys (for the cheap pre-check).
    pub fn keys(&self) -> &ReceiverKeys {
        &self.keys
    }

    /// Replaces the trust store; see [`ClientAuthenticator::replace_trust`].
    pub fn replace_trust(&mut self, trust: TrustStore) {
        self.auth.replace_trust(trust);
    }

    /// See [`ClientAuthenticator::revalidate`].
    pub fn revalidate(&self, certificate: &[u8], now: UnixMillis) -> Result<(), CertificateError> {
        self.auth.revalidate(certificate, now)
    }

    /// Verifies one order. On success both floors are committed. SPEC §8.2.
    pub fn verify<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Order, Refusal> {
        self.verify_detailed(datagram, source, now, replay)
            .map_err(|r| r.reason)
    }

    /// [`Self::verify`], with the client's identity in a refusal that came
    /// after the client was proven (O21-O22: red's policy, storage), for
    /// red's log.
    pub fn verify_detailed<R: ReplayState>(
        &mut self,
        datagram: &[u8],
        source: IpAddr,
        now: UnixMillis,
        replay: &mut R,
    ) -> Result<Order, Refused> {
        let source = source.to_canonical();
        // SPEC §8.3.1: each check names the stage it judges, so red never
        // blames green for what a client did (SPEC §9).
        let order_stage = Refused::at(Stage::Order);
        let signed = Refused::at(Stage::SignedOrder);
        let client = Refused::at(Stage::ClientBody);
        let (plaintext, red_key) = self.keys.open(datagram).map_err(&order_stage)?;
        let order = parse_order(&plaintext).map_err(|m| order_stage(m.into()))?;
        let gw = self
            .gateways
            .iter()
            .find(|g| g.gateway.signing_key == *order.gateway_key)
            .ok_or(order_stage(Refusal::UnknownGateway))?;
        self.order_limits
            .check(order.order_timestamp_ms, now)
            .map_err(&order_stage)?;
        if !FloorRule::Strict.admits(order.order_timestamp_ms, &gw.identity, replay) {
            return Err(order_stage(Refusal::Replayed));
        }
        let t = transcript(ORDER_SIGNATURE_CONTEXT, &red_key, order.signed_part);
        let sig = ed25519_dalek::Signature::from_bytes(order.signature);
        if gw.verifying.verify_strict(&t, &sig).is_err() {
            return Err(order_stage(Refusal::BadGatewaySignature));
        }
        if order.open_for != source {
            return Err(signed(Refusal::WrongSourceAddress));
        }
        let body = parse_body(order.client_body).map_err(|m| client(m.into()))?;
        let action = match body.msg_type {
            MessageType::RequestService => OrderAction::Open,
            MessageType::Close => OrderAction::Close,
            MessageType::OpenTunnel | MessageType::Order => {
                return Err(client(Refusal::WrongMessageType));
            }
        };
        if body.session_id != order.session_id {
            return Err(signed(Refusal::SessionMismatch));
        }
        if (action == OrderAction::Close) != (order.lifetime_s == 0) {
            return Err(signed(Refusal::Malformed(
                crate::MalformedReason::FieldNotAllowed,
            )));
        }
        let gw_identity = gw.identity;
        let gw_receivers = gw.gateway.receiver_keys.clone();
        let cert = self
            .auth
            .check_client(
                &body,
                &gw_receivers,
                &self.client_limits,
                FloorRule::AtLeast,
                now,
                replay,
            )
            .map_err(&client)?;
        let proven = |reason| Refused::by(reason, Stage::ClientBody, &cert.identity);
        // SPEC §5.2: red judges the names it hosts; green judged the rest.
        let services: Vec<&str> = match &self.hosted_services {
            Some(hosted) => self
                .policy
                .authorize_hosted(&cert.identity, body.services.as_slice(), hosted)
                .map_err(proven)?,
            None => {
                self.policy
                    .authorize(&cert.identity, body.services.as_slice())
                    .map_err(proven)?;
                body.services.as_slice().to_vec()
            }
        };
        replay
            .commit_pair(
                (&gw_identity, order.order_timestamp_ms),
                (&cert.identity.key, body.timestamp_ms),
            )
            .map_err(|e| proven(commit_refusal::<R>(&e)))?;
        let lifetime_s = self
            .policy
            .grant_lifetime(order.lifetime_s.min(body.lifetime_s));
        Ok(Order {
            action,
            gateway: gw_identity,
            client: cert.identity.clone(),
            session_id: order.session_id,
            open_for: order.open_for,
            services: services.iter().map(|s| s.to_string()).collect(),
            lifetime_s,
            order_timestamp_ms: order.order_timestamp_ms,
            client_timestamp_ms: body.timestamp_ms,
            client_certificate: body.certificate.to_vec(),
        })
    }
}
