/// What names and paths the configuration accepts, and why not.
public enum NameRules {
    /// VM names become cgroup and file names (`vm-NAME.scope`, a socket, a volume), so they are
    /// kept to a safe alphabet: no `/`, no `..`, nothing systemd would escape.
    public static func vmNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "must not be empty" }
        if name.count > 64 { return "\"\(name)\" is longer than 64 characters" }
        if name.contains("/") { return "\"\(name)\" contains \"/\"; use letters, digits, '-', '_' and '.'" }
        if name.contains("..") { return "\"\(name)\" contains \"..\"" }
        if name.hasPrefix(".") || name.hasPrefix("-") { return "\"\(name)\" must start with a letter or digit" }
        let ok = name.unicodeScalars.allSatisfy { s in
            s.isASCII && (s.properties.isAlphabetic || ("0"..."9").contains(s) || s == "-" || s == "_" || s == ".")
        }
        if !ok { return "\"\(name)\" has characters other than letters, digits, '-', '_' and '.'" }
        return nil
    }

    public static func sliceProblem(_ s: String) -> String? {
        if !s.hasSuffix(".slice") { return "\"\(s)\" must end in .slice" }
        if s.contains("/") || s.contains("..") { return "\"\(s)\" must be a single name, without \"/\" or \"..\"" }
        return nil
    }

    public static func unitProblem(_ s: String) -> String? {
        let suffixes = [".service", ".scope"]
        if !suffixes.contains(where: { s.hasSuffix($0) }) { return "\"\(s)\" must be a .service or .scope unit" }
        if s.contains("/") { return "\"\(s)\" must not contain \"/\"" }
        return nil
    }

    /// A cgroup path relative to the cgroup root (a leading `/` is allowed and means the root).
    public static func cgroupPathProblem(_ s: String) -> String? {
        let parts = s.split(separator: "/", omittingEmptySubsequences: true)
        if parts.isEmpty { return "must name a cgroup below the root" }
        if parts.contains(where: { $0 == ".." || $0 == "." }) { return "\"\(s)\" must not contain \".\" or \"..\"" }
        return nil
    }

    public static func normalizedCgroupPath(_ s: String) -> String {
        s.split(separator: "/", omittingEmptySubsequences: true).joined(separator: "/")
    }
}
