#!/usr/bin/env python3
"""swapfair under systemd as PID 1 (inside a lab guest booted with LAB_INIT=systemd).

    python3 Tests/Lab/systemd_lab.py

Installs the units with Scripts/install, starts swapfaird.service and two VM units whose QEMU is
replaced by stand-ins (a drop-in), and checks that the limits swapfair chose are the ones systemd
holds (`systemctl show`) and the ones in the cgroup files; that `daemon-reload` keeps them; that a
VM unit restart is picked up; and that a stopped control loop makes the watchdog restart the
service, which resumes. The last line is "systemd: N passed, M failed".
"""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("SWAPFAIR_BIN", os.path.join(ROOT, ".build", "release"))
CG = "/sys/fs/cgroup"
MiB = 1 << 20
PAGE = 4096
passed = failed = 0


def log(*a):
    print(*a, flush=True)


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        log(f"PASS: {what}")
    else:
        failed += 1
        log(f"FAIL: {what}")
    return ok


def sh(*args, check_rc=False):
    r = subprocess.run(args, capture_output=True, text=True)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


def show(unit, prop):
    return sh("systemctl", "show", "-p", prop, "--value", unit)


def status():
    out = sh(os.path.join(BIN, "swapfairctl"), "status", "--json")
    try:
        return json.loads(out)
    except ValueError:
        return None


def vm_status(name):
    s = status()
    if not s:
        return None
    return next((v for v in s["vms"] if v["name"] == name), None)


def show_all(unit, props):
    """Several properties in one call (each systemctl costs a lot under the emulator)."""
    out = sh("systemctl", "show", *[a for p in props for a in ("-p", p)], unit)
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def cg_file(unit, f, path=None):
    path = path or show(unit, "ControlGroup")
    try:
        with open(CG + path + "/" + f) as fh:
            return fh.read().strip()
    except OSError:
        return None


def as_bytes(v):
    """systemd's and the kernel's spellings of a byte limit, as a number (None: no limit)."""
    if v in ("infinity", "max", "[not set]", "", None):
        return None
    if v.startswith("default "):
        v = v.split()[1]
    return int(v) // PAGE * PAGE


def wait(what, pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.5)
    log(f"(gave up waiting: {what})")
    return False


def journal(unit, since=None):
    args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
    if since:
        args += ["--since", since]
    return sh(*args)


KNOBS = [("MemoryHigh", "memory.high"), ("MemoryLow", "memory.low"), ("MemorySwapMax", "memory.swap.max"),
         ("IOWeight", "io.weight")]


def agreement(vms, label):
    """systemctl show, the cgroup files and swapfair's own report, for every VM and knob. A tick
    may land between the reads, so a disagreement is read again (up to five times)."""
    for attempt in range(5):
        rows, bad = [], []
        for name, unit in vms.items():
            st = vm_status(name) or {}
            props = show_all(unit, [p for p, _ in KNOBS] + ["ControlGroup"])
            for prop, f in KNOBS:
                sd, kernel = props.get(prop, ""), cg_file(unit, f, props.get("ControlGroup"))
                ours = {"MemoryHigh": st.get("memory_high"), "MemorySwapMax": st.get("swap_max"),
                        "MemoryLow": st.get("reservation")}.get(prop, "n/a")
                rows.append((name, prop, sd, kernel, ours))
                same = as_bytes(sd) == as_bytes(kernel)
                if ours not in ("n/a", None):
                    same = same and as_bytes(sd) == int(ours) // PAGE * PAGE
                if prop == "IOWeight" and sd == "[not set]":
                    same = True  # io_weight not configured: swapfair leaves it alone
                if not same:
                    bad.append((name, prop))
        if not bad:
            break
        time.sleep(1.2)
    log(f"{'VM':4} {'PROPERTY':14} {'SYSTEMCTL SHOW':>16} {'CGROUP FILE':>16} {'SWAPFAIR':>12}")
    for name, prop, sd, kernel, ours in rows:
        log(f"{name:4} {prop:14} {sd:>16} {str(kernel):>16} {str(ours):>12}")
    check(not bad, f"{label}: systemctl show, the cgroup files and swapfair agree"
          + (f" (differ: {bad})" if bad else ""))
    return {(n, p): sd for n, p, sd, _, _ in rows}


def main():
    log(f"systemd {sh('systemctl', '--version').splitlines()[0].split()[1]} is PID 1: "
        f"{open('/proc/1/comm').read().strip() == 'systemd'}")
    # 1. install the units and a configuration for two VMs of the template
    r = subprocess.run([os.path.join(ROOT, "Scripts", "install"), "--bin", BIN, "--no-start"],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"Scripts/install installed the units ({r.stdout.strip().splitlines()[-1:]}"
          f"{r.stderr.strip()})")
    with open("/etc/swapfair/swapfair.toml", "w") as fh:
        fh.write('[host]\nmemory_budget = "320M"\nswap_budget = "1G"\ninterval = "1s"\n'
                 '[[vm]]\nname = "a"\nweight = 100\n'
                 '[[vm]]\nname = "b"\nweight = 300\nreservation = "96M"\nio_weight = 300\n'
                 '[[vm]]\nname = "c"\nweight = 100\npidfile = "/run/lab-standin-c.pid"\n')
    # The template runs QEMU; in the lab a stand-in plays the VM (a drop-in, as a host would use).
    os.makedirs("/etc/systemd/system/swapfair-vm@.service.d", exist_ok=True)
    with open("/etc/systemd/system/swapfair-vm@.service.d/lab-standin.conf", "w") as fh:
        fh.write("[Service]\nEnvironmentFile=\nExecStart=\n"
                 f"ExecStart={BIN}/swapfair-loadgen --memory 200M --working-set 200M --label %i "
                 "--output /run/lab-standin-%i.jsonl --duration 3600 --rate 5000\n")
    sh("systemctl", "daemon-reload")
    for u in ["swapfaird.service", "swapfair.slice", "swapfair-vm@a.service"]:
        v = sh("systemd-analyze", "verify", "--man=no", u)
        log(f"(systemd-analyze verify {u}: {'ok' if not v else v})")

    # 2. start the daemon (Type=notify: start returns once READY) and the two VMs
    t0 = time.monotonic()
    r = subprocess.run(["systemctl", "start", "swapfaird.service"], capture_output=True, text=True)
    log(f"(systemctl start swapfaird.service returned after {time.monotonic() - t0:.1f} s)")
    check(r.returncode == 0 and show("swapfaird.service", "ActiveState") == "active",
          f"swapfaird.service started and is active ({r.stderr.strip() or show('swapfaird.service', 'SubState')})")
    check(show("swapfaird.service", "StatusText") != "", f"swapfaird reports a STATUS line "
          f"(\"{show('swapfaird.service', 'StatusText')}\")")
    j = journal("swapfaird.service")
    line = next((l for l in j.splitlines() if "limits are set through" in l), "")
    check("limits are set through systemd" in line, f"the daemon chose the systemd backend and said why ({line})")
    vms = {"a": "swapfair-vm@a.service", "b": "swapfair-vm@b.service"}
    sh("systemctl", "start", *vms.values())
    # VM c is a process started outside any unit of its own, named by a pid file: swapfaird
    # places it with StartTransientUnit as vm-c.scope in swapfair.slice.
    c = subprocess.Popen([os.path.join(BIN, "swapfair-loadgen"), "--memory", "200M", "--working-set", "200M",
                          "--label", "c", "--output", "/run/lab-standin-c.jsonl", "--duration", "3600",
                          "--rate", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open("/run/lab-standin-c.pid", "w") as fh:
        fh.write(f"{c.pid}\n")
    ok = wait("both VMs managed", lambda: all((vm_status(n) or {}).get("state") == "running" for n in vms), 60)
    check(ok, "swapfaird manages both VM units (found as swapfair-vm@NAME.service)")
    for n, u in vms.items():
        check(show(u, "ControlGroup") == f"/swapfair.slice/swapfair-vm@{n}.service",
              f"VM {n} runs in swapfair.slice ({show(u, 'ControlGroup')})")
    ok = wait("VM c placed", lambda: (vm_status("c") or {}).get("state") == "running", 30)
    props = show_all("vm-c.scope", ["Slice", "ControlGroup", "ActiveState", "Description"])
    with open(f"/proc/{c.pid}/cgroup") as fh:
        where = fh.read().strip()
    check(ok and props.get("Slice") == "swapfair.slice" and where == "0::/swapfair.slice/vm-c.scope",
          f"the pid-file VM c was placed by StartTransientUnit: vm-c.scope {props} (process in {where})")
    vms["c"] = "vm-c.scope"
    time.sleep(15)  # let the plan settle past the first feedback steps

    before = agreement(vms, "after start")
    high = {n: as_bytes(before[(n, "MemoryHigh")]) for n in vms}
    check(high["a"] is not None and high["b"] is not None and high["b"] > high["a"],
          f"the weights show: MemoryHigh a {high['a']} < b {high['b']}")
    check(as_bytes(before[("b", "MemoryLow")]) == 96 * MiB, "MemoryLow of b is its reservation (96 MiB)")
    check(before[("b", "IOWeight")] == "300", f"IOWeight of b is its io_weight ({before[('b', 'IOWeight')]})")
    drop_in = "/run/systemd/system.control/swapfair-vm@b.service.d"
    check(os.path.isdir(drop_in) and any("MemoryHigh" in open(os.path.join(drop_in, f)).read()
                                         for f in os.listdir(drop_in)),
          f"systemd holds swapfair's settings as runtime drop-ins ({drop_in})")

    # 3. daemon-reload keeps them; a write made behind systemd's back is what it undoes
    ga = show(vms["a"], "ControlGroup")
    try:
        with open(CG + ga + "/memory.low", "w") as fh:
            fh.write(str(50 * MiB))
    except OSError as e:
        log(f"(direct write failed: {e})")
    sh("systemctl", "daemon-reload")
    time.sleep(1)
    low_after = cg_file(vms["a"], "memory.low")
    log(f"(a direct write of memory.low = 50 MiB to a's group read {low_after} after daemon-reload: "
        f"{'undone by systemd' if as_bytes(low_after) != 50 * MiB else 'kept'})")
    after = agreement(vms, "after daemon-reload")
    for n in vms:
        # the feedback may move memory.high between the two snapshots; the reservation cannot move
        check(after[(n, "MemoryLow")] == before[(n, "MemoryLow")] and
              after[(n, "MemorySwapMax")] != "infinity" and after[(n, "MemoryHigh")] != "infinity",
              f"daemon-reload left VM {n}'s limits in place (MemoryLow {after[(n, 'MemoryLow')]}, "
              f"MemoryHigh {after[(n, 'MemoryHigh')]})")

    # 4. a VM unit restart is picked up
    since = sh("date", "+%Y-%m-%d %H:%M:%S")
    old_pid = show(vms["a"], "MainPID")
    sh("systemctl", "restart", vms["a"])
    new_pid = show(vms["a"], "MainPID")
    log(f"(swapfair-vm@a restarted: main pid {old_pid} -> {new_pid})")
    time.sleep(2)
    ok = wait("VM a managed again", lambda: (vm_status("a") or {}).get("state") == "running" and
              "VM running" in journal("swapfaird.service", since), 30)
    lines = [l for l in journal("swapfaird.service", since).splitlines() if "vm=a" in l][:4]
    for l in lines:
        log(f"  journal: {l}")
    check(ok, "the daemon noticed the restart and manages the new instance of VM a")
    time.sleep(5)
    agreement(vms, "after the VM unit restart")

    # 5. a stopped control loop: the watchdog restarts the service, which resumes
    pid = show("swapfaird.service", "MainPID")
    restarts = int(show("swapfaird.service", "NRestarts") or 0)
    since = sh("date", "+%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    os.kill(int(pid), 19)  # SIGSTOP: no tick, no watchdog ping
    ok = wait("a watchdog restart", lambda: int(show("swapfaird.service", "NRestarts") or 0) > restarts and
              show("swapfaird.service", "ActiveState") == "active", 90)
    log(f"(swapfaird {pid} stopped with SIGSTOP; restarted as {show('swapfaird.service', 'MainPID')} "
        f"after {time.monotonic() - t0:.1f} s)")
    j = journal("swapfaird.service", since)
    check(ok and "atchdog timeout" in j, "the watchdog restarted swapfaird.service after its loop stopped")
    t1 = (status() or {}).get("daemon", {}).get("ticks", 0)
    time.sleep(3)
    s = status() or {}
    t2 = s.get("daemon", {}).get("ticks", 0)
    check(t2 > t1 and all(v.get("state") == "running" for v in s.get("vms", [])),
          f"the restarted daemon ticks ({t1} -> {t2}) and manages every VM again")
    again = agreement(vms, "after the watchdog restart")
    check(all(as_bytes(again[(n, "MemoryHigh")]) is not None for n in vms),
          "the restarted daemon resumed from the limits in force (no reset to infinity)")

    c.kill()
    sh("systemctl", "stop", *[u for n, u in vms.items() if n != "c"], "swapfaird.service")
    log(f"systemd: {passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
