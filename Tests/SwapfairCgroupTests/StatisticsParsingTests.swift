import Testing
@testable import SwapfairCgroup

@Suite struct StatisticsParsingTests {
    @Test func memoryStatReadsTheFieldsThePolicyUses() throws {
        let s = try MemoryStat.parse("""
            anon 1000
            file 500
            active_anon 600
            inactive_anon 400
            active_file 100
            inactive_file 400
            workingset_refault_anon 7
            workingset_refault_file 3
            pgmajfault 12

            """)
        #expect(s.activeBytes == 700)
        #expect(s.inactiveBytes == 800)
        #expect(s.refaults == 10)
        #expect(s.majorFaults == 12)
        #expect(s["missing_key"] == 0)
    }

    /// The allocation-free readers the control loop uses agree with the general parsers.
    @Test func fastReadersAgreeWithTheGeneralParsers() throws {
        let stat = "anon 1000\nactive_anon 600\ninactive_anon 400\nactive_file 100\ninactive_file 400\n"
            + "workingset_refault_anon 7\nworkingset_refault_file 3\npgmajfault 12\n"
        let fast = try Array(stat.utf8).withUnsafeBytes { try FastParse.memoryStat($0, file: "s") }
        let slow = try MemoryStat.parse(stat)
        #expect(fast.activeBytes == slow.activeBytes && fast.inactiveBytes == slow.inactiveBytes)
        #expect(fast.refaults == slow.refaults && fast.majorFaults == slow.majorFaults)
        let events = "low 0\nhigh 41\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"
        let e = try Array(events.utf8).withUnsafeBytes { try FastParse.memoryEvents($0, file: "e") }
        let g = try MemoryEvents.parse(events)
        #expect(e.high == g.high && e.high == 41)
        #expect(e.max == g.max && e.max == 2)
        #expect(e.oomKill == g.oomKill && e.oomKill == 1)
        #expect(throws: CgroupError.malformed(file: "g/memory.events", line: 2, text: "high x")) {
            try Array("low 0\nhigh x\n".utf8).withUnsafeBytes { try FastParse.memoryEvents($0, file: "g/memory.events") }
        }
    }

    @Test(arguments: ["anon", "anon x", "anon 1 2", "anon -5", "anon 1.5"])
    func malformedMemoryStatLinesAreNamed(line: String) {
        #expect(throws: CgroupError.malformed(file: "g/memory.stat", line: 2, text: line)) {
            try MemoryStat.parse("file 1\n\(line)\n", file: "g/memory.stat")
        }
    }

    @Test func pressureReadsSomeAndFull() throws {
        let p = try Pressure.parse("""
            some avg10=1.50 avg60=0.20 avg300=0.00 total=123456
            full avg10=0.50 avg60=0.10 avg300=0.00 total=6543
            """)
        #expect(p.some.total == 123_456)
        #expect(p.some.avg10 == 1.5)
        #expect(p.full?.total == 6543)
    }

    @Test(arguments: [
        "", "some avg10=1 avg60=2 total=5", "some avg10=x avg60=0 avg300=0 total=1", "other avg10=0 avg60=0 avg300=0 total=1",
        "some avg10=0 avg60=0 avg300=0 total",
    ])
    func malformedPressureIsRefused(text: String) {
        #expect(throws: CgroupError.self) { try Pressure.parse(text) }
    }

    @Test func ioStatSumsDevices() throws {
        let s = try IOStat.parse("""
            254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0
            8:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0 cost.vrate=100.00
            """)
        #expect(s.devices.count == 2)
        #expect(s.readBytes == 4196)
        #expect(s.writeBytes == 8192)
    }

    @Test func ioStatRefusesGarbage() {
        #expect(throws: CgroupError.self) { try IOStat.parse("nonsense rbytes=1") }
        #expect(throws: CgroupError.self) { try IOStat.parse("8:0 rbytes=abc") }
    }

    @Test func limitValuesReadMaxAndBytes() throws {
        #expect(try LimitValue.parse("max\n", file: "f") == .max)
        #expect(try LimitValue.parse("4096\n", file: "f") == .bytes(4096))
        #expect(throws: CgroupError.self) { try LimitValue.parse("lots\n", file: "f") }
        #expect(LimitValue(nil).description == "max")
    }
}
