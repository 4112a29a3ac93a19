import Testing
@testable import SwapfairConfig

@Suite struct ConfigChangeTests {
    let facts = HostFacts(memoryTotal: 16 << 30, swapTotal: 8 << 30)

    func parse(_ text: String) throws -> SwapfairConfiguration {
        try ConfigLoader.parse(text, source: "test.toml", facts: facts)
    }

    static let base = """
        [host]
        memory_budget = "8G"
        socket = "/run/a.sock"
        [[vm]]
        name = "a"
        cgroup = "machine.slice/a.scope"
        swap_device = { size = "64M", weight = 100, users = ["0"] }
        [[vm]]
        name = "b"
        cgroup = "machine.slice/b.scope"
        """

    @Test func theSameFileChangesNothing() throws {
        let c = try parse(Self.base)
        let change = ConfigChange(from: c, to: c)
        #expect(change.isEmpty && change.effective == c)
    }

    /// Policy figures go live; keys that name files, sockets or devices keep their old value.
    @Test func hostKeysAreAppliedLiveOrRefusedByName() throws {
        let old = try parse(Self.base)
        let new = try parse(Self.base.replacingOccurrences(of: "\"8G\"", with: "\"6G\"")
            .replacingOccurrences(of: "/run/a.sock", with: "/run/b.sock"))
        let change = ConfigChange(from: old, to: new)
        #expect(change.hostKeys == ["memory_budget"])
        #expect(change.refused.count == 1 && change.refused[0].hasPrefix("host.socket"))
        #expect(change.effective.host.memoryBudget == .bytes(6 << 30))
        #expect(change.effective.host.socket == "/run/a.sock")
    }

    @Test func vmsAddedRemovedAndChangedAreNamedWithTheirKeys() throws {
        let old = try parse(Self.base)
        let new = try parse("""
            [host]
            memory_budget = "8G"
            socket = "/run/a.sock"
            [[vm]]
            name = "a"
            weight = 300
            cgroup = "machine.slice/a.scope"
            swap_device = { size = "128M", weight = 400, users = ["0"] }
            [[vm]]
            name = "c"
            cgroup = "machine.slice/c.scope"
            """)
        let change = ConfigChange(from: old, to: new)
        #expect(change.added == ["c"] && change.removed == ["b"])
        #expect(change.changed.map(\.vm) == ["a"])
        #expect(change.changed.first?.keys == ["weight", "swap_weight", "swap_device.weight"])
        // A volume's size cannot change under its clients: refused, old size kept, weight applied.
        #expect(change.refused.count == 1 && change.refused[0].contains("swap_device.size"))
        let a = try #require(change.effective.vms.first { $0.name == "a" })
        #expect(a.weight == 300 && a.swapDevice?.size == 64 << 20 && a.swapDevice?.weight == 400)
        #expect(change.effective.vms.map(\.name) == ["a", "c"])
        #expect(change.lines == ["vm c: added", "vm b: removed", "vm a: weight, swap_weight, swap_device.weight changed"])
    }

    @Test func aRemovalThatCannotBeDoneLiveKeepsTheVM() throws {
        let old = try parse(Self.base)
        var change = ConfigChange(from: old, to: try parse(Self.base.components(separatedBy: "[[vm]]\nname = \"b\"")[0]))
        #expect(change.removed == ["b"])
        change.keep(old.vms[1], because: "a test")
        #expect(change.removed.isEmpty && change.effective.vms.map(\.name) == ["a", "b"])
        #expect(change.refused.last?.contains("vm b: cannot be removed") == true)
    }
}
