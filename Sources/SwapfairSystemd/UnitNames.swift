/// How systemd names units and lays out their cgroups.
public enum UnitNames {
    static let suffixes = [".service", ".scope", ".slice"]

    /// The cgroup path systemd gives a slice: each dash opens a level, so "a-b.slice" lives in
    /// "a.slice/a-b.slice". "-.slice" is the root.
    public static func slicePath(_ slice: String) -> String {
        guard slice.hasSuffix(".slice"), slice != "-.slice" else { return "" }
        let stem = slice.dropLast(".slice".count)
        var path: [String] = []
        var prefix = ""
        for part in stem.split(separator: "-", omittingEmptySubsequences: false) {
            prefix = prefix.isEmpty ? String(part) : prefix + "-" + part
            path.append(prefix + ".slice")
        }
        return path.joined(separator: "/")
    }

    /// The unit whose cgroup `path` is, when its last component is a unit's name; nil for a group
    /// inside a unit (a delegated subtree), which systemd does not manage.
    public static func unit(ofCgroup path: String) -> String? {
        let parts = path.split(separator: "/")
        guard let last = parts.last, suffixes.contains(where: { last.hasSuffix($0) }) else { return nil }
        // Below a .service or .scope, groups belong to the unit's own processes, not to systemd.
        if parts.dropLast().contains(where: { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }) { return nil }
        return String(last)
    }
}
