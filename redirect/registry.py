"""What the supervisor converted: which Unix socket stands for which IP address.

Pure bookkeeping, keyed by socket inode and by the real Unix address, so it
survives dup, fork and exec: every fd that refers to the same socket finds it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .peers import PeerTable
from .rules import SocketType
from .sockaddr import Address, UnixAddr


@dataclass
class Listener:
    """A socket the program bound, now bound to `real` instead."""
    real: UnixAddr
    visible: Address              # what the program asked for (port 0 filled in)
    socket_type: SocketType
    inode: int
    file_id: tuple[int, int, int, int] | None = None  # socketfile.file_id of the file we created
    remove: bool = True           # unlink the file once nobody holds the socket
    lease: int | None = None      # the port handed out for it (a bind to port 0), given back when it goes


@dataclass
class Client:
    """A socket the program connected (or first sent a datagram) to `visible`;
    it goes to `real` instead."""
    real: UnixAddr
    visible: Address
    socket_type: SocketType
    local: Address | None = None  # the UDP address it had before (shown by getsockname)
    own: UnixAddr | None = None   # a datagram client's private reply address
    file_id: tuple[int, int, int, int] | None = None


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
    # Datagram clients bound to a reply address: not bounded, their files must go.
    bound_clients: dict[int, Client] = field(default_factory=dict)
    # Datagram senders and the IP addresses they are shown as.
    peers: PeerTable = field(default_factory=PeerTable)
    # Datagram sockets the program bound to a real UDP port of its choice: they
    # live on the network, so they are never converted behind its back.
    pinned: OrderedDict[int, None] = field(default_factory=OrderedDict)
    # Option values the program set on converted sockets at levels Unix sockets
    # lack, by socket: {(level, name): value}.
    options: OrderedDict[int, dict[tuple[int, int], bytes]] = field(default_factory=OrderedDict)

    def add_listener(self, listener: Listener) -> None:
        self.listeners[listener.real] = listener
        self.listener_inodes[listener.inode] = listener

    def drop_listener(self, listener: Listener) -> None:
        if self.listeners.get(listener.real) is listener:  # a newer socket may hold the path now
            del self.listeners[listener.real]
        self.listener_inodes.pop(listener.inode, None)

    def converted(self) -> bool:
        """Whether a socket of the program may be one of ours: a listener (by
        inode: a path may have passed to a newer one), a client, or a
        connection accepted from a listener (it may outlive it)."""
        return bool(self.listener_inodes or self.clients or self.accepted)

    def listener_at(self, real: Address | None) -> Listener | None:
        return self.listeners.get(real) if isinstance(real, UnixAddr) else None

    def add_client(self, inode: int, client: Client) -> None:
        _remember(self.clients, inode, client, self.max_clients)

    def add_accepted(self, inode: int, accepted: Accepted) -> None:
        """A connection, with the options its listener has now (as TCP's
        accepted sockets inherit them; not the ones set later)."""
        _remember(self.accepted, inode, accepted, self.max_clients)
        inherited = self.options.get(accepted.listener.inode)
        if inherited:
            _remember(self.options, inode, dict(inherited), self.max_clients)

    def client(self, inode: int) -> Client | None:
        return self.bound_clients.get(inode) or self.clients.get(inode)

    def add_bound_client(self, inode: int, client: Client) -> None:
        self.bound_clients[inode] = client
        self.add_client(inode, client)

    def drop_bound_client(self, inode: int) -> None:
        self.bound_clients.pop(inode, None)
        self.clients.pop(inode, None)

    def owns_file(self, inode: int | None) -> bool:
        """Whether closing this socket may leave a file of ours to remove."""
        return inode in self.listener_inodes or inode in self.bound_clients

    def pin(self, inode: int) -> None:
        _remember(self.pinned, inode, None, self.max_clients)

    def set_option(self, inode: int, level: int, name: int, value: bytes) -> None:
        mine = self.options.get(inode, {})
        mine[level, name] = value
        _remember(self.options, inode, mine, self.max_clients)

    def set_options(self, items) -> None:
        """Many set_option()s at once: (inode, level, name, value) items
        (the compiled loop's, which hands them over in batches)."""
        for inode, level, name, value in items:
            self.set_option(inode, level, name, value)

    def option(self, inode: int, level: int, name: int) -> bytes | None:
        return self.options.get(inode, {}).get((level, name))
