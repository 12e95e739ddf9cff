//! The control socket: a Unix stream socket, one JSON request line and one
//! JSON reply line per connection. `spa-server status` and
//! `spa-server revoke-session` are its clients. Mode 0600: only the daemon's
//! user (and root) may talk to it; each connection's peer credentials
//! (`SO_PEERCRED`) are checked as well, and a peer of any other uid is
//! logged and closed without a reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde_json::Value;
use tracing::warn;

/// The daemon side.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Peer uids served: root and the daemon's own (effective) uid, plus
    /// [`ControlSocket::allow_uid`].
    allowed: Vec<u32>,
}

impl ControlSocket {
    /// Binds (replacing a stale socket file).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            allowed: vec![0, nix::unistd::geteuid().as_raw()],
        })
    }

    /// Serves peers of `uid` too (the daemon's user, before the drop).
    pub fn allow_uid(&mut self, uid: u32) {
        if !self.allowed.contains(&uid) {
            self.allowed.push(uid);
        }
    }

    /// Changes the socket's owner (before dropping privileges).
    pub fn chown(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }

    /// Answers every pending connection without blocking the loop for long.
    pub fn serve_pending(&self, mut handle: impl FnMut(&Value) -> Value) {
        while let Ok((stream, _)) = self.listener.accept() {
            match getsockopt(&stream, PeerCredentials) {
                Ok(c) if self.allowed.contains(&c.uid()) => {
                    let _ = serve_one(stream, &mut handle);
                }
                Ok(c) => warn!(
                    uid = c.uid(),
                    pid = c.pid(),
                    "control socket: refused a peer that is neither root nor the daemon's user"
                ),
                Err(e) => warn!(error = %e, "control socket: no peer credentials, refused"),
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(stream: UnixStream, handle: &mut impl FnMut(&Value) -> Value) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(64 * 1024)
        .read_line(&mut line)?;
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(req) => handle(&req),
        Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let mut w = stream;
    writeln!(w, "{reply}")
}

/// The client side: sends one request, returns the reply.
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ask_raw(path: &Path) -> std::io::Result<String> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        writeln!(s, "{{\"cmd\":\"status\"}}")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    }

    /// Serves what is pending while a client thread waits for its reply.
    fn exchange(ctl: &ControlSocket) -> String {
        let path = ctl.path.clone();
        let client = std::thread::spawn(move || ask_raw(&path));
        let mut served = 0;
        while !client.is_finished() {
            ctl.serve_pending(|_| {
                served += 1;
                serde_json::json!({"ok": true})
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        let line = client.join().unwrap().unwrap_or_default();
        assert_eq!(served, usize::from(!line.is_empty()));
        line
    }

    #[test]
    fn serves_its_own_uid() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = ControlSocket::bind(&dir.path().join("c.sock")).unwrap();
        assert_eq!(exchange(&ctl).trim(), r#"{"ok":true}"#);
    }

    #[test]
    fn refuses_a_peer_with_another_uid_without_a_reply() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctl = ControlSocket::bind(&dir.path().join("c.sock")).unwrap();
        // As if the daemon ran as another user and this test were a third
        // one: neither root nor the daemon's uid.
        let me = nix::unistd::geteuid().as_raw();
        ctl.allowed = vec![me.wrapping_add(1)];
        ctl.allow_uid(me.wrapping_add(2));
        assert_eq!(exchange(&ctl), "", "no reply of any kind");
        ctl.allow_uid(me);
        assert_eq!(exchange(&ctl).trim(), r#"{"ok":true}"#);
    }
}
