//! The resolver file (`--resolv-conf`, default `/etc/resolv.conf`), replaced atomically.
//!
//! A reader (every `getaddrinfo` in the pod) must see the whole old file or the whole new
//! one, never a half-written file: the content goes to a temporary file in the same
//! directory, is fsynced, and is renamed over the target (rename is atomic within a file
//! system); then the directory is fsynced so the rename itself survives a crash.
//!
//! Renaming replaces the path itself: a symlink at the path (systemd-resolved's stub) is
//! replaced by a regular file, and a path that is a bind mount cannot be renamed over
//! (EBUSY, returned as is).
//!
//! The file is one of the agent's objects (CONTRACT.md v1.1): [`Resolver`] reads it back like
//! any other subsystem, so an outside edit is reported under `Network` and repaired. The
//! file is left alone, and not watched, when the spec names no nameservers.

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use weft_schema::validate::Network;

use super::rtnl::Rtnl;
use super::subsystem::Subsystem;
use crate::atomic_file;

/// The first line of every file the agent writes.
pub const HEADER: &str =
    "# Managed by weft-agent from the pod spec (Network.Nameservers); local changes are replaced.";

/// The file's content for these servers and search domains.
pub fn render(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut text = String::with_capacity(64 + 32 * nameservers.len());
    text.push_str(HEADER);
    text.push('\n');
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// The resolver file subsystem: one path, managed when the spec names nameservers.
#[derive(Debug, Clone)]
pub struct Resolver {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read the resolver file {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("write {0}")]
    Write(PathBuf, #[source] io::Error),
}

impl Resolver {
    pub fn new(path: &Path) -> Resolver {
        Resolver {
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file as read: `None` when it does not exist (or, with no nameservers, is not
/// managed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState(pub Option<Vec<u8>>);

impl Subsystem for Resolver {
    type Desired = Network;
    type State = FileState;
    /// The content to write, when the file does not hold it.
    type Plan<'a> = Option<String>;
    type Error = Error;
    /// What differs, when something does.
    type Status = Option<String>;

    /// Reads at most one byte more than the rendered file: a larger file differs, whatever
    /// it holds, and a huge one is never read whole.
    fn read(&mut self, _: &mut Rtnl, desired: &Network) -> Result<FileState, Error> {
        if desired.nameservers.is_empty() {
            return Ok(FileState(None));
        }
        let limit = render(&desired.nameservers, &desired.search_domains).len() as u64 + 1;
        read_bounded(&self.path, limit)
            .map(FileState)
            .map_err(|e| Error::Read(self.path.clone(), e))
    }

    fn plan<'a>(&self, desired: &'a Network, state: &'a FileState) -> Option<String> {
        if desired.nameservers.is_empty() {
            return None;
        }
        let content = render(&desired.nameservers, &desired.search_domains);
        (state.0.as_deref() != Some(content.as_bytes())).then_some(content)
    }

    fn send(
        &mut self,
        _: &mut Rtnl,
        _: &Network,
        _: &FileState,
        plan: Option<String>,
    ) -> Result<(), Error> {
        match plan {
            // Every process resolves names through this file, whatever the umask: 0644.
            Some(content) => atomic_file::replace(&self.path, content.as_bytes(), 0o644)
                .map_err(|e| Error::Write(self.path.clone(), e)),
            None => Ok(()),
        }
    }

    fn status(&self, desired: &Network, read: Result<&FileState, &Error>) -> Option<String> {
        match read {
            Err(e) => Some(weft_schema::text::error_line(e)),
            Ok(state) => self.plan(desired, state).map(|_| match state.0 {
                None => format!("resolver file {} is missing", self.path.display()),
                Some(_) => format!(
                    "resolver file {} differs from the spec",
                    self.path.display()
                ),
            }),
        }
    }
}

/// The first `limit` bytes of the file at `path`, `None` when there is none.
fn read_bounded(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut content = Vec::new();
    match File::open(path) {
        Ok(f) => f.take(limit).read_to_end(&mut content)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(content))
}

/// Replaces `path` with the rendered file, atomically. With no nameservers the file is left
/// alone (the contract manages it only when `Nameservers` is non-empty). Returns whether
/// anything was written: a file that already holds exactly this content is not touched.
pub fn write(path: &Path, nameservers: &[IpAddr], search: &[String]) -> io::Result<bool> {
    if nameservers.is_empty() {
        return Ok(false);
    }
    let content = render(nameservers, search);
    match fs::read(path) {
        Ok(current) if current == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Every process resolves names through this file, whatever the umask: 0644.
    atomic_file::replace(path, content.as_bytes(), 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("weft-resolv-unit-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn renders_header_servers_and_search() {
        let text = render(
            &["10.0.0.2".parse().unwrap(), "2001:db8::53".parse().unwrap()],
            &["pods.local".into(), "svc.local".into()],
        );
        assert_eq!(
            text,
            format!(
                "{HEADER}\nnameserver 10.0.0.2\nnameserver 2001:db8::53\nsearch pods.local svc.local\n"
            )
        );
        assert!(!render(&["10.0.0.2".parse().unwrap()], &[]).contains("search"));
    }

    #[test]
    fn writes_once_then_reports_unchanged_and_leaves_no_temp_files() {
        let dir = scratch("once");
        let path = dir.join("resolv.conf");
        let ns = ["10.0.0.2".parse().unwrap()];
        assert!(write(&path, &ns, &[]).unwrap());
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        assert!(!write(&path, &ns, &[]).unwrap());
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap()),
            inode,
            "an unchanged file is not rewritten"
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_nameservers_leaves_the_file_alone() {
        let dir = scratch("alone");
        let path = dir.join("resolv.conf");
        fs::write(&path, "nameserver 192.0.2.53\n").unwrap();
        assert!(!write(&path, &[], &["pods.local".into()]).unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "nameserver 192.0.2.53\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    fn network(ns: &[&str]) -> Network {
        Network {
            interface: weft_schema::validate::IfName::parse("eth0").unwrap(),
            address: "10.0.0.5/24".parse().unwrap(),
            gateway: None,
            address6: None,
            gateway6: None,
            mtu: None,
            nameservers: ns.iter().map(|n| n.parse().unwrap()).collect(),
            search_domains: vec!["pods.local".into()],
        }
    }

    #[test]
    fn the_file_is_planned_and_reported_like_any_subsystem() {
        let path = Path::new("/etc/weft-test/resolv.conf");
        let r = Resolver::new(path);
        let desired = network(&["10.0.0.2"]);
        let missing = FileState(None);
        assert_eq!(
            r.status(&desired, Ok(&missing)).as_deref(),
            Some("resolver file /etc/weft-test/resolv.conf is missing")
        );
        let content = r.plan(&desired, &missing).unwrap();
        assert_eq!(
            content,
            render(&desired.nameservers, &desired.search_domains)
        );
        let same = FileState(Some(content.into_bytes()));
        assert_eq!(r.plan(&desired, &same), None);
        assert_eq!(r.status(&desired, Ok(&same)), None);
        let edited = FileState(Some(b"nameserver 192.0.2.66\n".to_vec()));
        assert_eq!(
            r.status(&desired, Ok(&edited)).as_deref(),
            Some("resolver file /etc/weft-test/resolv.conf differs from the spec")
        );
        // No nameservers: nothing managed, whatever the file holds.
        assert_eq!(r.plan(&network(&[]), &edited), None);
        assert_eq!(r.status(&network(&[]), Ok(&edited)), None);
    }

    #[test]
    fn a_large_file_is_read_only_as_far_as_it_can_match() {
        let dir = scratch("large");
        let path = dir.join("resolv.conf");
        fs::write(&path, vec![b'#'; 1 << 20]).unwrap();
        assert_eq!(read_bounded(&path, 100).unwrap().unwrap().len(), 100);
        assert_eq!(read_bounded(&dir.join("none"), 100).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let path = Path::new("/nonexistent-weft-dir/resolv.conf");
        assert!(write(path, &["10.0.0.2".parse().unwrap()], &[]).is_err());
    }
}
