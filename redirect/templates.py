"""Real IP sockets the supervisor keeps, so that a converted socket answers
IP-, TCP- and UDP-level options as a real one would: values and errors are
the kernel's, never a table of guesses (OpenSSH's server drops every
connection on which IP_OPTIONS reads back anything).

Per family and type, made at first use: a fresh socket (a converted socket
that is bound or listening reads what a fresh one reads), the two ends of a
real loopback TCP connection (a client's, an accepted one's: they differ)
or a UDP socket connected to loopback (nothing sent), and a scratch one on which
the program's own settings are tried (the kernel's refusal is the program's
answer) and read back. Kernel mechanics only; sockopt.py decides what to ask.
"""
from __future__ import annotations

import errno
import socket

from enum import Enum

from .kernel import getsockopt
from .rules import SocketType


class State(Enum):
    """Which template socket answers."""
    FRESH = "fresh"            # made, never connected: what a bound or listening socket reads
    CONNECTED = "connected"    # the client end of a connection (UDP: connected, nothing sent)
    ACCEPTED = "accepted"      # the server end
    SCRATCH = "scratch"        # the program's own settings are tried and read back here

_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


class Templates:
    def __init__(self) -> None:
        self._socks: dict[tuple[int, SocketType, State], socket.socket] = {}

    def _sock(self, family: int, kind: SocketType, state: State) -> socket.socket:
        key = (family, kind, state)
        sock = self._socks.get(key)
        if sock is None:
            if kind == SocketType.STREAM and state in (State.CONNECTED, State.ACCEPTED):
                client, server = _connection(family)
                self._socks[(family, kind, State.CONNECTED)] = client
                self._socks[(family, kind, State.ACCEPTED)] = server
                return self._socks[key]
            sock = socket.socket(family, kind.sock_type)
            if state is State.CONNECTED:  # UDP: connecting sends nothing
                try:
                    sock.connect((_LOOPBACK[family], 9))
                except OSError:
                    sock.close()
                    raise
            self._socks[key] = sock
        return sock

    def get(self, family: int, kind: SocketType, state: State, level: int, name: int, size: int) -> bytes | int:
        """getsockopt on the template of this state, with the program's buffer size: the value,
        or -errno."""
        try:
            return getsockopt(self._sock(family, kind, state).fileno(), level, name, size)
        except OSError as err:
            return -(err.errno or errno.EIO)

    def scratch(self, family: int, kind: SocketType) -> socket.socket:
        """The socket of this kind where the program's settings are tried."""
        return self._sock(family, kind, State.SCRATCH)

    def try_set(self, family: int, kind: SocketType, level: int, name: int, value: bytes) -> int:
        """The program's setsockopt, tried on the scratch socket: 0 or the
        kernel's -errno."""
        try:
            self.scratch(family, kind).setsockopt(level, name, value)
        except OSError as err:
            return -(err.errno or errno.EIO)
        return 0

    def read_back(self, family: int, kind: SocketType, level: int, name: int, value: bytes, size: int) -> bytes | int:
        """What reading an option the program set gives: set again on the
        scratch socket, read there (as the kernel stores it: clamped,
        rounded, masked)."""
        res = self.try_set(family, kind, level, name, value)
        if res < 0:
            return res
        return self.get(family, kind, State.SCRATCH, level, name, size)

def _connection(family: int) -> tuple[socket.socket, socket.socket]:
    """Both ends of a real loopback TCP connection (connected, accepted). Its
    listener listens for an instant; a connection not ours made in that
    instant is closed."""
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((_LOOPBACK[family], 0))
        listener.listen(1)
        listener.settimeout(5)
        client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.connect(listener.getsockname())
            while True:
                server, peer = listener.accept()
                if peer[:2] == client.getsockname()[:2]:
                    # A byte each way, as on a connection in use: the MSS the
                    # kernel reports follows what has crossed it.
                    client.sendall(b"x")
                    server.recv(1)
                    server.sendall(b"x")
                    client.recv(1)
                    return client, server
                server.close()
        except OSError:
            client.close()
            raise
