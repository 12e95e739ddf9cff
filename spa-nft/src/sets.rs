//! The per-knock path: set elements added, refreshed and deleted through
//! nf_tables netlink batches, and listed through a `NFT_MSG_GETSETELEM`
//! dump. No process is spawned here.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use nix::errno::Errno;

use super::Proto;
use super::elements::{Key, RawElem, SetContents, SetId, decode, parse_elements};
use super::error::{NftError, SetOp};
use super::netlink::{
    self, MsgBuf, NFPROTO_INET, NFT_MSG_DELSETELEM, NFT_MSG_DELTABLE, NFT_MSG_GETSET,
    NFT_MSG_GETSETELEM, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_NAME, NFTA_SET_TABLE,
    NFTA_TABLE_NAME, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NlSocket, nft_type,
};
use ipnet::IpNet;

use super::ruleset::TableName;

/// The largest element timeout the kernel takes: `nf_msecs_to_jiffies64`
/// refuses `ms >= U64_MAX / NSEC_PER_MSEC` with `ERANGE`.
const MAX_TIMEOUT_MS: u64 = u64::MAX / 1_000_000 - 1;

/// Elements per netlink message: keeps every nested attribute far below
/// its 64 KiB length limit (an allow6 element is 48 bytes).
const ELEMS_PER_MSG: usize = 256;

/// How many times a dump interrupted by a concurrent change is restarted.
const DUMP_RETRIES: usize = 5;

/// How an existing element's timeout is refreshed on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A plain re-add (`NLM_F_CREATE`, no `NLM_F_EXCL`) updates the
    /// timeout (Linux 6.12 and later): one message per set.
    Update,
    /// A re-add keeps the old timeout (older kernels): each add is sent as
    /// *add, delete, add* in one batch, an atomic replacement.
    Replace,
}

/// One message of a batch: add or delete these keys of one set.
#[derive(Debug)]
struct Op<'a> {
    op: SetOp,
    set: SetId,
    keys: &'a [Key],
    timeout_ms: Option<u64>,
}

/// The open netlink client for our sets. Open it once (after
/// [`super::Ruleset::install`]) and keep it: each call is one batch and one
/// round trip to the kernel.
#[derive(Debug)]
pub struct NftSets {
    sock: NlSocket,
    table: TableName,
    refresh: Refresh,
    msg: MsgBuf,
}

impl NftSets {
    /// The socket and the message buffer, for the conntrack requests that
    /// share them ([`super::conntrack`]).
    pub(super) fn netlink(&mut self) -> (&mut NlSocket, &mut MsgBuf) {
        (&mut self.sock, &mut self.msg)
    }

    /// Opens the socket, checks that the four sets of `inet <table>` exist,
    /// and finds out how this kernel refreshes timeouts (see [`Refresh`]):
    /// it adds a probe element (`127.0.0.255 . tcp . 0` in `allow4`) with a
    /// 1 h timeout, re-adds it with 2 h, reads the timeout back and deletes
    /// it.
    pub fn open(table: &str) -> Result<Self, NftError> {
        let table = TableName::new(table)?;
        let mut sets = NftSets {
            sock: NlSocket::open()?,
            table,
            refresh: Refresh::Replace,
            msg: MsgBuf::new(),
        };
        for set in SetId::FIXED {
            if !sets.set_exists(set)? {
                return Err(sets.missing(set));
            }
        }
        sets.refresh = sets.probe_refresh()?;
        Ok(sets)
    }

    /// The table.
    pub fn table(&self) -> &str {
        self.table.as_str()
    }

    /// How timeouts are refreshed (found by [`NftSets::open`]).
    pub fn refresh(&self) -> Refresh {
        self.refresh
    }

    /// Forces a refresh strategy ([`Refresh::Replace`] works on every
    /// kernel; [`Refresh::Update`] only where re-adding updates).
    pub fn set_refresh(&mut self, refresh: Refresh) {
        self.refresh = refresh;
    }

    /// Lets `addr` reach `proto`/`port` for `timeout`, after which the
    /// kernel removes the element. If the element exists, its timeout is
    /// replaced by `timeout`. IPv4-mapped IPv6 addresses go to `allow4`.
    pub fn allow(
        &mut self,
        addr: IpAddr,
        proto: Proto,
        port: u16,
        timeout: Duration,
    ) -> Result<(), NftError> {
        let ms = timeout_ms(timeout)?;
        self.add(&mut [Key::allow(addr, proto, port)], ms)
    }

    /// [`NftSets::allow`] for several triples in one batch: all of them are
    /// added, or (on error) none.
    pub fn allow_many(
        &mut self,
        items: &[(IpAddr, Proto, u16)],
        timeout: Duration,
    ) -> Result<(), NftError> {
        let ms = timeout_ms(timeout)?;
        let mut keys: Vec<Key> = items
            .iter()
            .map(|&(a, p, port)| Key::allow(a, p, port))
            .collect();
        self.add(&mut keys, ms)
    }

    /// Removes an allow element. A missing element is not an error.
    pub fn revoke(&mut self, addr: IpAddr, proto: Proto, port: u16) -> Result<(), NftError> {
        self.delete(Key::allow(addr, proto, port))
    }

    /// Blocks new flows from `addr` for `timeout` (refreshing an existing
    /// block). Management sources are accepted before the block sets are
    /// looked at, so blocking them has no effect.
    pub fn block(&mut self, addr: IpAddr, timeout: Duration) -> Result<(), NftError> {
        let ms = timeout_ms(timeout)?;
        self.add(&mut [Key::block(addr)], ms)
    }

    /// Removes a block. A missing element is not an error.
    pub fn unblock(&mut self, addr: IpAddr) -> Result<(), NftError> {
        self.delete(Key::block(addr))
    }

    /// Blocks new flows from every address of `net` for `timeout`
    /// (refreshing an existing block). A `/32` or `/128` is one address
    /// ([`NftSets::block`]); a shorter prefix goes to the prefix set of its
    /// length (`block6_64` for a /64), keyed by the network address, which
    /// the ruleset installs when [`super::FirewallConfig::block_prefixes`]
    /// names that length: without it, [`NftError::MissingSet`] names the
    /// set. Host bits of `net` are ignored.
    pub fn block_net(&mut self, net: IpNet, timeout: Duration) -> Result<(), NftError> {
        let ms = timeout_ms(timeout)?;
        self.add(&mut [Key::block_net(net)], ms)
    }

    /// Removes the block of `net` (exactly that prefix: a /64 block is not
    /// removed by unblocking one of its addresses). A missing element is not
    /// an error.
    pub fn unblock_net(&mut self, net: IpNet) -> Result<(), NftError> {
        self.delete(Key::block_net(net))
    }

    /// Lists the four sets and the prefix sets (`block4_<n>`,
    /// `block6_<n>`) the table has.
    pub fn list(&mut self) -> Result<SetContents, NftError> {
        let mut out = SetContents::default();
        for set in SetId::FIXED {
            for raw in self.dump(set)? {
                decode(set, raw, &mut out)?;
            }
        }
        for set in self.prefix_sets()? {
            for raw in self.dump(set)? {
                decode(set, raw, &mut out)?;
            }
        }
        Ok(out)
    }

    fn missing(&self, set: SetId) -> NftError {
        NftError::MissingSet {
            table: self.table.to_string(),
            set: set.name().into_owned(),
        }
    }

    fn kernel(&self, op: SetOp, set: SetId, errno: Errno) -> NftError {
        if errno == Errno::ENOENT && op == SetOp::Add {
            // Adding can only miss the table or the set.
            return self.missing(set);
        }
        NftError::Kernel {
            op,
            table: self.table.to_string(),
            set: set.name().into_owned(),
            errno,
        }
    }

    /// Adds (or refreshes) `keys`, which may span several sets.
    fn add(&mut self, keys: &mut [Key], timeout_ms: u64) -> Result<(), NftError> {
        keys.sort_unstable();
        let mut unique = keys.len();
        // Dedup in place (a delete of a duplicate key would fail the batch
        // with ENOENT in Replace mode).
        if unique > 1 {
            let mut w = 1;
            for r in 1..keys.len() {
                if keys[r] != keys[w - 1] {
                    keys[w] = keys[r];
                    w += 1;
                }
            }
            unique = w;
        }
        let keys = &keys[..unique];
        let mut ops = Vec::new();
        for group in keys.chunk_by(|a, b| a.set == b.set) {
            for chunk in group.chunks(ELEMS_PER_MSG) {
                let set = chunk[0].set;
                let add = Op {
                    op: SetOp::Add,
                    set,
                    keys: chunk,
                    timeout_ms: Some(timeout_ms),
                };
                match self.refresh {
                    Refresh::Update => ops.push(add),
                    Refresh::Replace => {
                        // add (so that the delete finds it), delete, add
                        // with the new timeout: one transaction.
                        ops.push(Op {
                            op: SetOp::Add,
                            set,
                            keys: chunk,
                            timeout_ms: Some(timeout_ms),
                        });
                        ops.push(Op {
                            op: SetOp::Delete,
                            set,
                            keys: chunk,
                            timeout_ms: None,
                        });
                        ops.push(add);
                    }
                }
            }
        }
        let results = self.batch(&ops)?;
        for (op, result) in ops.iter().zip(results) {
            if let Err(errno) = result {
                return Err(self.kernel(op.op, op.set, errno));
            }
        }
        Ok(())
    }

    /// Deletes one key; ENOENT is success when the set exists.
    fn delete(&mut self, key: Key) -> Result<(), NftError> {
        let keys = [key];
        let op = Op {
            op: SetOp::Delete,
            set: key.set,
            keys: &keys,
            timeout_ms: None,
        };
        match self.batch(std::slice::from_ref(&op))?.pop() {
            Some(Ok(())) => Ok(()),
            Some(Err(Errno::ENOENT)) => {
                // The element is missing (fine), or the table or set is
                // (not fine): tell them apart.
                if self.set_exists(key.set)? {
                    Ok(())
                } else {
                    Err(self.missing(key.set))
                }
            }
            Some(Err(errno)) => Err(self.kernel(SetOp::Delete, key.set, errno)),
            None => Err(NftError::Malformed("no result for the delete")),
        }
    }

    /// Sends `ops` in one `NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END`
    /// transaction and returns each message's result, in order.
    fn batch(&mut self, ops: &[Op<'_>]) -> Result<Vec<Result<(), Errno>>, NftError> {
        let table = self.table.as_str();
        self.msg.clear();
        let begin_seq = self.sock.next_seq();
        self.msg.batch_begin(begin_seq)?;
        let mut seqs = Vec::with_capacity(ops.len());
        for op in ops {
            let seq = self.sock.next_seq();
            seqs.push(seq);
            let (ty, flags) = match op.op {
                SetOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
                _ => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
            };
            let start = self.msg.begin(nft_type(ty), flags, seq, NFPROTO_INET, 0);
            self.msg.attr_strz(NFTA_SET_ELEM_LIST_TABLE, table)?;
            self.msg.attr_strz(NFTA_SET_ELEM_LIST_SET, &op.set.name())?;
            let list = self.msg.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for key in op.keys {
                let elem = self.msg.nest_begin(NFTA_LIST_ELEM);
                let k = self.msg.nest_begin(NFTA_SET_ELEM_KEY);
                self.msg.attr(NFTA_DATA_VALUE, key.as_bytes())?;
                self.msg.nest_end(k)?;
                if let Some(ms) = op.timeout_ms {
                    self.msg.attr_be64(NFTA_SET_ELEM_TIMEOUT, ms)?;
                }
                self.msg.nest_end(elem)?;
            }
            self.msg.nest_end(list)?;
            self.msg.end(start)?;
        }
        let end_seq = self.sock.next_seq();
        self.msg.batch_end(end_seq)?;
        self.sock.send(self.msg.as_bytes())?;

        let mut results: Vec<Option<Result<(), Errno>>> = vec![None; ops.len()];
        let mut pending = ops.len();
        while pending > 0 {
            let dgram = self.sock.recv()?;
            for m in netlink::messages(dgram) {
                let m = m?;
                let Some(code) = m.status()? else { continue };
                if !m.is_error() {
                    continue;
                }
                if m.seq == begin_seq || m.seq == end_seq {
                    // The batch itself was refused (permissions, framing).
                    if code != 0 {
                        return Err(NftError::Batch {
                            errno: netlink::errno_of(code),
                        });
                    }
                    continue;
                }
                let Some(i) = seqs.iter().position(|&s| s == m.seq) else {
                    // A late answer to an earlier, abandoned request.
                    continue;
                };
                if results[i].is_none() {
                    pending -= 1;
                    results[i] = Some(if code == 0 {
                        Ok(())
                    } else {
                        Err(netlink::errno_of(code))
                    });
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Errno::EPROTO)))
            .collect())
    }

    /// Deletes the whole table over netlink (`NFT_MSG_DELTABLE` in a
    /// batch). This is how a daemon that has dropped its privileges removes
    /// its table on a clean stop: it still holds CAP_NET_ADMIN, but an `nft`
    /// process it spawned would not. A missing table is not an error.
    pub fn delete_table(&mut self) -> Result<(), NftError> {
        self.msg.clear();
        let begin_seq = self.sock.next_seq();
        self.msg.batch_begin(begin_seq)?;
        let seq = self.sock.next_seq();
        let start = self.msg.begin(
            nft_type(NFT_MSG_DELTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        self.msg.attr_strz(NFTA_TABLE_NAME, self.table.as_str())?;
        self.msg.end(start)?;
        let end_seq = self.sock.next_seq();
        self.msg.batch_end(end_seq)?;
        self.sock.send(self.msg.as_bytes())?;
        loop {
            let dgram = self.sock.recv()?;
            for m in netlink::messages(dgram) {
                let m = m?;
                let Some(code) = m.status()? else { continue };
                if !m.is_error() {
                    continue;
                }
                if m.seq == seq {
                    return match netlink::errno_of(code) {
                        _ if code == 0 => Ok(()),
                        Errno::ENOENT => Ok(()),
                        errno => Err(NftError::Batch { errno }),
                    };
                }
                if (m.seq == begin_seq || m.seq == end_seq) && code != 0 {
                    return Err(NftError::Batch {
                        errno: netlink::errno_of(code),
                    });
                }
            }
        }
    }

    /// `NFT_MSG_GETSET` for one of our sets: does it exist?
    fn set_exists(&mut self, set: SetId) -> Result<bool, NftError> {
        self.msg.clear();
        let seq = self.sock.next_seq();
        let start = self.msg.begin(
            nft_type(NFT_MSG_GETSET),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            NFPROTO_INET,
            0,
        );
        self.msg.attr_strz(NFTA_SET_TABLE, self.table.as_str())?;
        self.msg.attr_strz(NFTA_SET_NAME, &set.name())?;
        self.msg.end(start)?;
        self.sock.send(self.msg.as_bytes())?;
        loop {
            let dgram = self.sock.recv()?;
            for m in netlink::messages(dgram) {
                let m = m?;
                if m.seq != seq || !m.is_error() {
                    continue;
                }
                return match m.status()? {
                    Some(0) => Ok(true),
                    Some(code) if netlink::errno_of(code) == Errno::ENOENT => Ok(false),
                    Some(code) => Err(self.kernel(SetOp::Lookup, set, netlink::errno_of(code))),
                    None => Err(NftError::Malformed("NLMSG_ERROR without a status")),
                };
            }
        }
    }

    /// The prefix sets (`block4_<n>`, `block6_<n>`) of our table: an
    /// `NFT_MSG_GETSET` dump of the table, by name. Errors name `allow4`
    /// (the table is missing when it is).
    fn prefix_sets(&mut self) -> Result<Vec<SetId>, NftError> {
        let mut sets = self.dump_msgs(SetId::Allow4, SetOp::Lookup, |m, out| {
            for attr in m.nft_attrs()? {
                let (ty, payload) = attr?;
                if ty == NFTA_SET_NAME {
                    let name = payload.split(|&b| b == 0).next().unwrap_or_default();
                    let name = std::str::from_utf8(name).unwrap_or_default();
                    if let Some(set @ (SetId::Block4Net(_) | SetId::Block6Net(_))) =
                        SetId::from_name(name)
                    {
                        out.push(set);
                    }
                }
            }
            Ok(())
        })?;
        sets.sort_unstable();
        Ok(sets)
    }

    /// `NFT_MSG_GETSETELEM` dump of one set: the raw elements.
    fn dump(&mut self, set: SetId) -> Result<Vec<RawElem>, NftError> {
        self.dump_msgs(set, SetOp::List, parse_elements)
    }

    /// A dump in our table: `NFT_MSG_GETSETELEM` of `set` (op
    /// [`SetOp::List`]), or `NFT_MSG_GETSET` of every set (any other op,
    /// errors blamed on `set`); `parse` reads each answer message. Restarted
    /// when a concurrent change interrupts it.
    fn dump_msgs<T>(
        &mut self,
        set: SetId,
        op: SetOp,
        parse: impl Fn(netlink::NlMsg<'_>, &mut Vec<T>) -> Result<(), NftError>,
    ) -> Result<Vec<T>, NftError> {
        let (request, answer) = if op == SetOp::List {
            (NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM)
        } else {
            (NFT_MSG_GETSET, NFT_MSG_NEWSET)
        };
        'retry: for _ in 0..DUMP_RETRIES {
            self.msg.clear();
            let seq = self.sock.next_seq();
            let start = self.msg.begin(
                nft_type(request),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                NFPROTO_INET,
                0,
            );
            // NFTA_SET_TABLE and NFTA_SET_ELEM_LIST_TABLE are both 1.
            self.msg
                .attr_strz(NFTA_SET_ELEM_LIST_TABLE, self.table.as_str())?;
            if op == SetOp::List {
                self.msg.attr_strz(NFTA_SET_ELEM_LIST_SET, &set.name())?;
            }
            self.msg.end(start)?;
            self.sock.send(self.msg.as_bytes())?;
            let mut items = Vec::new();
            let mut interrupted = false;
            loop {
                let dgram = self.sock.recv()?;
                for m in netlink::messages(dgram) {
                    let m = m?;
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.dump_interrupted();
                    if m.is_done() || m.is_error() {
                        match m.status()? {
                            Some(0) | None => {}
                            Some(code) => {
                                let errno = netlink::errno_of(code);
                                if errno == Errno::ENOENT {
                                    return Err(self.missing(set));
                                }
                                return Err(NftError::Kernel {
                                    op,
                                    table: self.table.to_string(),
                                    set: set.name().into_owned(),
                                    errno,
                                });
                            }
                        }
                        if m.is_done() {
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(items);
                        }
                        continue;
                    }
                    if m.ty != nft_type(answer) {
                        continue;
                    }
                    parse(m, &mut items)?;
                }
            }
        }
        Err(self.kernel(op, set, Errno::EINTR))
    }

    /// See [`NftSets::open`].
    fn probe_refresh(&mut self) -> Result<Refresh, NftError> {
        let addr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 255));
        let key = Key::allow(addr, Proto::Tcp, 0);
        let add = |ms| Op {
            op: SetOp::Add,
            set: key.set,
            keys: std::slice::from_ref(&key),
            timeout_ms: Some(ms),
        };
        let first = 3_600_000;
        let second = 7_200_000;
        let outcome = (|| {
            for ms in [first, second] {
                if let Some(Err(errno)) = self.batch(&[add(ms)])?.pop() {
                    return Err(self.kernel(SetOp::Add, key.set, errno));
                }
            }
            let mut seen = SetContents::default();
            for raw in self.dump(key.set)? {
                decode(key.set, raw, &mut seen)?;
            }
            Ok(match seen.allowed(addr, Proto::Tcp, 0) {
                Some(e) if e.timeout == Some(Duration::from_millis(second)) => Refresh::Update,
                _ => Refresh::Replace,
            })
        })();
        // Remove the probe whatever happened.
        let cleanup = self.delete(key);
        let refresh = outcome?;
        cleanup?;
        Ok(refresh)
    }
}

/// Lists the sets of `inet <table>` (opens a socket for the purpose; no
/// probe element is added).
pub fn list(table: &str) -> Result<SetContents, NftError> {
    let mut sets = NftSets {
        sock: NlSocket::open()?,
        table: TableName::new(table)?,
        refresh: Refresh::Replace,
        msg: MsgBuf::new(),
    };
    sets.list()
}

fn timeout_ms(timeout: Duration) -> Result<u64, NftError> {
    let invalid = NftError::InvalidTimeout {
        timeout,
        max: Duration::from_millis(MAX_TIMEOUT_MS),
    };
    // Round up: a sub-millisecond remainder must not shorten the timeout
    // to zero.
    let ms = u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).map_err(|_| {
        NftError::InvalidTimeout {
            timeout,
            max: Duration::from_millis(MAX_TIMEOUT_MS),
        }
    })?;
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        return Err(invalid);
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert!(matches!(
            timeout_ms(Duration::ZERO),
            Err(NftError::InvalidTimeout { .. })
        ));
        assert_eq!(timeout_ms(Duration::from_nanos(1)).expect("test value"), 1);
        assert_eq!(
            timeout_ms(Duration::from_millis(1500)).expect("test value"),
            1500
        );
        assert!(timeout_ms(Duration::MAX).is_err());
        assert!(timeout_ms(Duration::from_millis(MAX_TIMEOUT_MS)).is_ok());
        assert!(timeout_ms(Duration::from_millis(MAX_TIMEOUT_MS + 1)).is_err());
    }
}
