// Transmission phase: request decoding, validation against the negotiated export, and reply
// encoding. Like the handshake, nothing here touches a socket.

/// One request header as sent by the client (the WRITE payload travels separately).
public struct NBDRequest: Sendable, Hashable {
    /// `NBDCommandFlags` raw value.
    public var flags: UInt16
    /// `NBDCommand` raw value.
    public var type: UInt16
    /// Opaque; echoed in the reply.
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: UInt16 = 0, type: UInt16, cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 0) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public init(_ command: NBDCommand, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 0) {
        self.init(flags: flags.rawValue, type: command.rawValue, cookie: cookie, offset: offset, length: length)
    }

    public var command: NBDCommand { NBDCommand(rawValue: type) }
    public var commandFlags: NBDCommandFlags { NBDCommandFlags(rawValue: flags) }

    /// The 28-byte wire header (what a client sends; handy for tests).
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(NBDLimits.requestHeaderSize)
        out.appendBigEndian(NBDMagic.request)
        out.appendBigEndian(flags)
        out.appendBigEndian(type)
        out.appendBigEndian(cookie)
        out.appendBigEndian(offset)
        out.appendBigEndian(length)
        return out
    }
}

/// Why a request must be answered with an error instead of being executed.
public struct NBDRequestRejection: Sendable, Hashable {
    public var error: NBDErrorCode
    public var reason: String
    public init(_ error: NBDErrorCode, _ reason: String) {
        self.error = error
        self.reason = reason
    }
}

/// Checks requests against the export as negotiated. Rules, in order:
/// 1. Command: READ, WRITE, DISC always; FLUSH/TRIM/WRITE_ZEROES only if advertised; everything
///    else (CACHE, BLOCK_STATUS, unknown) → EINVAL. DISC is always accepted: the client is leaving
///    and there is no reply to send it anyway.
/// 2. Flags: FUA on any command iff SEND_FUA was advertised (the spec says the server MUST accept
///    it everywhere then); NO_HOLE on WRITE_ZEROES; FAST_ZERO on WRITE_ZEROES iff advertised; DF on
///    READ iff structured replies and SEND_DF; anything else → EINVAL.
/// 3. Read-only export: WRITE/TRIM/WRITE_ZEROES → EPERM.
/// 4. FLUSH: offset and length must be zero → EINVAL.
/// 5. Zero length on READ/WRITE/TRIM/WRITE_ZEROES → EINVAL (the spec leaves it unspecified; the
///    backend then never sees an empty range).
/// 6. READ/WRITE longer than `maximumBlock` → EINVAL. TRIM/WRITE_ZEROES carry no payload and may
///    exceed it (the spec says the server SHOULD NOT refuse them for that).
/// 7. Offset and length must be multiples of `minimumBlock` → EINVAL.
/// 8. offset + length beyond the export size: ENOSPC for WRITE/WRITE_ZEROES, EINVAL otherwise.
public struct NBDRequestValidator: Sendable {
    public let export: NBDExportInfo
    public let structuredReplies: Bool

    public init(export: NBDExportInfo, structuredReplies: Bool = false) {
        self.export = export
        self.structuredReplies = structuredReplies
    }

    public func validate(_ r: NBDRequest) -> NBDRequestRejection? {
        let advertised = NBDTransmissionFlags(rawValue: export.transmissionFlags)
        let command = r.command
        switch command {
        case .read, .write: break
        case .disc: return nil
        case .flush: if !advertised.contains(.sendFlush) { return .init(.invalid, "FLUSH was not advertised") }
        case .trim: if !advertised.contains(.sendTrim) { return .init(.invalid, "TRIM was not advertised") }
        case .writeZeroes: if !advertised.contains(.sendWriteZeroes) { return .init(.invalid, "WRITE_ZEROES was not advertised") }
        default: return .init(.invalid, "unsupported \(command)")
        }

        var allowed: NBDCommandFlags = []
        if advertised.contains(.sendFUA) { allowed.insert(.fua) }
        if command == .writeZeroes {
            allowed.insert(.noHole)
            if advertised.contains(.sendFastZero) { allowed.insert(.fastZero) }
        }
        if command == .read && structuredReplies && advertised.contains(.sendDF) { allowed.insert(.df) }
        let extra = r.commandFlags.subtracting(allowed)
        if !extra.isEmpty {
            return .init(.invalid, "flags 0x\(String(extra.rawValue, radix: 16)) not valid for \(command)")
        }

        let writes = command == .write || command == .trim || command == .writeZeroes
        if writes && advertised.contains(.readOnly) { return .init(.perm, "\(command) on a read-only export") }

        if command == .flush {
            return r.offset == 0 && r.length == 0 ? nil : .init(.invalid, "FLUSH with nonzero offset or length")
        }

        guard r.length > 0 else { return .init(.invalid, "zero-length \(command)") }
        if (command == .read || command == .write) && r.length > export.maximumBlock {
            return .init(.invalid, "\(command) of \(r.length) bytes exceeds the maximum payload \(export.maximumBlock)")
        }
        let block = UInt64(max(export.minimumBlock, 1))   // a misconfigured 0 must not divide by zero
        if r.offset % block != 0 || UInt64(r.length) % block != 0 {
            return .init(.invalid, "\(command) offset \(r.offset) length \(r.length) not aligned to \(block)")
        }
        let (end, overflow) = r.offset.addingReportingOverflow(UInt64(r.length))
        if overflow || end > export.size {
            let error: NBDErrorCode = (command == .write || command == .writeZeroes) ? .noSpace : .invalid
            return .init(error, "\(command) offset \(r.offset) length \(r.length) beyond export size \(export.size)")
        }
        return nil
    }
}

public enum NBDRequestEvent: Sendable, Equatable {
    /// A valid request to execute. WRITE carries exactly `length` payload bytes; others carry none.
    /// After DISC the decoder stops: finish outstanding requests, then close (no reply to DISC).
    case request(NBDRequest, payload: [UInt8])
    /// Reply with `error` (use `NBDReply.error(for:...)`, which honours structured replies). Any
    /// WRITE payload has already been read and discarded, so the stream is in sync.
    case invalid(NBDRequest, error: NBDErrorCode, reason: String)
    /// The stream cannot be trusted (bad magic, or a WRITE payload too large to drain): close the
    /// connection. The decoder ignores all further input.
    case fatal(reason: String)
}

/// Splits the client byte stream into requests. A WRITE's payload is always consumed, valid or not,
/// so a rejected WRITE never gets its data misread as the next header. Rejected WRITE payloads are
/// discarded as they arrive, never buffered.
public struct NBDRequestDecoder: Sendable {
    /// Largest rejected WRITE payload we are willing to read past to stay in sync. Beyond it (and
    /// beyond `maximumBlock`) the request is treated as an attack: `.fatal`. The spec says payloads
    /// up to 2^25 should never be considered denial of service; 64 MiB leaves room above that.
    public static let defaultDrainLimit: UInt32 = 64 << 20

    public let validator: NBDRequestValidator
    /// Largest WRITE length that is read (and then executed or drained); larger is `.fatal`.
    public let payloadLimit: UInt32

    private enum State: Sendable {
        case header
        case payload(NBDRequest, remaining: Int)
        case draining(NBDRequest, NBDRequestRejection, remaining: Int)
        case stopped
    }

    private var state: State = .header
    private var header: [UInt8] = []
    private var payload: [UInt8] = []

    public init(export: NBDExportInfo, structuredReplies: Bool = false, drainLimit: UInt32 = defaultDrainLimit) {
        self.init(validator: NBDRequestValidator(export: export, structuredReplies: structuredReplies), drainLimit: drainLimit)
    }

    public init(validator: NBDRequestValidator, drainLimit: UInt32 = defaultDrainLimit) {
        self.validator = validator
        self.payloadLimit = max(drainLimit, validator.export.maximumBlock)
    }

    /// True after DISC or a fatal error; further input is ignored.
    public var isStopped: Bool { if case .stopped = state { true } else { false } }

    /// Consumes client bytes (any split) and returns the complete requests they finish, in order.
    public mutating func feed(_ bytes: [UInt8]) -> [NBDRequestEvent] {
        var input = bytes[...]
        var events: [NBDRequestEvent] = []
        while true {
            switch state {
            case .stopped:
                return events
            case .header:
                if header.isEmpty && input.count >= NBDLimits.requestHeaderSize {
                    // Common case: a whole header in this chunk; parse in place.
                    let h = input.prefix(NBDLimits.requestHeaderSize)
                    input = input.dropFirst(NBDLimits.requestHeaderSize)
                    decodeHeader(h, &events)
                } else {
                    let take = min(NBDLimits.requestHeaderSize - header.count, input.count)
                    if take == 0 { return events }
                    header += input.prefix(take)
                    input = input.dropFirst(take)
                    guard header.count == NBDLimits.requestHeaderSize else { return events }
                    decodeHeader(header[...], &events)
                    header.removeAll(keepingCapacity: true)
                }
            case .payload(let request, let remaining):
                let take = min(remaining, input.count)
                if take == 0 { return events }
                payload += input.prefix(take)
                input = input.dropFirst(take)
                if take < remaining {
                    state = .payload(request, remaining: remaining - take)
                } else {
                    events.append(.request(request, payload: payload))
                    payload = []
                    state = .header
                }
            case .draining(let request, let rejection, let remaining):
                let take = min(remaining, input.count)
                if take == 0 { return events }
                input = input.dropFirst(take)
                if take < remaining {
                    state = .draining(request, rejection, remaining: remaining - take)
                } else {
                    events.append(.invalid(request, error: rejection.error, reason: rejection.reason))
                    state = .header
                }
            }
        }
    }

    private mutating func decodeHeader(_ h: ArraySlice<UInt8>, _ events: inout [NBDRequestEvent]) {
        guard let magic = h.readBigEndian(UInt32.self, at: 0),
              let flags = h.readBigEndian(UInt16.self, at: 4),
              let type = h.readBigEndian(UInt16.self, at: 6),
              let cookie = h.readBigEndian(UInt64.self, at: 8),
              let offset = h.readBigEndian(UInt64.self, at: 16),
              let length = h.readBigEndian(UInt32.self, at: 24) else {
            stop("short request header", &events)   // unreachable: callers pass 28 bytes
            return
        }
        // The spec: on a bad magic the server must close; there is no way to find the next header.
        guard magic == NBDMagic.request else {
            stop("bad request magic 0x\(String(magic, radix: 16))", &events)
            return
        }
        let request = NBDRequest(flags: flags, type: type, cookie: cookie, offset: offset, length: length)
        // Only WRITE has a payload on the wire (extended headers are never negotiated).
        let hasPayload = request.command == .write && length > 0
        if hasPayload && length > payloadLimit {
            stop("WRITE payload of \(length) bytes exceeds \(payloadLimit); cannot resynchronise", &events)
            return
        }
        if let rejection = validator.validate(request) {
            if hasPayload {
                state = .draining(request, rejection, remaining: Int(length))
            } else {
                events.append(.invalid(request, error: rejection.error, reason: rejection.reason))
            }
        } else if request.command == .disc {
            events.append(.request(request, payload: []))
            state = .stopped   // the client MUST NOT send anything after DISC
        } else if hasPayload {
            // Reserve at most 1 MiB up front: a bare header must not make us allocate a large
            // maximumBlock; beyond that memory grows only as payload bytes actually arrive.
            payload.reserveCapacity(min(Int(length), 1 << 20))
            state = .payload(request, remaining: Int(length))
        } else {
            events.append(.request(request, payload: []))
        }
    }

    private mutating func stop(_ reason: String, _ events: inout [NBDRequestEvent]) {
        events.append(.fatal(reason: reason))
        state = .stopped
        header = []
        payload = []
    }
}

/// Reply encoders. Without structured replies every reply is a simple reply; with them, READ
/// replies (data and errors) MUST be structured, other commands may use either.
public enum NBDReply {
    /// The 16-byte simple reply header. For a successful READ, write exactly `length` data bytes
    /// after it (separately, to avoid copying large buffers).
    public static func simpleHeader(cookie: UInt64, error: NBDErrorCode = .success) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(NBDLimits.simpleReplyHeaderSize)
        out.appendBigEndian(NBDMagic.simpleReply)
        out.appendBigEndian(error.rawValue)
        out.appendBigEndian(cookie)
        return out
    }

    /// A whole simple reply. `data` is only sent when `error` is success (the spec forbids a
    /// payload on an error reply).
    public static func simple(cookie: UInt64, error: NBDErrorCode = .success, data: [UInt8] = []) -> [UInt8] {
        var out = simpleHeader(cookie: cookie, error: error)
        if error == .success { out += data }
        return out
    }

    /// A structured reply chunk header (20 bytes); `length` payload bytes must follow.
    public static func structuredHeader(flags: UInt16, type: NBDStructuredReplyType, cookie: UInt64, length: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(NBDLimits.structuredReplyHeaderSize)
        out.appendBigEndian(NBDMagic.structuredReply)
        out.appendBigEndian(flags)
        out.appendBigEndian(type.rawValue)
        out.appendBigEndian(cookie)
        out.appendBigEndian(length)
        return out
    }

    /// A READ's data as one NBD_REPLY_TYPE_OFFSET_DATA chunk (final by default, which also
    /// satisfies DF). Empty data is not a valid OFFSET_DATA chunk, so it yields a NONE chunk.
    public static func structuredData(cookie: UInt64, offset: UInt64, data: [UInt8], final: Bool = true) -> [UInt8] {
        guard !data.isEmpty, data.count <= Int(UInt32.max - 8) else { return structuredDone(cookie: cookie) }
        var out = structuredHeader(flags: final ? NBDStructuredReplyType.flagDone : 0, type: .offsetData,
                                   cookie: cookie, length: UInt32(8 + data.count))
        out.reserveCapacity(out.count + 8 + data.count)
        out.appendBigEndian(offset)
        out += data
        return out
    }

    /// A final NBD_REPLY_TYPE_ERROR chunk. The spec requires a nonzero error, so `.success`
    /// becomes EIO rather than producing an invalid chunk.
    public static func structuredError(cookie: UInt64, error: NBDErrorCode, message: String = "") -> [UInt8] {
        let text = utf8Prefix(message)
        var out = structuredHeader(flags: NBDStructuredReplyType.flagDone, type: .error, cookie: cookie,
                                   length: UInt32(6 + text.count))
        out.appendBigEndian((error == .success ? NBDErrorCode.io : error).rawValue)
        out.appendBigEndian(UInt16(text.count))
        out += text
        return out
    }

    /// A final NBD_REPLY_TYPE_NONE chunk: success with nothing more to say.
    public static func structuredDone(cookie: UInt64) -> [UInt8] {
        structuredHeader(flags: NBDStructuredReplyType.flagDone, type: .none, cookie: cookie, length: 0)
    }

    /// The error reply for `request` in the negotiated mode: a structured error chunk for READ when
    /// structured replies are on (a simple reply is forbidden there), a simple reply otherwise.
    public static func error(for request: NBDRequest, error: NBDErrorCode, message: String = "",
                             structuredReplies: Bool) -> [UInt8] {
        if structuredReplies && request.command == .read {
            return structuredError(cookie: request.cookie, error: error, message: message)
        }
        return simple(cookie: request.cookie, error: error)
    }
}

/// A simple reply (header, plus `data` for a successful READ).
public func simpleReply(cookie: UInt64, error: NBDErrorCode = .success, data: [UInt8] = []) -> [UInt8] {
    NBDReply.simple(cookie: cookie, error: error, data: data)
}
