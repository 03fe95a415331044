//! Link the guest freestanding at a fixed address (see link.ld and
//! `pvlock_abi::GUEST_IMAGE_GPA`). Only the host target is installed on the
//! project's machines, so the guest is built for it with no libc, no start
//! files and no PIE; `-bins` keeps these flags off every library crate.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=link.ld");
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,-z,noexecstack"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T{dir}/link.ld");
}
