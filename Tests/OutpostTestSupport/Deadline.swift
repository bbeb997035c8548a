import Foundation

/// Polls `condition` every `interval` until it holds or `limit` passes; returns how long it
/// took, or nil at the deadline. For tests that measure the wait or decide what a timeout means.
@discardableResult
public func waitUntil(_ limit: Duration, every interval: Duration = .milliseconds(5),
                      _ condition: () throws -> Bool) rethrows -> Duration? {
    let start = ContinuousClock.now
    while start.duration(to: .now) < limit {
        if try condition() { return start.duration(to: .now) }
        if interval > .zero {
            Thread.sleep(forTimeInterval: Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18)
        } else {
            sched_yield()
        }
    }
    return nil
}

/// Like `waitUntil`, but a missed deadline throws one line naming `what` was awaited.
@discardableResult
public func waitFor(_ what: String, within limit: Duration, every interval: Duration = .milliseconds(20),
                    _ condition: () throws -> Bool) throws -> Duration {
    guard let took = try waitUntil(limit, every: interval, condition) else {
        throw TestSupportError.timedOut(what: what, after: limit)
    }
    return took
}
