import ArgumentParser
import Foundation
import OutpostBundle
import OutpostController

/// `outpost-controller device attestation DEVICE [--save DIR] [--json]` and `device attestation-reset`.
struct AttestationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attestation",
        abstract: "The device's TPM keys and its last quote with the controller's verdict.",
        discussion: """
        --save DIR writes the last quote as tpm2_checkquote reads it: quote.msg (TPMS_ATTEST), quote.sig \
        (TPMT_SIGNATURE), ak.pub (TPM2B_PUBLIC), quote.pcrs (the PCR values concatenated), nonce.hex, \
        eventlog.bin.gz (when the device sent one) and checkquote.sh, the command that checks them.
        """)
    @OptionGroup var data: DataOption
    @Argument(help: "The device.") var device: String
    @Option(help: ArgumentHelp("Write the last quote's files into this directory.", valueName: "dir")) var save: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await oneLine {
            let v = try data.admin.call("GET", "/devices/\(esc(device))/attestation")
            let o = v as? [String: Any] ?? [:]
            let last = o["last"] as? [String: Any]
            if let save {
                guard let last else { throw ControllerError.invalidInput("device \(s(o, "device")) has sent no quote yet: nothing to save") }
                try Self.write(last, to: save)
            }
            if json { return printJSON(v) }
            guard s(o, "identity") == "tpm" else { return print("device \(s(o, "device")): \(s(o, "note"))") }
            let key = o["key"] as? [String: Any] ?? [:]
            print("device \(s(o, "device")): TPM identity, attestation key \((key["bound"] as? Bool ?? false) ? "bound to the EK" : "not bound yet")")
            print("EK certificate: \(s(o, "ekCertificate"))")
            guard let last else { return print("no quote yet") }
            print("last quote \(s(last, "received")) (\(s(last, "osVersion")) \(s(last, "slot"))): \(s(last, "reason"))")
            for m in last["mismatches"] as? [[String: Any]] ?? [] {
                print("  PCR \(s(m, "pcr")): expected \(s(m, "expected")), actual \(s(m, "actual").isEmpty ? "not quoted" : s(m, "actual"))")
            }
            if let save { print("saved to \(save); check with: sh \(save)/checkquote.sh") }
        }
    }

    static func write(_ last: [String: Any], to dir: String) throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let files = last["files"] as? [String: Any] ?? [:]
        for (name, key) in [("quote.msg", "message"), ("quote.sig", "signature"), ("ak.pub", "akPublic"), ("quote.pcrs", "pcrs")] {
            guard let h = files[key] as? String, let b = bytes(fromHex: h) else { throw ControllerError.admin("the answer has no \(key)") }
            try Data(b).write(to: URL(fileURLWithPath: dir + "/" + name))
        }
        try Data((s(last, "nonce") + "\n").utf8).write(to: URL(fileURLWithPath: dir + "/nonce.hex"))
        if let log = last["eventLogGzip"] as? String, let d = Data(base64Encoded: log), !d.isEmpty {
            try d.write(to: URL(fileURLWithPath: dir + "/eventlog.bin.gz"))
        }
        let script = """
            #!/bin/sh
            cd "$(dirname "$0")" && exec tpm2_checkquote -u ak.pub -m quote.msg -s quote.sig -f quote.pcrs -l \(s(last, "pcrList")) -g sha256 -q \(s(last, "nonce"))

            """
        try Data(script.utf8).write(to: URL(fileURLWithPath: dir + "/checkquote.sh"))
    }
}

struct AttestationResetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attestation-reset",
        abstract: "Forget the device's first-use PCR 0, 4 and 7 (after a firmware update): its next quote records them again.")
    @OptionGroup var data: DataOption
    @Argument(help: "The device.") var device: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await oneLine {
            let v = try data.admin.call("POST", "/devices/\(esc(device))/attestation-reset")
            if json { return printJSON(v) }
            let o = v as? [String: Any] ?? [:]
            print("device \(s(o, "device")): first-use PCRs \(s(o, "firstUsePCRs"))")
        }
    }
}

/// `outpost-controller firmware set|remove|list`: PCR 0, 4 and 7 per hardware model.
struct FirmwareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "firmware",
        abstract: "Firmware PCRs (0, 4, 7) per hardware model for attestation, instead of each device's first use.",
        discussion: """
        MODEL is what devices report as their board (DeviceInfo.identity.board, `device show`). A device of a \
        model with values here is held against them; other devices against the PCRs of their own first quote.
        """,
        subcommands: [SetModel.self, Remove.self, List.self])

    struct SetModel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set", abstract: "Set a model's firmware PCRs.")
        @OptionGroup var data: DataOption
        @Argument(help: "The hardware model (board).") var model: String
        @Option(name: .customLong("pcr"), help: ArgumentHelp("INDEX=HEX, SHA-256 bank (0, 4 or 7); repeat.", valueName: "index=hex"))
        var pcrs: [String] = []
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                var values: [String: String] = [:]
                for p in pcrs {
                    let parts = p.split(separator: "=", maxSplits: 1).map(String.init)
                    guard parts.count == 2 else { throw ControllerError.invalidInput("--pcr '\(p)' is not INDEX=HEX") }
                    values[parts[0]] = parts[1]
                }
                let v = try data.admin.call("POST", "/attestation/models/\(esc(model))", body: ["pcrs": values])
                if json { return printJSON(v) }
                let set = (v as? [String: Any])?["pcrs"] as? [String: String] ?? [:]
                print("model \(model): PCR " + set.keys.sorted().map { "\($0)=\(set[$0] ?? "")" }.joined(separator: " "))
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a model's firmware PCRs (its devices go back to first use).")
        @OptionGroup var data: DataOption
        @Argument(help: "The hardware model (board).") var model: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("POST", "/attestation/models/\(esc(model))", body: ["remove": true])
                if json { return printJSON(v) }
                print("model \(model): removed; its devices are held against their first use")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every model's firmware PCRs.")
        @OptionGroup var data: DataOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/attestation/models")
                if json { return printJSON(v) }
                let models = v as? [String: [String: String]] ?? [:]
                if models.isEmpty { print("no models: every device is held against its first use") }
                for (model, pcrs) in models.sorted(by: { $0.key < $1.key }) {
                    print("\(model): PCR " + pcrs.keys.sorted().map { "\($0)=\(pcrs[$0] ?? "")" }.joined(separator: " "))
                }
            }
        }
    }
}

/// `outpost-controller ek-ca add|list|remove`: the TPM makers' CAs EK certificates must chain to.
struct EKCACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ek-ca",
        abstract: "TPM makers' CAs that devices' EK certificates must chain to.",
        discussion: """
        With no EK CA configured, EK certificates are recorded as "not checked". With one or more, a device \
        whose TPM has an EK certificate that does not chain to one of their roots (signatures, validity dates) is \
        refused at registration (HTTP 403 naming the certificate's issuer). A self-signed certificate added is \
        a root; others are intermediates that only link a device's certificate to a root. Devices send only \
        their EK certificate, so add the maker's intermediate CAs with its root. The list is kept in the fleet \
        store: every replica uses it.
        """,
        subcommands: [Add.self, List.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Trust every CA certificate in a PEM file.")
        @OptionGroup var data: DataOption
        @Argument(help: "A PEM file with one or more CA certificates.") var file: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("POST", "/attestation/ek-cas", body: ["pem": try readPEM(file)])
                if json { return printJSON(v) }
                for c in v as? [[String: Any]] ?? [] { print("added \(s(c, "kind")) \(s(c, "fingerprint"))  \(s(c, "subject"))") }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The EK CAs: fingerprint (SHA-256 of the DER), root or intermediate, subject.")
        @OptionGroup var data: DataOption
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("GET", "/attestation/ek-cas")
                if json { return printJSON(v) }
                let all = v as? [[String: Any]] ?? []
                if all.isEmpty { print("no EK CA: EK certificates are not checked") }
                for c in all { print("\(s(c, "fingerprint"))  \(s(c, "kind"))  \(s(c, "subject"))  added \(s(c, "added"))") }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop trusting an EK CA.")
        @OptionGroup var data: DataOption
        @Argument(help: "Its fingerprint, as `ek-ca list` shows it.") var fingerprint: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            try await oneLine {
                let v = try data.admin.call("POST", "/attestation/ek-cas/\(esc(fingerprint))/remove")
                if json { return printJSON(v) }
                print("removed \(s(v as? [String: Any] ?? [:], "fingerprint"))")
            }
        }
    }
}
