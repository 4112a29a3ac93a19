import SwapfairConfig
import SwapfairSys

/// Chooses the configuration: an explicit `--config` must exist; without one the default path is
/// used if present, else the embedded default.
public enum ConfigSource {
    public static func load(explicit: String?, facts: HostFacts) throws(ConfigError) -> SwapfairConfiguration {
        if let explicit { return try ConfigLoader.load(path: explicit, facts: facts) }
        if FileAccess.exists(ConfigLoader.defaultPath) {
            return try ConfigLoader.load(path: ConfigLoader.defaultPath, facts: facts)
        }
        return try ConfigLoader.parse(DefaultConfig.text, source: DefaultConfig.source, facts: facts)
    }
}
