//! What the benchmark harnesses share (`spa-capture/benches/capture.rs`,
//! `spa-server/benches/daemon.rs`): sending datagrams as fast as the
//! kernel takes them.

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

/// Sends the datagrams of `pool` (at most 64 a call, from the start of the
/// pool) on the connected socket `s` with `sendmmsg(2)`, again and again,
/// until `limit` datagrams are sent (exactly) or `until` passes. Returns
/// (sent, elapsed). Send errors (a full buffer) are retried.
pub fn send_batches(
    s: &UdpSocket,
    pool: &[Vec<u8>],
    limit: u64,
    until: Duration,
) -> (u64, Duration) {
    let batch = pool.len().clamp(1, 64);
    let slices: Vec<[IoSlice<'_>; 1]> = pool[..batch.min(pool.len())]
        .iter()
        .map(|p| [IoSlice::new(p)])
        .collect();
    let addrs: Vec<Option<SockaddrStorage>> = vec![None; slices.len()];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
    let (t0, mut sent) = (Instant::now(), 0u64);
    while sent < limit && t0.elapsed() < until && !slices.is_empty() {
        let n = usize::try_from(limit - sent)
            .unwrap_or(slices.len())
            .min(slices.len());
        if let Ok(r) = sendmmsg(
            s.as_raw_fd(),
            &mut headers,
            &slices[..n],
            &addrs[..n],
            [],
            MsgFlags::empty(),
        ) {
            sent += r.count() as u64;
        }
    }
    (sent, t0.elapsed())
}
