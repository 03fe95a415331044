//! Decoding guest requests from MMIO exits: a pure function of the exit,
//! unit-tested with made-up exits (no guest needed).

use pvlock_abi::doorbell;

/// What a doorbell store asks of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestRequest {
    Console {
        gpa: u64,
        len: u64,
    },
    Done {
        status: u64,
    },
    Panic {
        kind: u64,
    },
    Wait {
        gpa: u64,
        expected: u8,
    },
    Stall {
        window: u64,
    },
    /// A kernel build's site chose to exit (its index in the site table).
    Site {
        index: u64,
    },
    Ping {
        value: u64,
    },
    /// A store to a kick address that has no ioeventfd (a vCPU index that
    /// does not exist): the guest is confused.
    KickNoSuchCpu {
        cpu: u64,
    },
}

/// A guest access that is not a valid doorbell use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiViolation {
    /// An 8-byte store was expected.
    BadWidth { addr: u64, len: usize },
    /// A read from the doorbell window (doorbells are write-only).
    Read { addr: u64, len: usize },
    /// A store outside every doorbell.
    UnknownAddress { addr: u64 },
}

impl std::fmt::Display for AbiViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadWidth { addr, len } => {
                write!(f, "{len}-byte store to doorbell {addr:#x} (doorbells take 8 bytes)")
            }
            Self::Read { addr, len } => {
                write!(f, "{len}-byte read of MMIO address {addr:#x} (doorbells are write-only)")
            }
            Self::UnknownAddress { addr } => {
                write!(f, "store to MMIO address {addr:#x}, which is no doorbell")
            }
        }
    }
}

/// What one `KVM_RUN` came back with, as the vCPU loop acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitClass {
    /// A doorbell: serve it.
    Request(GuestRequest),
    /// The guest misused the MMIO window (bad width, unknown doorbell, a read).
    Abi(String),
    /// `KVM_EXIT_SHUTDOWN`: a triple fault (the guest has no IDT).
    Shutdown,
    /// The machine kicked the thread out (EINTR/EAGAIN, `KVM_EXIT_INTR`):
    /// stop or stall, not a guest exit.
    Interrupted,
    /// `KVM_EXIT_INTERNAL_ERROR`: the details are in `kvm_run`.
    InternalError,
    /// An exit this guest never causes.
    Unexpected(String),
    /// `KVM_RUN` itself failed.
    HostError(String),
}

impl ExitClass {
    /// An exit caused by the guest (counted in the vCPU's exits), not a
    /// kick from the machine or a host failure.
    pub fn is_guest_exit(&self) -> bool {
        !matches!(self, Self::Interrupted | Self::HostError(_))
    }
}

/// Classifies the result of `KVM_RUN`. An MMIO read is answered with zeros
/// (the guest does not go on after it: the run fails as an ABI violation).
pub fn classify(run: Result<kvm_ioctls::VcpuExit<'_>, kvm_ioctls::Error>) -> ExitClass {
    use kvm_ioctls::VcpuExit;
    match run {
        Ok(VcpuExit::MmioWrite(addr, data)) => match decode_mmio_write(addr, data) {
            Ok(req) => ExitClass::Request(req),
            Err(v) => ExitClass::Abi(v.to_string()),
        },
        Ok(VcpuExit::MmioRead(addr, data)) => {
            data.fill(0);
            ExitClass::Abi(AbiViolation::Read { addr, len: data.len() }.to_string())
        }
        Ok(VcpuExit::Shutdown) => ExitClass::Shutdown,
        Ok(VcpuExit::Intr) => ExitClass::Interrupted,
        Ok(VcpuExit::InternalError) => ExitClass::InternalError,
        Ok(other) => ExitClass::Unexpected(format!("{other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ExitClass::Interrupted,
        Err(e) => ExitClass::HostError(format!("KVM_RUN: {e}")),
    }
}

/// Decodes an MMIO write exit.
pub fn decode_mmio_write(addr: u64, data: &[u8]) -> Result<GuestRequest, AbiViolation> {
    let value = match <[u8; 8]>::try_from(data) {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => return Err(AbiViolation::BadWidth { addr, len: data.len() }),
    };
    Ok(match addr {
        doorbell::CONSOLE => {
            let (gpa, len) = doorbell::console_decode(value);
            GuestRequest::Console { gpa, len }
        }
        doorbell::DONE => GuestRequest::Done { status: value },
        doorbell::PANIC => GuestRequest::Panic { kind: value },
        doorbell::WAIT => {
            let (gpa, expected) = doorbell::wait_decode(value);
            GuestRequest::Wait { gpa, expected }
        }
        doorbell::STALL => GuestRequest::Stall { window: value },
        doorbell::PING => GuestRequest::Ping { value },
        doorbell::SITE => GuestRequest::Site { index: value },
        a if (doorbell::KICK_BASE..pvlock_abi::MMIO_BASE + pvlock_abi::MMIO_SIZE).contains(&a)
            && (a - doorbell::KICK_BASE).is_multiple_of(8) =>
        {
            GuestRequest::KickNoSuchCpu { cpu: (a - doorbell::KICK_BASE) / 8 }
        }
        _ => return Err(AbiViolation::UnknownAddress { addr }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_doorbell() {
        let v = |x: u64| x.to_le_bytes();
        assert_eq!(
            decode_mmio_write(doorbell::WAIT, &v(doorbell::wait_value(0x40_1000, 3))),
            Ok(GuestRequest::Wait { gpa: 0x40_1000, expected: 3 })
        );
        assert_eq!(
            decode_mmio_write(doorbell::CONSOLE, &v(doorbell::console_value(0x1234, 5))),
            Ok(GuestRequest::Console { gpa: 0x1234, len: 5 })
        );
        assert_eq!(decode_mmio_write(doorbell::DONE, &v(0)), Ok(GuestRequest::Done { status: 0 }));
        assert_eq!(decode_mmio_write(doorbell::STALL, &v(4)), Ok(GuestRequest::Stall { window: 4 }));
        assert_eq!(decode_mmio_write(doorbell::SITE, &v(17)), Ok(GuestRequest::Site { index: 17 }));
        assert_eq!(decode_mmio_write(doorbell::kick_addr(63), &v(1)), Ok(GuestRequest::KickNoSuchCpu { cpu: 63 }));
    }

    #[test]
    fn classifies_made_up_exits() {
        use kvm_ioctls::VcpuExit;
        let done = 0u64.to_le_bytes();
        assert_eq!(
            classify(Ok(VcpuExit::MmioWrite(doorbell::DONE, &done))),
            ExitClass::Request(GuestRequest::Done { status: 0 })
        );
        let short = [0u8; 2];
        assert!(
            matches!(classify(Ok(VcpuExit::MmioWrite(doorbell::DONE, &short))), ExitClass::Abi(d) if d.contains("2-byte"))
        );
        let mut read = [0xffu8; 4];
        assert!(
            matches!(classify(Ok(VcpuExit::MmioRead(doorbell::PING, &mut read))), ExitClass::Abi(d) if d.contains("read"))
        );
        assert_eq!(read, [0; 4], "an MMIO read is answered with zeros");
        assert_eq!(classify(Ok(VcpuExit::Shutdown)), ExitClass::Shutdown);
        assert!(ExitClass::Shutdown.is_guest_exit());
        assert_eq!(classify(Ok(VcpuExit::Intr)), ExitClass::Interrupted);
        assert!(!ExitClass::Interrupted.is_guest_exit());
        assert!(matches!(classify(Ok(VcpuExit::Hlt)), ExitClass::Unexpected(n) if n == "Hlt"));
        assert_eq!(classify(Ok(VcpuExit::InternalError)), ExitClass::InternalError);
        let eintr = kvm_ioctls::Error::new(libc::EINTR);
        assert_eq!(classify(Err(eintr)), ExitClass::Interrupted);
        let efault = kvm_ioctls::Error::new(libc::EFAULT);
        assert!(matches!(classify(Err(efault)), ExitClass::HostError(e) if e.starts_with("KVM_RUN")));
    }

    #[test]
    fn rejects_bad_width_and_unknown_addresses() {
        assert_eq!(
            decode_mmio_write(doorbell::DONE, &[0; 4]),
            Err(AbiViolation::BadWidth { addr: doorbell::DONE, len: 4 })
        );
        assert_eq!(
            decode_mmio_write(pvlock_abi::MMIO_BASE + 0x800, &[0; 8]),
            Err(AbiViolation::UnknownAddress { addr: pvlock_abi::MMIO_BASE + 0x800 })
        );
        assert!(decode_mmio_write(doorbell::KICK_BASE + 3, &[0; 8]).is_err());
    }
}
