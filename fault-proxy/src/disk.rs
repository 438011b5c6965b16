//! Disk faults: a small tmpfs mounted over a directory, to fill up and to give space back (needs root).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory; unmounted (lazily) on drop.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` on `path` (an existing directory). Fails without the right to mount.
    pub fn mount(path: &Path, size_kib: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// For tests: [`mount`](Self::mount), or `None` (the test is skipped, saying why) when mounting fails and
    /// KVS_FAULTS_NO_MOUNT is set. Without that variable a failure panics: such a test needs root.
    pub fn mount_or_skip(path: &Path, size_kib: u64) -> Option<Tmpfs> {
        match Self::mount(path, size_kib) {
            Ok(t) => Some(t),
            Err(e) if std::env::var_os("KVS_FAULTS_NO_MOUNT").is_some() => {
                eprintln!("skipped (KVS_FAULTS_NO_MOUNT is set and tmpfs cannot be mounted: {e})");
                None
            }
            Err(e) => panic!(
                "this test mounts a tmpfs and needs root: {e} (set KVS_FAULTS_NO_MOUNT=1 to skip it where that is \
                 impossible)"
            ),
        }
    }

    /// Changes the size: below what is used, nothing more can be written; above, space returns.
    pub fn resize(&self, size_kib: u64) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size_kib}k")])
            .arg(&self.path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes a file `filler` in `dir` until the file system is full; returns its path (remove or shorten it to give
/// space back).
pub fn fill(dir: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&filler)?;
    for chunk in [64 * 1024, 4096, 1] {
        let block = vec![0xffu8; chunk];
        while f.write_all(&block).is_ok() {}
    }
    Ok(filler)
}

/// Disk use of a directory tree in KiB (`du -sk`), 0 when it cannot be measured.
pub fn disk_use_kib(path: &Path) -> u64 {
    Command::new("du")
        .arg("-sk")
        .arg(path)
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
