import Foundation
import Logging
import SwapfairConfig
import SwapfairSys
import SwapfairUblk

/// The outcome of a reload, as the control socket sends it and `swapfairctl reload` prints it.
public struct ReloadReport: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable {
        /// The new file was read and its changes are in force (some keys may have been refused).
        case applied
        /// The new file says what is in force already.
        case unchanged
        /// The new file is invalid: nothing changed.
        case refused
    }

    public var outcome: Outcome
    /// What changed, one line each.
    public var changes: [String] = []
    /// Keys that cannot change live, with why; their old values stay in force.
    public var refused: [String] = []
    /// Why the file was refused, or what failed while applying a change.
    public var errors: [String] = []
    /// The file read.
    public var source: String = ""

    public init(outcome: Outcome, changes: [String] = [], refused: [String] = [], errors: [String] = [], source: String = "") {
        self.outcome = outcome
        self.changes = changes
        self.refused = refused
        self.errors = errors
        self.source = source
    }

    public func json() -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        do { return String(decoding: try e.encode(self), as: UTF8.self) } catch {
            return "{\"error\": \"cannot encode the reload's outcome: \(error)\"}"
        }
    }

    public static func decode(_ data: [UInt8]) throws -> ReloadReport {
        try JSONDecoder().decode(ReloadReport.self, from: Data(data))
    }

    /// What `swapfairctl reload` and the log say.
    public var text: String {
        var lines: [String] = []
        switch outcome {
        case .applied: lines.append("reloaded \(source)")
        case .unchanged: lines.append("reloaded \(source): nothing changed")
        case .refused: lines.append("refused \(source); the configuration in force stays:")
        }
        lines += changes.map { "  changed: \($0)" }
        lines += refused.map { "  kept: \($0)" }
        lines += errors.map { "  error: \($0)" }
        return lines.joined(separator: "\n")
    }
}

/// Reads the configuration again and puts what changed in force: the VMs' swap devices here,
/// the control loop's VMs and policy through `apply`. Runs on the loop's thread, between ticks,
/// so nothing else sees a half-applied configuration.
public final class Reloader {
    /// The file given with `--config`, or nil for the default path (else the embedded default).
    let explicitPath: String?
    let facts: HostFacts
    /// Command-line settings that override the file's (`--cgroup-root`, `--socket`).
    let overrides: (inout SwapfairConfiguration) -> Void
    let logger: Logger
    public private(set) var current: SwapfairConfiguration
    public private(set) var devices: SwapDevices?
    /// Applies a change to the control loop (nil in `--swap-only`).
    let apply: ((ConfigChange) -> Void)?
    let health: Health?
    public private(set) var count = 0

    public init(explicitPath: String?, facts: HostFacts, current: SwapfairConfiguration, devices: SwapDevices?,
                logger: Logger, health: Health? = nil, overrides: @escaping (inout SwapfairConfiguration) -> Void = { _ in },
                apply: ((ConfigChange) -> Void)? = nil) {
        self.explicitPath = explicitPath
        self.facts = facts
        self.current = current
        self.devices = devices
        self.logger = logger
        self.health = health
        self.overrides = overrides
        self.apply = apply
    }

    public func reload() -> ReloadReport {
        count += 1
        var new: SwapfairConfiguration
        do { new = try ConfigSource.load(explicit: explicitPath, facts: facts) } catch {
            for p in error.problems {
                logger.error("reload refused: the configuration is invalid", metadata: [
                    "file": "\(error.file)", "problem": "\(p)"])
            }
            logger.notice("reload refused; the configuration in force stays", metadata: ["problems": "\(error.problems.count)"])
            return ReloadReport(outcome: .refused, errors: error.description.split(separator: "\n").map(String.init),
                                source: error.file)
        }
        overrides(&new)
        var change = ConfigChange(from: current, to: new)
        var errors: [String] = []
        applyToDevices(&change, errors: &errors)
        guard !change.isEmpty else {
            current = change.effective
            logger.notice("reload: nothing changed", metadata: ["config": "\(new.source)"])
            return ReloadReport(outcome: .unchanged, errors: errors, source: new.source)
        }
        apply?(change)
        current = change.effective
        for line in change.lines { logger.notice("reload: \(line)") }
        for line in change.refused { logger.warning("reload: kept \(line)") }
        for line in errors { logger.error("reload: \(line)") }
        logger.notice("reload applied", metadata: [
            "config": "\(new.source)", "changes": "\(change.lines.count)", "refused": "\(change.refused.count)",
            "errors": "\(errors.count)"])
        return ReloadReport(outcome: .applied, changes: change.lines, refused: change.refused, errors: errors,
                            source: new.source)
    }

    /// Starts, re-shares and retires swap devices; what cannot be done live is taken out of the
    /// change (and said), so that the control loop and the devices agree on one configuration.
    func applyToDevices(_ change: inout ConfigChange, errors: inout [String]) {
        let old = Dictionary(current.vms.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        // Removals first: a VM removed under one name and added under another must not find its
        // socket path taken.
        for name in change.removed {
            guard let vm = old[name], let d = vm.swapDevice else { continue }
            if d.ublk {
                change.keep(vm, because: "its swap device is a ublk block device, whose openers cannot be told to go")
                continue
            }
            devices?.retire(vm: name)
        }
        for vm in change.effective.vms {
            let was = old[vm.name]
            switch (was?.swapDevice, vm.swapDevice) {
            case (nil, let d?):
                if current.host.writeElision {
                    refuseNewDevice(vm, &change, "write elision's tables are sized for the swap devices at start")
                    continue
                }
                if d.ublk, let why = UblkDevice.unavailableReason() {
                    refuseNewDevice(vm, &change, why)
                    continue
                }
                do {
                    if devices == nil {
                        var only = change.effective
                        only.vms = [vm]
                        devices = try SwapDevices(configuration: only, logger: logger, health: health)
                        SwapServerProtection.apply(logger: logger)
                    } else {
                        try devices?.add(vm)
                    }
                } catch {
                    errors.append("vm \(vm.name): its swap device cannot be served: \(error)")
                    refuseNewDevice(vm, &change, "\(error)")
                }
            case (let a?, nil):
                if a.ublk {
                    change.refuse(vm: vm.name, key: "swap_device (removed)",
                                  because: "swap_device cannot be removed while the daemon runs (it is a ublk block device, "
                                      + "whose openers cannot be told to go); it stays") { $0.swapDevice = a }
                } else {
                    devices?.retire(vm: vm.name)
                }
            case (let a?, let b?) where a.weight != b.weight || a.reservation != b.reservation || a.limit != b.limit:
                devices?.setShare(vm: vm.name, b)
            default:
                break
            }
        }
    }

    /// A VM (or its swap device) the reload cannot add: a new VM is withdrawn whole, a device added
    /// to a VM in force is left out.
    func refuseNewDevice(_ vm: VMConfig, _ change: inout ConfigChange, _ why: String) {
        if change.added.contains(vm.name) {
            change.withdraw(vm.name, because: "its swap device: \(why)")
        } else {
            change.refuse(vm: vm.name, key: "swap_device (added)",
                          because: "swap_device cannot be added while the daemon runs (\(why))") { $0.swapDevice = nil }
        }
    }
}
