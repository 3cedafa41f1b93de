/* Two UDP sockets on one port (SO_REUSEADDR, socat's UDP-LISTEN,fork); the
   newer closes; the older's getsockname must still show its IP address.

     udpreuse PORT   bind two UDP sockets to 127.0.0.1:PORT, show the first's
                     name; close the second, wait, show it again */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static void show(const char *what, int fd)
{
    struct sockaddr_storage ss; socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) { printf("%s: %m\n", what); return; }
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss; char b[32];
        printf("%s: AF_INET %s:%d\n", what, inet_ntop(AF_INET, &in->sin_addr, b, sizeof b), ntohs(in->sin_port));
    } else printf("%s: family %d '%s'\n", what, ss.ss_family, ((struct sockaddr_un *)&ss)->sun_path);
    fflush(stdout);
}
int main(int argc, char **argv)
{
    int port = atoi(argv[1]), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int s1 = socket(AF_INET, SOCK_DGRAM, 0), s2 = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(s1, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(s2, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s1, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind 1"); return 1; }
    if (bind(s2, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind 2"); return 1; }
    show("first, both open", s1);
    close(s2);
    sleep(3);  /* the reaper forgets the second */
    show("first, second closed", s1);
    return 0;
}
