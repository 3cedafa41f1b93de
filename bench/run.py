#!/usr/bin/env python3
"""redirect's benchmark: one command, standard library only.

    python3 bench/run.py               # full run: 5 interleaved rounds, about 10 minutes
    python3 bench/run.py --quick       # smoke run: 1 round, small counts, under a minute
    python3 bench/run.py --json FILE   # also save every raw sample

Every redirect row is measured for both backends (notify: seccomp user
notification; ptrace), side by side with the native runs in the same rounds:

(a) syscall-loop-glibc N (untrapped syscalls) under `redirect -r in,port=1,reject`
    against native: wall-time ratio.
(b) the cost of one trapped syscall: syscall-loop-glibc N getsockname (trapped,
    no rule matches) under redirect and natively.
(c) the static Go HTTP server, keep-alive requests/s and new connections/s,
    under redirect on a Unix socket, natively on TCP and natively on a Unix
    socket. The load client (go-http-client) runs natively.
(d) wall time of `redirect -r in,port=1,reject -- /bin/true` against /bin/true.
(e) the static Go UDP echo server, request/reply round trips/s with
    go-udp-client -connected: natively on UDP, and with both sides under
    redirect (server `in,udp`, client `out,udp`: Unix datagram sockets end to
    end).
(f) nginx (1 worker, a 1 KiB static file), keep-alive and a new connection
    per request: under redirect (its TCP port converted), natively on TCP and
    natively on a Unix socket (`listen unix:`), with the Go client native;
    then wrk (-t1 -c32) redirected by an out rule to the redirected nginx,
    against wrk and nginx both native on TCP.
(g) caddy file-server, the same way (natively on Unix: `--listen unix//PATH`).
(h) the floor: each server of (c), (f), (g) natively on its Unix socket and
    the UDP server natively, under null-supervisor (fixtures/static-bins), a
    C supervisor that traps the calls redirect traps there per connection or
    round trip and answers each CONTINUE at once. What they lose under it is
    what trapping those calls costs before any supervisor work: the best any
    notify supervisor can do with that filter. (Go's net package makes only
    accept4 and getsockname of them on a Unix socket, 2 calls per connection
    against 5 under redirect: for Go and caddy that floor is too kind. So Go
    and caddy also run natively on TCP, where they make all 5, under
    null-supervisor and under `null-supervisor --sound`, which makes the
    sound design's steps before each answer: the fd's link, the reads and
    ID_VALID, the writes, the accept itself.) nginx also runs under
    `null-supervisor --accept`, which does the work of redirect's accept
    handler in C (the listener's duplicate and inode, addrlen read, accept,
    SO_PEERCRED, the IP peer written, ADDFD, the answer): what a compiled
    handler for its one call per connection would cost.

Then, for every workload under each backend, the calls redirect trapped, per
request and per connection (`redirect --count-calls`).

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
FLOOR = BINS / "null-supervisor-glibc"
SOURCES = {
    LOOP: ["syscall-loop.c", "common.h"],
    SERVER: ["go-server/main.go", "go.mod"],
    CLIENT: ["go-client/main.go", "go.mod"],
    UDP_SERVER: ["go-udp-server/main.go", "go.mod"],
    UDP_CLIENT: ["go-udp-client/main.go", "go.mod"],
    FLOOR: ["null-supervisor.c"],
}
REJECT_RULE = ["-r", "in,port=1,reject"]   # a rule that matches nothing the programs do
BACKENDS = ("notify", "ptrace")

FULL = dict(rounds=5, loop_n=300_000, trap_n=20_000, keepalive_n=40_000, conn_n=6_000,
            concurrency=8, true_reps=10, udp_native_n=100_000, udp_redirect_n=20_000,
            udp_concurrency=4, wrk_seconds=3, count_n=2_000)
QUICK = dict(rounds=1, loop_n=20_000, trap_n=1_000, keepalive_n=2_000, conn_n=300,
             concurrency=8, true_reps=3, udp_native_n=2_000, udp_redirect_n=500,
             udp_concurrency=4, wrk_seconds=1, count_n=200)
PTRACE_SHARE = 8   # the ptrace backend is far slower: it gets 1/8 of the requests (rates compare)
WEB = ("go", "nginx", "caddy")
VARIANTS = ("tcp", "unix") + BACKENDS   # how a web server runs: natively on TCP or Unix, or under redirect
# (h): the calls the notify backend traps per new connection (per round trip
# for UDP), as --count-calls reports them; the report says if they differ.
FLOOR_TRAPS = {"go": ("accept4", "getsockname", "setsockopt"), "nginx": ("accept4",),
               "caddy": ("accept4", "getsockname", "setsockopt"), "udp": ("recvfrom", "sendto")}


FLOOR_MODES = {"floor": [], "floor-accept": ["--accept"], "floor-tcp": [], "sound-tcp": ["--sound"]}


def floor_variants(kind: str) -> list:
    """(h)'s runs of a web server: the floor; for nginx its accept done in C;
    for Go and caddy (which set TCP options only on TCP connections: on a
    Unix socket they make 2 of their 5 calls) the same on TCP, where they
    make all 5, answered CONTINUE and with the sound design's steps."""
    return ["floor", "floor-accept"] if kind == "nginx" else ["floor", "floor-tcp", "sound-tcp"]


# The targets (docs/performance.md): (row, what, test on the measured value).
TARGETS = {
    "trap": ("<= 12 us per trapped call", lambda us: us <= 12),
    "startup": ("<= +30 ms", lambda ms: ms <= 30),
    "udp": (">= 0.5x native UDP", lambda r: r >= 0.5),
    "keepalive": (">= 0.95x native Unix", lambda r: r >= 0.95),
    "newconn": (">= 1.0x native TCP", lambda r: r >= 1.0),
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


def redirect(backend: str, *rules: str, count: Path | None = None) -> list:
    argv = [REDIRECT, "--backend", backend]
    for rule in rules:
        argv += ["-r", rule]
    if count is not None:
        argv += ["--count-calls", count]
    return argv + ["--"]


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
        code = [ROOT / "pyproject.toml", ROOT / "setup.py", *(ROOT / "redirect").rglob("*.[ch]"),
                *(ROOT / "redirect").rglob("*.py")]  # (the compiled part too)
        if not out and any(f.stat().st_mtime > installed for f in code if f.exists()):
            out.append(f"{REDIRECT} (redirect/ changed since it was installed)")
        for binary, sources in SOURCES.items():
            if not binary.exists():
                out.append(str(binary))
                continue
            built = binary.stat().st_mtime
            if any((FIXTURES / s).stat().st_mtime > built for s in sources):
                out.append(str(binary))
        out += [tool for tool in ("nginx", "caddy", "wrk") if shutil.which(tool, path=_PATH) is None]
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


_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def tool(name: str) -> str:
    return shutil.which(name, path=_PATH) or name


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
    for name, argv in (("nginx", [tool("nginx"), "-v"]), ("caddy", [tool("caddy"), "version"]),
                       ("wrk", [tool("wrk"), "-v"])):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            info[name] = (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info[name] = "?"
    if shutil.which("go"):
        try:
            out = subprocess.run(["go", "version", str(SERVER)], capture_output=True, text=True, timeout=10).stdout
            info["go"] = out.split(":", 1)[-1].strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


# ---- the web servers ------------------------------------------------------------------

NGINX_CONF = (ROOT / "fixtures" / "nginx" / "nginx.conf.in").read_text()


class Web:
    """One web server run one way: `variant` is tcp or unix (native) or a backend."""

    def __init__(self, kind: str, variant: str, tmp: Path, www: Path, count: Path | None = None) -> None:
        self.kind, self.variant = kind, variant
        self.port = free_port()
        self.sock = tmp / f"{kind}-{variant}.sock"
        self.dir = tmp / f"{kind}-{variant}"
        self.dir.mkdir(exist_ok=True)
        self.log = self.dir / "out.log"
        native_unix = variant in ("unix", "floor", "floor-accept")
        listen_tcp = f"127.0.0.1:{self.port}"
        if kind == "go":
            argv = [SERVER, "-quiet"] + (["-unix", self.sock] if native_unix else ["-addr", listen_tcp])
            self.path = "/"
        elif kind == "nginx":
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=self.dir, www=www,
                                              listen=f"unix:{self.sock}" if native_unix else listen_tcp))
            argv = [tool("nginx"), "-c", conf, "-p", self.dir]
            self.path = "/1k.txt"
        else:
            listen = f"unix/{self.sock}" if native_unix else listen_tcp
            argv = [tool("caddy"), "file-server", "--listen", listen, "--root", www]
            self.path = "/1k.txt"
        if variant in BACKENDS:
            argv = redirect(variant, f"in,port={self.port},path={self.sock}", count=count) + argv
        elif variant in FLOOR_MODES:
            argv = [FLOOR, *FLOOR_MODES[variant], *FLOOR_TRAPS[kind], "--"] + argv
        self.argv = argv
        # Clients reach it on the socket file (natively, or redirect's), else on TCP.
        self.unix = self.sock if native_unix or variant in BACKENDS else None
        self.url = f"http://127.0.0.1:{self.port}{self.path}"

    def start(self, procs: Procs) -> None:
        env = dict(os.environ, HOME=str(self.dir), XDG_DATA_HOME=str(self.dir), XDG_CONFIG_HOME=str(self.dir))
        with open(self.log, "wb") as out:
            self.proc = procs.start(self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        deadline = time.monotonic() + 20
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.kind} ({self.variant}) did not start:\n"
                                 f"{self.log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.02)
        if self.variant in BACKENDS:
            # Under redirect no TCP port may be open: the server is reachable only by its socket file.
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    raise BenchError(f"{self.kind} under redirect opened TCP port {self.port}")

    def _answers(self) -> bool:
        family, where = (socket.AF_INET, ("127.0.0.1", self.port)) if self.unix is None else \
            (socket.AF_UNIX, str(self.unix))
        with socket.socket(family) as s:
            return s.connect_ex(where) == 0

    def stop(self, procs: Procs) -> None:
        procs.stop(self.proc)

    def client(self, n: int, concurrency: int, keepalive: bool) -> list:
        argv = [CLIENT, "-n", n, "-c", concurrency, "-timeout", "20s"]
        if keepalive:
            argv.append("-keepalive")
        if self.unix is not None:
            argv += ["-unix", self.unix]
        return argv + [self.url]

    def wrk(self, seconds: int, keepalive: bool, backend: str | None) -> list:
        """wrk against this server: natively (TCP), or redirected by an out rule to its socket file."""
        argv = [tool("wrk"), "-t1", "-c32", f"-d{seconds}s"] + ([] if keepalive else ["-H", "Connection: close"])
        argv.append(self.url)
        return argv if backend is None else redirect(backend, f"out,port={self.port},path={self.sock}") + argv


def load(web: Web, n: int, concurrency: int, keepalive: bool) -> float:
    """One load run of the native Go client against web; requests per second."""
    _, out = run(web.client(n, concurrency, keepalive), timeout=300, expect=f"ok={n} fail=0")
    found = re.search(r"^rate=([0-9.]+)$", out, re.M)
    if not found:
        raise BenchError(f"go-http-client printed no rate= line (rebuild the fixtures?):\n{out}")
    return float(found[1])


def wrk_load(web: Web, seconds: int, keepalive: bool, backend: str | None) -> float:
    _, out = run(web.wrk(seconds, keepalive, backend), timeout=seconds + 60)
    found = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if not found or errors:
        raise BenchError(f"wrk: no clean result:\n{out}")
    return float(found[1])


class UdpServer:
    """go-udp-server and how its load client reaches it: natively on UDP, or
    under a backend with a redirected client talking to its socket file."""

    def __init__(self, variant: str, tmp: Path, count: Path | None = None) -> None:
        self.variant = variant
        self.port = free_port(socket.SOCK_DGRAM)
        self.log = tmp / f"udp-{variant}.log"
        argv = [UDP_SERVER, "-addr", f"127.0.0.1:{self.port}", "-quiet"]
        if variant in BACKENDS:
            sock = tmp / f"udp-{variant}.sock"
            argv = redirect(variant, f"in,udp,port={self.port},path={sock}", count=count) + argv
            self.client_prefix = redirect(variant, f"out,udp,port={self.port},path={sock}")
        else:
            self.client_prefix = []
            if variant == "floor":
                argv = [FLOOR, *FLOOR_TRAPS["udp"], "--"] + argv
        self.argv = argv

    def start(self, procs: Procs) -> None:
        with open(self.log, "wb") as out:
            self.proc = procs.start(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while "listening" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"UDP server ({self.variant}) did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.02)
        if self.variant in BACKENDS:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", self.port))  # fails with EADDRINUSE if it opened a real port
                except OSError as err:
                    raise BenchError(f"the UDP server under redirect opened UDP port {self.port}: {err}") from None

    def client(self, n: int, concurrency: int) -> list:
        return self.client_prefix + [UDP_CLIENT, "-connected", "-n", n, "-c", concurrency, "-timeout", "20s",
                                     f"127.0.0.1:{self.port}"]


def udp_load(server: UdpServer, n: int, concurrency: int) -> float:
    """One run of go-udp-client against server; round trips per second."""
    _, out = run(server.client(n, concurrency), timeout=300, expect=f"ok={n} fail=0")
    found = re.search(r"^rate=([0-9.]+)$", out, re.M)
    if not found:
        raise BenchError(f"go-udp-client printed no rate= line (rebuild the fixtures?):\n{out}")
    return float(found[1])


# ---- rounds -----------------------------------------------------------------------------

def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def share(n: int, variant: str) -> int:
    return max(n // PTRACE_SHARE, 50) if variant == "ptrace" else n


def again_once(measure, *args, **kwargs) -> float:
    """A load run, run again once if it failed (a connection reset in one of
    thousands ends a round of minutes otherwise); the failure is reported."""
    try:
        return measure(*args, **kwargs)
    except BenchError as err:
        print(f"bench: run again after: {str(err).splitlines()[0]}", file=sys.stderr, flush=True)
        return measure(*args, **kwargs)


def one_round(r: int, cfg: dict, webs: dict, udps: dict, samples: dict) -> None:
    every = ["native", *BACKENDS]
    # (a) untrapped syscalls
    for which in rotated(every, r):
        argv = ([] if which == "native" else redirect(which, REJECT_RULE[1])) + [LOOP, cfg["loop_n"]]
        t, _ = run(argv, timeout=120, expect=f"done {cfg['loop_n']}")
        samples["loop"][which].append(t)
    # (b) trapped getsockname: N calls and 0 calls (the 0-call run is the start-up cost)
    for which in rotated(every, r):
        for n in rotated([share(cfg["trap_n"], which), 0], r):
            argv = ([] if which == "native" else redirect(which, REJECT_RULE[1])) + [LOOP, n, "getsockname"]
            t, _ = run(argv, timeout=120, expect=f"done {n}")
            samples["trap"][which]["n" if n else "0"].append(t)
    # (d) start-up
    for i in range(cfg["true_reps"]):
        for which in rotated(every, r + i):
            t, _ = run(([] if which == "native" else redirect(which, REJECT_RULE[1])) + ["/bin/true"], timeout=30)
            samples["startup"][which].append(t)
    # (c), (f), (g): web servers, the native Go client
    for kind in rotated(list(WEB), r):
        for mode, n in rotated([("keepalive", cfg["keepalive_n"]), ("newconn", cfg["conn_n"])], r):
            for variant in rotated(list(VARIANTS) + (floor_variants(kind) if mode == "newconn" else []), r):
                rate = again_once(load, webs[kind, variant], share(n, variant), cfg["concurrency"],
                                  keepalive=mode == "keepalive")
                samples[kind][mode][variant].append(rate)
    # (f), (g): wrk, native against TCP or redirected against the redirected server
    for kind in rotated(["nginx", "caddy"], r):
        for mode in rotated(["keepalive", "newconn"], r):
            for variant in rotated(["tcp", *BACKENDS], r):
                rate = again_once(wrk_load, webs[kind, variant], cfg["wrk_seconds"], mode == "keepalive",
                                  None if variant == "tcp" else variant)
                samples[f"{kind}-wrk"][mode][variant].append(rate)
    # (e) UDP round trips (client and server both redirected, or both native)
    for which in rotated([*every, "floor"], r):
        n = cfg["udp_native_n"] if which in ("native", "floor") else share(cfg["udp_redirect_n"], which)
        samples["udp"][which].append(again_once(udp_load, udps[which], n, cfg["udp_concurrency"]))


# ---- trapped calls per request --------------------------------------------------------

def count_calls(cfg: dict, tmp: Path, www: Path, procs: Procs) -> dict:
    """For each workload under each backend: the calls redirect trapped, per
    request (keep-alive: the connections' own calls included) and per new
    connection, from --count-calls of a server run with no load subtracted."""
    def counted(path: Path, what: str = "trapped") -> dict:
        return json.loads(path.read_text())[what]  # what: trapped, or compiled (of those, made in C)

    def total(calls: dict) -> int:
        return sum(calls.values())

    n, c = cfg["count_n"], cfg["concurrency"]
    out = {}
    for backend in BACKENDS:
        for kind in WEB:
            row = {}
            for mode in ("idle", "keepalive", "newconn"):
                path = tmp / f"count-{kind}-{backend}-{mode}.json"
                web = Web(kind, backend, tmp, www, count=path)
                web.start(procs)
                if mode != "idle":
                    load(web, n, c, keepalive=mode == "keepalive")
                web.stop(procs)
                row[mode] = counted(path)
                row[mode, "compiled"] = counted(path, "compiled")
            idle = total(row["idle"])
            out[kind, backend] = {
                "keepalive_per_request": (total(row["keepalive"]) - idle) / n,
                "newconn_per_request": (total(row["newconn"]) - idle) / n,
                "newconn_compiled_per_request": (total(row["newconn", "compiled"]) - total(row["idle", "compiled"]))
                / n,
                "calls": {mode: row[mode] for mode in ("keepalive", "newconn")},
                "requests": n, "connections_keepalive": c,
            }
        path = tmp / f"count-udp-{backend}.json"
        udp = UdpServer(backend, tmp, count=path)
        udp.start(procs)
        udp_load(udp, n, cfg["udp_concurrency"])
        procs.stop(udp.proc)
        out["udp", backend] = {"server_per_round_trip": total(counted(path)) / n, "calls": counted(path),
                               "requests": n}
    return out


# ---- the report -------------------------------------------------------------------------

def summarise(samples: dict, cfg: dict) -> dict:
    med = statistics.median
    s = {}
    loop = samples["loop"]
    t = samples["trap"]
    for b in BACKENDS:
        s[f"loop_{b}"] = med([x / a for a, x in zip(loop["native"], loop[b])])
        n = share(cfg["trap_n"], b)
        s[f"trap_{b}"] = med([((rn - r0) - (nn - n0) * n / cfg["trap_n"]) / n * 1e6
                              for rn, r0, nn, n0 in zip(t[b]["n"], t[b]["0"], t["native"]["n"], t["native"]["0"])])
        s[f"startup_{b}"] = (med(samples["startup"][b]) - med(samples["startup"]["native"])) * 1e3
        s[f"udp_{b}"] = med(samples["udp"][b]) / med(samples["udp"]["native"])
    s["udp_floor"] = med(samples["udp"]["floor"]) / med(samples["udp"]["native"])
    s["startup_native_ms"] = med(samples["startup"]["native"]) * 1e3
    for kind in WEB:
        for mode in ("keepalive", "newconn"):
            s[kind, mode] = {v: med(values) for v, values in samples[kind][mode].items()}
        if kind != "go":
            for mode in ("keepalive", "newconn"):
                s[f"{kind}-wrk", mode] = {v: med(samples[f"{kind}-wrk"][mode][v]) for v in ("tcp", *BACKENDS)}
    return s


def spread(values: list, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)}"


def report(s: dict, samples: dict, counts: dict, cfg: dict, info: dict) -> str:
    def verdict(key: str, value: float) -> str:
        what, ok = TARGETS[key]
        return f"{what}: {'met' if ok(value) else 'NOT met'}"

    rows = [("measurement", "native", *BACKENDS, "target (notify)")]
    rows.append((f"(a) syscall-loop {cfg['loop_n']} untrapped, time ratio", "1.00x",
                 *(f"{s[f'loop_{b}']:.2f}x" for b in BACKENDS), "-"))
    rows.append(("(b) one trapped getsockname, us", "-", *(f"{s[f'trap_{b}']:.1f}" for b in BACKENDS),
                 verdict("trap", s["trap_notify"])))
    rows.append(("(d) /bin/true, ms added", f"{s['startup_native_ms']:.1f} ms",
                 *(f"+{s[f'startup_{b}']:.1f}" for b in BACKENDS), verdict("startup", s["startup_notify"])))
    rows.append((f"(e) UDP round trips vs native (c={cfg['udp_concurrency']})",
                 f"{med_or(samples['udp']['native'])}/s", *(f"{s[f'udp_{b}']:.3f}x" for b in BACKENDS),
                 verdict("udp", s["udp_notify"])))
    letters = {"go": "(c) Go hello", "nginx": "(f) nginx", "caddy": "(g) caddy"}
    for kind in WEB:
        for mode in ("keepalive", "newconn"):
            m = s[kind, mode]
            base = "unix" if mode == "keepalive" else "tcp"
            label = "keep-alive" if mode == "keepalive" else "new conn/request"
            rows.append((f"{letters[kind]} {label}, Go client (c={cfg['concurrency']})",
                         f"TCP {m['tcp']:.0f}/s, Unix {m['unix']:.0f}/s",
                         *(f"{m[b] / m['tcp']:.2f}x TCP, {m[b] / m['unix']:.2f}x Unix" for b in BACKENDS),
                         verdict(mode, m["notify"] / m[base])))
        if kind != "go":
            for mode in ("keepalive", "newconn"):
                m = s[f"{kind}-wrk", mode]
                label = "keep-alive" if mode == "keepalive" else "new conn/request"
                rows.append((f"{letters[kind]} {label}, wrk -c32 redirected", f"TCP {m['tcp']:.0f}/s",
                             *(f"{m[b] / m['tcp']:.2f}x TCP" for b in BACKENDS), "-"))
    for kind in WEB:
        m = s[kind, "newconn"]
        rows.append((f"(h) floor: {kind} new conn/request, {'+'.join(FLOOR_TRAPS[kind])} answered CONTINUE",
                     f"TCP {m['tcp']:.0f}/s", f"{m['floor'] / m['tcp']:.2f}x TCP", "", "-"))
        if "floor-accept" in m:
            rows.append((f"(h) {kind} new conn/request, accept4 handled in C (null-supervisor --accept)",
                         f"TCP {m['tcp']:.0f}/s", f"{m['floor-accept'] / m['tcp']:.2f}x TCP", "", "-"))
        if "floor-tcp" in m:
            rows.append((f"(h) {kind} on TCP, new conn/request, its 5 calls answered CONTINUE",
                         f"TCP {m['tcp']:.0f}/s", f"{m['floor-tcp'] / m['tcp']:.2f}x TCP", "", "-"))
            rows.append((f"(h) {kind} on TCP, new conn/request, the sound design's steps (null-supervisor --sound)",
                         f"TCP {m['tcp']:.0f}/s", f"{m['sound-tcp'] / m['tcp']:.2f}x TCP", "", "-"))
    rows.append((f"(h) floor: UDP round trips, {'+'.join(FLOOR_TRAPS['udp'])} answered CONTINUE",
                 f"{med_or(samples['udp']['native'])}/s", f"{s['udp_floor']:.3f}x", "", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"redirect benchmark: {cfg['rounds']} round(s), medians; {info['nproc']} CPUs, "
             f"kernel {info['kernel']}, load average at start {info['loadavg_start'][0]:.2f}",
             f"CPU {info['cpu']}; redirect runs on Python {info['redirect_python']}; "
             f"fixtures built with {info.get('go', 'Go ?')}; {info['nginx']}; caddy {info['caddy']}; "
             f"{info['wrk']}; commit {info['commit']}",
             f"(the ptrace backend gets 1/{PTRACE_SHARE} of the requests and calls: its rates compare)", ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "trapped calls (redirect --count-calls, start-up subtracted):"]
    for kind in WEB:
        for b in BACKENDS:
            c = counts[kind, b]
            lines.append(f"  {kind:6} {b:6}: keep-alive {c['keepalive_per_request']:.3f} per request "
                         f"({c['requests']} requests on {c['connections_keepalive']} connections: "
                         f"{_calls(c['calls']['keepalive'])}); new connections "
                         f"{c['newconn_per_request']:.2f} per request, {c['newconn_compiled_per_request']:.2f} "
                         f"of them compiled ({_calls(c['calls']['newconn'])})")
    for b in BACKENDS:
        c = counts["udp", b]
        lines.append(f"  udp    {b:6}: server {c['server_per_round_trip']:.2f} per round trip ({_calls(c['calls'])})")
    for key, calls in _floor_mismatches(counts):
        lines.append(f"  WARNING: (h) {key} traps {'+'.join(FLOOR_TRAPS[key])}, but notify trapped "
                     f"{'+'.join(calls)}: FLOOR_TRAPS is out of date")
    lines += ["", "spread (min-max over rounds):"]
    lines.append("  (d) " + ", ".join(f"{w} {spread(samples['startup'][w], 1e3, '{:.1f}')} ms"
                                      for w in ("native", *BACKENDS)))
    lines.append("  (e) " + ", ".join(f"{w} {spread(samples['udp'][w])}/s" for w in ("native", *BACKENDS, "floor")))
    for kind in WEB:
        for mode in ("keepalive", "newconn"):
            lines.append(f"  {kind} {mode}: " + ", ".join(
                f"{v} {spread(values)}" for v, values in samples[kind][mode].items()) + " req/s")
    return "\n".join(lines)


def _floor_mismatches(counts: dict) -> list:
    """(h)'s trapped calls against what notify trapped at least once per new
    connection (per round trip for UDP)."""
    out = []
    for key in FLOOR_TRAPS:
        c = counts[key, "notify"]
        calls = c["calls"] if key == "udp" else c["calls"]["newconn"]
        seen = sorted(name for name, n in calls.items() if n / c["requests"] >= 0.5)
        if seen != sorted(FLOOR_TRAPS[key]):
            out.append((key, seen))
    return out


def med_or(values: list) -> str:
    return f"{statistics.median(values):.0f}"


def _calls(calls: dict) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(calls.items(), key=lambda kv: -kv[1])) or "none"


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
        www = tmp / "www"
        www.mkdir()
        (www / "1k.txt").write_bytes(b"x" * 1023 + b"\n")
        webs = {(kind, variant): Web(kind, variant, tmp, www)
                for kind in WEB for variant in (*VARIANTS, *floor_variants(kind))}
        udps = {which: UdpServer(which, tmp) for which in ("native", *BACKENDS, "floor")}
        for server in [*webs.values(), *udps.values()]:
            server.start(procs)
        samples = {
            "loop": {w: [] for w in ("native", *BACKENDS)},
            "trap": {w: {"n": [], "0": []} for w in ("native", *BACKENDS)},
            "startup": {w: [] for w in ("native", *BACKENDS)},
            "udp": {w: [] for w in ("native", *BACKENDS, "floor")},
            **{kind: {"keepalive": {v: [] for v in VARIANTS},
                      "newconn": {v: [] for v in (*VARIANTS, *floor_variants(kind))}}
               for kind in WEB},
            **{f"{kind}-wrk": {mode: {v: [] for v in ("tcp", *BACKENDS)} for mode in ("keepalive", "newconn")}
               for kind in ("nginx", "caddy")},
        }
        # Warm-up, not recorded: page cache, .pyc files, the servers' first connections.
        for b in BACKENDS:
            run(redirect(b, REJECT_RULE[1]) + ["/bin/true"], timeout=30)
        for web in webs.values():
            load(web, share(200, web.variant), cfg["concurrency"], keepalive=False)
            load(web, share(500, web.variant), cfg["concurrency"], keepalive=True)
        for which, udp in udps.items():
            udp_load(udp, share(200, which), cfg["udp_concurrency"])
        for r in range(cfg["rounds"]):
            t0 = time.monotonic()
            one_round(r, cfg, webs, udps, samples)
            print(f"bench: round {r + 1}/{cfg['rounds']} done in {time.monotonic() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        for (kind, variant), web in webs.items():
            status = procs.stop(web.proc)
            if status not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
                raise BenchError(f"{kind} ({variant}) did not shut down cleanly (exit {status}):\n"
                                 f"{web.log.read_text(errors='replace')[-1000:]}")
        for (kind, variant), web in webs.items():
            text = web.log.read_text(errors="replace")
            if variant in BACKENDS and kind == "go" and ("bad-remote-addr" in text or "bad-addr " in text):
                raise BenchError(f"the Go server under {variant} saw non-IP remote addresses")
        for udp in udps.values():
            procs.stop(udp.proc)
        print("bench: counting trapped calls", file=sys.stderr, flush=True)
        counts = count_calls(cfg, tmp, www, procs)
        info["loadavg_end"] = os.getloadavg()
        info["bench_seconds"] = round(time.monotonic() - started, 1)
        summary = summarise(samples, cfg)
        print(report(summary, samples, counts, cfg, info))
        print(f"\n(total {info['bench_seconds']:.0f} s; load average at end {info['loadavg_end'][0]:.2f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"config": cfg, "machine": info, "samples": samples,
                           "counts": {" ".join(k): v for k, v in counts.items()}}, f, indent=2)
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
