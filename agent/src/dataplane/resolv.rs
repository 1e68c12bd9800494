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

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::Path;

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

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let path = Path::new("/nonexistent-weft-dir/resolv.conf");
        assert!(write(path, &["10.0.0.2".parse().unwrap()], &[]).is_err());
    }
}
