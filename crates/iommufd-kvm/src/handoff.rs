//! Handing `/dev/iommu` and device fds from a privileged helper to an unprivileged
//! VMM over a Unix socket (`SCM_RIGHTS`), with vmm-sys-util's socket helpers.
//!
//! A container or an unprivileged VMM cannot open `/dev/iommu` or
//! `/dev/vfio/devices/*`; a helper that can opens them and sends the open files.
//! The VMM then binds, maps and DMAs with what it received, and reaches nothing
//! else: no other device's cdev, no other process's iommufd objects (those live in
//! files it has no fd for).
//!
//! One message carries the iommufd and the devices: the payload names them
//! (`iommufd`, then one device name per line), the control data holds the fds in
//! the same order.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use iommufd::Iommufd;
use iommufd_vfio::VfioDevice;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::{Error, Result};

/// The most devices one handoff carries.
pub const MAX_DEVICES: usize = 32;
const MAGIC: &str = "iommufd";

/// What a VMM received from its helper.
#[derive(Debug)]
pub struct Handoff {
    /// The iommufd, checked to be `/dev/iommu`.
    pub iommufd: Iommufd,
    /// The devices, opened and not bound, in the order they were sent.
    pub devices: Vec<VfioDevice>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Handoff {
        reason: reason.into(),
    }
}

/// Sends `iommufd` and `devices` (at most [`MAX_DEVICES`], not bound) over `sock`.
/// The sender keeps its own fds; close them once sent.
///
/// ```no_run
/// use std::os::unix::net::UnixStream;
/// use iommufd::Iommufd;
/// use iommufd_vfio::VfioDevice;
/// let (helper, vmm) = UnixStream::pair()?;
/// // In the privileged helper:
/// let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?;
/// iommufd_kvm::handoff::send(&helper, &Iommufd::open()?, &[&dev])?;
/// // In the VMM, after dropping privileges:
/// let got = iommufd_kvm::handoff::recv(&vmm)?;
/// let bound = got.devices.into_iter().next().expect("one").bind(&got.iommufd, 0x28)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn send(sock: &UnixStream, iommufd: &Iommufd, devices: &[&VfioDevice]) -> Result<()> {
    if devices.len() > MAX_DEVICES {
        return Err(bad(format!(
            "{} devices, at most {MAX_DEVICES}",
            devices.len()
        )));
    }
    let mut text = String::from(MAGIC);
    let mut fds: Vec<RawFd> = vec![iommufd.as_fd().as_raw_fd()];
    for d in devices {
        let name = d.name().replace('\n', " ");
        text.push('\n');
        text.push_str(&name);
        fds.push(d.as_fd().as_raw_fd());
    }
    let sent = sock
        .send_with_fds(&[text.as_bytes()], &fds)
        .map_err(|e| Error::Io {
            op: "sendmsg",
            errno: e.errno(),
        })?;
    if sent != text.len() {
        return Err(bad(format!("sent {sent} of {} bytes", text.len())));
    }
    Ok(())
}

/// Receives what [`send`] sent: the iommufd (checked to be `/dev/iommu`) and the
/// devices. Every received fd is owned at once, so a malformed message leaks
/// nothing.
pub fn recv(sock: &UnixStream) -> Result<Handoff> {
    let mut buf = vec![0u8; 4096];
    let mut raw = [-1 as RawFd; MAX_DEVICES + 1];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the one iovec points to `buf`, alive and not otherwise borrowed
    // during the call; the kernel writes at most `buf.len()` bytes there.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }.map_err(|e| Error::Io {
        op: "recvmsg",
        errno: e.errno(),
    })?;
    let mut owned: Vec<OwnedFd> = raw[..nfds.min(raw.len())]
        .iter()
        .filter(|fd| **fd >= 0)
        // SAFETY: the kernel installed these fds in this process for this message;
        // nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    let text = std::str::from_utf8(&buf[..n]).map_err(|_| bad("the payload is not UTF-8"))?;
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err(bad("not an iommufd handoff"));
    }
    let names: Vec<&str> = lines.collect();
    if owned.len() != names.len() + 1 {
        return Err(bad(format!(
            "{} fds for the iommufd and {} devices",
            owned.len(),
            names.len()
        )));
    }
    let devices_fds = owned.split_off(1);
    let iommufd_fd = owned.pop().ok_or_else(|| bad("no iommufd fd"))?;
    let iommufd = Iommufd::from_owned_fd(iommufd_fd)?;
    let devices = names
        .iter()
        .zip(devices_fds)
        .map(|(name, fd)| VfioDevice::from_owned_fd(fd, *name))
        .collect();
    Ok(Handoff { iommufd, devices })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn null() -> Iommufd {
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
        unsafe { Iommufd::from_owned_fd_unchecked(f.into()) }
    }

    #[test]
    fn a_handoff_of_something_else_is_refused_and_leaks_nothing() {
        let (a, b) = UnixStream::pair().expect("pair");
        let dev = VfioDevice::from_owned_fd(
            std::fs::File::open("/dev/null").expect("null").into(),
            "dev\nwith a newline",
        );
        send(&a, &null(), &[&dev]).expect("send");
        // /dev/null is not /dev/iommu: refused, and the received fds are closed.
        match recv(&b) {
            Err(Error::Iommufd(iommufd::Error::NotIommufd { .. })) => {}
            other => panic!("{other:?}"),
        }
        // A message that is not a handoff.
        vmm_sys_util::sock_ctrl_msg::ScmSocket::send_with_fds(&a, &[&b"hello"[..]], &[])
            .expect("send");
        assert!(matches!(recv(&b), Err(Error::Handoff { .. })));
        // Names without their fds.
        vmm_sys_util::sock_ctrl_msg::ScmSocket::send_with_fds(&a, &[&b"iommufd\nx"[..]], &[])
            .expect("send");
        match recv(&b) {
            Err(Error::Handoff { reason }) => assert!(reason.contains("0 fds"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let many: Vec<&VfioDevice> = (0..=MAX_DEVICES).map(|_| &dev).collect();
        assert!(matches!(
            send(&a, &null(), &many),
            Err(Error::Handoff { .. })
        ));
    }
}
