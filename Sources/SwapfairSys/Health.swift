import Synchronization

/// Problems the daemon's parts cannot cure by themselves (a listener that stopped for good), by
/// part, for `swapfairctl status` and systemd's STATUS line. A part that recovers clears its entry.
public final class Health: Sendable {
    private let problems = Mutex<[String: String]>([:])

    public init() {}

    public func record(_ part: String, _ problem: String) { problems.withLock { $0[part] = problem } }

    public func clear(_ part: String) { _ = problems.withLock { $0.removeValue(forKey: part) } }

    /// "part: problem", sorted by part.
    public var current: [String] {
        problems.withLock { $0.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" } }
    }
}
