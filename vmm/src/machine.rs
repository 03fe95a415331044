//! Building and running a machine: config -> KVM objects -> vCPU threads ->
//! [`RunReport`]. While the vCPUs run, `supervise.rs` watches them.

use crate::config::MachineConfig;
use crate::cpu_state::{initial_regs, setup_sregs};
use crate::error::MachineError;
use crate::guest_mem::GuestRam;
use crate::hypervisor::{host_tsc, WaitChannel};
use crate::preempt::{PreemptState, Rng};
use crate::report::{GuestFailure, RunReport, RunStatus, VcpuReport};
use crate::signal::{install_kick_handler, kick_thread, ImmediateExit};
use crate::supervise::{preemptor, spawn_kick_timer, supervise};
use crate::vcpu::{Shared, VcpuThread};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use pvlock_abi::seed::{stream_seed, Stream};
use pvlock_abi::{
    BootBlock, GuestPhase, LatencyHistogram, LockEvent, VcpuBlock, VmmCounter, Window, BOOT_BLOCK_GPA, BOOT_MAGIC,
    GUEST_IMAGE_GPA, NR_WINDOWS,
};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lets another thread (Ctrl-C handler, harness) stop a running machine.
#[derive(Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A machine: built from a config, runs once.
pub struct Machine;

struct Vcpus {
    handles: Vec<Option<JoinHandle<VcpuFd>>>,
    exits: Vec<ImmediateExit>,
}

fn kvm_err(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
    move |source| MachineError::Kvm { ioctl, source }
}

/// How many host CPUs this process may run on (the most `host_cpus` may
/// be), for checking configs before a run.
pub fn host_cpus_available() -> usize {
    allowed_host_cpus().len()
}

/// The host CPUs this process may run on, in order.
fn allowed_host_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most sizeof(cpu_set_t) bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect();
    }
    // SAFETY: CPU_ISSET reads the set initialised above.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn pin_to(host_cpu: usize) {
    // SAFETY: as in allowed_host_cpus; setting one bit of a zeroed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(host_cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Machine {
    /// Checks that KVM can be opened (for early, clear errors and test skips).
    pub fn check_kvm() -> Result<(), MachineError> {
        open_kvm().map(|_| ())
    }

    /// Makes every thread allocate from glibc's main heap. By default
    /// glibc gives each new thread that allocates its own malloc arena,
    /// and on 64-bit each arena reserves 64 MiB of address space (it
    /// touches little of it): a 4-vCPU run had five such reservations,
    /// 320 MiB of `VmSize` that `ulimit -v` counts, growing with the
    /// vCPUs up to 8 arenas per host CPU. vCPU threads allocate rarely (a
    /// console line, a record), so one arena costs no measurable
    /// contention, and a run's address space becomes what
    /// [`Machine::check_address_space`] computes. Call it first in `main`,
    /// before any thread starts; a no-op where it does not apply.
    pub fn use_one_malloc_arena() {
        // SAFETY: mallopt only sets a glibc tunable; called before other
        // threads exist.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }

    /// Checks that the address-space limit (`ulimit -v`, RLIMIT_AS) leaves
    /// room for a run of `cfg`: its guest RAM, a thread stack per vCPU and
    /// helper, and a margin for the heap. Without this a small limit can
    /// make the standard library abort the process when a thread starts
    /// (it cannot allocate the thread's signal stack and panics inside the
    /// new thread), instead of giving an error. Call it before starting any
    /// thread (the harness does, before its signal handler thread).
    pub fn check_address_space(cfg: &MachineConfig) -> Result<(), MachineError> {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit into `lim`.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
            return Ok(());
        }
        let used = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmSize:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
            })
            .unwrap_or(0)
            * 1024;
        /// Rust's default thread stack plus guard page and signal stack.
        const PER_THREAD: u64 = (2 << 20) + (80 << 10);
        /// Heap, KVM's vCPU mappings, the report and the libraries' own
        /// allocations: measured needs are well under this.
        const MARGIN: u64 = 24 << 20;
        let threads = cfg.vcpus as u64 + 4; // vCPUs, preemptor, kick timer, signal handler, spare
        let need = cfg.ram_mib as u64 * (1 << 20) + threads * PER_THREAD + MARGIN;
        let limit: u64 = lim.rlim_cur;
        if used.saturating_add(need) > limit {
            return Err(MachineError::AddressSpace {
                limit_kib: limit >> 10,
                used_kib: used >> 10,
                need_kib: need >> 10,
                vcpus: cfg.vcpus,
                ram_mib: cfg.ram_mib,
            });
        }
        Ok(())
    }

    /// Runs `elf` under `cfg` until it finishes, fails, hangs, or `stop`.
    pub fn run(cfg: &MachineConfig, elf: &[u8], stop: &StopHandle) -> Result<RunReport, MachineError> {
        Self::run_with_module(cfg, elf, None, stop)
    }

    /// As [`Machine::run`], with a kernel-lock module image (a kernel
    /// tree's qspinlock built by the harness, `pvlock_abi::kmod`) loaded at
    /// its link address beside the guest.
    pub fn run_with_module(
        cfg: &MachineConfig,
        elf: &[u8],
        kmod: Option<&[u8]>,
        stop: &StopHandle,
    ) -> Result<RunReport, MachineError> {
        cfg.validate().map_err(|e| MachineError::Config(e.to_string()))?;
        Self::check_address_space(cfg)?;
        let allowed = allowed_host_cpus();
        if cfg.host_cpus as usize > allowed.len() {
            return Err(MachineError::Config(format!(
                "host_cpus = {} but this process may only run on {} host CPUs",
                cfg.host_cpus,
                allowed.len()
            )));
        }
        let t_create = Instant::now();
        let tsc_create = host_tsc();
        let kvm = open_kvm()?;
        if !kvm.check_extension(kvm_ioctls::Cap::Ioeventfd) {
            return Err(MachineError::MissingCapability("KVM_CAP_IOEVENTFD"));
        }
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let ram_bytes = cfg.ram_mib as u64 * 1024 * 1024;
        let ram = GuestRam::new(ram_bytes).map_err(MachineError::Memory)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram_bytes,
            userspace_addr: ram.host_base(),
        };
        // SAFETY: the region is the mmap owned by `ram`, which lives in
        // `Shared` until after every vCPU thread has been joined and the VM
        // fd is dropped at the end of this function.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        ram.write_page_tables().map_err(MachineError::Memory)?;
        let (entry, image_end) = load_elf(&ram, elf, cfg.vcpus)?;
        // A kernel-lock module has its own window above the guest image:
        // the trace rings must stay clear of it too.
        let image_end = match kmod {
            Some(image) => {
                load_module(&ram, image)?;
                if let Some(plan) = &cfg.sites {
                    crate::sites::apply(&ram, plan)
                        .map_err(|e| MachineError::LoadElf(format!("kernel-lock module sites: {e}")))?;
                }
                image_end.max(pvlock_abi::kmod::KMOD_LIMIT)
            }
            None => image_end,
        };
        let trace_rings = place_trace_rings(cfg, image_end)?;

        let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut fds = Vec::new();
        // Timed for the bench's cost-growth sweep: vCPU setup is the part
        // of boot that grows with the vCPU count (one KVM_CREATE_VCPU plus
        // the kvm_run mmap, CPUID and register ioctls each).
        let t_vcpus = Instant::now();
        for cpu in 0..cfg.vcpus {
            let fd = vm.create_vcpu(cpu as u64).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
            setup_sregs(&mut sregs);
            fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
            let regs = initial_regs(entry, pvlock_abi::stack_top(ram_bytes, cpu), cpu);
            fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
            fds.push(fd);
        }
        let vcpu_setup = t_vcpus.elapsed();
        let tsc_khz = fds[0].get_tsc_khz().map(u64::from).unwrap_or_else(|_| measure_tsc_khz());

        let runnable_per_cpu = if cfg.host_cpus == 0 { 1 } else { cfg.vcpus.div_ceil(cfg.host_cpus) };
        let may_poll = runnable_per_cpu <= 1 || cfg.hypervisor.halt_poll_overcommitted;
        let boot = BootBlock {
            magic: BOOT_MAGIC,
            abi_version: pvlock_abi::ABI_VERSION,
            nr_vcpus: cfg.vcpus,
            seed: cfg.seed,
            tsc_khz,
            duration_ms: cfg.duration_ms,
            workload: cfg.workload as u32,
            ram_mib: cfg.ram_mib,
            lock: cfg.lock.params(),
            torture: cfg.torture.params(),
            windows: cfg.preempt.window_params(),
            hypervisor: pvlock_abi::HypervisorParams {
                preempted_flags: 1,
                guest_poll_ns: cfg.hypervisor.effective_guest_poll_ns(cfg.vcpus, cfg.host_cpus),
                vmm_poll_flag: u32::from(cfg.hypervisor.effective_halt_poll_flag() && may_poll),
                _pad: 0,
            },
            iterations: cfg.iterations,
            trace_gpa: trace_rings.gpa,
            trace_len: trace_rings.len,
            ..Default::default()
        };
        ram.write_pod(BOOT_BLOCK_GPA, &boot).map_err(|e| MachineError::Memory(e.to_string()))?;

        let mut channels = Vec::new();
        let delayed_kicks = cfg.hypervisor.kick_delay_us > 0;
        // Also per vCPU: two eventfds and a KVM_IOEVENTFD registration.
        let t_kicks = Instant::now();
        for cpu in 0..cfg.vcpus {
            let ch = WaitChannel::new().map_err(MachineError::EventFd)?;
            if !delayed_kicks {
                register_kick_ioeventfd(&vm, &ch.kick, pvlock_abi::doorbell::kick_addr(cpu))?;
            }
            channels.push(ch);
        }
        let kick_setup = t_kicks.elapsed();
        let (timer_tx, timer_rx) = mpsc::channel::<(Instant, u32)>();
        install_kick_handler().map_err(MachineError::Signal)?;

        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            ram,
            stop: AtomicBool::new(false),
            run_start: Instant::now(),
            channels,
            exits: (0..cfg.vcpus).map(|_| AtomicU64::new(0)).collect(),
            console: Mutex::new(Default::default()),
            may_poll,
            poll_flag: cfg.hypervisor.effective_halt_poll_flag() && may_poll,
            preempt: PreemptState::with_sites(
                cfg.vcpus as usize,
                cfg.preempt.schedule.len(),
                cfg.sites.as_ref().map_or(0, |p| p.flags.len()),
            ),
            kick_timer: delayed_kicks.then(|| Mutex::new(timer_tx)),
            layout: cfg.layout(),
            rescued: Mutex::new(crate::report::BoundedLog::new(crate::report::limits::RESCUE_REPORTS)),
            rescued_by_class: Mutex::new(Default::default()),
            hash_occupancy: Mutex::new(Default::default()),
            trace_rings,
        });
        let kick_timer = delayed_kicks.then(|| spawn_kick_timer(shared.clone(), timer_rx));

        let (tx, rx) = mpsc::channel();
        let mut vcpus = Vcpus { handles: Vec::new(), exits: Vec::new() };
        for (cpu, mut fd) in fds.into_iter().enumerate() {
            let exit =
                ImmediateExit(&fd.get_kvm_run().immediate_exit as *const u8 as *const std::sync::atomic::AtomicU8);
            let host_cpu = (cfg.host_cpus > 0).then(|| allowed[cpu % cfg.host_cpus as usize]);
            let rng = Rng::new(stream_seed(cfg.seed, Stream::VmmVcpu(cpu as u32)));
            let t = VcpuThread {
                cpu: cpu as u32,
                fd,
                shared: shared.clone(),
                tx: tx.clone(),
                rng,
                stamp_resume: false,
                exit_tsc: 0,
            };
            let spawned = std::thread::Builder::new().name(format!("vcpu{cpu}")).spawn(move || {
                if let Some(h) = host_cpu {
                    pin_to(h);
                }
                t.run()
            });
            match spawned {
                Ok(h) => {
                    vcpus.handles.push(Some(h));
                    vcpus.exits.push(exit);
                }
                Err(source) => {
                    let _ = stop_all(&shared, &mut vcpus);
                    return Err(MachineError::SpawnThread { cpu: cpu as u32, source });
                }
            }
        }
        drop(tx);

        let targets: Vec<(ImmediateExit, libc::pthread_t)> = vcpus
            .handles
            .iter()
            .zip(&vcpus.exits)
            .map(|(h, e)| (*e, h.as_ref().expect("spawned").as_pthread_t()))
            .collect();
        let preemptor = (cfg.preempt.random().is_some() || cfg.preempt.holder().is_some()).then(|| {
            let sh = shared.clone();
            std::thread::Builder::new().name("preemptor".into()).spawn(move || preemptor(&sh, &targets))
        });

        let (failure, done, hang) = supervise(cfg, &shared, &rx, stop);
        shared.stop.store(true, Ordering::Release);
        // The preemptor signals vCPU threads: it must be gone before they
        // are joined (their pthread_t must stay valid while it runs).
        if let Some(Ok(p)) = preemptor {
            let _ = p.join();
        }
        let regs = stop_all(&shared, &mut vcpus);
        if let Some(t) = kick_timer {
            let _ = t.join();
        }
        let mut report = collect(&shared, failure, done, tsc_khz, tsc_create);
        report.vcpu_setup_us = Some(vcpu_setup.as_secs_f64() * 1e6);
        report.kick_setup_us = Some(kick_setup.as_secs_f64() * 1e6);
        report.hang = hang;
        report.vcpu_dumps =
            (0..cfg.vcpus).map(|c| crate::vcpu_dump::capture(&shared.ram, trace_rings, c, regs[c as usize])).collect();
        if report.status != RunStatus::Ok {
            symbolize_dumps(&mut report.vcpu_dumps, elf);
        }
        report.traces = (0..cfg.vcpus).map(|c| crate::trace::read(&shared.ram, trace_rings, c, u64::MAX)).collect();
        report.wall_ms = t_create.elapsed().as_secs_f64() * 1e3;
        drop(vm);
        Ok(report)
    }
}

vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, kvm_bindings::KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);

/// Registers `fd` as the ioeventfd of the kick doorbell at `addr` for
/// 8-byte stores only (`len = 8`, no datamatch). kvm-ioctls'
/// `register_ioevent` with `NoDatamatch` registers `len = 0`, which matches
/// a store of any width: a 4-byte kick store would be taken as a kick,
/// although the ABI says a store of the wrong width is a violation. With
/// `len = 8` KVM passes other widths to userspace as an MMIO exit, where
/// `decode_mmio_write` reports them (KVM's ioeventfd_in_range: a non-zero
/// length must equal the access length).
fn register_kick_ioeventfd(
    vm: &kvm_ioctls::VmFd,
    fd: &vmm_sys_util::eventfd::EventFd,
    addr: u64,
) -> Result<(), MachineError> {
    use std::os::fd::AsRawFd;
    let ev =
        kvm_bindings::kvm_ioeventfd { datamatch: 0, addr, len: 8, fd: fd.as_raw_fd(), flags: 0, ..Default::default() };
    // SAFETY: KVM_IOEVENTFD on a valid VM fd reads exactly one
    // kvm_ioeventfd, which `ev` is; no memory is written. KVM takes its own
    // reference to the eventfd, so the order of closing the two fds does
    // not matter.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_IOEVENTFD(), &ev) };
    if rc < 0 {
        return Err(MachineError::Kvm {
            ioctl: "KVM_IOEVENTFD",
            source: kvm_ioctls::Error::new(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL)),
        });
    }
    Ok(())
}

/// Opens the KVM device: `/dev/kvm`, or `PVLOCK_KVM_DEVICE` if set (for
/// testing the error path), and checks that it is one: a character device
/// that answers KVM_GET_API_VERSION with 12. Anything else (a regular
/// file, a FIFO, which could block, `/dev/null`) is named, with what it is.
fn open_kvm() -> Result<Kvm, MachineError> {
    use std::os::unix::fs::FileTypeExt;
    let path = std::env::var("PVLOCK_KVM_DEVICE").unwrap_or_else(|_| "/dev/kvm".into());
    let not_kvm = |what: String| MachineError::NotKvm { path: path.clone(), what };
    if let Ok(m) = std::fs::metadata(&path) {
        let t = m.file_type();
        if !t.is_char_device() {
            let what = if t.is_dir() {
                "a directory"
            } else if t.is_fifo() {
                "a FIFO"
            } else if t.is_file() {
                "a regular file"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a character device"
            };
            return Err(not_kvm(what.to_string()));
        }
    }
    let c = std::ffi::CString::new(path.clone()).map_err(|_| not_kvm("a path with a NUL byte".into()))?;
    let kvm = Kvm::new_with_path(&c).map_err(|source| MachineError::OpenKvm { path: path.clone(), source })?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v if v < 0 => Err(not_kvm(format!(
            "a character device that does not answer KVM_GET_API_VERSION ({})",
            std::io::Error::last_os_error()
        ))),
        v => Err(MachineError::KvmApiVersion { path, version: v }),
    }
}

fn measure_tsc_khz() -> u64 {
    let (t0, c0) = (Instant::now(), host_tsc());
    std::thread::sleep(Duration::from_millis(50));
    let (t1, c1) = (Instant::now(), host_tsc());
    ((c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e3) as u64
}

/// Symbolizes `dumps` from `elf`'s DWARF (a failure to parse it leaves
/// the raw addresses and is logged: the record is still written).
pub fn symbolize_dumps(dumps: &mut [crate::vcpu_dump::VcpuDump], elf: &[u8]) {
    match crate::symbolize::Symbolizer::cached(elf) {
        Ok(sym) => crate::vcpu_dump::symbolize(dumps, &sym),
        Err(e) => tracing::warn!("cannot symbolize the vCPU dumps: {e}"),
    }
}

/// Puts the trace rings right below the stacks; they must not overlap the
/// image (whose .bss holds the lock arena).
fn place_trace_rings(cfg: &MachineConfig, image_end: u64) -> Result<crate::trace::RingLayout, MachineError> {
    if cfg.trace_len == 0 {
        return Ok(crate::trace::RingLayout { gpa: 0, len: 0 });
    }
    let ram = cfg.ram_mib as u64 * 1024 * 1024;
    let stacks = cfg.vcpus as u64 * pvlock_abi::STACK_SIZE;
    let bytes = crate::config::trace_bytes(cfg.vcpus, cfg.trace_len);
    let gpa = ram.checked_sub(stacks + bytes).map(|g| g & !0xfff).filter(|&g| g >= image_end).ok_or_else(|| {
        MachineError::Config(format!(
            "trace rings of {} entries x {} vCPUs ({} KiB) do not fit between the image (ends at {image_end:#x}) and              the stacks in {} MiB of RAM: raise ram_mib or lower the trace length",
            cfg.trace_len,
            cfg.vcpus,
            bytes >> 10,
            cfg.ram_mib
        ))
    })?;
    Ok(crate::trace::RingLayout { gpa, len: cfg.trace_len })
}

fn load_elf(ram: &GuestRam, elf: &[u8], vcpus: u32) -> Result<(u64, u64), MachineError> {
    use linux_loader::loader::{elf::Elf, KernelLoader};
    // The headers first (machine, type, every segment inside RAM below the
    // stacks): the loader itself trusts them.
    let image_limit = ram.size().saturating_sub(vcpus as u64 * pvlock_abi::STACK_SIZE);
    crate::elf::check(elf, ram.size(), image_limit).map_err(MachineError::LoadElf)?;
    let mut image = std::io::Cursor::new(elf);
    let res = Elf::load(ram.mem(), None, &mut image, None).map_err(|e| MachineError::LoadElf(e.to_string()))?;
    let entry = res.kernel_load.0;
    if entry < GUEST_IMAGE_GPA || res.kernel_end > ram.size() {
        return Err(MachineError::LoadElf(format!(
            "image {:#x}..{:#x} does not fit between {GUEST_IMAGE_GPA:#x} and the end of RAM {:#x}",
            entry,
            res.kernel_end,
            ram.size()
        )));
    }
    Ok((entry, res.kernel_end))
}

/// Loads the kernel-lock module; it must lie inside its window, which the
/// guest image and the stacks never use.
fn load_module(ram: &GuestRam, image: &[u8]) -> Result<(), MachineError> {
    use linux_loader::loader::{elf::Elf, KernelLoader};
    use pvlock_abi::kmod::{KMOD_GPA, KMOD_LIMIT};
    crate::elf::check(image, ram.size(), KMOD_LIMIT.min(ram.size()))
        .map_err(|e| MachineError::LoadElf(format!("kernel-lock module: {e}")))?;
    let mut cursor = std::io::Cursor::new(image);
    let res = Elf::load(ram.mem(), None, &mut cursor, None)
        .map_err(|e| MachineError::LoadElf(format!("kernel-lock module: {e}")))?;
    if res.kernel_load.0 < KMOD_GPA || res.kernel_end > KMOD_LIMIT || res.kernel_end > ram.size() {
        return Err(MachineError::LoadElf(format!(
            "kernel-lock module {:#x}..{:#x} is outside its window {KMOD_GPA:#x}..{KMOD_LIMIT:#x}",
            res.kernel_load.0, res.kernel_end
        )));
    }
    Ok(())
}

/// Stops every vCPU thread and joins it (bounded: a thread that does not
/// come back within 5 s is left detached, never waited for forever).
/// Returns each vCPU's registers as its last KVM_RUN left them.
fn stop_all(sh: &Shared, vcpus: &mut Vcpus) -> Vec<Option<crate::regs::GeneralRegs>> {
    let mut regs = vec![None; vcpus.handles.len()];
    sh.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Kick every vCPU out first, so that all of them stop at about the same
    // point (the dumps and traces are then one moment, not a sequence).
    for (i, h) in vcpus.handles.iter().enumerate() {
        if let Some(handle) = h {
            sh.channels[i].poke();
            kick_thread(vcpus.exits[i], handle.as_pthread_t());
        }
    }
    for (i, h) in vcpus.handles.iter_mut().enumerate() {
        let Some(handle) = h.take() else { continue };
        sh.channels[i].poke();
        while !handle.is_finished() && Instant::now() < deadline {
            kick_thread(vcpus.exits[i], handle.as_pthread_t());
            std::thread::sleep(Duration::from_millis(1));
        }
        if handle.is_finished() {
            if let Ok(fd) = handle.join() {
                regs[i] = fd.get_regs().ok().map(|r| crate::regs::GeneralRegs::from(&r));
            }
        } else {
            tracing::error!("vCPU {i} did not stop within 5 s; leaving it detached");
            std::mem::forget(handle);
        }
    }
    regs
}

/// A histogram's non-empty buckets: (lower bound, count).
fn nonempty_buckets(h: &LatencyHistogram) -> Vec<(u64, u64)> {
    (0..LatencyHistogram::BUCKETS)
        .filter(|&i| h.buckets[i] > 0)
        .map(|i| (LatencyHistogram::bucket_low(i), h.buckets[i]))
        .collect()
}

fn collect(
    sh: &Shared,
    failure: Option<GuestFailure>,
    done: Vec<Option<u64>>,
    tsc_khz: u64,
    tsc_create: u64,
) -> RunReport {
    let boot: BootBlock = sh.ram.read_pod(BOOT_BLOCK_GPA).unwrap_or_default();
    let mut per_vcpu = Vec::new();
    let mut first_entry = u64::MAX;
    for cpu in 0..sh.cfg.vcpus {
        let b: VcpuBlock = sh.ram.read_pod(pvlock_abi::vcpu_block_gpa(cpu)).unwrap_or_default();
        if b.alive != 0 {
            first_entry = first_entry.min(b.timing[pvlock_abi::vcpu::ENTRY_TSC_SLOT]);
        }
        let ch = &sh.channels[cpu as usize];
        per_vcpu.push(VcpuReport {
            cpu,
            done: done[cpu as usize].is_some(),
            done_status: done[cpu as usize],
            acquisitions: b.acquisitions,
            max_wait_ns: b.max_wait_ns,
            lock_events: LockEvent::ALL.iter().map(|e| (e.name().to_string(), b.events[e.index()])).collect(),
            vmm: VmmCounter::ALL.iter().map(|c| (c.name().to_string(), ch.counters.get(*c))).collect(),
            window_hits: (0..NR_WINDOWS)
                .filter(|&w| b.window_hits[w] > 0)
                .map(|w| (Window::ALL[w].name().to_string(), b.window_hits[w]))
                .collect(),
            exits: sh.exits[cpu as usize].load(Ordering::Relaxed),
            final_phase: GuestPhase::from_u32(b.phase),
            timing: b.timing,
            latency_buckets: nonempty_buckets(&b.latency),
            leg_buckets: b.legs.hist.iter().map(nonempty_buckets).collect(),
            leg_sum_ns: b.legs.sum_ns.to_vec(),
            tsc_offset: (b.legs.offset_samples > 0).then_some(crate::report::TscOffset {
                lo: b.legs.offset_lo,
                hi: b.legs.offset_hi,
                samples: b.legs.offset_samples,
            }),
        });
    }
    let hash_in_use = crate::watchdog::hash_entries_in_use(sh).into_iter().map(|(_, e)| (e.lock, e.node)).collect();
    let (mut lock_counts, mut lock_owners) = (Vec::new(), Vec::new());
    let tl = sh.layout.torture_lock;
    if boot.locks_gpa != 0 && boot.nr_locks <= 4096 && boot.lock_stride >= tl.min_stride {
        for i in 0..boot.nr_locks {
            let base = boot.locks_gpa + i * boot.lock_stride;
            lock_counts.push(sh.ram.read_u64(base + tl.count).unwrap_or(0));
            lock_owners.push(sh.ram.read_u32(base + tl.owner).unwrap_or(0));
        }
    }
    let status = failure.as_ref().map(GuestFailure::status).unwrap_or(RunStatus::Ok);
    let console = std::mem::take(&mut *sh.console.lock().unwrap_or_else(|p| p.into_inner()));
    let rescued = std::mem::replace(
        &mut *sh.rescued.lock().unwrap_or_else(|p| p.into_inner()),
        crate::report::BoundedLog::new(0),
    );
    let holds_log = std::mem::replace(
        &mut *sh.preempt.holds.lock().unwrap_or_else(|p| p.into_inner()),
        crate::report::BoundedLog::new(0),
    );
    let (holds, holds_dropped) = (holds_log.items, holds_log.dropped);
    let boot_us = (first_entry != u64::MAX && first_entry > tsc_create && tsc_khz > 0)
        .then(|| (first_entry - tsc_create) as f64 * 1e3 / tsc_khz as f64);
    RunReport {
        holds,
        rescued: rescued.items,
        rescued_by_class: std::mem::take(&mut *sh.rescued_by_class.lock().unwrap_or_else(|p| p.into_inner())),
        dropped: crate::report::Dropped {
            console_lines: console.dropped_lines,
            console_bytes: console.dropped_bytes,
            holds: holds_dropped,
            rescue_reports: rescued.dropped,
        },
        hang: None,
        vcpu_dumps: Vec::new(),
        traces: Vec::new(),
        stalls_skipped: sh.preempt.skipped.load(Ordering::Relaxed),
        site_stalls: sh.preempt.site_stalls.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        site_arrivals: sh.preempt.site_arrivals.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        last_sites: if sh.cfg.sites.is_some() { crate::sites::last_sites(&sh.ram, sh.cfg.vcpus) } else { Vec::new() },
        hash_occupancy: sh
            .hash_occupancy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect(),
        status,
        failure,
        wall_ms: 0.0,
        boot_us,
        vcpu_setup_us: None,
        kick_setup_us: None,
        tsc_khz,
        per_vcpu,
        console: console.into_lines(),
        boot,
        hash_in_use,
        lock_counts,
        lock_owners,
    }
}
