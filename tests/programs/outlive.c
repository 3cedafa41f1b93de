/* An accepted connection outlives its converted listener: its getsockname and
   getpeername must still show IP addresses (they do on real TCP), after the
   supervisor has forgotten the listener.

     outlive PORT PATH [SECONDS]   listen on 127.0.0.1:PORT, connect to
                                   PATH (the rule's socket file) as a Unix
                                   client, accept, show both names; close
                                   the listener, wait, show them again */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static void show(const char *what, int fd, int peer)
{
    struct sockaddr_storage ss; socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len) : getsockname(fd, (struct sockaddr *)&ss, &len);
    if (r < 0) { printf("%s: error %m\n", what); return; }
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss; char b[32];
        printf("%s: AF_INET %s:%d\n", what, inet_ntop(AF_INET, &in->sin_addr, b, sizeof b), ntohs(in->sin_port));
    } else if (ss.ss_family == AF_UNIX) {
        printf("%s: AF_UNIX '%s' (len %u)\n", what, ((struct sockaddr_un *)&ss)->sun_path, len);
    } else printf("%s: family %d\n", what, ss.ss_family);
    fflush(stdout);
}
int main(int argc, char **argv)
{
    int port = atoi(argv[1]);
    const char *path = argv[2];  /* where the rule puts it: the program connects there as a Unix client */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 8) < 0) { perror("bind/listen"); return 1; }
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un u = {.sun_family = AF_UNIX};
    strncpy(u.sun_path, path, sizeof u.sun_path - 1);
    if (connect(c, (struct sockaddr *)&u, sizeof u) < 0) { perror("connect unix"); return 1; }
    struct sockaddr_storage peer; socklen_t plen = sizeof peer;
    int conn = accept(l, (struct sockaddr *)&peer, &plen);
    if (conn < 0) { perror("accept"); return 1; }
    show("listener open: getsockname(conn)", conn, 0);
    show("listener open: getpeername(conn)", conn, 1);
    close(l);
    sleep(argc > 3 ? atoi(argv[3]) : 3);  /* the reaper forgets the listener */
    show("listener closed: getsockname(conn)", conn, 0);
    show("listener closed: getpeername(conn)", conn, 1);
    return 0;
}
