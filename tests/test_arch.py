"""redirect/arch.py's tables against libseccomp's own (as strace checks its
tables against the kernel's): every syscall number, for every architecture
that has a table, and the audit arch values the notify backend compares."""
from __future__ import annotations

import ctypes

import pytest

from redirect import arch

_lib = ctypes.CDLL("libseccomp.so.2")
_lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
_lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
_lib.seccomp_arch_resolve_name.argtypes = (ctypes.c_char_p,)
_lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
_COMPAT = {"x86_64": "x86"}  # libseccomp's name of each table's compat ABI


@pytest.mark.parametrize("machine", sorted(arch.TABLES))
def test_syscall_numbers_are_libseccomps(machine):
    table = arch.TABLES[machine]
    token = _lib.seccomp_arch_resolve_name(machine.encode())
    assert token == table["audit_arch"], f"{machine}: audit arch {table['audit_arch']:#x}, libseccomp says {token:#x}"
    assert _lib.seccomp_arch_resolve_name(_COMPAT[machine].encode()) == table["compat_arch"]
    wrong = {name: (nr, _lib.seccomp_syscall_resolve_name_arch(token, name.encode()))
             for name, nr in table["nr"].items()
             if _lib.seccomp_syscall_resolve_name_arch(token, name.encode()) != nr}
    assert not wrong, f"{machine}: (ours, libseccomp's): {wrong}"


def test_the_table_in_use_is_this_machines():
    assert arch.NR is arch.TABLES[arch.MACHINE]["nr"]
    assert arch.NAME[arch.NR["bind"]] == "bind"


def test_int_arguments_are_read_as_the_kernel_reads_them():
    """The kernel reads an int argument's low 32 bits only; the program may
    fill the upper half with anything."""
    fd, addr, length = (0xDEAD_BEEF_0000_0003, 0x7FFF_0000_1000, 0xFFFF_FFFF_0000_0010)
    assert arch.c_args("bind", (fd, addr, length)) == (3, addr, 16)
    assert arch.c_args("listen", (5, 0xFFFF_FFFF)) == (5, -1)                   # int: signed
    assert arch.c_args("recvmsg", (4, addr, 0x1_FFFF_FFFF)) == (4, addr, 0xFFFF_FFFF)  # unsigned flags
    assert arch.c_args("close", (0x1_0000_0007,)) == (0x1_0000_0007,)           # not a handled call: as is
