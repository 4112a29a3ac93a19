import SwapfairSys
import SystemPackage

/// Where the sampler reads generations and asks for aging: the kernel's file, or a stand-in in tests.
public protocol LRUGenSource {
    func read() throws(SysError) -> [LRUGenFile.Memcg]
    func age(id: Int, node: Int, maxSeq: UInt64) throws(SysError)
}

/// The multi-generational LRU's debugfs file (`/sys/kernel/debug/lru_gen`): each memory cgroup's
/// generations per node, and aging on request. Aging with `force_scan` walks the cgroup's page
/// tables and moves every page accessed since the last aging into the youngest generations,
/// without reclaiming anything, so the young generations measure what a VM touched lately.
public struct LRUGenFile: Sendable, LRUGenSource {
    public let path: String

    public init(path: String = "/sys/kernel/debug/lru_gen") { self.path = path }

    public struct Generation: Sendable, Equatable {
        public var seq: UInt64
        public var ageMilliseconds: UInt64
        public var anonPages: UInt64
        public var filePages: UInt64
        public var pages: UInt64 { anonPages + filePages }
    }

    public struct Memcg: Sendable, Equatable {
        public var id: Int
        /// Path from the cgroup2 root, "/" for the root.
        public var path: String
        /// Node id → generations, oldest first.
        public var nodes: [Int: [Generation]]
    }

    /// Why MGLRU sampling cannot be used here, or nil when it can.
    public static func unavailableReason(file: String = "/sys/kernel/debug/lru_gen",
                                         enabled: String = "/sys/kernel/mm/lru_gen/enabled") -> String? {
        guard let text = try? FileAccess.read(enabled) else {
            return "the kernel has no multi-generational LRU (\(enabled) is missing)"
        }
        let t = text.trimmingCharacters(in: " \n")
        let value = t.hasPrefix("0x") ? Int(t.dropFirst(2), radix: 16) : Int(t)
        // 0x1: MGLRU on; 0x2: it walks page tables (without that every page reads as idle).
        guard let v = value, v & 0x3 == 0x3 else { return "MGLRU is not fully enabled (\(enabled) is \(t), needs 0x3)" }
        guard FileAccess.exists(file) else { return "\(file) is missing (debugfs not mounted?)" }
        return nil
    }

    /// Parses the file. Unknown or malformed lines are skipped: the file is a debugging aid and
    /// its format may grow.
    public static func parse(_ text: String) -> [Memcg] {
        var out: [Memcg] = []
        var node = 0
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let first = fields.first else { continue }
            if first == "memcg", fields.count >= 2, let id = Int(fields[1]) {
                // The path is the rest of the line (it may contain spaces).
                let path = fields.count >= 3 ? fields[2...].joined(separator: " ") : "/"
                out.append(Memcg(id: id, path: path, nodes: [:]))
            } else if first == "node", fields.count >= 2, let n = Int(fields[1]) {
                node = n
                out[out.count - 1].nodes[node, default: []] = []
            } else if fields.count >= 4, !out.isEmpty, let seq = UInt64(fields[0]), let age = UInt64(fields[1]),
                      let anon = UInt64(fields[2]), let file = UInt64(fields[3]) {
                out[out.count - 1].nodes[node, default: []].append(
                    Generation(seq: seq, ageMilliseconds: age, anonPages: anon, filePages: file))
            }
        }
        return out
    }

    public func read() throws(SysError) -> [Memcg] { Self.parse(try FileAccess.read(path, limit: 64 << 20)) }

    /// Ages one memcg on one node: `+ ID NODE MAX_SEQ 1 1`. can_swap and force_scan must both be
    /// given: without them the kernel may relabel cold anonymous pages as young.
    /// A stale MAX_SEQ succeeds without doing anything; the caller checks.
    public func age(id: Int, node: Int, maxSeq: UInt64) throws(SysError) {
        try FileAccess.write(path, "+ \(id) \(node) \(maxSeq) 1 1")
    }
}

/// Measures each VM's active fraction from MGLRU generations: every period it ages the VM's
/// memcgs (and those below them) and counts the pages in the generations born since its previous
/// aging, i.e. those touched since then, against all of the VM's pages on the LRU.
///
/// Reclaim ages a memcg too, and under pressure far more often than once a period. Counting only
/// the two youngest generations then measured what a VM touched in the last few kernel agings
/// instead of the last period: a busy VM in reclaim read as 45–85% active, and was taxed as idle.
/// Every generation since our own previous aging counts, whoever created it.
///
/// Limits: pages a process faulted in before it was moved into the VM's group are not walked
/// (start the VMM inside its group); swapped-out and mlocked pages are not counted; a
/// transparent huge page counts as 512 pages from one access.
public final class LRUGenSampler {
    public let file: any LRUGenSource
    /// For each memcg id and node, the youngest generation after this sampler's last aging. The
    /// first reading after a group appears counts every page as young, so it is not reported.
    private var agedUpTo: [Int: [Int: UInt64]] = [:]
    /// What the last `sample` saw, one line per memcg and node (for debug logs).
    public private(set) var lastDetails: [String] = []
    /// Targets whose aging made no progress in the last `sample` (their MAX_SEQ did not move).
    public private(set) var lastStuck: [String] = []
    /// A fall of the fraction by more than this in one period waits for the next to confirm it.
    public static let collapse = 0.5
    /// The last fraction reported per target, and the targets whose fall is being held.
    private var reported: [String: Double] = [:]
    private var holding: Set<String> = []

    public init(file: any LRUGenSource = LRUGenFile()) { self.file = file }

    /// Pages in the generations numbered `since` or later (touched since that generation was
    /// created), and all pages.
    public static func young(_ gens: [LRUGenFile.Generation], since: UInt64) -> (young: UInt64, total: UInt64) {
        var young: UInt64 = 0, total: UInt64 = 0
        for g in gens {
            total += g.pages
            if g.seq >= since { young += g.pages }
        }
        return (young, total)
    }

    /// The ids of the memcgs that hold the most pages among those with the same path.
    public static func largestPerPath(_ memcgs: [LRUGenFile.Memcg]) -> Set<Int> {
        var best: [String: (id: Int, pages: UInt64)] = [:]
        for m in memcgs {
            let pages = m.nodes.values.reduce(UInt64(0)) { $0 + $1.reduce(0) { $0 + $1.pages } }
            if let b = best[m.path], b.pages >= pages { continue }
            best[m.path] = (m.id, pages)
        }
        return Set(best.values.map(\.id))
    }

    /// One period. `targets` are cgroup paths relative to the root ("lab.slice/vm-a").
    /// Returns the fraction for each target that could be measured.
    public func sample(_ targets: [String]) throws(SysError) -> [String: Double] {
        let before = try file.read()
        let wanted = targets.map { "/" + $0 }
        func owner(_ path: String) -> String? {
            wanted.first { path == $0 || path.hasPrefix($0 + "/") }
        }
        // A removed group's memcg lingers, dying, under the same path while pages are still charged
        // to it, and a group made again with that name (a VM restarted in its scope) sits beside
        // it. The dying one's pages are nobody's working set: no process maps them, so they never
        // turn young, and counting them would read the live VM as partly idle. Of the memcgs that
        // share a path the one holding the most pages is taken as the live one.
        let live = Self.largestPerPath(before.filter { owner($0.path) != nil })
        var aged: Set<Int> = []
        for m in before where owner(m.path) != nil && live.contains(m.id) {
            for (node, gens) in m.nodes {
                guard let maxSeq = gens.last?.seq else { continue }
                // A stale MAX_SEQ (reclaim aged it meanwhile) succeeds without aging. The period is
                // still counted from reclaim's generations, whose walk may skip page tables the
                // forced one visits: the one known way this can read low.
                do { try file.age(id: m.id, node: node, maxSeq: maxSeq) } catch {
                    // EINVAL: the memcg went away; it is measured next time.
                    continue
                }
                aged.insert(m.id)
            }
        }
        let after = try file.read()
        var details: [String] = []
        let beforeMax = Dictionary(before.map { m in (m.id, m.nodes.mapValues { $0.last?.seq ?? 0 }) }) { a, _ in a }
        var active: [String: UInt64] = [:], total: [String: UInt64] = [:]
        var measured: Set<String> = []
        var next: [Int: [Int: UInt64]] = [:]
        var stuck: Set<String> = []
        for m in after {
            guard let target = owner(m.path), aged.contains(m.id), live.contains(m.id) else { continue }
            var counted = false
            for (node, gens) in m.nodes {
                guard let maxSeq = gens.last?.seq else { continue }
                // Every aging, ours or reclaim's, adds a generation. If none was added, our aging
                // did nothing: the youngest generation still holds what was touched before the
                // previous aging, and counting it would read an idle VM as busy. Nothing is
                // measured then, and the next period only primes.
                guard let previousMax = beforeMax[m.id]?[node], maxSeq > previousMax else {
                    stuck.insert(String(target.dropFirst()))
                    continue
                }
                next[m.id, default: [:]][node] = maxSeq
                // The youngest generation after the previous aging holds what was touched in the
                // period before it; the ones after it what was touched since.
                guard let since = agedUpTo[m.id]?[node], since <= maxSeq else { continue }
                let (y, t) = Self.young(gens, since: since)
                details.append("\(m.path) node \(node): since \(since), max \(beforeMax[m.id]?[node] ?? 0) → \(maxSeq), "
                               + "young \(y) of \(t); " + gens.map { "\($0.seq):\($0.pages)" }.joined(separator: " "))
                active[target, default: 0] += y
                total[target, default: 0] += t
                counted = true
            }
            if counted { measured.insert(target) }
        }
        // Only what was aged now is remembered: ids that are gone may be reused by the kernel for
        // new groups, and one whose aging failed is primed again next period.
        agedUpTo = next
        lastStuck = stuck.sorted()
        var out: [String: Double] = [:]
        for target in measured {
            let t = total[target] ?? 0
            let name = String(target.dropFirst()), f = t == 0 ? 0 : Double(active[target] ?? 0) / Double(t)
            // An aging can move no page at all although the VM touched them. In the lab, under
            // heavy reclaim, a VM touching its whole working set 300,000 times a second read
            // 100%, 0%, 100% in three periods, and the 0% cost it part of its memory for a few
            // seconds. Reclaim's own aging, which skips page tables the forced one would visit,
            // is one way (see above); a walk the kernel could not set up is another. So a fall of
            // more than half is taken only when the next period confirms it: a VM that really
            // went idle is read so one period later.
            if let previous = reported[name], previous - f > Self.collapse, !holding.contains(name) {
                holding.insert(name)
                out[name] = previous
                let percent = { (x: Double) in "\(Int((x * 100).rounded()))%" }
                details.append("\(target): read \(percent(f)) active, held at \(percent(previous)) until the next period "
                               + "confirms the fall")
            } else {
                holding.remove(name)
                reported[name] = f
                out[name] = f
            }
        }
        let asked = Set(targets)
        reported = reported.filter { asked.contains($0.key) }
        holding = holding.filter { asked.contains($0) }
        lastDetails = details
        return out
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        return String(drop { chars.contains($0) }.reversed().drop { chars.contains($0) }.reversed())
    }
}
