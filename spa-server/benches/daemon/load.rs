//! Floods, the valid-knock throughput and the knock-to-open latency series.

#[allow(clippy::wildcard_imports)]
use super::*;

// -------------------------------------------------------------- flood

/// Sends random `FLOOD_LEN`-byte datagrams (first byte the protocol
/// version, so each costs the receiver its pre-check MAC) with `sendmmsg`
/// until `FLOOD` passes or `FLOOD_MAX` are sent. Returns (sent, elapsed).
pub(crate) fn flood(s: &UdpSocket) -> (u64, Duration) {
    flood_bounded(s, FLOOD, FLOOD_MAX)
}

/// [`flood`] with explicit bounds (`max` is exact: a burst of `max`).
pub(crate) fn flood_bounded(s: &UdpSocket, dur: Duration, max: u64) -> (u64, Duration) {
    let mut rng = Rng::seeded();
    let pool: Vec<Vec<u8>> = (0..SEND_BATCH)
        .map(|_| {
            let mut v: Vec<u8> = (0..FLOOD_LEN).map(|_| rng.next_u64() as u8).collect();
            v[0] = proto_spec::wire::VERSION;
            v
        })
        .collect();
    tests::bench::send_batches(s, &pool, max, dur)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BareResult {
    pub(crate) events: u64,
    pub(crate) calls: u64,
    /// Drain rounds: frames read and CPU (schedstat) spent reading them.
    pub(crate) drain_frames: u64,
    pub(crate) drain_cpu_s: f64,
    pub(crate) drain_drops: u64,
    pub(crate) drops: u64,
    pub(crate) cpu: Cpu,
    pub(crate) sent: u64,
    pub(crate) send_s: f64,
}

/// Phase 1: the bare receive loop, alone in green's namespace.
pub(crate) fn bare_loop(bed: &Bed, tck: f64) -> BareResult {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let st = stop.clone();
    let rx_thread = in_ns(&bed.g, move || {
        // The daemon's settings (green::setup): packet mode on the
        // interface, scan watch (scan_ports > 0), 100 ms timeout, batch 32,
        // 4 MiB buffer.
        let mut cc = CaptureConfig::new(PORT);
        cc.mode = CaptureMode::Packet {
            interface: Some(G_IF.into()),
        };
        cc.scan_watch = true;
        cc.read_timeout = Duration::from_millis(100);
        let mut cap = Capture::open(&cc).expect("capture");
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        let me = Path::new("/proc/thread-self");
        let c0 = task_cpu(me, tck);
        let (mut events, mut calls) = (0u64, 0u64);
        while !st.load(Ordering::Relaxed) {
            let n = cap
                .poll(|e| {
                    if matches!(e, Event::Knock { .. } | Event::Probe { .. }) {
                        events += 1;
                    }
                })
                .expect("poll");
            if n > 0 {
                calls += 1;
            }
        }
        let sustained = (
            events,
            calls,
            cap.stats().kernel_drops,
            task_cpu(me, tck) - c0,
        );
        // Drain rounds: the queue is filled while this thread waits, then
        // read back in full batches.
        let (mut dframes, mut dcpu) = (0u64, 0.0f64);
        let drops0 = cap.stats().kernel_drops;
        for _ in 0..DRAIN_ROUNDS {
            go_rx.recv().unwrap();
            let c0 = task_cpu(me, tck);
            while cap.poll(|_| dframes += 1).expect("poll") > 0 {}
            dcpu += (task_cpu(me, tck) - c0).sched_s;
            ready_tx.send(()).unwrap();
        }
        (
            sustained,
            (dframes, dcpu, cap.stats().kernel_drops - drops0),
        )
    });
    ready_rx.recv().unwrap();
    let s = sender_socket(bed, FLOODER);
    go_tx.send(()).unwrap();
    let (sent, el) = flood(&s);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for _ in 0..DRAIN_ROUNDS {
        flood_bounded(&s, Duration::from_secs(5), DRAIN_K);
        thread::sleep(Duration::from_millis(30));
        go_tx.send(()).unwrap();
        ready_rx.recv().unwrap();
    }
    let ((events, calls, drops, cpu), (drain_frames, drain_cpu_s, drain_drops)) =
        rx_thread.join().unwrap();
    BareResult {
        events,
        calls,
        drain_frames,
        drain_cpu_s,
        drain_drops,
        drops,
        cpu,
        sent,
        send_s: el.as_secs_f64(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct FloodResult {
    pub(crate) sent: u64,
    pub(crate) send_s: f64,
    pub(crate) cpu: Cpu,
    pub(crate) wall_s: f64,
    pub(crate) refused: u64,
    pub(crate) counters: HashMap<String, u64>,
    pub(crate) valid_sent: usize,
    pub(crate) valid_accepted: u64,
    pub(crate) valid_holes: usize,
    pub(crate) sessions_before: usize,
    /// Frames the daemon's packet socket dropped (queue full) during the
    /// flood.
    pub(crate) socket_drops: u64,
}

/// Phases 4 and 6: the flood against the daemon, with `N_VALID` valid
/// knocks at 20/s from `valid_addr(..)` (offset `vofs` in the 10.200.5.x
/// range is not reused: the second flood sends from the same addresses,
/// whose elements are then refreshed, counted by accepted only).
pub(crate) fn daemon_flood(
    bed: &Bed,
    f: &Files,
    daemon: &Proc,
    id: &mut Identity,
    rpk: &ReceiverPublicKey,
    tck: f64,
    count_holes: bool,
) -> FloodResult {
    let sessions_before = status(f)["sessions"].as_array().map_or(0, Vec::len);
    let fs = sender_socket(bed, FLOODER);
    let vs = sender_sockets(bed, (0..N_VALID).map(valid_addr).collect());
    let before = counters(f);
    let drops0 = packet_drops(&bed.g, daemon.pid()).unwrap_or(0);
    let c0 = proc_cpu(daemon.pid(), tck);
    let t0 = Instant::now();
    let flooder = thread::spawn(move || flood(&fs));
    // Valid knocks from this thread, sealed just before each send.
    let mut valid_sent = 0;
    let start = Instant::now();
    for (i, s) in vs.iter().enumerate() {
        let due = start + VALID_EVERY * u32::try_from(i).unwrap();
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        let k = id.knock(rpk, valid_addr(i), 60);
        if s.send(&k).is_ok() {
            valid_sent += 1;
        }
    }
    let (sent, el) = flooder.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    let cpu = proc_cpu(daemon.pid(), tck) - c0;
    let wall_s = t0.elapsed().as_secs_f64();
    let after = counters(f);
    let socket_drops = packet_drops(&bed.g, daemon.pid()).unwrap_or(0) - drops0;
    let d = diff(&after, &before);
    let refused = sum_prefix(&d, "refused.");
    let valid_accepted = sum_prefix(&d, "accepted.");
    let valid_holes = if count_holes {
        let g = bed.g.clone();
        let set = in_ns(&g, || spa_nft::list("spa").expect("list sets"))
            .join()
            .unwrap();
        set.allow
            .iter()
            .filter(|e| matches!(e.addr, IpAddr::V4(a) if a.octets()[2] == 5 && e.port == 22))
            .count()
    } else {
        0
    };
    FloodResult {
        sent,
        send_s: el.as_secs_f64(),
        cpu,
        wall_s,
        refused,
        counters: d,
        valid_sent,
        valid_accepted,
        valid_holes,
        sessions_before,
        socket_drops,
    }
}

/// The daemon's side of the drain comparison: SIGSTOP, queue `DRAIN_K`
/// random datagrams, SIGCONT, let it read them back in full batches.
/// Returns (frames refused, CPU seconds by schedstat, socket drops).
pub(crate) fn daemon_drain(bed: &Bed, f: &Files, daemon: &Proc) -> (u64, f64, u64) {
    let s = sender_socket(bed, FLOODER);
    let pid = Pid::from_raw(daemon.pid());
    let before = counters(f);
    let drops0 = packet_drops(&bed.g, daemon.pid()).unwrap_or(0);
    let mut cpu = 0.0;
    for _ in 0..DRAIN_ROUNDS {
        kill(pid, Signal::SIGSTOP).unwrap();
        thread::sleep(Duration::from_millis(5));
        flood_bounded(&s, Duration::from_secs(5), DRAIN_K);
        thread::sleep(Duration::from_millis(30));
        let c0 = proc_cpu(daemon.pid(), 100.0);
        kill(pid, Signal::SIGCONT).unwrap();
        thread::sleep(Duration::from_millis(60));
        cpu += (proc_cpu(daemon.pid(), 100.0) - c0).sched_s;
    }
    let d = diff(&counters(f), &before);
    let drops = packet_drops(&bed.g, daemon.pid()).unwrap_or(0) - drops0;
    (sum_prefix(&d, "refused."), cpu, drops)
}

pub(crate) struct Tput {
    pub(crate) sent: usize,
    pub(crate) accepted: u64,
    pub(crate) wall_s: f64,
    pub(crate) cpu: Cpu,
    pub(crate) seal_s: f64,
    pub(crate) counters: HashMap<String, u64>,
}

/// Phase 5: `T_IDS` identities (`<prefix>0`…), `T_PER_ID` knocks each,
/// sealed beforehand, sent round-robin from `tput_addr(i)` with at most
/// `T_WINDOW` not yet accepted (accepted lines counted in the daemon's
/// log), for at most `T_MAX`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn throughput(
    bed: &Bed,
    f: &Files,
    daemon: &Proc,
    ca: &TestCa,
    rpk: &ReceiverPublicKey,
    dlog: &Path,
    tck: f64,
    prefix: &str,
) -> Tput {
    let ids: Vec<Identity> = (0..T_IDS)
        .map(|i| Identity::new(ca, &format!("{prefix}{i}"), 10 + i as u64))
        .collect();
    let t_seal = Instant::now();
    let base = now_ms() + 200;
    let mut knocks: Vec<(usize, Vec<u8>)> = Vec::with_capacity(T_IDS * T_PER_ID);
    for j in 0..T_PER_ID {
        for (i, id) in ids.iter().enumerate() {
            knocks.push((i, id.knock_at(rpk, tput_addr(i), 30, base + j as u64)));
        }
    }
    let seal_s = t_seal.elapsed().as_secs_f64();
    let socks = sender_sockets(bed, (0..T_IDS).map(tput_addr).collect());
    let before = counters(f);
    let mut tail = LogTail::open(dlog);
    let needle = b"\"message\":\"accepted\"";
    let c0 = proc_cpu(daemon.pid(), tck);
    let t0 = Instant::now();
    let (mut sent, mut seen) = (0usize, 0usize);
    for (i, k) in &knocks {
        if t0.elapsed() > T_MAX {
            break;
        }
        while sent - seen >= T_WINDOW {
            seen += tail.count_new(needle);
            if sent - seen >= T_WINDOW {
                thread::sleep(Duration::from_micros(200));
            }
        }
        socks[*i].send(k).unwrap();
        sent += 1;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while seen < sent && Instant::now() < drain_deadline {
        seen += tail.count_new(needle);
        thread::sleep(Duration::from_micros(200));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu(daemon.pid(), tck) - c0;
    let td = diff(&counters(f), &before);
    Tput {
        sent,
        accepted: sum_prefix(&td, "accepted."),
        wall_s,
        cpu,
        seal_s,
        counters: td,
    }
}

// ------------------------------------------------------------ latency

#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// arrival → daemon log (spa only), µs.
    pub(crate) to_log: Vec<f64>,
    /// arrival → nft monitor notification, µs.
    pub(crate) to_monitor: Vec<f64>,
    /// send → nft monitor notification, µs.
    pub(crate) send_to_monitor: Vec<f64>,
    /// daemon log → monitor, µs (observer delay bound).
    pub(crate) log_to_monitor: Vec<f64>,
    pub(crate) missing: usize,
}

pub(crate) fn summarize(name: &str, v: &[f64]) -> Value {
    if v.is_empty() {
        return json!({"series": name, "n": 0});
    }
    let r = json!({
        "series": name,
        "n": v.len(),
        "p50_us": pct(v, 0.50),
        "p90_us": pct(v, 0.90),
        "p99_us": pct(v, 0.99),
        "max_us": pct(v, 1.0),
        "mean_us": mean(v),
    });
    println!(
        "  {name:<42} n={:>3}  p50 {:>9.1} us  p90 {:>9.1} us  p99 {:>9.1} us  max {:>9.1} us",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        pct(v, 1.0)
    );
    r
}

/// Sends knocks one at a time (`payload(i)` from `lat_addr(i)`), each
/// after the previous one's element or rule was seen, with a random pause
/// in `jitter_ms` before each.
pub(crate) fn latency_series(
    bed: &Bed,
    f: &Files,
    name: &str,
    mut payload: impl FnMut(usize) -> Vec<u8>,
    warmup: (Ipv4Addr, Vec<u8>),
    jitter_ms: (u64, u64),
    daemon_log: Option<&Path>,
) -> Latency {
    let socks = sender_sockets(bed, (0..N_LAT).map(lat_addr).collect());
    let wsock = sender_socket(bed, warmup.0);
    let mut mon = Monitor::start(&bed.g);
    let dump = Tcpdump::start(bed, f, name);
    // Warm-up (first-time certificate validation, caches, page faults):
    // not measured.
    wsock.send(&warmup.1).unwrap();
    assert!(
        mon.wait_for(warmup.0, Duration::from_secs(5)).is_some(),
        "{name}: warm-up knock did not open"
    );
    let mut rng = Rng::seeded();
    let mut sent_at = Vec::with_capacity(N_LAT);
    let mut seen_at = Vec::with_capacity(N_LAT);
    for (i, s) in socks.iter().enumerate() {
        let (lo, hi) = jitter_ms;
        thread::sleep(Duration::from_micros(
            1000 * lo + rng.below(1000 * (hi - lo)),
        ));
        let k = payload(i);
        let t = now_ns();
        s.send(&k).unwrap();
        sent_at.push(t);
        seen_at.push(mon.wait_for(lat_addr(i), Duration::from_secs(3)));
    }
    let arrivals = dump.finish();
    let logs = daemon_log.map(accepted_times).unwrap_or_default();
    let mut l = Latency::default();
    for i in 0..N_LAT {
        let a = lat_addr(i);
        let (Some(arr), Some(mon_t)) = (arrivals.get(&a).copied(), seen_at[i]) else {
            l.missing += 1;
            continue;
        };
        l.to_monitor.push((mon_t - arr) as f64 / 1e3);
        l.send_to_monitor.push((mon_t - sent_at[i]) as f64 / 1e3);
        if let Some(&lg) = logs.get(&a) {
            l.to_log.push((lg - arr) as f64 / 1e3);
            l.log_to_monitor.push((mon_t - lg) as f64 / 1e3);
        }
    }
    l
}

/// The same knocks without any observer (no tcpdump, no nft monitor):
/// send() → the daemon's `accepted` line, waiting for each line in the log
/// before the next knock. Returns µs per knock.
pub(crate) fn latency_quiet(
    bed: &Bed,
    dlog: &Path,
    n: usize,
    mut payload: impl FnMut(usize) -> Vec<u8>,
) -> Vec<f64> {
    let socks = sender_sockets(bed, (0..n).map(quiet_addr).collect());
    let mut tail = LogTail::open(dlog);
    let needle = b"\"message\":\"accepted\"";
    let mut rng = Rng::seeded();
    let mut sent_at = Vec::with_capacity(n);
    for (i, s) in socks.iter().enumerate() {
        thread::sleep(Duration::from_micros(1000 + rng.below(3000)));
        let k = payload(i);
        let t = now_ns();
        s.send(&k).unwrap();
        sent_at.push(t);
        let deadline = Instant::now() + Duration::from_secs(3);
        while tail.count_new(needle) == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_micros(200));
        }
    }
    let logs = accepted_times(dlog);
    (0..n)
        .filter_map(|i| {
            logs.get(&quiet_addr(i))
                .map(|&lg| (lg - sent_at[i]) as f64 / 1e3)
        })
        .collect()
}
