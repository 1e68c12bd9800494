//! The host role: a `HostSpec` in, a `HostStatus` out, the [`HostPlane`] in between.

use weft_schema::{HostSpec, HostStatus, ValidHostSpec};

use super::{Facts, Role};
use crate::dataplane::host::status::{compose, Observed};
use crate::dataplane::host::HostPlane;

/// The agent of one host's sandboxes.
#[derive(Debug)]
pub enum Host {}

impl Role for Host {
    const NAME: &'static str = "host";
    type Wire = HostSpec;
    type Spec = ValidHostSpec;
    type Status = HostStatus;
    type Plane = HostPlane;

    fn compose(facts: Facts<'_, Observed>) -> HostStatus {
        compose(facts)
    }
}
