"""End to end: UDP servers and clients (static glibc, static musl, Go, dynamic
Python) under the real supervisor, their datagram sockets moved onto Unix
datagram sockets, with replies and addresses that still work."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

from redirect import socketfile

from helpers import compiled, redirect, run, tcp_listening

PROBE = [sys.executable, str(Path(__file__).parent / "programs" / "udpprobe.py")]
C_VARIANTS = ["glibc", "musl"]
SERVERS = ["glibc", "musl", "go"]
CLIENTS = ["glibc", "musl", "go"]


def free_udp_port() -> int:
    """A UDP port nothing is bound to now (the tests check it stays that way)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_dgram(path: Path, proc, timeout: float = 10) -> None:
    """Until a datagram socket is bound at path (from /proc/net/unix)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and stat.S_ISSOCK(path.stat().st_mode):
            if socketfile.bound_at(os.fsencode(path)):  # (the kernel's table, /proc/net/unix)
                return
        if proc.proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"no datagram socket at {path}; output:\n{proc.output}")


def records(text: str) -> dict[str, dict]:
    """udpprobe's JSON lines by check name (the last of each)."""
    found = {}
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[record["check"]] = record
    return found


def server_argv(bins: Path, kind: str, host: str, port: int, *extra: str) -> list:
    if kind == "go":
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return [bins / "go-udp-server", "-addr", target, *extra]
    return [bins / f"udp-server-{kind}", *extra, host, port]


def client_argv(bins: Path, kind: str, host: str, port: int, *messages: str, connected: bool = False) -> list:
    if kind == "go":
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return [bins / "go-udp-client", *(["-connected"] if connected else []), target, *messages]
    return [bins / f"udp-client-{kind}", *(["--mode", "connect"] if connected else []), host, port, *messages]


def split_addr(text: str) -> tuple[str, int]:
    """'1.2.3.4 80' (C fixtures) or '1.2.3.4:80' / '[::1]:80' (Go) -> (host, port)."""
    if " " in text:
        host, port = text.split(" ")
    else:
        host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


# ---- every pair ---------------------------------------------------------------------------

@pytest.mark.parametrize("client_kind", CLIENTS)
@pytest.mark.parametrize("server_kind", SERVERS)
def test_pairs_both_redirected(bins, sockdir, background, server_kind, client_kind):
    port, sock = free_udp_port(), sockdir / "udp.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}")
                        + server_argv(bins, server_kind, "127.0.0.1", port))
    wait_for_dgram(sock, server)
    assert tcp_listening(port) == []
    result = run(redirect(f"out,udp,port={port},path={sock}")
                 + client_argv(bins, client_kind, "127.0.0.1", port, "question one", "question two"))
    assert result.returncode == 0, result.stdout + result.stderr
    replies = re.findall(r"^reply (\S+(?: \d+)?) (.*)$", result.stdout, re.M)
    assert [data for _, data in replies] == ["echo:question one", "echo:question two"], result.stdout
    assert {split_addr(addr) for addr, _ in replies} == {("127.0.0.1", port)}
    server.wait_for_line(r"^received .* question two$")  # (its output may still be on its way)
    seen = re.findall(r"^received (\S+(?: \d+)?) len=(\d+) (.*)$", server.output, re.M)
    assert [data for _, _, data in seen] == ["question one", "question two"], server.output
    peers = {split_addr(addr) for addr, _, _ in seen}
    assert len(peers) == 1, peers                           # one sender, one stable address
    (host, peer_port), = peers
    assert host == "127.0.0.1" and peer_port >= 1024
    assert "bad-addr" not in server.output and "family=" not in server.output
    assert tcp_listening(port) == []                        # nothing on UDP, then or now


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("kind", C_VARIANTS + ["go"])
def test_server_redirected_native_unix_client(bins, sockdir, background, kind, host):
    port, sock = free_udp_port(), sockdir / "udp.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + server_argv(bins, kind, host, port))
    wait_for_dgram(sock, server)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(sockdir / "client.sock"))
        client.settimeout(10)
        for message in (b"one", b"two"):
            client.sendto(message, str(sock))
            data, source = client.recvfrom(100)
            assert data == b"echo:" + message and source == str(sock)
    addr = split_addr(server.wait_for_line(r"^received (\S+(?: \d+)?) len=3 two$").group(1))
    assert ipaddress.ip_address(addr[0]) == ipaddress.ip_address(host) and addr[1] >= 1024
    assert tcp_listening(port) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("kind", C_VARIANTS + ["go"])
def test_client_redirected_native_unix_server(bins, sockdir, kind, host):
    port, sock = free_udp_port(), sockdir / "udp.sock"
    seen = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(sock))
        server.settimeout(15)

        def answer():
            for _ in range(2):
                data, source = server.recvfrom(100)
                seen.append((source, os.stat(source), os.stat(os.path.dirname(source))))
                server.sendto(b"echo:" + data, source)

        helper = threading.Thread(target=answer, daemon=True)
        helper.start()
        result = run(redirect(f"out,udp,port={port},path={sock}") + client_argv(bins, kind, host, port, "a", "b"))
        helper.join(15)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^reply \S+(?: \d+)? (.*)$", result.stdout, re.M) == ["echo:a", "echo:b"]
    # The client never bound: it got a private reply socket, the same for both.
    (source, st, folder), second = seen
    assert second[0] == source and source.startswith("/tmp/redirect-")
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.geteuid()
    assert not os.path.exists(source)                       # removed with the socket
    assert not os.path.exists("/".join(source.split("/")[:3]))  # and its folders at the end
    local = re.search(r"^local (\S+(?: \d+)?)$", result.stdout, re.M).group(1)
    local_host, local_port = split_addr(local)
    assert local_port >= 1024
    if kind == "go":  # bound the dual-stack wildcard, port 0 first: that is what it keeps showing
        assert local_host == "::"
    else:
        assert ipaddress.ip_address(local_host).version == (6 if ":" in host else 4)


def test_python_server_and_client_with_pktinfo(sockdir, background):
    """A dynamic program: recvmsg with IP_PKTINFO, sendmsg to the shown address."""
    for host in ("127.0.0.1", "::1"):
        port = free_udp_port()
        sock = sockdir / f"py{port}.sock"
        server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["serve", host, port, 2])
        wait_for_dgram(sock, server)
        result = run(redirect(f"out,udp,port={port},path={sock}") + PROBE + ["ask", host, port, "x", "y"])
        assert result.returncode == 0, result.stderr
        assert server.wait() == 0
        listening, received = records(server.output)["listening"], records(server.output)["received"]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        assert listening["name"] == [host, port] and listening["domain"] == family
        assert listening["protocol"] == socket.IPPROTO_UDP
        assert received["data"] == "y" and received["peer"][0] == host and received["peer"][1] >= 1024
        level, kind, data = received["ancillary"][0]
        if family == socket.AF_INET:
            assert (level, kind) == (socket.IPPROTO_IP, 8)  # IP_PKTINFO
            assert bytes.fromhex(data)[4:8] == socket.inet_aton(host)
        else:
            assert (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
            assert bytes.fromhex(data)[:16] == socket.inet_pton(socket.AF_INET6, host)
        reply = records(result.stdout)["reply"]
        assert reply["data"] == "echo:y" and reply["peer"] == [host, port]
        assert tcp_listening(port) == []


# ---- sockets that talk to several destinations ---------------------------------------

def test_converted_socket_refuses_unmatched_destinations(sockdir, background):
    """Documented choice: a socket a rule converted stays converted; an IP
    destination that no rule (and no shown peer) maps fails with ENETUNREACH."""
    port, other = free_udp_port(), free_udp_port()
    sock = sockdir / "udp.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["serve", "127.0.0.1", port, 2])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}") + PROBE + ["mixed", port, other])
    found = records(result.stdout)
    assert found["matched"]["data"] == "echo:first" and found["matched"]["peer"] == ["127.0.0.1", port]
    assert found["unmatched"]["error"] == "ENETUNREACH"
    assert f"127.0.0.1:{other}: this socket is a Unix socket now" in result.stderr
    assert found["matched-again"]["data"] == "echo:third"
    assert tcp_listening(other) == []


def test_socket_bound_to_its_own_udp_port_is_not_converted(sockdir):
    port, own = free_udp_port(), free_udp_port()
    result = run(redirect(f"out,udp,port={port},path={sockdir}/x.sock") + PROBE + ["pinned", port, own])
    found = records(result.stdout)
    assert found["pinned"]["error"] == "ENETUNREACH"
    assert found["still-bound"]["name"] == ["127.0.0.1", own]
    assert f"is bound to UDP 127.0.0.1:{own} by the program" in result.stderr


def test_client_bound_to_port_zero_is_converted(sockdir, background):
    port, sock = free_udp_port(), sockdir / "udp.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["serve", "127.0.0.1", port, 1])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}") + PROBE + ["ephemeral", port])
    found = records(result.stdout)["ephemeral"]
    assert found["data"] == "echo:eph" and found["peer"] == ["127.0.0.1", port]
    assert found["after"] == found["before"] and found["before"][1] >= 1024  # its address does not change
    assert tcp_listening(found["before"][1]) == []                           # but it left UDP


# ---- rules ---------------------------------------------------------------------------

def test_reject_applies_to_datagram_bind_connect_and_send(sockdir):
    port = free_udp_port()
    for call in ("bind", "connect", "sendto"):
        result = run(redirect(f"udp,port={port},reject=EPERM") + PROBE + ["try-call", call, "127.0.0.1", port])
        assert records(result.stdout)[call]["error"] == "EPERM", result.stdout + result.stderr
    # A tcp rule does not catch datagram sockets.
    result = run(redirect(f"tcp,port={port},reject=EPERM") + PROBE + ["try-call", "connect", "127.0.0.1", port])
    assert records(result.stdout)["connect"]["error"] is None
    assert tcp_listening(port) == []


def test_blackhole_datagram_server(sockdir):
    port = free_udp_port()
    result = run(redirect(f"in,udp,port={port},blackhole") + PROBE + ["try-call", "bind", "127.0.0.1", port])
    assert records(result.stdout)["bind"] == {"check": "bind", "error": None, "name": ["127.0.0.1", port]}
    assert tcp_listening(port) == []


def test_type_placeholder_expands_to_udp(sockdir, background):
    port = free_udp_port()
    sock = sockdir / f"{port}-udp.sock"
    server = background(redirect(f"in,path={sockdir}/%p-%t.sock") + PROBE + ["serve", "127.0.0.1", port, 1])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,path={sockdir}/%p-%t.sock") + PROBE + ["ask", "127.0.0.1", port, "typed"])
    assert records(result.stdout)["reply"]["data"] == "echo:typed"
    assert server.wait() == 0 and not sock.exists()


def test_unusable_path_fails_closed(sockdir):
    port = free_udp_port()
    result = run(redirect(f"in,udp,port={port},path={sockdir}/missing/dir/u.sock")
                 + PROBE + ["try-call", "bind", "127.0.0.1", port])
    assert records(result.stdout)["bind"]["error"] == "ENOENT"
    assert "u.sock failed: No such file or directory" in result.stderr
    assert tcp_listening(port) == []
    result = run(redirect(f"out,udp,port={port},path={sockdir}/nobody.sock") + PROBE + ["try-call", "sendto", "127.0.0.1", port])
    assert records(result.stdout)["sendto"]["error"] == "ECONNREFUSED"


# ---- what the program must not notice --------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_flags_and_options_survive(sockdir, host):
    port = free_udp_port()
    result = run(redirect(f"in,udp,port={port},path={sockdir}/o.sock") + PROBE + ["options", host, port])
    found = records(result.stdout)["options"]
    assert found == {"check": "options", "name": [host, port],
                     "domain": socket.AF_INET6 if ":" in host else socket.AF_INET, "protocol": socket.IPPROTO_UDP,
                     "type": socket.SOCK_DGRAM, "rcvbuf_same": True, "broadcast": 1, "tos": 0x10,
                     "nonblock": True, "cloexec": True, "empty": "EAGAIN", "gso": "ENOPROTOOPT"}, result.stderr
    assert not (sockdir / "o.sock").exists()


def test_fork_child_serves_and_socket_file_goes(sockdir, background):
    port, sock = free_udp_port(), sockdir / "f.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["fork-server", "127.0.0.1", port])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}") + PROBE + ["ask", "127.0.0.1", port, "hi"])
    assert records(result.stdout)["reply"]["data"] == "child:hi"
    assert server.wait() == 0
    assert records(server.output)["child"]["peer"][0] == "127.0.0.1"
    assert not sock.exists()


def test_tcp_recvfrom_reports_no_sender(sockdir, background):
    """recvfrom with an address buffer on a converted TCP socket: TCP gives no
    address (length 0); the Unix path of the peer must not show."""
    port, sock = free_udp_port(), sockdir / "t.sock"
    code = ("import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\ns.listen()\n"
            "c,_=s.accept()\ndata,addr=c.recvfrom(100)\nprint(repr(data),repr(addr),flush=True)\n"
            "data,anc,flags,addr=c.recvmsg(100)\nprint(repr(data),repr(addr),flush=True)\n")
    server = background(redirect(f"in,tcp,port={port},path={sock}") + [sys.executable, "-c", code, port])
    from helpers import wait_for_socket
    wait_for_socket(sock, proc=server)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.bind(str(sockdir / "named.sock"))  # a named peer: Unix would report its path
        client.connect(str(sock))
        client.sendall(b"one")
        server.wait_for_line("^b'one'")
        client.sendall(b"two")
        server.wait_for_line("^b'two'")
    assert server.wait() == 0
    assert "named.sock" not in server.output and server.output.count(" None") == 2, server.output


# ---- the calls and their details ------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("control", [False, True], ids=["plain", "pktinfo"])
def test_sendmsg_recvmsg(bins, sockdir, background, host, control):
    port, sock = free_udp_port(), sockdir / "m.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [
        bins / "udp-server-glibc", "--mode", "recvmsg", *(["--pktinfo"] if control else []), host, port])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}")
                 + [bins / "udp-client-musl", "--mode", "sendmsg", host, port, "alpha", "beta"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^reply (\S+) (\d+) (.*)$", result.stdout, re.M) == [
        (host, str(port), "echo:alpha"), (host, str(port), "echo:beta")]
    server.wait_for_line(r"^received \S+ \d+ len=4 beta$")
    if control:
        assert server.output.count(f"pktinfo {host}") == 2, server.output
    else:
        assert "pktinfo" not in server.output


def test_sendmmsg_recvmmsg_batches(bins, sockdir, background):
    port, sock = free_udp_port(), sockdir / "b.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [
        bins / "udp-server-musl", "--mode", "recvmmsg", "::", port])
    wait_for_dgram(sock, server)
    messages = [f"m{i}" for i in range(12)]
    result = run(redirect(f"out,udp,port={port},path={sock}")
                 + [bins / "udp-client-glibc", "--mode", "sendmmsg", "::1", port, *messages])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 12" in result.stdout
    assert sorted(re.findall(r"^reply ::1 \d+ echo:(\S+)$", result.stdout, re.M)) == sorted(messages)
    server.wait_for_line(r"^received \S+ \d+ len=3 m11$")
    assert sum(int(n) for n in re.findall(r"^batch (\d+)$", server.output, re.M)) == 12
    deadline = time.monotonic() + 10  # the server prints "replied" after its sendmmsg returns
    while sum(int(n) for n in re.findall(r"^replied (\d+)$", server.output, re.M)) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(int(n) for n in re.findall(r"^replied (\d+)$", server.output, re.M)) == 12
    peers = set(re.findall(r"^received (\S+ \d+) ", server.output, re.M))
    # A wildcard server sees 127.U.U.1 (U: the sender's uid), IPv4-mapped on IPv6, as for TCP.
    assert len(peers) == 1 and peers.pop().startswith("::ffff:127.0.0.1 ")


def test_peek_truncation_and_empty_datagrams(bins, sockdir, background):
    port, sock = free_udp_port(), sockdir / "p.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [
        bins / "udp-server-glibc", "--mode", "recvmsg", "--peek", "--bufsize", "4", "127.0.0.1", port])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}")
                 + [bins / "udp-client-glibc", "127.0.0.1", port, "abcdefgh", ""])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^reply \S+ \d+ (.*)$", result.stdout, re.M) == ["echo:abcd", "echo:"]
    server.wait_for_line(r"^received \S+ \d+ len=0 $")
    lines = server.output.splitlines()
    peeked = [line for line in lines if line.startswith("peeked")]
    assert [line.split(" ", 3)[3] for line in peeked] == ["len=8 abcd", "len=0 "]
    assert lines.count("truncated") == 1
    addrs = {tuple(line.split()[1:3]) for line in lines if line.startswith(("peeked", "received"))}
    assert len(addrs) == 1 and addrs.pop()[0] == "127.0.0.1"


@pytest.mark.parametrize("client_kind", ["glibc", "go"])
def test_connected_client_and_connected_server(bins, sockdir, background, client_kind):
    """The client connects then sends; the server connects to the address it
    was shown, then answers with send()."""
    port, sock = free_udp_port(), sockdir / "c.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [
        bins / "udp-server-glibc", "--connect", "0.0.0.0", port])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}")
                 + client_argv(bins, client_kind, "127.0.0.1", port, "one", "two", connected=True))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.findall(r"^reply \S+(?: \d+)? (.*)$", result.stdout, re.M) == ["echo:one", "echo:two"]
    if client_kind == "glibc":
        assert f"connected peer 127.0.0.1 {port}" in result.stdout
    else:
        assert f"remote 127.0.0.1:{port}" in result.stdout
    shown = server.wait_for_line(r"^received (\S+ \d+) len=3 one$").group(1)
    assert server.wait_for_line(r"^peer (\S+ \d+)$").group(1) == shown
    assert server.wait_for_line(r"^local (\S+ \d+)$").group(1) == f"127.0.0.1 {port}"
    server.wait_for_line(r"^received \S+ \d+ len=3 two$")


def test_concurrent_clients_get_their_own_answers(bins, sockdir, background):
    port, sock = free_udp_port(), sockdir / "many.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [bins / "go-udp-server", "-addr", f":{port}", "-quiet"])
    wait_for_dgram(sock, server)
    load = run(redirect(f"out,udp,port={port},path={sock}")
               + [bins / "go-udp-client", "-n", "400", "-c", "8", f"127.0.0.1:{port}"], timeout=120)
    assert load.returncode == 0, load.stdout + load.stderr
    assert "ok=400 fail=0" in load.stdout
    # Separate processes at once: each gets the answer to its own question.
    clients = [background(redirect(f"out,udp,port={port},path={sock}", verbose=0)
                          + [bins / f"udp-client-{C_VARIANTS[i % 2]}", "127.0.0.1", port, f"from-{i}", f"again-{i}"])
               for i in range(6)]
    for i, client in enumerate(clients):
        assert client.wait(60) == 0, client.output
        assert re.findall(r"^reply 127.0.0.1 \d+ (.*)$", client.output, re.M) == [f"echo:from-{i}", f"echo:again-{i}"]
    assert "bad-addr" not in server.output
    assert tcp_listening(port) == []


def test_exec_keeps_the_socket_and_threads_share_it(sockdir, background):
    port, sock = free_udp_port(), sockdir / "e.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["exec-server", "127.0.0.1", port])
    server.wait_for_line('"check": "inherited"')
    result = run(redirect(f"out,udp,port={port},path={sock}") + PROBE + ["ask", "127.0.0.1", port, "x"])
    assert records(result.stdout)["reply"]["data"] == "exec:x"
    assert server.wait() == 0
    assert records(server.output)["inherited"] == {"check": "inherited", "name": ["127.0.0.1", port],
                                                   "family": socket.AF_INET}
    assert not sock.exists()

    port, sock = free_udp_port(), sockdir / "t.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["thread-server", "::1", port, 4])
    wait_for_dgram(sock, server)
    clients = [background(redirect(f"out,udp,port={port},path={sock}", verbose=0)
                          + PROBE + ["ask", "::1", port, f"q{i}"]) for i in range(4)]
    for i, client in enumerate(clients):
        assert client.wait(30) == 0, client.output
        assert records(client.output)["reply"]["data"] == f"thread:q{i}"
    assert server.wait() == 0
    peers = records(server.output)["threads"]["peers"]
    assert len({tuple(p) for p in peers}) == 4 and all(p[0] == "::1" for p in peers)


def test_programs_under_one_redirect_see_each_others_faces(bins, sockdir):
    """Client and server under the same supervisor: the server sees the client
    at the address the client's getsockname shows."""
    port, sock = free_udp_port(), sockdir / "same.sock"
    script = (f"{bins}/udp-server-glibc --count 2 127.0.0.1 {port} & "
              f"while ! [ -S {sock} ]; do sleep 0.05; done; "
              f"{bins}/udp-client-musl 127.0.0.1 {port} a b; wait")
    result = run(redirect(f"in,udp,port={port},path={sock}", f"out,udp,port={port},path={sock}")
                 + ["sh", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr
    seen = set(re.findall(r"^received (\S+ \d+) len=1", result.stdout, re.M))
    local = re.search(r"^local (\S+ \d+)$", result.stdout, re.M).group(1)
    assert seen == {local}, result.stdout
    assert re.findall(r"^reply (\S+ \d+) ", result.stdout, re.M) == [f"127.0.0.1 {port}"] * 2


def test_sender_without_an_address_is_shown_but_cannot_be_answered(bins, sockdir, background):
    """An unbound Unix client has no address to answer to: the server still sees
    an IP sender (never an empty or Unix address); its reply fails loudly."""
    port, sock = free_udp_port(), sockdir / "anon.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + [bins / "udp-server-musl", "127.0.0.1", port])
    wait_for_dgram(sock, server)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.sendto(b"anon", str(sock))
    host, shown_port = server.wait_for_line(r"^received (\S+) (\d+) len=4 anon$").groups()
    assert host == "127.0.0.1" and int(shown_port) >= 1024
    server.wait_for_line(r"^error sendto: Connection refused$")
    assert "had no address to answer to" in server.output


# ---- what UDP does that a Unix datagram socket would not ------------------------------

def test_full_receiver_drops_instead_of_blocking(sockdir):
    """A Unix datagram socket queues 10 datagrams (net.unix.max_dgram_qlen);
    UDP drops what does not fit. The program must never hang in a send."""
    port = free_udp_port()
    result = run(redirect(f"udp,port={port},path={sockdir}/f.sock") + PROBE + ["flood", port, 40], timeout=30)
    found = records(result.stdout)["flood"]
    assert found["sent"] == 40 and 10 <= found["received"] <= 40 and found["in_order"], result.stderr


def test_answer_from_a_new_socket_reaches_the_sender(bins, sockdir, background):
    """A server that answers the shown sender from another socket (TFTP): the
    answer goes to the sender, never out on real UDP to whoever holds that port."""
    port, sock = free_udp_port(), sockdir / "tftp.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}") + PROBE + ["answer-from-new-socket", "127.0.0.1", port])
    wait_for_dgram(sock, server)
    result = run(redirect(f"out,udp,port={port},path={sock}") + [bins / "udp-client-glibc", "127.0.0.1", port, "RRQ"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^reply 127.0.0.1 \d+ fresh:RRQ$", result.stdout, re.M)
    assert server.wait() == 0
    peer = records(server.output)["answered"]["peer"]
    assert tcp_listening(peer[1]) == []


def test_wildcard_bound_client_is_seen_from_loopback(bins, sockdir):
    """A client bound to 0.0.0.0 sends from loopback, as on UDP; under the same
    redirect the server sees the very port the client bound."""
    port, sock = free_udp_port(), sockdir / "w.sock"
    script = (f"{bins}/udp-server-glibc --count 1 127.0.0.1 {port} & "
              f"while ! [ -S {sock} ]; do sleep 0.05; done; "
              f"{bins}/udp-client-musl --bind 0.0.0.0 0 127.0.0.1 {port} w; wait")
    result = run(redirect(f"in,udp,port={port},path={sock}", f"out,udp,port={port},path={sock}") + ["sh", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr
    bound = re.search(r"^bound 0.0.0.0 (\d+)$", result.stdout, re.M).group(1)
    assert re.search(r"^received (\S+ \d+) len=1 w$", result.stdout, re.M).group(1) == f"127.0.0.1 {bound}"


def test_timestamps_error_queue_and_gso(sockdir):
    port = free_udp_port()
    result = run(redirect(f"udp,port={port},path={sockdir}/x.sock") + PROBE + ["extras", port])
    found = records(result.stdout)["extras"]
    assert found == {"check": "extras", "errqueue": "EAGAIN", "data": "x", "cmsgs": [[socket.SOL_SOCKET, 29]],
                     "gso": "EIO"}, result.stderr


def test_socat_udp_listen_fork(sockdir, background):
    """socat's UDP-LISTEN,fork binds the same address again (SO_REUSEADDR) for
    each new client: the newest socket takes new senders."""
    port, sock = free_udp_port(), sockdir / "socat.sock"
    server = background(redirect(f"in,udp,port={port},path={sock}")
                        + ["socat", f"UDP4-LISTEN:{port},fork,reuseaddr", "EXEC:cat"])
    wait_for_dgram(sock, server)
    for i in range(3):
        result = run(redirect(f"out,udp,port={port},path={sock}") + ["socat", "-T1", "-", f"UDP4:127.0.0.1:{port}"],
                     input=f"hello {i}\n")
        assert result.stdout == f"hello {i}\n", result.stderr
    assert tcp_listening(port) == []


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert found, f"{name} is not installed (scripts/setup.sh installs it)"
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a root program: run as root")
def test_dnsmasq_that_drops_privileges_still_answers(sockdir, background):
    """Debian's dnsmasq binds as root, then becomes nobody (--user): its
    answers go to a redirected client's private reply socket, which nobody
    may not reach. Answers to a sender the program was shown are sent with the
    supervisor's rights (the sender reached the program first)."""
    port, sock = free_port_udp(), sockdir / "dns.sock"
    sockdir.chmod(0o755)
    server = background(redirect(f"in,udp,port={port},path={sock}", f"in,tcp,port={port},path={sockdir}/dns-tcp.sock")
                        + [_tool("dnsmasq"), "-k", "-p", str(port), "--listen-address=127.0.0.1", "--bind-interfaces",
                           "--user=nobody", "--no-resolv", "--no-hosts", "--address=/test.example/192.0.2.7",
                           "-C", "/dev/null", f"--pid-file={sockdir}/dnsmasq.pid"])
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(3):
        result = run(redirect(f"out,udp,port={port},path={sock}", verbose=0)
                     + [_tool("dig"), "@127.0.0.1", "-p", str(port), "test.example", "+short", "+tries=1", "+timeout=3"])
        assert result.stdout.strip() == "192.0.2.7", result.stdout + result.stderr + server.output
    assert tcp_listening(port) == []
    with open(f"/proc/{_child_of(server.pid)}/status") as status:
        assert re.search(r"^Uid:\s+65534\b", status.read(), re.M), "dnsmasq did not drop to nobody"


@pytest.mark.skipif(os.geteuid() != 0, reason="tftpd --secure chroots: run as root")
def test_tftpd_that_chroots_and_drops_privileges_still_answers(sockdir, background):
    """tftpd-hpa --secure -u nobody: it chroots, becomes nobody, forks a child
    per request that connects a new UDP socket to the client and sends the
    file from there."""
    port, sock, root = free_port_udp(), sockdir / "tftp.sock", sockdir / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello over tftp\n")
    for path in (sockdir, root, root / "hello.txt"):
        path.chmod(0o755)
    server = background(redirect(f"in,udp,port={port},path={sock}")
                        + [_tool("in.tftpd"), "-L", "-s", "-u", "nobody", "--address", f"127.0.0.1:{port}", root])
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(2):
        result = run(redirect(f"out,udp,port={port},path={sock}", verbose=0)
                     + [_tool("tftp"), "127.0.0.1", str(port), "-m", "binary", "-c", "get", "hello.txt",
                        str(sockdir / f"got-{i}.txt")], timeout=30)
        assert (sockdir / f"got-{i}.txt").read_text() == "hello over tftp\n", result.stdout + result.stderr + server.output


@pytest.fixture(scope="session")
def dropper():
    yield from compiled("dropper", "-static")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a root program: run as root")
@pytest.mark.parametrize("drops", ["setuid", "chroot"])
def test_our_server_that_drops_privileges_after_bind_answers(dropper, sockdir, background, drops):
    """A static server of ours binds, then becomes nobody (setuid), or
    chroots and becomes nobody and answers from a new socket connected to the
    sender (chroot); redirected clients get every answer."""
    port, sock, jail = free_port_udp(), sockdir / "drop.sock", sockdir / "jail"
    jail.mkdir()
    sockdir.chmod(0o755)
    n = 3
    server_argv = [dropper, "setuid", port, n] if drops == "setuid" else [dropper, "chroot", jail, port, n]
    server = background(redirect(f"in,udp,port={port},path={sock}") + server_argv)
    server.wait_for_line("^ready$")
    for i in range(n):
        result = run(redirect(f"out,udp,port={port},path={sock}", verbose=0) + [dropper, "client", port, f"ping{i}"])
        assert result.stdout == f"echo:ping{i}\n", result.stdout + result.stderr + server.output
    assert server.wait(10) == 0, server.output


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a root program: run as root")
@pytest.mark.one_backend
@pytest.mark.parametrize("calls_in", ["C", "Python"])
def test_a_root_supervisors_answers_name_the_program(dropper, sockdir, background, monkeypatch, calls_in):
    """Answers to a shown sender go with a root supervisor's rights (the
    program dropped to nobody, and the sender's directory is root's alone),
    yet a receiver that asks (SO_PASSCRED) is told the program sent them:
    its pid, nobody's ids, never root's. The notify backend makes the
    answer in C (redirect/_fastpath.c) where it was built, or in Python: the
    same either way. (Its blocking receives with nothing there yet wait in
    Python.)"""
    monkeypatch.setenv("REDIRECT_COMPILED", "1" if calls_in == "C" else "0")
    port, sock, count = free_port_udp(), sockdir / "drop.sock", sockdir / "count.json"
    private = sockdir / "root-only"
    private.mkdir(mode=0o700)
    sockdir.chmod(0o755)
    n = 3
    server = background(redirect(f"in,udp,port={port},path={sock},mode=0666", options=("--count-calls", str(count)))
                        + [dropper, "setuid", port, n])
    server.wait_for_line("^ready$")
    program = _child_of(server.pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(str(private / "client.sock"))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        client.settimeout(10)
        answers = []
        for i in range(n):
            client.sendto(f"ping{i}".encode(), str(sock))
            data, ancillary, _, _ = client.recvmsg(64, 64)
            (level, kind, creds), = ancillary
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
            answers.append((data, struct.unpack("=iII", creds)))
    assert server.wait(10) == 0, server.output
    assert [data for data, _ in answers] == [f"echo:ping{i}".encode() for i in range(n)], answers
    assert {creds for _, creds in answers} == {(program, 65534, 65534)}, (answers, program)
    counts = json.loads(count.read_text())
    trapped = {name: counts["trapped"].get(name, 0) for name in ("recvfrom", "sendto")}
    assert trapped["recvfrom"] >= n and trapped["sendto"] == n, counts
    if calls_in == "C":  # (a receive that found its datagram there is C's too)
        assert counts["compiled"]["sendto"] == n and counts["compiled"].get("recvfrom", 0) <= trapped["recvfrom"]
    else:
        assert counts["compiled"] == {}, counts


@pytest.mark.one_backend
@pytest.mark.parametrize("calls_in", ["C", "Python"])
def test_go_udp_calls_compiled_or_in_python_alike(bins, sockdir, background, monkeypatch, calls_in):
    """A Go UDP echo server traps two calls per datagram, recvfrom (the
    sender's address) and sendto (the answer): compiled, C makes both, and
    the server sees the same senders, each client socket one IP address of
    its own."""
    monkeypatch.setenv("REDIRECT_COMPILED", "1" if calls_in == "C" else "0")
    port, sock, count = free_port_udp(), sockdir / "g.sock", sockdir / "count.json"
    server = background(redirect(f"in,udp,port={port},path={sock}", options=("--count-calls", str(count)))
                        + [bins / "go-udp-server", "-addr", f"127.0.0.1:{port}"])
    wait_for_dgram(sock, server)
    load = run(redirect(f"out,udp,port={port},path={sock}", verbose=0)
               + [bins / "go-udp-client", "-connected", "-n", "60", "-c", "3", f"127.0.0.1:{port}"], timeout=60)
    assert "ok=60 fail=0" in load.stdout, load.stdout + load.stderr
    server.stop()
    senders = re.findall(r"^received (\S+) len=\d+ ping (\d+) \d+$", server.output, re.M)
    assert len(senders) == 60, server.output
    assert all(host.startswith("127.") for host, _ in (address.rsplit(":", 1) for address, _ in senders)), senders
    by_socket = {}
    for address, goroutine in senders:
        by_socket.setdefault(goroutine, set()).add(address)
    # (the goroutines share the round trips: one may have taken them all)
    assert all(len(shown) == 1 for shown in by_socket.values()), by_socket
    assert len({next(iter(shown)) for shown in by_socket.values()}) == len(by_socket), by_socket
    counts = json.loads(count.read_text())
    trapped = {name: counts["trapped"].get(name, 0) for name in ("recvfrom", "sendto")}
    assert trapped["recvfrom"] >= 60 and trapped["sendto"] == 60, counts
    made_in_c = {name: counts["compiled"].get(name, 0) for name in trapped}
    assert made_in_c == (trapped if calls_in == "C" else {"recvfrom": 0, "sendto": 0}), counts


def free_port_udp() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_of(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return int(children.read().split()[0])
