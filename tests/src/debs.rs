//! The Debian packages the install tests use: `dist/build-debs.sh` (a
//! release build, man pages, completions, `cargo deb`), run as an operator
//! would, and the three `.deb` files it writes; and the operator's steps
//! the install tests share (green's `[relay]` from red's init, the client's
//! profile).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The packages, in the order [`build`] returns them.
pub const PACKAGES: [&str; 3] = ["spa-server", "red-relay", "spa-client"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Whether `cargo deb` is installed (`cargo install cargo-deb --locked`).
pub fn have_cargo_deb() -> bool {
    Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the packages with `dist/build-debs.sh` and returns their paths,
/// in [`PACKAGES`] order.
///
/// # Panics
/// When the script fails or a package is missing afterwards.
pub fn build(test: &str) -> Vec<PathBuf> {
    let t0 = Instant::now();
    let mut c = Command::new("bash");
    c.arg(workspace().join("dist/build-debs.sh"))
        .current_dir(workspace());
    crate::build_env(&mut c);
    let out = c.output().expect("build-debs.sh");
    assert!(
        out.status.success(),
        "build-debs.sh:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{test}: packages built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Where build-debs.sh writes them: the cargo target directory.
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), |t| workspace().join(t))
        .join("debian");
    PACKAGES
        .iter()
        .map(|p| {
            std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{p}_")) && n.ends_with(".deb"))
                })
                .unwrap_or_else(|| panic!("no {p} .deb in {}", dir.display()))
        })
        .collect()
}

/// Red's public key from `red-relay init`'s output (the `[relay]` section
/// it prints for green).
///
/// # Panics
/// When the output has no `red_key = "..."` line.
pub fn red_key_from_init(init_output: &str) -> String {
    init_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("red_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("red-relay init prints red_key:\n{init_output}"))
        .to_owned()
}

/// Appends to green's configuration at `config` the `[relay]` section as
/// red's init prints it (red at `red`, orders from `source`, red's `web`
/// service on port 80) and a rule granting `web` to every identity.
///
/// # Panics
/// When the file cannot be read or written.
pub fn add_relay(config: &Path, red: Ipv4Addr, red_key: &str, source: Ipv4Addr) {
    let mut cfg = std::fs::read_to_string(config).expect("green's configuration");
    cfg.push_str(&format!(
        "\n[relay]\nred = \"{red}:62202\"\nred_key = \"{red_key}\"\n\
         signing_key = \"/etc/spa/green-signing.key\"\nsource = \"{source}\"\n\
         services = [{{ name = \"web\", port = 80 }}]\n\n\
         [[rules]]\nidentity = \"*\"\nservices = [\"web\"]\n"
    ));
    std::fs::write(config, cfg).expect("green's configuration");
}

/// Writes `dir/client.toml`: the profile `gw` for green at `server:port`
/// with `server_key`, the client's `dir/alice.crt` and `dir/alice.key`,
/// the `echo` service.
///
/// # Panics
/// When the file cannot be written.
pub fn write_client_profile(dir: &Path, server: Ipv4Addr, port: u16, server_key: &str) {
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "[profiles.gw]\nserver = \"{server}\"\nport = {port}\nserver_key = \"{server_key}\"\n\
             certificate = \"{}\"\nkey = \"{}\"\nservices = [\"echo\"]\nallow_ip = \"auto\"\nlifetime = 60\n",
            p("alice.crt"),
            p("alice.key")
        ),
    )
    .expect("client.toml");
}
