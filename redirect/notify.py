"""The notify backend: seccomp user notification (SECCOMP_RET_USER_NOTIF).

The program runs untraced. A trapped call waits in the kernel until the
supervisor answers it: the supervisor reads the call's memory (checked with
ID_VALID after every read: the bytes are the waiting call's), takes
duplicates of its fds (pidfd_getfd), makes the calls it judged itself
(handlers/perform.py), puts sockets into the program with ADDFD (at a
number, or anywhere for a call whose result is the new fd), and answers.
CONTINUE (PASS) is only ever the answer to calls on which nothing was
decided.

A call that must wait (a blocking accept, connect, receive) is simply not
answered yet: the supervisor watches the socket itself and serves other
calls meanwhile. A received call waits killable (WAIT_KILLABLE_RECV, Linux
5.19): a signal cannot end it between the supervisor's act and its answer,
which would lose the act's result (a datagram taken) or make the act twice
when the call restarts. So a waiting call whose thread has a signal to take
is answered -ERESTARTSYS by the supervisor (it looks every _SIGNALS_EVERY):
the kernel then runs the handler and restarts the call or fails it with
EINTR, as SA_RESTART says, as on a real socket. (Older kernels: the signal
ends the notification; what the supervisor took for it goes to the next
call, an answer lost is given again to the same call made again.)

No ptrace anywhere: the program's signals cost nothing, strace -p and gdb -p
attach to it, and it may trace its own children.
"""
from __future__ import annotations

import errno
import heapq
import math
import os
import select
import signal
import time
import types

from . import arch, kernel, seccomp_filter
from .program import PASS, Process, ProgramThread, descendants, status_field, tasks_of
from .supervisor import Supervisor, Unavailable

TYPE_CHECKING = False  # (not typing's: importing typing costs 3 ms of start-up)
if TYPE_CHECKING:  # socket is imported lazily: start-up time
    import socket

_SWEEP_EVERY = 0.1     # seconds: how soon a wait whose call went away (a signal) lets go of its socket
_SIGNALS_EVERY = 0.01  # seconds: how soon a waiting call (killable) hears of its thread's signal
_ERESTARTSYS = 512
_ALL_SIGNALS = signal.valid_signals()
# handlers.compiled(): the calls, in the order of _fastpath.c's serve()
_COMPILED_NAMES = ("accept", "accept4", "getsockname", "setsockopt", "recvfrom", "sendto")
_COMPILED = tuple(arch.NR[name] for name in _COMPILED_NAMES)


class CallGone(BaseException):
    """The call is no longer waiting for an answer (a signal, the thread
    ended): its handler is dropped without one. Not an Exception: no
    handler's error path may swallow it."""


class Give:
    """A handler's answer: the call's result is a new fd of this socket
    (`lost` is called with it if the call went away first)."""
    __slots__ = ("sock", "cloexec", "lost")

    def __init__(self, sock: socket.socket, cloexec: bool, lost=None) -> None:
        self.sock, self.cloexec, self.lost = sock, cloexec, lost


class Wait:
    """A handler waits: for fileno to be ready for events (0: a pause), at
    most timeout_ms (-1: no limit)."""
    __slots__ = ("fileno", "events", "timeout_ms")

    def __init__(self, fileno: int, events: int, timeout_ms: int) -> None:
        self.fileno, self.events, self.timeout_ms = fileno, events, timeout_ms


def _now(value):
    """A backend act that is done at once, as the generator handlers expect."""
    return value
    yield  # noqa: B901 (makes this a generator)


def _compiled(verbosity: int):
    """The compiled calls of every new connection (redirect/_fastpath.c), if
    it was built (setup.py builds it where a C compiler is), or why not.
    REDIRECT_COMPILED=0 leaves them to Python, to measure one against the
    other; so does -vv, which logs every accept with its thread."""
    if os.environ.get("REDIRECT_COMPILED") == "0":
        return None, "REDIRECT_COMPILED=0"
    if verbosity >= 2:
        return None, "-vv"
    try:
        from . import _fastpath
    except ImportError:
        return None, "redirect._fastpath is not built"
    return _fastpath, ""


class Task:
    """A thread of the program seen in a notification: its pidfd (for its fd
    table, and to tell that it ended) and its process."""

    def __init__(self, tid: int, process: Process) -> None:
        self.tid = tid
        self.process = process
        self.pidfd = kernel.pidfd_open_thread(tid)
        process.threads[tid] = self
        self.status = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)  # read again at each use

    def identity(self):
        from .identity import of_thread

        return of_thread(self.tid, self.status)

    def alive(self) -> bool:
        """Whether the thread has not ended (its pidfd says so)."""
        return not select.select([self.pidfd], [], [], 0)[0]

    def signal_answer(self, shared_since: int) -> int:
        """What this thread's waiting call answers now for a signal (0: none,
        1: look again); see signal_answer()."""
        status = os.pread(self.status, 8192, 0)
        answer = signal_answer(status, self.tid, self.process.tgid)
        if answer == 1 and shared_since >= 2:  # a process's signal no running thread took
            others = []
            for tid in tasks_of(self.process.tgid):
                try:
                    with open(f"/proc/{self.process.tgid}/task/{tid}/status", "rb") as other:
                        others.append(other.read())
                except OSError:
                    pass  # ended: it takes no signal
            answer = signal_answer(status, self.tid, self.process.tgid, [o for o in others if o != status])
        return answer

    def close(self) -> None:
        os.close(self.pidfd)
        os.close(self.status)
        self.process.threads.pop(self.tid, None)


def signal_answer(status: bytes, tid: int, tgid: int, others: list[bytes] | None = None) -> int:
    """The answer of a call the supervisor holds (its thread waits killable,
    deaf to signals) for the signals /proc/TID/status shows pending: 0 for
    none; -ERESTARTSYS where the kernel has marked the thread to take one
    (it then delivers it and restarts or fails the call, as SA_RESTART
    says; -ERESTARTSYS reaching a thread not so marked would be seen as
    errno 512). A thread is marked for an unblocked signal of its own, and
    for one of its process's if it is the only thread, the leader (the
    kernel offers a process's signal to the leader first) or the only one
    not blocking it (`others`: the other threads' status, asked for, 1, when
    the signal waits on: no running thread took it). Otherwise the kernel
    chose one waiting here, maybe this one: the call ends with EINTR."""
    def mask(text: bytes, name: bytes) -> int:
        return int(status_field(text, name) or b"0", 16)
    blocked = mask(status, b"SigBlk")
    if mask(status, b"SigPnd") & ~blocked:
        return -_ERESTARTSYS
    shared = mask(status, b"ShdPnd") & ~blocked
    if not shared:
        return 0
    if tid == tgid or status_field(status, b"Threads") == b"1":
        return -_ERESTARTSYS
    if others is None:
        return 1
    if not any(shared & ~mask(other, b"SigBlk") for other in others):
        return -_ERESTARTSYS
    return -errno.EINTR


class Notified(ProgramThread):
    """The thread of one notification, and the acts handlers ask for
    (handlers/__init__.py), done by the supervisor."""

    def __init__(self, backend: "NotifyBackend", task: Task, ident: int) -> None:
        super().__init__(task.tid, task.process)
        # Without WAIT_KILLABLE_RECV a signal ends the call, and with it what
        # the call had done so far.
        self.progress_lost_to_signals = not backend.killable
        self.task = task
        self._pidfd = task.pidfd  # the task's: not closed with this call
        self.ident = ident
        self.listener = backend.listener
        # (Memory is read with process_vm_readv, per call: always the image
        # the thread has now; a cached /proc/PID/mem of a vfork child that
        # execs would still be its parent's.)

    def valid(self) -> bool:
        return kernel.notif_id_valid(self.listener, self.ident)

    def read_some(self, addr: int, size: int) -> bytes:
        data = super().read_some(addr, size)
        # Only bytes read while the call still waits are the call's.
        if not self.valid():
            raise CallGone
        return data

    # write(): ProgramThread's, unchecked: these are results of a call the
    # supervisor made already (a datagram taken, an address); if the call
    # went away, it is made again with the same buffer and answered from `replay`.

    def identity(self):
        return self.task.identity()

    def alive(self) -> bool:
        return self.valid() or self.task.alive()  # (a call gone to a signal: its thread lives on)

    def wait(self, sock: socket.socket, fd: int, events: int, timeout_ms: int):
        return (yield Wait(sock.fileno(), events, timeout_ms))

    def put_socket(self, new: socket.socket, places: list[tuple[int, bool]]):
        for fd, cloexec in places:
            try:
                kernel.notif_addfd(self.listener, self.ident, new.fileno(), fd, kernel.SECCOMP_ADDFD_FLAG_SETFD,
                                   cloexec)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ESRCH):
                    # The call went away (a signal: Go's preemption, say):
                    # nothing to answer; its restart is judged afresh.
                    raise CallGone from None
                return _now(-(err.errno or errno.EIO))
        return _now(0)

    def give(self, sock: socket.socket, cloexec: bool, lost=None):
        return _now(Give(sock, cloexec, lost))

    def epoll_add(self, epfd: int, fd: int, events: int, data: int):
        """Made by the supervisor in the program's epoll instance, with the
        socket at the program's own fd number in our table for the moment:
        an epoll registration is of (file, fd number), and the program will
        name it by its number."""
        try:
            ep, target = self.duplicate(epfd), self.duplicate(fd)
        except OSError as err:
            return _now(-(err.errno or errno.EBADF))
        try:
            return _now(_at_number(target, fd, lambda: kernel.epoll_ctl_add(ep, fd, events, data)))
        except OSError as err:
            return _now(-(err.errno or errno.EIO))
        finally:
            os.close(ep)
            os.close(target)


def _at_number(fileno: int, number: int, do):
    """do() with our fd `number` referring to fileno's file; whatever of ours
    was at that number is back afterwards."""
    if number == fileno:
        return do()
    saved = inheritable = None
    try:
        inheritable = os.get_inheritable(number)
    except OSError as err:
        if err.errno != errno.EBADF:
            raise
    else:  # the number is one of ours: kept aside (EMFILE: the act fails, ours stays)
        saved = os.dup(number)
    os.dup2(fileno, number, inheritable=False)
    try:
        return do()
    finally:
        if saved is None:
            os.close(number)
        else:
            os.dup2(saved, number, inheritable=inheritable)
            os.close(saved)


class Pending:
    """A call being handled: its thread, and its handler while it waits."""
    __slots__ = ("thread", "nr", "args", "handler", "key", "timer", "shared_since")

    def __init__(self, thread: Notified, nr: int, args: tuple[int, ...]) -> None:
        self.thread, self.nr, self.args = thread, nr, args
        self.handler: types.GeneratorType | None = None
        self.key = -1    # our fd in the epoll set while waiting on a socket
        self.timer = 0   # which timer entry is current
        self.shared_since = 0  # looks for which a signal of its process waited

    def __lt__(self, other: "Pending") -> bool:  # ties in the timer heap never compare calls
        return False


class NotifyBackend:
    NAME = "notify"

    def __init__(self, supervisor: Supervisor) -> None:
        if not kernel.has_user_notification():
            raise Unavailable("this kernel has no seccomp user notification (Linux 5.0)")
        self.sup = supervisor
        self.log = supervisor.log
        self.tasks: dict[int, Task] = {}
        self.processes: dict[int, Process] = {}
        self.waiting: dict[int, Pending] = {}     # epoll key -> call
        self.parked: set[Pending] = set()         # every call that waits (on a socket or a timer)
        self.timers: list[tuple[float, int, Pending]] = []
        self.replay: dict[int, tuple[int, tuple[int, ...], int]] = {}
        self.ended: dict[int, Task] = {}           # task pidfd -> task
        self.listener = -1
        self.sync_wake_up = False
        self.killable = False
        self.credits = False  # PIDFD_GET_INFO: C can credit a root supervisor's answers to the program
        self.compiled, self._why_not_compiled = _compiled(supervisor.verbosity)
        self._meaning, self._passing = None, 0
        self._seq = 0
        self._next_sweep = self._next_signals = 0.0

    def describe(self) -> str:
        why = "--backend notify" if self.sup.requested == "notify" else "the kernel has what it needs"
        speed = "sync wake-up" if self.sync_wake_up else \
            "without SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6): each call costs a cross-CPU wake-up"
        waits = "calls wait killable" if self.killable else \
            "without WAIT_KILLABLE_RECV (Linux 5.19): a signal during a call may make it twice"
        calls = "connection and datagram calls compiled" if self.compiled is not None else \
            f"connection and datagram calls made in Python ({self._why_not_compiled})"
        if self.compiled is not None and not self.credits and os.geteuid() == 0:
            calls += "; answers to datagram senders made in Python (no PIDFD_GET_INFO, Linux 6.13)"
        return f"notify (seccomp user notification; {why}; {speed}; {waits}; {calls})"

    # ---- start ---------------------------------------------------------------------
    def prepare(self) -> None:
        flt = seccomp_filter.build(self.sup.rules, sealed=self.sup.sealed, backend="notify")
        memfd = os.memfd_create("redirect-filter", os.MFD_CLOEXEC)
        try:
            flt.export_bpf(memfd)
            self.program = os.pread(memfd, os.fstat(memfd).st_size, 0)
        finally:
            os.close(memfd)

    def in_child(self, go: int, report: int) -> None:
        # Nothing the filter traps runs between here and the exec: read,
        # write and close are not trapped (the supervisor has no listener yet).
        fd, killable = kernel.load_filter_with_listener(self.program)
        os.write(report, b"%d %d" % (fd, killable))
        if os.read(go, 1) != b"g":
            os._exit(1)
        os.close(fd)

    def started(self, pid: int, go: int, report: int) -> None:
        said = os.read(report, 16)
        if not said:  # the child failed before: say why
            stage, err = self.sup.child.report() or ("other", 0)
            if stage == "seccomp" and err == errno.EBUSY:
                raise Unavailable("another seccomp notifier watches this process already (EBUSY): the kernel "
                                  "allows one listener", unsafe_fallback=True)
            if stage == "seccomp":
                raise Unavailable(f"installing the filter failed: {os.strerror(err)}")
            raise Unavailable(f"the child failed at {stage}: {os.strerror(err)}")
        pidfd = os.pidfd_open(pid)
        try:
            number, killable = said.split()
            self.listener = kernel.pidfd_getfd(pidfd, int(number))
            self.killable = killable == b"1"
        finally:
            os.close(pidfd)
        features = kernel.notif_features(self.listener)
        if not features["addfd"]:
            raise Unavailable("this kernel cannot put fds into a notified process (SECCOMP_IOCTL_NOTIF_ADDFD, "
                              "Linux 5.9)")
        if not features["addfd_send"]:
            raise Unavailable("this kernel has no SECCOMP_ADDFD_FLAG_SEND (Linux 5.14): without it an fd "
                              "given as a call's result could be lost to a signal")
        self.sync_wake_up = kernel.notif_sync_wake_up(self.listener)
        self.credits = self.compiled is not None and kernel.has_pidfd_info()
        os.write(go, b"g")

    # ---- the tree --------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Every process of the program's tree now (they are all below us:
        we are their subreaper)."""
        return descendants(os.getpid())

    def holders(self):
        for pid in self.pids():
            process = Process(pid)
            for tid in tasks_of(pid):
                yield ProgramThread(tid, process)

    # ---- the loop --------------------------------------------------------------------
    def loop(self) -> None:
        self.epoll = select.epoll()
        serve = self.compiled.serve if self.compiled is not None else None
        if serve is None:
            self.epoll.register(self.listener, select.EPOLLIN)
        children = kernel.signalfd({signal.SIGCHLD})
        self.epoll.register(children, select.EPOLLIN)
        signals = self.sup.signals
        self.epoll.register(signals.wakeup, select.EPOLLIN)  # (its handler runs as poll returns)
        self.done = False
        try:
            self._children()
            listener, poll, receive = self.listener, self.epoll.poll, self._receive
            while not self.done:
                timed = self.parked or self.timers or self.sup.has_files()
                timeout = self._timeout() if timed else -1
                if serve is not None:
                    # The notifications, in C until there is something else
                    # to do (the epoll fd is readable) or a call for Python.
                    serve = self._serve(serve, timeout)
                    timeout = 0
                for key, events in poll(timeout):
                    if key == listener:
                        if events & select.EPOLLIN:
                            receive()
                        elif events & select.EPOLLHUP:  # no task left under the filter
                            self.epoll.unregister(self.listener)
                    elif key == children:
                        os.read(children, 4096)
                        self._children()
                    elif key == signals.wakeup:
                        signals.drain()
                    elif key in self.ended:
                        self._forget(self.ended[key])
                    else:
                        self._ready(key)
                if timed:
                    self._timers()
        finally:
            for pending in list(self.parked):
                self._drop(pending)
            os.close(children)
            self.epoll.close()
            os.close(self.listener)
            for task in list(self.tasks.values()):
                task.close()

    def _serve(self, serve, timeout: float):
        """One turn of the compiled loop (redirect/_fastpath.c): what it
        gives back done here. The serve function for the next turn, or None
        (no thread is left under the filter, or a bug: the Python loop goes
        on alone)."""
        ctx = self.sup._ctx  # (None until a handler ran: not made at start-up)
        meaning, passing = None, 0
        if ctx is not None and not self.replay:  # (a lost answer to give again: every call is Python's)
            if self._meaning is None:
                from .handlers import PASS_UNCONVERTED, compiled  # (imported with the context)

                self._meaning = compiled(ctx)
                self._passing = sum(1 << _COMPILED_NAMES.index(name) for name in PASS_UNCONVERTED)
            if ctx.registry.converted():
                meaning = self._meaning
            else:
                passing = self._passing  # nothing converted yet
        try:
            got = serve(self.listener, self.epoll.fileno(), -1 if timeout < 0 else math.ceil(timeout * 1000),
                        kernel.AUDIT_ARCH, self.tasks, self._task, _COMPILED, _COMPILED_NAMES, meaning, passing,
                        (self.sup.trapped, self.sup.compiled), self.killable, self.credits)
        except Exception:
            # A bug, in C or in what a call means (a call it made is answered
            # EIO: fail closed): from now on every call is the handlers'.
            import traceback

            self.log(0, "internal error in the compiled notification loop; from now on every call is made in "
                        "Python:\n" + traceback.format_exc())
            self.epoll.register(self.listener, select.EPOLLIN)
            return None
        if got is None:
            return serve
        if got[0] == "call":
            self._received(*got[1:])
        elif got[0] == "replay":  # a datagram call made, its answer lost to a signal: for its restart
            _, tid, nr, _, args, result = got
            self.replay[tid] = (nr, args, result)
        elif got[0] == "kept":  # an accept's connection taken, not given (the call went away, EMFILE): the next call's
            import socket

            _, conn, listener = got
            ctx.kept.setdefault(listener, []).append(socket.socket(fileno=conn))
            self._wake_all()
        else:  # "hup": no task left under the filter
            return None
        return serve

    def _timeout(self) -> float:
        now = time.monotonic()
        until = self.sup.next_reap if self.sup.has_files() else now + 3600
        if self.parked:
            until = min(until, self._next_sweep, self._next_signals if self.killable else until)
        if self.timers:
            until = min(until, self.timers[0][0])
        return max(until - now, 0)

    def _children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.done = True
                return
            if pid == 0:
                return
            process = self.processes.get(pid)
            for task in list(process.threads.values()) if process is not None else ():
                self._forget(task)
            self.sup.process_ended(pid, status)

    def _task(self, tid: int) -> Task:
        task = self.tasks.get(tid)
        if task is not None:
            # (Not checked alive here, ~1 us a call: its pidfd's event forgets
            # it, and a dead task's fds can only fail a call, never mislead it.)
            return task
        tgid = kernel.tgid_of(tid)
        process = self.processes.get(tgid)
        if process is None:
            process = self.processes[tgid] = Process(tgid)
        task = self.tasks[tid] = Task(tid, process)
        # Its pidfd says when it ends (children the program reaps itself
        # included): then its fds here go.
        self.ended[task.pidfd] = task
        self.epoll.register(task.pidfd, select.EPOLLIN)
        return task

    def _forget(self, task: Task) -> None:
        self.ended.pop(task.pidfd, None)
        if self.tasks.get(task.tid) is task:
            self.replay.pop(task.tid, None)  # (an answer lost with its thread: none restarts)
        self.epoll.unregister(task.pidfd)
        if self.tasks.get(task.tid) is task:
            del self.tasks[task.tid]
        task.close()
        if not task.process.threads and self.processes.get(task.process.tgid) is task.process:
            del self.processes[task.process.tgid]

    def _receive(self) -> None:
        try:
            got = kernel.notif_receive(self.listener)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINTR):
                return  # the call went away between the wake-up and now
            raise
        self._received(*got)

    def _received(self, ident: int, tid: int, nr: int, audit_arch: int, args: tuple[int, ...]) -> None:
        again = self.replay.pop(tid, None)
        if again is not None and again[:2] == (nr, args):
            # The same call again: its answer was lost to a signal after the
            # supervisor had made it. Made once; answered now (or, lost
            # again, kept for the next time).
            if not self._send(ident, again[2]):
                self.replay[tid] = again
            return
        if audit_arch != kernel.AUDIT_ARCH:
            self.log(0, f"thread {tid}: 32-bit (int 0x80) socket call refused: not supported (ENOSYS)")
            self._send(ident, -errno.ENOSYS)
            return
        try:
            task = self._task(tid)
        except OSError:
            self._send(ident, -errno.ESRCH)  # gone already: nobody reads this
            return
        thread = Notified(self, task, ident)
        try:
            outcome = self.sup.handle(thread, nr, args)
        except CallGone:
            return
        if outcome is PASS:  # the common case, short
            self._send(ident, PASS)
            return
        pending = Pending(thread, nr, args)
        if isinstance(outcome, types.GeneratorType):
            pending.handler = outcome
            self._step(pending, None)
        else:
            self._answer(pending, outcome)

    def _step(self, pending: Pending, value) -> None:
        try:
            request = pending.handler.send(value)
        except StopIteration as stop:
            self._answer(pending, stop.value)
            return
        except CallGone:
            return
        except OSError as err:
            self.log(0, f"a trapped call in thread {pending.thread.tid}: {err.strerror or err}; the call fails with EIO")
            self._answer(pending, -errno.EIO)
            return
        except Exception:
            self.sup.internal_error("a trapped call")
            self._answer(pending, -errno.EIO)
            return
        self._park(pending, request)

    def _answer(self, pending: Pending, result) -> None:
        thread = pending.thread
        if isinstance(result, Give):
            self._give(thread, result)
            return
        if result is None:
            result = -errno.EIO  # a handler that forgot to answer: never let the call through
        if not self._send(thread.ident, result) and result is not PASS:
            self.replay[thread.tid] = (pending.nr, pending.args, result)

    def _give(self, thread: Notified, give: Give) -> None:
        """The call's result is a new fd of give.sock in the program.

        Waiting killable, the call cannot go away between two steps: the fd
        is put in (ADDFD), then the call answered with its number. Not ADDFD
        SEND: should the supervisor's own ioctl be interrupted (a signal it
        forwards, SIGUSR1 for a log rotation, a stop) before the thread took
        the fd, the kernel has already marked the call answered, with 0: the
        program's accept returns fd 0 (seen, tests/test_behaviour.py). And
        SEND wakes the supervisor on the other CPU as the thread runs on
        (70 us on this VM, against 10 us for the two steps, whose answer
        hands the CPU over). Without WAIT_KILLABLE_RECV a signal could end
        the call between the two steps, leaving the fd behind: there SEND,
        with the supervisor's signals blocked around it."""
        sock = give.sock
        try:
            if self.killable:
                fd = kernel.notif_addfd(self.listener, thread.ident, sock.fileno(), cloexec=give.cloexec)
                self._send(thread.ident, fd)
            else:
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
                try:
                    kernel.notif_addfd(self.listener, thread.ident, sock.fileno(),
                                       flags=kernel.SECCOMP_ADDFD_FLAG_SEND, cloexec=give.cloexec)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except OSError as err:
            gone = err.errno in (errno.ENOENT, errno.ESRCH, errno.EINPROGRESS)
            if not gone:
                self._send(thread.ident, -(err.errno or errno.EIO))  # EMFILE...: as accept would say
            if (gone or err.errno in (errno.EMFILE, errno.ENFILE)) and give.lost is not None:
                # The call went away, or the fd table is full (the kernel
                # takes no connection then): the next call gets it.
                give.lost(sock)
                self._wake_all()
                return
        sock.close()

    def _send(self, ident: int, result) -> bool:
        """Answer; False if the call is no longer there to answer."""
        try:
            if result is PASS:
                kernel.notif_send(self.listener, ident, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE)
            elif result < 0:
                kernel.notif_send(self.listener, ident, 0, result)
            else:
                kernel.notif_send(self.listener, ident, result, 0)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True

    # ---- calls that wait -------------------------------------------------------------
    def _park(self, pending: Pending, wait) -> None:
        if not isinstance(wait, Wait):
            self.sup.internal_error(f"a trapped call (it asked for {wait!r})")
            pending.handler.close()
            self._answer(pending, -errno.EIO)
            return
        if wait.events:
            try:
                pending.key = os.dup(wait.fileno)  # a key of its own: two calls may wait on one socket
            except OSError as err:  # EMFILE: the call fails, the supervisor goes on
                pending.handler.close()
                self._answer(pending, -(err.errno or errno.EIO))
                return
            self.waiting[pending.key] = pending
            self.epoll.register(pending.key, wait.events | select.EPOLLONESHOT)
        self._seq += 1
        pending.timer = self._seq
        if wait.timeout_ms >= 0:
            heapq.heappush(self.timers, (time.monotonic() + wait.timeout_ms / 1000, self._seq, pending))
        if not self.parked:
            self._next_sweep = time.monotonic() + _SWEEP_EVERY
            self._next_signals = time.monotonic() + _SIGNALS_EVERY
        self.parked.add(pending)

    def _unpark(self, pending: Pending) -> None:
        self.parked.discard(pending)
        pending.timer = 0
        if pending.key >= 0:
            self.waiting.pop(pending.key, None)
            self.epoll.unregister(pending.key)
            os.close(pending.key)
            pending.key = -1

    def _resume(self, pending: Pending, value: int) -> None:
        self._unpark(pending)
        if value >= 0 and not pending.thread.valid():
            self._drop(pending)  # a signal ended the call: nothing was taken for it
            return
        self._step(pending, value)

    def _drop(self, pending: Pending) -> None:
        self._unpark(pending)
        pending.handler.close()

    def _ready(self, key: int) -> None:
        pending = self.waiting.get(key)
        if pending is not None:
            self._resume(pending, 1)

    def _wake_all(self) -> None:
        """Something was put back for the next call (a connection): every
        waiting call looks again."""
        for pending in list(self.parked):
            if pending in self.parked:
                self._resume(pending, 1)

    def _timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, seq, pending = heapq.heappop(self.timers)
            if pending.timer == seq:
                self._resume(pending, 0)
        if self.parked and self.killable and now >= self._next_signals:
            self._next_signals = now + _SIGNALS_EVERY
            self._signals()
        if self.parked and now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            for pending in list(self.parked):
                if not pending.thread.valid():
                    self._drop(pending)
        self.sup.reap_if_due()

    def _signals(self) -> None:
        """Waiting calls whose threads have a signal to take are answered
        for it (the handler decides: what a call did so far, or the error)."""
        for pending in list(self.parked):
            try:
                answer = pending.thread.task.signal_answer(pending.shared_since)
            except OSError:
                continue  # the thread ended: its pidfd says so next
            if answer < 0:
                self._resume(pending, answer)
            pending.shared_since = pending.shared_since + 1 if answer > 0 else 0


__all__ = ["NotifyBackend"]
