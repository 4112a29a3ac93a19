import ArgumentParser
import Foundation
import Synchronization
import SwapfairWorkload

#if canImport(Glibc)
import Glibc
#endif

// A VM stand-in: a process that behaves like a VM's memory. It holds some "guest RAM", touches a
// working set inside it with a chosen access pattern through phases (busy, idle), and reports what
// it got: touches per second, the latency of a touch, major faults, resident and swapped memory.
// Tests, the demo and the benchmarks drive VMs through it. It is a stand-in, not a VM.

let stopRequested = Atomic<Bool>(false)

struct Phase: CustomStringConvertible {
    enum Kind: String { case busy, idle }
    var kind: Kind
    var seconds: Double
    /// Working set for this phase, if it differs from --working-set.
    var workingSet: UInt64?

    var description: String { "\(kind.rawValue):\(seconds)s" + (workingSet.map { "@\($0 >> 20)M" } ?? "") }

    /// "busy:20", "idle:30", "busy:40@64M".
    static func parse(_ text: String) throws -> [Phase] {
        try text.split(separator: ",").map { part in
            let at = part.split(separator: "@", maxSplits: 1)
            let kv = at[0].split(separator: ":")
            guard kv.count == 2, let kind = Kind(rawValue: String(kv[0])),
                  let secs = Double(kv[1].hasSuffix("s") ? String(kv[1].dropLast()) : String(kv[1])), secs > 0 else {
                throw ValidationError("bad phase \"\(part)\": write e.g. busy:20,idle:30,busy:40@64M")
            }
            var ws: UInt64?
            if at.count == 2 {
                guard let s = parseSize(String(at[1])) else { throw ValidationError("bad working set in \"\(part)\"") }
                ws = s
            }
            return Phase(kind: kind, seconds: secs, workingSet: ws)
        }
    }
}

struct Loadgen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swapfair-loadgen",
        abstract: "A VM stand-in: holds guest-RAM-like memory, touches a working set, reports what it got (JSON lines).")

    @Option(help: "Memory to hold (e.g. 256M).") var memory: String = "256M"
    @Option(help: "Working set inside it, touched while busy (e.g. 120M).") var workingSet: String = "64M"
    @Option(help: "Access pattern: uniform or skewed (90% of touches in the hot set, the first part of the working set).")
    var pattern: String = "uniform"
    @Option(help: "Hot set of the skewed pattern (e.g. 200M). Default: a tenth of the working set.")
    var hotSet: String?
    @Option(help: "Phases after filling memory, e.g. busy:20,idle:30,busy:40@64M. Default: busy for --duration.")
    var phases: String?
    @Option(help: "Seconds to run when no phases are given.") var duration: Double = 30
    @Option(help: "Seconds per report line.") var interval: Double = 1
    @Option(help: "Write the JSON lines here instead of standard output.") var output: String?
    @Option(help: "Name put in every line.") var label: String = "standin"
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Touch one page in this many with a timed access (latency sampling).") var sampleEvery: Int = 8
    @Option(help: "Touches per second while busy (0: as fast as it can).") var rate: Double = 0
    @Flag(help: "At the end, check that every page still holds the signature written when it was filled (pages that went to swap and came back intact). Exit status 3 on any mismatch.")
    var verify = false

    func run() throws {
        guard let bytes = parseSize(memory), bytes >= 4096 else { throw ValidationError("bad --memory \(memory)") }
        guard let ws = parseSize(workingSet), ws >= 4096 else { throw ValidationError("bad --working-set \(workingSet)") }
        guard pattern == "uniform" || pattern == "skewed" else { throw ValidationError("--pattern is uniform or skewed") }
        let hotBytes = try hotSet.map { text -> UInt64 in
            guard let h = parseSize(text), h >= 4096 else { throw ValidationError("bad --hot-set \(text)") }
            guard pattern == "skewed" else { throw ValidationError("--hot-set applies to --pattern skewed only") }
            return h
        }
        let plan = try phases.map(Phase.parse) ?? [Phase(kind: .busy, seconds: duration)]
        signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in stopRequested.store(true, ordering: .relaxed) }

        let lines = try JSONLines(path: output)
        func emit(_ obj: [String: Any]) { lines.emit(obj) }

        let pages = Int(bytes / 4096)
        guard let raw = mmap(nil, Int(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else { throw ValidationError("cannot map \(memory)") }
        let words = raw.bindMemory(to: UInt64.self, capacity: Int(bytes / 8))
        var rng = XorShift(seed: seed)
        let start = now()

        // Fill: every page gets distinct, incompressible content, as a guest's RAM would have.
        let t0 = now()
        // Word 0 of every page is its signature (never touched afterwards), for --verify.
        func signature(_ p: Int) -> UInt64 { (UInt64(p) &* 0x9E37_79B9_7F4A_7C15) ^ seed ^ 0x5357_4150_4641_4952 }
        for p in 0..<pages {
            let base = p * 512
            words[base] = signature(p)
            for w in stride(from: 64, to: 512, by: 64) { words[base + w] = rng.next() }
        }
        let filled = residency()
        emit(["label": label, "event": "filled", "t": now() - start, "seconds": now() - t0,
              "memory": bytes, "rss": filled.rss, "pid": Int(getpid())])

        var totals: [[String: Any]] = []
        var t = now()
        var lastFaults = faults()
        phaseLoop: for (index, phase) in plan.enumerated() {
            let phaseWS = Int(min(phase.workingSet ?? ws, bytes) / 4096)
            let phaseStart = now()
            let phaseEnd = phaseStart + phase.seconds
            var phaseTouches = 0, phaseMajor = 0
            var phaseLat = Latencies()
            var lat = Latencies()
            t = phaseStart
            while now() < phaseEnd {
                if stopRequested.load(ordering: .relaxed) { break phaseLoop }
                let intervalEnd = min(phaseEnd, t + interval)
                var touches = 0
                lat.reset()
                if phase.kind == .busy {
                    let hot = max(1, min(phaseWS, hotBytes.map { Int($0 / 4096) } ?? phaseWS / 10))
                    let budget = rate > 0 ? Int(rate * (intervalEnd - now())) : Int.max
                    var k = 0
                    while touches < budget {
                        // Check the clock every 256 touches, not every touch.
                        if k & 255 == 0 && now() >= intervalEnd { break }
                        k += 1
                        let r = rng.next()
                        let page: Int
                        if pattern == "skewed" && r % 10 != 0 { page = Int((r >> 8) % UInt64(hot)) }
                        else { page = Int((r >> 8) % UInt64(phaseWS)) }
                        let word = page * 512 + 1 + Int(r % 511)  // never word 0: the signature
                        if touches % sampleEvery == 0 {
                            var a = timespec(), b = timespec()
                            clock_gettime(CLOCK_MONOTONIC, &a)
                            words[word] &+= 1
                            clock_gettime(CLOCK_MONOTONIC, &b)
                            lat.add(UInt64((b.tv_sec - a.tv_sec) * 1_000_000_000 + (b.tv_nsec - a.tv_nsec)))
                        } else {
                            words[word] &+= 1
                        }
                        touches += 1
                    }
                    if rate > 0 { while now() < intervalEnd && !stopRequested.load(ordering: .relaxed) { usleep(10_000) } }
                } else {
                    while now() < intervalEnd && !stopRequested.load(ordering: .relaxed) { usleep(50_000) }
                }
                let f = faults()
                let elapsed = now() - t
                let res = residency()
                emit([
                    "label": label, "t": now() - start, "phase": phase.kind.rawValue, "phase_index": index,
                    "touches": touches, "rate": Double(touches) / max(elapsed, 1e-6),
                    "majflt": f.major - lastFaults.major, "majflt_per_s": Double(f.major - lastFaults.major) / max(elapsed, 1e-6),
                    "p50_us": lat.percentile(0.5), "p99_us": lat.percentile(0.99), "max_us": lat.percentile(1.0),
                    "rss": res.rss, "swap": res.swap, "working_set": phaseWS * 4096,
                ])
                phaseTouches += touches
                phaseMajor += f.major - lastFaults.major
                phaseLat.merge(lat)
                lastFaults = f
                t = now()
            }
            let secs = max(now() - phaseStart, 1e-6)
            totals.append(["phase": phase.kind.rawValue, "index": index, "seconds": secs, "touches": phaseTouches,
                           "rate": Double(phaseTouches) / secs, "majflt_per_s": Double(phaseMajor) / secs,
                           "p50_us": phaseLat.percentile(0.5), "p99_us": phaseLat.percentile(0.99)])
        }
        emit(["label": label, "event": "summary", "t": now() - start, "phases": totals])
        if verify {
            var bad = 0, firstBad = -1
            for p in 0..<pages where words[p * 512] != signature(p) {
                bad += 1
                if firstBad < 0 { firstBad = p }
            }
            let res = residency()
            emit(["label": label, "event": "verify", "pages": pages, "bad": bad, "first_bad": firstBad,
                  "swap": res.swap, "rss": res.rss])
            munmap(raw, Int(bytes))
            if bad > 0 { Foundation.exit(3) }
            return
        }
        munmap(raw, Int(bytes))
    }
}

Loadgen.main()
