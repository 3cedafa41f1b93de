"""The notify backend's own logic, on its own: what a call the supervisor
holds answers for the signals /proc/TID/status shows (notify.signal_answer),
on this machine's real status format with the signal fields set."""
from __future__ import annotations

import errno
import re
import signal

from redirect.notify import signal_answer

RESTART = -512  # ERESTARTSYS: the kernel delivers the signal and restarts or fails the call
USR1 = 1 << (signal.SIGUSR1 - 1)


def status(pending: int = 0, shared: int = 0, blocked: int = 0, threads: int = 2) -> bytes:
    with open("/proc/self/status", "rb") as own:
        text = own.read()
    for name, value in ((b"SigPnd", f"{pending:016x}"), (b"ShdPnd", f"{shared:016x}"),
                        (b"SigBlk", f"{blocked:016x}"), (b"Threads", str(threads))):
        text, n = re.subn(rb"^" + name + rb":\t.*$", name + b":\t" + value.encode(), text, flags=re.M)
        assert n == 1, name
    return text


def test_a_signal_of_the_thread_itself_restarts_or_fails_the_call():
    assert signal_answer(status(pending=USR1), tid=11, tgid=10) == RESTART
    assert signal_answer(status(pending=USR1, blocked=USR1), tid=11, tgid=10) == 0  # blocked: it waits
    assert signal_answer(status(), tid=11, tgid=10) == 0


def test_a_signal_of_the_process_goes_to_the_leader_or_the_only_thread():
    assert signal_answer(status(shared=USR1), tid=10, tgid=10) == RESTART
    assert signal_answer(status(shared=USR1, threads=1), tid=11, tgid=10) == RESTART
    assert signal_answer(status(shared=USR1, blocked=USR1), tid=10, tgid=10) == 0


def test_a_signal_of_the_process_and_the_other_threads():
    # Another thread might take it: the backend must look at the others first.
    assert signal_answer(status(shared=USR1), tid=11, tgid=10) == 1
    # Every other thread blocks it: this one is the kernel's choice.
    assert signal_answer(status(shared=USR1), tid=11, tgid=10, others=[status(blocked=USR1)]) == RESTART
    # One of them does not, yet it waits on: the kernel chose a waiting thread, maybe this one.
    assert signal_answer(status(shared=USR1), tid=11, tgid=10,
                         others=[status(blocked=USR1), status()]) == -errno.EINTR
