// Short names for the generated messages (the generator prefixes every type
// with its proto package). Hand-written: scripts/gen-proto.sh leaves it alone.

public typealias RegisterRequest = Outpost_Api_V1_RegisterRequest
public typealias RegisterResponse = Outpost_Api_V1_RegisterResponse
public typealias ConfigRequest = Outpost_Api_V1_ConfigRequest
public typealias ConfigResponse = Outpost_Api_V1_ConfigResponse
public typealias DeviceConfig = Outpost_Api_V1_DeviceConfig
public typealias BaseOS = Outpost_Api_V1_BaseOS
public typealias NetworkConfig = Outpost_Api_V1_NetworkConfig
public typealias AppConfig = Outpost_Api_V1_App
public typealias Intervals = Outpost_Api_V1_Intervals
public typealias Commands = Outpost_Api_V1_Commands
public typealias DeviceInfo = Outpost_Api_V1_DeviceInfo
public typealias DeviceIdentity = Outpost_Api_V1_DeviceIdentity
public typealias SlotInfo = Outpost_Api_V1_SlotInfo
public typealias UpdateStatus = Outpost_Api_V1_UpdateStatus
public typealias BootReasonInfo = Outpost_Api_V1_BootReason
public typealias NetworkPort = Outpost_Api_V1_NetworkPort
public typealias NetworkPushResult = Outpost_Api_V1_NetworkPushResult
public typealias HandledCounters = Outpost_Api_V1_HandledCounters
public typealias VaultInfo = Outpost_Api_V1_VaultInfo
public typealias VaultSecretInfo = Outpost_Api_V1_VaultSecret
public typealias DeviceMetrics = Outpost_Api_V1_DeviceMetrics
public typealias PortCounters = Outpost_Api_V1_PortCounters
public typealias WatchdogState = Outpost_Api_V1_WatchdogState
public typealias LogBatch = Outpost_Api_V1_LogBatch
public typealias LogEntry = Outpost_Api_V1_LogEntry
public typealias LogSeverity = Outpost_Api_V1_Severity
public typealias LogsResponse = Outpost_Api_V1_LogsResponse
public typealias CredentialChallengeMessage = Outpost_Api_V1_CredentialChallenge
public typealias CredentialAnswer = Outpost_Api_V1_CredentialAnswer
public typealias AttestationChallenge = Outpost_Api_V1_AttestationChallenge
public typealias AttestationQuote = Outpost_Api_V1_AttestationQuote
public typealias AttestationResult = Outpost_Api_V1_AttestationResult
public typealias PCRMismatchMessage = Outpost_Api_V1_PCRMismatch
public typealias ConfigAttestation = Outpost_Api_V1_ConfigAttestation
public typealias IdentityKind = Outpost_Api_V1_IdentityKind

/// The API's paths and media type, shared by the controller and device clients.
public enum DeviceAPI {
    public static let prefix = "/api/v1/edgedevice/"
    public static let register = prefix + "register"
    public static let ping = prefix + "ping"
    public static let config = prefix + "config"
    public static let info = prefix + "info"
    public static let metrics = prefix + "metrics"
    public static let logs = prefix + "logs"
    /// Remote attestation (attest.proto).
    public static let attestActivate = prefix + "attest/activate"
    public static let attestNonce = prefix + "attest/nonce"
    public static let attestQuote = prefix + "attest/quote"
    public static let bundles = "/api/v1/bundles/"
    public static let contentType = "application/x-proto-binary"
}
