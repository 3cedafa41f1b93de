/* accept() on a socket that lingers, raced against its close: run under
   redirect with a rule converting 127.0.0.1:PORT (so the supervisor has a
   listener, and the notify backend's compiled accept runs).

     lingerprobe PORT ATTEMPTS

   Each attempt: a connection to a real TCP listener of the program's own
   (on a port no rule converts) whose peer never reads, its send buffer full
   and SO_LINGER {1, 3600} set: the last close of it waits for the peer (an
   hour). One thread calls accept() on it; another closes it 0-150 us after
   the call began (a thread of its own: the last close waits). A supervisor
   that held a duplicate of it across that close makes the last close itself
   and waits with it: the accept, and every trapped call after it, wait too.
   Then the main thread makes a trapped call (getsockname of the converted
   listener) and closes the peer (its unread data makes that a reset: the
   lingering close ends, the program's or a stuck supervisor's). A call that
   waits PATIENCE seconds: "stalled at attempt N: ...", status 1 (the peer
   closes with the process, which frees a stuck supervisor too). Else
   "alive N". */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define PATIENCE 5

static int fd;
static long delay_ns;
static atomic_long started;  /* when the accept began (ns), 0 before */
static char stalled[128];
static sem_t closed;

static long now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void on_alarm(int sig)
{
    (void)sig;
    (void)!write(1, stalled, strlen(stalled));
    _exit(1);
}

static void waiting(int attempt, const char *what)
{
    snprintf(stalled, sizeof stalled, "stalled at attempt %d: %s waited %d s\n", attempt, what, PATIENCE);
}

static void *accepting(void *unused)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    atomic_store(&started, now());
    accept(fd, (struct sockaddr *)&addr, &len);  /* EINVAL (not listening) or EBADF (closed) */
    return unused;
}

static void *closing(void *unused)
{
    long since;
    while ((since = atomic_load(&started)) == 0)
        ;
    while (now() - since < delay_ns)
        ;
    sem_post(&closed);
    close(fd);  /* the last close waits while it lingers, until the peer resets: the
                   closer's, or the accept's (its call holds the file) */
    return unused;
}

static int tcp(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), small = 4096;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);  /* (inherited by the peers) */
    return s;
}

static int listening(int port)
{
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = tcp();
    if (bind(s, (struct sockaddr *)&at, sizeof at) < 0 || listen(s, 4) < 0) {
        perror("listener");
        exit(2);
    }
    return s;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: lingerprobe PORT ATTEMPTS\n");
        return 2;
    }
    int attempts = atoi(argv[2]);
    unsigned seed = (unsigned)now() ^ (unsigned)getpid();
    srand(seed);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    sem_init(&closed, 0, 0);
    int converted = listening(atoi(argv[1])), real = listening(0);
    struct sockaddr_in there, name;
    socklen_t len = sizeof there;
    getsockname(real, (struct sockaddr *)&there, &len);
    printf("seed %u\n", seed);
    for (int attempt = 0; attempt < attempts; attempt++) {
        alarm(PATIENCE);
        waiting(attempt, "a connection");
        fd = tcp();
        if (connect(fd, (struct sockaddr *)&there, sizeof there) < 0) {
            perror("connect");
            return 2;
        }
        int peer = accept(real, NULL, NULL);  /* never reads */
        fcntl(fd, F_SETFL, O_NONBLOCK);
        static char junk[65536];
        while (write(fd, junk, sizeof junk) > 0)  /* (write: not trapped) */
            ;
        struct linger linger = {1, 3600};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);

        delay_ns = rand() % 150001;
        atomic_store(&started, 0);
        pthread_t accepter, closer;
        pthread_create(&closer, NULL, closing, NULL);
        pthread_create(&accepter, NULL, accepting, NULL);
        sem_wait(&closed);  /* the race is run: a supervisor that holds the socket now makes its last close */
        waiting(attempt, "a getsockname");
        alarm(PATIENCE);
        len = sizeof name;
        getsockname(converted, (struct sockaddr *)&name, &len);  /* trapped: answered while the supervisor is free */
        close(peer);  /* a reset: the lingering close ends (the closer's, or the accept's own) */
        waiting(attempt, "the racers");
        alarm(PATIENCE);
        pthread_join(accepter, NULL);
        pthread_join(closer, NULL);
        alarm(0);
        printf("attempt %d ok (%ld us)\n", attempt, delay_ns / 1000);
    }
    close(converted);
    close(real);
    printf("alive %d\n", attempts);
    return 0;
}
