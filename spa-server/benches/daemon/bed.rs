//! The test bed (two namespaces, sender sockets), the knocks' identities,
//! the daemon's files, configuration, start and status, and `tcpdump`.

#[allow(clippy::wildcard_imports)]
use super::*;

// ------------------------------------------------------------- test bed

pub(crate) struct Bed {
    pub(crate) g: String,
    pub(crate) s: String,
}

impl Bed {
    pub(crate) fn new() -> Self {
        let id = std::process::id();
        let bed = Bed {
            g: format!("spa-dbg-{id}"),
            s: format!("spa-dbs-{id}"),
        };
        for n in [&bed.g, &bed.s] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &bed.g, "link", "add", G_IF, "type", "veth", "peer", "name", S_IF, "netns",
            &bed.s,
        ]);
        ip(&["-n", &bed.g, "addr", "add", "10.200.0.1/16", "dev", G_IF]);
        // Every sender address, in one `ip -batch`.
        let mut batch = String::from("addr add 10.200.0.2/16 dev s0\n");
        let mut extra: Vec<Ipv4Addr> = (0..N_LAT).map(lat_addr).collect();
        extra.extend((0..N_LAT).map(quiet_addr));
        extra.extend((0..N_VALID).map(valid_addr));
        extra.extend((0..T_IDS).map(tput_addr));
        extra.extend([WARMUP, WARMUP2, WARMUP3]);
        for a in extra {
            batch.push_str(&format!("addr add {a}/16 dev s0 noprefixroute\n"));
        }
        let mut c = Command::new("ip")
            .args(["-n", &bed.s, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(batch.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "ip -batch");
        ip(&["-n", &bed.g, "link", "set", G_IF, "up"]);
        ip(&["-n", &bed.s, "link", "set", S_IF, "up"]);
        // Resolve green once, permanently: no ARP in any measurement.
        let link = ip(&["-n", &bed.g, "-o", "link", "show", G_IF]);
        let mut w = link.split_whitespace();
        let mac = w
            .find(|x| *x == "link/ether")
            .and_then(|_| w.next())
            .unwrap()
            .to_owned();
        ip(&[
            "-n",
            &bed.s,
            "neigh",
            "replace",
            "10.200.0.1",
            "lladdr",
            &mac,
            "dev",
            S_IF,
            "nud",
            "permanent",
        ]);
        thread::sleep(Duration::from_millis(200));
        bed
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for n in [&self.g, &self.s] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A UDP socket in the sender namespace, bound to `src`, connected to
/// green's knock port.
pub(crate) fn sender_socket(bed: &Bed, src: Ipv4Addr) -> UdpSocket {
    in_ns(&bed.s, move || {
        let s = UdpSocket::bind((src, 0)).expect("bind sender");
        s.connect((GREEN, PORT)).expect("connect");
        s
    })
    .join()
    .unwrap()
}

pub(crate) fn sender_sockets(bed: &Bed, srcs: Vec<Ipv4Addr>) -> Vec<UdpSocket> {
    in_ns(&bed.s, move || {
        srcs.into_iter()
            .map(|src| {
                let s = UdpSocket::bind((src, 0)).expect("bind sender");
                s.connect((GREEN, PORT)).expect("connect");
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

// ------------------------------------------------------------ knocks

pub(crate) struct Identity {
    pub(crate) signer: Box<dyn Signer + Send + Sync>,
    pub(crate) last_ts: u64,
}

impl Identity {
    pub(crate) fn new(ca: &TestCa, cn: &str, serial: u64) -> Self {
        Identity {
            signer: ca
                .signer(&ClientCertSpec::new(cn, KeyAlg::Ed25519, serial))
                .unwrap(),
            last_ts: 0,
        }
    }

    /// An open-tunnel knock for `addr` (sent from `addr`), "ssh", with a
    /// timestamp strictly above the previous one.
    pub(crate) fn knock(
        &mut self,
        rpk: &ReceiverPublicKey,
        addr: Ipv4Addr,
        lifetime_s: u32,
    ) -> Vec<u8> {
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        self.knock_at(rpk, addr, lifetime_s, ts)
    }

    pub(crate) fn knock_at(
        &self,
        rpk: &ReceiverPublicKey,
        addr: Ipv4Addr,
        lifetime_s: u32,
        ts: u64,
    ) -> Vec<u8> {
        let r = spa_keys::random_32().unwrap();
        let ikm = spa_keys::random_32().unwrap();
        let mut nonce = [0u8; 16];
        let mut session = [0u8; 16];
        nonce.copy_from_slice(&r[..16]);
        session.copy_from_slice(&r[16..]);
        seal_knock(
            &*self.signer,
            rpk,
            &KnockRequest {
                msg_type: MessageType::OpenTunnel,
                timestamp_ms: ts,
                nonce,
                session_id: session,
                lifetime_s,
                open_for: OpenFor::Addr(IpAddr::V4(addr)),
                services: &["ssh"],
            },
            *ikm,
        )
        .unwrap()
    }
}

// ------------------------------------------------------------ the daemon

pub(crate) struct Files {
    pub(crate) dir: PathBuf,
}

impl Files {
    pub(crate) fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("spa-daemon-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    pub(crate) fn p(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if std::env::var_os("SPA_KEEP_BENCH_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

/// Writes a daemon configuration using replay store `db`; returns its path.
pub(crate) fn write_config(f: &Files, name: &str, db: &Path) -> PathBuf {
    write_config_with(f, name, db, "")
}

/// [`write_config`] with more `[daemon]` keys (`daemon_extra`, one per line).
pub(crate) fn write_config_with(f: &Files, name: &str, db: &Path, daemon_extra: &str) -> PathBuf {
    let text = format!(
        r#"[daemon]
knock_port = {PORT}
capture = "packet"
interface = "{G_IF}"
keys = ["{key}"]
replay_db = "{db}"
control_socket = "{ctl}"
user = "nobody"
log_format = "json"
{daemon_extra}

[trust]
anchors = ["{ca}"]

[firewall]
table = "spa"
mode = "blackhole"

[[services]]
name = "ssh"
proto = "tcp"
port = 22

[[rules]]
identity = "*"
services = ["*"]

[ips]
rate = 1000000
burst = 1000000
"#,
        key = f.p("green.key").display(),
        db = db.display(),
        ctl = f.p("control.sock").display(),
        ca = f.p("ca.pem").display(),
    );
    let p = f.p(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn start_daemon(bed: &Bed, f: &Files, cfg: &Path, log: &Path) -> Proc {
    let bin = env!("CARGO_BIN_EXE_spa-server");
    let p = spawn_in(
        &bed.g,
        &[bin, "run", "--config", cfg.to_str().unwrap()],
        log,
        "spa-server",
    );
    assert!(
        wait_for_file(log, "\"message\":\"ready\"", Duration::from_secs(20)),
        "daemon not ready: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let _ = f;
    p
}

pub(crate) fn status(f: &Files) -> Value {
    let r = spa_daemon::ctl::request(&f.p("control.sock"), &json!({"cmd": "status"}))
        .expect("status request");
    assert_eq!(r["ok"], true, "{r}");
    r["status"].clone()
}

pub(crate) fn counters(f: &Files) -> HashMap<String, u64> {
    status(f)["counters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
        .collect()
}

// ------------------------------------------------- observers: nft, tcpdump

/// `tcpdump` on green's interface, writing a capture file.
pub(crate) struct Tcpdump {
    pub(crate) p: Proc,
    pub(crate) file: PathBuf,
}

impl Tcpdump {
    pub(crate) fn start(bed: &Bed, f: &Files, name: &str) -> Self {
        let file = f.p(&format!("{name}.pcap"));
        let log = f.p(&format!("{name}.tcpdump.log"));
        let p = spawn_in(
            &bed.g,
            &[
                "tcpdump",
                "-i",
                G_IF,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "96",
                "-w",
                file.to_str().unwrap(),
                "udp dst port 62201",
            ],
            &log,
            "tcpdump",
        );
        assert!(
            wait_for_file(&log, "listening on", Duration::from_secs(10)),
            "tcpdump did not start"
        );
        Tcpdump { p, file }
    }

    /// Stops the capture; `src` → arrival (ns, kernel time stamp) of the
    /// first datagram from each source.
    pub(crate) fn finish(mut self) -> HashMap<Ipv4Addr, i128> {
        thread::sleep(Duration::from_millis(100));
        self.p.stop_with(Signal::SIGINT);
        let out =
            run(Command::new("tcpdump").args(["-r", self.file.to_str().unwrap(), "-n", "-tt"]));
        let mut m = HashMap::new();
        for line in out.lines() {
            let mut w = line.split_whitespace();
            let (Some(ts), Some(_ip), Some(src)) = (w.next(), w.next(), w.next()) else {
                continue;
            };
            let Some((sec, frac)) = ts.split_once('.') else {
                continue;
            };
            let ns = sec.parse::<i128>().unwrap_or(0) * 1_000_000_000
                + frac.parse::<i128>().unwrap_or(0) * 10i128.pow(9 - frac.len() as u32);
            let Some((a, _port)) = src.rsplit_once('.') else {
                continue;
            };
            if let Ok(a) = a.parse::<Ipv4Addr>() {
                m.entry(a).or_insert(ns);
            }
        }
        m
    }
}
