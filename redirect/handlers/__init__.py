"""Syscall semantics: one handler per trapped syscall, in terms of sockets and
addresses, never registers, injected calls or notifications.

A handler answers with a result (>= 0 or -errno) or PASS (let the call run:
only where nothing was decided on what the program can still change). What it
needs of the program it asks the backend for: the thread object of the call
(notify.Notified, or tracee.Thread for ptrace; program.ProgramThread has what
both share):

- look: read(addr, n) (ProgramThread: exactly n bytes, or EFAULT; the
  backend gives read_some), write(addr, data), duplicate(fd) (an fd of the
  supervisor's) / borrowed_socket(fd) (the same, as a socket, closed after),
  fd_inode(fd), fds(), identity()
- act: put_socket(sock, [(fd, cloexec)...]) (replace the program's fds),
  give(sock, cloexec, lost) (the call's result is a new fd of sock),
  epoll_add(epfd, fd, events, data), wait(sock, fd, events, timeout)

The acts are generators (`yield from`): the thread may wait in them while the
supervisor serves others. Calls it judged, the supervisor makes itself
(perform.py).

compiled(ctx): the calls on every new connection, whose mechanics the
notify backend makes in C where it can (redirect/_fastpath.c), with what
they mean here: the callbacks and facts C asks.
"""
from __future__ import annotations

from . import accept, bind_connect, containment, datagram_send, receive, send, socknames, sockopt
from .context import Call, Context

__all__ = ["Call", "Context", "HANDLERS", "PASS_UNCONVERTED", "compiled"]

HANDLERS = {
    "bind": bind_connect.bind,
    "connect": bind_connect.connect,
    "listen": bind_connect.listen,
    "accept": accept.accept,
    "accept4": accept.accept,
    "getsockname": socknames.getsockname,
    "getpeername": socknames.getpeername,
    "getsockopt": sockopt.getsockopt,
    "setsockopt": sockopt.setsockopt,
    "sendto": send.sendto,
    "sendmsg": send.sendmsg,
    "sendmmsg": send.sendmmsg,
    "recvfrom": receive.recvfrom,
    "recvmsg": receive.recvmsg,
    "recvmmsg": receive.recvmmsg,
    "socket": bind_connect.sealed_socket,
    "seccomp": containment.seccomp,
    "clone": containment.clone,
    "pidfd_getfd": containment.other_processes,
    "ptrace": containment.other_processes,
    "process_vm_writev": containment.other_processes,
}

# Calls the handlers let run whenever nothing is converted yet (not
# registry.converted(): identify() says None of every socket; not
# setsockopt: --sealed refuses joins): the compiled loop answers them
# CONTINUE itself.
PASS_UNCONVERTED = ("accept", "accept4", "getsockname")


def compiled(ctx) -> tuple:
    """What the notify backend's compiled calls mean (redirect/_fastpath.c's
    serve): the accept plan, getsockname's address, setsockopt's result,
    the options C answers alone on connections it accepted, where it
    keeps what they set, and the datagram sockets' family, senders and
    destinations."""
    return (accept.compiled_plan(ctx), socknames.compiled_getsockname(ctx), sockopt.compiled_setsockopt(ctx),
            sockopt.COMPILED_OPTIONS, ctx.registry.set_options, *receive.compiled_datagrams(ctx),
            datagram_send.compiled_destination(ctx))
