// Waits that spread a fleet out. A thousand devices that booted together
// must not poll together, and a controller coming back from an outage must
// not be met by every device at once.

import OutpostPlatform

/// Jittered periods and exponential backoff, with the random source passed in
/// so tests can check the bounds with a seeded generator.
public enum Jitter {
    /// A wait drawn uniformly from [0.3, 1] × `interval` (the seed's cadence
    /// rule: the mean is 0.65×, no device ever polls faster than 0.3×).
    public static func period(_ interval: Duration, using random: inout some RandomNumberGenerator) -> Duration {
        let fraction = Double.random(in: 0.3...1.0, using: &random)
        return .nanoseconds(Int64(Double(interval.nanoseconds) * fraction))
    }

    /// The wait before retry number `attempt` (1 for the first retry):
    /// `minimum` doubling per attempt, capped at `maximum`, then drawn
    /// uniformly from the upper half so waits grow but never line up.
    public static func backoff(attempt: Int, minimum: Duration, maximum: Duration,
                               using random: inout some RandomNumberGenerator) -> Duration {
        let shift = max(0, min(attempt - 1, 30))
        let ceiling = min(Double(minimum.nanoseconds) * Double(1 << shift), Double(maximum.nanoseconds))
        let wait = Double.random(in: (ceiling / 2)...ceiling, using: &random)
        return .nanoseconds(Int64(max(wait, Double(minimum.nanoseconds) / 2)))
    }
}

extension Duration {
    var seconds: Double { Double(nanoseconds) / 1e9 }
}
