"""Starting the program: the fork, the child's preparation (reachable by us
only, Landlock, default signals, the backend's filter) and its exec, and
what went wrong in it before the exec, said as a shell would say it."""
from __future__ import annotations

import errno
import os
import signal

from .signals import FORWARDED
from . import OWN_FAILURE, kernel


class SpawnError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Child:
    """One start of the program (--on-demand starts it again: a Child each time)."""

    def __init__(self, argv0: str) -> None:
        self.argv0 = argv0
        self.err_pipe = -1   # the child's report of a failure before its exec

    def fork(self, argv, env, backend, unsealed: list[int], confine: bool) -> int:
        """Fork, prepare the child (dumpable, Landlock, default signals, the
        backend's part) and exec argv in it; the child's pid, once the backend
        has it."""
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        backend.prepare()  # before the fork: the child only loads what is ready
        pid = os.fork()
        if pid == 0:  # the child: be watched, then exec
            stage = "prctl"
            try:
                kernel.set_dumpable(True)  # ours is not: the child must be reachable by us (same user)
                os.write(report_w, b"+")
                for fd in unsealed:
                    os.close(fd)
                if confine:  # no ptrace, /proc/PID/mem or pidfd_getfd of processes outside
                    stage = "landlock"
                    kernel.landlock_enter_domain()
                # Python ignores SIGPIPE and SIGXFSZ and we block SIGCHLD; the
                # program must start with the defaults (a shell pipeline relies
                # on dying of SIGPIPE). A signal forwarded before the exec
                # finds the program's defaults, not our handler.
                for sig in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                kernel.set_parent_death_signal(signal.SIGKILL)
                stage = "seccomp"
                backend.in_child(go_r, report_w)
                stage = "exec"
                os.execvpe(argv[0], argv, os.environ if env is None else env)
            except OSError as err:
                os.write(err_w, f"{stage}:{err.errno or 0}".encode())
            except BaseException:
                os.write(err_w, b"other:0")
            finally:
                os._exit(127)
        for fd in (go_r, err_w, report_w):
            os.close(fd)
        self.err_pipe = err_r
        try:
            os.read(report_r, 1)  # the child is reachable now (or gone: started() says why)
            backend.started(pid, go_w, report_r)
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if self.err_pipe >= 0:
                os.close(self.err_pipe)
            raise
        finally:
            os.close(go_w)
            os.close(report_r)
        return pid

    def report(self) -> tuple[str, int] | None:
        """(stage, errno) the child reported before its exec, if it did."""
        try:
            report = os.read(self.err_pipe, 64).decode()
        except OSError:
            return None
        finally:
            os.close(self.err_pipe)
            self.err_pipe = -1
        if not report:
            return None
        stage, _, code = report.partition(":")
        return stage, int(code or 0)

    def failure(self) -> SpawnError | None:
        """What went wrong in the child before its exec, if anything."""
        if self.err_pipe < 0:
            return None
        failure = self.report()
        if failure is None:
            return None
        stage, err = failure
        if stage == "exec":
            return exec_error(self.argv0, err)
        if stage == "seccomp":
            return SpawnError(f"cannot install the seccomp filter: {os.strerror(err)}", OWN_FAILURE)
        return SpawnError(f"cannot start {self.argv0} ({stage} failed)", OWN_FAILURE)


def inherited_network_sockets(log) -> list[int]:
    """Sealed: the fds the program would inherit that reach a network (an
    IP listener or connection the caller left open): closed in the child,
    each with a line in the log."""
    import socket  # sealed only: the rest of the start-up does without it

    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not os.get_inheritable(fd):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                family, kind = sock.family, sock.type
        except OSError:
            continue  # not a socket (or gone)
        if family not in (socket.AF_UNIX, socket.AF_NETLINK):
            found.append(fd)
            log(0, f"sealed: fd {fd}, an {family.name} {kind.name} socket inherited from the caller, is "
                   "closed for the program: it would reach the real network")
    return found


def exec_error(argv0: str, err: int) -> SpawnError:
    """The one-line message a shell would give, with its exit status."""
    import shutil  # only on this error path: keep it off the start-up path

    path = argv0 if "/" in argv0 else shutil.which(argv0)
    if err == errno.ENOENT and path is None:
        return SpawnError(f"{argv0}: command not found", 127)
    if err == errno.ENOENT and not os.path.exists(path):
        return SpawnError(f"{argv0}: No such file or directory", 127)
    if err == errno.ENOENT:  # the file is there: its interpreter or loader is not
        return SpawnError(f"{argv0}: cannot execute: bad interpreter or missing loader "
                          "(No such file or directory)", 126)
    if err == errno.EACCES and os.path.isdir(path):
        return SpawnError(f"{argv0}: cannot execute: Is a directory", 126)
    return SpawnError(f"{argv0}: cannot execute: {os.strerror(err) if err else 'unknown error'}", 126)
