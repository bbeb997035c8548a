// swift-tools-version: 6.0
// Outpost: an appliance OS for edge nodes. The data flows
// OutpostDisk (on-disk contract) → OutpostBuilder (host) / OutpostAgent (device).
import PackageDescription

let package = Package(
    name: "Outpost",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "outpost", targets: ["outpost"]),
        .executable(name: "outpostd", targets: ["outpostd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "4.5.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", exact: "1.0.2"),
        // swift-subprocess asks for swift-system "from: 1.5.0"; pinned here so the
        // resolved version cannot drift.
        .package(url: "https://github.com/apple/swift-system", exact: "1.8.1"),
    ],
    targets: [
        // The one C shim: function-like kernel macros, ioctls, fork/exec.
        .target(name: "OutpostShims"),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CNetlink", pkgConfig: "libnl-route-3.0", providers: [.apt(["libnl-route-3-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),

        // The one platform layer under every device module: the syscall error and
        // its EINTR loop, atomic file replacement, the monotonic clock, named
        // threads and the signals that wake them. `Synchronization.Mutex` is the lock.
        .target(name: "OutpostPlatform", dependencies: [
            "OutpostShims",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),

        // The on-disk contract: GPT, slot attributes, boot selection. Pure Swift.
        .target(name: "OutpostDisk", dependencies: ["OutpostPlatform"]),

        // Signed update bundles: manifest, signatures, trust anchors. Shared by
        // the host CLI and the device.
        .target(name: "OutpostBundle", dependencies: [
            "OutpostDisk", "OutpostPlatform",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // The update engine over a block device: install to the inactive slot,
        // commit, fall back. Pure Swift, so the power-cut simulator runs it.
        .target(name: "OutpostUpdate", dependencies: ["OutpostDisk", "OutpostBundle", "OutpostPlatform"]),

        // The host's one process runner (swift-subprocess): build tools, swtpm, QEMU.
        .target(name: "OutpostProcess", dependencies: [
            .product(name: "Subprocess", package: "swift-subprocess"),
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // Host side: layout spec → filesystems → verity → disk → outputs.
        .target(name: "OutpostBuilder", dependencies: [
            "OutpostDisk", "OutpostProcess",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // `outpost run`: boots an image in QEMU with swtpm and OVMF. Builds nothing.
        .target(name: "OutpostQEMU", dependencies: ["OutpostProcess"]),
        .executableTarget(name: "outpost", dependencies: [
            "OutpostBuilder", "OutpostQEMU", "OutpostDisk", "OutpostBundle", "OutpostUpdate",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // HTTP/1.1 over TCP or TLS (system OpenSSL), pinned to a port or through a
        // proxy: downloads, connectivity probes, the controller.
        .target(name: "OutpostHTTP", dependencies: ["COpenSSL", "OutpostPlatform"]),

        // Device side: early boot, supervisor, updater, network.
        .target(name: "OutpostAgent", dependencies: ["OutpostDisk", "OutpostShims", "CBlkid", "OutpostUpdate", "OutpostBundle", "OutpostHTTP", "OutpostNetwork", "OutpostPlatform"]),
        .executableTarget(name: "outpostd", dependencies: [
            "OutpostAgent",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "OutpostNetwork", dependencies: ["CNetlink", "OutpostHTTP", "OutpostPlatform"]),

        // What tests share (commands, the openssl PKI, the seeded generator, temporary
        // directories, deadlines); only test targets depend on it.
        .target(name: "OutpostTestSupport", path: "Tests/OutpostTestSupport"),

        .testTarget(name: "OutpostPlatformTests", dependencies: ["OutpostPlatform", "OutpostTestSupport"]),
        .testTarget(name: "OutpostTestSupportTests", dependencies: ["OutpostTestSupport"]),
        .testTarget(name: "OutpostDiskTests", dependencies: ["OutpostDisk", "OutpostTestSupport"]),
        .testTarget(name: "OutpostBundleTests", dependencies: ["OutpostBundle", "OutpostTestSupport"]),
        .testTarget(name: "OutpostUpdateTests", dependencies: ["OutpostUpdate", "OutpostBundle", "OutpostDisk", "OutpostTestSupport"]),
        .testTarget(name: "OutpostBuilderTests", dependencies: ["OutpostBuilder", "OutpostDisk", "OutpostProcess", "OutpostTestSupport"]),
        .testTarget(name: "OutpostAgentTests", dependencies: ["OutpostAgent", "OutpostDisk", "OutpostPlatform", "OutpostTestSupport"]),
        .testTarget(name: "OutpostNetworkTests", dependencies: ["OutpostNetwork", "OutpostHTTP", "OutpostTestSupport"], exclude: ["connect-proxy.py", "short-lease-dhcpd.py"]),
        .testTarget(name: "OutpostHTTPTests", dependencies: ["OutpostHTTP", "OutpostTestSupport"]),
        // Boots the built image in QEMU; needs ./build.sh's outputs in out/.
        // pty-run.py drives `outpost run` in a pseudo-terminal for TerminalTests.
        .testTarget(name: "OutpostSystemTests", dependencies: ["OutpostDisk", "OutpostTestSupport"], exclude: ["pty-run.py"]),
    ],
    swiftLanguageModes: [.v6]
)
