/// Which physical blocks of the host's swap volume hold what, when guests' swap blocks may refer
/// to them instead of holding a copy (write elision).
///
/// The host swap device shows `hostSlots` slots; its volume has `physicalBlocks` ≥ that, the rest
/// being spare. Slot s lives in physical block s until it is redirected. A guest block that was
/// elided refers to a physical block; while it does, that block is copy-on-write for the host:
/// the host's next write of its slot goes to a spare block and the slot is redirected there, so
/// the guest's content stays put. Spare blocks are never promised twice: a new reference to a
/// block the host still maps is allowed only while the spares cover every such block.
///
/// Only the host map and the guests' references are stored (in `BlockTable`s, which survive the
/// daemon's death); counts, owners and the spare list are rebuilt from them at start, and the
/// rebuild checks that they agree. Stores are ordered so that a death between any two of them
/// leaves the tables consistent: data is written before a map entry points at it, and an entry
/// stops pointing at a block before the block can be reused. Not thread-safe: its owner locks.
public struct SharedBlockMap: Sendable {
    /// The key, among the guests' tables, of the host's own references: a slot the host wrote
    /// again with bytes another block already held (a re-swap of an unchanged page) refers to
    /// that block, as a guest block would. No VM can have this name.
    public static let hostReferences = "@host"
    public let hostSlots: Int
    public let physicalBlocks: Int
    /// Slot → 0 (its own block) or physical block + 1.
    let hostMap: BlockTable
    /// Per VM: guest block → 0 (its own volume holds it) or physical block + 1.
    var guests: [String: BlockTable]
    /// Guest references per physical block.
    var refs: [UInt16]
    /// Physical block → host slot + 1 that maps to it, or 0.
    var owner: [UInt32]
    /// Physical blocks nobody uses: the spares for redirects.
    var spare: [UInt32]
    /// References each VM holds (most hold none: their reads and writes skip the map).
    var held: [String: Int]
    /// Referenced blocks the host still maps: each may need one spare.
    public private(set) var promised = 0
    /// What the rebuild found wrong; non-empty means no new references are made.
    public private(set) var problems: [String] = []

    public init(hostMap: BlockTable, physicalBlocks: Int, guests: [String: BlockTable]) {
        precondition(physicalBlocks >= hostMap.count)
        self.hostSlots = hostMap.count
        self.physicalBlocks = physicalBlocks
        self.hostMap = hostMap
        self.guests = guests
        refs = Array(repeating: 0, count: physicalBlocks)
        owner = Array(repeating: 0, count: physicalBlocks)
        spare = []
        spare.reserveCapacity(physicalBlocks)
        held = Dictionary(uniqueKeysWithValues: guests.keys.map { ($0, 0) })
        for s in 0..<hostSlots {
            let e = hostMap[s]
            let p = e == 0 ? s : Int(e) - 1
            guard p < physicalBlocks else {
                problems.append("host slot \(s) maps to block \(p), past the volume's \(physicalBlocks)")
                continue
            }
            if owner[p] != 0 {
                problems.append("host slots \(owner[p] - 1) and \(s) both map to block \(p)")
                continue
            }
            owner[p] = UInt32(s + 1)
        }
        for (vm, table) in guests.sorted(by: { $0.key < $1.key }) {
            var bad = 0
            for b in 0..<table.count where table[b] != 0 {
                let p = Int(table[b]) - 1
                if p >= physicalBlocks || refs[p] == UInt16.max { bad += 1; continue }
                if refs[p] == 0 { sharedBlocks += 1 }
                refs[p] += 1
                held[vm, default: 0] += 1
            }
            if bad > 0 { problems.append("\(bad) blocks of VM \(vm) refer past the host volume") }
        }
        for p in (0..<physicalBlocks).reversed() {
            if owner[p] == 0 && refs[p] == 0 { spare.append(UInt32(p)) }
            if owner[p] != 0 && refs[p] > 0 { promised += 1 }
        }
        if promised > spare.count {
            problems.append("\(promised) shared blocks are still the host's but only \(spare.count) spares are left")
        }
    }

    /// Where slot `s` lives now.
    public func physical(ofSlot s: Int) -> Int {
        let e = hostMap[s]
        return e == 0 ? s : Int(e) - 1
    }

    /// Guest references to physical block `p`.
    public func references(_ p: Int) -> Int { Int(refs[p]) }

    /// Blocks with at least one guest reference, and all references.
    /// Kept as references come and go: the status reads it every tick, under the lock the
    /// host's swap path takes.
    public private(set) var sharedBlocks = 0
    public var spareBlocks: Int { spare.count }

    /// Whether VM `vm` holds any reference.
    public func holdsReferences(_ vm: String) -> Bool { (held[vm] ?? 0) > 0 }
    public func referencesHeld(_ vm: String) -> Int { held[vm] ?? 0 }

    /// The block the host's write of slot `s` must go to: its own, or a spare when a guest refers
    /// to it; nil when there is none (only tables that failed their rebuild get here: the write
    /// then fails rather than overwrite a guest's page). A spare taken here must be given to
    /// `commitWrite` or `abandonWrite`.
    public mutating func writeTarget(slot s: Int) -> Int? {
        let p = physical(ofSlot: s)
        guard p < physicalBlocks else { return nil }
        guard refs[p] > 0 else { return p }
        // The promise made when the first reference came guarantees a spare.
        guard let q = spare.popLast() else { return nil }
        return Int(q)
    }

    /// Keeps block `p`, which a guest block refers to, from reuse while it is being read.
    public mutating func pin(_ p: Int) -> Bool {
        guard p < physicalBlocks, refs[p] > 0, refs[p] < UInt16.max else { return false }
        refs[p] += 1
        return true
    }

    public mutating func unpin(_ p: Int) { drop(p) }

    /// The write of slot `s` to block `target` completed.
    public mutating func commitWrite(slot s: Int, target: Int) {
        let p = physical(ofSlot: s)
        guard target != p else { return }
        hostMap[s] = target == s ? 0 : UInt32(target + 1)
        owner[target] = UInt32(s + 1)
        owner[p] = 0
        // p was redirected from because guests referred to it; if they all let go meanwhile it is
        // a spare now, else it stays theirs and no longer needs a promise.
        if refs[p] > 0 { promised -= 1 } else { spare.append(UInt32(p)) }
    }

    /// The write of slot `s` to a spare failed: the spare goes back.
    public mutating func abandonWrite(slot s: Int, target: Int) {
        if target != physical(ofSlot: s) { spare.append(UInt32(target)) }
    }

    /// Makes VM `vm`'s block `b` refer to physical block `p`, which holds the block's content.
    /// False (and nothing changed) when the spares could not cover it or the block is free.
    public mutating func refer(vm: String, block b: Int, to p: Int) -> Bool {
        guard problems.isEmpty, let table = guests[vm], b < table.count, p < physicalBlocks,
              refs[p] < UInt16.max else { return false }
        if table[b] == UInt32(p + 1) { return true }
        let hostOwned = owner[p] != 0
        if !hostOwned && refs[p] == 0 { return false }  // a spare: its content is not kept
        if hostOwned && refs[p] == 0 && promised + 1 > spare.count { return false }
        if hostOwned && refs[p] == 0 { promised += 1 }
        if refs[p] == 0 { sharedBlocks += 1 }
        refs[p] += 1
        let old = table[b]
        table[b] = UInt32(p + 1)
        if old != 0 { drop(Int(old) - 1) } else { held[vm, default: 0] += 1 }
        return true
    }

    /// The physical block VM `vm`'s block `b` refers to, if any.
    public func reference(vm: String, block b: Int) -> Int? {
        guard let table = guests[vm], b < table.count, table[b] != 0 else { return nil }
        return Int(table[b]) - 1
    }

    /// VM `vm`'s block `b` holds its own content again (written or trimmed).
    public mutating func release(vm: String, block b: Int) {
        guard let table = guests[vm], b < table.count, table[b] != 0 else { return }
        let p = Int(table[b]) - 1
        table[b] = 0
        held[vm, default: 1] -= 1
        drop(p)
    }

    private mutating func drop(_ p: Int) {
        guard p < physicalBlocks, refs[p] > 0 else { return }
        refs[p] -= 1
        guard refs[p] == 0 else { return }
        sharedBlocks -= 1
        if owner[p] != 0 { promised -= 1 } else { spare.append(UInt32(p)) }
    }

    /// Whether a fresh rebuild from the tables would find what this one holds: the check a
    /// restarted daemon (and the tests) make of the shared-block accounting.
    public func agreesWithTables() -> Bool {
        let fresh = SharedBlockMap(hostMap: hostMap, physicalBlocks: physicalBlocks, guests: guests)
        return fresh.refs == refs && fresh.sharedBlocks == sharedBlocks && fresh.owner == owner && fresh.promised == promised && fresh.held == held
            && Set(fresh.spare) == Set(spare) && fresh.problems == problems
    }
}
