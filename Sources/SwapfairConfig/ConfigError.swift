/// One problem found in a configuration file, located by line and key.
public struct ConfigProblem: Sendable, Equatable, CustomStringConvertible {
    public var line: Int?
    /// The key's path, e.g. `host.memory_budget` or `vm[2] "web".weight`.
    public var key: String?
    public var message: String

    public init(line: Int?, key: String?, _ message: String) {
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        [line.map { "line \($0)" }, key].compactMap { $0 }.joined(separator: ", ")
            + (line == nil && key == nil ? "" : ": ") + message
    }
}

/// A configuration the daemon refuses, with every problem found in it.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var problems: [ConfigProblem]

    public init(file: String, problems: [ConfigProblem]) {
        self.file = file
        self.problems = problems
    }

    /// One line per problem: `swapfair.toml:12: vm[2] "web".weight: must be ...`.
    public var description: String {
        problems.map { p in
            let location = p.line.map { "\(file):\($0)" } ?? file
            return "\(location): " + (p.key.map { "\($0): " } ?? "") + p.message
        }.joined(separator: "\n")
    }
}
