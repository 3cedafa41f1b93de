"""redirect/handlers/bind_connect.py on its own: bind, listen and connect of
this process's own IP sockets (helpers.OwnThread) under rules, on real
sockets and real socket files, without a program or a backend. The handler
swaps this process's fd for a Unix socket exactly as it swaps a program's."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import stat

import pytest

from helpers import OwnThread, answer, free_port, handler_context
from redirect.handlers.bind_connect import bind, connect, listen
from redirect.handlers.context import Call
from redirect.program import PASS
from redirect.sockaddr import AF_INET, IPAddr, UnixAddr, pack

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
VISIBLE = IPAddr(AF_INET, LOOPBACK, 8080)


def family(fd: int) -> int:
    """The family of the socket at fd now (Python's socket object keeps the one it was made with)."""
    with socket.socket(fileno=os.dup(fd)) as now:
        return now.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)


def call(ctx, handler, fd: int, address: bytes | None = None, length: int | None = None):
    """The handler's answer for (fd, address in this process's memory, its length)."""
    buf = ctypes.create_string_buffer(address or b"\0", max(len(address or b""), 1))
    args = (fd, ctypes.addressof(buf), len(address) if length is None else length)
    return answer(handler(Call(ctx, OwnThread(), handler.__name__, args)))


@pytest.fixture
def tcp():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        yield sock


def test_a_bind_a_rule_matches_puts_a_unix_listener_at_the_fd(tmp_path, tcp):
    path = tmp_path / "http.sock"
    ctx = handler_context([f"in,port=8080,path={path}"])
    os.set_inheritable(tcp.fileno(), True)
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE)) == 0
    assert family(tcp.fileno()) == socket.AF_UNIX and stat.S_ISSOCK(os.stat(path).st_mode)
    assert not fcntl.fcntl(tcp.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK   # a blocking socket still (the stand-in is not)
    assert os.get_inheritable(tcp.fileno())                                # and its close-on-exec
    assert ctx.registry.listener_at(UnixAddr(os.fsencode(path))).visible == VISIBLE
    assert answer(listen(Call(ctx, OwnThread(), "listen", (tcp.fileno(), 16)))) == 0
    assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))                                          # reachable at the rule's path


def test_a_connect_a_rule_matches_reaches_the_unix_listener(tmp_path, tcp):
    path = tmp_path / "srv.sock"
    ctx = handler_context([f"out,port=8080,path={path}"])
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        assert call(ctx, connect, tcp.fileno(), pack(VISIBLE)) == 0
        assert family(tcp.fileno()) == socket.AF_UNIX
        conn, _ = server.accept()
        with conn:
            os.write(tcp.fileno(), b"hello")
            assert conn.recv(5) == b"hello"
        assert ctx.registry.client(os.fstat(tcp.fileno()).st_ino).visible == VISIBLE


def test_a_connect_to_a_path_nobody_listens_on_is_refused_as_tcp_would_be(tmp_path, tcp):
    ctx = handler_context([f"out,port=8080,path={tmp_path / 'nobody.sock'}"])
    assert call(ctx, connect, tcp.fileno(), pack(VISIBLE)) == -errno.ECONNREFUSED
    assert family(tcp.fileno()) == socket.AF_INET                          # the program's socket, untouched


def test_a_rejected_bind_fails_with_the_rules_errno_and_leaves_the_fd(tcp):
    ctx = handler_context(["in,port=8080,reject=EADDRNOTAVAIL"])
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE)) == -errno.EADDRNOTAVAIL
    assert family(tcp.fileno()) == socket.AF_INET and tcp.getsockname() == ("0.0.0.0", 0)


def test_a_bind_that_cannot_be_converted_fails_closed(tmp_path, tcp):
    ctx = handler_context([f"in,port=8080,path={tmp_path / 'missing' / 'http.sock'}"])
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE)) == -errno.ENOENT
    assert family(tcp.fileno()) == socket.AF_INET and tcp.getsockname() == ("0.0.0.0", 0)  # never bound to TCP


def test_a_file_in_the_way_is_kept_and_the_bind_fails(tmp_path, tcp):
    path = tmp_path / "http.sock"
    path.write_text("someone's data")
    ctx = handler_context([f"in,port=8080,path={path}"])
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE)) == -errno.EADDRINUSE
    assert path.read_text() == "someone's data" and family(tcp.fileno()) == socket.AF_INET


def test_an_address_no_rule_matches_is_bound_as_given(tmp_path, tcp):
    ctx = handler_context([f"in,port=8080,path={tmp_path / 'http.sock'}"])
    port = free_port()
    assert call(ctx, bind, tcp.fileno(), pack(IPAddr(AF_INET, LOOPBACK, port))) == 0
    assert family(tcp.fileno()) == socket.AF_INET and tcp.getsockname() == ("127.0.0.1", port)


def test_bad_addresses_fail_as_the_kernel_says(tmp_path, tcp):
    ctx = handler_context([f"in,port=8080,path={tmp_path / 'http.sock'}"])
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE), length=200) == -errno.EINVAL
    bad = Call(ctx, OwnThread(), "bind", (tcp.fileno(), 8, 16))            # an unmapped page
    assert answer(bind(bad)) == -errno.EFAULT
    assert call(ctx, bind, tcp.fileno(), pack(VISIBLE)[:8]) == -errno.EINVAL  # too short for AF_INET
    assert call(ctx, bind, 10_000, pack(VISIBLE)) == -errno.EBADF


def test_without_rules_for_a_direction_the_call_is_the_kernels(tcp):
    ctx = handler_context([])
    assert bind(Call(ctx, OwnThread(), "bind", (tcp.fileno(), 0, 0))) is PASS
    assert connect(Call(ctx, OwnThread(), "connect", (tcp.fileno(), 0, 0))) is PASS
