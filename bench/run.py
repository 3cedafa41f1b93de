#!/usr/bin/env python3
"""redirect's benchmark: one command, standard library only.

    python3 bench/run.py               # full run: 5 interleaved rounds, about 3-5 minutes
    python3 bench/run.py --quick       # smoke run: 1 round, small counts, a few seconds
    python3 bench/run.py --json FILE   # also save every raw sample

What it measures (see docs/performance.md for results and analysis):

(a) syscall-loop-glibc N (untrapped syscalls) under `redirect -r in,port=1,reject`
    against native: wall-time ratio.
(b) the cost of one trapped syscall: syscall-loop-glibc N getsockname (one
    ptrace stop per call, no rule matches) under redirect and natively.
(c) the static Go HTTP server, keep-alive requests/s and new connections/s,
    under redirect on a Unix socket, natively on TCP and natively on a Unix
    socket. The load client (go-http-client) always runs natively.
(d) wall time of `redirect -r in,port=1,reject -- /bin/true` against /bin/true.
(e) the static Go UDP echo server, request/reply round trips/s with
    go-udp-client -connected: natively on UDP, and with both sides under
    redirect (server `in,udp`, client `out,udp`: Unix datagram sockets end to
    end). The counts differ (redirect is far slower); the rates are comparable.

The machine is assumed to be small and shared: every round runs every
configuration once (in a rotating order), and the table reports medians over
rounds with the min-max spread. Every process the bench starts is stopped by
its pid; the temporary directory with the socket files is removed on exit,
also on Ctrl-C, SIGTERM or an error.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "static-bins"
BINS = FIXTURES / "out"
REDIRECT = ROOT / ".venv" / "bin" / "redirect"
LOOP = BINS / "syscall-loop-glibc"
SERVER = BINS / "go-http-server"
CLIENT = BINS / "go-http-client"
UDP_SERVER = BINS / "go-udp-server"
UDP_CLIENT = BINS / "go-udp-client"
SOURCES = {
    LOOP: ["syscall-loop.c", "common.h"],
    SERVER: ["go-server/main.go", "go.mod"],
    CLIENT: ["go-client/main.go", "go.mod"],
    UDP_SERVER: ["go-udp-server/main.go", "go.mod"],
    UDP_CLIENT: ["go-udp-client/main.go", "go.mod"],
}
REJECT_RULE = ["-r", "in,port=1,reject"]   # a rule that matches nothing the programs do

FULL = dict(rounds=5, loop_n=300_000, trap_n=20_000, keepalive_n=40_000, conn_n=6_000,
            concurrency=8, true_reps=10, udp_native_n=100_000, udp_redirect_n=5_000,
            udp_concurrency=4)
QUICK = dict(rounds=1, loop_n=20_000, trap_n=1_000, keepalive_n=2_000, conn_n=300,
             concurrency=8, true_reps=3, udp_native_n=2_000, udp_redirect_n=200,
             udp_concurrency=4)
HTTP_SERVERS = ("redirect", "tcp", "unix")

TARGETS = {
    "keepalive": ("keep-alive >= 1.0x native TCP", lambda ratio: ratio >= 1.0),
    "newconn": ("new connections >= 0.8x native TCP", lambda ratio: ratio >= 0.8),
    "startup": ("startup < 60 ms added", lambda added_ms: added_ms < 60),
}


class BenchError(Exception):
    pass


# ---- processes ----------------------------------------------------------------------

class Procs:
    """Long-running processes (the servers): stopped by pid, SIGTERM then SIGKILL."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, argv, **kw) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> int | None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def run(argv, timeout: float, expect: str | None = None) -> tuple[float, str]:
    """Run a short program to its end; (wall seconds, stdout). On a timeout, an
    interrupt or an error it is killed by its pid and reaped before we go on."""
    argv = [str(a) for a in argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"{' '.join(argv)}: no result within {timeout} s") from None
        raise
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or (expect is not None and expect not in out):
        raise BenchError(f"{' '.join(argv)}: exit {proc.returncode}\nstdout: {out[-500:]}"
                         f"\nstderr: {err[-500:]}")
    return elapsed, out


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: stop like on Ctrl-C."""


# ---- setup ----------------------------------------------------------------------------

def ensure_built() -> None:
    """Build the fixtures (and .venv) with scripts/setup.sh if anything is missing
    or older than its sources."""
    def stale() -> list[str]:
        out = [] if os.access(REDIRECT, os.X_OK) else [str(REDIRECT)]
        # The .venv holds a regular (copied) install: reinstall when redirect/ changed,
        # the same test scripts/setup.sh makes, so that the current code is measured.
        marker = ROOT / ".venv" / ".installed"
        installed = marker.stat().st_mtime if marker.exists() else 0
        code = [ROOT / "pyproject.toml", *(ROOT / "redirect").rglob("*.py")]
        if not out and any(f.stat().st_mtime > installed for f in code if f.exists()):
            out.append(f"{REDIRECT} (redirect/ changed since it was installed)")
        for binary, sources in SOURCES.items():
            if not binary.exists():
                out.append(str(binary))
                continue
            built = binary.stat().st_mtime
            if any((FIXTURES / s).stat().st_mtime > built for s in sources):
                out.append(str(binary))
        return out

    missing = stale()
    if missing:
        print(f"bench: missing or out of date: {', '.join(missing)}; running scripts/setup.sh",
              file=sys.stderr, flush=True)
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
        missing = stale()
        if missing:
            raise BenchError(f"still missing after setup: {', '.join(missing)}")
    # The fixture features the bench relies on.
    run([LOOP, 1, "getsockname"], timeout=10, expect="done 1")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "bench_python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        info["redirect_python"] = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["redirect_python"] = "?"
    try:
        with open("/proc/cpuinfo") as f:
            models = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        info["cpu"] = models[0] if models else "?"
    except OSError:
        info["cpu"] = "?"
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "redirect"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = (head or "?") + (" (redirect/ modified)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = "?"
    if shutil.which("go"):
        try:
            out = subprocess.run(["go", "version", str(SERVER)], capture_output=True, text=True, timeout=10).stdout
            info["go"] = out.split(":", 1)[-1].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


# ---- the HTTP servers -----------------------------------------------------------------

class Server:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path, url: str, unix: Path | None,
                 tcp_port: int | None = None) -> None:
        self.name, self.proc, self.log, self.url, self.unix, self.tcp_port = name, proc, log, url, unix, tcp_port

    def client_argv(self, n: int, concurrency: int, keepalive: bool) -> list:
        argv = [CLIENT, "-n", n, "-c", concurrency, "-timeout", "20s"]
        if keepalive:
            argv.append("-keepalive")
        if self.unix is not None:
            argv += ["-unix", self.unix]
        return argv + [self.url]


class UdpServer:
    """go-udp-server and how its load client reaches it: natively on UDP, or (with
    client_rule) a redirected client talking to the redirected server's socket file."""

    def __init__(self, name: str, proc: subprocess.Popen, log: Path, port: int, client_rule: str | None) -> None:
        self.name, self.proc, self.log, self.port, self.client_rule = name, proc, log, port, client_rule

    def client_argv(self, n: int, concurrency: int) -> list:
        red = [REDIRECT, "-r", self.client_rule, "--"] if self.client_rule else []
        return red + [UDP_CLIENT, "-connected", "-n", n, "-c", concurrency, "-timeout", "20s",
                      f"127.0.0.1:{self.port}"]


def start_servers(procs: Procs, tmp: Path) -> dict[str, Server | UdpServer]:
    servers = {}
    tcp_port, virtual_port = free_port(), free_port()
    udp_port, udp_virtual_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    specs = {
        "redirect": ([REDIRECT, "-r", f"in,port={virtual_port},path={tmp / 'redirect.sock'}", "--",
                      SERVER, "-addr", f"127.0.0.1:{virtual_port}", "-quiet"],
                     f"http://127.0.0.1:{virtual_port}/", tmp / "redirect.sock"),
        "tcp": ([SERVER, "-addr", f"127.0.0.1:{tcp_port}", "-quiet"], f"http://127.0.0.1:{tcp_port}/", None),
        "unix": ([SERVER, "-unix", tmp / "native.sock", "-quiet"], "http://localhost/", tmp / "native.sock"),
    }
    for name, (argv, url, unix) in specs.items():
        log = tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = procs.start(argv, stdout=out, stderr=subprocess.STDOUT)
        servers[name] = Server(name, proc, log, url, unix, tcp_port if name == "tcp" else None)
    udp_sock = tmp / "udp-redirect.sock"
    udp_specs = {
        "udp-native": ([UDP_SERVER, "-addr", f"127.0.0.1:{udp_port}", "-quiet"], udp_port, None),
        "udp-redirect": ([REDIRECT, "-r", f"in,udp,port={udp_virtual_port},path={udp_sock}", "--",
                          UDP_SERVER, "-addr", f"127.0.0.1:{udp_virtual_port}", "-quiet"],
                         udp_virtual_port, f"out,udp,port={udp_virtual_port},path={udp_sock}"),
    }
    for name, (argv, port, client_rule) in udp_specs.items():
        log = tmp / f"{name}.log"
        with open(log, "wb") as out:
            proc = procs.start(argv, stdout=out, stderr=subprocess.STDOUT)
        servers[name] = UdpServer(name, proc, log, port, client_rule)
    deadline = time.monotonic() + 20
    for server in servers.values():
        while "listening" not in server.log.read_text(errors="replace"):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{server.name} server did not start:\n{server.log.read_text(errors='replace')}")
            time.sleep(0.02)
    # Under redirect, no TCP port may be open: the server must be reachable only by its socket file.
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", virtual_port)) == 0:
            raise BenchError(f"the server under redirect opened TCP port {virtual_port}")
    # Nor a UDP port: if it had one, this bind would fail with EADDRINUSE.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", udp_virtual_port))
        except OSError as err:
            raise BenchError(f"the UDP server under redirect opened UDP port {udp_virtual_port}: {err}") from None
    return servers


def load(server: Server, n: int, concurrency: int, keepalive: bool) -> float:
    """One load run of the native client against server; requests per second."""
    _, out = run(server.client_argv(n, concurrency, keepalive), timeout=300, expect=f"ok={n} fail=0")
    found = re.search(r"^rate=([0-9.]+)$", out, re.M)
    if not found:
        raise BenchError(f"go-http-client printed no rate= line (rebuild the fixtures?):\n{out}")
    return float(found[1])


def udp_load(server: UdpServer, n: int, concurrency: int) -> float:
    """One run of go-udp-client against server; round trips per second."""
    _, out = run(server.client_argv(n, concurrency), timeout=300, expect=f"ok={n} fail=0")
    found = re.search(r"^rate=([0-9.]+)$", out, re.M)
    if not found:
        raise BenchError(f"go-udp-client printed no rate= line (rebuild the fixtures?):\n{out}")
    return float(found[1])


# ---- rounds -----------------------------------------------------------------------------

def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def one_round(r: int, cfg: dict, servers: dict[str, Server | UdpServer], samples: dict) -> None:
    red = [REDIRECT, *REJECT_RULE, "--"]
    # (a) untrapped syscalls
    for which in rotated(["native", "redirect"], r):
        argv = [LOOP, cfg["loop_n"]]
        t, _ = run((red if which == "redirect" else []) + argv, timeout=120, expect=f"done {cfg['loop_n']}")
        samples["loop"][which].append(t)
    # (b) trapped getsockname: N calls and 0 calls (the 0-call run is the start-up cost)
    for which in rotated(["native", "redirect"], r):
        for n in rotated([cfg["trap_n"], 0], r):
            t, _ = run((red if which == "redirect" else []) + [LOOP, n, "getsockname"], timeout=120,
                       expect=f"done {n}")
            samples["trap"][f"{which}_{'n' if n else '0'}"].append(t)
    # (d) start-up
    for i in range(cfg["true_reps"]):
        for which in rotated(["native", "redirect"], r + i):
            t, _ = run((red if which == "redirect" else []) + ["/bin/true"], timeout=30)
            samples["startup"][which].append(t)
    # (c) HTTP
    for mode, n in rotated([("keepalive", cfg["keepalive_n"]), ("newconn", cfg["conn_n"])], r):
        for name in rotated(list(HTTP_SERVERS), r):
            rate = load(servers[name], n, cfg["concurrency"], keepalive=mode == "keepalive")
            samples[mode][name].append(rate)
    # (e) UDP round trips (client and server both redirected, or both native)
    for which in rotated(["native", "redirect"], r):
        rate = udp_load(servers[f"udp-{which}"], cfg[f"udp_{which}_n"], cfg["udp_concurrency"])
        samples["udp"][which].append(rate)


def summarise(samples: dict, cfg: dict) -> dict:
    med = statistics.median
    s = {}
    loop = samples["loop"]
    s["loop"] = {"native_s": med(loop["native"]), "redirect_s": med(loop["redirect"])}
    s["loop"]["ratio"] = med([b / a for a, b in zip(loop["native"], loop["redirect"])])
    t = samples["trap"]
    # The same ratio without redirect's start-up (estimated per round by the 0-call run of (b)).
    s["loop"]["ratio_without_startup"] = med([
        (b - (r0 - n0)) / a for a, b, r0, n0 in zip(loop["native"], loop["redirect"], t["redirect_0"], t["native_0"])])
    n = cfg["trap_n"]
    corrected = [((rn - r0) - (nn - n0)) / n * 1e6
                 for rn, r0, nn, n0 in zip(t["redirect_n"], t["redirect_0"], t["native_n"], t["native_0"])]
    raw = [(rn - nn) / n * 1e6 for rn, nn in zip(t["redirect_n"], t["native_n"])]
    s["trap"] = {"native_s": med(t["native_n"]), "redirect_s": med(t["redirect_n"]),
                 "us_per_call": med(corrected), "us_per_call_incl_startup": med(raw)}
    for mode in ("keepalive", "newconn"):
        m = samples[mode]
        s[mode] = {name: med(v) for name, v in m.items()}
        # Ratio of medians; the per-round ratios are in the JSON samples.
        s[mode]["vs_tcp"] = s[mode]["redirect"] / s[mode]["tcp"]
        s[mode]["vs_unix"] = s[mode]["redirect"] / s[mode]["unix"]
        s[mode]["met"] = TARGETS[mode][1](s[mode]["vs_tcp"])
    u = samples["udp"]
    s["udp"] = {name: med(v) for name, v in u.items()}
    # Ratio of medians, as in (c); the spread line shows the per-round ratios.
    s["udp"]["ratio"] = s["udp"]["redirect"] / s["udp"]["native"]
    st = samples["startup"]
    s["startup"] = {"native_ms": med(st["native"]) * 1e3, "redirect_ms": med(st["redirect"]) * 1e3}
    s["startup"]["added_ms"] = s["startup"]["redirect_ms"] - s["startup"]["native_ms"]
    s["startup"]["met"] = TARGETS["startup"][1](s["startup"]["added_ms"])
    return s


def spread(values: list, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)}"


def report(s: dict, samples: dict, cfg: dict, info: dict) -> str:
    met = lambda ok: "met" if ok else "NOT met"
    k, c = cfg["keepalive_n"], cfg["concurrency"]
    rows = [
        ("measurement", "native TCP/native", "native Unix", "redirect", "ratio", "target"),
        (f"(a) syscall-loop {cfg['loop_n']} (untrapped), s",
         f"{s['loop']['native_s']:.3f}", "-", f"{s['loop']['redirect_s']:.3f}",
         f"{s['loop']['ratio']:.2f}x time", "-"),
        (f"(b) trapped getsockname x{cfg['trap_n']}, s",
         f"{s['trap']['native_s']:.3f}", "-", f"{s['trap']['redirect_s']:.3f}",
         f"{s['trap']['us_per_call']:.1f} us/call", "-"),
        (f"(c) keep-alive req/s (c={c}, n={k})",
         f"{s['keepalive']['tcp']:.0f}", f"{s['keepalive']['unix']:.0f}", f"{s['keepalive']['redirect']:.0f}",
         f"{s['keepalive']['vs_tcp']:.2f}x TCP, {s['keepalive']['vs_unix']:.2f}x Unix",
         f">=1.0x TCP: {met(s['keepalive']['met'])}"),
        (f"(c) new conn/s (c={c}, n={cfg['conn_n']})",
         f"{s['newconn']['tcp']:.0f}", f"{s['newconn']['unix']:.0f}", f"{s['newconn']['redirect']:.0f}",
         f"{s['newconn']['vs_tcp']:.2f}x TCP, {s['newconn']['vs_unix']:.2f}x Unix",
         f">=0.8x TCP: {met(s['newconn']['met'])}"),
        ("(d) /bin/true wall, ms",
         f"{s['startup']['native_ms']:.1f}", "-", f"{s['startup']['redirect_ms']:.1f}",
         f"+{s['startup']['added_ms']:.1f} ms", f"<60 ms: {met(s['startup']['met'])}"),
        (f"(e) UDP round trips/s (c={cfg['udp_concurrency']}, n={cfg['udp_native_n']}/{cfg['udp_redirect_n']})",
         f"{s['udp']['native']:.0f}", "-", f"{s['udp']['redirect']:.0f}",
         f"{s['udp']['ratio']:.3f}x native UDP", "-"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"redirect benchmark: {cfg['rounds']} round(s), medians; {info['nproc']} CPUs, "
             f"kernel {info['kernel']}, load average at start {info['loadavg_start'][0]:.2f}",
             f"CPU {info['cpu']}; redirect runs on Python {info['redirect_python']}; "
             f"fixtures built with {info.get('go', 'Go ?')}; commit {info['commit']}", ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = samples["trap"]
    lines += [
        "",
        "spread (min-max over rounds):",
        f"  (a) native {spread(samples['loop']['native'], 1, '{:.3f}')} s, "
        f"redirect {spread(samples['loop']['redirect'], 1, '{:.3f}')} s; ratio without redirect's "
        f"start-up {s['loop']['ratio_without_startup']:.2f}x",
        f"  (b) redirect {spread(t['redirect_n'], 1, '{:.3f}')} s; per call incl. start-up "
        f"{s['trap']['us_per_call_incl_startup']:.1f} us (start-up subtracted: "
        f"{s['trap']['us_per_call']:.1f} us)",
    ]
    for mode in ("keepalive", "newconn"):
        lines.append(f"  (c) {mode}: " + ", ".join(
            f"{name} {spread(samples[mode][name])}" for name in ("tcp", "unix", "redirect")) + " req/s")
    lines.append(f"  (d) native {spread(samples['startup']['native'], 1e3, '{:.1f}')} ms, "
                 f"redirect {spread(samples['startup']['redirect'], 1e3, '{:.1f}')} ms "
                 f"({len(samples['startup']['redirect'])} runs each)")
    u = samples["udp"]
    lines.append(f"  (e) native {spread(u['native'])}, redirect {spread(u['redirect'])} round trips/s; "
                 f"ratio per round {spread([b / a for a, b in zip(u['native'], u['redirect'])], 1, '{:.3f}')}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmark redirect against native runs.")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, small counts")
    ap.add_argument("--rounds", type=int, help="number of rounds (default 5, --quick 1)")
    ap.add_argument("--json", metavar="FILE", help="save configuration, machine and raw samples")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = max(1, args.rounds)

    def terminate(sig, frame):
        raise Interrupted
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, terminate)
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="redirect-bench-"))
    started = time.monotonic()
    try:
        ensure_built()
        info = machine()
        servers = start_servers(procs, tmp)
        samples = {
            "loop": {"native": [], "redirect": []},
            "trap": {"native_n": [], "native_0": [], "redirect_n": [], "redirect_0": []},
            "keepalive": {"redirect": [], "tcp": [], "unix": []},
            "newconn": {"redirect": [], "tcp": [], "unix": []},
            "startup": {"native": [], "redirect": []},
            "udp": {"native": [], "redirect": []},
        }
        # Warm-up, not recorded: page cache, .pyc files, the servers' first connections.
        run([REDIRECT, *REJECT_RULE, "--", "/bin/true"], timeout=30)
        for name in HTTP_SERVERS:
            load(servers[name], max(200, cfg["conn_n"] // 10), cfg["concurrency"], keepalive=False)
            load(servers[name], max(200, cfg["keepalive_n"] // 20), cfg["concurrency"], keepalive=True)
        for which in ("native", "redirect"):
            udp_load(servers[f"udp-{which}"], max(100, cfg[f"udp_{which}_n"] // 20), cfg["udp_concurrency"])
        for r in range(cfg["rounds"]):
            t0 = time.monotonic()
            one_round(r, cfg, servers, samples)
            print(f"bench: round {r + 1}/{cfg['rounds']} done in {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        bad = {}
        for name, server in servers.items():
            status = procs.stop(server.proc)
            text = server.log.read_text(errors="replace")
            if status != 0 or "shutdown" not in text:
                raise BenchError(f"{name} server did not shut down cleanly (exit {status}):\n{text[-1000:]}")
            bad[name] = text.count("bad-remote-addr") + text.count("bad-addr ")
        for name in ("redirect", "udp-redirect"):
            if bad[name]:
                raise BenchError(f"the {name} server saw {bad[name]} non-IP remote addresses")
        info["loadavg_end"] = os.getloadavg()
        info["bench_seconds"] = round(time.monotonic() - started, 1)
        summary = summarise(samples, cfg)
        print(report(summary, samples, cfg, info))
        print(f"\n(total {info['bench_seconds']:.0f} s; load average at end {info['loadavg_end'][0]:.2f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"config": cfg, "machine": info, "summary": summary, "samples": samples}, f, indent=2)
                f.write("\n")
            print(f"raw results saved to {args.json}")
        return 0
    except (KeyboardInterrupt, Interrupted):
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchError, subprocess.CalledProcessError, OSError) as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)   # do not interrupt the clean-up itself
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
