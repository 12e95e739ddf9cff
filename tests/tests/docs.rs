//! The documentation agrees with what CI does: the packages the README tells a
//! reader to install for the tests are exactly the ones `.ci/run` installs.
//! The demo shows its build; articles read right. No root, no network.

use std::path::Path;

/// The words of the first `apt-get install` command in `text` after
/// `anchor` (a shell command, possibly continued over lines with `\`),
/// options removed.
fn apt_packages(text: &str, anchor: &str, what: &str) -> Vec<String> {
    let after = text
        .find(anchor)
        .unwrap_or_else(|| panic!("{what}: no {anchor:?}"));
    let start = after
        + text[after..]
            .find("apt-get install")
            .unwrap_or_else(|| panic!("{what}: no `apt-get install` line after {anchor:?}"));
    let mut words = Vec::new();
    for line in text[start..].lines() {
        let (body, continued) = match line.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        words.extend(body.split_whitespace().map(str::to_owned));
        if !continued {
            break;
        }
    }
    let packages: Vec<String> = words
        .into_iter()
        .skip_while(|w| w != "install")
        .skip(1)
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert!(!packages.is_empty(), "{what}: an empty apt-get install");
    packages
}

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn readme_apt_line_matches_ci() {
    let ci = apt_packages(&read(".ci/run"), "apt: system packages", ".ci/run");
    let readme = apt_packages(&read("README.md"), "the same line as CI's", "README.md");
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let (ci_s, readme_s) = (sorted(&ci), sorted(&readme));
    let mut dedup = ci_s.clone();
    dedup.dedup();
    assert_eq!(dedup, ci_s, ".ci/run names a package twice");
    assert_eq!(
        readme_s,
        ci_s,
        "README.md's apt-get line and .ci/run's differ: only in the README: {:?}; only in CI: {:?}",
        readme_s
            .iter()
            .filter(|p| !ci_s.contains(p))
            .collect::<Vec<_>>(),
        ci_s.iter()
            .filter(|p| !readme_s.contains(p))
            .collect::<Vec<_>>(),
    );
    // What the tests drive and would fail without.
    for needed in [
        "curl",
        "python3",
        "python3-cryptography",
        "util-linux",
        "conntrack",
        "nftables",
        "iproute2",
        "softhsm2",
        "openssh-client",
        "openssh-server",
        "tcpdump",
    ] {
        assert!(
            ci_s.iter().any(|p| p == needed),
            "{needed} is missing from the apt-get lines"
        );
    }
}

#[test]
fn apt_line_parser_follows_continuations() {
    let text = "x\napt-get install -y --no-install-recommends \\\n    a b \\\n    c\nd e\n";
    assert_eq!(apt_packages(text, "x", "t"), ["a", "b", "c"]);
}

/// The demo's build shows cargo's progress: a first build is minutes of
/// compiling, which `--quiet` turned into silence.
#[test]
fn demo_build_shows_progress() {
    let run = read("demo/run.sh");
    let builds: Vec<&str> = run
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "demo/run.sh builds nothing");
    for b in builds {
        assert!(
            !b.contains("--quiet") && !b.contains(" -q") && !b.contains(">/dev/null"),
            "demo/run.sh hides the build's progress: {b}"
        );
    }
}

/// "an Ed25519 key", never "a Ed25519 key" (nor a ECDSA, a X25519, a HPKE
/// ...): in code, messages and documents.
#[test]
fn articles_before_vowel_sounds() {
    const NAMES: [&str; 8] = [
        "Ed25519", "ECDSA", "EdDSA", "X25519", "HPKE", "HMAC", "RSA", "SPKI",
    ];
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if !matches!(name.as_ref(), "target" | ".git" | "corpus" | "artifacts") {
                    walk(&p, out);
                }
            } else if [".rs", ".md", ".sh", ".toml", ".example", ".service"]
                .iter()
                .any(|x| name.ends_with(x))
                || name == "run"
            {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut files = Vec::new();
    walk(root, &mut files);
    assert!(files.len() > 50, "{} files", files.len());
    let mut found = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for name in NAMES {
                for article in ["a ", "A "] {
                    let bad = format!("{article}{name}");
                    let hit = line
                        .match_indices(&bad)
                        .any(|(i, _)| i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric());
                    // This test's own list of bad spellings.
                    if hit && !line.contains("never \"a ") {
                        found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "'a' before a vowel sound:\n{}",
        found.join("\n")
    );
}
