// The update flow as a supervised component: it runs once per boot (trial,
// commit, fallback record, update media), then serves the controller's requests. What "healthy" means
// during a trial is the supervisor's own watchdog verdict (every critical
// component within its deadline, PERSIST accepting writes) plus the root's
// self-test marker, which a deliberately broken test build carries.
import OutpostEarlyBoot

enum UpdateComponent {
    /// A root file whose presence marks the build as failing its self-test.
    static let selfTestFailure = "/etc/outpost/selftest-fail"

    static func spec(_ service: UpdateService, supervisor: Supervisor) -> ComponentSpec {
        ComponentSpec(name: "update", critical: false, livenessDeadlineMilliseconds: 120_000, body: .task { context in
            try context.beat()
            service.run(
                unhealthy: { health(supervisor) },
                alive: { try? context.beat() },
                reboot: { reason in context.requestShutdown(request(for: reason)) })
            // Then the controller's requests (a managed device), checked every second.
            while context.sleep(for: .milliseconds(1000)) {
                try context.beat()
                service.serveController(alive: { try? context.beat() },
                                        reboot: { reason in context.requestShutdown(request(for: reason)) })
            }
        })
    }

    static func health(_ supervisor: Supervisor) -> String? {
        if case let .withhold(component, detail) = supervisor.feedVerdict() { return "\(component): \(detail)" }
        if Sys.exists(selfTestFailure) {
            let text = (try? Sys.readText(selfTestFailure)) ?? ""
            return text.split(separator: "\n").first.map(String.init) ?? "self-test failed"
        }
        return nil
    }

    static func request(for reason: UpdateRebootReason) -> ShutdownRequest {
        switch reason {
        case let .update(version, slot):
            return ShutdownRequest(reason: .update, powerOff: false, component: "update", expectedSlot: slot,
                                   detail: "booting \(version) from \(slot)")
        case let .testFailed(version, why):
            return ShutdownRequest(reason: .fallback, powerOff: false, component: "update",
                                   detail: "\(version ?? "the update") failed its test window: \(why)")
        }
    }
}
