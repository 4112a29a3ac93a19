import Testing
@testable import SwapfairNBD

// MARK: - Helpers (independent of the codec's own encoders, so byte-exact checks mean something)

/// Bytes from hex text; spaces are ignored.
private func hex(_ s: String) -> [UInt8] {
    let digits = Array(s.filter { !$0.isWhitespace })
    var out: [UInt8] = []
    var i = 0
    while i + 1 < digits.count {
        out.append(UInt8(String(digits[i...i + 1]), radix: 16) ?? 0xEE)
        i += 2
    }
    return out
}

private func be<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
    (0..<MemoryLayout<T>.size).reversed().map { UInt8(truncatingIfNeeded: v >> ($0 * 8)) }
}

private let ihaveopt = hex("49484156454F5054")
private let replyMagic = hex("0003e889045565a9")

private func option(_ code: UInt32, _ data: [UInt8] = []) -> [UInt8] {
    ihaveopt + be(code) + be(UInt32(data.count)) + data
}

private func goData(_ name: String, _ infos: [UInt16] = []) -> [UInt8] {
    let n = Array(name.utf8)
    return be(UInt32(n.count)) + n + be(UInt16(infos.count)) + infos.flatMap { be($0) }
}

private struct OptionReply: Equatable {
    var option: UInt32
    var type: UInt32
    var payload: [UInt8]
}

/// Splits server bytes into option replies; nil if they are not well-formed.
private func parseReplies(_ bytes: [UInt8]) -> [OptionReply]? {
    var out: [OptionReply] = []
    var i = 0
    func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
    while i < bytes.count {
        guard bytes.count - i >= 20, Array(bytes[i..<i + 8]) == replyMagic else { return nil }
        let len = Int(u32(i + 16))
        guard bytes.count - i - 20 >= len else { return nil }
        out.append(OptionReply(option: u32(i + 8), type: u32(i + 12), payload: Array(bytes[i + 20..<i + 20 + len])))
        i += 20 + len
    }
    return out
}

private func sent(_ events: [NBDHandshakeEvent]) -> [UInt8] {
    events.flatMap { e -> [UInt8] in
        if case .send(let b) = e { return b }
        return []
    }
}

private func replies(_ events: [NBDHandshakeEvent]) -> [OptionReply] {
    parseReplies(sent(events)) ?? [OptionReply(option: 0, type: 0, payload: Array("unparseable".utf8))]
}

/// Everything but `.send`, to compare control flow.
private func control(_ events: [NBDHandshakeEvent]) -> [NBDHandshakeEvent] {
    events.filter { e -> Bool in
        if case .send = e { return false }
        return true
    }
}

private let ack: UInt32 = 1, repServer: UInt32 = 2, repInfo: UInt32 = 3
private let errUnsup: UInt32 = 0x8000_0001, errInvalid: UInt32 = 0x8000_0003, errUnknown: UInt32 = 0x8000_0006

private let rwFlags: UInt16 = 0x6D   // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES
private let swap = NBDExportInfo(name: "swap", size: 1 << 30, transmissionFlags: rwFlags, description: "VM swap")
private let other = NBDExportInfo(name: "other", size: 1 << 20, transmissionFlags: 0x03)

private func negotiated(_ exports: [NBDExportInfo] = [swap], clientFlags: UInt32 = 3,
                        structured: Bool = false) -> NBDServerHandshake {
    var h = NBDServerHandshake(exports: exports, allowStructuredReplies: structured)
    _ = h.feed(be(clientFlags))
    return h
}

private func feedBytewise(_ h: inout NBDServerHandshake, _ bytes: [UInt8]) -> [NBDHandshakeEvent] {
    bytes.flatMap { h.feed([$0]) }
}

// MARK: - Handshake

@Suite struct NBDHandshakeTests {
    @Test func greetingIsNBDMAGICThenIHAVEOPTThenFixedNewstyleAndNoZeroes() {
        let h = NBDServerHandshake(exports: [swap])
        #expect(h.greeting() == hex("4E42444D41474943 49484156454F5054 0003"))
    }

    @Test func goHandshakeIsByteExact() {
        var h = NBDServerHandshake(exports: [swap])
        let events = h.feed(hex("00000003") + option(7, goData("swap", [3])))
        let expected = hex("""
            0003e889045565a9 00000007 00000003 0000000c 0000 0000000040000000 006d
            0003e889045565a9 00000007 00000003 0000000e 0003 00001000 00001000 02000000
            0003e889045565a9 00000007 00000001 00000000
            """)
        #expect(events == [.send(expected), .done(export: swap, structuredReplies: false)])
        #expect(h.isFinished)
        #expect(h.clientFlags == [.fixedNewstyle, .noZeroes])
    }

    @Test func listSendsOneServerReplyPerExportThenAck() {
        var h = negotiated([swap, other])
        let r = replies(h.feed(option(3)))
        #expect(r == [
            OptionReply(option: 3, type: repServer, payload: be(UInt32(4)) + Array("swapVM swap".utf8)),
            OptionReply(option: 3, type: repServer, payload: be(UInt32(5)) + Array("other".utf8)),
            OptionReply(option: 3, type: ack, payload: []),
        ])
        #expect(!h.isFinished && !h.isClosed)
    }

    @Test func listWithDataIsInvalidAndNegotiationContinues() {
        var h = negotiated()
        #expect(replies(h.feed(option(3, [1]))).map(\.type) == [errInvalid])
        #expect(replies(h.feed(option(3))).map(\.type) == [repServer, ack])
    }

    @Test func infoAnswersWithoutFinishingAndGoThenFinishesWithTheSameInfo() {
        var h = negotiated()
        let infoEvents = h.feed(option(6, goData("swap", [1, 2, 3])))
        #expect(control(infoEvents).isEmpty)
        let info = replies(infoEvents)
        #expect(info.map(\.type) == [repInfo, repInfo, repInfo, repInfo, ack])
        #expect(info.map { Array($0.payload.prefix(2)) } == [[0, 0], [0, 3], [0, 1], [0, 2], []])
        #expect(info[2].payload == [0, 1] + Array("swap".utf8))
        #expect(info[3].payload == [0, 2] + Array("VM swap".utf8))
        #expect(!h.isFinished)

        let goEvents = h.feed(option(7, goData("swap", [1, 2, 3])))
        let go = replies(goEvents)
        #expect(go.map(\.payload) == info.map(\.payload))
        #expect(go.allSatisfy { $0.option == 7 })
        #expect(control(goEvents) == [.done(export: swap, structuredReplies: false)])
    }

    @Test func goWithoutInfoRequestsStillSendsExportAndBlockSize() {
        var h = negotiated()
        let r = replies(h.feed(option(7, goData("swap"))))
        #expect(r.map(\.type) == [repInfo, repInfo, ack])
        #expect(r[0].payload == [0, 0] + be(UInt64(1 << 30)) + be(rwFlags))
    }

    @Test func exportNameWithoutNoZeroesSendsSizeFlagsAnd124Zeroes() {
        var h = negotiated(clientFlags: 1)
        let events = h.feed(option(1, Array("swap".utf8)))
        let expected = be(UInt64(1 << 30)) + be(rwFlags) + [UInt8](repeating: 0, count: 124)
        #expect(events == [.send(expected), .done(export: swap, structuredReplies: false)])
        #expect(expected.count == 134)
    }

    @Test func exportNameWithNoZeroesSendsOnlySizeAndFlags() {
        var h = negotiated(clientFlags: 3)
        let events = h.feed(option(1, Array("swap".utf8)))
        #expect(events == [.send(hex("0000000040000000 006d")), .done(export: swap, structuredReplies: false)])
    }

    @Test func emptyExportNameSelectsTheOnlyExport() {
        var h = negotiated()
        #expect(control(h.feed(option(1))) == [.done(export: swap, structuredReplies: false)])
        var g = negotiated()
        #expect(control(g.feed(option(7, goData("")))) == [.done(export: swap, structuredReplies: false)])
    }

    @Test func emptyExportNameIsUnknownWhenThereAreSeveralExports() {
        var h = negotiated([swap, other])
        #expect(replies(h.feed(option(7, goData("")))).map(\.type) == [errUnknown])
        var g = negotiated([swap, other])
        #expect(control(g.feed(option(1))).count == 1)
        #expect(g.isClosed)
    }

    @Test func unknownExportNameClosesTheSessionBecauseExportNameCannotError() {
        var h = negotiated()
        let events = h.feed(option(1, Array("nope".utf8)))
        #expect(events.count == 1)
        guard case .close = events.first else { Issue.record("expected close, got \(events)"); return }
        #expect(h.isClosed)
        #expect(h.feed(option(7, goData("swap"))).isEmpty)
    }

    @Test func unknownExportInGoGetsErrUnknownAndNegotiationContinues() {
        var h = negotiated()
        let r = replies(h.feed(option(7, goData("nope", [3]))))
        #expect(r.count == 1 && r[0].type == errUnknown && r[0].option == 7)
        #expect(String(decoding: r[0].payload, as: UTF8.self).contains("nope"))
        #expect(control(h.feed(option(7, goData("swap")))) == [.done(export: swap, structuredReplies: false)])
    }

    @Test(arguments: [UInt32(4), 5, 9, 10, 11, 42, 0, 0xFFFF_FFFF])
    func unsupportedOptionsGetErrUnsupAndNegotiationContinues(code: UInt32) {
        var h = negotiated()
        let r = replies(h.feed(option(code, [1, 2, 3])))
        #expect(r.count == 1 && r[0].option == code && r[0].type == errUnsup)
        #expect(replies(h.feed(option(3))).map(\.type) == [repServer, ack])
    }

    @Test func abortRepliesAckThenAbortsAndIgnoresLaterInput() {
        var h = negotiated()
        let events = h.feed(option(2, [9, 9]) + option(3))
        #expect(events == [.send(replyMagic + hex("00000002 00000001 00000000")), .abort])
        #expect(h.isClosed)
        #expect(h.feed(option(3)).isEmpty)
    }

    @Test func badOptionMagicCloses() {
        var h = negotiated()
        var bytes = option(3)
        bytes[0] ^= 0xFF
        let events = h.feed(bytes)
        guard case .close(let reason) = events.first, events.count == 1 else { Issue.record("\(events)"); return }
        #expect(reason.contains("magic"))
    }

    @Test(arguments: [UInt32(4), 0x8000_0000, 0xFFFF_FFFF, 0x7])
    func unknownClientFlagsClose(flags: UInt32) {
        var h = NBDServerHandshake(exports: [swap])
        let events = h.feed(be(flags) + option(3))
        guard case .close = events.first, events.count == 1 else { Issue.record("\(events)"); return }
        #expect(h.isClosed)
    }

    @Test func clientWithoutFixedNewstyleIsStillServed() {
        var h = negotiated(clientFlags: 0)
        let events = h.feed(option(1, Array("swap".utf8)))
        #expect(sent(events).count == 134)
        #expect(h.isFinished)
    }

    @Test func optionLongerThan64KiBClosesWithoutWaitingForItsData() {
        var h = negotiated()
        let events = h.feed(ihaveopt + be(UInt32(7)) + be(UInt32(65537)))
        guard case .close = events.first, events.count == 1 else { Issue.record("\(events)"); return }
        var g = negotiated()
        let huge = g.feed(ihaveopt + be(UInt32(3)) + be(UInt32.max))
        #expect(control(huge).count == 1 && g.isClosed)
    }

    @Test func optionOfExactly64KiBIsAccepted() {
        var h = negotiated()
        let r = replies(h.feed(option(42, [UInt8](repeating: 7, count: 65536))))
        #expect(r.map(\.type) == [errUnsup])
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        var label: String
        var data: [UInt8]
        var testDescription: String { label }
    }

    static let malformedGo: [Malformed] = [
        Malformed(label: "empty", data: []),
        Malformed(label: "shorter than 6 bytes", data: [0, 0, 0, 0, 0]),
        Malformed(label: "name length beyond data", data: be(UInt32(10)) + Array("swap".utf8) + [0, 0]),
        Malformed(label: "name length 0xFFFFFFFF", data: be(UInt32.max) + [0, 0]),
        Malformed(label: "count claims more requests than sent", data: Array(goData("swap").dropLast(2)) + be(UInt16(2)) + be(UInt16(3))),
        Malformed(label: "trailing bytes after requests", data: goData("swap", [3]) + [0]),
        Malformed(label: "odd trailing byte", data: goData("swap") + [0]),
        Malformed(label: "name over 4096 bytes", data: goData(String(repeating: "a", count: 4097))),
    ]

    @Test(arguments: malformedGo)
    func malformedGoPayloadGetsErrInvalidAndNegotiationContinues(_ m: Malformed) {
        for code: UInt32 in [6, 7] {
            var h = negotiated()
            let events = h.feed(option(code, m.data))
            #expect(control(events).isEmpty)
            #expect(replies(events).map(\.type) == [errInvalid])
            #expect(control(h.feed(option(7, goData("swap")))) == [.done(export: swap, structuredReplies: false)])
        }
    }

    @Test func structuredRepliesAreRefusedByDefault() {
        var h = negotiated()
        #expect(replies(h.feed(option(8))).map(\.type) == [errUnsup])
        #expect(control(h.feed(option(7, goData("swap")))) == [.done(export: swap, structuredReplies: false)])
    }

    @Test func structuredRepliesWhenAllowedAreAckedAndReportedAndKeepDF() {
        let df = NBDExportInfo(name: "swap", size: 1 << 30, transmissionFlags: rwFlags | 0x80)
        var h = negotiated([df], structured: true)
        #expect(replies(h.feed(option(8, [0]))).map(\.type) == [errInvalid])
        #expect(replies(h.feed(option(8))).map(\.type) == [ack])
        #expect(control(h.feed(option(7, goData("swap")))) == [.done(export: df, structuredReplies: true)])
    }

    @Test func advertisedFlagsForceHasFlagsAndDropDFAndFastZeroWhenTheyCannotApply() {
        let odd = NBDExportInfo(name: "odd", size: 4096, transmissionFlags: 0x80 | 0x800)
        var h = negotiated([odd])
        let events = h.feed(option(7, goData("odd")))
        #expect(replies(events)[0].payload == [0, 0] + be(UInt64(4096)) + be(UInt16(1)))
        guard case .done(let e, _) = control(events).first else { Issue.record("\(events)"); return }
        #expect(e.transmissionFlags == 1)
    }

    @Test func feedingOneByteAtATimeGivesTheSameEvents() {
        let script = hex("00000003") + option(3) + option(6, goData("swap", [2])) + option(99, [1, 2])
            + option(7, goData("nope")) + option(7, goData("swap", [3])) + NBDRequest(.read, cookie: 1, length: 4096).encoded()
        var whole = NBDServerHandshake(exports: [swap, other])
        var bytewise = NBDServerHandshake(exports: [swap, other])
        let a = whole.feed(script)
        let b = feedBytewise(&bytewise, script)
        #expect(sent(a) == sent(b))
        #expect(control(a) == control(b))
        #expect(control(a) == [.done(export: swap, structuredReplies: false)])
        #expect(whole.remainingBytes == bytewise.remainingBytes)
        #expect(whole.remainingBytes.count == 28)
    }

    @Test func bytesAfterGoAreKeptForTheTransmissionPhase() {
        var h = negotiated()
        let request = NBDRequest(.read, cookie: 9, length: 4096).encoded()
        _ = h.feed(option(7, goData("swap")) + request.prefix(10))
        _ = h.feed(Array(request.dropFirst(10)))
        #expect(h.remainingBytes == request)
        var d = NBDRequestDecoder(export: swap)
        #expect(d.feed(h.remainingBytes) == [.request(NBDRequest(.read, cookie: 9, length: 4096), payload: [])])
    }

    @Test func exportConfigurationProblemsAreReported() {
        #expect(swap.configurationProblem == nil)
        #expect(NBDExportInfo(name: "x", size: 4096, transmissionFlags: 1, minimumBlock: 3000).configurationProblem != nil)
        #expect(NBDExportInfo(name: "x", size: 4096, transmissionFlags: 1, minimumBlock: 0).configurationProblem != nil)
        #expect(NBDExportInfo(name: "x", size: 4096, transmissionFlags: 1, maximumBlock: 1024).configurationProblem != nil)
        #expect(NBDExportInfo(name: "x", size: 5000, transmissionFlags: 1).configurationProblem != nil)
    }
}

// MARK: - Transmission

private let diskFlags: UInt16 = 0x6D | 0x800   // plus SEND_FAST_ZERO
private let disk = NBDExportInfo(name: "swap", size: 1 << 24, transmissionFlags: diskFlags, maximumBlock: 1 << 20)

private func decode(_ bytes: [UInt8], export: NBDExportInfo = disk, structured: Bool = false) -> [NBDRequestEvent] {
    var d = NBDRequestDecoder(export: export, structuredReplies: structured)
    return d.feed(bytes)
}

private func errorOf(_ events: [NBDRequestEvent]) -> NBDErrorCode? {
    guard events.count == 1, case .invalid(_, let e, _) = events[0] else { return nil }
    return e
}

@Suite struct NBDTransmissionTests {
    @Test func readDecodesAllHeaderFields() {
        let bytes = hex("25609513 0001 0000 0102030405060708 0000000000002000 00001000")
        #expect(decode(bytes) == [.request(NBDRequest(flags: 1, type: 0, cookie: 0x0102_0304_0506_0708,
                                                      offset: 0x2000, length: 0x1000), payload: [])])
    }

    @Test func writeCarriesExactlyLengthPayloadBytes() {
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let w = NBDRequest(.write, flags: .fua, cookie: 2, offset: 4096, length: 8192)
        let events = decode(w.encoded() + data + NBDRequest(.flush, cookie: 3).encoded())
        #expect(events == [.request(w, payload: data), .request(NBDRequest(.flush, cookie: 3), payload: [])])
    }

    @Test func flushTrimAndWriteZeroesDecode() {
        let rs = [NBDRequest(.flush, cookie: 1),
                  NBDRequest(.trim, cookie: 2, offset: 0, length: 1 << 24),
                  NBDRequest(.writeZeroes, flags: [.noHole, .fua], cookie: 3, offset: 8192, length: 4096),
                  NBDRequest(.writeZeroes, flags: .fastZero, cookie: 4, offset: 0, length: 4096)]
        #expect(decode(rs.flatMap { $0.encoded() }) == rs.map { .request($0, payload: []) })
    }

    @Test func discStopsTheDecoderAndLaterBytesAreIgnored() {
        var d = NBDRequestDecoder(export: disk)
        let events = d.feed(NBDRequest(.disc, cookie: 5).encoded() + NBDRequest(.read, cookie: 6, length: 4096).encoded())
        #expect(events == [.request(NBDRequest(.disc, cookie: 5), payload: [])])
        #expect(d.isStopped)
        #expect(d.feed([1, 2, 3]).isEmpty)
    }

    @Test func pipelinedRequestsInOneBufferDecodeInOrderAndBytewiseTheSame() {
        let payload = [UInt8](repeating: 0xAB, count: 4096)
        let bad = NBDRequest(.write, cookie: 4, offset: 100, length: 4096)   // misaligned: drained
        let script = NBDRequest(.read, cookie: 1, length: 4096).encoded()
            + NBDRequest(.write, cookie: 2, offset: 4096, length: 4096).encoded() + payload
            + NBDRequest(.flush, cookie: 3).encoded()
            + bad.encoded() + payload
            + NBDRequest(.trim, cookie: 5, offset: 0, length: 8192).encoded()
        let expected: [NBDRequestEvent] = [
            .request(NBDRequest(.read, cookie: 1, length: 4096), payload: []),
            .request(NBDRequest(.write, cookie: 2, offset: 4096, length: 4096), payload: payload),
            .request(NBDRequest(.flush, cookie: 3), payload: []),
            .invalid(bad, error: .invalid, reason: ""),
            .request(NBDRequest(.trim, cookie: 5, offset: 0, length: 8192), payload: []),
        ]
        func strip(_ e: [NBDRequestEvent]) -> [NBDRequestEvent] {
            e.map { x -> NBDRequestEvent in
                if case .invalid(let r, let c, _) = x { return .invalid(r, error: c, reason: "") }
                return x
            }
        }
        #expect(strip(decode(script)) == expected)
        var d = NBDRequestDecoder(export: disk)
        #expect(strip(script.flatMap { d.feed([$0]) }) == expected)
        var e = NBDRequestDecoder(export: disk)
        var chunks: [NBDRequestEvent] = []
        var i = 0, step = 1
        while i < script.count { let j = min(script.count, i + step); chunks += e.feed(Array(script[i..<j])); i = j; step = step * 3 % 1000 + 1 }
        #expect(strip(chunks) == expected)
    }

    @Test(arguments: [(UInt64(512), UInt32(4096)), (4096, 512), (1, 4096), (4096, 4097)])
    func misalignedReadOrWriteIsEINVAL(offset: UInt64, length: UInt32) {
        #expect(errorOf(decode(NBDRequest(.read, cookie: 1, offset: offset, length: length).encoded())) == .invalid)
        let w = NBDRequest(.write, cookie: 2, offset: offset, length: length)
        #expect(errorOf(decode(w.encoded() + [UInt8](repeating: 0, count: Int(length)))) == .invalid)
    }

    @Test func pastTheEndIsEINVALForReadAndTrimButENOSPCForWrites() {
        let end = disk.size
        #expect(errorOf(decode(NBDRequest(.read, cookie: 1, offset: end, length: 4096).encoded())) == .invalid)
        #expect(errorOf(decode(NBDRequest(.trim, cookie: 1, offset: end - 4096, length: 8192).encoded())) == .invalid)
        #expect(errorOf(decode(NBDRequest(.writeZeroes, cookie: 1, offset: end, length: 4096).encoded())) == .noSpace)
        let w = NBDRequest(.write, cookie: 1, offset: end - 4096, length: 8192)
        #expect(errorOf(decode(w.encoded() + [UInt8](repeating: 1, count: 8192))) == .noSpace)
        // The last block is fine.
        #expect(decode(NBDRequest(.read, cookie: 1, offset: end - 4096, length: 4096).encoded()).count == 1)
        #expect(errorOf(decode(NBDRequest(.read, cookie: 1, offset: end - 4096, length: 4096).encoded())) == nil)
    }

    @Test func offsetPlusLengthOverflowIsRejectedWithoutTrapping() {
        let r = NBDRequest(.read, cookie: 1, offset: UInt64.max - 4095, length: 8192)
        #expect(errorOf(decode(r.encoded())) == .invalid)
        let z = NBDRequest(.writeZeroes, cookie: 1, offset: UInt64.max & ~4095, length: 0xFFFF_F000)
        #expect(errorOf(decode(z.encoded())) == .noSpace)
    }

    @Test func readLongerThanMaximumPayloadIsEINVAL() {
        #expect(errorOf(decode(NBDRequest(.read, cookie: 1, length: (1 << 20) + 4096).encoded())) == .invalid)
        #expect(errorOf(decode(NBDRequest(.read, cookie: 1, length: 1 << 20).encoded())) == nil)
    }

    @Test func trimAndWriteZeroesMayExceedTheMaximumPayload() {
        #expect(errorOf(decode(NBDRequest(.trim, cookie: 1, length: 1 << 24).encoded())) == nil)
        #expect(errorOf(decode(NBDRequest(.writeZeroes, cookie: 1, length: 1 << 23).encoded())) == nil)
    }

    @Test func oversizedWriteIsDrainedThenEINVALAndTheNextRequestDecodes() {
        let length: UInt32 = (1 << 20) + 4096
        let w = NBDRequest(.write, cookie: 7, length: length)
        var d = NBDRequestDecoder(export: disk)
        var events = d.feed(w.encoded())
        // Payload that happens to look like a request header must not be mistaken for one.
        let decoy = NBDRequest(.disc, cookie: 99).encoded()
        var sentBytes = 0
        while sentBytes < Int(length) {
            let chunk = Array((decoy + [UInt8](repeating: 0, count: 65536 - 28)).prefix(Int(length) - sentBytes))
            events += d.feed(chunk)
            sentBytes += chunk.count
        }
        events += d.feed(NBDRequest(.read, cookie: 8, length: 4096).encoded())
        #expect(events.count == 2)
        #expect(errorOf(Array(events.prefix(1))) == .invalid)
        #expect(events.last == .request(NBDRequest(.read, cookie: 8, length: 4096), payload: []))
    }

    @Test func writeTooLargeToDrainIsFatal() {
        var d = NBDRequestDecoder(export: disk)
        let events = d.feed(NBDRequest(.write, cookie: 1, length: (64 << 20) + 4096).encoded())
        guard case .fatal = events.first, events.count == 1 else { Issue.record("\(events)"); return }
        #expect(d.isStopped)
        #expect(d.feed(NBDRequest(.read, cookie: 2, length: 4096).encoded()).isEmpty)
    }

    @Test func invalidWritePayloadIsDrainedAcrossFeeds() {
        var d = NBDRequestDecoder(export: disk)
        let w = NBDRequest(.write, cookie: 1, offset: 10, length: 8192)
        #expect(d.feed(w.encoded() + [UInt8](repeating: 0x25, count: 100)).isEmpty)
        #expect(d.feed([UInt8](repeating: 0x25, count: 8000)).isEmpty)
        let tail = d.feed([UInt8](repeating: 0x25, count: 92) + NBDRequest(.flush, cookie: 2).encoded())
        #expect(tail.count == 2)
        #expect(errorOf(Array(tail.prefix(1))) == .invalid)
        #expect(tail.last == .request(NBDRequest(.flush, cookie: 2), payload: []))
    }

    @Test(arguments: [UInt16(5), 7, 8, 9, 99, 0xFFFF])
    func unknownOrUnsupportedCommandIsEINVALAndConsumesNoPayload(type: UInt16) {
        let r = NBDRequest(flags: 0, type: type, cookie: 1, offset: 0, length: 4096)
        let events = decode(r.encoded() + NBDRequest(.flush, cookie: 2).encoded())
        #expect(events.count == 2)
        #expect(errorOf(Array(events.prefix(1))) == .invalid)
        #expect(events.last == .request(NBDRequest(.flush, cookie: 2), payload: []))
    }

    struct FlagCase: Sendable, CustomTestStringConvertible {
        var label: String
        var request: NBDRequest
        var export: NBDExportInfo
        var testDescription: String { label }
    }

    static let badFlags: [FlagCase] = [
        FlagCase(label: "unknown bit 15", request: NBDRequest(flags: 0x8000, type: 0, cookie: 1, offset: 0, length: 4096), export: disk),
        FlagCase(label: "payload-length bit 5", request: NBDRequest(flags: 0x20, type: 0, cookie: 1, offset: 0, length: 4096), export: disk),
        FlagCase(label: "NO_HOLE on WRITE_ZEROES only", request: NBDRequest(.trim, flags: .noHole, cookie: 1, length: 4096), export: disk),
        FlagCase(label: "FAST_ZERO on READ", request: NBDRequest(.read, flags: .fastZero, cookie: 1, length: 4096), export: disk),
        FlagCase(label: "DF without structured replies", request: NBDRequest(.read, flags: .df, cookie: 1, length: 4096), export: disk),
        FlagCase(label: "REQ_ONE without BLOCK_STATUS", request: NBDRequest(.read, flags: .reqOne, cookie: 1, length: 4096), export: disk),
        FlagCase(label: "FUA when SEND_FUA not advertised",
                 request: NBDRequest(.trim, flags: .fua, cookie: 1, length: 4096),
                 export: NBDExportInfo(name: "n", size: 1 << 24, transmissionFlags: 0x61)),
        FlagCase(label: "FAST_ZERO when not advertised",
                 request: NBDRequest(.writeZeroes, flags: .fastZero, cookie: 1, length: 4096),
                 export: NBDExportInfo(name: "n", size: 1 << 24, transmissionFlags: 0x6D)),
    ]

    @Test(arguments: badFlags)
    func flagsNotValidForTheCommandAreEINVAL(_ c: FlagCase) {
        #expect(errorOf(decode(c.request.encoded(), export: c.export)) == .invalid)
    }

    @Test func fuaIsAcceptedOnEveryCommandWhenAdvertised() {
        for r in [NBDRequest(.read, flags: .fua, cookie: 1, length: 4096), NBDRequest(.flush, flags: .fua, cookie: 2)] {
            #expect(decode(r.encoded()) == [.request(r, payload: [])])
        }
    }

    @Test func dfOnReadIsAcceptedOnlyWithStructuredRepliesAndSendDF() {
        let dfDisk = NBDExportInfo(name: "swap", size: 1 << 24, transmissionFlags: 0x6D | 0x80)
        let r = NBDRequest(.read, flags: .df, cookie: 1, length: 4096)
        #expect(decode(r.encoded(), export: dfDisk, structured: true) == [.request(r, payload: [])])
        #expect(errorOf(decode(r.encoded(), export: dfDisk, structured: false)) == .invalid)
    }

    @Test func unadvertisedCommandsAreEINVAL() {
        let bare = NBDExportInfo(name: "bare", size: 1 << 24, transmissionFlags: 1)
        for r in [NBDRequest(.flush, cookie: 1), NBDRequest(.trim, cookie: 2, length: 4096),
                  NBDRequest(.writeZeroes, cookie: 3, length: 4096)] {
            #expect(errorOf(decode(r.encoded(), export: bare)) == .invalid)
        }
    }

    @Test func flushWithOffsetOrLengthIsEINVAL() {
        #expect(errorOf(decode(NBDRequest(.flush, cookie: 1, offset: 4096).encoded())) == .invalid)
        #expect(errorOf(decode(NBDRequest(.flush, cookie: 1, length: 4096).encoded())) == .invalid)
    }

    @Test func zeroLengthRequestsAreEINVALAndZeroLengthWriteConsumesNothing() {
        for c in [NBDCommand.read, .trim, .writeZeroes] {
            #expect(errorOf(decode(NBDRequest(c, cookie: 1, length: 0).encoded())) == .invalid)
        }
        let events = decode(NBDRequest(.write, cookie: 1, length: 0).encoded() + NBDRequest(.flush, cookie: 2).encoded())
        #expect(events.count == 2 && events.last == .request(NBDRequest(.flush, cookie: 2), payload: []))
    }

    @Test func writesToAReadOnlyExportAreEPERMAndTheirPayloadIsDrained() {
        let ro = NBDExportInfo(name: "ro", size: 1 << 24, transmissionFlags: 0x6D | 0x02)
        let w = NBDRequest(.write, cookie: 1, length: 4096)
        let events = decode(w.encoded() + [UInt8](repeating: 0, count: 4096) + NBDRequest(.read, cookie: 2, length: 4096).encoded(), export: ro)
        #expect(events.count == 2)
        #expect(errorOf(Array(events.prefix(1))) == .perm)
        #expect(errorOf(decode(NBDRequest(.trim, cookie: 3, length: 4096).encoded(), export: ro)) == .perm)
    }

    @Test func badRequestMagicIsFatalAfterEarlierRequests() {
        var bad = NBDRequest(.read, cookie: 2, length: 4096).encoded()
        bad[3] = 0x14   // 0x25609514: the reserved transaction-log magic
        var d = NBDRequestDecoder(export: disk)
        let events = d.feed(NBDRequest(.read, cookie: 1, length: 4096).encoded() + bad + NBDRequest(.flush, cookie: 3).encoded())
        #expect(events.count == 2)
        #expect(events.first == .request(NBDRequest(.read, cookie: 1, length: 4096), payload: []))
        guard case .fatal(let reason) = events.last else { Issue.record("\(events)"); return }
        #expect(reason.contains("magic"))
        #expect(d.isStopped)
    }

    @Test func validatorAloneAgreesWithTheDecoder() {
        let v = NBDRequestValidator(export: disk)
        #expect(v.validate(NBDRequest(.read, cookie: 1, length: 4096)) == nil)
        #expect(v.validate(NBDRequest(.read, cookie: 1, offset: 1, length: 4096))?.error == .invalid)
        #expect(v.validate(NBDRequest(.disc, flags: .fua, cookie: 1, offset: 5, length: 5)) == nil)
    }
}

// MARK: - Replies

@Suite struct NBDReplyTests {
    @Test func simpleReplyIsMagicErrorCookieThenData() {
        #expect(simpleReply(cookie: 0x0102_0304_0506_0708) == hex("67446698 00000000 0102030405060708"))
        #expect(simpleReply(cookie: 1, data: [9, 8]) == hex("67446698 00000000 0000000000000001 0908"))
        #expect(NBDReply.simpleHeader(cookie: 3, error: .noSpace) == hex("67446698 0000001c 0000000000000003"))
    }

    @Test func errorSimpleReplyNeverCarriesData() {
        #expect(simpleReply(cookie: 1, error: .io, data: [1, 2, 3]) == hex("67446698 00000005 0000000000000001"))
    }

    @Test func structuredChunksAreByteExact() {
        #expect(NBDReply.structuredData(cookie: 2, offset: 4096, data: [0xAA]) ==
                hex("668e33ef 0001 0001 0000000000000002 00000009 0000000000001000 aa"))
        #expect(NBDReply.structuredError(cookie: 2, error: .invalid, message: "no") ==
                hex("668e33ef 0001 8001 0000000000000002 00000008 00000016 0002 6e6f"))
        #expect(NBDReply.structuredDone(cookie: 2) == hex("668e33ef 0001 0000 0000000000000002 00000000"))
    }

    @Test func errorReplyForReadIsStructuredOnlyWhenNegotiated() {
        let read = NBDRequest(.read, cookie: 5, length: 4096)
        let write = NBDRequest(.write, cookie: 6, length: 4096)
        #expect(NBDReply.error(for: read, error: .invalid, structuredReplies: false) == simpleReply(cookie: 5, error: .invalid))
        #expect(NBDReply.error(for: read, error: .invalid, structuredReplies: true).prefix(4) == [0x66, 0x8e, 0x33, 0xef])
        #expect(NBDReply.error(for: write, error: .invalid, structuredReplies: true) == simpleReply(cookie: 6, error: .invalid))
    }

    @Test func errorMessagesAreCappedAt4096BytesOnACharacterBoundary() {
        let chunk = NBDReply.structuredError(cookie: 1, error: .io, message: "a" + String(repeating: "é", count: 3000))
        #expect(chunk.count == 20 + 6 + 4095)   // 4096 would split an é
    }

    @Test func linuxErrnoMapsToNBDErrors() {
        #expect(NBDErrorCode(linuxErrno: 122) == .noSpace)
        #expect(NBDErrorCode(linuxErrno: 30) == .perm)
        #expect(NBDErrorCode(linuxErrno: 4) == .io)
    }
}
