import Foundation
import OutpostProto
import SwiftProtobuf

/// What the admin socket answers, as JSON objects: the same shapes go to
/// `--json` output and to the CLI's text rendering.
public enum Views {
    public static func stepName(_ s: UpdateStatus.Step) -> String {
        switch s {
        case .unspecified: return "unknown"
        case .idle: return "idle"
        case .downloading: return "downloading"
        case .downloaded: return "downloaded"
        case .verifying: return "verifying"
        case .installing: return "installing"
        case .rebooting: return "rebooting"
        case .testing: return "testing"
        case .committed: return "committed"
        case .failed: return "failed"
        case .UNRECOGNIZED(let v): return "step-\(v)"
        }
    }

    /// A protobuf message as a JSON object (proto3 JSON mapping, field names
    /// in lowerCamelCase; fields at their default value are left out).
    static func json(_ m: some SwiftProtobuf.Message) -> Any {
        let o = JSONEncodingOptions()
        guard let s = try? m.jsonUTF8Bytes(options: o) as [UInt8],
              let v = try? JSONSerialization.jsonObject(with: Data(s)) else { return [String: Any]() }
        return v
    }

    static func iso(_ ms: Int64) -> String {
        ms <= 0 ? "" : ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    /// One line of `device list`.
    static func summary(_ d: DeviceRecord, info: DeviceInfo?) -> [String: Any] {
        var o: [String: Any] = [
            "id": d.id, "serial": d.serial, "registered": iso(d.registeredMs), "lastSeen": iso(d.lastSeenMs),
            "configHash": d.configHash,
        ]
        if let i = info {
            let booted = i.slots.first(where: \.booted)
            o["slot"] = booted?.label ?? ""
            o["version"] = booted?.version.isEmpty == false ? booted?.version ?? "" : i.identity.osVersion
            o["lastBoot"] = i.lastBoot.reason
            o["update"] = i.hasUpdate ? "\(stepName(i.update.step)) \(i.update.version)".trimmingCharacters(in: .whitespaces) : ""
            o["ports"] = i.ports.map { p in
                ["name": p.name, "addresses": p.addresses, "active": p.active, "carrier": p.carrier] as [String: Any]
            }
            o["infoTime"] = iso(Int64(clamping: i.timeUnixMs))
            if i.hasVault { o["vaultState"] = vaultStateName(i.vault.state) }
        }
        return o
    }

    static func encode(_ v: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    static func logJSON(_ r: LogRow) -> [String: Any] {
        let sev = LogSeverity(rawValue: r.severity).map { "\($0)" } ?? String(r.severity)
        return ["sequence": r.sequence, "time": iso(r.timeMs), "source": r.source, "severity": sev, "message": r.message]
    }
}
