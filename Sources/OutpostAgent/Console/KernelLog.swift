// The kernel's own messages, one console command away. The kernel command
// line says `quiet` (docs/boot.md), so the serial console shows GRUB's and
// Outpost's lines while the kernel's boot log stays in its ring buffer:
// `kernel log` prints that buffer, as `dmesg` would, without consuming it.

import OutpostShims

enum KernelLog {
    /// The console command's words. Its reply stays on the console: the controller
    /// is not sent the kernel's hundreds of lines.
    static let command = ["kernel", "log"]

    /// The ring buffer's records as lines, without their "<priority>" prefix.
    static func lines() -> [String] {
        let size = OutpostShims_kernel_log_size()
        guard size > 0 else { return ["kernel log: cannot read the kernel's buffer (syslog(2) refused)"] }
        var buffer = [CChar](repeating: 0, count: Int(size))
        let count = buffer.withUnsafeMutableBufferPointer { OutpostShims_kernel_log_read_all($0.baseAddress, size) }
        guard count >= 0 else { return ["kernel log: cannot read the kernel's buffer (syslog(2) refused)"] }
        return parse(buffer.prefix(Int(count)).map { UInt8(bitPattern: $0) })
    }

    /// "<6>[    0.000000] Linux version …" records → "[    0.000000] Linux version …".
    static func parse(_ bytes: some Collection<UInt8>) -> [String] {
        String(decoding: bytes, as: UTF8.self).split(separator: "\n").map { record in
            var line = Substring(record)
            if line.first == "<", let close = line.firstIndex(of: ">"),
               line[line.index(after: line.startIndex)..<close].allSatisfy(\.isNumber) {
                line = line[line.index(after: close)...]
            }
            return String(line)
        }
    }
}
