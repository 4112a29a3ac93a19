// Wire constants of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md) and the big-endian
// helpers the codecs use. All numbers on the wire are big-endian.

/// Magic numbers that frame every NBD message.
public enum NBDMagic {
    /// "NBDMAGIC": first 8 bytes of the server greeting.
    public static let initPasswd: UInt64 = 0x4E42_444D_4147_4943
    /// "IHAVEOPT": second 8 bytes of the newstyle greeting and the prefix of every client option.
    public static let ihaveopt: UInt64 = 0x4948_4156_454F_5054
    /// Prefix of every fixed-newstyle option reply.
    public static let optionReply: UInt64 = 0x0003_E889_0455_65A9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668E_33EF
}

/// Sizes and limits this implementation applies.
public enum NBDLimits {
    /// Largest option payload accepted during the handshake. Legitimate options are tiny (strings
    /// are capped at 4 KiB by the spec); anything larger is treated as abuse and closes the session.
    public static let maxOptionLength: UInt32 = 64 << 10
    /// The spec's upper bound for any string (export names, messages).
    public static let maxStringLength = 4096
    public static let greetingSize = 18
    public static let requestHeaderSize = 28
    public static let simpleReplyHeaderSize = 16
    public static let structuredReplyHeaderSize = 20
    /// Reserved zeroes after the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was negotiated.
    public static let exportNameZeroPadding = 124
}

/// Handshake flags sent by the server in its greeting (16 bits).
public struct NBDHandshakeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = Self(rawValue: 1 << 0)
    public static let noZeroes = Self(rawValue: 1 << 1)
}

/// Client flags sent in reply to the greeting (32 bits).
public struct NBDClientFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedNewstyle = Self(rawValue: 1 << 0)
    public static let noZeroes = Self(rawValue: 1 << 1)
}

/// Per-export transmission flags (16 bits), sent after option haggling.
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// Must always be set.
    public static let hasFlags = Self(rawValue: 1 << 0)
    public static let readOnly = Self(rawValue: 1 << 1)
    public static let sendFlush = Self(rawValue: 1 << 2)
    public static let sendFUA = Self(rawValue: 1 << 3)
    public static let rotational = Self(rawValue: 1 << 4)
    public static let sendTrim = Self(rawValue: 1 << 5)
    public static let sendWriteZeroes = Self(rawValue: 1 << 6)
    /// Only meaningful with structured replies; cleared automatically otherwise.
    public static let sendDF = Self(rawValue: 1 << 7)
    public static let canMultiConn = Self(rawValue: 1 << 8)
    public static let sendResize = Self(rawValue: 1 << 9)
    public static let sendCache = Self(rawValue: 1 << 10)
    /// Only meaningful with sendWriteZeroes; cleared automatically otherwise.
    public static let sendFastZero = Self(rawValue: 1 << 11)
}

/// Option codes a client sends during option haggling. A struct, not an enum, because unknown codes
/// are legal on the wire and must be answered (NBD_REP_ERR_UNSUP), not rejected at parse time.
public struct NBDOption: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exportName = Self(rawValue: 1)
    public static let abort = Self(rawValue: 2)
    public static let list = Self(rawValue: 3)
    public static let peekExport = Self(rawValue: 4)
    public static let startTLS = Self(rawValue: 5)
    public static let info = Self(rawValue: 6)
    public static let go = Self(rawValue: 7)
    public static let structuredReply = Self(rawValue: 8)
    public static let listMetaContext = Self(rawValue: 9)
    public static let setMetaContext = Self(rawValue: 10)
    public static let extendedHeaders = Self(rawValue: 11)

    public var description: String {
        switch self {
        case .exportName: "EXPORT_NAME"
        case .abort: "ABORT"
        case .list: "LIST"
        case .peekExport: "PEEK_EXPORT"
        case .startTLS: "STARTTLS"
        case .info: "INFO"
        case .go: "GO"
        case .structuredReply: "STRUCTURED_REPLY"
        case .listMetaContext: "LIST_META_CONTEXT"
        case .setMetaContext: "SET_META_CONTEXT"
        case .extendedHeaders: "EXTENDED_HEADERS"
        default: "option \(rawValue)"
        }
    }
}

/// Reply types of fixed-newstyle option replies. Errors have bit 31 set.
public struct NBDOptionReplyType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ack = Self(rawValue: 1)
    public static let server = Self(rawValue: 2)
    public static let info = Self(rawValue: 3)
    public static let metaContext = Self(rawValue: 4)
    public static let errUnsup = Self(rawValue: 1 << 31 | 1)
    public static let errPolicy = Self(rawValue: 1 << 31 | 2)
    public static let errInvalid = Self(rawValue: 1 << 31 | 3)
    public static let errPlatform = Self(rawValue: 1 << 31 | 4)
    public static let errTLSRequired = Self(rawValue: 1 << 31 | 5)
    public static let errUnknown = Self(rawValue: 1 << 31 | 6)
    public static let errShutdown = Self(rawValue: 1 << 31 | 7)
    public static let errBlockSizeRequired = Self(rawValue: 1 << 31 | 8)
    public static let errTooBig = Self(rawValue: 1 << 31 | 9)

    public var isError: Bool { rawValue & (1 << 31) != 0 }
}

/// Information types requested by NBD_OPT_INFO / NBD_OPT_GO and sent in NBD_REP_INFO.
public struct NBDInfoType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let export = Self(rawValue: 0)
    public static let name = Self(rawValue: 1)
    public static let description = Self(rawValue: 2)
    public static let blockSize = Self(rawValue: 3)
}

/// Transmission-phase command types. A struct so unknown commands survive decoding and can be
/// answered with NBD_EINVAL.
public struct NBDCommand: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let read = Self(rawValue: 0)
    public static let write = Self(rawValue: 1)
    public static let disc = Self(rawValue: 2)
    public static let flush = Self(rawValue: 3)
    public static let trim = Self(rawValue: 4)
    public static let cache = Self(rawValue: 5)
    public static let writeZeroes = Self(rawValue: 6)
    public static let blockStatus = Self(rawValue: 7)
    public static let resize = Self(rawValue: 8)

    public var description: String {
        switch self {
        case .read: "READ"
        case .write: "WRITE"
        case .disc: "DISC"
        case .flush: "FLUSH"
        case .trim: "TRIM"
        case .cache: "CACHE"
        case .writeZeroes: "WRITE_ZEROES"
        case .blockStatus: "BLOCK_STATUS"
        case .resize: "RESIZE"
        default: "command \(rawValue)"
        }
    }
}

/// Per-request command flags (16 bits).
public struct NBDCommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = Self(rawValue: 1 << 0)
    public static let noHole = Self(rawValue: 1 << 1)
    public static let df = Self(rawValue: 1 << 2)
    public static let reqOne = Self(rawValue: 1 << 3)
    public static let fastZero = Self(rawValue: 1 << 4)
}

/// Structured reply chunk types (only sent when NBD_OPT_STRUCTURED_REPLY was acknowledged).
public struct NBDStructuredReplyType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let none = Self(rawValue: 0)
    public static let offsetData = Self(rawValue: 1)
    public static let offsetHole = Self(rawValue: 2)
    public static let blockStatus = Self(rawValue: 5)
    public static let error = Self(rawValue: 1 << 15 | 1)
    public static let errorOffset = Self(rawValue: 1 << 15 | 2)
    /// Structured reply flag: this chunk is the last one for its cookie.
    public static let flagDone: UInt16 = 1
}

/// The error field of a transmission reply. The spec restricts it to these values (historically
/// errno numbers, now fixed); clients treat anything else as EINVAL.
public struct NBDErrorCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let success = Self(rawValue: 0)
    public static let perm = Self(rawValue: 1)
    public static let io = Self(rawValue: 5)
    public static let noMemory = Self(rawValue: 12)
    public static let invalid = Self(rawValue: 22)
    public static let noSpace = Self(rawValue: 28)
    public static let overflow = Self(rawValue: 75)
    public static let notSupported = Self(rawValue: 95)
    public static let shutdown = Self(rawValue: 108)

    /// Maps a Linux errno from a failed backend call to the closest NBD error, as the spec asks
    /// (EDQUOT and EFBIG become ENOSPC; EROFS becomes EPERM; anything unlisted becomes EIO).
    public init(linuxErrno e: Int32) {
        switch e {
        case 0: self = .success
        case 1, 13, 30: self = .perm          // EPERM, EACCES, EROFS
        case 12: self = .noMemory
        case 22: self = .invalid
        case 27, 28, 122: self = .noSpace     // EFBIG, ENOSPC, EDQUOT
        case 75: self = .overflow
        case 95: self = .notSupported         // EOPNOTSUPP == ENOTSUP on Linux
        case 108: self = .shutdown
        default: self = .io
        }
    }

    public var description: String {
        switch self {
        case .success: "OK"
        case .perm: "EPERM"
        case .io: "EIO"
        case .noMemory: "ENOMEM"
        case .invalid: "EINVAL"
        case .noSpace: "ENOSPC"
        case .overflow: "EOVERFLOW"
        case .notSupported: "ENOTSUP"
        case .shutdown: "ESHUTDOWN"
        default: "error \(rawValue)"
        }
    }
}

// MARK: - Big-endian helpers

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

extension Collection where Element == UInt8, Index == Int {
    /// Reads a big-endian integer `offset` bytes after `startIndex` (so slices behave like arrays);
    /// nil when the bytes are not all there, so input-fed paths never trap.
    @inline(__always)
    func readBigEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T? {
        let size = MemoryLayout<T>.size
        guard offset >= 0, offset <= count - size else { return nil }
        var value: T = 0
        var i = startIndex + offset
        for _ in 0..<size {
            value = (value << 8) | T(truncatingIfNeeded: self[i])
            i += 1
        }
        return value
    }
}

/// At most `limit` bytes of `s` as UTF-8, cut on a scalar boundary so the result stays valid UTF-8
/// (the spec caps strings at 4096 bytes).
func utf8Prefix(_ s: String, limit: Int = NBDLimits.maxStringLength) -> [UInt8] {
    var out: [UInt8] = []
    for scalar in s.unicodeScalars {
        let n = UTF8.width(scalar)
        if out.count + n > limit { break }
        UTF8.encode(scalar) { out.append($0) }
    }
    return out
}
