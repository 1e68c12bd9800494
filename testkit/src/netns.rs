//! Network namespaces for tests: unique names, deleted on drop even when the test panics.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh network namespace with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `weft-<tag>-<pid>-<n>`; `tag` keeps names readable in `ip netns list`.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("weft-{tag}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args..` inside the namespace; an exit status other than 0 is an error
    /// carrying its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        run(self.command(program).args(args))
    }

    /// Runs `ip args..` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs an async body on a tokio runtime whose threads live in this namespace, so every
    /// socket it opens (and every process it spawns) is here.
    pub fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.enter(|| runtime().block_on(body()))
    }

    /// Runs `f` on a new thread that has joined this namespace, so every socket it opens
    /// belongs here, and returns its result.
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        enter_named(&self.name, f)
    }
}

/// A test's tokio runtime (two workers). Built on a thread that has joined a namespace (see
/// [`Netns::block_on`]), its worker threads are in that namespace too.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// [`Netns::enter`] for a namespace named `name` in `/run/netns` that someone else made (a
/// host agent's sandbox).
pub fn enter_named<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we just opened; it changes only this
            // thread's network namespace, and this thread ends with the scope.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes every link in it (veth peers with them).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    // Create in `a` with the peer placed straight into `b`, so no name ever exists in the
    // root namespace (parallel tests cannot collide there).
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Runs a command; failure carries its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
