//! Writing results so that nothing is half-written and nothing is left
//! behind: regular files are written to a temporary name in the same
//! directory and renamed into place (the temporary is removed on any
//! error); special files (a tty, a pipe, `/dev/stdout`) are written in
//! place, never replaced; result directories are created fresh for every
//! invocation and named by one checked path component.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A name for a temporary file next to `path` that no other writer uses:
/// this process's id plus a per-process counter (two threads, or two
/// writes in one process, never share one).
fn temp_name(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Removes a temporary file when dropped, unless disarmed (after rename).
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Atomically replaces the regular file `path` with `bytes` (creating
/// missing parent directories). Refuses a `path` that exists and is not a
/// regular file: renaming over a directory, a device or a pipe would
/// replace it (use [`Destination`] for outputs a user names). No
/// temporary file survives an error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() {
            bail!("{} exists and is not a regular file ({}); not replacing it", path.display(), kind(&m));
        }
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let tmp = temp_name(dir, &name);
    let mut guard = TempGuard(None);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        guard.0 = Some(tmp.clone());
        f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
        f.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    guard.0 = None;
    Ok(())
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Where a user asked an output to go (`--json PATH`), checked before any
/// run starts so that a bad destination fails in a second, not after the
/// whole matrix.
///
/// What the check can prove differs by kind, and it does no more than it
/// can honestly: for a regular file it makes (and removes) a temporary
/// file in the destination's directory, the first step of the atomic write
/// (so a missing, read-only or non-directory parent fails now; a disk that
/// fills up during the run cannot be foreseen). A special file is only
/// opened for writing (a FIFO not even that): a test write would print
/// junk on a tty, hand a FIFO's reader an end of file, and prove nothing
/// on `/dev/full` (a zero-length write succeeds there). So a special file
/// is written once, in place, after the run, and if that (or any later
/// write) fails the document is saved to `$TMPDIR` and the error names
/// the file: a finished run is never lost to its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A regular file (or a name that does not exist yet): written
    /// atomically, and may be rewritten after every run. A symlink to a
    /// regular file is resolved: its target is replaced, the link stays.
    Regular(PathBuf),
    /// An existing special file (a tty, a pipe, `/dev/stdout`, `/dev/null`,
    /// `/dev/full`), or a symlink to one: opened and written in place, once,
    /// never replaced by a regular file.
    Special(PathBuf),
}

impl Destination {
    /// Checks `path` for `flag` (named in errors): a directory, or a file
    /// in a directory that does not exist or cannot be written, is refused.
    pub fn check(flag: &str, path: &Path) -> Result<Self> {
        if path.file_name().is_none() {
            bail!("{flag} {}: names no file (it ends in `..` or `/`)", path.display());
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => bail!("{flag} {}: is a directory; give a file name", path.display()),
            Ok(m) if m.is_file() => {
                let real = std::fs::canonicalize(path).with_context(|| format!("{flag} {}", path.display()))?;
                check_dir_writable(flag, path, real.parent().unwrap_or(Path::new("/")))?;
                Ok(Self::Regular(real))
            }
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                if m.file_type().is_fifo() {
                    // Not opened here: opening and closing a FIFO would hand
                    // its reader an end of file before the document.
                    return Ok(Self::Special(path.to_path_buf()));
                }
                // Opening without create/truncate: never replaces it.
                match std::fs::OpenOptions::new().write(true).open(path) {
                    Ok(_) => Ok(Self::Special(path.to_path_buf())),
                    Err(e) => bail!("{flag} {}: cannot open for writing: {e}", path.display()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    bail!("{flag} {}: is a dangling symbolic link", path.display());
                }
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("{flag} {}: cannot create {}", path.display(), parent.display()))?;
                check_dir_writable(flag, path, parent)?;
                Ok(Self::Regular(path.to_path_buf()))
            }
            Err(e) => bail!("{flag} {}: {e}", path.display()),
        }
    }

    /// Whether the output may be written again after every run (so that an
    /// aborted matrix still leaves every finished record): regular files
    /// only; a pipe or tty gets one document at the end.
    pub fn rewritable(&self) -> bool {
        matches!(self, Self::Regular(_))
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Regular(p) | Self::Special(p) => p,
        }
    }

    /// Writes `bytes` (atomically for a regular file). If that fails (a
    /// full disk, `/dev/full`, a closed pipe), the document is not lost:
    /// it is saved to a new file in the temporary directory (`$TMPDIR`),
    /// and the error says where.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        let Err(e) = self.write_here(bytes) else { return Ok(()) };
        let name = self.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rescue = std::env::temp_dir().join(format!("pvlock-unwritten-{}-{name}", std::process::id()));
        let rescue = unique_file_name(&rescue);
        match write_atomic(&rescue, bytes) {
            Ok(()) => Err(e.context(format!("the document was saved to {} instead", rescue.display()))),
            Err(e2) => Err(e.context(format!("and saving it to {} failed too: {e2:#}", rescue.display()))),
        }
    }

    fn write_here(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Self::Regular(p) => write_atomic(p, bytes),
            Self::Special(p) => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?;
                f.write_all(bytes).and_then(|_| f.flush()).with_context(|| format!("cannot write {}", p.display()))
            }
        }
    }
}

/// `path`, or `path.1`, `path.2`... whichever does not exist yet.
fn unique_file_name(path: &Path) -> PathBuf {
    (0..1000u32)
        .map(|n| if n == 0 { path.to_path_buf() } else { PathBuf::from(format!("{}.{n}", path.display())) })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Checks that the atomic write into `dir` will work by doing its first
/// step: creating (and removing) a temporary file there. `access(2)` would
/// not do: root passes it on read-only mounts and in /proc.
fn check_dir_writable(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    let probe = temp_name(dir, "probe");
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{flag} {}: cannot write into {}: {e}", path.display(), dir.display()),
    }
}

/// Appends one line to a JSONL file and flushes it to disk, so a crash or
/// Ctrl-C after this returns loses nothing. If the write fails (a full
/// disk), the partial line is cut off again: the file keeps only whole
/// records.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let before = f.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    if let Err(e) = f.write_all(&buf).and_then(|_| f.sync_data()) {
        let _ = f.set_len(before);
        return Err(e).with_context(|| format!("cannot append to {}", path.display()));
    }
    Ok(())
}

/// Checks that an experiment name can name a result directory: exactly one
/// normal path component, so `OUT/<name>/...` never leaves `OUT`.
pub fn check_path_component(what: &str, name: &str) -> Result<()> {
    match path_component_problem(name) {
        Some(why) => bail!(
            "{what} `{}` cannot name a result directory: {why} (it must be one path component)",
            name.escape_debug()
        ),
        None => Ok(()),
    }
}

/// Why `name` cannot be one directory name, if it cannot.
pub fn path_component_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if name.contains('/') {
        Some("it contains `/`")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.starts_with('.') {
        Some("it starts with `.` (a hidden directory)")
    } else {
        None
    }
}

/// Creates a new directory `parent/stem`, or `parent/stem-001`, `-002`...
/// if that exists: two invocations, even in the same second, never share
/// a directory (`create_dir` fails if the name exists, atomically).
pub fn create_unique_dir(parent: &Path, stem: &str) -> Result<(PathBuf, String)> {
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    for n in 0..10_000u32 {
        let name = if n == 0 { stem.to_string() } else { format!("{stem}-{n:03}") };
        let dir = parent.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, name)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!("cannot create a new result directory under {}: 10000 names taken", parent.display())
}

/// Points `parent/latest` at `target`: a symlink made under a unique
/// temporary name and renamed over `latest` (rename is atomic: a reader
/// sees the old link or the new one, never none).
pub fn set_latest(parent: &Path, target: &str) -> Result<()> {
    let tmp = temp_name(parent, "latest");
    let mut guard = TempGuard(None);
    std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    guard.0 = Some(tmp.clone());
    let latest = parent.join("latest");
    std::fs::rename(&tmp, &latest).with_context(|| format!("cannot update {}", latest.display()))?;
    guard.0 = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_refuses_a_directory_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = write_atomic(&sub, b"x").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn append_adds_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.jsonl");
        append_line(&p, "{}").unwrap();
        append_line(&p, "{\"a\":1}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{}\n{\"a\":1}\n");
    }

    #[test]
    fn destinations_are_classified_before_any_run() {
        let d = tempfile::tempdir().unwrap();
        // A directory: refused, and nothing is created in it.
        let e = Destination::check("--json", d.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        // A new file, in a new directory.
        let p = d.path().join("a/b.json");
        assert_eq!(Destination::check("--json", &p).unwrap(), Destination::Regular(p.clone()));
        // Special files are written in place, never replaced.
        for dev in ["/dev/null", "/dev/full"] {
            let dest = Destination::check("--json", Path::new(dev)).unwrap();
            assert!(!dest.rewritable(), "{dev}");
        }
        let full = Destination::check("--json", Path::new("/dev/full")).unwrap();
        let e = format!("{:#}", full.write(b"{}").unwrap_err());
        assert!(e.contains("/dev/full") && e.contains("space"), "{e}");
        assert!(Path::new("/dev/full").metadata().unwrap().file_type().is_file().eq(&false));
        // A symlink to a regular file: the target is rewritten, the link stays.
        let target = d.path().join("t.json");
        std::fs::write(&target, b"old").unwrap();
        let link = d.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        Destination::check("--json", &link).unwrap().write(b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A dangling link is named as such.
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere/x"), &dangling).unwrap();
        let e = Destination::check("--json", &dangling).unwrap_err().to_string();
        assert!(e.contains("dangling"), "{e}");
    }

    #[test]
    fn names_must_be_one_path_component() {
        for bad in ["", ".", "..", "../../x", "/abs", "a/b", "a\0b", ".hidden"] {
            assert!(check_path_component("experiment name", bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(201);
        assert!(check_path_component("experiment name", &long).is_err());
        for good in ["smoke", "pvhash-compare", "a.b", "x..y", "ünïcode"] {
            check_path_component("experiment name", good).unwrap();
        }
    }

    #[test]
    fn unique_dirs_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let names: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> =
                (0..8).map(|_| s.spawn(|| create_unique_dir(d.path(), "20260101T000000Z").unwrap().1)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{names:?}");
        assert_eq!(sorted[0], "20260101T000000Z");
        assert_eq!(sorted[1], "20260101T000000Z-001");
        set_latest(d.path(), &sorted[7]).unwrap();
        set_latest(d.path(), &sorted[3]).unwrap();
        assert_eq!(std::fs::read_link(d.path().join("latest")).unwrap(), Path::new(&sorted[3]));
        // Only the directories and `latest`: no temporary link is left.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 9);
    }
}
