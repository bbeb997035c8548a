// swift-tools-version: 6.1
// Outpost: an appliance OS for edge nodes. The data flows
// OutpostDisk (on-disk contract) → OutpostBuilder (host) / OutpostAgent (device).
import PackageDescription

/// The test images' outpostd: `swift build --traits FaultInjection` compiles the fault hooks
/// into the agent and outpostd only, so that build shares every other module with the release
/// build instead of needing a build tree of its own. Release images never enable it.
let faultInjection: [SwiftSetting] = [.define("OUTPOST_FAULT_INJECTION", .when(traits: ["FaultInjection"]))]

let package = Package(
    name: "Outpost",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "outpost", targets: ["outpost"]),
        .executable(name: "outpostd", targets: ["outpostd"]),
        .executable(name: "outpost-init", targets: ["outpost-init"]),
        .executable(name: "outpost-controller", targets: ["outpost-controller"]),
    ],
    traits: [.trait(name: "FaultInjection", description: "Fault hooks in outpostd, for the supervisor's QEMU tests only.")],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "4.5.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", exact: "1.0.2"),
        // swift-subprocess asks for swift-system "from: 1.5.0"; pinned here so the
        // resolved version cannot drift.
        .package(url: "https://github.com/apple/swift-system", exact: "1.8.1"),
        // The fleet controller (outpost-controller) and the device API's wire format.
        // No default traits: BinaryDelimitedStreams imports full Foundation (and
        // ICU, ~47 MB) into the static outpostd; nothing here uses it or FieldMask.
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0", traits: []),
        .package(url: "https://github.com/hummingbird-project/hummingbird", exact: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates", exact: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", exact: "1.7.4"),
        .package(url: "https://github.com/groue/GRDB.swift", exact: "7.10.0"),
        .package(url: "https://github.com/adam-fowler/compress-nio", exact: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client", exact: "1.37.0"),
        // The controller's own health on its metrics port (Prometheus text format).
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        // The controller's PostgreSQL store (`serve --database postgres://…`).
        .package(url: "https://github.com/vapor/postgres-nio", exact: "1.33.2"),
    ],
    targets: [
        // The one C shim: function-like kernel macros, ioctls, fork/exec.
        .target(name: "OutpostShims"),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CNetlink", pkgConfig: "libnl-route-3.0", providers: [.apt(["libnl-route-3-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // gzip for the device's log batches (zlib1g on the image, zlib1g-dev to build).
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // tpm2-tss (ESYS, the TCTI loader, MU, RC) for the TPM identity. Shared
        // libraries only: the slot ships libtss2-* and the device TCTI.
        .systemLibrary(name: "CTSS2", pkgConfig: "tss2-esys", providers: [.apt(["libtss2-dev"])]),

        // The one platform layer under every device module: the syscall error and
        // its EINTR loop, atomic file replacement, the monotonic clock, named
        // threads and the signals that wake them. `Synchronization.Mutex` is the lock.
        .target(name: "OutpostPlatform", dependencies: [
            "OutpostShims",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),

        // The on-disk contract: GPT, slot attributes, boot selection. Pure Swift.
        .target(name: "OutpostDisk", dependencies: ["OutpostPlatform"]),

        // Early boot (docs/boot.md): modules, the slot by PARTUUID, dm-verity, CONFIG
        // and PERSIST, switch root, the exec into the verified root's outpostd; the
        // console and PID 1's stop path. No Foundation: it is all of outpost-init.
        .target(name: "OutpostEarlyBoot", dependencies: ["OutpostPlatform", "OutpostShims", "CBlkid", "OutpostDisk"]),
        // Settings for the Swift runtime, made before its static initializers run in outpost-init (start.c).
        .target(name: "CInitStart"),
        // The initramfs's /init: one static executable (the Swift runtime, glibc,
        // libstdc++ and libblkid linked in), so the kernel starts it without the
        // dynamic loader and the initramfs carries no shared libraries.
        .executableTarget(name: "outpost-init", dependencies: ["OutpostEarlyBoot", "CInitStart"],
                          linkerSettings: [.unsafeFlags(["-static-executable"], .when(configuration: .release))]),

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
        // Fleet/ wires the controller client (OutpostFleet) to the update service,
        // the network manager and the reboot path.
        .target(name: "OutpostAgent", dependencies: ["OutpostEarlyBoot", "OutpostDisk", "OutpostShims", "CBlkid", "OutpostUpdate", "OutpostBundle", "OutpostHTTP", "OutpostNetwork", "OutpostPlatform", "OutpostFleet", "OutpostTrust", "OutpostProto", "OutpostApps",
                                                    .product(name: "Crypto", package: "swift-crypto")],
                swiftSettings: faultInjection),
        .executableTarget(name: "outpostd", dependencies: [
            "OutpostAgent", "OutpostShims",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: faultInjection),
        .target(name: "OutpostNetwork", dependencies: ["CNetlink", "OutpostHTTP", "OutpostPlatform"]),

        // What tests share (commands, the openssl PKI, the seeded generator, temporary
        // directories, deadlines); only test targets depend on it.
        .target(name: "OutpostTestSupport", dependencies: ["OutpostProcess", "OutpostQEMU"], path: "Tests/OutpostTestSupport", exclude: ["connect-proxy.py"]),

        .testTarget(name: "OutpostPlatformTests", dependencies: ["OutpostPlatform", "OutpostTestSupport"]),
        .testTarget(name: "OutpostTestSupportTests", dependencies: ["OutpostTestSupport"]),
        .testTarget(name: "OutpostDiskTests", dependencies: ["OutpostDisk", "OutpostTestSupport"]),
        .testTarget(name: "OutpostBundleTests", dependencies: ["OutpostBundle", "OutpostTestSupport"]),
        .testTarget(name: "OutpostUpdateTests", dependencies: ["OutpostUpdate", "OutpostBundle", "OutpostDisk", "OutpostTestSupport"]),
        .testTarget(name: "OutpostBuilderTests", dependencies: ["OutpostBuilder", "OutpostDisk", "OutpostProcess", "OutpostTestSupport"]),
        .testTarget(name: "OutpostAgentTests", dependencies: ["OutpostAgent", "OutpostEarlyBoot", "OutpostApps", "OutpostDisk", "OutpostPlatform", "OutpostUpdate", "OutpostBundle", "OutpostProto", "OutpostTrust", "OutpostTestSupport"]),
        .testTarget(name: "OutpostNetworkTests", dependencies: ["OutpostNetwork", "OutpostApps", "OutpostHTTP", "OutpostTestSupport"], exclude: ["short-lease-dhcpd.py"]),
        .testTarget(name: "OutpostHTTPTests", dependencies: ["OutpostHTTP", "OutpostTestSupport"]),
        // App instances: the seed's VMManifest, the content store on PERSIST, qcow2
        // overlays. FoundationEssentials only: it links into the static outpostd.
        .target(name: "OutpostApps", dependencies: [
            "OutpostHTTP", "OutpostPlatform", "OutpostShims", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // payloads/: the boot-sector test app, assembled with binutils at test time.
        .testTarget(name: "OutpostAppsTests", dependencies: ["OutpostApps", "OutpostHTTP", "OutpostNetwork", "OutpostPlatform", "OutpostTestSupport"],
                    exclude: ["payloads"]),

        // The device–controller API (proto/outpost/api/v1), generated by
        // scripts/gen-proto.sh and committed: CI never builds protoc-gen-swift.
        .target(name: "OutpostProto", dependencies: [
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        // The device's controller client: identity, registration, config poll,
        // commands, info outbox, metrics and the log store. FoundationEssentials
        // only: it links into the static outpostd.
        .target(name: "OutpostFleet", dependencies: [
            "OutpostProto", "OutpostHTTP", "OutpostPlatform", "COpenSSL", "CZlib",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),

        // The device identity in the TPM (tss2 over /dev/tpmrm0) behind
        // OutpostFleet's DeviceIdentity, and the choice between it and the file
        // identity. FoundationEssentials only: it links into the static outpostd.
        // TPMVault: the vault's TPM side (NV floor, sealing, the signed-policy
        // unseal) over OutpostBundle's policy calculator.
        .target(name: "OutpostTrust", dependencies: ["OutpostFleet", "OutpostProto", "OutpostHTTP", "OutpostBundle", "OutpostPlatform",
                                                     "COpenSSL", "CTSS2"]),
        // OutpostQEMU: `outpost run`'s TPM manufacture (EK certificates) read back by the device code.
        .testTarget(name: "OutpostTrustTests", dependencies: ["OutpostTrust", "OutpostFleet", "OutpostHTTP", "OutpostAttestation", "OutpostBundle",
                                                              "OutpostQEMU", "OutpostTestSupport"]),
        // The controller's quote verifier: TPMS_ATTEST and TPM2B_PUBLIC parsed in
        // pure Swift, P-256 ECDSA and SHA-256 from swift-crypto; no TPM, no
        // Foundation, so both the controller and the device tests can use it.
        // CryptoExtras for AES-128-CFB in the software MakeCredential; swift-certificates
        // already builds it for the controller.
        .target(name: "OutpostAttestation", dependencies: [
            "OutpostBundle", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "CryptoExtras", package: "swift-crypto"),
        ]),
        // bench/attestation-verify.sh: quotes verified per second against a bare ECDSA verify.
        .executableTarget(name: "attestation-bench", dependencies: [
            "OutpostAttestation", .product(name: "Crypto", package: "swift-crypto"),
        ], path: "bench/attestation-bench"),
        .testTarget(name: "OutpostAttestationTests", dependencies: [
            "OutpostAttestation", "OutpostBundle", "OutpostTestSupport", .product(name: "Crypto", package: "swift-crypto"),
        ]),

        // The reference fleet controller: device API over mutual TLS, the
        // admin socket, the SQLite store, certificate authority.
        .target(name: "OutpostController", dependencies: [
            // OutpostApps: set-apps validates the file with the device's own apps.json parser.
            "OutpostProto", "OutpostBundle", "OutpostAttestation", "OutpostApps",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "CompressNIO", package: "compress-nio"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "outpost-controller", dependencies: [
            "OutpostController", "OutpostBundle", "OutpostProto",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // The device client against the reference controller, in one process.
        .testTarget(name: "OutpostFleetTests", dependencies: [
            // OutpostController for its AdminClient; the controller itself runs as a child process.
            "OutpostFleet", "OutpostProto", "OutpostHTTP", "OutpostPlatform", "OutpostController", "OutpostTestSupport",
            // Attestation end to end: a swtpm behind OutpostTrust's attestor, a signed bundle's PCR predictions.
            "OutpostTrust", "OutpostBundle", .product(name: "Crypto", package: "swift-crypto"),
            // The controller's secrets end to end: the agent's vault adapter over a vault directory on the host.
            "OutpostAgent",
        ]),
        .testTarget(name: "OutpostControllerTests", dependencies: [
            "OutpostController", "OutpostProto", "OutpostBundle", "OutpostTestSupport",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "CompressNIO", package: "compress-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
            // EK certificates and makers' CAs built in the test (EKCertificatePolicyTests).
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            // A database as an older controller left it (migration tests).
            .product(name: "GRDB", package: "GRDB.swift"),
        ], exclude: ["wire_client.py"]),
        // Boots the built image in QEMU; needs ./build.sh's outputs in out/.
        // pty-run.py drives `outpost run` in a pseudo-terminal for TerminalTests.
        .testTarget(name: "OutpostSystemTests", dependencies: ["OutpostDisk", "OutpostTestSupport", "OutpostController", "OutpostProto"],
                    exclude: ["pty-run.py"]),
    ],
    swiftLanguageModes: [.v6]
)
