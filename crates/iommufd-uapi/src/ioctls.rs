// The iommufd ioctl command numbers. C defines them with the function-like `_IO()`
// macro, which bindgen cannot translate; they are computed here from the generated
// IOMMUFD_TYPE and IOMMUFD_CMD_* values and pinned by the test below.

use core::ffi::c_ulong;

use crate::iommufd::*;

/// `_IO(IOMMUFD_TYPE, nr)`: direction none, size 0 (iommufd passes the size in the
/// argument structure instead).
const fn io(nr: u32) -> c_ulong {
    ((IOMMUFD_TYPE as c_ulong) << 8) | nr as c_ulong
}

macro_rules! iommufd_ioctls {
    ($($(#[$doc:meta])* $name:ident = $cmd:ident;)*) => {
        $(
            $(#[$doc])*
            pub const $name: c_ulong = io($cmd);
        )*
    };
}

iommufd_ioctls! {
    /// Destroy any object by id (`struct iommu_destroy`).
    IOMMU_DESTROY = IOMMUFD_CMD_DESTROY;
    /// Allocate an I/O address space (`struct iommu_ioas_alloc`).
    IOMMU_IOAS_ALLOC = IOMMUFD_CMD_IOAS_ALLOC;
    /// Restrict the IOVAs an IOAS may use (`struct iommu_ioas_allow_iovas`).
    IOMMU_IOAS_ALLOW_IOVAS = IOMMUFD_CMD_IOAS_ALLOW_IOVAS;
    /// Copy mappings between IOASes (`struct iommu_ioas_copy`).
    IOMMU_IOAS_COPY = IOMMUFD_CMD_IOAS_COPY;
    /// Query the usable IOVA ranges (`struct iommu_ioas_iova_ranges`).
    IOMMU_IOAS_IOVA_RANGES = IOMMUFD_CMD_IOAS_IOVA_RANGES;
    /// Map user memory into an IOAS (`struct iommu_ioas_map`).
    IOMMU_IOAS_MAP = IOMMUFD_CMD_IOAS_MAP;
    /// Unmap an IOVA range (`struct iommu_ioas_unmap`).
    IOMMU_IOAS_UNMAP = IOMMUFD_CMD_IOAS_UNMAP;
    /// Get or set an option (`struct iommu_option`).
    IOMMU_OPTION = IOMMUFD_CMD_OPTION;
    /// Manage the VFIO type1 compatibility IOAS (`struct iommu_vfio_ioas`).
    IOMMU_VFIO_IOAS = IOMMUFD_CMD_VFIO_IOAS;
    /// Allocate a hardware page table (`struct iommu_hwpt_alloc`).
    IOMMU_HWPT_ALLOC = IOMMUFD_CMD_HWPT_ALLOC;
    /// Query the IOMMU behind a device (`struct iommu_hw_info`).
    IOMMU_GET_HW_INFO = IOMMUFD_CMD_GET_HW_INFO;
    /// Turn dirty tracking on or off (`struct iommu_hwpt_set_dirty_tracking`).
    IOMMU_HWPT_SET_DIRTY_TRACKING = IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING;
    /// Read (and clear) the dirty bitmap (`struct iommu_hwpt_get_dirty_bitmap`).
    IOMMU_HWPT_GET_DIRTY_BITMAP = IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP;
    /// Forward cache invalidations (`struct iommu_hwpt_invalidate`).
    IOMMU_HWPT_INVALIDATE = IOMMUFD_CMD_HWPT_INVALIDATE;
    /// Allocate a fault queue (`struct iommu_fault_alloc`).
    IOMMU_FAULT_QUEUE_ALLOC = IOMMUFD_CMD_FAULT_QUEUE_ALLOC;
    /// Map part of a file into an IOAS (`struct iommu_ioas_map_file`).
    IOMMU_IOAS_MAP_FILE = IOMMUFD_CMD_IOAS_MAP_FILE;
    /// Allocate a virtual IOMMU (`struct iommu_viommu_alloc`).
    IOMMU_VIOMMU_ALLOC = IOMMUFD_CMD_VIOMMU_ALLOC;
    /// Allocate a virtual device of a vIOMMU (`struct iommu_vdevice_alloc`).
    IOMMU_VDEVICE_ALLOC = IOMMUFD_CMD_VDEVICE_ALLOC;
    /// Move pinned-page accounting to the calling process (`struct iommu_ioas_change_process`).
    IOMMU_IOAS_CHANGE_PROCESS = IOMMUFD_CMD_IOAS_CHANGE_PROCESS;
    /// Allocate a virtual event queue (`struct iommu_veventq_alloc`).
    IOMMU_VEVENTQ_ALLOC = IOMMUFD_CMD_VEVENTQ_ALLOC;
    /// Allocate a hardware-accelerated queue (`struct iommu_hw_queue_alloc`).
    IOMMU_HW_QUEUE_ALLOC = IOMMUFD_CMD_HW_QUEUE_ALLOC;
    /// Physical address behind an IOVA, for no-IOMMU devices (`struct iommu_ioas_noiommu_get_pa`).
    IOMMU_IOAS_NOIOMMU_GET_PA = IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA;
}

/// The test command of `CONFIG_IOMMUFD_TEST` kernels (`struct iommu_test_cmd`),
/// `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)`.
pub const IOMMU_TEST_CMD: c_ulong = io(IOMMUFD_CMD_BASE + 32);

#[cfg(test)]
mod tests {
    use super::*;

    // Literal values, computed independently of the generated constants: a change in
    // the header or in io() shows up here.
    #[test]
    fn command_numbers() {
        let pinned: [(&str, c_ulong, c_ulong); 23] = [
            ("IOMMU_DESTROY", IOMMU_DESTROY, 0x3b80),
            ("IOMMU_IOAS_ALLOC", IOMMU_IOAS_ALLOC, 0x3b81),
            ("IOMMU_IOAS_ALLOW_IOVAS", IOMMU_IOAS_ALLOW_IOVAS, 0x3b82),
            ("IOMMU_IOAS_COPY", IOMMU_IOAS_COPY, 0x3b83),
            ("IOMMU_IOAS_IOVA_RANGES", IOMMU_IOAS_IOVA_RANGES, 0x3b84),
            ("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP, 0x3b85),
            ("IOMMU_IOAS_UNMAP", IOMMU_IOAS_UNMAP, 0x3b86),
            ("IOMMU_OPTION", IOMMU_OPTION, 0x3b87),
            ("IOMMU_VFIO_IOAS", IOMMU_VFIO_IOAS, 0x3b88),
            ("IOMMU_HWPT_ALLOC", IOMMU_HWPT_ALLOC, 0x3b89),
            ("IOMMU_GET_HW_INFO", IOMMU_GET_HW_INFO, 0x3b8a),
            (
                "IOMMU_HWPT_SET_DIRTY_TRACKING",
                IOMMU_HWPT_SET_DIRTY_TRACKING,
                0x3b8b,
            ),
            (
                "IOMMU_HWPT_GET_DIRTY_BITMAP",
                IOMMU_HWPT_GET_DIRTY_BITMAP,
                0x3b8c,
            ),
            ("IOMMU_HWPT_INVALIDATE", IOMMU_HWPT_INVALIDATE, 0x3b8d),
            ("IOMMU_FAULT_QUEUE_ALLOC", IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e),
            ("IOMMU_IOAS_MAP_FILE", IOMMU_IOAS_MAP_FILE, 0x3b8f),
            ("IOMMU_VIOMMU_ALLOC", IOMMU_VIOMMU_ALLOC, 0x3b90),
            ("IOMMU_VDEVICE_ALLOC", IOMMU_VDEVICE_ALLOC, 0x3b91),
            (
                "IOMMU_IOAS_CHANGE_PROCESS",
                IOMMU_IOAS_CHANGE_PROCESS,
                0x3b92,
            ),
            ("IOMMU_VEVENTQ_ALLOC", IOMMU_VEVENTQ_ALLOC, 0x3b93),
            ("IOMMU_HW_QUEUE_ALLOC", IOMMU_HW_QUEUE_ALLOC, 0x3b94),
            (
                "IOMMU_IOAS_NOIOMMU_GET_PA",
                IOMMU_IOAS_NOIOMMU_GET_PA,
                0x3b95,
            ),
            ("IOMMU_TEST_CMD", IOMMU_TEST_CMD, 0x3ba0),
        ];
        for (name, got, want) in pinned {
            assert_eq!(got, want, "{name}: {got:#x} != {want:#x}");
        }
    }

    // Argument sizes the kernel's copy_struct_from_user() compares against; a binding
    // generated from an older header would be shorter.
    #[test]
    fn argument_sizes_of_7_3() {
        assert_eq!(size_of::<iommu_destroy>(), 8);
        assert_eq!(size_of::<iommu_ioas_alloc>(), 12);
        assert_eq!(size_of::<iommu_ioas_map>(), 40);
        assert_eq!(size_of::<iommu_ioas_unmap>(), 24);
        assert_eq!(size_of::<iommu_hwpt_alloc>(), 48);
        assert_eq!(size_of::<iommu_hw_info>(), 40);
        assert_eq!(size_of::<iommu_hwpt_pgfault>(), 40);
        assert_eq!(size_of::<iommu_hwpt_page_response>(), 8);
    }
}
