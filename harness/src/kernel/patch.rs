//! Applies a user's unified diffs, in order, to the private copy of the
//! files a build reads (never to the user's tree), with the system
//! `patch` tool. A patch that does not apply is an error naming the
//! patch, the file and the hunk.

use super::KernelError;
use std::path::Path;
use std::process::Command;

/// Applies `patch` (a `-p1` diff against the tree root) inside `copy`.
pub fn apply(copy: &Path, patch: &Path) -> Result<(), KernelError> {
    if !patch.is_file() {
        return Err(KernelError::Patch { patch: patch.to_path_buf(), why: "no such file".into() });
    }
    let out = Command::new("patch")
        .args(["-p1", "--forward", "--batch", "--no-backup-if-mismatch", "--reject-file=-", "-d"])
        .arg(copy)
        .arg("-i")
        .arg(std::path::absolute(patch).unwrap_or_else(|_| patch.to_path_buf()))
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KernelError::NoPatchTool
            } else {
                KernelError::Io(format!("running patch: {e}"))
            }
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Err(KernelError::Patch { patch: patch.to_path_buf(), why: explain(&text) })
}

/// The failing file and hunks out of `patch`'s report.
fn explain(report: &str) -> String {
    let mut file = None;
    let mut problems = Vec::new();
    for line in report.lines() {
        let l = line.trim();
        if let Some(f) = l.strip_prefix("patching file ") {
            file = Some(f.trim_matches(|c| c == '\'' || c == '`').to_string());
        } else if l.starts_with("Hunk #") && l.contains("FAILED") {
            problems.push(format!("{}: {}", file.as_deref().unwrap_or("?"), l));
        } else if l.starts_with("can't find file to patch") {
            problems.push(format!(
                "{l}: the patch touches a file this build does not read (only kernel/locking/*, the qspinlock headers and hash.h are copied)"
            ));
        } else if l.contains("Reversed (or previously applied) patch detected") {
            problems.push(format!("{}: already applied or reversed", file.as_deref().unwrap_or("?")));
        } else if l.starts_with("patch:") && l.contains("****") {
            problems.push(l.to_string());
        }
    }
    if problems.is_empty() {
        report.lines().take(8).collect::<Vec<_>>().join("; ")
    } else {
        problems.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_hunks_name_file_and_hunk() {
        let r = "patching file kernel/locking/qspinlock_paravirt.h\nHunk #1 succeeded at 540.\n\
                 Hunk #2 FAILED at 551.\n1 out of 2 hunks FAILED -- saving rejects to file -\n";
        assert_eq!(explain(r), "kernel/locking/qspinlock_paravirt.h: Hunk #2 FAILED at 551.");
    }

    #[test]
    fn applies_and_refuses() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("kernel")).unwrap();
        std::fs::write(d.path().join("kernel/a.c"), "one\ntwo\nthree\n").unwrap();
        let p = d.path().join("ok.patch");
        std::fs::write(&p, "--- a/kernel/a.c\n+++ b/kernel/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n").unwrap();
        if Command::new("patch").arg("--version").output().is_err() {
            eprintln!("skipping: no `patch` tool");
            return;
        }
        apply(d.path(), &p).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("kernel/a.c")).unwrap(), "one\nTWO\nthree\n");
        let e = apply(d.path(), &p).unwrap_err().to_string();
        assert!(e.contains("ok.patch") && e.contains("kernel/a.c"), "{e}");
        let q = d.path().join("other.patch");
        std::fs::write(&q, "--- a/kernel/b.c\n+++ b/kernel/b.c\n@@ -1 +1 @@\n-x\n+y\n").unwrap();
        let e = apply(d.path(), &q).unwrap_err().to_string();
        assert!(e.contains("does not read"), "{e}");
    }
}
