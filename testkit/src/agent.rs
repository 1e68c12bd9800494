//! The real `weft-agent` binary, run inside a namespace, stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// A running agent process; its stderr (the log) goes to a file.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `bin args..` inside `ns` (`ip netns exec` execs it, so the pid is the agent's).
    pub fn spawn(ns: &Netns, bin: &Path, args: &[String], log: PathBuf) -> Result<AgentProcess> {
        Self::spawn_with_env(ns, bin, args, &[], log)
    }

    /// [`Self::spawn`] with environment variables set for the agent.
    pub fn spawn_with_env(
        ns: &Netns,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<AgentProcess> {
        let mut cmd = ns.command(bin.to_str().context("binary path is not UTF-8")?);
        cmd.args(args);
        Self::spawn_command(cmd, env, log)
    }

    /// Starts an agent by any command (`nsenter ... weft-agent host ...`): the command must
    /// exec the agent, so the pid is the agent's.
    pub fn spawn_command(
        mut cmd: std::process::Command,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<AgentProcess> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("spawn weft-agent")?;
        Ok(AgentProcess {
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits up to `timeout`; SIGKILL after that. Returns the exit status
    /// and how long it took to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().context("agent already stopped")?;
        let start = Instant::now();
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, start.elapsed()));
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let status = child.wait()?;
                anyhow::bail!("agent ignored SIGTERM for {timeout:?}; killed ({status})");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// How the process ended, once it has (without signalling it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
