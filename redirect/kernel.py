"""The kernel calls python-ptrace lacks, and libseccomp's filter builder, in one place.

Everything here is a thin binding: constants, ctypes calls, no policy.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import sys
import struct
import types

from . import arch


@contextlib.contextmanager
def _fixed_sonames():
    """python-ptrace uses ctypes.util only for find_library, at
    import. The real module runs ldconfig/gcc in a subprocess (~40 ms a call)
    and imports subprocess, shutil and tempfile (~20 ms); on Linux the sonames
    are fixed. So they get a stand-in while they import, then it is gone."""
    sonames = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    stand_in = types.ModuleType("ctypes.util")
    stand_in.find_library = sonames.get
    real = sys.modules.get("ctypes.util")
    sys.modules["ctypes.util"] = ctypes.util = stand_in
    try:
        yield
    finally:
        if real is None:
            del sys.modules["ctypes.util"]
            del ctypes.util
        else:
            sys.modules["ctypes.util"] = ctypes.util = real


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)

# ptrace requests and options python-ptrace does not define.
PTRACE_CONT = 7
PTRACE_SYSCALL = 24
PTRACE_GETEVENTMSG = 0x4201
PTRACE_SEIZE = 0x4206
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads and clones too

PR_SET_PDEATHSIG = 1


# ---- libseccomp: building a filter (its compiler; loading stays ours for notify) -------
# A binding of the few calls used (pyseccomp's import, with typing, cost ~3 ms of
# a start-up budget of 30).
class seccomp:  # noqa: N801 (a namespace, as the library's names)
    ALLOW, NOTIFY = 0x7FFF0000, 0x7FC00000
    NE, EQ, GT, MASKED_EQ = 1, 4, 6, 7
    ATTR_ACT_BADARCH, ATTR_CTL_OPTIMIZE = 2, 8
    ARCH_X86 = arch.COMPAT_ARCH

    @staticmethod
    def ERRNO(value: int) -> int:  # noqa: N802
        return 0x00050000 | (value & 0xFFFF)

    @staticmethod
    def TRACE(value: int) -> int:  # noqa: N802
        return 0x7FF00000 | (value & 0xFFFF)


_seccomp = None


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def _libseccomp():
    global _seccomp
    if _seccomp is None:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = (ctypes.c_uint32,)
        lib.seccomp_release.argtypes = (ctypes.c_void_p,)
        lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        lib.seccomp_arch_add.argtypes = lib.seccomp_arch_remove.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
        lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.c_void_p)
        lib.seccomp_merge.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
        lib.seccomp_load.argtypes = (ctypes.c_void_p,)
        lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
        _seccomp = lib
    return _seccomp


def _seccomp_check(res: int, what: str) -> None:
    if res < 0:
        raise OSError(-res, f"libseccomp {what}: {os.strerror(-res)}")


class SeccompFilter:
    """A filter being built by libseccomp: rules are (action, syscall name,
    (argument, op, a[, b])...)."""

    def __init__(self, default: int) -> None:
        self._lib = _libseccomp()
        self._ctx = self._lib.seccomp_init(default)
        if not self._ctx:
            raise OSError(errno.ENOMEM, "libseccomp: seccomp_init failed")

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.seccomp_release(self._ctx)

    def set_attr(self, attr: int, value: int) -> None:
        _seccomp_check(self._lib.seccomp_attr_set(self._ctx, attr, value), "attr_set")

    def add_arch(self, arch: int) -> None:
        _seccomp_check(self._lib.seccomp_arch_add(self._ctx, arch), "arch_add")

    def remove_native_arch(self) -> None:
        _seccomp_check(self._lib.seccomp_arch_remove(self._ctx, 0), "arch_remove")

    def add_rule(self, action: int, name: str, *args: tuple[int, ...]) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0 and nr > -100:  # __NR_SCMP_ERROR; pseudo-syscalls (socketcall's) are below -100
            raise OSError(errno.EINVAL, f"libseccomp does not know the syscall {name}")
        cmps = (_ArgCmp * max(len(args), 1))(*(_ArgCmp(*arg, *(0,) * (4 - len(arg))) for arg in args))
        _seccomp_check(self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(args), cmps), f"rule {name}")

    def merge(self, other: "SeccompFilter") -> None:
        _seccomp_check(self._lib.seccomp_merge(self._ctx, other._ctx), "merge")
        other._ctx = None  # merged into this one

    def load(self) -> None:
        _seccomp_check(self._lib.seccomp_load(self._ctx), "load")

    def export_bpf(self, fd: int) -> None:
        _seccomp_check(self._lib.seccomp_export_bpf(self._ctx, fd), "export_bpf")



def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """Raw ptrace(2); raises OSError (errno set) on failure."""
    return _check(_libc.ptrace(request, tid, addr, data), "ptrace")


def seize(tid: int, options: int) -> None:
    ptrace(PTRACE_SEIZE, tid, 0, options)


def resume(tid: int, request: int = PTRACE_CONT, signal: int = 0) -> None:
    ptrace(request, tid, 0, signal)


def geteventmsg(tid: int) -> int:
    # python-ptrace passes a 4-byte buffer for this 8-byte value.
    msg = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return msg.value


class _SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info, its seccomp variant (kernel >= 5.3)."""
    _fields_ = [("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_uint64), ("stack_pointer", ctypes.c_uint64),
                ("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6), ("ret_data", ctypes.c_uint32),
                ("pad2", ctypes.c_uint32)]


PTRACE_SYSCALL_INFO_SECCOMP = 3
_info = _SyscallInfo()  # reused: the supervisor is single-threaded


PTRACE_SYSCALL_INFO_ENTRY = 1


def syscall_info(tid: int) -> tuple[int, int, tuple[int, ...]]:
    """At any syscall stop: (op, syscall number, arguments)."""
    ptrace(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(_info), ctypes.addressof(_info))
    return _info.op, _info.nr, tuple(_info.args)


def seccomp_info(tid: int) -> tuple[int, tuple[int, ...], int]:
    """At a seccomp stop: (syscall number, arguments, the filter's TRACE data),
    in one ptrace call instead of GETREGS plus GETEVENTMSG."""
    ptrace(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(_info), ctypes.addressof(_info))
    if _info.op != PTRACE_SYSCALL_INFO_SECCOMP:
        raise OSError(errno.EINVAL, f"thread {tid} is not at a seccomp stop (op {_info.op})")
    return _info.nr, tuple(_info.args), _info.ret_data


_ptrace_binding = None


def _binding():
    """python-ptrace's register binding, imported at the first handler that
    needs registers (~14 ms: a program that never makes one does not pay)."""
    global _ptrace_binding
    if _ptrace_binding is None:
        with _fixed_sonames():
            from ptrace import PtraceError
            from ptrace.binding import func
        _ptrace_binding = func, PtraceError
    return _ptrace_binding


def getregs(tid: int):
    func, error = _binding()
    try:
        return func.ptrace_getregs(tid)
    except error as err:  # one exception type for callers: OSError with errno
        raise OSError(err.errno, str(err)) from None


def copy_regs(regs):
    return type(regs).from_buffer_copy(regs)


def setregs(tid: int, regs) -> None:
    func, error = _binding()
    try:
        func.ptrace_setregs(tid, regs)
    except error as err:
        raise OSError(err.errno, str(err)) from None


def tgkill(tgid: int, tid: int, sig: int) -> None:
    _check(_libc.syscall(arch.NR["tgkill"], tgid, tid, sig), "tgkill")


PIDFD_THREAD = os.O_EXCL  # a pidfd for one thread, not its group (kernel >= 6.9)


def pidfd_open_thread(tid: int) -> int:
    """A pidfd whose pidfd_getfd sees this thread's own fd table; on older
    kernels, the thread group's."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        return os.pidfd_open(tgid_of(tid))


def tgid_of(tid: int) -> int:
    """The thread group (process) a thread belongs to; OSError if it is gone."""
    with open(f"/proc/{tid}/status") as status:
        for line in status:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise OSError(errno.ESRCH, f"no thread {tid}")


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """Duplicate the tracee's fd into this process (kernel >= 5.6)."""
    return _check(_libc.syscall(arch.NR["pidfd_getfd"], pidfd, fd, 0), "pidfd_getfd")


def has_pidfd_getfd() -> bool:
    """Whether the kernel has pidfd_getfd (5.6): tried on our own pidfd."""
    pidfd = os.pidfd_open(os.getpid())
    try:
        os.close(pidfd_getfd(pidfd, pidfd))
        return True
    except OSError as err:
        return err.errno != errno.ENOSYS
    finally:
        os.close(pidfd)


PIDFD_GET_INFO = 0xC040FF0B  # _IOWR(0xFF, 11, struct pidfd_info), its first version (64 bytes)


def has_pidfd_info() -> bool:
    """Whether the kernel tells a thread's credentials by its pidfd
    (PIDFD_GET_INFO, 6.13): tried on our own pidfd."""
    pidfd = os.pidfd_open(os.getpid())
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, bytearray(struct.pack("=Q56x", 2)), True)  # (mask: PIDFD_INFO_CREDS)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def set_parent_death_signal(sig: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl")


# ---- calls the supervisor makes on the program's behalf, with bytes it copied --------
# (socket's own methods want parsed addresses; the bytes judged are what the kernel gets)

_libc.bind.argtypes = _libc.connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_libc.sendmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.sendmsg.restype = ctypes.c_ssize_t


def _result(value: int) -> int:
    return -ctypes.get_errno() if value < 0 else value


def bind(fd: int, address: bytes) -> int:
    """bind(2) with these exact bytes: 0 or -errno."""
    return _result(_libc.bind(fd, address, len(address)))


def connect(fd: int, address: bytes) -> int:
    return _result(_libc.connect(fd, address, len(address)))


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


def _address(data: bytes | None) -> int | None:
    """The address of an immutable bytes object's contents (no copy): the
    object must stay referenced while the call runs."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value if data else None


_send_iov, _send_msg = _IOVec(), _MsgHdr()


def sendmsg(fd: int, name: bytes | None, data: bytes, control: bytes, flags: int) -> int:
    """sendmsg(2) of one buffer: bytes sent or -errno."""
    _send_iov.base, _send_iov.len = _address(data), len(data)
    msg = _send_msg
    msg.name, msg.namelen = _address(name), len(name) if name else 0
    msg.iov, msg.iovlen = ctypes.addressof(_send_iov), 1
    msg.control, msg.controllen, msg.flags = _address(control), len(control) if control else 0, 0
    return _result(_libc.sendmsg(fd, ctypes.byref(msg), flags))


# Credentials of this thread alone (raw syscalls: libc would change every thread).


def set_thread_identity(uid: int, gid: int, groups: list[int]) -> None:
    """Become (uid, gid, groups), real and effective, in this thread, keeping
    the saved ids (so a root supervisor can come back: credentials a receiver
    reads, SO_PASSCRED's, name the real ids). Groups first: later we may lack
    the right."""
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _check(_libc.syscall(arch.NR["setgroups"], len(groups), array), "setgroups")
    _check(_libc.syscall(arch.NR["setresgid"], gid, gid, -1), "setresgid")
    _check(_libc.syscall(arch.NR["setresuid"], uid, uid, -1), "setresuid")


def restore_thread_identity(uid: int, gid: int, groups: list[int]) -> None:
    _check(_libc.syscall(arch.NR["setresuid"], uid, uid, -1), "setresuid")
    _check(_libc.syscall(arch.NR["setresgid"], gid, gid, -1), "setresgid")
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _check(_libc.syscall(arch.NR["setgroups"], len(groups), array), "setgroups")


PR_SET_DUMPABLE = 4


def set_dumpable(on: bool) -> None:
    _check(_libc.prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0), "prctl")


# Landlock (kernel >= 5.13): a domain's processes cannot ptrace, open the
# memory of, or take fds from processes outside it.
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_ACCESS_FS_EXECUTE = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38


def landlock_abi() -> int:
    """The Landlock ABI version, 0 where the kernel has none (or it is off)."""
    version = _libc.syscall(arch.NR["landlock_create_ruleset"], None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(version, 0)


def landlock_enter_domain() -> None:
    """Put this process (and what it starts) in a Landlock domain that allows
    every file access as before (one right handled, allowed beneath /): what
    it gains is the domain's ptrace scope."""
    attr = ctypes.c_uint64(_LANDLOCK_ACCESS_FS_EXECUTE)
    ruleset = _check(_libc.syscall(arch.NR["landlock_create_ruleset"], ctypes.byref(attr), 8, 0), "landlock")
    try:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            beneath = struct.pack("=Qi", _LANDLOCK_ACCESS_FS_EXECUTE, root)
            _check(_libc.syscall(arch.NR["landlock_add_rule"], ruleset, _LANDLOCK_RULE_PATH_BENEATH, beneath, 0),
                   "landlock_add_rule")
        finally:
            os.close(root)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
        _check(_libc.syscall(arch.NR["landlock_restrict_self"], ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


_libc.recvmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.recvmsg.restype = ctypes.c_ssize_t


_recv = {"data": ctypes.create_string_buffer(1 << 16), "control": ctypes.create_string_buffer(1024)}
_recv_name, _recv_iov, _recv_msg = ctypes.create_string_buffer(128), _IOVec(), _MsgHdr()


def _room(key: str, size: int):
    """A buffer of ours of at least size bytes, kept for the next call (the
    supervisor has one thread)."""
    if len(_recv[key]) < size:
        _recv[key] = ctypes.create_string_buffer(size)
    return _recv[key]


def recvmsg(fd: int, size: int, controllen: int, flags: int, want_name: bool) -> tuple[int, bytes, bytes, bytes, int]:
    """recvmsg(2) into one buffer: (result or -errno, data, sender's address,
    control data, msg_flags). With MSG_TRUNC the result may exceed size."""
    data_buf = _room("data", max(size, 1))
    control_buf = _room("control", controllen) if controllen else None
    _recv_iov.base, _recv_iov.len = ctypes.addressof(data_buf), size
    msg = _recv_msg
    msg.name, msg.namelen = (ctypes.addressof(_recv_name), 128) if want_name else (None, 0)
    msg.iov, msg.iovlen = ctypes.addressof(_recv_iov), 1
    msg.control, msg.controllen = (ctypes.addressof(control_buf), controllen) if control_buf else (None, 0)
    msg.flags = 0
    n = _libc.recvmsg(fd, ctypes.byref(msg), flags)
    if n < 0:
        return -ctypes.get_errno(), b"", b"", b"", 0
    return (n, ctypes.string_at(data_buf, min(n, size)), _recv_name.raw[:msg.namelen] if want_name else b"",
            ctypes.string_at(control_buf, msg.controllen) if control_buf else b"", msg.flags)


# ---- seccomp user notification (the notify backend) ------------------------------------
SECCOMP_SET_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL = 1, 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 32
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD, SECCOMP_ADDFD_FLAG_SEND = 1, 2
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
# ioctl numbers: _IOWR('!', 0, struct seccomp_notif) and so on (x86_64 sizes).
NOTIF_RECV, NOTIF_SEND, NOTIF_ID_VALID = 0xC0502100, 0xC0182101, 0x40082102
NOTIF_ADDFD, NOTIF_SET_FLAGS = 0x40182103, 0x40082104
_NOTIF = struct.Struct("=QIIiIQ6Q")         # id, pid, flags, nr, arch, ip, args
_NOTIF_RESP = struct.Struct("=QqiI")        # id, val, error, flags
_NOTIF_ADDFD = struct.Struct("=QIIII")      # id, flags, srcfd, newfd, newfd_flags
_notif_buf = bytearray(_NOTIF.size)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.ioctl.restype = ctypes.c_int


def has_user_notification() -> bool:
    """Whether this kernel has SECCOMP_RET_USER_NOTIF (5.0)."""
    action = ctypes.c_uint32(SECCOMP_RET_USER_NOTIF)
    return _libc.syscall(arch.NR["seccomp"], SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0


def load_filter_with_listener(program: bytes) -> tuple[int, bool]:
    """Install a BPF filter (the bytes of its instructions) on this thread,
    with no-new-privs: (the listener fd for its notifications, whether a
    received call waits killable, WAIT_KILLABLE_RECV (Linux 5.19): then only
    a fatal signal ends it, and an answer once given is never lost)."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=H6xQ", len(program) // 8, ctypes.addressof(code))
    for flags in (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                  SECCOMP_FILTER_FLAG_NEW_LISTENER):
        fd = _libc.syscall(arch.NR["seccomp"], SECCOMP_SET_MODE_FILTER, flags, fprog)
        if fd >= 0 or ctypes.get_errno() != errno.EINVAL:
            break
    return _check(fd, "seccomp"), bool(flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)


AUDIT_ARCH = arch.AUDIT_ARCH


_ZEROS = bytes(_NOTIF.size)


def notif_receive(listener: int) -> tuple[int, int, int, int, tuple[int, ...]]:
    """One notification: (id, tid, syscall number, audit arch, arguments).
    OSError ENOENT when the call went away between the wake-up and now.
    (fcntl.ioctl, not ctypes: this and the answer are the two calls of every
    notification, and its C call is the cheaper.)"""
    _notif_buf[:] = _ZEROS  # the kernel wants it zeroed
    fcntl.ioctl(listener, NOTIF_RECV, _notif_buf, True)
    ident, tid, _, nr, audit_arch, _, *args = _NOTIF.unpack_from(_notif_buf)
    return ident, tid, nr, audit_arch, tuple(args)


_resp_buf = bytearray(_NOTIF_RESP.size)


def _retried(listener: int, request: int, buf: bytearray, mutate: bool) -> int:
    """fcntl.ioctl, made again when a signal to the supervisor (one it
    forwards) interrupted it: fcntl.ioctl does not retry itself. (The
    kernel left nothing half done: an ADDFD it had not handled is taken
    back, an answer not given.)"""
    while True:
        try:
            return fcntl.ioctl(listener, request, buf, mutate)
        except InterruptedError:
            continue


def notif_send(listener: int, ident: int, val: int, error: int, flags: int = 0) -> None:
    """Answer a call: its result (val), or -errno (error), or CONTINUE."""
    _NOTIF_RESP.pack_into(_resp_buf, 0, ident, val, error, flags)
    _retried(listener, NOTIF_SEND, _resp_buf, False)


_ident = bytearray(8)


def notif_id_valid(listener: int, ident: int) -> bool:
    """Whether the call is still waiting for its answer (not interrupted, the
    thread not gone)."""
    struct.pack_into("=Q", _ident, 0, ident)
    try:
        _retried(listener, NOTIF_ID_VALID, _ident, True)
    except OSError:
        return False
    return True


def notif_addfd(listener: int, ident: int, srcfd: int, newfd: int = 0, flags: int = 0,
                cloexec: bool = False) -> int:
    """Put a duplicate of our srcfd into the calling thread (SETFD: at newfd;
    SEND: as the call's result, one step). The fd number there."""
    addfd = bytearray(_NOTIF_ADDFD.pack(ident, flags, srcfd, newfd, os.O_CLOEXEC if cloexec else 0))
    return _retried(listener, NOTIF_ADDFD, addfd, True)  # (a mutable buffer: the ioctl's result comes back)


def notif_features(listener: int) -> dict[str, bool]:
    """What this kernel's listener can do, tried on it (never guessed from the
    version): ADDFD (5.9), ADDFD SEND (5.14). A bad srcfd gets EBADF where
    the request is known, EINVAL where it is not."""
    def known(flags: int) -> bool:
        addfd = ctypes.create_string_buffer(_NOTIF_ADDFD.pack(0, flags, 0xFFFFFFFF, 0, 0), _NOTIF_ADDFD.size)
        return _libc.ioctl(listener, NOTIF_ADDFD, addfd) == -1 and ctypes.get_errno() == errno.EBADF
    return {"addfd": known(0), "addfd_send": known(SECCOMP_ADDFD_FLAG_SEND)}


def notif_sync_wake_up(listener: int) -> bool:
    """SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6): the program and the supervisor
    hand the CPU to each other instead of waking across CPUs. Passed by value."""
    return _libc.ioctl(listener, NOTIF_SET_FLAGS, ctypes.c_void_p(SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)) == 0


_libc.process_vm_readv.argtypes = _libc.process_vm_writev.argtypes = (
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
_libc.process_vm_readv.restype = _libc.process_vm_writev.restype = ctypes.c_ssize_t


class _Staged:
    """Fixed buffers of ours for process_vm_readv/writev: the iovecs are
    packed with struct and small data copied by slice, not through ctypes
    objects (that costs ~3 us a call, on every trapped call that reads or
    writes the program). Larger data uses a buffer of its own."""
    PIECES, SIZE = 4, 4096

    def __init__(self) -> None:
        self.local, self.remote, self.data = (bytearray(16 * self.PIECES), bytearray(16 * self.PIECES),
                                              bytearray(self.SIZE))
        self.local_at, self.remote_at, self.data_at = (ctypes.addressof(ctypes.c_char.from_buffer(b))
                                                       for b in (self.local, self.remote, self.data))


_staged = _Staged()
_IOV = struct.Struct("=QQ")


def read_memory(tid: int, addr: int, size: int) -> bytes:
    """Bytes of another process's memory, as its thread `tid` sees it now
    (process_vm_readv: the address space it has at this moment, an exec's
    new one included). Short at an unmapped page; OSError for none at all."""
    st = _staged
    big = size > st.SIZE
    buf = _room("data", size) if big else None
    _IOV.pack_into(st.local, 0, ctypes.addressof(buf) if big else st.data_at, size)
    _IOV.pack_into(st.remote, 0, addr, size)
    n = _libc.process_vm_readv(tid, st.local_at, 1, st.remote_at, 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"process_vm_readv: {os.strerror(err)}")
    return ctypes.string_at(buf, n) if big else bytes(st.data[:n])


def write_memory(tid: int, pieces: list[tuple[int, bytes]]) -> int:
    """Write (address, bytes) pieces into another process's memory in one
    call (writable pages only, as the kernel's own copy to a user buffer):
    the bytes written, in order, up to the first page that takes none.
    At most _Staged.PIECES pieces (an address and its length: 2)."""
    st = _staged
    at = 0
    for i, (addr, data) in enumerate(pieces):
        size = len(data)
        if at + size <= st.SIZE:
            st.data[at:at + size] = data
            local = st.data_at + at
            at += size
        else:
            local = _address(data)  # (referenced by `pieces` while the call runs)
        _IOV.pack_into(st.local, 16 * i, local, size)
        _IOV.pack_into(st.remote, 16 * i, addr, size)
    n = _libc.process_vm_writev(tid, st.local_at, len(pieces), st.remote_at, len(pieces), 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"process_vm_writev: {os.strerror(err)}")
    return n


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper() -> None:
    """Orphans of the program's tree become our children (we see them end)."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl")


_libc.epoll_ctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def epoll_ctl_add(epfd: int, fd: int, events: int, data: int) -> int:
    """epoll_ctl(EPOLL_CTL_ADD) with the program's own event data: 0 or -errno."""
    event = ctypes.create_string_buffer(struct.pack("=IQ", events, data), 12)
    return _result(_libc.epoll_ctl(epfd, 1, fd, event))


_libc.getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def getsockopt(fd: int, level: int, name: int, size: int) -> bytes:
    """getsockopt(2) with exactly this buffer size (0 included, which
    Python's socket.getsockopt takes for "an int"); OSError on refusal."""
    size = max(0, min(size, 1024))  # no IP-level option is longer (TCP_INFO: 232)
    buf = ctypes.create_string_buffer(max(size, 1))
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(fd, level, name, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:length.value]


# ---- the kernel's table of Unix sockets (sock_diag) ------------------------------------
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, _NLMSG_ERROR = 4, 20, 1, 2
_diag = None  # the sock_diag netlink socket (a socket.socket), opened at first use


_UDIAG_SHOW_VFS, _UNIX_DIAG_VFS = 0x2, 1


def _unix_diag(inode: int, show: int) -> bytes | None:
    """The kernel's record of the Unix socket with this inode (sock_diag, an
    exact lookup), its attributes after the header; None if there is none."""
    import socket as _socket
    global _diag
    if _diag is None:
        _diag = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
    # struct unix_diag_req: family, protocol, pad, states, ino, show, cookie (none: ~0, ~0)
    req = struct.pack("=BBHIIIII", 1, 0, 0, 0xFFFFFFFF, inode, show, 0xFFFFFFFF, 0xFFFFFFFF)
    _diag.send(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, inode, 0) + req)
    while True:
        reply = _diag.recv(8192)
        length, kind, _, seq = struct.unpack_from("=IHHI", reply)
        if seq == inode:  # the answer to this request (the socket is ours alone: nothing else comes)
            break
    if kind == _NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, 16)[0]
        if err == errno.ENOENT:
            return None
        raise OSError(err, f"sock_diag: {os.strerror(err)}")
    found = struct.unpack_from("=I", reply, 16 + 4)[0]  # struct unix_diag_msg: family, type, state, pad, ino
    if found != inode:
        raise OSError(errno.EIO, f"sock_diag answered for socket {found}, not {inode}")
    return reply[16 + 16:length]


def unix_socket_exists(inode: int) -> bool:
    """Whether a Unix socket with this inode still exists anywhere (some
    process holds it): no fd table read."""
    return _unix_diag(inode, 0) is not None


def unix_socket_file(inode: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file a bound Unix socket made, as the kernel
    knows it (UNIX_DIAG_VFS): a path may have been re-pointed since, the
    socket's own record cannot be."""
    attrs = _unix_diag(inode, _UDIAG_SHOW_VFS)
    while attrs and len(attrs) >= 4:
        size, kind = struct.unpack_from("=HH", attrs)
        if kind == _UNIX_DIAG_VFS and size >= 12:
            ino, dev = struct.unpack_from("=II", attrs, 4)
            return os.makedev(dev >> 20, dev & 0xFFFFF), ino  # the kernel's dev_t, as stat shows it
        attrs = attrs[(size + 3) & ~3:]
    return None


_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS = 0x02, 0x04


def open_no_symlinks(path: bytes) -> int:
    """An O_PATH fd of path, resolved following no symlink anywhere in it
    (openat2, 5.6): what a root supervisor sends to or connects to by a name
    a program may have re-pointed. OSError (ELOOP for a symlink)."""
    how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    return _check(_libc.syscall(arch.NR["openat2"], -100, path, how, len(how)), "openat2")


_libc.signalfd.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
SFD_NONBLOCK, SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


def signalfd(signals) -> int:
    """An fd that is readable while one of these (blocked) signals is pending."""
    mask = 0
    for sig in signals:
        mask |= 1 << (int(sig) - 1)
    sigset = ctypes.create_string_buffer(struct.pack("=Q", mask) + bytes(120), 128)
    return _check(_libc.signalfd(-1, sigset, SFD_NONBLOCK | SFD_CLOEXEC), "signalfd")
