"""The Python API: run programs under redirect from Python, as with subprocess.

    from redirect import Rule, run, spawn
    with spawn(["./server", "-addr", ":8080"], rules=[Rule.parse("in,port=8080,path=" + sock)]) as proc:
        proc.wait_for_socket(sock, timeout=5)
        ...
    result = run(["./client"], rules=["out,port=8080,path=" + sock], capture_output=True, text=True)

Each program runs under its own supervisor, a `python -m redirect` child
process, so nothing blocks the caller and a crash of either side cannot take
the caller down. Rules are checked here first: a bad rule raises the same
RuleError (with its caret) that the command line prints.
"""
from __future__ import annotations

import collections
import errno
import inspect
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence

from .rules import Action, Direction, Rule, RuleError, escape_value, format_rule, parse_rule

__all__ = ["Rule", "RuleError", "Process", "spawn", "run", "rule"]

RuleLike = Rule | str
# The supervisor runs this very package, wherever it was imported from (not
# whatever `redirect` the child's sys.path or working directory would find).
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The supervisor also dies (SIGTERM: its program is stopped, its files removed)
# if the caller is killed outright (PR_SET_PDEATHSIG), so nothing outlives a
# test run that was SIGKILLed.
_LAUNCH = ("import ctypes, sys; ctypes.CDLL(None).prctl(1, 15); sys.path.insert(0, sys.argv.pop(1)); "
           "from redirect.cli import console; console()")


def rule(*, direction: str | None = None, type: str | None = None, address: str | None = None,  # noqa: A002
         port: int | tuple[int, int] | None = None, path: str | os.PathLike | None = None,
         abstract: str | None = None, systemd: str | bool | None = None, reject: str | int | bool | None = None,
         blackhole: bool = False, ignore: bool = False, from_unix: str | None = None,
         from_abstract: str | None = None, noremove: bool = False, mode: int | str | None = None,
         owner: str | int | None = None, group: str | int | None = None) -> Rule:
    """A rule from keyword arguments: rule(direction="in", port=8080, path="/run/app.sock").
    Checked exactly like a rule string (the same RuleError)."""
    items: list[str] = []
    if direction is not None:
        items.append(direction)
    if type is not None:
        items.append(type)
    for key, value in (("addr", address), ("from-unix", from_unix), ("from-abstract", from_abstract)):
        if value is not None:
            items.append(f"{key}={escape_value(str(value))}")
    if isinstance(port, (tuple, list)):
        if len(port) != 2:
            raise ValueError(f"port=: one port or a (first, last) pair, not {port!r}")
        items.append(f"port={port[0]}-{port[1]}")
    elif port is not None:
        items.append(f"port={port}")
    actions = {"path": path, "abstract": abstract}
    for key, value in actions.items():
        if value is not None:
            items.append(f"{key}={escape_value(os.fspath(value))}")
    for key, value in (("systemd", systemd), ("reject", reject)):
        if value is True:
            items.append(key)
        elif value not in (None, False):
            items.append(f"{key}={escape_value(str(value))}")
    items += [flag for flag, on in (("blackhole", blackhole), ("ignore", ignore), ("noremove", noremove)) if on]
    if isinstance(mode, bool):
        raise ValueError("mode=: the permission bits, like 0o660 or '0660'")
    if mode is not None:
        items.append(f"mode={mode:04o}" if isinstance(mode, int) else f"mode={mode}")
    for key, value in (("owner", owner), ("group", group)):
        if value is not None:
            items.append(f"{key}={escape_value(str(value))}")
    return parse_rule(",".join(items))


def _rule(item: RuleLike) -> Rule:
    return item if isinstance(item, Rule) else parse_rule(item)


def command(args: Sequence[str | os.PathLike], rules: Iterable[RuleLike] = (), *, sealed: bool = False,
            activate: bool = False, on_demand: bool = False, verbose: int = 0) -> list[str]:
    """The redirect command line for a program and its rules."""
    argv = [sys.executable, "-c", _LAUNCH, _PACKAGE_PARENT] + ["-v"] * verbose
    argv += [flag for flag, on in (("--sealed", sealed), ("--activate", activate), ("--on-demand", on_demand)) if on]
    for item in rules:
        argv += ["-r", format_rule(_rule(item))]
    return argv + ["--"] + [os.fspath(a) for a in args]


# What Popen takes besides args (a typo is our TypeError, naming it).
_POPEN_KEYWORDS = set(inspect.signature(subprocess.Popen).parameters) - {"args", "self", "shell"}
_LOG_LINES = 20  # kept for the exceptions that say why redirect stopped


def _program_args(args, shell: bool) -> list[str]:
    """As subprocess takes them: a string or path is one program (or, with
    shell=True, the command line for /bin/sh -c)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        args = [args]
    args = [os.fsdecode(a) for a in args]
    return ["/bin/sh", "-c", *args] if shell else args


def _check_program(name: str, env) -> None:
    """FileNotFoundError or PermissionError now, as subprocess raises them,
    rather than a supervisor exiting 127/126 later."""
    if os.sep in name:
        found = name if os.path.exists(name) else None
    else:
        found = shutil.which(name, mode=os.F_OK, path=(env or os.environ).get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)


class Process(subprocess.Popen):
    """A program running under redirect: a subprocess.Popen of its supervisor
    (pid, returncode, wait, communicate, terminate... as usual; the supervisor
    forwards signals and ends as the program ended: its exit status, or -N
    when signal N killed it), plus waiting for socket files and a clean-up
    that leaves no process and no socket behind.

    redirect's own log lines go to `log` (a file object; default: this
    process's stderr), never into the program's stderr."""

    def __init__(self, args, rules: Iterable[RuleLike] = (), *, sealed: bool = False, activate: bool = False,
                 on_demand: bool = False, verbose: int = 0, log=None, shell: bool = False, **popen_kwargs) -> None:
        unknown = sorted(set(popen_kwargs) - _POPEN_KEYWORDS)
        if unknown:
            raise TypeError(f"spawn() got an unexpected keyword argument {unknown[0]!r}")
        self.rules = [_rule(item) for item in rules]   # raises RuleError before anything starts
        self.program_args = _program_args(args, shell)
        _check_program(self.program_args[0], popen_kwargs.get("env"))
        self.log_lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        read_end, write_end = os.pipe()
        argv = command(self.program_args, self.rules, sealed=sealed, activate=activate, on_demand=on_demand,
                       verbose=verbose)
        argv[4:4] = ["--log-fd", str(write_end), "--die-like-program"]
        popen_kwargs["pass_fds"] = tuple(popen_kwargs.get("pass_fds", ())) + (write_end,)
        try:
            super().__init__(argv, **popen_kwargs)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._log_thread = threading.Thread(target=self._forward_log, args=(read_end, log), daemon=True)
        self._log_thread.start()
        self.program_pid = self._wait_for_program()

    def _forward_log(self, read_end: int, log) -> None:
        with open(read_end, "r", errors="replace") as lines:
            for line in lines:
                self.log_lines.append(line.rstrip("\n"))
                out = log if log is not None else sys.stderr
                try:
                    out.write(line)
                    out.flush()
                except (OSError, ValueError):
                    pass

    def _wait_for_program(self, timeout: float = 10) -> int | None:
        """The program's pid (the supervisor's child) once it is forked; None
        if redirect ended first."""
        from .program import children_of

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = children_of(self.pid)
            if pids:
                return pids[0]
            if self.poll() is not None:
                return None
            time.sleep(0.002)
        return None

    def _log_tail(self) -> str:
        self._log_thread.join(timeout=1)  # (redirect has ended: its last lines are in)
        return "\n".join(self.log_lines)

    def wait_for_socket(self, path: str | os.PathLike, timeout: float = 10) -> None:
        """Until a socket is listening (stream) or bound (datagram) at path.
        Raises TimeoutError, or ChildProcessError if redirect exited first
        (with its last log lines)."""
        path = os.fspath(path)  # "@name": an abstract socket
        deadline = time.monotonic() + timeout
        while True:
            if _socket_ready(path):
                return
            if self.poll() is not None:
                raise ChildProcessError(f"redirect exited with {self.returncode} before {path} appeared; "
                                        f"its last log lines:\n{self._log_tail()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no socket at {path} after {timeout} s")
            time.sleep(0.01)

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM (forwarded to the program, which shuts down as it would), then
        SIGKILL after `timeout`; then remove any socket file a rule names that
        nobody serves any more (left only if redirect itself was killed)."""
        if self.poll() is None:
            program = self.program_pid
            self.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            gone_since = None
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
                if program is not None and not os.path.exists(f"/proc/{program}"):
                    gone_since = gone_since or time.monotonic()
                    if time.monotonic() - gone_since > 0.5:
                        # The program is gone, yet redirect still waits for
                        # something it started (a shell's child): redirect
                        # sends this one to what is left.
                        self.send_signal(signal.SIGTERM)
                        program = None
            if self.poll() is None:
                self.kill()  # the program dies with its supervisor (parent-death signal)
                self.wait()
        for item in self.rules:
            _remove_if_dead(item)
        self._log_thread.join(timeout=1)
        return self.returncode

    def __exit__(self, exc_type, value, traceback) -> None:
        try:
            self.stop()
        finally:
            super().__exit__(exc_type, value, traceback)


def spawn(args, rules: Iterable[RuleLike] = (), *, sealed: bool = False, activate: bool = False,
          on_demand: bool = False, verbose: int = 0, log=None, shell: bool = False, **popen_kwargs) -> Process:
    """Start args under redirect without waiting (like subprocess.Popen, with
    its keyword arguments; a string is one program, or with shell=True a
    command line). Raises FileNotFoundError/PermissionError for a program
    that is not there or not executable; program_pid is set on return."""
    return Process(args, rules, sealed=sealed, activate=activate, on_demand=on_demand, verbose=verbose, log=log,
                   shell=shell, **popen_kwargs)


def run(args, rules: Iterable[RuleLike] = (), *, input=None, capture_output: bool = False,  # noqa: A002
        timeout: float | None = None, check: bool = False, sealed: bool = False, activate: bool = False,
        on_demand: bool = False, verbose: int = 0, log=None, shell: bool = False,
        **popen_kwargs) -> subprocess.CompletedProcess:
    """Run args under redirect to the end, like subprocess.run (check=True
    raises CalledProcessError; returncode -N for a program killed by signal N)."""
    if capture_output:
        popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    with spawn(args, rules, sealed=sealed, activate=activate, on_demand=on_demand, verbose=verbose, log=log,
               shell=shell, **popen_kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            proc.stop(timeout=1)
            raise subprocess.TimeoutExpired(proc.program_args, timeout, expired.output, expired.stderr) from None
    result = subprocess.CompletedProcess(proc.program_args, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


# ---- socket files --------------------------------------------------------------------

def _socket_ready(path: str) -> bool:
    from .socketfile import SO_ACCEPTCON, bound_at

    try:
        if not path.startswith("@") and not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return any(kind != socket.SOCK_STREAM or flags & SO_ACCEPTCON for kind, flags in bound_at(os.fsencode(path)))


def _remove_if_dead(item: Rule) -> None:
    """A rule's socket file that nobody is bound to any more goes."""
    from .activation import fixed_target  # the rule's path, when it does not depend on the bind
    from .socketfile import clear_stale

    if item.direction != Direction.IN or item.action != Action.PATH or item.noremove:
        return
    target = fixed_target(item)
    if target is None:
        return
    real, kind = target
    # If redirect was killed, the program dies a moment later (PTRACE_O_EXITKILL):
    # until then its socket is alive and must stay.
    for _ in range(50):
        if clear_stale(real.name, kind.sock_type) == 0:
            return
        time.sleep(0.02)
