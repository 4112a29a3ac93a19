import Foundation
import SwapfairSys
import Testing

/// Whether a file's disk spins, read from a sysfs tree laid out as the kernel's: `dev/block/M:m`
/// links to the disk's directory (which has `queue/`) or to a partition's inside it (which has not).
@Suite struct BlockDeviceFactsTests {
    /// A file, and a fake sysfs where its device number names a disk (or a partition of one)
    /// whose queue says `rotational`.
    func fixture(rotational: String, partition: Bool) throws -> (sys: String, file: FileHandle) {
        let root = NSTemporaryDirectory() + "bdf-\(UUID().uuidString)"
        let file = root + "/store"
        try FileManager.default.createDirectory(atPath: root + "/devices/disk/queue", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/devices/disk/disk1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
        try rotational.write(toFile: root + "/devices/disk/queue/rotational", atomically: true, encoding: .utf8)
        #expect(FileManager.default.createFile(atPath: file, contents: Data([1])))
        let st = try FileManager.default.attributesOfItem(atPath: file)
        let (major, minor) = BlockDeviceFacts.majorMinor((st[.systemNumber] as? NSNumber)?.uint64Value ?? 0)
        try FileManager.default.createSymbolicLink(atPath: root + "/dev/block/\(major):\(minor)",
                                                   withDestinationPath: root + (partition ? "/devices/disk/disk1" : "/devices/disk"))
        return (root, try #require(FileHandle(forReadingAtPath: file)))
    }

    @Test(arguments: [(false, "1\n", true), (false, "0\n", false), (true, "1\n", true), (true, "0\n", false)])
    func aFileIsOnARotationalDiskWhenItsQueueSaysSo(partition: Bool, says: String, expected: Bool) throws {
        let (sys, file) = try fixture(rotational: says, partition: partition)
        defer { try? FileManager.default.removeItem(atPath: sys) }
        // Only where the file's device number is a real one (not tmpfs, whose answer is always no).
        let st = try FileManager.default.attributesOfItem(atPath: sys + "/store")
        guard ((st[.systemNumber] as? NSNumber)?.uint64Value ?? 0) >> 8 != 0 else { return }
        #expect(BlockDeviceFacts.isRotational(fd: file.fileDescriptor, sys: sys) == expected)
    }

    /// Device numbers laid out as glibc's makedev() does (low minor bits, 12 major bits, high minor
    /// bits, high major bits).
    @Test func deviceNumbersSplitAsGlibcDoes() {
        #expect(BlockDeviceFacts.majorMinor(0x801) == (8, 1))
        #expect(BlockDeviceFacts.majorMinor(0x11_032C) == (259, 300))
        #expect(BlockDeviceFacts.majorMinor(0x1000_0000_0405) == (4100, 5))
    }

    @Test func noSysfsEntryMeansNotRotational() throws {
        let (sys, file) = try fixture(rotational: "1\n", partition: false)
        defer { try? FileManager.default.removeItem(atPath: sys) }
        #expect(!BlockDeviceFacts.isRotational(fd: file.fileDescriptor, sys: sys + "/nonexistent"))
        #expect(!BlockDeviceFacts.isRotational(fd: -1, sys: sys))
    }
}
