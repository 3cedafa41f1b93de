"""redirect.registry: which Unix socket stands for which IP address (pure)."""
from __future__ import annotations

import ipaddress

from redirect.registry import Client, Listener, Registry
from redirect.rules import SocketType
from redirect.sockaddr import AF_INET, IPAddr, UnixAddr


def test_registry_bounds_clients():
    reg = Registry(max_clients=3)
    target = IPAddr(AF_INET, ipaddress.IPv4Address("127.0.0.1"), 80)
    for inode in range(5):
        reg.add_client(inode, Client(UnixAddr(b"/x"), target, SocketType.STREAM))
    assert reg.client(0) is None and reg.client(1) is None and reg.client(4) is not None


def test_registry_listeners():
    reg = Registry()
    listener = Listener(UnixAddr(b"/run/a.sock"), IPAddr(AF_INET, ipaddress.IPv4Address("0.0.0.0"), 80), SocketType.STREAM, 42)
    reg.add_listener(listener)
    assert reg.listener_at(UnixAddr(b"/run/a.sock")) is listener and reg.listener_inodes[42] is listener
    reg.drop_listener(listener)
    assert reg.listener_at(UnixAddr(b"/run/a.sock")) is None and 42 not in reg.listener_inodes
