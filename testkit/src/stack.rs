//! A local weft stack: `nats-server` in a hub namespace, a LAN router namespace, and pods,
//! each a namespace with a control link to the hub (`ctl0`, how its agent reaches NATS) and
//! the interface its agent manages (`eth0`, cabled to the router). The router holds each
//! pod's gateway (`10.0.<i>.1/24`) and forwards between pods, so pod `i` is meant to take
//! `10.0.<i>.5/24` via `10.0.<i>.1`. Used by the end-to-end tests and the demo.
//!
//! The server runs as weft ships it ([`crate::natsconf`]): TLS on with certificates made for
//! the stack ([`crate::pki`]), one nkey user per pod with the pod's permissions only, a
//! control-plane user and a dashboard user. Adding a pod adds its user and reloads the
//! server. [`Options`] turns parts of that off or changes them for a test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use weft_emitter::bus::Connection;

use crate::agent::AgentProcess;
use crate::control::ControlPlane;
use crate::hub::{Hub, PodNs};
use crate::identity::{write_secret, Auth, Identity};
use crate::nats::NatsServer;
use crate::natsconf::{
    control_plane_permissions, dashboard_permissions, host_permissions, pod_inbox, pod_permissions,
    user_nkey, Authorization, Credential, Permissions, ServerConfig, Tls, User, Value,
    WEFT_MAX_PAYLOAD,
};
use crate::netns::{veth, Netns};
use crate::pki::{Ca, CertFiles};

/// How the stack's server is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// No TLS, no users: anyone connects (v1's stack).
    pub plain: bool,
    /// Mutual TLS: every client presents a certificate of the stack's CA.
    pub mutual_tls: bool,
    /// Pods may create the KV buckets (the shipped configuration leaves that to the control
    /// plane).
    pub pods_create_buckets: bool,
    /// The server's `max_payload` (`None`: nats-server's default, 1 MiB).
    pub max_payload: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            plain: false,
            mutual_tls: false,
            pods_create_buckets: false,
            max_payload: Some(WEFT_MAX_PAYLOAD),
        }
    }
}

/// The stack's certificates and credentials.
#[derive(Debug)]
pub struct Security {
    pub ca: Ca,
    pub server_cert: CertFiles,
    pub control: Identity,
    pub dashboard: Identity,
    /// Each pod's identity, by pod id.
    pub pods: BTreeMap<String, Identity>,
    /// Each host agent's identity, by host id.
    pub hosts: BTreeMap<String, Identity>,
    /// Users a test added, with their permissions.
    pub others: BTreeMap<String, (Identity, Permissions)>,
    /// The public nkey of every user, by identity name.
    public_keys: BTreeMap<String, String>,
    dir: PathBuf,
    options: Options,
}

impl Security {
    fn new(dir: &Path, options: &Options) -> Result<Security> {
        let ca = Ca::new(dir, "weft-test-ca")?;
        let server_cert = ca.server("nats-server")?;
        let mut s = Security {
            ca,
            server_cert,
            control: Identity {
                name: String::new(),
                auth: Auth::None,
                ca: None,
                client_cert: None,
            },
            dashboard: Identity {
                name: String::new(),
                auth: Auth::None,
                ca: None,
                client_cert: None,
            },
            pods: BTreeMap::new(),
            hosts: BTreeMap::new(),
            others: BTreeMap::new(),
            public_keys: BTreeMap::new(),
            dir: dir.to_owned(),
            options: options.clone(),
        };
        s.control = s.identity("control")?;
        s.dashboard = s.identity("dashboard")?;
        Ok(s)
    }

    /// A new identity with its own nkey (and client certificate under mutual TLS).
    pub fn identity(&mut self, name: &str) -> Result<Identity> {
        let (seed, public) = user_nkey();
        let seed_file = write_secret(&self.dir.join(format!("{name}.nk")), &seed)?;
        self.public_keys.insert(name.to_owned(), public);
        Ok(Identity {
            name: name.to_owned(),
            auth: Auth::Nkey(seed_file),
            ca: Some(self.ca.cert.clone()),
            client_cert: if self.options.mutual_tls {
                Some(self.ca.client(name)?)
            } else {
                None
            },
        })
    }

    /// The public nkey of identity `name`.
    pub fn public_key(&self, name: &str) -> &str {
        &self.public_keys[name]
    }

    /// The server configuration for the identities so far.
    pub fn config(&self) -> ServerConfig {
        let path = |p: &Path| Value::Literal(p.display().to_string());
        let user = |name: &str, role: String, permissions: Permissions| User {
            role,
            credential: Credential::Nkey(Value::Literal(self.public_keys[name].clone())),
            permissions,
        };
        let mut users: Vec<User> = self
            .pods
            .keys()
            .map(|pod| {
                let mut p = pod_permissions("weft", pod);
                if self.options.pods_create_buckets {
                    p.publish.push("$JS.API.STREAM.CREATE.KV_weft-specs".into());
                    p.publish
                        .push("$JS.API.STREAM.CREATE.KV_weft-status".into());
                }
                user(pod, format!("pod {pod}"), p)
            })
            .collect();
        for host in self.hosts.keys() {
            users.push(user(
                host,
                format!("host {host}"),
                host_permissions("weft", host),
            ));
        }
        users.push(user(
            "control",
            "control plane".into(),
            control_plane_permissions("weft"),
        ));
        users.push(user(
            "dashboard",
            "dashboard".into(),
            dashboard_permissions("weft"),
        ));
        for (name, (_, p)) in &self.others {
            users.push(user(name, format!("test user {name}"), p.clone()));
        }
        ServerConfig {
            jetstream: Some(path(&self.dir.join("jetstream"))),
            authorization: Authorization::Users(users),
            tls: Some(Tls {
                cert: path(&self.server_cert.cert),
                key: path(&self.server_cert.key),
                ca: path(&self.ca.cert),
                verify: self.options.mutual_tls,
            }),
            max_payload: self.options.max_payload,
        }
    }

    fn write(&self) -> Result<PathBuf> {
        let conf = self.dir.join("nats-server.conf");
        std::fs::write(&conf, self.config().render())?;
        Ok(conf)
    }
}

/// One pod of the stack.
#[derive(Debug)]
pub struct Pod {
    pub id: String,
    /// 1-based: the pod's LAN is 10.0.<index>.0/24.
    pub index: u8,
    pub ns: PodNs,
    pub state_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub agent: Option<AgentProcess>,
}

impl Pod {
    /// The address the pod is meant to take on eth0.
    pub fn address(&self) -> String {
        format!("10.0.{}.5/24", self.index)
    }

    /// The router's address on the pod's LAN.
    pub fn gateway(&self) -> String {
        format!("10.0.{}.1", self.index)
    }
}

/// The whole stack; dropping it stops the agents and the server and deletes every
/// namespace (and with them every link).
#[derive(Debug)]
pub struct Stack {
    pub pods: Vec<Pod>,
    pub router: Netns,
    pub nats: NatsServer,
    pub hub: Hub,
    /// `None` for a plain stack.
    pub security: Option<Security>,
    dir: PathBuf,
    agent_bin: PathBuf,
}

impl Stack {
    /// Starts the hub with `nats-server` (TLS and users on) and the router. `agent_bin` is
    /// the `weft-agent` binary to run in pods.
    pub fn new(agent_bin: &Path) -> Result<Stack> {
        Self::with(agent_bin, Options::default())
    }

    /// [`Self::new`] with other [`Options`].
    pub fn with(agent_bin: &Path, options: Options) -> Result<Stack> {
        let hub = Hub::new()?;
        let dir = std::env::temp_dir().join(format!("weft-stack-{}", hub.ns.name()));
        std::fs::create_dir_all(&dir)?;
        let (nats, security) = if options.plain {
            (hub.ns.enter(NatsServer::start)?, None)
        } else {
            let security = Security::new(&dir.join("pki"), &options)?;
            let conf = security.write()?;
            let nats = hub
                .ns
                .enter(|| NatsServer::start_with_config(&conf, Vec::new(), true))?;
            (nats, Some(security))
        };
        let router = Netns::new("lan")?;
        router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(Stack {
            pods: Vec::new(),
            router,
            nats,
            hub,
            security,
            dir,
            agent_bin: agent_bin.to_owned(),
        })
    }

    /// Adds pod `id` (not started): its namespace, `ctl0` to the hub, `eth0` to the router.
    pub fn add_pod(&mut self, id: &str) -> Result<&mut Pod> {
        let index = u8::try_from(self.pods.len() + 1).context("too many pods")?;
        let ns = self.hub.add_pod(id)?;
        let router_if = format!("p{index}");
        veth(&ns.ns, "eth0", &self.router, &router_if)?;
        self.router.ip(&[
            "addr",
            "add",
            &format!("10.0.{index}.1/24"),
            "dev",
            &router_if,
        ])?;
        if let Some(sec) = &mut self.security {
            let identity = sec.identity(id)?;
            sec.pods.insert(id.to_owned(), identity);
            sec.write()?;
            self.nats.reload()?;
        }
        let state_dir = self.dir.join(format!("{id}-state"));
        let resolv_conf = self.dir.join(format!("{id}-resolv.conf"));
        self.pods.push(Pod {
            id: id.to_owned(),
            index,
            ns,
            state_dir,
            resolv_conf,
            agent: None,
        });
        Ok(self.pods.last_mut().expect("just pushed"))
    }

    /// The pod's index in `pods` by id.
    pub fn pod(&mut self, id: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("no pod {id}"))
    }

    /// The arguments an agent of `pod` runs with, before `extra`: its NATS identity's flags
    /// included.
    pub fn agent_args(&self, pod: &Pod, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--nats-url".into(),
            self.nats.url_at(&pod.ns.hub_addr),
            "--pod-id".into(),
            pod.id.clone(),
            "--state-dir".into(),
            pod.state_dir.display().to_string(),
            "--resolv-conf".into(),
            pod.resolv_conf.display().to_string(),
        ];
        if let Some(sec) = &self.security {
            args.extend(sec.pods[&pod.id].flags());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The identity of role `name` (`control`, `dashboard`, a pod id or a user a test
    /// added).
    pub fn identity(&self, name: &str) -> Option<&Identity> {
        let sec = self.security.as_ref()?;
        match name {
            "control" => Some(&sec.control),
            "dashboard" => Some(&sec.dashboard),
            other => sec
                .pods
                .get(other)
                .or_else(|| sec.hosts.get(other))
                .or_else(|| sec.others.get(other).map(|(id, _)| id)),
        }
    }

    /// Adds a user with `permissions` to the server (reloaded) and returns its identity
    /// (on a plain stack: anyone may do anything, and the identity is anonymous).
    pub fn add_user(&mut self, name: &str, permissions: Permissions) -> Result<Identity> {
        let Some(sec) = &mut self.security else {
            return Ok(Identity {
                name: name.to_owned(),
                auth: Auth::None,
                ca: None,
                client_cert: None,
            });
        };
        let identity = sec.identity(name)?;
        sec.others
            .insert(name.to_owned(), (identity.clone(), permissions));
        sec.write()?;
        self.nats.reload()?;
        Ok(identity)
    }

    /// Adds the user of pod `id` whose namespace the stack does not make (a sandbox's guest,
    /// made by a host agent) and reloads the server; `None` on a plain stack. Its agent
    /// runs with the identity's flags.
    pub fn add_pod_user(&mut self, id: &str) -> Result<Option<Identity>> {
        let Some(sec) = &mut self.security else {
            return Ok(None);
        };
        let identity = sec.identity(id)?;
        sec.pods.insert(id.to_owned(), identity.clone());
        sec.write()?;
        self.nats.reload()?;
        Ok(Some(identity))
    }

    /// Adds the user of host agent `id` (the host role's permissions) and reloads the
    /// server; `None` on a plain stack.
    pub fn add_host_user(&mut self, id: &str) -> Result<Option<Identity>> {
        let Some(sec) = &mut self.security else {
            return Ok(None);
        };
        let identity = sec.identity(id)?;
        sec.hosts.insert(id.to_owned(), identity.clone());
        sec.write()?;
        self.nats.reload()?;
        Ok(Some(identity))
    }

    /// The directory of the stack's files (removed on drop): state directories and logs of
    /// agents the stack did not start go here too.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client of the hub's server as `name` (`control`, `dashboard` or a pod id, which
    /// uses the pod's inbox prefix); anonymous on a plain stack.
    pub async fn client(&self, name: &str) -> Result<Connection> {
        let url = self.nats_url();
        match self.identity(name) {
            Some(id) => {
                let inbox = self
                    .pods
                    .iter()
                    .any(|p| p.id == name)
                    .then(|| pod_inbox(name));
                id.connect(&url, inbox).await
            }
            None => {
                let plain = Identity {
                    name: name.to_owned(),
                    auth: Auth::None,
                    ca: None,
                    client_cert: None,
                };
                plain.connect(&url, None).await
            }
        }
    }

    /// A control plane connected as the control-plane user.
    pub async fn control_plane(&self) -> Result<ControlPlane> {
        Ok(ControlPlane::from(self.client("control").await?))
    }

    /// Starts (or restarts) the agent of pod `id`.
    pub fn start_agent(&mut self, id: &str, extra: &[&str]) -> Result<()> {
        self.start_agent_with_env(id, extra, &[])
    }

    /// [`Self::start_agent`] with environment variables set for the agent.
    pub fn start_agent_with_env(
        &mut self,
        id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.id == id)
            .with_context(|| format!("no pod {id}"))?;
        let args = self.agent_args(&self.pods[i], extra);
        let log = self.dir.join(format!("{id}-agent.log"));
        let pod = &mut self.pods[i];
        pod.agent = Some(AgentProcess::spawn_with_env(
            &pod.ns.ns,
            &self.agent_bin,
            &args,
            env,
            log,
        )?);
        Ok(())
    }

    /// Stops the agent of pod `id` with SIGTERM; returns how long it took.
    pub fn stop_agent(&mut self, id: &str) -> Result<(std::process::ExitStatus, Duration)> {
        let pod = self.pod(id);
        pod.agent
            .as_mut()
            .context("agent not running")?
            .terminate(Duration::from_secs(5))
    }

    /// Kills `nats-server` (an outage).
    pub fn kill_nats(&mut self) {
        self.nats.kill();
    }

    /// Starts `nats-server` again, in the hub, on the same port.
    pub fn restart_nats(&mut self) -> Result<()> {
        let (hub, nats) = (&self.hub, &mut self.nats);
        hub.ns.enter(|| nats.restart())
    }

    /// Runs an async body with the hub's network (where NATS is).
    pub fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.hub.block_on(body)
    }

    /// The URL the test's own clients (in the hub) use.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in &mut self.pods {
            if let Some(a) = p.agent.as_mut() {
                let _ = a.terminate(Duration::from_secs(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
