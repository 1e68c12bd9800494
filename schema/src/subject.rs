//! NATS subjects and key-value names, defined once.

use std::fmt;

use crate::role::Role;
use crate::text::quote;

/// A pod id: 1 to 63 characters of `[A-Za-z0-9_-]`, so it is always one subject token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(String);

impl PodId {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 63 {
            return Err(format!("{} must be 1 to 63 characters", quote(text)));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "{} has {c:?}; only A-Z a-z 0-9 _ - are allowed",
                quote(text)
            ));
        }
        Ok(PodId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for PodId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodId::parse(s)
    }
}

/// Checks a subject prefix: one or more dot-separated tokens, none empty, no wildcards or
/// whitespace.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix
            .split('.')
            .any(|t| t.is_empty() || t.contains(['*', '>']) || t.contains(char::is_whitespace))
    {
        return Err(format!(
            "{prefix:?} is not a subject prefix (dot-separated tokens without * > or spaces)"
        ));
    }
    Ok(())
}

/// The subjects and buckets of one agent: a pod's, or a host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    role: Role,
    pod: PodId,
}

impl Subjects {
    /// A pod's subjects. `prefix` must pass [`check_prefix`].
    pub fn new(prefix: &str, pod: PodId) -> Self {
        Self::of(Role::Pod, prefix, pod)
    }

    /// A host's subjects (`<prefix>.host.<host>.*`). `prefix` must pass [`check_prefix`].
    pub fn host(prefix: &str, host: PodId) -> Self {
        Self::of(Role::Host, prefix, host)
    }

    /// The subjects of agent `id` in `role`.
    pub fn of(role: Role, prefix: &str, id: PodId) -> Self {
        debug_assert!(check_prefix(prefix).is_ok());
        Subjects {
            prefix: prefix.to_owned(),
            role,
            pod: id,
        }
    }

    /// The agent's id (a pod id, or a host id).
    pub fn pod(&self) -> &PodId {
        &self.pod
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The subject prefix (`weft`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.pod.<pod>.spec` (`<prefix>.host.<host>.spec`): control plane -> agent.
    pub fn spec(&self) -> String {
        format!("{}.{}.{}.spec", self.prefix, self.role.as_str(), self.pod)
    }

    /// `<prefix>.pod.<pod>.status`: agent -> dashboards.
    pub fn status(&self) -> String {
        format!("{}.{}.{}.status", self.prefix, self.role.as_str(), self.pod)
    }

    /// `<prefix>.pod.<pod>.status.get`: request -> agent.
    pub fn status_get(&self) -> String {
        format!(
            "{}.{}.{}.status.get",
            self.prefix,
            self.role.as_str(),
            self.pod
        )
    }

    /// JetStream key-value bucket of specs (`--spec-source kv`); the key is [`Self::key`].
    pub fn spec_bucket(&self) -> String {
        format!("{}-specs", self.prefix.replace('.', "-"))
    }

    /// JetStream key-value bucket of statuses (`--status-kv`); the key is [`Self::key`].
    pub fn status_bucket(&self) -> String {
        format!("{}-status", self.prefix.replace('.', "-"))
    }

    /// The agent's key in both buckets: a pod's id, or `host.<host>` (ids have no `.`, so a
    /// host never shares a key with a pod, and a watch of `*` sees pods only).
    pub fn key(&self) -> String {
        match self.role {
            Role::Pod => self.pod.to_string(),
            Role::Host => format!("host.{}", self.pod),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let s = Subjects::new("weft", PodId::parse("web-1").unwrap());
        assert_eq!(s.spec(), "weft.pod.web-1.spec");
        assert_eq!(s.status(), "weft.pod.web-1.status");
        assert_eq!(s.status_get(), "weft.pod.web-1.status.get");
        assert_eq!(s.spec_bucket(), "weft-specs");
        assert_eq!(s.status_bucket(), "weft-status");
        assert_eq!(s.key(), "web-1");
        let h = Subjects::host("weft", PodId::parse("host-a").unwrap());
        assert_eq!(h.spec(), "weft.host.host-a.spec");
        assert_eq!(h.status(), "weft.host.host-a.status");
        assert_eq!(h.status_get(), "weft.host.host-a.status.get");
        assert_eq!(h.spec_bucket(), "weft-specs");
        assert_eq!(h.key(), "host.host-a");
    }

    #[test]
    fn pod_ids_are_one_token() {
        assert!(PodId::parse("a.b").is_err());
        assert!(PodId::parse("").is_err());
        assert!(PodId::parse(&"a".repeat(64)).is_err());
        assert!(PodId::parse(&"a".repeat(63)).is_ok());
        assert!(check_prefix("weft").is_ok());
        assert!(check_prefix("a.*").is_err());
        assert!(check_prefix("a..b").is_err());
    }
}
