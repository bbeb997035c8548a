// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as the UEFI
// specification requires for GPT headers and partition entry arrays.

/// The GPT checksum. A table-driven implementation: the table is built once.
public enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 {
            c = (c & 1) != 0 ? (0xEDB8_8320 ^ (c >> 1)) : (c >> 1)
        }
        return c
    }

    /// Checksums `bytes`; pass a previous result as `seed` to continue a running CRC.
    public static func checksum<C: Collection>(_ bytes: C, seed: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        var crc = ~seed
        for b in bytes {
            crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8)
        }
        return ~crc
    }
}
