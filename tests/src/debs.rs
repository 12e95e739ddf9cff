//! The Debian packages the install tests use: `dist/build-debs.sh` (a
//! release build, man pages, completions, `cargo deb`), run as an operator
//! would, and the three `.deb` files it writes.

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
    // Not the environment cargo gave this test (CARGO_PKG_*, …), as
    // `crate::bin` builds: a build script that watches a variable would
    // rebuild everything on the next plain build.
    let mut c = Command::new("bash");
    c.arg(workspace().join("dist/build-debs.sh"))
        .current_dir(workspace())
        .env_clear();
    for (k, v) in std::env::vars_os() {
        let keep = k.to_str().is_some_and(|k| {
            matches!(
                k,
                "PATH"
                    | "HOME"
                    | "USER"
                    | "TERM"
                    | "LANG"
                    | "CARGO_HOME"
                    | "RUSTUP_HOME"
                    | "RUSTUP_TOOLCHAIN"
                    | "RUSTFLAGS"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_INCREMENTAL"
            ) || k.starts_with("CARGO_BUILD_")
                || k.starts_with("CARGO_PROFILE_")
        });
        if keep {
            c.env(k, v);
        }
    }
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
