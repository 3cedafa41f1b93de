"""The program's memory as the handlers read and write it: buffers,
addresses and their lengths, msghdr/mmsghdr arrays, iovecs, control
messages (x86_64 layouts). A bad pointer is what the kernel would make of
it (EFAULT), never an exception."""
from __future__ import annotations

import errno
import struct

from ..program import MemoryUnavailable
from .context import Call

# struct msghdr and struct mmsghdr on x86_64, and struct cmsghdr.
MSGHDR = struct.Struct("=QI4xQQQQi4x")
MSG_NAME, MSG_NAMELEN, MSG_IOV, MSG_IOVLEN, MSG_CONTROL, MSG_CONTROLLEN, MSG_FLAGS = range(7)
MMSGHDR_SIZE = 64          # a msghdr, then unsigned msg_len, padded
CMSGHDR = struct.Struct("=Qii")


def read_buffer(call: Call, addr: int, size: int) -> bytes | None:
    """Bytes of a buffer the program passed; None for a bad pointer (the
    kernel will say EFAULT). Memory that cannot be reached at all raises
    MemoryUnavailable: then the call cannot be judged, and must fail."""
    try:
        return call.thread.read(addr, size)
    except MemoryUnavailable:
        raise
    except OSError:
        return None


def read_sockaddr(call: Call, addr: int, length: int) -> bytes | None:
    if addr == 0 or length < 2:
        return None
    return read_buffer(call, addr, min(length, 128))


def read_room(call: Call, len_ptr: int) -> int | None:
    """The size of the program's address buffer, read before the kernel
    overwrites it; None for a bad pointer (the kernel will say EFAULT)."""
    data = read_buffer(call, len_ptr, 4)
    return struct.unpack("=i", data)[0] if data is not None else None


def read_headers(call: Call, vec: int, count: int, stride: int) -> list[bytes]:
    """The program's msghdr/mmsghdr array, in one read; if part of it is a
    bad pointer, the entries before it (where the kernel stops too)."""
    block = read_buffer(call, vec, count * stride)
    if block is not None:
        return [block[i * stride:(i + 1) * stride] for i in range(count)]
    headers = []
    for i in range(count):
        header = read_buffer(call, vec + i * stride, stride)
        if header is None:
            break
        headers.append(header)
    return headers


def read_iovecs(call: Call, iov: int, count: int) -> list[tuple[int, int]] | int:
    """A msghdr's (base, length) pairs, or -errno (EMSGSIZE past UIO_MAXIOV, EFAULT)."""
    if count > 1024:
        return -errno.EMSGSIZE
    if not count:
        return []
    vec = read_buffer(call, iov, 16 * count)
    if vec is None:
        return -errno.EFAULT
    return [struct.unpack_from("=QQ", vec, 16 * i) for i in range(count)]


def cmsgs(control: bytes):
    """(level, type, data) of each control message, as the kernel lays them
    out (CMSG_NXTHDR); stops at the first malformed header."""
    offset = 0
    while offset + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, offset)
        if length < CMSGHDR.size or offset + length > len(control):
            return
        yield level, kind, control[offset + CMSGHDR.size:offset + length]
        offset += (length + 7) & ~7


def cmsg(level: int, kind: int, data: bytes) -> bytes:
    """One control message, padded to the next one's place."""
    out = CMSGHDR.pack(CMSGHDR.size + len(data), level, kind) + data
    return out + bytes(-len(out) % 8)


def write_sockaddr(call: Call, addr: int, len_ptr: int, packed: bytes, room: int | None = None) -> int:
    """Store an address for the program the way the kernel does: truncate to the
    caller's buffer (`room`: its size, if read before the kernel changed it),
    report the full length (a room of 0 takes no address: it may be NULL).
    Returns 0 or -errno."""
    if len_ptr == 0:
        return -errno.EFAULT
    try:
        if room is None:
            room = call.thread.read_int(len_ptr)
        if room < 0:
            return -errno.EINVAL
        full = struct.pack("=i", len(packed))
        if room == 0:
            call.thread.write(len_ptr, full)
        elif addr == 0:
            return -errno.EFAULT
        else:
            call.thread.write(addr, packed[:room], (len_ptr, full))
    except OSError:
        return -errno.EFAULT
    return 0
