"""accept() and accept4(): connections to a converted listener come from an IP peer."""
from __future__ import annotations

from .. import sockaddr
from ..registry import Accepted, Listener
from ..sockaddr import IPAddr
from ..tracee import PASS
from .common import Call, peer_uid, read_room, write_sockaddr


def accept(call: Call):
    fd, addr = call.args[:2]
    if addr == 0:
        return PASS  # nothing to fake
    inode = call.thread.fd_inode(fd)
    listener = call.ctx.registry.listener_inodes.get(inode) if inode is not None else None
    if listener is None or not isinstance(listener.visible, IPAddr):
        return PASS
    room = read_room(call, call.args[2])
    return PASS if room is None else _accept(call, listener, room)


def _accept(call: Call, listener: Listener, room: int):
    # Run the program's own call (it may block), then overwrite the Unix peer
    # address; the buffer size is the one before the kernel wrote the Unix length.
    res = yield from call.thread.run_trapped()
    if res < 0:
        return res
    inode = call.thread.fd_inode(res)
    with call.thread.socket(res) as conn:
        uid = peer_uid(conn) if conn is not None else None
    if inode is not None:  # later getpeername/getsockname need no look at the socket
        call.ctx.registry.add_accepted(inode, Accepted(listener, uid))
    peer = sockaddr.peer_of_connection(listener.visible, inode or 0, uid)
    err = write_sockaddr(call, call.args[1], call.args[2], sockaddr.pack(peer), room)
    return res if err == 0 else err
