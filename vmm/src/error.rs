//! Error types, one per operation (Firecracker style). Messages say what
//! failed and why, naming the ioctl and errno where KVM is involved.

use thiserror::Error;

/// Setting up the machine failed before any guest code ran.
#[derive(Debug, Error)]
pub enum MachineError {
    #[error("cannot open {path}: {source} (pvlock needs Linux with KVM and read/write access to /dev/kvm)")]
    OpenKvm {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{path}: KVM API version {version} is not supported (need 12)")]
    KvmApiVersion { path: String, version: i32 },
    #[error(
        "{path} is not a KVM device: it is {what} (set PVLOCK_KVM_DEVICE to the KVM device, or unset it for /dev/kvm)"
    )]
    NotKvm { path: String, what: String },
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("ioctl {ioctl} failed: {source}")]
    Kvm {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("cannot load the guest ELF: {0}")]
    LoadElf(String),
    #[error("invalid machine config: {0}")]
    Config(String),
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot spawn vCPU thread {cpu}: {source}")]
    SpawnThread {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the address-space limit (ulimit -v) is {limit_kib} KiB and {used_kib} KiB are in use; a run of {vcpus} \
         vCPUs with {ram_mib} MiB of guest RAM needs about {need_kib} KiB more: raise the limit or lower ram_mib"
    )]
    AddressSpace { limit_kib: u64, used_kib: u64, need_kib: u64, vcpus: u32, ram_mib: u32 },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(String),
}

/// A vCPU's run failed in a way that is not the guest's doing.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("KVM_RUN on vCPU {cpu} failed: {source}")]
    KvmRun {
        cpu: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: {what}")]
    Host { cpu: u32, what: String },
}
