//! The `spa-server` binary on bad input: each error is one line on stderr
//! naming the file and the cause, with exit status 1 and no panic.

mod pki_support;

use std::path::Path;

use pki_support::*;
use spa_pki::{self as pki, CaAlgorithm, InitOptions};
use time::{Duration, OffsetDateTime};

/// A CA in `d/ca` with alice (Ed25519, from a CSR) and bob (P-256).
fn setup(d: &Path) {
    spa_ok(d, &["pki", "init", "--dir", "ca", "--name", "spa CA"]);
    genpkey(d, Alg::Ed25519, "alice.key");
    csr(d, "alice.key", "alice", "alice.csr");
    spa_ok(
        d,
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--csr",
            "alice.csr",
            "--name",
            "alice",
            "--out",
            "alice.pem",
        ],
    );
    genpkey(d, Alg::P256, "bob.key");
    pubout(d, "bob.key", "bob.pub");
    spa_ok(
        d,
        &[
            "pki",
            "issue",
            "--dir",
            "ca",
            "--public-key",
            "bob.pub",
            "--name",
            "bob",
            "--out",
            "bob.pem",
        ],
    );
}

fn issue_args<'a>(key_opt: &'a str, key_file: &'a str) -> Vec<&'a str> {
    vec![
        "pki", "issue", "--dir", "ca", key_opt, key_file, "--name", "x", "--out", "x.pem",
    ]
}

#[test]
fn malformed_pem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    let pem = std::fs::read_to_string(d.join("ca/ca.pem")).expect("read");
    std::fs::write(d.join("trunc.pem"), &pem[..pem.len() / 2]).expect("write");
    assert_eq!(
        spa_err(
            d,
            &["pki", "verify", "--ca", "trunc.pem", "--cert", "alice.pem"]
        ),
        "spa-server: error: trunc.pem: malformed PEM: no \"-----END CERTIFICATE-----\" line \
         (truncated file?)"
    );
    let csr = std::fs::read_to_string(d.join("alice.csr")).expect("read");
    std::fs::write(d.join("b64.csr"), csr.replacen('M', "*", 1)).expect("write");
    let line = spa_err(d, &issue_args("--csr", "b64.csr"));
    assert!(
        line.starts_with("spa-server: error: b64.csr: malformed PEM: bad base64"),
        "{line}"
    );
    // A PEM file of the wrong kind.
    let line = spa_err(d, &issue_args("--public-key", "alice.pem"));
    assert_eq!(
        line,
        "spa-server: error: alice.pem: expected a PEM \"PUBLIC KEY\" block, found \"CERTIFICATE\""
    );
}

#[test]
fn malformed_der() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    std::fs::write(d.join("garbage.der"), b"\x30\x03\x01\x02\x03").expect("write");
    let line = spa_err(d, &issue_args("--public-key", "garbage.der"));
    assert!(
        line.starts_with("spa-server: error: garbage.der: public key is malformed: "),
        "{line}"
    );
    let line = spa_err(d, &issue_args("--csr", "garbage.der"));
    assert!(
        line.starts_with("spa-server: error: garbage.der: not a certificate request: "),
        "{line}"
    );
    let line = spa_err(
        d,
        &[
            "pki",
            "verify",
            "--ca",
            "ca/ca.pem",
            "--cert",
            "garbage.der",
        ],
    );
    assert!(
        line.starts_with("spa-server: error: garbage.der: certificate is malformed: "),
        "{line}"
    );
    std::fs::write(d.join("text.crl"), b"this is not a CRL\n").expect("write");
    let line = spa_err(
        d,
        &[
            "pki",
            "verify",
            "--ca",
            "ca/ca.pem",
            "--crl",
            "text.crl",
            "--cert",
            "alice.pem",
        ],
    );
    assert_eq!(
        line,
        "spa-server: error: text.crl: CRL is malformed: neither PEM (no -----BEGIN line) nor DER \
         (no SEQUENCE)"
    );
}

#[test]
fn key_file_readable_by_others() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    chmod(&d.join("ca/ca.key"), 0o644);
    assert_eq!(
        spa_err(d, &issue_args("--public-key", "bob.pub")),
        "spa-server: error: key file ca/ca.key is readable by others (mode 0644): run chmod 600 \
         ca/ca.key"
    );
    chmod(&d.join("alice.key"), 0o620);
    assert_eq!(
        spa_err(
            d,
            &[
                "pki",
                "verify",
                "--ca",
                "ca/ca.pem",
                "--cert",
                "alice.pem",
                "--key",
                "alice.key"
            ]
        ),
        "spa-server: error: key file alice.key is writable by others (mode 0620): run chmod 600 \
         alice.key"
    );
    spa_ok(d, &["keygen", "--out", "green.key"]);
    chmod(&d.join("green.key"), 0o640);
    assert!(spa_err(d, &["pubkey", "--key", "green.key"]).contains("(mode 0640)"));
}

#[test]
fn csr_with_a_bad_signature() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    for (alg, key) in [(Alg::Ed25519, "e.key"), (Alg::P256, "p.key")] {
        genpkey(d, alg, key);
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                key,
                "-subj",
                "/CN=mallory",
                "-outform",
                "DER",
                "-out",
                "m.der",
            ],
        );
        let mut der = std::fs::read(d.join("m.der")).expect("read");
        // Flip a bit of the signature (the last bytes of the request).
        let n = der.len();
        der[n - 3] ^= 0x01;
        std::fs::write(d.join("m.der"), &der).expect("write");
        let line = spa_err(d, &issue_args("--csr", "m.der"));
        assert!(
            line.starts_with(
                "spa-server: error: m.der: the certificate request's signature does not verify"
            ),
            "{alg:?}: {line}"
        );
    }
}

#[test]
fn expired_ca_refuses_to_issue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let long_ago = OffsetDateTime::now_utc() - Duration::days(400);
    pki::init(
        &d.join("old"),
        &InitOptions {
            name: "old CA".into(),
            algorithm: CaAlgorithm::Ed25519,
            days: 30,
        },
        long_ago,
    )
    .expect("init in the past");
    genpkey(d, Alg::Ed25519, "k.key");
    pubout(d, "k.key", "k.pub");
    let line = spa_err(
        d,
        &[
            "pki",
            "issue",
            "--dir",
            "old",
            "--public-key",
            "k.pub",
            "--name",
            "k",
            "--out",
            "k.pem",
        ],
    );
    assert!(
        line.starts_with("spa-server: error: the CA certificate old/ca.pem expired at "),
        "{line}"
    );
    assert!(
        line.ends_with("refusing to issue from it (make a new CA with pki init)"),
        "{line}"
    );
    assert!(!d.join("k.pem").exists());
}

#[test]
fn crl_from_another_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    spa_ok(d, &["pki", "init", "--dir", "other", "--name", "other CA"]);
    spa_ok(
        d,
        &["pki", "crl", "--dir", "other", "--out", "other-crl.pem"],
    );
    assert_eq!(
        spa_err(
            d,
            &[
                "pki",
                "verify",
                "--ca",
                "ca/ca.pem",
                "--crl",
                "other-crl.pem",
                "--cert",
                "alice.pem"
            ]
        ),
        "spa-server: error: other-crl.pem: the CRL was issued by a CA that is not configured (its \
         issuer is none of the given CA certificates)"
    );
    // Configuring both CAs is fine.
    spa_ok(
        d,
        &[
            "pki",
            "verify",
            "--ca",
            "ca/ca.pem",
            "--ca",
            "other/ca.pem",
            "--crl",
            "other-crl.pem",
            "--cert",
            "alice.pem",
        ],
    );
}

#[test]
fn crl_past_its_next_update_fails_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    spa_ok(
        d,
        &[
            "pki", "crl", "--dir", "ca", "--days", "1", "--out", "crl.pem",
        ],
    );
    let args = |at: &str| {
        vec![
            "pki".to_owned(),
            "verify".into(),
            "--ca".into(),
            "ca/ca.pem".into(),
            "--crl".into(),
            "crl.pem".into(),
            "--cert".into(),
            "alice.pem".into(),
            "--at".into(),
            at.to_owned(),
        ]
    };
    let soon = pki::rfc3339(OffsetDateTime::now_utc() + Duration::hours(12));
    let later = pki::rfc3339(OffsetDateTime::now_utc() + Duration::days(2));
    let a = args(&soon);
    spa_ok(d, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let a = args(&later);
    assert_eq!(
        spa_err(d, &a.iter().map(String::as_str).collect::<Vec<_>>()),
        "spa-server: alice.pem: refused: a CRL for it is past its nextUpdate (fail closed) \
         (certificate:crl_expired)"
    );
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    assert_eq!(
        spa_err(
            d,
            &[
                "pki",
                "verify",
                "--ca",
                "ca/ca.pem",
                "--cert",
                "alice.pem",
                "--key",
                "bob.key"
            ]
        ),
        "spa-server: error: the private key bob.key does not match the certificate alice.pem (the \
         key is P-256, the certificate's key Ed25519)"
    );
    genpkey(d, Alg::Ed25519, "eve.key");
    assert_eq!(
        spa_err(
            d,
            &[
                "pki",
                "verify",
                "--ca",
                "ca/ca.pem",
                "--cert",
                "alice.pem",
                "--key",
                "eve.key"
            ]
        ),
        "spa-server: error: the private key eve.key does not match the certificate alice.pem"
    );
    // The CA's own key replaced by another CA's.
    spa_ok(d, &["pki", "init", "--dir", "other", "--name", "other CA"]);
    std::fs::copy(d.join("other/ca.key"), d.join("ca/ca.key")).expect("copy");
    assert_eq!(
        spa_err(d, &issue_args("--public-key", "bob.pub")),
        "spa-server: error: the CA key ca/ca.key does not match the CA certificate ca/ca.pem"
    );
}

#[test]
fn other_mistakes_are_one_clear_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["pki", "init", "--dir", "ca", "--name", "again"],
            "spa-server: error: ca already holds a CA (ca/ca.key exists); refusing to overwrite it",
        ),
        (
            vec!["pki", "crl", "--dir", "nothing", "--out", "x.pem"],
            "spa-server: error: nothing holds no CA (ca.pem is missing): run spa-server pki init \
             --dir nothing",
        ),
        (
            vec!["pki", "revoke", "--dir", "ca", "--serial", "99"],
            "spa-server: error: serial 99 was not issued by this CA (not in ca/index.txt)",
        ),
        (
            vec!["pki", "crl", "--dir", "ca", "--days", "0", "--out", "x.pem"],
            "spa-server: error: invalid number of days \"0\": must be between 1 and 36500",
        ),
        (
            vec![
                "pki",
                "issue",
                "--dir",
                "ca",
                "--public-key",
                "bob.pub",
                "--name",
                "b",
                "--server",
                "--out",
                "x.pem",
            ],
            "spa-server: error: invalid server certificate \"b\": needs at least one DNS name or \
             IP address",
        ),
        (
            vec![
                "pki",
                "issue",
                "--dir",
                "ca",
                "--public-key",
                "bob.pub",
                "--name",
                "b",
                "--email",
                "no-at-sign",
                "--out",
                "x.pem",
            ],
            "spa-server: error: invalid e-mail address \"no-at-sign\": has no '@'",
        ),
        (
            vec!["keygen", "--out", "alice.key"],
            "spa-server: error: alice.key already exists; refusing to overwrite it (--force \
             replaces it)",
        ),
        (
            vec!["pubkey", "--key", "bob.key"],
            "spa-server: error: bob.key: a P-256 key has no one-line public key; its public key \
             travels in its certificate",
        ),
        // A certificate is public: no advice to chmod it.
        (
            vec!["pubkey", "--key", "ca/ca.pem"],
            "spa-server: error: ca/ca.pem: this is a certificate, which is public, not a \
             private key: `pubkey --key` takes the key file that `keygen` wrote",
        ),
        (
            vec!["pubkey", "--key", "missing.key"],
            "spa-server: error: cannot open missing.key: No such file or directory (os error 2)",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(spa_err(d, &args), want, "{args:?}");
    }
    spa_ok(d, &["pki", "revoke", "--dir", "ca", "--serial", "1"]);
    let line = spa_err(d, &["pki", "revoke", "--dir", "ca", "--serial", "1"]);
    assert!(
        line.starts_with("spa-server: error: serial 1 is already revoked (at "),
        "{line}"
    );
    // A client key spa cannot use (SPEC §2.2).
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.key",
        ],
    );
    pubout(d, "p384.key", "p384.pub");
    let line = spa_err(d, &issue_args("--public-key", "p384.pub"));
    assert!(
        line.starts_with("spa-server: error: p384.pub: a client key must be Ed25519 or P-256"),
        "{line}"
    );
}

#[test]
fn list_and_no_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    setup(d);
    spa_ok(
        d,
        &[
            "pki",
            "revoke",
            "--dir",
            "ca",
            "--serial",
            "0x2",
            "--reason",
            "superseded",
        ],
    );
    let out = spa_ok(d, &["pki", "list", "--dir", "ca"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("1\tvalid\tuntil "), "{out}");
    assert!(lines[0].ends_with("\tclient\talice"), "{out}");
    assert!(lines[1].starts_with("2\trevoked "), "{out}");
    assert!(lines[1].contains("(superseded)"), "{out}");
    // Without a command: usage on stderr, exit 2 (clap).
    let out = spa(d, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

/// README's layout: the CA directory is 0700 (its key 0600), its parents
/// are not, and
/// `--cert-out` writes the public certificate (0644) where the daemons'
/// user reads it; without it, the output says to copy it.
#[test]
fn init_cert_out_writes_a_public_copy_and_keeps_the_directory_closed() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let out = spa_ok(
        d,
        &[
            "pki",
            "init",
            "--dir",
            "etc/spa/ca",
            "--name",
            "spa CA",
            "--cert-out",
            "etc/spa/ca.pem",
        ],
    );
    assert!(out.contains("ca.pem (mode 0644)"), "{out}");
    let mode = |p: &str| {
        std::fs::metadata(d.join(p))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        (
            mode("etc/spa/ca"),
            mode("etc/spa/ca/ca.key"),
            mode("etc/spa/ca.pem")
        ),
        (0o700, 0o600, 0o644)
    );
    // The parents pki init made have the usual mode (the umask's), not
    // 0700: the daemons' user reads etc/spa/ca.pem.
    std::fs::create_dir(d.join("usual")).expect("mkdir");
    assert_eq!(mode("etc/spa"), mode("usual"));
    assert_eq!(
        std::fs::read(d.join("etc/spa/ca.pem")).expect("copy"),
        std::fs::read(d.join("etc/spa/ca/ca.pem")).expect("ca.pem")
    );
    let out = spa_ok(d, &["pki", "init", "--dir", "ca2", "--name", "spa CA"]);
    assert!(out.contains("--cert-out"), "{out}");
}
