import SwapfairPolicy

/// Renders a status report as a table for a terminal.
public enum StatusTable {
    public static func render(_ r: StatusReport) -> String {
        let d = r.daemon
        var out = "swapfaird \(d.version) (pid \(d.pid)), \(d.backend) at \(d.cgroupRoot), config \(d.config), "
            + "activity from \(d.activity == "lru_gen" ? "MGLRU sampling" : "LRU lists")\n"
        out += "budget \(Format.bytes(d.memoryBudget)) RAM, \(Format.bytes(d.swapBudget)) swap; "
        out += "tick \(String(format: "%.1f", d.intervalSeconds))s, \(d.ticks) ticks, last took "
        out += String(format: "%.2f ms\n\n", d.lastTickMilliseconds)
        let header = ["VM", "WEIGHT", "RESERVED", "ENTITLED", "MEMORY.HIGH", "CURRENT", "SWAP / MAX", "STALL", "ACTIVE"]
        var rows: [[String]] = []
        for vm in r.vms {
            if vm.state != "running" {
                rows.append([vm.name, weight(vm.weight), Format.bytes(vm.reservation), "-", "-", "-", "-", "-",
                             "(\(vm.state))"])
                continue
            }
            rows.append([
                vm.name, weight(vm.weight), Format.bytes(vm.reservation), opt(vm.entitled), opt(vm.memoryHigh),
                opt(vm.memoryCurrent), "\(opt(vm.swapCurrent)) / \(opt(vm.swapMax))",
                vm.stall.map { Format.percent($0) } ?? "-", vm.activeFraction.map { Format.percent($0) } ?? "-",
            ])
        }
        out += table(header, rows)
        let prefetched = r.vms.compactMap { vm in vm.prefetched.flatMap { $0 > 0 ? "\(vm.name) \(Format.bytes($0))" : nil } }
        if !prefetched.isEmpty {
            out += "swap-in prefetch (read back ahead of faults after waking): " + prefetched.joined(separator: ", ") + "\n"
        }
        let devices = r.vms.compactMap { vm in vm.swapDevice.map { (vm.name, $0) } }
        if !devices.isEmpty {
            out += "\nswap devices\n"
            out += table(["VM", "SOCKET", "SIZE", "ALLOCATED", "CLIENTS", "IOPS", "THROUGHPUT", "READ", "WRITTEN",
                          "QUEUED", "ERRORS", "RESERVATION"],
                         devices.map { name, d in
                             [name, d.socket, Format.bytes(d.size), Format.bytes(d.allocated), "\(d.connections)",
                              String(format: "%.0f", d.iops), Format.bytes(UInt64(d.bytesPerSecond)) + "/s",
                              Format.bytes(d.readBytes), Format.bytes(d.writeBytes), "\(d.queued)", "\(d.errors)",
                              d.reservationMet.map { $0 ? "met" : "NOT MET" } ?? "-"]
                         })
            let blocks = devices.compactMap { name, d in d.blockDevice.map { "\(name) \($0)" } }
            if !blocks.isEmpty { out += "also as ublk block devices: " + blocks.joined(separator: ", ") + "\n" }
            let tracked = devices.filter { $0.1.doublePagingEvents != nil }
            if !tracked.isEmpty {
                out += "\ndouble paging (guest swap-outs of pages the host had just swapped in)\n"
                out += table(["VM", "EVENTS", "REDUNDANT READ", "REDUNDANT WRITE", "ELIDED WRITE", "SHARED READ"], tracked.map { name, d in
                    [name, "\(d.doublePagingEvents ?? 0)", opt(d.redundantReadBytes), opt(d.redundantWriteBytes),
                     opt(d.elidedWriteBytes), opt(d.sharedReadBytes)]
                })
            }
        }
        if let h = r.hostSwap {
            out += "\nhost swap on \(h.device): swapped in \(Format.bytes(h.swapInBytes)), out \(Format.bytes(h.swapOutBytes))"
            if let e = h.elidedBytes {
                out += "; unchanged pages re-swapped as references \(Format.bytes(e)), slots referring elsewhere "
                    + "\(h.references ?? 0), shared blocks \(h.sharedBlocks ?? 0), spare blocks \(h.spareBlocks ?? 0)"
            }
            out += "\n"
        }
        let shifting = r.vms.compactMap { vm in vm.reclaimShift.map { (vm.name, $0) } }
        if !shifting.isEmpty {
            out += "\nreclaim shifting (the guest's balloon takes RAM and memory.high is raised by as much)\n"
            out += table(["VM", "GUEST RAM", "BALLOON LEAVES", "SHIFT", "RAISED", "BALLOON"], shifting.map { name, s in
                [name, opt(s.guestMemory), opt(s.balloonActual), Format.bytes(s.shift), Format.bytes(s.raised),
                 s.error.map { "(\($0))" } ?? s.qmp]
            })
        }
        return out
    }

    static func weight(_ w: Double) -> String { w == w.rounded() ? String(Int(w)) : String(format: "%.1f", w) }
    static func opt(_ b: UInt64?) -> String { b.map { Format.bytes($0) } ?? "-" }

    /// Left-aligned first column, right-aligned numbers, two spaces between columns.
    public static func table(_ header: [String], _ rows: [[String]]) -> String {
        let all = [header] + rows
        let widths = header.indices.map { c in all.map { $0.indices.contains(c) ? $0[c].count : 0 }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { c, cell in
                let pad = String(repeating: " ", count: max(0, widths[c] - cell.count))
                return c == 0 || c == row.count - 1 && cell.hasPrefix("(") ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }
}
