//! Sessions and the firewall elements they own (SPEC §8.1.1, §8.2.1).
//!
//! One table, shared by the daemon loop (green and red) and green's tunnel
//! threads ([`SharedSessions`]): a session is what one identity opened
//! under one session id, each opening with its own address (a client that
//! roams keeps the openings of its earlier addresses until they expire or
//! the session closes). A kernel element `address . protocol . port` may
//! serve several sessions at once (two identities behind one NAT address,
//! or, at red, every session green relays, all for green's address): the
//! element lists its owners, exists while any owner is live, and its kernel
//! timeout is the latest expiry among them. So one session's close, expiry
//! or shorter grant never shortens or removes another's opening.
//!
//! A session id belongs to the identity that first opened it: an open or a
//! close under that id by another identity touches nothing
//! ([`SessionError::OwnedByOther`]).
//!
//! The table never reads the clock: every call takes `now`, and the
//! firewall is reached through [`Firewall`], so the rules are unit-tested
//! with a fake one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto_spec::UnixMillis;
use proto_spec::cert::IdentityKey;
use serde_json::{Value, json};

use crate::config::ServiceProto;
use crate::gate::{Decision, OpenKind};
use spa_nft::{NftError, NftSets};

/// A session id (SPEC §4).
pub type SessionId = [u8; 16];

/// The table, shared by the daemon loop and the tunnel threads.
pub type SharedSessions = Arc<Mutex<SessionTable>>;

/// One kernel allow element: `address . protocol . port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemKey {
    /// Source address the element admits.
    pub addr: IpAddr,
    /// Protocol.
    pub proto: ServiceProto,
    /// Destination port.
    pub port: u16,
}

/// What the table asks of the kernel firewall.
pub trait Firewall {
    /// Adds `key`, or re-sets its timeout (up or down) if it exists, in one
    /// transaction: the element is never missing in between.
    fn set(&mut self, key: ElemKey, timeout: Duration) -> Result<(), NftError>;
    /// Deletes `key` (a missing element is not an error).
    fn remove(&mut self, key: ElemKey) -> Result<(), NftError>;
}

impl Firewall for NftSets {
    fn set(&mut self, key: ElemKey, timeout: Duration) -> Result<(), NftError> {
        self.allow(key.addr, key.proto, key.port, timeout)
    }
    fn remove(&mut self, key: ElemKey) -> Result<(), NftError> {
        self.revoke(key.addr, key.proto, key.port)
    }
}

/// A firewall that accepts everything and does nothing (tests, and
/// callers that only record grants).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFirewall;

impl Firewall for NoFirewall {
    fn set(&mut self, _: ElemKey, _: Duration) -> Result<(), NftError> {
        Ok(())
    }
    fn remove(&mut self, _: ElemKey) -> Result<(), NftError> {
        Ok(())
    }
}

/// Why the table refused a decision. Local only: nothing goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session id belongs to another identity (SPEC §8.1.1).
    #[error("the session id belongs to another identity")]
    OwnedByOther,
}

impl SessionError {
    /// The counter this refusal bumps.
    pub fn counter(self) -> &'static str {
        match self {
            SessionError::OwnedByOther => "refused.session_owned_by_other",
        }
    }
}

/// One service granted to a session for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// Service name.
    pub service: String,
    /// For which address.
    pub addr: IpAddr,
    /// The kernel element it owns, if the service is local to this host
    /// (green relays the others to red: granted here, for the tunnel, but
    /// no element).
    pub element: Option<(ServiceProto, u16)>,
    /// Granted by an open-tunnel knock (SPEC §12).
    pub tunnel: bool,
    /// Expiry, ms.
    pub expires_ms: UnixMillis,
}

impl Opening {
    fn key(&self) -> Option<ElemKey> {
        self.element.map(|(proto, port)| ElemKey {
            addr: self.addr,
            proto,
            port,
        })
    }
}

/// A session: what one identity opened under one session id.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who (display name).
    pub identity: String,
    /// Who (the key the session belongs to).
    pub identity_key: IdentityKey,
    /// The address of the latest accepted knock.
    pub addr: IpAddr,
    /// What is open, per service and address.
    pub openings: Vec<Opening>,
    /// The client certificate (DER) of the latest accepted knock or order,
    /// re-checked after every trust reload (SPEC §9, "What revocation
    /// ends").
    pub certificate: Vec<u8>,
}

/// A kernel element and the sessions it serves.
#[derive(Debug, Clone, Default)]
struct Element {
    /// The expiry the kernel element was last given (0: none).
    until: UnixMillis,
    /// Owner sessions and each one's expiry.
    owners: BTreeMap<SessionId, UnixMillis>,
}

impl Element {
    fn live_max(&self, now: UnixMillis) -> Option<UnixMillis> {
        self.owners.values().copied().filter(|&t| t > now).max()
    }
}

/// What an accepted open did.
#[derive(Debug, Default)]
pub struct Opened {
    /// Elements this session now owns (services local to this host).
    pub elements: Vec<(String, ElemKey, UnixMillis)>,
    /// Services the firewall could not open (not recorded).
    pub failed: Vec<(String, NftError)>,
}

/// What closing a session did to the firewall.
#[derive(Debug)]
pub struct Closed {
    /// The session, as it was.
    pub session: Session,
    /// Elements deleted: no other session owned them. Only these may have
    /// their flows cut (a conntrack flush); the others serve someone else.
    pub removed: Vec<ElemKey>,
    /// Elements kept for their other owners (timeout re-set if needed).
    pub kept: Vec<ElemKey>,
    /// Elements the firewall could not update.
    pub errors: Vec<(ElemKey, NftError)>,
}

/// Sessions, and the owners of every kernel element.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: HashMap<SessionId, Session>,
    elements: BTreeMap<ElemKey, Element>,
}

impl SessionTable {
    /// A shared, empty table.
    pub fn shared() -> SharedSessions {
        SharedSessions::default()
    }

    /// Applies an accepted open (SPEC §8.1.1): checks ownership first
    /// (nothing is touched for another identity's session id), then gives
    /// each local service's element this session as an owner and sets its
    /// kernel timeout to the latest expiry of its live owners (raised, never
    /// lowered by this grant unless this session alone held it longer).
    /// `local` maps the services this host opens; the others are recorded
    /// as grants without an element.
    pub fn open<F: Firewall + ?Sized>(
        &mut self,
        d: &Decision,
        local: &HashMap<String, (ServiceProto, u16)>,
        now: UnixMillis,
        fw: &mut F,
    ) -> Result<Opened, SessionError> {
        let Decision::Open {
            kind,
            session,
            identity,
            identity_key,
            addr,
            services,
            lifetime_s,
            certificate,
            ..
        } = d
        else {
            return Ok(Opened::default());
        };
        self.check_owner(session, identity_key)?;
        let expires_ms = now.saturating_add(u64::from(*lifetime_s) * 1000);
        let tunnel = *kind == OpenKind::OpenTunnel;
        let mut out = Opened::default();
        let mut granted = Vec::new();
        for name in services {
            let element = local.get(name).copied();
            let opening = Opening {
                service: name.clone(),
                addr: *addr,
                element,
                tunnel,
                expires_ms,
            };
            if let Some(key) = opening.key() {
                match self.own(key, session, expires_ms, now, fw) {
                    Ok(()) => out.elements.push((name.clone(), key, expires_ms)),
                    Err(e) => {
                        out.failed.push((name.clone(), e));
                        continue;
                    }
                }
            }
            granted.push(opening);
        }
        let s = self.sessions.entry(*session).or_insert_with(|| Session {
            identity: identity.clone(),
            identity_key: *identity_key,
            addr: *addr,
            openings: Vec::new(),
            certificate: Vec::new(),
        });
        s.addr = *addr;
        s.certificate.clone_from(certificate);
        for g in granted {
            // A repeated grant replaces the session's own earlier one for
            // that service and address; an open-tunnel grant stays one.
            let tunnel = g.tunnel
                || s.openings.iter().any(|o| {
                    o.service == g.service && o.addr == g.addr && o.tunnel && o.expires_ms > now
                });
            s.openings
                .retain(|o| !(o.service == g.service && o.addr == g.addr));
            s.openings.push(Opening { tunnel, ..g });
        }
        Ok(out)
    }

    /// Whether `identity_key` may act on `session`: a new id, or its own.
    pub fn check_owner(
        &self,
        session: &SessionId,
        identity_key: &IdentityKey,
    ) -> Result<(), SessionError> {
        match self.sessions.get(session) {
            Some(s) if s.identity_key != *identity_key => Err(SessionError::OwnedByOther),
            _ => Ok(()),
        }
    }

    /// Ends a session (its client's close, the operator's revoke): every
    /// element it owns, at every address, loses this owner; an element with
    /// no live owner left is deleted, one whose latest expiry was this
    /// session's is re-set to the latest of the others. Firewall errors are
    /// reported in [`Closed`] (the session is forgotten all the same).
    pub fn close<F: Firewall + ?Sized>(
        &mut self,
        session: &SessionId,
        now: UnixMillis,
        fw: &mut F,
    ) -> Option<Closed> {
        let s = self.sessions.remove(session)?;
        let mut closed = Closed {
            removed: Vec::new(),
            kept: Vec::new(),
            errors: Vec::new(),
            session: s,
        };
        for key in closed.session.openings.iter().filter_map(Opening::key) {
            match self.disown(key, session, now, fw) {
                Ok(true) => closed.removed.push(key),
                Ok(false) => closed.kept.push(key),
                Err(e) => closed.errors.push((key, e)),
            }
        }
        Some(closed)
    }

    /// Every session, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }

    /// Forgets openings that expired (the kernel removed or keeps their
    /// elements by itself: an element's timeout is its latest owner's) and
    /// returns the sessions left with none.
    pub fn expire(&mut self, now: UnixMillis) -> Vec<SessionId> {
        let mut ended = Vec::new();
        let elements = &mut self.elements;
        self.sessions.retain(|id, s| {
            s.openings.retain(|o| {
                if o.expires_ms > now {
                    return true;
                }
                if let Some(key) = o.key()
                    && let Some(el) = elements.get_mut(&key)
                {
                    el.owners.remove(id);
                    if el.live_max(now).is_none() {
                        elements.remove(&key);
                    }
                }
                false
            });
            if s.openings.is_empty() {
                ended.push(*id);
            }
            !s.openings.is_empty()
        });
        ended
    }

    /// A session.
    pub fn get(&self, session: &SessionId) -> Option<&Session> {
        self.sessions.get(session)
    }

    /// Whether the table holds `session`.
    pub fn contains(&self, session: &SessionId) -> bool {
        self.sessions.contains_key(session)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The kernel expiry the table gave `key` and its live owners.
    pub fn element(&self, key: &ElemKey, now: UnixMillis) -> Option<(UnixMillis, Vec<SessionId>)> {
        let el = self.elements.get(key)?;
        let owners: Vec<SessionId> = el
            .owners
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(id, _)| *id)
            .collect();
        (!owners.is_empty()).then_some((el.until, owners))
    }

    /// Whether `identity` has an open tunnel for `addr` (SPEC §12).
    pub fn tunnel_open(&self, addr: IpAddr, identity: &IdentityKey, now: UnixMillis) -> bool {
        self.sessions.values().any(|s| {
            s.identity_key == *identity
                && s.openings
                    .iter()
                    .any(|o| o.addr == addr && o.tunnel && o.expires_ms > now)
        })
    }

    /// The session that granted `service` to `identity` for `addr`
    /// (preferring one with an open tunnel for that address).
    pub fn session_for(
        &self,
        addr: IpAddr,
        identity: &IdentityKey,
        service: &str,
        now: UnixMillis,
    ) -> Option<SessionId> {
        let live = |s: &Session, f: &dyn Fn(&Opening) -> bool| {
            s.openings
                .iter()
                .any(|o| o.addr == addr && o.expires_ms > now && f(o))
        };
        self.sessions
            .iter()
            .filter(|(_, s)| s.identity_key == *identity && live(s, &|o| o.service == service))
            .max_by_key(|(_, s)| live(s, &|o| o.tunnel))
            .map(|(id, _)| *id)
    }

    /// `status`: the sessions (each opening with its address) and the
    /// kernel elements (each with its owners).
    pub fn status(&self, now: UnixMillis) -> (Value, Value) {
        let left = |t: UnixMillis| t.saturating_sub(now).div_ceil(1000);
        let mut sessions: Vec<(&SessionId, &Session)> = self.sessions.iter().collect();
        sessions.sort_by_key(|(id, _)| **id);
        let sessions = sessions
            .into_iter()
            .map(|(id, s)| {
                json!({
                    "session": hex::encode(id),
                    "identity": s.identity,
                    "address": s.addr.to_string(),
                    "openings": s.openings.iter().map(|o| json!({
                        "service": o.service,
                        "address": o.addr.to_string(),
                        "proto": o.element.map(|(p, _)| p.name()),
                        "port": o.element.map(|(_, p)| p),
                        "expires_in_s": left(o.expires_ms),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let elements = self
            .elements
            .iter()
            .filter_map(|(k, el)| {
                let owners: Vec<String> = el
                    .owners
                    .iter()
                    .filter(|(_, t)| **t > now)
                    .map(|(id, _)| hex::encode(id))
                    .collect();
                (!owners.is_empty()).then(|| {
                    json!({
                        "address": k.addr.to_string(),
                        "proto": k.proto.name(),
                        "port": k.port,
                        "expires_in_s": left(el.until),
                        "owners": owners,
                    })
                })
            })
            .collect();
        (Value::Array(sessions), Value::Array(elements))
    }

    /// Makes `session` an owner of `key` until `expires_ms` and gives the
    /// kernel element the latest live expiry. On a firewall error the
    /// element's owners are as they were.
    fn own<F: Firewall + ?Sized>(
        &mut self,
        key: ElemKey,
        session: &SessionId,
        expires_ms: UnixMillis,
        now: UnixMillis,
        fw: &mut F,
    ) -> Result<(), NftError> {
        let el = self.elements.entry(key).or_default();
        el.owners.retain(|_, t| *t > now);
        let before = el.owners.insert(*session, expires_ms);
        let until = el.live_max(now).unwrap_or(expires_ms);
        if until == el.until && el.until > now {
            return Ok(());
        }
        match fw.set(key, Duration::from_millis(until.saturating_sub(now).max(1))) {
            Ok(()) => {
                el.until = until;
                Ok(())
            }
            Err(e) => {
                match before {
                    Some(t) => el.owners.insert(*session, t),
                    None => el.owners.remove(session),
                };
                if el.owners.is_empty() {
                    self.elements.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Removes `session` from `key`'s owners: deletes the element when no
    /// live owner remains (`true`), else re-sets its timeout to the latest
    /// of theirs (`false`: the element stays).
    fn disown<F: Firewall + ?Sized>(
        &mut self,
        key: ElemKey,
        session: &SessionId,
        now: UnixMillis,
        fw: &mut F,
    ) -> Result<bool, NftError> {
        let Some(el) = self.elements.get_mut(&key) else {
            return Ok(true);
        };
        el.owners.remove(session);
        el.owners.retain(|_, t| *t > now);
        match el.live_max(now) {
            None => {
                self.elements.remove(&key);
                fw.remove(key).map(|()| true)
            }
            Some(until) if until != el.until => {
                el.until = until;
                fw.set(key, Duration::from_millis(until.saturating_sub(now).max(1)))
                    .map(|()| false)
            }
            Some(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
