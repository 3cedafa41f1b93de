"""redirect/handlers/accept.py on its own: accept() and accept4() on a
converted listener of this process (helpers.OwnThread), a real Unix
listener and real clients, without a program or a backend."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket

import pytest

from helpers import OwnThread, answer, converted_listener
from redirect.handlers.accept import accept
from redirect.handlers.context import Call
from redirect.handlers.socknames import getpeername
from redirect.program import PASS
from redirect.sockaddr import AF_INET, IPAddr, unpack

VISIBLE = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 8080)


@pytest.fixture
def listener(tmp_path):
    """(ctx, converted listener, a connect() to it: call it for a client)."""
    path = tmp_path / "l.sock"
    ctx, sock = converted_listener(path, VISIBLE)
    clients = []

    def connect():
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        clients.append(client)
        return client
    with sock:
        yield ctx, sock, connect
    for client in clients:
        client.close()


def call_accept(ctx, fd: int, room: int = 128, flags: int | None = None, address: bool = True):
    """(result, the address written, the length written back)."""
    buf, length = ctypes.create_string_buffer(128), ctypes.c_int(room)
    args = (fd, ctypes.addressof(buf) if address else 0, ctypes.addressof(length) if address else 0)
    name = "accept" if flags is None else "accept4"
    res = answer(accept(Call(ctx, OwnThread(), name, args + (flags or 0,))))
    return res, buf.raw[:min(length.value, room)], length.value


def test_the_connection_comes_from_an_ip_peer_and_is_the_clients(listener):
    ctx, sock, connect = listener
    client = connect()
    fd, data, length = call_accept(ctx, sock.fileno())
    with socket.socket(fileno=fd) as conn:
        peer = unpack(data)
        assert length == 16 and peer.family == AF_INET and peer.host.is_loopback and peer.port >= 1024
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"                                  # the client's own connection
        assert os.fstat(fd).st_ino in ctx.registry.accepted             # known for its later calls
        buf, room = ctypes.create_string_buffer(128), ctypes.c_int(128)
        res = getpeername(Call(ctx, OwnThread(), "getpeername", (fd, ctypes.addressof(buf), ctypes.addressof(room))))
        assert res == 0 and buf.raw[:16] == data                        # the same peer when asked again


def test_accept4_flags_are_the_new_fds(listener):
    ctx, sock, connect = listener
    connect()
    fd, _, _ = call_accept(ctx, sock.fileno(), flags=socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK and not os.get_inheritable(fd)
    finally:
        os.close(fd)
    connect()
    fd, _, _ = call_accept(ctx, sock.fileno())
    try:
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK and os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_a_short_room_gets_the_start_of_the_address_and_its_whole_length(listener):
    ctx, sock, connect = listener
    connect()
    fd, data, length = call_accept(ctx, sock.fileno(), room=4)
    os.close(fd)
    assert length == 16 and data[:2] == AF_INET.to_bytes(2, "little") and len(data) == 4


def test_a_nonblocking_listener_without_a_connection_says_eagain(listener):
    ctx, sock, _ = listener
    sock.setblocking(False)
    assert call_accept(ctx, sock.fileno())[0] == -errno.EAGAIN


def test_a_connection_kept_for_a_call_that_went_away_comes_first(listener):
    ctx, sock, connect = listener
    first, second = connect(), connect()
    kept, _ = sock.accept()                   # taken for a call that a signal ended
    ctx.kept[os.fstat(sock.fileno()).st_ino] = [kept]
    fd, _, _ = call_accept(ctx, sock.fileno())
    with socket.socket(fileno=fd) as conn:
        first.sendall(b"1")
        second.sendall(b"2")
        assert conn.recv(1) == b"1"           # the kept one, not the next in the backlog
    assert ctx.kept[os.fstat(sock.fileno()).st_ino] == []


def test_what_needs_no_fake_address_is_left_to_the_kernel(listener, tmp_path):
    ctx, sock, connect = listener
    assert call_accept(ctx, sock.fileno(), address=False)[0] is PASS    # no address asked for
    with socket.socket(socket.AF_UNIX) as other:                        # a Unix listener of its own
        other.bind(str(tmp_path / "other.sock"))
        other.listen()
        assert call_accept(ctx, other.fileno())[0] is PASS
    assert call_accept(ctx, 10_000)[0] is PASS                         # no such fd: EBADF is the kernel's
    buf = ctypes.create_string_buffer(16)
    bad_length = Call(ctx, OwnThread(), "accept", (sock.fileno(), ctypes.addressof(buf), 8, 0))
    assert accept(bad_length) is PASS                                   # EFAULT is the kernel's too
