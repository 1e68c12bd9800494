//! A real `nats-server` on a free port, with JetStream, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running `nats-server`, started in the calling thread's network namespace.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts on a free port (`-p -1`), JetStream on, listening on every address of the
    /// namespace.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(0, &[])
    }

    /// Starts on `port` (0: a free one) with extra arguments (cluster routes ...).
    pub fn start_with(port: u16, extra: &[&str]) -> Result<NatsServer> {
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
        let mut child = Command::new("nats-server")
            .args(["-a", "0.0.0.0", "-p", &port, "-js", "-sd"])
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nats-server (is it installed? .ci/deps installs it)")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Reads the log for the port and readiness, then keeps draining it so the server
        // never blocks on a full pipe.
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
                bail!("nats-server did not become ready within 10 s")
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://<addr>:<port>`, for clients in other namespaces.
    pub fn url_at(&self, addr: &str) -> String {
        format!("nats://{addr}:{}", self.port)
    }

    /// True between a start and a kill.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: an outage, not a goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
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
