import Foundation
import Logging
import Synchronization
import SwapfairConfig

/// Collects log lines so tests can assert what the daemon said.
final class LogCapture: Sendable {
    let lines = Mutex<[String]>([])

    var all: [String] { lines.withLock { $0 } }

    func logger() -> Logger {
        var l = Logger(label: "test") { _ in CaptureHandler(capture: self) }
        l.logLevel = .debug
        return l
    }

    func contains(_ s: String) -> Bool { all.contains { $0.contains(s) } }
}

struct CaptureHandler: LogHandler {
    let capture: LogCapture
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let tail = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        capture.lines.withLock { $0.append("\(event.level) \(event.message) \(tail)") }
    }
}

let GiB: UInt64 = 1 << 30
let MiB: UInt64 = 1 << 20
let facts = HostFacts(memoryTotal: 16 * GiB, swapTotal: 8 * GiB)

func configuration(_ text: String) throws -> SwapfairConfiguration {
    try ConfigLoader.parse(text, source: "test.toml", facts: facts)
}

/// The directory holding the package's built executables (next to the test bundle).
func productsDirectory() -> String {
    let bundle = ProcessInfo.processInfo.arguments.first { $0.hasSuffix(".xctest") } ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: bundle).deletingLastPathComponent().path
}

/// Creates (or empties) a file, or throws naming it.
func makeFile(_ path: String, _ contents: Data? = nil) throws {
    struct CannotCreate: Error, CustomStringConvertible {
        let path: String
        var description: String { "cannot create \(path)" }
    }
    guard FileManager.default.createFile(atPath: path, contents: contents) else { throw CannotCreate(path: path) }
}

struct Run {
    var status: Int32
    var output: String
}

/// Runs an executable to completion with a time bound; output goes through a file so that a
/// chatty process cannot block on a full pipe.
func run(_ path: String, _ args: [String], timeout: Double = 30) throws -> Run {
    let out = "/tmp/swapfair-run-\(UUID().uuidString.prefix(8)).log"
    try makeFile(out)
    defer { unlink(out) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(20_000) }
    if p.isRunning { p.terminate() }
    p.waitUntilExit()
    try handle.close()
    return Run(status: p.terminationStatus, output: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
}
