import Foundation

/// One JSON object a line, keys sorted, to a file or to standard output: the workloads' reports.
public final class JSONLines {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    let handle: FileHandle

    /// Writes to `path` (created or truncated), or to standard output when it is nil.
    public init(path: String?) throws {
        guard let path else {
            handle = FileHandle.standardOutput
            return
        }
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw Failure(description: "cannot write \(path)")
        }
        handle = h
    }

    public func emit(_ object: [String: Any]) {
        if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
            handle.write(data + Data("\n".utf8))
        }
    }
}
