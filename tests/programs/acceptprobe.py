"""accept() as a program that tries would make it, run under redirect on a
converted listener at 127.0.0.1:PORT. One mode per attack; each prints what
the program saw.

  toggle PORT    a thread accepts on a non-blocking listener while another
                 flips O_NONBLOCK as fast as it can; the main thread's
                 trapped calls must go on being answered ("alive N")
  emfile PORT    with a connection waiting and the fd table full, accept
                 says EMFILE and takes nothing: the next accept gets the
                 connection ("emfile", then "got <data>")
  badflags PORT  accept4 with a flag it does not know says EINVAL and takes
                 nothing ("einval", then "got <data>")
  shutdown PORT  a blocking accept, and another thread shuts the listener
                 down: the accept ends with EINVAL, as on a TCP listener
                 ("einval"), and so does a non-blocking one after it
  lowest PORT    the fd an accept returns is the lowest free one, as the
                 kernel gives it ("lowest <free before> <accepted>")
"""
import ctypes
import errno
import fcntl
import os
import resource
import select
import socket
import sys
import threading
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def listener(port, nonblocking=False):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | (socket.SOCK_NONBLOCK if nonblocking else 0))
    s.bind(("127.0.0.1", port))
    s.listen(8)
    print("listening", flush=True)
    return s


def toggle(port):
    s = listener(port, nonblocking=True)
    flags = fcntl.fcntl(s.fileno(), fcntl.F_GETFL)
    stop = time.monotonic() + 2

    def flip():
        while time.monotonic() < stop:
            fcntl.fcntl(s.fileno(), fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            fcntl.fcntl(s.fileno(), fcntl.F_SETFL, flags)

    def accepting():
        while True:
            try:
                socket.socket(fileno=s._accept()[0]).close()  # (blocks if it finds the flag cleared: its call)
            except BlockingIOError:
                pass
    threading.Thread(target=flip, daemon=True).start()
    threading.Thread(target=accepting, daemon=True).start()
    calls = 0
    while time.monotonic() < stop:
        s.getsockname()  # trapped: answered only while the supervisor is free
        calls += 1
    print(f"alive {calls}", flush=True)
    os._exit(0)


def take(s):
    conn, _ = s.accept()
    print("got", conn.recv(64).decode(), flush=True)


def emfile(port):
    s = listener(port)
    select.select([s], [], [])  # a connection waits
    spare = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        while True:
            spare.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as err:
        assert err.errno == errno.EMFILE
    try:
        s.accept()
        print("accepted with a full table", flush=True)
    except OSError as err:
        print(errno.errorcode[err.errno].lower(), flush=True)
    for fd in spare:
        os.close(fd)
    take(s)


def badflags(port):
    s = listener(port)
    select.select([s], [], [])
    addr, length = ctypes.create_string_buffer(128), ctypes.c_int(128)
    res = libc.accept4(s.fileno(), addr, ctypes.byref(length), 0x1)
    print(errno.errorcode[ctypes.get_errno()].lower() if res < 0 else f"accepted fd {res}", flush=True)
    take(s)


def shutdown(port):
    s = listener(port)
    threading.Timer(0.3, lambda: s.shutdown(socket.SHUT_RDWR)).start()
    for blocking in (True, False):
        s.setblocking(blocking)
        try:
            s.accept()
            print("accepted", flush=True)
        except OSError as err:
            print(errno.errorcode[err.errno].lower(), flush=True)


def lowest(port):
    s = listener(port)
    select.select([s], [], [])  # a connection waits
    free = os.dup(0)
    os.close(free)
    conn, _ = s.accept()
    print("lowest", free, conn.fileno(), flush=True)


if __name__ == "__main__":
    {"toggle": toggle, "emfile": emfile, "badflags": badflags, "shutdown": shutdown,
     "lowest": lowest}[sys.argv[1]](int(sys.argv[2]))
