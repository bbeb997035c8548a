import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// The boot-sector app (payloads/bootcounter.S), assembled with binutils at test time into a
/// 1 MiB raw disk: sector 0 the program, sector 1 its boot counter (zero), the rest zero.
enum BootCounter {
    static let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/payloads/bootcounter.S"

    /// Builds the disk in `dir`; `ignoreACPI` assembles the variant that never answers the power button.
    static func disk(in dir: String, ignoreACPI: Bool = false) throws -> BaseImage {
        let tag = ignoreACPI ? "deaf" : "acpi"
        let object = dir + "/bootcounter-\(tag).o"
        let binary = dir + "/bootcounter-\(tag).bin"
        try sh(["as", "--32"] + (ignoreACPI ? ["--defsym", "IGNORE_ACPI=1"] : []) + ["-o", object, source], timeout: .seconds(60))
        try sh(["ld", "-m", "elf_i386", "-Ttext", "0x7c00", "--oformat", "binary", "-o", binary, object], timeout: .seconds(60))
        let sector = try Data(contentsOf: URL(fileURLWithPath: binary))
        #expect(sector.count == 512, "a boot sector is exactly 512 bytes")
        #expect(sector.suffix(2) == Data([0x55, 0xaa]), "the BIOS boots only a sector ending in 55 aa")
        var image = sector
        image.append(Data(count: (1 << 20) - sector.count))
        let path = dir + "/bootcounter-\(tag).raw"
        try image.write(to: URL(fileURLWithPath: path))
        // The content store keeps verified images read-only; so does this test.
        chmod(path, 0o444)
        return try BaseImage.inspect(path)
    }

    /// The app's manifest, as a controller would write it (memory in KiB).
    static func manifest(name: String = "counter", memoryKiB: Int = 65536, cpus: Int = 1, readOnly: Bool = false,
                         mode: String = "HV_HVM", vnc: Bool = false) throws -> VMManifest {
        let json = """
            {"acKind": "VMManifest", "acVersion": "1.1.1", "name": "\(name)", "enablevnc": \(vnc), "vmmode": "\(mode)",
             "images": [{"imagename": "boot", "maxsize": 1024, "maxsizeUnit": "MB", "readonly": \(readOnly),
                         "preserve": false, "target": "Disk", "drvtype": "HDD"}],
             "resources": [{"name": "cpus", "value": \(cpus)}, {"name": "memory", "value": \(memoryKiB)}]}
            """
        return try VMManifest(json: Array(json.utf8))
    }

    /// The boot counters the app printed, in order ("outpost-app: boot N" lines).
    static func boots(_ console: String) -> [Int] {
        console.split(whereSeparator: \.isNewline).compactMap { line in
            line.hasPrefix("outpost-app: boot ") ? Int(line.dropFirst("outpost-app: boot ".count)) : nil
        }
    }
}
