import Foundation
import Testing
@testable import SwapfairDaemon

@Suite struct MetricsTests {
    func report(vms: [StatusReport.VM], ticks: UInt64 = 3) -> StatusReport {
        StatusReport(daemon: StatusReport.Daemon(
            version: "9.9", pid: 1, config: "c", backend: "none", activity: "-", cgroupRoot: "-", intervalSeconds: 1,
            ticks: ticks, uptimeSeconds: 5, memoryBudget: 4 << 30, swapBudget: 2 << 30, lastTickMilliseconds: 2, reloads: 1,
            problems: []), vms: vms)
    }

    func vm(_ name: String, readBytes: UInt64) -> StatusReport.VM {
        StatusReport.VM(
            name: name, state: "running", cgroup: nil, weight: 200, reservation: 0, limit: nil, demand: 1 << 30,
            entitled: 1 << 30, memoryHigh: 1 << 30, memoryCurrent: 900 << 20, swapCurrent: 0, swapMax: 64 << 20, stall: 0.02,
            pressureAvg10: 1.5, activeFraction: 0.5, highEvents: 7, oomKills: 0, lastDecision: nil,
            swapDevice: StatusReport.SwapDevice(
                socket: "/s", size: 64 << 20, allocated: 0, connections: 1, reads: 10, writes: 0, readBytes: readBytes,
                writeBytes: 0, errors: 0, queued: 0, inFlight: 0, iops: 0, bytesPerSecond: 0, reservationMet: nil,
                doublePagingEvents: nil, redundantReadBytes: nil, redundantWriteBytes: nil))
    }

    /// Lines of the text format: `name{labels} value`.
    func value(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test func theReportBecomesSeriesInBaseUnitsWithTotalsAsCounters() {
        let m = MetricsExporter()
        m.update(report(vms: [vm("a", readBytes: 4096), vm("b", readBytes: 0)]))
        var text = m.text()
        #expect(value(text, #"swapfair_vm_weight{vm="a"}"#) == 200)
        #expect(value(text, #"swapfair_vm_pressure_avg10_ratio{vm="a"}"#) == 0.015)
        // Sizes as numbers of bytes (a UInt64 taken for a bit pattern would read as a tiny float).
        #expect(value(text, #"swapfair_vm_memory_current_bytes{vm="a"}"#) == Double(900 << 20))
        #expect(value(text, #"swapfair_vm_entitlement_bytes{vm="a"}"#) == Double(1 << 30))
        #expect(value(text, #"swapfair_vm_swap_max_bytes{vm="a"}"#) == Double(64 << 20))
        #expect(value(text, #"swapfair_swap_device_bytes_total{vm="a",direction="read"}"#) == 4096)
        #expect(value(text, #"swapfair_build_info{version="9.9"}"#) == 1)
        #expect(text.contains("# TYPE swapfair_swap_device_bytes_total counter"))
        #expect(text.contains("# TYPE swapfair_tick_duration_seconds histogram"))
        // A later report's totals move the counters to them; a VM gone takes its series along.
        m.update(report(vms: [vm("a", readBytes: 10_000)], ticks: 4))
        text = m.text()
        #expect(value(text, #"swapfair_swap_device_bytes_total{vm="a",direction="read"}"#) == 10_000)
        #expect(value(text, "swapfair_ticks_total") == 4)
        #expect(!text.contains(#"vm="b""#), "\(text)")
    }

    @Test func theTextfileIsReplacedWhole() throws {
        let m = MetricsExporter()
        m.update(report(vms: [vm("a", readBytes: 1)]))
        let path = "/tmp/swapfair-metrics-\(UUID().uuidString.prefix(8)).prom"
        defer { unlink(path) }
        try m.write(to: path)
        #expect(try String(contentsOfFile: path, encoding: .utf8) == m.text())
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
    }
}

@Suite struct LogLineTests {
    /// A value can never end the line or fake a field, whatever it holds.
    @Test func valuesAreQuotedAndEscapedWhenNotOnePlainWord() {
        #expect(LineLogHandler.value("web") == "web")
        #expect(LineLogHandler.value("") == "\"\"")
        #expect(LineLogHandler.value("two words") == "\"two words\"")
        #expect(LineLogHandler.value(#"bare word "=""#) == #""bare word \"=\"""#)
        #expect(LineLogHandler.value("a=b") == "\"a=b\"")
        #expect(LineLogHandler.value("line\nbreak\\") == #""line\nbreak\\""#)
        #expect(LineLogHandler.oneLine("first\nsecond") == #"first\nsecond"#)
        #expect(LineLogHandler.oneLine("plain") == "plain")
    }
}
