//! Guest addresses to function and source line, from the guest ELF's DWARF
//! (addr2line over gimli; sections read with `object`). The guest is linked
//! at fixed addresses and identity mapped, so a guest RIP is an ELF address.

use addr2line::Context;
use gimli::{EndianArcSlice, RunTimeEndian};
use object::{Object, ObjectSection};
use serde::Serialize;
use std::sync::{Arc, Mutex};

type Reader = EndianArcSlice<RunTimeEndian>;

/// One source-level frame: a function and where in it. An address inside
/// inlined code gives several, innermost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceFrame {
    /// Demangled function path without the hash (`pvlock_guest::workloads::spin_forever`).
    pub function: String,
    /// Source file relative to its tree (`guest/bin/src/workloads.rs`,
    /// `library/core/src/hint.rs`): never a path of the building machine.
    pub file: String,
    pub line: u32,
    /// This frame was inlined into the next one.
    pub inlined: bool,
}

impl SourceFrame {
    /// `function (file:line)`.
    pub fn render(&self) -> String {
        let at =
            if self.line == 0 && self.file == "?" { String::new() } else { format!(" ({}:{})", self.file, self.line) };
        format!("{}{at}{}", self.function, if self.inlined { " [inlined]" } else { "" })
    }

    /// Code of the guest runtime's failure and doorbell helpers, a
    /// `Platform` implementation (the lock code's view of the machine, and
    /// the wrappers that forward to it), or the Rust library: not where a
    /// lock algorithm or workload stopped.
    pub fn is_helper(&self) -> bool {
        self.file.starts_with("library/")
            // A kernel build's stand-in headers (pv_wait, BUG plumbing):
            // the tree's own caller is the place.
            || self.file.starts_with("guest/kernel/")
            || self.file.ends_with("guest/bin/src/kmod.rs")
            || self.function.contains(" as pvlock_guest_lib::platform::Platform>::")
            || self.file.ends_with("guest/bin/src/rt.rs")
            || self.file.ends_with("guest/bin/src/cpu.rs")
            || self.file.contains("/rustc/")
    }
}

/// Symbolizes addresses of one guest ELF.
pub struct Symbolizer {
    // addr2line's lazily parsed units are not Sync: one lookup at a time.
    ctx: Mutex<Context<Reader>>,
    /// Function symbols (start, size, name) by start: for code without
    /// DWARF (the entry stub in `global_asm!`).
    symbols: Vec<(u64, u64, String)>,
}

impl Symbolizer {
    /// Parses the DWARF of `elf`; an ELF without debug info gives a
    /// symbolizer that finds nothing.
    pub fn new(elf: &[u8]) -> Result<Self, String> {
        let file = object::File::parse(elf).map_err(|e| format!("guest ELF: {e}"))?;
        let endian = if file.is_little_endian() { RunTimeEndian::Little } else { RunTimeEndian::Big };
        let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            let data = file
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .map(|d| Arc::<[u8]>::from(&*d))
                .unwrap_or_else(|| Arc::from(&[][..]));
            Ok(EndianArcSlice::new(data, endian))
        };
        let dwarf = gimli::Dwarf::load(load).map_err(|e| format!("guest DWARF: {e}"))?;
        let ctx = Context::from_dwarf(dwarf).map_err(|e| format!("guest DWARF: {e}"))?;
        use object::ObjectSymbol;
        let mut symbols: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| matches!(s.kind(), object::SymbolKind::Text | object::SymbolKind::Unknown) && s.address() != 0)
            .filter_map(|s| s.name().ok().map(|n| (s.address(), s.size(), n.to_string())))
            .collect();
        symbols.sort_unstable();
        Ok(Self { ctx: Mutex::new(ctx), symbols })
    }

    /// A process-wide symbolizer for `elf`, parsed once (a matrix of runs
    /// of the same image symbolizes many dumps).
    pub fn cached(elf: &[u8]) -> Result<Arc<Self>, String> {
        static CACHE: Mutex<Option<(usize, usize, Arc<Symbolizer>)>> = Mutex::new(None);
        let key = (elf.as_ptr() as usize, elf.len());
        let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, l, s)) = c.as_ref() {
            if (*p, *l) == key {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(Self::new(elf)?);
        *c = Some((key.0, key.1, s.clone()));
        Ok(s)
    }

    /// As [`Self::cached`], for a kernel-lock module's ELF: its own slot,
    /// so that symbolizing a module's frames does not evict the guest's.
    pub fn cached_module(elf: &[u8]) -> Result<Arc<Self>, String> {
        static CACHE: Mutex<Option<(Vec<u8>, Arc<Symbolizer>)>> = Mutex::new(None);
        let mut c = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bytes, s)) = c.as_ref() {
            if bytes.as_slice() == elf {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(Self::new(elf)?);
        *c = Some((elf.to_vec(), s.clone()));
        Ok(s)
    }

    /// The source frames at `addr`, innermost (inlined) first; empty when
    /// the address is in no function with line information.
    pub fn frames(&self, addr: u64) -> Vec<SourceFrame> {
        let ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let Ok(mut iter) = ctx.find_frames(addr).skip_all_loads() else { return out };
        while let Ok(Some(f)) = iter.next() {
            let function = f
                .function
                .as_ref()
                .and_then(|n| n.demangle().ok())
                .map(|n: std::borrow::Cow<str>| strip_hash(n.as_ref()).to_string())
                .unwrap_or_else(|| "?".into());
            let (file, line) = f
                .location
                .as_ref()
                .map(|l| (l.file.map(relative_source_path).unwrap_or_else(|| "?".into()), l.line.unwrap_or(0)))
                .unwrap_or_else(|| ("?".into(), 0));
            out.push(SourceFrame { function, file, line, inlined: true });
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        if out.is_empty() {
            // No line information: the symbol table's nearest function
            // symbol at or below, if the address is inside it (or it has
            // no size, as assembly labels do).
            let i = self.symbols.partition_point(|s| s.0 <= addr);
            if let Some((start, size, name)) = i.checked_sub(1).map(|i| &self.symbols[i]) {
                if *size == 0 || addr < start + size {
                    let name = rustc_demangle::demangle(name).to_string();
                    out.push(SourceFrame {
                        function: format!("{}+{:#x}", strip_hash(&name), addr - start),
                        file: "?".into(),
                        line: 0,
                        inlined: false,
                    });
                }
            }
        }
        out
    }
}

/// `a::b::c::h0123456789abcdef` -> `a::b::c`.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => head,
        _ => name,
    }
}

/// A compile-time source path made relative to its tree, so that records
/// never carry a path of the machine that built the guest: the project's
/// own files from `guest/` or `abi/`, the Rust library from `library/`,
/// crates from after the registry's `<crate>-<version>/`.
pub fn relative_source_path(path: &str) -> String {
    // The last tree root at a component boundary: the guest build remaps
    // the repository root away (harness/build.rs), and a remapped crate
    // path joined to its remapped build directory repeats it
    // (`guest/bin/guest/lib/src/hash.rs`).
    let root = ["guest/", "abi/", "library/"]
        .iter()
        .flat_map(|m| path.match_indices(m).map(|(i, _)| i))
        .filter(|&i| i == 0 || path.as_bytes()[i - 1] == b'/')
        .max();
    if let Some(i) = root {
        return path[i..].to_string();
    }
    if let Some(i) = path.find("/registry/src/") {
        let rest = &path[i + "/registry/src/".len()..];
        if let Some((_, krate)) = rest.split_once('/') {
            return krate.to_string();
        }
    }
    // Relative already (the build's own working directory), or unknown:
    // keep at most the last three components.
    let parts: Vec<&str> = path.trim_start_matches('/').rsplitn(4, '/').collect();
    parts.iter().take(3).rev().copied().collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_paths_lose_the_machine_prefix() {
        assert_eq!(relative_source_path("/home/x/pvlock/guest/lib/src/hash.rs"), "guest/lib/src/hash.rs");
        assert_eq!(relative_source_path("/rustc/0123abcd/library/core/src/hint.rs"), "library/core/src/hint.rs");
        assert_eq!(
            relative_source_path("/home/x/.cargo/registry/src/index.crates.io-0000000000000000/foo-1.0.0/src/lib.rs"),
            "foo-1.0.0/src/lib.rs"
        );
        assert_eq!(relative_source_path("src/main.rs"), "src/main.rs");
        assert_eq!(relative_source_path("guest/bin/src/workloads.rs"), "guest/bin/src/workloads.rs");
        assert_eq!(relative_source_path("guest/bin/guest/lib/src/hash.rs"), "guest/lib/src/hash.rs");
        assert_eq!(relative_source_path("guest/bin/abi/src/vcpu.rs"), "abi/src/vcpu.rs");
        assert_eq!(relative_source_path("/a/b/c/d/e.rs"), "c/d/e.rs");
    }

    #[test]
    fn hashes_are_stripped_from_names() {
        assert_eq!(
            strip_hash("pvlock_guest::workloads::spin_forever::h0123456789abcdef"),
            "pvlock_guest::workloads::spin_forever"
        );
        assert_eq!(strip_hash("core::hint::spin_loop"), "core::hint::spin_loop");
    }
}
