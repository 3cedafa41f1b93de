"""Syscall numbers and registers, one table per architecture: another
architecture is another table here (and its struct layouts), not a port.
tests/test_arch.py checks every number against libseccomp's own tables."""
from __future__ import annotations

import os

# x86_64: arch/x86/entry/syscalls/syscall_64.tbl; the audit arch of its
# seccomp data; the compat ABI (int 0x80) that rides along, as libseccomp names it.
X86_64 = dict(
    audit_arch=0xC000003E,
    compat_arch=0x40000003,   # SCMP_ARCH_X86 (AUDIT_ARCH_I386)
    regs=dict(nr="orig_rax", result="rax", args=("rdi", "rsi", "rdx", "r10", "r8", "r9"), pc="rip"),
    syscall_insn_len=2,       # `syscall` is 0f 05: step back this far to run it again
    nr={
        "close": 3, "poll": 7, "mmap": 9, "dup2": 33, "nanosleep": 35, "socket": 41, "connect": 42,
        "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "bind": 49, "listen": 50,
        "getsockname": 51, "getpeername": 52, "socketpair": 53, "setsockopt": 54, "getsockopt": 55,
        "clone": 56, "fcntl": 72, "ptrace": 101, "setgroups": 116, "setresuid": 117, "setresgid": 119,
        "epoll_ctl": 233, "tgkill": 234, "accept4": 288, "dup3": 292, "recvmmsg": 299, "sendmmsg": 307,
        "process_vm_writev": 311, "seccomp": 317, "io_uring_setup": 425, "clone3": 435, "close_range": 436,
        "openat2": 437, "pidfd_getfd": 438, "landlock_create_ruleset": 444, "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
)
TABLES = {"x86_64": X86_64}

MACHINE = os.uname().machine
if MACHINE not in TABLES:  # pragma: no cover - only x86_64 has its table yet
    raise ImportError(f"redirect supports {', '.join(TABLES)} only, not {MACHINE}")
_THIS = TABLES[MACHINE]
NR: dict[str, int] = _THIS["nr"]
AUDIT_ARCH: int = _THIS["audit_arch"]
COMPAT_ARCH: int = _THIS["compat_arch"]
NAME = {nr: name for name, nr in NR.items()}

# The arguments the kernel takes as 32-bit (int; unsigned int where the
# second table says): it reads only the low half of the register, and so
# must we (the upper half is the program's to fill with anything). Pointers
# and sizes are 64-bit.
INT_ARGS = {
    "socket": (0, 1, 2), "bind": (0, 2), "connect": (0, 2), "listen": (0, 1), "accept": (0,),
    "accept4": (0, 3), "getsockname": (0,), "getpeername": (0,), "setsockopt": (0, 1, 2, 4),
    "getsockopt": (0, 1, 2), "sendto": (0, 3, 5), "sendmsg": (0, 2), "sendmmsg": (0, 2, 3),
    "recvfrom": (0, 3), "recvmsg": (0, 2), "recvmmsg": (0, 2, 3), "seccomp": (0, 1), "pidfd_getfd": (0, 1, 2),
    "process_vm_writev": (0,), "ptrace": (1,),
}
UNSIGNED_ARGS = {"sendmsg": (2,), "sendmmsg": (2, 3), "recvmsg": (2,), "recvmmsg": (2, 3), "seccomp": (0, 1),
                 "pidfd_getfd": (2,)}


def c_args(name: str, args: tuple[int, ...]) -> tuple[int, ...]:
    """The arguments as the kernel reads them: 32-bit ones cut to their low half."""
    ints = INT_ARGS.get(name)
    if not ints:
        return args
    out = list(args)
    unsigned = UNSIGNED_ARGS.get(name, ())
    for i in ints:
        low = out[i] & 0xFFFFFFFF
        out[i] = low if i in unsigned else (low ^ 0x80000000) - 0x80000000
    return tuple(out)


# Registers of the syscall ABI: number, arguments, result, program counter.
NR_REG = _THIS["regs"]["nr"]
RESULT_REG = _THIS["regs"]["result"]
ARG_REGS = _THIS["regs"]["args"]
PC_REG = _THIS["regs"]["pc"]
SYSCALL_INSN_LEN = _THIS["syscall_insn_len"]


def to_signed(value: int) -> int:
    """A register value as the signed long the kernel returned."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF
