"""redirect/handlers/identify.py on its own: what kind of socket the kernel
says an fd is (the handlers decide on that, never on what the program
wrote), and addresses as the socket module returns them, on real sockets."""
from __future__ import annotations

import ipaddress
import socket

import pytest

from redirect.handlers.identify import address_of, socket_type, unix_name
from redirect.rules import SocketType
from redirect.sockaddr import IPAddr, UnixAddr


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
def test_stream_and_datagram_sockets_are_ours_to_convert(family):
    for kind, expected in ((socket.SOCK_STREAM, SocketType.STREAM), (socket.SOCK_DGRAM, SocketType.DGRAM),
                           (socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, SocketType.STREAM)):
        with socket.socket(family, kind) as sock:
            assert socket_type(sock) is expected


def test_other_sockets_are_not():
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as seqpacket:
        assert socket_type(seqpacket) is None
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0) as netlink:
        assert socket_type(netlink) is None  # a datagram socket, but no IP one
    try:
        sctp = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    except OSError:
        return  # no SCTP module on this kernel: nothing more to show
    with sctp:
        assert socket_type(sctp) is None  # a stream socket with no Unix equivalent


def test_addresses_as_the_socket_module_gives_them(tmp_path):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        name = address_of(sock.family, sock.getsockname())
        assert name == IPAddr(socket.AF_INET6, ipaddress.IPv6Address("::1"), sock.getsockname()[1])
    with socket.socket(socket.AF_UNIX) as sock:
        assert unix_name(sock) is None  # unnamed
        sock.bind(str(tmp_path / "a b.sock"))
        assert unix_name(sock) == UnixAddr(str(tmp_path / "a b.sock").encode())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("\0redirect-test-abstract")
        assert unix_name(sock) == UnixAddr(b"redirect-test-abstract", abstract=True)
