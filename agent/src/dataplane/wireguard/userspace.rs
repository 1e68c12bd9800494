//! Userspace WireGuard: a boringtun device owned by the agent.
//!
//! boringtun is configured only through its text protocol. We hand it one end of a socket
//! pair (`DeviceConfig.uapi_fd`) instead of letting it bind `/var/run/wireguard/<if>.sock`
//! itself, because in socket mode it blocks SIGINT/SIGTERM and reads them on its own thread,
//! which would steal the agent's shutdown signal. `wg` still needs that socket, so we serve
//! it ourselves and relay each `get=1` to the device over the same pair.
//!
//! boringtun's threads are plain OS threads with blocking epoll loops; they are created by
//! the reconciler's thread and so share its network namespace. Closing our end of the pair
//! makes the device exit; [`UserspaceDevice::stop`] then joins its threads.
//!
//! The socket we serve is hardened against its clients: it exists with mode 0600 from the
//! moment it has its name (bound in a private 0700 directory, then renamed into place); each
//! connection has a deadline and a bounded request, and connections are served side by side
//! from one poll loop, so a client that sends nothing, or a megabyte without a newline,
//! delays no one; a failed accept is retried, never the end of the server; and the server is
//! stopped through a wake-up socket it owns, never by touching a descriptor number that may
//! have been reused. Replies carry preshared keys: they are wiped once sent.

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boringtun::device::{DeviceConfig, DeviceHandle};
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::plan::ObservedDevice;
use super::uapi::{self, HandshakeClock, SetRequest};

/// Where `wg` looks for userspace devices. Per host, not per network namespace.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a request to the device may take before we call the device stuck. A 10,000-peer
/// `set=1` takes well under a second; a device whose worker panicked never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping a device may take before the agent goes on without it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `wg` client may keep a connection: to send its request and read the reply.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request read from a client (`get=1` and its empty line are 7 bytes).
pub const MAX_REQUEST: usize = 4096;
/// Connections served at once; a new one beyond this closes the oldest.
const MAX_CLIENTS: usize = 16;
/// After an accept failed for want of descriptors or memory, wait this long before trying
/// again rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create the control socket pair")]
    SocketPair(#[source] io::Error),
    #[error("start boringtun device {0}")]
    Start(String, #[source] boringtun::device::Error),
    #[error("serve {0}")]
    Serve(PathBuf, #[source] io::Error),
    #[error("talk to the device")]
    Talk(#[source] io::Error),
    #[error("the device refused the configuration (errno {0})")]
    Refused(i32),
    #[error("read the device")]
    Parse(#[source] uapi::ParseError),
}

/// Our end of the device's control connection. One request at a time: boringtun reads a
/// request with a fresh buffered reader per wake-up, so a second request sent before the
/// first is answered could be lost.
struct Control {
    stream: UnixStream,
}

impl Control {
    /// Sends one whole request and returns the reply up to and including `errno=N` and the
    /// empty line after it. The reply may hold keys: it is wiped when dropped.
    fn request(&mut self, text: &str) -> io::Result<Zeroizing<String>> {
        self.stream.write_all(text.as_bytes())?;
        let mut reply = Zeroizing::new(Vec::with_capacity(4096));
        let mut chunk = Zeroizing::new([0u8; 4096]);
        loop {
            let n = match self.stream.read(&mut chunk[..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            uapi::push_secret(&mut reply, &chunk[..n]);
            if uapi::reply_complete(&reply) {
                let text = String::from_utf8(std::mem::take(&mut *reply))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.utf8_error()))?;
                return Ok(Zeroizing::new(text));
            }
        }
    }
}

/// A running boringtun device and the `wg` socket we serve for it.
pub struct UserspaceDevice {
    name: String,
    control: Arc<Mutex<Control>>,
    device: Option<DeviceHandle>,
    server: Option<SocketServer>,
}

impl std::fmt::Debug for UserspaceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceDevice")
            .field("name", &self.name)
            .field("running", &self.device.is_some())
            .finish()
    }
}

impl UserspaceDevice {
    /// Creates the TUN interface `name` (down, no address) and starts its device.
    pub fn start(name: &str) -> Result<UserspaceDevice, Error> {
        let (ours, theirs) = UnixStream::pair().map_err(Error::SocketPair)?;
        ours.set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(Error::SocketPair)?;
        ours.set_write_timeout(Some(REQUEST_TIMEOUT))
            .map_err(Error::SocketPair)?;
        let theirs = above_every_descriptor(theirs.into()).map_err(Error::SocketPair)?;
        let config = DeviceConfig {
            // One worker measured fastest on 2 cores; more threads only contend.
            n_threads: 1,
            use_connected_socket: true,
            use_multi_queue: false,
            uapi_fd: theirs.into_raw_fd(),
        };
        // boringtun owns `theirs` from here on (it wraps the fd in its own UnixStream).
        let device = DeviceHandle::new(name, config).map_err(|e| Error::Start(name.into(), e))?;
        close_tun_on_exec();
        let control = Arc::new(Mutex::new(Control { stream: ours }));
        let mut dev = UserspaceDevice {
            name: name.to_owned(),
            control: Arc::clone(&control),
            device: Some(device),
            server: None,
        };
        let path = Path::new(SOCKET_DIR).join(format!("{name}.sock"));
        match SocketServer::start(path.clone(), control) {
            Ok(server) => dev.server = Some(server),
            Err(e) => {
                dev.stop();
                return Err(Error::Serve(path, e));
            }
        }
        Ok(dev)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies a `set=1` request.
    pub fn set(&self, request: &SetRequest) -> Result<(), Error> {
        let reply = self.request(request.expose())?;
        match reply.trim().strip_prefix("errno=").map(str::parse::<i32>) {
            Some(Ok(0)) => Ok(()),
            Some(Ok(errno)) => Err(Error::Refused(errno)),
            _ => Err(Error::Parse(uapi::ParseError::Truncated)),
        }
    }

    /// Reads the device back.
    pub fn get(&self) -> Result<ObservedDevice, Error> {
        let reply = self.request("get=1\n\n")?;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // boringtun 0.7 reports the time since the last handshake, not its time.
        uapi::parse_get(&reply, HandshakeClock::Elapsed { now_unix }).map_err(Error::Parse)
    }

    fn request(&self, text: &str) -> Result<Zeroizing<String>, Error> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.request(text).map_err(Error::Talk)
    }

    /// Stops serving the socket, closes the control connection (the device exits when it
    /// sees it closed, removing its TUN interface) and joins the device's threads.
    ///
    /// Bounded: the device is joined and dropped on a thread of its own, for at most
    /// [`STOP_TIMEOUT`]. boringtun's `DeviceHandle` can block for ever: a worker that panics
    /// inside a configuration change leaves the device's write intent set (its lock is not
    /// unwound), and dropping the handle then waits for a writer that is gone. The reconciler
    /// must not wait with it; a device that does not stop in time is left to its thread, and
    /// its interface with it, which the next start then reports as busy.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        let Some(device) = self.device.take() else {
            return;
        };
        {
            let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            let _ = control.stream.shutdown(std::net::Shutdown::Both);
        }
        let (done_tx, done_rx) = mpsc::channel();
        let stopper = std::thread::Builder::new()
            .name("wg-stop".into())
            .spawn(move || {
                let mut device = device;
                // wait() unwraps each worker's join: contain a worker's panic here.
                let joined =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.wait()));
                let _ = done_tx.send(Stopped::Joined {
                    panicked: joined.is_err(),
                });
                drop(device);
                let _ = done_tx.send(Stopped::Dropped);
            });
        if let Err(e) = stopper {
            // The closure, and the device in it, were dropped inside spawn.
            warn!(interface = %self.name, error = %e, "no thread to stop the userspace device on; stopped it in place");
            return;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(Stopped::Joined { panicked: true }) => {
                    warn!(interface = %self.name, "a boringtun worker had panicked");
                }
                Ok(Stopped::Joined { panicked: false }) => {}
                Ok(Stopped::Dropped) => {
                    debug!(interface = %self.name, "userspace device stopped");
                    return;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    warn!(
                        interface = %self.name,
                        "the userspace device did not stop within {}; its threads and interface are left behind",
                        humantime::format_duration(STOP_TIMEOUT)
                    );
                    return;
                }
            }
        }
    }
}

/// How far [`UserspaceDevice::stop`]'s thread got.
enum Stopped {
    Joined { panicked: bool },
    Dropped,
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How far above the process's open descriptors boringtun's end of the control pair is put.
const CONTROL_FD_HEADROOM: usize = 512;

/// Moves `fd` to a descriptor number above every one the device will open, so boringtun
/// cannot panic when the listen port changes.
///
/// boringtun 0.7.1 registers each UDP socket's *clone* with its event loop, but when the port
/// changes it removes the old socket's event by the *original's* number, indexing its event
/// table (as long as the highest registered descriptor) with it. The original is usually
/// below its clone; when another thread frees a lower descriptor between the two (the agent's
/// NATS and metrics tasks open and close sockets at any time) the clone takes that lower
/// number, the original's is past the table's end, and the worker panics halfway through the
/// change, leaving the device unusable and its interface behind. Every device changes its port
/// once (it starts on a random one). The control descriptor is registered before any socket is
/// opened; numbered above them all, it keeps the table long enough. The new number is the
/// lowest free one from the count of open descriptors plus [`CONTROL_FD_HEADROOM`] (bounded by
/// the descriptor limit): the device's sockets take the lowest free numbers, so they would need
/// that many descriptors opened by other threads in the microseconds of the device's start.
fn above_every_descriptor(fd: std::os::fd::OwnedFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let open = fs::read_dir("/proc/self/fd")?.count();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ceiling = usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(1);
    let floor = (open + CONTROL_FD_HEADROOM).min(ceiling);
    let floor = libc::c_int::try_from(floor).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own to the lowest free number at or
    // above `floor`; the new descriptor is owned by the OwnedFd made from it, the old one is
    // closed when `fd` drops.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `moved` is a descriptor fcntl just made for us and nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(moved) })
}

/// Marks every `/dev/net/tun` descriptor of the process close-on-exec.
///
/// boringtun opens the TUN device without `O_CLOEXEC`, so any child process started later
/// (by us or by anything else in the process) would inherit it, and the interface would
/// outlive the device's shutdown for as long as that child runs. The window between
/// boringtun's `open` and this call remains; it is a few microseconds.
fn close_tun_on_exec() {
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in entries.flatten() {
        let is_tun = fs::read_link(entry.path()).is_ok_and(|t| t == Path::new("/dev/net/tun"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if is_tun {
            // SAFETY: fcntl F_GETFD/F_SETFD only reads and sets the descriptor flag of an fd
            // number; if the fd was closed meanwhile the calls fail with EBADF and change
            // nothing.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
}

/// Serves `/var/run/wireguard/<if>.sock` for `wg`, relaying `get=1` to the device.
struct SocketServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound: we remove the path only while it is
    /// still ours (another device of the same name elsewhere may have taken it over).
    identity: (u64, u64),
    /// Closing it wakes the server thread, which then ends (and closes the listener).
    waker: UnixStream,
    thread: JoinHandle<()>,
}

impl SocketServer {
    fn start(path: PathBuf, control: Arc<Mutex<Control>>) -> io::Result<SocketServer> {
        let listener = bind_private(&path)?;
        let meta = fs::metadata(&path)?;
        listener.set_nonblocking(true)?;
        let (waker, woken) = UnixStream::pair()?;
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || serve(listener, woken, control))?;
        Ok(SocketServer {
            path,
            identity: (meta.dev(), meta.ino()),
            waker,
            thread,
        })
    }

    fn stop(self) {
        // The thread polls the other end: a hang-up ends it. Nothing here touches the
        // listener, which the thread owns and closes.
        let _ = self.waker.shutdown(std::net::Shutdown::Both);
        drop(self.waker);
        let _ = self.thread.join();
        if let Ok(meta) = fs::metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the socket at `path` so that it is never reachable with a mode other than 0600:
/// bound in a fresh directory of mode 0700 (whatever the umask, no one else can reach
/// into it), set to 0600 there, then renamed to its name, which replaces a stale socket of
/// an earlier device atomically.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new(SOCKET_DIR));
    fs::create_dir_all(dir)?;
    let private = dir.join(format!(
        ".weft-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    DirBuilder::new().mode(0o700).create(&private)?;
    let result = (|| {
        let staged = private.join("sock");
        let listener = UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
        fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&private);
    result
}

/// A `wg` client being served.
struct Client {
    stream: UnixStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The reply once the request is complete (it may carry preshared keys), and how much
    /// of it was written.
    reply: Option<(Zeroizing<Vec<u8>>, usize)>,
}

/// What a client's request asks for, once it can tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not complete yet.
    Partial,
    Get,
    /// `set=1` from outside: refused (EPERM). The agent owns the device's configuration, and
    /// a `set` that modifies an existing peer panics a boringtun worker and wedges the
    /// device for good.
    Set,
    /// Anything else, or too long: EINVAL.
    Invalid,
}

/// Reads what a client has sent so far.
pub fn request(bytes: &[u8]) -> Request {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= MAX_REQUEST {
            Request::Invalid
        } else {
            Request::Partial
        };
    };
    match &bytes[..end] {
        // The request ends with an empty line.
        b"get=1" if bytes[end + 1..].starts_with(b"\n") => Request::Get,
        b"get=1" if bytes.len() >= MAX_REQUEST => Request::Invalid,
        b"get=1" => Request::Partial,
        b"set=1" => Request::Set,
        _ => Request::Invalid,
    }
}

/// The server loop: every client on its own deadline, none waiting for another.
fn serve(listener: UnixListener, woken: UnixStream, control: Arc<Mutex<Control>>) {
    let mut clients: Vec<Client> = Vec::new();
    let mut accept_after = Instant::now();
    loop {
        let now = Instant::now();
        clients.retain(|c| c.deadline > now);
        let accepting = now >= accept_after;
        let mut fds = vec![
            pollfd(woken.as_raw_fd(), libc::POLLIN),
            pollfd(
                listener.as_raw_fd(),
                if accepting { libc::POLLIN } else { 0 },
            ),
        ];
        fds.extend(clients.iter().map(|c| {
            let events = if c.reply.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            pollfd(c.stream.as_raw_fd(), events)
        }));
        let wake = clients
            .iter()
            .map(|c| c.deadline)
            .chain((!accepting).then_some(accept_after))
            .min();
        let timeout = wake.map_or(-1, |t| {
            t.saturating_duration_since(now)
                .as_millis()
                .min(i32::MAX as u128) as i32
                + 1
        });
        // SAFETY: `fds` is a live array of `fds.len()` pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue; // EINTR
        }
        if fds[0].revents != 0 {
            return; // stop(): the waker hung up
        }
        for (client, fd) in clients.iter_mut().zip(&fds[2..]) {
            if fd.revents != 0 {
                step(client, &control);
            }
        }
        clients.retain(|c| !c.done());
        if fds[1].revents != 0 {
            accept_after = accept(&listener, &mut clients);
        }
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Accepts every pending connection. Returns when to accept again: now, or after a back-off
/// when the process is out of descriptors or memory (the pending connections wait in the
/// kernel's queue meanwhile).
fn accept(listener: &UnixListener, clients: &mut Vec<Client>) -> Instant {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if clients.len() >= MAX_CLIENTS {
                    // The oldest has had the longest to say what it wants.
                    clients.remove(0);
                }
                clients.push(Client {
                    stream,
                    deadline: Instant::now() + CLIENT_DEADLINE,
                    request: Vec::new(),
                    reply: None,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) => {
                warn!(cause = %e, "accepting a wg client failed; trying again shortly");
                return Instant::now() + ACCEPT_BACKOFF;
            }
        }
    }
}

impl Client {
    fn done(&self) -> bool {
        matches!(&self.reply, Some((reply, written)) if *written == reply.len())
    }
}

/// Moves one client on: reads what it sent (up to [`MAX_REQUEST`]), answers a complete
/// request, writes as much of the answer as it takes. A client that hangs up, errs or
/// oversteps is closed (by making it done).
fn step(client: &mut Client, control: &Mutex<Control>) {
    let close = |client: &mut Client| client.reply = Some((Zeroizing::new(Vec::new()), 0));
    if client.reply.is_none() {
        let mut chunk = [0u8; 512];
        let room = MAX_REQUEST
            .saturating_sub(client.request.len())
            .min(chunk.len());
        match (&client.stream).read(&mut chunk[..room]) {
            Ok(0) => return close(client),
            Ok(n) => client.request.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return close(client),
        }
        let reply = match request(&client.request) {
            Request::Partial => return,
            Request::Get => match relay_get(control) {
                Ok(reply) => reply,
                Err(e) => {
                    debug!(cause = %e, "wg client request failed");
                    return close(client);
                }
            },
            Request::Set => {
                warn!(
                    "refused a set=1 on the WireGuard control socket: the agent owns this device"
                );
                Zeroizing::new(format!("errno={}\n\n", libc::EPERM).into_bytes())
            }
            Request::Invalid => Zeroizing::new(format!("errno={}\n\n", libc::EINVAL).into_bytes()),
        };
        client.reply = Some((reply, 0));
    }
    if let Some((reply, written)) = &mut client.reply {
        match (&client.stream).write(&reply[*written..]) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => *written = reply.len(),
        }
    }
}

/// Asks the device and rewrites its handshake times as times, as `wg` expects.
fn relay_get(control: &Mutex<Control>) -> io::Result<Zeroizing<Vec<u8>>> {
    let reply = {
        let mut control = control.lock().unwrap_or_else(|p| p.into_inner());
        control.request("get=1\n\n")?
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut text = uapi::handshake_elapsed_to_epoch(&reply, now);
    // The same allocation, moved: nothing of the reply is left behind unwiped.
    Ok(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_up_to_their_bound() {
        assert_eq!(request(b""), Request::Partial);
        assert_eq!(request(b"get=1\n"), Request::Partial);
        assert_eq!(request(b"get=1\n\n"), Request::Get);
        assert_eq!(request(b"set=1\n"), Request::Set);
        assert_eq!(request(b"gut=1\n"), Request::Invalid);
        assert_eq!(request(&[b'x'; MAX_REQUEST - 1]), Request::Partial);
        assert_eq!(request(&[b'x'; MAX_REQUEST]), Request::Invalid);
        let mut long_get = b"get=1\n".to_vec();
        long_get.resize(MAX_REQUEST, b'y');
        assert_eq!(request(&long_get), Request::Invalid);
    }

    /// boringtun 0.7 panics when a `set=1` adds a peer to a device without a private key
    /// ("Private key must be set first"), while it holds its write intent, and dropping its
    /// handle then blocks for ever. The agent sends the key first; this stands for any panic
    /// of a worker mid-change. Stopping
    /// must return anyway, and the next device of that name must start.
    #[test]
    fn a_device_whose_worker_panicked_mid_change_still_stops() {
        weft_testkit::require_root();
        let ns = weft_testkit::Netns::new("wgpanic").unwrap();
        let name = weft_testkit::unique_ifname("wgp", 0);
        let path = format!("/run/netns/{}", ns.name());
        let (done_tx, done_rx) = mpsc::channel();
        // A detached thread: if stop() blocks, the test fails on the timeout below instead of
        // blocking with it.
        std::thread::spawn(move || {
            let netns = fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace fd just opened; it moves only this thread.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            let mut dev = UserspaceDevice::start(&name).unwrap();
            {
                let mut control = dev.control.lock().unwrap();
                let peer = format!("set=1\npublic_key={}\n\n", "ab".repeat(32));
                control.stream.write_all(peer.as_bytes()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            dev.stop();
            let took = started.elapsed();
            // The name is free again, or the next start says why not.
            let restarted = UserspaceDevice::start(&name).map(drop);
            let _ = done_tx.send((
                took,
                restarted.map_err(|e| crate::dataplane::error_line(&e)),
            ));
        });
        let (took, restarted) = done_rx
            .recv_timeout(STOP_TIMEOUT * 3)
            .expect("stop() returned within its bound");
        assert!(took < STOP_TIMEOUT * 2, "stop took {took:?}");
        eprintln!("stop after a worker's panic took {took:?}; the next start: {restarted:?}");
    }
}
