"""The program as both backends see it from outside: a thread's fds through
pidfd_getfd and /proc. What a backend adds is how it reaches the program's
memory and answers a call (tracee.py: ptrace; notify.py: seccomp user
notification); handlers/__init__.py lists the whole interface."""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from collections.abc import Iterator

from . import kernel

TYPE_CHECKING = False  # (typing itself costs start-up time)
if TYPE_CHECKING:
    import socket


class _Pass:
    """A handler's explicit answer: let the trapped syscall run as it is. Only
    for calls where nothing was decided on memory or fds the program can still
    change (a handler that returns nothing is a bug, and its call fails)."""

    def __repr__(self) -> str:
        return "PASS"


PASS = _Pass()


class MemoryUnavailable(OSError):
    """The program's memory cannot be reached at all (not: a bad address)."""


class Process:
    """A thread group. (File descriptors are looked up per thread: a thread
    may have its own fd table, and the leader may have exited while other
    threads run.)"""

    def __init__(self, tgid: int) -> None:
        self.tgid = tgid
        self.threads: dict[int, ProgramThread] = {}


class ProgramThread:
    """One thread of the program: its fd table and its process's memory."""

    # Whether a signal to a thread waiting in a call ends the call with
    # nothing reported of what it did so far (user notification: the call is
    # gone; ptrace: the supervisor still holds the thread). Where it does, a
    # call that made progress returns it rather than wait.
    progress_lost_to_signals = False

    def __init__(self, tid: int, process: Process) -> None:
        self.tid = tid
        self.process = process
        self._pidfd: int | None = None     # for pidfd_getfd on this thread's fd table

    # memory (shared by the thread group), through process_vm_readv/writev:
    # they respect the pages' protections as the kernel's own copies do
    # (/proc/PID/mem would read a PROT_NONE page and write a read-only one) --------
    def read_some(self, addr: int, size: int) -> bytes:
        """Up to `size` bytes at addr (fewer where the mapping ends)."""
        try:
            return kernel.read_memory(self.tid, addr, size)
        except OSError as err:
            if err.errno in (errno.EPERM, errno.ESRCH):
                raise MemoryUnavailable(err.errno, f"cannot read the memory of thread {self.tid}: "
                                                   f"{err.strerror}") from None
            raise

    def write(self, addr: int, data: bytes, *more: tuple[int, bytes]) -> None:
        """data at addr, and each further (address, bytes): one call."""
        pieces = [(addr, data), *more]
        if kernel.write_memory(self.tid, pieces) != sum(len(piece) for _, piece in pieces):
            raise OSError(errno.EFAULT, "short write to the program's memory")

    def read(self, addr: int, size: int) -> bytes:
        """`size` bytes of the program's memory at addr. A buffer that runs
        into an unmapped page is a bad pointer (OSError EFAULT), as the
        kernel's own copy would find it: never the shorter part before it."""
        data = self.read_some(addr, size)
        if len(data) != size:
            raise OSError(errno.EFAULT, f"{size} bytes at {addr:#x}: only {len(data)} are mapped")
        return data

    def read_int(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little", signed=True)

    # fds (this thread's fd table) ---------------------------------------------------
    def alive(self) -> bool:
        """Whether the thread still is (its tid not another's): a tracee
        stays ours until we reap it; the notify backend looks."""
        return True

    def fd_inode(self, fd: int) -> int | None:
        """The socket inode behind fd, or None if it is no socket."""
        try:
            link = os.readlink(f"/proc/{self.tid}/fd/{fd}")
        except OSError:
            return None
        return socket_inode(link)

    def fd_cloexec(self, fd: int) -> bool:
        with open(f"/proc/{self.tid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
        return False

    def identity(self):
        """Its credentials and umask now (identity.py): read at every call
        that needs them (a change of ids is not trapped: setuid() must never
        fail with EINTR, which a trapped call can)."""
        from .identity import of_thread

        return of_thread(self.tid)

    def fds(self) -> Iterator[tuple[int, str]]:
        """(fd, link) of each fd in this thread's table; nothing if the thread
        is gone. Raises OSError if the table cannot be read (EMFILE...): an
        empty answer would make live sockets look closed."""
        try:
            names = os.listdir(f"/proc/{self.tid}/fd")
        except (FileNotFoundError, ProcessLookupError):
            return
        for name in names:
            try:
                yield int(name), os.readlink(f"/proc/{self.tid}/fd/{name}")
            except OSError:
                continue

    @contextmanager
    def borrowed_socket(self, fd: int) -> Iterator[socket.socket | None]:
        """The program's socket at fd, duplicated into the supervisor (same
        open file: options and flags set here are the program's); None if fd
        is no socket. Raises OSError if the fd cannot be looked at: the caller
        must then fail closed, not let the call through."""
        try:
            dup = self.duplicate(fd)
        except OSError as err:
            if err.errno != errno.EBADF:
                raise
            yield None  # no such fd: the kernel will say EBADF itself
            return
        import socket  # at the first call, not at start-up (~2 ms)

        try:
            sock = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
            yield None
            return
        with sock:
            yield sock

    def duplicate(self, fd: int) -> int:
        """The program's fd duplicated into the supervisor (close-on-exec):
        the same open file. OSError(EBADF) if there is none."""
        if self._pidfd is None:
            self._pidfd = kernel.pidfd_open_thread(self.tid)
        try:
            return kernel.pidfd_getfd(self._pidfd, fd)
        except OSError as err:
            if err.errno == errno.EBADF:
                raise
            raise OSError(err.errno, f"cannot look at fd {fd} of thread {self.tid}: {err.strerror}") from None

    def close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def socket_inode(link: str) -> int | None:
    """The inode of a /proc/PID/fd link to a socket ("socket:[1234]"), else None."""
    return int(link[8:-1]) if link.startswith("socket:[") else None


def status_field(status: bytes, name: bytes) -> bytes:
    """One field's value in the text of /proc/TID/status (b"" if absent)."""
    start = status.find(b"\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 2
    return status[start:status.find(b"\n", start)].strip()


def children_of(pid: int, tid: int | None = None) -> list[int]:
    """The children thread `tid` of process `pid` (its leader: pid) started;
    nothing if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid if tid is None else tid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def tasks_of(pid: int) -> list[int]:
    """The threads of process pid now (nothing if it is gone)."""
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process below pid now: its children, theirs, and so on."""
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        for tid in tasks_of(here):
            for child in children_of(here, tid):
                found.append(child)
                todo.append(child)
    return found
