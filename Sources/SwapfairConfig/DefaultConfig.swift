/// The configuration swapfair runs on when none is given with `--config` and the default path does
/// not exist: three VMs sharing the host, weights 1:1:2, each free to swap.
public enum DefaultConfig {
    public static let source = "embedded default"

    public static let text = """
        # swapfair: the embedded default configuration.
        [host]
        memory_budget = "75%"      # RAM the VMs may use together
        swap_budget = "100%"       # of the host's swap
        interval = "1s"            # control period
        pressure_target = "1%"     # share of time a VM may stall on memory
        idle_tax = 0.75            # ESX idle memory tax: idle memory costs 4x the shares

        [[vm]]
        name = "small-a"
        weight = 100
        reservation = "5%"

        [[vm]]
        name = "small-b"
        weight = 100
        reservation = "5%"

        [[vm]]
        name = "large"
        weight = 200
        reservation = "10%"
        io_weight = 200

        """
}
