use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use spa_nft::SetOp;

const ALICE: IdentityKey = IdentityKey([0xa1; 32]);
const CAROL: IdentityKey = IdentityKey([0xca; 32]);
const NAT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 1, 2));
const ROAMED: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 3, 4));

/// The kernel as the table drives it: each element's absolute expiry.
#[derive(Debug, Default)]
struct FakeFw {
    now: UnixMillis,
    elements: BTreeMap<ElemKey, UnixMillis>,
    calls: usize,
    fail: bool,
}

impl Firewall for FakeFw {
    fn set(&mut self, key: ElemKey, timeout: Duration) -> Result<(), NftError> {
        self.calls += 1;
        if self.fail {
            return Err(NftError::Kernel {
                op: SetOp::Add,
                table: "spa".into(),
                set: "allow4".into(),
                errno: nix::errno::Errno::ENOMEM,
            });
        }
        let ms = u64::try_from(timeout.as_millis()).expect("ms");
        self.elements.insert(key, self.now + ms);
        Ok(())
    }
    fn remove(&mut self, key: ElemKey) -> Result<(), NftError> {
        self.calls += 1;
        self.elements.remove(&key);
        Ok(())
    }
}

impl FakeFw {
    fn at(&mut self, now: UnixMillis) -> &mut Self {
        self.now = now;
        self.elements.retain(|_, t| *t > now);
        self
    }
}

fn local() -> HashMap<String, (ServiceProto, u16)> {
    HashMap::from([
        ("ssh".to_owned(), (ServiceProto::Tcp, 22)),
        ("dns".to_owned(), (ServiceProto::Udp, 53)),
    ])
}

fn ssh(addr: IpAddr) -> ElemKey {
    ElemKey {
        addr,
        proto: ServiceProto::Tcp,
        port: 22,
    }
}

fn open(session: u8, who: IdentityKey, addr: IpAddr, services: &[&str], s: u32) -> Decision {
    Decision::Open {
        kind: OpenKind::RequestService,
        session: [session; 16],
        identity: format!("{who:?}"),
        identity_key: who,
        addr,
        services: services.iter().map(|s| (*s).to_owned()).collect(),
        lifetime_s: s,
        certificate: Vec::new(),
        body: Vec::new(),
    }
}

#[test]
fn close_keeps_other_sessions_openings() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("alice");
    t.open(&open(2, CAROL, NAT, &["ssh"], 50), &local(), 0, fw.at(0))
        .expect("carol");
    // Carol's shorter grant does not lower alice's element.
    assert_eq!(fw.elements[&ssh(NAT)], 300_000);
    // Alice closes: carol's opening stays, at carol's expiry (and its
    // flows must not be flushed).
    let c = t.close(&[1; 16], 10_000, fw.at(10_000)).expect("closed");
    assert_eq!((c.removed, c.kept), (vec![], vec![ssh(NAT)]));
    assert_eq!(fw.elements[&ssh(NAT)], 50_000);
    assert_eq!(t.element(&ssh(NAT), 10_000), Some((50_000, vec![[2; 16]])));
    // Carol closes: the element goes.
    t.close(&[2; 16], 20_000, fw.at(20_000)).expect("closed");
    assert!(fw.elements.is_empty());
    assert!(t.element(&ssh(NAT), 20_000).is_none());
}

#[test]
fn a_shorter_owners_close_keeps_the_longer_timeout() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("alice");
    t.open(&open(2, CAROL, NAT, &["ssh"], 50), &local(), 0, fw.at(0))
        .expect("carol");
    let calls = fw.calls;
    t.close(&[2; 16], 1_000, fw.at(1_000)).expect("closed");
    assert_eq!(fw.calls, calls, "nothing to change in the kernel");
    assert_eq!(fw.elements[&ssh(NAT)], 300_000);
}

#[test]
fn expiry_of_one_owner_leaves_the_other() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("alice");
    t.open(&open(2, CAROL, NAT, &["ssh"], 50), &local(), 0, fw.at(0))
        .expect("carol");
    assert_eq!(t.expire(60_000), vec![[2; 16]]);
    assert_eq!(t.element(&ssh(NAT), 60_000), Some((300_000, vec![[1; 16]])));
    assert_eq!(fw.at(60_000).elements[&ssh(NAT)], 300_000);
    assert_eq!(t.expire(300_000), vec![[1; 16]]);
    assert!(t.is_empty());
    assert!(t.elements.is_empty());
}

#[test]
fn a_session_id_of_another_identity_opens_nothing() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("alice");
    let calls = fw.calls;
    let r = t.open(
        &open(1, CAROL, ROAMED, &["ssh", "dns"], 300),
        &local(),
        0,
        fw.at(0),
    );
    assert_eq!(r.err(), Some(SessionError::OwnedByOther));
    assert_eq!(fw.calls, calls, "no firewall call");
    assert_eq!(fw.elements.len(), 1);
    let s = t.get(&[1; 16]).expect("alice's");
    assert_eq!((s.identity_key, s.addr, s.openings.len()), (ALICE, NAT, 1));
}

#[test]
fn a_roamed_sessions_close_removes_every_address() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("first address");
    t.open(
        &open(1, ALICE, ROAMED, &["ssh"], 300),
        &local(),
        5,
        fw.at(5),
    )
    .expect("roamed");
    assert_eq!(fw.elements.len(), 2);
    let c = t.close(&[1; 16], 10, fw.at(10)).expect("closed");
    assert!(c.errors.is_empty());
    assert_eq!(c.session.openings.len(), 2);
    assert_eq!(c.removed, vec![ssh(NAT), ssh(ROAMED)]);
    assert!(fw.elements.is_empty(), "{:?}", fw.elements);
}

#[test]
fn a_failed_open_records_nothing() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 50), &local(), 0, fw.at(0))
        .expect("alice");
    fw.fail = true;
    let o = t
        .open(&open(2, CAROL, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("decided");
    assert_eq!(o.failed.len(), 1);
    assert_eq!(t.element(&ssh(NAT), 0), Some((50_000, vec![[1; 16]])));
    assert!(t.get(&[2; 16]).is_some_and(|s| s.openings.is_empty()));
}

#[test]
fn relayed_services_are_granted_without_an_element() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    let mut d = open(1, ALICE, NAT, &["web"], 60);
    if let Decision::Open { kind, .. } = &mut d {
        *kind = OpenKind::OpenTunnel;
    }
    t.open(&d, &local(), 0, fw.at(0)).expect("alice");
    assert_eq!(fw.calls, 0);
    assert!(t.tunnel_open(NAT, &ALICE, 1));
    assert!(!t.tunnel_open(ROAMED, &ALICE, 1));
    assert!(!t.tunnel_open(NAT, &CAROL, 1));
    assert_eq!(t.session_for(NAT, &ALICE, "web", 1), Some([1; 16]));
    assert_eq!(t.session_for(NAT, &ALICE, "web", 60_000), None);
    // A later request-service of the same session keeps the tunnel.
    t.open(&open(1, ALICE, NAT, &["web"], 60), &local(), 10, fw.at(10))
        .expect("again");
    assert!(t.tunnel_open(NAT, &ALICE, 11));
}

#[test]
fn status_lists_each_element_with_its_owners() {
    let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
    t.open(&open(1, ALICE, NAT, &["ssh"], 300), &local(), 0, fw.at(0))
        .expect("alice");
    t.open(&open(2, CAROL, NAT, &["ssh"], 50), &local(), 0, fw.at(0))
        .expect("carol");
    let (sessions, elements) = t.status(0);
    assert_eq!(sessions.as_array().map(Vec::len), Some(2));
    assert_eq!(sessions[0]["openings"][0]["address"], "10.200.1.2");
    assert_eq!(elements[0]["address"], "10.200.1.2");
    assert_eq!(elements[0]["expires_in_s"], 300);
    assert_eq!(
        elements[0]["owners"],
        json!([hex::encode([1u8; 16]), hex::encode([2u8; 16])])
    );
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        session: u8,
        addr: bool,
        service: bool,
        lifetime_s: u32,
    },
    Close(u8),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, any::<bool>(), any::<bool>(), 1u32..400).prop_map(
            |(session, addr, service, lifetime_s)| Op::Open {
                session,
                addr,
                service,
                lifetime_s
            }
        ),
        (0u8..4).prop_map(Op::Close),
        (1u64..120_000).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Whatever the sequence of opens, closes and expiries, the kernel
    /// holds an element exactly while a session holds a live opening of it,
    /// and its expiry is the latest of those openings.
    #[test]
    fn the_kernel_element_follows_its_live_owners(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut t, mut fw) = (SessionTable::default(), FakeFw::default());
        let mut now = 1;
        for op in ops {
            match op {
                Op::Open { session, addr, service, lifetime_s } => {
                    // Sessions 0 and 1 are alice's, 2 and 3 carol's.
                    let who = if session < 2 { ALICE } else { CAROL };
                    let d = open(
                        session,
                        who,
                        if addr { NAT } else { ROAMED },
                        &[if service { "ssh" } else { "dns" }],
                        lifetime_s,
                    );
                    t.open(&d, &local(), now, fw.at(now)).expect("own id");
                }
                Op::Close(s) => {
                    t.close(&[s; 16], now, fw.at(now));
                }
                Op::Advance(ms) => {
                    now += ms;
                    t.expire(now);
                    fw.at(now);
                }
            }
            let mut want: BTreeMap<ElemKey, UnixMillis> = BTreeMap::new();
            for s in t.sessions.values() {
                for o in &s.openings {
                    if let Some(k) = o.key().filter(|_| o.expires_ms > now) {
                        let e = want.entry(k).or_default();
                        *e = (*e).max(o.expires_ms);
                    }
                }
            }
            prop_assert_eq!(&fw.at(now).elements, &want);
        }
    }
}
