//! Builds the bare-metal guest (`guest/bin`, its own workspace) with a
//! nested cargo and hands its path to the harness, which embeds it: the
//! guest is part of the normal `cargo build`, with no manual step.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for p in [
        "guest/bin/src",
        "guest/bin/Cargo.toml",
        "guest/bin/build.rs",
        "guest/bin/.cargo/config.toml",
        "guest/bin/link.ld",
        "guest/lib/src",
        "guest/lib/Cargo.toml",
        "abi/src",
        "abi/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let target_dir = out_dir.join("guest-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("guest/bin")).args(["build", "--release", "--locked", "--target-dir"]).arg(&target_dir);
    // The outer build's settings must not leak into the guest build: its
    // flags, profile overrides and target dir are the host harness's.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_BUILD_")
            || k.starts_with("CARGO_ENCODED_")
            || k.starts_with("CARGO_TARGET_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("RUSTC_")
            || matches!(
                k.as_str(),
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "CARGO_MAKEFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(k);
        }
    }
    // Source paths in the guest (panic and BUG locations in records, debug
    // info) relative to the repository, not to this machine. Frame pointers
    // in every function: the VMM's dumps walk the rbp chain (RUSTFLAGS
    // replaces guest/bin/.cargo/config.toml's rustflags, so say it here too).
    cmd.env("RUSTFLAGS", format!("--remap-path-prefix={}/= -C force-frame-pointers=yes", root.display()));
    let status = cmd.status().expect("cannot run cargo to build the guest");
    if !status.success() {
        panic!("building the guest (guest/bin) failed: {status}");
    }
    let elf = target_dir.join("release/pvlock-guest");
    let dest = out_dir.join("pvlock-guest.elf");
    std::fs::copy(&elf, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", elf.display()));
    println!("cargo:rustc-env=PVLOCK_GUEST_ELF={}", dest.display());

    embed_kernel_standins(&root, &out_dir);

    // The git revision, for records ("" outside a checkout).
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("+{}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    println!("cargo:rustc-env=PVLOCK_GIT_REV={rev}");
    println!("cargo:rerun-if-changed={}", root.join(".git/logs/HEAD").display());
}

/// Lists guest/kernel's stand-in headers, wrapper and link script for
/// `include_bytes!` (harness/src/kernel/standins.rs): pvlock writes them out
/// next to each kernel build, so the binary needs no checkout at run time.
fn embed_kernel_standins(root: &std::path::Path, out_dir: &std::path::Path) {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<(String, PathBuf)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|e| e == "h" || e == "c" || e == "ld") {
                // `NAME.standin.h` is written out as `NAME.h`: a stand-in
                // that must carry a kernel header's name (the kernel code
                // includes it by that name) is committed under a name that
                // says it is ours, never mistaken for a kernel file.
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().replace(".standin.h", ".h");
                out.push((rel, p));
            }
        }
    }
    let dir = root.join("guest/kernel");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    walk(&dir, &dir, &mut files);
    let mut src = String::from("&[\n");
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        src += &format!("    ({rel:?}, include_bytes!({:?}) as &[u8]),\n", abs.display().to_string());
    }
    src += "]\n";
    std::fs::write(out_dir.join("kernel_standins.rs"), src).unwrap();
}
