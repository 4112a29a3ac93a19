// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "swapfair",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "swapfaird", targets: ["swapfaird"]),
        .executable(name: "swapfairctl", targets: ["swapfairctl"]),
        .executable(name: "swapfair-loadgen", targets: ["swapfair-loadgen"]),
        .executable(name: "swapfair-guestpager", targets: ["swapfair-guestpager"]),
        .library(name: "SwapfairPolicy", targets: ["SwapfairPolicy"]),
        .library(name: "SwapfairCgroup", targets: ["SwapfairCgroup"]),
        .library(name: "SwapfairConfig", targets: ["SwapfairConfig"]),
        .library(name: "SwapfairDaemon", targets: ["SwapfairDaemon"]),
        .library(name: "SwapfairSimulation", targets: ["SwapfairSimulation"]),
        .library(name: "SwapfairNBD", targets: ["SwapfairNBD"]),
        .library(name: "SwapfairTestSupport", targets: ["SwapfairTestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // Pure arithmetic: observations in, settings out. No I/O, no clock.
        .target(name: "SwapfairPolicy", swiftSettings: strict),
        // C helpers for what Swift cannot call directly (needs _GNU_SOURCE, variadic, macros).
        .target(name: "CSwapfairShim"),
        // liburing (Debian: liburing-dev).
        .systemLibrary(name: "CURing", pkgConfig: "liburing", providers: [.apt(["liburing-dev"])]),
        // libsystemd's sd-bus (Debian: libsystemd-dev).
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // systemd's manager over sd-bus: unit properties, transient scopes.
        .target(
            name: "SwapfairSystemd",
            dependencies: ["CSystemd", "SwapfairSys", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // The NBD protocol: handshake and request codecs, no sockets.
        .target(name: "SwapfairNBD", swiftSettings: strict),
        // The swap device engine: io_uring, volumes, the fair scheduler.
        .target(
            name: "SwapfairIO",
            dependencies: ["CURing", "CSwapfairShim", "SwapfairSys", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // QEMU's machine protocol: the guests' balloons.
        .target(name: "SwapfairQMP", dependencies: ["SwapfairSys"], swiftSettings: strict),
        // Double paging: content digests of host swap-ins matched against guest swap-outs.
        .target(name: "SwapfairTracking", swiftSettings: strict),
        // ublk block devices served from this process: control, queues, targets.
        .target(
            name: "SwapfairUblk",
            dependencies: ["CURing", "CSwapfairShim", "SwapfairIO", "SwapfairSys", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // The swap volumes' exports: NBD (sockets, connections, peer checks) and ublk block devices.
        .target(
            name: "SwapfairExport",
            dependencies: ["SwapfairIO", "SwapfairNBD", "SwapfairSys", "SwapfairUblk", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        // Typed syscall wrappers shared by the I/O modules.
        .target(
            name: "SwapfairSys",
            dependencies: ["CSwapfairShim", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // A deterministic model of VMs under the policy (tests, the offline demo, benchmarks).
        .target(name: "SwapfairSimulation", dependencies: ["SwapfairPolicy"], swiftSettings: strict),
        // A fake cgroup tree for tests and benchmarks (no kernel behind it).
        .target(name: "SwapfairTestSupport", swiftSettings: strict),
        // cgroup v2 filesystem access: paths, knob files, statistics parsers.
        .target(name: "SwapfairCgroup", dependencies: ["SwapfairSys"], swiftSettings: strict),
        // TOML configuration: parsing, validation, the embedded default.
        .target(name: "SwapfairConfig", dependencies: ["SwapfairPolicy"], swiftSettings: strict),
        // The control loop, VM discovery, the control socket.
        .target(
            name: "SwapfairDaemon",
            dependencies: [
                "SwapfairPolicy", "SwapfairCgroup", "SwapfairConfig", "SwapfairSys", "SwapfairIO", "SwapfairExport",
                "SwapfairSystemd", "SwapfairUblk", "SwapfairTracking", "SwapfairQMP", "CSwapfairShim", .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "swapfaird",
            dependencies: [
                "SwapfairDaemon", "SwapfairConfig", .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "swapfairctl",
            dependencies: [
                "SwapfairDaemon", "SwapfairConfig", "SwapfairPolicy", "SwapfairCgroup", "SwapfairSimulation", "SwapfairQMP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // What the workloads share: reports, latency histograms, the guest pager's model.
        .target(name: "SwapfairWorkload", swiftSettings: strict),
        // A VM stand-in workload for the lab tests, the demo and the benchmarks.
        .executableTarget(
            name: "swapfair-loadgen",
            dependencies: ["SwapfairWorkload", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        // A guest with its own swap, for the double-paging benchmarks.
        .executableTarget(
            name: "swapfair-guestpager",
            dependencies: ["SwapfairWorkload", "SwapfairSys", "SwapfairQMP", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        // Benchmarks/: `swift run -c release swapfair-tick-bench`.
        .executableTarget(
            name: "swapfair-tick-bench",
            dependencies: [
                "SwapfairDaemon", "SwapfairConfig", "SwapfairPolicy", "SwapfairCgroup", "SwapfairTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/TickBenchmark",
            swiftSettings: strict),
        .testTarget(name: "SwapfairNBDTests", dependencies: ["SwapfairNBD"], swiftSettings: strict),
        .testTarget(name: "SwapfairWorkloadTests", dependencies: ["SwapfairWorkload"], swiftSettings: strict),
        .testTarget(name: "SwapfairTrackingTests", dependencies: ["SwapfairTracking"], swiftSettings: strict),
        .testTarget(name: "SwapfairUblkTests", dependencies: ["SwapfairUblk", "SwapfairExport", "SwapfairIO", "SwapfairSys"], swiftSettings: strict),
        .testTarget(name: "SwapfairQMPTests", dependencies: ["SwapfairQMP", "SwapfairSys"], swiftSettings: strict),
        .testTarget(name: "SwapfairIOTests", dependencies: ["SwapfairIO", "SwapfairTestSupport"], swiftSettings: strict),
        .testTarget(name: "SwapfairPolicyTests", dependencies: ["SwapfairPolicy", "SwapfairSimulation", "SwapfairTestSupport"], swiftSettings: strict),
        .testTarget(name: "SwapfairSystemdTests", dependencies: ["SwapfairSystemd"], swiftSettings: strict),
        .testTarget(name: "SwapfairConfigTests", dependencies: ["SwapfairConfig"], swiftSettings: strict),
        .testTarget(name: "SwapfairCgroupTests", dependencies: ["SwapfairCgroup", "SwapfairTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "SwapfairDaemonTests",
            dependencies: ["SwapfairDaemon", "SwapfairCgroup", "SwapfairConfig", "SwapfairPolicy", "SwapfairTestSupport",
                           "SwapfairSys", "SwapfairNBD", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
    ]
)
