// The one error type of the app layer. Every case renders as one line that
// names what was wrong and where: the field path in a manifest or apps.json,
// the image and the numbers for a refused download, the file for a disk.

import OutpostHTTP
import OutpostPlatform

/// Why a manifest, an instance config, the content store or an instance disk refused.
public enum AppsError: Error, Equatable, CustomStringConvertible {
    /// The document is not JSON at all (or too large); `document` says which one.
    case malformedJSON(document: String, detail: String)
    /// A field has a wrong type or value: `images[1].maxsizeUnit: "G" is not one of KB, MB, GB, TB`.
    case invalid(field: String, reason: String)
    /// A required field is absent.
    case missing(field: String)
    /// The image does not fit: refused before a byte is downloaded.
    case notEnoughSpace(image: String, needed: UInt64, free: UInt64, reserve: UInt64, directory: String)
    /// The downloaded file is not what the config promised; it was deleted.
    case digestMismatch(image: String, expected: String, actual: String)
    case sizeMismatch(image: String, expected: UInt64, actual: UInt64)
    case download(image: String, DownloadError)
    case system(SystemError)
    /// A base image the overlay writer cannot use, or an overlay it cannot read back.
    case diskImage(path: String, reason: String)
    /// The app's memory limit does not fit what the host has left: refused before QEMU starts.
    case memoryDoesNotFit(app: String, limit: UInt64, available: UInt64, reserve: UInt64, committed: UInt64)
    /// The manifest asks for something this runner cannot start (a mode, a firmware).
    case unsupported(app: String, reason: String)
    /// A QMP exchange failed: the socket, the command, what went wrong.
    case qmp(socket: String, command: String, reason: String)
    /// QEMU could not be started or ended in a way the instance cannot recover from.
    case qemu(app: String, reason: String)
    /// An operator command named an app the device does not have.
    case unknownApp(name: String, known: [String])
    /// An operator command the instance cannot take in its current state (still downloading, busy).
    case notReady(app: String, reason: String)
    /// The app network (bridge, taps, nftables, dnsmasq) could not be set up: what was done, why it failed.
    case network(operation: String, reason: String)
    /// A vault app while the vault is locked or unavailable; `reason` is the vault's own line.
    case vaultClosed(app: String, reason: String)
    /// The config moved the app between plain PERSIST and the vault while its old instance
    /// directory still exists: refused until the app is purged (its disks are deleted then).
    case storageSwitch(app: String, existing: String, toVault: Bool)

    public var description: String {
        switch self {
        case let .malformedJSON(document, detail): return "\(document): not valid JSON: \(detail)"
        case let .invalid(field, reason): return "\(field): \(reason)"
        case let .missing(field): return "\(field): missing"
        case let .notEnoughSpace(image, needed, free, reserve, directory):
            return "image \(image) needs \(byteCount(needed)) (\(needed) bytes) plus a \(byteCount(reserve)) reserve"
                + " but \(directory) has \(byteCount(free)) (\(free) bytes) free"
        case let .digestMismatch(image, expected, actual):
            return "image \(image): sha256 is \(actual), expected \(expected); the download was deleted"
        case let .sizeMismatch(image, expected, actual):
            return "image \(image): downloaded \(actual) bytes, expected \(expected); the download was deleted"
        case let .download(image, error): return "image \(image): \(error)"
        case let .system(error): return error.description
        case let .diskImage(path, reason): return "\(path): \(reason)"
        case let .memoryDoesNotFit(app, limit, available, reserve, committed):
            let left = available > reserve + committed ? available - reserve - committed : 0
            return "app \(app) needs a \(byteCount(limit)) memory limit (\(limit) bytes) but only \(byteCount(left)) is left:"
                + " \(byteCount(available)) available - \(byteCount(reserve)) reserve - \(byteCount(committed)) for running apps"
        case let .unsupported(app, reason): return "app \(app): \(reason)"
        case let .qmp(socket, command, reason): return "QMP \(command) on \(socket): \(reason)"
        case let .qemu(app, reason): return "app \(app): \(reason)"
        case let .unknownApp(name, known):
            return "no app named \"\(name)\"" + (known.isEmpty ? " (none configured)" : " (configured: \(known.joined(separator: ", ")))")
        case let .notReady(app, reason): return "app \(app): \(reason)"
        case let .network(operation, reason): return "app network: \(operation): \(reason)"
        case let .vaultClosed(app, reason): return "app \(app) keeps its disks in the vault and does not start: \(reason)"
        case let .storageSwitch(app, existing, toVault):
            return "app \(app) now keeps its disks \(toVault ? "in the vault" : "on plain PERSIST") but its instance is still at"
                + " \(existing); refused until it is purged (app purge \(app), or a higher purge counter), which deletes those disks"
        }
    }
}

/// "1.5 GiB": sizes for people, next to the exact byte count in messages.
func byteCount(_ bytes: UInt64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(bytes) bytes" }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}
