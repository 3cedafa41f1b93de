/* The notify backend's accept of a converted listener, compiled.

   Every new connection to a converted listener is one trapped accept; in
   Python its mechanics (the listener's duplicate, the accept, the address
   written, the fd installed, the answer) cost ~120 us, five times what the
   kernel calls themselves cost (docs/performance.md, row (h)). This does
   those mechanics in C. What the call means stays in Python, in
   handlers/accept.py: `plan(listener_inode)` says whether the socket is a
   converted listener whose accept this may do (and returns `after`), and
   `after(conn_inode, peer_uid)` records the connection and returns the
   packed IP address the program is shown.

   Whenever this is not sure it can do the whole call the way the Python
   handler would, it gives the call back untouched (returns None) and the
   handler takes it from the start: a listener with no connection waiting
   for a blocking caller, unusual flags, memory it cannot read. It decides
   only on what the kernel says (the duplicate's inode, the connection's
   credentials); the one thing read from the program, the size of its
   address buffer, only bounds what is written back, and is read before
   SECCOMP_IOCTL_NOTIF_ID_VALID. */
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
   two ways). 0, or 1 if the call went away first: the caller keeps conn. */
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
    answer(listener, ident, -errno);  /* EMFILE...: as accept would say */
    return 0;
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

    int dup = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (dup < 0)
        Py_RETURN_NONE;
    struct stat st;
    if (fstat(dup, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        close(dup);
        Py_RETURN_NONE;
    }
    unsigned long long listener_inode = st.st_ino;
    PyObject *after = PyObject_CallFunction(plan, "K", listener_inode);
    if (after == NULL || after == Py_None) {
        close(dup);
        if (after == NULL)
            answer(listener, ident, -EIO);  /* fail closed; the exception says why */
        return after;  /* None, or NULL: the exception */
    }

    /* The size of the program's buffer, then whether the call still waits:
       only bytes read while it waits are the call's. */
    int room;
    struct iovec here = {&room, sizeof room}, there = {(void *)(uintptr_t)len_ptr, sizeof room};
    if (process_vm_readv(tid, &here, 1, &there, 1, 0) != (ssize_t)sizeof room || room < 0) {
        close(dup);
        Py_DECREF(after);
        Py_RETURN_NONE;
    }
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &ident) < 0) {
        close(dup);
        Py_DECREF(after);
        return PyLong_FromLong(0);
    }

    /* Never block the supervisor: a blocking listener with nothing waiting
       is the handler's (it parks the call); one with a connection waiting
       is accepted with O_NONBLOCK set on the open file for the moment. */
    int status = fcntl(dup, F_GETFL);
    int blocking = status >= 0 && !(status & O_NONBLOCK);
    if (blocking) {
        struct pollfd ready = {.fd = dup, .events = POLLIN};
        if (poll(&ready, 1, 0) != 1 || fcntl(dup, F_SETFL, status | O_NONBLOCK) < 0) {
            close(dup);
            Py_DECREF(after);
            Py_RETURN_NONE;
        }
    }
    int conn = accept4(dup, NULL, NULL, SOCK_CLOEXEC | (flags & SOCK_NONBLOCK));
    int err = errno;
    if (blocking)
        fcntl(dup, F_SETFL, status);
    close(dup);
    if (conn < 0) {
        Py_DECREF(after);
        if (err == EAGAIN && blocking)
            Py_RETURN_NONE;  /* taken by another thread since: the handler waits */
        answer(listener, ident, -err);
        return PyLong_FromLong(0);
    }

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

    /* The address, truncated to the program's buffer, and its full length,
       as the kernel stores them (memory.write_sockaddr). */
    int full = (int)peerlen;
    size_t part = (size_t)room < (size_t)peerlen ? (size_t)room : (size_t)peerlen;
    struct iovec local[2] = {{peer, part}, {&full, sizeof full}};
    struct iovec remote[2] = {{(void *)(uintptr_t)addr, part}, {(void *)(uintptr_t)len_ptr, sizeof full}};
    int skip = part == 0;
    ssize_t wrote = process_vm_writev(tid, local + skip, 2 - skip, remote + skip, 2 - skip, 0);
    Py_DECREF(packed);
    if (wrote != (ssize_t)(part + sizeof full)) {
        close(conn);
        answer(listener, ident, -EFAULT);
        return PyLong_FromLong(0);
    }

    if (give(listener, ident, conn, flags & SOCK_CLOEXEC, killable))
        return Py_BuildValue("(iK)", conn, listener_inode);
    close(conn);
    return PyLong_FromLong(0);
}

static PyMethodDef methods[] = {
    {"accept", fast_accept, METH_VARARGS, "The accept of a converted listener, compiled (see the module's source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "redirect._fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModule_Create(&module);
}
