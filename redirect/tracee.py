"""The ptrace backend: the program's threads stop at each trapped call
(SECCOMP_RET_TRACE); the operations handlers ask for (handlers/__init__.py)
are carried out by injecting syscalls into the stopped thread. PtraceBackend
follows every thread, fork and exec; Thread runs one thread's handler.

Those operations are generators. Inside they yield `Syscall` (run this in the
tracee, send me the result) or `Scratch` (put these bytes in tracee memory,
send me the address); handlers never see either. A thread may sit in an
injected syscall (waiting in poll for a blocking call) for a long time; the
generator waits in `Thread.runner` while the supervisor serves the other threads.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
import signal
import socket
import struct
import types
from dataclasses import dataclass
from collections.abc import Generator

from . import arch, kernel, program, seccomp_filter
from .program import PASS, ProgramThread, children_of
from . import OWN_FAILURE
from .reaper import REAP_EVERY
from .child import SpawnError
from .supervisor import Supervisor

_EPOLL_CTL_ADD = 1  # (not in Python's select module)
_ERESTARTSYS, _ERESTARTNOHAND, _ERESTART_RESTARTBLOCK = 512, 514, 516
_SCRATCH_SIZE = 16384  # per thread: room for a batch of datagram headers and addresses


@dataclass(frozen=True)
class Syscall:
    """Run this syscall in the tracee (by name, see arch.NR); the result comes back
    as the kernel returned it: >= 0, or -errno."""
    name: str
    args: tuple[int, ...]

    def __init__(self, name: str, *args: int) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", tuple(args))


@dataclass(frozen=True)
class Scratch:
    """Copy `data` into tracee memory private to this thread; the address comes back."""
    data: bytes


Handler = Generator["Syscall | Scratch", "int", "int | None"]


class HijackedThread(Exception):
    """A thread the supervisor runs a call in made another call instead."""

    def __init__(self, tid: int, nr: int) -> None:
        super().__init__(f"thread {tid} made syscall {nr} instead of the one redirect injected")
        self.tid = tid


class Process(program.Process):
    """A thread group: its scratch pages."""

    def __init__(self, tgid: int) -> None:
        super().__init__(tgid)
        self.free_pages: list[int] = []

    def after_exec(self) -> None:
        """A new program image: old scratch pages are gone."""
        self.free_pages.clear()
        for thread in self.threads.values():
            thread.page = None
            thread.close_pidfd()  # after an exec from another thread, it names the old task


class Thread(ProgramThread):
    """One traced thread and, while it runs a handler, that handler's state."""

    def __init__(self, tid: int, process: Process) -> None:
        super().__init__(tid, process)
        self.page: int | None = None       # this thread's scratch page in the tracee
        self.runner: Generator | None = None
        self.saved = None                  # registers at the trap
        self.injected = False              # the trapped syscall was replaced
        self.awaiting_entry = False        # re-executing: next syscall stop is an entry
        self.held_signals: list[int] = []  # signals held back until the handler ends
        self.expected: Syscall | None = None  # the injected call running now
        self._scratch_used = 0

    # memory (shared by the thread group) ---------------------------------------------
    @property
    def busy(self) -> bool:
        return self.runner is not None

    @property
    def resume_request(self) -> int:
        return kernel.PTRACE_SYSCALL if self.busy else kernel.PTRACE_CONT

    # the handler protocol ------------------------------------------------------------
    def start(self, outcome: "Handler | int | None") -> None:
        """Act on what a handler made of the syscall this thread is stopped at
        (seccomp stop): a result at once, PASS, or a generator to drive."""
        self.injected = False
        if outcome is PASS:
            self._finish(PASS)  # the common case: no registers needed
            return
        if outcome is None:  # a handler that forgot to answer: never let the call through
            outcome = -errno.EIO
        self.saved = kernel.getregs(self.tid)
        if not isinstance(outcome, types.GeneratorType):
            self._finish(outcome)
            return
        self._scratch_used = 0
        self.runner = self._run(outcome)
        self._advance(None)

    def on_syscall_stop(self) -> None:
        """A syscall-entry or -exit stop of an injected syscall."""
        if self.awaiting_entry:
            self.awaiting_entry = False  # checked by the supervisor (check_injected)
            kernel.resume(self.tid, kernel.PTRACE_SYSCALL)
            return
        result = arch.to_signed(getattr(kernel.getregs(self.tid), arch.RESULT_REG))
        self._advance(result)

    def check_injected(self, op: int | None = None) -> None:
        """The call this thread is about to make must be the one injected: the
        rewind runs the program's own `syscall` instruction, which another
        thread may have rewritten to jump elsewhere. Anything else is an
        attack on the supervisor: HijackedThread (the caller kills it)."""
        stop, nr, args = kernel.syscall_info(self.tid)
        expected = self.expected
        if expected is None or (op is not None and stop != op) or nr != arch.NR[expected.name] \
                or tuple(arch.to_unsigned(a) for a in expected.args) != tuple(args[:len(expected.args)]):
            raise HijackedThread(self.tid, nr)

    def hold_signal(self, sig: int) -> None:
        self.held_signals.append(sig)
        kernel.resume(self.tid, kernel.PTRACE_SYSCALL)

    def abandon(self) -> None:
        """The thread is gone: drop the handler without touching the tracee."""
        if self.runner is not None:
            self.runner.close()
        self.runner = None

    def _advance(self, result: int | None) -> None:
        try:
            request = self.runner.send(result)
        except StopIteration as stop:
            self._finish(stop.value)
            return
        except BaseException:
            self._finish(-errno.EIO)  # fail closed: never let a half-handled call through
            raise
        self._inject(request)

    def _run(self, handler: Handler) -> Generator[Syscall, int, int | None]:
        """Resolve Scratch requests, so the driver only sees Syscalls."""
        result = None
        while True:
            try:
                request = handler.send(result)
            except StopIteration as stop:
                return stop.value
            if isinstance(request, Scratch):
                if self.page is None:
                    self.page = yield from self._new_page()
                    if self.page is None:
                        handler.close()
                        return -errno.ENOMEM
                if self._scratch_used + len(request.data) > _SCRATCH_SIZE:
                    raise RuntimeError("scratch page overflow")
                addr = self.page + self._scratch_used
                self.write(addr, request.data)
                self._scratch_used += (len(request.data) + 15) & ~15
                result = addr
            else:
                result = yield request

    def _new_page(self) -> Generator[Syscall, int, int | None]:
        if self.process.free_pages:
            return self.process.free_pages.pop()
        # Scratch lives in a mapping of its own: below the stack pointer is unsafe in Go.
        addr = yield Syscall("mmap", 0, _SCRATCH_SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, arch.to_unsigned(-1), 0)
        return None if addr < 0 else addr

    def _inject(self, request: Syscall) -> None:
        self.expected = request
        regs = kernel.copy_regs(self.saved)
        nr = arch.NR[request.name]
        for reg, value in zip(arch.ARG_REGS, request.args):
            setattr(regs, reg, arch.to_unsigned(value))
        if not self.injected:
            # At the seccomp stop: turn the trapped syscall into this one.
            setattr(regs, arch.NR_REG, nr)
            self.injected = True
        else:
            # At an exit stop: step back onto the syscall instruction and run it again.
            setattr(regs, arch.RESULT_REG, nr)
            setattr(regs, arch.PC_REG, getattr(self.saved, arch.PC_REG) - arch.SYSCALL_INSN_LEN)
            self.awaiting_entry = True
        kernel.setregs(self.tid, regs)
        kernel.resume(self.tid, kernel.PTRACE_SYSCALL)

    def _finish(self, result) -> None:
        self.runner = None
        if result is None:
            result = -errno.EIO  # a handler that forgot to answer
        if result is PASS and self.injected:
            result = -errno.EIO  # a handler bug; never run the original after replacing it
        if result is not PASS:
            regs = kernel.copy_regs(self.saved)
            if not self.injected:
                setattr(regs, arch.NR_REG, arch.to_unsigned(-1))  # skip the syscall
            # After injections the saved orig_rax (the trapped syscall) stays, so an
            # -ERESTART* result restarts the program's own call with its own arguments.
            setattr(regs, arch.RESULT_REG, arch.to_unsigned(result))
            kernel.setregs(self.tid, regs)
        self.saved = None
        kernel.resume(self.tid, kernel.PTRACE_CONT)
        held, self.held_signals = self.held_signals, []
        for sig in held:
            kernel.tgkill(self.process.tgid, self.tid, sig)

    def wait(self, sock: socket.socket, fd: int, events: int, timeout_ms: int):
        """Generator: block this thread (only) until its fd (whose socket is
        `sock`, or stands in for it) is ready for `events` (0: just sleep), at
        most timeout_ms (-1: no limit). The ready count, or -errno (a signal:
        -EINTR or an -ERESTART* that restarts the program's call). What it
        waits on is only a hint: callers check the socket itself afterwards."""
        pollfd = yield Scratch(struct.pack("=ihh", fd if events else -1, events, 0))
        res = yield Syscall("poll", pollfd, 1, timeout_ms)
        # The wait stands in for a socket call's own blocking, which a signal
        # with SA_RESTART restarts (poll's ERESTARTNOHAND would say EINTR, and
        # its restart block would restart poll, not the program's call).
        return -_ERESTARTSYS if res in (-_ERESTARTNOHAND, -_ERESTART_RESTARTBLOCK) else res

    # ---- putting sockets into the program ------------------------------------------
    def put_socket(self, new: socket.socket, places: list[tuple[int, bool]]):
        """Generator: a duplicate of the supervisor's socket `new` at each
        (fd, close-on-exec) of places, replacing what was there. 0 or -errno."""
        received = yield from self._receive_socket(new)
        if received < 0:
            return received
        res = 0
        for fd, cloexec in places:
            if res >= 0:
                res = yield Syscall("dup3", received, fd, os.O_CLOEXEC if cloexec else 0)
        yield Syscall("close", received)
        return min(res, 0)

    def give(self, sock: socket.socket, cloexec: bool, lost=None):
        """Generator: the call's result is a new fd of the supervisor's socket
        `sock` in the program (ours is closed). (`lost`: for a backend where
        the call can go away before it gets the socket; a stopped thread
        cannot; or whose fd table is full: the kernel takes no connection
        then, and the next accept gets it.)"""
        kept = False
        try:
            fd = yield from self._receive_socket(sock, lowest=True)
            if fd in (-errno.EMFILE, -errno.ENFILE) and lost is not None:
                lost(sock)
                kept = True
            elif fd >= 0 and not cloexec:
                yield Syscall("fcntl", fd, fcntl.F_SETFD, 0)
            return fd
        finally:
            if not kept:
                sock.close()

    def epoll_add(self, epfd: int, fd: int, events: int, data: int):
        """Generator: epoll_ctl(EPOLL_CTL_ADD) in the program; 0 or -errno."""
        event = yield Scratch(struct.pack("=IQ", events, data))
        return (yield Syscall("epoll_ctl", epfd, _EPOLL_CTL_ADD, fd, event))

    def _receive_socket(self, passed: socket.socket, lowest: bool = False):
        """Generator: a duplicate of a supervisor socket in the program, sent
        over SCM_RIGHTS through a socket pair the thread makes for the moment
        (no file anywhere). Returns its fd there, or -errno. Whatever another
        thread does to the scratch memory meanwhile, the fd is checked to be
        `passed`. `lowest`: at the lowest free number, as a call's new fd is
        (the pair's were lower)."""
        pair = yield Scratch(bytes(8))
        res = yield Syscall("socketpair", socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0, pair)
        if res < 0:
            return res
        ends = struct.unpack("=ii", self.read(pair, 8))
        try:
            with socket.socket(fileno=self.duplicate(ends[0])) as sender:
                sender.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("=i", passed.fileno()))])
        except OSError as err:
            res = -(err.errno or errno.EIO)
        if res >= 0:
            byte = yield Scratch(bytes(8))
            iov = yield Scratch(struct.pack("=QQ", byte, 1))
            control = yield Scratch(bytes(24))
            header = yield Scratch(struct.pack("=QI4xQQQQi4x", 0, 0, iov, 1, control, 24, 0))
            res = yield Syscall("recvmsg", ends[1], header, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        for end in ends:
            yield Syscall("close", end)
        if res < 0:
            return res
        _, level, kind, fd = struct.unpack("=Qiii", self.read(control, 20))
        inode = os.fstat(passed.fileno()).st_ino
        if (level, kind) != (socket.SOL_SOCKET, socket.SCM_RIGHTS) or self.fd_inode(fd) != inode:
            return -errno.EIO
        if lowest and min(ends) < fd:
            low = yield Syscall("fcntl", fd, fcntl.F_DUPFD_CLOEXEC, 0)
            # (checked again: another thread may have put its own file at fd meanwhile)
            if 0 <= low < fd and self.fd_inode(low) == inode:
                yield Syscall("close", fd)
                return low
            if low >= 0:
                yield Syscall("close", low)
        return fd

    def release(self) -> None:
        """The thread exited: its scratch page can serve another thread."""
        if self.page is not None:
            self.process.free_pages.append(self.page)
            self.page = None
        self.close_pidfd()


class PtraceBackend:
    """ptrace with SECCOMP_RET_TRACE: each trapped call stops the thread; the
    supervisor injects the syscalls an act needs into it (tracee.py)."""
    NAME = "ptrace"
    SEIZE_OPTIONS = (kernel.PTRACE_O_TRACESYSGOOD | kernel.PTRACE_O_TRACEFORK | kernel.PTRACE_O_TRACEVFORK
                     | kernel.PTRACE_O_TRACECLONE | kernel.PTRACE_O_TRACEEXEC | kernel.PTRACE_O_TRACESECCOMP
                     | kernel.PTRACE_O_EXITKILL)
    SYSCALL_STOP = signal.SIGTRAP | 0x80
    STOP_SIGNALS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.log = supervisor.log
        self.processes: dict[int, Process] = {}
        self.threads: dict[int, Thread] = {}

    def describe(self) -> str:
        return "ptrace (--backend ptrace)" if self.sup.requested == "ptrace" else \
            "ptrace (seccomp user notification cannot run here)"

    def prepare(self) -> None:
        self.filter = seccomp_filter.build(self.sup.rules, sealed=self.sup.sealed, backend="ptrace")

    def in_child(self, go: int, report: int) -> None:
        if os.read(go, 1) != b"g":  # seized
            os._exit(1)
        self.filter.load()

    def started(self, pid: int, go: int, report: int) -> None:
        try:
            kernel.seize(pid, self.SEIZE_OPTIONS)
        except OSError as err:
            raise SpawnError(f"cannot trace the program (ptrace: {err.strerror}); is ptrace restricted "
                             "(kernel.yama.ptrace_scope) or are we inside a tracer?", OWN_FAILURE) from None
        process = self.processes[pid] = Process(pid)
        self.threads[pid] = process.threads[pid] = Thread(pid, process)
        os.write(go, b"g")

    def pids(self) -> list[int]:
        return list(self.processes)

    def loop(self) -> None:
        # A stop or an exit is a SIGCHLD (blocked: read from a signalfd); a
        # signal to forward wakes the wait too (its handler runs as select
        # returns), else one that came just before it would wait for the timer.
        children, signals = kernel.signalfd({signal.SIGCHLD}), self.sup.signals
        watched = [children, signals.wakeup]
        try:
            while self.threads:
                try:
                    tid, status = os.waitpid(-1, kernel.WALL | os.WNOHANG)
                except ChildProcessError:
                    break
                if tid == 0:  # nothing now: wait for the next stop, or the reap timer
                    self.sup.reap_if_due()
                    ready, _, _ = select.select(watched, [], [], REAP_EVERY)
                    if children in ready:
                        os.read(children, 4096)
                    if signals.wakeup in ready:
                        signals.drain()
                    continue
                try:
                    self.dispatch(tid, status)
                except OSError as err:
                    if err.errno != errno.ESRCH:  # ESRCH: it died meanwhile; its exit follows
                        raise
        finally:
            os.close(children)

    def dispatch(self, tid: int, status: int) -> None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.thread_gone(tid, status)
            return
        if not os.WIFSTOPPED(status):
            return
        thread = self.threads.get(tid) or self.adopt(tid)
        if thread is None:
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        if sig == self.SYSCALL_STOP:
            if thread.busy:
                try:
                    thread.check_injected(kernel.PTRACE_SYSCALL_INFO_ENTRY) if thread.awaiting_entry else None
                except HijackedThread as err:
                    self._kill_hijacked(thread, err)
                    return
                self._guarded(thread.on_syscall_stop)
            else:
                kernel.resume(tid)
        elif event == kernel.PTRACE_EVENT_SECCOMP:
            self.on_seccomp(thread)
        elif event == kernel.PTRACE_EVENT_EXEC:
            self.on_exec(thread)
        elif event == kernel.PTRACE_EVENT_STOP:
            if sig in self.STOP_SIGNALS:  # group-stop: stay stopped until SIGCONT
                kernel.ptrace(kernel.PTRACE_LISTEN, tid)
            else:
                kernel.resume(tid, thread.resume_request)
        elif event in (kernel.PTRACE_EVENT_FORK, kernel.PTRACE_EVENT_VFORK, kernel.PTRACE_EVENT_CLONE):
            self.adopt(kernel.geteventmsg(tid))
            kernel.resume(tid, thread.resume_request)
        elif event:
            kernel.resume(tid, thread.resume_request)
        elif thread.busy:
            thread.hold_signal(sig)  # a handler is mid-way: deliver it when done
        else:
            kernel.resume(tid, kernel.PTRACE_CONT, sig)

    # ---- threads and processes -----------------------------------------------------
    def adopt(self, tid: int) -> Thread | None:
        """A new traced thread (its first stop may come before its parent's event)."""
        if tid in self.threads:
            return self.threads[tid]
        try:
            tgid = kernel.tgid_of(tid)
        except OSError:
            return None  # gone already
        process = self.processes.get(tgid)
        if process is None:
            process = self.processes[tgid] = Process(tgid)
        thread = self.threads[tid] = process.threads[tid] = Thread(tid, process)
        return thread

    def thread_gone(self, tid: int, status: int) -> None:
        thread = self.threads.pop(tid, None)
        if tid == self.sup.main_pid:
            self.sup.main_status = status
        if thread is None:
            return
        thread.abandon()
        thread.release()
        process = thread.process
        process.threads.pop(tid, None)
        if not process.threads:
            self.processes.pop(process.tgid, None)
            self.sup.reap()

    def on_exec(self, thread: Thread) -> None:
        former = kernel.geteventmsg(thread.tid)
        process = thread.process
        # execve from a non-leader thread: it took over the leader's tid; the
        # other threads are gone without a word.
        for tid in list(process.threads):
            if tid != thread.tid and tid != former:
                gone = self.threads.pop(tid, None)
                process.threads.pop(tid, None)
                if gone is not None:
                    gone.abandon()
                    gone.release()
        if former != thread.tid and former in self.threads:
            thread.abandon()  # the leader's own state: its tid now belongs to the thread that exec'd
            thread.release()
            moved = self.threads.pop(former)
            process.threads.pop(former, None)
            moved.tid = thread.tid
            self.threads[thread.tid] = process.threads[thread.tid] = moved
        process.after_exec()
        self.sup.reap()  # close-on-exec may have closed a listener
        kernel.resume(thread.tid)

    def on_seccomp(self, thread: Thread) -> None:
        if thread.busy:  # one of our own injected syscalls, trapped again
            try:
                thread.check_injected()
            except HijackedThread as err:
                self._kill_hijacked(thread, err)
                return
            kernel.resume(thread.tid, kernel.PTRACE_SYSCALL)
            return
        nr, args, trace_data = kernel.seccomp_info(thread.tid)
        if trace_data == seccomp_filter.TRACE_I386:
            self.log(0, f"thread {thread.tid}: 32-bit (int 0x80) socket call refused: not supported (ENOSYS)")
            thread.start(-errno.ENOSYS)
            return
        outcome = self.sup.handle(thread, nr, args)
        self._guarded(thread.start, outcome)

    def _kill_hijacked(self, thread: Thread, err: HijackedThread) -> None:
        """Fail closed: a program that rewrites the code a supervisor's call
        runs through gets no call at all. Its process is killed."""
        self.log(0, f"{err}: the program rewrote the code redirect runs its calls through; killing "
                    f"process {thread.process.tgid}")
        os.kill(thread.process.tgid, signal.SIGKILL)

    def _guarded(self, step, *args) -> None:
        """Run a handler step; a bug in a handler fails that one call (the thread
        has been answered with EIO), not the supervisor."""
        try:
            step(*args)
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise
            self.sup.internal_error("a trapped call")
        except Exception:
            self.sup.internal_error("a trapped call")

    def holders(self):
        """Every thread whose fd table may hold a socket: all traced threads (a
        thread may have its own table, the leader may be a zombie with none),
        and children forked a moment ago whose first stop we have not seen
        (looked at only: they are adopted at their own first stop)."""
        for thread in list(self.threads.values()):
            yield thread
            for child in children_of(thread.tid):
                if child not in self.threads:
                    yield ProgramThread(child, Process(child))
