import OutpostBundle
import OutpostDisk
import OutpostPlatform

/// Why an install, a commit or a fallback did not happen, with the phase,
/// the slot and the byte offset where it matters.
public enum UpdateError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The bundle was refused (signature, key, floor, board, size, digest).
    case bundle(BundleError)
    case gpt(GPTError)
    /// A block device operation failed during `phase` at byte `offset` of the device.
    case device(phase: String, offset: UInt64, BlockDeviceError)
    case deviceOther(phase: String, offset: UInt64, reason: String)
    /// The disk does not have exactly two slot partitions, or `booted` is not one.
    case slotLayout(String)
    /// Installing from a boot that was never committed could overwrite the only good slot.
    case uncommittedBoot(slot: String)
    /// This version failed its test before; install it only when forced.
    case previouslyFailed(version: String, reason: String)
    /// The slot read back after fsync does not hash to what was written.
    case readbackMismatch(slot: String, expected: String, actual: String)
    /// commit() on a slot that is not being tested.
    case notInProgress(slot: String, state: String)
    case state(path: String, reason: String)
    /// Reading or replacing the state file failed in the kernel.
    case stateIO(SystemError)

    public var description: String {
        switch self {
        case let .bundle(e): return "bundle refused: \(e)"
        case let .gpt(e): return "partition table: \(e)"
        case let .device(phase, offset, e): return "\(phase) at byte \(offset): \(e)"
        case let .deviceOther(phase, offset, r): return "\(phase) at byte \(offset): \(r)"
        case let .slotLayout(s): return s
        case let .uncommittedBoot(s): return "the booted slot \(s) is not committed yet; commit it or fall back before installing"
        case let .previouslyFailed(v, r): return "version \(v) failed before (\(r)); use force to install it again"
        case let .readbackMismatch(slot, e, a): return "slot \(slot) read back as sha256 \(a), wrote \(e)"
        case let .notInProgress(slot, state): return "slot \(slot) is \(state), not inprogress: nothing to commit"
        case let .state(path, r): return "update state \(path): \(r)"
        case let .stateIO(error): return "update state: \(error)"
        }
    }
}

/// Runs a device operation, naming the phase and offset if it fails.
func io<T>(_ phase: String, offset: UInt64, _ body: () throws -> T) throws(UpdateError) -> T {
    do { return try body() } catch let e as BlockDeviceError {
        throw .device(phase: phase, offset: offset, e)
    } catch let e as GPTError {
        throw .gpt(e)
    } catch let e as UpdateError {
        throw e
    } catch {
        throw .deviceOther(phase: phase, offset: offset, reason: "\(error)")
    }
}
