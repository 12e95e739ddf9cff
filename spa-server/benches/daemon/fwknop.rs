//! Debian's `fwknopd` in the same test bed: its packets and its start.

#[allow(clippy::wildcard_imports)]
use super::*;

// ------------------------------------------------------------ fwknopd

pub(crate) fn fwknop_packets(f: &Files, tag: &str, addrs: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let file = f.p(&format!("fwk-{tag}-{i}.pkt"));
            let st = Command::new("fwknop")
                .args(["-A", "tcp/22", "-a", &a.to_string(), "-D", "10.200.0.1"])
                .args(["--use-hmac", "--key-base64-rijndael", FWK_KEY])
                .args(["--key-base64-hmac", FWK_HMAC, "--no-save-args", "--test"])
                .arg("--rc-file")
                .arg(f.p("fwknoprc"))
                .arg("-B")
                .arg(&file)
                .env("HOME", &f.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run fwknop (apt-get install fwknop-client)");
            assert!(st.success(), "fwknop --test failed");
            std::fs::read_to_string(&file)
                .unwrap()
                .trim()
                .as_bytes()
                .to_vec()
        })
        .collect()
}

pub(crate) fn start_fwknopd(bed: &Bed, f: &Files, tag: &str, loop_sleep_us: Option<u32>) -> Proc {
    let run_dir = f.p(&format!("fwknop-run-{tag}"));
    std::fs::create_dir_all(&run_dir).unwrap();
    let conf = f.p(&format!("fwknopd-{tag}.conf"));
    let mut text = format!("PCAP_INTF {G_IF};\nFWKNOP_RUN_DIR {};\n", run_dir.display());
    if let Some(us) = loop_sleep_us {
        text.push_str(&format!("PCAP_LOOP_SLEEP {us};\n"));
    }
    std::fs::write(&conf, text).unwrap();
    let access = f.p("access.conf");
    std::fs::write(
        &access,
        format!(
            "SOURCE ANY\nKEY_BASE64 {FWK_KEY}\nHMAC_KEY_BASE64 {FWK_HMAC}\nFW_ACCESS_TIMEOUT 30\n"
        ),
    )
    .unwrap();
    for p in [&conf, &access] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let log = f.p(&format!("fwknopd-{tag}.log"));
    let p = spawn_in(
        &bed.g,
        &[
            "fwknopd",
            "-f",
            "-c",
            conf.to_str().unwrap(),
            "-a",
            access.to_str().unwrap(),
            "-d",
            run_dir.join("digest.cache").to_str().unwrap(),
            "-p",
            run_dir.join("fwknopd.pid").to_str().unwrap(),
        ],
        &log,
        "fwknopd",
    );
    // Ready once its chain is hooked into INPUT; then give pcap a moment.
    let t = Instant::now();
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &bed.g, "iptables", "-S", "INPUT"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("-j FWKNOP_INPUT") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "fwknopd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    p
}
