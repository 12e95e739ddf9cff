//! The independent reference verifier (`proto-spec/reference/verify.py`,
//! written from SPEC.md in Python) over every committed test vector (SPEC
//! §10): it must rebuild every datagram and reach every verdict, and it must
//! fail when a vector and the specification disagree.
//!
//! Needs `/usr/bin/python3` with the `cryptography` package (Debian
//! `python3-cryptography`, installed by `.ci/run`); without it the tests
//! fail, unless `SPA_TEST_ALLOW_SKIP=1` (`tests::cannot_run`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PYTHON: &str = "/usr/bin/python3";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Whether the interpreter and its `cryptography` package are present;
/// reports through `tests::cannot_run` when not.
fn python_ready(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        tests::cannot_run(
            test,
            "/usr/bin/python3 with the cryptography package is missing \
             (apt-get install python3-cryptography)",
        );
    }
    ok
}

fn run_verifier(vector_dir: &Path) -> Output {
    Command::new(PYTHON)
        .arg(repo().join("proto-spec/reference/verify.py"))
        .arg(vector_dir)
        .output()
        .expect("run verify.py")
}

fn summary(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn vector_count() -> usize {
    ["knocks.json", "orders.json"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo().join("proto-spec/test-vectors").join(f))
                .expect("vector file");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            v["vectors"].as_array().expect("vectors").len()
        })
        .sum()
}

#[test]
fn reference_verifier_agrees_with_every_vector() {
    if !python_ready("reference_verifier_agrees_with_every_vector") {
        return;
    }
    let out = run_verifier(&repo().join("proto-spec/test-vectors"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", summary(&out));
    let want = format!("{} passed, 0 failed", vector_count());
    assert!(
        text.lines().any(|l| l == want),
        "expected `{want}`; {}",
        summary(&out)
    );
}

#[test]
fn reference_verifier_fails_on_a_changed_verdict_or_byte() {
    if !python_ready("reference_verifier_fails_on_a_changed_verdict_or_byte") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("spa-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = repo().join("proto-spec/test-vectors");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(src.join(f)).expect("read")).expect("json")
    };
    let mut knocks = read("knocks.json");
    let mut orders = read("orders.json");
    // A refusal's sub-reason changed, and one byte of an order's input.
    let first_cert = knocks["vectors"]
        .as_array_mut()
        .expect("vectors")
        .iter_mut()
        .find(|v| v["expected"]["reason"] == "certificate")
        .expect("a certificate vector");
    first_cert["expected"]["detail"] = "other".into();
    let ts = &mut orders["vectors"][0]["inputs"]["order_timestamp_ms"];
    *ts = (ts.as_u64().expect("ts") + 1).into();
    std::fs::write(dir.join("knocks.json"), knocks.to_string()).expect("write");
    std::fs::write(dir.join("orders.json"), orders.to_string()).expect("write");
    let out = run_verifier(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", summary(&out));
    assert!(text.contains(", 2 failed"), "{}", summary(&out));
}
