// What can go wrong between the agent and its TPM, each as one line naming the
// step. A TPM that fails is never replaced silently: the caller decides, and
// says so (IdentitySelection).

import CTSS2

/// A failed TPM step: the TSS's own code, decoded, or a reason of ours.
public enum TPMError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A TSS/TPM call failed with `code` (a TSS2_RC).
    case command(step: String, code: UInt32)
    /// The saved key blobs were made by another TPM (or under another storage
    /// root key): TPM2_Load refused their integrity.
    case foreignKey(path: String, code: UInt32)
    /// Something other than a TPM call: a file, a key that does not fit.
    case unusable(step: String, reason: String)
    /// A vault step (TPMVault) the TPM or the vault refused, in the operator's
    /// terms; `code` is the TPM's response when it was one.
    case vault(step: String, reason: String, code: UInt32?)

    public var description: String {
        switch self {
        case .command(let step, let code):
            return "TPM: \(step): \(Self.decode(code))"
        case .foreignKey(let path, let code):
            return "TPM: loading the device key: \(path) was made by another TPM or storage root key (\(Self.decode(code)))"
        case .unusable(let step, let reason):
            return "TPM: \(step): \(reason)"
        case .vault(let step, let reason, let code):
            return "vault: \(step): \(reason)" + (code.map { " (\(Self.decode($0)))" } ?? "")
        }
    }

    /// Tss2_RC_Decode's text ("tpm:parameter(1):integrity check failed") and the code in hex.
    static func decode(_ code: UInt32) -> String {
        let text = Tss2_RC_Decode(code).map { String(cString: $0) } ?? "unknown"
        return "\(text) (0x\(String(code, radix: 16)))"
    }
}
