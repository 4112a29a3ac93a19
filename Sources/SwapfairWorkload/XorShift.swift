/// A fast generator for access patterns (not for anything that must be unpredictable).
public struct XorShift: Sendable {
    public var s: UInt64
    public init(seed: UInt64) { s = seed | 1 }
    public mutating func next() -> UInt64 {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17
        return s
    }
}
