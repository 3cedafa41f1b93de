"""accept() and accept4(): connections to a converted listener come from an IP peer."""
from __future__ import annotations

import errno
import os
import socket

from .. import sockaddr
from ..program import PASS
from ..registry import Accepted, Listener
from ..sockaddr import IPAddr
from . import perform
from .context import Call, on_socket
from .identify import peer_uid
from .memory import read_room, write_sockaddr


def accept(call: Call):
    fd, addr = call.args[:2]
    if addr == 0:
        return PASS  # nothing to fake
    inode = call.thread.fd_inode(fd)
    listener = call.ctx.registry.listener_inodes.get(inode) if inode is not None else None
    if listener is None or not isinstance(listener.visible, IPAddr):
        return PASS
    room = read_room(call, call.args[2])
    if room is None:
        return PASS
    return on_socket(call, lambda sock: _accept(call, listener, sock, room))


def _accept(call: Call, listener: Listener, sock, room: int):
    # The supervisor accepts, writes the IP peer address the program expects,
    # then gives the connection to the program as the call's result.
    flags = call.args[3] if call.name == "accept4" else 0
    if flags & ~(socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC):
        return -errno.EINVAL  # as accept4 says, taking no connection
    conn = yield from perform.accept(call, call.args[0], sock, flags)
    if isinstance(conn, int):
        return conn
    inode, uid = os.fstat(conn.fileno()).st_ino, peer_uid(conn)
    peer = accepted(call.ctx, listener, inode, uid)
    if call.ctx.verbosity >= 2:  # (never compiled)
        call.ctx.log(2, f"{call.describe()}: {listener.visible}: accepted a connection from {peer} "
                        f"(uid {uid}) on {listener.real}")
    err = write_sockaddr(call, call.args[1], call.args[2], sockaddr.pack(peer), room)
    if err:
        conn.close()
        return err
    kept = call.ctx.kept.setdefault(listener.inode, [])
    return (yield from call.thread.give(conn, bool(flags & socket.SOCK_CLOEXEC), lost=kept.append))


def accepted(ctx, listener: Listener, inode: int, uid: int | None) -> IPAddr:
    """A connection the supervisor accepted on the listener: recorded (later
    getpeername/getsockname need no look), and the IP address of the peer
    the program is shown."""
    ctx.registry.add_accepted(inode, Accepted(listener, uid))
    return sockaddr.peer_of_connection(listener.visible, inode, uid)


def compiled_plan(ctx):
    """For the notify backend's compiled accept (redirect/_fastpath.c), which
    makes the call's mechanics: whether the listener with this inode is one
    whose accept it may make (then what to do with each connection), or None
    (accept above answers). Connections kept from a call that went away come
    first, and are the handler's to hand out. For each connection: the peer
    it shows, and what C keeps of it for its own getsockname and setsockopt
    (as identify.known() has it, and the scratch socket its options are
    tried on)."""
    def plan(inode: int):
        listener = ctx.registry.listener_inodes.get(inode)
        if listener is None or not isinstance(listener.visible, IPAddr) or ctx.kept.get(inode):
            return None
        local = sockaddr.pack(sockaddr.local_of_connection(listener.visible))  # (as identify.known() has it)
        try:
            scratch = ctx.templates.scratch(listener.visible.family, listener.socket_type).fileno()
        except OSError:
            scratch = -1  # (no scratch socket, EMFILE: its options are setsockopt's handler's)
        return lambda conn_inode, uid: (sockaddr.pack(accepted(ctx, listener, conn_inode, uid)), local, scratch)
    return plan
