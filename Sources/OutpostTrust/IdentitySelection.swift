// Which identity the agent uses. The TPM when the device has one that works;
// otherwise the file identity, and a line that says why. Never the file
// identity in place of a TPM key the device already has: that would make it
// another device for good, the failure the issue reports from the field.

#if canImport(Glibc)
import Glibc
#endif
import OutpostFleet

/// The identity the agent will use, and one line for the console and status.
public struct IdentityChoice: Sendable {
    public let identity: any OutpostFleet.DeviceIdentity
    /// "device key in the TPM (/dev/tpmrm0)" or "no TPM: /dev/tpmrm0 missing; …".
    public let status: String
    public let inTPM: Bool
}

public enum IdentitySelection {
    /// Chooses and loads the identity in `directory`:
    /// - a TPM key already there: the TPM, and any TPM failure is thrown;
    /// - a file key already there and no TPM key: the file identity (the
    ///   controller knows the device by that certificate);
    /// - neither: the TPM if `device` exists and works, else a new file key.
    /// `tcti` defaults to the device's; tests point it at a swtpm.
    public static func choose(directory: String, serial: String?, device: String = "/dev/tpmrm0",
                              tcti: String? = nil) throws(FleetError) -> IdentityChoice {
        let tcti = tcti ?? "device:" + device
        let hasTPMKey = TPMIdentity.hasKey(directory: directory)
        let hasFileKey = access(directory + "/" + SoftwareIdentity.keyFile, F_OK) == 0
        if !hasTPMKey && hasFileKey {
            let identity = try SoftwareIdentity.loadOrCreate(directory: directory, serial: serial)
            return IdentityChoice(identity: identity, inTPM: false,
                                  status: "file identity: \(SoftwareIdentity.keyFile) was made before a TPM key; the device keeps it")
        }
        let reason: String
        if access(device, F_OK) != 0 {
            reason = "\(device) missing"
        } else {
            do {
                let identity = try TPMIdentity.loadOrCreate(directory: directory, serial: serial, tcti: tcti)
                return IdentityChoice(identity: identity, inTPM: true, status: "device key in the TPM (\(device))")
            } catch {
                reason = error.description
            }
        }
        if hasTPMKey {
            throw .identity(step: "TPM", detail: "the device key is in a TPM but \(reason); no file key replaces it")
        }
        let identity = try SoftwareIdentity.loadOrCreate(directory: directory, serial: serial)
        return IdentityChoice(identity: identity, inTPM: false, status: "no TPM: \(reason); using the file identity")
    }
}

extension IdentityChoice {
    init(identity: any OutpostFleet.DeviceIdentity, inTPM: Bool, status: String) {
        self.identity = identity
        self.status = status
        self.inTPM = inTPM
    }
}
