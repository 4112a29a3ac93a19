"""Tools for swapfair's real-kernel scenarios: cgroups, stand-ins, the daemon, sampling, checks.

Runs inside the lab guest (Tests/Lab/run-guest.sh), as root, with cgroup2 at /sys/fs/cgroup.
"""
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import time

CG = "/sys/fs/cgroup"
MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SWAPFAIR_BIN", os.path.join(ROOT, ".build", "release"))
OUT = os.environ.get("LAB_OUT", "/tmp/lab-out")
LOCAL_OUT = f"/tmp/lab-standins.{os.getpid()}"


def _keep_standin_output():
    if os.path.isdir(LOCAL_OUT):
        os.makedirs(OUT, exist_ok=True)
        for f in os.listdir(LOCAL_OUT):
            shutil.copy(os.path.join(LOCAL_OUT, f), OUT)


atexit.register(_keep_standin_output)


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------- cgroups

def cg_path(rel):
    return os.path.join(CG, rel)


def cg_read(rel, f):
    with open(os.path.join(cg_path(rel), f)) as fh:
        return fh.read()


def cg_write(rel, f, value):
    with open(os.path.join(cg_path(rel), f), "w") as fh:
        fh.write(str(value))


def cg_make(rel):
    """Creates a group and enables memory and io for children of every parent on the way."""
    parts = rel.strip("/").split("/")
    for i in range(len(parts)):
        parent = "/".join(parts[:i])
        with open(os.path.join(cg_path(parent), "cgroup.subtree_control"), "w") as fh:
            fh.write("+memory +io")
        os.makedirs(cg_path("/".join(parts[: i + 1])), exist_ok=True)


def cg_kill_and_remove(rel):
    """Kills every process in a group and below, then removes the groups, deepest first."""
    top = cg_path(rel)
    if not os.path.isdir(top):
        return
    try:
        cg_write(rel, "cgroup.kill", "1")
    except OSError:
        pass
    for _ in range(100):
        if cg_flat(rel, "cgroup.events").get("populated", 0) == 0:
            break
        time.sleep(0.05)
    for dirpath, dirnames, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def cg_flat(rel, f):
    out = {}
    for line in cg_read(rel, f).splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def cg_limit(rel, f):
    v = cg_read(rel, f).strip()
    return None if v == "max" else int(v)


def cg_pressure_total(rel):
    for line in cg_read(rel, "memory.pressure").splitlines():
        if line.startswith("some "):
            return int(line.split("total=")[1])
    return 0


def cg_sample(rel):
    """One reading of a group's memory figures."""
    stat = cg_flat(rel, "memory.stat")
    ev = cg_flat(rel, "memory.events")
    return {
        "t": time.monotonic(),
        "current": int(cg_read(rel, "memory.current")),
        "swap": int(cg_read(rel, "memory.swap.current")),
        "high": cg_limit(rel, "memory.high"),
        "swap_max": cg_limit(rel, "memory.swap.max"),
        "low": cg_limit(rel, "memory.low"),
        "stall_us": cg_pressure_total(rel),
        "majflt": stat.get("pgmajfault", 0),
        "oom_kill": ev.get("oom_kill", 0),
        "high_events": ev.get("high", 0),
    }


# ---------------------------------------------------------------- processes

class StandIn:
    """A swapfair-loadgen process placed in a cgroup before it runs."""

    def __init__(self, name, group, memory, working_set, phases=None, duration=None, pattern="uniform", hot_set=None):
        self.name, self.group = name, group
        # Written to local tmpfs, copied to OUT at exit: on the 9p share, the first page of a file
        # written by a process under heavy reclaim twice came back as NUL bytes (its "filled" line).
        os.makedirs(LOCAL_OUT, exist_ok=True)
        self.out = os.path.join(LOCAL_OUT, f"{name}.jsonl")
        args = [os.path.join(BIN, "swapfair-loadgen"), "--memory", memory, "--working-set", working_set,
                "--label", name, "--output", self.out, "--pattern", pattern]
        if phases:
            args += ["--phases", phases]
        if hot_set:
            args += ["--hot-set", hot_set]
        if duration:
            args += ["--duration", str(duration)]
        procs = os.path.join(cg_path(group), "cgroup.procs")

        def place():
            with open(procs, "w") as fh:
                fh.write(str(os.getpid()))

        self.proc = subprocess.Popen(args, preexec_fn=place, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def lines(self):
        try:
            with open(self.out) as fh:
                return [json.loads(l) for l in fh if l.strip()]
        except (OSError, ValueError):
            return []

    def filled(self):
        return any(l.get("event") == "filled" for l in self.lines())

    def summary(self):
        for l in self.lines():
            if l.get("event") == "summary":
                return l
        return None

    def explain_exit(self):
        """Why a stand-in ended early: its exit status, what it printed and its group's events."""
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        try:
            events = " ".join(cg_read(self.group, "memory.events").split())
        except OSError:
            events = "(group gone)"
        log(f"{self.name} ended early: exit status {self.proc.returncode}; memory.events: {events}")
        for line in err.splitlines()[-5:]:
            log(f"  {self.name}: {line}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Daemon:
    """swapfaird with a configuration written for the scenario."""

    def __init__(self, name, config, extra=()):
        os.makedirs(OUT, exist_ok=True)
        self.name = name
        self.config = os.path.join(OUT, f"{name}.toml")
        self.logfile = os.path.join(OUT, f"{name}.log")
        self.socket = f"/run/swapfair/{name}.sock"
        with open(self.config, "w") as fh:
            fh.write(config)
        self.extra = list(extra)
        self.proc = None
        self.logfiles = []
        self.start()

    def start(self):
        # A file per start: lines a restarted daemon appended to its predecessor's log on the lab's
        # 9p share went missing now and then (always its first ones).
        path = self.logfile if not self.logfiles else self.logfile[:-4] + f".restart{len(self.logfiles)}.log"
        self.logfiles.append(path)
        log_fh = open(path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "swapfaird"), "--config", self.config, "--socket", self.socket, "--log-level", "debug"] + self.extra,
            stdout=log_fh, stderr=log_fh)
        for _ in range(100):
            if os.path.exists(self.socket):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"swapfaird exited: {self.log()[-2000:]}")
            time.sleep(0.1)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def status(self):
        r = subprocess.run([os.path.join(BIN, "swapfairctl"), "status", "--json", "--socket", self.socket],
                           capture_output=True, text=True, timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def log(self):
        """Every start's log, in order."""
        text = ""
        for path in self.logfiles:
            with open(path) as fh:
                text += fh.read()
        return text


# ---------------------------------------------------------------- sampling and checks

class Sampler:
    """Samples groups every `period` seconds while the scenario waits."""

    def __init__(self, groups, period=0.5):
        self.groups, self.period = groups, period
        self.series = {g: [] for g in groups}
        self.t0 = time.monotonic()

    def run_for(self, seconds, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for g in self.groups:
                try:
                    s = cg_sample(g)
                    s["t"] -= self.t0
                    self.series[g].append(s)
                except OSError:
                    pass
            if until and until():
                return True
            time.sleep(self.period)
        return False

    def window(self, g, t_from, t_to):
        return [s for s in self.series[g] if t_from <= s["t"] <= t_to]

    def mean(self, g, key, t_from, t_to):
        w = self.window(g, t_from, t_to)
        return sum(s[key] for s in w) / len(w) if w else 0.0

    def rate(self, g, key, t_from, t_to):
        """Increase of a counter per second over a window."""
        w = self.window(g, t_from, t_to)
        if len(w) < 2 or w[-1]["t"] <= w[0]["t"]:
            return 0.0
        return (w[-1][key] - w[0][key]) / (w[-1]["t"] - w[0]["t"])

    def now(self):
        return time.monotonic() - self.t0

    def dump(self, name):
        with open(os.path.join(OUT, f"{name}.series.json"), "w") as fh:
            json.dump(self.series, fh)


class Checks:
    def __init__(self):
        self.passed, self.failed = 0, 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
            log(f"PASS: {what}")
        else:
            self.failed += 1
            log(f"FAIL: {what}")
        return ok


def mib(x):
    return f"{x / MiB:.0f} MiB" if x is not None else "max"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        log("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def wait_filled(standins, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(s.filled() for s in standins):
            return True
        gone = [s for s in standins if s.proc.poll() is not None]
        if gone:
            for s in gone:
                s.explain_exit()
            return False
        time.sleep(0.2)
    return False
