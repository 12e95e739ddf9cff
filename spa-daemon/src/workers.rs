//! Verification on worker threads (`[daemon] workers`): the daemon loop
//! reads a batch from capture, runs the cheap checks itself (block list,
//! size, version, pre-check MAC, rate limit: SPEC §8 "cheap checks
//! first"), hands what passed to the workers, waits for the batch, and
//! applies the verdicts in arrival order (firewall, sessions, IPS, logs).
//!
//! Ordering: datagrams are sharded by source address, so one sender's
//! datagrams (an open followed at once by a request) are verified in
//! arrival order by one worker. Two datagrams of one identity from two
//! addresses may be verified at once; the replay store re-checks the floor
//! at commit under its lock ([`crate::store::Sequenced`], SPEC §7.3), so at
//! most one of two equal timestamps is accepted and a late lower one is
//! `replayed`, as it would be in sequence.
//!
//! Each worker owns a verifier of its own (its certificate cache too) and
//! a handle on the shared replay store; trust reloads reach every worker
//! before the next batch. The threads are spawned after the privilege drop
//! and inherit the dropped credentials.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use proto_spec::UnixMillis;
use proto_spec::cert::TrustStore;
use proto_spec::verify::Refused;

use crate::gate::{Decision, Gate};
use crate::store::{ReplayDb, Sequenced};

/// A datagram that passed the cheap checks, to verify.
#[derive(Debug)]
pub struct Job {
    /// Where it came from.
    pub src: SocketAddr,
    /// `src`'s address, canonical.
    pub ip: IpAddr,
    /// Whether the source was blocked when it arrived (SPEC §9).
    pub blocked: bool,
    /// The arrival time the verdict is judged at.
    pub now: UnixMillis,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// A verified job: the job (without its payload) and the verdict.
#[derive(Debug)]
pub struct Done {
    /// Where it came from.
    pub src: SocketAddr,
    /// `src`'s address, canonical.
    pub ip: IpAddr,
    /// Whether the source was blocked when it arrived.
    pub blocked: bool,
    /// The arrival time.
    pub now: UnixMillis,
    /// The verdict (floors committed on success).
    pub result: Result<Decision, Refused>,
}

enum Msg {
    Batch(Vec<(usize, Job)>),
    Trust(Box<TrustStore>),
}

/// The worker threads. Dropping the pool stops and joins them.
#[derive(Debug)]
pub struct Pool {
    senders: Vec<Sender<Msg>>,
    done: Receiver<Vec<(usize, Done)>>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Batch(b) => write!(f, "Batch({})", b.len()),
            Self::Trust(_) => f.write_str("Trust"),
        }
    }
}

impl Pool {
    /// One thread (`spa-verify-<i>`) per verifier in `gates`, each with a
    /// checked handle on `db`.
    /// With `commit_timer` (`[metrics]`), each durable commit is timed into
    /// it ([`crate::metrics::Timed`]).
    pub fn spawn<G: Gate + Send + 'static>(
        gates: Vec<G>,
        db: &ReplayDb,
        commit_timer: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> std::io::Result<Self> {
        let (done_tx, done) = channel();
        let mut senders = Vec::with_capacity(gates.len());
        let mut handles = Vec::with_capacity(gates.len());
        for (i, mut gate) in gates.into_iter().enumerate() {
            let (tx, rx) = channel::<Msg>();
            let done_tx = done_tx.clone();
            let mut replay = Sequenced::new(db);
            let timer = commit_timer.clone();
            let h = std::thread::Builder::new()
                .name(format!("spa-verify-{i}"))
                .spawn(move || {
                    while let Ok(msg) = rx.recv() {
                        match msg {
                            Msg::Batch(jobs) => {
                                let out = jobs
                                    .into_iter()
                                    .map(|(seq, j)| {
                                        let result = match &timer {
                                            Some(h) => gate.verify(
                                                &j.payload,
                                                j.ip,
                                                j.now,
                                                &mut crate::metrics::Timed::new(&mut replay, h),
                                            ),
                                            None => {
                                                gate.verify(&j.payload, j.ip, j.now, &mut replay)
                                            }
                                        };
                                        let done = Done {
                                            src: j.src,
                                            ip: j.ip,
                                            blocked: j.blocked,
                                            now: j.now,
                                            result,
                                        };
                                        (seq, done)
                                    })
                                    .collect();
                                if done_tx.send(out).is_err() {
                                    break;
                                }
                            }
                            Msg::Trust(t) => gate.replace_trust(*t),
                        }
                    }
                })?;
            senders.push(tx);
            handles.push(h);
        }
        Ok(Self {
            senders,
            done,
            handles,
        })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// True without workers.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Verifies `jobs` on the workers (sharded by source address) and
    /// returns the verdicts in the order of `jobs`. A job whose worker is
    /// gone (it panicked) is missing from the result; the caller counts it.
    pub fn verify_batch(&self, jobs: Vec<Job>) -> Vec<Done> {
        let n = self.senders.len().max(1);
        let total = jobs.len();
        let mut shards: Vec<Vec<(usize, Job)>> = (0..n).map(|_| Vec::new()).collect();
        for (seq, j) in jobs.into_iter().enumerate() {
            let k = shard(j.ip, n);
            if let Some(s) = shards.get_mut(k) {
                s.push((seq, j));
            }
        }
        let mut expected = 0;
        for (tx, shard) in self.senders.iter().zip(shards) {
            if shard.is_empty() {
                continue;
            }
            if tx.send(Msg::Batch(shard)).is_ok() {
                expected += 1;
            }
        }
        let mut slots: Vec<Option<Done>> = (0..total).map(|_| None).collect();
        for _ in 0..expected {
            let Ok(out) = self.done.recv() else {
                break;
            };
            for (seq, d) in out {
                if let Some(s) = slots.get_mut(seq) {
                    *s = Some(d);
                }
            }
        }
        slots.into_iter().flatten().collect()
    }

    /// Gives each worker its trust store (one per worker, in order).
    pub fn replace_trust(&self, stores: Vec<TrustStore>) {
        for (tx, t) in self.senders.iter().zip(stores) {
            let _ = tx.send(Msg::Trust(Box::new(t)));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The worker of a source address: one sender's datagrams stay in order.
fn shard(ip: IpAddr, n: usize) -> usize {
    let x: u64 = match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            // Truncation intended: fold the halves.
            #[allow(clippy::cast_possible_truncation)]
            let folded = (v as u64) ^ ((v >> 64) as u64);
            folded
        }
    };
    // Fibonacci hashing: neighbouring addresses spread over the workers.
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    usize::try_from(h).unwrap_or(0) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_always_lands_on_one_worker_and_sources_spread() {
        let mut seen = [0usize; 2];
        for i in 0..=255u8 {
            let ip = IpAddr::from([10, 200, 1, i]);
            assert_eq!(shard(ip, 2), shard(ip, 2));
            seen[shard(ip, 2)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 64), "{seen:?}");
        assert_eq!(shard(IpAddr::from([10, 0, 0, 1]), 1), 0);
    }
}
