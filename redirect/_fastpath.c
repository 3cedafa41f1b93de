/* The notify backend's calls of every new connection, compiled: accept of
   a converted listener, getsockname and setsockopt of a converted socket.

   In Python the mechanics of one such call (reading and writing the
   program's memory, the listener's duplicate, the accept, ADDFD, the
   answer) cost ~120 us, five times what the kernel calls themselves cost
   (docs/performance.md, row (h)), and a Go server makes five per
   connection. This makes those mechanics in C. What a call means stays in
   the handlers (handlers.COMPILED): a callback says, from the socket's
   inode, whether and how this may answer it, and returns what to write.

   Whenever this is not sure it can make the whole call the way the handler
   would, it gives the call back untouched (returns None) and the handler
   takes it from the start: a blocking accept with no connection waiting,
   unusual flags, memory it cannot read, a socket the registry does not
   know. It decides only on what the kernel says (the socket's inode, the
   connection's credentials); what it reads of the program's memory (the
   size of an address buffer, an option's value) is read before
   SECCOMP_IOCTL_NOTIF_ID_VALID and only used as the call's data, as the
   kernel would use it. */
#define _GNU_SOURCE  /* POLLRDHUP */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static int ioctl_retried(int fd, unsigned long request, void *arg)
{
    int res;
    do
        res = ioctl(fd, request, arg);
    while (res < 0 && errno == EINTR);
    return res;
}

/* Answer the call with a result or -errno; ENOENT (gone) is nobody's concern. */
static void answer(int listener, unsigned long long ident, long long result)
{
    struct seccomp_notif_resp resp = {.id = ident};
    if (result < 0)
        resp.error = (int)result;
    else
        resp.val = result;
    ioctl_retried(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* The connection becomes the call's result (notify.py's _give, the same
   two ways). 0, or 1 if the call went away first or the program's fd
   table is full: the caller keeps conn for the next accept. */
static int give(int listener, unsigned long long ident, int conn, int cloexec, int killable)
{
    struct seccomp_notif_addfd addfd = {
        .id = ident, .srcfd = (unsigned)conn, .newfd_flags = cloexec ? O_CLOEXEC : 0};
    int fd;
    if (killable) {
        /* The call cannot go away between the two steps; the answer hands
           the CPU over (SYNC_WAKE_UP), which SEND would not. */
        fd = ioctl_retried(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
        if (fd >= 0)
            answer(listener, ident, fd);
    } else {
        /* One step, with our signals blocked: an interrupted SEND would
           answer the call with 0 before the fd is there. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        addfd.flags = SECCOMP_ADDFD_FLAG_SEND;
        fd = ioctl_retried(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (fd >= 0)
        return 0;
    if (errno == ENOENT || errno == ESRCH || errno == EINPROGRESS)
        return 1;
    int err = errno;
    answer(listener, ident, -err);  /* EMFILE...: as accept would say */
    /* The kernel takes no connection for a full fd table: it waits for the
       next accept. (The address was written already.) */
    return err == EMFILE || err == ENFILE;
}

/* The socket inode behind the thread's fd (as ProgramThread.fd_inode): 0 if none. */
static unsigned long long fd_inode(int tid, int fd)
{
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", tid, fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0)
        return 0;
    link[n] = 0;
    unsigned long long inode;
    return sscanf(link, "socket:[%llu]", &inode) == 1 ? inode : 0;
}

/* n bytes of the program's memory, then whether the call still waits: only
   bytes read while it waits are the call's (notify.Notified.read_some).
   1: read; 0: not all of it is mapped; -1: the call went away. */
static int read_valid(int listener, unsigned long long ident, int tid, unsigned long long addr, void *buf,
                      size_t n)
{
    struct iovec here = {buf, n}, there = {(void *)(uintptr_t)addr, n};
    if (process_vm_readv(tid, &here, 1, &there, 1, 0) != (ssize_t)n)
        return 0;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &ident) < 0 ? -1 : 1;
}

/* An address stored as the kernel stores it (memory.write_sockaddr):
   truncated to the program's buffer (room, read before), the full length
   reported. 0 or -EFAULT. */
static int write_sockaddr(int tid, unsigned long long addr, unsigned long long len_ptr, const char *data,
                          Py_ssize_t size, int room)
{
    int full = (int)size;
    size_t part = (size_t)room < (size_t)size ? (size_t)room : (size_t)size;
    struct iovec local[2] = {{(void *)data, part}, {&full, sizeof full}};
    struct iovec remote[2] = {{(void *)(uintptr_t)addr, part}, {(void *)(uintptr_t)len_ptr, sizeof full}};
    int skip = part == 0;
    ssize_t wrote = process_vm_writev(tid, local + skip, 2 - skip, remote + skip, 2 - skip, 0);
    return wrote == (ssize_t)(part + sizeof full) ? 0 : -EFAULT;
}

/* accept(listener, ident, pidfd, tid, fd, addr, len_ptr, flags, killable, plan)
   -> None (not done: the Python handler takes the call), 0 (answered, or
   the call went away with nothing taken), or (conn, listener_inode) (the
   call went away after the supervisor took a connection: ours, for the
   next accept on that listener). */
static PyObject *fast_accept(PyObject *self, PyObject *args)
{
    int listener, pidfd, tid, fd, flags, killable;
    unsigned long long ident, addr, len_ptr;
    PyObject *plan;
    if (!PyArg_ParseTuple(args, "iKiiiKKipO", &listener, &ident, &pidfd, &tid, &fd, &addr, &len_ptr,
                          &flags, &killable, &plan))
        return NULL;
    if (addr == 0 || len_ptr == 0 || flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        Py_RETURN_NONE;

    /* Which socket it is, from the fd's link first: only the converted
       listener is duplicated and held for the call. (A last close of a file
       not ours, a lingering TCP socket, would wait; even reading the link
       can make one, if the program closes its fd then: the supervisor's
       tick ends that wait, signals.py.) */
    unsigned long long listener_inode = fd_inode(tid, fd);
    if (listener_inode == 0)
        Py_RETURN_NONE;
    PyObject *after = PyObject_CallFunction(plan, "K", listener_inode);
    if (after == NULL || after == Py_None) {
        if (after == NULL)
            answer(listener, ident, -EIO);  /* fail closed; the exception says why */
        return after;  /* None, or NULL: the exception */
    }
    int dup = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (dup < 0) {
        Py_DECREF(after);
        Py_RETURN_NONE;
    }
    if (fd_inode(getpid(), dup) != listener_inode) {
        close(dup);  /* the program put another file at fd since */
        Py_DECREF(after);
        Py_RETURN_NONE;
    }

    /* The size of the program's buffer, then whether the call still waits:
       only bytes read while it waits are the call's. */
    int room;
    int got = read_valid(listener, ident, tid, len_ptr, &room, sizeof room);
    if (got <= 0 || room < 0) {
        close(dup);
        Py_DECREF(after);
        if (got < 0)
            return PyLong_FromLong(0);
        Py_RETURN_NONE;
    }

    /* Never block the supervisor. O_NONBLOCK is the program's to change at
       any moment (fcntl is not trapped), so it only says what a call with
       nothing waiting answers: EAGAIN, or (blocking) the handler parks it.
       A connection waiting is accepted with O_NONBLOCK set for the moment:
       only a process outside the tree could take it first. */
    int status = fcntl(dup, F_GETFL);
    int nonblocking = status >= 0 && status & O_NONBLOCK;
    struct pollfd ready = {.fd = dup, .events = POLLIN | POLLRDHUP};
    int waiting;
    do  /* (the supervisor's tick, signals.py, may interrupt it) */
        waiting = poll(&ready, 1, 0);
    while (waiting < 0 && errno == EINTR);
    if (waiting == 1 && ready.revents & (POLLRDHUP | POLLHUP)) {
        close(dup);  /* shut down (perform.listener_state): as a TCP listener says */
        Py_DECREF(after);
        answer(listener, ident, -EINVAL);
        return PyLong_FromLong(0);
    }
    if (status < 0 || waiting != 1 || (!nonblocking && fcntl(dup, F_SETFL, status | O_NONBLOCK) < 0)) {
        close(dup);
        Py_DECREF(after);
        if (!nonblocking)
            Py_RETURN_NONE;
        answer(listener, ident, -EAGAIN);
        return PyLong_FromLong(0);
    }
    int conn = accept4(dup, NULL, NULL, SOCK_CLOEXEC | (flags & SOCK_NONBLOCK));
    int err = errno;
    if (!nonblocking)
        fcntl(dup, F_SETFL, status);
    close(dup);
    if (conn < 0) {
        Py_DECREF(after);
        if ((err == EAGAIN || err == EINTR) && !nonblocking)
            Py_RETURN_NONE;  /* taken since: the handler waits */
        answer(listener, ident, err == EINTR ? -EAGAIN : -err);
        return PyLong_FromLong(0);
    }

    struct stat st;
    struct ucred cred;
    socklen_t credlen = sizeof cred;
    int known = getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) == 0;
    if (fstat(conn, &st) < 0) {
        close(conn);
        Py_DECREF(after);
        answer(listener, ident, -EIO);
        return PyLong_FromLong(0);
    }
    PyObject *packed = known ? PyObject_CallFunction(after, "KI", (unsigned long long)st.st_ino, cred.uid)
                             : PyObject_CallFunction(after, "KO", (unsigned long long)st.st_ino, Py_None);
    Py_DECREF(after);
    char *peer;
    Py_ssize_t peerlen;
    if (packed == NULL || PyBytes_AsStringAndSize(packed, &peer, &peerlen) < 0) {
        close(conn);
        Py_XDECREF(packed);
        answer(listener, ident, -EIO);  /* fail closed; the exception says why */
        return NULL;
    }

    int wrote = write_sockaddr(tid, addr, len_ptr, peer, peerlen, room);
    Py_DECREF(packed);
    if (wrote < 0) {
        close(conn);
        answer(listener, ident, wrote);
        return PyLong_FromLong(0);
    }

    if (give(listener, ident, conn, flags & SOCK_CLOEXEC, killable))
        return Py_BuildValue("(iK)", conn, listener_inode);
    close(conn);
    return PyLong_FromLong(0);
}

/* sockname(listener, ident, tid, fd, addr, len_ptr, local): getsockname
   or getpeername of a converted socket. local(inode) is the packed
   address the program is shown, or None (the handler answers). None (not
   done) or 0 (answered, or the call went away). */
static PyObject *fast_sockname(PyObject *self, PyObject *args)
{
    int listener, tid, fd;
    unsigned long long ident, addr, len_ptr;
    PyObject *local;
    if (!PyArg_ParseTuple(args, "iKiiKKO", &listener, &ident, &tid, &fd, &addr, &len_ptr, &local))
        return NULL;
    unsigned long long inode = addr && len_ptr ? fd_inode(tid, fd) : 0;
    if (inode == 0)
        Py_RETURN_NONE;
    PyObject *packed = PyObject_CallFunction(local, "K", inode);
    if (packed == NULL || packed == Py_None) {
        if (packed == NULL)
            answer(listener, ident, -EIO);
        return packed;
    }
    char *data;
    Py_ssize_t size;
    int room, got;
    if (PyBytes_AsStringAndSize(packed, &data, &size) < 0) {
        Py_DECREF(packed);
        answer(listener, ident, -EIO);
        return NULL;
    }
    got = read_valid(listener, ident, tid, len_ptr, &room, sizeof room);
    if (got <= 0 || room < 0) {
        Py_DECREF(packed);
        if (got < 0)
            return PyLong_FromLong(0);
        Py_RETURN_NONE;
    }
    answer(listener, ident, write_sockaddr(tid, addr, len_ptr, data, size, room));
    Py_DECREF(packed);
    return PyLong_FromLong(0);
}

/* setsockopt(listener, ident, tid, fd, level, name, value_ptr, length, set):
   set(inode, level, name, value) is the call's result, or None (the
   handler answers); value is at most 256 bytes of the program's, or None
   where they are not mapped. None (not done) or 0 (answered, or gone). */
static PyObject *fast_setsockopt(PyObject *self, PyObject *args)
{
    int listener, tid, fd, level, name, length;
    unsigned long long ident, value_ptr;
    PyObject *set;
    if (!PyArg_ParseTuple(args, "iKiiiiKiO", &listener, &ident, &tid, &fd, &level, &name, &value_ptr, &length,
                          &set))
        return NULL;
    unsigned long long inode = fd_inode(tid, fd);
    if (inode == 0)
        Py_RETURN_NONE;
    char value[256];
    size_t size = length > 0 ? ((size_t)length < sizeof value ? (size_t)length : sizeof value) : 0;
    int got = size ? read_valid(listener, ident, tid, value_ptr, value, size) : 1;
    if (got < 0)
        return PyLong_FromLong(0);
    PyObject *res = got ? PyObject_CallFunction(set, "Kiiy#", inode, level, name, value, (Py_ssize_t)size)
                        : PyObject_CallFunction(set, "KiiO", inode, level, name, Py_None);
    if (res == NULL || res == Py_None) {
        if (res == NULL)
            answer(listener, ident, -EIO);
        return res;
    }
    long result = PyLong_AsLong(res);
    Py_DECREF(res);
    if (result == -1 && PyErr_Occurred()) {
        answer(listener, ident, -EIO);
        return NULL;
    }
    answer(listener, ident, result);
    return PyLong_FromLong(0);
}

static PyMethodDef methods[] = {
    {"accept", fast_accept, METH_VARARGS, "accept/accept4 of a converted listener (see the source)."},
    {"sockname", fast_sockname, METH_VARARGS, "getsockname/getpeername of a converted socket."},
    {"setsockopt", fast_setsockopt, METH_VARARGS, "setsockopt of a converted socket."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "redirect._fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModule_Create(&module);
}
