"""redirect/handlers/sockopt.py on its own: a converted socket's IP-, TCP-
and socket-level options answer as a real TCP socket's would (from the
template sockets), on a real Unix listener of this process that the registry
knows as 127.0.0.1:8080 (helpers.OwnThread: real memory, real fds)."""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct

import pytest

from helpers import OwnThread, converted_listener
from redirect.handlers.context import Call
from redirect.handlers.sockopt import getsockopt, setsockopt
from redirect.program import PASS
from redirect.sockaddr import AF_INET, IPAddr


@pytest.fixture
def listener(tmp_path):
    """(ctx, the Unix listener the registry knows as 127.0.0.1:8080)."""
    ctx, sock = converted_listener(tmp_path / "l.sock", IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 8080))
    with sock:
        yield ctx, sock


def read_option(ctx, sock, level: int, name: int, room: int = 4):
    value, length = ctypes.create_string_buffer(64), ctypes.c_int(room)
    res = getsockopt(Call(ctx, OwnThread(), "getsockopt",
                          (sock.fileno(), level, name, ctypes.addressof(value), ctypes.addressof(length))))
    return res, value.raw[:length.value]


def set_option(ctx, sock, level: int, name: int, value: bytes):
    buf = ctypes.create_string_buffer(value, len(value))
    return setsockopt(Call(ctx, OwnThread(), "setsockopt",
                           (sock.fileno(), level, name, ctypes.addressof(buf), len(value))))


def test_options_read_as_on_a_real_tcp_listener(listener):
    ctx, sock = listener
    with socket.socket() as real:
        real.bind(("127.0.0.1", 0))
        real.listen()
        for level, name in ((socket.SOL_SOCKET, socket.SO_DOMAIN), (socket.SOL_SOCKET, socket.SO_PROTOCOL),
                            (socket.IPPROTO_TCP, socket.TCP_NODELAY), (socket.IPPROTO_IP, socket.IP_TTL),
                            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)):
            res, value = read_option(ctx, sock, level, name)
            assert res == 0 and value == real.getsockopt(level, name, 4), (level, name)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_UNIX  # (what the kernel says of it)


def test_settings_are_the_kernels_and_read_back(listener):
    ctx, sock = listener
    assert set_option(ctx, sock, socket.IPPROTO_TCP, socket.TCP_NODELAY, struct.pack("=i", 5)) == 0
    assert read_option(ctx, sock, socket.IPPROTO_TCP, socket.TCP_NODELAY) == (0, struct.pack("=i", 1))
    assert set_option(ctx, sock, socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 1000)) == -errno.EINVAL
    assert set_option(ctx, sock, socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"nosuch\0") == -errno.ENOENT


def test_other_sockets_and_levels_are_left_to_the_kernel(listener):
    ctx, sock = listener
    assert read_option(ctx, sock, socket.SOL_SOCKET, socket.SO_RCVBUF)[0] is PASS  # the same on a Unix socket
    with socket.socket() as tcp:
        assert read_option(ctx, tcp, socket.IPPROTO_TCP, socket.TCP_NODELAY)[0] is PASS
