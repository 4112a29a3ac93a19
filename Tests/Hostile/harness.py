"""Shared machinery of the hostile-peer suite (hostile.py) and the chaos soak (soak.py).

It starts `swapfaird --swap-only` as a plain child process, so that the daemon runs with the
signal dispositions a daemon started by hand or by a shell script gets (subprocess restores
SIGPIPE's default action in the child; systemd would have set it to ignored), and gives the
cases what they need to misbehave at the daemon and to judge it afterwards: raw NBD and
control-socket connections, a well-behaved NBD client (qemu-io), `swapfairctl`, and the
daemon's file descriptor, thread and memory figures from /proc.

Python's standard library only: the suite must run wherever the daemon's own tests run.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN_DIR = os.path.join(REPO, ".build", "debug")

# --- NBD wire constants (NetworkBlockDevice/nbd doc/proto.md); all numbers are big-endian. ---
NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7
REP_ACK = 1
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
GREETING_SIZE = 18


class Failure(Exception):
    """A case's verdict: the daemon did not behave. The message says how."""


def log(msg):
    print(msg, flush=True)


# --- binaries ---------------------------------------------------------------------------------

def stable_copy(src, dst, wait_seconds):
    """Copies a binary that may be relinked at any moment: waits for it to exist and to have been
    left alone for a couple of seconds, and retries when it changed while being copied."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        try:
            before = os.stat(src)
            if time.time() - before.st_mtime >= 2:
                shutil.copy2(src, dst + ".part")
                after = os.stat(src)
                if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size):
                    os.replace(dst + ".part", dst)
                    return after.st_mtime
        except FileNotFoundError:
            if not announced:
                log(f"waiting for {src} to be built")
                announced = True
        if time.monotonic() > deadline:
            raise SystemExit(f"{src} did not appear (or kept changing) for {wait_seconds} s")
        time.sleep(1)


class Binaries:
    """Private copies of swapfaird and swapfairctl, taken once per run."""

    def __init__(self, bin_dir, into, wait_seconds=60):
        os.makedirs(into, exist_ok=True)
        self.daemon = os.path.join(into, "swapfaird")
        self.ctl = os.path.join(into, "swapfairctl")
        self.daemon_mtime = stable_copy(os.path.join(bin_dir, "swapfaird"), self.daemon, wait_seconds)
        self.ctl_mtime = stable_copy(os.path.join(bin_dir, "swapfairctl"), self.ctl, wait_seconds)
        self.source = bin_dir

    def describe(self):
        return (f"swapfaird from {self.source} (mtime {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.daemon_mtime))}), "
                f"swapfairctl (mtime {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.ctl_mtime))})")


def check_tools(*names):
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise SystemExit(f"missing {' '.join(missing)}: run Scripts/install-deps")


def fio_has_nbd_engine():
    if shutil.which("fio") is None:
        return False
    try:
        out = subprocess.run(["fio", "--enghelp"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s*nbd\s*$", out, re.M) is not None


# --- configuration ----------------------------------------------------------------------------

def vm_entry(name, size="64M", weight=None):
    fields = [f'size = "{size}"'] + ([f"weight = {weight}"] if weight is not None else [])
    return f'[[vm]]\nname = "{name}"\nswap_device = {{ {", ".join(fields)} }}\n'


def config_text(work, vms, weight=None, host_extra=""):
    """A --swap-only configuration: every VM in `vms` gets a 64M swap device of its own."""
    text = (f'[host]\nstate_dir = "{work}/state"\nnbd_dir = "{work}/nbd"\n' + host_extra
            + "".join(vm_entry(v, weight=weight) for v in vms))
    return text


def signal_name(returncode):
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# --- the daemon -------------------------------------------------------------------------------

class Daemon:
    """One swapfaird --swap-only in a scratch directory of its own under /var/tmp (a file system
    backed by the disk, as in production; /tmp may be a tmpfs, where O_DIRECT volumes fail)."""

    def __init__(self, binaries, vms, prefix, log_level="info"):
        self.bin = binaries
        self.work = tempfile.mkdtemp(prefix=f"swapfair-{prefix}.", dir="/var/tmp")
        self.config = os.path.join(self.work, "swapfair.toml")
        self.ctl = os.path.join(self.work, "ctl.sock")
        self.nbd_dir = os.path.join(self.work, "nbd")
        self.log_path = os.path.join(self.work, "daemon.log")
        self.log_level = log_level
        self.proc = None
        self.deaths = []  # how each earlier instance ended, for the report
        self.write_config(config_text(self.work, vms))
        self.vms = list(vms)

    def write_config(self, text):
        # Written whole and renamed, so a reload never reads half a file.
        tmp = self.config + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def sock(self, vm):
        return os.path.join(self.nbd_dir, f"{vm}.sock")

    def uri(self, vm):
        # qemu-io and libnbd (fio, nbdinfo) spell an NBD export on a Unix socket this way: the
        # path component is the export name, the socket is a query parameter.
        return f"nbd+unix:///{vm}?socket={self.sock(vm)}"

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=60):
        self.log_file = open(self.log_path, "ab")
        self.log_file.write(f"--- started at {time.strftime('%H:%M:%S')} ---\n".encode())
        self.log_file.flush()
        # SWAPFAIRD_WRAPPER: a command prefix for the daemon (e.g. `env LD_PRELOAD=...`); it must
        # exec the daemon, whose pid is the one watched.
        wrapper = os.environ.get("SWAPFAIRD_WRAPPER", "").split()
        self.proc = subprocess.Popen(
            wrapper + [self.bin.daemon, "--swap-only", "--config", self.config, "--socket", self.ctl,
             "--log-level", self.log_level],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            restore_signals=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"swapfaird did not start: {signal_name(self.proc.returncode)}\n{self.log_tail()}")
            if all(os.path.exists(self.sock(v)) for v in self.vms) and os.path.exists(self.ctl):
                try:
                    self.status()
                    return
                except Failure:
                    pass
            time.sleep(0.2)
        raise Failure(f"swapfaird was not serving after {timeout} s\n{self.log_tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self):
        """Restarts a daemon that died (the death was recorded by whoever noticed it), so that
        the cases after a failing one still test something."""
        if not self.alive():
            if self.proc is not None:
                self.deaths.append(signal_name(self.proc.returncode))
                self.log_file.close()
            self.start()

    def stop(self, keep=False):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.log_file.close()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=25):
        return "\n".join("    | " + l for l in self.log_text().splitlines()[-lines:])

    # -- /proc figures --

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def thread_count(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def mappings_kib(self):
        """Resident KiB by mapping (address range and name), from /proc/PID/smaps."""
        out, key = {}, None
        with open(f"/proc/{self.pid}/smaps") as f:
            for line in f:
                first = line.split(" ", 1)[0]
                if "-" in first and ":" not in first:
                    parts = line.split()
                    key = f"{parts[0]} {parts[5] if len(parts) > 5 else '[anon]'}"
                elif line.startswith("Rss:") and key:
                    out[key] = int(line.split()[1])
        return out

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    # -- swapfairctl --

    def ctl_run(self, *args, timeout=10, socket_path=None):
        """Runs swapfairctl; returns (exit status, stdout, stderr, seconds)."""
        started = time.monotonic()
        try:
            r = subprocess.run([self.bin.ctl, *args, "--socket", socket_path or self.ctl],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"swapfairctl {' '.join(args)} did not answer within {timeout} s", time.monotonic() - started
        return r.returncode, r.stdout, r.stderr, time.monotonic() - started

    def status(self, timeout=10):
        code, out, err, _ = self.ctl_run("status", "--json", timeout=timeout)
        if code != 0:
            raise Failure(f"swapfairctl status failed ({code}): {err.strip()[:300]}")
        try:
            return json.loads(out)
        except ValueError as e:
            raise Failure(f"swapfairctl status --json printed something that is not JSON ({e}): {out[:200]!r}")

    def status_vms(self):
        return {v.get("name"): v for v in self.status().get("vms", [])}

    def reload_via_ctl(self, timeout=20):
        """`swapfairctl reload`: (exit status, output). Explains a binary without the command."""
        code, out, err, _ = self.ctl_run("reload", timeout=timeout)
        text = (out + err).strip()
        if code is not None and code not in (0, 1, 2) and re.search(r"unexpected argument|unknown|usage", text, re.I):
            raise Failure(f"swapfairctl has no `reload` command (exit {code}): {text.splitlines()[0] if text else ''}")
        if code is None:
            raise Failure(f"swapfairctl reload did not finish within {timeout} s")
        return code, text

    # -- a well-behaved client --

    def good_client(self, vm, offset=None, pattern=None, timeout=20):
        """qemu-io writes 64 KiB of a pattern and reads it back verified. Returns seconds taken;
        raises Failure with qemu-io's words otherwise."""
        offset = random.randrange(0, 64 << 20, 64 << 10) if offset is None else offset
        pattern = random.randrange(1, 256) if pattern is None else pattern
        started = time.monotonic()
        try:
            r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} {offset} 64k",
                                "-c", f"read -P {pattern:#x} {offset} 64k", self.uri(vm)],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"qemu-io on {vm} did not finish within {timeout} s")
        took = time.monotonic() - started
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or "verification failed" in out or "error" in out.lower():
            raise Failure(f"qemu-io on {vm} failed (exit {r.returncode}): {out[-300:]}")
        return took

    def health(self):
        """The end of every case: the daemon is still the same process, every export still serves
        a real client, and the control socket still answers. Returns problems, empty if none."""
        if not self.alive():
            return [f"the daemon died: {signal_name(self.proc.returncode)}"]
        problems = []
        for vm in self.vms:
            try:
                self.good_client(vm)
            except Failure as e:
                problems.append(str(e))
        try:
            self.status()
        except Failure as e:
            problems.append(str(e))
        if not self.alive():
            problems.append(f"the daemon died: {signal_name(self.proc.returncode)}")
        return problems


# --- raw sockets --------------------------------------------------------------------------------

def connect(path, timeout=5.0):
    """A Unix-socket connection, waiting up to `timeout` for room in the listener's backlog.
    (With a timeout set, Python connects without blocking, and a full backlog then fails at once
    with EAGAIN where a blocking connect would have waited.)"""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
        except OSError:
            s.close()
            raise


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def quietly(fn, *args, **kwargs):
    """Runs one misbehaviour; the daemon hanging up on it, or refusing it, is its right."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ConnectionError, struct.error, ValueError):
        return None


def nbd_option(code, data=b""):
    return IHAVEOPT + struct.pack(">II", code, len(data)) + data


def go_data(name):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", 0)


def nbd_request(cmd, cookie, offset, length, flags=0):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def read_option_reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    if magic != OPT_REPLY_MAGIC:
        raise ConnectionError(f"bad option reply magic {magic:#x}")
    return opt, rtype, recv_exact(s, length)


def nbd_open(path, name, timeout=5.0):
    """A complete fixed-newstyle handshake with NBD_OPT_GO; returns the socket in transmission."""
    s = connect(path, timeout)
    try:
        greeting = recv_exact(s, GREETING_SIZE)
        if greeting[:16] != NBDMAGIC + IHAVEOPT:
            raise ConnectionError(f"not an NBD newstyle greeting: {greeting!r}")
        s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) + nbd_option(OPT_GO, go_data(name)))
        while True:
            _, rtype, payload = read_option_reply(s)
            if rtype == REP_ACK:
                return s
            if rtype & 0x80000000:
                raise ConnectionError(f"GO refused: {rtype:#x} {payload!r}")
    except BaseException:
        s.close()
        raise


def read_simple_reply(s, length):
    magic, error, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != SIMPLE_REPLY_MAGIC:
        raise ConnectionError(f"bad reply magic {magic:#x}")
    data = recv_exact(s, length) if error == 0 and length else b""
    return error, cookie, data


def read_to_end(s):
    """Everything the peer sends until it closes."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def ctl_request(path, request, timeout=5.0):
    """One control-socket exchange: returns the parsed JSON answer."""
    s = connect(path, timeout)
    try:
        s.sendall(request)
        out = read_to_end(s)
    finally:
        s.close()
    return json.loads(out)


# --- misbehaving peers, shared by the suite and the soak ------------------------------------------

def drop_at_connect(path):
    connect(path).close()


def drop_in_greeting(path):
    s = connect(path)
    recv_exact(s, 8)
    s.close()


def drop_after_greeting(path):
    s = connect(path)
    recv_exact(s, GREETING_SIZE)
    s.close()


def drop_after_flags(path):
    s = connect(path)
    recv_exact(s, GREETING_SIZE)
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    s.close()


def drop_mid_option_header(path):
    s = connect(path)
    recv_exact(s, GREETING_SIZE)
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) + nbd_option(OPT_LIST)[:10])
    s.close()


def drop_before_option_reply(path, name, kind):
    """Sends options and closes without reading their replies, so the daemon writes to a socket
    nobody holds any more. Several options at once make the daemon's last replies land after the
    close every time instead of only when the scheduler happens to allow it."""
    opts = {
        "list": nbd_option(OPT_LIST),
        "go": nbd_option(OPT_GO, go_data(name)),
        "info": nbd_option(OPT_INFO, go_data(name)),
        "abort": nbd_option(OPT_ABORT),
        "many": b"".join(nbd_option(OPT_LIST) for _ in range(32)) + nbd_option(OPT_GO, go_data(name)),
    }[kind]
    s = connect(path)
    if kind != "many":
        recv_exact(s, GREETING_SIZE)
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) + opts)
    s.close()


def drop_after_go(path, name):
    nbd_open(path, name).close()


def drop_with_reads_in_flight(path, name, count=64, length=64 << 10, after_first_reply=False):
    """Asks for 4 MiB of reads and leaves. Right away, the daemon may see the close before it
    replies; after the first reply bytes, most of the 4 MiB (more than a socket buffer holds) is
    still to be written to a peer that is gone."""
    s = nbd_open(path, name)
    s.sendall(b"".join(nbd_request(CMD_READ, i, (i * length) % (64 << 20), length) for i in range(count)))
    if after_first_reply:
        s.recv(1)
    s.close()


def drop_mid_request_header(path, name):
    s = nbd_open(path, name)
    s.sendall(nbd_request(CMD_READ, 1, 0, 4096)[:14])
    s.close()


def drop_write_without_payload(path, name, hold=0.0):
    s = nbd_open(path, name)
    s.sendall(nbd_request(CMD_WRITE, 1, 0, 64 << 10) + b"\0" * 100)
    if hold:
        time.sleep(hold)
    s.close()


def hung_up(s, seconds):
    """Whether the peer closes the connection within `seconds` (whatever it sends first)."""
    s.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not s.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True  # reset by the peer: hung up too
    return False


def garbage_after_handshake(path, name, size=4096, wait=0.0):
    """Random bytes where requests should be. With `wait`, returns whether the daemon hung up
    within that many seconds (it should: nothing can be served after a broken header)."""
    s = nbd_open(path, name)
    try:
        s.sendall(os.urandom(size))
        return hung_up(s, wait) if wait else None
    finally:
        s.close()


def garbage_instead_of_handshake(path, size=4096, wait=0.0):
    """Random bytes instead of the client flags and options (the greeting left unread). With
    `wait`, the connection stays open until the daemon hangs up, so that it has to parse them."""
    s = connect(path)
    try:
        s.sendall(os.urandom(size))
        return hung_up(s, wait) if wait else None
    finally:
        s.close()


def burst(path, name=None, size=1 << 20, wait=0.0):
    """A megabyte of random bytes, before or after the handshake. The daemon may hang up after
    the first bytes, which ends the send early: that counts as hanging up."""
    s = nbd_open(path, name) if name else connect(path)
    try:
        try:
            s.sendall(os.urandom(size))
        except OSError:
            return True
        return hung_up(s, wait) if wait else None
    finally:
        s.close()


def ctl_drop_at_connect(path):
    connect(path).close()


def ctl_drop_without_reading(path):
    s = connect(path)
    s.sendall(b"status\n")
    s.close()


def ctl_garbage(path):
    s = connect(path)
    s.sendall(os.urandom(300) + b"\n" + os.urandom(200))
    try:
        s.recv(65536)
    finally:
        s.close()


def ctl_huge_line(path, size=1 << 20, wait=5.0):
    """A megabyte with no newline. Returns whether the daemon answered or hung up within `wait`
    seconds of it (it cannot be a request: those are short lines)."""
    s = connect(path)
    try:
        try:
            s.sendall(b"s" * size)
        except OSError:
            return True  # hung up before the end of it
        return hung_up(s, wait)
    finally:
        s.close()


def ctl_slow(path, request=b"status\n", gap=0.05):
    """A request dribbled a byte at a time; returns the answer."""
    s = connect(path)
    try:
        for b in request:
            s.sendall(bytes([b]))
            time.sleep(gap)
        out = read_to_end(s)
    finally:
        s.close()
    return out


def hold_silent(paths, seconds):
    """Connects to each path and says nothing for `seconds`."""
    socks = [quietly(connect, p) for p in paths]
    time.sleep(seconds)
    for s in socks:
        if s is not None:
            s.close()


class Timed:
    """Runs fn in a thread with a deadline, so that one case stuck on a socket cannot stall the
    run: the thread is abandoned (its socket timeouts end it later) and the case fails."""

    def __init__(self, fn, seconds):
        self.result = None
        self.error = None
        self.done = threading.Event()

        def run():
            try:
                self.result = fn()
            except BaseException as e:  # noqa: BLE001 - reported as the case's verdict
                self.error = e
            finally:
                self.done.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.finished = self.done.wait(seconds)
