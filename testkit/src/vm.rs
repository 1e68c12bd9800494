//! A throwaway QEMU virtual machine for kernel features the host lacks (kernel WireGuard).
//!
//! The guest runs Debian's stock kernel, fetched once with `apt-get download` into a cache
//! under the workspace's `target/` (never installed on the host), booted under TCG with a
//! busybox-static initramfs built per boot. A per-boot directory is shared read-only over 9p
//! and mounted on `/mnt/host`; the guest's `/init` (`testkit/vm/init`) runs
//! `/mnt/host/script.sh` with the host's `dash -e` and reports its exit status through QEMU's
//! `isa-debug-exit` device, so the verdict is QEMU's own exit status and never depends on
//! parsing console text.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use weft_testkit::vm::{Guest, Kernel};
//!
//! let kernel = Kernel::debian(&["wireguard"])?;
//! let mut guest = Guest::new(&kernel, "example")?;
//! guest.tool("wg")?;
//! let run = guest.boot("modprobe wireguard\nwg --version\n", Duration::from_secs(120))?;
//! assert!(run.passed(), "{}", run.console);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::run;

/// The guest's PID 1.
const INIT: &str = include_str!("../vm/init");

/// Modules `/init` loads to mount the 9p share; always part of the guest.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Printed by `/init` once the share is mounted, just before the script starts.
const READY_MARKER: &str = "WEFT-VM-READY";

/// The metapackage that always depends on Debian's current stock amd64 kernel image.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// Bumped whenever what a cache entry holds changes, so stale entries are not used.
const CACHE_LAYOUT: u32 = 2;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises cache fills within this process; across processes, renames keep them atomic.
static CACHE_LOCK: Mutex<()> = Mutex::new(());

/// A guest kernel and the module tree `/init` and the tests need, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// The uncompressed ELF kernel, booted through its PVH entry point.
    vmlinux: PathBuf,
    /// A root holding `lib/modules/<version>/` with only the needed modules and a
    /// `modules.dep` from `depmod`, so busybox `modprobe` resolves dependencies.
    modules_root: PathBuf,
}

impl Kernel {
    /// Debian's stock kernel with `modules` (and what they depend on) loadable by
    /// `modprobe` in the guest. Downloads the package only when the cache holds none, so
    /// repeated runs work offline.
    pub fn debian(modules: &[&str]) -> Result<Kernel> {
        let _guard = CACHE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let cache = cache_dir();
        fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
        let deb = cached_or_downloaded_deb(&cache)?;

        let mut wanted: BTreeSet<&str> = modules.iter().copied().collect();
        wanted.extend(BOOT_MODULES);
        let mut hasher = DefaultHasher::new();
        (CACHE_LAYOUT, &wanted).hash(&mut hasher);
        let stem = deb.file_stem().and_then(OsStr::to_str).unwrap_or("kernel");
        let dir = cache.join(format!("{stem}-{:016x}", hasher.finish()));
        if !dir.join("complete").exists() {
            extract_kernel(&deb, &wanted, &dir)?;
        }
        let version = fs::read_to_string(dir.join("complete"))?.trim().to_owned();
        Ok(Kernel {
            vmlinux: dir.join("vmlinux"),
            modules_root: dir.join("root"),
            version,
        })
    }
}

/// `$WEFT_VM_CACHE`, else `weft-vm` in the Cargo target directory.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_VM_CACHE") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    // Canonical, so the console paths printed in test output are plain to follow.
    target.canonicalize().unwrap_or(target).join("weft-vm")
}

/// The newest kernel package already in `cache`, else the current one from the archive.
fn cached_or_downloaded_deb(cache: &Path) -> Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(cache)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
            name.starts_with("linux-image-") && name.ends_with(".deb")
        })
        .collect();
    debs.sort();
    if let Some(deb) = debs.pop() {
        return Ok(deb);
    }

    let package = match current_kernel_package() {
        Ok(p) => p,
        Err(first) => {
            // No package lists yet (a fresh container): fetch them once and ask again.
            run(Command::new("apt-get").args(["update", "-q"]))
                .with_context(|| format!("apt-get update after: {first:#}"))?;
            current_kernel_package()?
        }
    };
    let staging = TempDir::new(cache, "download")?;
    run(Command::new("apt-get")
        // Downloading as root into a directory the `_apt` user cannot write is fine here.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &package])
        .current_dir(staging.path()))?;
    let deb = fs::read_dir(staging.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let dest = cache.join(deb.file_name().expect("read_dir entries have names"));
    fs::rename(&deb, &dest).with_context(|| format!("move {}", deb.display()))?;
    Ok(dest)
}

/// The image package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`.
fn current_kernel_package() -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache depends {KERNEL_METAPACKAGE}: no image in {text:?}"))
}

/// Unpacks `deb`, keeps the kernel and the closure of `modules` under their dependencies,
/// indexes them with `depmod`, and publishes the result at `dest` with one rename.
fn extract_kernel(deb: &Path, modules: &BTreeSet<&str>, dest: &Path) -> Result<()> {
    let parent = dest.parent().expect("cache entries have a parent");
    let unpacked = TempDir::new(parent, "unpack")?;
    let full = unpacked.path();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(full))?;

    let versions: Vec<String> = fs::read_dir(full.join("lib/modules"))
        .context("kernel package has no lib/modules")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let [version] = versions.as_slice() else {
        bail!(
            "{}: expected one kernel version, found {versions:?}",
            deb.display()
        );
    };
    // The package ships no modules.dep: the postinst would have run depmod.
    run(Command::new("depmod").arg("-b").arg(full).arg(version))?;

    let mut objects = BTreeSet::new();
    for module in modules {
        let out = run(Command::new("modprobe").arg("-d").arg(full).args([
            "-S",
            version,
            "--show-depends",
            module,
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        objects.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("insmod "))
                .map(|p| PathBuf::from(p.trim())),
        );
    }

    let building = TempDir::new(parent, "kernel")?;
    let root = building.path().join("root");
    let moddir = format!("lib/modules/{version}");
    for object in &objects {
        let rel = object
            .strip_prefix(full)
            .with_context(|| format!("modprobe named {} outside the tree", object.display()))?;
        copy_file(object, &root.join(rel))?;
    }
    for index in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        copy_file(
            &full.join(&moddir).join(index),
            &root.join(&moddir).join(index),
        )?;
    }
    run(Command::new("depmod").arg("-b").arg(&root).arg(version))?;
    unpack_vmlinux(
        &full.join(format!("boot/vmlinuz-{version}")),
        &building.path().join("vmlinux"),
    )?;
    fs::write(building.path().join("complete"), format!("{version}\n"))?;

    let built = building.keep();
    if let Err(e) = fs::rename(&built, dest) {
        // Another process finished first: use its copy.
        let _ = fs::remove_dir_all(&built);
        ensure!(
            dest.join("complete").exists(),
            "publish {}: {e}",
            dest.display()
        );
    }
    Ok(())
}

/// The start of an xz stream (the magic `FD 37 7A 58 5A 00`).
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";

/// Decompresses the ELF kernel out of Debian's xz-compressed bzImage. QEMU boots that ELF
/// straight through its PVH entry point (`CONFIG_PVH`), skipping the decompressor, which
/// takes the guest longer under TCG than the kernel's own boot (measured: the first kernel
/// line after 12-25 s with the bzImage, after 1.5-2 s with the ELF).
fn unpack_vmlinux(bzimage: &Path, dest: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .with_context(|| format!("{}: no xz stream", bzimage.display()))?;
    let mut xz = Command::new("xz")
        // The bzImage goes on after the stream (its trailer): decode just the one.
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(dest)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn xz (package xz-utils)")?;
    let mut stdin = xz.stdin.take().expect("stdin is piped");
    let fed = std::io::Write::write_all(&mut stdin, &image[start..]);
    drop(stdin);
    let out = xz.wait_with_output()?;
    ensure!(
        out.status.success(),
        "xz -d {}: {}",
        bzimage.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    match fed {
        // xz stops reading at the end of the stream, before the trailer: that is expected.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("feed xz");
        }
        _ => {}
    }
    let mut magic = [0u8; 4];
    fs::File::open(dest)?.read_exact(&mut magic)?;
    ensure!(
        &magic == b"\x7fELF",
        "{}: the xz stream is not an ELF kernel",
        bzimage.display()
    );
    Ok(())
}

/// One boot of the VM being prepared: the initramfs staging tree and the 9p share, both in
/// a private directory removed on drop.
#[derive(Debug)]
pub struct Guest {
    kernel: Kernel,
    name: String,
    dir: TempDir,
}

impl Guest {
    /// Prepares a guest with busybox, the host's `dash` (the script's shell) and the
    /// kernel's modules; `name` names its console log
    /// (`target/weft-vm/console/<name>.log`), kept after the run for post-mortems.
    pub fn new(kernel: &Kernel, name: &str) -> Result<Guest> {
        let dir = TempDir::new(&std::env::temp_dir(), &format!("weft-vm-{name}"))?;
        let mut guest = Guest {
            kernel: kernel.clone(),
            name: name.to_owned(),
            dir,
        };
        let root = guest.root();
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "mnt/host",
            "usr/local/bin",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::create_dir_all(guest.share().join("bin"))?;
        // The kernel runs /sbin/modprobe to autoload modules (nf_tables expressions, ...).
        std::os::unix::fs::symlink("bin", root.join("sbin"))?;
        // The kernel opens /dev/console for PID 1 before any devtmpfs is mounted.
        run(Command::new("mknod")
            .arg(root.join("dev/console"))
            .args(["c", "5", "1"]))?;
        let busybox = which("busybox")?;
        copy_file(&busybox, &root.join("bin/busybox"))?;
        guest.add_libraries(&busybox)?;
        // The script's shell: busybox sh would run its own `ip` applet ahead of PATH.
        guest.tool("dash")?;
        copy_tree(&kernel.modules_root, &root)?;
        let init = root.join("init");
        fs::write(&init, INIT)?;
        set_executable(&init)?;
        Ok(guest)
    }

    /// Copies a host program (a name looked up in `PATH`, or a path) into the initramfs's
    /// `/usr/local/bin`, which comes before busybox's applets in the guest's `PATH`, with
    /// the shared libraries it links.
    pub fn tool(&mut self, program: &str) -> Result<&mut Guest> {
        let path = which(program)?;
        let name = path.file_name().context("tool path has no file name")?;
        copy_file(&path, &self.root().join("usr/local/bin").join(name))?;
        self.add_libraries(&path)?;
        Ok(self)
    }

    /// Puts a host binary on the share as `/mnt/host/bin/<file name>` (first in the guest's
    /// `PATH`) without copying it into RAM, and its shared libraries into the initramfs.
    pub fn share_binary(&mut self, path: &Path) -> Result<&mut Guest> {
        let name = path.file_name().context("binary path has no file name")?;
        let dest = self.share().join("bin").join(name);
        // A hard link costs nothing for a large debug binary; a copy works across filesystems.
        if fs::hard_link(path, &dest).is_err() {
            copy_file(path, &dest)?;
        }
        self.add_libraries(path)?;
        Ok(self)
    }

    /// Writes `contents` to `/mnt/host/<name>` for the script to read.
    pub fn share_file(&mut self, name: &str, contents: impl AsRef<[u8]>) -> Result<&mut Guest> {
        ensure!(
            !name.contains('/') && name != "script.sh" && name != "bin",
            "share_file: {name:?} is reserved or not a plain file name"
        );
        fs::write(self.share().join(name), contents)?;
        Ok(self)
    }

    /// Boots the guest, runs `script` (with `dash -e`, in `/tmp`) and waits at most `timeout`
    /// for QEMU to exit; on timeout QEMU is killed and the outcome is [`Verdict::TimedOut`].
    pub fn boot(self, script: &str, timeout: Duration) -> Result<Outcome> {
        fs::write(self.share().join("script.sh"), script)?;
        let initramfs = self.dir.path().join("initramfs.cpio");
        pack_initramfs(&self.root(), &initramfs)?;

        let console_dir = cache_dir().join("console");
        fs::create_dir_all(&console_dir)?;
        let console_path = console_dir.join(format!("{}.log", self.name));
        let stderr_path = self.dir.path().join("qemu.stderr");

        let started = Instant::now();
        let mut qemu = Qemu(
            Command::new("qemu-system-x86_64")
                .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M"])
                .args(["-nodefaults", "-display", "none", "-no-reboot"])
                .args(["-serial", "stdio", "-monitor", "none"])
                .arg("-kernel")
                .arg(&self.kernel.vmlinux)
                .arg("-initrd")
                .arg(&initramfs)
                // panic=-1 reboots at once on a panic, and -no-reboot turns that into an exit.
                .args(["-append", "console=ttyS0 loglevel=4 panic=-1"])
                .arg("-virtfs")
                .arg(format!(
                    "local,path={},mount_tag=host,security_model=none,readonly=on",
                    self.share().display()
                ))
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(fs::File::create(&stderr_path)?)
                .spawn()
                .context("spawn qemu-system-x86_64")?,
        );

        let ready_at = Arc::new(Mutex::new(None));
        let reader = {
            let mut stdout = qemu.0.stdout.take().expect("stdout is piped");
            let ready_at = Arc::clone(&ready_at);
            let console_path = console_path.clone();
            std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
                let mut file = fs::File::create(&console_path)?;
                let mut console = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stdout.read(&mut buf)?;
                    if n == 0 {
                        return Ok(console);
                    }
                    std::io::Write::write_all(&mut file, &buf[..n])?;
                    let seen = console.len().saturating_sub(READY_MARKER.len());
                    console.extend_from_slice(&buf[..n]);
                    let mut ready = ready_at.lock().unwrap_or_else(|p| p.into_inner());
                    if ready.is_none() && contains(&console[seen..], READY_MARKER.as_bytes()) {
                        *ready = Some(started.elapsed());
                    }
                }
            })
        };

        let deadline = started + timeout;
        let status = loop {
            if let Some(status) = qemu.0.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Kills QEMU if it is still running; its stdout closes and the reader finishes.
        drop(qemu);
        let total = started.elapsed();
        let console = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
            .context("read the serial console")?;
        let mut console = String::from_utf8_lossy(&console).into_owned();
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        if !stderr.trim().is_empty() {
            console.push_str("\n--- qemu stderr ---\n");
            console.push_str(&stderr);
        }

        let verdict = match status.map(|s| s.code()) {
            None => Verdict::TimedOut,
            Some(Some(1)) => Verdict::Pass,
            Some(Some(3)) => Verdict::Fail,
            Some(code) => Verdict::NoVerdict(code),
        };
        let boot_time = *ready_at.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Outcome {
            verdict,
            console,
            console_path,
            boot_time,
            total,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn share(&self) -> PathBuf {
        self.dir.path().join("share")
    }

    /// Copies the libraries `ldd` lists for `binary` to the same paths in the initramfs, the
    /// dynamic loader included, so the host's binary runs unchanged in the guest.
    fn add_libraries(&self, binary: &Path) -> Result<()> {
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .context("spawn ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // Static binaries (busybox-static) have nothing to copy.
            ensure!(
                text.contains("not a dynamic executable")
                    || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable"),
                "ldd {}: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(());
        }
        for library in ldd_paths(&text) {
            let dest = self
                .root()
                .join(library.strip_prefix("/").unwrap_or(&library));
            if !dest.exists() {
                copy_file(&library, &dest)?;
            }
        }
        Ok(())
    }
}

/// The absolute library paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x..)`
/// and the loader's bare `/lib64/ld-linux-x86-64.so.2 (0x..)`); the vDSO has no file.
fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let resolved = match line.split_once("=>") {
                Some((_, right)) => right,
                None => line,
            };
            let path = resolved.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The script exited 0 (QEMU exit status 1).
    Pass,
    /// The script exited non-zero or the share did not mount (QEMU exit status 3).
    Fail,
    /// QEMU exited without a verdict (a kernel panic, a poweroff): its exit code, if any.
    NoVerdict(Option<i32>),
    /// The guest did not finish in time and QEMU was killed.
    TimedOut,
}

/// What one boot produced.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The serial console (kernel warnings, `/init` markers, the script's output), then
    /// QEMU's stderr if it wrote any.
    pub console: String,
    /// Where the console was also written as it arrived (kept after the run).
    pub console_path: PathBuf,
    /// From starting QEMU to `/init` having mounted the share, if it got that far.
    pub boot_time: Option<Duration>,
    /// From starting QEMU to its exit.
    pub total: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The console lines strictly between the lines `begin` and `end` (markers a script
    /// prints around output the host wants to read), with serial `\r` removed.
    pub fn section(&self, begin: &str, end: &str) -> Option<String> {
        let mut lines = self.console.lines().map(|l| l.trim_end_matches('\r'));
        lines.find(|l| *l == begin)?;
        let mut out = Vec::new();
        for line in lines {
            if line == end {
                return Some(out.join("\n"));
            }
            out.push(line);
        }
        None
    }
}

/// The QEMU child, killed (by its own pid, through `Child::kill`) and reaped on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A directory removed with everything in it on drop.
#[derive(Debug)]
struct TempDir(Option<PathBuf>);

impl TempDir {
    fn new(parent: &Path, tag: &str) -> Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!(".{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir(Some(path)))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("present until keep or drop")
    }

    /// Gives up the removal: the caller takes the directory over.
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("present until keep or drop")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// `cpio -o -H newc` of everything under `root`, uncompressed (the kernel unpacks it
/// faster than it could decompress it under TCG).
fn pack_initramfs(root: &Path, dest: &Path) -> Result<()> {
    let mut files = Vec::new();
    list_tree(root, Path::new(""), &mut files)?;
    let mut list = Vec::new();
    for f in &files {
        list.extend_from_slice(f.as_os_str().as_encoded_bytes());
        list.push(b'\n');
    }
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(dest)?)
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn cpio")?;
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin is piped"), &list)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Relative paths of every entry under `root/rel`, parents before children.
fn list_tree(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        out.push(path.clone());
        if entry.file_type()?.is_dir() {
            list_tree(root, &path, out)?;
        }
    }
    Ok(())
}

/// Copies the tree `from` into `to`, merging with what is there.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            copy_file(&entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Copies one file's contents (through symlinks) and mode, creating parent directories.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `program` itself when it is a path, else its first match in `PATH`.
fn which(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found in PATH"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_keep_loader_and_resolved_libraries_only() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibmnl.so.0 => /lib/x86_64-linux-gnu/libmnl.so.0 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(ldd),
            [
                "/lib/x86_64-linux-gnu/libmnl.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn section_reads_between_markers() {
        let outcome = Outcome {
            verdict: Verdict::Pass,
            console: "\u{1b}[2Jnoise\r\nBEGIN\r\na\tb\r\n\r\nc\r\nEND\r\nmore".into(),
            console_path: PathBuf::new(),
            boot_time: None,
            total: Duration::ZERO,
        };
        assert_eq!(
            outcome.section("BEGIN", "END").as_deref(),
            Some("a\tb\n\nc")
        );
        assert_eq!(outcome.section("BEGIN", "MISSING"), None);
        assert_eq!(outcome.section("NOPE", "END"), None);
    }
}
