//! `spa-server keygen`: green's receiver or order-signing key, with what
//! the command prints.

use anyhow::Result;
use spa_daemon::keygen::{KeyKind, keygen};

use crate::cli::KeygenArgs;

/// `spa-server keygen`.
pub fn keygen_command(a: &KeygenArgs) -> Result<()> {
    let kind = if a.signing {
        KeyKind::Signing
    } else {
        KeyKind::Receiver
    };
    let line = keygen(&a.out, kind, a.force)?;
    eprintln!(
        "wrote {} to {} (mode 0600); public key:",
        match kind {
            KeyKind::Receiver => "green's X25519 receiver key",
            KeyKind::Signing => "green's Ed25519 order-signing key",
        },
        a.out.display()
    );
    println!("{line}");
    Ok(())
}
