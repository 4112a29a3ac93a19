/// The slots of a guest's swap disk, handed out as Linux hands out a rotating swap device's: in
/// runs of consecutive slots, so that a reclaim batch lands on neighbouring blocks and goes out
/// as a few large writes. After `clusterSize` slots from one run, the lowest wholly free run of
/// that many slots starts the next (keeping the used part of the disk small and together); with
/// none, the next free slot after the last one handed out.
public struct SwapSlots: Sendable {
    public let count: Int
    public let clusterSize: Int
    public private(set) var inUse = 0
    var used: [Bool]
    /// The slot tried next.
    var next = 0
    /// Slots left to hand out before a new run is looked for.
    var leftInRun = 0

    public init(count: Int, clusterSize: Int = 256) {
        precondition(count > 0 && clusterSize > 0)
        self.count = count
        self.clusterSize = clusterSize
        used = Array(repeating: false, count: count)
    }

    /// More than half the slots in use: Linux then frees a page's slot as the page is read back
    /// (`vm_swap_full`), rather than keep a copy of a page that is in memory again.
    public var isHalfFull: Bool { inUse * 2 > count }

    public func isUsed(_ slot: Int) -> Bool { used[slot] }

    /// A free slot, or nil when all are in use.
    public mutating func allocate() -> Int? {
        guard inUse < count else { return nil }
        if leftInRun == 0 {
            leftInRun = clusterSize
            if let start = firstFreeRun() { next = start }
        }
        leftInRun -= 1
        while used[next] { next = (next + 1) % count }
        let slot = next
        used[slot] = true
        inUse += 1
        next = (slot + 1) % count
        return slot
    }

    public mutating func free(_ slot: Int) {
        precondition(used[slot], "slot \(slot) freed twice")
        used[slot] = false
        inUse -= 1
    }

    /// The lowest slot that starts `clusterSize` free slots in a row.
    func firstFreeRun() -> Int? {
        guard count - inUse >= clusterSize else { return nil }
        var run = 0
        for s in 0..<count {
            run = used[s] ? 0 : run + 1
            if run == clusterSize { return s + 1 - clusterSize }
        }
        return nil
    }
}
