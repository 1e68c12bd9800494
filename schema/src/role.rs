//! The two roles an agent plays, and what its intake needs of either role's spec: the pod
//! agent reads [`PodSpec`]s, the host agent [`HostSpec`]s, through the same decode, signature
//! and validation path.

use serde::de::DeserializeOwned;

use crate::host::{HostSpec, ValidHostSpec};
use crate::subject::PodId;
use crate::validate::{ValidSpec, ValidationErrors};
use crate::PodSpec;

/// Which subjects an agent serves: `<prefix>.pod.<pod>.*` or `<prefix>.host.<host>.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Pod,
    Host,
}

impl Role {
    /// The subject token (`pod`, `host`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pod => "pod",
            Role::Host => "host",
        }
    }
}

/// A spec as the control plane writes it.
pub trait WireSpec: DeserializeOwned {
    /// What validation makes of it.
    type Valid: Applicable;
    /// The role whose agents read it.
    const ROLE: Role;
    /// The generation as written (a rejection names it).
    fn generation(&self) -> u64;
    /// Validates the whole spec for the agent `id`, consuming it.
    fn validate_owned(self, id: &PodId) -> Result<Self::Valid, ValidationErrors>;
}

/// A valid spec, as the generation rules and expiry see it.
pub trait Applicable {
    fn generation(&self) -> u64;
    /// The spec is not to be applied after this time (seconds since the epoch).
    fn not_after_unix(&self) -> Option<u64>;
}

impl WireSpec for PodSpec {
    type Valid = ValidSpec;
    const ROLE: Role = Role::Pod;

    fn generation(&self) -> u64 {
        self.generation
    }

    fn validate_owned(self, id: &PodId) -> Result<ValidSpec, ValidationErrors> {
        ValidSpec::validate_owned(self, id)
    }
}

impl Applicable for ValidSpec {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn not_after_unix(&self) -> Option<u64> {
        self.not_after_unix
    }
}

impl WireSpec for HostSpec {
    type Valid = ValidHostSpec;
    const ROLE: Role = Role::Host;

    fn generation(&self) -> u64 {
        self.generation
    }

    fn validate_owned(self, id: &PodId) -> Result<ValidHostSpec, ValidationErrors> {
        ValidHostSpec::validate_owned(self, id)
    }
}

impl Applicable for ValidHostSpec {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn not_after_unix(&self) -> Option<u64> {
        self.not_after_unix
    }
}
