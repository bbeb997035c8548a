// The "storage" component: proves PERSIST still takes writes by rewriting
// the heartbeat record (write, fsync, rename, fsync) every 30 s. The record
// doubles as the last time the system was known alive, which is the best
// estimate of when the power went. It is critical: if a write blocks (a hung
// disk), its liveness deadline lapses and the watchdog feed stops.

enum StorageComponent {
    static func spec(history: BootHistory, supervisor: Supervisor, timing: Agent.Timing) -> ComponentSpec {
        ComponentSpec(name: "storage", critical: true, livenessDeadlineMilliseconds: timing.storageDeadlineMilliseconds,
                      body: .task { context in
            repeat {
                do {
                    try history.writeHeartbeat()
                } catch {
                    supervisor.setPersistWritable(false)
                    throw error
                }
                supervisor.setPersistWritable(true)
                try context.beat()
            } while context.sleep(for: .milliseconds(timing.storageIntervalMilliseconds))
        })
    }
}
