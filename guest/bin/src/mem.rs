//! The C memory functions the compiler emits calls to. There is no libc in
//! the guest, and the host target's `compiler_builtins` does not provide
//! them, so they are written here with `rep movsb` / `rep stosb` (a Rust
//! loop could be turned back into a call to the very function it defines).

use core::arch::asm;

/// # Safety
/// C `memcpy` contract: `n` bytes valid at both, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; DF is clear per the SysV ABI.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// C `memmove` contract: `n` bytes valid at both; may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src or the ranges are disjoint: copy forwards.
        // SAFETY: as memcpy; a forward copy is correct for this overlap.
        return unsafe { memcpy(dst, src, n) };
    }
    // dst overlaps the tail of src: copy backwards with DF set, then clear it
    // again as the ABI requires.
    // SAFETY: the caller guarantees both ranges; n > 0 here.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack))
    };
    dst
}

/// # Safety
/// C `memset` contract: `n` bytes valid at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags))
    };
    dst
}

/// # Safety
/// C `memcmp` contract: `n` bytes valid at both.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, within both ranges; volatile keeps LLVM from
        // recognising the loop as a memcmp idiom.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// # Safety
/// C `bcmp` contract: `n` bytes valid at both.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
