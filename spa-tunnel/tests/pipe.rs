//! Both ends of the tunnel over loopback: handshake, the request line,
//! then a splice to an echo service and back, with payloads far larger
//! than every buffer, half-closes in both orders, and a refused client.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};
use spa_tunnel::{Error, TlsPipe};

mod common;
use common::configs;

/// An echo service: copies back until EOF, then half-closes.
fn echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Green's side: handshake, line, `OK`, splice to the echo service.
fn server(cfg: Arc<ServerConfig>, echo_port: u16) -> (u16, thread::JoinHandle<Result<(), Error>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut p = TlsPipe::new(UnbufferedServerConnection::new(cfg).unwrap(), s)?;
        p.handshake(deadline)?;
        let line = p.read_line(deadline)?;
        assert_eq!(line, "CONNECT echo");
        p.write_all(b"OK\n", deadline)?;
        let up = TcpStream::connect(("127.0.0.1", echo_port)).unwrap();
        up.set_nonblocking(true).unwrap();
        let mut up_r = up.try_clone().unwrap();
        let mut up_w = up;
        p.splice(&mut up_r, &mut up_w, false, |w| {
            let _ = w.shutdown(Shutdown::Write);
        })
    });
    (port, h)
}

fn client(cfg: Arc<ClientConfig>, port: u16, early: &[u8]) -> TlsPipe<UnbufferedClientConnection> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut p = TlsPipe::new(UnbufferedClientConnection::new(cfg, name).unwrap(), s).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    p.handshake(deadline).unwrap();
    let mut line = b"CONNECT echo\n".to_vec();
    line.extend_from_slice(early);
    p.write_all(&line, deadline).unwrap();
    assert_eq!(p.read_line(deadline).unwrap(), "OK");
    p
}

#[test]
fn large_payloads_go_through_both_ways_and_both_ends_finish() {
    let (scfg, ccfg) = configs();
    let (port, green) = server(scfg, echo());
    // Bytes sent with the request line reach the service first.
    let mut p = client(ccfg, port, b"early:");
    let (mut app, mut ours) = UnixStream::pair().unwrap();
    let mut ours_w = ours.try_clone().unwrap();
    let relay = thread::spawn(move || {
        p.splice(&mut ours, &mut ours_w, true, |w| {
            let _ = w.shutdown(Shutdown::Write);
        })
    });
    let payload: Vec<u8> = (0..12_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut app_w = app.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = thread::spawn(move || {
        app_w.write_all(&p2).unwrap();
        app_w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    app.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), payload.len() + 6);
    assert_eq!(&got[..6], b"early:");
    assert!(got[6..] == payload[..]);
    relay.join().unwrap().unwrap();
    green.join().unwrap().unwrap();
}

#[test]
fn the_service_may_answer_after_the_client_half_closes() {
    // A service that reads to EOF, then answers: the client's half-close
    // must reach it while the answer still comes back.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let svc = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        s.write_all(format!("got {}", all.len()).as_bytes())
            .unwrap();
    });
    let (scfg, ccfg) = configs();
    let (port, green) = server(scfg, svc);
    let mut p = client(ccfg, port, b"");
    let (mut app, mut ours) = UnixStream::pair().unwrap();
    let mut ours_w = ours.try_clone().unwrap();
    let relay = thread::spawn(move || p.splice(&mut ours, &mut ours_w, true, |_| {}));
    app.write_all(&[1u8; 300_000]).unwrap();
    app.shutdown(Shutdown::Write).unwrap();
    relay.join().unwrap().unwrap();
    let mut got = String::new();
    app.read_to_string(&mut got).unwrap();
    assert_eq!(got, "got 300000");
    green.join().unwrap().unwrap();
}

#[test]
fn a_client_the_server_does_not_trust_fails_the_handshake_with_an_alert() {
    let (scfg, _) = configs();
    let (_, other) = configs();
    let (port, green) = server(scfg, echo());
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut p = TlsPipe::new(UnbufferedClientConnection::new(other, name).unwrap(), s).unwrap();
    let e = p
        .handshake(Instant::now() + Duration::from_secs(10))
        .unwrap_err();
    assert!(matches!(e, Error::Tls(_)), "{e}");
    // The server learns why (the client's alert), not just an EOF.
    let e = green.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn a_silent_peer_times_out() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (_, ccfg) = configs();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _held = l.accept().unwrap();
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut p = TlsPipe::new(UnbufferedClientConnection::new(ccfg, name).unwrap(), s).unwrap();
    let e = p
        .handshake(Instant::now() + Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
}
