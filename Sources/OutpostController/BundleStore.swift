import Crypto
import Foundation
import OutpostBundle

/// The bundles the controller serves. A bundle is added only if the fleet's
/// trust anchors (DIR/trust) accept its signature and its payload digest:
/// the controller refuses what its devices would refuse, so a bad bundle is
/// caught by the administrator, not by every device in turn.
public final class BundleStore: Sendable {
    public let directory: String
    public let trustDirectory: String

    public struct File: Sendable {
        public var path: String
        public var size: Int
    }

    /// What `add` made of a bundle.
    public struct Added: Codable, Sendable {
        public var name: String
        public var version: String
        public var sha256: String
        public var size: UInt64
        public var signedBy: String
    }

    public init(directory: String, trustDirectory: String) {
        self.directory = directory
        self.trustDirectory = trustDirectory
    }

    /// A bundle by name: only plain names (no path), only regular files.
    public func file(named name: String) -> File? {
        guard Self.validName(name) else { return nil }
        let p = directory + "/" + name
        var st = stat()
        guard stat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return File(path: p, size: Int(st.st_size))
    }

    static func validName(_ n: String) -> Bool {
        !n.isEmpty && n.utf8.count <= 128 && !n.hasPrefix(".")
            && n.utf8.allSatisfy { c in (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2e || c == 0x2d || c == 0x5f }
    }

    /// Verifies `path` against the trust anchors (signature, manifest,
    /// payload digest), then copies it in as `VERSION-SHA8.bundle`.
    public func add(path: String) throws(ControllerError) -> Added {
        let trust: TrustStore
        do { trust = try TrustStore.load(directory: trustDirectory) } catch {
            throw .bundleRefused(path: path, reason: "no usable trust anchors (\(error)); copy the fleet's public keys into \(trustDirectory)")
        }
        let verified: VerifiedBundle
        do {
            let source = try FilePayloadSource(path: path)
            verified = try BundleVerifier.verify(source, trust: trust, policy: BundlePolicy())
            try BundleVerifier.verifyPayload(source, verified)
        } catch {
            throw .bundleRefused(path: path, reason: error.description)
        }
        // Copy while hashing the whole file (the optional BaseOS.sha256).
        guard let input = FileHandle(forReadingAtPath: path) else { throw .io(path: path, reason: "cannot open the bundle") }
        defer { try? input.close() }
        let tmp = directory + "/.incoming-\(UUID().uuidString)"
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let out = FileHandle(forWritingAtPath: tmp) else {
            throw .io(path: tmp, reason: "cannot create the file")
        }
        var hasher = SHA256()
        var size: UInt64 = 0
        do {
            while true {
                let chunk = try input.read(upToCount: 1 << 20) ?? Data()
                if chunk.isEmpty { break }
                hasher.update(data: chunk)
                try out.write(contentsOf: chunk)
                size += UInt64(chunk.count)
            }
            try out.synchronize()
            try out.close()
        } catch {
            try? out.close()
            unlink(tmp)
            throw .io(path: tmp, reason: "cannot copy the bundle (\(error))")
        }
        let digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
        let safeVersion = String(verified.manifest.osVersion.map { c -> Character in
            c.isASCII && (c.isLetter || c.isNumber || c == "." || c == "-" || c == "_") ? c : "_"
        })
        let name = "\(safeVersion)-\(digest.prefix(8)).bundle"
        guard rename(tmp, directory + "/" + name) == 0 else {
            let e = errno
            unlink(tmp)
            throw .io(path: directory + "/" + name, reason: errnoString(e))
        }
        return Added(name: name, version: verified.manifest.osVersion, sha256: digest, size: size, signedBy: verified.signedBy.description)
    }

    public func list() -> [File] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().compactMap { file(named: $0) }
    }
}
