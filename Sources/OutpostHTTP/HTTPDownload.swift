// Downloads a file (an update bundle) over HTTP or HTTPS into PERSIST,
// resuming an interrupted transfer with a Range request instead of starting
// over: a device on a metered cellular link must not pay twice for the same
// bytes.
//
//   GET /path  Range: bytes=<have>-      (only when a partial file exists)
//   206 + Content-Range: bytes <have>-<end>/<total>  → append
//   200                                              → the server ignored
//                                                      Range: start over
//   416 with a partial file                          → already complete
//
// The bundle is signed, so TLS is not what protects the device from a bad
// image; it keeps the transfer private and gets through proxies that only
// pass HTTPS.

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform

/// Why a download failed, with the URL or the file that failed.
public enum DownloadError: Error, Equatable, CustomStringConvertible {
    case http(HTTPError)
    case status(code: Int, url: String)
    /// Writing the downloaded bytes to the destination file failed.
    case system(SystemError)
    case badRange(url: String, detail: String)
    case gaveUp(url: String, attempts: Int, last: String)
    /// The server announced or sent more than `maxBytes`: stopped before the disk fills.
    case tooLarge(url: String, limit: UInt64)

    public var description: String {
        switch self {
        case let .http(e): return e.description
        case let .status(c, u): return "\(u) answered HTTP \(c)"
        case let .system(error): return error.description
        case let .badRange(u, d): return "\(u): \(d)"
        case let .gaveUp(u, n, last): return "download of \(u) failed after \(n) attempts: \(last)"
        case let .tooLarge(u, limit): return "\(u) is larger than the \(limit) bytes expected"
        }
    }
}

public struct HTTPDownload {
    public var url: HTTPURL
    public var destination: String
    public var options: HTTPOptions
    /// Bounded retries: each attempt resumes where the last one stopped.
    public var maxAttempts = 8
    /// The pause after the first failed attempt; it doubles, up to 30 s.
    public var firstBackoff: Duration = .milliseconds(500)
    /// The file's largest acceptable size: a server announcing more is refused and one sending
    /// more is cut off, so a wrong or hostile answer cannot fill PERSIST. nil: no bound.
    public var maxBytes: UInt64?

    public init(url: HTTPURL, destination: String, options: HTTPOptions = HTTPOptions()) {
        self.url = url
        self.destination = destination
        self.options = options
    }

    /// Fetches the whole file, resuming after every interruption; returns
    /// the number of body bytes received over the network in this call.
    /// `progress` gets (bytes on disk, total when known).
    @discardableResult
    public func run(progress: (UInt64, UInt64?) -> Void = { _, _ in }) throws(DownloadError) -> UInt64 {
        var received: UInt64 = 0
        var last = ""
        var pause = firstBackoff
        for attempt in 1...max(1, maxAttempts) {
            do {
                if try self.attempt(received: &received, progress: progress) { return received }
                last = "connection closed early"
            } catch {
                switch error {
                case .status, .system, .badRange, .tooLarge: throw error   // retrying cannot help
                case .http(let e): last = e.description
                case .gaveUp: last = error.description
                }
            }
            if attempt < maxAttempts {
                let ms = pause.components.seconds * 1000 + pause.components.attoseconds / 1_000_000_000_000_000
                usleep(useconds_t(clamping: ms * 1000))
                pause = min(pause * 2, .seconds(30))
            }
        }
        throw .gaveUp(url: url.description, attempts: maxAttempts, last: last)
    }

    /// One request. Returns true when the file is complete.
    func attempt(received: inout UInt64, progress: (UInt64, UInt64?) -> Void) throws(DownloadError) -> Bool {
        let have = Self.fileSize(destination)
        var request = HTTPRequest(url, headers: [("User-Agent", "outpostd")])
        if have > 0 { request.headers.append(("Range", "bytes=\(have)-")) }
        let response: HTTPResponse
        do { response = try HTTPClient.send(request, options: options) } catch { throw .http(error) }

        var offset: UInt64
        var total: UInt64?
        switch response.status {
        case 206:
            // Content-Range: bytes START-END/TOTAL; we only ever ask for START = have.
            let range = response.headers["content-range"] ?? ""
            guard range.hasPrefix("bytes "), let dash = range.firstIndex(of: "-"), let slash = range.firstIndex(of: "/"),
                  let start = UInt64(range[range.index(range.startIndex, offsetBy: 6)..<dash]), start == have else {
                throw .badRange(url: url.description, detail: "Content-Range '\(range)' does not answer bytes=\(have)-")
            }
            offset = start
            total = UInt64(range[range.index(after: slash)...])
        case 200:
            offset = 0
            total = response.contentLength
        case 416 where have > 0:
            return true   // we already have every byte
        default:
            throw .status(code: response.status, url: url.description)
        }

        if let maxBytes, let total, total > maxBytes { throw .tooLarge(url: url.description, limit: maxBytes) }

        let out: Int32
        do throws(SystemError) {
            out = try systemCall("open", destination) { open(destination, O_WRONLY | O_CREAT | O_CLOEXEC | (offset == 0 ? O_TRUNC : 0), 0o600) }
        } catch { throw .system(error) }
        defer { close(out) }
        var chunk = [UInt8](repeating: 0, count: 256 << 10)
        var failure: DownloadError?
        while true {
            let n: Int
            do {
                n = try chunk.withTypedMutableBytes { (raw) throws(HTTPError) -> Int in try response.read(into: raw) }
            } catch {
                failure = .http(error)   // keep what arrived; the next attempt resumes after it
                break
            }
            if n == 0 { break }
            if let maxBytes, offset + UInt64(n) > maxBytes {
                failure = .tooLarge(url: url.description, limit: maxBytes)   // stop before writing past the limit
                break
            }
            var done = 0
            while done < n {
                do throws(SystemError) {
                    done += try systemCall("pwrite", destination) {
                        chunk.withUnsafeBytes { raw -> Int in
                            guard let base = raw.baseAddress else { errno = EFAULT; return -1 }
                            return pwrite(out, base + done, n - done, off_t(offset) + off_t(done))
                        }
                    }
                } catch { throw .system(error) }
            }
            offset += UInt64(n)
            received += UInt64(n)
            progress(offset, total)
        }
        do throws(SystemError) { try systemCall("fsync", destination) { fsync(out) } } catch { throw .system(error) }
        if let failure { throw failure }
        guard let total else { return true }   // no length: the close marked the end
        return offset >= total
    }

    static func fileSize(_ path: String) -> UInt64 {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
    }
}
