// What the supervisor runs: in-process components (a body on its own thread)
// and helper processes (DHCP clients, qemu instances). Both get the same
// restart policy, and in-process ones report liveness through their context.

/// One supervised unit.
public struct ComponentSpec: Sendable {
    public enum Body: Sendable {
        /// Runs until `context.isStopping`; returning early or throwing is a crash.
        case task(@Sendable (ComponentContext) throws -> Void)
        /// A helper program; any exit while not stopping is a crash.
        case process(path: String, arguments: [String])
        /// Runs on a thread the supervisor did not start (the PID 1 loop):
        /// only its liveness is tracked.
        case external
    }

    public var name: String
    /// A critical component that misses its liveness deadline stops the
    /// watchdog feed, so the hardware resets the machine.
    public var critical: Bool
    /// How long the component may go without `beat()`; nil for components that
    /// block in the kernel by design (a reader of input events, a process).
    public var livenessDeadlineMilliseconds: Int64?
    public var policy: RestartPolicy
    public var body: Body

    public init(name: String, critical: Bool = false, livenessDeadlineMilliseconds: Int64? = nil,
                policy: RestartPolicy = RestartPolicy(), body: Body) {
        self.name = name
        self.critical = critical
        self.livenessDeadlineMilliseconds = livenessDeadlineMilliseconds
        self.policy = policy
        self.body = body
    }
}

/// The states `outpostd status` shows.
public enum ComponentState: String, Sendable {
    case starting, running, backoff, hung, failed, stopped
}

/// A component body's handle on the supervisor.
public struct ComponentContext: Sendable {
    public let name: String
    let generation: Int
    let supervisor: Supervisor

    /// Reports liveness. Also the point where debug images inject faults for
    /// this component (hang here, or throw as a crash).
    public func beat() throws {
        #if DEBUG || OUTPOST_FAULT_INJECTION
        try FaultInjection.shared.checkpoint(name)
        #endif
        supervisor.beat(name, generation: generation)
    }

    public var isStopping: Bool { supervisor.stopSignal.isRaised }

    /// Sleeps between rounds; false once the system is stopping.
    public func sleep(for duration: Duration) -> Bool {
        supervisor.stopSignal.sleep(for: duration)
    }

    /// Asks for an orderly reboot or power-off (a controller command, an update).
    public func requestShutdown(_ request: ShutdownRequest) {
        supervisor.requestShutdown(request)
    }
}

/// A component body that ends without being asked to: a crash by definition.
public struct ComponentReturned: Error, CustomStringConvertible {
    public var description: String { "returned while the system was running" }
}

/// Why and how the system is going down.
public struct ShutdownRequest: Sendable, Equatable {
    public var reason: RebootReason
    public var powerOff: Bool
    public var component: String?
    /// For `update`: the slot GRUB should boot next; any other slot means fallback.
    public var expectedSlot: String?
    public var detail: String?

    public init(reason: RebootReason, powerOff: Bool, component: String? = nil, expectedSlot: String? = nil,
                detail: String? = nil) {
        self.reason = reason
        self.powerOff = powerOff
        self.component = component
        self.expectedSlot = expectedSlot
        self.detail = detail
    }
}
