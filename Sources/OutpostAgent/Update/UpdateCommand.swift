// `outpostd update apply|status`, run beside PID 1 (a debug shell, a
// maintenance session). It drives the same engine the update component
// uses, so a bundle is held to exactly the same checks.

#if canImport(Glibc)
import Glibc
#endif
import FoundationEssentials
import OutpostBundle
import OutpostHTTP
import OutpostUpdate
import OutpostEarlyBoot

enum UpdateCommand {
    static func fail(_ message: String) -> Int32 {
        AgentCommand.write(2, "outpostd: update: \(message)\n")
        return 1
    }

    /// The booted slot and its disk, from the kernel command line.
    static func service() throws -> UpdateService {
        let cmdline = try Sys.readText("/proc/cmdline")
        let parameters = try BootParameters(commandLine: cmdline)
        guard let (disk, _) = BlockDevices.waitForPartition(partUUID: parameters.slotPartUUID, timeoutMilliseconds: 1000) else {
            throw UpdateCommandError("the booted slot PARTUUID=\(parameters.slotPartUUID) is not on any disk")
        }
        let version = (try? Sys.readText(OutpostRelease.path)).flatMap(OutpostRelease.version(fromFileText:)) ?? "unknown"
        return UpdateService(diskPath: disk.devicePath, bootedPartUUID: parameters.slotPartUUID, version: version)
    }

    /// Trust for https:// downloads: the files given with --ca, else the
    /// controller CA from CONFIG when there is one; the system store too.
    static func tlsContext(caFiles: [String], paths: UpdatePaths) throws -> TLSContext {
        let files = caFiles.isEmpty ? [paths.controllerCAFile].filter(Sys.exists) : caFiles
        return try TLSContext(caFiles: files, systemDefaults: true)
    }

    static func apply(_ source: String, caFiles: [String], force: Bool, reboot: Bool) -> Int32 {
        do {
            let service = try service()
            let engine = try service.engine()
            var file = source
            let remote = source.utf8.firstRange(of: "://".utf8) != nil  // not Foundation's contains (see BootHistory)
            if remote {
                let url = try HTTPURL(source)
                file = service.paths.stateDirectory + "/download.bundle"
                AgentCommand.write(1, "downloading \(url)\n")
                var options = HTTPOptions()
                options.tls = try tlsContext(caFiles: caFiles, paths: service.paths)
                var lastPercent = -1
                try HTTPDownload(url: url, destination: file, options: options).run { have, total in
                    guard let total, total > 0 else { return }
                    let percent = Int(have * 100 / total)
                    if percent / 10 != lastPercent / 10 {
                        lastPercent = percent
                        AgentCommand.write(1, "downloaded \(have >> 20) of \(total >> 20) MiB (\(percent)%)\n")
                    }
                }
            }
            var options = InstallOptions()
            options.force = force
            let booted = try engine.slotNumber(partUUID: service.bootedPartUUID)
            let report = try engine.install(try FilePayloadSource(path: file), booted: booted, options: options)
            AgentCommand.write(1, "installed \(report.version) into \(report.slot) (signed by \(report.signedBy))\n")
            if remote { _ = unlink(file) }
            guard reboot else { return 0 }
            let reply = try ControlSocket.request("reboot-update \(report.slot)")
            AgentCommand.write(1, reply)
            return reply.hasPrefix("ok") ? 0 : 1
        } catch {
            return fail("\(error)")
        }
    }

    static func status(json: Bool) -> Int32 {
        do {
            AgentCommand.write(1, try report(try service(), json: json))
            return 0
        } catch {
            return fail("\(error)")
        }
    }

    /// `update status` for `service`: from the command line and the local console.
    static func report(_ service: UpdateService, json: Bool) throws -> String {
        let engine = try service.engine()
        let status = try engine.status(booted: try engine.slotNumber(partUUID: service.bootedPartUUID))
        return json ? try render(json: status) : render(text: status)
    }

    static func render(text s: UpdateStatus) -> String {
        var out = "booted: \(s.booted)\n"
        for slot in s.slots { out += "slot \(slot.name) (partition \(slot.number)): \(slot.state)\n" }
        out += "committed version: \(s.state.committedVersion ?? "-")\n"
        out += "security floor: \(s.state.securityFloor)\n"
        if let p = s.state.pending { out += "in flight: \(p.version) in \(p.slot)\n" }
        for f in s.state.failed { out += "failed: \(f.version) in \(f.slot): \(f.reason)\n" }
        if let r = s.state.lastResult {
            out += "last result: \(r.outcome.rawValue) \(r.version ?? "")\(r.reason.map { ": \($0)" } ?? "")\n"
        }
        return out
    }

    /// `update status --json`: the engine's bookkeeping as stored, plus the slots.
    struct StatusDocument: Encodable {
        struct Slot: Encodable { var name: String; var number: Int; var state: String }
        var booted: String
        var slots: [Slot]
        var state: DeviceUpdateState
    }

    static func render(json s: UpdateStatus) throws -> String {
        let body = StatusDocument(booted: s.booted,
                                  slots: s.slots.map { .init(name: $0.name, number: $0.number, state: $0.state) },
                                  state: s.state)
        return try JSONDocument.indented(body) + "\n"
    }
}

struct UpdateCommandError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
