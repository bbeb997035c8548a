import Foundation
import OutpostHTTP
import OutpostTestSupport
import Testing
@testable import OutpostApps

/// A served image: random bytes in `dir/name` and their digest from sha256sum (not our code).
func servedImage(_ dir: String, _ name: String, size: Int, seed: UInt64) throws -> (path: String, sha256: String) {
    var rng = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: size)
    for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
    let path = dir + "/" + name
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    let digest = try sh("sha256sum", path).split(separator: " ").first.map(String.init) ?? ""
    return (path, digest)
}

func fileMode(_ path: String) -> mode_t {
    var st = stat()
    return stat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
}

func entries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

@Suite("Content store: free space, Range resume, sha256, shared read-only images, GC")
struct ContentStoreTests {
    @Test func anInterruptedDownloadResumesAndIsStoredOnceReadOnlyByDigest() throws {
        let tmp = try TemporaryDirectory("store-resume")
        let served = tmp.path + "/www"
        try FileManager.default.createDirectory(atPath: served, withIntermediateDirectories: true)
        let image = try servedImage(served, "boot.img", size: 3 << 20, seed: 1)
        let server = try RangeFileServer(root: served, cutAfter: 1 << 20)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let source = ImageSource(name: "boot", url: try HTTPURL("http://127.0.0.1:\(server.port)/boot.img"),
                                 sha256: image.sha256, size: 3 << 20)
        var seen: [ContentStore.Progress] = []
        let path = try store.fetch(source) { seen.append($0) }

        #expect(path == tmp.path + "/store/verified/" + image.sha256)
        #expect(FileManager.default.contentsEqual(atPath: path, andPath: image.path))
        #expect(fileMode(path) == 0o444)
        #expect(entries(tmp.path + "/store/downloading").isEmpty)
        let requests = server.requests()
        #expect(requests.count == 2, "one cut transfer, one resumed: \(requests)")
        #expect(requests.last?.range == "bytes=\(1 << 20)-", "the second request resumes after the first MiB")
        #expect(seen.last == .verifying)
        #expect(seen.contains(.downloading(bytes: 3 << 20, of: 3 << 20)))

        // A second instance using the same image gets the stored file: no request, no copy.
        let again = try store.fetch(ImageSource(name: "other-name", url: try HTTPURL("http://127.0.0.1:1/gone"),
                                                sha256: image.sha256.uppercased(), size: 3 << 20))
        #expect(again == path)
        #expect(server.requests().count == 2)
        #expect(entries(tmp.path + "/store/verified") == [image.sha256])
    }

    @Test func aSHA256MismatchIsRefusedAndNothingIsStored() throws {
        let tmp = try TemporaryDirectory("store-mismatch")
        let image = try servedImage(tmp.path, "app.img", size: 256 << 10, seed: 2)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let wrong = String(repeating: "0", count: 64)
        let source = ImageSource(name: "app", url: try HTTPURL("http://127.0.0.1:\(server.port)/app.img"), sha256: wrong, size: 256 << 10)
        #expect(refusal { _ = try store.fetch(source) }
            == "image app: sha256 is \(image.sha256), expected \(wrong); the download was deleted")
        #expect(entries(tmp.path + "/store/verified").isEmpty)
        #expect(entries(tmp.path + "/store/downloading").isEmpty)
        #expect(store.verified(sha256: wrong) == nil)
    }

    @Test func aFileOfTheWrongSizeIsRefusedAndNothingIsStored() throws {
        let tmp = try TemporaryDirectory("store-size")
        let image = try servedImage(tmp.path, "app.img", size: 100_000, seed: 3)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let source = ImageSource(name: "app", url: try HTTPURL("http://127.0.0.1:\(server.port)/app.img"), sha256: image.sha256, size: 99_999)
        #expect(refusal { _ = try store.fetch(source) }
            == "image app: http://127.0.0.1:\(server.port)/app.img is larger than the 99999 bytes expected")
        // A shorter file is downloaded whole, then refused by its size.
        let short = ImageSource(name: "app", url: source.url, sha256: image.sha256, size: 100_001)
        #expect(refusal { _ = try store.fetch(short) } == "image app: downloaded 100000 bytes, expected 100001; the download was deleted")
        #expect(entries(tmp.path + "/store/verified").isEmpty)
        #expect(entries(tmp.path + "/store/downloading").isEmpty)
    }

    @Test func anImageTooBigForTheFreeSpaceIsRefusedBeforeAnyRequest() throws {
        let tmp = try TemporaryDirectory("store-space")
        let server = try RangeFileServer(root: tmp.path)
        let url = try HTTPURL("http://127.0.0.1:\(server.port)/big.img")
        // An injected figure: 10 MiB free, a 16 MiB image.
        let small = ContentStore(root: tmp.path + "/store", reserve: 1 << 20) { _ throws(AppsError) in 10 << 20 }
        #expect(refusal { _ = try small.fetch(ImageSource(name: "big", url: url, sha256: digestA, size: 16 << 20)) }
            == "image big needs 16.0 MiB (16777216 bytes) plus a 1.0 MiB reserve but \(tmp.path)/store has 10.0 MiB (10485760 bytes) free")
        // The reserve counts: 9.5 MiB fits 10 MiB free, but not with 1 MiB kept back.
        #expect(refusal { _ = try small.fetch(ImageSource(name: "big", url: url, sha256: digestA, size: 9 << 20 + 512 << 10)) }
            .hasPrefix("image big needs 9.5 MiB"))
        // The real statvfs figure of this filesystem, with an image 1 GiB larger than it.
        let free = try ContentStore.statvfsFree(tmp.path)
        let real = ContentStore(root: tmp.path + "/store", reserve: 0)
        #expect(refusal { _ = try real.fetch(ImageSource(name: "huge", url: url, sha256: digestA, size: free + (1 << 30))) }
            .hasPrefix("image huge needs "))
        #expect(server.requests().isEmpty, "nothing was requested")
    }

    @Test func garbageCollectionRemovesImagesAndPartialsNoInstanceReferences() throws {
        let tmp = try TemporaryDirectory("store-gc")
        let a = try servedImage(tmp.path, "a.img", size: 70_000, seed: 4)
        let b = try servedImage(tmp.path, "b.img", size: 80_000, seed: 5)
        let c = try servedImage(tmp.path, "c.img", size: 90_000, seed: 6)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        func source(_ name: String, _ image: (path: String, sha256: String), _ size: UInt64) throws -> ImageSource {
            ImageSource(name: name, url: try HTTPURL("http://127.0.0.1:\(server.port)/\(name).img"), sha256: image.sha256, size: size)
        }
        let pathA = try store.fetch(try source("a", a, 70_000))
        let pathB = try store.fetch(try source("b", b, 80_000))
        // A partial download of c, as an interrupted fetch leaves it.
        try Data(repeating: 1, count: 100).write(to: URL(fileURLWithPath: tmp.path + "/store/downloading/\(c.sha256).part"))

        let removed = try store.collectGarbage(referenced: [a.sha256.uppercased()])
        #expect(Set(removed) == [b.sha256, c.sha256])
        #expect(FileManager.default.fileExists(atPath: pathA))
        #expect(!FileManager.default.fileExists(atPath: pathB))
        #expect(entries(tmp.path + "/store/downloading").isEmpty)
        #expect(try store.collectGarbage(referenced: [a.sha256]).isEmpty)
    }

    @Test func garbageCollectionKeepsTheImageUnderAPreservedOverlay() throws {
        let tmp = try TemporaryDirectory("store-gc-preserve")
        let old = try servedImage(tmp.path, "old.img", size: 64 << 10, seed: 10)
        let new = try servedImage(tmp.path, "new.img", size: 64 << 10, seed: 11)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let oldPath = try store.fetch(ImageSource(name: "d", url: try HTTPURL("http://127.0.0.1:\(server.port)/old.img"), sha256: old.sha256, size: 64 << 10))
        let newPath = try store.fetch(ImageSource(name: "d", url: try HTTPURL("http://127.0.0.1:\(server.port)/new.img"), sha256: new.sha256, size: 64 << 10))
        // The manifest moved to the new image, but the disk was preserved on the old one.
        let overlay = tmp.path + "/disk.qcow2"
        try QCOW2Overlay.create(at: overlay, base: try BaseImage.inspect(oldPath), minimumSize: 0)
        #expect(try store.collectGarbage(referenced: [new.sha256], overlays: [overlay, tmp.path + "/missing.qcow2"]).isEmpty)
        #expect(FileManager.default.fileExists(atPath: oldPath) && FileManager.default.fileExists(atPath: newPath))
        // Once that overlay is recreated on the new image, the old one goes.
        try QCOW2Overlay.create(at: overlay, base: try BaseImage.inspect(newPath), minimumSize: 0)
        #expect(try store.collectGarbage(referenced: [new.sha256], overlays: [overlay]) == [old.sha256])
    }

    @Test func aServerErrorIsReportedWithTheImageAndLeavesNothingVerified() throws {
        let tmp = try TemporaryDirectory("store-404")
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let url = "http://127.0.0.1:\(server.port)/missing.img"
        #expect(refusal { _ = try store.fetch(ImageSource(name: "m", url: try! HTTPURL(url), sha256: digestA, size: 10)) }
            == "image m: \(url) answered HTTP 404")
        #expect(entries(tmp.path + "/store/verified").isEmpty)
    }
}

@Suite("Content store: partial files left by an earlier run")
struct ContentStorePartialTests {
    @Test func aPartialFileFromAnEarlierRunIsResumedNotRefetched() throws {
        let tmp = try TemporaryDirectory("store-partial")
        let image = try servedImage(tmp.path, "app.img", size: 500_000, seed: 7)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        try FileManager.default.createDirectory(atPath: tmp.path + "/store/downloading", withIntermediateDirectories: true)
        let whole = try Data(contentsOf: URL(fileURLWithPath: image.path))
        try whole.prefix(200_000).write(to: URL(fileURLWithPath: tmp.path + "/store/downloading/\(image.sha256).part"))
        // Only the missing 300,000 bytes must fit.
        let tight = ContentStore(root: store.root, reserve: 0) { _ throws(AppsError) in 300_000 }
        let source = ImageSource(name: "app", url: try HTTPURL("http://127.0.0.1:\(server.port)/app.img"), sha256: image.sha256, size: 500_000)
        let path = try tight.fetch(source)
        #expect(server.requests().map(\.range) == ["bytes=200000-"])
        #expect(FileManager.default.contentsEqual(atPath: path, andPath: image.path))
    }

    @Test func aCorruptPartialFileIsNeverVerifiedAndTheNextFetchStartsClean() throws {
        let tmp = try TemporaryDirectory("store-corrupt")
        let image = try servedImage(tmp.path, "app.img", size: 300_000, seed: 8)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        try FileManager.default.createDirectory(atPath: tmp.path + "/store/downloading", withIntermediateDirectories: true)
        // A partial file whose bytes are not the image's (a torn write before a power cut).
        try Data(repeating: 0xee, count: 100_000).write(to: URL(fileURLWithPath: tmp.path + "/store/downloading/\(image.sha256).part"))
        let source = ImageSource(name: "app", url: try HTTPURL("http://127.0.0.1:\(server.port)/app.img"), sha256: image.sha256, size: 300_000)
        #expect(refusal { _ = try store.fetch(source) }.hasPrefix("image app: sha256 is "))
        #expect(store.verified(sha256: image.sha256) == nil)
        #expect(entries(tmp.path + "/store/downloading").isEmpty)
        let path = try store.fetch(source)
        #expect(FileManager.default.contentsEqual(atPath: path, andPath: image.path))
        #expect(server.requests().map(\.range) == ["bytes=100000-", nil])
    }

    @Test func twoFetchesOfOneImageAtOnceStoreItOnce() async throws {
        let tmp = try TemporaryDirectory("store-concurrent")
        let image = try servedImage(tmp.path, "app.img", size: 2 << 20, seed: 9)
        let server = try RangeFileServer(root: tmp.path)
        let store = ContentStore(root: tmp.path + "/store", reserve: 0)
        let source = ImageSource(name: "app", url: try HTTPURL("http://127.0.0.1:\(server.port)/app.img"), sha256: image.sha256, size: 2 << 20)
        async let first = Task.detached { try store.fetch(source) }.value
        async let second = Task.detached { try store.fetch(source) }.value
        let paths = try await [first, second]
        #expect(paths[0] == paths[1])
        #expect(FileManager.default.contentsEqual(atPath: paths[0], andPath: image.path))
        #expect(server.requests().count == 1, "the second waited and found it stored")
    }
}
