import Dispatch
import Foundation
import Logging
import SwapfairPolicy
import SwapfairQMP
import SwapfairSys
import Synchronization

/// One VM's balloon, for reclaim shifting. QMP exchanges run on the driver's own queue, one at a
/// time and one connection each (QEMU's QMP socket serves one client at a time, and an operator's
/// `swapfairctl balloon` must get its turn), so a VMM that does not answer delays only its own
/// balloon, never the control loop. The loop reads what was learnt last.
final class BalloonDriver: Sendable {
    struct Known: Sendable, Equatable {
        /// What the balloon leaves the guest now (QMP `query-balloon` "actual").
        var actual: UInt64?
        /// The guest's RAM in full: configured, remembered from before a restart, or the first
        /// "actual" seen with nothing taken.
        var guestMemory: UInt64?
        /// What the loop wants the balloon to leave; nil: nothing asked yet.
        var target: UInt64?
        /// The last target QEMU accepted, and when (monotonic seconds).
        var sent: UInt64?
        var sentAt: Double = 0
        var error: String?
        var busy = false
        /// The balloon has answered this daemon at least once (`actual` is its word, not the record's).
        var answered = false
    }

    let vm: String
    let path: String
    let logger: Logger
    private let known: Mutex<Known>
    private let queue: DispatchQueue

    /// `lastActual`: what the balloon left the guest when the previous daemon stopped (its record),
    /// believed until the balloon answers, so that a restart keeps the raise that goes with it.
    init(vm: String, path: String, guestMemory: UInt64?, lastActual: UInt64? = nil, logger: Logger) {
        self.vm = vm
        self.path = path
        self.logger = logger
        known = Mutex(Known(actual: lastActual, guestMemory: guestMemory, sent: lastActual))
        queue = DispatchQueue(label: "swapfair.balloon.\(vm)")
    }

    var state: Known { known.withLock { $0 } }

    /// Asks for `target` (nil: only refresh what is known). Returns at once; an exchange already
    /// under way takes the newest target when it starts its next round.
    func update(target: UInt64?) {
        let start = known.withLock { k -> Bool in
            if let target { k.target = target }
            if k.busy { return false }
            k.busy = true
            return true
        }
        if start { queue.async { self.exchange() } }
    }

    /// Gives the guest all its RAM back, waiting up to `timeout` seconds (at a clean stop).
    func deflate(timeout: Double) -> Bool {
        guard deflateStart() else { return false }
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            if deflateDone() { return true }
            usleep(20_000)
        }
        return false
    }

    /// Asks the balloon to give the guest all its RAM back; false when its size is not known.
    @discardableResult
    func deflateStart() -> Bool {
        guard let full = state.guestMemory else { return false }
        update(target: full)
        return true
    }

    /// Whether the balloon has accepted giving all of it back (asking again after a failure).
    func deflateDone() -> Bool {
        guard let full = state.guestMemory else { return true }
        let k = state
        if !k.busy && k.sent == full { return true }
        if !k.busy { update(target: full) }
        return false
    }

    private func exchange() {
        while true {
            let want = known.withLock { $0.target }
            var actual: UInt64?
            var failure: String?
            var sent: UInt64?
            do throws(QMPError) {
                let client = try QMPClient(path: path, timeoutSeconds: 2)
                if let want, want != state.sent {
                    try client.setBalloonTarget(bytes: want)
                    sent = want
                }
                actual = try client.balloonActual()
            } catch {
                failure = error.description
            }
            let again = known.withLock { k -> Bool in
                if let sent { k.sent = sent; k.sentAt = monotonicSeconds() }
                if let actual {
                    k.actual = actual
                    k.answered = true
                    if k.guestMemory == nil { k.guestMemory = actual }
                }
                if failure != k.error {
                    if let failure {
                        logger.warning("cannot reach the VM's balloon; reclaim shifting waits",
                                       metadata: ["vm": "\(vm)", "qmp": "\(path)", "error": "\(failure)"])
                    } else if k.error != nil {
                        logger.notice("the VM's balloon answers again", metadata: ["vm": "\(vm)", "qmp": "\(path)"])
                    }
                    k.error = failure
                }
                // A newer target arrived meanwhile: one more round (never after a failure, which
                // the next tick retries).
                let more = failure == nil && k.target != nil && k.target != k.sent
                if !more { k.busy = false }
                return more
            }
            if !again { return }
        }
    }
}

/// What reclaim shifting remembers of a VM across a daemon restart (a crash leaves the balloon
/// where it was; the restarted daemon must know the guest's full size and the shift in force to
/// undo it later): `<state_dir>/balloons/NAME.json`.
struct ShiftRecord: Codable, Equatable {
    var guestMemory: UInt64
    var shift: UInt64

    static func path(stateDir: String, vm: String) -> String { "\(stateDir)/balloons/\(vm).json" }

    /// The record a previous daemon left, nil when there is none; one that cannot be read or
    /// decoded is thrown, so that the caller says so instead of silently starting from no shift.
    static func load(stateDir: String, vm: String) throws -> ShiftRecord? {
        guard let text = try FileAccess.readIfPresent(path(stateDir: stateDir, vm: vm)) else { return nil }
        return try JSONDecoder().decode(ShiftRecord.self, from: Data(text.utf8))
    }

    func save(stateDir: String, vm: String) throws {
        try FileManager.default.createDirectory(atPath: "\(stateDir)/balloons", withIntermediateDirectories: true)
        try JSONEncoder().encode(self).write(to: URL(fileURLWithPath: Self.path(stateDir: stateDir, vm: vm)), options: .atomic)
    }

    static func remove(stateDir: String, vm: String) {
        unlink(path(stateDir: stateDir, vm: vm))
    }
}
