//! `weft-agent`: keeps a pod's network in the state its control plane publishes.
//!
//! ```text
//! control plane --NATS--> intake --(ValidSpec)--> reconciler (one thread) --> kernel
//! kernel events ---------------------------------> drift? -> repair
//!                                                       | watch<PodStatus>
//! dashboards <--NATS-- emitter (stamps PublishedAtUnix) <
//! ```
//!
//! - [`config`]: the command line, parsed once into typed settings.
//! - [`intake`]: NATS subscriptions; decode, validate, hand over, reply.
//! - [`reconciler`]: the one actor owning every kernel socket; generations, apply, read back.
//! - [`role`]: what a pod agent and a host agent bring to the shared parts: spec, status,
//!   kernel half.
//! - [`dataplane`]: the kernel subsystems, each read -> pure plan -> send -> status, over one
//!   netlink layer.
//! - [`state`]: the state directory (last applied spec, WireGuard key).
//! - [`run`]: the daemon and the one-shot apply as library functions.
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz` (`--metrics-listen`), over
//!   [`http`], a small bounded HTTP/1 server.

pub mod atomic_file;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod reconciler;
pub mod role;
pub mod run;
pub mod state;
