//! The data path of spa's mutual-TLS tunnel (SPEC.md §12: green's tunnel
//! endpoint and `spa-client connect`), shared by both ends.
//!
//! One [`TlsPipe`] drives one TLS 1.3 connection over a TCP socket with
//! rustls's *unbuffered* API, and [`TlsPipe::splice`] copies between it and
//! a plaintext pair (a socket, or stdin/stdout) on one thread with
//! poll(2).
//!
//! Why this is written here rather than taken from a library: rustls's
//! buffered `Connection` reads the socket 4 KiB per `read_tls` call and
//! copies every plaintext byte once more through its `Reader`; at tunnel
//! speeds (several hundred MB/s on the 2-core bench machine) the syscalls
//! and copies cost more than the AES-GCM itself (BENCHMARKS.md, "Tunnel").
//! The unbuffered API lets the caller own the buffers: the socket is read
//! in chunks of up to [`MAX_BUFFER`] straight into the buffer rustls
//! decrypts from, each decrypted record is written to the plaintext side
//! directly, and plaintext is encrypted straight into the buffer that is
//! written to the socket. Tokio-rustls and the other async wrappers sit on
//! the buffered API. Buffers start at [`MIN_BUFFER`] and grow only when a
//! read fills them, so an idle connection holds a few KiB of them.
//!
//! Flow control: the socket is read only while less than [`HIGH_WATER`]
//! plaintext waits for the plaintext side, and the plaintext side is read
//! only while less than [`HIGH_WATER`] ciphertext waits for the socket, so
//! a slow reader on either side stops the sender (TCP's own window). A
//! connection's buffers stay below about 6 MiB (ciphertext read ≤ 1 MiB,
//! plaintext waiting ≤ 2 MiB, plaintext read ≤ 1 MiB, ciphertext waiting
//! ≤ 2 MiB), reached only by bulk transfers both ways into slow readers;
//! an idle connection holds a few KiB. The sizes were chosen by
//! measurement: 1 MiB reads moved more per CPU second than 256 KiB,
//! 512 KiB or 2 MiB on the bench machine (BENCHMARKS.md, "Tunnel").
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};

/// A buffer's first size; it doubles after each read that fills it (a
/// TLS record of up to 16 KiB of payload makes it grow to hold one).
pub const MIN_BUFFER: usize = 4 * 1024;

/// Largest buffer for one direction's reads.
pub const MAX_BUFFER: usize = 1024 * 1024;

/// Bytes waiting for a side above which the other side is not read.
pub const HIGH_WATER: usize = 1024 * 1024;

/// Longest line [`TlsPipe::read_line`] accepts.
pub const MAX_LINE: usize = 256;

/// Why a tunnel connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket or the plaintext side.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The TLS peer or its certificate.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A deadline passed.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The peer closed before the step finished.
    #[error("the peer closed the connection during {0}")]
    Closed(&'static str),
    /// A line longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// A line that is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// The peer sent 0-RTT data, which neither end enables.
    #[error("unexpected early data")]
    EarlyData,
    /// rustls refused to encrypt more (the key's record limit).
    #[error("TLS record limit reached")]
    Exhausted,
}

/// An unbuffered rustls connection, client or server.
pub trait Unbuffered: Send {
    /// Client or server data.
    type Data;
    /// [`UnbufferedConnectionCommon::process_tls_records`].
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The common state (handshake status, peer certificates).
    fn common(&self) -> &UnbufferedConnectionCommon<Self::Data>;
}

impl Unbuffered for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &UnbufferedConnectionCommon<Self::Data> {
        self
    }
}

impl Unbuffered for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
    fn common(&self) -> &UnbufferedConnectionCommon<Self::Data> {
        self
    }
}

/// Bytes `[start, end)` of a zero-initialised buffer that grows from
/// [`MIN_BUFFER`] to [`MAX_BUFFER`] when a read fills it.
#[derive(Debug, Default)]
struct Window {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the space it was offered.
    full_read: bool,
}

impl Window {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space at the end, at least `want` bytes (moving the filled
    /// bytes to the front, then growing, as needed).
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.buf.len() - self.end < want && self.start > 0 {
            self.compact();
        }
        if self.buf.len() - self.end < want {
            self.buf.resize((self.end + want).max(MIN_BUFFER), 0);
        }
        &mut self.buf[self.end..]
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    fn commit(&mut self, n: usize) {
        self.end += n;
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// One read from `r` into the free space. The buffer starts at
    /// [`MIN_BUFFER`] and doubles (up to [`MAX_BUFFER`]) after a read that
    /// filled all the space offered. Returns the bytes read (0: EOF).
    fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        let target = if self.buf.is_empty() {
            MIN_BUFFER
        } else if self.full_read {
            (self.buf.len() * 2).min(MAX_BUFFER)
        } else {
            self.buf.len()
        };
        if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.compact();
        }
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        let space = &mut self.buf[self.end..];
        if space.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let offered = space.len();
        let n = r.read(space)?;
        self.full_read = n == offered;
        self.end += n;
        Ok(n)
    }

    /// Whether a read has room (the buffer is not at its limit and full).
    fn has_room(&self) -> bool {
        self.end < self.buf.len() || self.start > 0 || self.buf.len() < MAX_BUFFER
    }

    /// Writes the filled bytes to `w` until it would block; returns whether
    /// all were written.
    fn write_to(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            match w.write(self.filled()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// One TLS connection over a TCP socket (kept non-blocking).
pub struct TlsPipe<C> {
    conn: C,
    sock: Arc<TcpStream>,
    /// TLS bytes read, not yet processed.
    rx: Window,
    /// TLS bytes to send.
    tx: Window,
    /// Plaintext received, not yet handed on.
    plain: Window,
    /// The peer sent close_notify (or the socket reached EOF).
    peer_closed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
}

impl<C> std::fmt::Debug for TlsPipe<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPipe")
            .field("sock", &self.sock)
            .field("rx", &self.rx.len())
            .field("tx", &self.tx.len())
            .field("plain", &self.plain.len())
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<C: Unbuffered> TlsPipe<C> {
    /// Wraps a connected socket (made non-blocking). The socket may be
    /// shared (e.g. to shut it down from another thread, which ends
    /// [`Self::splice`]).
    pub fn new(conn: C, sock: impl Into<Arc<TcpStream>>) -> io::Result<Self> {
        let sock = sock.into();
        sock.set_nonblocking(true)?;
        Ok(Self {
            conn,
            sock,
            rx: Window::default(),
            tx: Window::default(),
            plain: Window::default(),
            peer_closed: false,
            close_sent: false,
        })
    }

    /// The rustls connection (peer certificates, handshake state).
    pub fn connection(&self) -> &UnbufferedConnectionCommon<C::Data> {
        self.conn.common()
    }

    /// The socket.
    pub fn socket(&self) -> &Arc<TcpStream> {
        &self.sock
    }

    /// Runs the rustls state machine over the bytes received: decrypted
    /// records are appended to `plain` (and later written to the plaintext
    /// side in one write: measured faster than one write per 16 KiB record,
    /// BENCHMARKS.md), handshake messages and alerts to `tx`; `outgoing`
    /// (if any) is encrypted into `tx` once the connection may send, then
    /// emptied; with `close`, a close_notify follows. Returns whether the
    /// connection reached a state where it may send.
    fn pump(&mut self, mut outgoing: Option<&mut Window>, close: bool) -> Result<bool, Error> {
        let Self {
            conn,
            rx,
            tx,
            plain,
            peer_closed,
            close_sent,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } = conn.process(rx.filled_mut());
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    rx.consume(discard);
                    return Err(e.into());
                }
            };
            let mut writable = false;
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec?;
                        discard += rec.discard;
                        plain.extend(rec.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut e) => loop {
                    let space = tx.spare(512);
                    match e.encode(space) {
                        Ok(n) => {
                            tx.commit(n);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(s)) => {
                            tx.spare(s.required_size);
                        }
                        Err(EncodeError::AlreadyEncoded) => break,
                    }
                },
                // `tx` keeps the encoded bytes in order; they are written
                // to the socket by the caller before anything encoded later.
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    writable = true;
                    stop = true;
                    if let Some(out) = outgoing.as_deref_mut()
                        && !out.is_empty()
                    {
                        let records = out.len().div_ceil(16 * 1024);
                        let mut want = out.len() + records * 32;
                        loop {
                            let space = tx.spare(want);
                            match w.encrypt(out.filled(), space) {
                                Ok(n) => {
                                    tx.commit(n);
                                    break;
                                }
                                Err(EncryptError::InsufficientSize(s)) => want = s.required_size,
                                Err(EncryptError::EncryptExhausted) => {
                                    return Err(Error::Exhausted);
                                }
                            }
                        }
                        out.consume(out.len());
                    }
                    if close && !*close_sent {
                        let mut want = 64;
                        loop {
                            let space = tx.spare(want);
                            match w.queue_close_notify(space) {
                                Ok(n) => {
                                    tx.commit(n);
                                    break;
                                }
                                Err(EncryptError::InsufficientSize(s)) => want = s.required_size,
                                Err(EncryptError::EncryptExhausted) => {
                                    return Err(Error::Exhausted);
                                }
                            }
                        }
                        *close_sent = true;
                    }
                }
                ConnectionState::PeerClosed => *peer_closed = true,
                ConnectionState::Closed => {
                    *peer_closed = true;
                    stop = true;
                }
                ConnectionState::ReadEarlyData(_) => return Err(Error::EarlyData),
                // BlockedHandshake, and states of later rustls versions:
                // more bytes are needed.
                _ => stop = true,
            }
            rx.consume(discard);
            if stop {
                return Ok(writable);
            }
        }
    }

    /// Sends what `tx` holds until the socket would block; returns whether
    /// all was sent.
    fn flush(&mut self) -> io::Result<bool> {
        self.tx.write_to(&mut &*self.sock)
    }

    /// Reads the socket once into `rx`; returns the bytes read (0: EOF).
    fn fill(&mut self) -> io::Result<usize> {
        self.rx.read_from(&mut &*self.sock)
    }

    /// After a TLS error: sends the alert rustls queued, best effort.
    fn send_alert(&mut self) {
        let _ = self.pump(None, false);
        let _ = self.flush();
    }

    fn wait(&self, events: PollFlags, deadline: Instant, what: &'static str) -> Result<(), Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(what));
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.sock.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(Error::Timeout(what)),
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(Error::Io(e.into())),
        }
    }

    fn flush_until(&mut self, deadline: Instant, what: &'static str) -> Result<(), Error> {
        while !self.flush()? {
            self.wait(PollFlags::POLLOUT, deadline, what)?;
        }
        Ok(())
    }

    /// Reads more from the socket, waiting until `deadline`.
    fn fill_until(&mut self, deadline: Instant, what: &'static str) -> Result<(), Error> {
        loop {
            match self.fill() {
                Ok(0) => return Err(Error::Closed(what)),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLIN, deadline, what)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Completes the handshake by `deadline`. Application data that
    /// arrives with the peer's last flight is kept for [`Self::read_line`]
    /// and [`Self::splice`]. On a TLS error the alert goes to the peer.
    pub fn handshake(&mut self, deadline: Instant) -> Result<(), Error> {
        let r = self.handshake_inner(deadline);
        if matches!(r, Err(Error::Tls(_))) {
            self.send_alert();
        }
        r
    }

    fn handshake_inner(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            self.pump(None, false)?;
            self.flush_until(deadline, "the TLS handshake")?;
            if !self.conn.common().is_handshaking() {
                return Ok(());
            }
            self.fill_until(deadline, "the TLS handshake")?;
        }
    }

    /// Sends `bytes` (after the handshake) by `deadline`.
    pub fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), Error> {
        let mut out = Window::default();
        out.extend(bytes);
        while !out.is_empty() {
            if !self.pump(Some(&mut out), false)? {
                self.fill_until(deadline, "a write")?;
            }
        }
        self.flush_until(deadline, "a write")
    }

    /// Sends close_notify and shuts down the socket's sending side, best
    /// effort (`deadline` bounds the wait).
    pub fn close(&mut self, deadline: Instant) {
        if !self.close_sent {
            let _ = self.pump(None, true);
        }
        let _ = self.flush_until(deadline, "the close");
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// Reads one `\n`-terminated line by `deadline`; the bytes after it
    /// stay for [`Self::splice`].
    pub fn read_line(&mut self, deadline: Instant) -> Result<String, Error> {
        loop {
            if let Some(i) = self.plain.filled().iter().position(|b| *b == b'\n') {
                let line = String::from_utf8(self.plain.filled()[..i].to_vec())
                    .map_err(|_| Error::NotUtf8)?;
                self.plain.consume(i + 1);
                return Ok(line);
            }
            if self.plain.len() > MAX_LINE {
                return Err(Error::LineTooLong);
            }
            if self.peer_closed {
                return Err(Error::Closed("a line"));
            }
            let r = self.pump(None, false);
            if let Err(e) = r {
                self.send_alert();
                return Err(e);
            }
            self.flush_until(deadline, "a line")?;
            if self.plain.filled().contains(&b'\n') || self.peer_closed {
                continue;
            }
            self.fill_until(deadline, "a line")?;
        }
    }

    /// Copies both ways between the TLS peer and a plaintext pair
    /// (`plain_r`, `plain_w`: one socket, or two pipes or files) until both
    /// directions have ended, or, with `until_peer_done`, until the TLS
    /// peer has finished sending and its bytes are written. At the plain
    /// side's EOF the peer gets close_notify; at the peer's, `shut_w`
    /// half-closes `plain_w`.
    ///
    /// The TLS socket is non-blocking; the plain side may be either (it is
    /// read only when poll(2) says readable; a blocking `plain_w` makes a
    /// slow reader hold up both directions, a non-blocking one only its
    /// own).
    pub fn splice<R, W>(
        &mut self,
        plain_r: &mut R,
        plain_w: &mut W,
        until_peer_done: bool,
        mut shut_w: impl FnMut(&mut W),
    ) -> Result<(), Error>
    where
        R: Read + AsFd,
        W: Write + AsFd,
    {
        let r = self.splice_inner(plain_r, plain_w, until_peer_done, &mut shut_w);
        if matches!(r, Err(Error::Tls(_))) {
            self.send_alert();
        }
        r
    }

    fn splice_inner<R, W>(
        &mut self,
        plain_r: &mut R,
        plain_w: &mut W,
        until_peer_done: bool,
        shut_w: &mut dyn FnMut(&mut W),
    ) -> Result<(), Error>
    where
        R: Read + AsFd,
        W: Write + AsFd,
    {
        // Plaintext read from `plain_r`, not yet encrypted.
        let mut outgoing = Window::default();
        let mut plain_eof = false;
        let mut plain_shut = false;
        let mut tcp_eof = false;
        loop {
            // Plaintext for `plain_w`, then whatever the TLS bytes held
            // decrypt to, then our plaintext and close_notify into `tx`.
            self.pump(Some(&mut outgoing), plain_eof)?;
            let w_blocked = !self.plain.write_to(plain_w)?;
            let tx_blocked = !self.flush()?;
            if tcp_eof && !self.peer_closed {
                // EOF without close_notify: nothing more will come.
                self.peer_closed = true;
            }
            if self.peer_closed && self.plain.is_empty() && !plain_shut {
                let _ = plain_w.flush();
                shut_w(plain_w);
                plain_shut = true;
            }
            if plain_shut && (until_peer_done || (plain_eof && self.tx.is_empty())) {
                return Ok(());
            }

            let mut tls_ev = PollFlags::empty();
            if !self.peer_closed && !tcp_eof && self.plain.len() < HIGH_WATER && self.rx.has_room()
            {
                tls_ev |= PollFlags::POLLIN;
            }
            if tx_blocked {
                tls_ev |= PollFlags::POLLOUT;
            }
            let r_ev = if !plain_eof && self.tx.len() < HIGH_WATER && outgoing.is_empty() {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            };
            let w_ev = if w_blocked {
                PollFlags::POLLOUT
            } else {
                PollFlags::empty()
            };
            if tls_ev.is_empty() && r_ev.is_empty() && w_ev.is_empty() {
                // Nothing can move: the peer is done and so is the plain
                // side, or both sides are stuck on each other.
                return Ok(());
            }
            let mut fds = [
                PollFd::new(self.sock.as_fd(), tls_ev),
                PollFd::new(plain_r.as_fd(), r_ev),
                PollFd::new(plain_w.as_fd(), w_ev),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Io(e.into())),
            }
            let ready = |f: &PollFd<'_>| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            };
            let tls_ready = tls_ev.contains(PollFlags::POLLIN) && ready(&fds[0]);
            let plain_ready = !r_ev.is_empty() && ready(&fds[1]);
            if tls_ready {
                match self.fill() {
                    Ok(0) => tcp_eof = true,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if plain_ready {
                match outgoing.read_from(plain_r) {
                    Ok(0) => plain_eof = true,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Raises the soft limit on open files toward `want`, at most to the hard
/// limit (a process serving many tunnel connections needs a few
/// descriptors each). Returns the soft limit before and after.
pub fn raise_open_file_limit(want: u64) -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok((soft, soft));
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
    Ok((soft, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A reader that hands out `data` in chunks of the given sizes.
    struct Chunks {
        data: VecDeque<u8>,
        sizes: Vec<usize>,
    }

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let want = self.sizes.pop().unwrap_or(usize::MAX).max(1);
            let n = want.min(buf.len()).min(self.data.len());
            for b in buf.iter_mut().take(n) {
                *b = self.data.pop_front().unwrap_or(0);
            }
            Ok(n)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Extend(Vec<u8>),
        Consume(usize),
        Read(usize),
        Spare(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..20_000).prop_map(Op::Extend),
            (0usize..70_000).prop_map(Op::Consume),
            (1usize..120_000).prop_map(Op::Read),
            (0usize..70_000).prop_map(Op::Spare),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The window behaves as a byte queue whatever the order of
        /// appends, reads, partial consumption and reservations, and a
        /// read never grows it beyond MAX_BUFFER.
        #[test]
        fn window_is_a_byte_queue(ops in proptest::collection::vec(op(), 1..40)) {
            let mut w = Window::default();
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut counter = 0u8;
            for op in ops {
                match op {
                    Op::Extend(b) => {
                        w.extend(&b);
                        model.extend(b);
                    }
                    Op::Consume(n) => {
                        let n = n.min(w.len());
                        w.consume(n);
                        model.drain(..n);
                    }
                    Op::Read(n) => {
                        let data: VecDeque<u8> = (0..n)
                            .map(|_| {
                                counter = counter.wrapping_add(1);
                                counter
                            })
                            .collect();
                        let mut r = Chunks { data: data.clone(), sizes: vec![n] };
                        let before = w.buf.len();
                        match w.read_from(&mut r) {
                            Ok(k) => model.extend(data.iter().take(k)),
                            Err(e) => prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                        }
                        prop_assert!(w.buf.len() <= before.max(MAX_BUFFER));
                    }
                    Op::Spare(n) => {
                        prop_assert!(w.spare(n).len() >= n);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                prop_assert!(w.filled().iter().eq(model.iter()));
            }
        }
    }
}
