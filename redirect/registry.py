"""What the supervisor converted: which Unix socket stands for which IP address.

Pure bookkeeping, keyed by socket inode and by the real Unix address, so it
survives dup, fork and exec: every fd that refers to the same socket finds it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .sockaddr import Address, UnixAddr


@dataclass
class Listener:
    """A socket the program bound, now bound to `real` instead."""
    real: UnixAddr
    visible: Address              # what the program asked for (port 0 filled in)
    socket_type: str              # "stream" or "dgram"
    inode: int
    file_id: tuple[int, int] | None = None   # (st_dev, st_ino) of the socket file we created
    remove: bool = True           # unlink the file once nobody holds the socket


@dataclass
class Client:
    """A socket the program connected to `visible`; it is connected to `real` instead."""
    real: UnixAddr
    visible: Address
    socket_type: str


@dataclass
class Accepted:
    """A connection accepted on a converted listener."""
    listener: Listener
    peer_uid: int | None


def _remember(table: OrderedDict, key, value, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


@dataclass
class Registry:
    listeners: dict[UnixAddr, Listener] = field(default_factory=dict)
    listener_inodes: dict[int, Listener] = field(default_factory=dict)
    # Bounded: clients and connections are many and their closes are not watched.
    # An evicted entry only loses the remembered address (accepted ones are found
    # again from their Unix address); the socket keeps working.
    clients: OrderedDict[int, Client] = field(default_factory=OrderedDict)
    accepted: OrderedDict[int, Accepted] = field(default_factory=OrderedDict)
    max_clients: int = 65536
    # Option values the program set on converted sockets at levels Unix sockets lack.
    options: OrderedDict[tuple[int, int, int], bytes] = field(default_factory=OrderedDict)

    def add_listener(self, listener: Listener) -> None:
        self.listeners[listener.real] = listener
        self.listener_inodes[listener.inode] = listener

    def drop_listener(self, listener: Listener) -> None:
        self.listeners.pop(listener.real, None)
        self.listener_inodes.pop(listener.inode, None)

    def listener_at(self, real: Address | None) -> Listener | None:
        return self.listeners.get(real) if isinstance(real, UnixAddr) else None

    def add_client(self, inode: int, client: Client) -> None:
        _remember(self.clients, inode, client, self.max_clients)

    def add_accepted(self, inode: int, accepted: Accepted) -> None:
        _remember(self.accepted, inode, accepted, self.max_clients)

    def client(self, inode: int) -> Client | None:
        return self.clients.get(inode)

    def set_option(self, inode: int, level: int, name: int, value: bytes) -> None:
        _remember(self.options, (inode, level, name), value, self.max_clients)

    def option(self, inode: int, level: int, name: int) -> bytes | None:
        return self.options.get((inode, level, name))
