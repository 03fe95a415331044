//! Kernel builds: a user's kernel tree's own `kernel/locking/qspinlock.c`
//! (plus patches) compiled with the system C compiler against pvlock's
//! stand-in headers (`guest/kernel/`, GPL-2.0) into a module image the VMM
//! loads beside the guest (`pvlock_abi::kmod`). See `docs/KERNEL-BUILDS.md`.
//!
//! - [`tree`]: is it a kernel tree, which release and layout, which files.
//! - [`patch`]: the user's diffs, applied to a private copy.
//! - [`build`]: compile, link, check the image; cached by content hash.
//! - [`sites`]: the build's site table, site patterns, the run's site plan.

pub mod build;
pub mod patch;
pub mod sites;
pub mod tree;

pub use build::{build, BuildOptions, KernelBuild, KernelBuildInfo};
pub use tree::{Layout, Tree};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which arch headers the build uses (`lock.kernel_flavour`).
pub use pvlock_vmm::KernelFlavour as Flavour;

/// What to build: the tree, the patches (in order) and the build knobs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelSpec {
    pub tree: PathBuf,
    pub patches: Vec<PathBuf>,
    pub flavour: Flavour,
    /// `CONFIG_NR_CPUS` (at least the run's vCPUs; at most 64 here).
    pub nr_cpus: u32,
    /// `CONFIG_LOCK_EVENT_COUNTS`: the kernel's own event counters.
    pub lock_event_counts: bool,
    /// `SPIN_THRESHOLD` (x86's `asm/spinlock.h` has 1 << 15). Below 256
    /// the tree's wait-early check, made every 256 spins, never runs.
    pub spin_threshold: u32,
    /// Sites compiled in (`lock.kernel_sites`).
    pub sites: bool,
}

/// Why a kernel build could not be made. Each names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel tree {0}: no such directory")]
    NoTree(PathBuf),
    #[error("{tree} is not a kernel tree: {why}")]
    NotATree { tree: PathBuf, why: String },
    #[error("kernel tree {tree}: {file} is missing (the qspinlock build reads it)")]
    MissingFile { tree: PathBuf, file: String },
    #[error("kernel tree {tree} (Linux {version}): unsupported layout: {what}")]
    UnsupportedLayout { tree: PathBuf, version: String, what: String },
    #[error("kernel patch {patch} does not apply: {why}")]
    Patch { patch: PathBuf, why: String },
    #[error("the `patch` tool is not installed (Debian package `patch`); kernel patches need it")]
    NoPatchTool,
    #[error("no C compiler `{0}` (set CC, or install gcc: Debian package `gcc`); kernel builds need one")]
    NoCompiler(String),
    #[error("compiling Linux {version} ({tree}) failed:\n{errors}")]
    Compile { tree: PathBuf, version: String, errors: String },
    #[error("kernel build: {0}")]
    Bad(String),
    #[error("kernel build: {0}")]
    Io(String),
}

/// The kernel build `rc` needs: `None` for our own variants.
pub fn spec_of(rc: &crate::config::RunConfig) -> Result<Option<KernelSpec>, pvlock_vmm::InvalidValue> {
    let lock = &rc.lock;
    if !lock.variant.is_kernel() {
        return Ok(None);
    }
    let tree = lock.kernel_tree.clone().ok_or_else(|| {
        pvlock_vmm::InvalidValue::new(
            "lock.kernel_tree",
            format!("variant `{}` runs a kernel tree's own code: name the tree (or --kernel-tree)", lock.variant),
        )
    })?;
    Ok(Some(KernelSpec {
        tree,
        patches: lock.kernel_patches.clone(),
        flavour: lock.kernel_flavour,
        nr_cpus: lock.kernel_nr_cpus(),
        lock_event_counts: lock.kernel_lock_events,
        spin_threshold: lock.spin_threshold,
        sites: lock.kernel_sites,
    }))
}

/// The builds of this process: each spec is built (or read from the cache)
/// once, however many runs use it; `--rebuild` rebuilds it once.
static BUILDS: std::sync::Mutex<Vec<(KernelSpec, std::sync::Arc<KernelBuild>)>> = std::sync::Mutex::new(Vec::new());
static REBUILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ignore the build cache for this process's builds (`--rebuild`).
pub fn set_rebuild(rebuild: bool) {
    REBUILD.store(rebuild, std::sync::atomic::Ordering::Relaxed);
}

/// The module for `spec`, built at most once per process.
pub fn module_for(spec: &KernelSpec) -> Result<std::sync::Arc<KernelBuild>, KernelError> {
    let mut builds = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = builds.iter().find(|(s, _)| s == spec) {
        return Ok(b.clone());
    }
    let opts = BuildOptions::default_cache(REBUILD.load(std::sync::atomic::Ordering::Relaxed));
    let b = std::sync::Arc::new(build(spec, &opts)?);
    tracing::info!(
        "kernel build {} ({} {}, {}): {}",
        b.info.key,
        b.info.version,
        b.info.flavour.name(),
        if b.cached { "cached" } else { "compiled" },
        spec.tree.display()
    );
    builds.push((spec.clone(), b.clone()));
    Ok(b)
}

/// The kernel trees `.ci/kernel-trees` extracts (Debian's linux-source-6.1
/// and -6.12), for tests: `None` (with the reason printed) when absent
/// outside CI; under `CI=true` their absence is a failure.
pub fn ci_trees_for_tests() -> Option<Vec<PathBuf>> {
    let cache = std::env::var_os("PVLOCK_KERNEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("pvlock-kernels")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pvlock-kernels")))?;
    let trees: Vec<PathBuf> = ["linux-source-6.1", "linux-source-6.12"].iter().map(|t| cache.join(t)).collect();
    if trees.iter().all(|t| t.join("kernel/locking/qspinlock.c").is_file()) {
        return Some(trees);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but the kernel trees are not in {} (.ci/run runs .ci/kernel-trees first)", cache.display());
    }
    eprintln!("skipping: no kernel trees in {} (run .ci/kernel-trees to extract them)", cache.display());
    None
}
