import Testing
@testable import SwapfairSystemd

@Suite struct UnitNamesTests {
    @Test(arguments: [
        ("swapfair.slice", "swapfair.slice"),
        ("machine-qemu.slice", "machine.slice/machine-qemu.slice"),
        ("a-b-c.slice", "a.slice/a-b.slice/a-b-c.slice"),
        ("-.slice", ""),
    ])
    func slicePaths(_ slice: String, _ path: String) {
        #expect(UnitNames.slicePath(slice) == path)
    }

    @Test func unitOfCgroup() {
        #expect(UnitNames.unit(ofCgroup: "swapfair.slice/vm-a.scope") == "vm-a.scope")
        #expect(UnitNames.unit(ofCgroup: "machine.slice/machine-qemu\\x2d1\\x2dvm.scope") == "machine-qemu\\x2d1\\x2dvm.scope")
        #expect(UnitNames.unit(ofCgroup: "system.slice/swapfair-vm@a.service") == "swapfair-vm@a.service")
        // Inside a unit: a delegated subtree, not systemd's to manage.
        #expect(UnitNames.unit(ofCgroup: "machine.slice/libvirt.scope/vm") == nil)
        #expect(UnitNames.unit(ofCgroup: "system.slice/x.service/payload.scope") == nil)
        #expect(UnitNames.unit(ofCgroup: "lab/vm-a") == nil)
    }

    @Test func notBootedWithoutRunDirectory() {
        #expect(!SystemdBus.isBooted(runDirectory: "/nonexistent/systemd/system"))
    }
}
