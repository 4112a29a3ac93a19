#!/usr/bin/env python3
"""swapfair under systemd as PID 1 (inside a lab guest booted with LAB_INIT=systemd).

    python3 Tests/Lab/systemd_lab.py

Installs the units with Scripts/install, starts swapfaird.service and two VM units whose QEMU is
replaced by stand-ins (a drop-in), and checks that the limits swapfair chose are the ones systemd
holds (`systemctl show`) and the ones in the cgroup files; that `daemon-reload` keeps them; that a
VM unit restart is picked up; that `systemctl reload` adds a VM live (managed, its swap device
served) while a client of a running VM's swap device goes on without a pause; that SIGPIPE, SIGHUP
and SIGUSR1 from `systemctl kill` and a reload of an invalid file leave the daemon running; and
that a stopped control loop makes the watchdog restart the service, which resumes. The last line
is "systemd: N passed, M failed".
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
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


NBD_DIR = "/run/swapfair/nbd"
NBD_BLOCK = 64 << 10


def nbd_open(path, name, timeout=10.0):
    """A fixed-newstyle NBD handshake ending in NBD_OPT_GO; the socket is then in transmission."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        if recv_exact(s, 18)[:16] != b"NBDMAGICIHAVEOPT":
            raise ConnectionError("not an NBD fixed-newstyle greeting")
        n = name.encode()
        go = struct.pack(">I", len(n)) + n + struct.pack(">H", 0)
        # flags FIXED_NEWSTYLE | NO_ZEROES, then NBD_OPT_GO (7)
        s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 7, len(go)) + go)
        while True:
            _, _, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
            recv_exact(s, length)
            if rtype == 1:  # NBD_REP_ACK
                return s
            if rtype & 0x80000000:
                raise ConnectionError(f"NBD_OPT_GO refused ({rtype:#x})")
    except BaseException:
        s.close()
        raise


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {len(out)} of {n} bytes")
        out += chunk
    return out


def nbd_io(s, cmd, cookie, offset, data=b"", length=0):
    """One request (0 read, 1 write, 2 disconnect) and, but for a disconnect, its simple reply."""
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, cmd, cookie, offset, len(data) or length) + data)
    if cmd == 2:
        return b""
    magic, error, got = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != 0x67446698 or got != cookie or error:
        raise ConnectionError(f"bad reply to {'read' if cmd == 0 else 'write'} at {offset}: "
                              f"magic {magic:#x}, error {error}, cookie {got} (sent {cookie})")
    return recv_exact(s, length) if cmd == 0 else b""


class SwapClient(threading.Thread):
    """A VM using its swap device: writes a block, reads it back and compares, again and again over
    a few MiB, on one connection, and records when each request completed, so that a pause of the
    device (or a dropped connection) shows as a gap or an error."""

    def __init__(self, path, name, blocks=64, pause=0.05):
        super().__init__(daemon=True)
        self.path, self.name, self.blocks, self.pause = path, name, blocks, pause
        self.times, self.errors, self.written = [], [], {}
        self.done = threading.Event()
        self.sock = None

    def run(self):
        try:
            self.sock = nbd_open(self.path, self.name)
            i = 0
            while not self.done.is_set():
                off = (i % self.blocks) * NBD_BLOCK
                data = struct.pack(">QQ", i, off) * (NBD_BLOCK // 16)
                nbd_io(self.sock, 1, 2 * i, off, data)
                self.times.append(time.monotonic())
                if nbd_io(self.sock, 0, 2 * i + 1, off, length=NBD_BLOCK) != data:
                    self.errors.append(f"block at {off} read back other data than written (op {i})")
                self.times.append(time.monotonic())
                self.written[off] = data
                i += 1
                time.sleep(self.pause)
        except (OSError, ConnectionError, struct.error) as e:
            self.errors.append(f"{type(e).__name__}: {e}")

    def finish(self):
        """Stops the loop, reads every block back once more, and disconnects."""
        self.done.set()
        self.join(15)
        stop = time.monotonic()
        if self.is_alive():
            self.errors.append("a request did not complete within 15 s")
        elif self.sock and not self.errors:
            try:
                bad = [o for o, d in self.written.items()
                       if nbd_io(self.sock, 0, 1 << 40 | o, o, length=NBD_BLOCK) != d]
                if bad:
                    self.errors.append(f"{len(bad)} blocks read back wrong at the end")
                nbd_io(self.sock, 2, 0, 0)
            except (OSError, ConnectionError, struct.error) as e:
                self.errors.append(f"final read-back: {type(e).__name__}: {e}")
        if self.sock:
            self.sock.close()
        return stop

    def longest_gap(self, start, end):
        """The longest time without a completed request between start and end (monotonic)."""
        t = [start] + [x for x in self.times if start < x < end] + [end]
        return max((b - a, a) for a, b in zip(t, t[1:]))


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


def daemon_props():
    return show_all("swapfaird.service", ["MainPID", "ActiveState", "NRestarts"])


def quick_status():
    """The control socket's status, asked directly: polling through swapfairctl costs a process
    start each time under the emulator."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect("/run/swapfair/swapfaird.sock")
            s.sendall(b"status\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return json.loads(out)
    except (OSError, ValueError):
        return {}


def reloads():
    return (quick_status().get("daemon") or {}).get("reloads")


def quick_vm(name):
    return next((v for v in quick_status().get("vms", []) if v.get("name") == name), {})


def live_reload(vms):
    """5. Reloads while a running VM's swap device is in use: a VM added to the file is managed and
    its device served; the running device and its client go on without a pause; stray signals and
    an invalid file leave the same process running."""
    client = SwapClient(f"{NBD_DIR}/b.sock", "b")
    client.start()
    wait("the swap client's first requests", lambda: len(client.times) >= 20 or not client.is_alive(), 30)
    before = daemon_props()
    dev = quick_vm("b").get("swap_device") or {}
    check(len(client.times) >= 20 and not client.errors and dev.get("connections", 0) >= 1,
          f"VM b's swap device has a client writing and reading back blocks ({len(client.times) // 2} "
          f"round trips, {dev.get('connections')} connections{', ' + client.errors[0] if client.errors else ''})")

    # VM d: a unit of its own in swapfair.slice, started before the daemon is told of it
    sh("systemd-run", "--unit=lab-vm-d.service", "--slice=swapfair.slice", "--collect",
       os.path.join(BIN, "swapfair-loadgen"), "--memory", "64M", "--working-set", "64M", "--label", "d",
       "--output", "/run/lab-standin-d.jsonl", "--duration", "3600", "--rate", "2000")
    with open("/etc/swapfair/swapfair.toml") as fh:
        good = fh.read()
    good += '[[vm]]\nname = "d"\nweight = 200\nunit = "lab-vm-d.service"\nswap_device = { size = "64M" }\n'
    with open("/etc/swapfair/swapfair.toml", "w") as fh:
        fh.write(good)
    n0 = reloads() or 0
    since = sh("date", "+%Y-%m-%d %H:%M:%S")
    t_reload = time.monotonic()
    r = subprocess.run(["systemctl", "reload", "swapfaird.service"], capture_output=True, text=True)
    took = time.monotonic() - t_reload
    # ExecReload is `swapfairctl reload`, which waits for the daemon's outcome: the reload is done
    # when systemctl returns (with `kill -HUP` systemd 252 would end the job before the daemon read
    # the file). The count is still waited for, as the status is published at the next tick.
    applied = wait("the reload", lambda: (reloads() or 0) > n0, 30)
    log(f"(systemctl reload returned {r.returncode} after {took:.1f} s; the reload was done after "
        f"{time.monotonic() - t_reload:.1f} s)")
    check(r.returncode == 0 and took < 15 and applied,
          f"systemctl reload swapfaird returned 0 within 15 s and the daemon reloaded ({r.stderr.strip()})")
    ok = wait("VM d managed", lambda: quick_vm("d").get("state") == "running", 30)
    d_high = cg_file("lab-vm-d.service", "memory.high")
    check(ok and as_bytes(d_high) is not None,
          f"the VM added to the file is managed without a restart (state {quick_vm('d').get('state')}, "
          f"memory.high {d_high})")
    try:
        s = nbd_open(f"{NBD_DIR}/d.sock", "d")
        data = b"swapfair-d-block" * (4096 // 16)
        nbd_io(s, 1, 1, 4096, data)
        same = nbd_io(s, 0, 2, 4096, length=4096) == data
        nbd_io(s, 2, 3, 0)
        s.close()
        served = "a block written reads back" + ("" if same else " WRONG")
    except (OSError, ConnectionError, struct.error) as e:
        same, served = False, f"{type(e).__name__}: {e}"
    check(same, f"the added VM's swap device is served at {NBD_DIR}/d.sock ({served})")
    for line in [l for l in journal("swapfaird.service", since).splitlines()
                 if "reload" in l.lower() or "vm=d" in l][:8]:
        log(f"  journal: {line}")
    after = daemon_props()
    check(after["MainPID"] == before["MainPID"] and after["ActiveState"] == "active"
          and after["NRestarts"] == before["NRestarts"],
          f"the reload kept the same process (MainPID {before['MainPID']} -> {after['MainPID']}, "
          f"{after['ActiveState']}, NRestarts {after['NRestarts']})")

    # Signals a peer or an operator may send: none of them ends the daemon (HUP reloads).
    for sig in ["PIPE", "HUP", "USR1"]:
        n = reloads() or 0
        sh("systemctl", "kill", "-s", sig, "swapfaird.service")
        time.sleep(0.5)
        if sig == "HUP":
            wait("the reload on SIGHUP", lambda: (reloads() or 0) > n, 15)
        st = status() or {}
        p = daemon_props()
        pid = (st.get("daemon") or {}).get("pid")
        check(p["MainPID"] == before["MainPID"] and p["ActiveState"] == "active" and str(pid) == p["MainPID"]
              and p["NRestarts"] == before["NRestarts"],
              f"systemctl kill -s {sig}: still active, MainPID {p['MainPID']}, swapfairctl status answers "
              f"(pid {pid}, reloads {(st.get('daemon') or {}).get('reloads')}), NRestarts {p['NRestarts']}")

    # An invalid file is refused whole; the configuration in force stays, and so does the process.
    n = reloads() or 0
    with open("/etc/swapfair/swapfair.toml", "w") as fh:
        fh.write(good + '[[vm]]\nname = "e"\nweight = "heavy"\n')
    since = sh("date", "+%Y-%m-%d %H:%M:%S")
    r = subprocess.run(["systemctl", "reload", "swapfaird.service"], capture_output=True, text=True)
    wait("the reload of the invalid file", lambda: (reloads() or 0) > n, 30)
    refused = [l for l in journal("swapfaird.service", since).splitlines() if "refused" in l]
    p = daemon_props()
    st = quick_status()
    log(f"(systemctl reload of the invalid file exited {r.returncode})")
    # systemctl fails the reload (swapfairctl exits 1 on a refused file); the daemon runs on.
    check(r.returncode != 0 and refused and p["MainPID"] == before["MainPID"] and p["ActiveState"] == "active"
          and all(v.get("state") == "running" for v in st.get("vms", [])) and len(st.get("vms", [])) == len(vms) + 1,
          f"an invalid file is refused and the daemon runs on as it was (MainPID {p['MainPID']}, "
          f"{p['ActiveState']}, {len(st.get('vms', []))} VMs; journal: {refused[:1]})")
    with open("/etc/swapfair/swapfair.toml", "w") as fh:
        fh.write(good)
    r = subprocess.run([os.path.join(BIN, "swapfairctl"), "reload"], capture_output=True, text=True)
    check(r.returncode == 0 and "nothing changed" in r.stdout,
          f"the good file back: swapfairctl reload exits 0, nothing changed ({r.stdout.strip()}{r.stderr.strip()})")

    stop = client.finish()
    gap, at = client.longest_gap(t_reload, stop)
    base, _ = client.longest_gap(client.times[0] if client.times else t_reload, t_reload)
    dev = quick_vm("b").get("swap_device") or {}
    log(f"(swap client: {len(client.times) // 2} round trips; longest gap {base:.2f} s before the reload, "
        f"{gap:.2f} s from the reload on, at {at - t_reload:+.1f} s; device errors {dev.get('errors')})")
    check(not client.errors and gap < 2.0,
          f"VM b's swap client went on through the reloads and signals: no error, no gap of 2 s or more "
          f"(longest {gap:.2f} s){'; ' + '; '.join(client.errors[:2]) if client.errors else ''}")


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
                 'swap_device = { size = "64M" }\n'
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

    live_reload(vms)

    # 6. a stopped control loop: the watchdog restarts the service, which resumes
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
    sh("systemctl", "stop", *[u for n, u in vms.items() if n != "c"], "lab-vm-d.service", "swapfaird.service")
    log(f"systemd: {passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
