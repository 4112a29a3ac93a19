#if canImport(Glibc)
import Glibc
#endif

/// What the kernel says about the block device a file lives on (sysfs).
public enum BlockDeviceFacts {
    /// Whether the disk under the file open as `fd` spins (its queue's `rotational`); for a
    /// partition, its disk's; for a block device, its own. False when the file is on no block device (tmpfs) or sysfs does not
    /// say: a store in RAM seeks like a solid-state disk. The kernel reads swap back differently
    /// from the two (by slot clusters from a rotational device, along the address space from the
    /// others), so a device built over the file should say the same as the disk under it.
    public static func isRotational(fd: Int32, sys: String = "/sys") -> Bool {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        let (major, minor) = majorMinor(UInt64(st.st_mode & S_IFMT == S_IFBLK ? st.st_rdev : st.st_dev))
        guard major != 0 else { return false }  // an anonymous device: tmpfs, overlay, 9p
        for path in ["\(sys)/dev/block/\(major):\(minor)/queue/rotational",
                     "\(sys)/dev/block/\(major):\(minor)/../queue/rotational"] {
            if let text = try? FileAccess.read(path, limit: 64) {
                return text.first == "1"
            }
        }
        return false
    }

    /// A device number's major and minor (glibc's `major()`/`minor()` are macros: the same bit
    /// layout, spelled out).
    public static func majorMinor(_ dev: UInt64) -> (major: UInt64, minor: UInt64) {
        (((dev & 0xf_ff00) >> 8) | ((dev & 0xffff_f000_0000_0000) >> 32), (dev & 0xff) | ((dev & 0xfff_fff0_0000) >> 12))
    }
}
