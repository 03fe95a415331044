//! Checking a guest ELF before anything of it is loaded: the loader
//! (linux-loader) trusts the headers, so an image for another machine, a
//! relocatable object, or a segment that runs past guest RAM (or whose end
//! overflows) would be loaded and run, or fail deep inside with a vague
//! message. Here every header field the loader uses is checked with
//! checked arithmetic against the file and the guest's memory layout, and
//! the error says which field of which segment is wrong.

use pvlock_abi::GUEST_IMAGE_GPA;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ET_REL: u16 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
/// More program headers than any sane image has (ours has 3 or 4).
const MAX_PHDRS: u16 = 64;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn machine_name(m: u16) -> &'static str {
    match m {
        3 => "i386",
        40 => "ARM",
        62 => "x86-64",
        183 => "AArch64",
        243 => "RISC-V",
        _ => "unknown",
    }
}

/// Checks `elf` for a guest of `ram` bytes whose loadable image must lie in
/// `GUEST_IMAGE_GPA..image_limit` (below the vCPU stacks). Returns the
/// entry point.
pub fn check(elf: &[u8], ram: u64, image_limit: u64) -> Result<u64, String> {
    if elf.len() < EHDR_SIZE {
        return Err(format!("{} bytes is too short for an ELF header (64 bytes)", elf.len()));
    }
    if elf[..4] != *b"\x7fELF" {
        return Err("no ELF magic (\\x7fELF) at the start of the file".into());
    }
    if elf[4] != 2 {
        return Err(format!("EI_CLASS {} is not ELFCLASS64 (a 64-bit image is needed)", elf[4]));
    }
    if elf[5] != 1 {
        return Err(format!("EI_DATA {} is not little-endian", elf[5]));
    }
    let e_type = u16_at(elf, 16);
    match e_type {
        ET_EXEC => {}
        ET_REL => return Err("e_type ET_REL: a relocatable object, not an executable (link it first)".into()),
        ET_DYN => {
            return Err("e_type ET_DYN: a position-independent image; the guest must be linked at a fixed address \
                        (see guest/bin/link.ld)"
                .into())
        }
        ET_CORE => return Err("e_type ET_CORE: a core dump, not an executable".into()),
        t => return Err(format!("e_type {t}: not an executable (ET_EXEC)")),
    }
    let machine = u16_at(elf, 18);
    if machine != EM_X86_64 {
        return Err(format!("e_machine {machine} ({}): the guest must be an x86-64 image (62)", machine_name(machine)));
    }
    let entry = u64_at(elf, 24);
    let phoff = u64_at(elf, 32);
    let phentsize = u16_at(elf, 54);
    let phnum = u16_at(elf, 56);
    if phentsize as usize != PHDR_SIZE {
        return Err(format!("e_phentsize {phentsize} (an ELF64 program header is {PHDR_SIZE} bytes)"));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!("e_phnum {phnum}: need 1..={MAX_PHDRS} program headers"));
    }
    let table_end = (phnum as u64).checked_mul(PHDR_SIZE as u64).and_then(|n| n.checked_add(phoff));
    match table_end {
        Some(end) if end <= elf.len() as u64 => {}
        _ => {
            return Err(format!(
                "program headers at e_phoff {phoff:#x} ({phnum} of {PHDR_SIZE} bytes) run past the end of the file \
                 ({} bytes)",
                elf.len()
            ))
        }
    }
    let mut loads = 0;
    let mut entry_ok = false;
    for i in 0..phnum as usize {
        let h = &elf[phoff as usize + i * PHDR_SIZE..][..PHDR_SIZE];
        if u32_at(h, 0) != PT_LOAD {
            continue;
        }
        loads += 1;
        let (flags, offset, paddr, filesz, memsz) =
            (u32_at(h, 4), u64_at(h, 8), u64_at(h, 24), u64_at(h, 32), u64_at(h, 40));
        let seg = format!("PT_LOAD segment {i} (p_paddr {paddr:#x}, p_memsz {memsz:#x})");
        if filesz > memsz {
            return Err(format!("{seg}: p_filesz {filesz:#x} is larger than p_memsz"));
        }
        match offset.checked_add(filesz) {
            Some(end) if end <= elf.len() as u64 => {}
            _ => {
                return Err(format!(
                    "{seg}: file bytes p_offset {offset:#x} + p_filesz {filesz:#x} run past the end of the file ({} \
                     bytes)",
                    elf.len()
                ))
            }
        }
        let Some(end) = paddr.checked_add(memsz) else {
            return Err(format!("{seg}: p_paddr + p_memsz overflows 64 bits"));
        };
        if paddr < GUEST_IMAGE_GPA {
            return Err(format!(
                "{seg}: starts below {GUEST_IMAGE_GPA:#x}, where the boot block, vCPU blocks and page tables live"
            ));
        }
        if end > ram {
            return Err(format!("{seg}: ends at {end:#x}, past the end of guest RAM ({ram:#x}; raise ram_mib?)"));
        }
        if end > image_limit {
            return Err(format!("{seg}: ends at {end:#x}, inside the vCPU stacks (which start at {image_limit:#x})"));
        }
        if flags & PF_X != 0 && (paddr..paddr + filesz).contains(&entry) {
            entry_ok = true;
        }
    }
    if loads == 0 {
        return Err("no PT_LOAD segment: nothing to load".into());
    }
    if !entry_ok {
        return Err(format!("e_entry {entry:#x} is not inside an executable PT_LOAD segment"));
    }
    Ok(entry)
}

/// A minimal x86-64 ET_EXEC image: one executable PT_LOAD at `paddr`
/// holding `code`, entry at its start. For tests (here and in the
/// harness's), so that hostile images are built from a few bytes.
pub fn tiny_image(code: &[u8], paddr: u64) -> Vec<u8> {
    let mut b = vec![0u8; EHDR_SIZE + PHDR_SIZE];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let p = EHDR_SIZE;
    let off = (EHDR_SIZE + PHDR_SIZE) as u64;
    b[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    b[p + 4..p + 8].copy_from_slice(&(PF_X | 4).to_le_bytes()); // R+X
    b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
    b[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
    b[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
    b[p + 32..p + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b[p + 40..p + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    b[p + 48..p + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    b.extend_from_slice(code);
    b
}

/// Byte offsets of header fields, for tests that corrupt an image.
pub mod offsets {
    pub const E_TYPE: usize = 16;
    pub const E_MACHINE: usize = 18;
    pub const E_ENTRY: usize = 24;
    /// `p_paddr` of the first program header of [`super::tiny_image`].
    pub const P_PADDR: usize = 64 + 24;
    pub const P_FILESZ: usize = 64 + 32;
    pub const P_MEMSZ: usize = 64 + 40;
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 64 << 20;
    const LIMIT: u64 = RAM - 4 * 0x1_0000;

    fn set(b: &mut [u8], off: usize, v: &[u8]) {
        b[off..off + v.len()].copy_from_slice(v);
    }

    #[test]
    fn a_good_image_passes_and_gives_its_entry() {
        let img = tiny_image(&[0xeb, 0xfe], GUEST_IMAGE_GPA);
        assert_eq!(check(&img, RAM, LIMIT), Ok(GUEST_IMAGE_GPA));
    }

    #[test]
    fn each_bad_header_is_named() {
        let good = tiny_image(&[0xeb, 0xfe], GUEST_IMAGE_GPA);
        let cases: Vec<(Box<dyn Fn(&mut Vec<u8>)>, &str)> = vec![
            (Box::new(|b| b.truncate(10)), "too short"),
            (Box::new(|b| b[0] = 0), "magic"),
            (Box::new(|b| b[4] = 1), "ELFCLASS64"),
            (Box::new(|b| b[5] = 2), "little-endian"),
            (Box::new(|b| set(b, offsets::E_TYPE, &1u16.to_le_bytes())), "ET_REL"),
            (Box::new(|b| set(b, offsets::E_TYPE, &3u16.to_le_bytes())), "ET_DYN"),
            (Box::new(|b| set(b, offsets::E_TYPE, &4u16.to_le_bytes())), "ET_CORE"),
            (Box::new(|b| set(b, offsets::E_MACHINE, &183u16.to_le_bytes())), "e_machine 183 (AArch64)"),
            (Box::new(|b| set(b, offsets::E_MACHINE, &3u16.to_le_bytes())), "e_machine 3 (i386)"),
            (Box::new(|b| set(b, 56, &0u16.to_le_bytes())), "e_phnum 0"),
            (Box::new(|b| set(b, 32, &u64::MAX.to_le_bytes())), "past the end of the file"),
            (Box::new(|b| set(b, offsets::P_MEMSZ, &(RAM).to_le_bytes())), "past the end of guest RAM"),
            (Box::new(|b| set(b, offsets::P_MEMSZ, &u64::MAX.to_le_bytes())), "overflows"),
            (Box::new(|b| set(b, offsets::P_MEMSZ, &(LIMIT - GUEST_IMAGE_GPA + 1).to_le_bytes())), "vCPU stacks"),
            (Box::new(|b| set(b, offsets::P_MEMSZ, &1u64.to_le_bytes())), "larger than p_memsz"),
            (Box::new(|b| set(b, offsets::P_FILESZ, &(1u64 << 40).to_le_bytes())), "past the end of the file"),
            (Box::new(|b| set(b, offsets::P_PADDR, &0x1000u64.to_le_bytes())), "below"),
            (Box::new(|b| set(b, offsets::E_ENTRY, &0x1234u64.to_le_bytes())), "e_entry"),
        ];
        for (corrupt, want) in cases {
            let mut b = good.clone();
            corrupt(&mut b);
            let e = check(&b, RAM, LIMIT).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e:?}");
        }
    }
}
