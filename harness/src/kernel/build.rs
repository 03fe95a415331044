//! Compiling, linking and caching one kernel build.

use super::{patch, Flavour, KernelError, KernelSpec, Layout, Tree};
use pvlock_abi::kmod::{KmodDescriptor, KMOD_GPA, KMOD_LIMIT, KMOD_MAGIC, KMOD_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// guest/kernel's files, embedded at build time (harness/build.rs).
static STANDINS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/kernel_standins.rs"));

/// The compiler flags of every build (the knobs add `-D`s).
const CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-O2",
    // DWARF for the VMM's vCPU dumps: an address in the tree's code is
    // shown as its kernel function and file:line (the image's loaded
    // segments are the same with or without it).
    "-g",
    // Frame pointers, so that the dump's frame walk goes on through the
    // tree's functions to the guest code that called them (one push and
    // one move per non-leaf function, as a CONFIG_FRAME_POINTER kernel).
    "-fno-omit-frame-pointer",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdinc",
    "-nostdlib",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-strict-aliasing",
    "-fno-pic",
    "-fno-common",
    "-Wall",
    "-Wno-pointer-sign",
    "-Wno-unused-but-set-variable",
    "-Wno-unused-function",
    "-DCONFIG_SMP",
    "-DCONFIG_QUEUED_SPINLOCKS",
    "-DCONFIG_PARAVIRT",
    "-DCONFIG_PARAVIRT_SPINLOCKS",
];

/// Where builds are cached and whether to ignore the cache.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub cache_dir: PathBuf,
    pub rebuild: bool,
}

impl BuildOptions {
    /// `$PVLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/pvlock/kernel-builds`,
    /// else `~/.cache/pvlock/kernel-builds`.
    pub fn default_cache(rebuild: bool) -> Self {
        let dir = std::env::var_os("PVLOCK_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("pvlock")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pvlock")))
            .unwrap_or_else(|| std::env::temp_dir().join("pvlock-cache"))
            .join("kernel-builds");
        Self { cache_dir: dir, rebuild }
    }
}

/// What a record says about a kernel build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelBuildInfo {
    pub tree: String,
    /// From the tree's Makefile.
    pub version: String,
    pub layout: Layout,
    pub flavour: Flavour,
    /// `[path, sha256]` per patch, in the order applied.
    pub patches: Vec<[String; 2]>,
    /// The compiler's `--version` first line.
    pub compiler: String,
    pub nr_cpus: u32,
    pub lock_event_counts: bool,
    /// The content hash the build is cached under.
    pub key: String,
    /// The layout the build reports (sizes, offsets, state values).
    pub descriptor: DescriptorSummary,
}

/// The tree's layout as the wrapper exported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorSummary {
    pub hash_entry_size: u32,
    pub qnode_size: u32,
    pub max_nodes: u32,
    pub pv_node_cpu_off: u32,
    pub pv_node_state_off: u32,
    pub vcpu_states: [u8; 3],
    pub q_slow_val: u8,
    pub q_pending_bits: u8,
    pub spin_threshold: u32,
    pub nr_lockevents: u32,
}

/// A module image ready to load, and what it is.
#[derive(Clone, Debug)]
pub struct KernelBuild {
    pub image: Vec<u8>,
    pub info: KernelBuildInfo,
    /// Every site of the image (empty when built without sites).
    pub sites: super::sites::SiteTable,
    /// The files compiled, as patched (tree-relative path -> text): the
    /// source lines `pvlock list sites` and hold records show.
    pub sources: std::collections::BTreeMap<String, String>,
    /// Served from the cache (nothing compiled).
    pub cached: bool,
}

impl KernelBuild {
    /// The tree's lock layout as its build reported it, for the VMM's
    /// decoding (hang dumps, the missed-wakeup detector, hash checks). The
    /// word's tail fields are asm-generic's for fewer than 16K CPUs, which
    /// every build here is (`CONFIG_NR_CPUS` <= 64).
    pub fn lock_layout(&self) -> Result<pvlock_abi::lockword::LockLayout, KernelError> {
        let d = check_image(&self.image)?;
        let mut l = pvlock_abi::lockword::LockLayout::for_variant(pvlock_abi::Variant::KernelPv);
        l.word.locked_val = d.q_locked_val;
        l.word.slow_val = d.q_slow_val;
        l.hash_entry.size = d.hash_entry_size as u64;
        l.hash_entry.lock = d.hash_entry_lock_off as u64;
        l.hash_entry.node = d.hash_entry_node_off as u64;
        l.node.max_nodes = d.max_nodes;
        l.node.next = d.mcs_next_off as u64;
        l.node.locked = d.mcs_locked_off as u64;
        l.node.count = d.mcs_count_off as u64;
        l.node.cpu = d.pv_node_cpu_off as u64;
        l.node.state = d.pv_node_state_off as u64;
        l.node.state_running = d.vcpu_running;
        Ok(l)
    }
}

fn io(what: &str, p: &Path, e: std::io::Error) -> KernelError {
    KernelError::Io(format!("{what} {}: {e}", p.display()))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The C compiler: `$CC` or `cc`, and its `--version` line.
fn compiler() -> Result<(String, String), KernelError> {
    let cc = std::env::var("CC").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "cc".into());
    let out = Command::new(&cc).arg("--version").output().map_err(|_| KernelError::NoCompiler(cc.clone()))?;
    if !out.status.success() {
        return Err(KernelError::NoCompiler(cc));
    }
    let id = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string();
    Ok((cc, id))
}

fn knob_flags(spec: &KernelSpec) -> Vec<String> {
    let mut f = vec![format!("-DCONFIG_NR_CPUS={}", spec.nr_cpus), format!("-DSPIN_THRESHOLD={}", spec.spin_threshold)];
    if spec.lock_event_counts {
        f.push("-DCONFIG_LOCK_EVENT_COUNTS".into());
    }
    if spec.flavour == Flavour::X86 {
        f.push("-DPVLOCK_FLAVOUR_X86=1".into());
    }
    if !spec.sites {
        f.push("-DPVLOCK_NO_SITES".into());
    }
    f
}

/// Builds (or finds in the cache) the module for `spec`.
pub fn build(spec: &KernelSpec, opts: &BuildOptions) -> Result<KernelBuild, KernelError> {
    let tree = Tree::open(&spec.tree)?;
    if spec.nr_cpus == 0 || spec.nr_cpus as usize > pvlock_abi::MAX_VCPUS {
        return Err(KernelError::Bad(format!(
            "nr_cpus {} is outside 1..={} (CONFIG_NR_CPUS of the guest)",
            spec.nr_cpus,
            pvlock_abi::MAX_VCPUS
        )));
    }
    let files = tree.files(spec.flavour)?;
    let (cc, compiler_id) = compiler()?;

    // The content hash: everything the object depends on.
    let mut h = Sha256::new();
    let mut feed = |tag: &str, bytes: &[u8]| {
        h.update((tag.len() as u64).to_le_bytes());
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    feed("pvlock", crate::version().as_bytes());
    feed("compiler", compiler_id.as_bytes());
    feed("flags", CFLAGS.join(" ").as_bytes());
    feed("knobs", knob_flags(spec).join(" ").as_bytes());
    for (rel, bytes) in STANDINS {
        feed(rel, bytes);
    }
    let mut sources = Vec::new();
    for f in &files {
        let p = tree.root.join(f);
        let b = std::fs::read(&p).map_err(|e| io("reading", &p, e))?;
        feed(f, &b);
        sources.push((*f, b));
    }
    let mut patches = Vec::new();
    for p in &spec.patches {
        let b = std::fs::read(p)
            .map_err(|e| KernelError::Patch { patch: p.clone(), why: format!("cannot read it: {e}") })?;
        feed("patch", &b);
        patches.push([p.display().to_string(), hex(&Sha256::digest(&b))]);
    }
    let key = hex(&h.finalize())[..24].to_string();

    let dir = opts.cache_dir.join(&key);
    let image_path = dir.join("module.elf");
    let info_path = dir.join("build.json");
    if !opts.rebuild {
        if let (Ok(image), Ok(text)) = (std::fs::read(&image_path), std::fs::read_to_string(&info_path)) {
            if let Ok(mut info) = serde_json::from_str::<KernelBuildInfo>(&text) {
                // The same content may come from another path: the record
                // names this build's tree and patch paths, not those of the
                // build that filled the cache.
                info.tree = tree.root.display().to_string();
                info.patches = patches.clone();
                check_image(&image)?;
                let sites = super::sites::SiteTable::from_image(&image)?;
                let sources = read_sources(&dir.join("source"), &files);
                return Ok(KernelBuild { image, info, sites, sources, cached: true });
            }
        }
    }

    std::fs::create_dir_all(&opts.cache_dir).map_err(|e| io("creating", &opts.cache_dir, e))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&opts.cache_dir)
        .map_err(|e| io("creating a build directory in", &opts.cache_dir, e))?;
    let src = work.path().join("src");
    let standins = work.path().join("pvlock");
    for (rel, bytes) in STANDINS {
        write_file(&standins.join(rel), bytes)?;
    }
    for (rel, bytes) in &sources {
        write_file(&src.join(rel), bytes)?;
    }
    for p in &spec.patches {
        patch::apply(&src, p)?;
    }

    let obj = work.path().join("kmod.o");
    let mut cmd = Command::new(&cc);
    cmd.args(CFLAGS).args(knob_flags(spec));
    // __FILE__ becomes the tree-relative path: BUG/WARN name kernel/locking/...
    cmd.arg(format!("-fmacro-prefix-map={}/=", src.display()));
    // And so do the DWARF line tables (stand-ins under guest/kernel/).
    cmd.arg(format!("-fdebug-prefix-map={}/=", src.display()));
    cmd.arg(format!("-fdebug-prefix-map={}/=guest/kernel/", standins.display()));
    cmd.arg("-I").arg(standins.join("include"));
    match spec.flavour {
        Flavour::X86 => cmd.arg("-I").arg(src.join("arch/x86/include")),
        Flavour::Generic => cmd.arg("-I").arg(standins.join("include-generic")),
    };
    cmd.arg("-I").arg(src.join("include")).arg("-I").arg(&src);
    cmd.arg("-c").arg(standins.join("pvlock_kmod.c")).arg("-o").arg(&obj);
    let out = cmd.output().map_err(|_| KernelError::NoCompiler(cc.clone()))?;
    if !out.status.success() {
        return Err(compile_error(&tree, &src, &standins, &out.stderr));
    }
    let elf = work.path().join("module.elf");
    let out = Command::new(&cc)
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,--no-undefined", "-Wl,-z,noexecstack"])
        .arg(format!("-Wl,--defsym=KMOD_GPA={KMOD_GPA:#x}"))
        .arg(format!("-Wl,-T,{}", standins.join("module.ld").display()))
        .arg(&obj)
        .arg("-o")
        .arg(&elf)
        .output()
        .map_err(|_| KernelError::NoCompiler(cc.clone()))?;
    if !out.status.success() {
        return Err(compile_error(&tree, &src, &standins, &out.stderr));
    }
    let image = std::fs::read(&elf).map_err(|e| io("reading", &elf, e))?;
    let d = check_image(&image)?;
    let sites = super::sites::SiteTable::from_image(&image)?;
    let sources = read_sources(&src, &files);
    let info = KernelBuildInfo {
        tree: tree.root.display().to_string(),
        version: tree.version.clone(),
        layout: tree.layout,
        flavour: spec.flavour,
        patches,
        compiler: compiler_id,
        nr_cpus: spec.nr_cpus,
        lock_event_counts: spec.lock_event_counts,
        key: key.clone(),
        descriptor: DescriptorSummary {
            hash_entry_size: d.hash_entry_size,
            qnode_size: d.qnode_size,
            max_nodes: d.max_nodes,
            pv_node_cpu_off: d.pv_node_cpu_off,
            pv_node_state_off: d.pv_node_state_off,
            vcpu_states: [d.vcpu_running, d.vcpu_halted, d.vcpu_hashed],
            q_slow_val: d.q_slow_val,
            q_pending_bits: d.q_pending_bits,
            spin_threshold: d.spin_threshold,
            nr_lockevents: d.nr_lockevents,
        },
    };
    // Into the cache atomically: a complete directory renamed into place.
    let staged = work.path().join("out");
    std::fs::create_dir_all(&staged).map_err(|e| io("creating", &staged, e))?;
    write_file(&staged.join("module.elf"), &image)?;
    let json = serde_json::to_string_pretty(&info).map_err(|e| KernelError::Io(e.to_string()))?;
    write_file(&staged.join("build.json"), json.as_bytes())?;
    for (rel, text) in &sources {
        write_file(&staged.join("source").join(rel), text.as_bytes())?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    // A concurrent build of the same key may have won the rename: its
    // result is the same bytes.
    let _ = std::fs::rename(&staged, &dir);
    Ok(KernelBuild { image, info, sites, sources, cached: false })
}

/// The build's source files (as patched) under `root`; a file that cannot
/// be read is left out (its sites are listed without their text).
fn read_sources(root: &Path, files: &[&str]) -> std::collections::BTreeMap<String, String> {
    files.iter().filter_map(|f| std::fs::read_to_string(root.join(f)).ok().map(|t| (f.to_string(), t))).collect()
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
    }
    std::fs::write(p, bytes).map_err(|e| io("writing", p, e))
}

/// The compiler's first errors, with the private copy's paths shown as the
/// tree's and the stand-ins' as guest/kernel's.
fn compile_error(tree: &Tree, src: &Path, standins: &Path, stderr: &[u8]) -> KernelError {
    let text = String::from_utf8_lossy(stderr)
        .replace(&format!("{}/", src.display()), &format!("{}/", tree.root.display()))
        .replace(&format!("{}/", standins.display()), "guest/kernel/");
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| l.contains("error:") || l.contains("undefined reference")).unwrap_or(0);
    // Keep the include chain just above the first error.
    let start = (first.saturating_sub(3)..first)
        .find(|&i| lines[i].starts_with("In file included") || lines[i].trim_start().starts_with("from "))
        .unwrap_or(first);
    let errors = lines[start..].iter().take(12).copied().collect::<Vec<_>>().join("\n");
    KernelError::Compile { tree: tree.root.clone(), version: tree.version.clone(), errors }
}

/// Checks that `image` is a module image that loads in the module window
/// and returns its descriptor.
pub fn check_image(image: &[u8]) -> Result<KmodDescriptor, KernelError> {
    let bad = |why: &str| KernelError::Bad(format!("the module image is unusable: {why}"));
    if image.len() < 64 || &image[..4] != b"\x7fELF" || image[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    let u16at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]) as usize;
    let u64at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64at(32) as usize, u16at(54), u16at(56));
    let mut desc = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 56 > image.len() {
            return Err(bad("truncated program headers"));
        }
        if u32::from_le_bytes(image[ph..ph + 4].try_into().unwrap()) != 1 {
            continue; // not PT_LOAD
        }
        let (off, paddr, filesz, memsz) = (u64at(ph + 8), u64at(ph + 24), u64at(ph + 32), u64at(ph + 40));
        if paddr < KMOD_GPA || paddr + memsz > KMOD_LIMIT {
            return Err(bad(&format!(
                "segment {paddr:#x}..{:#x} outside the module window {KMOD_GPA:#x}..{KMOD_LIMIT:#x}",
                paddr + memsz
            )));
        }
        let size = std::mem::size_of::<KmodDescriptor>() as u64;
        if paddr == KMOD_GPA && filesz >= size && (off + size) as usize <= image.len() {
            let bytes = &image[off as usize..(off + size) as usize];
            // SAFETY: KmodDescriptor is repr(C) plain integers, any bit
            // pattern is valid, and `bytes` has exactly its size;
            // read_unaligned copes with any alignment of the buffer.
            desc = Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const KmodDescriptor) });
        }
    }
    let d = desc.ok_or_else(|| bad(&format!("no segment at {KMOD_GPA:#x} holding the descriptor")))?;
    if d.magic != KMOD_MAGIC || d.version != KMOD_VERSION || d.size as usize != std::mem::size_of::<KmodDescriptor>() {
        return Err(bad("its descriptor has the wrong magic, version or size"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standins_are_embedded() {
        let names: Vec<&str> = STANDINS.iter().map(|(n, _)| *n).collect();
        for f in ["pvlock_kmod.c", "module.ld", "include/pvlock/kernel.h", "include/asm/paravirt.h"] {
            assert!(names.contains(&f), "{f} not embedded: {names:?}");
        }
        for (n, b) in STANDINS {
            let text = std::str::from_utf8(b).unwrap();
            assert!(text.contains("SPDX-License-Identifier: GPL-2.0"), "{n} has no GPL-2.0 SPDX line");
        }
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(check_image(b"hello").is_err());
        assert!(check_image(&[0u8; 200]).unwrap_err().to_string().contains("ELF"));
    }
}
