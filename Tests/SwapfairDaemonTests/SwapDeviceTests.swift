import Foundation
import Testing
import SwapfairNBD
import SwapfairSys

#if canImport(Glibc)
import Glibc
#endif

/// A swapfaird serving one or more swap devices (`--swap-only`), in a directory of its own.
final class SwapDaemon {
    let dir: String
    let config: String
    var process: Process?
    let log: String

    init(volumes: [(name: String, size: String)], extra: String = "") throws {
        dir = "/tmp/swapfair-sd-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        config = dir + "/swapfair.toml"
        log = dir + "/daemon.log"
        var text = "[host]\nstate_dir = \"\(dir)/state\"\nnbd_dir = \"\(dir)/nbd\"\n\(extra)"
        for v in volumes { text += "[[vm]]\nname = \"\(v.name)\"\nswap_device = { size = \"\(v.size)\" }\n" }
        try text.write(toFile: config, atomically: false, encoding: .utf8)
        try start()
    }

    func socket(_ name: String) -> String { "\(dir)/nbd/\(name).sock" }
    func uri(_ name: String) -> String { "nbd+unix:///\(name)?socket=\(socket(name))" }

    func start() throws {
        try makeFile(log)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try h.seekToEnd()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: productsDirectory() + "/swapfaird")
        p.arguments = ["--config", config, "--socket", "\(dir)/ctl.sock", "--swap-only", "--allow-fake-root"]
        p.standardOutput = h
        p.standardError = h
        try p.run()
        process = p
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: "\(dir)/ctl.sock") { usleep(25_000) }
    }

    func kill9() {
        guard let p = process else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    func stop() {
        guard let p = process, p.isRunning else { return }
        p.terminate()
        p.waitUntilExit()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

func tool(_ name: String) throws -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
        return "\(dir)/\(name)"
    }
    Issue.record("\(name) is not installed: run Scripts/install-deps")
    throw CancellationError()
}

/// Whether lsblk says the disk holding `path` spins (false when no block device holds it: tmpfs,
/// overlay).
func diskIsRotational(under path: String) throws -> Bool {
    let mount = try run(try tool("findmnt"), ["-n", "-o", "SOURCE", "--target", path])
    // A bind mount's source reads "/dev/vda1[/sub/dir]".
    let source = String(mount.output.prefix { $0 != "[" && !$0.isNewline })
    guard mount.status == 0, source.hasPrefix("/dev/") else { return false }
    let r = try run(try tool("lsblk"), ["-n", "-d", "-o", "ROTA", source])
    return r.output.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
}

@Suite(.serialized) struct SwapDeviceTests {
    /// `ublk = true` on a kernel without ublk: the daemon refuses to start, naming the VM, the
    /// key and what is missing, rather than serve the VM without the device it was told to use.
    @Test(.enabled(if: access("/dev/ublk-control", F_OK) != 0, "this kernel has ublk: the lab tests the device"))
    func aBlockDeviceWithoutUblkInTheKernelIsRefusedClearly() throws {
        let dir = "/tmp/swapfair-sd-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try """
            [host]
            state_dir = "\(dir)/state"
            nbd_dir = "\(dir)/nbd"
            [[vm]]
            name = "web"
            swap_device = { size = "16M", ublk = true }
            """.write(toFile: dir + "/swapfair.toml", atomically: false, encoding: .utf8)
        let r = try run(productsDirectory() + "/swapfaird", ["--config", dir + "/swapfair.toml", "--socket", dir + "/ctl.sock",
                                                             "--swap-only", "--allow-fake-root"])
        #expect(r.status != 0)
        #expect(r.output.contains("VM web: cannot serve its swap volume as a ublk block device (ublk = true): the kernel has no ublk"),
                "\(r.output)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/nbd/web.sock"))
    }

    @Test func nbdinfoSeesTheExportAndItsBlockSizes() throws {
        let d = try SwapDaemon(volumes: [("web", "64M")])
        let r = try run(try tool("nbdinfo"), ["--json", d.uri("web")])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("\"export-size\": 67108864"))
        #expect(r.output.contains("\"block_size_minimum\": 4096"))
        #expect(r.output.contains("\"can_trim\": true") && r.output.contains("\"can_flush\": true"))
        // As rotational as the disk under the volume, by lsblk's word.
        let spins = try diskIsRotational(under: d.dir)
        #expect(r.output.contains("\"is_rotational\": \(spins)"), "\(r.output)")
        let list = try run(try tool("nbdinfo"), ["--list", "nbd+unix:///?socket=\(d.socket("web"))"])
        #expect(list.output.contains("export=\"web\""), "\(list.output)")
    }

    @Test func qemuIoReadsBackWhatItWroteAndSeesDiscardsAsZeroes() throws {
        let d = try SwapDaemon(volumes: [("web", "64M")])
        var cmds: [String] = []
        for (i, off) in [0, 128 << 10, 1 << 20, 33 << 20, (64 << 20) - 65536].enumerated() {
            cmds += ["-c", "write -P \(0x11 * (i + 1)) \(off) 64k"]
        }
        for (i, off) in [0, 128 << 10, 1 << 20, 33 << 20, (64 << 20) - 65536].enumerated() {
            cmds += ["-c", "read -P \(0x11 * (i + 1)) \(off + 4096) 60k"]
        }
        cmds += ["-c", "discard \(1 << 20) 64k", "-c", "read -P 0 \(1 << 20) 64k", "-c", "write -z \(33 << 20) 64k",
                 "-c", "read -P 0 \(33 << 20) 64k", "-c", "flush", "-c", "write -f -P 7 0 4k", "-c", "read -P 7 0 4k"]
        let r = try run(try tool("qemu-io"), ["-f", "raw", d.uri("web")] + cmds)
        #expect(r.status == 0, "\(r.output)")
        #expect(!r.output.contains("Pattern verification failed") && !r.output.contains("error"), "\(r.output)")
        #expect(r.output.components(separatedBy: "read ").count - 1 == 8)  // five patterns, discard, zeroes, FUA
    }

    @Test func nbdcopyRoundTripIsIdenticalBlockForBlock() throws {
        let d = try SwapDaemon(volumes: [("web", "32M")])
        let input = d.dir + "/in.bin", output = d.dir + "/out.bin"
        var bytes = [UInt8](repeating: 0, count: 32 << 20)
        var g = SystemRandomNumberGenerator()
        for i in stride(from: 0, to: bytes.count, by: 8) { withUnsafeBytes(of: g.next()) { for k in 0..<8 { bytes[i + k] = $0[k] } } }
        try Data(bytes).write(to: URL(fileURLWithPath: input))
        #expect(try run(try tool("nbdcopy"), [input, d.uri("web")]).status == 0)
        #expect(try run(try tool("nbdcopy"), [d.uri("web"), output]).status == 0)
        let back = [UInt8](try Data(contentsOf: URL(fileURLWithPath: output)))
        #expect(back.count == bytes.count)
        var bad = 0
        for b in stride(from: 0, to: bytes.count, by: 4096) where bytes[b..<(b + 4096)] != back[b..<(b + 4096)] { bad += 1 }
        #expect(bad == 0, "\(bad) blocks differ")
        // And qemu-img, a third client, compares the export with the file byte for byte.
        let cmp = try run(try tool("qemu-img"), ["compare", "-f", "raw", "-F", "raw", input, d.uri("web")])
        #expect(cmp.status == 0 && cmp.output.contains("Images are identical"), "\(cmp.output)")
    }

    @Test func fioVerifiesEveryBlockItWrote() throws {
        let d = try SwapDaemon(volumes: [("web", "64M")])
        let r = try run(try tool("fio"), [
            "--name=v", "--ioengine=nbd", "--uri=\(d.uri("web"))", "--rw=randwrite", "--bs=4k", "--iodepth=32",
            "--size=32M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
        ], timeout: 120)
        #expect(r.status == 0, "\(r.output)")
        #expect(!r.output.contains("verify: bad"), "\(r.output)")
    }

    /// The kernel's uid check: SO_PEERCRED decides who may use a VM's volume.
    @Test func aUserNotAllowedOnTheVolumeIsRefused() throws {
        let d = try SwapDaemon(volumes: [("web", "16M")])
        let r = try run(try tool("setpriv"), ["--reuid=65534", "--regid=65534", "--clear-groups", try tool("nbdinfo"), d.uri("web")])
        #expect(r.status != 0, "\(r.output)")
        #expect(try String(contentsOfFile: d.log, encoding: .utf8).contains("refused a client not allowed"))
    }

    /// SIGKILL under a writing client; a restart; the client (with reconnect-delay) sees no error
    /// and everything it wrote reads back.
    @Test func aRestartUnderAReconnectingClientCostsItNoIOError() throws {
        let d = try SwapDaemon(volumes: [("web", "64M")])
        let opts = "driver=nbd,server.type=unix,server.path=\(d.socket("web")),export=web,reconnect-delay=30"
        var cmds: [String] = []
        for i in 0..<40 { cmds += ["-c", "write -P \(i + 1) \(i << 20) 1M", "-c", "sleep 100"] }
        for i in 0..<40 { cmds += ["-c", "read -P \(i + 1) \(i << 20) 1M"] }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try tool("qemu-io"))
        p.arguments = ["--image-opts", opts] + cmds
        let out = d.dir + "/qemu-io.log"
        try makeFile(out)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        p.standardOutput = h
        p.standardError = h
        try p.run()
        usleep(1_500_000)  // a dozen writes in
        d.kill9()
        usleep(1_000_000)
        try d.start()
        let deadline = Date().addingTimeInterval(90)
        while p.isRunning && Date() < deadline { usleep(50_000) }
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        let log = try String(contentsOfFile: out, encoding: .utf8)
        #expect(p.terminationStatus == 0, "\(log.suffix(2000))")
        #expect(!log.contains("error") && !log.contains("failed"), "\(log.suffix(2000))")
        #expect(log.components(separatedBy: "read 1048576/1048576").count - 1 == 40)
    }
}
