/* A UDP server that gives up what it had after its bind, as Debian's
 * daemons do, and a client for it:
 *
 *   dropper setuid PORT N      bind 127.0.0.1:PORT, become nobody (65534),
 *                              answer N datagrams from the same socket
 *   dropper chroot DIR PORT N  bind, chroot to DIR, become nobody, answer N
 *                              datagrams each from a new socket connected to
 *                              the sender (as TFTP servers do)
 *   dropper client PORT TEXT   send TEXT to 127.0.0.1:PORT, print the answer
 *
 * The server prints "ready" once it has dropped what it drops; answers are
 * "echo:TEXT". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int serve(const char *jail, int port, int n)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = loopback(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("bind");
        return 1;
    }
    if (jail && (chroot(jail) < 0 || chdir("/") < 0)) {
        perror("chroot");
        return 1;
    }
    if (setgid(65534) < 0 || setuid(65534) < 0) {
        perror("setuid");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        char buf[512], out[600];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t r = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
        if (r < 0) {
            perror("recvfrom");
            return 1;
        }
        buf[r] = 0;
        int m = snprintf(out, sizeof out, "echo:%s", buf);
        int from_socket = s;
        if (jail) {  /* a new socket for the answer, connected to the sender */
            from_socket = socket(AF_INET, SOCK_DGRAM, 0);
            if (connect(from_socket, (struct sockaddr *)&from, len) < 0) {
                perror("connect");
                return 1;
            }
        }
        if ((jail ? send(from_socket, out, m, 0) : sendto(s, out, m, 0, (struct sockaddr *)&from, len)) < 0) {
            perror("send");
            return 1;
        }
        if (jail)
            close(from_socket);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "setuid") == 0)
        return serve(NULL, atoi(argv[2]), atoi(argv[3]));
    if (argc == 5 && strcmp(argv[1], "chroot") == 0)
        return serve(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc == 4 && strcmp(argv[1], "client") == 0) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = loopback(atoi(argv[2]));
        struct timeval limit = {10, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
        char buf[600];
        if (sendto(s, argv[3], strlen(argv[3]), 0, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("sendto");
            return 1;
        }
        ssize_t r = recv(s, buf, sizeof buf - 1, 0);
        if (r < 0) {
            perror("recv");
            return 1;
        }
        buf[r] = 0;
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: dropper setuid PORT N | dropper chroot DIR PORT N | dropper client PORT TEXT\n");
    return 2;
}
