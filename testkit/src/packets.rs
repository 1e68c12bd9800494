//! Real packets between namespaces, for tests: echo servers and clients over TCP and UDP,
//! whose sockets are made inside a namespace (named as `ip netns` names it) by a thread that
//! entered it. A socket stays in the namespace it was made in, so the rest of the work is
//! done from ordinary threads.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Runs `f` on a thread inside namespace `ns` (`/run/netns/<ns>`).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace fd we just opened; it changes only this thread's
            // network namespace, and this thread ends with the scope.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A TCP and UDP echo server on one address, in a namespace; it answers each message with
/// `<tag> from <peer address>: <message>`, so a client sees where it arrived and as whom.
/// Stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &str, addr: SocketAddr, tag: &str) -> Result<EchoServer> {
        let (tcp, udp) = in_ns(ns, || -> Result<(TcpListener, UdpSocket)> {
            Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?))
        })??;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (s, t) = (stop.clone(), tag.to_owned());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, peer)) => {
                        let t = format!("{t} from {}: ", peer.ip());
                        std::thread::spawn(move || serve_tcp(conn, &t));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let (s, t) = (stop.clone(), tag.to_owned());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let mut reply = format!("{t} from {}: ", from.ip()).into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&reply, from);
                }
            }
        }));
        Ok(EchoServer { stop, threads })
    }
}

/// Echoes each read of a connection, after `head`, until it closes.
fn serve_tcp(mut conn: TcpStream, head: &str) {
    let _ = conn.set_nonblocking(false);
    let mut buf = [0u8; 2048];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut reply = head.as_bytes().to_vec();
                reply.extend_from_slice(&buf[..n]);
                if conn.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection made from namespace `ns`.
pub fn tcp_connect(ns: &str, to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    in_ns(ns, || -> Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    })?
}

/// One message over an open connection; the echo's text.
pub fn tcp_say(stream: &mut TcpStream, message: &str) -> Result<String> {
    stream.write_all(message.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf)?;
    if n == 0 {
        bail!("the connection closed");
    }
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A TCP round trip from `ns` to `to`: connect, one message, its echo.
pub fn tcp_echo(ns: &str, to: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = tcp_connect(ns, to, timeout)?;
    tcp_say(&mut s, "ping")
}

/// A UDP round trip from `ns` to `to`: one datagram, its echo within `timeout`.
pub fn udp_echo(ns: &str, to: SocketAddr, timeout: Duration) -> Result<String> {
    let socket = in_ns(ns, || UdpSocket::bind("0.0.0.0:0"))??;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"ping", to)?;
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).context("no UDP answer")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
