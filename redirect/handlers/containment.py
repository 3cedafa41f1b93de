"""What would take a program out of the supervisor's sight: a seccomp
listener of its own (its CONTINUE outranks our trap), a child created
untraced (the program could trace it itself and let its calls through), and,
in sealed mode, other processes' sockets and memory. Each is refused, with a
line in the log. The filter traps these calls only with the arguments that
matter (seccomp_filter.py), so this costs nothing otherwise."""
from __future__ import annotations

import errno

from .context import Call


def seccomp(call: Call) -> int:
    """seccomp(SECCOMP_SET_MODE_FILTER, ...|SECCOMP_FILTER_FLAG_NEW_LISTENER):
    EBUSY, what the kernel says where another listener exists already."""
    call.ctx.log(0, f"{call.describe()}: a seccomp filter with its own listener is refused (EBUSY): its "
                    "answers would run socket calls past redirect")
    return -errno.EBUSY


def clone(call: Call) -> int:
    call.ctx.log(0, f"{call.describe()}: CLONE_UNTRACED is refused (EPERM): redirect must follow every "
                    "process the program starts")
    return -errno.EPERM


def other_processes(call: Call) -> int:
    """Sealed mode only: pidfd_getfd, ptrace and process_vm_writev."""
    call.ctx.log(0, f"{call.describe()}: sealed: {call.name}() is refused (EPERM): the program may not use "
                    "other processes' sockets or memory")
    return -errno.EPERM

