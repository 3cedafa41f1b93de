/* The notify backend's calls of every new connection and every datagram,
   compiled: accept of a converted listener, getsockname and setsockopt of
   a converted socket, recvfrom and sendto of a converted datagram socket,
   and the notification loop that receives them (serve).

   In Python the mechanics of one such call (reading and writing the
   program's memory, the listener's duplicate, the accept, ADDFD, the
   answer) cost ~120 us, and receiving and dispatching it ~25 us more, where
   the kernel calls themselves cost a few (docs/performance.md, row (h));
   a Go server makes five per connection, a UDP server two per datagram.
   This makes those in C. What a call means stays in the handlers
   (handlers.compiled): a callback says, from the socket's inode, whether
   and how this may answer it, and returns what to write.

   Whenever this is not sure it can make the whole call the way the handler
   would, it gives the call back untouched and the handler takes it from
   the start: a blocking call with nothing waiting, unusual flags, memory
   it cannot read, a socket the registry does not know. It decides on what
   the kernel says (the socket's inode, the connection's credentials) and
   on its own copies: what it reads of the program's memory (the size of
   an address buffer, an option's value, a datagram and its destination)
   is read before SECCOMP_IOCTL_NOTIF_ID_VALID, and only the copy is
   judged and used. */
#define _GNU_SOURCE  /* POLLRDHUP */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

static int ioctl_retried(int fd, unsigned long request, void *arg)
{
    int res;
    do
        res = ioctl(fd, request, arg);
    while (res < 0 && errno == EINTR);
    return res;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The next generation of a cache (entries.gen: 0 is never one). */
static unsigned int next_gen(unsigned int gen)
{
    return gen + 1 ? gen + 1 : 1;
}

/* Answer the call with a result or -errno: 0, or -1 if it went away
   (ENOENT), which is nobody's concern but for a call that did something
   (replayed). */
static int answer(int listener, unsigned long long ident, long long result)
{
    struct seccomp_notif_resp resp = {.id = ident};
    if (result < 0)
        resp.error = (int)result;
    else
        resp.val = result;
    return ioctl_retried(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
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

/* The socket inode behind the thread's fd (as ProgramThread.fd_inode): 0 if
   none. (By hand, not snprintf and sscanf: it is made for every call.) */
static unsigned long long fd_inode(int tid, int fd)
{
    if (fd < 0)
        return 0;
    char path[48] = "/proc/", *p = path + 6, digits[12];
    int n;
    for (int part = 0; part < 2; part++) {
        unsigned int v = (unsigned int)(part ? fd : tid);
        n = 0;
        do
            digits[n++] = (char)('0' + v % 10);
        while (v /= 10);
        while (n)
            *p++ = digits[--n];
        if (!part)
            memcpy(p, "/fd/", 4), p += 4;
    }
    *p = 0;
    char link[64];
    ssize_t len = readlink(path, link, sizeof link - 1);
    if (len <= 9 || memcmp(link, "socket:[", 8) != 0 || link[len - 1] != ']')
        return 0;
    unsigned long long inode = 0;
    for (ssize_t i = 8; i < len - 1; i++) {
        if (link[i] < '0' || link[i] > '9')
            return 0;
        inode = inode * 10 + (unsigned long long)(link[i] - '0');
    }
    return inode;
}

/* The program's memory at there[] into here[], then whether the call
   still waits: only bytes read while it waits are the call's
   (notify.Notified.read_some). 1: read; 0: not all of it is mapped; -1:
   the call went away. read_valid: n bytes at addr. */
static int read_valid_iov(int listener, unsigned long long ident, int tid, struct iovec *here,
                          struct iovec *there, int count)
{
    size_t n = 0;
    for (int i = 0; i < count; i++)
        n += here[i].iov_len;
    if (process_vm_readv(tid, here, count, there, count, 0) != (ssize_t)n)
        return 0;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &ident) < 0 ? -1 : 1;
}

static int read_valid(int listener, unsigned long long ident, int tid, unsigned long long addr, void *buf,
                      size_t n)
{
    struct iovec here = {buf, n}, there = {(void *)(uintptr_t)addr, n};
    return read_valid_iov(listener, ident, tid, &here, &there, 1);
}

/* An address stored as the kernel stores it (memory.write_sockaddr):
   truncated to the program's buffer (room, read before), the full length
   reported; after `payload_len` bytes of payload at payload_at (a
   datagram received), in the same call. 0 or -EFAULT. */
static int write_sockaddr(int tid, unsigned long long addr, unsigned long long len_ptr, const char *data,
                          Py_ssize_t size, int room, const void *payload, size_t payload_len,
                          unsigned long long payload_at)
{
    int full = (int)size, count = 0;
    size_t part = (size_t)room < (size_t)size ? (size_t)room : (size_t)size;
    struct iovec local[3], remote[3];
    const struct { const void *from; size_t n; unsigned long long to; } pieces[3] = {
        {payload, payload_len, payload_at}, {data, part, addr}, {&full, sizeof full, len_ptr}};
    for (int i = 0; i < 3; i++)
        if (pieces[i].n) {  /* (empty pieces left out: their addresses may be anything) */
            local[count] = (struct iovec){(void *)pieces[i].from, pieces[i].n};
            remote[count++] = (struct iovec){(void *)(uintptr_t)pieces[i].to, pieces[i].n};
        }
    ssize_t wrote = process_vm_writev(tid, local, count, remote, count, 0);
    return wrote == (ssize_t)(payload_len + part + sizeof full) ? 0 : -EFAULT;
}


/* The supervisor's duplicate of the program's fd if it is a socket (st:
   its fstat), else -1. (A last close of a file not ours, should the
   program close its fd meanwhile, is the supervisor's tick's to end:
   signals.py.) */
static int held(int pidfd, int fd, struct stat *st)
{
    int dup = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (dup >= 0 && (fstat(dup, st) < 0 || !S_ISSOCK(st->st_mode))) {
        close(dup);
        dup = -1;
    }
    return dup;
}

/* What this keeps of each connection it accepted (the facts the handlers
   gave for it: handlers/accept.py compiled_plan), so that the connection's
   own getsockname and setsockopt need no Python: the address it shows,
   and the scratch socket of its kind, where the program's options are
   tried (templates.py). A cache: a connection not found here (pushed out
   by another, or accepted in Python) is the handlers' to answer, as
   before. A socket's inode is not reused while it lives. */
#define CONNECTIONS 4096
static struct connection {
    unsigned long long inode;  /* 0: free */
    int scratch;               /* -1: options are the handlers' */
    int local_len;
    char local[sizeof(struct sockaddr_storage)];
} connections[CONNECTIONS];

static struct connection *connection(unsigned long long inode)
{
    struct connection *c = &connections[inode % CONNECTIONS];
    return inode && c->inode == inode ? c : NULL;
}

static void remember(unsigned long long inode, PyObject *local, int scratch)
{
    struct connection *c = &connections[inode % CONNECTIONS];
    char *data;
    Py_ssize_t size;
    c->inode = 0;
    if (PyBytes_AsStringAndSize(local, &data, &size) < 0 || size > (Py_ssize_t)sizeof c->local) {
        PyErr_Clear();
        return;  /* (not kept: the handlers answer) */
    }
    memcpy(c->local, data, size);
    c->local_len = (int)size;
    c->scratch = scratch;
    c->inode = inode;
}

/* What this turn of serve learnt from Python, kept for the turn (Python
   changes nothing while serve runs, but in these calls): each listener's
   plan, each thread's pidfd. */
#define PLANS 8
#define THREADS 64
static struct { unsigned long long inode; PyObject *after; } plans[PLANS];
static int n_plans;
static struct { int tid; int pidfd; PyObject *task; } threads[THREADS];  /* (task: tasks holds it) */
static int n_threads;

static PyObject *plan_of(PyObject *plan, unsigned long long inode)
{
    for (int i = 0; i < n_plans; i++)
        if (plans[i].inode == inode) {
            Py_INCREF(plans[i].after);
            return plans[i].after;
        }
    PyObject *after = PyObject_CallFunction(plan, "K", inode);
    if (after != NULL && n_plans < PLANS) {
        plans[n_plans].inode = inode;
        plans[n_plans++].after = after;
        Py_INCREF(after);
    }
    return after;
}


/* accept/accept4 of a converted listener: plan(inode) is None (the
   handler answers) or after(conn_inode, uid): (peer, local, scratch), the
   packed peer to show and the connection's facts (remember).
   None (not done: the Python handler takes the call), 0 (answered, or the
   call went away with nothing taken), or (conn, listener_inode) (the call
   went away after the supervisor took a connection: ours, for the next
   accept on that listener). */
static PyObject *do_accept(int listener, unsigned long long ident, int pidfd, int tid, int fd,
                           unsigned long long addr, unsigned long long len_ptr, int flags, int killable,
                           PyObject *plan)
{
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
    PyObject *after = plan_of(plan, listener_inode);
    if (after == NULL || after == Py_None) {
        if (after == NULL)
            answer(listener, ident, -EIO);  /* fail closed; the exception says why */
        return after;  /* None, or NULL: the exception */
    }
    struct stat st;
    int dup = held(pidfd, fd, &st);
    if (dup < 0 || st.st_ino != listener_inode) {
        if (dup >= 0)
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

    struct ucred cred;
    socklen_t credlen = sizeof cred;
    int known = getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &credlen) == 0;
    if (fstat(conn, &st) < 0) {
        close(conn);
        Py_DECREF(after);
        answer(listener, ident, -EIO);
        return PyLong_FromLong(0);
    }
    PyObject *facts = known ? PyObject_CallFunction(after, "KI", (unsigned long long)st.st_ino, cred.uid)
                            : PyObject_CallFunction(after, "KO", (unsigned long long)st.st_ino, Py_None);
    Py_DECREF(after);
    PyObject *packed, *local;
    int scratch;
    char *peer;
    Py_ssize_t peerlen;
    if (facts == NULL || !PyArg_ParseTuple(facts, "SSi", &packed, &local, &scratch) ||
        PyBytes_AsStringAndSize(packed, &peer, &peerlen) < 0) {
        close(conn);
        Py_XDECREF(facts);
        answer(listener, ident, -EIO);  /* fail closed; the exception says why */
        return NULL;
    }
    remember((unsigned long long)st.st_ino, local, scratch);
    Py_INCREF(packed);
    Py_DECREF(facts);

    int wrote = write_sockaddr(tid, addr, len_ptr, peer, peerlen, room, NULL, 0, 0);
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

/* getsockname of a converted socket: local(inode) is the packed address
   the program is shown, or None (the handler answers). None (not done) or
   0 (answered, or the call went away). */
static PyObject *do_sockname(int listener, unsigned long long ident, int tid, int fd, unsigned long long addr,
                             unsigned long long len_ptr, PyObject *local)
{
    unsigned long long inode = addr && len_ptr ? fd_inode(tid, fd) : 0;
    if (inode == 0)
        Py_RETURN_NONE;
    /* A connection of the table shows its address from there; any other
       socket asks the handlers. */
    struct connection *c = connection(inode);
    PyObject *packed = NULL;
    const char *data = c ? c->local : NULL;
    Py_ssize_t size = c ? c->local_len : 0;
    if (c == NULL) {
        packed = PyObject_CallFunction(local, "K", inode);
        if (packed == NULL || packed == Py_None) {
            if (packed == NULL)
                answer(listener, ident, -EIO);
            return packed;
        }
        char *bytes;
        if (PyBytes_AsStringAndSize(packed, &bytes, &size) < 0) {
            Py_DECREF(packed);
            answer(listener, ident, -EIO);
            return NULL;
        }
        data = bytes;
    }
    int room, got;
    got = read_valid(listener, ident, tid, len_ptr, &room, sizeof room);
    if (got <= 0 || room < 0) {
        Py_XDECREF(packed);
        if (got < 0)
            return PyLong_FromLong(0);
        Py_RETURN_NONE;
    }
    answer(listener, ident, write_sockaddr(tid, addr, len_ptr, data, size, room, NULL, 0, 0));
    Py_XDECREF(packed);
    return PyLong_FromLong(0);
}

/* The options a connection of the table may have set on its scratch
   socket here, from the handlers (sockopt.compiled_setsockopt): (level,
   name, errno), errno 0 for "tried on the scratch socket", else the
   call's error. Read again at every serve(). */
#define OPTIONS 32
static struct option { int level, name, error; } options[OPTIONS];
static int n_options;

static int read_options(PyObject *list)
{
    n_options = 0;
    Py_ssize_t n = PyTuple_Check(list) ? PyTuple_GET_SIZE(list) : -1;
    if (n < 0 || n > OPTIONS) {
        PyErr_SetString(PyExc_ValueError, "serve: the options do not fit");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        struct option *o = &options[i];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(list, i), "iii", &o->level, &o->name, &o->error))
            return -1;
    }
    n_options = (int)n;
    return 0;
}

static const struct option *option(int level, int name)
{
    for (int i = 0; i < n_options; i++)
        if (options[i].level == level && options[i].name == name)
            return &options[i];
    return NULL;
}

/* The options set here since the registry last had them: (inode, level,
   name, value) items of `record`, a list, given to keep(list) (the
   registry's set_options) before Python reads them: before set(), and
   when serve returns (plan, after, local and new_task read no options).
   Many at once: one Python call for all, not one per call. */
static PyObject *record, *keep;

static int flush(void)
{
    if (record == NULL || PyList_GET_SIZE(record) == 0)
        return 0;
    PyObject *done = PyObject_CallOneArg(keep, record);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return PyList_SetSlice(record, 0, PY_SSIZE_T_MAX, NULL);
}

/* setsockopt of a converted socket. A connection of the table setting an
   option of `options`: tried on its scratch socket here, and what the
   kernel said there is the answer; set, it is added to `record` (for the
   registry, for reading back: flush).
   Else set(inode, level, name, value) is the call's result, or None (the
   handler answers). value is at most 256 bytes of the program's, or None
   where they are not mapped. None (not done) or 0 (answered, or gone). */
static PyObject *do_setsockopt(int listener, unsigned long long ident, int tid, int fd, int level, int name,
                               unsigned long long value_ptr, int length, PyObject *set)
{
    unsigned long long inode = fd_inode(tid, fd);
    if (inode == 0)
        Py_RETURN_NONE;
    char value[256];
    size_t size = length > 0 ? ((size_t)length < sizeof value ? (size_t)length : sizeof value) : 0;
    int got = size ? read_valid(listener, ident, tid, value_ptr, value, size) : 1;
    if (got < 0)
        return PyLong_FromLong(0);
    struct connection *c = connection(inode);
    const struct option *o = c && c->scratch >= 0 ? option(level, name) : NULL;
    PyObject *res;
    if (o != NULL) {
        long result = o->error ? -o->error : !got ? -EFAULT
                    : setsockopt(c->scratch, level, name, value, (socklen_t)size) < 0 ? -errno : 0;
        if (result == 0) {
            /* Kept for the registry, which gets them before Python next
               looks (flush): a Python call per option would be most of
               the call's time. */
            PyObject *item = Py_BuildValue("(Kiiy#)", inode, level, name, value, (Py_ssize_t)size);
            int kept = item != NULL && PyList_Append(record, item) == 0;
            Py_XDECREF(item);
            /* (a turn can be long: handed over every so many) */
            if (!kept || (PyList_GET_SIZE(record) >= 1024 && flush() < 0)) {
                answer(listener, ident, -EIO);
                return NULL;
            }
        }
        res = PyLong_FromLong(result);
    } else {
        if (flush() < 0) {
            answer(listener, ident, -EIO);
            return NULL;
        }
        res = got ? PyObject_CallFunction(set, "Kiiy#", inode, level, name, value, (Py_ssize_t)size)
                  : PyObject_CallFunction(set, "KiiO", inode, level, name, Py_None);
    }
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

/* ---- datagrams: recvfrom and sendto of a converted datagram socket ----

   The supervisor receives and sends on its duplicate of the program's
   socket, as handlers/receive.py and datagram_send.py do, the addresses
   being what the handlers say (meanings: family, sender, destination).
   What they said is kept for the turn: where a datagram comes from and
   goes to changes only in Python, and in sender(), which shows new
   senders. Anything unusual (flags, a blocking call with nothing there, a
   failed send, a root supervisor's answer it cannot credit) is the
   handlers' from the start: here nothing was taken or sent yet. */

#define DGRAMS 16
static struct { unsigned long long inode; int family; } dgrams[DGRAMS];
static int n_dgrams;

/* The family a converted datagram socket shows (family(inode): AF_INET,
   AF_INET6), 0 if it is the handlers' to serve, -1 with an exception. */
static int dgram_family(PyObject *family_of, unsigned long long inode)
{
    for (int i = 0; i < n_dgrams; i++)
        if (dgrams[i].inode == inode)
            return dgrams[i].family;
    PyObject *got = PyObject_CallFunction(family_of, "K", inode);
    if (got == NULL)
        return -1;
    int family = got == Py_None ? 0 : (int)PyLong_AsLong(got);
    Py_DECREF(got);
    if (family == -1 && PyErr_Occurred())
        return -1;
    if (n_dgrams < DGRAMS) {
        dgrams[n_dgrams].inode = inode;
        dgrams[n_dgrams++].family = family;
    }
    return family;
}

static unsigned int hashed(const void *data, size_t n, unsigned long long seed)
{
    unsigned long long h = 1469598103934665603ULL ^ seed;  /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const unsigned char *)data)[i]) * 1099511628211ULL;
    return (unsigned int)(h ^ h >> 32);
}

/* Entries are good for the turn they were made in (gen): forget_turn()
   moves on. So does a new sender shown while peers.py's table is full:
   showing it forgets another, whose address the next may get (and only
   Python's lookups keep the table's order of use): then nothing is kept. */
static unsigned int senders_gen = 1, dests_gen = 1;  /* (0: never made) */

#define DESTS 256
static struct dest {
    unsigned int gen;
    unsigned long long inode;
    int len, reply;
    char addr[32];
    socklen_t real_len;
    struct sockaddr_un real;
    int named;  /* a root supervisor's answer: the O_PATH fd of the socket file (do_sendto), -1 */
    long long opened;  /* (when, in ms) */
} dests[DESTS];

/* Every destination forgotten, and the socket files they named closed. */
static void drop_dests(void)
{
    for (int i = 0; i < DESTS; i++)
        if (dests[i].gen == dests_gen && dests[i].named >= 0) {
            close(dests[i].named);
            dests[i].named = -1;
        }
    dests_gen = next_gen(dests_gen);
}

#define SENDERS 256
static struct sender {
    unsigned int gen;
    int family, name_len, shown_len;
    char name[sizeof(struct sockaddr_un)], shown[sizeof(struct sockaddr_in6)];
} senders[SENDERS];

/* The address a datagram from the Unix address `name` is shown from, on
   a socket of `family` (sender(inode, name, task): (receive.show_sender's,
   whether the table has room: it forgot nobody)); NULL: none (the handler
   said why), or an exception. *asked: Python was (which may take its time:
   it may look at the sender's file). */
static const struct sender *sender_of(PyObject *sender, unsigned long long inode, int family, const char *name,
                                      int name_len, PyObject *task, int *asked)
{
    struct sender *e = &senders[hashed(name, (size_t)name_len, (unsigned)family) % SENDERS];
    if (e->gen == senders_gen && e->family == family && e->name_len == name_len && !memcmp(e->name, name, name_len))
        return e;
    *asked = 1;
    PyObject *got = PyObject_CallFunction(sender, "Ky#O", inode, name, (Py_ssize_t)name_len, task);
    const char *data;
    Py_ssize_t size;
    int room;
    if (got == Py_None) {
        Py_DECREF(got);
        return NULL;
    }
    if (got == NULL || !PyArg_ParseTuple(got, "y#p", &data, &size, &room) || size > (Py_ssize_t)sizeof e->shown) {
        if (got != NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "serve: a shown address that does not fit");
        Py_XDECREF(got);
        return NULL;
    }
    if (!room) {  /* someone was forgotten: nothing kept is sure */
        senders_gen = next_gen(senders_gen);
        drop_dests();
    }
    e->gen = room ? senders_gen : 0;
    e->family = family;
    e->name_len = name_len;
    memcpy(e->name, name, (size_t)name_len);
    e->shown_len = (int)size;
    memcpy(e->shown, data, (size_t)size);
    Py_DECREF(got);
    return e;
}

/* Where a datagram of the socket `inode` to the address (as the program
   wrote it) goes (destination(inode, addr): (Unix address, whether it
   answers a sender, datagram_send.verdict_for)), or NULL: the handlers'
   (with an exception: an error). */
static struct dest *dest_of(PyObject *destination, unsigned long long inode, const char *addr, int len)
{
    struct dest *e = &dests[hashed(addr, (size_t)len, inode) % DESTS];
    if (e->gen == dests_gen && e->inode == inode && e->len == len && !memcmp(e->addr, addr, (size_t)len))
        return e;
    PyObject *got = PyObject_CallFunction(destination, "Ky#", inode, addr, (Py_ssize_t)len);
    if (e->gen == dests_gen && e->named >= 0)
        close(e->named);  /* (pushed out) */
    e->gen = 0;
    e->named = -1;
    if (got == NULL || got == Py_None) {
        Py_XDECREF(got);
        return NULL;
    }
    const char *real;
    Py_ssize_t size;
    int reply;
    if (!PyArg_ParseTuple(got, "y#p", &real, &size, &reply) || size > (Py_ssize_t)sizeof e->real || size < 2) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "serve: a destination that does not fit");
        Py_DECREF(got);
        return NULL;
    }
    e->gen = dests_gen;
    e->inode = inode;
    e->len = len;
    memcpy(e->addr, addr, (size_t)len);
    memset(&e->real, 0, sizeof e->real);
    memcpy(&e->real, real, (size_t)size);
    e->real_len = (socklen_t)size;
    e->reply = reply;
    e->named = -1;
    Py_DECREF(got);
    return e;
}

/* What the turn kept, forgotten as it ends. */
static void forget_turn(void)
{
    for (int i = 0; i < n_plans; i++)
        Py_DECREF(plans[i].after);
    n_plans = n_threads = n_dgrams = 0;
    senders_gen = next_gen(senders_gen);
    drop_dests();
}

/* What one datagram is copied through (a datagram is smaller; as
   receive.py's _MAX_RECEIVE). */
static char datagram[1 << 20];

/* recvfrom with a sender's address buffer (receive.recvfrom) on a
   converted datagram socket. None (the handler takes the call: nothing
   taken), 0 (answered, or gone with nothing taken), or ("replay", result):
   the datagram is the program's, written, but the call went away (a
   signal): its restart is answered with it. */
static PyObject *do_recvfrom(int listener, const struct seccomp_notif *req, int pidfd, PyObject *task,
                             PyObject *meanings)
{
    const unsigned long long *a = req->data.args;
    int tid = (int)req->pid, flags = (int)a[3];
    unsigned long long buf = a[1], src = a[4], len_ptr = a[5];
    size_t size = a[2] < sizeof datagram ? (size_t)a[2] : sizeof datagram;
    if (src == 0 || len_ptr == 0 || flags & ~(MSG_DONTWAIT | MSG_TRUNC))
        Py_RETURN_NONE;
    struct stat st;
    int dup = held(pidfd, (int)a[0], &st);
    if (dup < 0)
        Py_RETURN_NONE;
    int family = dgram_family(PyTuple_GET_ITEM(meanings, 5), st.st_ino), room = 0;
    int got = family > 0 ? read_valid(listener, req->id, tid, len_ptr, &room, sizeof room) : 0;
    if (family < 0) {
        close(dup);
        answer(listener, req->id, -EIO);  /* fail closed; the exception says why */
        return NULL;
    }
    if (got <= 0 || room < 0) {
        close(dup);
        if (got < 0)
            return PyLong_FromLong(0);
        Py_RETURN_NONE;
    }
    struct sockaddr_un from;
    socklen_t from_len = sizeof from;
    ssize_t n = recvfrom(dup, datagram, size, flags | MSG_DONTWAIT, (struct sockaddr *)&from, &from_len);
    int err = errno;
    if (n < 0) {
        int status = err == EAGAIN ? fcntl(dup, F_GETFL) : 0;
        close(dup);
        if (err == EAGAIN && !(flags & MSG_DONTWAIT) && status >= 0 && !(status & O_NONBLOCK))
            Py_RETURN_NONE;  /* a blocking call with nothing there: the handler waits */
        answer(listener, req->id, -err);
        return PyLong_FromLong(0);
    }
    close(dup);

    int asked = 0;
    const struct sender *shown = sender_of(PyTuple_GET_ITEM(meanings, 6), st.st_ino, family, (const char *)&from,
                                           from_len < sizeof from ? (int)from_len : (int)sizeof from, task, &asked);
    if (shown == NULL) {
        answer(listener, req->id, -EIO);  /* fail closed (the datagram is lost); the handler or exception says why */
        return PyErr_Occurred() ? NULL : PyLong_FromLong(0);
    }
    /* Python may have taken its time (a sender's file to look at): the
       thread may be gone, and its tid another's. Its memory is written
       while its call waits, or (for the restart, gone to a signal) while
       the thread lives. */
    struct pollfd ended = {.fd = pidfd, .events = POLLIN};
    if (asked && ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) < 0 && poll(&ended, 1, 0) != 0)
        return PyLong_FromLong(0);  /* (the datagram is lost with the thread) */
    /* The data, then the address, in one call; a bad buffer loses the
       datagram, as in the kernel. */
    size_t copied = (size_t)n < size ? (size_t)n : size;  /* (MSG_TRUNC: n is the datagram's length) */
    long long result = write_sockaddr(tid, src, len_ptr, shown->shown, shown->shown_len, room, datagram, copied, buf)
                       ? -EFAULT : n;
    if (answer(listener, req->id, result) < 0 && errno == ENOENT)
        return Py_BuildValue("(sL)", "replay", result);  /* (EFAULT too: the datagram was taken) */
    return PyLong_FromLong(0);
}

/* pidfd_info (Linux 6.13), the first version: the credentials of the
   thread a pidfd is of, without reading /proc/TID/status (12 us). */
struct pidfd_info_v0 {
    unsigned long long mask, cgroupid;
    unsigned int pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid, spare;
};
#define PIDFD_GET_INFO_V0 _IOWR(0xFF, 11, struct pidfd_info_v0)
#define PIDFD_INFO_CREDS 2

/* The credentials an answer a root supervisor sends with its own rights
   names (perform._program_credentials): the program's process and its
   thread's effective ids. 0 if the kernel cannot tell. */
static int program_credentials(int pidfd, int tid, struct ucred *cred)
{
    struct pidfd_info_v0 info = {.mask = PIDFD_INFO_CREDS};
    if (ioctl(pidfd, PIDFD_GET_INFO_V0, &info) < 0 || !(info.mask & PIDFD_INFO_CREDS) || (int)info.pid != tid)
        return 0;  /* (an older kernel; or the pidfd is of the thread group) */
    cred->pid = (pid_t)info.tgid;
    cred->uid = info.euid;
    cred->gid = info.egid;
    return 1;
}

/* The supervisor's effective uid, and whether the kernel has
   PIDFD_GET_INFO (serve's `credits`): read at every serve(). */
static uid_t supervisor_euid;
static int credits;

/* sendto with an address (send.sendto) on a converted datagram socket, to
   an address the handlers know (dest_of). None (the handler takes the
   call: nothing sent), 0 (answered, or gone with nothing sent), or
   ("replay", result): sent, but the call went away (a signal): its
   restart is answered without sending again. */
static PyObject *do_sendto(int listener, const struct seccomp_notif *req, int pidfd, PyObject *meanings)
{
    const unsigned long long *a = req->data.args;
    int tid = (int)req->pid, flags = (int)a[3];
    unsigned long long buf = a[1], addr_ptr = a[4];
    size_t len = (size_t)a[2];
    unsigned int addr_len = (unsigned int)a[5];
    char addr[sizeof ((struct dest *)0)->addr];
    if (addr_ptr == 0 || addr_len < 2 || addr_len > sizeof addr || flags & ~(MSG_DONTWAIT | MSG_NOSIGNAL) ||
        len > 65527)
        Py_RETURN_NONE;
    struct stat st;
    int dup = held(pidfd, (int)a[0], &st);
    if (dup < 0)
        Py_RETURN_NONE;
    int family = dgram_family(PyTuple_GET_ITEM(meanings, 5), st.st_ino);
    if (family <= 0 || len > (family == AF_INET ? 65507u : 65527u)) {  /* (EMSGSIZE: the handler's) */
        close(dup);
        if (family < 0) {
            answer(listener, req->id, -EIO);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* The address and the data, copied while the call waits: what is
       judged is what is sent. */
    struct iovec here[2] = {{addr, addr_len}, {datagram, len}};
    struct iovec there[2] = {{(void *)(uintptr_t)addr_ptr, addr_len}, {(void *)(uintptr_t)buf, len}};
    int got = read_valid_iov(listener, req->id, tid, here, there, 2);
    struct dest *d = got > 0 ? dest_of(PyTuple_GET_ITEM(meanings, 7), st.st_ino, addr, (int)addr_len) : NULL;
    if (d == NULL) {
        close(dup);
        if (PyErr_Occurred()) {
            answer(listener, req->id, -EIO);
            return NULL;
        }
        if (got < 0)
            return PyLong_FromLong(0);
        Py_RETURN_NONE;
    }

    /* As perform._destination: a root supervisor's answer to a sender goes
       with its rights, to the socket file the name led to following no
       symlink (opened once a turn: later sends reach that socket, whatever
       the name leads to since); anything else as the program, which a
       supervisor that is not root already is (but for a relative name:
       its directory). */
    const char *path = d->real.sun_path;
    size_t path_len = strnlen(path, d->real_len - offsetof(struct sockaddr_un, sun_path));
    int root = supervisor_euid == 0;
    if (d->named >= 0 && now_ms() - d->opened > 100) {  /* (opened again now and then: a new socket at the name) */
        close(d->named);
        d->named = -1;
    }
    if (root && d->reply && d->named < 0 && path_len > 0 && path[0] == '/' && path_len < sizeof d->real.sun_path) {
        char name[sizeof d->real.sun_path];
        memcpy(name, path, path_len);
        name[path_len] = 0;
        struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
        struct stat file;
        d->named = (int)syscall(SYS_openat2, AT_FDCWD, name, &how, sizeof how);
        d->opened = now_ms();
        if (d->named >= 0 && (fstat(d->named, &file) < 0 || !S_ISSOCK(file.st_mode))) {
            close(d->named);
            d->named = -1;
        }
    }
    struct sockaddr_un via = {.sun_family = AF_UNIX};
    const struct sockaddr_un *to = &d->real;
    socklen_t to_len = d->real_len;
    if (d->named >= 0) {
        int at = snprintf(via.sun_path, sizeof via.sun_path, "/proc/self/fd/%d", d->named);
        to = &via;
        to_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)at + 1);
    }
    union { struct cmsghdr align; char room[CMSG_SPACE(sizeof(struct ucred))]; } control;
    struct iovec data = {datagram, len};
    struct msghdr msg = {.msg_name = (void *)to, .msg_namelen = to_len, .msg_iov = &data, .msg_iovlen = 1};
    struct ucred cred;
    if (d->named < 0 ? root || (path_len > 0 && path[0] != '/') : !credits || !program_credentials(pidfd, tid, &cred)) {
        close(dup);
        Py_RETURN_NONE;  /* (as the program, a root supervisor's acting_as; or uncredited: in Python) */
    }
    if (d->named >= 0) {
        /* An answer a root supervisor sends still names the program to a
           receiver that asks (SO_PASSCRED). */
        msg.msg_control = control.room;
        msg.msg_controllen = sizeof control.room;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_CREDENTIALS;
        c->cmsg_len = CMSG_LEN(sizeof cred);
        memcpy(CMSG_DATA(c), &cred, sizeof cred);
    }
    ssize_t sent = sendmsg(dup, &msg, flags | MSG_DONTWAIT);
    close(dup);
    if (sent < 0) {
        if (d->named >= 0) {  /* (that socket may be gone, another at its name: looked up again) */
            close(d->named);
            d->named = -1;
        }
        Py_RETURN_NONE;  /* nothing sent: the handler sends again, and waits, drops or says why */
    }
    if (answer(listener, req->id, sent) < 0 && errno == ENOENT)
        return Py_BuildValue("(sL)", "replay", (long long)sent);
    return PyLong_FromLong(0);
}

/* What serve() does with one notification it may make: the call's number
   in the order of serve's `numbers`, or -1 (Python's). */
enum { ACCEPT, ACCEPT4, GETSOCKNAME, SETSOCKOPT, RECVFROM, SENDTO, COMPILED };

/* The calls made here this turn, by kind: added to the supervisor's
   counts (trapped, compiled: dicts by syscall name) when serve returns. */
static long tally[COMPILED];

static int add_tally(PyObject *counts, PyObject *names)
{
    for (int kind = 0; kind < COMPILED; kind++) {
        if (tally[kind] == 0)
            continue;
        PyObject *name = PyTuple_GET_ITEM(names, kind);
        for (int i = 0; i < 2; i++) {
            PyObject *d = PyTuple_GET_ITEM(counts, i), *n = PyDict_GetItemWithError(d, name);
            PyObject *more = n ? PyLong_FromLong(PyLong_AsLong(n) + tally[kind]) : PyLong_FromLong(tally[kind]);
            if (more == NULL || PyDict_SetItem(d, name, more) < 0) {
                Py_XDECREF(more);
                return -1;
            }
            Py_DECREF(more);
        }
        tally[kind] = 0;
    }
    return 0;
}

/* The pidfd of the thread that made the call, from notify's tasks (a
   thread not seen before is new_task's: it takes its pidfd and tells when
   it ends): -1 and no exception if it is gone already (the handlers say
   so), -1 and an exception for an error. *found: the task (borrowed). */
static int thread_pidfd(int tid, PyObject *tasks, PyObject *new_task, PyObject **found)
{
    for (int i = 0; i < n_threads; i++)
        if (threads[i].tid == tid) {
            *found = threads[i].task;
            return threads[i].pidfd;
        }
    PyObject *key = PyLong_FromLong(tid), *task = NULL;
    if (key == NULL)
        return -1;
    task = PyDict_GetItemWithError(tasks, key);  /* (borrowed: tasks holds it) */
    if (task == NULL && !PyErr_Occurred()) {
        PyObject *made = PyObject_CallOneArg(new_task, key);
        if (made == NULL)
            PyErr_Clear();
        Py_XDECREF(made);  /* (tasks holds it now) */
        task = made ? PyDict_GetItemWithError(tasks, key) : NULL;
    }
    Py_DECREF(key);
    if (task == NULL)
        return -1;
    PyObject *pidfd = PyObject_GetAttrString(task, "pidfd");
    long number = pidfd ? PyLong_AsLong(pidfd) : -1;
    Py_XDECREF(pidfd);
    if (number < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "serve: a task without a pidfd");
        return -1;
    }
    if (n_threads < THREADS) {
        threads[n_threads].tid = tid;
        threads[n_threads].task = task;
        threads[n_threads++].pidfd = (int)number;
    }
    *found = task;
    return (int)number;
}

/* One turn of serve (below): its loop. */
static PyObject *turn(int listener, int epfd, int timeout, unsigned int audit_arch, PyObject *tasks,
                      PyObject *new_task, const long *nrs, PyObject *meanings, unsigned int passing, int killable)
{
    long long deadline = timeout < 0 ? -1 : now_ms() + timeout;

    for (;;) {
        struct pollfd fds[2] = {{.fd = listener, .events = POLLIN}, {.fd = epfd, .events = POLLIN}};
        struct seccomp_notif req;
        int n, got = 0, err = 0;
        Py_BEGIN_ALLOW_THREADS
        int wait = deadline < 0 ? -1 : (int)(deadline - now_ms() > 0 ? deadline - now_ms() : 0);
        n = poll(fds, 2, wait);
        if (n > 0 && fds[0].revents & POLLIN) {
            memset(&req, 0, sizeof req);  /* the kernel wants it zeroed */
            got = ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req) == 0;
            err = got ? 0 : errno;
        } else if (n < 0)
            err = errno;
        Py_END_ALLOW_THREADS
        if (err == EINTR) {  /* a signal: its Python handler runs, notify's loop looks */
            if (PyErr_CheckSignals() < 0)
                return NULL;
            Py_RETURN_NONE;
        }
        if (n < 0 || (err && err != ENOENT)) {  /* (ENOENT: the call went away before it was received) */
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (!got) {
            if (n == 0 || fds[1].revents)
                Py_RETURN_NONE;
            if (fds[0].revents & (POLLHUP | POLLERR))
                return Py_BuildValue("(s)", "hup");
            continue;
        }
        int then_loop = fds[1].revents != 0;  /* this call first, then notify's loop */

        const unsigned long long *a = req.data.args;
        int kind = -1;
        for (int i = 0; i < COMPILED && req.data.arch == audit_arch; i++)
            if (req.data.nr == nrs[i])
                kind = i;
        if (kind >= 0 && passing & 1 << kind) {
            struct seccomp_notif_resp resp = {.id = req.id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
            ioctl_retried(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);  /* (ENOENT: gone, nobody's concern) */
            tally[kind]++;
            if (then_loop || (deadline >= 0 && now_ms() >= deadline))
                Py_RETURN_NONE;
            continue;
        }
        if (meanings == Py_None)
            kind = -1;
        PyObject *task = NULL;
        int pidfd = kind < 0 ? -1 : thread_pidfd((int)req.pid, tasks, new_task, &task);
        if (pidfd < 0) {
            if (PyErr_Occurred()) {
                answer(listener, req.id, -EIO);  /* (MemoryError: fail closed, never leave it waiting) */
                return NULL;
            }
            goto python;
        }
        PyObject *done;
        int tid = (int)req.pid, fd = (int)a[0];
        if (kind == GETSOCKNAME) {
            done = do_sockname(listener, req.id, tid, fd, a[1], a[2], PyTuple_GET_ITEM(meanings, 1));
        } else if (kind == SETSOCKOPT) {
            done = do_setsockopt(listener, req.id, tid, fd, (int)a[1], (int)a[2], a[3], (int)a[4],
                                 PyTuple_GET_ITEM(meanings, 2));
        } else if (kind == RECVFROM) {
            done = do_recvfrom(listener, &req, pidfd, task, meanings);
        } else if (kind == SENDTO) {
            done = do_sendto(listener, &req, pidfd, meanings);
        } else {
            done = do_accept(listener, req.id, pidfd, tid, fd, a[1], a[2], kind == ACCEPT4 ? (int)a[3] : 0,
                             killable, PyTuple_GET_ITEM(meanings, 0));
        }
        if (done == NULL) {
            tally[kind]++;  /* (made here: answered EIO) */
            return NULL;  /* fail closed; the exception says why */
        }
        if (done == Py_None) {
            Py_DECREF(done);
            goto python;
        }
        tally[kind]++;
        if (PyTuple_Check(done) && PyTuple_GET_SIZE(done) == 2 && PyUnicode_Check(PyTuple_GET_ITEM(done, 0))) {
            PyObject *replay = Py_BuildValue("(siiI(KKKKKK)O)", "replay", (int)req.pid, (int)req.data.nr,
                                             req.data.arch, a[0], a[1], a[2], a[3], a[4], a[5],
                                             PyTuple_GET_ITEM(done, 1));
            Py_DECREF(done);
            return replay;
        }
        if (PyTuple_Check(done)) {
            PyObject *kept = Py_BuildValue("(sOO)", "kept", PyTuple_GET_ITEM(done, 0), PyTuple_GET_ITEM(done, 1));
            Py_DECREF(done);
            return kept;
        }
        Py_DECREF(done);
        if (then_loop || (deadline >= 0 && now_ms() >= deadline))
            Py_RETURN_NONE;  /* notify's loop first: its events, its timers */
        continue;
    python:
        return Py_BuildValue("(sKiiI(KKKKKK))", "call", req.id, (int)req.pid, (int)req.data.nr, req.data.arch,
                             a[0], a[1], a[2], a[3], a[4], a[5]);
    }
}

/* serve(listener, epfd, timeout_ms, audit_arch, tasks, new_task, numbers,
         names, meanings, passing, counts, killable, credits)

   The notification loop while the program makes the calls of its new
   connections and its datagrams: received and made here, with no Python
   but what they mean (meanings: the (plan, local, set, options, keep,
   family, sender, destination) of handlers.compiled(), or None: every
   call is Python's, but those of `passing`, a mask of these calls the
   handlers would let run: CONTINUE at once). Returns to notify.py's loop
   when it has something to do: None (its epoll fd is readable, the
   timeout passed, or a signal came), ("call", ident, tid, nr, audit_arch,
   args) (a call for the handlers, nothing done), ("kept", conn,
   listener_inode) (a connection taken for a call that went away),
   ("replay", tid, nr, audit_arch, args, result) (a datagram call made,
   whose answer was lost to a signal: its restart gets it), or ("hup",)
   (no thread is left under the filter). tasks: notify's threads by tid
   (new_task(tid) adds one). credits: the kernel has PIDFD_GET_INFO. */
static PyObject *serve(PyObject *self, PyObject *args)
{
    int listener, epfd, timeout, killable;
    unsigned int audit_arch;
    unsigned int passing;
    PyObject *tasks, *new_task, *numbers, *names, *meanings, *counts;
    if (!PyArg_ParseTuple(args, "iiiIO!OO!O!OIO!pp", &listener, &epfd, &timeout, &audit_arch, &PyDict_Type,
                          &tasks, &new_task, &PyTuple_Type, &numbers, &PyTuple_Type, &names, &meanings, &passing,
                          &PyTuple_Type, &counts, &killable, &credits))
        return NULL;
    supervisor_euid = geteuid();
    if (PyTuple_GET_SIZE(numbers) != COMPILED || PyTuple_GET_SIZE(names) != COMPILED ||
        (meanings != Py_None && (!PyTuple_Check(meanings) || PyTuple_GET_SIZE(meanings) != 8))) {
        PyErr_SetString(PyExc_ValueError, "serve: numbers, names and meanings do not fit");
        return NULL;
    }
    long nrs[COMPILED];
    for (int i = 0; i < COMPILED; i++)
        nrs[i] = PyLong_AsLong(PyTuple_GET_ITEM(numbers, i));
    if (meanings != Py_None && read_options(PyTuple_GET_ITEM(meanings, 3)) < 0)
        return NULL;
    keep = meanings != Py_None ? PyTuple_GET_ITEM(meanings, 4) : NULL;
    record = PyList_New(0);
    if (record == NULL)
        return NULL;

    PyObject *got = turn(listener, epfd, timeout, audit_arch, tasks, new_task, nrs, meanings, passing, killable);

    /* What the turn kept for Python, before Python looks: also when it
       failed (the calls it made were made). */
    PyObject *type, *value, *trace;
    PyErr_Fetch(&type, &value, &trace);
    int failed = flush() < 0 || add_tally(counts, names) < 0;
    forget_turn();
    Py_CLEAR(record);
    if (type != NULL) {
        if (failed)
            PyErr_Clear();
        PyErr_Restore(type, value, trace);  /* (the turn's exception first) */
    } else if (failed && got != NULL) {
        if (PyTuple_Check(got) && PyTuple_GET_SIZE(got) == 3 && PyLong_Check(PyTuple_GET_ITEM(got, 1)))
            close((int)PyLong_AsLong(PyTuple_GET_ITEM(got, 1)));  /* a kept connection nobody will have */
        Py_CLEAR(got);
    }
    return got;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS, "The notification loop for the calls of every new connection (see the source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "redirect._fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    return PyModule_Create(&module);
}
