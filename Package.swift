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
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
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

        // Host side: layout spec → filesystems → verity → disk → outputs.
        .target(name: "OutpostBuilder", dependencies: [
            "OutpostDisk",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .executableTarget(name: "outpost", dependencies: [
            "OutpostBuilder", "OutpostDisk", "OutpostBundle", "OutpostUpdate",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // HTTP/1.1 over TCP or TLS (system OpenSSL), pinned to a port or through a
        // proxy: downloads, connectivity probes, the controller.
        .target(name: "OutpostHTTP", dependencies: ["COpenSSL", "OutpostPlatform"]),

        // Device side: early boot, supervisor, updater, network.
        .target(name: "OutpostAgent", dependencies: ["OutpostDisk", "OutpostShims", "CBlkid", "OutpostUpdate", "OutpostBundle", "OutpostHTTP", "OutpostNetwork", "OutpostPlatform"]),
        .executableTarget(name: "outpostd", dependencies: ["OutpostAgent"]),
        .target(name: "OutpostNetwork", dependencies: ["CNetlink", "OutpostHTTP", "OutpostPlatform"]),

        .testTarget(name: "OutpostPlatformTests", dependencies: ["OutpostPlatform"]),
        .testTarget(name: "OutpostDiskTests", dependencies: ["OutpostDisk"]),
        .testTarget(name: "OutpostBundleTests", dependencies: ["OutpostBundle"]),
        .testTarget(name: "OutpostUpdateTests", dependencies: ["OutpostUpdate", "OutpostBundle", "OutpostDisk"]),
        .testTarget(name: "OutpostBuilderTests", dependencies: ["OutpostBuilder", "OutpostDisk"]),
        .testTarget(name: "OutpostAgentTests", dependencies: ["OutpostAgent", "OutpostDisk"], exclude: ["boot-direct.sh"]),
        .testTarget(name: "OutpostNetworkTests", dependencies: ["OutpostNetwork", "OutpostHTTP"], exclude: ["connect-proxy.py", "short-lease-dhcpd.py"]),
        .testTarget(name: "OutpostHTTPTests", dependencies: ["OutpostHTTP"]),
        // Boots the built image in QEMU; needs ./build.sh's outputs in out/.
        .testTarget(name: "OutpostSystemTests", dependencies: ["OutpostDisk"]),
    ],
    swiftLanguageModes: [.v6]
)
