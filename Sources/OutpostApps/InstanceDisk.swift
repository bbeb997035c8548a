// The lifecycle of one instance disk over its verified base image: restart
// keeps the overlay (the guest's writes survive), purge recreates it from the
// base (the guest's writes are gone), and a changed image gets a fresh overlay
// unless the manifest asks to preserve the disk.

/// One instance disk: an overlay file on a verified base.
public struct InstanceDisk: Equatable, Sendable {
    /// What `prepare` did, for the instance's log and status.
    public enum Outcome: Equatable, Sendable {
        /// A new overlay (first start, purge, or a new image).
        case created
        /// The existing overlay, with the guest's writes.
        case kept
    }

    public var path: String
    public var base: BaseImage
    /// The least virtual size: the manifest's maxsize.
    public var minimumSize: UInt64

    public init(path: String, base: BaseImage, minimumSize: UInt64) {
        self.path = path
        self.base = base
        self.minimumSize = minimumSize
    }

    /// Makes the overlay ready to boot. With `purge` it is recreated from the base. Otherwise an
    /// overlay already on this base is kept; one on another base is kept only with `preserve`
    /// (its writes outlive a manifest change; pass it to `ContentStore.collectGarbage(overlays:)`
    /// so its old image stays) and recreated without it.
    public func prepare(purge: Bool, preserve: Bool = false) throws(AppsError) -> Outcome {
        if !purge, let existing = try? QCOW2Overlay.info(path) {
            if existing.backingFile == base.path || preserve { return .kept }
        }
        try QCOW2Overlay.create(at: path, base: base, minimumSize: minimumSize)
        return .created
    }
}
