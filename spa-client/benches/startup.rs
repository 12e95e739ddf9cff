//! Process start to datagram on the wire: `spa-client send open` with a
//! software Ed25519 key, against Debian's `fwknop` client doing the same
//! (one SPA packet, HMAC on) in the same run. Both send to a UDP socket on
//! 127.0.0.1; the time runs from just before `spawn` to the datagram's
//! arrival.
//!
//! `cargo bench -p spa-client --bench startup` measures (200 runs each);
//! under `cargo test --all-targets` (no `--bench` argument) it makes three
//! runs of spa-client only, as a smoke test.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto_spec::testkit::{self, ClientCertSpec, KeyAlg, TestCa};

fn median_and_p90(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn time_one(cmd: &mut Command, sock: &UdpSocket) -> Duration {
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    sock.recv_from(&mut buf).expect("a datagram arrives");
    let t = start.elapsed();
    let _ = child.wait();
    t
}

fn setup(dir: &Path, port: u16) -> PathBuf {
    let ca = TestCa::new("spa bench root").expect("ca");
    let (cert, key) = ca
        .issue(&ClientCertSpec::new("alice", KeyAlg::Ed25519, 1))
        .expect("issue");
    let kp = dir.join("alice.key");
    std::fs::write(&kp, spa_keys::pem_encode("PRIVATE KEY", &key)).expect("write");
    std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cp = dir.join("alice.crt");
    std::fs::write(&cp, spa_keys::pem_encode("CERTIFICATE", &cert)).expect("write");
    let server_key = spa_keys::encode_public_key(&testkit::receiver_key("green").public_key());
    let cfg = dir.join("client.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.bench]\nserver = \"127.0.0.1\"\nport = {port}\nserver_key = \"{server_key}\"\nkey = \"{}\"\ncertificate = \"{}\"\nallow_ip = \"127.0.0.1\"\n",
            kp.display(),
            cp.display()
        ),
    )
    .expect("write");
    cfg
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runs = if bench { 200 } else { 3 };
    let dir = std::env::temp_dir().join(format!("spa-startup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let cfg = setup(&dir, port);

    let bin = env!("CARGO_BIN_EXE_spa-client");
    let spa: Vec<Duration> = (0..runs)
        .map(|_| {
            time_one(
                Command::new(bin)
                    .arg("--config")
                    .arg(&cfg)
                    .args(["-q", "send", "open"])
                    .env("XDG_STATE_HOME", &dir),
                &sock,
            )
        })
        .collect();
    let (spa_med, spa_p90) = median_and_p90(spa);
    println!("spa-client send open: median {spa_med:?}, p90 {spa_p90:?} ({runs} runs)");

    if bench {
        // Debian's fwknop client, same machine, same socket, HMAC on.
        let key = "xueqY1FsWo93zKCgGp7Pgm+f1Wk9v5TtqjOrSIa84BI=";
        let hmac = "OXuCgb0O2yRb9/yRvK0j81oYjNEV/HQSX6BqCA6DVyd2NSorK9aTeaLJiMbcOrCRUAtCO5qo2sZDTltrFvDrwg==";
        let rc = dir.join("fwknoprc");
        let port_s = port.to_string();
        let fwk: Vec<Duration> = (0..runs)
            .map(|_| {
                time_one(
                    Command::new("fwknop")
                        .args([
                            "-A",
                            "tcp/22",
                            "-a",
                            "127.0.0.1",
                            "-D",
                            "127.0.0.1",
                            "-p",
                            &port_s,
                        ])
                        .args([
                            "--use-hmac",
                            "--key-base64-rijndael",
                            key,
                            "--key-base64-hmac",
                            hmac,
                        ])
                        .arg("--no-save-args")
                        .arg("--rc-file")
                        .arg(&rc)
                        .env("HOME", &dir),
                    &sock,
                )
            })
            .collect();
        let (f_med, f_p90) = median_and_p90(fwk);
        println!("fwknop client:        median {f_med:?}, p90 {f_p90:?} ({runs} runs)");
        println!(
            "ratio fwknop / spa-client (median): {:.2}",
            f_med.as_secs_f64() / spa_med.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
