// The protective MBR in LBA 0. It claims the whole disk with one partition of
// type 0xEE so that MBR-only tools leave the GPT alone.
//
//   0      446                 462            510   512
//   +------+-------------------+--------------+-----+
//   | boot | entry 1 (16 B)    | entries 2..4 | 55AA|
//   | code | 00 000200 EE FFFFFF 01000000 size| zero|     |
//   +------+-------------------+--------------+-----+

/// Builds and checks the protective MBR.
public enum ProtectiveMBR {
    public static let partitionType: UInt8 = 0xEE

    /// The 512-byte protective MBR for a disk of `sectorCount` 512-byte sectors.
    public static func encode(sectorCount: UInt64) -> [UInt8] {
        var w = LittleEndianWriter(capacity: 512)
        w.zeros(446)
        w.u8(0x00)                          // not bootable
        w.append([0x00, 0x02, 0x00])        // CHS of first sector (0/0/2)
        w.u8(partitionType)
        w.append([0xFF, 0xFF, 0xFF])        // CHS of last sector: beyond CHS range
        w.u32(1)                            // first LBA
        w.u32(UInt32(min(sectorCount - 1, UInt64(UInt32.max))))
        w.zeros(48)                         // entries 2-4 unused
        w.append([0x55, 0xAA])
        return w.bytes
    }

    /// True when `sector` carries a 0xEE partition and the boot signature.
    public static func isProtective(_ sector: [UInt8]) -> Bool {
        guard sector.count >= 512, sector[510] == 0x55, sector[511] == 0xAA else { return false }
        return (0..<4).contains { sector[446 + 16 * $0 + 4] == partitionType }
    }
}
