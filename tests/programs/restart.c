/* A blocking connect while a SIGALRM handler with SA_RESTART fires every
 * 20 ms: the kernel restarts the call, so it must end connected (0) or with
 * a real error, never EINTR. Prints the result as "connect N" (-errno). */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static volatile int ticks;
static void tick(int sig) { (void)sig; ticks++; }

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    alarm(30);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &every, NULL);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    printf("connect %d\nticks %d\n", r < 0 ? -errno : 0, ticks > 0);
    return 0;
}
