//! A guest on a tap, as small as can be: it opens a tap device the way a VMM does
//! (`IFF_TAP | IFF_NO_PI`), answers ARP for its address with its MAC, sends UDP datagrams,
//! echoes the UDP datagrams sent to it, and keeps those it received. Enough to show that
//! frames go to and from whoever is behind the tap; not a network stack.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::packets::in_ns;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// One UDP datagram the guest received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// The guest: a thread reading the tap.
#[derive(Debug)]
pub struct TapGuest {
    tap: Arc<File>,
    mac: [u8; 6],
    ip: Ipv4Addr,
    received: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Opens tap `name` in namespace `ns` (as a VMM would).
fn open_tap(ns: &str, name: &str) -> Result<File> {
    let name = name.to_owned();
    in_ns(ns, move || -> Result<File> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        #[repr(C)]
        struct IfReq {
            name: [u8; 16],
            flags: libc::c_short,
            _pad: [u8; 22],
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a live `struct ifreq`.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        // Non-blocking reads, so the thread can stop.
        // SAFETY: fcntl on our own descriptor.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(fd)
    })?
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying an IPv4 UDP datagram (UDP checksum 0: none, as IPv4 allows).
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&from.port().to_be_bytes());
    f.extend_from_slice(&to.port().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

impl TapGuest {
    /// Attaches to tap `name` in namespace `ns` as the guest `ip` with `mac`.
    pub fn open(ns: &str, name: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<TapGuest> {
        let tap = Arc::new(open_tap(ns, name)?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, r, s) = (tap.clone(), received.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(&t, mac, ip, &r, &s));
        Ok(TapGuest {
            tap,
            mac,
            ip,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Sends a UDP datagram from `port` to `to`, through the gateway at `gateway_mac`.
    pub fn send_udp(
        &self,
        port: u16,
        to: SocketAddrV4,
        gateway_mac: [u8; 6],
        payload: &[u8],
    ) -> Result<()> {
        let frame = udp_frame(
            self.mac,
            gateway_mac,
            SocketAddrV4::new(self.ip, port),
            to,
            payload,
        );
        (&*self.tap).write_all(&frame).context("write to the tap")
    }

    /// Waits for a datagram to `port` within `timeout`.
    pub fn recv_udp(&self, port: u16, timeout: Duration) -> Result<Datagram> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut got = self.received.lock().unwrap();
                if let Some(i) = got.iter().position(|d| d.to.port() == port) {
                    return Ok(got.remove(i));
                }
            }
            if Instant::now() > deadline {
                bail!("no datagram to port {port} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TapGuest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads frames: answers ARP requests for `ip`, echoes UDP to `ip` (with `tapguest: `
/// before the payload) and keeps what it received.
fn serve(
    tap: &File,
    mac: [u8; 6],
    ip: Ipv4Addr,
    received: &Mutex<Vec<Datagram>>,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let n = match (&*tap).read(&mut buf) {
            Ok(n) => n,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        };
        let f = &buf[..n];
        if f.len() < 42 {
            continue;
        }
        let src_mac: [u8; 6] = f[6..12].try_into().expect("6 bytes");
        match [f[12], f[13]] {
            // ARP request for our address: a reply from our MAC.
            [0x08, 0x06] if f[20..22] == [0, 1] && f[38..42] == ip.octets() => {
                let mut r = Vec::with_capacity(42);
                r.extend_from_slice(&src_mac);
                r.extend_from_slice(&mac);
                r.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
                r.extend_from_slice(&mac);
                r.extend_from_slice(&ip.octets());
                r.extend_from_slice(&f[22..28]);
                r.extend_from_slice(&f[28..32]);
                let _ = (&*tap).write_all(&r);
            }
            // IPv4 UDP to us.
            [0x08, 0x00] if f[23] == 17 && f[30..34] == ip.octets() => {
                let ihl = usize::from(f[14] & 0x0f) * 4;
                let udp = 14 + ihl;
                if f.len() < udp + 8 {
                    continue;
                }
                let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
                let sport = u16::from_be_bytes([f[udp], f[udp + 1]]);
                let dport = u16::from_be_bytes([f[udp + 2], f[udp + 3]]);
                let len = usize::from(u16::from_be_bytes([f[udp + 4], f[udp + 5]]));
                let payload = f[udp + 8..(udp + len).min(f.len())].to_vec();
                let from = SocketAddrV4::new(src, sport);
                let to = SocketAddrV4::new(ip, dport);
                let mut reply = b"tapguest: ".to_vec();
                reply.extend_from_slice(&payload);
                let _ = (&*tap).write_all(&udp_frame(mac, src_mac, to, from, &reply));
                received
                    .lock()
                    .unwrap()
                    .push(Datagram { from, to, payload });
            }
            _ => {}
        }
    }
}

/// A MAC address from `ip -j link`'s `address`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a MAC"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text:?} is not 6 bytes"))
}
