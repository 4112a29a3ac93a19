import Testing
@testable import SwapfairConfig

let facts = HostFacts(memoryTotal: 16 << 30, swapTotal: 8 << 30)

func load(_ text: String) throws(ConfigError) -> SwapfairConfiguration {
    try ConfigLoader.parse(text, source: "test.toml", facts: facts)
}

@Suite struct ConfigLoaderTests {
    @Test func aFullConfigurationResolves() throws {
        let c = try load("""
            [host]
            memory_budget = "50%"
            swap_budget = "4G"
            interval = "500ms"
            pressure_target = "2%"
            idle_tax = 0.5
            slice = "vms.slice"

            [[vm]]
            name = "web"
            weight = 200
            reservation = "1G"
            limit = "6G"
            swap_limit = "25%"
            io_weight = 300
            cgroup = "/machine.slice/machine-qemu\\\\x2d1\\\\x2dweb.scope"

            [[vm]]
            name = "db"
            pidfile = "/run/db.pid"
            """)
        #expect(c.host.interval == 0.5)
        #expect(c.host.pressureTarget == 0.02)
        #expect(c.host.idleTax == 0.5)
        #expect(c.budgets(facts).memory == 8 << 30)
        #expect(c.budgets(facts).swap == 4 << 30)
        let web = c.entitlement(c.vms[0], facts)
        #expect(web.weight == 200 && web.swapWeight == 200)
        #expect(web.reservation == 1 << 30 && web.limit == 6 << 30)
        #expect(web.swapLimit == 1 << 30)
        #expect(web.ioWeight == 300)
        #expect(c.vms[0].location == .cgroup("machine.slice/machine-qemu\\x2d1\\x2dweb.scope"))
        #expect(c.vms[1].weight == 100)
        #expect(c.vms[1].location == .pidFile("/run/db.pid"))
        #expect(c.vms[1].line == 18)
    }

    @Test func theEmbeddedDefaultIsValid() throws {
        let c = try ConfigLoader.parse(DefaultConfig.text, source: DefaultConfig.source, facts: facts)
        #expect(c.vms.map(\.name) == ["small-a", "small-b", "large"])
        #expect(c.vms.allSatisfy { $0.location == .managedScope })
    }

    @Test(arguments: [
        ("512M", SizeSpec.bytes(512 << 20)), ("4G", .bytes(4 << 30)), ("1.5GiB", .bytes(3 << 29)), ("25%", .percent(25)),
        ("0", .bytes(0)), ("64k", .bytes(64 << 10)), ("2T", .bytes(2 << 40)), ("1_024M", .bytes(1 << 30)),
    ])
    func sizesParse(text: String, expected: SizeSpec) throws {
        #expect(try SizeParser.parse(text) == expected)
    }

    /// Each bad configuration is refused, and the message names the line and the key.
    @Test(arguments: [
        (#"[[vm]]\#nname = "a"\#nwieght = 5"#, #"test.toml:3: vm[1] "a".wieght: unknown key (did you mean "weight"?)"#),
        (#"[host]\#nmemory_budget = "lots""#, #"test.toml:2: host.memory_budget: "lots" is not a size"#),
        (#"[host]\#nmemory_budget = "4Q""#, #"unknown unit "Q""#),
        (#"[[vm]]\#nname = "a"\#n[[vm]]\#nname = "a""#, #"test.toml:3: vm "a": duplicate VM name (first defined on line 1)"#),
        (#"[[vm]]\#nname = "../etc""#, #"test.toml:2: vm[1].name: "../etc" contains "/""#),
        (#"[[vm]]\#nname = "a..b""#, #"test.toml:2: vm[1].name: "a..b" contains "..""#),
        (#"[[vm]]\#nname = "x"\#nreservation = "10G"\#n[[vm]]\#nname = "y"\#nreservation = "10G""#,
         "the reservations add up to 20 GiB, more than host.memory_budget (12 GiB)"),
        (#"[[vm]]\#nname = "a"\#nweight = 0"#, #"test.toml:3: vm[1] "a".weight: must be from 1 to 10000, got 0"#),
        (#"[[vm]]\#nname = "a"\#nweight = "heavy""#, "must be a whole number from 1 to 10000"),
        (#"[[vm]]\#nname = "a"\#nreservation = "2G"\#nlimit = "1G""#, "is more than the VM's limit"),
        (#"[[vm]]\#nweight = 5"#, #"test.toml:1: vm[1]: missing key "name""#),
        (#"[hots]\#nmemory_budget = "1G""#, #"test.toml:1: hots: unknown section (did you mean "host"?)"#),
        (#"[host]\#nidle_tax = 1.5"#, "must be from 0 to 0.99"),
        (#"[host]\#ninterval = "soon""#, #"host.interval: must be a duration"#),
        (#"[host]\#npressure_target = "150%""#, "must be above 0% and below 100%"),
        (#"[host]\#nmemory_budget = "64G""#, "is more than this host's RAM"),
        (#"[[vm]]\#nname = "a"\#ncgroup = "a/../../etc""#, #"must not contain "." or "..""#),
        (#"[[vm]]\#nname = "a"\#ncgroup = "x.scope"\#npidfile = "/run/a.pid""#, "give at most one of cgroup, pidfile and unit"),
        (#"[[vm]]\#nname = "a"\#npidfile = "run/a.pid""#, #"test.toml:3: vm[1] "a".pidfile: must be an absolute path"#),
        (#"[[vm]]\#nname = "a"\#nunit = "qemu-a""#, "must be a .service or .scope unit"),
        (#"[host]\#nslice = "vms""#, "must end in .slice"),
        (#"[vm]\#nname = "a""#, "write [[vm]] (two brackets)"),
        (#"[[vm]]\#nname = "a"\#nweight = 5\#nweight = 6"#, #"test.toml:4: column 1: duplicate key "weight" (first defined on line 3)"#),
        (#"[host]\#nmemory_budget = 4G"#, #"bare word "4G""#),
        (#"[[vm]]\#nname = "a"\#nlimit = -5"#, "must not be negative"),
        (#"[[vm]]\#nname = "a"\#nswap_limit = "16G""#, "is more than the swap budget"),
        (#"[host]\#nhost_swap_size = "10%""#, #"test.toml:2: host.host_swap_size: must be a size such as "2G", not a percentage"#),
        (#"[host]\#nhost_swap_size = 1000"#, "must be at least 1M and a multiple of 4K"),
        (#"[host]\#nhost_swap_device = "sdb3""#, "host.host_swap_device: must be an absolute path to a block device"),
        (#"[host]\#nhost_swap_size = "1G"\#nhost_swap_device = "/dev/sdb3""#, "give one of host_swap_size and host_swap_device"),
        (#"[host]\#nwrite_elision = true"#, "host.write_elision: needs the host's swap device"),
        (#"[host]\#nhost_swap_device = "/dev/sdb3"\#nwrite_elision = "yes""#, "host.write_elision: must be true or false"),
        (#"[host]\#nhost_swap_device = "/dev/sdb3"\#nelision_spare = "10%""#, "host.elision_spare: must be a size"),
        (#"[host]\#nshared_map_dir = "run/shared""#, "host.shared_map_dir: must be an absolute path"),
        (#"[host]\#nwrite_elisoin = true"#, "write_elision"),
        (#"[host]\#nreclaim_shift_max = "80%""#, "host.reclaim_shift_max: must be a percentage of the guest's RAM"),
        (#"[host]\#nreclaim_shift_max = "1G""#, "host.reclaim_shift_max: must be a percentage"),
        (#"[host]\#ndouble_paging_window = "2m""#, "host.double_paging_window: must be between 10ms and 60s"),
        (#"[host]\#ndouble_paging_window = "soon""#, "host.double_paging_window: must be a duration"),
        (#"[host]\#nswap_prefetch = "10%""#, "host.swap_prefetch: must be a size per second"),
        (#"[host]\#nswap_prefetch = "fast""#, "host.swap_prefetch:"),
        (#"[host]\#nswap_prefech = "64M""#, #"did you mean "swap_prefetch"?"#),
        (#"[[vm]]\#nname = "a"\#nswap_device = { size = "1G" }\#nballoon_qmp = "a.qmp""#, "balloon_qmp: must be an absolute path"),
        (#"[[vm]]\#nname = "a"\#nswap_device = { size = "1G" }\#nballoon_qmp = "/run/a.qmp""#,
         "balloon_qmp: reclaim shifting needs the host's swap served by swapfaird"),
        (#"[host]\#nhost_swap_device = "/dev/sdb3"\#n[[vm]]\#nname = "a"\#nballoon_qmp = "/run/a.qmp""#,
         "balloon_qmp: reclaim shifting needs the VM's swap_device"),
        (#"[[vm]]\#nname = "a"\#nguest_memory = "4G""#, "guest_memory: is for reclaim shifting: give balloon_qmp too"),
        (#"[[vm]]\#nname = "a"\#nballoon_qmp = "/run/a.qmp"\#nguest_memory = "10%""#, "guest_memory: must be a size"),
        (#"[[vm]]\#nname = "a"\#nbaloon_qmp = "/run/a.qmp""#, #"did you mean "balloon_qmp"?"#),
        (#"[[vm]]\#nname = "a"\#nswap_device = { size = "1G", ublk = "yes" }"#, "vm[1] \"a\".swap_device.ublk: must be true or false"),
        (#"[[vm]]\#nname = "a"\#nswap_device = { size = "1G", ubkl = true }"#, #"did you mean "ublk"?"#),
    ])
    func badConfigurationsAreRefusedWithTheirLineAndKey(text: String, expected: String) {
        do {
            _ = try load(text)
            Issue.record("accepted a bad configuration:\n\(text)")
        } catch {
            #expect(error.description.contains(expected), "got: \(error.description)")
        }
    }

    @Test func aBalloonForReclaimShiftingIsRead() throws {
        let c = try load("""
            [host]
            host_swap_device = "/dev/sdb3"
            reclaim_shift_max = "20%"
            double_paging_window = "2.5s"
            [[vm]]
            name = "web"
            swap_device = { size = "2G" }
            balloon_qmp = "/run/qemu/web.qmp"
            guest_memory = "4G"
            [[vm]]
            name = "db"
            """)
        #expect(c.host.reclaimShiftMax == 0.2)
        #expect(c.host.doublePagingWindow == 2.5)
        #expect(c.vms[0].balloonQMP == "/run/qemu/web.qmp")
        #expect(c.vms[0].guestMemory == 4 << 30)
        #expect(c.vms[1].balloonQMP == nil && c.vms[1].guestMemory == nil)
    }

    @Test func aSwapDeviceIsAlsoABlockDeviceWhenAskedFor() throws {
        let c = try load("""
            [[vm]]
            name = "web"
            swap_device = { size = "2G", weight = 200, users = ["qemu"], groups = [107], ublk = true }
            [[vm]]
            name = "db"
            swap_device = { size = "1G" }
            """)
        #expect(c.vms[0].swapDevice == SwapDeviceConfig(size: 2 << 30, weight: 200, users: ["qemu"], groups: ["107"], ublk: true))
        #expect(c.vms[1].swapDevice?.ublk == false)
    }

    @Test func swapPrefetchIsARateOrOff() throws {
        #expect(try load("[host]\nswap_prefetch = \"32M\"").host.swapPrefetch == 32 << 20)
        #expect(try load("[host]\nswap_prefetch = 0").hostPolicy(HostFacts(memoryTotal: 1 << 30, swapTotal: 0)).prefetchRate == 0)
        #expect(try load("").host.swapPrefetch == 64 << 20)
    }

    @Test func everyProblemIsReportedNotJustTheFirst() {
        do {
            _ = try load("""
                [host]
                idle_tax = 3
                [[vm]]
                name = "a/b"
                weight = -1
                colour = "red"
                """)
            Issue.record("accepted")
        } catch {
            #expect(error.problems.count == 4, "\(error)")
        }
    }

    @Test func aMissingFileIsNamed() {
        #expect(throws: ConfigError(file: "/nonexistent/swapfair.toml",
                                    problems: [ConfigProblem(line: nil, key: nil, "the file does not exist")])) {
            try ConfigLoader.load(path: "/nonexistent/swapfair.toml", facts: facts)
        }
    }

    @Test func vmNamesMustBeSafeAsFileNames() {
        #expect(NameRules.vmNameProblem("web-1.prod_a") == nil)
        for bad in ["", "a/b", "..", ".hidden", "-x", "a b", "naïve", String(repeating: "x", count: 65)] {
            #expect(NameRules.vmNameProblem(bad) != nil, "\(bad)")
        }
    }
}
