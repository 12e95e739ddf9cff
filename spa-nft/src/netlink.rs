//! nfnetlink framing: building nf_tables requests, parsing the kernel's
//! replies, and the `NETLINK_NETFILTER` socket itself.
//!
//! Layouts (all in host byte order unless said otherwise), from uapi
//! `linux/netlink.h` and `linux/netfilter/nfnetlink.h`:
//!
//! * `struct nlmsghdr` (16 bytes): `u32 len, u16 type, u16 flags, u32 seq,
//!   u32 pid`, followed by
//! * `struct nfgenmsg` (4 bytes): `u8 family, u8 version, be16 res_id`,
//!   followed by
//! * attributes, `struct nlattr` (4 bytes): `u16 len, u16 type`, then the
//!   payload, each padded to 4 bytes (`NLA_ALIGNTO`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::error::NftError;

// linux/netlink.h (through libc, whose constants are c_int).
pub(crate) const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
pub(crate) const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
pub(crate) const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
pub(crate) const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

// linux/netfilter/nfnetlink.h and linux/netfilter.h.
const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
const NFNL_MSG_BATCH_BEGIN: u16 = libc::NFNL_MSG_BATCH_BEGIN as u16;
const NFNL_MSG_BATCH_END: u16 = libc::NFNL_MSG_BATCH_END as u16;
const NFNETLINK_V0: u8 = libc::NFNETLINK_V0 as u8;
const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
pub(crate) const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;

// linux/netfilter/nf_tables.h: enum nf_tables_msg_types.
pub(crate) const NFT_MSG_GETSET: u8 = libc::NFT_MSG_GETSET as u8;
pub(crate) const NFT_MSG_NEWSET: u8 = libc::NFT_MSG_NEWSET as u8;
pub(crate) const NFT_MSG_DELTABLE: u8 = libc::NFT_MSG_DELTABLE as u8;
/// `NFTA_TABLE_NAME` (linux/netfilter/nf_tables.h).
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFT_MSG_NEWSETELEM: u8 = libc::NFT_MSG_NEWSETELEM as u8;
pub(crate) const NFT_MSG_GETSETELEM: u8 = libc::NFT_MSG_GETSETELEM as u8;
pub(crate) const NFT_MSG_DELSETELEM: u8 = libc::NFT_MSG_DELSETELEM as u8;

// enum nft_set_attributes.
pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
// enum nft_set_elem_list_attributes.
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes.
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes.
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
pub(crate) const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
// enum nft_data_attributes.
pub(crate) const NFTA_DATA_VALUE: u16 = 1;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;

/// How long to wait for the kernel's answer before giving up. The kernel
/// answers a set-element batch in microseconds; this only bounds a wedged
/// socket.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_millis(REPLY_TIMEOUT_MS as u64);
const REPLY_TIMEOUT_MS: i64 = 2000;

/// Receive buffer: large enough for any datagram the kernel sends us (dump
/// parts are at most a few pages; an error reply echoes our request, which
/// [`MsgBuf`] keeps far below this).
const RECV_BUF: usize = 256 * 1024;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink message type of an nf_tables message.
pub(crate) const fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg as u16
}

/// A buffer of one or more netlink messages under construction.
#[derive(Debug, Default)]
pub(crate) struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Starts a message with its nfgenmsg; returns its offset for
    /// [`MsgBuf::end`].
    pub(crate) fn begin(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by end()
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.push(family);
        self.buf.push(NFNETLINK_V0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Closes the message opened at `start`.
    pub(crate) fn end(&mut self, start: usize) -> Result<(), NftError> {
        let len = self.buf.len() - start;
        let len32 = u32::try_from(len).map_err(|_| NftError::TooLarge(len))?;
        self.buf[start..start + 4].copy_from_slice(&len32.to_ne_bytes());
        Ok(())
    }

    /// `NFNL_MSG_BATCH_BEGIN` for the nf_tables subsystem.
    pub(crate) fn batch_begin(&mut self, seq: u32) -> Result<(), NftError> {
        let start = self.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.end(start)
    }

    /// `NFNL_MSG_BATCH_END` for the nf_tables subsystem.
    pub(crate) fn batch_end(&mut self, seq: u32) -> Result<(), NftError> {
        let start = self.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.end(start)
    }

    /// An attribute with a raw payload.
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) -> Result<(), NftError> {
        let len = NLA_HDRLEN + payload.len();
        let len16 = u16::try_from(len).map_err(|_| NftError::TooLarge(len))?;
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        Ok(())
    }

    /// A NUL-terminated string attribute (`NLA_STRING`, as libmnl's
    /// `mnl_attr_put_strz`).
    pub(crate) fn attr_strz(&mut self, ty: u16, s: &str) -> Result<(), NftError> {
        let len = NLA_HDRLEN + s.len() + 1;
        let len16 = u16::try_from(len).map_err(|_| NftError::TooLarge(len))?;
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
        Ok(())
    }

    /// A big-endian u64 attribute (`NLA_U64` in nf_tables is network order).
    pub(crate) fn attr_be64(&mut self, ty: u16, v: u64) -> Result<(), NftError> {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Opens a nested attribute; returns its offset for
    /// [`MsgBuf::nest_end`].
    pub(crate) fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes the nested attribute opened at `start`.
    pub(crate) fn nest_end(&mut self, start: usize) -> Result<(), NftError> {
        let len = self.buf.len() - start;
        let len16 = u16::try_from(len).map_err(|_| NftError::TooLarge(len))?;
        self.buf[start..start + 2].copy_from_slice(&len16.to_ne_bytes());
        Ok(())
    }

    fn pad(&mut self) {
        let padded = align4(self.buf.len());
        self.buf.resize(padded, 0);
    }
}

/// One netlink message of a datagram from the kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NlMsg<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// Everything after the 16-byte header.
    pub(crate) payload: &'a [u8],
}

impl<'a> NlMsg<'a> {
    /// For `NLMSG_ERROR`: the error number (0 for an acknowledgement).
    /// For `NLMSG_DONE`: the dump's final status. `None` for other types.
    pub(crate) fn status(&self) -> Result<Option<i32>, NftError> {
        if self.ty != NLMSG_ERROR && self.ty != NLMSG_DONE {
            return Ok(None);
        }
        let Some(code) = self.payload.get(..4) else {
            if self.ty == NLMSG_DONE {
                // An NLMSG_DONE without a payload means success.
                return Ok(Some(0));
            }
            return Err(NftError::Malformed(
                "NLMSG_ERROR shorter than its error code",
            ));
        };
        let mut b = [0u8; 4];
        b.copy_from_slice(code);
        Ok(Some(i32::from_ne_bytes(b)))
    }

    pub(crate) fn is_error(&self) -> bool {
        self.ty == NLMSG_ERROR
    }

    pub(crate) fn is_done(&self) -> bool {
        self.ty == NLMSG_DONE
    }

    pub(crate) fn dump_interrupted(&self) -> bool {
        self.flags & NLM_F_DUMP_INTR != 0
    }

    /// The attributes of an nf_tables message (after its nfgenmsg).
    pub(crate) fn nft_attrs(&self) -> Result<Attrs<'a>, NftError> {
        let body = self.payload.get(NFGENMSG_LEN..).ok_or(NftError::Malformed(
            "nf_tables message shorter than its nfgenmsg",
        ))?;
        Ok(Attrs { buf: body })
    }
}

/// Converts a negative kernel error code into an [`Errno`].
pub(crate) fn errno_of(code: i32) -> Errno {
    Errno::from_raw(code.saturating_neg())
}

/// Iterator over the messages of a datagram.
#[derive(Debug)]
pub(crate) struct Messages<'a> {
    buf: &'a [u8],
}

pub(crate) fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { buf }
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<NlMsg<'a>, NftError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let parsed = (|| {
            let len = read_u32(self.buf, 0).ok_or(NftError::Malformed("truncated nlmsghdr"))?;
            let len = usize::try_from(len).map_err(|_| NftError::Malformed("nlmsg_len"))?;
            if len < NLMSG_HDRLEN || len > self.buf.len() {
                return Err(NftError::Malformed("nlmsg_len out of bounds"));
            }
            let ty = read_u16(self.buf, 4).ok_or(NftError::Malformed("truncated nlmsghdr"))?;
            let flags = read_u16(self.buf, 6).ok_or(NftError::Malformed("truncated nlmsghdr"))?;
            let seq = read_u32(self.buf, 8).ok_or(NftError::Malformed("truncated nlmsghdr"))?;
            let msg = NlMsg {
                ty,
                flags,
                seq,
                payload: &self.buf[NLMSG_HDRLEN..len],
            };
            let next = align4(len).min(self.buf.len());
            Ok((msg, next))
        })();
        match parsed {
            Ok((msg, next)) => {
                self.buf = &self.buf[next..];
                Some(Ok(msg))
            }
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

/// Iterator over a run of attributes: `(type without flags, payload)`.
#[derive(Debug, Clone)]
pub(crate) struct Attrs<'a> {
    buf: &'a [u8],
}

pub(crate) fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NftError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            // Trailing padding (or nothing) is fine.
            return None;
        }
        let (Some(len), Some(ty)) = (read_u16(self.buf, 0), read_u16(self.buf, 2)) else {
            self.buf = &[];
            return Some(Err(NftError::Malformed("truncated attribute header")));
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(NftError::Malformed("attribute length out of bounds")));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some(Ok((ty & NLA_TYPE_MASK, payload)))
    }
}

/// Reads a big-endian u64 attribute payload.
pub(crate) fn be64(payload: &[u8]) -> Result<u64, NftError> {
    let b: [u8; 8] = payload
        .try_into()
        .map_err(|_| NftError::Malformed("64-bit attribute of the wrong size"))?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a big-endian u32 attribute payload.
pub(crate) fn be32(payload: &[u8]) -> Result<u32, NftError> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| NftError::Malformed("32-bit attribute of the wrong size"))?;
    Ok(u32::from_be_bytes(b))
}

/// A `NETLINK_NETFILTER` socket, bound to a kernel-chosen port id.
#[derive(Debug)]
pub(crate) struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    rbuf: Vec<u8>,
}

impl NlSocket {
    pub(crate) fn open() -> Result<Self, NftError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|errno| NftError::Socket {
            call: "socket",
            errno,
        })?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|errno| NftError::Socket {
            call: "bind",
            errno,
        })?;
        let tv = TimeVal::milliseconds(REPLY_TIMEOUT_MS);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(|errno| NftError::Socket {
            call: "setsockopt(SO_RCVTIMEO)",
            errno,
        })?;
        // Start from a value that differs between sockets, so that a stale
        // reply is not taken for an answer to this socket's request.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(Self {
            fd,
            seq,
            rbuf: vec![0u8; RECV_BUF],
        })
    }

    /// The next sequence number.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), NftError> {
        loop {
            match send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => {
                    return Err(NftError::Socket {
                        call: "send (short write)",
                        errno: Errno::EMSGSIZE,
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(errno) => {
                    return Err(NftError::Socket {
                        call: "send",
                        errno,
                    });
                }
            }
        }
    }

    /// Receives one datagram (one or more messages).
    pub(crate) fn recv(&mut self) -> Result<&[u8], NftError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.rbuf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.rbuf.len() => {
                    return Err(NftError::Malformed(
                        "datagram larger than the receive buffer",
                    ));
                }
                Ok(n) => return Ok(&self.rbuf[..n]),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(NftError::NoReply(REPLY_TIMEOUT)),
                Err(errno) => {
                    return Err(NftError::Socket {
                        call: "recv",
                        errno,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let mut m = MsgBuf::new();
        let start = m.begin(
            nft_type(NFT_MSG_NEWSETELEM),
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            NFPROTO_INET,
            0,
        );
        m.attr_strz(NFTA_SET_ELEM_LIST_TABLE, "spa")
            .expect("test value");
        let nest = m.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        m.attr_be64(NFTA_SET_ELEM_TIMEOUT, 1000)
            .expect("test value");
        m.nest_end(nest).expect("test value");
        m.end(start).expect("test value");
        let b = m.as_bytes();
        // header 16 + nfgenmsg 4 + "spa\0" attr 8 + nest (4 + 12) = 44
        assert_eq!(b.len(), 44);
        assert_eq!(read_u32(b, 0), Some(44));
        assert_eq!(read_u16(b, 4), Some(0x0a0c));
        assert_eq!(read_u32(b, 8), Some(7));
        assert_eq!(b[16], 1); // NFPROTO_INET
        let mut table_attr = Vec::new();
        table_attr.extend_from_slice(&8u16.to_ne_bytes());
        table_attr.extend_from_slice(&NFTA_SET_ELEM_LIST_TABLE.to_ne_bytes());
        table_attr.extend_from_slice(b"spa\0");
        assert_eq!(&b[20..28], &table_attr[..]);
        // The nest carries NLA_F_NESTED.
        assert_eq!(
            read_u16(b, 30),
            Some(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED)
        );
        let msgs: Vec<_> = messages(b).collect::<Result<_, _>>().expect("test value");
        assert_eq!(msgs.len(), 1);
        let attrs: Vec<_> = msgs[0]
            .nft_attrs()
            .expect("test value")
            .collect::<Result<_, _>>()
            .expect("test value");
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (NFTA_SET_ELEM_LIST_TABLE, &b"spa\0"[..]));
        assert_eq!(attrs[1].0, NFTA_SET_ELEM_LIST_ELEMENTS);
        let inner: Vec<_> = super::attrs(attrs[1].1)
            .collect::<Result<_, _>>()
            .expect("test value");
        assert_eq!(inner[0].0, NFTA_SET_ELEM_TIMEOUT);
        assert_eq!(be64(inner[0].1).expect("test value"), 1000);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        // Length beyond the buffer.
        let mut b = vec![0u8; 16];
        b[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(
            messages(&b).next(),
            Some(Err(NftError::Malformed(_)))
        ));
        // Length below the header size.
        b[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(matches!(
            messages(&b).next(),
            Some(Err(NftError::Malformed(_)))
        ));
        // Attribute longer than its buffer.
        let a = [200u8, 0, 1, 0, 0, 0];
        assert!(matches!(
            attrs(&a).next(),
            Some(Err(NftError::Malformed(_)))
        ));
        // NLMSG_ERROR without its code.
        let m = NlMsg {
            ty: NLMSG_ERROR,
            flags: 0,
            seq: 0,
            payload: &[1, 2],
        };
        assert!(m.status().is_err());
        assert!(be64(&[1, 2, 3]).is_err());
        // Arbitrary bytes never panic.
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            for m in messages(&junk).flatten() {
                let _ = m.status();
                if let Ok(a) = m.nft_attrs() {
                    a.for_each(drop);
                }
            }
        }
    }
}
