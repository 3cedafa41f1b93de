"""pytest fixtures for running servers under redirect (registered through the
`pytest11` entry point: installing the package makes them available).

    def test_api(redirected_server):
        server = redirected_server(["./server", "-addr", ":8080"], ports=[8080])
        assert server.http().get("/health").status_code == 200   # an httpx.Client on the socket

Every server's ports become socket files in a directory of the test's own, so
any number of tests, in any number of pytest-xdist workers, can run servers on
the same hard-coded port at once. Everything is stopped and removed at the end
of the test.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from .api import Process, RuleLike, spawn


class RedirectedServer:
    """A server started by the `redirected_server` fixture."""

    def __init__(self, process: Process, sockets: dict[int, Path]) -> None:
        self.process = process
        self.sockets = sockets        # port -> socket file
        self._clients: list = []

    def socket(self, port: int | None = None) -> Path:
        """The socket file that stands for `port` (the only one, if not given)."""
        if port is None:
            if len(self.sockets) != 1:
                raise ValueError(f"this server has several ports ({sorted(self.sockets)}): say which")
            return next(iter(self.sockets.values()))
        if port not in self.sockets:
            raise ValueError(f"port {port} is not one of this server's ports ({sorted(self.sockets)})")
        return self.sockets[port]

    def http(self, port: int | None = None, **client_kwargs):
        """An httpx.Client that talks HTTP over the socket of `port`."""
        try:
            import httpx
        except ImportError:
            raise RuntimeError("redirected_server(...).http() needs httpx: pip install 'redirect[pytest]'") from None
        transport = httpx.HTTPTransport(uds=str(self.socket(port)))
        client = httpx.Client(transport=transport, base_url="http://localhost", **client_kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.process.stop()


@pytest.fixture
def redirect_spawn():
    """spawn() from the API, with everything it started stopped at the end of the test."""
    started: list[Process] = []

    def start(args: Sequence[str | os.PathLike], rules: Iterable[RuleLike] = (), **kwargs) -> Process:
        proc = spawn(args, rules, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def redirected_server():
    """Start a server with its TCP `ports` turned into socket files of this test
    (tcp only; `udp=True` for datagram ports), wait until they listen, return a
    RedirectedServer. With sealed=True (the default) it cannot reach anything else."""
    folder = Path(tempfile.mkdtemp(prefix="rd-pytest-", dir="/tmp"))  # short: sun_path has 108 bytes
    servers: list[RedirectedServer] = []

    def start(args: Sequence[str | os.PathLike], ports: Iterable[int], *, udp: bool = False, sealed: bool = True,
              rules: Iterable[RuleLike] = (), timeout: float = 10, **kwargs) -> RedirectedServer:
        kind = "udp" if udp else "tcp"
        ports = [ports] if isinstance(ports, int) else list(ports)
        if not ports:
            raise ValueError("redirected_server: name at least one port the program listens on")
        sockets = {port: folder / f"{len(servers)}-{kind}-{port}.sock" for port in ports}
        own = [f"in,{kind},port={port},path={path}" for port, path in sockets.items()]
        proc = spawn(args, [*own, *rules], sealed=sealed, **kwargs)
        server = RedirectedServer(proc, sockets)
        servers.append(server)
        for path in sockets.values():
            proc.wait_for_socket(path, timeout=timeout)
        return server

    yield start
    for server in reversed(servers):
        server.close()
    shutil.rmtree(folder, ignore_errors=True)
