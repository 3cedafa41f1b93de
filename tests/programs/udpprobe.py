"""A dynamic program (Python's socket module) that checks, from the inside, how
its UDP sockets behave under redirect. Prints one JSON line per check.

    udpprobe.py serve HOST PORT COUNT        echo server: recvmsg with IP_PKTINFO, sendmsg back
    udpprobe.py ask HOST PORT MESSAGE...     client: sendto, recvfrom, never binds
    udpprobe.py CHECK ARGS...                one of the checks below
"""
import errno
import fcntl
import json
import os
import socket
import sys

SO_DOMAIN, SO_PROTOCOL = 39, 38
IP_PKTINFO = 8  # not in Python 3.11's socket module


def say(**kw):
    print(json.dumps(kw), flush=True)


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(host, port, count):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    v6 = s.family == socket.AF_INET6
    s.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
                 socket.IPV6_RECVPKTINFO if v6 else IP_PKTINFO, 1)
    s.bind((host, int(port)))
    say(check="listening", name=list(s.getsockname()[:2]), domain=s.getsockopt(socket.SOL_SOCKET, SO_DOMAIN),
        protocol=s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL))
    for _ in range(int(count)):
        data, anc, flags, peer = s.recvmsg(2048, socket.CMSG_SPACE(64))
        info = [(level, kind, cdata.hex()) for level, kind, cdata in anc]
        say(check="received", data=data.decode(), peer=list(peer[:2]), ancillary=info, flags=flags)
        s.sendmsg([b"echo:" + data], [], 0, peer)


def ask(host, port, *messages):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.settimeout(5)
    for message in messages:
        s.sendto(message.encode(), (host, int(port)))
        data, peer = s.recvfrom(2048)
        say(check="reply", data=data.decode(), peer=list(peer[:2]), local=list(s.getsockname()[:2]))


def mixed(port, other_port):
    """A socket that a rule converted, then sends to a destination no rule matches."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"first", ("127.0.0.1", int(port)))
    data, peer = s.recvfrom(2048)
    say(check="matched", data=data.decode(), peer=list(peer))
    try:
        s.sendto(b"second", ("127.0.0.1", int(other_port)))
        say(check="unmatched", error=None)
    except OSError as err:
        say(check="unmatched", error=errno.errorcode[err.errno])
    s.sendto(b"third", ("127.0.0.1", int(port)))  # the matched one still works
    data, peer = s.recvfrom(2048)
    say(check="matched-again", data=data.decode())


def pinned(port, own_port):
    """A socket the program bound to a UDP port of its own stays on the network."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(own_port)))
    try:
        s.sendto(b"x", ("127.0.0.1", int(port)))
        say(check="pinned", error=None)
    except OSError as err:
        say(check="pinned", error=errno.errorcode[err.errno])
    say(check="still-bound", name=list(s.getsockname()))


def ephemeral(port):
    """Bound to port 0 (as many clients do), then sending to a redirected server."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.bind(("0.0.0.0", 0))
    before = s.getsockname()
    s.sendto(b"eph", ("127.0.0.1", int(port)))
    data, peer = s.recvfrom(2048)
    say(check="ephemeral", data=data.decode(), peer=list(peer), before=list(before), after=list(s.getsockname()))


def options(host, port):
    """State set before bind survives the conversion; the socket reads back as UDP."""
    s = socket.socket(family(host), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    rcvbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    s.bind((host, int(port)))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)  # meaningless on Unix: must succeed
    try:
        s.setsockopt(socket.IPPROTO_UDP, 103, 1200)  # UDP_SEGMENT: would glue datagrams together
        gso = None
    except OSError as err:
        gso = errno.errorcode[err.errno]
    try:
        s.recvfrom(10)
        empty = "no error"
    except BlockingIOError:
        empty = "EAGAIN"
    say(check="options", name=list(s.getsockname()[:2]),
        domain=s.getsockopt(socket.SOL_SOCKET, SO_DOMAIN), protocol=s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL),
        type=s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
        rcvbuf_same=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rcvbuf,
        broadcast=s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST),
        tos=s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        nonblock=bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
        cloexec=bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC), empty=empty, gso=gso)


def fork_server(host, port):
    """Bind in the parent, serve in a forked child, parent waits."""
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    say(check="listening", name=list(s.getsockname()[:2]))
    pid = os.fork()
    if pid == 0:
        data, peer = s.recvfrom(2048)
        s.sendto(b"child:" + data, peer)
        say(check="child", peer=list(peer[:2]))
        os._exit(0)
    s.close()
    _, status = os.waitpid(pid, 0)
    say(check="parent", status=status)


def exec_server(host, port):
    """Bind, then exec a new image that serves on the inherited fd."""
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    say(check="listening", name=list(s.getsockname()[:2]))
    os.set_inheritable(s.fileno(), True)
    os.execv(sys.executable, [sys.executable, __file__, "inherited", str(s.fileno())])


def inherited(fd):
    s = socket.socket(fileno=int(fd))
    say(check="inherited", name=list(s.getsockname()[:2]), family=s.family)
    data, peer = s.recvfrom(2048)
    s.sendto(b"exec:" + data, peer)
    say(check="served", peer=list(peer[:2]))


def thread_server(host, port, count):
    """Several threads block in recvfrom on one socket; each answers what it gets."""
    import threading
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    say(check="listening", name=list(s.getsockname()[:2]))
    peers = []

    def serve():
        data, peer = s.recvfrom(2048)
        peers.append(list(peer[:2]))
        s.sendto(b"thread:" + data, peer)

    threads = [threading.Thread(target=serve) for _ in range(int(count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    say(check="threads", peers=peers)


def flood(port, count):
    """Sends more datagrams to its own server socket than a Unix datagram queue
    holds, before reading any: the sends must not block forever (UDP drops)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(port)))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(count)):
        c.sendto(b"q%d" % i, ("127.0.0.1", int(port)))
    s.settimeout(0.5)
    got = []
    try:
        while True:
            got.append(s.recv(10).decode())
    except socket.timeout:
        pass
    say(check="flood", sent=int(count), received=len(got), in_order=got == sorted(got, key=lambda x: int(x[1:])))


def answer_from_new_socket(host, port):
    """TFTP-style: read a request, answer the shown sender from a fresh socket."""
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.bind((host, int(port)))
    say(check="listening", name=list(s.getsockname()[:2]))
    data, peer = s.recvfrom(2048)
    t = socket.socket(family(host), socket.SOCK_DGRAM)
    t.sendto(b"fresh:" + data, peer)
    say(check="answered", peer=list(peer[:2]))


def extras(port):
    """SO_TIMESTAMP set before bind, MSG_ERRQUEUE, GSO through a control message."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 29, 1)  # SO_TIMESTAMP
    s.bind(("127.0.0.1", int(port)))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.sendto(b"x", ("127.0.0.1", int(port)))
    try:
        s.recvmsg(10, 256, 0x2000)  # MSG_ERRQUEUE: nothing there, the data stays
        errqueue = None
    except OSError as err:
        errqueue = errno.errorcode[err.errno]
    data, anc, flags, peer = s.recvmsg(10, 256)
    try:
        c.sendmsg([b"a" * 300], [(17, 103, (100).to_bytes(2, "little"))], 0, ("127.0.0.1", int(port)))
        gso = None
    except OSError as err:
        gso = errno.errorcode[err.errno]
    say(check="extras", errqueue=errqueue, data=data.decode(), cmsgs=[[level, kind] for level, kind, _ in anc], gso=gso)


def try_call(call, host, port):
    """bind, connect or sendto once; the errno it gets."""
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        if call == "bind":
            s.bind((host, int(port)))
        elif call == "connect":
            s.connect((host, int(port)))
        else:
            s.sendto(b"x", (host, int(port)))
        say(check=call, error=None, name=list(s.getsockname()[:2]))
    except OSError as err:
        say(check=call, error=errno.errorcode[err.errno])


if __name__ == "__main__":
    globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
