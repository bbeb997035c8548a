// The ACPI power button (QEMU's `system_powerdown`, a real front-panel
// button). Linux 6.1 has no /proc/acpi/event any more; the `button` driver
// reports presses as KEY_POWER on an input device named "Power Button",
// which `evdev` exposes as /dev/input/eventN. A press is an orderly power-off.
//
// struct input_event on 64-bit Linux (24 bytes, native byte order):
//   0: struct timeval (16)   16: __u16 type   18: __u16 code   20: __s32 value

#if canImport(Glibc)
import Glibc
#endif
import OutpostPlatform
import OutpostEarlyBoot

enum PowerButton {
    static let eventType: UInt16 = 1      // EV_KEY
    static let keyPower: UInt16 = 116     // KEY_POWER
    static let eventSize = 24

    /// /dev/input/eventN nodes whose device calls itself "Power Button".
    static func devices(sysfs: String = "/sys/class/input") -> [String] {
        ((try? Sys.listDirectory(sysfs)) ?? []).filter { name in
            name.hasPrefix("event")
                && ((try? Sys.readText("\(sysfs)/\(name)/device/name")) ?? "").replacingNewlines().trimmingSpaces()
                    == "Power Button"
        }.map { "/dev/input/" + $0 }
    }

    /// True for a key press (value 1) of KEY_POWER in one raw event.
    static func isPowerPress(_ event: ArraySlice<UInt8>) -> Bool {
        guard event.count == eventSize else { return false }
        let base = event.startIndex
        func u16(_ at: Int) -> UInt16 { UInt16(event[base + at]) | UInt16(event[base + at + 1]) << 8 }
        let value = Int32(bitPattern: UInt32(u16(20)) | UInt32(u16(22)) << 16)
        return u16(16) == eventType && u16(18) == keyPower && value == 1
    }

    static func spec() -> ComponentSpec {
        ComponentSpec(name: "power-button", body: .task { context in
            let paths = devices()
            guard !paths.isEmpty else {
                Console.line("warning: power-button: no \"Power Button\" input device (modules button, evdev)")
                while context.sleep(for: .milliseconds(3_600_000)) {}
                return
            }
            var fds: [pollfd] = []
            defer { fds.forEach { Sys.close($0.fd) } }
            for path in paths { fds.append(pollfd(fd: try Sys.open(path, O_RDONLY | O_NONBLOCK), events: Int16(POLLIN), revents: 0)) }
            try context.beat()
            var buffer = [UInt8](repeating: 0, count: eventSize * 16)
            while !context.isStopping {
                _ = try pollDescriptors(&fds, timeout: .seconds(5), object: paths.joined(separator: ","))
                try context.beat()
                for index in fds.indices where fds[index].revents & Int16(POLLIN) != 0 {
                    let fd = fds[index].fd
                    let count = (try systemCall("read", paths[index], expecting: [.wouldBlock]) {
                        buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                    }).get(orElse: 0)
                    guard count > 0 else { continue }
                    for offset in stride(from: 0, to: count - eventSize + 1, by: eventSize)
                    where isPowerPress(buffer[offset..<offset + eventSize]) {
                        context.requestShutdown(ShutdownRequest(reason: .user, powerOff: true, component: "power-button",
                                                                detail: "ACPI power button"))
                    }
                }
            }
        })
    }
}
