// When to restart a component that stopped, and when to stop trying.
//
//   exit ─▶ failures in the last `crashLoopWindow` > `crashLoopLimit`? ─yes─▶ escalate
//                                │ no
//                                ▼
//            restart after initial × 2^(consecutive-1), capped at maxDelay
//
// "Consecutive" counts failures since the component last ran healthy for
// `healthyAfter`, so a component that crashes once a day always restarts
// after the initial delay, while a tight loop backs off and then escalates.

/// The restart rules of one component. Pure values, so they are unit tested.
public struct RestartPolicy: Sendable, Equatable {
    /// What the supervisor does when a component crash-loops.
    public enum Escalation: Sendable, Equatable {
        /// Reboot the device, recording `crash-loop` and the component.
        case reboot
        /// Leave the component failed and keep the device up.
        case giveUp
    }

    public var initialDelayMilliseconds: Int64 = 1_000
    public var maxDelayMilliseconds: Int64 = 60_000
    public var crashLoopLimit = 5
    public var crashLoopWindowMilliseconds: Int64 = 120_000
    public var healthyAfterMilliseconds: Int64 = 60_000
    public var escalation: Escalation = .reboot

    public init() {}
}

/// The supervisor's decision after a component stopped.
public enum RestartDecision: Sendable, Equatable {
    case restart(afterMilliseconds: Int64, attempt: Int)
    case escalate(failures: Int, windowMilliseconds: Int64)
}

/// The failure history of one component under a `RestartPolicy`.
public struct RestartTracker: Sendable, Equatable {
    public let policy: RestartPolicy
    /// Monotonic times of failures still inside the crash-loop window.
    public private(set) var recentFailures: [Int64] = []
    /// Failures since the component last ran healthy; drives the backoff.
    public private(set) var consecutive = 0
    /// Every restart over the life of this boot, for status.
    public private(set) var totalRestarts = 0

    public init(policy: RestartPolicy) { self.policy = policy }

    /// Records that a component started at `startedAt` stopped at `now`.
    public mutating func recordFailure(startedAt: Int64, now: Int64) -> RestartDecision {
        if now - startedAt >= policy.healthyAfterMilliseconds { consecutive = 0 }
        consecutive += 1
        recentFailures.append(now)
        recentFailures.removeAll { now - $0 > policy.crashLoopWindowMilliseconds }
        if recentFailures.count > policy.crashLoopLimit {
            return .escalate(failures: recentFailures.count, windowMilliseconds: policy.crashLoopWindowMilliseconds)
        }
        totalRestarts += 1
        return .restart(afterMilliseconds: delay(forConsecutive: consecutive), attempt: consecutive)
    }

    /// initial × 2^(n-1), capped; shifts are bounded so nothing overflows.
    public func delay(forConsecutive n: Int) -> Int64 {
        let shift = Int64(min(max(n - 1, 0), 30))
        let raw = policy.initialDelayMilliseconds << shift
        return min(raw, policy.maxDelayMilliseconds)
    }
}
