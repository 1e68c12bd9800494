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

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boringtun::device::{DeviceConfig, DeviceHandle};
use tracing::{debug, warn};

use super::plan::ObservedDevice;
use super::uapi::{self, HandshakeClock, SetRequest};

/// Where `wg` looks for userspace devices. Per host, not per network namespace.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a request to the device may take before we call the device stuck. A 10,000-peer
/// `set=1` takes well under a second; a device whose worker panicked never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `wg` client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

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
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Control {
    /// Sends one whole request and returns the reply up to and including `errno=N`.
    fn request(&mut self, text: &str) -> io::Result<String> {
        self.writer.write_all(text.as_bytes())?;
        let mut reply = String::new();
        loop {
            let before = reply.len();
            if self.reader.read_line(&mut reply)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if reply[before..].starts_with("errno=") {
                // The protocol ends a reply with an empty line after errno.
                let mut blank = String::new();
                self.reader.read_line(&mut blank)?;
                return Ok(reply);
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
        let reader = BufReader::new(ours.try_clone().map_err(Error::SocketPair)?);
        let control = Arc::new(Mutex::new(Control {
            writer: ours,
            reader,
        }));
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

    fn request(&self, text: &str) -> Result<String, Error> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        control.request(text).map_err(Error::Talk)
    }

    /// Stops serving the socket, closes the control connection (the device exits when it
    /// sees it closed, removing its TUN interface) and joins the device's threads.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        if let Some(mut device) = self.device.take() {
            {
                let control = self.control.lock().unwrap_or_else(|p| p.into_inner());
                let _ = control.writer.shutdown(std::net::Shutdown::Both);
            }
            // boringtun's wait() unwraps each worker's join: a worker that panicked would
            // take the reconciler down with it. Contain that here.
            let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.wait()));
            if joined.is_err() {
                warn!(interface = %self.name, "a boringtun worker had panicked");
            }
            debug!(interface = %self.name, "userspace device stopped");
        }
    }
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.stop();
    }
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
    listener_fd: i32,
    thread: JoinHandle<()>,
}

impl SocketServer {
    fn start(path: PathBuf, control: Arc<Mutex<Control>>) -> io::Result<SocketServer> {
        fs::create_dir_all(SOCKET_DIR)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        // wg runs as root; nobody else has business configuring the device.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let meta = fs::metadata(&path)?;
        let listener_fd = listener.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || serve(listener, control))?;
        Ok(SocketServer {
            path,
            identity: (meta.dev(), meta.ino()),
            listener_fd,
            thread,
        })
    }

    fn stop(self) {
        // SAFETY: `listener_fd` is the listening socket the server thread owns and is still
        // blocked on in accept(); shutdown() on it only wakes that accept() with an error
        // (EINVAL), after which the thread returns and closes it. The fd stays valid until
        // the join below.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        let _ = self.thread.join();
        if let Ok(meta) = fs::metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn serve(listener: UnixListener, control: Arc<Mutex<Control>>) {
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            // shutdown() by stop(): EINVAL. Anything else is as final.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Err(e) = relay(&client, &control) {
            debug!(cause = %e, "wg client request failed");
        }
    }
}

/// Answers one client: reads its request (up to the empty line), relays `get=1` to the
/// device and writes the reply back.
///
/// `set=1` from outside is refused with EPERM: the agent owns the device's configuration,
/// and a `set` that modifies an existing peer panics a boringtun worker and wedges the
/// device for good.
fn relay(client: &UnixStream, control: &Mutex<Control>) -> io::Result<()> {
    client.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    client.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(client);
    let mut command = String::new();
    reader.read_line(&mut command)?;
    let reply = match command.trim_end() {
        "get=1" => {
            // Drain the request's terminating empty line.
            let mut rest = String::new();
            reader.read_line(&mut rest)?;
            let reply = {
                let mut control = control.lock().unwrap_or_else(|p| p.into_inner());
                control.request("get=1\n\n")?
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            uapi::handshake_elapsed_to_epoch(&reply, now)
        }
        "set=1" => {
            warn!("refused a set=1 on the WireGuard control socket: the agent owns this device");
            format!("errno={}\n", libc::EPERM)
        }
        _ => format!("errno={}\n", libc::EINVAL),
    };
    let mut client = client;
    client.write_all(reply.as_bytes())?;
    client.write_all(b"\n")?;
    Ok(())
}
