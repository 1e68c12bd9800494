//! NATS subjects and key-value names, defined once.

use std::fmt;

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

/// The subjects and buckets of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    pod: PodId,
}

impl Subjects {
    /// `prefix` must pass [`check_prefix`].
    pub fn new(prefix: &str, pod: PodId) -> Self {
        debug_assert!(check_prefix(prefix).is_ok());
        Subjects {
            prefix: prefix.to_owned(),
            pod,
        }
    }

    pub fn pod(&self) -> &PodId {
        &self.pod
    }

    /// The subject prefix (`weft`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.pod.<pod>.spec`: control plane -> agent.
    pub fn spec(&self) -> String {
        format!("{}.pod.{}.spec", self.prefix, self.pod)
    }

    /// `<prefix>.pod.<pod>.status`: agent -> dashboards.
    pub fn status(&self) -> String {
        format!("{}.pod.{}.status", self.prefix, self.pod)
    }

    /// `<prefix>.pod.<pod>.status.get`: request -> agent.
    pub fn status_get(&self) -> String {
        format!("{}.pod.{}.status.get", self.prefix, self.pod)
    }

    /// JetStream key-value bucket of specs (`--spec-source kv`); the key is the pod id.
    pub fn spec_bucket(&self) -> String {
        format!("{}-specs", self.prefix.replace('.', "-"))
    }

    /// JetStream key-value bucket of statuses (`--status-kv`); the key is the pod id.
    pub fn status_bucket(&self) -> String {
        format!("{}-status", self.prefix.replace('.', "-"))
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
