"""The seccomp filter the program runs under: trap only what the handlers need.

Everything else runs at native speed. The filter's TRACE data tells the
supervisor which ABI a trapped call came from.
"""
from __future__ import annotations

import errno
import socket

from .kernel import pyseccomp as sc

TRACE_NATIVE = 1
TRACE_I386 = 2   # int 0x80 socket calls: refused with a log line, we do not translate them

SO_PROTOCOL, SO_DOMAIN = 38, 39

# Trapped whatever their arguments.
_ALWAYS = ["bind", "connect", "listen", "accept", "accept4", "getsockname", "getpeername",
           "close", "dup2", "dup3", "close_range", "sendmsg", "sendmmsg", "recvmsg", "recvmmsg"]
# Every socket call of the i386 ABI (int 0x80), direct or through socketcall():
# refused, all of them, so none is left for a program to go around the rules.
_I386 = ["socket", "socketpair", "bind", "connect", "listen", "accept", "accept4", "getsockname", "getpeername",
         "send", "recv", "sendto", "recvfrom", "shutdown", "setsockopt", "getsockopt", "sendmsg", "recvmsg",
         "sendmmsg", "recvmmsg"]
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
_OTHER_PROCESSES = ("pidfd_getfd", "ptrace", "process_vm_writev")
_SOCK_PACKET = 10
CLONE_UNTRACED = 0x00800000


# Sealed: socket families that can reach a network but no rule can convert
# (AF_PACKET, AF_XDP, AF_VSOCK, CAN, Bluetooth...). Unix, IP and netlink stay.
_SEALED_OPEN_FAMILIES = (1, 2, 10, 16)


def build(sealed: bool = False) -> sc.SyscallFilter:
    native = sc.SyscallFilter(sc.ALLOW)
    # x32 calls (nr | 0x40000000) are a third ABI: refuse them outright.
    native.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    trace = sc.TRACE(TRACE_NATIVE)
    for name in _ALWAYS:
        native.add_rule(trace, name)
    # sendto without an address goes to the connected peer: nothing to decide.
    native.add_rule(trace, "sendto", sc.Arg(4, sc.NE, 0))
    # recvfrom without an address buffer reveals nothing about the sender.
    native.add_rule(trace, "recvfrom", sc.Arg(4, sc.NE, 0))
    # SOL_SOCKET options work on Unix sockets, except these two which would say AF_UNIX.
    native.add_rule(trace, "getsockopt", sc.Arg(1, sc.NE, socket.SOL_SOCKET))
    for name in (SO_DOMAIN, SO_PROTOCOL):
        native.add_rule(trace, "getsockopt", sc.Arg(1, sc.EQ, socket.SOL_SOCKET), sc.Arg(2, sc.EQ, name))
    native.add_rule(trace, "setsockopt", sc.Arg(1, sc.NE, socket.SOL_SOCKET))
    if sealed:
        for family in range(3, 17):
            if family not in _SEALED_OPEN_FAMILIES:
                native.add_rule(trace, "socket", sc.Arg(0, sc.EQ, family))
        native.add_rule(trace, "socket", sc.Arg(0, sc.GT, 16))
        # Sockets of other processes (outside the tree, or the supervisor's
        # siblings) are not the program's to use.
        for name in _OTHER_PROCESSES:
            native.add_rule(trace, name)
        # socket(AF_INET, SOCK_PACKET) is a packet socket in an IP family's clothes.
        for family in (socket.AF_INET, socket.AF_INET6):
            native.add_rule(trace, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(1, sc.MASKED_EQ, 0xF, _SOCK_PACKET))
    # io_uring would run socket calls where no filter sees them; programs fall back.
    native.add_rule(sc.ERRNO(errno.ENOSYS), "io_uring_setup")
    # A filter of the program's own with a listener outranks ours (its CONTINUE
    # runs a call natively): refused. Other filters can only refuse more.
    native.add_rule(trace, "seccomp", sc.Arg(1, sc.MASKED_EQ, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                                              SECCOMP_FILTER_FLAG_NEW_LISTENER))
    # A child we do not trace could be traced by the program, whose tracer
    # would let its calls through: CLONE_UNTRACED is refused, and clone3
    # (whose flags are in memory) says ENOSYS, so libc uses clone.
    native.add_rule(trace, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_UNTRACED, CLONE_UNTRACED))
    native.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")

    compat = sc.SyscallFilter(sc.ALLOW)
    compat.remove_arch(sc.Arch.NATIVE)
    compat.add_arch(sc.Arch.X86)
    for name in _I386:  # libseccomp also covers the socketcall() multiplexer for these
        compat.add_rule(sc.TRACE(TRACE_I386), name)
    # What would take a program out of sight through int 0x80 as well: its own
    # listener, an untraced child, and (sealed) other processes' sockets.
    for name in ("seccomp", "clone3", "io_uring_setup") + (_OTHER_PROCESSES if sealed else ()):
        compat.add_rule(sc.TRACE(TRACE_I386), name)
    compat.add_rule(sc.TRACE(TRACE_I386), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_UNTRACED, CLONE_UNTRACED))
    native.merge(compat)
    return native
