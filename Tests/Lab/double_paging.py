#!/usr/bin/env python3
"""Double paging on a real kernel (run inside the lab guest): a guest with its own swap
(swapfair-guestpager) under a host memory limit below its RAM, so that the host swaps its frames
while the guest swaps pages to its own disk. One run per configuration, the same workload:

  plain     host swap on the lab's swap disk, the guest's swap on a plain device (null_blk, in RAM)
  swapfair  host swap likewise, the guest's swap on a swapfair NBD export (kernel nbd client)

The guest pager records the ground truth: for each of its swap-outs, whether the host had swapped
that frame at the moment (mincore), and for each swap-in into a host-swapped frame. Prints one
table and PASS/FAIL lines; the last line is "double_paging: N passed, M failed".
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from labkit import BIN, OUT, MiB, Checks, cg_kill_and_remove, cg_make, cg_read, cg_write, log, mib, table

GROUP = "lab.slice/dp-guest"
RAM, PAGES, HOST_HIGH, SECONDS = "96M", "192M", 64 * MiB, 40


def vmstat():
    out = {}
    with open("/proc/vmstat") as fh:
        for line in fh:
            k, v = line.split()
            out[k] = int(v)
    return out


def run_guest(name, disk):
    """One run of the guest pager in its own group, with the host's limit below its RAM."""
    cg_kill_and_remove("lab.slice")
    cg_make(GROUP)
    cg_write(GROUP, "memory.high", HOST_HIGH)
    out = f"/tmp/dp-{name}.jsonl"
    args = [os.path.join(BIN, "swapfair-guestpager"), "--ram", RAM, "--pages", PAGES, "--disk", disk,
            "--duration", str(SECONDS), "--label", name, "--output", out, "--verify"]
    procs = os.path.join("/sys/fs/cgroup", GROUP, "cgroup.procs")

    def place():
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
    before = vmstat()
    t0 = time.monotonic()
    p = subprocess.run(args, preexec_fn=place, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=SECONDS + 300)
    secs = time.monotonic() - t0
    after = vmstat()
    lines = [json.loads(l) for l in open(out) if l.strip()]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"dp-{name}.jsonl"), "w") as fh:
        fh.writelines(json.dumps(l) + "\n" for l in lines)
    summary = next((l for l in lines if l.get("event") == "summary"), {})
    verify = next((l for l in lines if l.get("event") == "verify"), {})
    events = cg_read(GROUP, "memory.events").split()
    cg_kill_and_remove("lab.slice")
    if p.returncode != 0:
        log(f"{name}: exit status {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
    return {"rc": p.returncode, "seconds": secs, "summary": summary, "verify": verify, "events": " ".join(events),
            "host_in": (after["pswpin"] - before["pswpin"]) * 4096, "host_out": (after["pswpout"] - before["pswpout"]) * 4096}


def main():
    c = Checks()
    log("\n=== double paging: a guest with its own swap under a host memory limit ===")
    results = {}
    # plain: a RAM-backed block device as the guest's swap disk.
    subprocess.run(["modprobe", "-r", "null_blk"], stderr=subprocess.DEVNULL)
    subprocess.run(["modprobe", "null_blk", "nr_devices=1", "memory_backed=1", "gb=1", "bs=4096", "queue_mode=2"], check=True)
    results["plain"] = run_guest("plain", "/dev/nullb0")
    subprocess.run(["modprobe", "-r", "null_blk"], stderr=subprocess.DEVNULL)

    # swapfair: the guest's swap disk is its swapfair export, attached by the kernel's nbd client.
    state = "/tmp/dp-state"
    conf = os.path.join(OUT, "dp.toml")
    with open(conf, "w") as fh:
        fh.write(f'[host]\nstate_dir = "{state}"\nnbd_dir = "/run/swapfair/nbd"\n'
                 '[[vm]]\nname = "dp"\nswap_device = { size = "256M" }\n')
    logf = open(os.path.join(OUT, "dp-daemon.log"), "w")
    d = subprocess.Popen([os.path.join(BIN, "swapfaird"), "--config", conf, "--socket", "/run/swapfair/dp.sock",
                          "--swap-only"], stdout=logf, stderr=logf)
    for _ in range(100):
        if os.path.exists("/run/swapfair/nbd/dp.sock"):
            break
        time.sleep(0.1)
    subprocess.run(["modprobe", "nbd"], check=True)
    attach = subprocess.run(["nbd-client", "-u", "-N", "dp", "/run/swapfair/nbd/dp.sock", "/dev/nbd1", "-b", "4096"],
                            capture_output=True, text=True)
    if c.check(attach.returncode == 0, f"the swapfair export is attached as /dev/nbd1 {attach.stderr.strip()[-200:]}"):
        results["swapfair"] = run_guest("swapfair", "/dev/nbd1")
        st = json.loads(subprocess.run([os.path.join(BIN, "swapfairctl"), "status", "--json", "--socket", "/run/swapfair/dp.sock"],
                                       capture_output=True, text=True).stdout or "{}")
        dev = next((v.get("swap_device") or {} for v in st.get("vms", []) if v.get("name") == "dp"), {})
        results["swapfair"]["served_write"] = dev.get("write_bytes", 0)
        subprocess.run(["nbd-client", "-d", "/dev/nbd1"], capture_output=True)
    d.terminate()
    d.wait(10)

    rows = []
    for name, r in results.items():
        s = r["summary"]
        outs = s.get("swap_outs", 0)
        rows.append([name, mib(r["host_in"]), mib(r["host_out"]), mib(outs * 4096), f"{s.get('double_paged', 0)}",
                     f"{100 * s.get('double_paged', 0) / max(outs, 1):.1f}%", f"{s.get('false_reads', 0)}",
                     mib(s.get("double_paged", 0) * 4096), f"{s.get('rate', 0) / 1000:.1f}k",
                     f"{s.get('fault_p99_us', 0) / 1000:.2f} ms"])
    table(["CONFIG", "HOST SWAP-IN", "HOST SWAP-OUT", "GUEST SWAP-OUT", "DOUBLE PAGED (truth)", "OF SWAP-OUTS",
           "FALSE READS", "REDUNDANT READ", "ACCESSES/S", "GUEST FAULT P99"], rows)
    log(f"(guest RAM {RAM} under a host memory.high of {mib(HOST_HIGH)}, {PAGES} of guest pages, skewed, 30% writes, "
        f"{SECONDS} s; host swap on the lab's swap disk; redundant read: the host swap-ins that only fed a guest swap-out)")
    for name, r in results.items():
        v = r["verify"]
        c.check(r["rc"] == 0 and v.get("bad") == 0 and r["summary"].get("corrupt") == 0,
                f"{name}: every guest page read back from its swap disk holds what was last written "
                f"({v.get('pages', 0)} pages, {r['summary'].get('swap_ins', 0)} swap-ins, bad {v.get('bad')})")
        c.check("oom_kill 0" in r["events"], f"{name}: no OOM kill ({r['events']})")
    plain = results["plain"]["summary"]
    c.check(plain.get("double_paged", 0) > 0 and results["plain"]["host_in"] > 0,
            f"plain: the host swaps the guest's frames and the guest swaps out host-swapped frames "
            f"({plain.get('double_paged', 0)} double-paged swap-outs, {mib(results['plain']['host_in'])} host swap-in)")
    if "swapfair" in results:
        r = results["swapfair"]
        want = r["summary"].get("swap_outs", 0) * 4096
        c.check(r.get("served_write", 0) >= want,
                f"swapfair: the export served the guest's swap-outs ({mib(r.get('served_write', 0))} written, {mib(want)} swapped out)")
    log(f"double_paging: {c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
