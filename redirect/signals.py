"""Signals sent to redirect are the program's: SIGINT, SIGTERM, SIGHUP,
SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to it (and once it has exited, to
what is left of its tree), so that redirect stops, reloads or rotates what
it runs as the program itself would. Before the program runs, one ends
redirect (through its clean-up: no socket file it made is left)."""
from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
_TICK = 0.2  # seconds: the longest a final close of the program's file can hold the supervisor


class StoppedIdle(Exception):
    """A signal to stop while --on-demand waits, the program not running."""


class Forwarder:
    """The handler of FORWARDED, for the supervisor `sup`: it reads the
    program's state there (main_pid, main_status, idle, backend.pids())."""

    def __init__(self, sup) -> None:
        self.sup = sup
        self.stopping = False  # --on-demand: not started again once it ends
        self.wakeup = -1       # readable when a signal came (a backend's loop watches it)

    def install(self) -> None:
        # Kept to the end: a late signal must not kill redirect in the middle of clean-up.
        for sig in FORWARDED:
            signal.signal(sig, self)
        # Python runs a handler between two bytecodes: a signal that comes
        # just before the loop blocks in epoll_wait (no timeout) would wait
        # there for the program's next trapped call, maybe forever. The
        # wakeup fd turns it into an event the loop sees.
        if self.wakeup < 0:
            self.wakeup, notify = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(notify, warn_on_full_buffer=False)
        # The last close of a program's file can be the supervisor's: reading
        # /proc/PID/fd/N, or taking a duplicate, holds the file for a moment,
        # and the program may close its fd just then. For a TCP socket with
        # SO_LINGER and unsent data that close waits up to the linger time (an
        # hour), and every trapped call with it. A pending signal ends that wait
        # (sk_stream_wait_close): a tick bounds it. (Interrupted calls are
        # made again: Python's, and the compiled ones', see _fastpath.c.)
        signal.signal(signal.SIGALRM, _tick)
        signal.setitimer(signal.ITIMER_REAL, _TICK, _TICK)

    def uninstall(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def drain(self) -> None:
        try:
            os.read(self.wakeup, 4096)
        except BlockingIOError:
            pass

    def __call__(self, sig: int, frame) -> None:
        sup = self.sup
        if not sup.main_pid and sup.idle:
            raise StoppedIdle
        if not sup.main_pid:
            from .child import SpawnError

            raise SpawnError(f"stopped by signal {sig} before the program started", 128 + sig)
        if sig in _STOPPING:
            self.stopping = True
        if sig in (signal.SIGINT, signal.SIGQUIT) and _terminal_sent_it():
            return  # the terminal sent it to the program's process group already
        targets = [sup.main_pid] if sup.main_status is None else sup.backend.pids()
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _tick(sig: int, frame) -> None:
    """SIGALRM: nothing to do; its coming is what counts."""


def _terminal_sent_it() -> bool:
    """Heuristic: we are in the terminal's foreground process group, so a ^C or ^\\
    reached the program (same group) directly."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False
