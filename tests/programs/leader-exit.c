/* The main thread exits (pthread_exit) and another thread binds, listens,
 * forks a short-lived child and serves one connection: the supervisor must
 * still see this process's fds (the leader's are gone). */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int port;

static void *serve(void *arg)
{
    (void)arg;
    usleep(100000); /* let the main thread be gone */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 5) < 0) {
        perror("bind/listen");
        exit(1);
    }
    /* A child that comes and goes must not make the listener look closed. */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    printf("listening\n");
    fflush(stdout);
    int c = accept(l, NULL, NULL);
    if (c < 0) {
        perror("accept");
        exit(1);
    }
    write(c, "from thread\n", 12);
    close(c);
    exit(0);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    port = atoi(argv[1]);
    pthread_t t;
    pthread_create(&t, NULL, serve, NULL);
    pthread_exit(NULL);
}
