"""The seccomp filter the program runs under: trap only what the handlers need.

Everything else runs at native speed. The filter's TRACE data tells the
supervisor which ABI a trapped call came from.
"""
from __future__ import annotations

import errno

from .kernel import SeccompFilter, seccomp as sc
from .rules import Direction, SocketType

TRACE_NATIVE = 1
TRACE_I386 = 2   # int 0x80 socket calls: refused with a log line, we do not translate them

SO_PROTOCOL, SO_DOMAIN = 38, 39
SOL_SOCKET, AF_INET, AF_INET6 = 1, 2, 10  # (not from socket: its import is ~2 ms of start-up)

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


def needs(rules, sealed: bool) -> set[str]:
    """Which groups of calls the rules and options make the supervisor judge
    (pure): a program whose rules cannot apply to datagrams pays nothing for
    its datagram calls, one with only in rules nothing for connects..."""
    def may(direction: Direction, kind: SocketType) -> bool:
        return sealed or any(r.direction in (None, direction) and r.socket_type in (None, kind) for r in rules)
    groups = set()
    if rules or sealed:
        groups |= {"names", "options", "bind", "connect"}
    if may(Direction.IN, SocketType.STREAM):
        groups |= {"listen", "accept"}
    if rules or sealed:
        # A converted stream socket's receives would show a Unix peer's path.
        groups.add("receive")
    if may(Direction.IN, SocketType.DGRAM) or may(Direction.OUT, SocketType.DGRAM):
        groups |= {"send", "listen"}
    elif may(Direction.OUT, SocketType.STREAM):
        groups.add("send")  # sendto/sendmsg with an address: TCP Fast Open connects
    return groups


_GROUPS = {
    "names": ["getsockname", "getpeername"],
    "bind": ["bind"],
    "connect": ["connect"],
    "listen": ["listen"],
    "accept": ["accept", "accept4"],
    "send": ["sendmsg", "sendmmsg"],
    "receive": ["recvmsg", "recvmmsg"],
}


def build(rules=(), sealed: bool = False, backend: str = "ptrace") -> SeccompFilter:
    """The filter for these rules: TRACE actions for the ptrace backend,
    USER_NOTIF for the notify one."""
    groups = needs(rules, sealed)
    native = SeccompFilter(sc.ALLOW)
    # x32 calls (nr | 0x40000000) are a third ABI: refuse them outright.
    native.set_attr(sc.ATTR_ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
    # A binary search over syscall numbers rather than a list: every syscall
    # of the program runs the filter, most of them to the end (allowed).
    native.set_attr(sc.ATTR_CTL_OPTIMIZE, 2)
    trace = sc.TRACE(TRACE_NATIVE) if backend == "ptrace" else sc.NOTIFY
    for group in groups:
        for name in _GROUPS.get(group, ()):
            native.add_rule(trace, name)
    if "send" in groups:
        # sendto without an address goes to the connected peer: nothing to decide.
        native.add_rule(trace, "sendto", (4, sc.NE, 0))
    if "receive" in groups:
        # recvfrom without an address buffer reveals nothing about the sender.
        native.add_rule(trace, "recvfrom", (4, sc.NE, 0))
    if "options" in groups:
        # The kernel reads level and name as 32-bit ints, the filter all 64
        # bits: a call with anything in the upper halves is trapped (the
        # handler sees what the kernel will).
        for name in ("getsockopt", "setsockopt"):
            for arg in (1, 2):
                native.add_rule(trace, name, (arg, sc.GT, 0xFFFFFFFF))
        # SOL_SOCKET options work on Unix sockets, except these two which would say AF_UNIX.
        native.add_rule(trace, "getsockopt", (1, sc.NE, SOL_SOCKET))
        for name in (SO_DOMAIN, SO_PROTOCOL):
            native.add_rule(trace, "getsockopt", (1, sc.EQ, SOL_SOCKET), (2, sc.EQ, name))
        native.add_rule(trace, "setsockopt", (1, sc.NE, SOL_SOCKET))
    if sealed:
        for arg in (0, 1):  # family and type are 32-bit: anything in the upper halves is trapped
            native.add_rule(trace, "socket", (arg, sc.GT, 0xFFFFFFFF))
        for family in range(3, 17):
            if family not in _SEALED_OPEN_FAMILIES:
                native.add_rule(trace, "socket", (0, sc.EQ, family))
        native.add_rule(trace, "socket", (0, sc.GT, 16))
        # Sockets of other processes (outside the tree, or the supervisor's
        # siblings) are not the program's to use.
        for name in _OTHER_PROCESSES:
            native.add_rule(trace, name)
        # socket(AF_INET, SOCK_PACKET) is a packet socket in an IP family's clothes.
        for family in (AF_INET, AF_INET6):
            native.add_rule(trace, "socket", (0, sc.EQ, family), (1, sc.MASKED_EQ, 0xF, _SOCK_PACKET))
    # io_uring would run socket calls where no filter sees them; programs fall back.
    native.add_rule(sc.ERRNO(errno.ENOSYS), "io_uring_setup")
    if backend == "ptrace":
        # A filter of the program's own with a listener outranks ours (its
        # CONTINUE runs a call natively): refused. (Under the notify backend
        # the kernel refuses a second listener itself: EBUSY.)
        native.add_rule(trace, "seccomp", (1, sc.MASKED_EQ, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                                                  SECCOMP_FILTER_FLAG_NEW_LISTENER))
        # A child we do not trace could be traced by the program, whose tracer
        # would let its calls through: CLONE_UNTRACED is refused, and clone3
        # (whose flags are in memory) says ENOSYS, so libc uses clone. (A
        # user notification reaches every child, traced or not.)
        native.add_rule(trace, "clone", (0, sc.MASKED_EQ, CLONE_UNTRACED, CLONE_UNTRACED))
        native.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")

    compat = SeccompFilter(sc.ALLOW)
    compat.remove_native_arch()
    compat.add_arch(sc.ARCH_X86)
    # Refused with a line in the log (the notify backend tells the ABI by the
    # notification's arch).
    refuse = sc.TRACE(TRACE_I386) if backend == "ptrace" else sc.NOTIFY
    for name in _I386:  # libseccomp also covers the socketcall() multiplexer for these
        compat.add_rule(refuse, name)
    # What would take a program out of sight through int 0x80 as well: its own
    # listener, an untraced child, and (sealed) other processes' sockets.
    for name in ("io_uring_setup",) + (_OTHER_PROCESSES if sealed else ()):
        compat.add_rule(refuse, name)
    if backend == "ptrace":
        for name in ("seccomp", "clone3"):
            compat.add_rule(refuse, name)
        compat.add_rule(refuse, "clone", (0, sc.MASKED_EQ, CLONE_UNTRACED, CLONE_UNTRACED))
    native.merge(compat)
    return native
