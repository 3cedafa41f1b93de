"""Spawn the program under the seccomp filter and hand each trapped syscall to
its handler, through one of two backends: seccomp user notification
(notify.py, the default where the kernel has what it needs) or ptrace
(PtraceBackend below, over tracee.py). Shared here: the rules' context,
spawning, signals, socket files, and the dispatch of a call to its handler."""
from __future__ import annotations

import errno
import os
import resource
import signal
import time

from . import OWN_FAILURE, arch, kernel
from .child import Child, SpawnError, exec_error, inherited_network_sockets
from .log import Log
from .program import ProgramThread
from .rules import Rule
from .signals import FORWARDED, Forwarder, StoppedIdle

BACKENDS = ("notify", "ptrace")


class Unavailable(Exception):
    """This backend cannot run here; the message says why (auto mode then
    takes the next one, unless `unsafe_fallback`: the reason would also let
    calls past the next one)."""

    def __init__(self, why: str, unsafe_fallback: bool = False) -> None:
        super().__init__(why)
        self.unsafe_fallback = unsafe_fallback


class Supervisor:
    def __init__(self, rules: list[Rule], verbosity: int = 0, log_file=None, activate: bool = False,
                 on_demand: bool = False, sealed: bool = False, backend: str = "auto", quiet: bool = False,
                 once: bool = False, notify_ready: bool = False) -> None:
        self.verbosity, self.quiet = verbosity, quiet
        self.log = Log(verbosity, log_file)
        self.rules, self.sealed = rules, sealed
        self._ctx = None
        self._handlers = None
        self.main_pid = 0
        self.child = None  # the program's start now (child.py)
        self.main_status: int | None = None
        self.activate, self.on_demand, self.once = activate or on_demand, on_demand, once
        self.idle = False  # between two runs of --on-demand
        self.signals = Forwarder(self)
        self.notify_ready, self.readiness = notify_ready, None  # readiness.py
        self.requested = backend
        self.backend = None
        self.trapped: dict[str, int] = {}  # calls handled, by syscall name (--count-calls)
        self.compiled: dict[str, int] = {}  # of those, made in C (notify.py, _fastpath.c)

    @property
    def ctx(self):
        """The handlers' context, made when first needed: it pulls in the
        handlers, which a program that never makes a trapped call (or not
        yet) need not wait for."""
        if self._ctx is None:
            from .activation import Activation
            from .handlers import Context
            from .reaper import Reaper
            from .registry import Registry
            from .sockaddr import PortAllocator

            ports = PortAllocator(start=int.from_bytes(os.urandom(2), "little"))
            self._ctx = Context(rules=self.rules, registry=Registry(), ports=ports, log=self.log,
                                listening=self._listening if self.notify_ready else None,
                                activation=Activation.from_environment(os.environ, self.log),
                                sealed=self.sealed, quiet=self.quiet, verbosity=self.verbosity)
            self._ctx.reaper = Reaper(self._ctx, lambda: self.backend.holders())
        return self._ctx

    def _listening(self, real) -> None:
        if self.readiness is not None:
            self.readiness.listening(real)

    # ---- start ---------------------------------------------------------------------
    def _candidates(self) -> list:
        """Loaders of the backends to try, in order: only the one that runs is imported."""
        def notify():
            from .notify import NotifyBackend
            return NotifyBackend

        def ptrace():
            from .tracee import PtraceBackend
            return PtraceBackend
        return {"ptrace": [ptrace], "notify": [notify]}.get(self.requested, [notify, ptrace])

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        if not kernel.has_pidfd_getfd():
            raise SpawnError("this kernel has no pidfd_getfd (Linux 5.6 or later): redirect looks at and "
                             "acts on the program's sockets through it", OWN_FAILURE)
        unsealed = inherited_network_sockets(self.log) if self.sealed else []
        confine = self.sealed and kernel.landlock_abi() > 0
        if self.sealed and not confine:
            self.log(0, "sealed: this kernel has no Landlock (5.13+, enabled in lsm=): processes of this user "
                        "outside redirect stay reachable through /proc/PID/mem")
        # The program must not open our memory, write into it or trace us:
        # only root can get into a process that is not dumpable.
        kernel.set_dumpable(False)
        # Duplicates of the program's sockets (and fds it passes) are held
        # here while calls wait: room for them, up to the hard limit.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        # Orphans of the program's tree become ours: we see every process end.
        kernel.set_child_subreaper()
        # Children's ends are read from a signalfd or sigtimedwait, not a handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        candidates = self._candidates()
        for number, loader in enumerate(candidates):
            kind = loader()
            # Signals to forward wait until the program's pid is known (before,
            # one would say "stopped before the program started" of a program
            # that runs already); a child that has not exec'd yet takes one
            # with the program's defaults (child.py).
            held = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
            try:
                backend = kind(self)
                self.child = Child(argv[0])
                pid = self.child.fork(argv, env, backend, unsealed, confine)
                self.backend, self.main_pid, self.main_status = backend, pid, None
            except Unavailable as why:
                if self.requested != "auto" or number == len(candidates) - 1:
                    raise SpawnError(f"the {kind.NAME} backend cannot run here: {why}", OWN_FAILURE) from None
                if why.unsafe_fallback:
                    raise SpawnError(f"the {kind.NAME} backend cannot run here: {why}. The ptrace backend "
                                     "would run, but a notifier's answer to a call both trap overrides "
                                     "ptrace (the kernel's precedence): the calls it lets run would never "
                                     "reach redirect, and the rules could not hold. --backend ptrace runs "
                                     "it anyway (docs/limits.md)", OWN_FAILURE) from None
                self.log(1, f"backend: not {kind.NAME} ({why})")
                continue
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self.log(1, f"backend: {backend.describe()}")
            return pid
        raise AssertionError("no backend")

    # ---- run -----------------------------------------------------------------------
    def run(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Run argv to the end; the exit status as a shell would report it."""
        if self.activate or _activation_variables(os.environ):
            self.ctx  # passed sockets are taken first: the program must not inherit them
        env = dict(os.environ if env is None else env)
        if _activation_variables(env):
            from .activation import program_environment

            # LISTEN_FDS and friends were for us: the program gets its sockets by binding.
            env = program_environment(env)
        if self.notify_ready:
            from .readiness import Readiness

            self.readiness = Readiness(self.rules, env, self.log)
        # From here on a signal is forwarded (signals.py), or (before the
        # program runs) ends us through the clean-up below.
        self.signals.install()
        try:
            if self.activate:
                self._open_rule_sockets(argv[0])
            starts: list[float] = []
            while True:
                self.spawn(argv, env)
                self.backend.loop()
                failure = self.child.failure()  # empty once the exec happened
                if failure is not None:
                    raise failure
                if not self.on_demand or self.once or self.signals.stopping:
                    break
                starts.append(time.monotonic())
                if len(starts) >= _START_LIMIT[0] and starts[-1] - starts[-_START_LIMIT[0]] < _START_LIMIT[1]:
                    self.log(0, f"--on-demand: the program ended {_START_LIMIT[0]} times within {_START_LIMIT[1]} s "
                                f"(last: {_how_it_ended(self.main_status)}); not starting it again (systemd's "
                                "start limit)")
                    break
                # As systemd: the sockets stay, and the next connection starts
                # the program again (it waits in the socket meanwhile).
                self.log(1, f"--on-demand: the program ended ({_how_it_ended(self.main_status)}); it starts "
                            "again at the next connection")
                self.ctx.program_ended()
                try:
                    self.main_pid, self.idle = 0, True
                    if self.signals.stopping:  # told to stop as the program ended
                        break
                    self.ctx.activation.wait_for_traffic(self.signals)
                except StoppedIdle:
                    return 0  # stopped while nothing ran: nothing failed
                self.idle = False
                self.log(1, "--on-demand: a connection; starting the program again")
        finally:
            self.signals.uninstall()
            if self._ctx is not None:
                self.reap()
                self._ctx.replies.remove()
                self._ctx.activation.close()
        status = self.main_status or 0
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    def _open_rule_sockets(self, program: str) -> None:
        """--activate: the rules' sockets exist and listen before the program
        runs; --on-demand: it runs once somebody connects (or sends)."""
        activation = self.ctx.activation
        try:
            skipped = activation.open_rule_sockets(self.ctx.rules)
        except OSError as err:
            missing = err.errno == errno.ENOENT and err.filename and not os.path.isdir(os.path.dirname(err.filename))
            why = " (its directory does not exist)" if missing else \
                " (a live socket: another program listens there)" if err.errno == errno.EADDRINUSE else ""
            raise SpawnError(f"--activate: cannot make {err.filename}: {err.strerror}{why}", OWN_FAILURE) from None
        for note in skipped:
            self.log(0, f"--activate: {note}")
        if not activation.opened:
            raise SpawnError("--activate: no in rule with path= or abstract= names a socket it could make",
                             OWN_FAILURE)
        for opened in activation.opened:
            self.log(1, f"--activate: listening on {opened.real} ({opened.kind})")
        if self.on_demand:
            import shutil  # only here: keep it off the start-up path

            if shutil.which(program) is None:  # say so now, not at the first connection
                raise exec_error(program, errno.ENOENT if not os.path.exists(program) else errno.EACCES)
            activation.wait_for_traffic(self.signals)  # (a signal ends it: "before the program started")
            self.log(1, "--on-demand: first connection; starting the program")

    # ---- calls -----------------------------------------------------------------------
    def handle(self, thread: ProgramThread, nr: int, args: tuple[int, ...]):
        """What the handler of this trapped call makes of it: a result, PASS,
        or a generator to drive (the backend drives it)."""
        name = arch.NAME.get(nr)
        self.trapped[name] = self.trapped.get(name, 0) + 1
        if self._handlers is None:
            from .handlers import HANDLERS, Call

            self._handlers = HANDLERS, Call, self.ctx
        handlers, call_of, ctx = self._handlers
        handler = handlers.get(name)
        if handler is None:
            return -errno.ENOSYS  # trapped by the filter, handled by nobody: a bug; never run it
        call = call_of(ctx, thread, name, arch.c_args(name, args))
        try:
            return handler(call)
        except OSError as err:  # e.g. the fd could not be looked at
            self.log(0, f"{call.describe()}: {err.strerror or err}; the call fails with EIO")
        except Exception:
            self.internal_error(call.describe())
        return -errno.EIO  # fail closed

    def internal_error(self, what: str) -> None:
        import traceback  # only ever needed here: keep it off the start-up path

        self.log(0, f"internal error handling {what}; the call fails with EIO:\n" + traceback.format_exc())

    def process_ended(self, pid: int, status: int) -> None:
        """A child of ours (the program, or an orphan of its tree) ended."""
        if pid == self.main_pid:
            self.main_status = status
        self.reap()

    # ---- socket files (reaper.py) ---------------------------------------------------
    def has_files(self) -> bool:
        return self._ctx is not None and self._ctx.reaper.has_files()

    @property
    def next_reap(self) -> float:
        return self._ctx.reaper.next if self._ctx is not None else 0.0

    def reap_if_due(self) -> None:
        if self._ctx is not None:
            self._ctx.reaper.reap_if_due()

    def reap(self) -> None:
        if self._ctx is not None:
            self._ctx.reaper.reap()


def _activation_variables(env) -> bool:
    """Whether socket activation's variables (LISTEN_FDS...) are set."""
    return any(name.startswith("LISTEN_") for name in env)


_START_LIMIT = (5, 10)  # --on-demand: at most 5 ends within 10 s, as systemd's StartLimitBurst/IntervalSec


def _how_it_ended(status: int | None) -> str:
    status = status or 0
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
