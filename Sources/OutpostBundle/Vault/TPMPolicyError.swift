// Errors of the vault's policy calculator. Each names the command and the
// field, because a wrong digest is otherwise only "the TPM refused to unseal".

/// Why a policy digest, a TPM name or an approved-policy signature could not be made.
public enum TPMPolicyError: Error, Equatable, Sendable, CustomStringConvertible {
    /// An argument of a policy command is outside what the TPM accepts.
    case invalidArgument(command: String, field: String, reason: String)
    /// A signature is not an ECDSA P-256 signature (wrong length, not on the curve order).
    case signatureMalformed(reason: String)

    public var description: String {
        switch self {
        case let .invalidArgument(command, field, reason): return "\(command): \(field): \(reason)"
        case let .signatureMalformed(reason): return "approved-policy signature is malformed: \(reason)"
        }
    }
}
