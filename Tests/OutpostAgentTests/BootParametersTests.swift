import Foundation
import OutpostTestSupport
import Testing
@testable import OutpostAgent
@testable import OutpostEarlyBoot

private let hash = String(repeating: "ab", count: 32)
private let base = "console=ttyS0 panic=10 rdinit=/init outpost.slot=6a1b7c3e-0000-4000-8000-00000000a11a " +
    "outpost.root=1048576:100 outpost.verity=1458176:\(hash):00ff\n"

@Test func parsesTheCommandLineOfDocsBootMd() throws {
    let p = try BootParameters(commandLine: base)
    #expect(p.slotPartUUID == "6A1B7C3E-0000-4000-8000-00000000A11A")
    #expect(p.rootOffset == 1_048_576)
    #expect(p.rootBlocks == 100)
    #expect(p.hashOffset == 1_458_176)
    #expect(p.rootHash == hash)
    #expect(p.salt == "00ff")
    #expect(p.rescueReason == nil)
}

@Test func rescueReasonIsTakenFromTheCommandLine() throws {
    let p = try BootParameters(commandLine: base + " outpost.rescue=no-bootable-slot")
    #expect(p.rescueReason == "no-bootable-slot")
}

@Test func missingSlotIsReportedByName() {
    #expect(throws: BootParameterError.missing(parameter: "outpost.slot")) {
        try BootParameters(commandLine: "console=ttyS0 outpost.root=0:1")
    }
}

@Test(arguments: [
    "outpost.root=1048576",            // no D
    "outpost.root=1048577:100",        // R not 4 KiB aligned
    "outpost.root=1048576:0",          // empty root
    "outpost.root=x:100",              // not a number
])
func malformedRootIsRejected(root: String) {
    let line = base.replacingOccurrences(of: "outpost.root=1048576:100", with: root)
    #expect(throws: BootParameterError.self) { try BootParameters(commandLine: line) }
}

@Test func hashTreeInsideTheRootIsRejected() {
    // R + D*4096 = 1458176; H one block earlier overlaps the root.
    let line = base.replacingOccurrences(of: "outpost.verity=1458176", with: "outpost.verity=1454080")
    #expect(throws: BootParameterError.self) { try BootParameters(commandLine: line) }
}

@Test func shortRootHashAndOddSaltAreRejected() {
    let shortHash = base.replacingOccurrences(of: hash, with: "abcd")
    #expect(throws: BootParameterError.self) { try BootParameters(commandLine: shortHash) }
    let oddSalt = base.replacingOccurrences(of: ":00ff", with: ":0ff")
    #expect(throws: BootParameterError.self) { try BootParameters(commandLine: oddSalt) }
}

@Test func slotThatIsNotAGUIDIsRejected() {
    let line = base.replacingOccurrences(of: "6a1b7c3e-0000-4000-8000-00000000a11a", with: "IMGA")
    #expect(throws: BootParameterError.self) { try BootParameters(commandLine: line) }
}

/// Every fiftieth round parses the unmutated command line, which must succeed: a parser that
/// refused everything fails here.
@Test func randomCommandLinesNeverCrashTheParser() {
    var generator = SplitMix64.forTest()
    let alphabet = Array("outpost.slotrverity=:0123456789abcdefABCDEF- \n")
    var accepted = 0, refused = 0
    for round in 0..<2000 {
        if round % 50 == 0 {
            #expect(throws: Never.self) { try BootParameters(commandLine: base) }
            if (try? BootParameters(commandLine: base)) != nil { accepted += 1 }
        }
        let length = Int.random(in: 0..<200, using: &generator)
        let text = String((0..<length).map { _ in alphabet.randomElement(using: &generator) ?? " " })
        for line in ["outpost.slot=" + text, base + text] {
            if (try? BootParameters(commandLine: line)) != nil { accepted += 1 } else { refused += 1 }
        }
    }
    #expect(accepted >= 40 && refused > 0, "accepted \(accepted), refused \(refused) (seed \(generator.seed))")
}
