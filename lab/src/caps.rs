//! Dropping a capability from the calling thread, for tests of what an
//! unprivileged caller sees (pins charged to RLIMIT_MEMLOCK without
//! `CAP_IPC_LOCK`, `IOMMU_IOAS_NOIOMMU_GET_PA` refused without `CAP_SYS_RAWIO`).

use std::io;

/// `CAP_IPC_LOCK`.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_RAWIO`.
pub const CAP_SYS_RAWIO: u32 = 17;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears capability `cap` (below 32) from the calling thread's effective set.
/// Capabilities are per thread: run the test's body in a thread of its own.
pub fn drop_effective(cap: u32) -> io::Result<()> {
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget reads the header and writes two `Data` entries (version 3)
    // into `d`.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    d[0].effective &= !(1 << cap);
    // SAFETY: capset reads the header and two `Data` entries; it changes only the
    // calling thread's credentials.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
