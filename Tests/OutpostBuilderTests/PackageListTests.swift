import Foundation
import Testing
@testable import OutpostBuilder

/// rootfs/packages.txt as the slot assembly reads it: names, comments, and `!name` exclusions that
/// keep a package (and what only it brings) out of the dependency closure apt-cache resolves.
@Suite struct PackageListTests {
    static let packagesTxt = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../rootfs/packages.txt").standardized.path

    @Test func exclusionsAreReadApartFromNames() {
        let text = "libc6  # the C library\n!tpm-udev # not here\n\n  zlib1g\n"
        #expect(DebianPackages.parseList(text) == ["libc6", "zlib1g"])
        #expect(DebianPackages.parseExclusions(text) == ["tpm-udev"])
    }

    /// The slot's real list: the TPM libraries are in, tpm-udev and the udev/PAM stack it would
    /// bring are not (apt-cache reads the host's package lists, as the builder does).
    @Test func theSlotsClosureHasTheTPMLibrariesButNotUdevOrPAM() throws {
        let text = try String(contentsOfFile: Self.packagesTxt, encoding: .utf8)
        let packages = DebianPackages()
        let closure = try packages.closure(of: DebianPackages.parseList(text), excluding: DebianPackages.parseExclusions(text))
        for wanted in ["libtss2-esys-3.0.2-0", "libtss2-tcti-device0", "libssl3", "e2fsprogs"] {
            #expect(closure.contains(wanted), "\(wanted) missing from \(closure)")
        }
        for unwanted in ["tpm-udev", "udev", "passwd", "adduser", "libpam0g"] {
            #expect(!closure.contains(unwanted), "\(unwanted) in the slot: \(closure)")
        }
        let without = try packages.closure(of: DebianPackages.parseList(text))
        #expect(without.contains("tpm-udev") && without.contains("udev"), "the exclusion is what keeps them out: \(without)")
    }

    /// The app runner's QEMU: the binary, SeaBIOS and the data files are in; the GUI, audio,
    /// SPICE (GStreamer, iso-codes) and smartcard (NSS) libraries its modules link are not.
    @Test func theSlotsClosureHasQEMUButNotItsGUIAudioOrSPICELibraries() throws {
        let text = try String(contentsOfFile: Self.packagesTxt, encoding: .utf8)
        let closure = try DebianPackages().closure(of: DebianPackages.parseList(text),
                                                   excluding: DebianPackages.parseExclusions(text))
        for wanted in ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios", "libglib2.0-0", "libslirp0"] {
            #expect(closure.contains(wanted), "\(wanted) missing from \(closure)")
        }
        for unwanted in ["libspice-server1", "libgstreamer1.0-0", "iso-codes", "libasound2", "libgbm1", "libnss3",
                         "libcacard0", "libdb5.3", "ovmf"] {
            #expect(!closure.contains(unwanted), "\(unwanted) in the slot: \(closure)")
        }
    }
}
