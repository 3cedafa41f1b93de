"""Every number the package copies by hand (where Python's socket, fcntl and
select modules do not export it, or where importing them would cost
start-up time), against the system's C headers: a C program prints them,
built here with the compiler that builds the fixtures."""
from __future__ import annotations

import subprocess

import pytest

from redirect import kernel, seccomp_filter, sockaddr, socketfile, swap, tracee
from redirect.handlers import bind_connect, datagram_send, receive, sockopt
from redirect.rules import model

# (where, name there, C expression). Kernel-internal values that no header
# exports (ERESTARTSYS...) are not here.
COPIES = [
    (seccomp_filter, "SO_PROTOCOL", "SO_PROTOCOL"), (seccomp_filter, "SO_DOMAIN", "SO_DOMAIN"),
    (seccomp_filter, "SOL_SOCKET", "SOL_SOCKET"), (seccomp_filter, "AF_INET", "AF_INET"),
    (seccomp_filter, "AF_INET6", "AF_INET6"), (seccomp_filter, "_SOCK_PACKET", "SOCK_PACKET"),
    (seccomp_filter, "CLONE_UNTRACED", "CLONE_UNTRACED"),
    (seccomp_filter, "SECCOMP_FILTER_FLAG_NEW_LISTENER", "SECCOMP_FILTER_FLAG_NEW_LISTENER"),
    (sockaddr, "AF_UNSPEC", "AF_UNSPEC"), (sockaddr, "AF_UNIX", "AF_UNIX"), (sockaddr, "AF_INET", "AF_INET"),
    (sockaddr, "AF_INET6", "AF_INET6"), (model, "_SOCK_STREAM", "SOCK_STREAM"), (model, "_SOCK_DGRAM", "SOCK_DGRAM"),
    (socketfile, "SO_ACCEPTCON", "__SO_ACCEPTCON"),
    (swap, "F_GETOWN_EX", "F_GETOWN_EX"), (swap, "F_SETOWN_EX", "F_SETOWN_EX"),
    (tracee, "_EPOLL_CTL_ADD", "EPOLL_CTL_ADD"),
    (sockopt, "_TCP_LISTEN", "TCP_LISTEN"),
    (receive, "IP_PKTINFO", "IP_PKTINFO"), (receive, "IP_RECVTTL", "IP_RECVTTL"),
    (receive, "MSG_WAITFORONE", "MSG_WAITFORONE"),
    (datagram_send, "_UDP_SEGMENT", "UDP_SEGMENT"), (bind_connect, "_SOCK_PACKET", "SOCK_PACKET"),
] + [(kernel, name, name) for name in (
    "PTRACE_CONT", "PTRACE_SYSCALL", "PTRACE_GETEVENTMSG", "PTRACE_SEIZE", "PTRACE_LISTEN",
    "PTRACE_GET_SYSCALL_INFO", "PTRACE_O_TRACESYSGOOD", "PTRACE_O_TRACEFORK", "PTRACE_O_TRACEVFORK",
    "PTRACE_O_TRACECLONE", "PTRACE_O_TRACEEXEC", "PTRACE_O_TRACESECCOMP", "PTRACE_O_EXITKILL",
    "PTRACE_EVENT_FORK", "PTRACE_EVENT_VFORK", "PTRACE_EVENT_CLONE", "PTRACE_EVENT_EXEC", "PTRACE_EVENT_SECCOMP",
    "PTRACE_EVENT_STOP", "PR_SET_PDEATHSIG", "PR_SET_DUMPABLE", "PR_SET_NO_NEW_PRIVS", "PR_SET_CHILD_SUBREAPER",
    "SECCOMP_SET_MODE_FILTER", "SECCOMP_GET_ACTION_AVAIL", "SECCOMP_FILTER_FLAG_NEW_LISTENER",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_RET_USER_NOTIF", "SECCOMP_USER_NOTIF_FLAG_CONTINUE",
    "SECCOMP_ADDFD_FLAG_SETFD", "SECCOMP_ADDFD_FLAG_SEND", "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP",
    "PTRACE_SYSCALL_INFO_SECCOMP", "PTRACE_SYSCALL_INFO_ENTRY")
] + [(kernel, ours, c) for ours, c in (
    ("WALL", "__WALL"), ("NOTIF_RECV", "SECCOMP_IOCTL_NOTIF_RECV"), ("NOTIF_SEND", "SECCOMP_IOCTL_NOTIF_SEND"),
    ("NOTIF_ID_VALID", "SECCOMP_IOCTL_NOTIF_ID_VALID"), ("NOTIF_ADDFD", "SECCOMP_IOCTL_NOTIF_ADDFD"),
    ("NOTIF_SET_FLAGS", "SECCOMP_IOCTL_NOTIF_SET_FLAGS"), ("_NETLINK_SOCK_DIAG", "NETLINK_SOCK_DIAG"),
    ("_SOCK_DIAG_BY_FAMILY", "SOCK_DIAG_BY_FAMILY"), ("_NLM_F_REQUEST", "NLM_F_REQUEST"),
    ("_NLMSG_ERROR", "NLMSG_ERROR"), ("_UDIAG_SHOW_VFS", "UDIAG_SHOW_VFS"), ("_UNIX_DIAG_VFS", "UNIX_DIAG_VFS"),
    ("_RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_MAGICLINKS"), ("_RESOLVE_NO_SYMLINKS", "RESOLVE_NO_SYMLINKS"),
    ("_LANDLOCK_CREATE_RULESET_VERSION", "LANDLOCK_CREATE_RULESET_VERSION"),
    ("_LANDLOCK_ACCESS_FS_EXECUTE", "LANDLOCK_ACCESS_FS_EXECUTE"),
    ("_LANDLOCK_RULE_PATH_BENEATH", "LANDLOCK_RULE_PATH_BENEATH"))]
# Newer than Debian 12's headers (linux-libc-dev 6.1): checked where the headers have them.
NEWER_THAN_HEADERS = {"SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP": "6.6", "SECCOMP_IOCTL_NOTIF_SET_FLAGS": "6.6"}

HEADERS = """#define _GNU_SOURCE
#include <stdio.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/ptrace.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/net.h>
#include <linux/udp.h>
#include <linux/seccomp.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/openat2.h>
#include <linux/landlock.h>
"""


@pytest.fixture(scope="module")
def from_headers(tmp_path_factory) -> dict[str, int]:
    build = tmp_path_factory.mktemp("constants")
    lines = [HEADERS, "int main(void) {"]
    for _, _, expr in COPIES:
        lines += [f"#ifdef {expr}" if expr in NEWER_THAN_HEADERS else "#if 1",
                  f'    printf("%s %llu\\n", "{expr}", (unsigned long long)({expr}));', "#endif"]
    lines.append("    return 0;\n}")
    (build / "constants.c").write_text("\n".join(lines))
    built = subprocess.run(["cc", "-o", build / "constants", build / "constants.c"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    out = subprocess.run([build / "constants"], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_every_hand_copied_constant_is_the_headers(from_headers):
    wrong = []
    for module, ours, expr in COPIES:
        if expr not in from_headers:
            assert expr in NEWER_THAN_HEADERS, f"{expr}: not in the headers"
            continue
        value = getattr(module, ours)
        if value & 0xFFFFFFFFFFFFFFFF != from_headers[expr]:
            wrong.append(f"{module.__name__}.{ours} = {value:#x}, the headers say {expr} = {from_headers[expr]:#x}")
    assert not wrong, "\n".join(wrong)
    assert set(from_headers) >= {expr for _, _, expr in COPIES} - set(NEWER_THAN_HEADERS)
