"""Syscall numbers and register names per architecture (x86_64 for now)."""
from __future__ import annotations

import os

if os.uname().machine != "x86_64":  # pragma: no cover - we only run on x86_64 for now
    raise ImportError(f"redirect supports x86_64 only, not {os.uname().machine}")

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl)
NR = {
    "close": 3,
    "poll": 7,
    "mmap": 9,
    "nanosleep": 35,
    "dup2": 33,
    "socket": 41,
    "socketpair": 53,
    "connect": 42,
    "accept": 43,
    "sendto": 44,
    "recvfrom": 45,
    "sendmsg": 46,
    "recvmsg": 47,
    "bind": 49,
    "listen": 50,
    "getsockname": 51,
    "getpeername": 52,
    "setsockopt": 54,
    "getsockopt": 55,
    "fcntl": 72,
    "epoll_ctl": 233,
    "accept4": 288,
    "dup3": 292,
    "recvmmsg": 299,
    "sendmmsg": 307,
    "clone": 56,
    "ptrace": 101,
    "process_vm_writev": 311,
    "seccomp": 317,
    "io_uring_setup": 425,
    "clone3": 435,
    "pidfd_getfd": 438,
    "close_range": 436,
}
NAME = {nr: name for name, nr in NR.items()}

# Registers of the syscall ABI: number, arguments, result, program counter.
NR_REG = "orig_rax"
RESULT_REG = "rax"
ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
PC_REG = "rip"
SYSCALL_INSN_LEN = 2  # `syscall` is 0f 05: step back this far to run it again


def to_signed(value: int) -> int:
    """A register value as the signed long the kernel returned."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value & 0xFFFFFFFFFFFFFFFF
