import Crypto
import Foundation
import OutpostBundle
import OutpostTestSupport
import Testing

/// tpm2-tools against one swtpm, with files in a temporary directory. Every
/// transient object is flushed after each tool, because swtpm holds only three
/// and nothing here runs a resource manager.
final class TPMTools {
    let tmp: TemporaryDirectory
    let tpm: SoftwareTPM
    var dir: String { tmp.path }

    init(_ tag: String) throws {
        tmp = try TemporaryDirectory(tag)
        tpm = try SoftwareTPM(stateDirectory: tmp.path + "/tpm")
    }

    /// Runs one tpm2 tool against this TPM; the result, whatever the exit status.
    func run(_ argv: [String]) throws -> CommandResult {
        let result = try runCommand(argv, environment: ["TPM2TOOLS_TCTI": tpm.tcti], timeout: .seconds(30))
        _ = try runCommand(["tpm2_flushcontext", "-t"], environment: ["TPM2TOOLS_TCTI": tpm.tcti], timeout: .seconds(30))
        return result
    }

    /// Runs one tpm2 tool that must succeed and returns its stdout.
    @discardableResult
    func must(_ argv: String...) throws -> String { try must(argv) }

    @discardableResult
    func must(_ argv: [String]) throws -> String {
        let result = try run(argv)
        guard result.status == 0 else {
            throw TestSupportError.failed(command: argv.joined(separator: " "), status: result.status, output: result.output)
        }
        return result.stdout
    }

    func write(_ bytes: [UInt8], _ name: String) throws -> String {
        let path = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func read(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))) }

    /// Runs policy commands (each given without -S and -L) in one trial session
    /// and returns the digest the TPM computed.
    func trial(_ steps: [[String]]) throws -> [UInt8] {
        let session = dir + "/trial.ctx"
        try must("tpm2_startauthsession", "-S", session)
        defer { _ = try? runCommand(["tpm2_flushcontext", session], environment: ["TPM2TOOLS_TCTI": tpm.tcti], timeout: .seconds(30)) }
        for step in steps { try must(step + ["-S", session, "-L", dir + "/trial.policy"]) }
        return try read("trial.policy")
    }

    /// The name `tpm2_nvreadpublic` reports for an NV index.
    func nvName(_ index: UInt32) throws -> String {
        let out = try must("tpm2_nvreadpublic", "0x" + String(index, radix: 16))
        guard let line = out.split(separator: "\n").first(where: { $0.contains("name:") }),
              let name = line.split(separator: " ").last else {
            throw TestSupportError.failed(command: "tpm2_nvreadpublic", status: 0, output: out)
        }
        return String(name)
    }

    /// The name the TPM gives `key` loaded with tpm2_loadexternal (`attributes` in tpm2-tools' words).
    func loadExternalName(_ key: P256.Signing.PublicKey, attributes: String?, tag: String) throws -> [UInt8] {
        let pem = dir + "/\(tag).pem"
        try key.pemRepresentation.write(toFile: pem, atomically: true, encoding: .utf8)
        try must(["tpm2_loadexternal", "-C", "o", "-G", "ecc", "-u", pem, "-c", dir + "/\(tag).ctx", "-n", dir + "/\(tag).name"]
                 + (attributes.map { ["-a", $0] } ?? []))
        return try read("\(tag).name")
    }
}

/// tpm2-tools' spelling of TPM_EO, in TPMComparison's order.
let comparisonArgument = ["eq", "neq", "sgt", "ugt", "slt", "ult", "sge", "uge", "sle", "ule", "bs", "bc"]

/// Every digest of the calculator against what swtpm computes in a trial session.
@Suite("Vault policy digests against swtpm", .serialized)
struct VaultPolicyTPMTests {
    @Test func policyPCRMatchesTheTPMForSeveralSelections() throws {
        let tools = try TPMTools("vault-pcr")
        var random = SplitMix64.forTest()
        // tpm2_policypcr reads at most 8 PCRs (one TPM2_PCR_Read); the calculator has no such limit.
        let selections: [[Int]] = [[8, 9], [0, 7], [0], [23], [0, 2, 4, 7, 8, 9, 14, 23], [1, 3, 5, 10, 11, 16, 17, 22]]
        for (n, selection) in selections.enumerated() {
            var values: [Int: [UInt8]] = [:]
            for pcr in selection { values[pcr] = random.bytes(32) }
            let file = try tools.write(selection.flatMap { values[$0] ?? [] }, "pcrs\(n)")
            let list = "sha256:" + selection.map(String.init).joined(separator: ",")
            let tpm = try tools.trial([["tpm2_policypcr", "-l", list, "-f", file]])
            #expect(hex(tpm) == (try TPMPolicyDigest().policyPCR(values)).description, "\(list)")
        }
        // Two PolicyPCR in one session chain.
        let a = [8: random.bytes(32), 9: random.bytes(32)]
        let b = [0: random.bytes(32), 7: random.bytes(32)]
        let tpm = try tools.trial([["tpm2_policypcr", "-l", "sha256:8,9", "-f", try tools.write((a[8] ?? []) + (a[9] ?? []), "a")],
                                   ["tpm2_policypcr", "-l", "sha256:0,7", "-f", try tools.write((b[0] ?? []) + (b[7] ?? []), "b")]])
        #expect(hex(tpm) == (try TPMPolicyDigest().policyPCR(a).policyPCR(b)).description)
    }

    @Test func nvIndexNamesAndPolicyNVMatchTheTPM() throws {
        let tools = try TPMTools("vault-nv")
        let counterAttributes: TPMNVAttributes = [.counter, .ownerWrite, .authWrite, .ownerRead, .authRead, .noDA]
        let plainAttributes: TPMNVAttributes = [.ownerWrite, .ownerRead, .authRead, .noDA]
        try tools.must("tpm2_nvdefine", "0x1800020", "-C", "o", "-s", "8", "-a", "nt=counter|ownerwrite|authwrite|ownerread|authread|no_da")
        try tools.must("tpm2_nvdefine", "0x1800021", "-C", "o", "-s", "16", "-a", "ownerwrite|ownerread|authread|no_da")
        let counter = try TPMNVIndexPublic(index: 0x0180_0020, attributes: counterAttributes, dataSize: 8)
        let plain = try TPMNVIndexPublic(index: 0x0180_0021, attributes: plainAttributes, dataSize: 16)
        #expect(try tools.nvName(0x0180_0020) == hex(counter.name))
        #expect(try tools.nvName(0x0180_0021) == hex(plain.name))

        // The first write sets TPMA_NV_WRITTEN, and the name changes with it.
        var random = SplitMix64.forTest()
        try tools.must("tpm2_nvincrement", "0x1800020", "-C", "o")
        try tools.must("tpm2_nvwrite", "0x1800021", "-C", "o", "-i", try tools.write(random.bytes(16), "plain"))
        let writtenCounter = try TPMNVIndexPublic(index: 0x0180_0020, attributes: counterAttributes.union(.written), dataSize: 8)
        let writtenPlain = try TPMNVIndexPublic(index: 0x0180_0021, attributes: plainAttributes.union(.written), dataSize: 16)
        #expect(try tools.nvName(0x0180_0020) == hex(writtenCounter.name))
        #expect(try tools.nvName(0x0180_0021) == hex(writtenPlain.name))
        #expect(writtenCounter.name != counter.name)

        let cases: [(TPMNVIndexPublic, [UInt8], UInt16, TPMComparison)] = [
            (writtenCounter, [0, 0, 0, 0, 0, 0, 0, 5], 0, .unsignedLessOrEqual),
            (writtenCounter, [0, 0, 0, 0, 0, 0, 0, 1], 0, .unsignedGreaterOrEqual),
            (writtenCounter, random.bytes(8), 0, .equal),
            (writtenPlain, random.bytes(4), 4, .unsignedLessThan),
            (writtenPlain, random.bytes(2), 14, .bitClear),
            (writtenPlain, random.bytes(16), 0, .signedGreaterOrEqual),
            (writtenPlain, random.bytes(1), 15, .bitSet),
        ]
        for (n, (index, operand, offset, operation)) in cases.enumerated() {
            let file = try tools.write(operand, "operand\(n)")
            let tpm = try tools.trial([["tpm2_policynv", "-C", "o", "-i", file, "--offset", String(offset),
                                        "0x" + String(index.index, radix: 16), comparisonArgument[Int(operation.rawValue)]]])
            let swift = try TPMPolicyDigest().policyNV(index: index, operandB: operand, offset: offset, operation: operation)
            #expect(hex(tpm) == swift.description, "case \(n): \(operation)")
        }
    }

    @Test func verificationKeyNamesMatchLoadExternal() throws {
        let tools = try TPMTools("vault-key")
        for n in 0..<3 {
            let key = P256.Signing.PrivateKey().publicKey
            #expect(try tools.loadExternalName(key, attributes: "sign|userwithauth", tag: "key\(n)") == TPMVerificationKey(key).name)
            // tpm2-tools' default template (decrypt too) is another name; the calculator follows the attributes.
            #expect(try tools.loadExternalName(key, attributes: nil, tag: "default\(n)") == TPMVerificationKey(key, attributes: 0x0006_0040).name)
        }
    }

    @Test func policyAuthorizeAndPolicyORMatchTheTPM() throws {
        let tools = try TPMTools("vault-auth")
        var random = SplitMix64.forTest()
        let key = P256.Signing.PrivateKey().publicKey
        let name = try tools.loadExternalName(key, attributes: "sign|userwithauth", tag: "release")
        let nameFile = tools.dir + "/release.name"
        for ref in [[], VaultPolicy.policyRef, random.bytes(64)] {
            let refArgs = ref.isEmpty ? [] : ["-q", try tools.write(ref, "ref")]
            let tpm = try tools.trial([["tpm2_policyauthorize", "-n", nameFile] + refArgs])
            #expect(hex(tpm) == (try TPMPolicyDigest().policyAuthorize(keySignName: name, policyRef: ref)).description, "ref \(hex(ref))")
        }
        // PCR policy before PolicyAuthorize is replaced, after it is kept: the vault's sealing policy.
        let pcrs = [0: random.bytes(32), 7: random.bytes(32)]
        let pcrFile = try tools.write((pcrs[0] ?? []) + (pcrs[7] ?? []), "pcrs")
        let sealed = try tools.trial([["tpm2_policypcr", "-l", "sha256:0,7", "-f", pcrFile],
                                      ["tpm2_policyauthorize", "-n", nameFile, "-q", try tools.write(VaultPolicy.policyRef, "ref")],
                                      ["tpm2_policypcr", "-l", "sha256:0,7", "-f", pcrFile]])
        let swift = try VaultPolicy.sealing(releaseKey: TPMVerificationKey(key), pcr0: pcrs[0] ?? [], pcr7: pcrs[7] ?? [])
        #expect(hex(sealed) == swift.description)

        for count in [2, 3, 8] {
            let branches = try (0..<count).map { _ in try TPMPolicyDigest(bytes: random.bytes(32)) }
            let files = try branches.enumerated().map { try tools.write($0.element.bytes, "branch\($0.offset)") }
            let tpm = try tools.trial([["tpm2_policyor", "-l", "sha256:" + files.joined(separator: ",")]])
            #expect(hex(tpm) == (try TPMPolicyDigest.policyOR(branches)).description, "\(count) branches")
        }
    }
}
