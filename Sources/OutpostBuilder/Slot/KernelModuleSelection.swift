// Picks the kernel modules a slot carries, from rootfs/modules.txt, and
// orders them so that each module comes after everything it depends on.
//
// Dependencies come from the kernel's modules.dep (generated with
// `depmod -b` after unpacking, because Debian's package ships none and
// leaves it to postinst). Names match the way the kernel matches them:
// '-' and '_' are the same character.

import Foundation

/// The resolved module set of one kernel tree.
public struct KernelModuleSelection: Equatable, Sendable {
    /// Paths relative to /lib/modules/<version>/, dependencies first.
    public var loadOrder: [String]
    /// Requested names that are built into the kernel (nothing to load).
    public var builtIn: [String]
    /// Each path's direct and indirect dependencies from modules.dep (all of them in `loadOrder`).
    public var dependencies: [String: [String]] = [:]

    /// Module names from a modules.txt: one per line, '#' comments allowed.
    public static func parseList(_ text: String) -> [String] {
        DebianPackages.parseList(text)
    }

    /// Resolves `names` against modules.dep and modules.builtin text.
    public static func resolve(names: [String], modulesDep: String, modulesBuiltin: String,
                               kernel: String) throws -> KernelModuleSelection {
        var dependencies: [String: [String]] = [:]
        var pathByName: [String: String] = [:]
        for line in modulesDep.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2 else { continue }
            let path = String(parts[0])
            pathByName[moduleName(ofPath: path)] = path
            dependencies[path] = parts[1].split(separator: " ").map(String.init)
        }
        let builtinNames = Set(modulesBuiltin.split(separator: "\n").map { moduleName(ofPath: String($0)) })

        var order: [String] = []
        var placed = Set<String>()
        var builtIn: [String] = []
        // Depth-first, dependencies before dependants; modules.dep lists a
        // module's full transitive set, but recursing keeps the order right.
        func visit(_ path: String, _ stack: Set<String>) {
            guard !placed.contains(path), !stack.contains(path) else { return }
            for dependency in dependencies[path] ?? [] { visit(dependency, stack.union([path])) }
            placed.insert(path)
            order.append(path)
        }
        for name in names {
            let key = normalise(name)
            if let path = pathByName[key] {
                visit(path, [])
            } else if builtinNames.contains(key) {
                builtIn.append(name)
            } else {
                throw SlotAssemblyError.unknownModule(name: name, kernel: kernel)
            }
        }
        return KernelModuleSelection(loadOrder: order, builtIn: builtIn,
                                     dependencies: Dictionary(uniqueKeysWithValues: order.map { ($0, dependencies[$0] ?? []) }))
    }

    /// "kernel/fs/nls/nls_iso8859-1.ko(.xz)" → "nls_iso8859_1".
    static func moduleName(ofPath path: String) -> String {
        var base = (path as NSString).lastPathComponent
        for suffix in [".xz", ".zst", ".gz"] where base.hasSuffix(suffix) { base = String(base.dropLast(suffix.count)) }
        if base.hasSuffix(".ko") { base = String(base.dropLast(3)) }
        return normalise(base)
    }

    static func normalise(_ name: String) -> String {
        name.replacingOccurrences(of: "-", with: "_")
    }
}
