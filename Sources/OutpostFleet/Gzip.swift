// gzip for log batches (RFC 1952 through zlib): logs are text and shrink
// about tenfold, which matters on metered links. The controller accepts
// Content-Encoding: gzip on /logs.

import CZlib

enum Gzip {
    static func compress(_ input: [UInt8], level: Int32 = 6) throws(FleetError) -> [UInt8] {
        var stream = z_stream()
        guard CZlib_deflateInitGzip(&stream, level) == Z_OK else { throw .compression(detail: "deflateInit2 failed") }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(input.count))) + 32
        var output = [UInt8](repeating: 0, count: bound)
        var source = input
        let rc: Int32 = source.withUnsafeMutableBufferPointer { inBuf in
            output.withUnsafeMutableBufferPointer { outBuf in
                stream.next_in = inBuf.baseAddress
                stream.avail_in = uInt(inBuf.count)
                stream.next_out = outBuf.baseAddress
                stream.avail_out = uInt(outBuf.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard rc == Z_STREAM_END else { throw .compression(detail: "deflate returned \(rc)") }
        return Array(output.prefix(Int(stream.total_out)))
    }

    /// The inverse, refusing output beyond `limit` (tests and diagnostics).
    static func decompress(_ input: [UInt8], limit: Int = 16 << 20) throws(FleetError) -> [UInt8] {
        var stream = z_stream()
        guard CZlib_inflateInitGzip(&stream) == Z_OK else { throw .compression(detail: "inflateInit2 failed") }
        defer { inflateEnd(&stream) }
        var source = input
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        return try source.withUnsafeMutableBufferPointer { (inBuf) throws(FleetError) -> [UInt8] in
            stream.next_in = inBuf.baseAddress
            stream.avail_in = uInt(inBuf.count)
            while true {
                let (rc, produced): (Int32, Int) = chunk.withUnsafeMutableBufferPointer { outBuf in
                    stream.next_out = outBuf.baseAddress
                    stream.avail_out = uInt(outBuf.count)
                    let rc = inflate(&stream, Z_NO_FLUSH)
                    return (rc, outBuf.count - Int(stream.avail_out))
                }
                output += chunk[..<produced]
                guard output.count <= limit else { throw .compression(detail: "more than \(limit) bytes once decompressed") }
                if rc == Z_STREAM_END { return output }
                guard rc == Z_OK else { throw .compression(detail: "inflate returned \(rc)") }
                if produced == 0 && stream.avail_in == 0 { throw .compression(detail: "truncated gzip stream") }
            }
        }
    }
}
