"""redirect/handlers/send.py and receive.py on their own: a UDP server and a
UDP client of this process (helpers.OwnThread), each with its own rules and
context as two programs under two supervisors would have, converted by the
handlers and talking over real Unix datagram sockets, without a program or a
backend. What each side is shown is an IP address; what travels is real."""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct

import pytest

from helpers import OwnThread, answer, handler_context
from redirect.handlers.bind_connect import bind
from redirect.handlers.context import Call
from redirect.handlers.receive import recvfrom, recvmsg
from redirect.handlers.send import sendto
from redirect.program import PASS
from redirect.sockaddr import AF_INET, IPAddr, pack, unpack

SERVER = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 5353)


def family(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as now:
        return now.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)


def send(ctx, fd: int, data: bytes, to: bytes | None):
    """sendto(fd, data, len, 0, to, len(to)) through the handler."""
    buf = ctypes.create_string_buffer(data, len(data))
    name = ctypes.create_string_buffer(to or b"\0", max(len(to or b""), 1))
    args = (fd, ctypes.addressof(buf), len(data), 0, ctypes.addressof(name) if to else 0, len(to or b""))
    return answer(sendto(Call(ctx, OwnThread(), "sendto", args)))


def receive(ctx, fd: int, size: int = 64, room: int = 128):
    """recvfrom(fd, buf, size, MSG_DONTWAIT, addr, &room) through the handler:
    (result, data, the sender shown)."""
    buf, name, length = ctypes.create_string_buffer(size), ctypes.create_string_buffer(128), ctypes.c_int(room)
    args = (fd, ctypes.addressof(buf), size, socket.MSG_DONTWAIT, ctypes.addressof(name), ctypes.addressof(length))
    res = answer(recvfrom(Call(ctx, OwnThread(), "recvfrom", args)))
    if isinstance(res, int) and res >= 0:
        return res, buf.raw[:res], unpack(name.raw[:min(length.value, room)])
    return res, None, None


@pytest.fixture
def pair(tmp_path):
    """(server ctx, server socket, client ctx, client socket): the server's
    bound at 127.0.0.1:5353 by an in rule; the client's sends go there by an
    out rule."""
    path = tmp_path / "dns.sock"
    server_ctx = handler_context([f"in,udp,port=5353,path={path}"])
    client_ctx = handler_context([f"out,udp,port=5353,path={path}"])
    server, client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    buf = ctypes.create_string_buffer(pack(SERVER))
    try:
        assert answer(bind(Call(server_ctx, OwnThread(), "bind", (server.fileno(), ctypes.addressof(buf), 16)))) == 0
        yield server_ctx, server, client_ctx, client
    finally:
        server.close()
        client.close()
        for ctx in (server_ctx, client_ctx):  # as the supervisor ends: closed sockets' files, then the folders
            ctx.reaper.reap()
            ctx.replies.remove()


def test_a_query_and_its_answer_go_over_unix_sockets_shown_as_udp(pair):
    server_ctx, server, client_ctx, client = pair
    assert send(client_ctx, client.fileno(), b"query", pack(SERVER)) == 5
    assert family(client.fileno()) == socket.AF_UNIX            # the client became a Unix socket to send
    res, data, sender = receive(server_ctx, server.fileno())
    assert (res, data) == (5, b"query")
    assert isinstance(sender, IPAddr) and sender.family == AF_INET and sender.host.is_loopback
    assert send(server_ctx, server.fileno(), b"answer", pack(sender)) == 6   # to the address it was shown
    res, data, shown = receive(client_ctx, client.fileno())
    assert (res, data, shown) == (6, b"answer", SERVER)          # from the address the client sent to
    assert receive(server_ctx, server.fileno())[0] == -errno.EAGAIN  # one datagram each: nothing doubled


def test_a_datagram_longer_than_the_buffer_is_cut_as_udp_cuts_it(pair):
    server_ctx, server, client_ctx, client = pair
    assert send(client_ctx, client.fileno(), b"0123456789", pack(SERVER)) == 10
    res, data, _ = receive(server_ctx, server.fileno(), size=4)
    assert (res, data) == (4, b"0123")
    assert receive(server_ctx, server.fileno())[0] == -errno.EAGAIN  # the rest is gone, as with UDP


def test_an_answer_to_an_address_nobody_was_shown_is_refused(pair):
    server_ctx, server, _, _ = pair
    stranger = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 40000)
    assert send(server_ctx, server.fileno(), b"answer", pack(stranger)) == -errno.ENETUNREACH
    assert any("127.0.0.1:40000" in line for line in server_ctx.logged)   # and the log says why


def test_a_short_name_room_gets_the_start_of_the_sender(pair):
    server_ctx, server, client_ctx, client = pair
    send(client_ctx, client.fileno(), b"x", pack(SERVER))
    res, data, sender = receive(server_ctx, server.fileno(), room=4)
    assert (res, data) == (1, b"x") and sender is None           # 4 bytes: family and port only


def test_recvmsg_reports_the_sender_in_its_header(pair):
    server_ctx, server, client_ctx, client = pair
    send(client_ctx, client.fileno(), b"query", pack(SERVER))
    data, name = ctypes.create_string_buffer(64), ctypes.create_string_buffer(128)
    iov = struct.pack("=QQ", ctypes.addressof(data), 64)
    iov_buf = ctypes.create_string_buffer(iov, len(iov))
    header = ctypes.create_string_buffer(struct.pack("=QI4xQQQQi4x", ctypes.addressof(name), 128,
                                                     ctypes.addressof(iov_buf), 1, 0, 0, 0), 56)
    res = answer(recvmsg(Call(server_ctx, OwnThread(), "recvmsg",
                              (server.fileno(), ctypes.addressof(header), socket.MSG_DONTWAIT))))
    namelen = struct.unpack_from("=I", header.raw, 8)[0]
    sender = unpack(name.raw[:namelen])
    assert res == 5 and data.raw[:5] == b"query" and namelen == 16 and sender.host.is_loopback


def test_sockets_that_are_not_ours_are_left_to_the_kernel(pair):
    server_ctx, _, _, _ = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        assert receive(server_ctx, other.fileno())[0] is PASS   # a real UDP socket: the kernel's
