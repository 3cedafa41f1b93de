/* Calls the supervisor makes or waits in, under a storm of signals (SIGALRM
 * every STEP microseconds), with SA_RESTART ("restart") or without ("intr":
 * EINTR, and the program tries again). Nothing may be lost or doubled:
 *
 *   storm accept PORT N restart|intr   TCP server on 127.0.0.1:PORT: accept N
 *                                      connections, write one byte on each
 *   storm accept PORT N worker         the same, with SA_RESTART, served by a
 *                                      second thread: the main thread blocks
 *                                      the signal (the worker must take it)
 *   storm udp PORT N restart|intr      UDP echo server: N datagrams in, N out
 *   storm send restart|intr            one 8 MiB stream, sendmsg on a socket
 *                                      pair (sealed: made by the supervisor),
 *                                      checked byte by byte by a reader thread
 *
 * Prints "listening" when ready, then the counts: "done N eintr E signals S"
 * (send: "sent N got N bad B", B the first wrong byte or -1). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define STEP 5000
static volatile int signals;
static void tick(int sig) { (void)sig; signals++; }

static void storm(int restart)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, STEP}, {0, STEP}};
    setitimer(ITIMER_REAL, &every, NULL);
}

static void calm(void)
{
    struct itimerval none = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &none, NULL);
}

static int bound(int type, int port)
{
    int s = socket(AF_INET, type, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || (type == SOCK_STREAM && listen(s, 64) < 0)) {
        perror("bind/listen");
        exit(1);
    }
    printf("listening\n");
    fflush(stdout);
    return s;
}

/* One call of a server's loop: 1 done, 0 interrupted (EINTR: it tries
 * again), -1 failed. */
static int accept_one(int s)
{
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int c = accept(s, (struct sockaddr *)&peer, &len);
    if (c < 0)
        return errno == EINTR ? 0 : -1;
    struct stat st;
    if (fstat(c, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "accept returned fd %d, which is not a socket\n", c);
        return -1;
    }
    while (write(c, "x", 1) < 0 && errno == EINTR)
        ;
    close(c);
    return 1;
}

static int echo_one(int s)
{
    char buf[256];
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    ssize_t r = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    while (sendto(s, buf, r, 0, (struct sockaddr *)&peer, len) < 0)
        if (errno != EINTR)
            return -1;
    return 1;
}

struct job { int type, port, n; int (*one)(int); int rc; };
static int serving(int type, int port, int n, int restart, int (*one)(int));

static void *worker(void *arg)
{
    struct job *j = arg;
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);
    j->rc = serving(j->type, j->port, j->n, 1, j->one);
    return NULL;
}

static int serving(int type, int port, int n, int restart, int (*one)(int))
{
    if (restart == 2) { /* "worker": serve in a thread; this one blocks SIGALRM */
        struct job j = {type, port, n, one, 1};
        sigset_t alrm;
        sigemptyset(&alrm);
        sigaddset(&alrm, SIGALRM);
        pthread_sigmask(SIG_BLOCK, &alrm, NULL);
        pthread_t t;
        pthread_create(&t, NULL, worker, &j);
        pthread_join(t, NULL);
        return j.rc;
    }
    int s = bound(type, port), done = 0, eintr = 0;
    storm(restart);
    while (done < n) {
        int r = one(s);
        if (r < 0) {
            perror(type == SOCK_STREAM ? "accept" : "recvfrom/sendto");
            return 1;
        }
        done += r;
        eintr += !r;
    }
    calm();
    printf("done %d eintr %d signals %d\n", done, eintr, signals);
    return 0;
}

#define TOTAL (8u << 20)
static int pair[2];
static long got, bad = -1;

static void *reader(void *arg)
{
    (void)arg;
    static unsigned char b[65536];
    for (;;) {
        ssize_t r = read(pair[1], b, sizeof b);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++)
            if (b[i] != (unsigned char)((got + i) * 7) && bad < 0)
                bad = got + i;
        got += r;
        usleep(200); /* slower than the sender: its sends wait for room */
    }
    return NULL;
}

static int sending(int restart)
{
    socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    unsigned char *buf = malloc(TOTAL);
    for (unsigned long i = 0; i < TOTAL; i++)
        buf[i] = (unsigned char)(i * 7);
    pthread_t t;
    pthread_create(&t, NULL, reader, NULL);
    storm(restart);
    unsigned long sent = 0;
    int eintr = 0;
    while (sent < TOTAL) {
        struct iovec iov = {buf + sent, TOTAL - sent};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r = sendmsg(pair[0], &m, 0);
        if (r < 0) {
            if (errno == EINTR) {
                eintr++;
                continue;
            }
            perror("sendmsg");
            return 1;
        }
        sent += r;
    }
    calm();
    shutdown(pair[0], SHUT_WR);
    pthread_join(t, NULL);
    printf("sent %lu got %ld bad %ld eintr %d signals %d\n", sent, got, bad, eintr, signals);
    return 0;
}

int main(int argc, char **argv)
{
    alarm(0);
    signal(SIGUSR1, SIG_IGN); /* what the supervisor forwards (tests signal it) */
    if (argc == 5 && strcmp(argv[1], "accept") == 0)
        return serving(SOCK_STREAM, atoi(argv[2]), atoi(argv[3]),
                       strcmp(argv[4], "worker") == 0 ? 2 : strcmp(argv[4], "restart") == 0, accept_one);
    if (argc == 5 && strcmp(argv[1], "udp") == 0)
        return serving(SOCK_DGRAM, atoi(argv[2]), atoi(argv[3]), strcmp(argv[4], "restart") == 0, echo_one);
    if (argc == 3 && strcmp(argv[1], "send") == 0)
        return sending(strcmp(argv[2], "restart") == 0);
    fprintf(stderr, "usage: storm accept|udp PORT N restart|intr[|worker] | storm send restart|intr\n");
    return 2;
}
