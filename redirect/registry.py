"""What the supervisor converted: which Unix socket stands for which IP address.

Pure bookkeeping, keyed by socket inode and by the real Unix address, so it
survives dup, fork and exec: every fd that refers to the same socket finds it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .sockaddr import Address, IPAddr, UnixAddr


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
class Registry:
    listeners: dict[UnixAddr, Listener] = field(default_factory=dict)
    listener_inodes: dict[int, Listener] = field(default_factory=dict)
    # Bounded: clients are many and their closes are not watched. An evicted entry
    # only loses the remembered address; the socket keeps working.
    clients: OrderedDict[int, Client] = field(default_factory=OrderedDict)
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

    def path_taken(self, real: UnixAddr) -> bool:
        """Whether a socket of this program already holds that address."""
        return real in self.listeners

    def add_client(self, inode: int, client: Client) -> None:
        self.clients[inode] = client
        self.clients.move_to_end(inode)
        while len(self.clients) > self.max_clients:
            self.clients.popitem(last=False)

    def client(self, inode: int) -> Client | None:
        return self.clients.get(inode)

    def set_option(self, inode: int, level: int, name: int, value: bytes) -> None:
        self.options[(inode, level, name)] = value
        while len(self.options) > self.max_clients:
            self.options.popitem(last=False)

    def option(self, inode: int, level: int, name: int) -> bytes | None:
        return self.options.get((inode, level, name))


def visible_ip(addr: Address) -> IPAddr | None:
    return addr if isinstance(addr, IPAddr) else None
