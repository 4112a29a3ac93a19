#!/usr/bin/env python3
"""Hostile peers against swapfaird: NBD clients and control-socket clients that hang up at every
point of their exchange, send garbage, stall, or open thousands of connections; signals; and
live reloads of the configuration. Each case ends by checking that the daemon is still the same
process, that a well-behaved NBD client (qemu-io) still writes and reads back its data on every
export, and that `swapfairctl status --json` still answers.

    Tests/Hostile/hostile.py [--only SUBSTRING] [--list] [--keep] [--bin-dir DIR]

Runs as root (the control socket is root's). Prints PASS/FAIL per case and a last line
`hostile: N passed, M failed`; exits 1 when a case failed.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import Failure  # noqa: E402

VMS = ["A", "B"]
CASES = []


def case(name, budget=60):
    """Registers a case. `budget` bounds its running time in seconds."""
    def register(fn):
        CASES.append((name, fn, budget))
        return fn
    return register


def repeat(d, times, fn, *args):
    """Runs a misbehaviour `times` times against each export in turn, stopping early once the
    daemon is dead (the verdict is then already known)."""
    for i in range(times):
        if not d.alive():
            return
        vm = VMS[i % len(VMS)]
        h.quietly(fn, *[d.sock(vm) if a == "SOCK" else vm if a == "NAME" else a for a in args])


# --- the NBD handshake, left at every stage ---------------------------------------------------

@case("nbd handshake: close right after connect")
def _(d):
    repeat(d, 40, h.drop_at_connect, "SOCK")


@case("nbd handshake: close after part of the greeting")
def _(d):
    repeat(d, 40, h.drop_in_greeting, "SOCK")


@case("nbd handshake: close after the greeting, before the client flags")
def _(d):
    repeat(d, 40, h.drop_after_greeting, "SOCK")


@case("nbd handshake: close after the client flags")
def _(d):
    repeat(d, 40, h.drop_after_flags, "SOCK")


@case("nbd handshake: close mid option header")
def _(d):
    repeat(d, 40, h.drop_mid_option_header, "SOCK")


# The daemon writes its option reply to a socket the client has already closed. With SIGPIPE at
# its default action (a daemon not started by systemd) a plain write() there ends the process.
# One option at a time the race is timing dependent, hence the repetitions; 33 options sent
# at once make the last replies land after the close every time.
@case("nbd handshake: close after NBD_OPT_LIST, before its reply (x50)")
def _(d):
    repeat(d, 50, h.drop_before_option_reply, "SOCK", "NAME", "list")


@case("nbd handshake: close after NBD_OPT_GO, before its reply (x50)")
def _(d):
    repeat(d, 50, h.drop_before_option_reply, "SOCK", "NAME", "go")


@case("nbd handshake: close after NBD_OPT_INFO / NBD_OPT_ABORT, before the reply")
def _(d):
    repeat(d, 25, h.drop_before_option_reply, "SOCK", "NAME", "info")
    repeat(d, 25, h.drop_before_option_reply, "SOCK", "NAME", "abort")


@case("nbd handshake: 33 options sent at once, then close (x30)")
def _(d):
    repeat(d, 30, h.drop_before_option_reply, "SOCK", "NAME", "many")


@case("nbd handshake: close right after GO completes")
def _(d):
    repeat(d, 40, h.drop_after_go, "SOCK", "NAME")


# --- the transmission phase -------------------------------------------------------------------

@case("nbd transmission: close with 64 reads of 64 KiB in flight (x20)")
def _(d):
    repeat(d, 10, h.drop_with_reads_in_flight, "SOCK", "NAME")
    repeat(d, 10, lambda p, n: h.drop_with_reads_in_flight(p, n, after_first_reply=True), "SOCK", "NAME")


@case("nbd transmission: close mid request header")
def _(d):
    repeat(d, 40, h.drop_mid_request_header, "SOCK", "NAME")


@case("nbd transmission: write header whose payload never comes, then close")
def _(d):
    repeat(d, 20, h.drop_write_without_payload, "SOCK", "NAME")


@case("nbd transmission: a stalled writer does not delay a good client on the same export")
def _(d):
    # Two clients stop in the middle of a write's payload, on the export the good client uses
    # and on the other; the good client's round trips must stay quick while they sit there.
    stall = 5.0
    stalled = []
    for vm in VMS:
        s = h.nbd_open(d.sock(vm), vm)
        s.sendall(h.nbd_request(h.CMD_WRITE, 7, 0, 1 << 20) + b"\x5a" * 1000)
        stalled.append(s)
    try:
        worst = 0.0
        end = time.monotonic() + stall
        rounds = 0
        while time.monotonic() < end:
            worst = max(worst, d.good_client("A"))
            rounds += 1
        if worst > 1.0:
            raise Failure(f"the good client took {worst:.2f} s while a writer was stalled (limit 1 s)")
        return f"{rounds} good round trips during a {stall:.0f} s stall, slowest {worst * 1000:.0f} ms"
    finally:
        for s in stalled:
            s.close()


def dropped_every_time(d, attempts, fn, label):
    """Runs a protocol-breaking client `attempts` times; the daemon must hang up on each within
    5 s rather than keep a connection (two threads and a descriptor) for a peer it cannot serve."""
    kept = 0
    for i in range(attempts):
        if not d.alive():
            return
        vm = VMS[i % len(VMS)]
        try:
            if fn(d.sock(vm), vm) is False:
                kept += 1
        except (OSError, ConnectionError):
            pass
        if kept >= 3:  # the verdict is known; the rest would only add 5 s each
            raise Failure(f"{label}: the daemon kept {kept} of the first {i + 1} connections open for 5 s")
    if kept:
        raise Failure(f"{label}: the daemon kept {kept} of {attempts} connections open for 5 s")


@case("nbd transmission: garbage after the handshake")
def _(d):
    dropped_every_time(d, 20, lambda p, n: h.garbage_after_handshake(p, n, wait=5), "garbage after GO")


@case("nbd handshake: garbage instead of the handshake")
def _(d):
    dropped_every_time(d, 20, lambda p, n: h.garbage_instead_of_handshake(p, wait=5), "random handshake")

    # Client flags the daemon does not know, and a bad option magic, each in a well-formed frame.
    def bad_flags(path, _):
        s = h.connect(path)
        h.recv_exact(s, h.GREETING_SIZE)
        try:
            s.sendall(b"\xff\xff\xff\xff" + h.nbd_option(h.OPT_LIST))
            return h.hung_up(s, 5)
        finally:
            s.close()

    def bad_magic(path, _):
        s = h.connect(path)
        h.recv_exact(s, h.GREETING_SIZE)
        try:
            s.sendall(b"\0\0\0\3" + b"NOTMAGIC" + b"\0" * 8)
            return h.hung_up(s, 5)
        finally:
            s.close()
    dropped_every_time(d, 2, bad_flags, "unknown client flags")
    dropped_every_time(d, 2, bad_magic, "bad option magic")


@case("nbd: a 1 MB burst of random bytes, before and after the handshake")
def _(d):
    dropped_every_time(d, 4, lambda p, n: h.burst(p, None, wait=5), "1 MB instead of the handshake")
    dropped_every_time(d, 4, lambda p, n: h.burst(p, n, wait=5), "1 MB after GO")


# --- many connections -------------------------------------------------------------------------

def settle_fds(d, target, seconds):
    """Waits for the daemon's descriptor count to fall to `target`; returns the last count."""
    deadline = time.monotonic() + seconds
    count = d.fd_count()
    while count > target and time.monotonic() < deadline:
        time.sleep(0.25)
        count = d.fd_count()
    return count


# Connections one export serves at once (ExportServer.maxConnections): past it, more are closed.
MAX_CONNECTIONS = 64


@case("nbd: 3000 connections opened and dropped, then the bound held on each export and more refused; descriptors come back",
      budget=150)
def _(d):
    time.sleep(1)
    fds0, threads0, rss0 = d.fd_count(), d.thread_count(), d.rss_kib()
    started = time.monotonic()
    refused = 0
    for i in range(3000):
        if not d.alive():
            return
        try:
            h.connect(d.sock(VMS[i % 2])).close()
        except OSError:
            refused += 1
    churn = time.monotonic() - started
    held = []
    for i in range(2 * MAX_CONNECTIONS):
        try:
            s = h.connect(d.sock(VMS[i % 2]))
            h.recv_exact(s, h.GREETING_SIZE)  # accepted and served, not just queued
            held.append(s)
        except (OSError, ConnectionError):
            refused += 1
    # One more on each export: closed at once, with no greeting, rather than left waiting.
    extra_closed = 0
    for vm in VMS:
        try:
            s = h.connect(d.sock(vm))
            s.settimeout(5)
            if s.recv(1) == b"":
                extra_closed += 1
            s.close()
        except (OSError, ConnectionError):
            extra_closed += 1
    time.sleep(1)
    peak = (d.fd_count(), d.thread_count(), d.rss_kib())
    for s in held:
        s.close()
    fds1 = settle_fds(d, fds0 + 3, 15)
    time.sleep(1)
    fds1, threads1, rss1 = d.fd_count(), d.thread_count(), d.rss_kib()
    info = (f"3000 connect+close in {churn:.1f} s, {len(held)} held, {extra_closed} beyond the bound closed; "
            f"fds {fds0} -> peak {peak[0]} -> {fds1}; threads {threads0} -> {peak[1]} -> {threads1}; "
            f"RSS {rss0 // 1024} -> {peak[2] // 1024} -> {rss1 // 1024} MiB")
    if refused:
        raise Failure(f"{refused} connections refused or not served within the bound; {info}")
    if extra_closed != len(VMS):
        raise Failure(f"a connection beyond the bound was not closed; {info}")
    if fds1 > fds0 + 3:
        raise Failure(f"descriptors did not come back within 15 s: {info}")
    return info


# --- the control socket -----------------------------------------------------------------------

@case("control: connect and close at once (x50)")
def _(d):
    for _ in range(50):
        h.quietly(h.ctl_drop_at_connect, d.ctl)


@case("control: status request, close without reading the answer (x50)")
def _(d):
    for _ in range(50):
        if not d.alive():
            return
        h.quietly(h.ctl_drop_without_reading, d.ctl)


@case("control: 10 silent clients held open do not delay swapfairctl status")
def _(d):
    silent = [h.connect(d.ctl) for _ in range(10)]
    opened = time.monotonic()
    try:
        time.sleep(0.2)
        code, out, err, took = d.ctl_run("status", "--json", timeout=30)
        if code != 0:
            raise Failure(f"swapfairctl status failed with 10 silent clients open ({code}): {err.strip()[:200]}")
        json.loads(out)
        if took > 1.0:
            raise Failure(f"swapfairctl status took {took:.2f} s with 10 silent clients open (limit 1 s)")
        # Nor may they stay forever: each holds a descriptor, and a few hundred would exhaust them.
        kept = [s for s in silent if not h.hung_up(s, max(0.1, 10 - (time.monotonic() - opened)))]
        if kept:
            raise Failure(f"{len(kept)} of 10 silent clients still connected 10 s after they connected")
        return f"answered in {took * 1000:.0f} ms; silent clients dropped {time.monotonic() - opened:.1f} s after connecting"
    finally:
        for s in silent:
            s.close()


@case("control: garbage requests")
def _(d):
    for _ in range(10):
        h.quietly(h.ctl_garbage, d.ctl)
    # An unknown request must be answered, in JSON, not dropped silently.
    try:
        answer = h.ctl_request(d.ctl, b"no-such-request\n")
    except (OSError, ValueError) as e:
        raise Failure(f"an unknown request got no JSON answer: {e}")
    if "error" not in answer:
        raise Failure(f"an unknown request was not answered with an error: {str(answer)[:200]}")


@case("control: a 1 MB line without a newline")
def _(d):
    for _ in range(3):
        if h.quietly(h.ctl_huge_line, d.ctl) is False:
            raise Failure("the daemon neither answered nor hung up within 5 s of a 1 MB line")


@case("control: a request sent a byte at a time")
def _(d):
    out = h.ctl_slow(d.ctl, b"status\n", gap=0.05)
    try:
        answer = json.loads(out)
    except ValueError:
        raise Failure(f"no JSON answer to a slowly sent status request: {out[:200]!r}")
    if "vms" not in answer:
        raise Failure(f"a slowly sent status request got {str(answer)[:200]}")


def wait_until(seconds, predicate):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def restoring(fn):
    """Puts the configuration back (file and daemon) after a reload case, whatever happened."""
    def wrapped(d):
        try:
            return fn(d)
        finally:
            d.write_config(h.config_text(d.work, VMS))
            if d.alive():
                h.quietly(h.ctl_request, d.ctl, b"reload\n", timeout=20)
    return wrapped


# --- signals ----------------------------------------------------------------------------------

def survives(d, sig):
    d.proc.send_signal(sig)
    time.sleep(1.0)
    if not d.alive():
        raise Failure(f"{sig.name} ended the daemon: {h.signal_name(d.proc.returncode)}")


@case("signal: SIGPIPE")
def _(d):
    survives(d, signal.SIGPIPE)


@case("signal: SIGUSR1")
def _(d):
    survives(d, signal.SIGUSR1)


@case("signal: SIGUSR2")
def _(d):
    survives(d, signal.SIGUSR2)


def reload_count(d):
    """daemon.reloads from the status report, or None when the report has no such field."""
    return d.status().get("daemon", {}).get("reloads")


def wait_for_log(d, offset, pattern, seconds=5.0):
    """The log written after `offset`, once it contains `pattern` (case-insensitive)."""
    deadline = time.monotonic() + seconds
    while True:
        text = d.log_since(offset)
        if pattern.lower() in text.lower() or time.monotonic() > deadline:
            return text if pattern.lower() in text.lower() else None
        time.sleep(0.1)


@case("signal: SIGHUP reloads the configuration (A's swap weight changed)")
@restoring
def _(d):
    before = reload_count(d)
    offset = d.log_size()
    d.write_config(h.config_text(d.work, VMS, weight=300))
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    if not d.alive():
        raise Failure(f"SIGHUP ended the daemon: {h.signal_name(d.proc.returncode)}")
    text = wait_for_log(d, offset, "reload")
    if not d.alive():
        raise Failure(f"the daemon died after SIGHUP: {h.signal_name(d.proc.returncode)}")
    if text is None:
        raise Failure("no log line containing 'reload' within 5 s of SIGHUP")
    # The status report is published once a tick: the count may show a moment after the log.
    def grown():
        n = reload_count(d)
        return n if n is not None and (before is None or n > before) else None
    after = wait_until(5, grown)
    if after is None:
        after = reload_count(d)
        if after is None:
            raise Failure("the status report has no daemon.reloads")
        raise Failure(f"daemon.reloads did not grow ({before} -> {after}) within 5 s of a reload that changed weights")
    line = next(l for l in text.splitlines() if "reload" in l.lower())
    return f"daemon.reloads {before} -> {after}; log: {line.strip()[:140]}"


# --- live reload ------------------------------------------------------------------------------

def reload_json(d, timeout=20.0):
    """The daemon's answer to `reload`, checked for the documented shape."""
    try:
        answer = h.ctl_request(d.ctl, b"reload\n", timeout=timeout)
    except (OSError, ValueError) as e:
        raise Failure(f"no JSON answer to the reload request: {e}")
    if "error" in answer and "outcome" not in answer:
        raise Failure(f"the daemon does not take the reload request: {answer['error'][:200]}")
    missing = [k for k in ("outcome", "changes", "refused", "errors") if k not in answer]
    if missing:
        raise Failure(f"the reload answer lacks {', '.join(missing)}: {json.dumps(answer)[:300]}")
    if answer["outcome"] not in ("applied", "unchanged", "refused"):
        raise Failure(f"unknown reload outcome {answer['outcome']!r}")
    return answer


@case("reload: the request on an unchanged file answers 'unchanged'")
@restoring
def _(d):
    answer = reload_json(d)
    if answer["outcome"] != "unchanged":
        raise Failure(f"outcome {answer['outcome']!r} for an unchanged file: {json.dumps(answer)[:300]}")


@case("reload: swapfairctl reload adds VM C; it appears in status and serves NBD")
@restoring
def _(d):
    d.write_config(h.config_text(d.work, VMS + ["C"]))
    code, text = d.reload_via_ctl()
    if code != 0:
        raise Failure(f"swapfairctl reload exited {code} for a valid file adding C: {text[:300]}")
    vm = wait_until(5, lambda: d.status_vms().get("C"))
    if not vm:
        raise Failure("C is not in status 5 s after the reload")
    if not vm.get("swap_device"):
        raise Failure(f"C is in status without its swap device: {json.dumps(vm)[:300]}")
    d.good_client("C")
    return f"swapfairctl said: {text.splitlines()[0][:120] if text else '(nothing)'}"


@case("reload: removing C while a client holds it; served until it leaves, then gone")
@restoring
def _(d):
    d.write_config(h.config_text(d.work, VMS + ["C"]))
    code, text = d.reload_via_ctl()
    if code != 0 or not wait_until(5, lambda: os.path.exists(d.sock("C"))):
        raise Failure(f"could not add C first (swapfairctl reload exited {code}: {text[:200]})")
    held = h.nbd_open(d.sock("C"), "C")
    try:
        d.write_config(h.config_text(d.work, VMS))
        code, text = d.reload_via_ctl()
        if code != 0:
            raise Failure(f"swapfairctl reload exited {code} for a valid file removing C: {text[:300]}")
        # The client that holds C is not cut off by the reload.
        held.settimeout(5)
        held.sendall(h.nbd_request(h.CMD_READ, 42, 0, 4096))
        error, cookie, _ = h.read_simple_reply(held, 4096)
        if error or cookie != 42:
            raise Failure(f"the client holding C got error {error} (cookie {cookie}) after C was removed")
    except (OSError, ConnectionError) as e:
        raise Failure(f"the client holding C was cut off by the reload: {e}")
    finally:
        held.close()
    if not wait_until(10, lambda: "C" not in d.status_vms()):
        raise Failure("C is still in status 10 s after it was removed and its client left")

    def refused():
        try:
            h.nbd_open(d.sock("C"), "C", timeout=2).close()
            return False
        except (OSError, ConnectionError):
            return True
    if not wait_until(5, refused):
        raise Failure(f"{d.sock('C')} still serves NBD after C was removed")


INVALID = {
    "bad TOML": lambda d: h.config_text(d.work, VMS) + "[[vm]\nname = \n",
    "unknown key": lambda d: h.config_text(d.work, VMS).replace('size = "64M"', 'size = "64M", colour = "red"', 1),
    "negative size": lambda d: h.config_text(d.work, VMS + ["C"]).replace('size = "64M"', 'size = "-64M"'),
}


@case("reload: invalid files are refused whole (bad TOML, unknown key, negative size)")
@restoring
def _(d):
    notes = []
    for what, make in INVALID.items():
        d.write_config(make(d))
        answer = reload_json(d)
        if answer["outcome"] != "refused":
            raise Failure(f"{what}: outcome {answer['outcome']!r}, expected 'refused': {json.dumps(answer)[:300]}")
        if not answer["errors"]:
            raise Failure(f"{what}: refused without an error saying why")
        code, text = d.reload_via_ctl()
        if code != 1:
            raise Failure(f"{what}: swapfairctl reload exited {code}, expected 1: {text[:200]}")
        if "C" in d.status_vms():
            raise Failure(f"{what}: part of a refused file was applied (C appeared)")
        notes.append(f"{what}: {answer['errors'][0][:60]}")
    return "; ".join(notes)


@case("reload: a key that cannot change live (nbd_dir) is named in 'refused'")
@restoring
def _(d):
    d.write_config(h.config_text(d.work, VMS).replace(f'nbd_dir = "{d.work}/nbd"', f'nbd_dir = "{d.work}/nbd2"'))
    answer = reload_json(d)
    if not any("nbd_dir" in r for r in answer["refused"]):
        raise Failure(f"changing nbd_dir: 'refused' does not name it: {json.dumps(answer)[:300]}")
    code, text = d.reload_via_ctl()
    if answer["outcome"] == "refused" and code != 1:
        raise Failure(f"swapfairctl reload exited {code} for a refused file, expected 1")
    return f"outcome {answer['outcome']}: {answer['refused'][0][:100]}"


@case("reload: SIGHUP with an invalid file leaves the daemon running on the old one")
@restoring
def _(d):
    offset = d.log_size()
    d.write_config(INVALID["bad TOML"](d))
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    if not d.alive():
        raise Failure(f"SIGHUP ended the daemon: {h.signal_name(d.proc.returncode)}")
    if wait_for_log(d, offset, "reload") is None:
        raise Failure("no log line containing 'reload' within 5 s of SIGHUP")


@case("reload: swapfairctl reload exits 2 when the daemon cannot be reached")
def _(d):
    code, out, err, _ = d.ctl_run("reload", socket_path=os.path.join(d.work, "nobody.sock"))
    text = (out + err).strip()
    if code == 2:
        return None
    if code not in (0, 1):
        raise Failure(f"swapfairctl reload exited {code}, not a reload exit status: no `reload` command? "
                      f"{text.splitlines()[0] if text else ''}")
    raise Failure(f"swapfairctl reload exited {code} with no daemon, expected 2: {text[:200]}")


# --- metrics ----------------------------------------------------------------------------------

@case("metrics: swapfairctl metrics parses with prometheus_client's parser and agrees with status --json")
def _(d):
    from prometheus_client.parser import text_string_to_metric_families
    for vm in VMS:
        d.good_client(vm)
    time.sleep(1.5)  # a tick publishes both
    # Both come from the same tick's report unless a tick falls between the two requests: then again.
    for _ in range(5):
        status = d.status()
        code, text, err, _ = d.ctl_run("metrics")
        if code != 0:
            raise Failure(f"swapfairctl metrics failed ({code}): {err.strip()[:300]}")
        samples = {}
        for family in text_string_to_metric_families(text):
            for sm in family.samples:
                samples[(sm.name, tuple(sorted(sm.labels.items())))] = sm.value
        if samples.get(("swapfair_ticks_total", ())) == status["daemon"]["ticks"]:
            break
    else:
        raise Failure("the metrics and the status never came from the same tick")
    wrong = []
    for vm in status["vms"]:
        dev = vm.get("swap_device") or {}
        for direction, key in (("read", "read_bytes"), ("write", "write_bytes")):
            got = samples.get(("swapfair_swap_device_bytes_total", (("direction", direction), ("vm", vm["name"]))))
            if got != dev.get(key):
                wrong.append(f"{vm['name']} {direction} bytes: metrics {got}, status {dev.get(key)}")
        got = samples.get(("swapfair_vm_weight", (("vm", vm["name"]),)))
        if got != vm["weight"]:
            wrong.append(f"{vm['name']} weight: metrics {got}, status {vm['weight']}")
    if samples.get(("swapfair_build_info", (("version", status["daemon"]["version"]),))) != 1:
        wrong.append("no swapfair_build_info for the daemon's version")
    if wrong:
        raise Failure("; ".join(wrong))
    return f"{len(samples)} samples; {sum(1 for k in samples if k[0].startswith('swapfair_swap_device'))} of swap devices"


# --- the run ----------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", help="run the cases whose name contains this (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (config, log, volumes)")
    p.add_argument("--bin-dir", default=os.environ.get("SWAPFAIR_BIN_DIR", h.DEFAULT_BIN_DIR),
                   help="where swapfaird and swapfairctl are (default .build/debug)")
    args = p.parse_args()
    chosen = [c for c in CASES if not args.only or any(o in c[0] for o in args.only)]
    if args.list:
        for name, _, _ in chosen:
            print(name)
        return 0
    if os.geteuid() != 0:
        sys.exit("hostile: run as root (the control socket is root's)")
    h.check_tools("qemu-io")

    scratch = tempfile.mkdtemp(prefix="swapfair-hostile-bin.", dir="/var/tmp")
    binaries = h.Binaries(args.bin_dir, scratch)
    h.log(f"hostile: {binaries.describe()}")
    d = h.Daemon(binaries, VMS, "hostile")
    passed = failed = 0
    run_started = time.monotonic()
    try:
        d.start()
        h.log(f"hostile: daemon pid {d.pid}, work dir {d.work}")
        for name, fn, budget in chosen:
            problems = []
            try:
                d.ensure_running()
            except Failure as e:
                problems.append(f"could not (re)start the daemon: {e}")
            offset = d.log_size()
            started = time.monotonic()
            info = None
            if not problems:
                t = h.Timed(lambda fn=fn: fn(d), budget)
                if not t.finished:
                    problems.append(f"the case did not finish within {budget} s")
                elif isinstance(t.error, Failure):
                    problems.append(str(t.error))
                elif t.error is not None:
                    problems.append(f"{type(t.error).__name__}: {t.error}")
                else:
                    info = t.result
                problems += [p for p in d.health() if p not in problems]
            took = time.monotonic() - started
            if problems:
                failed += 1
                h.log(f"FAIL {name} ({took:.1f} s)")
                for p_ in problems:
                    h.log(f"     {p_}")
                tail = d.log_since(offset).splitlines()[-15:]
                if tail:
                    h.log("     daemon log during the case (last lines):")
                else:
                    # A daemon killed by a signal says nothing: show what led up to it.
                    tail = d.log_text().splitlines()[-10:]
                    h.log("     nothing logged during the case; the daemon log's last lines:")
                for line in tail:
                    h.log(f"     | {line}")
            else:
                passed += 1
                h.log(f"PASS {name} ({took:.1f} s)" + (f": {info}" if info else ""))
    finally:
        if d.alive() is False and d.proc is not None:
            d.deaths.append(h.signal_name(d.proc.returncode))
        d.stop(keep=args.keep)
        shutil.rmtree(scratch, ignore_errors=True)
    if d.deaths:
        h.log(f"hostile: the daemon died {len(d.deaths)} time(s): {', '.join(d.deaths)} (restarted for the next case)")
    if args.keep:
        h.log(f"hostile: kept {d.work}")
    h.log(f"hostile: run took {time.monotonic() - run_started:.0f} s")
    print(f"hostile: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
