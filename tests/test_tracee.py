"""The ptrace backend's acts (redirect/tracee.py) on their own: put_socket,
give, epoll_add and wait are generators of the syscalls a stopped tracee
would be made to run, and of scratch memory for their arguments. Here this
test process is the tracee: every Syscall the act asks for is run here, by
its number, exactly as injected into a program (socketpair, SCM_RIGHTS,
recvmsg, dup3, fcntl, epoll_ctl, poll, mmap for the scratch page), and the
act reads and checks the results through the same process_vm_readv and
pidfd_getfd. What is checked is what a program would be left with."""
from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct

import pytest

from redirect import arch
from redirect.tracee import Process, Syscall, Thread

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def run_here(request: Syscall) -> int:
    """The injected syscall, run in this process: >= 0 or -errno, as the tracee's."""
    res = _libc.syscall(ctypes.c_long(arch.NR[request.name]),
                        *(ctypes.c_ulong(arch.to_unsigned(arg)) for arg in request.args))
    return -ctypes.get_errno() if res == -1 else res


@pytest.fixture
def tracee():
    """This process as a ptrace Thread; its scratch page is unmapped after."""
    thread = Thread(os.getpid(), Process(os.getpid()))
    yield thread
    if thread.page is not None:
        _libc.munmap(ctypes.c_void_p(thread.page), ctypes.c_size_t(16384))
    thread.close_pidfd()


def drive(thread: Thread, act, after=None):
    """Run an act to its end as the backend does (Thread._run resolves the
    scratch requests); after(request, result) may meddle between two calls,
    as another thread of the program could."""
    runner, result = thread._run(act), None
    while True:
        try:
            request = runner.send(result)
        except StopIteration as stop:
            return stop.value
        result = run_here(request)
        if after is not None:
            after(request, result)


def open_fds() -> set[int]:
    """This process's fds (not the one listing them)."""
    return {int(name) for name in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{name}")}


def domain(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as now:
        return now.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)


def test_give_makes_a_new_fd_of_the_supervisors_socket(tracee):
    a, b = socket.socketpair()
    with a, b:
        inode = os.fstat(a.fileno()).st_ino
        given = socket.socket(fileno=os.dup(a.fileno()))
        fd = drive(tracee, tracee.give(given, cloexec=False))
        try:
            assert os.fstat(fd).st_ino == inode and os.get_inheritable(fd)   # the same socket, no close-on-exec
            assert given.fileno() == -1                                     # the supervisor's is closed
        finally:
            os.close(fd)
        fd = drive(tracee, tracee.give(socket.socket(fileno=os.dup(a.fileno())), cloexec=True))
        try:
            assert os.fstat(fd).st_ino == inode and not os.get_inheritable(fd)
        finally:
            os.close(fd)


def test_put_socket_replaces_every_place_and_leaves_no_fd_behind(tracee):
    before = open_fds()
    with socket.socket() as tcp, socket.socket() as sibling, socket.socket(socket.AF_UNIX) as new:
        places = [(tcp.fileno(), True), (sibling.fileno(), False)]
        assert drive(tracee, tracee.put_socket(new, places)) == 0
        assert domain(tcp.fileno()) == domain(sibling.fileno()) == socket.AF_UNIX
        assert os.fstat(tcp.fileno()).st_ino == os.fstat(new.fileno()).st_ino
        assert not os.get_inheritable(tcp.fileno()) and os.get_inheritable(sibling.fileno())
        tracee.close_pidfd()
        assert open_fds() == before | {tcp.fileno(), sibling.fileno(), new.fileno()}  # the socket pair is closed


def test_a_socket_swapped_in_the_scratch_memory_is_refused(tracee):
    """Another thread of the program rewrites the received control message to
    name another of its fds: the act checks the fd it got is the socket it
    sent, and fails rather than install the wrong one."""
    with socket.socket(socket.AF_UNIX) as passed, socket.socket() as decoy:
        def forge(request, result):
            if request.name == "recvmsg" and result >= 0:
                header = tracee.read(request.args[1], 56)
                control = struct.unpack_from("=Q", header, 32)[0]
                tracee.write(control + 16, struct.pack("=i", decoy.fileno()))
        assert drive(tracee, tracee.give(socket.socket(fileno=os.dup(passed.fileno())), False), forge) == -errno.EIO


def test_epoll_add_registers_the_fd_in_the_programs_epoll(tracee):
    with select.epoll() as ep, socket.socket() as sock:
        assert drive(tracee, tracee.epoll_add(ep.fileno(), sock.fileno(), select.EPOLLIN, 0x1234)) == 0
        with open(f"/proc/self/fdinfo/{ep.fileno()}") as info:
            line = next(line for line in info if line.startswith("tfd:"))
        fields = line.split()
        assert (fields[1], int(fields[3], 16), int(fields[5], 16)) == \
            (str(sock.fileno()), select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP, 0x1234)  # (the kernel adds ERR, HUP)


def test_wait_reports_readiness_and_timeouts_as_poll_does(tracee):
    a, b = socket.socketpair()
    with a, b:
        assert drive(tracee, tracee.wait(a, a.fileno(), select.POLLIN, 20)) == 0       # nothing yet: timed out
        b.send(b"x")
        assert drive(tracee, tracee.wait(a, a.fileno(), select.POLLIN, 1000)) == 1     # ready
        assert drive(tracee, tracee.wait(a, a.fileno(), 0, 5)) == 0                    # a pause: fd -1


def test_the_scratch_page_is_the_threads_and_goes_back_to_the_process(tracee):
    with socket.socket(socket.AF_UNIX) as new, socket.socket() as tcp:
        drive(tracee, tracee.put_socket(new, [(tcp.fileno(), True)]))
        page = tracee.page
        assert page is not None and tracee.read(page, 8) is not None
        with open("/proc/self/maps") as maps:     # in an anonymous private mapping (the kernel may merge
            spans = [line.split()[:2] for line in maps]  # it with a neighbour: not always one of its own)
        assert any(int(start, 16) <= page < int(end, 16) and perms == "rw-p"
                   for (start, end), perms in ((span[0].split("-"), span[1]) for span in spans))
        tracee.release()
        assert tracee.page is None and tracee.process.free_pages == [page]
        tracee.page = tracee.process.free_pages.pop()   # (unmapped by the fixture)
