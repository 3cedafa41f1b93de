"""A dynamic program that checks, from the inside, what redirect promises a
program will not notice. Run under redirect; prints one JSON line per check."""
import ctypes
import fcntl
import json
import os
import select
import socket
import sys

libc = ctypes.CDLL("libc.so.6", use_errno=True)
SO_DOMAIN, SO_PROTOCOL = 39, 38


def say(**kw):
    print(json.dumps(kw), flush=True)


def options(port):
    """State set before bind survives the conversion; options read back as TCP."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 40000)  # not TCP's default (65536 would read as it)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    fcntl.fcntl(s.fileno(), fcntl.F_SETOWN, os.getpid())
    import signal
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # O_ASYNC sends SIGIO on each connection
    fcntl.fcntl(s.fileno(), fcntl.F_SETFL, fcntl.fcntl(s.fileno(), fcntl.F_GETFL) | os.O_ASYNC)  # FIOASYNC
    rcvbuf_before = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN)  # before bind: must survive the swap
    s.bind(("127.0.0.1", port))
    s.listen()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # meaningless on Unix: must succeed
    say(check="options",
        name=list(s.getsockname()),
        domain=s.getsockopt(socket.SOL_SOCKET, SO_DOMAIN),
        protocol=s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL),
        type=s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
        reuseaddr=s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
        keepalive=s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        rcvbuf_same=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rcvbuf_before,
        nodelay=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        nonblock=bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
        cloexec=bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        owner=fcntl.fcntl(s.fileno(), fcntl.F_GETOWN) == os.getpid(),
        async_io=bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_ASYNC))
    events = ep.poll(20)
    conn, peer = s.accept()
    say(check="epoll", ready=[fd for fd, _ in events] == [s.fileno()], peer=list(peer),
        conn_domain=conn.getsockopt(socket.SOL_SOCKET, SO_DOMAIN),
        conn_name=list(conn.getsockname()), conn_peer=list(conn.getpeername()))
    conn.close()


def accept_raw(port):
    """accept() with a short buffer truncates like the kernel; NULL address works."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    say(check="listening")
    buf = ctypes.create_string_buffer(b"\xee" * 16)
    length = ctypes.c_int(4)
    fd = libc.accept(s.fileno(), buf, ctypes.byref(length))
    say(check="truncated", fd_ok=fd >= 0, length=length.value, data=buf.raw.hex())
    os.close(fd)
    fd = libc.accept(s.fileno(), None, None)
    say(check="null", fd_ok=fd >= 0, errno=ctypes.get_errno())
    os.close(fd)


def dualstack(port):
    """IPv4 and IPv6 listeners on one port resolving to one path: both bind."""
    v4 = socket.socket(socket.AF_INET)
    v4.bind(("0.0.0.0", port))
    v4.listen()
    v6 = socket.socket(socket.AF_INET6)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::", port))
    v6.listen()
    say(check="dualstack", v4=list(v4.getsockname()), v6=list(v6.getsockname())[:2])
    conn, peer = v4.accept()
    conn.sendall(b"v4 answered")
    conn.close()


def dupbind(port):
    """Binding the very same address twice fails as on TCP, unless SO_REUSEPORT."""
    first = socket.socket()
    first.bind(("127.0.0.1", port))
    first.listen()
    second = socket.socket()
    try:
        second.bind(("127.0.0.1", port))
        plain = None
    except OSError as err:
        plain = err.errno
    shared = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.append(s)
    shared[0].bind(("127.0.0.1", port + 1))
    shared[0].listen()
    try:
        shared[1].bind(("127.0.0.1", port + 1))
        reuseport = None
    except OSError as err:
        reuseport = err.errno
    say(check="dupbind", plain=plain, reuseport=reuseport)


def tcpinfo(port):
    """TCP-level options read back as a TCP socket's would."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    algo = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    say(check="tcpinfo", length=len(info), state=info[0], congestion=algo.rstrip(b"\0").decode(),
        mss=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        keepidle=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))


def threads(port):
    """A thread blocked in accept() on a converted listener does not stall the
    others, and survives a signal (the kernel restarts or Python retries it)."""
    import signal
    import threading
    got = []
    signal.signal(signal.SIGUSR1, lambda *_: got.append("signal"))
    blocked = socket.socket()
    blocked.bind(("127.0.0.1", port))
    blocked.listen()
    result = {}

    def wait_in_accept():
        conn, peer = blocked.accept()
        result["peer"] = list(peer)
        conn.close()

    waiter = threading.Thread(target=wait_in_accept)
    waiter.start()
    # Meanwhile the main thread converts, connects and asks names.
    other = socket.socket()
    other.bind(("127.0.0.1", port + 1))
    other.listen()
    client = socket.socket()
    client.connect(("127.0.0.1", port + 1))
    conn, peer = other.accept()
    say(check="meanwhile", client_peer=list(client.getpeername()), server_peer=list(peer))
    os.kill(os.getpid(), signal.SIGUSR1)
    waiter.join(30)
    say(check="threads", peer=result.get("peer"), signal=got)


def dups(port):
    """dup, dup2, fork and close: the socket file lives while any fd of the
    socket does, in any process; a child's close is not the parent's."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    copy = os.dup(s.fileno())
    s.close()
    pid = os.fork()
    if pid == 0:  # the child closes its copies and exits
        os.close(copy)
        os._exit(0)
    os.waitpid(pid, 0)
    say(check="dup", name=list(socket.socket(fileno=os.dup(copy)).getsockname()))
    listener = socket.socket(fileno=copy)
    conn, _ = listener.accept()
    conn.close()
    again = os.dup2(copy, 100)
    listener.close()
    say(check="dup2", fd=again)
    listener = socket.socket(fileno=100)
    conn, peer = listener.accept()
    say(check="accepted", peer=list(peer))
    conn.close()
    listener.close()
    say(check="closed")
    sys.stdin.readline()


def dup_before_bind(port):
    """A dup made before bind is the same socket: it must not stay on TCP."""
    s = socket.socket()
    d = s.dup()
    s.bind(("127.0.0.1", port))
    d.listen()
    say(check="dup_before_bind", name=list(d.getsockname()))
    conn, _ = d.accept()
    conn.close()


def listen_unbound():
    """listen() without bind autobinds a port: it counts as a bind to port 0."""
    s = socket.socket()
    s.listen()
    say(check="listen_unbound", name=list(s.getsockname()))
    conn, _ = s.accept()
    conn.close()


def bind_then_connect(port):
    """A client that binds a local address before connecting."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"bound client")
        s.shutdown(socket.SHUT_WR)
        say(check="bind_then_connect", error=None, answer=s.recv(100).decode())
    except OSError as err:
        say(check="bind_then_connect", error=err.errno, answer=None)


def fast_open(port):
    """sendto(MSG_FASTOPEN) connects without connect(); then a send with an
    address on the connected socket (TCP ignores it)."""
    s = socket.socket()
    try:
        s.sendto(b"fast ", socket.MSG_FASTOPEN, ("127.0.0.1", port))
        s.sendto(b"open", ("127.0.0.1", port))
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(100):  # the echo may come back in pieces
            answer += chunk
        say(check="fast_open", error=None, answer=answer.decode())
    except OSError as err:
        say(check="fast_open", error=err.errno, answer=None)


def bind_then_wait(port):
    """Bound, not listening yet: the path is taken all the same."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError as err:
        say(check="bound", error=err.errno)
        return
    say(check="bound", error=None)
    sys.stdin.readline()
    s.listen()
    say(check="listening")
    conn, _ = s.accept()
    conn.sendall(b"first")
    conn.close()


def epoll_dup(port):
    """An epoll registration made through a dup before bind survives too."""
    s = socket.socket()
    d = os.dup(s.fileno())
    ep = select.epoll()
    ep.register(d, select.EPOLLIN)
    s.bind(("127.0.0.1", port))
    s.listen()
    say(check="epoll_dup_ready")
    say(check="epoll_dup", ready=[fd for fd, _ in ep.poll(20)] == [d])


def exec_from_thread(port):
    """A thread (not the main one) execs; the new image binds and serves."""
    import threading

    def run():
        socket.socket().bind(("127.0.0.1", 0))  # the supervisor looks at this thread's fds first
        os.execv(sys.executable, [sys.executable, __file__, "serve_one", str(port)])

    threading.Thread(target=run).start()
    threading.Event().wait(30)


def serve_one(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    say(check="serving", name=list(s.getsockname()))
    conn, peer = s.accept()
    conn.sendall(f"{peer[0]}".encode())
    conn.close()


def before_bind():
    """getsockname before bind, and an unconverted socket, are untouched."""
    s = socket.socket()
    say(check="before_bind", name=list(s.getsockname()))


def io_uring():
    params = ctypes.create_string_buffer(120)
    res = libc.syscall(425, 4, params)
    say(check="io_uring", result=res, errno=ctypes.get_errno())


def connect_refused(port):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        say(check="connect", error=None)
    except OSError as err:
        say(check="connect", error=err.errno)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    globals()[name](*[int(a) for a in args])
