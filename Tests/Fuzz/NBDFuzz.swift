// libFuzzer entry point for the NBD codec: the first byte picks the state machine, the rest is
// fed to it in chunks whose sizes come from the input too, so partial reads are exercised.
// Built by fuzz-nbd.sh with the codec's sources; any trap is a finding.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 1 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let export = NBDExportInfo(name: "web", size: 16 << 20, transmissionFlags: 0xFF, minimumBlock: 4096,
                               preferredBlock: 4096, maximumBlock: 1 << 20)
    var i = 1
    if bytes[0] & 1 == 0 {
        var h = NBDServerHandshake(exports: [export, NBDExportInfo(name: "", size: 4096, transmissionFlags: 1)])
        _ = h.greeting()
        while i < bytes.count {
            let n = Int(bytes[i] % 64) + 1
            let chunk = Array(bytes[(i + 1)..<min(bytes.count, i + 1 + n)])
            i += 1 + n
            for e in h.feed(chunk) {
                if case .done(let ex, _) = e { precondition(ex.name == "web" || ex.name == "") }
            }
        }
    } else {
        var d = NBDRequestDecoder(export: export)
        while i < bytes.count {
            let n = Int(bytes[i] % 64) + 1
            let chunk = Array(bytes[(i + 1)..<min(bytes.count, i + 1 + n)])
            i += 1 + n
            for e in d.feed(chunk) {
                if case .request(let r, let payload) = e, r.command != .disc {
                    // Whatever is accepted (but DISC, whose offset and length the spec says to
                    // ignore) is aligned, in range and carries its payload exactly.
                    precondition(r.offset % 4096 == 0 && r.offset &+ UInt64(r.length) <= export.size)
                    precondition(r.command != .write || payload.count == Int(r.length))
                }
            }
        }
    }
    return 0
}
