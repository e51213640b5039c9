//! What the running kernel supports.

use std::fmt;

use iommufd_uapi as uapi;
use libc::c_ulong;

use crate::Iommufd;
use crate::sys::{Errno, ProbeArg, arg};

macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident = $ioctl:ident, $since:literal;)*) => {
        /// An iommufd command, for [`Features::supports`].
        ///
        /// ```
        /// use iommufd::Command;
        /// let cmd = Command::IoasMapFile;
        /// assert_eq!(cmd.to_string(), "IOMMU_IOAS_MAP_FILE");
        /// assert_eq!(cmd.since(), "6.13");
        /// ```
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Command {
            $($(#[$doc])* $variant,)*
        }

        impl Command {
            /// Every command this crate knows, in ioctl number order.
            ///
            /// ```
            /// use iommufd::Command;
            /// assert_eq!(Command::ALL[0], Command::Destroy);
            /// assert!(Command::ALL.windows(2).all(|w| w[0].request() < w[1].request()));
            /// ```
            pub const ALL: &[Command] = &[$(Command::$variant,)*];

            /// The ioctl request number.
            ///
            /// ```
            /// use iommufd::{Command, uapi};
            /// assert_eq!(Command::IoasMap.request(), uapi::IOMMU_IOAS_MAP);
            /// assert_eq!(Command::IoasMap.request(), 0x3b85); // _IO(';', 0x85)
            /// ```
            pub const fn request(self) -> c_ulong {
                match self {
                    $(Command::$variant => uapi::$ioctl,)*
                }
            }

            /// The name of the ioctl, e.g. `"IOMMU_IOAS_MAP"`.
            ///
            /// ```
            /// use iommufd::Command;
            /// assert_eq!(Command::HwptAlloc.name(), "IOMMU_HWPT_ALLOC");
            /// ```
            pub const fn name(self) -> &'static str {
                match self {
                    $(Command::$variant => stringify!($ioctl),)*
                }
            }

            /// The first Linux release with the command.
            ///
            /// ```
            /// use iommufd::Command;
            /// assert_eq!(Command::HwptGetDirtyBitmap.since(), "6.7");
            /// ```
            pub const fn since(self) -> &'static str {
                match self {
                    $(Command::$variant => $since,)*
                }
            }
        }
    };
}

commands! {
    /// `IOMMU_DESTROY`.
    Destroy = IOMMU_DESTROY, "6.2";
    /// `IOMMU_IOAS_ALLOC`.
    IoasAlloc = IOMMU_IOAS_ALLOC, "6.2";
    /// `IOMMU_IOAS_ALLOW_IOVAS`.
    IoasAllowIovas = IOMMU_IOAS_ALLOW_IOVAS, "6.2";
    /// `IOMMU_IOAS_COPY`.
    IoasCopy = IOMMU_IOAS_COPY, "6.2";
    /// `IOMMU_IOAS_IOVA_RANGES`.
    IoasIovaRanges = IOMMU_IOAS_IOVA_RANGES, "6.2";
    /// `IOMMU_IOAS_MAP`.
    IoasMap = IOMMU_IOAS_MAP, "6.2";
    /// `IOMMU_IOAS_UNMAP`.
    IoasUnmap = IOMMU_IOAS_UNMAP, "6.2";
    /// `IOMMU_OPTION`.
    Option = IOMMU_OPTION, "6.2";
    /// `IOMMU_VFIO_IOAS`.
    VfioIoas = IOMMU_VFIO_IOAS, "6.2";
    /// `IOMMU_HWPT_ALLOC`.
    HwptAlloc = IOMMU_HWPT_ALLOC, "6.6";
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo = IOMMU_GET_HW_INFO, "6.6";
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    HwptSetDirtyTracking = IOMMU_HWPT_SET_DIRTY_TRACKING, "6.7";
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    HwptGetDirtyBitmap = IOMMU_HWPT_GET_DIRTY_BITMAP, "6.7";
    /// `IOMMU_HWPT_INVALIDATE`.
    HwptInvalidate = IOMMU_HWPT_INVALIDATE, "6.8";
    /// `IOMMU_FAULT_QUEUE_ALLOC`.
    FaultQueueAlloc = IOMMU_FAULT_QUEUE_ALLOC, "6.11";
    /// `IOMMU_IOAS_MAP_FILE`.
    IoasMapFile = IOMMU_IOAS_MAP_FILE, "6.13";
    /// `IOMMU_VIOMMU_ALLOC`.
    ViommuAlloc = IOMMU_VIOMMU_ALLOC, "6.13";
    /// `IOMMU_VDEVICE_ALLOC`.
    VdeviceAlloc = IOMMU_VDEVICE_ALLOC, "6.13";
    /// `IOMMU_IOAS_CHANGE_PROCESS`.
    IoasChangeProcess = IOMMU_IOAS_CHANGE_PROCESS, "6.13";
    /// `IOMMU_VEVENTQ_ALLOC`.
    VeventqAlloc = IOMMU_VEVENTQ_ALLOC, "6.15";
    /// `IOMMU_HW_QUEUE_ALLOC`.
    HwQueueAlloc = IOMMU_HW_QUEUE_ALLOC, "6.17";
    /// `IOMMU_IOAS_NOIOMMU_GET_PA`.
    IoasNoiommuGetPa = IOMMU_IOAS_NOIOMMU_GET_PA, "7.x";
    /// `IOMMU_TEST_CMD`: present only on kernels built with `CONFIG_IOMMUFD_TEST`.
    TestCmd = IOMMU_TEST_CMD, "6.2";
}

impl Command {
    /// The bit of the command in [`Features`]: its ioctl number minus the base.
    fn bit(self) -> u64 {
        let nr = (self.request() & 0xff) as u32;
        1u64 << (nr.wrapping_sub(uapi::IOMMUFD_CMD_BASE) & 63)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the running kernel supports, from [`Iommufd::probe`].
///
/// ```no_run
/// use iommufd::{Command, Iommufd};
/// let fd = Iommufd::open()?;
/// let features = fd.probe();
/// if !features.supports(Command::IoasMapFile) {
///     println!("no IOMMU_IOAS_MAP_FILE: kernel before 6.13");
/// }
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Features {
    commands: u64,
    /// `IOMMU_GET_HW_INFO` accepts `IOMMU_HW_INFO_FLAG_INPUT_TYPE` (Linux 6.17):
    /// [`Device::hw_info_of_type`](crate::Device::hw_info_of_type) works.
    pub hw_info_input_type: bool,
    /// `IOMMU_OPTION` knows `IOMMU_OPTION_HUGE_PAGES`.
    pub option_huge_pages: bool,
}

impl Features {
    /// Whether the kernel has `cmd`.
    ///
    /// ```no_run
    /// use iommufd::{Command, Iommufd};
    /// let fd = Iommufd::open()?;
    /// let dirty_tracking = fd.probe().supports(Command::HwptSetDirtyTracking);
    /// println!("dirty tracking commands (Linux 6.7): {dirty_tracking}");
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn supports(&self, cmd: Command) -> bool {
        self.commands & cmd.bit() != 0
    }

    /// The commands the kernel has.
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// for cmd in fd.probe().commands() {
    ///     println!("{cmd} (since {})", cmd.since());
    /// }
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn commands(&self) -> impl Iterator<Item = Command> + '_ {
        Command::ALL.iter().copied().filter(|c| self.supports(*c))
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Features")
            .field(
                "commands",
                &self.commands().map(Command::name).collect::<Vec<_>>(),
            )
            .field("hw_info_input_type", &self.hw_info_input_type)
            .field("option_huge_pages", &self.option_huge_pages)
            .finish()
    }
}

/// How the kernel answered a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `ENOTTY`: the kernel does not know the ioctl number.
    Unknown,
    /// Anything else: the number is known (the argument was rejected on its merits).
    Known,
}

/// Classifies the result of issuing a command with a deliberately invalid argument.
fn classify(r: Result<(), Errno>) -> Answer {
    match r {
        Err(Errno(libc::ENOTTY)) => Answer::Unknown,
        _ => Answer::Known,
    }
}

/// Whether a flag/option probe (a valid argument naming object id 0, which never
/// exists) shows the kernel knows the flag: it then gets as far as the object lookup
/// (`ENOENT`), while an unknown flag or option is refused first with `EOPNOTSUPP`.
fn flag_known(r: Result<(), Errno>) -> bool {
    !matches!(r, Err(Errno(libc::EOPNOTSUPP | libc::ENOTTY)))
}

impl Iommufd {
    /// Reports which commands and flags the running kernel supports.
    ///
    /// # Method
    ///
    /// Commands: each is issued with an argument whose `size` field is 0. The kernel
    /// looks the ioctl number up first and answers `ENOTTY` if it does not know it;
    /// a known command then refuses any `size` below the command's minimum with
    /// `EINVAL` before reading anything else, so the probe has no side effects.
    /// `ENOTTY` therefore means absent and any other answer means present.
    ///
    /// Flags: a flag is probed where the kernel checks it before looking up any
    /// object. The argument is complete and names object id 0, which no object ever
    /// has, so a known flag gets as far as the lookup and fails with `ENOENT`, an
    /// unknown one with `EOPNOTSUPP`. Neither changes anything.
    ///
    /// On a file that is not an iommufd every command reports absent.
    ///
    /// ```
    /// use iommufd::{Command, Iommufd};
    /// // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
    /// let null = unsafe { Iommufd::from_owned_fd_unchecked(std::fs::File::open("/dev/null")?.into()) };
    /// let features = null.probe();
    /// assert!(!features.supports(Command::IoasMap));
    /// assert_eq!(features.commands().count(), 0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn probe(&self) -> Features {
        let mut commands = 0;
        for &cmd in Command::ALL {
            if self.has_command(cmd) {
                commands |= cmd.bit();
            }
        }
        let mut f = Features {
            commands,
            hw_info_input_type: false,
            option_huge_pages: false,
        };
        if f.supports(Command::GetHwInfo) {
            let mut a: uapi::iommu_hw_info = arg();
            a.flags = uapi::IOMMU_HW_INFO_FLAG_INPUT_TYPE;
            // SAFETY: `data_uptr` is 0 with `data_len` 0, and with device id 0 the
            // call fails before any data would be copied.
            f.hw_info_input_type =
                flag_known(unsafe { self.ioctl(uapi::IOMMU_GET_HW_INFO, &mut a) });
        }
        if f.supports(Command::Option) {
            let mut a: uapi::iommu_option = arg();
            a.option_id = uapi::IOMMU_OPTION_HUGE_PAGES;
            a.op = uapi::IOMMU_OPTION_OP_GET as u16;
            f.option_huge_pages = flag_known(self.ioctl_plain(uapi::IOMMU_OPTION, &mut a));
        }
        f
    }
}

impl Iommufd {
    /// Whether the kernel knows `cmd`: one probe ioctl (see [`Iommufd::probe`]).
    pub(crate) fn has_command(&self, cmd: Command) -> bool {
        let mut a = ProbeArg::default();
        classify(self.ioctl_plain(cmd.request(), &mut a)) == Answer::Known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_distinct() {
        let mut seen = 0u64;
        for &c in Command::ALL {
            assert_eq!(seen & c.bit(), 0, "{c}");
            seen |= c.bit();
        }
        assert_eq!(Command::Destroy.bit(), 1);
        assert_eq!(Command::TestCmd.bit(), 1 << 32);
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(Command::IoasMap.name(), "IOMMU_IOAS_MAP");
        assert_eq!(Command::IoasMap.request(), 0x3b85);
        assert_eq!(Command::TestCmd.to_string(), "IOMMU_TEST_CMD");
        assert_eq!(Command::ALL.len(), 23);
    }

    #[test]
    fn enotty_alone_means_absent() {
        assert_eq!(classify(Err(Errno(libc::ENOTTY))), Answer::Unknown);
        for e in [libc::EINVAL, libc::ENOENT, libc::EFAULT, libc::EOPNOTSUPP] {
            assert_eq!(classify(Err(Errno(e))), Answer::Known);
        }
        assert_eq!(classify(Ok(())), Answer::Known);
        assert!(flag_known(Err(Errno(libc::ENOENT))));
        assert!(!flag_known(Err(Errno(libc::EOPNOTSUPP))));
        assert!(!flag_known(Err(Errno(libc::ENOTTY))));
    }

    // A real probe of a file that is not an iommufd.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn nothing_on_a_non_iommufd() {
        let fd = crate::iommufd::tests::null();
        let f = fd.probe();
        assert_eq!(f.commands().count(), 0);
        assert!(!f.hw_info_input_type && !f.option_huge_pages);
        assert!(format!("{f:?}").contains("commands: []"));
    }
}
