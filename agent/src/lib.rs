//! `weft-agent`: keeps a pod's network in the state its control plane publishes.
//!
//! ```text
//! control plane --NATS--> intake --(ValidSpec)--> reconciler (one thread) --> kernel
//! kernel events ---------------------------------> drift? -> repair
//!                                                       | watch<PodStatus>
//! dashboards <--NATS-- emitter (stamps PublishedAtUnix) <
//! ```
//!
//! [`dataplane`] holds one module per kernel subsystem, each a pure plan and a thin apply.

pub mod dataplane;
