//! A small world for end-to-end tests: a hub namespace where `nats-server` and the test's own
//! clients run, and pod namespaces joined to it by a control link (`ctl0`), so each agent
//! reaches NATS without touching the interface it manages (`eth0`). Nothing is created in the
//! root namespace; everything goes when the values drop.

use std::future::Future;
use std::process::Command;

use anyhow::Result;

use crate::netns::{run, veth, Netns};

/// The hub namespace.
#[derive(Debug)]
pub struct Hub {
    pub ns: Netns,
    pods: u8,
}

/// A pod namespace with its control link to the hub.
#[derive(Debug)]
pub struct PodNs {
    pub ns: Netns,
    /// The hub's address on this pod's control link: where the pod reaches NATS.
    pub hub_addr: String,
}

impl Hub {
    pub fn new() -> Result<Hub> {
        Ok(Hub {
            ns: Netns::new("hub")?,
            pods: 0,
        })
    }

    /// A new pod namespace joined to the hub by `ctl0` (10.255.<n>.2/30 in the pod,
    /// 10.255.<n>.1/30 in the hub).
    pub fn add_pod(&mut self, tag: &str) -> Result<PodNs> {
        self.pods += 1;
        let n = self.pods;
        let ns = Netns::new(tag)?;
        let hub_if = format!("ctl{n}");
        veth(&ns, "ctl0", &self.ns, &hub_if)?;
        let hub_addr = format!("10.255.{n}.1");
        self.ns
            .ip(&["addr", "add", &format!("{hub_addr}/30"), "dev", &hub_if])?;
        ns.ip(&["addr", "add", &format!("10.255.{n}.2/30"), "dev", "ctl0"])?;
        Ok(PodNs { ns, hub_addr })
    }

    /// Joins namespace `name`, which someone else made (a host agent's sandbox), to the hub
    /// by `ctl0` as [`Self::add_pod`] does; returns the hub's address on that link. The link
    /// goes when that namespace does.
    pub fn join(&mut self, name: &str) -> Result<String> {
        self.pods += 1;
        let n = self.pods;
        let hub_if = format!("ctl{n}");
        self.ns.ip(&[
            "link", "add", &hub_if, "type", "veth", "peer", "name", "ctl0", "netns", name,
        ])?;
        self.ns.ip(&["link", "set", &hub_if, "up"])?;
        let hub_addr = format!("10.255.{n}.1");
        self.ns
            .ip(&["addr", "add", &format!("{hub_addr}/30"), "dev", &hub_if])?;
        run(Command::new("ip").args([
            "-n",
            name,
            "addr",
            "add",
            &format!("10.255.{n}.2/30"),
            "dev",
            "ctl0",
        ]))?;
        run(Command::new("ip").args(["-n", name, "link", "set", "ctl0", "up"]))?;
        Ok(hub_addr)
    }

    /// Runs an async test body on a tokio runtime whose threads live in the hub namespace,
    /// so every socket it opens (and every process it spawns, nats-server included) is there.
    pub fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.ns.block_on(body)
    }
}
