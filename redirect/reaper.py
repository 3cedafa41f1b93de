"""The end of converted sockets. Closes are not trapped (they are on every
program's request path), so the supervisor asks the kernel's table of Unix
sockets, when a process of the tree ends or execs, before a bind to a path
already bound, and on a timer: a socket no process holds any more is
forgotten, its port lease given back, and its file removed (a listener's
unless noremove, a datagram client's reply socket), if the path still holds
the file that was bound."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from . import kernel, socketfile
from .program import socket_inode

REAP_EVERY = 1.0  # seconds: a closed listener's file goes at most this late


class Reaper:
    def __init__(self, ctx, holders: Callable[[], Iterable]) -> None:
        self.ctx = ctx              # the handlers' context: registry, ports, kept connections, log
        self.holders = holders      # the backend's threads that hold the program's fd tables
        self.next = 0.0

    def has_files(self) -> bool:
        """Whether converted sockets are known whose end must be watched for."""
        registry = self.ctx.registry
        return bool(registry.listener_inodes or registry.bound_clients)

    def held(self) -> set[int]:
        """The inodes of every socket a process of the program holds right now."""
        held = {socket_inode(link) for thread in self.holders() for _, link in thread.fds()}
        held.discard(None)
        return held

    def reap_if_due(self) -> None:
        if time.monotonic() >= self.next:
            self.reap()

    def reap(self) -> None:
        self.next = time.monotonic() + REAP_EVERY
        if not self.has_files():
            return
        ctx, registry = self.ctx, self.ctx.registry
        try:
            gone = [listener for listener in registry.listener_inodes.values()
                    if not kernel.unix_socket_exists(listener.inode)]
            gone_clients = [inode for inode in registry.bound_clients if not kernel.unix_socket_exists(inode)]
        except OSError as err:  # cannot tell: remove nothing now
            ctx.warn_once(("reap", err.errno), f"cannot look up the program's sockets ({err.strerror}); "
                                                "socket files stay until it can be told")
            return
        for listener in gone:
            registry.drop_listener(listener)
            for conn in ctx.kept.pop(listener.inode, ()):
                conn.close()
            if listener.lease is not None:
                ctx.ports.release(listener.lease)
            if listener.remove and not listener.real.abstract:
                if socketfile.remove_if_ours(listener.real.name, listener.file_id):
                    ctx.log(1, f"removed {listener.real}")
        for inode in gone_clients:
            client = registry.bound_clients[inode]
            registry.drop_bound_client(inode)
            socketfile.remove_if_ours(client.own.name, client.file_id)
