//! A user's kernel tree: is it one, which release (its Makefile), which
//! layout of the qspinlock sources, and which files the build reads.

use super::{Flavour, KernelError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The files every build reads, tree-relative.
const COMMON: &[&str] = &[
    "kernel/locking/qspinlock.c",
    "kernel/locking/qspinlock_paravirt.h",
    "kernel/locking/qspinlock_stat.h",
    "kernel/locking/mcs_spinlock.h",
    "include/asm-generic/qspinlock.h",
    "include/asm-generic/qspinlock_types.h",
    "include/asm-generic/mcs_spinlock.h",
    "include/linux/hash.h",
];
/// The event counters of v5.2+ (ad53fa10fa9e).
const LOCK_EVENTS: &[&str] = &["kernel/locking/lock_events.h", "kernel/locking/lock_events_list.h"];
/// The x86 flavour's arch headers.
const X86: &[&str] =
    &["arch/x86/include/asm/qspinlock.h", "arch/x86/include/asm/qspinlock_paravirt.h", "arch/x86/include/asm/rmwcc.h"];
/// Read when the tree has them: `linux/args.h` (6.5+, rmwcc.h includes it),
/// `kernel/locking/qspinlock.h` (6.15+, split out of qspinlock.c).
const OPTIONAL: &[&str] = &["include/linux/args.h", "kernel/locking/qspinlock.h"];

/// How the tree's qspinlock sources are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `lock_events.h` counters, `qspinlock.c` with its own node code
    /// (v5.2 .. v6.14).
    LockEvents,
    /// As [`Layout::LockEvents`], with `kernel/locking/qspinlock.h` split
    /// out (v6.15+).
    LockEventsSplit,
}

/// A checked kernel tree.
#[derive(Clone, Debug)]
pub struct Tree {
    pub root: PathBuf,
    /// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from the Makefile.
    pub version: String,
    pub layout: Layout,
}

impl Tree {
    /// Checks that `root` is a kernel tree with a layout pvlock builds.
    pub fn open(root: &Path) -> Result<Self, KernelError> {
        if !root.is_dir() {
            return Err(KernelError::NoTree(root.to_path_buf()));
        }
        let makefile = root.join("Makefile");
        let text = std::fs::read_to_string(&makefile).map_err(|_| KernelError::NotATree {
            tree: root.to_path_buf(),
            why: "it has no top-level Makefile".into(),
        })?;
        let version = makefile_version(&text).ok_or_else(|| KernelError::NotATree {
            tree: root.to_path_buf(),
            why: "its Makefile sets no VERSION / PATCHLEVEL".into(),
        })?;
        if !root.join("kernel/locking/qspinlock.c").is_file() {
            return Err(KernelError::NotATree {
                tree: root.to_path_buf(),
                why: format!("it has no kernel/locking/qspinlock.c (Linux {version}; queued spinlocks came in v4.2)"),
            });
        }
        let layout = if !root.join("kernel/locking/lock_events.h").is_file() {
            let what = if root.join("kernel/locking/qspinlock_stat.h").is_file() {
                "qspinlock_stat.h's qstat counters without kernel/locking/lock_events.h (v4.6 .. v5.1)"
            } else {
                "no event counter header (kernel/locking/lock_events.h or qspinlock_stat.h; v4.2 .. v4.5)"
            };
            return Err(KernelError::UnsupportedLayout { tree: root.to_path_buf(), version, what: what.into() });
        } else if root.join("kernel/locking/qspinlock.h").is_file() {
            Layout::LockEventsSplit
        } else {
            Layout::LockEvents
        };
        Ok(Self { root: root.to_path_buf(), version, layout })
    }

    /// The tree-relative files a build with `flavour` reads, in a fixed order.
    pub fn files(&self, flavour: Flavour) -> Result<Vec<&'static str>, KernelError> {
        let mut out = Vec::new();
        let arch: &[&str] = match flavour {
            Flavour::X86 => X86,
            Flavour::Generic => &[],
        };
        for f in COMMON.iter().chain(LOCK_EVENTS).chain(arch) {
            if !self.root.join(f).is_file() {
                return Err(KernelError::MissingFile { tree: self.root.clone(), file: (*f).into() });
            }
            out.push(*f);
        }
        out.extend(OPTIONAL.iter().filter(|f| self.root.join(f).is_file()));
        Ok(out)
    }
}

/// `6.12.117` from `VERSION = 6`, `PATCHLEVEL = 12`, `SUBLEVEL = 117`,
/// `EXTRAVERSION =`.
pub fn makefile_version(makefile: &str) -> Option<String> {
    let get = |key: &str| {
        makefile.lines().take(40).find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let (v, p) = (get("VERSION")?, get("PATCHLEVEL")?);
    if v.is_empty() || p.is_empty() {
        return None;
    }
    let s = get("SUBLEVEL").filter(|s| !s.is_empty()).unwrap_or_else(|| "0".into());
    Some(format!("{v}.{p}.{s}{}", get("EXTRAVERSION").unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_a_makefile() {
        let mk = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum\n";
        assert_eq!(makefile_version(mk).as_deref(), Some("6.12.117"));
        let rc = "VERSION = 6\nPATCHLEVEL = 15\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n";
        assert_eq!(makefile_version(rc).as_deref(), Some("6.15.0-rc3"));
        assert_eq!(makefile_version("all:\n\techo\n"), None);
    }

    #[test]
    fn not_a_tree_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = Tree::open(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("no such directory"), "{e}");
        let e = Tree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a kernel tree") && e.contains("Makefile"), "{e}");
        std::fs::write(d.path().join("Makefile"), "VERSION = 4\nPATCHLEVEL = 1\n").unwrap();
        let e = Tree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("kernel/locking/qspinlock.c") && e.contains("4.1.0"), "{e}");
        std::fs::create_dir_all(d.path().join("kernel/locking")).unwrap();
        std::fs::write(d.path().join("kernel/locking/qspinlock.c"), "").unwrap();
        std::fs::write(d.path().join("kernel/locking/qspinlock_stat.h"), "").unwrap();
        let e = Tree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("unsupported layout") && e.contains("qstat"), "{e}");
        std::fs::write(d.path().join("kernel/locking/lock_events.h"), "").unwrap();
        let t = Tree::open(d.path()).unwrap();
        let e = t.files(Flavour::X86).unwrap_err().to_string();
        assert!(e.contains("kernel/locking/qspinlock_paravirt.h"), "{e}");
    }
}
