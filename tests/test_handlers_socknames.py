"""redirect/handlers/socknames.py on its own: getsockname and getpeername of
sockets the registry says are converted, on real Unix sockets of this
process and real memory (helpers.OwnThread), without a program or a backend."""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

import pytest

from helpers import OwnThread, converted_listener
from redirect.handlers.context import Call
from redirect.handlers.socknames import getpeername, getsockname
from redirect.program import PASS
from redirect.sockaddr import AF_INET, IPAddr, unpack

VISIBLE = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 8080)


@pytest.fixture
def converted(tmp_path):
    """(ctx, listener socket, connected client, accepted connection): a Unix
    listener the registry knows as 127.0.0.1:8080."""
    path = tmp_path / "l.sock"
    ctx, listener = converted_listener(path, VISIBLE)
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    conn, _ = listener.accept()
    with listener, client, conn:
        yield ctx, listener, client, conn


def ask(handler, ctx, fd: int, room: int = 128):
    """The handler's answer, and the address it wrote in this process's memory."""
    buf, length = ctypes.create_string_buffer(128), ctypes.c_int(room)
    call = Call(ctx, OwnThread(), handler.__name__, (fd, ctypes.addressof(buf), ctypes.addressof(length)))
    res = handler(call)
    return res, buf.raw[:min(length.value, room)], length.value


def test_a_converted_listener_shows_its_ip_address(converted):
    ctx, listener, _, _ = converted
    res, data, length = ask(getsockname, ctx, listener.fileno())
    assert res == 0 and length == 16 and unpack(data) == VISIBLE
    res, data, length = ask(getsockname, ctx, listener.fileno(), room=4)
    assert res == 0 and length == 16 and data == struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080)


def test_an_accepted_connection_shows_an_ip_peer_and_the_listeners_address(converted):
    ctx, _, _, conn = converted
    res, data, _ = ask(getsockname, ctx, conn.fileno())
    assert res == 0 and unpack(data) == VISIBLE
    res, data, _ = ask(getpeername, ctx, conn.fileno())
    peer = unpack(data)
    assert res == 0 and peer.family == AF_INET and peer.host.is_loopback and peer.port >= 1024
    assert ask(getpeername, ctx, conn.fileno())[1] == data  # the same peer each time


def test_sockets_that_are_not_ours_are_left_to_the_kernel(converted):
    ctx, _, client, _ = converted
    assert ask(getsockname, ctx, client.fileno())[0] is PASS  # the client side was never converted
    with socket.socket() as tcp:
        assert ask(getpeername, ctx, tcp.fileno())[0] is PASS
    assert ask(getsockname, ctx, 10_000)[0] is PASS            # no such fd: the kernel says EBADF
