"""The calls the supervisor makes itself: bind, listen, connect and send, on
its own duplicate of the program's socket, with its own copy of the address.

A call the program makes with an address in its memory, or on an fd number it
can re-point, must never be judged on one reading and run on another: another
thread may change the bytes, or dup2 another socket over the fd, in between.
So once a handler has judged a call, the kernel gets exactly what was judged:
the socket the supervisor holds and the bytes it copied. The program's thread
only waits (in its own syscall, so that signals reach it as usual) while a
blocking call is not done; the supervisor serves other threads meanwhile.
The calls run with the program's credentials, umask and working directory
(identity.py), so files, permissions and peer credentials are the program's.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass

from .. import kernel
from ..identity import acting_as
from ..sockaddr import AF_UNIX, Address, UnixAddr, family_of, pack
from .context import Call
from .memory import cmsg, cmsgs, read_buffer, read_iovecs

_SCM_MAX_FD = 253                   # the kernel's limit of fds in one message
_SLEEPS_MS = (1, 2, 4, 8, 16)       # waiting for room where poll cannot tell (Unix datagrams)


def _relative(address: bytes | None) -> bool:
    """A Unix path that does not start at /: it means the program's directory."""
    return bool(address) and family_of(address) == AF_UNIX and len(address) > 2 and address[2] not in (0, 0x2F)


def bind(call: Call, sock: socket.socket, address: bytes, as_program: bool = True) -> int:
    if not as_program:
        return kernel.bind(sock.fileno(), address)
    with acting_as(call.thread, _relative(address), makes_files=True):
        return kernel.bind(sock.fileno(), address)


def listen(call: Call, sock: socket.socket, backlog: int) -> int:
    with acting_as(call.thread):
        try:
            sock.listen(backlog if backlog < 0x7FFFFFFF else socket.SOMAXCONN)
        except OSError as err:
            return -(err.errno or errno.EIO)
    return 0


def blocking(sock: socket.socket, flags: int = 0) -> bool:
    return not (fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK or flags & socket.MSG_DONTWAIT)


def _timeout_ms(sock: socket.socket, option: int = socket.SO_SNDTIMEO) -> int:
    """SO_SNDTIMEO (or SO_RCVTIMEO) in milliseconds, -1 for none: how long a
    blocking call waits."""
    sec, usec = struct.unpack("=qq", sock.getsockopt(socket.SOL_SOCKET, option, 16))
    return -1 if sec == usec == 0 else sec * 1000 + usec // 1000


def listener_state(fd: int) -> int:
    """1: a connection waits; 0: none; -1: the listener was shut down (it
    then polls readable, yet its accept says EAGAIN)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLRDHUP)
    events = poller.poll(0)
    if not events:
        return 0
    return -1 if events[0][1] & (select.POLLRDHUP | select.POLLHUP) else 1


def _nonblocking_call(sock: socket.socket, do):
    """Run do() with O_NONBLOCK set on the socket's open file for the moment:
    the supervisor must never block. (The flag is the program's too; an
    unconnected socket is the only one this is done to, where it shows in
    nothing but F_GETFL.)"""
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    if flags & os.O_NONBLOCK:
        return do()
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        return do()
    finally:
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags)


@contextlib.contextmanager
def _destination(thread, address: bytes | None, reply: bool):
    """Within the block: (the address to send to or connect to, whether it is
    used with the supervisor's rights). A datagram sender the program was
    shown may be answered whatever ids the program has taken since (a server
    that drops privileges or chroots after its bind), so a root supervisor's
    answer goes with its rights, but only to the socket file its name leads
    to following no symlink (the program may have re-pointed the name), by
    an O_PATH fd of it. Anything else, and a sender whose name cannot be
    opened so, goes as the program: a supervisor that is not root already
    is (under no-new-privs the program has no rights it did not start
    with), and answers by the name (so does _fastpath.c)."""
    if reply and os.geteuid() == 0 and address and family_of(address) == AF_UNIX and len(address) > 2 \
            and address[2] == 0x2F:
        try:
            fd = kernel.open_no_symlinks(address[2:].split(b"\0", 1)[0])
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    yield pack(UnixAddr(f"/proc/self/fd/{fd}".encode())), True
                    return
            finally:
                os.close(fd)
    with acting_as(thread, _relative(address)):
        yield address, False


def connect(call: Call, fd: int, sock: socket.socket, address: bytes, wait: bool | None = None,
            reply: bool = False):
    """Generator: connect the supervisor's duplicate of fd (or the stand-in
    for it); a blocking caller (`wait`: whether the program's socket blocks)
    waits in its own thread until the connection is made or fails. `reply`:
    to a datagram sender the program was shown, with the supervisor's rights
    (as an answer is sent)."""
    wait = blocking(sock) if wait is None else wait
    limit = _timeout_ms(sock) if wait else 0
    with _destination(call.thread, address, reply) as (where, _):
        res = _nonblocking_call(sock, lambda: kernel.connect(sock.fileno(), where))
    if not wait:
        return res
    pauses = iter(_SLEEPS_MS * 64)
    while True:
        if res == -errno.EAGAIN and sock.family == AF_UNIX:  # a full backlog: retry, as the kernel waits
            res = yield from call.thread.wait(sock, fd, 0, next(pauses, 16))
            if res < 0:
                return res
            with _destination(call.thread, address, reply) as (where, _):
                res = _nonblocking_call(sock, lambda: kernel.connect(sock.fileno(), where))
            continue
        if res not in (-errno.EINPROGRESS, -errno.EALREADY):
            return res
        res = yield from call.thread.wait(sock, fd, select.POLLOUT, limit)
        if res < 0:
            return res
        if res == 0:
            return -errno.EINPROGRESS  # SO_SNDTIMEO ran out, as the kernel says
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return -err
        try:
            sock.getpeername()
            return 0
        except OSError:
            res = -errno.EALREADY  # not there yet (the poll was woken by something else): wait again


def accept(call: Call, fd: int, sock: socket.socket, flags: int):
    """Generator: a connection from the listener `sock` (the supervisor's
    duplicate of fd), made the way accept4's flags say; a blocking caller
    waits in its own thread (SO_RCVTIMEO honoured). The supervisor's socket
    of the connection, or -errno. Connections taken for a call that then went
    away (a signal reached the thread first) come first: none is lost."""
    kept = call.ctx.kept.get(os.fstat(sock.fileno()).st_ino)
    wait = blocking(sock)
    limit = _timeout_ms(sock, socket.SO_RCVTIMEO) if wait else 0
    while True:
        if kept:
            conn = kept.pop(0)
        else:
            try:
                # Looked at first: O_NONBLOCK is the program's to clear at any
                # moment (fcntl is not trapped), and the supervisor must never
                # block in an accept with nothing waiting.
                state = listener_state(sock.fileno())
                if state < 0:
                    return -errno.EINVAL  # shut down: as a TCP listener says (a Unix one says EAGAIN, forever)
                if state == 0:
                    raise BlockingIOError(errno.EAGAIN, "nothing waiting")
                conn = socket.socket(fileno=_nonblocking_call(sock, lambda: sock._accept()[0]))
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EINTR) or not wait:
                    return -(errno.EAGAIN if err.errno == errno.EINTR else err.errno or errno.EIO)
                res = yield from call.thread.wait(sock, fd, select.POLLIN, limit)
                if res < 0:
                    return res
                if res == 0 and limit >= 0:
                    return -errno.EAGAIN  # SO_RCVTIMEO ran out
                continue
        conn.setblocking(not flags & socket.SOCK_NONBLOCK)
        return conn


@dataclass
class Message:
    """One message of a send, as the supervisor makes it: its copies."""
    name: bytes | None     # the destination (already judged), None for the connected peer
    data: bytes
    control: bytes = b""
    reply: bool = False    # to a sender the program was shown (sent with the supervisor's rights)


def read_message(call: Call, name: bytes | None, iov: int, iovlen: int, control: int,
                 controllen: int, most: int) -> Message | int:
    """The payload (at most `most` bytes) and control data of one msghdr,
    copied; -errno for a bad one."""
    iovs = read_iovecs(call, iov, iovlen)
    if isinstance(iovs, int):
        return iovs
    parts, total = [], 0
    for base, length in iovs:
        length = min(length, most - total)
        if length:
            part = read_buffer(call, base, length)
            if part is None:
                return -errno.EFAULT
            parts.append(part)
            total += length
    data = b""
    if controllen:
        data = read_buffer(call, control, min(controllen, 1 << 16))
        if data is None:
            return -errno.EFAULT
    return Message(name, b"".join(parts), data)


def _with_fds(call: Call, control: bytes) -> tuple[bytes, list[int]]:
    """The control data with the program's fds (SCM_RIGHTS) replaced by the
    supervisor's duplicates of them: what is passed is the program's file."""
    out, mine = bytearray(), []
    try:
        for level, kind, body in cmsgs(control):
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds = struct.unpack(f"={len(body) // 4}i", body[:len(body) // 4 * 4])
                if len(mine) + len(fds) > _SCM_MAX_FD:
                    raise OSError(errno.EINVAL, "more fds than one message may pass")
                for fd in fds:
                    try:
                        mine.append(call.thread.duplicate(fd))
                    except OSError:
                        raise OSError(errno.EBADF, f"fd {fd} to pass is not open") from None
                body = struct.pack(f"={len(fds)}i", *mine[-len(fds):]) if fds else b""
            elif (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                body = _credentials(call, body)
            out += cmsg(level, kind, body)
    except OSError:
        for dup in mine:
            os.close(dup)
        raise
    return bytes(out), mine


def _claims_credentials(control: bytes) -> bool:
    return any((level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS) for level, kind, _ in cmsgs(control))


def _program_credentials(call: Call) -> bytes:
    """An answer a root supervisor sends with its own rights still names the
    program (its pid and ids) to a receiver that asks (SO_PASSCRED)."""
    them = call.thread.identity()
    return cmsg(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("=iII", call.process.tgid, them.euid, them.egid))


def _credentials(call: Call, body: bytes) -> bytes:
    """SCM_CREDENTIALS the program sends: checked as the kernel checks a
    sender's claim, against the program (its pid, one of its own user and
    group ids), never against the supervisor's; the pid sent is then the
    supervisor's, the only one the kernel lets it send."""
    if len(body) < 12:
        raise OSError(errno.EINVAL, "short SCM_CREDENTIALS")
    pid, uid, gid = struct.unpack_from("=iII", body)
    them = call.thread.identity()
    if pid != call.process.tgid or uid not in them.uids or gid not in them.gids:
        raise OSError(errno.EPERM, "SCM_CREDENTIALS that are not the program's")
    return struct.pack("=iII", os.getpid(), uid, gid)


def send(call: Call, fd: int, sock: socket.socket, message: Message, flags: int, drop_when_full: bool = False):
    """Generator: send one message on the supervisor's duplicate of fd. Bytes
    sent, or -errno. A blocking caller waits in its own thread for room; a
    stream send goes on until all is sent (or a signal comes). drop_when_full:
    a converted datagram socket, whose receiver is full for a while, drops the
    datagram and reports it sent, as UDP would."""
    try:
        control, dups = _with_fds(call, message.control) if message.control else (b"", [])
    except OSError as err:
        return -(err.errno or errno.EBADF)  # as the kernel: EBADF, EPERM, EINVAL
    try:
        return (yield from _send(call, fd, sock, message, control, flags, drop_when_full))
    finally:
        for dup in dups:
            os.close(dup)


def _send(call: Call, fd: int, sock: socket.socket, message: Message, control: bytes, flags: int,
          drop_when_full: bool):
    wait = blocking(sock, flags)
    stream = sock.type == socket.SOCK_STREAM
    limit = _timeout_ms(sock) if wait else 0
    sent, data, pauses = 0, message.data, iter(_SLEEPS_MS * (1 if drop_when_full else 64))
    # An answer a root supervisor sends with its own rights still names the
    # program to a receiver that asks (SO_PASSCRED).
    named = control + _program_credentials(call) if message.reply and os.geteuid() == 0 \
        and not _claims_credentials(control) else control
    while True:
        with _destination(call.thread, message.name, message.reply) as (where, ours):
            res = kernel.sendmsg(sock.fileno(), where, data[sent:], b"" if sent else named if ours else control,
                                 flags | socket.MSG_DONTWAIT)
        if res >= 0:
            sent += res
            if not (stream and wait and sent < len(data)) or call.thread.progress_lost_to_signals:
                return sent  # (a short count rather than a wait a signal could end, losing the count)
        elif res != -errno.EAGAIN or not wait:
            return sent or res
        if stream:
            res = yield from call.thread.wait(sock, fd, select.POLLOUT, limit)
            if res == 0:
                return sent or -errno.EAGAIN  # SO_SNDTIMEO ran out
        else:  # a datagram: poll cannot tell when the receiver has room; try again a little later
            pause = next(pauses, None)
            if pause is None:
                if drop_when_full:
                    return len(data)
                pauses = iter((16,))
                pause = 16
            res = yield from call.thread.wait(sock, fd, 0, pause)
        if res < 0:
            return sent or res


# What an IP client expects when nobody is there, whatever the Unix reason.
_NOBODY_THERE = {errno.ENOENT, errno.ENOTDIR, errno.EPROTOTYPE, errno.ECONNREFUSED}


def connect_unix(call: Call, fd: int, sock: socket.socket, visible: Address, real: UnixAddr,
                 wait: bool | None = None, reply: bool = False):
    """Generator: connect the Unix socket `sock` (fd's, or its stand-in) to
    `real`, which stands for `visible`; the result as the program expects it
    from an IP socket."""
    res = yield from connect(call, fd, sock, pack(real), wait, reply)
    if -res in _NOBODY_THERE:
        call.ctx.log(1, f"{call.describe()}: {visible} -> {real}: {os.strerror(-res)}")
        return -errno.ECONNREFUSED
    if res < 0 and -res not in (errno.EINPROGRESS, errno.EAGAIN, errno.EINTR) and res > -512:
        call.ctx.log(1, f"{call.describe()}: {visible} -> {real}: {os.strerror(-res)}")
    else:
        call.ctx.log(1, f"{call.describe()}: {visible} -> {real}")
    return res


def receive(call: Call, fd: int, sock: socket.socket, size: int, controllen: int, flags: int, want_name: bool):
    """Generator: one receive on the supervisor's duplicate of fd: (result,
    data, sender's address, control data, msg_flags), or -errno. A blocking
    caller waits in its own thread for data (SO_RCVTIMEO honoured); a stream
    MSG_WAITALL receive gathers until it has `size` bytes or the end."""
    wait = blocking(sock, flags)
    limit = _timeout_ms(sock, socket.SO_RCVTIMEO) if wait else 0
    gather = wait and flags & socket.MSG_WAITALL and sock.type == socket.SOCK_STREAM
    parts, have = [], 0
    while True:
        got = kernel.recvmsg(sock.fileno(), size - have, controllen, flags | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC,
                             want_name)
        if got[0] > 0 and gather and have + got[0] < size and call.thread.progress_lost_to_signals:
            gather = False  # what it has, rather than a wait a signal could end, losing the bytes
        if got[0] > 0 and gather and have + got[0] < size:
            parts.append(got[1])
            have += got[0]
            controllen = 0
        elif got[0] >= 0:
            if not parts:
                return got
            data = b"".join(parts) + got[1]
            return (len(data), data) + got[2:]
        elif got[0] != -errno.EAGAIN or not wait:
            return (have, b"".join(parts), b"", b"", 0) if parts else got[0]
        res = yield from call.thread.wait(sock, fd, select.POLLIN, limit)
        if res < 0 or (res == 0 and limit >= 0):
            if parts:
                return have, b"".join(parts), b"", b"", 0
            return res if res < 0 else -errno.EAGAIN  # a signal, or SO_RCVTIMEO ran out
