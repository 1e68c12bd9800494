//! A real `nats-server` on a free port, with JetStream, killed on drop; optionally with a
//! configuration file (users, permissions, TLS: see [`crate::natsconf`]) that can be
//! changed and reloaded while it runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running `nats-server`, started in the calling thread's network namespace.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    extra: Vec<String>,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// The server's log (stderr), line by line, since its last start.
    log: Arc<Mutex<Vec<String>>>,
    tls: bool,
}

impl NatsServer {
    /// Starts on a free port (`-p -1`), JetStream on, listening on every address of the
    /// namespace.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(0, &[])
    }

    /// Starts on `port` (0: a free one) with extra arguments (cluster routes ...).
    pub fn start_with(port: u16, extra: &[&str]) -> Result<NatsServer> {
        Self::launch_new(port, extra, None, Vec::new(), false)
    }

    /// Starts on a free port with the configuration file `config`, reading `env` (variables
    /// the file names); `tls` says whether the file turns TLS on (for [`Self::url`]). The
    /// file enables JetStream itself (a `-js` flag would be dropped by a reload).
    pub fn start_with_config(
        config: &Path,
        env: Vec<(String, String)>,
        tls: bool,
    ) -> Result<NatsServer> {
        Self::launch_new(0, &[], Some(config.to_owned()), env, tls)
    }

    fn launch_new(
        port: u16,
        extra: &[&str],
        config: Option<PathBuf>,
        env: Vec<(String, String)>,
        tls: bool,
    ) -> Result<NatsServer> {
        let store = std::env::temp_dir().join(format!(
            "weft-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut server = NatsServer {
            child: None,
            port,
            store,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            config,
            env,
            log: Arc::default(),
            tls,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new("nats-server");
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "0.0.0.0", "-p", &port]);
        if self.config.is_none() {
            cmd.args(["-js", "-sd"]).arg(&self.store);
        }
        let mut child = cmd
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nats-server (is it installed? .ci/deps installs it)")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        log.lock().unwrap().clear();
        // Reads the log for the port and readiness, then keeps reading it (tests wait for
        // lines in it) so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                }
                let mut log = log.lock().unwrap();
                // A bound, for servers that log a lot.
                if log.len() < 100_000 {
                    log.push(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(p)) => {
                self.port = p;
                self.child = Some(child);
                Ok(())
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "nats-server did not become ready within 10 s:\n{}",
                    self.log.lock().unwrap().join("\n")
                )
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "tls"
        } else {
            "nats"
        }
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when the configuration turns TLS on).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.port)
    }

    /// `nats://<addr>:<port>`, for clients in other namespaces.
    pub fn url_at(&self, addr: &str) -> String {
        format!("{}://{addr}:{}", self.scheme(), self.port)
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True between a start and a kill.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log since its last start.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a log line containing `text`, after the first `skip` lines.
    pub fn wait_log(&self, text: &str, skip: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|l| l.contains(text))
            {
                return Ok(line.clone());
            }
            if Instant::now() > deadline {
                bail!("nats-server logged no {text:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the server read its configuration file again (SIGHUP) and waits until it has.
    pub fn reload(&self) -> Result<()> {
        let child = self.child.as_ref().context("nats-server is not running")?;
        let skip = self.log.lock().unwrap().len();
        // SAFETY: kill(2) on the pid of our child, which has not been reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        self.wait_log(
            "Reloaded server configuration",
            skip,
            Duration::from_secs(10),
        )
        .map(|_| ())
    }

    /// Kills the server (SIGKILL: an outage, not a goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store and configuration.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
