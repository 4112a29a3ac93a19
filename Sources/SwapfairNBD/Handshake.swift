// Server side of the fixed-newstyle NBD handshake as a pure state machine: bytes in, events out.
// It never touches a socket; the caller writes `.send` bytes in order and acts on the rest.
//
// Supported: NBD_OPT_EXPORT_NAME, ABORT, LIST, INFO, GO (with NBD_INFO_EXPORT, BLOCK_SIZE, NAME,
// DESCRIPTION). NBD_OPT_STRUCTURED_REPLY is refused with NBD_REP_ERR_UNSUP by default (the Linux
// kernel client never asks for it, and simple replies keep the transmission phase simpler); with
// `allowStructuredReplies` it is acknowledged and `.done` reports `structuredReplies: true`, after
// which READ replies MUST use `NBDReply.structured*`. Everything else (STARTTLS, meta contexts,
// extended headers, unknown codes) gets NBD_REP_ERR_UNSUP and negotiation continues.

/// One export as the server advertises it.
public struct NBDExportInfo: Sendable, Hashable {
    public var name: String
    /// Bytes; should be a multiple of `minimumBlock` or the tail is unreachable.
    public var size: UInt64
    /// `NBDTransmissionFlags` raw value; HAS_FLAGS is added when sent.
    public var transmissionFlags: UInt16
    /// The spec's "minimum block size": alignment required of offsets and lengths.
    public var minimumBlock: UInt32
    public var preferredBlock: UInt32
    /// The spec's "maximum payload size": largest READ/WRITE length accepted.
    public var maximumBlock: UInt32
    public var description: String?

    public init(name: String, size: UInt64, transmissionFlags: UInt16,
                minimumBlock: UInt32 = 4096, preferredBlock: UInt32 = 4096,
                maximumBlock: UInt32 = 32 << 20, description: String? = nil) {
        self.name = name
        self.size = size
        self.transmissionFlags = transmissionFlags
        self.minimumBlock = minimumBlock
        self.preferredBlock = preferredBlock
        self.maximumBlock = maximumBlock
        self.description = description
    }

    /// Why this configuration breaks a spec rule, or nil. The codec tolerates bad values (it never
    /// divides by zero or traps), but clients may reject them, so callers should check at startup.
    public var configurationProblem: String? {
        func pow2(_ v: UInt32) -> Bool { v != 0 && v & (v - 1) == 0 }
        if name.utf8.count > NBDLimits.maxStringLength { return "export name longer than 4096 bytes" }
        if let d = description, d.utf8.count > NBDLimits.maxStringLength { return "description longer than 4096 bytes" }
        if !pow2(minimumBlock) || minimumBlock > 65536 { return "minimum block must be a power of 2 no larger than 65536" }
        if !pow2(preferredBlock) || preferredBlock < max(minimumBlock, 512) {
            return "preferred block must be a power of 2 at least max(minimum block, 512)"
        }
        if maximumBlock < preferredBlock { return "maximum payload must be at least the preferred block" }
        if size % UInt64(minimumBlock) != 0 { return "size is not a multiple of the minimum block" }
        return nil
    }

    /// The flags actually advertised: HAS_FLAGS is mandatory, DF requires structured replies and
    /// FAST_ZERO requires WRITE_ZEROES (both MUST-rules in the spec).
    func advertisedFlags(structuredReplies: Bool) -> UInt16 {
        var f = NBDTransmissionFlags(rawValue: transmissionFlags)
        f.insert(.hasFlags)
        if !structuredReplies { f.remove(.sendDF) }
        if !f.contains(.sendWriteZeroes) { f.remove(.sendFastZero) }
        return f.rawValue
    }
}

public enum NBDHandshakeEvent: Sendable, Equatable {
    /// Bytes to write to the client, in order.
    case send([UInt8])
    /// Negotiation finished: write the preceding `.send`s, then switch to the transmission phase
    /// with `NBDRequestDecoder(export:structuredReplies:)`. `export.transmissionFlags` holds the
    /// flags actually advertised. Bytes the client already sent past this point are in
    /// `NBDServerHandshake.remainingBytes`.
    case done(export: NBDExportInfo, structuredReplies: Bool)
    /// Hard disconnect (protocol violation, or an EXPORT_NAME that cannot be satisfied).
    case close(reason: String)
    /// The client sent NBD_OPT_ABORT: write the preceding `.send` (the ACK), then close.
    case abort
}

public struct NBDServerHandshake: Sendable {
    public let exports: [NBDExportInfo]
    public let allowStructuredReplies: Bool
    public private(set) var clientFlags: NBDClientFlags = []
    public private(set) var structuredReplies = false
    /// Bytes that arrived after `.done`; they are the start of the transmission phase.
    public private(set) var remainingBytes: [UInt8] = []

    private enum Phase: Sendable {
        case clientFlags
        case optionHeader
        case optionData(NBDOption, length: Int)
        case finished
        case closed
    }

    private var phase: Phase = .clientFlags
    private var buffer: [UInt8] = []
    private var head = 0

    public static let handshakeFlags: NBDHandshakeFlags = [.fixedNewstyle, .noZeroes]

    /// `exports` are looked up by exact name; an empty name selects the export literally named ""
    /// or, failing that, the only export when there is exactly one.
    public init(exports: [NBDExportInfo], allowStructuredReplies: Bool = false) {
        self.exports = exports
        self.allowStructuredReplies = allowStructuredReplies
    }

    /// The 18-byte newstyle greeting the server sends first.
    public func greeting() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(NBDLimits.greetingSize)
        out.appendBigEndian(NBDMagic.initPasswd)
        out.appendBigEndian(NBDMagic.ihaveopt)
        out.appendBigEndian(Self.handshakeFlags.rawValue)
        return out
    }

    public var isFinished: Bool { if case .finished = phase { true } else { false } }
    public var isClosed: Bool { if case .closed = phase { true } else { false } }

    /// Consumes client bytes (any split) and returns what to do, in order. After `.close` or
    /// `.abort` further input is ignored; after `.done` it is appended to `remainingBytes`.
    public mutating func feed(_ bytes: [UInt8]) -> [NBDHandshakeEvent] {
        switch phase {
        case .finished: remainingBytes.append(contentsOf: bytes); return []
        case .closed: return []
        default: break
        }
        buffer.append(contentsOf: bytes)
        var events: [NBDHandshakeEvent] = []
        parsing: while true {
            let available = buffer.count - head
            switch phase {
            case .clientFlags:
                guard let raw = buffer.readBigEndian(UInt32.self, at: head) else { break parsing }
                head += 4
                let flags = NBDClientFlags(rawValue: raw)
                // The spec: the server MUST drop the connection on any flag it does not know.
                // A missing FIXED_NEWSTYLE bit is tolerated (spec: MAY); such clients only send
                // EXPORT_NAME, whose reply is the same either way.
                guard flags.isSubset(of: [.fixedNewstyle, .noZeroes]) else {
                    close("unknown client flags 0x\(String(raw, radix: 16))", &events)
                    break parsing
                }
                clientFlags = flags
                phase = .optionHeader
            case .optionHeader:
                guard available >= 16,
                      let magic = buffer.readBigEndian(UInt64.self, at: head),
                      let code = buffer.readBigEndian(UInt32.self, at: head + 8),
                      let length = buffer.readBigEndian(UInt32.self, at: head + 12)
                else { break parsing }
                head += 16
                guard magic == NBDMagic.ihaveopt else {
                    close("bad option magic 0x\(String(magic, radix: 16))", &events)
                    break parsing
                }
                // Skipping an arbitrarily long option would let a client pin us reading garbage;
                // the spec allows a hard disconnect for denial-of-service behaviour.
                guard length <= NBDLimits.maxOptionLength else {
                    close("option \(NBDOption(rawValue: code)) length \(length) exceeds \(NBDLimits.maxOptionLength)", &events)
                    break parsing
                }
                phase = .optionData(NBDOption(rawValue: code), length: Int(length))
            case .optionData(let option, let length):
                guard available >= length else { break parsing }
                let data = Array(buffer[head..<(head + length)])
                head += length
                phase = .optionHeader
                handle(option, data, &events)
            case .finished, .closed:
                break parsing
            }
        }
        switch phase {
        case .finished:
            remainingBytes.append(contentsOf: buffer[head...])
            buffer = []
        case .closed:
            buffer = []
        default:
            buffer.removeSubrange(0..<head)
        }
        head = 0
        return events
    }

    // MARK: - Options

    private mutating func handle(_ option: NBDOption, _ data: [UInt8], _ events: inout [NBDHandshakeEvent]) {
        switch option {
        case .exportName:
            exportName(data, &events)
        case .abort:
            // The spec: data SHOULD be ignored; reply ACK and stop.
            events.append(.send(Self.reply(option, .ack)))
            events.append(.abort)
            phase = .closed
        case .list:
            guard data.isEmpty else {
                events.append(.send(Self.reply(option, .errInvalid, message: "LIST takes no data")))
                return
            }
            var out: [UInt8] = []
            for export in exports {
                let name = utf8Prefix(export.name)
                var payload: [UInt8] = []
                payload.appendBigEndian(UInt32(name.count))
                payload += name
                // Text after the name is free-form and meant for humans: the description.
                if let d = export.description { payload += utf8Prefix(d) }
                out += Self.reply(option, .server, payload: payload)
            }
            out += Self.reply(option, .ack)
            events.append(.send(out))
        case .info, .go:
            infoOrGo(option, data, &events)
        case .structuredReply:
            guard allowStructuredReplies else {
                events.append(.send(Self.reply(option, .errUnsup, message: "structured replies not supported")))
                return
            }
            guard data.isEmpty else {
                events.append(.send(Self.reply(option, .errInvalid, message: "STRUCTURED_REPLY takes no data")))
                return
            }
            structuredReplies = true
            events.append(.send(Self.reply(option, .ack)))
        default:
            // Baseline rule: unknown options get ERR_UNSUP and parsing continues.
            events.append(.send(Self.reply(option, .errUnsup, message: "\(option) not supported")))
        }
    }

    /// The legacy way in: there is no error reply, so any failure is a hard disconnect.
    private mutating func exportName(_ data: [UInt8], _ events: inout [NBDHandshakeEvent]) {
        guard data.count <= NBDLimits.maxStringLength else {
            close("EXPORT_NAME longer than 4096 bytes", &events)
            return
        }
        guard let export = lookup(data[...]) else {
            close("EXPORT_NAME: unknown export \"\(String(decoding: data, as: UTF8.self))\"", &events)
            return
        }
        let flags = export.advertisedFlags(structuredReplies: structuredReplies)
        var out: [UInt8] = []
        out.appendBigEndian(export.size)
        out.appendBigEndian(flags)
        if !clientFlags.contains(.noZeroes) {
            out += [UInt8](repeating: 0, count: NBDLimits.exportNameZeroPadding)
        }
        events.append(.send(out))
        finish(export, flags, &events)
    }

    private mutating func infoOrGo(_ option: NBDOption, _ data: [UInt8], _ events: inout [NBDHandshakeEvent]) {
        // Layout: u32 name length, name, u16 request count, u16 × count. Every length must add up
        // exactly; anything else is ERR_INVALID and negotiation continues.
        guard let nameLength = data.readBigEndian(UInt32.self, at: 0), data.count >= 6,
              UInt64(nameLength) <= UInt64(data.count - 6) else {
            events.append(.send(Self.reply(option, .errInvalid, message: "\(option): name length exceeds option data")))
            return
        }
        let n = Int(nameLength)
        guard n <= NBDLimits.maxStringLength else {
            events.append(.send(Self.reply(option, .errInvalid, message: "\(option): export name longer than 4096 bytes")))
            return
        }
        guard let count = data.readBigEndian(UInt16.self, at: 4 + n), data.count == 6 + n + 2 * Int(count) else {
            events.append(.send(Self.reply(option, .errInvalid, message: "\(option): information request count does not match option length")))
            return
        }
        var requested = Set<NBDInfoType>()
        for i in 0..<Int(count) {
            if let t = data.readBigEndian(UInt16.self, at: 6 + n + 2 * i) { requested.insert(NBDInfoType(rawValue: t)) }
        }
        let nameBytes = data[4..<(4 + n)]
        guard let export = lookup(nameBytes) else {
            events.append(.send(Self.reply(option, .errUnknown,
                                           message: "unknown export \"\(String(decoding: nameBytes, as: UTF8.self))\"")))
            return
        }
        let flags = export.advertisedFlags(structuredReplies: structuredReplies)
        var out: [UInt8] = []
        var info: [UInt8] = []
        info.appendBigEndian(NBDInfoType.export.rawValue)
        info.appendBigEndian(export.size)
        info.appendBigEndian(flags)
        out += Self.reply(option, .info, payload: info)
        // Sent even unasked: our alignment is stricter than the default of 1, so clients that
        // look at it can comply; those that don't still get clean EINVALs.
        info = []
        info.appendBigEndian(NBDInfoType.blockSize.rawValue)
        info.appendBigEndian(export.minimumBlock)
        info.appendBigEndian(export.preferredBlock)
        info.appendBigEndian(export.maximumBlock)
        out += Self.reply(option, .info, payload: info)
        if requested.contains(.name) {
            info = []
            info.appendBigEndian(NBDInfoType.name.rawValue)
            info += utf8Prefix(export.name)
            out += Self.reply(option, .info, payload: info)
        }
        if requested.contains(.description), let d = export.description {
            info = []
            info.appendBigEndian(NBDInfoType.description.rawValue)
            info += utf8Prefix(d)
            out += Self.reply(option, .info, payload: info)
        }
        out += Self.reply(option, .ack)
        events.append(.send(out))
        if option == .go { finish(export, flags, &events) }
    }

    private func lookup(_ name: ArraySlice<UInt8>) -> NBDExportInfo? {
        if let e = exports.first(where: { $0.name.utf8.elementsEqual(name) }) { return e }
        if name.isEmpty && exports.count == 1 { return exports[0] }
        return nil
    }

    private mutating func finish(_ export: NBDExportInfo, _ flags: UInt16, _ events: inout [NBDHandshakeEvent]) {
        var advertised = export
        advertised.transmissionFlags = flags
        events.append(.done(export: advertised, structuredReplies: structuredReplies))
        phase = .finished
    }

    private mutating func close(_ reason: String, _ events: inout [NBDHandshakeEvent]) {
        events.append(.close(reason: reason))
        phase = .closed
    }

    /// One fixed-newstyle option reply. Error replies carry a human-readable message.
    static func reply(_ option: NBDOption, _ type: NBDOptionReplyType, payload: [UInt8] = []) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(20 + payload.count)
        out.appendBigEndian(NBDMagic.optionReply)
        out.appendBigEndian(option.rawValue)
        out.appendBigEndian(type.rawValue)
        out.appendBigEndian(UInt32(payload.count))
        out += payload
        return out
    }

    static func reply(_ option: NBDOption, _ type: NBDOptionReplyType, message: String) -> [UInt8] {
        reply(option, type, payload: utf8Prefix(message))
    }
}
