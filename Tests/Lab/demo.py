#!/usr/bin/env python3
"""A live run of swapfaird on the embedded default configuration, against stand-ins.

Runs as root on a host with a cgroup v2 memory controller (the lab guest, or a real host). Three
stand-ins play the default's VMs, together asking for twice the memory budget: small-a works, then
idles, then works again; small-b works throughout; large wants more than the whole budget. A table
per VM is printed every few seconds; the time series (CSV) and a plot (SVG) are written to
DEMO_OUT (default ./demo-output).
"""
import csv
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import labkit
from labkit import BIN, MiB, StandIn, cg_kill_and_remove, log

OUT = os.environ.get("DEMO_OUT", os.path.join(os.getcwd(), "demo-output"))
SLICE = "swapfair.slice"
DURATION = int(os.environ.get("DEMO_SECONDS", "100"))


def status(sock):
    r = subprocess.run([os.path.join(BIN, "swapfairctl"), "status", "--json", "--socket", sock],
                       capture_output=True, text=True, timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def svg_plot(rows, names, budget, path):
    """Memory (solid), swap (dotted) and entitlement (dashed) of each VM over time."""
    W, H, L, R, T, B = 900, 420, 70, 150, 30, 45
    tmax = max(r["t"] for r in rows) or 1
    # A VM whose stand-in has finished has no figures in the last rows.
    ymax = max([budget] + [r.get(f"{n}_{k}") or 0 for r in rows for n in names for k in ("current", "swap", "entitled")]) * 1.05
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    def x(t): return L + (W - L - R) * t / tmax
    def y(v): return H - B - (H - T - B) * v / ymax

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{L}" y="18" font-size="14">swapfair demo: memory.current (solid), swap (dotted), '
             f'entitlement (dashed); budget {budget // MiB} MiB</text>',
             f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
             f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>']
    for i in range(6):
        v = ymax * i / 5
        parts.append(f'<text x="{L - 6}" y="{y(v) + 4}" text-anchor="end">{v / MiB:.0f}</text>')
        parts.append(f'<line x1="{L}" y1="{y(v)}" x2="{W - R}" y2="{y(v)}" stroke="#eee"/>')
    for i in range(6):
        t = tmax * i / 5
        parts.append(f'<text x="{x(t)}" y="{H - B + 16}" text-anchor="middle">{t:.0f}</text>')
    parts.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">seconds</text>')
    parts.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" '
                 f'text-anchor="middle">MiB</text>')
    for k, n in enumerate(names):
        c = colours[k % len(colours)]
        for key, dash in (("current", ""), ("swap", ' stroke-dasharray="2,3"'), ("entitled", ' stroke-dasharray="8,4"')):
            pts = " ".join(f"{x(r['t']):.1f},{y(r[f'{n}_{key}']):.1f}" for r in rows if r.get(f"{n}_{key}") is not None)
            if pts:
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.6"{dash}/>')
        parts.append(f'<text x="{W - R + 10}" y="{T + 20 + 18 * k}" fill="{c}">{n}</text>')
    parts.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(parts))


def main():
    os.makedirs(OUT, exist_ok=True)
    labkit.OUT = OUT
    sock = "/run/swapfair/demo.sock"
    logf = open(os.path.join(OUT, "swapfaird.log"), "w")
    # The embedded default: no --config, and no /etc/swapfair/swapfair.toml in the lab.
    d = subprocess.Popen([os.path.join(BIN, "swapfaird"), "--socket", sock], stdout=logf, stderr=logf)
    for _ in range(100):
        st = status(sock)
        if st:
            break
        if d.poll() is not None:
            log(open(os.path.join(OUT, "swapfaird.log")).read())
            sys.exit("swapfaird did not start")
        time.sleep(0.2)
    budget = st["daemon"]["memory_budget"]
    log(f"swapfaird is running on the embedded default: memory budget {budget // MiB} MiB, "
        f"swap budget {st['daemon']['swap_budget'] // MiB} MiB, one tick a second")
    # The scopes exist now (swapfaird made them); put a stand-in in each.
    half, whole = f"{budget // 2 // MiB}M", f"{budget // MiB}M"
    plan = {
        "small-a": (half, half, f"busy:{DURATION // 4},idle:{DURATION // 2},busy:{DURATION // 4}"),
        "small-b": (half, half, f"busy:{DURATION}"),
        "large": (whole, whole, f"busy:{DURATION}"),
    }
    log("stand-ins: " + "; ".join(f"{n} holds {m} ({p})" for n, (m, _, p) in plan.items()) + ": twice the budget")
    standins = [StandIn(n, f"{SLICE}/vm-{n}.scope", m, w, phases=p) for n, (m, w, p) in plan.items()]
    names = list(plan)
    rows, t0, last_print = [], time.monotonic(), 0
    header = f"{'t':>5}  " + "  ".join(f"{n:>34}" for n in names)
    while any(s.proc.poll() is None for s in standins):
        time.sleep(1)
        st = status(sock)
        if not st:
            continue
        t = time.monotonic() - t0
        row = {"t": round(t, 1)}
        for v in st["vms"]:
            for key in ("entitled", "memory_high", "memory_current", "swap_current", "stall"):
                row[f"{v['name']}_{key.replace('memory_', '').replace('swap_current', 'swap')}"] = v.get(key)
        rows.append(row)
        if t - last_print >= 5:
            if last_print == 0:
                log("\neach VM: entitled / memory.high / memory.current / swap (MiB), stalled share")
                log(header)
            last_print = t
            cells = []
            for n in names:
                f = lambda k: row.get(f"{n}_{k}")
                def m(v): return f"{v / MiB:.0f}" if v is not None else "-"
                stall = f"{f('stall') * 100:.0f}%" if f("stall") is not None else "-"
                cells.append(f"{m(f('entitled'))}/{m(f('high'))}/{m(f('current'))}/{m(f('swap'))} {stall:>4}".rjust(34))
            log(f"{t:5.0f}  " + "  ".join(cells))
    d.terminate()
    d.wait()
    for s in standins:
        s.stop()
    for n in names:
        cg_kill_and_remove(f"{SLICE}/vm-{n}.scope")
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "t", k))
    with open(os.path.join(OUT, "demo.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    svg_plot(rows, names, budget, os.path.join(OUT, "demo.svg"))
    log("\nsummary")
    for s, n in zip(standins, names):
        summ = s.summary() or {"phases": []}
        phases = ", ".join(f"{p['phase']} {p['rate']:,.0f} touches/s, {p['majflt_per_s']:.0f} major faults/s"
                           for p in summ["phases"] if p["phase"] == "busy")
        log(f"  {n}: {phases}")
    a = [r for r in rows if r.get("small-a_entitled")]
    if a:
        third = len(a) // 4
        mid = a[third: 3 * third]
        log(f"  small-a idled mid-run: its entitlement went from {a[third - 1]['small-a_entitled'] // MiB} MiB to "
            f"{min(r['small-a_entitled'] for r in mid) // MiB} MiB and the others took the difference; "
            f"at the end it was {a[-1]['small-a_entitled'] // MiB} MiB again")
    log(f"  time series: {os.path.join(OUT, 'demo.csv')}; plot: {os.path.join(OUT, 'demo.svg')}; "
        f"daemon log: {os.path.join(OUT, 'swapfaird.log')}")


if __name__ == "__main__":
    main()
