#!/usr/bin/env python3
"""Chaos soak of swapfaird: verified I/O on one export while hostile clients misbehave on every
socket and the configuration is reloaded every few seconds, then a check that the daemon lived
through it and gave back what the hostile clients made it take.

    Tests/Hostile/soak.py [--seconds 120] [--keep] [--bin-dir DIR] [--seed N]

For --seconds:
  - one client does verified I/O on export A: fio's nbd engine (random reads and writes, every
    block read back checked with crc32c) when this fio has it, else qemu-io writing and reading
    back patterns;
  - threads misbehave: NBD clients that hang up at every stage of the handshake and of the
    transmission phase, send garbage or stall, on A, B and C (C comes and goes); control-socket
    clients that hang up, send garbage or a megabyte line, dribble, or say nothing; bursts of
    connections opened and dropped;
  - every 3-5 s the configuration file is rewritten, in turn: (a) VM C added, (b) C removed,
    (c) A's and B's swap weights changed, (d) an invalid file (bad TOML, an unknown key, a
    negative size); the reload is triggered alternately with SIGHUP and `swapfairctl reload`,
    and its effect checked (C in status and serving; C gone; a refused file changing nothing).
Then the misbehaving clients stop and, after a settle, the daemon's descriptors and threads must
be back to their start-up figures (+2) and its RSS within 8 MiB of it.

Prints the figures, PASS/FAIL per check and a last line `soak: N passed, M failed`; exits 1 when
a check failed.
"""

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import Failure  # noqa: E402

BASE_VMS = ["A", "B"]
FD_SLACK = 2
THREAD_SLACK = 2
RSS_SLACK_KIB = 8 * 1024


class Tally:
    """Counters shared by the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.problems = collections.defaultdict(list)

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def problem(self, kind, message):
        with self.lock:
            self.problems[kind].append(message)


# --- the verified client ------------------------------------------------------------------------

def fio_io(d, stop, deadline, tally):
    """fio runs of up to 10 s each until the deadline: one long run would report nothing until
    it ends, and a failed run would lose the rest of the soak's I/O."""
    while not stop.is_set():
        seconds = min(10, int(deadline - time.monotonic()))
        if seconds < 2:
            return
        cmd = ["fio", "--name=soak", "--ioengine=nbd", f"--uri={d.uri('A')}", "--rw=randrw",
               "--verify=crc32c", "--bs=4k", "--iodepth=16", "--size=64M", "--time_based",
               f"--runtime={seconds}", "--output-format=json"]
        try:
            # In the scratch directory: fio leaves its verify state file where it runs.
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, cwd=d.work)
        except subprocess.TimeoutExpired:
            tally.problem("io", f"fio did not finish {seconds + 60} s into a {seconds} s run")
            continue
        tally.add("fio runs")
        verify = len(re.findall(r"verify failed", r.stderr))
        try:
            job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
            ios = job["read"]["total_ios"] + job["write"]["total_ios"]
            error = job["error"]
        except (ValueError, KeyError, IndexError):
            ios, error = 0, None
        tally.add("verified I/Os", ios)
        if error == 84 and verify == 0:  # EILSEQ: fio's verify failure
            verify = 1
        if verify:
            tally.add("verify errors", verify)
            tally.problem("io", f"fio: {verify} verify failure(s): {r.stderr.strip()[-300:]}")
        elif r.returncode != 0 or error:
            tally.add("I/O failures")
            tally.problem("io", f"fio exited {r.returncode} (error {error}): {(r.stderr or r.stdout).strip()[-300:]}")
            time.sleep(0.5)


def qemu_io(d, stop, deadline, tally):
    """The fallback client: write a pattern, read it back verified, at varying offsets."""
    while not stop.is_set() and time.monotonic() < deadline:
        offset = random.randrange(0, 64 << 20, 4096)
        length = random.choice([4096, 65536, 262144])
        offset = min(offset, (64 << 20) - length)
        pattern = random.randrange(1, 256)
        try:
            r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} {offset} {length}",
                                "-c", f"read -P {pattern:#x} {offset} {length}", d.uri("A")],
                               capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            tally.problem("io", "qemu-io did not finish within 30 s")
            continue
        out = r.stdout + r.stderr
        if "verification failed" in out:
            tally.add("verify errors")
            tally.problem("io", f"qemu-io: {out.strip()[-300:]}")
        elif r.returncode != 0:
            tally.add("I/O failures")
            tally.problem("io", f"qemu-io exited {r.returncode}: {out.strip()[-300:]}")
            time.sleep(0.5)
        else:
            tally.add("verified I/Os", 2)


# --- the misbehaving clients --------------------------------------------------------------------

def nbd_hostile(d, stop, tally, rng):
    """Random NBD misbehaviour on A, B or C (C exists only part of the time: clients racing its
    arrival and removal are part of the test)."""
    patterns = [
        ("close at connect", lambda p, n: h.drop_at_connect(p)),
        ("close in greeting", lambda p, n: h.drop_in_greeting(p)),
        ("close after greeting", lambda p, n: h.drop_after_greeting(p)),
        ("close after flags", lambda p, n: h.drop_after_flags(p)),
        ("close mid option", lambda p, n: h.drop_mid_option_header(p)),
        ("close before LIST reply", lambda p, n: h.drop_before_option_reply(p, n, "list")),
        ("close before GO reply", lambda p, n: h.drop_before_option_reply(p, n, "go")),
        ("33 options then close", lambda p, n: h.drop_before_option_reply(p, n, "many")),
        ("close after GO", lambda p, n: h.drop_after_go(p, n)),
        ("close with reads in flight", lambda p, n: h.drop_with_reads_in_flight(p, n)),
        ("close amid read replies", lambda p, n: h.drop_with_reads_in_flight(p, n, after_first_reply=True)),
        ("close mid request", lambda p, n: h.drop_mid_request_header(p, n)),
        ("write without payload", lambda p, n: h.drop_write_without_payload(p, n)),
        ("stalled write 2 s", lambda p, n: h.drop_write_without_payload(p, n, hold=2.0)),
        ("garbage after handshake", lambda p, n: h.garbage_after_handshake(p, n)),
        ("garbage instead of handshake", lambda p, n: h.garbage_instead_of_handshake(p)),
        ("1 MB burst", lambda p, n: h.burst(p, n if rng.random() < 0.5 else None)),
    ]
    while not stop.is_set():
        vm = rng.choice(["A", "A", "B", "B", "C"])
        label, fn = rng.choice(patterns)
        h.quietly(fn, d.sock(vm), vm)
        tally.add("nbd misbehaviours")
        time.sleep(rng.uniform(0.0, 0.05))


def ctl_hostile(d, stop, tally, rng):
    patterns = [
        lambda: h.ctl_drop_at_connect(d.ctl),
        lambda: h.ctl_drop_without_reading(d.ctl),
        lambda: h.ctl_garbage(d.ctl),
        lambda: h.ctl_huge_line(d.ctl),
        lambda: h.ctl_slow(d.ctl, b"status\n", gap=0.05),
        lambda: h.hold_silent([d.ctl] * 3, 1.5),
    ]
    while not stop.is_set():
        h.quietly(rng.choice(patterns))
        tally.add("control misbehaviours")
        time.sleep(rng.uniform(0.0, 0.1))


def churn(d, stop, tally, rng):
    """Bursts of connections opened and dropped, and a few held for a second."""
    while not stop.is_set():
        for i in range(50):
            h.quietly(h.drop_at_connect, d.sock(BASE_VMS[i % 2]))
        held = [h.quietly(h.connect, d.sock(BASE_VMS[i % 2])) for i in range(20)]
        time.sleep(1)
        for s in held:
            if s is not None:
                s.close()
        tally.add("churned connections", 70)
        time.sleep(rng.uniform(0.1, 0.5))


def status_watch(d, stop, tally):
    """A well-behaved operator: `swapfairctl status` once a second, timed."""
    worst = 0.0
    while not stop.is_set():
        code, out, err, took = d.ctl_run("status", "--json", timeout=15)
        if d.alive():
            if code != 0:
                tally.add("status failures")
                tally.problem("status", f"swapfairctl status failed ({code}): {err.strip()[:200]}")
            worst = max(worst, took)
            tally.add("status calls")
        with tally.lock:
            tally.counts["slowest status ms"] = max(tally.counts["slowest status ms"], int(worst * 1000))
        time.sleep(1)


# --- reloads ----------------------------------------------------------------------------------

INVALID = [
    ("bad TOML", lambda d, w: h.config_text(d.work, BASE_VMS, weight=w) + "[[vm]\nname = \n"),
    ("unknown key", lambda d, w: h.config_text(d.work, BASE_VMS, weight=w).replace(
        'size = "64M"', 'size = "64M", colour = "red"', 1)),
    ("negative size", lambda d, w: h.config_text(d.work, BASE_VMS + ["C"], weight=w).replace('size = "64M"', 'size = "-64M"')),
]


def reload_once(d, step, weight, tally):
    """One reload: rewrites the file for step's kind, triggers it, checks the effect. Returns the
    swap weight now in force."""
    kind = "abcd"[step % 4]
    # Every kind is triggered both ways over two rounds.
    trigger = ["hup", "ctl"][(step + step // 4) % 2]
    new_weight = weight
    if kind == "a":
        text, what = h.config_text(d.work, BASE_VMS + ["C"], weight=weight), "add C"
    elif kind == "b":
        text, what = h.config_text(d.work, BASE_VMS, weight=weight), "remove C"
    elif kind == "c":
        new_weight = 300 if weight != 300 else 150
        text, what = h.config_text(d.work, BASE_VMS, weight=new_weight), f"swap weights {new_weight}"
    else:
        name, make = INVALID[(step // 4) % len(INVALID)]
        text, what = make(d, weight), f"invalid ({name})"
    valid = kind != "d"
    d.write_config(text)
    label = f"reload {step + 1} ({what}, {'SIGHUP' if trigger == 'hup' else 'swapfairctl'})"
    offset = d.log_size()
    if trigger == "hup":
        d.proc.send_signal(signal.SIGHUP)
        tally.add("reloads by SIGHUP")
        logged = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and d.alive() and not logged:
            logged = "reload" in d.log_since(offset).lower()
            time.sleep(0.1)
        if not d.alive():
            tally.problem("reload", f"{label}: the daemon died: {h.signal_name(d.proc.returncode)}")
            return weight
        if not logged:
            tally.problem("reload", f"{label}: no log line containing 'reload' within 5 s")
            return weight
    else:
        tally.add("reloads by swapfairctl")
        try:
            code, out = d.reload_via_ctl(timeout=20)
        except Failure as e:
            tally.problem("reload", f"{label}: {e}")
            return weight
        if code != (0 if valid else 1):
            tally.problem("reload", f"{label}: swapfairctl reload exited {code}, expected {0 if valid else 1}: {out[:200]}")
            return weight
    # swapfairctl's exit status said applied or refused; a SIGHUP's outcome shows only in its
    # effects, checked here (the status report has no swap weights, so (c)'s is not visible).
    tally.add("reloads applied" if valid else "reloads refused")
    try:
        if kind == "a":
            vm = wait_until(5, lambda: d.status_vms().get("C"))
            if not vm or not vm.get("swap_device"):
                tally.problem("reload", f"{label}: C not in status with a swap device 5 s after the reload")
            else:
                d.good_client("C")
        elif kind == "b":
            if not wait_until(10, lambda: "C" not in d.status_vms()):
                tally.problem("reload", f"{label}: C still in status 10 s after it was removed")
        elif kind == "d" and "C" in d.status_vms():
            # C was removed two reloads ago; only a refused file that was applied in part
            # (the negative-size one lists C) can bring it back.
            tally.problem("reload", f"{label}: C appeared from a refused file")
    except Failure as e:
        tally.problem("reload", f"{label}: {e}")
    return new_weight if valid else weight


def wait_until(seconds, predicate):
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = predicate()
        except Failure:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


# --- the run ----------------------------------------------------------------------------------

def figures(d):
    return d.fd_count(), d.thread_count(), d.rss_kib()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=120, help="how long the chaos lasts (default 120)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (config, log, volumes)")
    p.add_argument("--seed", type=int, default=None, help="seed of the misbehaviours' choices")
    p.add_argument("--bin-dir", default=os.environ.get("SWAPFAIR_BIN_DIR", h.DEFAULT_BIN_DIR),
                   help="where swapfaird and swapfairctl are (default .build/debug)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("soak: run as root (the control socket is root's)")
    h.check_tools("qemu-io")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)

    scratch = tempfile.mkdtemp(prefix="swapfair-soak-bin.", dir="/var/tmp")
    binaries = h.Binaries(args.bin_dir, scratch)
    use_fio = h.fio_has_nbd_engine()
    h.log(f"soak: {binaries.describe()}")
    h.log(f"soak: {args.seconds} s, seed {seed}; verified I/O by "
          + ("fio (nbd engine, randrw, crc32c verify, 4k, iodepth 16)" if use_fio
             else "qemu-io write/read -P patterns (this fio has no nbd engine)"))
    d = h.Daemon(binaries, BASE_VMS, "soak")
    tally = Tally()
    results = []
    stop = threading.Event()
    threads = []
    restarted = False
    try:
        d.start()
        # The baseline is taken once start-up has settled, each export has served one real client
        # and a VM has been added (and served) and removed by reloads, so that what a first use
        # sets up for good (the runtime's type metadata, the encoders, the allocator's arenas) is
        # not counted as a leak.
        d.good_client("A")
        d.good_client("B")
        d.write_config(h.config_text(d.work, BASE_VMS + ["C"]))
        d.ctl_run("reload")
        if wait_until(5, lambda: d.status_vms().get("C")):
            d.good_client("C")
        d.write_config(h.config_text(d.work, BASE_VMS))
        d.ctl_run("reload")
        d.ctl_run("status", "--json")
        time.sleep(3)
        base = figures(d)
        base_maps = d.mappings_kib()
        h.log(f"soak: daemon pid {d.pid}; baseline fds {base[0]}, threads {base[1]}, RSS {base[2] / 1024:.1f} MiB")

        started = time.monotonic()
        deadline = started + args.seconds
        io = fio_io if use_fio else qemu_io
        threads.append(threading.Thread(target=io, args=(d, stop, deadline, tally), name="io"))
        for i in range(3):
            threads.append(threading.Thread(target=nbd_hostile, args=(d, stop, tally, random.Random(seed + i)),
                                            name=f"nbd-hostile-{i}"))
        threads.append(threading.Thread(target=ctl_hostile, args=(d, stop, tally, random.Random(seed + 10)),
                                        name="ctl-hostile"))
        threads.append(threading.Thread(target=churn, args=(d, stop, tally, random.Random(seed + 20)), name="churn"))
        threads.append(threading.Thread(target=status_watch, args=(d, stop, tally), name="status"))
        for t in threads:
            t.daemon = True
            t.start()

        step, weight = 0, None
        next_reload = time.monotonic() + random.uniform(3, 5)
        last_report = time.monotonic()
        peak = base
        while time.monotonic() < deadline:
            time.sleep(0.25)
            if d.alive():
                try:
                    peak = tuple(max(a, b) for a, b in zip(peak, figures(d)))
                except OSError:
                    pass  # it died between the check and the read; seen on the next round
            if not d.alive():
                death = h.signal_name(d.proc.returncode)
                tally.problem("death", f"{time.monotonic() - started:.0f} s in: the daemon {death}")
                h.log(f"soak: the daemon {death} {time.monotonic() - started:.0f} s in; restarting it")
                h.log(d.log_tail(10))
                try:
                    d.write_config(h.config_text(d.work, BASE_VMS, weight=weight))
                    d.ensure_running()
                    restarted = True
                except Failure as e:
                    tally.problem("death", f"could not restart the daemon: {e}")
                    break
            if time.monotonic() >= next_reload:
                weight = reload_once(d, step, weight, tally)
                step += 1
                next_reload = time.monotonic() + random.uniform(3, 5)
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                c = tally.counts
                h.log(f"soak: {last_report - started:.0f} s: {c['verified I/Os']} verified I/Os, "
                      f"{c['reloads applied']} reloads applied, {c['reloads refused']} refused, "
                      f"{sum(len(v) for v in tally.problems.values())} problems; fds {d.fd_count() if d.alive() else '-'}")
        stop.set()
        for t in threads:
            t.join(timeout=90 if t.name == "io" else 30)
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            tally.problem("harness", f"threads still running after the soak: {', '.join(stuck)}")
        elapsed = time.monotonic() - started

        # Back to the start-up configuration (C gone, default weights), then the settle.
        d.write_config(h.config_text(d.work, BASE_VMS))
        if d.alive():
            h.quietly(h.ctl_request, d.ctl, b"reload\n", timeout=20)
        settle_deadline = time.monotonic() + 20
        end = figures(d) if d.alive() else (0, 0, 0)
        while d.alive() and time.monotonic() < settle_deadline:
            end = figures(d)
            if end[0] <= base[0] + FD_SLACK and end[1] <= base[1] + THREAD_SLACK:
                break
            time.sleep(0.5)
        time.sleep(2)
        grown = []
        if d.alive():
            end = figures(d)
            status = h.quietly(d.status) or {}
            # Where resident memory grew, mapping by mapping: where to look if RSS did not come back.
            end_maps = d.mappings_kib()
            grown = sorted(((end_maps.get(k, 0) - base_maps.get(k, 0), k) for k in set(end_maps) | set(base_maps)),
                           reverse=True)[:4]
        else:
            status = {}
        c = tally.counts

        h.log("soak: figures")
        h.log(f"  chaos             {elapsed:.0f} s")
        h.log(f"  fds               start {base[0]}, peak {peak[0]}, end {end[0]} (allowed {base[0] + FD_SLACK})")
        h.log(f"  threads           start {base[1]}, peak {peak[1]}, end {end[1]} (allowed {base[1] + THREAD_SLACK})")
        h.log(f"  RSS               start {base[2] / 1024:.1f} MiB, peak {peak[2] / 1024:.1f} MiB, "
              f"end {end[2] / 1024:.1f} MiB (allowed {(base[2] + RSS_SLACK_KIB) / 1024:.1f} MiB); grew most: "
              + ", ".join(f"{k} {kib:+d} KiB" for kib, k in grown))
        h.log(f"  reloads           {c['reloads applied']} applied, {c['reloads refused']} refused as expected "
              f"({c['reloads by SIGHUP']} by SIGHUP, {c['reloads by swapfairctl']} by swapfairctl); "
              f"daemon.reloads = {status.get('daemon', {}).get('reloads', 'absent')}")
        h.log(f"  verified I/O      {c['verified I/Os']} I/Os" + (f" in {c['fio runs']} fio runs" if use_fio else "")
              + f", {c['verify errors']} verify errors, {c['I/O failures']} failed runs")
        h.log(f"  misbehaviours     {c['nbd misbehaviours']} NBD, {c['control misbehaviours']} control, "
              f"{c['churned connections']} churned connections")
        h.log(f"  operator status   {c['status calls']} calls, slowest {c['slowest status ms']} ms, "
              f"{c['status failures']} failed")
        if restarted:
            h.log("  (the daemon was restarted during the soak: the end figures belong to its last instance)")

        def check(name, ok, detail=""):
            results.append(ok)
            h.log(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))

        def problems(kind, limit=5):
            found = tally.problems.get(kind, [])
            shown = "; ".join(found[:limit])
            return shown + (f"; ... {len(found) - limit} more" if len(found) > limit else "")

        check("the daemon never died", not tally.problems.get("death") and d.alive(), problems("death"))
        check("verified I/O ran without a verify error or a failed run",
              c["verified I/Os"] > 0 and c["verify errors"] == 0 and c["I/O failures"] == 0 and not tally.problems.get("io"),
              f"{c['verified I/Os']} I/Os" + (f"; {problems('io')}" if tally.problems.get("io") else ""))
        # Every fourth reload is of an invalid file: a soak too short for one proves less, not wrong.
        attempts = c["reloads by SIGHUP"] + c["reloads by swapfairctl"]
        check("every reload had the expected outcome and effect",
              not tally.problems.get("reload") and c["reloads applied"] > 0 and (c["reloads refused"] > 0 or attempts < 4),
              problems("reload") or f"{c['reloads applied']} applied, {c['reloads refused']} refused")
        check("the operator's swapfairctl status always answered", c["status calls"] > 0 and not tally.problems.get("status"),
              problems("status") or f"slowest {c['slowest status ms']} ms")
        check("descriptors back to baseline", d.alive() and end[0] <= base[0] + FD_SLACK, f"{base[0]} -> {end[0]}")
        check("threads back to baseline", d.alive() and end[1] <= base[1] + THREAD_SLACK, f"{base[1]} -> {end[1]}")
        check("RSS within baseline + 8 MiB", d.alive() and end[2] <= base[2] + RSS_SLACK_KIB,
              f"{base[2] / 1024:.1f} -> {end[2] / 1024:.1f} MiB")
        if tally.problems.get("harness"):
            check("the soak's own threads stopped", False, problems("harness"))
        if not all(results):
            h.log("soak: daemon log (last lines):")
            h.log(d.log_tail(30))
    except Failure as e:
        results.append(False)
        h.log(f"FAIL soak could not run: {e}")
    finally:
        stop.set()
        d.stop(keep=args.keep)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.keep:
        h.log(f"soak: kept {d.work}")
    passed = sum(1 for r in results if r)
    print(f"soak: {passed} passed, {len(results) - passed} failed", flush=True)
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
