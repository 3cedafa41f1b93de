"""Socket files on disk: clearing stale ones before a bind, removing ours after.

A path that is not a socket is never deleted; a socket somebody listens on is
never replaced; a file is only removed if it is still the one we created.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from .kernel import unix_socket_file


def clear_stale(path: bytes, socket_type: int) -> int:
    """Make way for a bind at `path`: 0 if the path is free (a dead socket file
    is removed), else the errno the bind should fail with. The file is looked
    at and removed through its directory's fd, and only while it is still the
    dead socket that was looked at (a program that may write the directory
    cannot point the removal elsewhere)."""
    folder, name = os.path.split(path)
    try:
        where = os.open(folder or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0  # let the bind itself report what is wrong (EACCES, ENOTDIR...)
    try:
        try:
            st = os.stat(name, dir_fd=where, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        except OSError:
            return 0
        if not stat.S_ISSOCK(st.st_mode):
            return errno.EADDRINUSE
        if is_alive(path, socket_type):
            return errno.EADDRINUSE
        try:
            again = os.stat(name, dir_fd=where, follow_symlinks=False)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                return errno.EADDRINUSE  # replaced meanwhile: not ours to judge
            os.unlink(name, dir_fd=where)
        except FileNotFoundError:
            pass
        except OSError as err:
            return err.errno
        return 0
    finally:
        os.close(where)


SO_ACCEPTCON = 0x10000  # the "listening" flag in /proc/net/unix


def bound_at(path: bytes) -> list[tuple[int, int]]:
    """(type, flags) of each socket /proc/net/unix shows bound at path
    (`@name` for an abstract one)."""
    found = []
    try:
        with open("/proc/net/unix", "rb") as table:
            next(table)
            for line in table:
                fields = line.rstrip(b"\n").split(None, 7)  # the path may hold spaces
                if len(fields) == 8 and fields[7] == path:
                    found.append((int(fields[4], 16), int(fields[3], 16)))
    except OSError:
        pass
    return found


def _listed(path: bytes, socket_type: int) -> bool:
    """Whether a socket of this type is bound at path (one bound but not
    listening yet counts: it is about to be used); then there is no need to
    disturb it with a probe."""
    return any(kind == socket_type for kind, _ in bound_at(path))


def is_alive(path: bytes, socket_type: int) -> bool:
    """Whether a socket is bound (datagram) or listening (stream) at path."""
    if _listed(path, socket_type):
        return True
    probe = socket.socket(socket.AF_UNIX, socket_type | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as err:
        if err.errno == errno.EPROTOTYPE:  # a socket of the other type: not ours to judge
            return True
        return err.errno != errno.ECONNREFUSED  # EAGAIN (full backlog), EACCES: assume alive
    finally:
        probe.close()
    return True


FileId = tuple[int, int, int, int]  # the file's (st_dev, st_ino), then its directory's


def file_id(path: bytes, sock) -> FileId | None:
    """Who the file at path is, and in which directory: what remove_if_ours
    checks before it removes anything. Only if it is the file the bind of
    `sock` made (the kernel's record of the socket says which): a program
    that swaps a directory of the path for a symlink between the bind and
    this look must not make us record, and later remove, another file."""
    folder, name = os.path.split(path)
    try:
        made = unix_socket_file(os.fstat(sock.fileno()).st_ino)
        where = os.open(folder or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.stat(name, dir_fd=where, follow_symlinks=False)
        here = os.fstat(where)
    except OSError:
        return None
    finally:
        os.close(where)
    if made != (st.st_dev, st.st_ino):
        return None
    return (st.st_dev, st.st_ino, here.st_dev, here.st_ino)


def remove_if_ours(path: bytes, ident: FileId | None) -> bool:
    """Unlink path if it is still the file we created (not a newer one), in
    the very directory we created it in: looked up and removed through that
    directory's fd, so a directory renamed and replaced by a symlink (by a
    program that may write there) leads nowhere else."""
    if ident is None:
        return False
    folder, name = os.path.split(path)
    try:
        where = os.open(folder or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        here = os.fstat(where)
        st = os.stat(name, dir_fd=where, follow_symlinks=False)
        if (st.st_dev, st.st_ino, here.st_dev, here.st_ino) != ident:
            return False
        os.unlink(name, dir_fd=where)
    except OSError:
        return False
    finally:
        os.close(where)
    return True


def chmod_ours(path: bytes, ident: FileId | None, mode: int) -> None:
    """chmod the file we created at path, through an O_PATH handle of it that
    follows no symlink and must still be that file (a root supervisor must
    never chmod what a program swapped in). OSError if it is not."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if ident is None or (st.st_dev, st.st_ino) != ident[:2]:
            raise OSError(errno.EPERM, f"{os.fsdecode(path)} is no longer the socket redirect made")
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


BLACKHOLE = "blackhole"


@contextmanager
def throwaway_folder() -> Iterator[str]:
    """A fresh 0700 folder of the supervisor's for a socket it binds for a
    moment (a blackhole); it goes, with the one socket in it, on leaving the
    block. Nothing of it is the program's, and the clean-up removes only that
    socket, through the folder's own fd."""
    import tempfile  # rare: keep it off the start-up path

    folder = tempfile.mkdtemp(prefix="redirect-")
    where = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield folder
    finally:
        try:
            os.unlink(BLACKHOLE, dir_fd=where)
        except FileNotFoundError:
            pass
        try:
            if os.path.samestat(os.lstat(folder), os.fstat(where)):
                os.rmdir(folder)
        except OSError:
            pass
        os.close(where)


def has_permissions(rule) -> bool:
    return rule.mode is not None or rule.owner is not None or rule.group is not None


def permission_problem(rule) -> str | None:
    """Why this supervisor could not give a socket file the rule's owner or
    group (checked before the bind, so a refused rule leaves nothing behind)."""
    if os.geteuid() == 0:
        return None
    if rule.owner is not None and rule.owner != os.geteuid():
        return f"only root can give a socket file to another owner ({_named(rule, 'owner')})"
    if rule.group is not None and rule.group != os.getegid() and rule.group not in os.getgroups():
        return f"this user is not in group {_named(rule, 'group')}, so it cannot give the socket file to it"
    return None


def _named(rule, item: str) -> str:
    """owner=/group= as the rule wrote it (a name or a number), for messages."""
    for part in rule.text.split(","):
        if part.startswith(item + "="):
            return part[len(item) + 1:]
    return str(getattr(rule, item))


def initial_mode(rule) -> int:
    """The mode a restricted socket file is created with, set on the socket
    itself before bind (fchmod: the kernel creates the file with the socket's
    mode minus the umask, so it can only come out stricter). With an owner or
    group still to set: the binder only, until they are set."""
    if rule.owner is not None or rule.group is not None or rule.mode is None:
        return 0o600
    return rule.mode & 0o777


def apply_permissions(path: bytes, sock, rule, binder_uid: int, umask: int) -> int:
    """Give the socket file the bind of `sock` made the rule's owner, group
    and mode (without mode=: what the program's umask gives). The file is
    opened without following symlinks and must be that very file (the
    kernel's record of the socket says which), so a file swapped in by
    someone who can write the directory is never touched. 0 or -errno; on
    failure the file is removed, so nobody connects to a half-made socket."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        return -(err.errno or errno.EPERM)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != binder_uid or \
                unix_socket_file(os.fstat(sock.fileno()).st_ino) != (st.st_dev, st.st_ino):
            return -errno.EPERM  # not the file the bind made: leave it alone
        made = file_id(path, sock)
        here = f"/proc/self/fd/{fd}"  # the opened inode itself, whatever the path holds now
        if rule.owner is not None or rule.group is not None:
            os.chown(here, -1 if rule.owner is None else rule.owner, -1 if rule.group is None else rule.group)
        os.chmod(here, rule.mode if rule.mode is not None else 0o777 & ~umask)
    except OSError as err:
        if made is not None and made[:2] == (st.st_dev, st.st_ino):
            remove_if_ours(path, made)
        return -(err.errno or errno.EPERM)
    finally:
        os.close(fd)
    return 0


class ReplyDirs:
    """Where datagram clients get their private reply addresses.

    A client that sends without binding must still get answers, so it is bound
    to a socket file of its own, never to an abstract name that anyone could
    write to. The files live in a directory made for this run (in
    $XDG_RUNTIME_DIR, else /tmp) and are removed with their socket; who may
    reach them follows who owns the server:
    - the program's own user: a 0700 directory, nobody else gets in;
    - another user in a group we share (or we are root): a directory of that
      group, 02710, sockets 0660 - that group and nobody else;
    - anyone else: a 0711 directory, sockets 0666 (logged: any local user who
      learns the name can send to it, as with UDP on loopback).
    """

    def __init__(self) -> None:
        self.top: str | None = None
        self.dirs: dict[tuple, str] = {}
        self.count = 0

    def new_path(self, uid: int, server: os.stat_result | None) -> tuple[bytes, str, int | None]:
        """A fresh path for a reply socket of a program running as `uid` that
        talks to a server whose socket file is `server` (None: abstract or
        unknown). Returns (path, access: "private"/"group"/"anyone", file mode)."""
        access, gid = "private", None
        if server is not None and server.st_uid != uid:
            if os.geteuid() == 0 or server.st_gid in os.getgroups() or server.st_gid == os.getegid():
                access, gid = "group", server.st_gid
            else:
                access = "anyone"
        folder = self._folder(uid, access, gid)
        self.count += 1
        mode = {"private": None, "group": 0o660, "anyone": 0o666}[access]
        return os.fsencode(os.path.join(folder, f"c{self.count}")), access, mode

    def _folder(self, uid: int, access: str, gid: int | None) -> str:
        key = (uid, access, gid)
        if key in self.dirs:
            return self.dirs[key]
        if self.top is None:
            import tempfile  # only for datagram clients: keep it off the start-up path

            base = os.environ.get("XDG_RUNTIME_DIR")
            if not base or not os.access(base, os.W_OK | os.X_OK):
                base = "/tmp"
            self.top = tempfile.mkdtemp(prefix="redirect-", dir=base)
            os.chmod(self.top, 0o711)  # no listing; each folder inside guards itself
        folder = os.path.join(self.top, f"{access}-{uid}" + (f"-{gid}" if gid is not None else ""))
        os.mkdir(folder, 0o700)
        if gid is not None:
            os.chown(folder, -1, gid)
            os.chmod(folder, 0o2710)  # new files get the group; members may enter, not list
        elif access == "anyone":
            os.chmod(folder, 0o711)
        if uid != os.geteuid():
            os.chown(folder, uid, -1)  # a program that dropped privileges binds here itself
        self.dirs[key] = folder
        return folder

    def remove(self) -> None:
        """At the end: remove the folders (files of sockets still held by a
        program that outlived us stay, and so do their folders)."""
        for folder in self.dirs.values():
            try:
                os.rmdir(folder)
            except OSError:
                pass
        if self.top is not None:
            try:
                os.rmdir(self.top)
            except OSError:
                pass
