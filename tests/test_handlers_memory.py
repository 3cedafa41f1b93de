"""redirect/handlers/memory.py on its own: the program's buffers as the
handlers read and write them, against real memory (this process's, through
the same process_vm_readv/writev the notify backend uses) laid out at a page
boundary the way a hostile or buggy program can lay it: a buffer that runs
into an unmapped page is a bad pointer (EFAULT), as the kernel's own copy
would say, never a shorter buffer judged as if it were whole."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

import pytest

from redirect.handlers.context import Call
from redirect.handlers.memory import (MSGHDR, cmsg, cmsgs, read_buffer, read_headers, read_iovecs, read_room,
                                      read_sockaddr, write_sockaddr)

from helpers import OwnThread

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def edge():
    """(call, base, end): a writable page at base whose next page (at end) is not mapped."""
    area = mmap.mmap(-1, 2 * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    assert _libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) == 0, os.strerror(ctypes.get_errno())
    call = Call(ctx=None, thread=OwnThread(), name="test", args=())
    yield call, base, base + PAGE
    ctypes.c_char.from_buffer(area)  # (the exported pointer above keeps area alive until here)
    _libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
    del area


def put(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def test_a_buffer_that_runs_into_an_unmapped_page_is_a_bad_pointer(edge):
    call, _, end = edge
    put(end - 8, b"12345678")
    assert read_buffer(call, end - 8, 8) == b"12345678"
    assert read_buffer(call, end - 4, 8) is None      # not the 4 bytes before the edge
    assert read_buffer(call, end, 4) is None
    assert read_room(call, end - 2) is None
    assert call.thread.read_int(end - 4) == int.from_bytes(b"5678", "little")
    with pytest.raises(OSError):
        call.thread.read_int(end - 2)


def test_a_sockaddr_cut_by_the_edge_is_a_bad_pointer(edge):
    call, _, end = edge
    sin = struct.pack("=H", 2) + struct.pack("!H4s", 8080, bytes([127, 0, 0, 1])) + bytes(8)
    put(end - 16, sin)
    assert read_sockaddr(call, end - 16, 16) == sin
    put(end - 8, sin[:8])
    assert read_sockaddr(call, end - 8, 16) is None   # the kernel's copy would fault: EFAULT, not EINVAL


def test_headers_stop_where_the_kernel_stops(edge):
    call, _, end = edge
    size = MSGHDR.size
    first = end - 2 * size - size // 2                # two whole headers, then half of a third
    headers = [MSGHDR.pack(0, 0, 0x1000 * i, 1, 0, 0, 0) for i in range(3)]
    put(first, b"".join(headers)[:end - first])
    got = read_headers(call, first, 3, size)
    assert got == headers[:2]                          # whole ones only: the third is a bad pointer
    assert all(len(h) == size for h in got)


def test_iovecs_and_their_limits(edge):
    call, base, end = edge
    put(base, struct.pack("=QQQQ", 0x1000, 10, 0x2000, 20))
    assert read_iovecs(call, base, 2) == [(0x1000, 10), (0x2000, 20)]
    assert read_iovecs(call, base, 0) == []
    assert read_iovecs(call, base, 1025) == -errno.EMSGSIZE   # UIO_MAXIOV
    assert read_iovecs(call, end - 16, 2) == -errno.EFAULT


def test_an_address_is_written_back_as_the_kernel_does(edge):
    call, base, end = edge
    packed = bytes(range(16))
    put(base + 64, struct.pack("=i", 8))
    assert write_sockaddr(call, base, base + 64, packed) == 0
    assert ctypes.string_at(base, 16) == packed[:8] + bytes(8)      # cut to the room the program gave
    assert struct.unpack("=i", ctypes.string_at(base + 64, 4))[0] == 16  # the whole length reported
    put(base + 64, struct.pack("=i", -1))
    assert write_sockaddr(call, base, base + 64, packed) == -errno.EINVAL
    assert write_sockaddr(call, 0, base + 64, packed, room=8) == -errno.EFAULT
    assert write_sockaddr(call, end - 4, base + 64, packed, room=16) == -errno.EFAULT
    # No room, no address (NULL is fine): only the whole length comes back.
    put(base + 64, struct.pack("=i", 0))
    assert write_sockaddr(call, 0, base + 64, packed) == 0
    assert struct.unpack("=i", ctypes.string_at(base + 64, 4))[0] == 16


def test_control_messages_round_trip_and_stop_at_a_malformed_one():
    one, two = cmsg(1, 1, struct.pack("=ii", 5, 6)), cmsg(41, 50, b"x" * 20)
    assert list(cmsgs(one + two)) == [(1, 1, struct.pack("=ii", 5, 6)), (41, 50, b"x" * 20)]
    assert len(one) % 8 == 0 and len(two) % 8 == 0
    broken = struct.pack("=Qii", 1000, 1, 1) + b"y" * 8            # claims more than there is
    assert list(cmsgs(one + broken)) == [(1, 1, struct.pack("=ii", 5, 6))]
